//! A person's own (managed) account used the way a member uses it: the
//! agent really creates the account, so these tests run in a private mount
//! namespace over a copy of /etc (and empty /home and /run): the host's
//! account files are never touched. `in_a_private_namespace` starts this
//! test binary again inside `unshare` for the `inner_*` tests.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use alpacon_mux::{Event, Mux};
use alpacon_proto::pty::PtyIn;
use alpacon_proto::{
    Account, Close, CommandResult, CommandSpec, Control, ErrorCode, ManagedAccount, ManagedGroup,
    Open, StreamError, StreamInfo, StreamResult,
};
use bytes::Bytes;
use common::*;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Set by `in_a_private_namespace` for the inner tests.
const PRIVATE_ETC: &str = "ALPAMON_TEST_PRIVATE_ETC";
const INNER_TESTS: usize = 2;

#[test]
fn in_a_private_namespace() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (creates accounts in a private mount namespace)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "cp -a /etc '{t}/etc' && mount --bind '{t}/etc' /etc && \
         mount -t tmpfs tmpfs /home && mount -t tmpfs tmpfs /run && \
         exec '{exe}' inner_ --ignored --test-threads=1 --nocapture",
        t = t.path().display(),
        exe = exe.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env(PRIVATE_ETC, "1")
        .output()
        .expect("running unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "inner tests failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("test result: ok. {INNER_TESTS} passed")),
        "the inner tests did not all run:\n{stdout}\n{stderr}"
    );
}

fn in_private_etc() {
    assert!(
        std::env::var_os(PRIVATE_ETC).is_some(),
        "creates accounts: run only through in_a_private_namespace, never on the host"
    );
}

const ALICE: &str = "alice";
const ALICE_UID: u32 = 47011;
const WEB_GID: u32 = 57011;

fn alice_identity() -> ManagedAccount {
    ManagedAccount {
        uid: ALICE_UID,
        gid: ALICE_UID,
        shell: "/bin/sh".into(),
        groups: vec![ManagedGroup {
            name: "web".into(),
            gid: WEB_GID,
        }],
        full_name: "Alice".into(),
    }
}

fn alice(group: Option<&str>) -> Account {
    Account {
        username: ALICE.into(),
        groupname: group.map(str::to_string),
        managed: Some(alice_identity()),
    }
}

fn command(id: &str, line: &str, group: Option<&str>) -> CommandSpec {
    CommandSpec {
        id: id.into(),
        line: line.into(),
        username: ALICE.into(),
        groupname: group.map(str::to_string),
        env: Default::default(),
        timeout_secs: None,
        managed: Some(alice_identity()),
    }
}

