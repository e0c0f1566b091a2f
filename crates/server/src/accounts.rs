//! Managed accounts on servers ("connect as yourself").
//!
//! When a person acts on a server as their own username, the gateway
//! attaches their central identity ([`ManagedAccount`]: UID, private GID =
//! UID, login shell, full name, and their Alpacon groups as supplementary
//! groups) to the operation (`Account::managed`, `CommandSpec::managed`).
//! The agent creates or updates the local account before the operation
//! drops to it (see the agent's `provision` module). Other accounts (root,
//! `docker`, ... used by admins) are not managed.
//!
//! `server_accounts` records where a person's account was provisioned
//! (recorded when the gateway sends the identity, i.e. optimistically: an
//! agent that refused it has nothing to lock later, and says so). Rows are
//! kept after the user is deleted so the lock can still be delivered.
//! States: `active`, `lock_pending` / `remove_pending` (a `LockAccount` is
//! owed to the server; sent now if it is connected, else when its agent
//! connects), `locked` / `removed` (the agent confirmed with
//! `AccountLocked`).

use alpacon_api::ErrorCode;
use alpacon_proto::{Control, ManagedAccount, ManagedGroup};
use serde_json::json;
use sqlx::Row;

use crate::access::Refusal;
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::config::AccountTermination;
use crate::db::{now_ms, Db};
use crate::error::ApiError;

pub const ACTIVE: &str = "active";
pub const LOCK_PENDING: &str = "lock_pending";
pub const REMOVE_PENDING: &str = "remove_pending";
pub const LOCKED: &str = "locked";
pub const REMOVED: &str = "removed";

/// Why [`account_rule`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRefusal {
    /// Another person's or a system account, asked for by a member.
    Account,
    /// A group that is not the managed account's own.
    Group,
}

/// The account rule of every route to a server (pure): may a caller act as
/// `username` with `groupname` as the primary group?
/// - One's own username is a managed account; its group may only be its
///   private group (same name) or one of the person's Alpacon groups
///   (`own_group`), whoever asks: admins included, since the agent refuses
///   any other group for a managed account too.
/// - Any other account is for admins only, with any group.
pub fn account_rule(
    is_admin: bool,
    me: &str,
    username: &str,
    groupname: Option<&str>,
    own_group: bool,
) -> Result<(), AccountRefusal> {
    if username == me {
        let allowed = |g: &str| g == me || (own_group && !crate::iam::reserved_name(g));
        match groupname {
            Some(g) if !allowed(g) => Err(AccountRefusal::Group),
            _ => Ok(()),
        }
    } else if is_admin {
        Ok(())
    } else {
        Err(AccountRefusal::Account)
    }
}

/// Rule 4 of the gate (`access::authorize`): [`account_rule`] for the
/// caller, with whether `groupname` is one of their Alpacon groups looked
/// up. The refusal is audited by the gate.
pub async fn check(
    st: &AppState,
    caller: &Caller,
    username: &str,
    groupname: Option<&str>,
) -> Result<Result<(), Refusal>, ApiError> {
    let own_group = match groupname {
        Some(g) if username == caller.username && g != caller.username => {
            sqlx::query_scalar::<_, String>(
                "SELECT g.id FROM iam_groups g JOIN memberships m ON m.group_id = g.id
                 WHERE m.user_id = $1 AND g.name = $2",
            )
            .bind(&caller.user_id)
            .bind(g)
            .fetch_optional(&st.db.pool)
            .await?
            .is_some()
        }
        _ => false,
    };
    let Err(why) = account_rule(
        caller.is_admin(),
        &caller.username,
        username,
        groupname,
        own_group,
    ) else {
        return Ok(Ok(()));
    };
    Ok(Err(match why {
        AccountRefusal::Account => Refusal::new(
            ErrorCode::AccountNotAllowed,
            format!(
                "you may only act as your own account ({}) on servers; using {username:?} needs staff or superuser rights",
                caller.username
            ),
        ),
        AccountRefusal::Group => Refusal::new(
            ErrorCode::GroupNotAllowed,
            format!(
                "group {:?} is not one of {username}'s groups: use your own group ({username}) or an Alpacon group you belong to",
                groupname.unwrap_or_default()
            ),
        ),
    }))
}

