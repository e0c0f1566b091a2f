//! Storage: one `sqlx::AnyPool` over SQLite (default) or PostgreSQL.
//!
//! The same SQL runs on both, so queries follow a few rules (ARCHITECTURE.md
//! "Storage"): `$1` placeholders (SQLite accepts them too), TEXT ids (UUID
//! strings), BIGINT unix-millisecond timestamps, BIGINT 0/1 booleans (the Any
//! driver decodes every integer width into `i64`, but not PostgreSQL BOOLEAN
//! into an integer), BLOB/BYTEA binary. Each backend has its own migration
//! directory with the same schema.

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Db {
    /// Opens (creating if need be) the database and brings its schema up to
    /// date.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    // SQLite serialises writers anyway; a few connections let
                    // readers proceed in parallel under WAL.
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // WAL: readers never block the writer. busy_timeout:
                            // a writer waits for the lock instead of failing
                            // with SQLITE_BUSY. synchronous stays FULL so a
                            // committed command result survives power loss.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .after_release(|conn, _| Box::pin(async move { Ok(settled(conn)) }))
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_release(|conn, _| Box::pin(async move { Ok(settled(conn)) }))
                    .connect(&url)
                    .await?
            }
        };
        // The Any connection implements `Migrate` by delegating to the
        // backend's own implementation, so the embedded migrators run on the
        // AnyPool directly.
        match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        Ok(Db { pool, backend })
    }
}

/// Whether a connection coming back to the pool may be used again: not if
/// sqlx still counts a transaction on it. That happens when SQLite already
/// rolled a transaction back by itself (it does on "disk full") and sqlx's
/// own ROLLBACK then failed: sqlx would begin the next transaction on that
/// connection with a SAVEPOINT, whose rollback leaves a transaction open
/// and the write lock held for good ("database is locked" everywhere).
fn settled(conn: &mut sqlx::AnyConnection) -> bool {
    use sqlx::Connection;
    let settled = !conn.is_in_transaction();
    if !settled {
        tracing::warn!("closing a database connection left inside a transaction");
    }
    settled
}

fn backend_of(url: &str) -> Result<Backend, DbError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(DbError::UnsupportedUrl(url.to_string()))
    }
}

/// Makes sure the SQLite file can be created: its directory exists and the
/// URL asks for `mode=rwc` unless it already names a mode.
fn prepare_sqlite_url(url: &str) -> Result<String, DbError> {
    // Let sqlx decode the path exactly as it will when connecting.
    let opts: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
    let path = opts.get_filename();
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if !in_memory {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
    }
    let query = url.split_once('?').map(|(_, q)| q);
    let has_mode = query
        .map(|q| q.split('&').any(|kv| kv.starts_with("mode=")))
        .unwrap_or(false);
    Ok(match (query, has_mode) {
        (_, true) => url.to_string(),
        (Some(_), false) => format!("{url}&mode=rwc"),
        (None, false) => format!("{url}?mode=rwc"),
    })
}

/// The URL for a SQLite file at `path`. sqlx percent-decodes the path, so
/// characters that would end it early are encoded.
pub fn sqlite_url(path: &Path) -> String {
    let mut s = String::from("sqlite://");
    for c in path.display().to_string().chars() {
        match c {
            '%' => s.push_str("%25"),
            '?' => s.push_str("%3F"),
            '#' => s.push_str("%23"),
            c => s.push(c),
        }
    }
    s.push_str("?mode=rwc");
    s
}

