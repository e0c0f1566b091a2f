//! The ACL tables (`token_command_acls`, `token_server_acls`,
//! `token_file_acls`) and a token's stored scopes.

use alpacon_api::acl as api;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::FromRow;

use super::{CommandAcl, FileAcl, FileAction};
use crate::api::{Bind, Listing, Page};
use crate::db::{now_ms, rfc3339, Db};
use crate::error::ApiError;

/// The three kinds of ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Command,
    Server,
    File,
}

impl Kind {
    pub(super) fn table(self) -> &'static str {
        match self {
            Kind::Command => "token_command_acls",
            Kind::Server => "token_server_acls",
            Kind::File => "token_file_acls",
        }
    }

    /// As in audit events (`detail.kind`) and messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Server => "server",
            Kind::File => "file",
        }
    }

    fn select(self) -> &'static str {
        match self {
            Kind::Command => {
                "SELECT a.id, a.token_id, t.name AS token_name, t.user_id, a.created_at,
                        a.line, a.username, a.groupname
                 FROM token_command_acls a JOIN api_tokens t ON t.id = a.token_id"
            }
            Kind::Server => {
                "SELECT a.id, a.token_id, t.name AS token_name, t.user_id, a.created_at,
                        a.server_id, s.name AS server_name
                 FROM token_server_acls a JOIN api_tokens t ON t.id = a.token_id
                 LEFT JOIN servers s ON s.id = a.server_id"
            }
            Kind::File => {
                "SELECT a.id, a.token_id, t.name AS token_name, t.user_id, a.created_at,
                        a.path, a.action
                 FROM token_file_acls a JOIN api_tokens t ON t.id = a.token_id"
            }
        }
    }
}

/// An ACL entry as the API shows it, read from its kind's [`Kind::select`].
pub(super) trait Entry: Serialize + From<Self::Row> + Send + Unpin + 'static {
    type Row: for<'r> FromRow<'r, AnyRow> + Send + Unpin;
    const KIND: Kind;
    /// The id of the token the entry belongs to.
    fn token_id(&self) -> &str;
}

/// A row of `token_command_acls` with its token's name.
#[derive(FromRow)]
pub(super) struct CommandAclRow {
    id: String,
    token_id: String,
    token_name: String,
    created_at: i64,
    line: String,
    username: Option<String>,
    groupname: Option<String>,
}

impl From<CommandAclRow> for api::CommandAcl {
    fn from(r: CommandAclRow) -> Self {
        api::CommandAcl {
            id: r.id,
            token: r.token_id,
            token_name: r.token_name,
            pattern: r.line.clone(),
            line: r.line,
            username: r.username,
            groupname: r.groupname,
            created_at: rfc3339(r.created_at),
        }
    }
}

impl Entry for api::CommandAcl {
    type Row = CommandAclRow;
    const KIND: Kind = Kind::Command;
    fn token_id(&self) -> &str {
        &self.token
    }
}

/// A row of `token_server_acls` with its token's and server's names.
#[derive(FromRow)]
pub(super) struct ServerAclRow {
    id: String,
    token_id: String,
    token_name: String,
    created_at: i64,
    server_id: String,
    server_name: Option<String>,
}

impl From<ServerAclRow> for api::ServerAcl {
    fn from(r: ServerAclRow) -> Self {
        api::ServerAcl {
            id: r.id,
            token: r.token_id,
            token_name: r.token_name,
            server: r.server_id,
            server_name: r.server_name,
            created_at: rfc3339(r.created_at),
        }
    }
}

impl Entry for api::ServerAcl {
    type Row = ServerAclRow;
    const KIND: Kind = Kind::Server;
    fn token_id(&self) -> &str {
        &self.token
    }
}

/// A row of `token_file_acls` with its token's name.
#[derive(FromRow)]
pub(super) struct FileAclRow {
    id: String,
    token_id: String,
    token_name: String,
    created_at: i64,
    path: String,
    action: String,
}

impl From<FileAclRow> for api::FileAcl {
    fn from(r: FileAclRow) -> Self {
        api::FileAcl {
            id: r.id,
            token: r.token_id,
            token_name: r.token_name,
            path: r.path,
            action: r.action,
            created_at: rfc3339(r.created_at),
        }
    }
}

impl Entry for api::FileAcl {
    type Row = FileAclRow;
    const KIND: Kind = Kind::File;
    fn token_id(&self) -> &str {
        &self.token
    }
}

fn entry<E: Entry>(r: &AnyRow) -> Result<E, sqlx::Error> {
    E::Row::from_row(r).map(E::from)
}

