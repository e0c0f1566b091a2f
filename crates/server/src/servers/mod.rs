//! Servers and how they join: registration tokens, agent registration, the
//! install script and the downloads it uses.
//!
//! `store.rs` has the SQL, `install.rs` the installer's text, `http.rs` the
//! routes; this file the rules and the functions other features call.

use alpacon_api::servers as api;
use alpacon_api::ErrorCode;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::VerifyingKey;

use crate::app::AppState;
use crate::auth::{generate_key, hash_key, Caller, REGISTRATION_TOKEN_PREFIX};
use crate::db::{new_id, now_ms, rfc3339, rfc3339_opt, Db};
use crate::error::ApiError;
use crate::tokens::validate_token_name;

mod http;
mod install;
pub mod store;

pub use http::router;
pub use install::{install_command, render_install_script, sh_quote, sh_word};
pub use store::{get_by_id, mark_connected, mark_disconnected, touch, SystemUpdate};

/// A row of `servers`.
#[derive(Debug, Clone)]
pub struct ServerRow {
    pub id: String,
    pub name: String,
    /// Standard base64 of the raw 32-byte Ed25519 public key.
    pub public_key: String,
    pub created_at: i64,
    pub registered_by: Option<String>,
    /// As last written by the relay; prefer `Relay::is_connected` for live state.
    pub is_connected: bool,
    pub connected_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub remote_ip: Option<String>,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: i64,
    pub memory_bytes: i64,
    pub agent_version: String,
}

impl ServerRow {
    /// The agent's identity key (validated at registration).
    pub fn verifying_key(&self) -> Result<VerifyingKey, ApiError> {
        parse_public_key(&self.public_key).map_err(ApiError::internal)
    }

    /// The API representation; `connected` is the live state from the relay.
    /// A connected server is seen now (its heartbeats are only persisted
    /// now and then).
    pub fn to_api(&self, connected: bool) -> api::Server {
        let last_seen = if connected {
            Some(now_ms())
        } else {
            self.last_seen_at
        };
        api::Server {
            id: self.id.clone(),
            name: self.name.clone(),
            is_connected: connected,
            connected_at: rfc3339_opt(self.connected_at),
            last_seen_at: rfc3339_opt(last_seen),
            remote_ip: self.remote_ip.clone(),
            hostname: self.hostname.clone(),
            os: self.os.clone(),
            kernel: self.kernel.clone(),
            arch: self.arch.clone(),
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            agent_version: self.agent_version.clone(),
            created_at: rfc3339(self.created_at),
        }
    }
}

/// Server names: 1–63 of `[A-Za-z0-9._-]` (usable in `alpacon cp SERVER:PATH`
/// and URLs without quoting).
pub fn validate_server_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid server name {name:?}: use 1 to 63 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// A host name made into a valid server name (invalid characters become
/// '-', cut to 63). Used for `--name "$(hostname)"` defaults.
pub fn sanitize_server_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if n.is_empty() {
        "server".to_string()
    } else {
        n
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("public_key is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("public_key must be 32 bytes (raw Ed25519), got {0}")]
    Length(usize),
    #[error("public_key is not a valid Ed25519 key")]
    Invalid,
}

/// Decodes a base64 raw Ed25519 public key, rejecting malformed and weak
/// (small-order) keys.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = STANDARD.decode(b64.trim())?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::Invalid)?;
    if key.is_weak() {
        return Err(KeyError::Invalid);
    }
    Ok(key)
}

/// Finds a server by UUID or name; 404 `server_not_found` otherwise.
pub async fn resolve(db: &Db, ident: &str) -> Result<ServerRow, ApiError> {
    store::find(db, ident)
        .await?
        .ok_or_else(|| not_found(ident))
}

