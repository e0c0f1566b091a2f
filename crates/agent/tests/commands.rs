//! Commands run exactly once: a late or repeated `RunCommand` after the
//! result was acknowledged, or after the agent itself died (a real kill -9
//! of an agent in a child process), never runs the command again; what a
//! dead agent's command left running is stopped; results the gateway has
//! not acknowledged are offered again while the link is up.

mod common;

use std::path::Path;
use std::process::Stdio;

use alpacon_mux::Mux;
use alpacon_proto::{CommandResult, CommandSpec, Control, ErrorCode};
use alpamon::config::LinkConfig;
use common::*;
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;
use tokio::time::timeout;

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

/// The lines of a file; none when it does not exist.
fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// The next command result, skipping live output.
async fn next_result(rx: &mut mpsc::UnboundedReceiver<Control>) -> CommandResult {
    loop {
        match timeout(T, rx.recv()).await.expect("timed out").unwrap() {
            Control::CommandOutput { .. } => {}
            Control::CommandResult(r) => return r,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Wait until the agent has handled everything sent before (it answers a
/// ping after dispatching the messages ahead of it); what else came back
/// meanwhile.
async fn settle(mux: &Mux, rx: &mut mpsc::UnboundedReceiver<Control>, seq: u64) -> Vec<Control> {
    mux.send_control(Control::Ping { seq }).await.unwrap();
    let mut other = Vec::new();
    loop {
        match timeout(T, rx.recv()).await.expect("timed out").unwrap() {
            Control::Pong { seq: s } if s == seq => return other,
            c => other.push(c),
        }
    }
}

/// Whether a process is alive (a zombie is not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
            !matches!(state.and_then(|r| r.chars().next()), Some('Z' | 'X') | None)
        }
        Err(_) => false,
    }
}

fn appends(id: &str, file: &Path) -> CommandSpec {
    spec(id, &format!("echo {id} >> {}", file.display()))
}

#[tokio::test]
async fn a_late_run_command_after_the_ack_does_not_run_again() {
    let s = setup(45);
    let out = s.data.parent().unwrap().join("ran");
    let (mux, mut rx, h, stop) = link_up(&s).await;
    mux.send_control(Control::RunCommand(appends("c1", &out)))
        .await
        .unwrap();
    let r = next_result(&mut rx).await;
    assert_eq!((r.id.as_str(), r.exit_code), ("c1", 0));
    mux.send_control(Control::CommandAck { id: "c1".into() })
        .await
        .unwrap();
    wait_for("the ack", || !s.data.join("spool/c1.result").exists()).await;

    // The gateway's RunCommand from a snapshot taken before it stored the
    // result: ignored (the gateway has the result; nothing to resend).
    mux.send_control(Control::RunCommand(appends("c1", &out)))
        .await
        .unwrap();
    let seen = settle(&mux, &mut rx, 1).await;
    assert_eq!(s.agent.runner.running(), 0, "the command runs again");
    assert!(seen.is_empty(), "{seen:?}");
    mux.send_control(Control::RunCommand(appends("c2", &out)))
        .await
        .unwrap();
    assert_eq!(next_result(&mut rx).await.id, "c2");
    assert_eq!(lines(&out), ["c1", "c2"]);

    // The same after a restart: the agent remembers on disk.
    stop.send(true).unwrap();
    timeout(T, h).await.unwrap().unwrap();
    let again = agent_in(s.data.parent().unwrap(), &s.key, LinkConfig::default());
    let (mux, mut rx, _h, _stop) = link_up_to(&again, &s.key).await;
    // c2 was never acknowledged on a live link: offered again.
    assert_eq!(next_result(&mut rx).await.id, "c2");
    mux.send_control(Control::RunCommand(appends("c1", &out)))
        .await
        .unwrap();
    mux.send_control(Control::RunCommand(appends("c2", &out)))
        .await
        .unwrap();
    let seen = settle(&mux, &mut rx, 2).await;
    assert_eq!(again.runner.running(), 0, "a command runs again");
    // c2's result is sent again (it is still unacknowledged), c1's is not.
    assert!(
        seen.iter()
            .all(|c| matches!(c, Control::CommandResult(r) if r.id == "c2")),
        "{seen:?}"
    );
    assert_eq!(lines(&out), ["c1", "c2"]);
}

/// Where `doomed_agent` keeps its state, and the command it runs.
const DOOMED_DIR: &str = "ALPAMON_TEST_DOOMED_DIR";
const DOOMED_LINE: &str = "ALPAMON_TEST_DOOMED_LINE";

fn doomed_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Not a test by itself: the agent that the next test kills with SIGKILL
/// while its command runs. Does nothing unless started by that test.
#[test]
#[ignore]
fn doomed_agent() {
    let (Ok(dir), Ok(line)) = (std::env::var(DOOMED_DIR), std::env::var(DOOMED_LINE)) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let agent = agent_in(Path::new(&dir), &doomed_key(), LinkConfig::default());
        agent.runner.submit(spec("c1", &line));
        std::future::pending::<()>().await
    });
}

