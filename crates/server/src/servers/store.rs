//! The SQL of servers and registration tokens: the only place in this
//! feature that writes it.

use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use super::ServerRow;
use crate::api::{Bind, Listing, Page};
use crate::audit::{self, Event};
use crate::db::{now_ms, Db};
use crate::error::{is_unique_violation, ApiError};

const SERVER_COLUMNS: &str = "id, name, public_key, created_at, registered_by, is_connected, \
     connected_at, last_seen_at, remote_ip, hostname, os, kernel, arch, cpus, memory_bytes, agent_version";

impl<'r> FromRow<'r, AnyRow> for ServerRow {
    fn from_row(r: &'r AnyRow) -> Result<ServerRow, sqlx::Error> {
        Ok(ServerRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            public_key: r.try_get("public_key")?,
            created_at: r.try_get("created_at")?,
            registered_by: r.try_get("registered_by")?,
            // Stored as an integer on both backends.
            is_connected: r.try_get::<i64, _>("is_connected")? != 0,
            connected_at: r.try_get("connected_at")?,
            last_seen_at: r.try_get("last_seen_at")?,
            remote_ip: r.try_get("remote_ip")?,
            hostname: r.try_get("hostname")?,
            os: r.try_get("os")?,
            kernel: r.try_get("kernel")?,
            arch: r.try_get("arch")?,
            cpus: r.try_get("cpus")?,
            memory_bytes: r.try_get("memory_bytes")?,
            agent_version: r.try_get("agent_version")?,
        })
    }
}

/// The server with this id, or else with this name.
pub async fn find(db: &Db, ident: &str) -> Result<Option<ServerRow>, ApiError> {
    // The id first: a name may not look like a UUID in practice, but if one
    // does the id still wins, which keeps `server=<uuid>` exact.
    let rows = sqlx::query(&format!(
        "SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1
         UNION ALL
         SELECT {SERVER_COLUMNS} FROM servers WHERE name = $1 AND id <> $1"
    ))
    .bind(ident)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.first().map(ServerRow::from_row).transpose()?)
}

pub async fn get_by_id(db: &Db, id: &str) -> Result<Option<ServerRow>, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(ServerRow::from_row).transpose()?)
}

/// One page of servers, newest first: every server when `all`, else those
/// of `user_id`'s groups; only the one named `name` when given.
pub async fn list(
    db: &Db,
    name: Option<&str>,
    all: bool,
    user_id: &str,
    page: Page,
) -> Result<(i64, Vec<ServerRow>), ApiError> {
    let filter = "WHERE ($1 IS NULL OR s.name = $1) AND ($2 = 1 OR s.id IN (
            SELECT gs.server_id FROM group_servers gs
            JOIN memberships m ON m.group_id = gs.group_id WHERE m.user_id = $3))";
    let (count, rows) = Listing {
        count_from: "servers s",
        select: &format!("SELECT {SERVER_COLUMNS} FROM servers s"),
        filter,
        order_by: "s.created_at DESC, s.id DESC",
        binds: vec![
            Bind::OptText(name),
            Bind::Int(all as i64),
            Bind::Text(user_id),
        ],
    }
    .fetch(db, page)
    .await?;
    let rows = rows
        .iter()
        .map(ServerRow::from_row)
        .collect::<Result<_, _>>()?;
    Ok((count, rows))
}

/// Deletes the server and records `event` in the same transaction; false
/// when it was already gone.
pub async fn delete(db: &Db, id: &str, event: Event) -> Result<bool, ApiError> {
    let mut tx = db.pool.begin().await?;
    let gone = sqlx::query("DELETE FROM servers WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Ok(false);
    }
    audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(true)
}

/// What an agent reports about itself when its link comes up.
#[derive(Debug, Clone, Default)]
pub struct SystemUpdate<'a> {
    pub remote_ip: &'a str,
    pub agent_version: &'a str,
    pub hostname: &'a str,
    pub os: &'a str,
    pub kernel: &'a str,
    pub arch: &'a str,
    pub cpus: i64,
    pub memory_bytes: i64,
}

