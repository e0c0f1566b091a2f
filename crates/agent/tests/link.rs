//! The agent's side of the link against a fake gateway, over an in-memory
//! WebSocket: handshake, heartbeat, commands with spool and ack, and file
//! streams served by the real `alpamon` helper binary.

mod common;

use std::path::Path;

use alpacon_mux::{Event, Mux};
use alpacon_proto::{
    Close, CommandResult, CommandSpec, Control, EntryKind, ErrorCode, Open, StreamInfo,
    StreamResult, SUPPORTED,
};
use alpamon::link::LinkError;
use bytes::Bytes;
use common::*;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::timeout;

async fn next_result(rx: &mut mpsc::UnboundedReceiver<Control>) -> (CommandResult, Vec<u8>) {
    let mut live = Vec::new();
    loop {
        match timeout(T, rx.recv()).await.expect("timed out").unwrap() {
            Control::CommandOutput { offset, data, .. } => {
                assert_eq!(offset as usize, live.len());
                live.extend(data);
            }
            Control::CommandResult(r) => return (r, live),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn spec(id: &str, line: &str) -> CommandSpec {
    CommandSpec {
        id: id.into(),
        line: line.into(),
        username: me(),
        groupname: None,
        env: Default::default(),
        timeout_secs: None,
        managed: None,
    }
}

#[tokio::test]
async fn handshake_ping_and_heartbeat_timeout() {
    let s = setup(1);
    let (mut ws, h, _stop) = connect(&s.agent).await;
    handshake(&mut ws, &s.key).await;
    send(&mut ws, Control::Ping { seq: 41 }).await;
    assert_eq!(recv(&mut ws).await, Control::Pong { seq: 41 });
    // The gateway going away ends the session.
    drop(ws);
    let end = timeout(T, h).await.unwrap().unwrap();
    assert!(matches!(end, LinkError::Lost(_)), "{end}");

    // A silent gateway: the link is dropped after the heartbeat timeout
    // (the config's 1 s here, as the gateway announces no ping interval).
    let (mut ws, h, _stop) = connect(&s.agent).await;
    send(
        &mut ws,
        Control::Challenge {
            nonce: vec![1; 32],
            versions: SUPPORTED,
        },
    )
    .await;
    let _auth = recv(&mut ws).await;
    send(
        &mut ws,
        Control::Welcome {
            version: 1,
            heartbeat_secs: 0,
        },
    )
    .await;
    let end = timeout(T, h).await.unwrap().unwrap();
    assert!(
        end.to_string().contains("no message from the gateway"),
        "{end}"
    );
    assert!(s.agent.link.get().is_none());
}

#[tokio::test]
async fn reject_is_reported() {
    let s = setup(45);
    let (mut ws, h, _stop) = connect(&s.agent).await;
    send(
        &mut ws,
        Control::Challenge {
            nonce: vec![1; 32],
            versions: SUPPORTED,
        },
    )
    .await;
    let _auth = recv(&mut ws).await;
    send(
        &mut ws,
        Control::Reject {
            code: "unknown_server".into(),
            detail: "no such server".into(),
        },
    )
    .await;
    match timeout(T, h).await.unwrap().unwrap() {
        LinkError::Rejected { code, detail } => {
            assert_eq!(code, "unknown_server");
            assert_eq!(detail, "no such server");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn commands_are_deduplicated_spooled_resent_and_acked() {
    // Resent on reconnection, not by the timer (see tests/commands.rs).
    let s = setup_with(alpamon::config::LinkConfig {
        result_retry_initial_ms: 3_600_000,
        ..Default::default()
    });
    let (mut ws, h, stop) = connect(&s.agent).await;
    handshake(&mut ws, &s.key).await;
    let (mux, mut rx) = gateway_mux(ws);

    mux.send_control(Control::RunCommand(spec(
        "c1",
        "echo out; echo err >&2; exit 7",
    )))
    .await
    .unwrap();
    let (r, live) = next_result(&mut rx).await;
    assert_eq!(r.id, "c1");
    assert_eq!(r.exit_code, 7);
    assert_eq!(r.output, b"out\nerr\n");
    assert_eq!(live, r.output);
    let spooled = s.data.join("spool/c1.result");
    assert!(spooled.exists());

    // At-least-once delivery: a repeated RunCommand resends, never reruns.
    mux.send_control(Control::RunCommand(spec("c1", "echo again")))
        .await
        .unwrap();
    let (again, live) = next_result(&mut rx).await;
    assert_eq!(again, r);
    assert!(live.is_empty());

    // Cancel a running command.
    mux.send_control(Control::RunCommand(spec("c2", "echo started; sleep 60")))
        .await
        .unwrap();
    match timeout(T, rx.recv()).await.unwrap().unwrap() {
        Control::CommandOutput { data, .. } => assert_eq!(data, b"started\n"),
        other => panic!("{other:?}"),
    }
    mux.send_control(Control::CancelCommand {
        id: "c2".into(),
        reason: "user cancel".into(),
    })
    .await
    .unwrap();
    let (r2, _) = next_result(&mut rx).await;
    assert_eq!(r2.error.unwrap().code, ErrorCode::Cancelled);

    // Ack: the spool forgets it.
    mux.send_control(Control::CommandAck { id: "c1".into() })
        .await
        .unwrap();
    wait_for("the ack", || !spooled.exists()).await;

    // Link down: a command finishing meanwhile stays spooled...
    stop.send(true).unwrap();
    assert!(matches!(
        timeout(T, h).await.unwrap().unwrap(),
        LinkError::Shutdown
    ));
    s.agent.runner.submit(spec("c3", "echo offline"));
    wait_for("the offline result", || {
        s.data.join("spool/c3.result").exists()
    })
    .await;

    // ... and is resent after the next handshake, with c2's unacked result.
    let (mut ws, _h, _stop) = connect(&s.agent).await;
    handshake(&mut ws, &s.key).await;
    let (_mux, mut rx) = gateway_mux(ws);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (r, _) = next_result(&mut rx).await;
        ids.push(r.id.clone());
        if r.id == "c3" {
            assert_eq!(r.output, b"offline\n");
        }
    }
    ids.sort();
    assert_eq!(ids, vec!["c2", "c3"]);
}

async fn closed(st: &mut alpacon_mux::Stream) -> (Vec<u8>, Close) {
    let mut data = Vec::new();
    loop {
        match timeout(T, st.rx.recv()).await.unwrap() {
            Some(Event::Data(d)) => data.extend_from_slice(&d),
            Some(Event::Closed(c)) => return (data, c),
            Some(_) => {}
            None => panic!("stream ended without close"),
        }
    }
}

fn sha(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

async fn upload(mux: &Mux, path: &Path, user: &str, data: &[u8], overwrite: bool) -> Close {
    let (mut st, info) = match open(
        mux,
        Open::FileWrite {
            path: path.to_str().unwrap().into(),
            account: account(user),
            overwrite,
            mode: None,
            confine: Vec::new(),
        },
    )
    .await
    {
        Ok(x) => x,
        Err(e) => return Close::Err(e),
    };
    assert_eq!(info, StreamInfo::Ready);
    st.tx.send(Bytes::copy_from_slice(data)).await.unwrap();
    st.tx.eof().unwrap();
    closed(&mut st).await.1
}

#[tokio::test]
async fn file_streams_through_the_helper() {
    let s = setup(45);
    let (mut ws, _h, _stop) = connect(&s.agent).await;
    handshake(&mut ws, &s.key).await;
    let (mux, _rx) = gateway_mux(ws);
    let dir = tempfile::tempdir().unwrap();
    let user = me();

    // Upload 5 MiB: more than one window, so credit must flow.
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let target = dir.path().join("sub/big.bin");
    let c = upload(&mux, &target, &user, &data, false).await;
    let Close::Err(e) = c else { panic!("{c:?}") };
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.detail.contains("no such directory"), "{}", e.detail);

    // Mkdir, then the upload works.
    let (mut st, _) = match mux
        .open(Open::Mkdir {
            path: target.parent().unwrap().to_str().unwrap().into(),
            account: account(&user),
            confine: Vec::new(),
        })
        .await
    {
        Ok(st) => (st, ()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(closed(&mut st).await.1, Close::Ok(StreamResult::Done));
    let c = upload(&mux, &target, &user, &data, false).await;
    assert_eq!(
        c,
        Close::Ok(StreamResult::Written {
            bytes: data.len() as u64,
            sha256: sha(&data)
        })
    );
    assert_eq!(std::fs::read(&target).unwrap(), data);

    // Existing file without overwrite: refused before any data flows.
    let c = upload(&mux, &target, &user, b"x", false).await;
    let Close::Err(e) = c else { panic!("{c:?}") };
    assert_eq!(e.code, ErrorCode::AlreadyExists);

    // Download it back.
    let (mut st, info) = open(
        &mux,
        Open::FileRead {
            path: target.to_str().unwrap().into(),
            account: account(&user),
            confine: Vec::new(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(info, StreamInfo::File { size, .. } if size == data.len() as u64));
    let (got, c) = closed(&mut st).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    assert_eq!(
        c,
        Close::Ok(StreamResult::Read {
            bytes: data.len() as u64,
            sha256: sha(&data)
        })
    );

    // Download of a directory: a clear error.
    let e = open(
        &mux,
        Open::FileRead {
            path: dir.path().to_str().unwrap().into(),
            account: account(&user),
            confine: Vec::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::IsADirectory);

    // Stat, recursive.
    let mut st = mux
        .open(Open::Stat {
            path: dir.path().to_str().unwrap().into(),
            account: account(&user),
            recursive: true,
            confine: Vec::new(),
        })
        .await
        .unwrap();
    let (_, c) = closed(&mut st).await;
    let Close::Ok(StreamResult::Listing { entries }) = c else {
        panic!("{c:?}")
    };
    let got: Vec<(&str, EntryKind)> = entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(
        got,
        vec![
            ("", EntryKind::Dir),
            ("sub", EntryKind::Dir),
            ("sub/big.bin", EntryKind::File)
        ]
    );

    // Unknown account.
    let c = upload(
        &mux,
        &dir.path().join("g"),
        "no-such-user-alpacon",
        b"x",
        false,
    )
    .await;
    let Close::Err(e) = c else { panic!("{c:?}") };
    assert_eq!(e.code, ErrorCode::NoSuchUser);

    // A cancelled upload leaves neither the file nor a temporary.
    let partial = dir.path().join("partial.bin");
    let (st, _) = open(
        &mux,
        Open::FileWrite {
            path: partial.to_str().unwrap().into(),
            account: account(&user),
            overwrite: false,
            mode: None,
            confine: Vec::new(),
        },
    )
    .await
    .unwrap();
    st.tx.send(Bytes::from_static(b"some bytes")).await.unwrap();
    drop(st); // cancels the stream
    wait_for("the helper to clean up", || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .all(|e| e.unwrap().file_name() == "sub")
    })
    .await;
    assert!(!partial.exists());
}

/// As root, commands and files really run as the requested account.
#[tokio::test]
async fn drops_privileges_to_the_account() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let s = setup(45);
    let (mut ws, _h, _stop) = connect(&s.agent).await;
    handshake(&mut ws, &s.key).await;
    let (mux, mut rx) = gateway_mux(ws);

    let mut sp = spec("p1", "id -u; id -g; id -G; echo $HOME $USER; pwd");
    sp.username = "nobody".into();
    mux.send_control(Control::RunCommand(sp)).await.unwrap();
    let (r, _) = next_result(&mut rx).await;
    assert_eq!(r.error, None);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let out = String::from_utf8(r.output).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string());
    assert_eq!(lines[1], nobody.gid.to_string());
    assert!(
        !lines[2].split(' ').any(|g| g == "0"),
        "root group kept: {out}"
    );
    assert_eq!(lines[3], format!("{} nobody", nobody.dir.display()));
    // nobody's home usually does not exist: the command runs in /.
    if !nobody.dir.exists() {
        assert_eq!(lines[4], "/");
    }

    // Files: a directory nobody may write, one it may not.
    let dir = tempfile::tempdir().unwrap();
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(
        &open_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let f = open_dir.join("mine");
    let c = upload(&mux, &f, "nobody", b"hi", false).await;
    assert!(
        matches!(c, Close::Ok(StreamResult::Written { bytes: 2, .. })),
        "{c:?}"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), nobody.uid.as_raw());

    let c = upload(&mux, &dir.path().join("theirs"), "nobody", b"hi", false).await;
    let Close::Err(e) = c else { panic!("{c:?}") };
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{}", e.detail);
    assert!(e.detail.starts_with("permission denied: "), "{}", e.detail);
}
