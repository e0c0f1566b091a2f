//! File operations under a token's file ACL (`Open::*::confine`), through
//! the link and the real helper: the ACL holds for the object the helper
//! actually opens, a link swapped after the check redirects nothing, and a
//! refusal tells the account nothing it could not find out itself. Also:
//! an administrator's uploads as root keep setuid bits.

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use alpacon_mux::{Event, Mux};
use alpacon_proto::{Close, ErrorCode, Open, StreamError, StreamInfo, StreamResult};
use bytes::Bytes;
use common::*;
use tokio::time::timeout;

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

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A file operation to its end: what was read and how it closed, or the
/// error it was refused with.
async fn op(mux: &Mux, o: Open, upload: &[u8]) -> Result<(Vec<u8>, StreamResult), StreamError> {
    let streams = matches!(o, Open::FileWrite { .. } | Open::FileRead { .. });
    let mut st = if streams {
        let (st, _) = open(mux, o.clone()).await?;
        st
    } else {
        mux.open(o.clone()).await.unwrap()
    };
    if matches!(o, Open::FileWrite { .. }) {
        st.tx.send(Bytes::copy_from_slice(upload)).await.unwrap();
        st.tx.eof().unwrap();
    }
    match closed(&mut st).await {
        (data, Close::Ok(r)) => Ok((data, r)),
        (_, Close::Err(e)) => Err(e),
    }
}

fn read(p: &Path, user: &str, confine: &[String]) -> Open {
    Open::FileRead {
        path: s(p),
        account: account(user),
        confine: confine.to_vec(),
    }
}

fn write(p: &Path, user: &str, confine: &[String], overwrite: bool) -> Open {
    Open::FileWrite {
        path: s(p),
        account: account(user),
        overwrite,
        mode: None,
        confine: confine.to_vec(),
    }
}

fn mkdir(p: &Path, user: &str, confine: &[String]) -> Open {
    Open::Mkdir {
        path: s(p),
        account: account(user),
        confine: confine.to_vec(),
    }
}

fn stat(p: &Path, user: &str, confine: &[String]) -> Open {
    Open::Stat {
        path: s(p),
        account: account(user),
        recursive: true,
        confine: confine.to_vec(),
    }
}

fn outside(r: Result<(Vec<u8>, StreamResult), StreamError>) {
    let e = r.expect_err("refused");
    assert_eq!(e.code, ErrorCode::OutsideAcl, "{}", e.detail);
}

/// `T/app` is what the ACL allows; `T/outside` is not.
struct Tree {
    _dir: tempfile::TempDir,
    app: PathBuf,
    out: PathBuf,
    acl: Vec<String>,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    chmod(&root, 0o755);
    let app = root.join("app");
    let out = root.join("outside");
    for d in [&app, &out] {
        std::fs::create_dir(d).unwrap();
        chmod(d, 0o777);
    }
    let acl = vec![format!("{}/*", app.display())];
    Tree {
        _dir: dir,
        app,
        out,
        acl,
    }
}

#[tokio::test]
async fn the_acl_holds_for_what_the_helper_opens() {
    let sx = setup(45);
    let (mux, _rx, _h, _stop) = link_up(&sx).await;
    let t = tree();
    let me = me();
    std::fs::write(t.out.join("secret"), b"secret").unwrap();
    std::fs::create_dir(t.app.join("real")).unwrap();
    symlink(&t.out, t.app.join("link")).unwrap();
    symlink(t.out.join("secret"), t.app.join("pw")).unwrap();

    // Inside: fine.
    let (_, r) = op(&mux, write(&t.app.join("a"), &me, &t.acl, false), b"a")
        .await
        .unwrap();
    assert!(matches!(r, StreamResult::Written { bytes: 1, .. }), "{r:?}");
    let (data, _) = op(&mux, read(&t.app.join("a"), &me, &t.acl), b"")
        .await
        .unwrap();
    assert_eq!(data, b"a");
    op(&mux, mkdir(&t.app.join("d/e/f"), &me, &t.acl), b"")
        .await
        .unwrap();
    assert!(t.app.join("d/e/f").is_dir());

    // Through a linked directory: refused, whatever the operation.
    let secret = t.app.join("link/secret");
    outside(op(&mux, read(&secret, &me, &t.acl), b"").await);
    outside(op(&mux, write(&secret, &me, &t.acl, true), b"x").await);
    outside(
        op(
            &mux,
            write(&t.app.join("link/new"), &me, &t.acl, false),
            b"x",
        )
        .await,
    );
    outside(op(&mux, mkdir(&t.app.join("link/x/y"), &me, &t.acl), b"").await);
    outside(op(&mux, stat(&t.app.join("link"), &me, &t.acl), b"").await);
    // A linked file: reading it and writing through it are refused.
    outside(op(&mux, read(&t.app.join("pw"), &me, &t.acl), b"").await);
    outside(op(&mux, write(&t.app.join("pw"), &me, &t.acl, true), b"x").await);
    assert_eq!(std::fs::read(t.out.join("secret")).unwrap(), b"secret");
    assert!(!t.out.join("new").exists() && !t.out.join("x").exists());
    // Without an ACL, links are followed as before.
    let (data, _) = op(&mux, read(&t.app.join("pw"), &me, &[]), b"")
        .await
        .unwrap();
    assert_eq!(data, b"secret");
}