/// A page of the entries of one token (`token_id`), or of every token the
/// caller manages (the rule's own SQL, `tokens::MANAGED`).
pub(super) async fn list<E: Entry>(
    db: &Db,
    caller_id: &str,
    caller_admin: bool,
    token_id: Option<&str>,
    page: Page,
) -> Result<(i64, Vec<E>), ApiError> {
    let kind = E::KIND;
    let (cond, binds) = match token_id {
        Some(token_id) => ("a.token_id = $1".to_string(), vec![Bind::Text(token_id)]),
        None => (
            format!(
                "a.token_id IN (SELECT id FROM api_tokens WHERE {})",
                crate::tokens::MANAGED
            ),
            vec![Bind::Text(caller_id), Bind::Int(caller_admin as i64)],
        ),
    };
    let (count, rows) = Listing {
        count_from: &format!("{} a JOIN api_tokens t ON t.id = a.token_id", kind.table()),
        select: kind.select(),
        filter: &format!("WHERE {cond}"),
        order_by: "a.created_at DESC, a.id DESC",
        binds,
    }
    .fetch(db, page)
    .await?;
    let results = rows.iter().map(entry::<E>).collect::<Result<Vec<_>, _>>()?;
    Ok((count, results))
}

/// One entry by id.
pub(super) async fn fetch_one<E: Entry>(db: &Db, id: &str) -> Result<Option<E>, ApiError> {
    let row = sqlx::query(&format!("{} WHERE a.id = $1", E::KIND.select()))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(entry::<E>).transpose()?)
}

/// Deletes an entry inside `tx`; the number of rows gone (0 or 1).
pub(super) async fn delete_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: Kind,
    id: &str,
) -> Result<u64, ApiError> {
    Ok(
        sqlx::query(&format!("DELETE FROM {} WHERE id = $1", kind.table()))
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    )
}

/// A new command ACL entry (`pattern` canonical, names validated).
pub(super) struct NewCommandAcl<'a> {
    pub id: &'a str,
    pub token_id: &'a str,
    pub pattern: &'a str,
    pub username: Option<&'a str>,
    pub groupname: Option<&'a str>,
    pub created_by: &'a str,
}

pub(super) async fn insert_command(db: &Db, n: NewCommandAcl<'_>) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO token_command_acls (id, token_id, line, username, groupname, created_by,
             created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(n.id)
    .bind(n.token_id)
    .bind(n.pattern)
    .bind(n.username)
    .bind(n.groupname)
    .bind(n.created_by)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The raw error, so the caller can tell a duplicate (unique violation).
pub(super) async fn insert_server(
    db: &Db,
    id: &str,
    token_id: &str,
    server_id: &str,
    created_by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO token_server_acls (id, token_id, server_id, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(token_id)
    .bind(server_id)
    .bind(created_by)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub(super) async fn insert_file(
    db: &Db,
    id: &str,
    token_id: &str,
    path: &str,
    action: FileAction,
    created_by: &str,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO token_file_acls (id, token_id, path, action, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(token_id)
    .bind(path)
    .bind(action.as_str())
    .bind(created_by)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A token's scopes as stored (JSON text); `None` if the token is gone.
pub(super) async fn stored_scopes(db: &Db, token_id: &str) -> Result<Option<String>, ApiError> {
    Ok(
        sqlx::query_scalar("SELECT scopes FROM api_tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(&db.pool)
            .await?,
    )
}

/// A command ACL entry as the gate reads it.
#[derive(FromRow)]
struct PolicyCommandRow {
    line: String,
    username: Option<String>,
    groupname: Option<String>,
}

impl From<PolicyCommandRow> for CommandAcl {
    fn from(r: PolicyCommandRow) -> Self {
        CommandAcl {
            pattern: r.line,
            username: r.username,
            groupname: r.groupname,
        }
    }
}

/// A file ACL entry as the gate reads it.
#[derive(FromRow)]
struct PolicyFileRow {
    path: String,
    action: String,
}

impl From<PolicyFileRow> for FileAcl {
    fn from(r: PolicyFileRow) -> Self {
        match FileAction::parse(&r.action) {
            Some(action) => FileAcl {
                pattern: r.path,
                action,
            },
            // An unknown stored action allows nothing but keeps the
            // token restricted: the empty pattern matches no path.
            None => FileAcl {
                pattern: String::new(),
                action: FileAction::Any,
            },
        }
    }
}

/// A token's ACL entries: commands, server ids, files.
pub(super) async fn policy_entries(
    db: &Db,
    token_id: &str,
) -> Result<(Vec<CommandAcl>, Vec<String>, Vec<FileAcl>), ApiError> {
    let pool = &db.pool;
    let commands = sqlx::query_as::<_, PolicyCommandRow>(
        "SELECT line, username, groupname FROM token_command_acls WHERE token_id = $1",
    )
    .bind(token_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(CommandAcl::from)
    .collect();
    let servers: Vec<String> =
        sqlx::query_scalar("SELECT server_id FROM token_server_acls WHERE token_id = $1")
            .bind(token_id)
            .fetch_all(pool)
            .await?;
    let files = sqlx::query_as::<_, PolicyFileRow>(
        "SELECT path, action FROM token_file_acls WHERE token_id = $1",
    )
    .bind(token_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(FileAcl::from)
    .collect();
    Ok((commands, servers, files))
}
