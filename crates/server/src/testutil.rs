//! Test helpers: an app on a temporary SQLite database, called in-process.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use crate::app::{router, AppState};
use crate::config::Config;
use crate::db::{new_id, now_ms, sqlite_url, Db};

pub(crate) const TEST_CLIENT_IP: &str = "192.0.2.7";

pub(crate) struct TestApp {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub router: Router,
    pub admin_password: String,
}

impl TestApp {
    pub async fn new() -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&sqlite_url(&dir.path().join("alpacon.db")))
            .await
            .expect("db");
        TestApp::with_db_in(db, dir).await
    }

    /// Sends a request with optional `Authorization: Token <key>` and JSON
    /// body; returns the status and the body parsed as JSON (or as a JSON
    /// string when it is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, format!("Token {k}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(b.body(body).expect("request")).await
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        self.send_from(req, TEST_CLIENT_IP).await
    }

    /// [`TestApp::send`] from another client address.
    pub async fn send_from(&self, mut req: Request<Body>, ip: &str) -> (StatusCode, Value) {
        let addr: SocketAddr = format!("{ip}:5555").parse().expect("addr");
        req.extensions_mut().insert(ConnectInfo(addr));
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .expect("body");
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }

    /// `POST /api/auth/login/` from `ip`: the status and body.
    pub async fn try_login_from(
        &self,
        ip: &str,
        username: &str,
        password: &str,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/auth/login/")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::json!({ "username": username, "password": password }).to_string(),
            ))
            .expect("request");
        self.send_from(req, ip).await
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                "/api/auth/login/",
                None,
                Some(serde_json::json!({ "username": username, "password": password })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["key"].as_str().expect("key").to_string()
    }

    pub async fn admin_key(&self) -> String {
        self.login("admin", &self.admin_password.clone()).await
    }

    /// Registers a server (its key derived from `seed`); returns its id.
    pub async fn add_server(&self, name: &str, seed: u8) -> String {
        let t =
            crate::servers::create_registration_token(&self.state.db, name, None, None, Some(1))
                .await
                .expect("registration token");
        let (row, _) = crate::servers::register_server(&self.state.db, &t.key, name, &pubkey(seed))
            .await
            .unwrap_or_else(|_| panic!("register {name}"));
        row.id
    }

    /// Lets `username` reach `server_id` through a group of their own.
    pub async fn reach(&self, username: &str, server_id: &str) {
        let db = &self.state.db.pool;
        let group = new_id();
        let gid: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(gid), 50000) + 1 FROM iam_groups")
            .fetch_one(db)
            .await
            .expect("gid");
        sqlx::query("INSERT INTO iam_groups (id, name, gid, created_at) VALUES ($1, $2, $3, 0)")
            .bind(&group)
            .bind(format!("g{gid}"))
            .bind(gid)
            .execute(db)
            .await
            .expect("group");
        sqlx::query(
            "INSERT INTO memberships (id, group_id, user_id, role, created_at)
             SELECT $1, $2, id, 'member', 0 FROM users WHERE username = $3",
        )
        .bind(new_id())
        .bind(&group)
        .bind(username)
        .execute(db)
        .await
        .expect("membership");
        sqlx::query(
            "INSERT INTO group_servers (group_id, server_id, created_at) VALUES ($1, $2, 0)",
        )
        .bind(&group)
        .bind(server_id)
        .execute(db)
        .await
        .expect("group server");
    }

    /// Creates a plain (non-admin) user and returns a session key for it.
    pub async fn user_key(&self, username: &str) -> String {
        let pw = "correct horse battery staple";
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, is_superuser, is_staff, is_active, created_at)
             VALUES ($1, $2, $3, 0, 0, 1, $4)",
        )
        .bind(new_id())
        .bind(username)
        .bind(crate::iam::hash_password(pw).expect("hash"))
        .bind(now_ms())
        .execute(&self.state.db.pool)
        .await
        .expect("insert user");
        crate::iam::assign_missing_uids(&self.state.db)
            .await
            .expect("uid");
        self.login(username, pw).await
    }
}

/// An agent's public key (base64 of the raw 32 bytes) from a seed.
pub(crate) fn pubkey(seed: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .as_bytes(),
    )
}

/// A throwaway PostgreSQL cluster for one test, stopped on drop.
pub(crate) struct Postgres {
    pub url: String,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a cluster if this machine can (PostgreSQL server binaries,
    /// running as root with a `postgres` account to run them as). `None`
    /// means skip, unless ALPACON_REQUIRE_PG=1 demands it.
    pub fn start() -> Option<Postgres> {
        match Self::try_start() {
            Ok(pg) => Some(pg),
            Err(why) => {
                if std::env::var("ALPACON_REQUIRE_PG").as_deref() == Ok("1") {
                    panic!("PostgreSQL required but unavailable: {why}");
                }
                eprintln!("skipping PostgreSQL test: {why}");
                None
            }
        }
    }

    fn try_start() -> Result<Postgres, String> {
        use std::process::Command;
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .ok_or("no initdb under /usr/lib/postgresql")?;
        // SAFETY: plain libc queries.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (initdb must run as user postgres)".into());
        }
        let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        if pw.is_null() {
            return Err("no postgres account".into());
        }
        // SAFETY: pw checked non-null above.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let data = dir.path().join("pg");
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .map_err(|e| format!("runuser: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{args:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let initdb = bin.join("initdb").display().to_string();
        let pg_ctl = bin.join("pg_ctl").display().to_string();
        let data_s = data.display().to_string();
        run(&[&initdb, "-D", &data_s, "-A", "trust", "-U", "alpacon"])?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("pg.log").display().to_string();
        run(&[
            &pg_ctl, "-D", &data_s, "-l", &log, "-o", &opts, "-w", "start",
        ])?;
        Ok(Postgres {
            url: format!("postgres://alpacon@127.0.0.1:{port}/postgres"),
            bin,
            dir,
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("pg"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl TestApp {
    /// A test app on an already connected database (e.g. PostgreSQL).
    pub async fn with_db(db: Db) -> TestApp {
        TestApp::with_db_in(db, tempfile::tempdir().expect("tempdir")).await
    }

    async fn with_db_in(db: Db, dir: tempfile::TempDir) -> TestApp {
        let admin_password = crate::iam::ensure_initial_admin(&db, dir.path())
            .await
            .expect("admin")
            .expect("fresh db creates admin");
        let state = AppState::new(db, Config::for_tests(dir.path()));
        let router = router(state.clone());
        TestApp {
            dir,
            state,
            router,
            admin_password,
        }
    }
}

/// This crate's directory: from cargo at run time (a test binary reused
/// from a build in another checkout keeps that checkout's path in `env!`).
pub fn crate_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}
