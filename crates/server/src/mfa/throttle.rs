//! Login throttling: failed logins (wrong password or wrong second factor)
//! are stored per account and per client address in `login_failures`, so
//! every gateway node sharing the database sees them and a restart forgets
//! nothing. [`retry_after`] is the pure decision; the rest is storage.

use serde_json::json;
use sqlx::Row;

use crate::audit::{self, Event};
use crate::db::{new_id, now_ms, Db};
use crate::error::ApiError;

/// When failures lock a subject out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Failures count together when they fall within this period.
    pub window_ms: i64,
    /// This many failures within the window lock the subject.
    pub max_failures: usize,
    /// The first lock; each further failure of the day doubles it.
    pub base_lock_ms: i64,
    pub max_lock_ms: i64,
}

/// Per account: 5 failures within 15 minutes lock logins for 1 minute,
/// doubling with every further failure that day, up to an hour.
pub const ACCOUNT: Limit = Limit {
    window_ms: 15 * 60_000,
    max_failures: 5,
    base_lock_ms: 60_000,
    max_lock_ms: 3_600_000,
};

/// Per client address: more generous (an office or a NAT shares one
/// address), the same growth.
pub const ADDRESS: Limit = Limit {
    window_ms: 15 * 60_000,
    max_failures: 30,
    base_lock_ms: 60_000,
    max_lock_ms: 3_600_000,
};

/// Failures older than this are forgotten (and pruned).
pub const MEMORY_MS: i64 = 24 * 3_600_000;

/// How long (ms) a subject with these failures (unix ms, any order) must
/// still wait at `now`, or `None` when it may try.
///
/// Walking the failures in order: one that completes `max_failures` within
/// `window_ms` starts a lock of `base_lock_ms` from that failure; a failure
/// that follows within `window_ms` of the end of the previous lock doubles
/// it (up to `max_lock_ms`), so a patient guesser gets ever slower. A pause
/// of a whole window after a lock ends starts afresh, and failures older
/// than [`MEMORY_MS`] are forgotten. Attempts refused by the throttle are
/// not failures (they never reach the password check), so hammering a
/// locked account does not extend its lock.
pub fn retry_after(failures: &[i64], now: i64, limit: &Limit) -> Option<i64> {
    let mut ts: Vec<i64> = failures
        .iter()
        .copied()
        .filter(|&t| t > now - MEMORY_MS)
        .collect();
    ts.sort_unstable();
    let mut lock_end: Option<i64> = None;
    let mut streak: u32 = 0;
    let mut first_in_window = 0;
    for (i, &f) in ts.iter().enumerate() {
        while ts[first_in_window] <= f - limit.window_ms {
            first_in_window += 1;
        }
        let in_window = i + 1 - first_in_window;
        let continuing = lock_end.is_some_and(|end| f <= end + limit.window_ms);
        if continuing {
            streak = (streak + 1).min(30);
        } else if in_window >= limit.max_failures {
            streak = 0;
        } else {
            lock_end = None;
            continue;
        }
        let lock = limit
            .base_lock_ms
            .saturating_mul(1i64 << streak)
            .min(limit.max_lock_ms);
        lock_end = Some(f + lock);
    }
    lock_end.filter(|&end| now < end).map(|end| end - now)
}

/// Seconds to show for a wait of `ms` (rounded up, at least 1).
pub fn wait_secs(ms: i64) -> i64 {
    ((ms + 999) / 1000).max(1)
}

fn account_subject(username: &str) -> String {
    // The name is attacker-chosen: bound it.
    let name: String = username.chars().take(150).collect();
    format!("user:{name}")
}

fn address_subject(ip: &str) -> String {
    format!("ip:{ip}")
}

async fn failures(db: &Db, subject: &str, now: i64) -> Result<Vec<i64>, ApiError> {
    let rows = sqlx::query(
        "SELECT ts FROM login_failures WHERE subject = $1 AND ts > $2
         ORDER BY ts DESC LIMIT 1000",
    )
    .bind(subject)
    .bind(now - MEMORY_MS)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| r.try_get::<i64, _>("ts").map_err(ApiError::from))
        .collect()
}