/// The window the agent's old check left: the path was resolved first and
/// opened later. A link swapped after the helper has checked and opened
/// the directory changes nothing: the file lands where it was checked.
#[tokio::test]
async fn a_link_swapped_after_the_check_redirects_nothing() {
    let sx = setup(45);
    let (mux, _rx, _h, _stop) = link_up(&sx).await;
    let t = tree();
    let real = t.app.join("real");
    std::fs::create_dir(&real).unwrap();
    let link = t.app.join("link");
    symlink(&real, &link).unwrap();

    let (mut st, info) = open(&mux, write(&link.join("f"), &me(), &t.acl, false))
        .await
        .unwrap();
    assert_eq!(info, StreamInfo::Ready);
    // Checked and opened; now the link is pointed outside.
    std::fs::remove_file(&link).unwrap();
    symlink(&t.out, &link).unwrap();
    st.tx.send(Bytes::from_static(b"payload")).await.unwrap();
    st.tx.eof().unwrap();
    let (_, c) = closed(&mut st).await;
    assert!(
        matches!(c, Close::Ok(StreamResult::Written { bytes: 7, .. })),
        "{c:?}"
    );
    assert_eq!(std::fs::read(real.join("f")).unwrap(), b"payload");
    assert_eq!(std::fs::read_dir(&t.out).unwrap().count(), 0);
}

/// Refusals as an unprivileged account: a path the account cannot reach
/// (in another user's 0700 directory) answers the same whether it exists
/// or not; a path outside the ACL that the account can open is refused as
/// outside the ACL.
#[tokio::test]
async fn refusals_reveal_nothing_the_account_cannot_see() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let sx = setup(45);
    let (mux, _rx, _h, _stop) = link_up(&sx).await;
    let t = tree();
    let private = t.out.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::create_dir(private.join("sub")).unwrap();
    std::fs::write(private.join("exists"), b"x").unwrap();
    chmod(&private, 0o700);
    std::fs::write(t.out.join("public"), b"x").unwrap();
    chmod(&t.out.join("public"), 0o644);
    symlink(&private, t.app.join("p")).unwrap();
    symlink(&t.out, t.app.join("o")).unwrap();
    let p = t.app.join("p");
    let acl = &t.acl;

    let same = |a: Result<(Vec<u8>, StreamResult), StreamError>,
                b: Result<(Vec<u8>, StreamResult), StreamError>,
                (na, nb): (&str, &str)| {
        let (a, b) = (a.expect_err("refused"), b.expect_err("refused"));
        assert_eq!(a.code, ErrorCode::PermissionDenied, "{}", a.detail);
        assert_eq!(a.code, b.code, "{} / {}", a.detail, b.detail);
        assert_eq!(a.detail.replace(na, nb), b.detail);
    };
    same(
        op(&mux, read(&p.join("exists"), "nobody", acl), b"").await,
        op(&mux, read(&p.join("missing"), "nobody", acl), b"").await,
        ("exists", "missing"),
    );
    same(
        op(&mux, stat(&p.join("exists"), "nobody", acl), b"").await,
        op(&mux, stat(&p.join("missing"), "nobody", acl), b"").await,
        ("exists", "missing"),
    );
    same(
        op(&mux, write(&p.join("sub/f"), "nobody", acl, true), b"x").await,
        op(&mux, write(&p.join("nosub/f"), "nobody", acl, true), b"x").await,
        ("sub", "nosub"),
    );
    same(
        op(&mux, mkdir(&p.join("sub/d"), "nobody", acl), b"").await,
        op(&mux, mkdir(&p.join("nosub/d"), "nobody", acl), b"").await,
        ("sub", "nosub"),
    );

    // What nobody can open itself is refused for the ACL.
    outside(op(&mux, read(&t.app.join("o/public"), "nobody", acl), b"").await);
    outside(
        op(
            &mux,
            write(&t.app.join("o/new"), "nobody", acl, false),
            b"x",
        )
        .await,
    );
    assert!(!t.out.join("new").exists());
}

/// An administrator acting as root (not a managed account) may still
/// upload a setuid executable.
#[tokio::test]
async fn uploads_as_root_keep_setuid() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let sx = setup(45);
    let (mux, _rx, _h, _stop) = link_up(&sx).await;
    let t = tree();
    let p = t.app.join("tool");
    let o = Open::FileWrite {
        path: s(&p),
        account: account("root"),
        overwrite: false,
        mode: Some(0o4755),
        confine: Vec::new(),
    };
    op(&mux, o, b"\x7fELF").await.unwrap();
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o4755, 0));
}