/// Now, in unix milliseconds: the unit of every timestamp column.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A unix-millisecond timestamp as RFC 3339 UTC (`2024-01-02T03:04:05.678Z`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn rfc3339_opt(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sqlx::Row;

    /// A migration's PostgreSQL text from its SQLite text. `migrations/sqlite`
    /// is the one source; `migrations/postgres` is this function's output,
    /// committed because `sqlx::migrate!` embeds a directory. The schema
    /// keeps to types both understand, so these are the only differences
    /// (the comments included: a migration's checksum covers its text).
    fn postgres_flavour(sqlite: &str) -> String {
        sqlite
            .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
            .replace("BLOB", "BYTEA")
            .replace("SQLite flavour", "PostgreSQL flavour")
            .replace("../postgres/", "../sqlite/")
    }

    /// Fails when the two directories diverge; `UPDATE_MIGRATIONS=1 cargo
    /// test -p alpacon-server postgres_migrations` writes the PostgreSQL
    /// ones from the SQLite ones.
    #[test]
    fn postgres_migrations_are_generated_from_the_sqlite_ones() {
        let root = std::path::PathBuf::from(crate::testutil::crate_dir()).join("migrations");
        let files = |d: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(root.join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            v.sort();
            v
        };
        let update = std::env::var_os("UPDATE_MIGRATIONS").is_some();
        let sqlite = files("sqlite");
        assert!(!sqlite.is_empty());
        for name in &sqlite {
            let want =
                postgres_flavour(&std::fs::read_to_string(root.join("sqlite").join(name)).unwrap());
            let path = root.join("postgres").join(name);
            if update {
                std::fs::write(&path, &want).unwrap();
                continue;
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "migrations/postgres/{name} is not generated from migrations/sqlite/{name}: \
                 edit the SQLite one and run `UPDATE_MIGRATIONS=1 cargo test -p alpacon-server postgres_migrations`"
            );
        }
        assert_eq!(
            files("postgres"),
            sqlite,
            "a PostgreSQL migration without a SQLite source"
        );
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/y.db");
        let u = format!("sqlite://{}", p.display());
        assert_eq!(prepare_sqlite_url(&u).unwrap(), format!("{u}?mode=rwc"));
        assert!(d.path().join("x").is_dir());
        let u2 = format!("sqlite://{}?mode=ro", p.display());
        assert_eq!(prepare_sqlite_url(&u2).unwrap(), u2);
        assert!(matches!(
            backend_of("mysql://x"),
            Err(DbError::UnsupportedUrl(_))
        ));
    }

    #[test]
    fn timestamps_render_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[tokio::test]
    async fn sqlite_creates_file_migrates_and_round_trips_types() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("odd #?% name").join("a.db");
        let db = Db::connect(&sqlite_url(&path)).await.unwrap();
        assert!(path.exists());
        assert_eq!(db.backend, Backend::Sqlite);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        // A second connect finds the schema in place.
        let db2 = Db::connect(&sqlite_url(&path)).await.unwrap();
        round_trip(&db2).await;
    }

    #[tokio::test]
    async fn a_connection_whose_transaction_the_database_ended_is_not_reused() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::connect(&sqlite_url(&d.path().join("a.db")))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (b BLOB)")
            .execute(&db.pool)
            .await
            .unwrap();
        // A transaction that fills its database: SQLite rolls it back itself
        // (as on a full disk) and sqlx's ROLLBACK fails.
        let mut tx = db.pool.begin().await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        sqlx::query(&format!("PRAGMA max_page_count = {}", pages + 1))
            .execute(&mut *tx)
            .await
            .unwrap();
        let full = sqlx::query("INSERT INTO t VALUES (zeroblob(1000000))")
            .execute(&mut *tx)
            .await;
        assert!(full.is_err());
        let before = db.pool.size();
        drop(tx);
        // That connection is closed, not handed out again.
        for _ in 0..100 {
            if db.pool.size() < before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(db.pool.size(), before - 1);
        // And writing goes on.
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (x'00')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    /// Writes and reads every column type the schema uses, through the Any
    /// driver. Shared by the SQLite and PostgreSQL tests.
    pub(crate) async fn round_trip(db: &Db) {
        let id = new_id();
        sqlx::query(
            "INSERT INTO commands (id, server_id, line, username, env, status, created_at, output, exit_code)
             VALUES ($1, 's', 'echo', 'root', '{}', 'queued', $2, $3, NULL)",
        )
        .bind(&id)
        .bind(now_ms())
        .bind(vec![0u8, 255, 10])
        .execute(&db.pool)
        .await
        .unwrap();
        let row = sqlx::query(
            "SELECT output, exit_code, output_truncated, created_at FROM commands WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(row.get::<Vec<u8>, _>("output"), vec![0u8, 255, 10]);
        assert_eq!(row.get::<Option<i64>, _>("exit_code"), None);
        assert_eq!(row.get::<i64, _>("output_truncated"), 0);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM commands")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
        // Audit sequence numbers come back as i64 on both backends.
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO audit_events (id, ts, action, result, detail) VALUES ($1, $2, 'x', 'ok', '{}') RETURNING seq",
        )
        .bind(new_id())
        .bind(now_ms())
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(seq >= 1);
    }
}
