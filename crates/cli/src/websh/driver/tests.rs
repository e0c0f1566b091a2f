//! The driver against fake gateways: one that cuts connections at random
//! points (exactly-once output and input), and scripted ones for the
//! individual rules.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;
use crate::websh::state::TermState;

fn attached_json(output_offset: u64, input_offset: u64, read_only: bool) -> String {
    serde_json::to_string(&ServerMsg::Attached {
        session: "s1".into(),
        output_offset,
        input_offset,
        read_only,
        rows: 24,
        cols: 80,
    })
    .unwrap()
}

/// Keystrokes typed once the session is attached (10 ms of paused time
/// later), so they do not race the connection.
fn type_later(tx: mpsc::Sender<Vec<u8>>, keys: Vec<Vec<u8>>, close: bool) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        for k in keys {
            tx.send(k).await.unwrap();
        }
        if !close {
            std::future::pending::<()>().await;
        }
    });
}

fn fast_timing() -> Timing {
    Timing {
        backoff_start: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        give_up: Duration::from_secs(600),
        ack_delay: Duration::from_millis(5),
        ping_every: Duration::from_secs(10),
        dead_after: Duration::from_secs(30),
        attach_timeout: Duration::from_secs(30),
        eot_settle: Duration::from_millis(300),
    }
}

fn options(escape: bool) -> Options {
    Options {
        session: "s1".into(),
        escape,
        eof_sends_eot: false,
        timing: fast_timing(),
    }
}

type Notices = Arc<Mutex<Vec<String>>>;

type Local4 = (
    LocalIo<Vec<u8>>,
    mpsc::Sender<Vec<u8>>,
    mpsc::Sender<Local>,
    Notices,
);

