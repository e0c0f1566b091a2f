//! Copy (issue item 3): `alpacon cp` of a big file up and down against `scp` both
//! ways, and a raw loopback TCP copy (file → socket → file) as the ceiling.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::{Report, Row};
use crate::setup::{Env, SERVER};
use crate::sshd::Sshd;
use crate::stats::{mbps, ratio_d, secs};

fn timed(mut c: Command, what: &str) -> Result<Duration> {
    c.stdin(Stdio::null());
    let t = Instant::now();
    let out = c.output()?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!("{what} failed: {}", alpacon_e2e::text(&out));
    }
    Ok(d)
}

fn check(p: &Path, size: u64, sha: Option<&str>) -> Result<()> {
    let got = std::fs::metadata(p)
        .with_context(|| format!("{} missing after the copy", p.display()))?
        .len();
    if got != size {
        bail!("{}: {got} bytes, expected {size}", p.display());
    }
    if let Some(want) = sha {
        let have = alpacon_e2e::sha256_file(p)?;
        if have != want {
            bail!("{}: sha256 differs from the source", p.display());
        }
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Reads `src`, sends it over a loopback TCP connection, writes it to
/// `dst`: the most a copy between two processes here can do.
pub fn tcp_copy(src: &Path, dst: &Path) -> Result<Duration> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let dst = dst.to_path_buf();
    let t = Instant::now();
    let rx = std::thread::spawn(move || -> Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut f = std::fs::File::create(&dst)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            f.write_all(&buf[..k])?;
            n += k as u64;
        }
        f.sync_data().ok();
        Ok(n)
    });
    let mut s = TcpStream::connect(addr)?;
    let mut f = std::fs::File::open(src)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        s.write_all(&buf[..k])?;
    }
    drop(s);
    rx.join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(t.elapsed())
}

pub fn run(env: &Env, quick: bool, rep: &mut Report) -> Result<()> {
    let size: u64 = if quick { 16 << 20 } else { 1 << 30 };
    let reps = if quick { 1 } else { 3 };
    let label = if quick { "16 MiB" } else { "1 GiB" };
    let w = env.work.path().join("copy");
    std::fs::create_dir_all(&w)?;
    let src = w.join("src.bin");
    alpacon_e2e::write_big_file(&src, size)?;
    let src_sha = alpacon_e2e::sha256_file(&src)?;
    let cli = |args: &[&str]| {
        let mut c = env.cli.command();
        c.args(["cp", "-o", "json"]).args(args);
        c
    };
    let remote = |p: &Path| format!("root@{SERVER}:{}", p.display());
    let (mut up, mut down, mut sup, mut sdown, mut raw) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..reps {
        // Check content on the first round; sizes on every round.
        let sha = (i == 0).then_some(src_sha.as_str());
        let dst = w.join(format!("up-{i}.bin"));
        up.push(timed(
            cli(&[src.to_str().unwrap_or_default(), &remote(&dst)]),
            "alpacon cp (up)",
        )?);
        check(&dst, size, sha)?;
        std::fs::remove_file(&dst)?;
        if let Some(s) = &env.sshd {
            let dst = w.join(format!("scp-up-{i}.bin"));
            sup.push(timed(
                s.scp(src.to_str().unwrap_or_default(), &Sshd::remote(&dst)),
                "scp (up)",
            )?);
            check(&dst, size, sha)?;
            std::fs::remove_file(&dst)?;
        }
        let dst = w.join(format!("down-{i}.bin"));
        down.push(timed(
            cli(&[&remote(&src), dst.to_str().unwrap_or_default()]),
            "alpacon cp (down)",
        )?);
        check(&dst, size, sha)?;
        std::fs::remove_file(&dst)?;
        if let Some(s) = &env.sshd {
            let dst = w.join(format!("scp-down-{i}.bin"));
            sdown.push(timed(
                s.scp(&Sshd::remote(&src), dst.to_str().unwrap_or_default()),
                "scp (down)",
            )?);
            check(&dst, size, sha)?;
            std::fs::remove_file(&dst)?;
        }
        let dst = w.join(format!("tcp-{i}.bin"));
        raw.push(tcp_copy(&src, &dst)?);
        check(&dst, size, None)?;
        std::fs::remove_file(&dst)?;
    }
    std::fs::remove_file(&src)?;
    for (dir, ours, theirs) in [("up", up, sup), ("down", down, sdown)] {
        let o = median(ours);
        let fig = format!("copy {label} {dir} (median of {reps})");
        let ours_s = format!("{:.0} MB/s ({})", mbps(size, o), secs(o));
        let row = if theirs.is_empty() {
            Row::new("copy", fig, ours_s)
        } else {
            let t = median(theirs);
            Row::new("copy", fig, ours_s)
                .openssh(format!("{:.0} MB/s ({})", mbps(size, t), secs(t)))
                .ratio(format!("{} time", ratio_d(o, t)))
                .goal("time ≤ 1× scp", o <= t)
        };
        rep.push(row);
    }
    let r = median(raw);
    rep.push(Row::new(
        "copy",
        format!("copy {label}: raw loopback TCP, file → socket → file (ceiling)"),
        format!("{:.0} MB/s ({})", mbps(size, r), secs(r)),
    ));
    rep.note(format!(
        "copy: `alpacon cp SRC root@bench:DST` and back vs `scp` (SFTP protocol, OpenSSH defaults) \
         to/from root@127.0.0.1; {label} of incompressible data, page-cached source, destination \
         on the same disk; every copy's size checked, content (sha256) on the first round; MB = 10^6 bytes"
    ));
    Ok(())
}
