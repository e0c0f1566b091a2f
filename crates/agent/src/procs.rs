//! Finding what a command left running after the agent died, through /proc.
//!
//! Every command runs in its own session (its shell calls `setsid`, so the
//! session id is the shell's pid). The command's `.started` marker records
//! a [`Launch`]: the boot it ran in, a clock reading taken before it was
//! started, and the session id, written by the child itself just before
//! `exec` (so a command that ever ran user code has it on record, however
//! the agent died). At recovery every process of that session that did not
//! start before the command is killed. cgroups would be tighter but are not
//! reliably there (cgroup v1 hybrids), and this needs nothing but /proc.
//!
//! Limits: a process that leaves the session (`setsid`, a double-forking
//! daemon) escapes, as it would escape `killpg`. A recycled pid is guarded
//! against by the boot id (no pid survives a reboot), the start times (all
//! of a session's processes start no earlier than its leader) and, when
//! the leader is still there, its exact start time; what is left is a
//! session whose pid was reused within the same boot after ours ended
//! entirely and whose new leader is gone: wrapping the pid space between an
//! agent's death and its restart.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One line of `/proc/PID/stat`: the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 6.
    pub session: i32,
    /// Field 22: clock ticks after boot.
    pub start: u64,
}

impl ProcStat {
    /// Already dead, only not yet reaped.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parse `/proc/PID/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses: the fields after it start
/// after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3.
    let state = f.first()?.chars().next()?;
    Some(ProcStat {
        pid,
        state,
        session: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// What the `.started` marker knows about a command's processes, one
/// `key value` line each (appended by different writers, at different
/// times). A line without its newline is a torn write and ignored, as is
/// anything unknown: a marker we cannot read identifies no processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// `/proc/sys/kernel/random/boot_id` when the command was started.
    pub boot: Option<String>,
    /// Clock ticks after boot (`CLOCK_BOOTTIME`), read before the start:
    /// no process of the command started earlier.
    pub since: Option<u64>,
    /// The session id, i.e. the shell's pid.
    pub sid: Option<i32>,
    /// The shell's exact start time (field 22), when the agent lived to
    /// record it.
    pub start: Option<u64>,
}

impl Launch {
    pub fn parse(text: &str) -> Launch {
        let mut l = Launch::default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        for line in complete.lines() {
            let Some((k, v)) = line.split_once(' ') else {
                continue;
            };
            match k {
                "boot" if l.boot.is_none() && valid_boot_id(v) => l.boot = Some(v.to_string()),
                "since" if l.since.is_none() => l.since = v.parse().ok(),
                "sid" if l.sid.is_none() => l.sid = v.parse().ok().filter(|p| *p > 1),
                "start" if l.start.is_none() => l.start = v.parse().ok(),
                _ => {}
            }
        }
        l
    }

    /// The lines known before the command starts.
    pub fn before_start(&self) -> String {
        let mut s = String::new();
        if let Some(b) = &self.boot {
            let _ = writeln!(s, "boot {b}");
        }
        if let Some(t) = self.since {
            let _ = writeln!(s, "since {t}");
        }
        s
    }
}

fn valid_boot_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// `sid PID\n` in `buf`, without allocating: this runs in the child
/// between `fork` and `exec`. Returns the length.
pub fn sid_line(pid: i32, buf: &mut [u8; 24]) -> usize {
    let prefix = b"sid ";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut n = prefix.len();
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = pid.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if pid < 0 {
        buf[n] = b'-';
        n += 1;
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    buf[n] = b'\n';
    n + 1
}

/// What became of a command's processes at recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// The marker does not say (written by an older agent, or unreadable).
    Unknown,
    /// The machine restarted since: nothing of the command can be running.
    Rebooted,
    /// The command had not started when the agent died.
    NotStarted,
    /// The command's session was found and this many processes killed.
    Stopped(usize),
}

impl Leftover {
    /// The detail of the `agent_restarted` result.
    pub fn detail(self) -> String {
        let base = "the agent restarted while the command was running";
        match self {
            Leftover::Unknown => base.to_string(),
            Leftover::Rebooted => format!("{base} (the machine restarted)"),
            Leftover::NotStarted => {
                "the agent restarted as the command was starting; it did not run".to_string()
            }
            Leftover::Stopped(0) => format!("{base}; none of its processes were left"),
            Leftover::Stopped(1) => format!("{base}; stopped the 1 process it left running"),
            Leftover::Stopped(n) => format!("{base}; stopped the {n} processes it left running"),
        }
    }
}

/// Which processes of `table` belong to the command `l` describes, in the
/// boot `boot_now`; never `me`. `Err` says why none can be identified.
pub fn belonging(
    l: &Launch,
    boot_now: Option<&str>,
    table: &[ProcStat],
    me: i32,
) -> Result<Vec<i32>, Leftover> {
    let Some(boot) = &l.boot else {
        return Err(Leftover::Unknown);
    };
    match boot_now {
        Some(now) if now == boot => {}
        // Cannot tell which boot this is: assume nothing (killing the
        // wrong processes is worse than leaving ours).
        None => return Err(Leftover::Unknown),
        Some(_) => return Err(Leftover::Rebooted),
    }
    let Some(sid) = l.sid else {
        return Err(Leftover::NotStarted);
    };
    let Some(floor) = l.start.or(l.since) else {
        return Err(Leftover::Unknown);
    };
    // The leader is still there: it must be our shell, to the tick.
    if let (Some(start), Some(leader)) = (l.start, table.iter().find(|p| p.pid == sid)) {
        if leader.start != start {
            return Ok(Vec::new());
        }
    }
    Ok(table
        .iter()
        .filter(|p| p.session == sid && p.start >= floor && !p.is_dead())
        .filter(|p| p.pid != me && p.pid > 1)
        .map(|p| p.pid)
        .collect())
}

/// This boot's id.
pub fn boot_id() -> Option<String> {
    let s = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let s = s.trim();
    valid_boot_id(s).then(|| s.to_string())
}

/// Now, in clock ticks after boot, comparable to a process's start time.
pub fn now_ticks() -> Option<u64> {
    // SAFETY: plain system calls filling a local struct.
    let (ts, hz) = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) != 0 {
            return None;
        }
        (ts, libc::sysconf(libc::_SC_CLK_TCK))
    };
    if hz <= 0 || ts.tv_sec < 0 {
        return None;
    }
    let hz = hz as u64;
    // Rounded down, as the kernel rounds start times.
    Some(ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000)
}