/// The managed identity for `user_id` acting as `account`: `Some` only when
/// `account` is the person's own username (and they have a UID).
pub async fn managed_for(
    db: &Db,
    user_id: &str,
    account: &str,
) -> Result<Option<ManagedAccount>, ApiError> {
    let row = sqlx::query("SELECT username, uid, shell, full_name FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let username: String = row.try_get("username")?;
    if username != account {
        return Ok(None);
    }
    let Some(uid) = row
        .try_get::<Option<i64>, _>("uid")?
        .and_then(|u| u32::try_from(u).ok())
    else {
        tracing::warn!(user = %username, "user has no UID; their account is not managed");
        return Ok(None);
    };
    let groups = sqlx::query(
        "SELECT g.name, g.gid FROM iam_groups g JOIN memberships m ON m.group_id = g.id
         WHERE m.user_id = $1 ORDER BY g.name",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .filter_map(|r| {
        let name: String = r.try_get("name").ok()?;
        let gid = u32::try_from(r.try_get::<i64, _>("gid").ok()?).ok()?;
        Some(ManagedGroup { name, gid })
    })
    .collect();
    Ok(Some(ManagedAccount {
        uid,
        gid: uid,
        shell: row.try_get("shell")?,
        groups,
        full_name: row.try_get("full_name")?,
    }))
}

/// [`managed_for`], and when it is `Some`, records that the account is (being)
/// provisioned on `server_id`.
pub async fn attach(
    db: &Db,
    server_id: &str,
    user_id: &str,
    account: &str,
) -> Result<Option<ManagedAccount>, ApiError> {
    let m = managed_for(db, user_id, account).await?;
    if let Some(m) = &m {
        record(db, server_id, user_id, account, m.uid).await?;
    }
    Ok(m)
}

/// The managed identity for a terminal session (looked up by its owner).
pub async fn for_session(
    db: &Db,
    session_id: &str,
    server_id: &str,
    account: &str,
) -> Result<Option<ManagedAccount>, ApiError> {
    let user: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM websh_sessions WHERE id = $1")
            .bind(session_id)
            .fetch_optional(&db.pool)
            .await?;
    match user {
        Some(u) => attach(db, server_id, &u, account).await,
        None => Ok(None),
    }
}

async fn record(
    db: &Db,
    server_id: &str,
    user_id: &str,
    username: &str,
    uid: u32,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO server_accounts (server_id, user_id, username, uid, state, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (server_id, user_id) DO UPDATE
         SET username = $3, uid = $4, state = $5, updated_at = $6",
    )
    .bind(server_id)
    .bind(user_id)
    .bind(username)
    .bind(uid as i64)
    .bind(ACTIVE)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The state a revocation moves an account to, given the configured
/// termination and its current state; `None`: nothing to do.
pub fn revoked_state(current: &str, termination: AccountTermination) -> Option<&'static str> {
    match (current, termination) {
        (REMOVED | REMOVE_PENDING, _) => None,
        (_, AccountTermination::Remove) => Some(REMOVE_PENDING),
        (LOCKED | LOCK_PENDING, AccountTermination::Lock) => None,
        (_, AccountTermination::Lock) => Some(LOCK_PENDING),
    }
}

/// After a user is disabled or deleted: lock (or remove, per the gateway's
/// `account_termination`) their managed account on every server where it
/// was provisioned. Servers that are offline get it when they reconnect.
pub async fn user_revoked(st: &AppState, user_id: &str, username: &str) -> Result<(), ApiError> {
    let rows = sqlx::query("SELECT server_id, state FROM server_accounts WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(&st.db.pool)
        .await?;
    let mut touched = Vec::new();
    for r in rows {
        let server_id: String = r.try_get("server_id")?;
        let state: String = r.try_get("state")?;
        if let Some(next) = revoked_state(&state, st.config.account_termination) {
            set_state(&st.db, &server_id, user_id, next).await?;
            touched.push(server_id);
        }
    }
    if !touched.is_empty() {
        tracing::info!(
            user = username,
            servers = touched.len(),
            "locking the managed account on its servers"
        );
    }
    for server_id in touched {
        send_pending(st, &server_id).await;
    }
    Ok(())
}

/// After a membership change: lock the account on servers the person can no
/// longer reach. (Groups are re-synced by the next access, which carries
/// the current groups.) Admins reach every server: nothing to lock.
pub async fn reach_changed(st: &AppState, user_id: &str) -> Result<(), ApiError> {
    let user = sqlx::query("SELECT is_superuser, is_staff, is_active FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&st.db.pool)
        .await?;
    let Some(user) = user else {
        return Ok(());
    };
    if user.try_get::<i64, _>("is_superuser")? != 0 || user.try_get::<i64, _>("is_staff")? != 0 {
        return Ok(());
    }
    let reach = crate::iam::groups::reachable_server_ids(&st.db, user_id).await?;
    let rows =
        sqlx::query("SELECT server_id FROM server_accounts WHERE user_id = $1 AND state = $2")
            .bind(user_id)
            .bind(ACTIVE)
            .fetch_all(&st.db.pool)
            .await?;
    for r in rows {
        let server_id: String = r.try_get("server_id")?;
        if reach.contains(&server_id) {
            continue;
        }
        set_state(&st.db, &server_id, user_id, LOCK_PENDING).await?;
        send_pending(st, &server_id).await;
    }
    Ok(())
}

async fn set_state(db: &Db, server_id: &str, user_id: &str, state: &str) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE server_accounts SET state = $1, updated_at = $2 WHERE server_id = $3 AND user_id = $4",
    )
    .bind(state)
    .bind(now_ms())
    .bind(server_id)
    .bind(user_id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Sends every lock/remove owed to `server_id` if its agent is connected.
/// Called after a revocation and whenever the agent connects; the agent's
/// `AccountLocked` settles each one (the agent's lock is idempotent, so a
/// resend does no harm).
pub async fn send_pending(st: &AppState, server_id: &str) {
    let rows = sqlx::query(
        "SELECT username, uid, state FROM server_accounts
         WHERE server_id = $1 AND state IN ($2, $3)",
    )
    .bind(server_id)
    .bind(LOCK_PENDING)
    .bind(REMOVE_PENDING)
    .fetch_all(&st.db.pool)
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot load pending account locks: {e}");
            return;
        }
    };
    for r in rows {
        let msg = (|| -> Result<Control, sqlx::Error> {
            Ok(Control::LockAccount {
                username: r.try_get("username")?,
                uid: r.try_get::<i64, _>("uid")? as u32,
                remove: r.try_get::<String, _>("state")? == REMOVE_PENDING,
            })
        })();
        match msg {
            Ok(m) => {
                if !st.relay.send_control(server_id, m).await {
                    // Offline: sent again when the agent connects.
                    return;
                }
            }
            Err(e) => tracing::error!("bad server_accounts row: {e}"),
        }
    }
}

