//! The audit trail: every login, token change, registration, command and
//! file transfer is written here *before* the API answers (a request whose
//! event cannot be stored fails), and listed by `GET /api/audit/events/`.

use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{new_id, now_ms, Db};
use crate::error::ApiError;

mod http;

pub use http::router;

/// One audit event, built fluently:
/// `Event::new("command.run").by(&caller).server(&id, &name).detail(json!({..}))`.
#[derive(Debug, Clone)]
pub struct Event {
    pub action: String,
    pub result_ok: bool,
    pub actor_user_id: Option<String>,
    pub actor_username: Option<String>,
    pub token_id: Option<String>,
    pub token_name: Option<String>,
    pub server_id: Option<String>,
    pub server_name: Option<String>,
    pub client_ip: Option<String>,
    pub detail: Value,
    /// The work session the action was done in, for its timeline.
    pub work_session_id: Option<String>,
}

impl Event {
    /// A successful event; call `.failed()` for an error outcome.
    pub fn new(action: impl Into<String>) -> Self {
        Event {
            action: action.into(),
            result_ok: true,
            actor_user_id: None,
            actor_username: None,
            token_id: None,
            token_name: None,
            server_id: None,
            server_name: None,
            client_ip: None,
            detail: json!({}),
            work_session_id: None,
        }
    }

    /// Who did it (user, token) and from where.
    pub fn by(mut self, c: &Caller) -> Self {
        self.actor_user_id = Some(c.user_id.clone());
        self.actor_username = Some(c.username.clone());
        self.token_id = c.token_id.clone();
        self.token_name = c.token_name.clone();
        self.client_ip = Some(c.client_ip.clone());
        self
    }

    /// An actor known by name (and maybe id) only, e.g. a failed login.
    pub fn actor(mut self, user_id: Option<&str>, username: &str) -> Self {
        self.actor_user_id = user_id.map(str::to_string);
        self.actor_username = Some(username.to_string());
        self
    }

    pub fn actor_name(self, username: &str) -> Self {
        self.actor(None, username)
    }

    pub fn result(mut self, ok: bool) -> Self {
        self.result_ok = ok;
        self
    }

    pub fn failed(self) -> Self {
        self.result(false)
    }

    pub fn server(mut self, id: &str, name: &str) -> Self {
        self.server_id = Some(id.to_string());
        self.server_name = Some(name.to_string());
        self
    }

    pub fn ip(mut self, ip: &str) -> Self {
        self.client_ip = Some(ip.to_string());
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    pub fn work_session(mut self, id: Option<&str>) -> Self {
        self.work_session_id = id.map(str::to_string);
        self
    }
}

/// Stores `ev`. Callers propagate the error: an action that cannot be
/// audited must not be reported as done.
pub async fn record(db: &Db, ev: Event) -> Result<(), ApiError> {
    record_with(&db.pool, ev).await
}

/// Stores `ev` inside `tx`, so a mutation and its event commit together
/// (or neither does).
pub async fn record_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ev: Event,
) -> Result<(), ApiError> {
    record_with(&mut **tx, ev).await
}

async fn record_with<'e, E>(ex: E, ev: Event) -> Result<(), ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO audit_events (id, ts, action, result, actor_user_id, actor_username,
             token_id, token_name, server_id, server_name, client_ip, detail, work_session_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(new_id())
    .bind(now_ms())
    .bind(&ev.action)
    .bind(if ev.result_ok { "ok" } else { "error" })
    .bind(&ev.actor_user_id)
    .bind(&ev.actor_username)
    .bind(&ev.token_id)
    .bind(&ev.token_name)
    .bind(&ev.server_id)
    .bind(&ev.server_name)
    .bind(&ev.client_ip)
    .bind(ev.detail.to_string())
    .bind(&ev.work_session_id)
    .execute(ex)
    .await?;
    tracing::info!(
        target: "alpacon::audit",
        action = %ev.action,
        ok = ev.result_ok,
        user = ev.actor_username.as_deref().unwrap_or("-"),
        server = ev.server_name.as_deref().unwrap_or("-"),
        ip = ev.client_ip.as_deref().unwrap_or("-"),
        "audit"
    );
    Ok(())
}

/// Events anyone can cause without credentials (a refused agent link, a
/// throttled login) are recorded once per `key` (their kind and address)
/// every [`REPEAT_WINDOW`]; the repeats in between are counted into the next
/// one (`detail.repeated`). The trail keeps what happened without letting a
/// flood of them fill the disk.
pub async fn record_unauthenticated(db: &Db, key: &str, mut ev: Event) -> Result<(), ApiError> {
    let repeated = {
        let mut l = REPEATS.lock().unwrap_or_else(|e| e.into_inner());
        l.check(key, std::time::Instant::now())
    };
    let Some(repeated) = repeated else {
        return Ok(());
    };
    if repeated > 0 {
        ev.detail["repeated"] = json!(repeated);
    }
    record(db, ev).await
}

pub const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

static REPEATS: std::sync::LazyLock<std::sync::Mutex<Repeats>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(Repeats::default()));

/// Per key: when one was last let through, and how many were held since.
#[derive(Debug, Default)]
pub struct Repeats {
    slots: std::collections::HashMap<String, (std::time::Instant, u64)>,
}

impl Repeats {
    /// At most this many keys are remembered (oldest dropped first).
    const MAX_KEYS: usize = 10_000;

    /// `Some(n)`: record now, `n` repeats were held back; `None`: hold it.
    pub fn check(&mut self, key: &str, now: std::time::Instant) -> Option<u64> {
        if let Some((last, held)) = self.slots.get_mut(key) {
            if now.saturating_duration_since(*last) < REPEAT_WINDOW {
                *held += 1;
                return None;
            }
            let n = *held;
            *last = now;
            *held = 0;
            return Some(n);
        }
        if self.slots.len() >= Self::MAX_KEYS {
            self.slots
                .retain(|_, (last, _)| now.saturating_duration_since(*last) < REPEAT_WINDOW);
            if self.slots.len() >= Self::MAX_KEYS {
                // Still full within one window: record without remembering.
                return Some(0);
            }
        }
        self.slots.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

/// `caller.require_admin()`, with the refusal audited as a failed `action`.
pub async fn require_admin(st: &AppState, caller: &Caller, action: &str) -> Result<(), ApiError> {
    if let Err(e) = caller.require_admin() {
        record(
            &st.db,
            Event::new(action)
                .failed()
                .by(caller)
                .detail(json!({"reason": e.code})),
        )
        .await?;
        return Err(e);
    }
    Ok(())
}

pub(crate) fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_into_the_next_event() {
        let mut r = Repeats::default();
        let t = std::time::Instant::now();
        assert_eq!(r.check("a", t), Some(0));
        assert_eq!(r.check("a", t), None);
        assert_eq!(r.check("a", t + REPEAT_WINDOW / 2), None);
        assert_eq!(r.check("b", t), Some(0), "keys are separate");
        assert_eq!(r.check("a", t + REPEAT_WINDOW), Some(2));
        assert_eq!(r.check("a", t + REPEAT_WINDOW), None);
    }

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(escape_like("a_b%c\\"), "a\\_b\\%c\\\\");
    }
}
