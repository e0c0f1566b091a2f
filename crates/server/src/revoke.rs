//! Ending what someone has open when their access goes away.
//!
//! Access is checked when an operation starts; revocation is what makes the
//! check hold afterwards. When a user is disabled or deleted, leaves a group,
//! a server leaves a group, or a token is disabled or deleted, `end` finds
//! every live operation the lost access covered and ends it: terminals
//! (through the websh registry), commands (queued ones never leave, running
//! ones get `CancelCommand`), transfers (the in-memory [`OpenOps`] registry
//! below) and API sessions.
//!
//! Which operations a revocation covers is decided by [`covers`], a plain
//! function over the operation's owner and server.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use alpacon_proto::Control;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::now_ms;
use crate::error::ApiError;

/// Who an operation runs for, and by what right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub user_id: String,
    pub token_id: Option<String>,
    pub work_session: Option<String>,
    /// Opened with an admin's right: as a system account rather than the
    /// person's own, or watching someone else's terminal. Ends when the
    /// person stops being an admin.
    pub by_role: bool,
    /// Reaches the server in its own right. False only for a read-only
    /// share viewer, whom the terminal's owner let in: their reach does not
    /// matter.
    pub reaches: bool,
}

impl Owner {
    /// The owner of an operation the caller starts in `work_session`, as
    /// the caller's own account.
    pub fn of(c: &Caller, work_session: Option<&str>) -> Owner {
        Owner {
            user_id: c.user_id.clone(),
            token_id: c.token_id.clone(),
            work_session: work_session.map(str::to_string),
            by_role: false,
            reaches: true,
        }
    }

    /// ... acting as `account` on the server (an admin's right unless it is
    /// the caller's own).
    pub fn acting_as(mut self, c: &Caller, account: &str) -> Owner {
        self.by_role = account != c.username;
        self
    }
}

/// What was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The user is disabled or deleted: everything of theirs ends.
    User { user_id: String },
    /// The token is disabled or deleted: everything it opened ends.
    Token { token_id: String },
    /// The user's reach shrank: what they have open on servers outside
    /// `keep` ends. `None` keeps every server (the user is an admin).
    Reach {
        user_id: String,
        keep: Option<HashSet<String>>,
    },
    /// The work session ended: everything opened in it ends.
    WorkSession { id: String },
    /// The user is no longer an admin: what they opened by that right ends.
    Role { user_id: String },
}

/// Whether `rev` ends an operation of `owner` on `server_id`.
pub fn covers(rev: &Revocation, owner: &Owner, server_id: &str) -> bool {
    match rev {
        Revocation::User { user_id } => owner.user_id == *user_id,
        Revocation::Token { token_id } => owner.token_id.as_deref() == Some(token_id.as_str()),
        Revocation::Reach { user_id, keep } => {
            owner.user_id == *user_id
                && owner.reaches
                && keep.as_ref().is_some_and(|k| !k.contains(server_id))
        }
        Revocation::WorkSession { id } => owner.work_session.as_deref() == Some(id.as_str()),
        Revocation::Role { user_id } => owner.user_id == *user_id && owner.by_role,
    }
}

impl Revocation {
    fn user_id(&self) -> Option<&str> {
        match self {
            Revocation::User { user_id }
            | Revocation::Reach { user_id, .. }
            | Revocation::Role { user_id } => Some(user_id),
            Revocation::Token { .. } | Revocation::WorkSession { .. } => None,
        }
    }
}

