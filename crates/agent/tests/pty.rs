//! Terminals through the agent's link, against the fake gateway: a real PTY
//! and login shell, resume after a link loss, bounded memory under a flood,
//! and privileges dropped to the account.

mod common;

use std::time::{Duration, Instant};

use alpacon_mux::{Event, Mux, Stream};
use alpacon_proto::pty::PtyIn;
use alpacon_proto::{Close, ErrorCode, Open, StreamInfo, StreamResult};
use alpamon::link::LinkError;
use alpamon::pty::{READ_CHUNK, REPLAY_CAP};
use bytes::Bytes;
use common::*;
use tokio::time::timeout;

/// The gateway's end of one terminal stream.
struct Term {
    st: Stream,
    /// Every output byte received since the session started.
    got: Vec<u8>,
    /// Input bytes sent since the session started.
    sent: u64,
    /// Acknowledge output as it arrives.
    ack: bool,
}

impl Term {
    async fn open(mux: &Mux, session: &str, user: &str, rows: u16, cols: u16) -> Term {
        let (st, info) = open(
            mux,
            Open::Pty {
                session: session.into(),
                account: account(user),
                rows,
                cols,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            info,
            StreamInfo::Pty {
                output_offset: 0,
                input_offset: 0
            }
        );
        Term {
            st,
            got: Vec::new(),
            sent: 0,
            ack: true,
        }
    }

    async fn send(&self, m: PtyIn) {
        self.st.tx.send(m.encode()).await.unwrap();
    }

    async fn input(&mut self, b: &[u8]) {
        self.send(PtyIn::Input(Bytes::copy_from_slice(b))).await;
        self.sent += b.len() as u64;
    }

    /// Take one event: data is appended (and acked); `Some` on close.
    async fn step(&mut self) -> Option<Close> {
        match timeout(T, self.st.rx.recv())
            .await
            .expect("terminal silent")
        {
            Some(Event::Data(d)) => {
                self.got.extend_from_slice(&d);
                if self.ack {
                    let offset = self.got.len() as u64;
                    // The stream may be closing (Exited follows).
                    let _ = self.st.tx.send(PtyIn::Ack { offset }.encode()).await;
                }
                None
            }
            Some(Event::Closed(c)) => Some(c),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("stream ended without close"),
        }
    }

    fn has(&self, marker: &[u8]) -> bool {
        find(&self.got, marker).is_some()
    }

    /// Read until `marker` appears in the output.
    async fn until(&mut self, marker: &str) {
        while !self.has(marker.as_bytes()) {
            if let Some(c) = self.step().await {
                panic!(
                    "closed ({c:?}) waiting for {marker:?}; output: {}",
                    String::from_utf8_lossy(&self.got)
                );
            }
        }
    }

    /// Read to the end: the stream's close.
    async fn closed(&mut self) -> Close {
        loop {
            if let Some(c) = self.step().await {
                return c;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// The text between `{tag}=` and the next `=` in the output, from the last
/// occurrence (the command's echo has `{tag}=$(...)`, the output the value).
fn value(out: &[u8], tag: &str) -> String {
    let text = String::from_utf8_lossy(out);
    let mut found = None;
    for (i, _) in text.match_indices(&format!("{tag}=")) {
        let rest = &text[i + tag.len() + 1..];
        if let Some(end) = rest.find('=') {
            if !rest[..end].contains('$') {
                found = Some(rest[..end].to_string());
            }
        }
    }
    found.unwrap_or_else(|| panic!("no {tag}= in {text}"))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_real_terminal() {
    let s = setup(45);
    let (mux, _rx, _h, _stop) = link_up(&s).await;
    let mut t = Term::open(&mux, "basic", &me(), 24, 80).await;

    t.input(b"echo \"TTY=$(tty)=\" \"SIZE=$(stty size)=\" \"ARGV0=$0=\" \"TERM=$TERM=\"\r")
        .await;
    t.until("ARGV0=-").await;
    t.until("TERM=xterm").await;
    assert!(
        value(&t.got, "TTY").starts_with("/dev/pts/"),
        "{}",
        value(&t.got, "TTY")
    );
    assert_eq!(value(&t.got, "SIZE"), "24 80");
    assert!(value(&t.got, "ARGV0").starts_with('-'), "a login shell");
    assert_eq!(value(&t.got, "TERM"), "xterm-256color");

    // `tty` itself prints the device on a line of its own.
    t.input(b"tty; echo TTY-DONE-$((1+1))\r").await;
    t.until("TTY-DONE-2").await;
    let out = String::from_utf8_lossy(&t.got).into_owned();
    assert!(
        out.split(['\r', '\n']).any(|l| l.starts_with("/dev/pts/")),
        "{out:?}"
    );

    // Resize, then the shell sees the new size.
    t.send(PtyIn::Resize {
        rows: 50,
        cols: 132,
    })
    .await;
    t.input(b"echo \"NEWSIZE=$(stty size)=\"\r").await;
    t.until("NEWSIZE=5").await;
    assert_eq!(value(&t.got, "NEWSIZE"), "50 132");

    // Binary-safe both ways: raw output bytes, and a UTF-8 character split
    // across two input messages.
    t.input(b"printf 'B\\377\\376\\001E\\n'\r").await;
    t.until("E\r\n").await;
    assert!(find(&t.got, b"B\xff\xfe\x01E\r\n").is_some());
    t.input(b"echo \"U=\xc3").await;
    t.input(b"\x9c=\"\r").await;
    t.until("U=\u{dc}=\r\n").await;

    let pid = s.agent.terminals.stats("basic").unwrap().pid;
    t.input(b"exit 3\r").await;
    assert_eq!(
        t.closed().await,
        Close::Ok(StreamResult::Exited { code: 3 })
    );
    assert!(s.agent.terminals.stats("basic").is_none());
    // Reaped, not a zombie.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(!stat.contains(") Z "), "zombie shell: {stat}");
}

/// The link drops mid-session: the shell keeps running and producing
/// output; after re-attaching from the last offset received, the output
/// produced meanwhile arrives exactly once, in order, and the session goes on.
#[tokio::test]
async fn a_terminal_survives_link_loss() {
    let s = setup(45);
    let (mux, _rx, h, stop) = link_up(&s).await;
    let mut t = Term::open(&mux, "resume", &me(), 24, 80).await;
    t.input(b"echo READY-$((40+2))\r").await;
    t.until("READY-42").await;

    // Output that starts once the link is gone.
    let line = "sleep 1; seq 1 5000; sleep 1; echo AFTER-$((2+2))\r";
    t.input(line.as_bytes()).await;
    t.until("AFTER-$((2+2))").await; // the echo: the input was written
    stop.send(true).unwrap();
    assert!(matches!(
        timeout(T, h).await.unwrap().unwrap(),
        LinkError::Shutdown
    ));
    // Whatever was still in flight arrives or is lost with the link.
    let Close::Err(e) = t.closed().await else {
        panic!("the stream must end with the link")
    };
    assert_eq!(e.code, ErrorCode::Io);
    let have = t.got.len() as u64;
    assert!(!t.has(b"5000\r\n"));

    // The terminal runs on, detached, and buffers what the shell prints.
    let start = Instant::now();
    loop {
        let st = s.agent.terminals.stats("resume").unwrap();
        if !st.attached && st.output_end > have + 20_000 {
            break;
        }
        assert!(start.elapsed() < T, "no output while detached: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new link; attach from what we have.
    let (mux, _rx, _h, _stop) = link_up(&s).await;
    let mut st = mux
        .open(Open::PtyAttach {
            session: "resume".into(),
            output_offset: have,
        })
        .await
        .unwrap();
    let info = timeout(T, st.wait_accept()).await.unwrap().unwrap();
    assert_eq!(
        info,
        StreamInfo::Pty {
            output_offset: have,
            input_offset: t.sent
        }
    );
    t.st = st;
    t.until("AFTER-4").await;
    let expected: String = (1..=5000).map(|i| format!("{i}\r\n")).collect();
    assert_eq!(
        count(&t.got, expected.as_bytes()),
        1,
        "the output produced while detached, exactly once and in order"
    );
    assert_eq!(count(&t.got, b"\r\n2500\r\n"), 1);

    // And the session continues.
    t.input(b"echo CONT-$((1+2))\r").await;
    t.until("CONT-3").await;
    t.input(b"exit 3\r").await;
    assert_eq!(
        t.closed().await,
        Close::Ok(StreamResult::Exited { code: 3 })
    );
}

/// `yes` with nobody acknowledging: the agent holds at most one replay
/// buffer of output and stops reading the PTY (the program blocks); with
/// acks flowing it passes many buffers' worth through without growing;
/// Ctrl-C stops it promptly.
#[tokio::test]
async fn a_flood_is_bounded_and_interruptible() {
    let s = setup(45);
    let (mux, _rx, _h, _stop) = link_up(&s).await;
    let mut t = Term::open(&mux, "flood", &me(), 24, 80).await;
    t.input(b"echo READY-$((40+2))\r").await;
    t.until("READY-42").await;
    let stats = || s.agent.terminals.stats("flood").unwrap();
    let bound = REPLAY_CAP + READ_CHUNK;

    // Phase 1: no acks. The stream is consumed (mux credit is no limit) but
    // the agent's buffer fills and the PTY is no longer read.
    t.ack = false;
    t.input(b"yes\r").await;
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < T, "the flood did not fill the buffer");
        assert!(stats().buffered <= bound);
        match timeout(Duration::from_millis(500), t.st.rx.recv()).await {
            Ok(Some(Event::Data(d))) => t.got.extend_from_slice(&d),
            Ok(other) => panic!("{other:?}"),
            Err(_) if stats().buffered >= REPLAY_CAP => break,
            Err(_) => {}
        }
    }
    let full = stats();
    assert_eq!(full.buffered, REPLAY_CAP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats().output_end, full.output_end, "the PTY is not read");
    t.got.clear(); // only offsets matter from here
    let mut offset = full.output_end;

    // Phase 2: acks flow; 32 MiB pass and memory stays flat.
    let rss_before = rss_kib();
    let mut max_buffered = 0;
    while offset < full.output_end + 32 * 1024 * 1024 {
        t.send(PtyIn::Ack { offset }).await;
        match timeout(T, t.st.rx.recv()).await.unwrap() {
            Some(Event::Data(d)) => offset += d.len() as u64,
            other => panic!("{other:?}"),
        }
        max_buffered = max_buffered.max(stats().buffered);
    }
    let rss_growth = rss_kib().saturating_sub(rss_before);
    assert!(max_buffered <= bound, "agent buffered {max_buffered} bytes");
    assert!(
        rss_growth < 16 * 1024,
        "memory grew by {rss_growth} KiB while 32 MiB passed"
    );

    // Phase 3: Ctrl-C; the shell is back in seconds.
    let t0 = Instant::now();
    t.ack = true;
    t.input(b"\x03").await;
    t.send(PtyIn::Ack { offset }).await;
    t.input(b"echo STOPPED-$((6*7))\r").await;
    t.got = Vec::new();
    // `got` restarts here; acks must count from the stream's offset.
    let base = offset;
    loop {
        match timeout(T, t.st.rx.recv()).await.unwrap() {
            Some(Event::Data(d)) => {
                t.got.extend_from_slice(&d);
                let offset = base + t.got.len() as u64;
                t.send(PtyIn::Ack { offset }).await;
                assert!(stats().buffered <= bound);
            }
            other => panic!("{other:?}"),
        }
        if t.has(b"STOPPED-42") {
            break;
        }
        // Keep the tail only.
        if t.got.len() > 64 * 1024 {
            let cut = t.got.len() - 64;
            t.got.drain(..cut);
        }
    }
    eprintln!(
        "flood: agent buffered at most {max_buffered} B, test process RSS +{rss_growth} KiB over 32 MiB, Ctrl-C to prompt {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "Ctrl-C took {:?}",
        t0.elapsed()
    );
    t.input(b"exit\r").await;
    assert!(matches!(
        t.closed().await,
        Close::Ok(StreamResult::Exited { .. })
    ));
}

/// As root, the terminal belongs to the account asked for.
#[tokio::test]
async fn a_terminal_as_another_account() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let s = setup(45);
    let (mux, _rx, _h, _stop) = link_up(&s).await;
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let mut t = Term::open(&mux, "nobody", "nobody", 24, 80).await;
    t.input(b"echo \"UID=$(id -u)=\" \"GID=$(id -g)=\" \"GROUPS=$(id -G)=\" \"OWNER=$(stat -c %u $(tty))=\" \"USER=$USER=\"\r")
        .await;
    t.until("USER=nobody=").await;
    assert_eq!(value(&t.got, "UID"), nobody.uid.to_string());
    assert_eq!(value(&t.got, "GID"), nobody.gid.to_string());
    let groups = value(&t.got, "GROUPS");
    assert!(
        !groups.split(' ').any(|g| g == "0"),
        "root group kept: {groups}"
    );
    assert_eq!(value(&t.got, "OWNER"), nobody.uid.to_string());
    // The shell itself, not only its children.
    let pid = s.agent.terminals.stats("nobody").unwrap().pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.uid.to_string()),
        "{uid_line}"
    );
    t.input(b"exit 0\r").await;
    assert_eq!(
        t.closed().await,
        Close::Ok(StreamResult::Exited { code: 0 })
    );

    // An unknown account: the same error as for commands.
    let e = open(
        &mux,
        Open::Pty {
            session: "ghost".into(),
            account: account("no-such-user-alpacon"),
            rows: 24,
            cols: 80,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NoSuchUser);
}