/// For the relay: the agent's link is up.
pub async fn mark_connected(db: &Db, id: &str, s: &SystemUpdate<'_>) -> Result<(), ApiError> {
    let now = now_ms();
    sqlx::query(
        "UPDATE servers SET is_connected = 1, connected_at = $1, last_seen_at = $1, remote_ip = $2,
             agent_version = $3, hostname = $4, os = $5, kernel = $6, arch = $7, cpus = $8,
             memory_bytes = $9
         WHERE id = $10",
    )
    .bind(now)
    .bind(s.remote_ip)
    .bind(s.agent_version)
    .bind(s.hostname)
    .bind(s.os)
    .bind(s.kernel)
    .bind(s.arch)
    .bind(s.cpus)
    .bind(s.memory_bytes)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// For the relay: the agent was heard from (heartbeat, message).
pub async fn touch(db: &Db, id: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE servers SET last_seen_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// For the relay: the agent's link is gone.
pub async fn mark_disconnected(db: &Db, id: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE servers SET is_connected = 0, last_seen_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

// ---- registration tokens ----

/// A row of `registration_tokens` with its creator's name.
#[derive(Debug, FromRow)]
pub struct RegTokenRow {
    pub id: String,
    pub name: String,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
}

/// One page of registration tokens, newest first.
pub async fn list_reg_tokens(db: &Db, page: Page) -> Result<(i64, Vec<RegTokenRow>), ApiError> {
    let (count, rows) = Listing {
        count_from: "registration_tokens",
        select: "SELECT t.id, t.name, t.created_at, t.expires_at, t.max_uses, t.uses, \
                 u.username AS created_by \
                 FROM registration_tokens t LEFT JOIN users u ON u.id = t.created_by",
        filter: "",
        order_by: "t.created_at DESC, t.id DESC",
        binds: vec![],
    }
    .fetch(db, page)
    .await?;
    let rows = rows
        .iter()
        .map(RegTokenRow::from_row)
        .collect::<Result<_, _>>()?;
    Ok((count, rows))
}

/// A new registration token's row.
pub struct NewRegToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub key_hash: &'a str,
    pub created_by: Option<&'a str>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
}

/// Inserts a registration token; false when its name is taken.
pub async fn insert_reg_token(db: &Db, t: &NewRegToken<'_>) -> Result<bool, ApiError> {
    let res = sqlx::query(
        "INSERT INTO registration_tokens (id, name, key_hash, created_by, created_at, expires_at, max_uses, uses)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
    )
    .bind(t.id)
    .bind(t.name)
    .bind(t.key_hash)
    .bind(t.created_by)
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(t.max_uses)
    .execute(&db.pool)
    .await;
    match res {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The id and name of the registration token with this id or name.
pub async fn find_reg_token(db: &Db, ident: &str) -> Result<Option<(String, String)>, ApiError> {
    let row = sqlx::query("SELECT id, name FROM registration_tokens WHERE id = $1 OR name = $1")
        .bind(ident)
        .fetch_optional(&db.pool)
        .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("id")?, r.try_get("name")?)),
        None => None,
    })
}

/// Deletes the registration token and records `event` in the same
/// transaction; false when it was already gone.
pub async fn delete_reg_token(db: &Db, id: &str, event: Event) -> Result<bool, ApiError> {
    let mut tx = db.pool.begin().await?;
    let gone = sqlx::query("DELETE FROM registration_tokens WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Ok(false);
    }
    audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(true)
}

/// What decides whether a registration token can be used.
#[derive(Debug, Clone, FromRow)]
pub struct RegTokenState {
    pub name: String,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
}

pub async fn reg_token_state(db: &Db, key_hash: &str) -> Result<Option<RegTokenState>, ApiError> {
    let row = sqlx::query(
        "SELECT name, expires_at, max_uses, uses FROM registration_tokens WHERE key_hash = $1",
    )
    .bind(key_hash)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.as_ref().map(RegTokenState::from_row).transpose()?)
}

/// How [`register`] ended.
pub enum Registration {
    /// The token was used once and the server created.
    Created { token_name: String },
    /// The token is unknown, expired or used up; nothing changed.
    TokenUnusable,
    /// The name is taken; the token was not used.
    NameTaken,
}

/// Uses the token once and creates the server, atomically: a failed insert
/// does not use up the token, and two agents racing for its last use
/// cannot both win.
pub async fn register(
    db: &Db,
    key_hash: &str,
    id: &str,
    name: &str,
    public_key: &str,
    now: i64,
) -> Result<Registration, ApiError> {
    let mut tx = db.pool.begin().await?;
    let used = sqlx::query(
        "UPDATE registration_tokens SET uses = uses + 1
         WHERE key_hash = $1 AND (expires_at IS NULL OR expires_at > $2)
           AND (max_uses IS NULL OR uses < max_uses)
         RETURNING name",
    )
    .bind(key_hash)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(used) = used else {
        tx.rollback().await?;
        return Ok(Registration::TokenUnusable);
    };
    let token_name: String = used.try_get("name")?;
    let res = sqlx::query(
        "INSERT INTO servers (id, name, public_key, created_at, registered_by)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(name)
    .bind(public_key)
    .bind(now)
    .bind(&token_name)
    .execute(&mut *tx)
    .await;
    match res {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            tx.rollback().await?;
            return Ok(Registration::NameTaken);
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(Registration::Created { token_name })
}