/// A process's start time (field 22).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s).map(|p| p.start)
}

/// Every process now.
pub fn scan() -> io::Result<Vec<ProcStat>> {
    let mut table = Vec::new();
    for e in fs::read_dir("/proc")? {
        let Ok(e) = e else { continue };
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Gone meanwhile, or unreadable: not ours to judge.
        if let Some(p) = fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            table.push(p);
        }
    }
    Ok(table)
}

/// How long recovery waits for killed processes to be gone.
const GONE_WAIT: Duration = Duration::from_secs(5);

/// Kill (SIGKILL) every process of the command `l` describes, and wait a
/// little for them to be gone. Rescans until none is left, so a child
/// forked while we looked is found too (a process with SIGKILL pending can
/// no longer fork).
pub fn stop(l: &Launch) -> Leftover {
    let boot = boot_id();
    let me = std::process::id() as i32;
    let mut killed = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let deadline = Instant::now() + GONE_WAIT;
    loop {
        let table = match scan() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot list processes: {e}");
                return if killed.is_empty() {
                    Leftover::Unknown
                } else {
                    Leftover::Stopped(killed.len())
                };
            }
        };
        let found: Vec<i32> = match belonging(l, boot.as_deref(), &table, me) {
            Ok(found) => found.into_iter().filter(|p| !refused.contains(p)).collect(),
            Err(why) => return why,
        };
        if found.is_empty() {
            return Leftover::Stopped(killed.len());
        }
        for pid in found {
            if killed.contains(&pid) {
                continue; // signalled, not dead yet
            }
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) => {
                    killed.insert(pid);
                }
                Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    tracing::warn!(pid, "cannot stop a process of an interrupted command: {e}");
                    refused.insert(pid);
                }
            }
        }
        if Instant::now() > deadline {
            tracing::warn!("processes of an interrupted command are slow to die");
            return Leftover::Stopped(killed.len());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let self_stat = fs::read_to_string("/proc/self/stat").unwrap();
        let me = parse_stat(&self_stat).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.session, nix::unistd::getsid(None).unwrap().as_raw());

        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority nice threads
        // itrealvalue starttime ...
        type Fields = (i32, char, i32, u64);
        let cases: &[(&str, Option<Fields>)] = &[
            (
                "42 (sleep) S 1 42 42 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 99 1 2",
                Some((42, 'S', 42, 99)),
            ),
            // The name may hold spaces and parentheses.
            (
                "7 (a) b (c)) Z 1 7 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12345 0",
                Some((7, 'Z', 5, 12345)),
            ),
            ("7 (x) R 1 7 5 0", None),
            ("", None),
            ("garbage", None),
            (
                "x (sh) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
                None,
            ),
            ("9 (sh) S 1 2 notanumber 4", None),
        ];
        for (text, want) in cases {
            let got = parse_stat(text).map(|p| (p.pid, p.state, p.session, p.start));
            assert_eq!(got, *want, "{text}");
        }
    }

    #[test]
    fn launch_markers() {
        let full = "boot 0b6e-9c1a\nsince 100\nsid 4242\nstart 105\n";
        assert_eq!(
            Launch::parse(full),
            Launch {
                boot: Some("0b6e-9c1a".into()),
                since: Some(100),
                sid: Some(4242),
                start: Some(105),
            }
        );
        let l = Launch {
            boot: Some("ab".into()),
            since: Some(7),
            ..Launch::default()
        };
        assert_eq!(Launch::parse(&l.before_start()), l);
        let cases: &[(&str, Launch)] = &[
            ("", Launch::default()),
            // An older agent's empty marker.
            ("\n", Launch::default()),
            // A torn last line is not believed (`sid 12` of `sid 1234`).
            (
                "boot ab\nsince 7\nsid 12",
                Launch {
                    boot: Some("ab".into()),
                    since: Some(7),
                    ..Launch::default()
                },
            ),
            // Garbage lines, unknown keys, bad values: skipped.
            (
                "\0\0\u{1}zz\nfoo bar\nsid x\nboot not/an/id\nsince 9\n",
                Launch {
                    since: Some(9),
                    ..Launch::default()
                },
            ),
            // The first value counts; pid 0 and 1 are never a command's.
            (
                "sid 1\nsid 0\nsince 3\nsince 4\n",
                Launch {
                    since: Some(3),
                    ..Launch::default()
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&Launch::parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn sid_lines() {
        for pid in [0, 7, 10, 4242, 4194304, i32::MAX, -1] {
            let mut buf = [0u8; 24];
            let n = sid_line(pid, &mut buf);
            assert_eq!(
                std::str::from_utf8(&buf[..n]).unwrap(),
                format!("sid {pid}\n")
            );
        }
    }

    fn p(pid: i32, state: char, session: i32, start: u64) -> ProcStat {
        ProcStat {
            pid,
            state,
            session,
            start,
        }
    }

    #[test]
    fn which_processes_belong_to_the_command() {
        let table = vec![
            p(1, 'S', 1, 0),
            p(500, 'S', 500, 50), // the shell, leader of session 500
            p(501, 'S', 500, 60), // its child
            p(502, 'Z', 500, 61), // a zombie: already dead
            p(503, 'R', 500, 40), // in the session but older: not ours
            p(600, 'S', 600, 70), // another session
            p(700, 'S', 500, 80), // the agent itself, never
        ];
        let l = |sid: Option<i32>, since: Option<u64>, start: Option<u64>| Launch {
            boot: Some("b1".into()),
            since,
            sid,
            start,
        };
        type Want = Result<Vec<i32>, Leftover>;
        let cases: Vec<(Launch, Option<&str>, Want)> = vec![
            (
                l(Some(500), Some(45), Some(50)),
                Some("b1"),
                Ok(vec![500, 501]),
            ),
            // Without the exact start, the reading before it bounds.
            (l(Some(500), Some(45), None), Some("b1"), Ok(vec![500, 501])),
            (
                l(Some(500), Some(30), None),
                Some("b1"),
                Ok(vec![500, 501, 503]),
            ),
            // A leader whose start differs is someone else's (pid reuse).
            (l(Some(500), Some(45), Some(49)), Some("b1"), Ok(vec![])),
            // Leader gone, members left: found by session and start.
            (l(Some(600), Some(65), Some(66)), Some("b1"), Ok(vec![])),
            (l(Some(600), Some(65), None), Some("b1"), Ok(vec![600])),
            (l(Some(900), Some(1), None), Some("b1"), Ok(vec![])),
            (
                l(None, Some(45), None),
                Some("b1"),
                Err(Leftover::NotStarted),
            ),
            (l(Some(500), None, None), Some("b1"), Err(Leftover::Unknown)),
            (
                l(Some(500), Some(45), None),
                Some("b2"),
                Err(Leftover::Rebooted),
            ),
            (l(Some(500), Some(45), None), None, Err(Leftover::Unknown)),
            (Launch::default(), Some("b1"), Err(Leftover::Unknown)),
        ];
        for (launch, boot, want) in cases {
            assert_eq!(
                belonging(&launch, boot, &table, 700),
                want,
                "{launch:?} {boot:?}"
            );
        }
    }

    #[test]
    fn details() {
        assert_eq!(
            Leftover::Stopped(3).detail(),
            "the agent restarted while the command was running; stopped the 3 processes it left running"
        );
        assert!(Leftover::Stopped(1)
            .detail()
            .ends_with("stopped the 1 process it left running"));
        assert!(Leftover::Stopped(0)
            .detail()
            .ends_with("none of its processes were left"));
        assert!(Leftover::Rebooted.detail().contains("machine restarted"));
    }

    #[test]
    fn clocks_agree_with_proc() {
        let before = now_ticks().unwrap();
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let start = start_ticks(child.id()).unwrap();
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        assert!(before <= start, "{before} > {start}");
        assert!(boot_id().is_some());
    }
}