struct Entry {
    owner: Owner,
    server_id: String,
    cancel: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

/// Live operations that hold no other registry: file transfers, clients
/// attached to terminals (the owner's, a share link's, an admin watching;
/// the terminal itself is ended through the websh registry) and later
/// tunnels. Each registers for its lifetime and watches its token.
#[derive(Default)]
pub struct OpenOps {
    next: AtomicU64,
    ops: Mutex<HashMap<u64, Entry>>,
}

/// Registration of one operation; dropping it deregisters.
pub struct OpGuard {
    ops: Arc<OpenOps>,
    key: u64,
    cancel: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl OpGuard {
    /// Resolves when the operation's access is revoked.
    pub async fn revoked(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_revoked(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A handle that tells whether the access was revoked, for a task that
    /// does not own the guard.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Why the access was revoked (once it is).
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.ops.map().remove(&self.key);
    }
}

impl OpenOps {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(self: &Arc<Self>, owner: Owner, server_id: &str) -> OpGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let reason = Arc::new(OnceLock::new());
        self.map().insert(
            key,
            Entry {
                owner,
                server_id: server_id.to_string(),
                cancel: cancel.clone(),
                reason: reason.clone(),
            },
        );
        OpGuard {
            ops: self.clone(),
            key,
            cancel,
            reason,
        }
    }

    /// Cancels every registered operation `rev` covers, for `reason`;
    /// returns how many.
    pub fn cancel(&self, rev: &Revocation, reason: &str) -> usize {
        let map = self.map();
        let mut n = 0;
        for e in map.values() {
            if covers(rev, &e.owner, &e.server_id) {
                let _ = e.reason.set(reason.to_string());
                e.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `end` ended, for the audit event of the change that caused it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Ended {
    pub terminals: usize,
    pub commands: usize,
    pub transfers: usize,
    pub api_sessions: u64,
}

/// Ends everything `rev` covers. Terminals are closed in parallel, so the
/// whole takes about one agent round trip however many there are.
pub async fn end(st: &AppState, rev: &Revocation, reason: &str) -> Result<Ended, ApiError> {
    let mut ended = Ended {
        transfers: st.ops.cancel(rev, reason),
        ..Ended::default()
    };
    if let Revocation::User { user_id } = rev {
        ended.api_sessions = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&st.db.pool)
            .await?
            .rows_affected();
    }

    let (col, key) = match rev {
        Revocation::Token { token_id } => ("token_id", token_id.as_str()),
        Revocation::WorkSession { id } => ("work_session_id", id.as_str()),
        _ => (
            "user_id",
            rev.user_id()
                .ok_or_else(|| ApiError::internal("revocation without a user"))?,
        ),
    };
    let rows = sqlx::query(&format!(
        "SELECT w.id, w.server_id, w.user_id, w.token_id, w.work_session_id, w.username,
                u.username AS owner_name
         FROM websh_sessions w LEFT JOIN users u ON u.id = w.user_id
         WHERE w.{col} = $1 AND w.status = 'open'"
    ))
    .bind(key)
    .fetch_all(&st.db.pool)
    .await?;
    let mut closing = Vec::new();
    for r in &rows {
        let owner = Owner {
            user_id: r.try_get("user_id")?,
            token_id: r.try_get("token_id")?,
            work_session: r.try_get("work_session_id")?,
            by_role: r.try_get::<Option<String>, _>("owner_name")?.as_deref()
                != Some(r.try_get::<String, _>("username")?.as_str()),
            reaches: true,
        };
        let server_id: String = r.try_get("server_id")?;
        if covers(rev, &owner, &server_id) {
            let id: String = r.try_get("id")?;
            closing.push(async move { crate::websh::close_live(st, &id, reason).await });
        }
    }
    ended.terminals = closing.len();

    let ccol = if col == "user_id" {
        "requested_by"
    } else {
        col
    };
    let rows = sqlx::query(&format!(
        "SELECT c.id, c.server_id, c.requested_by, c.token_id, c.status, c.work_session_id,
                c.username, u.username AS owner_name
         FROM commands c LEFT JOIN users u ON u.id = c.requested_by
         WHERE c.{ccol} = $1 AND c.status IN ('queued', 'sent')"
    ))
    .bind(key)
    .fetch_all(&st.db.pool)
    .await?;
    let mut cancels = Vec::new();
    for r in &rows {
        let owner = Owner {
            user_id: r
                .try_get::<Option<String>, _>("requested_by")?
                .unwrap_or_default(),
            token_id: r.try_get("token_id")?,
            work_session: r.try_get("work_session_id")?,
            by_role: r.try_get::<Option<String>, _>("owner_name")?.as_deref()
                != Some(r.try_get::<String, _>("username")?.as_str()),
            reaches: true,
        };
        let server_id: String = r.try_get("server_id")?;
        if !covers(rev, &owner, &server_id) {
            continue;
        }
        ended.commands += 1;
        let id: String = r.try_get("id")?;
        // Marked first: a command that was never delivered is never sent
        // again; one that runs gets its real result stored over the mark.
        sqlx::query(
            "UPDATE commands SET status = 'error', error_code = 'revoked', error_detail = $1,
                 finished_at = $2
             WHERE id = $3 AND status IN ('queued', 'sent')",
        )
        .bind(format!("access revoked: {reason}"))
        .bind(now_ms())
        .bind(&id)
        .execute(&st.db.pool)
        .await?;
        st.relay.live.finish(&id);
        if r.try_get::<String, _>("status")? == "sent" {
            cancels.push((server_id, id));
        }
    }
    for (server_id, id) in cancels {
        st.relay
            .send_control(
                &server_id,
                Control::CancelCommand {
                    id,
                    reason: reason.to_string(),
                },
            )
            .await;
    }
    futures_util::future::join_all(closing).await;
    Ok(ended)
}

/// Tokens that expired while something they opened is still running: end
/// it, as if the token had been disabled at its expiry.
pub async fn end_expired_tokens(st: &AppState) -> Result<usize, ApiError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT t.id FROM api_tokens t
         WHERE t.expires_at IS NOT NULL AND t.expires_at <= $1 AND (
             EXISTS (SELECT 1 FROM websh_sessions w WHERE w.token_id = t.id AND w.status = 'open')
          OR EXISTS (SELECT 1 FROM commands c WHERE c.token_id = t.id AND c.status IN ('queued', 'sent'))
          OR EXISTS (SELECT 1 FROM transfers x WHERE x.token_id = t.id AND x.status = 'running'))",
    )
    .bind(now_ms())
    .fetch_all(&st.db.pool)
    .await?;
    for id in &ids {
        end(
            st,
            &Revocation::Token {
                token_id: id.clone(),
            },
            "the API token expired",
        )
        .await?;
    }
    Ok(ids.len())
}

/// Commands revoked while their agent was away: cancelled again when it
/// comes back (it may have received them before the revocation).
pub async fn recancel_on_connect(st: &AppState, server_id: &str) {
    let since = now_ms() - 7 * 24 * 3600 * 1000;
    let ids: Result<Vec<String>, _> = sqlx::query_scalar(
        "SELECT id FROM commands WHERE server_id = $1 AND status = 'error'
             AND error_code = 'revoked' AND finished_at > $2",
    )
    .bind(server_id)
    .bind(since)
    .fetch_all(&st.db.pool)
    .await;
    match ids {
        Ok(ids) => {
            for id in ids {
                st.relay
                    .send_control(
                        server_id,
                        Control::CancelCommand {
                            id,
                            reason: "access revoked".into(),
                        },
                    )
                    .await;
            }
        }
        Err(e) => tracing::warn!("cannot load revoked commands: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(u: &str, t: Option<&str>) -> Owner {
        Owner {
            user_id: u.into(),
            token_id: t.map(Into::into),
            work_session: None,
            by_role: false,
            reaches: true,
        }
    }

    #[test]
    fn role_revocation_covers_only_what_the_admin_right_opened() {
        let rev = Revocation::Role {
            user_id: "u1".into(),
        };
        let own = owner("u1", None);
        assert!(!covers(&rev, &own, "s1"));
        let as_root = Owner {
            by_role: true,
            ..owner("u1", None)
        };
        assert!(covers(&rev, &as_root, "s1"));
        let other = Owner {
            by_role: true,
            ..owner("u2", None)
        };
        assert!(!covers(&rev, &other, "s1"));
    }

    #[test]
    fn read_only_viewers_do_not_depend_on_reach_but_on_everything_else() {
        let viewer = Owner {
            reaches: false,
            ..owner("u1", Some("t1"))
        };
        let keep: HashSet<String> = HashSet::new();
        let reach = Revocation::Reach {
            user_id: "u1".into(),
            keep: Some(keep),
        };
        assert!(!covers(&reach, &viewer, "s1"));
        assert!(covers(&reach, &owner("u1", None), "s1"));
        assert!(covers(
            &Revocation::User {
                user_id: "u1".into()
            },
            &viewer,
            "s1"
        ));
        assert!(covers(
            &Revocation::Token {
                token_id: "t1".into()
            },
            &viewer,
            "s1"
        ));
    }

    #[test]
    fn work_session_revocation_covers_only_what_ran_in_it() {
        let rev = Revocation::WorkSession { id: "w1".into() };
        let mut o = owner("u1", None);
        assert!(!covers(&rev, &o, "s1"));
        o.work_session = Some("w1".into());
        assert!(covers(&rev, &o, "s1"));
        o.work_session = Some("w2".into());
        assert!(!covers(&rev, &o, "s1"));
    }

    #[test]
    fn user_revocation_covers_all_of_theirs_and_nothing_else() {
        let rev = Revocation::User {
            user_id: "u1".into(),
        };
        assert!(covers(&rev, &owner("u1", None), "s1"));
        assert!(covers(&rev, &owner("u1", Some("t1")), "s2"));
        assert!(!covers(&rev, &owner("u2", None), "s1"));
    }

    #[test]
    fn token_revocation_covers_only_that_token() {
        let rev = Revocation::Token {
            token_id: "t1".into(),
        };
        assert!(covers(&rev, &owner("u1", Some("t1")), "s1"));
        assert!(!covers(&rev, &owner("u1", Some("t2")), "s1"));
        assert!(!covers(&rev, &owner("u1", None), "s1"));
    }

    #[test]
    fn reach_revocation_keeps_servers_still_reachable() {
        let keep: HashSet<String> = ["s1".to_string()].into();
        let rev = Revocation::Reach {
            user_id: "u1".into(),
            keep: Some(keep),
        };
        assert!(!covers(&rev, &owner("u1", None), "s1"));
        assert!(covers(&rev, &owner("u1", None), "s2"));
        assert!(covers(&rev, &owner("u1", Some("t")), "s2"));
        assert!(!covers(&rev, &owner("u2", None), "s2"));
        let admin = Revocation::Reach {
            user_id: "u1".into(),
            keep: None,
        };
        assert!(!covers(&admin, &owner("u1", None), "s2"));
    }

    #[tokio::test]
    async fn an_expired_token_ends_what_it_left_open() {
        let app = crate::testutil::TestApp::new().await;
        let db = &app.state.db;
        let admin: String = sqlx::query_scalar("SELECT id FROM users WHERE username = 'admin'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let now = now_ms();
        for (id, exp) in [("t-old", now - 1000), ("t-live", now + 3_600_000)] {
            sqlx::query(
                "INSERT INTO api_tokens (id, user_id, name, key_hash, created_at, expires_at)
                 VALUES ($1, $2, $1, $1, $3, $4)",
            )
            .bind(id)
            .bind(&admin)
            .bind(now)
            .bind(exp)
            .execute(&db.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO websh_sessions (id, server_id, user_id, username, rows_, cols, status,
                     created_at, token_id, last_activity_at)
                 VALUES ($1, 's', $2, 'admin', 24, 80, 'open', $3, $4, $3)",
            )
            .bind(format!("w-{id}"))
            .bind(&admin)
            .bind(now)
            .bind(id)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        assert_eq!(end_expired_tokens(&app.state).await.unwrap(), 1);
        let status = |id: &'static str| {
            sqlx::query_scalar::<_, String>("SELECT status FROM websh_sessions WHERE id = $1")
                .bind(id)
                .fetch_one(&db.pool)
        };
        assert_eq!(status("w-t-old").await.unwrap(), "closed");
        assert_eq!(status("w-t-live").await.unwrap(), "open");
        // Nothing left to end: idempotent.
        assert_eq!(end_expired_tokens(&app.state).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn registry_cancels_covered_ops_and_forgets_dropped_ones() {
        let ops = Arc::new(OpenOps::default());
        let a = ops.register(owner("u1", None), "s1");
        let b = ops.register(owner("u2", None), "s1");
        assert_eq!(ops.len(), 2);
        let n = ops.cancel(
            &Revocation::User {
                user_id: "u1".into(),
            },
            "gone",
        );
        assert_eq!(n, 1);
        a.revoked().await;
        assert_eq!(a.reason(), Some("gone"));
        assert!(a.is_revoked() && !b.is_revoked());
        drop(a);
        assert_eq!(ops.len(), 1);
        drop(b);
        assert!(ops.is_empty());
    }
}
