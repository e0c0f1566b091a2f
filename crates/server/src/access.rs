//! The gate: the one decision "may this caller reach this server, as this
//! account, now, for this". Every route that reaches a server (commands,
//! terminals, file transfers; tunnels next) asks [`authorize`], which
//! applies the rules in one order and audits every refusal the same way:
//!
//! 1. the account and group names are valid (400, bad input);
//! 2. the server is within the caller's reach (`servers::resolve_for`: a
//!    hidden server answers like a missing one);
//! 3. the work session policy: a session is required, or the one named is
//!    active and covers the server and the target's scope
//!    (`work_sessions::check`);
//! 4. the account rule: one's own account with one's own groups, other
//!    accounts for admins (`accounts::check`);
//! 5. a recent second factor to act as another account
//!    (`mfa::require_recent_mfa`, audited as `mfa.required`);
//! 6. the token's ACLs for the target (`acl::check_target`).
//!
//! The rules are plain functions over data in their own modules, tested as
//! tables; this module only composes them. Only the gate audits a refusal
//! of rules 3, 4 and 6: as the target's action (`command.run`,
//! `websh.open`, `file.*`) with `result = error` and the detail
//! `{reason, refusal, scope, username, groupname, ...target}`.

use alpacon_api::ErrorCode;
use serde_json::{json, Value};

use crate::acl::FileOp;
use crate::app::AppState;
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::servers::{self, ServerRow};
use crate::work_sessions::Scope;

/// A refusal by one of the gate's rules: a stable `code` and a sentence
/// saying what to do. Answered as 403 `{code, detail}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            code,
            detail: detail.into(),
        }
    }

    /// 403 `{code, detail}`.
    pub fn to_error(&self) -> ApiError {
        ApiError::new(self.code, self.detail.clone())
    }
}

/// What a request wants to do on a server.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Command { line: &'a str, has_env: bool },
    Terminal,
    File { op: FileOp, path: &'a str },
}

impl Target<'_> {
    /// The work session scope the target needs.
    pub fn scope(&self) -> Scope {
        match self {
            Target::Command { .. } => Scope::Command,
            Target::Terminal => Scope::Websh,
            Target::File { .. } => Scope::File,
        }
    }

    /// The audit action of the target, granted or refused.
    pub fn action(&self) -> &'static str {
        match self {
            Target::Command { .. } => "command.run",
            Target::Terminal => "websh.open",
            Target::File { op, .. } => op.audit_action(),
        }
    }

    /// What the target's audit events say about it.
    fn detail(&self) -> Value {
        match self {
            Target::Command { line, .. } => json!({ "line": line }),
            Target::Terminal => json!({}),
            Target::File { path, .. } => json!({ "path": path }),
        }
    }
}

/// One request to reach a server.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The server's name or id, as the caller gave it.
    pub server: &'a str,
    /// The account to act as; the caller's own when `None` or empty.
    pub username: Option<&'a str>,
    /// The primary group; the account's own when `None`.
    pub groupname: Option<&'a str>,
    pub target: Target<'a>,
}

/// What the gate allowed.
#[derive(Debug, Clone)]
pub struct Grant {
    pub server: ServerRow,
    pub username: String,
    pub groupname: Option<String>,
    /// The work session the operation runs in, if any.
    pub work_session: Option<String>,
}

/// The gate (see the module documentation for the rules and their order).
pub async fn authorize(st: &AppState, caller: &Caller, ask: Ask<'_>) -> Result<Grant, ApiError> {
    let target = ask.target;
    let action = target.action();
    let username = account_name(caller, ask.username, ask.groupname)?;
    let groupname = ask.groupname.map(str::to_string);
    let server = servers::resolve_for(st, caller, ask.server, action).await?;
    let refused = |r: Refusal| refuse(st, caller, &server, &username, ask.groupname, target, r);

    let work_session =
        match crate::work_sessions::check(st, caller, &server, target.scope()).await? {
            Ok(ws) => ws,
            Err(r) => return Err(refused(r).await),
        };
    if let Err(r) = crate::accounts::check(st, caller, &username, ask.groupname).await? {
        return Err(refused(r).await);
    }
    if username != caller.username {
        crate::mfa::require_recent_mfa(st, caller, crate::mfa::ACTION_SYSTEM_ACCOUNT).await?;
    }
    if let Err(r) =
        crate::acl::check_target(st, caller, &server, &username, ask.groupname, target).await?
    {
        return Err(refused(r).await);
    }
    Ok(Grant {
        server,
        username,
        groupname,
        work_session,
    })
}

