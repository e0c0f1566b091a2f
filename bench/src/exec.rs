//! Exec (issue item 1): wall time of whole processes, `alpacon websh S true` against
//! `ssh S true`, interleaved A B A B so drift hits both alike.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::report::{Report, Row};
use crate::setup::{Env, SERVER};
use crate::stats::{ms, ratio_d, Summary};

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

pub fn run(env: &Env, quick: bool, rep: &mut Report) -> Result<()> {
    let runs = if quick { 5 } else { 100 };
    let ours = || {
        let mut c = env.cli.command();
        c.args(["websh", "-u", "root", SERVER, "true"]);
        c
    };
    let ssh = || {
        env.sshd.as_ref().map(|s| {
            let mut c = s.ssh();
            c.arg("true");
            c
        })
    };
    // Warm-up: page cache, the agent's first spawn, sshd's first fork.
    for _ in 0..3 {
        timed(ours(), "alpacon websh")?;
        if let Some(c) = ssh() {
            timed(c, "ssh")?;
        }
    }
    let mut a = Vec::with_capacity(runs);
    let mut b = Vec::with_capacity(runs);
    for _ in 0..runs {
        a.push(timed(ours(), "alpacon websh")?);
        if let Some(c) = ssh() {
            b.push(timed(c, "ssh")?);
        }
    }
    let sa = Summary::of(&a);
    let goal = "≤ 0.25× ssh";
    if b.is_empty() {
        rep.push(Row::new(
            "exec",
            "exec `true` (whole process), median",
            ms(sa.p50),
        ));
        rep.push(Row::new(
            "exec",
            "exec `true` (whole process), p95",
            ms(sa.p95),
        ));
    } else {
        let sb = Summary::of(&b);
        let r = sa.p50.as_secs_f64() / sb.p50.as_secs_f64();
        rep.push(
            Row::new("exec", "exec `true` (whole process), median", ms(sa.p50))
                .openssh(ms(sb.p50))
                .ratio(ratio_d(sa.p50, sb.p50))
                .goal(goal, r <= 0.25),
        );
        rep.push(
            Row::new("exec", "exec `true` (whole process), p95", ms(sa.p95))
                .openssh(ms(sb.p95))
                .ratio(ratio_d(sa.p95, sb.p95)),
        );
    }
    rep.note(format!(
        "exec: `alpacon websh -u root bench true` vs `ssh -F none -i KEY -p PORT root@127.0.0.1 true` \
         (ed25519 host and user keys, host key pinned in a known_hosts file, no connection sharing); \
         {runs} runs each after 3 warm-ups, interleaved A B A B; wall time of the whole process"
    ));
    Ok(())
}
