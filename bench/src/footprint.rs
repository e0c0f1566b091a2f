//! Footprint (issue item 6): the agent's idle memory and the binaries' sizes, next to
//! sshd's and ssh's.

use std::path::Path;

use anyhow::{anyhow, Result};

use crate::report::{Report, Row};
use crate::scale::rss;
use crate::setup::Env;
use crate::stats::{bytes, ratio};

fn size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

pub fn agent_rss(env: &Env) -> Result<u64> {
    let pid = env
        .agent
        .pid()
        .ok_or_else(|| anyhow!("agent not running"))?;
    rss(pid).ok_or_else(|| anyhow!("no /proc entry for the agent"))
}

pub fn run(env: &Env, rep: &mut Report) -> Result<()> {
    // Idle: connected, nothing asked of it for a while.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let agent = agent_rss(env)?;
    let sshd = env.sshd.as_ref().and_then(|s| s.pid()).and_then(rss);
    let mut row = Row::new(
        "footprint",
        "agent idle RSS (alpamon vs the sshd listener)",
        bytes(agent),
    );
    if let Some(s) = sshd {
        row = row.openssh(bytes(s)).ratio(ratio(agent as f64, s as f64));
    }
    rep.push(row.goal("≤ 10 MB", agent <= 10_000_000));
    if let Some(pid) = env.gw.pid() {
        if let Some(r) = rss(pid) {
            rep.push(Row::new(
                "footprint",
                "gateway RSS with 1 agent, idle",
                bytes(r),
            ));
        }
    }
    let dir = alpacon_e2e::bin_dir();
    let pairs: [(&str, Option<&str>); 3] = [
        ("alpamon", Some("/usr/sbin/sshd")),
        ("alpacon", Some("/usr/bin/ssh")),
        ("alpacon-server", None),
    ];
    for (ours, theirs) in pairs {
        let Some(o) = size(&dir.join(ours)) else {
            continue;
        };
        let mut row = Row::new(
            "footprint",
            match theirs {
                Some(t) => format!("binary size: {ours} vs {}", Path::new(t).display()),
                None => format!("binary size: {ours} (gateway; no OpenSSH counterpart)"),
            },
            bytes(o),
        );
        if let Some(t) = theirs.and_then(|t| size(Path::new(t))) {
            row = row.openssh(bytes(t)).ratio(ratio(o as f64, t as f64));
        }
        rep.push(row);
    }
    rep.note(
        "footprint: RSS is VmRSS from /proc; the agent is read after 2 s idle on a connected link; \
         our binaries are static apart from libc (TLS, HTTP, SQLite, the web console inside), \
         OpenSSH's sizes leave out the shared libraries they load (libcrypto, libz, …)",
    );
    Ok(())
}