/// The agent's answer to `LockAccount`.
pub async fn on_locked(
    st: &AppState,
    server_id: &str,
    username: &str,
    uid: u32,
    removed: bool,
    error: Option<String>,
) {
    if let Some(e) = &error {
        tracing::warn!(
            server_id,
            user = username,
            "the agent could not lock the account: {e}"
        );
    }
    let next = if error.is_some() {
        None
    } else if removed {
        Some(REMOVED)
    } else {
        Some(LOCKED)
    };
    let r = async {
        let rows = sqlx::query(
            "SELECT user_id, state FROM server_accounts
             WHERE server_id = $1 AND username = $2 AND uid = $3 AND state IN ($4, $5)",
        )
        .bind(server_id)
        .bind(username)
        .bind(uid as i64)
        .bind(LOCK_PENDING)
        .bind(REMOVE_PENDING)
        .fetch_all(&st.db.pool)
        .await?;
        // Only an answer to a lock this gateway owes that server is
        // recorded: an agent cannot write account events at will.
        if rows.is_empty() {
            tracing::warn!(
                server_id,
                user = username,
                "ignoring an account report nothing asked for"
            );
            return Ok(());
        }
        for row in rows {
            let user_id: String = row.try_get("user_id")?;
            let state: String = row.try_get("state")?;
            // A lock answers a lock; a remove owed is not settled by a lock.
            let settled = match next {
                Some(REMOVED) => Some(REMOVED),
                Some(LOCKED) if state == LOCK_PENDING => Some(LOCKED),
                _ => None,
            };
            if let Some(s) = settled {
                set_state(&st.db, server_id, &user_id, s).await?;
            }
        }
        let server_name: Option<String> =
            sqlx::query_scalar("SELECT name FROM servers WHERE id = $1")
                .bind(server_id)
                .fetch_optional(&st.db.pool)
                .await?;
        let action = if removed {
            "account.remove"
        } else {
            "account.lock"
        };
        let ev = Event::new(action)
            .result(error.is_none())
            .server(server_id, server_name.as_deref().unwrap_or(""))
            .detail(json!({"username": username, "uid": uid, "error": error}));
        audit::record(&st.db, ev).await
    };
    if let Err(e) = r.await {
        tracing::warn!("cannot record an account lock: {}", e.detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestApp;

    #[test]
    fn account_and_group_rule() {
        use AccountRefusal::*;
        // (admin, username, groupname, own_group) -> decision, for alice.
        type Row<'a> = (
            bool,
            &'a str,
            Option<&'a str>,
            bool,
            Result<(), AccountRefusal>,
        );
        let table: &[Row] = &[
            (false, "alice", None, false, Ok(())),
            (false, "alice", Some("alice"), false, Ok(())),
            (false, "alice", Some("ops"), true, Ok(())),
            // The pentest's cases: a member naming a system group.
            (false, "alice", Some("shadow"), false, Err(Group)),
            (false, "alice", Some("root"), false, Err(Group)),
            // Even an Alpacon group of a reserved name (made before names
            // were reserved) is no way into the system group.
            (false, "alice", Some("shadow"), true, Err(Group)),
            // Admins acting as themselves are a managed account too.
            (true, "alice", Some("docker"), false, Err(Group)),
            (false, "root", None, false, Err(Account)),
            (false, "bob", Some("bob"), false, Err(Account)),
            (true, "root", Some("root"), false, Ok(())),
            (true, "docker", Some("docker"), false, Ok(())),
        ];
        for (admin, user, group, own, want) in table {
            assert_eq!(
                account_rule(*admin, "alice", user, *group, *own),
                *want,
                "admin={admin} {user}:{group:?} own={own}"
            );
        }
    }

    async fn state_of(st: &AppState, server: &str, user: &str) -> String {
        sqlx::query_scalar(
            "SELECT state FROM server_accounts WHERE server_id = $1 AND user_id = $2",
        )
        .bind(server)
        .bind(user)
        .fetch_one(&st.db.pool)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn identity_is_attached_only_for_the_own_account_and_revocation_is_owed() {
        let app = TestApp::new().await;
        let st = &app.state;
        app.user_key("alice").await;
        let (id, uid): (String, i64) =
            sqlx::query_as("SELECT id, uid FROM users WHERE username = 'alice'")
                .fetch_one(&st.db.pool)
                .await
                .unwrap();
        for (gid, name, g) in [("g1", "web", 50_001i64), ("g2", "ops", 50_002)] {
            sqlx::query(
                "INSERT INTO iam_groups (id, name, gid, created_at) VALUES ($1, $2, $3, 0)",
            )
            .bind(gid)
            .bind(name)
            .bind(g)
            .execute(&st.db.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO memberships (id, group_id, user_id, role, created_at) VALUES ($1, $2, $3, 'member', 0)",
            )
            .bind(format!("m-{gid}"))
            .bind(gid)
            .bind(&id)
            .execute(&st.db.pool)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO servers (id, name, public_key, created_at) VALUES ('s1', 'box', 'k', 0)",
        )
        .execute(&st.db.pool)
        .await
        .unwrap();

        // Someone else's account, or root: not managed.
        assert_eq!(managed_for(&st.db, &id, "root").await.unwrap(), None);
        let m = managed_for(&st.db, &id, "alice").await.unwrap().unwrap();
        assert_eq!((m.uid as i64, m.gid as i64), (uid, uid));
        assert_eq!(m.shell, "/bin/bash");
        assert_eq!(
            m.groups,
            vec![
                ManagedGroup {
                    name: "ops".into(),
                    gid: 50_002
                },
                ManagedGroup {
                    name: "web".into(),
                    gid: 50_001
                },
            ]
        );

        assert!(attach(&st.db, "s1", &id, "alice").await.unwrap().is_some());
        assert_eq!(state_of(st, "s1", &id).await, ACTIVE);
        // Disabled: a lock is owed (the server is offline: it stays owed).
        user_revoked(st, &id, "alice").await.unwrap();
        assert_eq!(state_of(st, "s1", &id).await, LOCK_PENDING);
        // The agent's answer settles it.
        on_locked(st, "s1", "alice", uid as u32, false, None).await;
        assert_eq!(state_of(st, "s1", &id).await, LOCKED);
        // A new access (re-enabled) makes it active again.
        attach(&st.db, "s1", &id, "alice").await.unwrap();
        assert_eq!(state_of(st, "s1", &id).await, ACTIVE);
        // Losing every group that reached the server locks it.
        reach_changed(st, &id).await.unwrap();
        assert_eq!(state_of(st, "s1", &id).await, LOCK_PENDING);
        // A failed lock stays owed.
        on_locked(st, "s1", "alice", uid as u32, false, Some("busy".into())).await;
        assert_eq!(state_of(st, "s1", &id).await, LOCK_PENDING);
    }

    #[test]
    fn revocation_states() {
        use AccountTermination::{Lock, Remove};
        assert_eq!(revoked_state(ACTIVE, Lock), Some(LOCK_PENDING));
        assert_eq!(revoked_state(ACTIVE, Remove), Some(REMOVE_PENDING));
        assert_eq!(revoked_state(LOCKED, Lock), None);
        assert_eq!(revoked_state(LOCK_PENDING, Lock), None);
        assert_eq!(revoked_state(LOCKED, Remove), Some(REMOVE_PENDING));
        assert_eq!(revoked_state(REMOVED, Lock), None);
        assert_eq!(revoked_state(REMOVE_PENDING, Lock), None);
    }
}
