//! Login throttling: failed logins (wrong password or wrong second factor)
//! are stored per account and per client address in `login_failures`, so
//! every gateway node sharing the database sees them and a restart forgets
//! nothing. [`retry_after`] is the pure decision; the rest is storage.

use alpacon_api::ErrorCode;
use serde_json::json;

use crate::audit::{self, Event};
use crate::db::{new_id, now_ms, Backend, Db};
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

/// Per account *and* address: 5 failures within 15 minutes lock that
/// account from that address for 1 minute, doubling with every further
/// failure that day, up to an hour. Keyed by both so that someone guessing
/// from one address cannot lock the right password out from every other.
pub const ACCOUNT: Limit = Limit {
    window_ms: 15 * 60_000,
    max_failures: 5,
    base_lock_ms: 60_000,
    max_lock_ms: 3_600_000,
};

/// Per account from all addresses together: guessing spread over many
/// addresses still meets a limit, high enough that one address cannot
/// reach it alone (that takes more than three locked-out addresses).
pub const ACCOUNT_ANYWHERE: Limit = Limit {
    window_ms: 15 * 60_000,
    max_failures: 100,
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

fn bounded(username: &str) -> String {
    // The name is attacker-chosen: bound it.
    username.chars().take(150).collect()
}

/// The subjects an attempt counts against, with their limits and how a
/// refusal names them.
fn subjects(username: &str, ip: &str) -> [(String, &'static Limit, &'static str); 3] {
    let name = bounded(username);
    [
        (
            format!("user:{name}|ip:{ip}"),
            &ACCOUNT,
            "for this account from this address",
        ),
        (format!("ip:{ip}"), &ADDRESS, "from this address"),
        (
            format!("user:{name}"),
            &ACCOUNT_ANYWHERE,
            "for this account",
        ),
    ]
}

/// Logins (and second-factor checks) verified at once in this process.
/// Each argon2 verification holds ~19 MiB for ~50 ms: without a bound, a
/// burst of logins is a burst of memory.
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// An attempt counted, before it is checked, as a failure of each of its
/// subjects. Settle it with [`Attempt::failed`] (it stays a failure) or
/// [`Attempt::succeeded`]; dropped otherwise (an error on the way), it is
/// withdrawn. Holding it holds one of the few verification slots.
pub struct Attempt {
    db: Db,
    ids: Vec<String>,
    subjects: Vec<String>,
    settled: bool,
    _slot: tokio::sync::SemaphorePermit<'static>,
}

impl Attempt {
    /// The attempt was wrong: it stays counted.
    pub fn failed(mut self) {
        self.settled = true;
    }

    /// Right, and the login is complete: the account's failures (from
    /// this address and everywhere) are forgiven; the address's are not
    /// (one right password must not reset a guesser's budget for other
    /// names), only this attempt's own count is withdrawn.
    pub async fn succeeded(mut self) -> Result<(), ApiError> {
        self.settled = true;
        let mut tx = self.db.pool.begin().await?;
        for subject in [&self.subjects[0], &self.subjects[2]] {
            sqlx::query("DELETE FROM login_failures WHERE subject = $1")
                .bind(subject)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM login_failures WHERE id = $1")
            .bind(&self.ids[1])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Right, but the login goes on (a second factor follows): only this
    /// attempt's count is withdrawn.
    pub async fn passed(mut self) -> Result<(), ApiError> {
        self.settled = true;
        withdraw(&self.db, &self.ids).await
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            let (db, ids) = (self.db.clone(), std::mem::take(&mut self.ids));
            tokio::spawn(async move {
                if let Err(e) = withdraw(&db, &ids).await {
                    tracing::warn!("cannot withdraw a login attempt: {}", e.detail);
                }
            });
        }
    }
}

async fn withdraw(db: &Db, ids: &[String]) -> Result<(), ApiError> {
    for id in ids {
        sqlx::query("DELETE FROM login_failures WHERE id = $1")
            .bind(id)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

/// Counts an attempt for `username` from `ip` against its subjects and lets
/// it through unless the attempts before it lock one of them: then 429
/// `login_throttled` (audited as `auth.login_throttled`), and the refused
/// attempt is not counted. Counting first, in one transaction that
/// concurrent attempts (and gateway nodes) pass one at a time, is what
/// stops 30 parallel guesses from all being checked against a limit of 5.
pub async fn reserve(db: &Db, username: &str, ip: &str, stage: &str) -> Result<Attempt, ApiError> {
    let slot = VERIFYING
        .acquire()
        .await
        .map_err(|_| ApiError::new(ErrorCode::Busy, "the gateway is shutting down"))?;
    let now = now_ms();
    let subjects = subjects(username, ip);
    let ids: Vec<String> = subjects.iter().map(|_| new_id()).collect();
    let mut tx = db.pool.begin().await?;
    if db.backend == Backend::Postgres {
        // SQLite serialises writers already (the first INSERT takes the
        // write lock); PostgreSQL needs a lock for the same effect.
        sqlx::query("SELECT pg_advisory_xact_lock(7368041)")
            .execute(&mut *tx)
            .await?;
    }
    let mut refusal: Option<(i64, &str)> = None;
    for (i, ((subject, limit, what), id)) in subjects.iter().zip(&ids).enumerate() {
        sqlx::query("INSERT INTO login_failures (id, subject, ts) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(subject)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let before: Vec<i64> = sqlx::query_scalar(
            "SELECT ts FROM login_failures WHERE subject = $1 AND ts > $2 AND id <> $3
             ORDER BY ts DESC LIMIT 1000",
        )
        .bind(subject)
        .bind(now - MEMORY_MS)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(wait) = retry_after(&before, now, limit) {
            // Someone guessing from an office's or a NAT's address must not
            // lock out everyone behind it: an account that logged in from
            // this address lately is held only to its own limits.
            if i == ADDRESS_SUBJECT && known_here(&mut tx, username, ip, now).await? {
                continue;
            }
            if refusal.is_none_or(|(w, _)| wait > w) {
                refusal = Some((wait, what));
            }
        }
    }
    let Some((wait, what)) = refusal else {
        tx.commit().await?;
        prune(db, now).await;
        return Ok(Attempt {
            db: db.clone(),
            ids,
            subjects: subjects.into_iter().map(|(s, _, _)| s).collect(),
            settled: false,
            _slot: slot,
        });
    };
    tx.rollback().await?;
    let secs = wait_secs(wait);
    audit::record_unauthenticated(
        db,
        &format!("auth.login_throttled {ip} {what}"),
        Event::new("auth.login_throttled")
            .failed()
            .actor_name(&bounded(username))
            .ip(ip)
            .detail(json!({ "retry_after_secs": secs, "scope": what, "stage": stage })),
    )
    .await?;
    Err(ApiError::new(
        ErrorCode::LoginThrottled,
        format!("too many failed logins {what}; try again in {secs} s"),
    ))
}

/// Where the address subject is in [`subjects`].
const ADDRESS_SUBJECT: usize = 1;

/// How long a successful login from an address vouches for the account
/// there ([`known_here`]).
pub const KNOWN_MS: i64 = 30 * 24 * 3_600_000;

/// Whether `username` logged in successfully from `ip` within [`KNOWN_MS`]
/// (the audit trail says so).
async fn known_here(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    username: &str,
    ip: &str,
    now: i64,
) -> Result<bool, ApiError> {
    let hit: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM audit_events a JOIN users u ON u.id = a.actor_user_id
         WHERE u.username = $1 AND a.action = 'auth.login' AND a.result = 'ok'
           AND a.client_ip = $2 AND a.ts > $3
         LIMIT 1",
    )
    .bind(username)
    .bind(ip)
    .bind(now - KNOWN_MS)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(hit.is_some())
}

/// Failures older than [`MEMORY_MS`] go, now and then.
async fn prune(db: &Db, now: i64) {
    if rand::random::<u8>() < 8 {
        let r = sqlx::query("DELETE FROM login_failures WHERE ts < $1")
            .bind(now - MEMORY_MS)
            .execute(&db.pool)
            .await;
        if let Err(e) = r {
            tracing::warn!("cannot prune old login failures: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn parallel_guesses_are_counted_before_they_are_checked() {
        let app = crate::testutil::TestApp::new().await;
        let guesses = (0..30).map(|i| {
            let app = &app;
            async move {
                app.try_login_from("198.51.100.1", "admin", &format!("wrong-{i}"))
                    .await
                    .0
            }
        });
        let answers = futures_util::future::join_all(guesses).await;
        let checked = answers
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count();
        let throttled = answers
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((checked, throttled), (5, 25), "{answers:?}");
        // Only the checked ones count as failures.
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM login_failures WHERE subject = 'ip:198.51.100.1'",
        )
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
        assert_eq!(n, 5);
    }

    #[tokio::test]
    async fn a_lock_from_one_address_does_not_lock_the_account_everywhere() {
        let app = crate::testutil::TestApp::new().await;
        let pw = app.admin_password.clone();
        for i in 0..5 {
            let (s, _) = app
                .try_login_from("198.51.100.1", "admin", &format!("x{i}"))
                .await;
            assert_eq!(s, StatusCode::UNAUTHORIZED);
        }
        // The guesser's address is locked, even with the right password...
        let (s, v) = app.try_login_from("198.51.100.1", "admin", &pw).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert_eq!(v["code"], "login_throttled");
        // ...the owner, elsewhere, is not.
        let (s, v) = app.try_login_from("203.0.113.9", "admin", &pw).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    #[tokio::test]
    async fn a_locked_address_still_lets_in_who_logged_in_from_it_before() {
        let app = crate::testutil::TestApp::new().await;
        let pw = app.admin_password.clone();
        let office = "198.51.100.7";
        let (s, _) = app.try_login_from(office, "admin", &pw).await;
        assert_eq!(s, StatusCode::OK);
        // Someone in the same office guesses across many names.
        for i in 0..ADDRESS.max_failures {
            let (s, _) = app
                .try_login_from(office, &format!("guess{i}"), "wrong-password")
                .await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{i}");
        }
        let (s, v) = app
            .try_login_from(office, "newcomer", "whatever-it-is")
            .await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert_eq!(
            v["detail"]
                .as_str()
                .map(|d| d.contains("from this address")),
            Some(true)
        );
        // The admin, known at this address, is held to their own limits.
        let (s, v) = app.try_login_from(office, "admin", &pw).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for i in 0..ACCOUNT.max_failures {
            let (s, _) = app.try_login_from(office, "admin", &format!("no{i}")).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{i}");
        }
        let (s, _) = app.try_login_from(office, "admin", &pw).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn an_attempt_that_ends_in_an_error_is_withdrawn() {
        let app = crate::testutil::TestApp::new().await;
        let db = &app.state.db;
        let a = reserve(db, "admin", "198.51.100.2", "password")
            .await
            .unwrap();
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM login_failures")
                .fetch_one(&db.pool)
                .await
                .unwrap()
        };
        assert_eq!(
            count().await,
            3,
            "counted against pair, address and account"
        );
        drop(a);
        for _ in 0..100 {
            if count().await == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(count().await, 0);
        let a = reserve(db, "admin", "198.51.100.2", "password")
            .await
            .unwrap();
        a.failed();
        assert_eq!(count().await, 3);
    }

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
