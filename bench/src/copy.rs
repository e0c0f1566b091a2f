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

/// CPU time used so far by: our waited-for children (the client: alpacon,
/// or scp and its ssh), the server side (gateway / sshd with its finished
/// sessions) and the agent (with its finished helpers).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    client: f64,
    server: f64,
    agent: f64,
}

fn children_cpu() -> f64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut r) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn proc_cpu(pid: Option<u32>) -> f64 {
    pid.and_then(crate::scale::cpu_ticks_with_children)
        .map(|t| t as f64 / crate::scale::ticks_per_sec())
        .unwrap_or(0.0)
}

impl Cpu {
    fn now(server: Option<u32>, agent: Option<u32>) -> Cpu {
        Cpu {
            client: children_cpu(),
            server: proc_cpu(server),
            agent: proc_cpu(agent),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            client: self.client - before.client,
            server: self.server - before.server,
            agent: self.agent - before.agent,
        }
    }

    fn add(&mut self, o: Cpu) {
        self.client += o.client;
        self.server += o.server;
        self.agent += o.agent;
    }
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

/// One copy of a round; the value is its slot in the CPU tallies.
#[derive(Debug, Clone, Copy)]
enum Step {
    OursUp = 0,
    OursDown = 1,
    ScpUp = 2,
    ScpDown = 3,
}

impl Step {
    fn what(self) -> &'static str {
        match self {
            Step::OursUp => "alpacon cp (up)",
            Step::OursDown => "alpacon cp (down)",
            Step::ScpUp => "scp (up)",
            Step::ScpDown => "scp (down)",
        }
    }
}

fn sync_disks() {
    // SAFETY: no arguments, no memory.
    unsafe { libc::sync() };
}

pub fn run(env: &Env, quick: bool, rep: &mut Report) -> Result<()> {
    let size: u64 = if quick { 16 << 20 } else { 1 << 30 };
    // Even, so that each side goes first equally often.
    let reps = if quick { 1 } else { 4 };
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
    let gw = env.gw.pid();
    let agent = env.agent.pid();
    let sshd = env.sshd.as_ref().and_then(|s| s.pid());
    // CPU per direction and side: [ours up, ours down, scp up, scp down].
    let mut cpu = [Cpu::default(); 4];
    let mut measured =
        |slot: usize, server: Option<u32>, f: &mut dyn FnMut() -> Result<Duration>| {
            let before = Cpu::now(server, agent);
            let d = f()?;
            // Let the server side reap what served the copy.
            std::thread::sleep(Duration::from_millis(300));
            cpu[slot].add(Cpu::now(server, agent).since(before));
            Ok::<_, anyhow::Error>(d)
        };
    for i in 0..reps {
        // Check content on the first round; sizes on every round.
        let sha = (i == 0).then_some(src_sha.as_str());
        // Who goes first alternates: a copy pays for the page-cache state
        // the one before it left (dirty pages to write back, memory to
        // reclaim), and that must not always fall on the same side. Each
        // copy starts after a `sync`, so no writeback runs under it.
        let order: [Step; 4] = if i % 2 == 0 {
            [Step::OursUp, Step::ScpUp, Step::OursDown, Step::ScpDown]
        } else {
            [Step::ScpUp, Step::OursUp, Step::ScpDown, Step::OursDown]
        };
        for step in order {
            let dst = w.join(format!("{step:?}-{i}.bin"));
            let d = dst.to_str().unwrap_or_default();
            let s = src.to_str().unwrap_or_default();
            let (cmd, server) = match step {
                Step::OursUp => (Some(cli(&[s, &remote(&dst)])), gw),
                Step::OursDown => (Some(cli(&[&remote(&src), d])), gw),
                Step::ScpUp => (
                    env.sshd.as_ref().map(|x| x.scp(s, &Sshd::remote(&dst))),
                    sshd,
                ),
                Step::ScpDown => (
                    env.sshd.as_ref().map(|x| x.scp(&Sshd::remote(&src), d)),
                    sshd,
                ),
            };
            let Some(cmd) = cmd else { continue };
            let mut cmd = Some(cmd);
            sync_disks();
            let t = measured(step as usize, server, &mut || {
                let c = cmd
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("{} ran twice", step.what()))?;
                timed(c, step.what())
            })?;
            match step {
                Step::OursUp => up.push(t),
                Step::ScpUp => sup.push(t),
                Step::OursDown => down.push(t),
                Step::ScpDown => sdown.push(t),
            }
            check(&dst, size, sha)?;
            std::fs::remove_file(&dst)?;
        }
        let dst = w.join(format!("tcp-{i}.bin"));
        raw.push(tcp_copy(&src, &dst)?);
        check(&dst, size, None)?;
        std::fs::remove_file(&dst)?;
    }
    std::fs::remove_file(&src)?;
    let has_ssh = !sup.is_empty();
    for (i, (dir, ours, theirs)) in [("up", up, sup), ("down", down, sdown)]
        .into_iter()
        .enumerate()
    {
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
        let per = |c: Cpu| {
            let k = reps as f64;
            (c.client / k, c.server / k, c.agent / k)
        };
        let (c, g, a) = per(cpu[i]);
        let mut row = Row::new(
            "copy",
            format!("… CPU per {label} {dir}: client + gateway + agent (scp: client + sshd)"),
            format!("{c:.2} + {g:.2} + {a:.2} = {:.2} s", c + g + a),
        );
        if has_ssh {
            let (c2, s2, _) = per(cpu[i + 2]);
            row = row
                .openssh(format!("{c2:.2} + {s2:.2} = {:.2} s", c2 + s2))
                .ratio(crate::stats::ratio(c + g + a, c2 + s2));
        }
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
         on the same disk; rounds alternate which side goes first and each copy starts after a \
         `sync` (a copy otherwise pays for the writeback the one before it left); every copy's size \
         checked, content (sha256) on the first round; MB = 10^6 bytes"
    ));
    Ok(())
}
