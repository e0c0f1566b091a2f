//! The connection rules: what is admitted, what is closed, what is
//! logged. Plain functions and types over data, tested without sockets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: usize = 64;
pub const DEFAULT_MAX_PENDING: usize = 1024;
pub const DEFAULT_MAX_AGENT_HANDSHAKES_PER_ADDRESS: usize = 8;
pub const DEFAULT_MAX_AGENT_HANDSHAKES: usize = 256;

/// HTTP/2 settings. Frames and windows are sized for file transfers:
/// uploads come in frames of up to MAX_DATA (what one agent frame carries)
/// instead of 16 KiB; the windows only say how much a peer may send ahead,
/// memory is used as data actually waits.
pub(super) const H2_MAX_FRAME: u32 = alpacon_proto::MAX_DATA as u32;
pub(super) const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub(super) const H2_CONN_WINDOW: u32 = 4 * 1024 * 1024;
pub(super) const H2_SEND_BUF: usize = 1024 * 1024;
/// An HTTP/2 peer that does not answer a ping within the timeout is gone.
pub(super) const H2_PING_EVERY: Duration = Duration::from_secs(30);
pub(super) const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Share of the connection cap past which the gateway says it is near it.
pub(super) const NEAR_CAP_PERCENT: usize = 80;
/// Each kind of repeated log line is written at most once per window.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Connection timeouts and caps (flags in `config.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    /// From the TLS handshake to a new connection's first request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed; on
    /// HTTP/1 it also bounds the wait for each later request head.
    pub idle_timeout: Duration,
    /// None: derived from the open-file limit at start (`connection_cap`).
    pub max_connections: Option<usize>,
    pub max_pending_per_address: usize,
    pub max_pending: usize,
    /// Agent links that have not yet been welcomed (`relay.rs`).
    pub max_agent_handshakes_per_address: usize,
    pub max_agent_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tls_handshake_timeout: Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS),
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            max_connections: None,
            max_pending_per_address: DEFAULT_MAX_PENDING_PER_ADDRESS,
            max_pending: DEFAULT_MAX_PENDING,
            max_agent_handshakes_per_address: DEFAULT_MAX_AGENT_HANDSHAKES_PER_ADDRESS,
            max_agent_handshakes: DEFAULT_MAX_AGENT_HANDSHAKES,
        }
    }
}

// ---------------------------------------------------------------------------
// Pure decisions

/// The key under which an address is counted: an IPv4 address itself
/// (also when it arrives IPv4-mapped), an IPv6 address by its /64, the
/// smallest block a site is given, so one host cannot dodge the cap by
/// rotating through its addresses.
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// Why a new pending connection or handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many from this address.
    PerAddress,
    /// Too many altogether.
    Total,
}

/// Things held per address and in total (pending connections, agent
/// handshakes). Addresses are counted by `addr_key`.
#[derive(Debug, Default)]
pub struct Counts {
    per_addr: HashMap<IpAddr, usize>,
    total: usize,
}

impl Counts {
    /// Counts one more for `ip` unless that would pass either cap.
    pub fn admit(&mut self, ip: IpAddr, per_addr: usize, total: usize) -> Result<(), Refusal> {
        let key = addr_key(ip);
        if self.total >= total {
            return Err(Refusal::Total);
        }
        let n = self.per_addr.get(&key).copied().unwrap_or(0);
        if n >= per_addr {
            return Err(Refusal::PerAddress);
        }
        self.per_addr.insert(key, n + 1);
        self.total += 1;
        Ok(())
    }

    /// Gives back one admitted for `ip`.
    pub fn release(&mut self, ip: IpAddr) {
        let key = addr_key(ip);
        if let Some(n) = self.per_addr.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_addr.remove(&key);
            }
            self.total -= 1;
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn of(&self, ip: IpAddr) -> usize {
        self.per_addr.get(&addr_key(ip)).copied().unwrap_or(0)
    }
}

