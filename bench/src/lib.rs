//! Benchmarks against OpenSSH, measured side by side in one run.
//!
//! `cargo run --release -p bench -- all` starts a throwaway sshd on loopback,
//! a gateway (SQLite) with one real agent, and simulated agents against a
//! second gateway, measures each figure against its OpenSSH counterpart and
//! prints one markdown table, which it also writes into BENCHMARKS.md.
//! `--quick` runs every piece small, in seconds, as a smoke test.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

pub mod api;
pub mod copy;
pub mod exec;
pub mod footprint;
pub mod report;
pub mod scale;
pub mod setup;
pub mod sshd;
pub mod stats;
pub mod term;

pub use report::{Report, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Footprint,
    Exec,
    Api,
    Terminal,
    Copy,
    Scale,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Footprint,
        Section::Exec,
        Section::Api,
        Section::Terminal,
        Section::Copy,
        Section::Scale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Footprint => "footprint",
            Section::Exec => "exec",
            Section::Api => "api",
            Section::Terminal => "terminal",
            Section::Copy => "copy",
            Section::Scale => "scale",
        }
    }

    pub fn parse(s: &str) -> Option<Vec<Section>> {
        if s == "all" {
            return Some(Section::ALL.to_vec());
        }
        Section::ALL
            .iter()
            .copied()
            .find(|x| x.name() == s)
            .map(|x| vec![x])
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub sections: Vec<Section>,
    /// Most simulated agents to try (default: what the open-file limit allows, ≤ 50k).
    pub scale_max: Option<usize>,
}

/// (soft, hard) RLIMIT_NOFILE.
pub fn nofile_limit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    (r.rlim_cur as u64, r.rlim_max as u64)
}

/// Raises the soft open-file limit to the hard one (for us and for the
/// gateways we start, which inherit it).
pub fn raise_nofile() {
    let (_, hard) = nofile_limit();
    let r = libc::rlimit {
        rlim_cur: hard as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
}

fn section<F: FnOnce(&mut Report) -> Result<()>>(rep: &mut Report, s: Section, f: F) {
    let t = Instant::now();
    eprintln!("bench: {} …", s.name());
    if let Err(e) = f(rep) {
        eprintln!("bench: {} FAILED: {e:#}", s.name());
        rep.errors.push((s.name().to_string(), format!("{e:#}")));
    } else {
        eprintln!(
            "bench: {} done in {:.1} s",
            s.name(),
            t.elapsed().as_secs_f64()
        );
    }
}

/// Runs the chosen sections; a failing section is reported, not fatal.
pub fn run(opts: &Options) -> Report {
    raise_nofile();
    let mut rep = Report {
        quick: opts.quick,
        ..Report::default()
    };
    let q = opts.quick;
    let has = |s: Section| opts.sections.contains(&s);
    let needs_env = opts.sections.iter().any(|s| *s != Section::Scale);
    if needs_env {
        eprintln!("bench: starting the gateway, an agent and sshd …");
        match setup::Env::start() {
            Ok(env) => {
                if let Some(why) = &env.sshd_missing {
                    rep.note(format!("OpenSSH columns are empty: {why}"));
                }
                if let Some(path) = std::env::var_os("BENCH_HOLD") {
                    hold(&env, path.as_ref());
                }
                if has(Section::Footprint) {
                    section(&mut rep, Section::Footprint, |r| footprint::run(&env, r));
                }
                if has(Section::Exec) {
                    section(&mut rep, Section::Exec, |r| exec::run(&env, q, r));
                }
                if has(Section::Api) {
                    section(&mut rep, Section::Api, |r| api::run(&env, q, r));
                }
                if has(Section::Terminal) {
                    section(&mut rep, Section::Terminal, |r| term::run(&env, q, r));
                }
                if has(Section::Copy) {
                    section(&mut rep, Section::Copy, |r| copy::run(&env, q, r));
                }
                if has(Section::Footprint) {
                    if let Ok(r) = footprint::agent_rss(&env) {
                        rep.note(format!(
                            "footprint: the agent's RSS after all the sections above: {}",
                            stats::bytes(r)
                        ));
                    }
                }
            }
            Err(e) => {
                eprintln!("bench: setup FAILED: {e:#}");
                rep.errors.push(("setup".into(), format!("{e:#}")));
            }
        }
    }
    if has(Section::Scale) {
        let max = opts.scale_max.unwrap_or_else(scale::machine_max);
        section(&mut rep, Section::Scale, |r| scale::run(q, max, r));
    }
    rep
}

/// With `BENCH_HOLD=FILE`, writes shell variables describing the running
/// environment (the CLI's config and home, the gateway's and the agent's
/// pids, a scratch directory) to FILE and waits until FILE is removed: for
/// profiling one piece by hand (`perf record -p`, `strace -c -f`) on the
/// same setup the sections use.
fn hold(env: &setup::Env, path: &std::path::Path) {
    let cfg = env.cli.config();
    let text = format!(
        "export ALPACON_CONFIG={}\nexport HOME={}\nGW_PID={}\nAGENT_PID={}\nWORK={}\nSERVER={}\n",
        cfg.display(),
        env.cli.dir.path().display(),
        env.gw.pid().unwrap_or(0),
        env.agent.pid().unwrap_or(0),
        env.work.path().display(),
        setup::SERVER,
    );
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("bench: cannot write {}: {e}", path.display());
        return;
    }
    eprintln!("bench: holding; remove {} to go on", path.display());
    while path.exists() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// With `BENCH_SAMPLES_DIR` set, writes raw samples (µs, in the order
/// taken) to `DIR/<what>-<series>.txt`, one a line, for a closer look.
pub fn dump_samples(what: &str, series: &[&str], samples: &[Vec<std::time::Duration>]) {
    let Some(dir) = std::env::var_os("BENCH_SAMPLES_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    for (name, v) in series.iter().zip(samples) {
        let body: String = v.iter().map(|d| format!("{}\n", d.as_micros())).collect();
        let file = format!(
            "{what}-{}.txt",
            name.replace(|c: char| !c.is_alphanumeric(), "_")
        );
        let _ = std::fs::write(dir.join(file), body);
    }
}

/// The workspace root (where BENCHMARKS.md lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .parent()
    .map(PathBuf::from)
    .unwrap_or_default()
}