#[tokio::test]
async fn a_command_cut_short_by_the_agents_death_is_stopped_and_never_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let pids = dir.path().join("pids");
    // Three processes in the command's session: the shell and two sleeps.
    let line = format!(
        "sleep 300 & echo $! >> {p}; sleep 300 & echo $! >> {p}; echo $$ >> {p}; \
         echo run >> {o}; wait; echo done >> {o}",
        p = pids.display(),
        o = out.display()
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["doomed_agent", "--exact", "--ignored", "--nocapture"])
        .env(DOOMED_DIR, dir.path())
        .env(DOOMED_LINE, &line)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the command to start", || lines(&out) == ["run"]).await;
    child.kill().unwrap(); // SIGKILL: no clean-up of any kind
    child.wait().unwrap();
    let pids: Vec<i32> = lines(&pids).iter().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 3);
    assert!(
        pids.iter().all(|p| alive(*p)),
        "the command outlives the agent"
    );

    // The agent comes back: the command's processes are stopped and it is
    // reported as interrupted, with how many processes were stopped.
    let agent = agent_in(dir.path(), &doomed_key(), LinkConfig::default());
    let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    for p in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::SIGKILL);
    }
    assert!(left.is_empty(), "still running after the restart: {left:?}");
    let (mux, mut rx, _h, _stop) = link_up_to(&agent, &doomed_key()).await;
    let r = next_result(&mut rx).await;
    assert_eq!(r.id, "c1");
    let e = r.error.unwrap();
    assert_eq!(e.code, ErrorCode::AgentRestarted);
    assert!(e.detail.contains("stopped the 3 processes"), "{}", e.detail);

    // Acknowledged, then the gateway's late RunCommand: not run again.
    mux.send_control(Control::CommandAck { id: "c1".into() })
        .await
        .unwrap();
    wait_for("the ack", || {
        !dir.path().join("data/spool/c1.result").exists()
    })
    .await;
    mux.send_control(Control::RunCommand(spec("c1", &line)))
        .await
        .unwrap();
    let seen = settle(&mux, &mut rx, 1).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(agent.runner.running(), 0, "the command runs again");
    assert_eq!(lines(&out), ["run"]);
}

fn quick_retries() -> LinkConfig {
    LinkConfig {
        result_retry_initial_ms: 50,
        result_retry_max_secs: 1,
        ..LinkConfig::default()
    }
}

#[tokio::test]
async fn unacknowledged_results_are_offered_again_while_linked() {
    let s = setup_with(quick_retries());
    let (mux, mut rx, _h, _stop) = link_up(&s).await;
    mux.send_control(Control::RunCommand(spec("c1", "echo hi")))
        .await
        .unwrap();
    let first = next_result(&mut rx).await;
    assert_eq!(first.output, b"hi\n");
    // The gateway could not store it and did not acknowledge it: it comes
    // again on the same link, without waiting for a reconnection.
    for _ in 0..3 {
        assert_eq!(next_result(&mut rx).await, first);
    }
    mux.send_control(Control::CommandAck { id: "c1".into() })
        .await
        .unwrap();
    wait_for("the ack", || {
        s.agent.runner.unacknowledged() == 0 && !s.data.join("spool/c1.result").exists()
    })
    .await;
}

#[tokio::test]
async fn a_result_the_spool_cannot_take_is_kept_offered_and_written_later() {
    let s = setup_with(quick_retries());
    let (mux, mut rx, _h, _stop) = link_up(&s).await;
    // The result's temporary file cannot be created (as on a full disk).
    let blocker = s.data.join("spool/.c1.result.tmp");
    std::fs::create_dir(&blocker).unwrap();
    mux.send_control(Control::RunCommand(spec("c1", "echo hi")))
        .await
        .unwrap();
    let first = next_result(&mut rx).await;
    assert_eq!(first.output, b"hi\n");
    assert!(!s.data.join("spool/c1.result").exists());
    // Kept in memory and offered until acknowledged.
    assert_eq!(next_result(&mut rx).await, first);
    // A repeated RunCommand meanwhile does not run it.
    mux.send_control(Control::RunCommand(spec("c1", "echo hi")))
        .await
        .unwrap();
    let seen = settle(&mux, &mut rx, 1).await;
    assert_eq!(s.agent.runner.running(), 0);
    assert!(
        seen.iter()
            .all(|c| matches!(c, Control::CommandResult(r) if *r == first)),
        "{seen:?}"
    );
    // Room again: the result reaches the spool at a later offer.
    std::fs::remove_dir(&blocker).unwrap();
    wait_for("the result on disk", || {
        s.data.join("spool/c1.result").exists()
    })
    .await;
    assert!(!s.data.join("spool/c1.started").exists());
    mux.send_control(Control::CommandAck { id: "c1".into() })
        .await
        .unwrap();
    wait_for("the ack", || {
        s.agent.runner.unacknowledged() == 0 && !s.data.join("spool/c1.result").exists()
    })
    .await;
}