async fn run(
    mux: &Mux,
    rx: &mut mpsc::UnboundedReceiver<Control>,
    spec: CommandSpec,
) -> CommandResult {
    mux.send_control(Control::RunCommand(spec)).await.unwrap();
    loop {
        match timeout(T, rx.recv()).await.expect("timed out").unwrap() {
            Control::CommandResult(r) => return r,
            Control::CommandOutput { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
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

/// The whole of a file operation: `Ok` with what was read, or its error.
async fn file_op(mux: &Mux, o: Open, upload: &[u8]) -> Result<(Vec<u8>, Close), StreamError> {
    let writes = matches!(o, Open::FileWrite { .. });
    let reads = matches!(o, Open::FileRead { .. });
    if !writes && !reads {
        // Mkdir and stat answer with Close alone.
        let mut st = mux.open(o).await.unwrap();
        return match closed(&mut st).await {
            (_, Close::Err(e)) => Err(e),
            other => Ok(other),
        };
    }
    let (mut st, _) = open(mux, o).await?;
    if writes {
        st.tx.send(Bytes::copy_from_slice(upload)).await.unwrap();
        st.tx.eof().unwrap();
    }
    match closed(&mut st).await {
        (_, Close::Err(e)) => Err(e),
        other => Ok(other),
    }
}

fn refused_group(e: &StreamError, group: &str) {
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{}", e.detail);
    assert!(
        e.detail
            .starts_with(&format!("group {group} is not one of alice's groups")),
        "{}",
        e.detail
    );
}

/// A member acting as their own account may use their private group and
/// their Alpacon groups, and nothing else: not shadow, root, or a group of
/// someone else, for commands, terminals and file operations alike.
#[tokio::test]
#[ignore = "run by in_a_private_namespace"]
async fn inner_a_member_has_only_their_own_groups() {
    in_private_etc();
    let s = setup(45);
    let (mux, mut rx, _h, _stop) = link_up(&s).await;

    // Allowed: the account's own groups (the first use creates it).
    for (group, gid) in [
        (None, ALICE_UID),
        (Some(ALICE), ALICE_UID),
        (Some("web"), WEB_GID),
    ] {
        let id = format!("ok-{}", group.unwrap_or("none"));
        let r = run(&mux, &mut rx, command(&id, "id -u; id -g", group)).await;
        assert_eq!(r.error, None, "{group:?}");
        assert_eq!(
            String::from_utf8(r.output).unwrap(),
            format!("{ALICE_UID}\n{gid}\n")
        );
    }

    // Refused: system, privileged and other people's groups, before anything runs.
    std::process::Command::new("groupadd")
        .args(["-g", "57012", "ops"])
        .status()
        .unwrap();
    let refused = [
        "shadow",
        "root",
        "sudo",
        "nogroup",
        "ops",
        "alpacon-managed",
    ];
    for group in refused {
        let id = format!("no-{group}");
        let r = run(&mux, &mut rx, command(&id, "id -g", Some(group))).await;
        let e = r.error.expect("refused");
        refused_group(&e, group);
        assert!(r.output.is_empty());
    }

    // Terminals.
    for group in ["shadow", "root"] {
        let e = open(
            &mux,
            Open::Pty {
                session: format!("t-{group}"),
                account: alice(Some(group)),
                rows: 24,
                cols: 80,
            },
        )
        .await
        .unwrap_err();
        refused_group(&e, group);
        assert!(s.agent.terminals.stats(&format!("t-{group}")).is_none());
    }
    let (st, info) = open(
        &mux,
        Open::Pty {
            session: "t-web".into(),
            account: alice(Some("web")),
            rows: 24,
            cols: 80,
        },
    )
    .await
    .unwrap();
    assert!(matches!(info, StreamInfo::Pty { .. }));
    let pid = s.agent.terminals.stats("t-web").unwrap().pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let gid_line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert!(
        gid_line
            .split_whitespace()
            .skip(1)
            .all(|g| g == WEB_GID.to_string()),
        "{gid_line}"
    );
    st.tx.send(PtyIn::Terminate.encode()).await.unwrap();
    let mut st = st;
    closed(&mut st).await;

    // Files: no download of /etc/shadow, no upload as root, no mkdir or
    // stat either.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let target = dir.path().join("x").to_str().unwrap().to_string();
    for group in ["shadow", "root"] {
        let ops = [
            Open::FileRead {
                path: "/etc/shadow".into(),
                account: alice(Some(group)),
                confine: Vec::new(),
            },
            Open::FileWrite {
                path: target.clone(),
                account: alice(Some(group)),
                overwrite: false,
                mode: Some(0o2755),
                confine: Vec::new(),
            },
            Open::Mkdir {
                path: target.clone(),
                account: alice(Some(group)),
                confine: Vec::new(),
            },
            Open::Stat {
                path: "/etc/shadow".into(),
                account: alice(Some(group)),
                recursive: false,
                confine: Vec::new(),
            },
        ];
        for o in ops {
            let e = file_op(&mux, o.clone(), b"\x7fELF").await.unwrap_err();
            refused_group(&e, group);
        }
    }
    assert!(!Path::new(&target).exists());
    // Without a group, /etc/shadow is simply not hers to read.
    let e = file_op(
        &mux,
        Open::FileRead {
            path: "/etc/shadow".into(),
            account: alice(None),
            confine: Vec::new(),
        },
        b"",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert_eq!(e.detail, "permission denied: /etc/shadow");
}

/// Uploads as a person's own account never leave setuid or setgid bits,
/// whether asked for or kept from the file they replace.
#[tokio::test]
#[ignore = "run by in_a_private_namespace"]
async fn inner_managed_uploads_are_never_setuid_or_setgid() {
    in_private_etc();
    let s = setup(45);
    let (mux, _rx, _h, _stop) = link_up(&s).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let write = |name: &str, mode: Option<u32>, overwrite: bool| Open::FileWrite {
        path: dir.path().join(name).to_str().unwrap().into(),
        account: alice(Some("web")),
        overwrite,
        mode,
        confine: Vec::new(),
    };

    for (name, mode, want) in [
        ("sgid", 0o2755, 0o755),
        ("suid", 0o4755, 0o755),
        ("both", 0o6750, 0o750),
        ("sticky", 0o1755, 0o1755),
    ] {
        let (_, c) = file_op(&mux, write(name, Some(mode), false), b"\x7fELF")
            .await
            .unwrap();
        assert!(
            matches!(c, Close::Ok(StreamResult::Written { .. })),
            "{c:?}"
        );
        let m = std::fs::metadata(dir.path().join(name)).unwrap();
        assert_eq!(m.mode() & 0o7777, want, "{name}");
        assert_eq!((m.uid(), m.gid()), (ALICE_UID, WEB_GID), "{name}");
    }

    // Replacing her own setgid file keeps its mode, without the bits.
    let p = dir.path().join("sgid");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o2711)).unwrap();
    let (_, c) = file_op(&mux, write("sgid", None, true), b"new")
        .await
        .unwrap();
    assert!(
        matches!(c, Close::Ok(StreamResult::Written { .. })),
        "{c:?}"
    );
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o711);
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
}