fn local_io() -> Local4 {
    let (in_tx, in_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let notices: Notices = Arc::default();
    let n = notices.clone();
    let io = LocalIo {
        out: Vec::new(),
        input: in_rx,
        events: ev_rx,
        notice: Box::new(move |m| n.lock().unwrap().push(m.to_string())),
    };
    (io, in_tx, ev_tx, notices)
}

/// A small deterministic generator (no dependency for tests).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------
// A gateway that cuts connections.

struct Gw {
    produced: Vec<u8>,
    /// Input taken, in order, from all connections.
    input: Vec<u8>,
    expected_input: usize,
    rng: Lcg,
    connects: usize,
    refused: usize,
    cuts: usize,
    /// Offsets the client asked for, in order.
    asked: Vec<u64>,
    acks: Vec<u64>,
    /// The furthest output offset sent on any connection.
    sent_max: u64,
}

#[derive(Clone)]
struct CuttingTransport(Arc<Mutex<Gw>>);

struct ChanConn {
    rx: mpsc::UnboundedReceiver<Result<Incoming, String>>,
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Conn for ChanConn {
    async fn recv(&mut self) -> Option<Result<Incoming, String>> {
        self.rx.recv().await
    }
    async fn send(&mut self, msg: Outgoing) -> Result<(), String> {
        self.tx.send(msg).map_err(|_| "broken pipe".to_string())
    }
}

impl Transport for CuttingTransport {
    type Conn = ChanConn;
    async fn connect(&self, offset: u64) -> Result<ChanConn, ConnectError> {
        let (cut_after, overlap) = {
            let mut gw = self.0.lock().unwrap();
            gw.connects += 1;
            // Now and then the gateway is unreachable for a few attempts.
            if gw.connects > 1 && gw.rng.below(4) == 0 {
                gw.refused += 1;
                return Err(ConnectError::Retry("connection refused".into()));
            }
            gw.asked.push(offset);
            (3 + gw.rng.below(30), gw.rng.below(5000))
        };
        let (to_client, rx) = mpsc::unbounded_channel();
        let (tx, from_client) = mpsc::unbounded_channel();
        tokio::spawn(serve_cutting(
            self.0.clone(),
            offset,
            overlap,
            cut_after,
            to_client,
            from_client,
        ));
        Ok(ChanConn { rx, tx })
    }
}

async fn serve_cutting(
    gw: Arc<Mutex<Gw>>,
    offset: u64,
    overlap: u64,
    cut_after: u64,
    to_client: mpsc::UnboundedSender<Result<Incoming, String>>,
    mut from_client: mpsc::UnboundedReceiver<Outgoing>,
) {
    // Resend a little before what was asked: the client must drop it.
    let mut pos = offset.saturating_sub(overlap);
    let input_offset = gw.lock().unwrap().input.len() as u64;
    let _ = to_client.send(Ok(Incoming::Text(attached_json(pos, input_offset, false))));
    let mut chunks = 0;
    loop {
        // Take what the client sent so far.
        while let Ok(m) = from_client.try_recv() {
            let mut g = gw.lock().unwrap();
            match m {
                Outgoing::Binary(b) => g.input.extend_from_slice(&b),
                Outgoing::Text(t) => {
                    if let Ok(ClientMsg::Ack { offset }) = serde_json::from_str(&t) {
                        assert!(offset <= g.sent_max, "ack of output never sent");
                        g.acks.push(offset);
                    }
                }
                Outgoing::Ping | Outgoing::Close => {}
            }
        }
        if chunks == cut_after {
            // Cut: what is still in flight either way is lost.
            let mut g = gw.lock().unwrap();
            g.cuts += 1;
            if g.rng.below(2) == 0 {
                let _ = to_client.send(Err("connection reset by peer".into()));
            }
            return;
        }
        let (chunk, done) = {
            let mut g = gw.lock().unwrap();
            let len = g.produced.len() as u64;
            let n = 1 + g.rng.below(2000);
            let end = (pos + n).min(len);
            let chunk = g.produced[pos as usize..end as usize].to_vec();
            g.sent_max = g.sent_max.max(end);
            let done = end == len && g.input.len() >= g.expected_input;
            (chunk, done)
        };
        if !chunk.is_empty() {
            pos += chunk.len() as u64;
            chunks += 1;
            if to_client.send(Ok(Incoming::Binary(chunk))).is_err() {
                return;
            }
        }
        if done {
            let exit = serde_json::to_string(&ServerMsg::Exit { code: 7 }).unwrap();
            let _ = to_client.send(Ok(Incoming::Text(exit)));
            // Keep the connection until the client leaves.
            while from_client.recv().await.is_some() {}
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        if from_client.is_closed() {
            return;
        }
    }
}

/// Runs one session through a gateway that cuts it at random points
/// (seeded), returns (cuts, refused connects).
async fn cutting_run(seed: u64) -> (usize, usize) {
    let produced: Vec<u8> = (0..600_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
    let keystrokes: Vec<Vec<u8>> = (0..300).map(|i| format!("key{i};").into_bytes()).collect();
    let expected_input: Vec<u8> = keystrokes.concat();
    let gw = Arc::new(Mutex::new(Gw {
        produced: produced.clone(),
        input: Vec::new(),
        expected_input: expected_input.len(),
        rng: Lcg(seed),
        connects: 0,
        refused: 0,
        cuts: 0,
        asked: Vec::new(),
        acks: Vec::new(),
        sent_max: 0,
    }));
    let transport = CuttingTransport(gw.clone());
    let (mut io, in_tx, _ev_tx, notices) = local_io();
    tokio::spawn(async move {
        for k in keystrokes {
            in_tx.send(k).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        // Keep the input open: its end is not what ends the session.
        std::future::pending::<()>().await;
    });
    let mut state = TermState::new(0, None);
    let outcome = run(&transport, &mut state, &mut io, &options(false))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Exit(7));
    assert!(
        io.out == produced,
        "seed {seed}: output differs from what was produced"
    );
    let g = gw.lock().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&g.input),
        String::from_utf8_lossy(&expected_input)
    );

    // Each reconnection asked for exactly what had been written.
    assert!(g.asked.windows(2).all(|w| w[0] <= w[1]));
    assert!(g.acks.windows(2).all(|w| w[0] <= w[1]), "acks go forward");
    // One notice per outage, however many attempts it took.
    let lost = notices
        .lock()
        .unwrap()
        .iter()
        .filter(|n| *n == CONNECTION_LOST)
        .count();
    assert_eq!(lost, g.cuts);
    (g.cuts, g.refused)
}

#[tokio::test(start_paused = true)]
async fn output_and_input_exactly_once_across_many_cuts() {
    for seed in 0..10 {
        let (cuts, refused) = cutting_run(seed).await;
        assert!(cuts >= 20, "seed {seed}: only {cuts} cuts");
        assert!(refused > 0, "seed {seed}");
    }
}

// ---------------------------------------------------------------------------
// Scripted gateways.

#[derive(Debug, Clone)]
enum Step {
    Send(Incoming),
    /// The connection drops.
    Drop,
    /// Wait until the client has sent this many messages on this connection.
    WaitSent(usize),
    /// Wait until the client has sent this many binary (input) messages.
    WaitInput(usize),
}

#[derive(Default)]
struct Scripted {
    /// Answers to `still_open`, in turn (then `false`).
    still_open: VecDeque<bool>,
    /// One script per connection; `Err` refuses the connect.
    scripts: VecDeque<Result<Vec<Step>, String>>,
    /// Messages received per connection.
    received: Vec<Vec<Outgoing>>,
    asked: Vec<u64>,
}

#[derive(Clone, Default)]
struct ScriptTransport(Arc<Mutex<Scripted>>);

struct ScriptConn {
    steps: VecDeque<Step>,
    index: usize,
    gw: Arc<Mutex<Scripted>>,
}

impl Conn for ScriptConn {
    async fn recv(&mut self) -> Option<Result<Incoming, String>> {
        loop {
            match self.steps.front().cloned() {
                None => std::future::pending::<()>().await,
                Some(Step::Drop) => return None,
                Some(Step::Send(m)) => {
                    self.steps.pop_front();
                    return Some(Ok(m));
                }
                Some(Step::WaitInput(n)) => {
                    let got = self.gw.lock().unwrap().received[self.index]
                        .iter()
                        .filter(|m| matches!(m, Outgoing::Binary(_)))
                        .count();
                    if got >= n {
                        self.steps.pop_front();
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                Some(Step::WaitSent(n)) => {
                    if self.gw.lock().unwrap().received[self.index].len() >= n {
                        self.steps.pop_front();
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
    }
    async fn send(&mut self, msg: Outgoing) -> Result<(), String> {
        if matches!(self.steps.front(), Some(Step::Drop)) {
            return Err("broken pipe".into());
        }
        if msg != Outgoing::Ping {
            self.gw.lock().unwrap().received[self.index].push(msg);
        }
        Ok(())
    }
}

impl Transport for ScriptTransport {
    type Conn = ScriptConn;
    async fn still_open(&self) -> bool {
        self.0
            .lock()
            .unwrap()
            .still_open
            .pop_front()
            .unwrap_or(false)
    }
    async fn connect(&self, offset: u64) -> Result<ScriptConn, ConnectError> {
        let mut g = self.0.lock().unwrap();
        g.asked.push(offset);
        match g.scripts.pop_front() {
            None => Err(ConnectError::Retry("refused".into())),
            Some(Err(e)) => Err(ConnectError::Retry(e)),
            Some(Ok(steps)) => {
                g.received.push(Vec::new());
                Ok(ScriptConn {
                    steps: steps.into(),
                    index: g.received.len() - 1,
                    gw: self.0.clone(),
                })
            }
        }
    }
}

fn script(conns: Vec<Result<Vec<Step>, String>>) -> ScriptTransport {
    ScriptTransport(Arc::new(Mutex::new(Scripted {
        scripts: conns.into(),
        ..Default::default()
    })))
}

fn text(m: &ServerMsg) -> Step {
    Step::Send(Incoming::Text(serde_json::to_string(m).unwrap()))
}

fn attached(output_offset: u64, input_offset: u64) -> Step {
    Step::Send(Incoming::Text(attached_json(
        output_offset,
        input_offset,
        false,
    )))
}

fn bin(b: &[u8]) -> Step {
    Step::Send(Incoming::Binary(b.to_vec()))
}

fn exit(code: i32) -> Step {
    text(&ServerMsg::Exit { code })
}

fn client_msgs(out: &[Outgoing]) -> Vec<ClientMsg> {
    out.iter()
        .filter_map(|m| match m {
            Outgoing::Text(t) => serde_json::from_str(t).ok(),
            _ => None,
        })
        .collect()
}

fn binaries(out: &[Outgoing]) -> Vec<u8> {
    out.iter()
        .filter_map(|m| match m {
            Outgoing::Binary(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn reconnect_resumes_output_and_resends_input() {
    let t = script(vec![
        Ok(vec![
            attached(0, 0),
            bin(b"hello "),
            Step::WaitSent(1),
            Step::Drop,
        ]),
        Err("refused".into()),
        Ok(vec![
            // Resends from 3 although 6 was asked: "lo " is dropped.
            attached(3, 2),
            bin(b"lo world"),
            Step::WaitSent(1),
            exit(0),
        ]),
    ]);
    let (mut io, in_tx, _ev, notices) = local_io();
    in_tx.send(b"ls\r".to_vec()).await.unwrap();
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Exit(0));
    assert_eq!(io.out, b"hello world");
    let g = t.0.lock().unwrap();
    assert_eq!(g.asked, [0, 6, 6]);
    assert_eq!(binaries(&g.received[0]), b"ls\r");
    // The gateway had taken 2 bytes: the rest is sent again.
    assert_eq!(binaries(&g.received[1]), b"\r");
    assert_eq!(
        *notices.lock().unwrap(),
        [CONNECTION_LOST.to_string()],
        "one line for the outage"
    );
}

#[tokio::test(start_paused = true)]
async fn keystrokes_while_disconnected_are_sent_after_reconnect() {
    let t = script(vec![
        Ok(vec![attached(0, 0), Step::Drop]),
        Err("down".into()),
        Err("down".into()),
        Ok(vec![attached(0, 0), Step::WaitSent(1), exit(3)]),
    ]);
    let (mut io, in_tx, _ev, _n) = local_io();
    let mut state = TermState::new(0, None);
    let typing = tokio::spawn(async move {
        // Typed during the outage (the backoff sleeps 200 ms, then 400 ms).
        tokio::time::sleep(Duration::from_millis(100)).await;
        in_tx.send(b"echo ".to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        in_tx.send(b"hi\r".to_vec()).await.unwrap();
        in_tx
    });
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Exit(3));
    let g = t.0.lock().unwrap();
    assert_eq!(g.received[0], []);
    assert_eq!(binaries(&g.received[1]), b"echo hi\r");
    assert_eq!(
        g.received[1][0],
        Outgoing::Binary(b"echo hi\r".to_vec()),
        "in one message"
    );
    drop(typing);
}

#[tokio::test(start_paused = true)]
async fn acks_after_output_pauses_and_every_64k() {
    let big = vec![b'y'; 70_000];
    let t = script(vec![Ok(vec![
        attached(0, 0),
        bin(b"abc"),
        Step::WaitSent(1),
        bin(&big),
        Step::WaitSent(2),
        exit(0),
    ])]);
    let (mut io, _in, _ev, _n) = local_io();
    let mut state = TermState::new(0, None);
    run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    let g = t.0.lock().unwrap();
    let acks = client_msgs(&g.received[0]);
    assert_eq!(
        acks,
        [
            ClientMsg::Ack { offset: 3 },
            ClientMsg::Ack { offset: 70_003 }
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn tilde_dot_leaves_the_session_running() {
    let t = script(vec![Ok(vec![attached(0, 0), bin(b"$ ")])]);
    let (mut io, in_tx, _ev, _n) = local_io();
    type_later(in_tx, vec![b"ls\r".to_vec(), b"~.".to_vec()], false);
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(true)).await.unwrap();
    assert_eq!(o, Outcome::Detached);
    let g = t.0.lock().unwrap();
    assert_eq!(binaries(&g.received[0]), b"ls\r");
    assert_eq!(g.received[0].last(), Some(&Outgoing::Close));
    assert!(!client_msgs(&g.received[0]).contains(&ClientMsg::Close));
}

#[tokio::test(start_paused = true)]
async fn tilde_dot_works_while_disconnected() {
    let t = script(vec![]);
    let (mut io, in_tx, _ev, _n) = local_io();
    in_tx.send(b"~.".to_vec()).await.unwrap();
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(true)).await.unwrap();
    assert_eq!(o, Outcome::Detached);
}

#[tokio::test(start_paused = true)]
async fn read_only_viewers_send_no_keystrokes() {
    let t = script(vec![Ok(vec![
        Step::Send(Incoming::Text(attached_json(0, 0, true))),
        bin(b"watching"),
    ])]);
    let (mut io, in_tx, ev_tx, _n) = local_io();
    ev_tx.send(Local::Resize(50, 200)).await.unwrap();
    type_later(in_tx, vec![b"rm -rf /\r".to_vec(), vec![0x03]], false);
    let mut state = TermState::new(0, Some((40, 100)));
    let o = run(&t, &mut state, &mut io, &options(true)).await.unwrap();
    assert_eq!(o, Outcome::Detached, "Ctrl-C leaves");
    assert_eq!(io.out, b"watching");
    let g = t.0.lock().unwrap();
    assert_eq!(binaries(&g.received[0]), b"");
    assert!(!client_msgs(&g.received[0])
        .iter()
        .any(|m| matches!(m, ClientMsg::Resize { .. })));
}

#[tokio::test(start_paused = true)]
async fn resize_is_sent_on_attach_and_on_sigwinch() {
    let t = script(vec![Ok(vec![attached(0, 0), Step::WaitSent(2), exit(0)])]);
    let (mut io, _in, ev_tx, _n) = local_io();
    let mut state = TermState::new(0, Some((30, 100)));
    let winch = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ev_tx.send(Local::Resize(50, 132)).await.unwrap();
        ev_tx
    });
    run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    let g = t.0.lock().unwrap();
    assert_eq!(
        client_msgs(&g.received[0]),
        [
            ClientMsg::Resize {
                rows: 30,
                cols: 100
            },
            ClientMsg::Resize {
                rows: 50,
                cols: 132
            }
        ]
    );
    drop(winch);
}

#[tokio::test(start_paused = true)]
async fn end_of_piped_input_sends_ctrl_d_whenever_output_settles() {
    let t = script(vec![Ok(vec![
        attached(0, 0),
        Step::WaitInput(1),
        bin(b"prompt$ "),
        Step::WaitInput(2),
        // The first Ctrl-D went to a command; the prompt comes back.
        bin(b"\r\nprompt$ "),
        Step::WaitInput(3),
        exit(0),
    ])]);
    let (mut io, in_tx, _ev, _n) = local_io();
    type_later(in_tx, vec![b"sleep 1\r".to_vec()], true);
    let mut state = TermState::new(0, None);
    let mut opts = options(false);
    opts.eof_sends_eot = true;
    let start = Instant::now();
    run(&t, &mut state, &mut io, &opts).await.unwrap();
    let g = t.0.lock().unwrap();
    // Acks are text; input only the line and two Ctrl-Ds.
    assert_eq!(binaries(&g.received[0]), b"sleep 1\r\x04\x04");
    assert!(start.elapsed() >= Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn no_ctrl_d_unless_asked_or_read_only() {
    let t = script(vec![Ok(vec![attached(0, 0), bin(b"$ ")])]);
    let (mut io, in_tx, ev_tx, _n) = local_io();
    type_later(in_tx, vec![b"x".to_vec()], true);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        ev_tx.send(Local::Signal(15)).await.unwrap();
    });
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Signal(15));
    let g = t.0.lock().unwrap();
    assert_eq!(binaries(&g.received[0]), b"x");
}

#[tokio::test(start_paused = true)]
async fn closed_and_signals_end_the_loop() {
    let t = script(vec![Ok(vec![
        attached(0, 0),
        text(&ServerMsg::Closed {
            reason: "idle timeout".into(),
        }),
    ])]);
    let (mut io, _in, _ev, _n) = local_io();
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Closed("idle timeout".into()));

    let t = script(vec![Ok(vec![attached(0, 0)])]);
    let (mut io, _in, ev_tx, _n) = local_io();
    ev_tx.send(Local::Signal(15)).await.unwrap();
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Signal(15));
}

#[tokio::test(start_paused = true)]
async fn closed_while_the_session_is_still_open_means_reconnect() {
    let closed = text(&ServerMsg::Closed {
        reason: "the session is not running on this gateway".into(),
    });
    let t = script(vec![
        Ok(vec![attached(0, 0), bin(b"abc")]),
        Ok(vec![attached(3, 0), closed.clone()]),
        Ok(vec![attached(3, 0), bin(b"def"), exit(4)]),
    ]);
    {
        let mut g = t.0.lock().unwrap();
        g.scripts[0].as_mut().unwrap().push(Step::Drop);
        g.still_open = [true].into();
    }
    let (mut io, _in, _ev, notices) = local_io();
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Exit(4));
    assert_eq!(io.out, b"abcdef");
    assert_eq!(t.0.lock().unwrap().asked, [0, 3, 3]);
    assert_eq!(notices.lock().unwrap().len(), 1, "one outage");
}

#[tokio::test(start_paused = true)]
async fn an_error_instead_of_attached_is_fatal() {
    let t = script(vec![Ok(vec![text(&ServerMsg::Error {
        code: "session_not_found".into(),
        detail: "no such session".into(),
    })])]);
    let (mut io, _in, _ev, _n) = local_io();
    let mut state = TermState::new(0, None);
    let e = run(&t, &mut state, &mut io, &options(false))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "no such session");
    assert!(matches!(
        e.downcast_ref::<CliError>(),
        Some(CliError::Api { status: 404, .. })
    ));
    // After attaching, an error is only shown.
    let t = script(vec![Ok(vec![
        attached(0, 0),
        text(&ServerMsg::Error {
            code: "bad_message".into(),
            detail: "resize out of range".into(),
        }),
        text(&ServerMsg::Status {
            agent_connected: false,
        }),
        exit(1),
    ])]);
    let (mut io, _in, _ev, notices) = local_io();
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Exit(1));
    let n = notices.lock().unwrap();
    assert_eq!(n.len(), 2);
    assert!(n[0].contains("resize out of range"));
    assert!(n[1].contains("agent"));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_limit_and_says_how_to_reattach() {
    let t = script(vec![]);
    let (mut io, _in, _ev, notices) = local_io();
    let mut state = TermState::new(0, None);
    let start = Instant::now();
    let e = run(&t, &mut state, &mut io, &options(false))
        .await
        .unwrap_err();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(600) && waited < Duration::from_secs(610));
    assert!(e.to_string().contains("alpacon websh attach s1"), "{e}");
    assert_eq!(notices.lock().unwrap().len(), 1);
    // 0.2 s doubling to 5 s: the attempts are not a busy loop.
    let attempts = t.0.lock().unwrap().asked.len();
    assert!((100..200).contains(&attempts), "{attempts} attempts");
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_declared_dead() {
    let t = script(vec![
        // Attached, then nothing at all (a pulled cable).
        Ok(vec![attached(0, 0), bin(b"a")]),
        Ok(vec![attached(1, 0), bin(b"b"), exit(0)]),
    ]);
    let (mut io, _in, _ev, _n) = local_io();
    let mut state = TermState::new(0, None);
    let start = Instant::now();
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Exit(0));
    assert_eq!(io.out, b"ab");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(30) && waited <= Duration::from_secs(41));
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_attaches_is_retried() {
    let t = script(vec![
        Ok(vec![]),
        Ok(vec![attached(0, 0), bin(b"ok"), exit(0)]),
    ]);
    let (mut io, _in, _ev, _n) = local_io();
    let mut state = TermState::new(0, None);
    let o = run(&t, &mut state, &mut io, &options(false)).await.unwrap();
    assert_eq!(o, Outcome::Exit(0));
    assert_eq!(io.out, b"ok");
}

#[test]
fn backoff_doubles_from_200ms_to_5s() {
    let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let ms: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
    assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    b.reset();
    assert_eq!(b.next_delay().as_millis(), 200);
}
