//! The gate at accept: a permit per pending connection, and the process's
//! open-file limit the caps derive from.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::rules::*;

// ---------------------------------------------------------------------------
// Shared counters with guards

/// [`Counts`] shared between tasks; what it admits is held by a [`Permit`].
#[derive(Debug, Default)]
pub struct Limiter {
    counts: Mutex<Counts>,
    /// Told when a permit is given back ([`Limiter::acquire_within`]).
    freed: tokio::sync::Notify,
}

impl Limiter {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        per_addr: usize,
        total: usize,
    ) -> Result<Permit, Refusal> {
        self.counts().admit(ip, per_addr, total)?;
        Ok(Permit {
            limiter: self.clone(),
            ip,
        })
    }

    /// [`Limiter::try_acquire`], but when only the total is full, waits up
    /// to `wait` for a permit to come back. After a gateway restart every
    /// agent dials at once: a short queue lets them in as fast as they can
    /// be verified, where a refusal would send each into a growing backoff.
    /// One address over its own cap is still refused at once.
    pub async fn acquire_within(
        self: &Arc<Self>,
        ip: IpAddr,
        per_addr: usize,
        total: usize,
        wait: Duration,
    ) -> Result<Permit, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before trying, so a release in between is not missed.
            freed.as_mut().enable();
            match self.try_acquire(ip, per_addr, total) {
                Err(Refusal::Total) => {}
                r => return r,
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.try_acquire(ip, per_addr, total);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.counts().total()
    }
}

/// One admitted by a [`Limiter`], given back on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.counts().release(self.ip);
        self.limiter.freed.notify_one();
    }
}

/// Counts an open connection for as long as its socket lives (through an
/// upgrade too: the socket then belongs to the WebSocket).
pub(super) struct OpenGuard(pub(super) Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// The open-file limit

/// Raises the soft RLIMIT_NOFILE to the hard limit (a connection is a file
/// descriptor and the default soft limit, often 1024, is far below what
/// the system allows) and returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(
            "cannot read the open-file limit: {}",
            io::Error::last_os_error()
        );
        return 1024;
    }
    let before = lim.rlim_cur;
    let mut want = lim.rlim_max;
    if want == libc::RLIM_INFINITY {
        // Linux refuses an infinite RLIMIT_NOFILE; nr_open is the ceiling.
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if want > before {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            tracing::warn!(
                "open files: cannot raise the soft limit {before} to the hard limit {}: {}",
                fmt_limit(lim.rlim_max),
                io::Error::last_os_error()
            );
            return before;
        }
        tracing::info!(
            "open files: soft limit raised from {before} to {want} (hard limit {})",
            fmt_limit(lim.rlim_max)
        );
        return want;
    }
    tracing::info!(
        "open files: soft limit {before} (hard limit {})",
        fmt_limit(lim.rlim_max)
    );
    before
}

fn fmt_limit(v: libc::rlim_t) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn permits_give_back_on_drop() {
        let l = Arc::new(Limiter::default());
        let a = l.try_acquire(ip("127.0.0.1"), 1, 10).unwrap();
        assert_eq!(
            l.try_acquire(ip("127.0.0.1"), 1, 10).unwrap_err(),
            Refusal::PerAddress
        );
        let b = l.try_acquire(ip("127.0.0.2"), 1, 10).unwrap();
        assert_eq!(l.total(), 2);
        drop(a);
        assert_eq!(l.total(), 1);
        let _a = l.try_acquire(ip("127.0.0.1"), 1, 10).unwrap();
        drop(b);
        assert_eq!(l.total(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_total_queues_briefly_and_one_address_is_refused_at_once() {
        let l = Arc::new(Limiter::default());
        let wait = Duration::from_secs(10);
        let a = l.try_acquire(ip("127.0.0.1"), 1, 1).unwrap();
        // Over its own cap: no waiting.
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            l.acquire_within(ip("127.0.0.1"), 1, 2, wait)
                .await
                .unwrap_err(),
            Refusal::PerAddress
        );
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // The total is full: the next waits and gets the slot given back.
        let l2 = l.clone();
        let waiter =
            tokio::spawn(async move { l2.acquire_within(ip("127.0.0.2"), 1, 1, wait).await });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiter.is_finished());
        drop(a);
        let b = waiter.await.unwrap().unwrap();
        assert_eq!(l.total(), 1);
        // Nobody gives back: refused once the wait is over.
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            l.acquire_within(ip("127.0.0.3"), 1, 1, wait)
                .await
                .unwrap_err(),
            Refusal::Total
        );
        assert_eq!(t0.elapsed(), wait);
        drop(b);
    }
}