/// Lets each kind of repeated log line through once per window and counts
/// the ones held back, so an attack cannot flood the log (or the disk).
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    slots: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    pub fn new(window: Duration) -> LogLimiter {
        LogLimiter {
            window,
            slots: HashMap::new(),
        }
    }

    /// `Some(n)`: write the line now; `n` lines of this kind were held back
    /// since the last one written. `None`: hold it back.
    pub fn check(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.slots.get_mut(reason) {
            Some((last, held)) if now.saturating_duration_since(*last) < self.window => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                self.slots.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

static LOGS: LazyLock<Mutex<LogLimiter>> =
    LazyLock::new(|| Mutex::new(LogLimiter::new(LOG_WINDOW)));

/// Whether to write a log line of this kind now (see [`LogLimiter`]);
/// `Some(n)` with the number held back since the last one.
pub fn log_now(reason: &'static str) -> Option<u64> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .check(reason, Instant::now())
}

/// The connection cap for an open-file limit: what is left after a reserve
/// for the database, terminal recordings, the spool and other files (a
/// quarter of the limit, at least 128 and at most 1024: past that the
/// reserve would only take room from agents, who are nearly every link).
pub fn connection_cap(nofile: u64) -> usize {
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let reserve = (nofile / 4).clamp(128, 1024);
    nofile.saturating_sub(reserve).max(16)
}

/// What one connection looks like to its watchdog.
#[derive(Debug, Clone, Copy)]
pub struct ConnView {
    pub in_flight: usize,
    /// Handed over to a WebSocket (or another upgrade): not ours to time.
    pub upgraded: bool,
    /// Requests that reached the application so far.
    pub requests: u64,
    /// Since when no request has been in flight (the handshake's end before
    /// the first request).
    pub idle_since: Instant,
    /// When a graceful close was started.
    pub closing_since: Option<Instant>,
}

/// What the watchdog does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; look again at this instant.
    Wait(Instant),
    /// Close gracefully (HTTP/1: at once when idle; HTTP/2: GOAWAY).
    Shutdown,
    /// Close now.
    Drop,
}

pub fn verdict(v: &ConnView, now: Instant, l: &Limits) -> Verdict {
    if v.upgraded || v.in_flight > 0 {
        return Verdict::Wait(now + l.idle_timeout);
    }
    if v.requests == 0 {
        // Still pending: a half-sent or never-sent first request.
        let deadline = v.idle_since + l.header_read_timeout;
        return if now >= deadline {
            Verdict::Drop
        } else {
            Verdict::Wait(deadline)
        };
    }
    if let Some(since) = v.closing_since {
        // A peer that does not let a graceful close finish loses it.
        let deadline = since.max(v.idle_since) + l.header_read_timeout;
        return if now >= deadline {
            Verdict::Drop
        } else {
            Verdict::Wait(deadline)
        };
    }
    let deadline = v.idle_since + l.idle_timeout;
    if now >= deadline {
        Verdict::Shutdown
    } else {
        Verdict::Wait(deadline)
    }
}

/// The connection cap in force: the operator's, unless it would run the
/// process out of file descriptors.
pub fn resolve_cap(asked: Option<usize>, nofile: u64) -> usize {
    let fits = connection_cap(nofile);
    match asked {
        None => fits,
        Some(n) if n > fits => {
            tracing::warn!(
                "--max-connections {n} does not fit the open-file limit {nofile}; using {fits}"
            );
            fits
        }
        Some(n) => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_admit_per_address_and_in_total() {
        let mut c = Counts::default();
        // (address, expected) with 2 per address and 3 in total.
        let table = [
            ("10.0.0.1", Ok(())),
            ("10.0.0.1", Ok(())),
            ("10.0.0.1", Err(Refusal::PerAddress)),
            ("10.0.0.2", Ok(())),
            ("10.0.0.3", Err(Refusal::Total)),
            ("10.0.0.2", Err(Refusal::Total)),
        ];
        for (i, (a, want)) in table.iter().enumerate() {
            assert_eq!(c.admit(ip(a), 2, 3), *want, "row {i}: {a}");
        }
        assert_eq!((c.total(), c.of(ip("10.0.0.1"))), (3, 2));
        c.release(ip("10.0.0.1"));
        assert_eq!(c.admit(ip("10.0.0.3"), 2, 3), Ok(()));
        c.release(ip("10.0.0.1"));
        c.release(ip("10.0.0.1")); // one too many: ignored
        assert_eq!((c.total(), c.of(ip("10.0.0.1"))), (2, 0));
        assert!(
            !c.per_addr.contains_key(&ip("10.0.0.1")),
            "no empty entries left"
        );
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let mut c = Counts::default();
        assert_eq!(c.admit(ip("2001:db8:1:2::1"), 2, 100), Ok(()));
        assert_eq!(c.admit(ip("2001:db8:1:2:ffff::9"), 2, 100), Ok(()));
        assert_eq!(
            c.admit(ip("2001:db8:1:2:abcd::1"), 2, 100),
            Err(Refusal::PerAddress)
        );
        assert_eq!(c.admit(ip("2001:db8:1:3::1"), 2, 100), Ok(()));
        assert_eq!(c.admit(ip("192.0.2.1"), 1, 100), Ok(()));
        assert_eq!(
            c.admit(ip("::ffff:192.0.2.1"), 1, 100),
            Err(Refusal::PerAddress)
        );
        assert_eq!(addr_key(ip("::1")), ip("::"));
    }

    #[tokio::test]
    async fn log_limiter_lets_one_line_per_reason_and_window_through() {
        let w = Duration::from_secs(10);
        let mut l = LogLimiter::new(w);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        // (reason, seconds after t0, expected)
        let table = [
            ("a", 0, Some(0)),
            ("a", 1, None),
            ("b", 1, Some(0)),
            ("a", 5, None),
            ("a", 9, None),
            ("a", 10, Some(3)),
            ("a", 11, None),
            ("b", 30, Some(0)),
            ("a", 30, Some(1)),
        ];
        for (i, (r, at, want)) in table.iter().enumerate() {
            assert_eq!(l.check(r, t0 + s * *at), *want, "row {i}");
        }
    }

    #[test]
    fn cap_leaves_room_for_files() {
        for (nofile, cap) in [
            (1024, 768),
            (4096, 3072),
            (20000, 18976),
            (524288, 523264),
            (256, 128),
            (100, 16),
            (0, 16),
        ] {
            assert_eq!(connection_cap(nofile), cap, "{nofile}");
        }
        assert_eq!(resolve_cap(None, 1024), 768);
        assert_eq!(resolve_cap(Some(100), 1024), 100);
        assert_eq!(resolve_cap(Some(5000), 1024), 768);
    }

    #[tokio::test]
    async fn watchdog_verdicts() {
        let l = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let v = |in_flight, upgraded, requests, idle_since, closing_since| ConnView {
            in_flight,
            upgraded,
            requests,
            idle_since,
            closing_since,
        };
        // (view, now, expected)
        let table = [
            // Pending: the first request head must come within 10 s.
            (v(0, false, 0, t0, None), s(5), Verdict::Wait(s(10))),
            (v(0, false, 0, t0, None), s(10), Verdict::Drop),
            // Kept alive and idle: closed gracefully after 60 s.
            (v(0, false, 3, s(20), None), s(50), Verdict::Wait(s(80))),
            (v(0, false, 3, s(20), None), s(80), Verdict::Shutdown),
            // A graceful close the peer does not finish is cut.
            (
                v(0, false, 3, s(20), Some(s(80))),
                s(85),
                Verdict::Wait(s(90)),
            ),
            (v(0, false, 3, s(20), Some(s(80))), s(90), Verdict::Drop),
            // Requests in flight (downloads) and upgrades are never cut.
            (
                v(1, false, 1, t0, None),
                s(10_000),
                Verdict::Wait(s(10_060)),
            ),
            (
                v(1, false, 1, t0, Some(t0)),
                s(10_000),
                Verdict::Wait(s(10_060)),
            ),
            (v(0, true, 1, t0, None), s(10_000), Verdict::Wait(s(10_060))),
            // Server shutdown before any request: still the pending rule.
            (v(0, false, 0, t0, Some(t0)), s(3), Verdict::Wait(s(10))),
        ];
        for (i, (view, now, want)) in table.iter().enumerate() {
            assert_eq!(verdict(view, *now, &l), *want, "row {i}: {view:?}");
        }
    }
}
