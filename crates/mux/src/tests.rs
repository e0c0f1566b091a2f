use super::*;
use alpacon_proto::{Account, StreamResult, INITIAL_WINDOW};
use std::time::Duration;
use tokio::time::timeout;

/// Two muxes wired back to back through the frame codec, as over a socket.
/// Returns the gateway mux, the agent mux and the receivers of what each
/// side's connection owner must handle.
fn pair() -> (
    Mux,
    Mux,
    mpsc::UnboundedReceiver<Incoming>,
    mpsc::UnboundedReceiver<Incoming>,
) {
    let (g, gio) = Mux::new(Side::Gateway);
    let (a, aio) = Mux::new(Side::Agent);
    let at_agent = pump(gio, a.clone());
    let at_gateway = pump(aio, g.clone());
    (g, a, at_agent, at_gateway)
}

/// Moves frames from one side's writer into the other side's router and
/// forwards what the router returns.
fn pump(mut io: MuxIo, to: Mux) -> mpsc::UnboundedReceiver<Incoming> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(f) = io.next_frame().await {
            let f = Frame::decode(f.encode()).expect("codec roundtrip");
            match to.handle_incoming(f) {
                Ok(Some(inc)) => {
                    let _ = tx.send(inc);
                }
                Ok(None) => {}
                Err(e) => panic!("protocol error: {e}"),
            }
        }
    });
    rx
}

fn read_open() -> Open {
    Open::FileRead {
        path: "/x".into(),
        account: Account {
            username: "u".into(),
            groupname: None,
            managed: None,
        },
        confine: Vec::new(),
    }
}

async fn next_open(rx: &mut mpsc::UnboundedReceiver<Incoming>) -> (Stream, Open) {
    match timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(Incoming::Open(s, o))) => (s, o),
        other => panic!("expected an Open, got {other:?}"),
    }
}