/// Finds a server the caller may reach (their groups' servers; every server
/// for admins). A server outside their reach answers exactly like a missing
/// one, and both refusals are audited alike as `action` (with the name as
/// typed, no server id: members read their own trail), so members cannot
/// probe names.
pub async fn resolve_for(
    st: &AppState,
    caller: &Caller,
    ident: &str,
    action: &str,
) -> Result<ServerRow, ApiError> {
    let found = match resolve(&st.db, ident).await {
        Ok(s) => Some(s),
        Err(e) if e.code == ErrorCode::ServerNotFound => None,
        Err(e) => return Err(e),
    };
    if caller.is_admin() {
        return found.ok_or_else(|| not_found(ident));
    }
    if let Some(s) = found {
        if crate::iam::groups::can_reach(&st.db, caller, &s.id).await? {
            return Ok(s);
        }
    }
    // The name as typed, never the id: the same event whether the server
    // exists or not (admins still find it by that name).
    let mut ev = crate::audit::Event::new(action)
        .failed()
        .by(caller)
        .detail(serde_json::json!({"reason": "server_not_found", "server": ident}));
    ev.server_name = Some(ident.chars().take(200).collect());
    crate::audit::record(&st.db, ev).await?;
    Err(ApiError::new(
        ErrorCode::ServerNotFound,
        format!("no server named {ident:?} that you can reach; see `alpacon server ls` (servers reach you through your groups)"),
    ))
}

fn not_found(ident: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ServerNotFound,
        format!("no server named {ident:?}; see `alpacon server ls`"),
    )
}

/// A registration token as created: its API object and the key.
pub struct NewRegistrationToken {
    pub id: String,
    pub key: String,
    pub token: api::RegistrationToken,
}

/// Creates a registration token. `max_uses: None` means unlimited.
pub async fn create_registration_token(
    db: &Db,
    name: &str,
    created_by: Option<&str>,
    expires_at: Option<i64>,
    max_uses: Option<i64>,
) -> Result<NewRegistrationToken, ApiError> {
    validate_token_name(name)?;
    let key = generate_key(REGISTRATION_TOKEN_PREFIX);
    let id = new_id();
    let now = now_ms();
    let inserted = store::insert_reg_token(
        db,
        &store::NewRegToken {
            id: &id,
            name,
            key_hash: &hash_key(&key),
            created_by,
            created_at: now,
            expires_at,
            max_uses,
        },
    )
    .await?;
    if !inserted {
        return Err(ApiError::new(
            ErrorCode::TokenNameTaken,
            format!("a registration token named {name:?} exists; pick another name or delete it with `alpacon server token delete {name}`"),
        ));
    }
    let token = api::RegistrationToken {
        id: id.clone(),
        name: name.to_string(),
        created_by: None,
        created_at: rfc3339(now),
        expires_at: rfc3339_opt(expires_at),
        max_uses,
        uses: 0,
    };
    Ok(NewRegistrationToken { id, key, token })
}

/// Why a registration token in state `t` cannot be used at `now`, as a
/// sentence for the operator; `None` if it can.
pub fn token_problem_of(t: Option<&store::RegTokenState>, now: i64) -> Option<String> {
    let hint = "create a new one with `alpacon server token create --name NAME`";
    let Some(t) = t else {
        return Some(format!(
            "unknown registration token (deleted, mistyped or from another gateway); {hint}"
        ));
    };
    let name = &t.name;
    if let Some(exp) = t.expires_at.filter(|&exp| exp <= now) {
        return Some(format!(
            "registration token {name:?} expired at {}; {hint}",
            rfc3339(exp)
        ));
    }
    if let Some(max) = t.max_uses.filter(|&max| t.uses >= max) {
        return Some(format!(
            "registration token {name:?} has been used {} of {max} times; {hint}",
            t.uses
        ));
    }
    None
}

/// Why the registration token `key` cannot be used now; `None` if it can.
pub async fn token_problem(db: &Db, key: &str) -> Result<Option<String>, ApiError> {
    let state = store::reg_token_state(db, &hash_key(key)).await?;
    Ok(token_problem_of(state.as_ref(), now_ms()))
}