/// The account a request acts as: the one named, or the caller's own; it
/// and the group must be valid account names (whether the caller may use
/// them is rule 4).
pub fn account_name(
    caller: &Caller,
    username: Option<&str>,
    groupname: Option<&str>,
) -> Result<String, ApiError> {
    let username = username
        .filter(|u| !u.is_empty())
        .unwrap_or(&caller.username)
        .to_string();
    if !valid_account_name(&username) {
        return Err(ApiError::bad_request(format!(
            "invalid username {username:?}"
        )));
    }
    if let Some(g) = groupname {
        if !valid_account_name(g) {
            return Err(ApiError::bad_request(format!("invalid groupname {g:?}")));
        }
    }
    Ok(username)
}

/// Account and group names as useradd accepts them.
pub fn valid_account_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && !n.starts_with('-')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
}

/// The one audit event of a refusal, then its 403.
async fn refuse(
    st: &AppState,
    caller: &Caller,
    server: &ServerRow,
    username: &str,
    groupname: Option<&str>,
    target: Target<'_>,
    r: Refusal,
) -> ApiError {
    let mut detail = target.detail();
    detail["username"] = json!(username);
    detail["groupname"] = json!(groupname);
    detail["scope"] = json!(target.scope().as_str());
    detail["reason"] = json!(r.code.as_str());
    detail["refusal"] = json!(r.detail);
    let ev = Event::new(target.action())
        .failed()
        .by(caller)
        .server(&server.id, &server.name)
        .work_session(caller.work_session.as_deref())
        .detail(detail);
    if let Err(e) = audit::record(&st.db, ev).await {
        return e;
    }
    r.to_error()
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, StatusCode};
    use serde_json::{json, Value};

    use crate::testutil::TestApp;

    #[test]
    fn account_names_are_checked_before_anything_else() {
        use super::valid_account_name as ok;
        for good in ["alice", "www-data", "svc.ci", "a_b", "machine$", "Root1"] {
            assert!(ok(good), "{good}");
        }
        for bad in ["", "-rf", "a b", "a/b", "a:b", "root;id", &"x".repeat(33)] {
            assert!(!ok(bad), "{bad:?}");
        }
    }

    /// A command, a terminal and a file transfer refused for the same
    /// reason get the same code and the same audit event (but for the
    /// action and what the target was), from the one gate.
    #[tokio::test]
    async fn every_target_is_refused_alike_for_the_same_reason() {
        let app = TestApp::new().await;
        let web = app.add_server("web-1", 1).await;
        let bob = app.user_key("bob").await;
        app.reach("bob", &web).await;
        // (reason, the request's account fields) -> expected code
        let cases = [
            (json!({"username": "root"}), "account_not_allowed"),
            (json!({"groupname": "shadow"}), "group_not_allowed"),
        ];
        for (who, code) in cases {
            let mut seen: Vec<Value> = Vec::new();
            for (path, action, mut body) in [
                (
                    "/api/events/commands/",
                    "command.run",
                    json!({"server": "web-1", "line": "id"}),
                ),
                (
                    "/api/websh/sessions/",
                    "websh.open",
                    json!({"server": "web-1"}),
                ),
            ] {
                for (k, v) in who.as_object().unwrap() {
                    body[k] = v.clone();
                }
                let (s, v) = app.call(Method::POST, path, Some(&bob), Some(body)).await;
                assert_eq!(
                    (s, v["code"].as_str()),
                    (StatusCode::FORBIDDEN, Some(code)),
                    "{path}: {v}"
                );
                seen.push(last_event(&app, action).await);
            }
            let mut q = "/api/webftp/stat/?server=web-1&path=/etc".to_string();
            for (k, v) in who.as_object().unwrap() {
                q.push_str(&format!("&{k}={}", v.as_str().unwrap()));
            }
            let (s, v) = app.call(Method::GET, &q, Some(&bob), None).await;
            assert_eq!(
                (s, v["code"].as_str()),
                (StatusCode::FORBIDDEN, Some(code)),
                "stat: {v}"
            );
            seen.push(last_event(&app, "file.stat").await);
            for ev in &seen {
                assert_eq!(ev["result"], "error", "{ev}");
                assert_eq!(ev["server_name"], "web-1", "{ev}");
                let d = &ev["detail"];
                assert_eq!(d["reason"], code, "{ev}");
                assert_eq!(d["refusal"], seen[0]["detail"]["refusal"], "{ev}");
                assert_eq!(d["username"], seen[0]["detail"]["username"], "{ev}");
                assert_eq!(d["groupname"], seen[0]["detail"]["groupname"], "{ev}");
            }
        }
    }

    async fn last_event(app: &TestApp, action: &str) -> Value {
        let admin = app.admin_key().await;
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/audit/events/?action={action}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["results"][0].clone()
    }
}