#[tokio::test]
async fn open_accept_data_eof_close() {
    let (g, _a, mut at_agent, _at_gw) = pair();
    let mut s = g.open(read_open()).await.unwrap();
    let (peer, open) = next_open(&mut at_agent).await;
    assert_eq!(open, read_open());
    assert_eq!(peer.id() % 2, 1, "gateway streams are odd");
    let (ptx, mut prx) = peer.split();
    ptx.accept(StreamInfo::Ready).await.unwrap();
    assert_eq!(s.wait_accept().await.unwrap(), StreamInfo::Ready);

    s.tx.send(Bytes::from_static(b"hello")).await.unwrap();
    s.tx.eof().unwrap();
    assert_eq!(
        prx.recv().await,
        Some(Event::Data(Bytes::from_static(b"hello")))
    );
    assert_eq!(prx.recv().await, Some(Event::Eof));

    ptx.send(Bytes::from(vec![7u8; 200_000])).await.unwrap();
    ptx.close(Close::Ok(StreamResult::Done));
    let mut got = 0;
    loop {
        match s.rx.recv().await.unwrap() {
            Event::Data(d) => {
                assert!(d.len() <= MAX_DATA);
                got += d.len();
            }
            Event::Closed(Close::Ok(StreamResult::Done)) => break,
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(got, 200_000);
    assert_eq!(s.rx.recv().await, None);
    assert_eq!(g.stream_count(), 0);
}

#[tokio::test]
async fn refusal_reaches_the_opener() {
    let (g, _a, mut at_agent, _) = pair();
    let mut s = g.open(read_open()).await.unwrap();
    let (peer, _) = next_open(&mut at_agent).await;
    peer.tx.close(Close::Err(StreamError::new(
        ErrorCode::NotFound,
        "no such file: /x",
    )));
    let e = s.wait_accept().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn slow_reader_bounds_the_sender_to_one_window() {
    let (g, a, mut at_agent, _) = pair();
    let s = g.open(read_open()).await.unwrap();
    let (mut peer, _) = next_open(&mut at_agent).await;
    let (tx, _rx) = s.split();
    // Try to push three windows; with nobody reading, only one may go out.
    let sender = tokio::spawn(async move {
        tx.send(Bytes::from(vec![1u8; 3 * INITIAL_WINDOW as usize]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sender.is_finished(), "sender must wait for credit");
    let mut buffered = 0usize;
    while let Ok(Some(Event::Data(d))) =
        timeout(Duration::from_millis(100), peer.rx.events.recv()).await
    {
        buffered += d.len();
    }
    assert_eq!(
        buffered, INITIAL_WINDOW as usize,
        "exactly one window in flight"
    );
    drop(a);
    // Now read everything through the accounting path: the sender finishes.
    let mut total = buffered;
    // Return credit for what we drained behind recv()'s back.
    let inc = lock(&peer.rx.shared.window).on_consumed(buffered as u32);
    if let Some(increment) = inc {
        peer.rx.inner.urgent(Frame::Window {
            stream: peer.rx.id(),
            increment,
        });
    }
    while total < 3 * INITIAL_WINDOW as usize {
        match timeout(Duration::from_secs(5), peer.rx.recv()).await {
            Ok(Some(Event::Data(d))) => total += d.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    sender.await.unwrap().unwrap();
}

#[tokio::test]
async fn try_send_goes_only_with_credit_and_never_waits() {
    let (g, _a, mut at_agent, _) = pair();
    let s = g.open(read_open()).await.unwrap();
    let (mut peer, _) = next_open(&mut at_agent).await;
    let (tx, _rx) = s.split();
    assert!(tx.try_send(Bytes::from_static(b"ack-1")).unwrap());
    // Use up the window with data nobody drains.
    let filler = tx.clone();
    let sender = tokio::spawn(async move {
        filler
            .send(Bytes::from(vec![0u8; 2 * INITIAL_WINDOW as usize]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sender.is_finished());
    assert!(!tx.try_send(Bytes::from_static(b"ack-2")).unwrap());
    let too_big = Bytes::from(vec![0u8; MAX_DATA + 1]);
    assert!(tx.try_send(too_big).is_err());
    // What went through arrives in order, ahead of the filler.
    match timeout(Duration::from_secs(5), peer.rx.events.recv()).await {
        Ok(Some(Event::Data(d))) => assert_eq!(&d[..], b"ack-1"),
        other => panic!("unexpected {other:?}"),
    }
    sender.abort();
}

#[tokio::test]
async fn a_stalled_stream_does_not_block_another() {
    let (g, _a, mut at_agent, _) = pair();
    let bulk = g.open(read_open()).await.unwrap();
    let (_bulk_peer, _) = next_open(&mut at_agent).await;
    let (btx, _brx) = bulk.split();
    tokio::spawn(async move {
        let _ = btx
            .send(Bytes::from(vec![0u8; 4 * INITIAL_WINDOW as usize]))
            .await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The bulk stream is out of credit; an interactive stream still flows.
    let mut term = g.open(read_open()).await.unwrap();
    let (mut term_peer, _) = next_open(&mut at_agent).await;
    term.tx.send(Bytes::from_static(b"ls\r")).await.unwrap();
    let got = timeout(Duration::from_secs(5), term_peer.rx.recv())
        .await
        .unwrap();
    assert_eq!(got, Some(Event::Data(Bytes::from_static(b"ls\r"))));
    term_peer.tx.send(Bytes::from_static(b"out")).await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(5), term.rx.recv())
            .await
            .unwrap(),
        Some(Event::Data(Bytes::from_static(b"out")))
    );
}

#[tokio::test]
async fn shutdown_ends_every_stream_and_wakes_waiting_senders() {
    let (g, _a, mut at_agent, _) = pair();
    let mut s = g.open(read_open()).await.unwrap();
    let _peer = next_open(&mut at_agent).await;
    let tx = s.tx.clone();
    let sender = tokio::spawn(async move {
        tx.send(Bytes::from(vec![0u8; 2 * INITIAL_WINDOW as usize]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    g.shutdown("agent link lost");
    assert_eq!(
        timeout(Duration::from_secs(5), sender)
            .await
            .unwrap()
            .unwrap(),
        Err(MuxError::LinkClosed)
    );
    loop {
        match s.rx.recv().await {
            Some(Event::Closed(Close::Err(e))) => {
                assert_eq!(e.detail, "agent link lost");
                break;
            }
            Some(_) => continue,
            None => panic!("no close event"),
        }
    }
    assert!(g.open(read_open()).await.is_err());
    assert!(g.send_control(Control::Ping { seq: 1 }).await.is_err());
}

#[tokio::test]
async fn dropping_a_stream_cancels_it_at_the_peer() {
    let (g, _a, mut at_agent, _) = pair();
    let s = g.open(read_open()).await.unwrap();
    let (mut peer, _) = next_open(&mut at_agent).await;
    let (tx, rx) = s.split();
    drop(rx);
    // One half alive: still open.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(g.stream_count(), 1);
    drop(tx);
    match timeout(Duration::from_secs(5), peer.rx.recv())
        .await
        .unwrap()
    {
        Some(Event::Closed(Close::Err(e))) => assert_eq!(e.code, ErrorCode::Cancelled),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(g.stream_count(), 0);
    assert!(peer.tx.send(Bytes::from_static(b"x")).await.is_err());
}

#[tokio::test]
async fn control_messages_pass_through() {
    let (g, a, _at_agent, mut at_gw) = pair();
    a.send_control(Control::Pong { seq: 9 }).await.unwrap();
    match timeout(Duration::from_secs(5), at_gw.recv()).await.unwrap() {
        Some(Incoming::Control(Control::Pong { seq: 9 })) => {}
        other => panic!("unexpected {other:?}"),
    }
    drop(g);
}

#[test]
fn protocol_violations_are_detected() {
    let (g, _io) = Mux::new(Side::Gateway);
    // The agent may not open odd (gateway) ids.
    assert!(g
        .handle_incoming(Frame::Open {
            stream: 3,
            open: read_open()
        })
        .is_err());
    let kept = g
        .handle_incoming(Frame::Open {
            stream: 4,
            open: read_open(),
        })
        .unwrap();
    assert!(kept.is_some());
    assert!(g
        .handle_incoming(Frame::Open {
            stream: 4,
            open: read_open()
        })
        .is_err());
    // Frames for unknown streams are ignored, not fatal.
    assert!(g
        .handle_incoming(Frame::Data {
            stream: 99,
            data: Bytes::new()
        })
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn window_overrun_closes_only_that_stream() {
    let (g, mut io) = Mux::new(Side::Gateway);
    let (peer_open, _) = match g
        .handle_incoming(Frame::Open {
            stream: 2,
            open: read_open(),
        })
        .unwrap()
    {
        Some(Incoming::Open(s, o)) => (s, o),
        _ => unreachable!(),
    };
    let mut s = peer_open;
    let chunk = Bytes::from(vec![0u8; MAX_DATA]);
    let frames = INITIAL_WINDOW as usize / MAX_DATA;
    for _ in 0..frames {
        g.handle_incoming(Frame::Data {
            stream: 2,
            data: chunk.clone(),
        })
        .unwrap();
    }
    // One byte past the window.
    g.handle_incoming(Frame::Data {
        stream: 2,
        data: Bytes::from_static(b"!"),
    })
    .unwrap();
    let mut closed = false;
    while let Some(ev) = s.rx.recv().await {
        if let Event::Closed(Close::Err(e)) = ev {
            assert_eq!(e.code, ErrorCode::Protocol);
            closed = true;
        }
    }
    assert!(closed);
    loop {
        match io.next_frame().await {
            Some(Frame::Close { stream: 2, .. }) => break,
            Some(Frame::Window { .. }) => continue,
            other => panic!("expected Close to the peer, got {other:?}"),
        }
    }
}

#[test]
fn queue_slots_are_small() {
    // Each channel allocates 32 slots per link up front (see `Queued`).
    assert!(std::mem::size_of::<Queued>() <= 32);
    assert!(std::mem::size_of::<Box<Frame>>() <= 8);
}

#[tokio::test]
async fn try_next_frame_takes_what_is_queued() {
    let (m, mut io) = Mux::new(Side::Gateway);
    assert!(io.try_next_frame().is_none());
    m.send_control(Control::Ping { seq: 1 }).await.unwrap();
    m.send_control(Control::Ping { seq: 2 }).await.unwrap();
    let f = io.next_frame().await.unwrap();
    assert!(matches!(f, Frame::Control(Control::Ping { seq: 1 })));
    let f = io.try_next_frame().unwrap();
    assert!(matches!(f, Frame::Control(Control::Ping { seq: 2 })));
    assert!(io.try_next_frame().is_none());
}

#[tokio::test]
async fn a_message_is_never_cut_where_the_credit_runs_out() {
    let (g, _a, mut at_agent, _) = pair();
    let s = g.open(read_open()).await.unwrap();
    let (mut peer, _) = next_open(&mut at_agent).await;
    let (tx, _rx) = s.split();
    // Leave 10 bytes of credit.
    tx.send(Bytes::from(vec![0u8; INITIAL_WINDOW as usize - 10]))
        .await
        .unwrap();
    let message = Bytes::from(vec![7u8; 100]);
    let sender = {
        let tx = tx.clone();
        let m = message.clone();
        tokio::spawn(async move { tx.send_message(m).await })
    };
    // The peer reads what came first (granting credit as it drains), then
    // the message arrives whole, in one frame.
    let mut filler = 0;
    while filler < INITIAL_WINDOW as usize - 10 {
        match timeout(Duration::from_secs(5), peer.rx.recv()).await {
            Ok(Some(Event::Data(d))) => filler += d.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    match timeout(Duration::from_secs(5), peer.rx.recv()).await {
        Ok(Some(Event::Data(d))) => assert_eq!(d, message),
        other => panic!("unexpected {other:?}"),
    }
    sender.await.unwrap().unwrap();
    assert!(tx
        .send_message(Bytes::from(vec![0u8; MAX_DATA + 1]))
        .await
        .is_err());
}