/// Errors of [`register_server`], kept apart so callers can audit them.
#[derive(Debug)]
pub enum RegisterError {
    Token(String),
    NameTaken(String),
    Api(ApiError),
}

impl From<ApiError> for RegisterError {
    fn from(e: ApiError) -> Self {
        RegisterError::Api(e)
    }
}
impl From<sqlx::Error> for RegisterError {
    fn from(e: sqlx::Error) -> Self {
        RegisterError::Api(e.into())
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Token(d) => ApiError::new(ErrorCode::InvalidRegistrationToken, d),
            RegisterError::NameTaken(n) => ApiError::new(
                ErrorCode::NameTaken,
                format!("a server named {n:?} is already registered; choose another --name, or delete the old one with `alpacon server delete {n}`"),
            ),
            RegisterError::Api(e) => e,
        }
    }
}

/// Consumes one use of the registration token `key` and creates the server,
/// atomically: a failed insert (name taken) does not use up the token, and
/// two agents racing for the last use cannot both win.
pub async fn register_server(
    db: &Db,
    key: &str,
    name: &str,
    public_key: &str,
) -> Result<(ServerRow, String), RegisterError> {
    let id = new_id();
    let outcome =
        store::register(db, &hash_key(key), &id, name, public_key.trim(), now_ms()).await?;
    let token_name = match outcome {
        store::Registration::Created { token_name } => token_name,
        store::Registration::NameTaken => return Err(RegisterError::NameTaken(name.to_string())),
        store::Registration::TokenUnusable => {
            let why = token_problem(db, key)
                .await?
                .unwrap_or_else(|| "registration token is not usable right now; retry".to_string());
            return Err(RegisterError::Token(why));
        }
    };
    let row = get_by_id(db, &id)
        .await?
        .ok_or_else(|| ApiError::internal("server vanished right after registration"))?;
    Ok((row, token_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in ["web-1", "db.prod", "A_b", &"x".repeat(63)] {
            assert!(validate_server_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ü", "a:b", &"x".repeat(64)] {
            assert!(validate_server_name(bad).is_err(), "{bad}");
        }
        assert_eq!(sanitize_server_name("my host:1"), "my-host-1");
        assert_eq!(sanitize_server_name(""), "server");
        assert!(validate_server_name(&sanitize_server_name(&"é".repeat(80))).is_ok());
    }

    #[test]
    fn public_keys() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let b64 = STANDARD.encode(sk.verifying_key().as_bytes());
        assert_eq!(parse_public_key(&b64).unwrap(), sk.verifying_key());
        assert!(matches!(parse_public_key("!!"), Err(KeyError::Base64(_))));
        assert!(matches!(
            parse_public_key(&STANDARD.encode([1u8; 31])),
            Err(KeyError::Length(31))
        ));
        // The identity point is a small-order ("weak") key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            parse_public_key(&STANDARD.encode(identity)),
            Err(KeyError::Invalid)
        ));
    }

    async fn db() -> (tempfile::TempDir, Db) {
        let d = tempfile::tempdir().unwrap();
        let db = Db::connect(&crate::db::sqlite_url(&d.path().join("a.db")))
            .await
            .unwrap();
        (d, db)
    }

    fn key_b64(seed: u8) -> String {
        STANDARD.encode(
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .as_bytes(),
        )
    }

    #[tokio::test]
    async fn registration_tokens_count_uses() {
        let (_d, db) = db().await;
        let t = create_registration_token(&db, "two", None, None, Some(2))
            .await
            .unwrap();
        let (s1, tn) = register_server(&db, &t.key, "a", &key_b64(1))
            .await
            .unwrap();
        assert_eq!(tn, "two");
        assert_eq!(s1.name, "a");
        assert_eq!(s1.registered_by.as_deref(), Some("two"));
        // A taken name does not consume a use.
        let e = register_server(&db, &t.key, "a", &key_b64(2))
            .await
            .unwrap_err();
        assert!(matches!(e, RegisterError::NameTaken(_)));
        register_server(&db, &t.key, "b", &key_b64(2))
            .await
            .unwrap();
        let e = register_server(&db, &t.key, "c", &key_b64(3))
            .await
            .unwrap_err();
        match e {
            RegisterError::Token(d) => assert!(d.contains("used 2 of 2"), "{d}"),
            other => panic!("{other:?}"),
        }
        let uses: i64 = sqlx::query_scalar("SELECT uses FROM registration_tokens WHERE id = $1")
            .bind(&t.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(uses, 2);

        // Unknown and expired tokens say so.
        let e: ApiError = register_server(&db, "alprt-nope", "d", &key_b64(4))
            .await
            .unwrap_err()
            .into();
        assert_eq!(e.code.as_str(), "invalid_registration_token");
        assert!(e.detail.contains("unknown"));
        let t = create_registration_token(&db, "old", None, Some(now_ms() - 1), None)
            .await
            .unwrap();
        let e: ApiError = register_server(&db, &t.key, "d", &key_b64(4))
            .await
            .unwrap_err()
            .into();
        assert!(e.detail.contains("expired"), "{}", e.detail);

        // Unlimited tokens keep working.
        let t = create_registration_token(&db, "fleet", None, None, None)
            .await
            .unwrap();
        for i in 0..5u8 {
            register_server(&db, &t.key, &format!("f{i}"), &key_b64(10 + i))
                .await
                .unwrap();
        }
        assert!(matches!(
            create_registration_token(&db, "fleet", None, None, None).await,
            Err(e) if e.code == ErrorCode::TokenNameTaken
        ));
    }

    #[tokio::test]
    async fn concurrent_registrations_never_exceed_max_uses() {
        let (_d, db) = db().await;
        let t = create_registration_token(&db, "once", None, None, Some(1))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let (db, key) = (db.clone(), t.key.clone());
            tasks.push(tokio::spawn(async move {
                register_server(&db, &key, &format!("r{i}"), &key_b64(20 + i))
                    .await
                    .is_ok()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap() as usize;
        }
        assert_eq!(wins, 1);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM servers")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn why_a_registration_token_cannot_be_used() {
        let t = |expires_at, max_uses, uses| store::RegTokenState {
            name: "t".into(),
            expires_at,
            max_uses,
            uses,
        };
        let now = 1_000_000;
        let cases = [
            (None, Some("unknown")),
            (Some(t(None, None, 99)), None),
            (Some(t(Some(now + 1), Some(2), 1)), None),
            (Some(t(Some(now), None, 0)), Some("expired")),
            (Some(t(None, Some(2), 2)), Some("used 2 of 2")),
            (Some(t(Some(now - 1), Some(1), 1)), Some("expired")),
        ];
        for (state, want) in cases {
            let got = token_problem_of(state.as_ref(), now);
            match want {
                None => assert_eq!(got, None, "{state:?}"),
                Some(w) => assert!(
                    got.as_deref().unwrap_or("").contains(w),
                    "{state:?}: {got:?}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn resolve_by_id_or_name() {
        let (_d, db) = db().await;
        let t = create_registration_token(&db, "t", None, None, None)
            .await
            .unwrap();
        let (s, _) = register_server(&db, &t.key, "web", &key_b64(1))
            .await
            .unwrap();
        assert_eq!(resolve(&db, &s.id).await.unwrap().name, "web");
        assert_eq!(resolve(&db, "web").await.unwrap().id, s.id);
        let e = resolve(&db, "nope").await.unwrap_err();
        assert_eq!(e.code.as_str(), "server_not_found");
        assert!(e.detail.contains("alpacon server ls"));
        s.verifying_key().unwrap();
    }
}