/// Refuses (429 `login_throttled`, audited as `auth.login_throttled`) a
/// login attempt for `username` from `ip` while either is locked.
pub async fn check(db: &Db, username: &str, ip: &str, stage: &str) -> Result<(), ApiError> {
    let now = now_ms();
    let account = retry_after(
        &failures(db, &account_subject(username), now).await?,
        now,
        &ACCOUNT,
    );
    let address = retry_after(
        &failures(db, &address_subject(ip), now).await?,
        now,
        &ADDRESS,
    );
    let (wait, what) = match (account, address) {
        (None, None) => return Ok(()),
        (Some(a), Some(b)) if b > a => (b, "from this address"),
        (Some(a), _) => (a, "for this account"),
        (None, Some(b)) => (b, "from this address"),
    };
    let secs = wait_secs(wait);
    let attempted: String = username.chars().take(150).collect();
    audit::record(
        db,
        Event::new("auth.login_throttled")
            .failed()
            .actor_name(&attempted)
            .ip(ip)
            .detail(json!({ "retry_after_secs": secs, "scope": what, "stage": stage })),
    )
    .await?;
    Err(ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "login_throttled",
        format!("too many failed logins {what}; try again in {secs} s"),
    ))
}

/// Counts one failed attempt against the account and the address.
pub async fn record_failure(db: &Db, username: &str, ip: &str) -> Result<(), ApiError> {
    let now = now_ms();
    for subject in [account_subject(username), address_subject(ip)] {
        sqlx::query("INSERT INTO login_failures (id, subject, ts) VALUES ($1, $2, $3)")
            .bind(new_id())
            .bind(subject)
            .bind(now)
            .execute(&db.pool)
            .await?;
    }
    sqlx::query("DELETE FROM login_failures WHERE ts < $1")
        .bind(now - MEMORY_MS)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A completed login forgives the account's failures (not the address's:
/// one right password must not reset a guesser's budget for other names).
pub async fn clear_account(db: &Db, username: &str) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM login_failures WHERE subject = $1")
        .bind(account_subject(username))
        .execute(&db.pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn no_failures_or_few_failures_pass() {
        assert_eq!(retry_after(&[], 0, &ACCOUNT), None);
        let t = 10 * MIN;
        assert_eq!(
            retry_after(&[t, t + 1, t + 2, t + 3], t + 4, &ACCOUNT),
            None
        );
    }

    #[test]
    fn five_failures_lock_for_a_minute_from_the_last() {
        let t = 100 * MIN;
        let f = [t, t + MIN, t + 2 * MIN, t + 3 * MIN, t + 4 * MIN];
        let last = t + 4 * MIN;
        assert_eq!(retry_after(&f, last, &ACCOUNT), Some(MIN));
        assert_eq!(retry_after(&f, last + 30_000, &ACCOUNT), Some(30_000));
        assert_eq!(retry_after(&f, last + MIN, &ACCOUNT), None);
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_lock() {
        let t = 100 * MIN;
        let f = [t, t + 16 * MIN, t + 32 * MIN, t + 48 * MIN, t + 64 * MIN];
        assert_eq!(retry_after(&f, t + 64 * MIN, &ACCOUNT), None);
    }

    #[test]
    fn the_lock_grows_with_each_further_failure_and_is_capped() {
        let t = 100 * MIN;
        let mut f: Vec<i64> = (0..5).map(|i| t + i).collect();
        let mut expected = MIN;
        for _ in 0..10 {
            let last = *f.iter().max().unwrap();
            assert_eq!(retry_after(&f, last, &ACCOUNT), Some(expected));
            // Wait the lock out, fail once more.
            f.push(last + expected);
            expected = (expected * 2).min(ACCOUNT.max_lock_ms);
        }
        assert_eq!(expected, 60 * MIN);
    }

    #[test]
    fn a_pause_of_a_window_after_a_lock_starts_afresh() {
        let t = 100 * MIN;
        let mut f: Vec<i64> = (0..5).map(|i| t + i).collect();
        let last = t + 4;
        // One more failure long after the lock ended: no lock.
        f.push(last + MIN + 16 * MIN);
        assert_eq!(retry_after(&f, last + 17 * MIN, &ACCOUNT), None);
    }

    #[test]
    fn a_day_later_everything_is_forgotten() {
        let t = 100 * MIN;
        let f: Vec<i64> = (0..50).map(|i| t + i).collect();
        assert!(retry_after(&f, t + 50, &ACCOUNT).is_some());
        assert_eq!(retry_after(&f, t + MEMORY_MS + MIN, &ACCOUNT), None);
    }

    #[test]
    fn addresses_get_a_higher_limit() {
        let t = 100 * MIN;
        let f: Vec<i64> = (0..29).map(|i| t + i).collect();
        assert_eq!(retry_after(&f, t + 30, &ADDRESS), None);
        let f: Vec<i64> = (0..30).map(|i| t + i).collect();
        assert_eq!(retry_after(&f, t + 29, &ADDRESS), Some(MIN));
    }

    #[test]
    fn wait_is_shown_in_whole_seconds() {
        assert_eq!(wait_secs(1), 1);
        assert_eq!(wait_secs(1000), 1);
        assert_eq!(wait_secs(1001), 2);
        assert_eq!(wait_secs(0), 1);
    }
}
