//! Errors that decide the exit code and carry a hint for the user.
//!
//! Everything else travels as `anyhow::Error`; `main` looks for a
//! [`CliError`] in the chain to pick the exit code and the hint.

use alpacon_api::{Class, ErrorCode};
use thiserror::Error;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// Denied by a work-session or ACL gate.
pub const EXIT_DENIED: u8 = 3;
/// The request waits for an admin's approval.
pub const EXIT_AWAITING_APPROVAL: u8 = 4;

#[derive(Debug, Error)]
pub enum CliError {
    #[error("not logged in; run `alpacon login URL`")]
    NotLoggedIn,

    /// The gateway answered with an error (`{"code","detail"}`).
    #[error("{detail}")]
    Api {
        status: u16,
        code: String,
        detail: String,
    },

    #[error("cannot connect to the gateway at {url}: {reason}")]
    Connect { url: String, reason: String },

    /// The connection failed during a request (reset, closed).
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },

    #[error("the TLS certificate of {url} is not trusted: {reason}")]
    UntrustedCert {
        url: String,
        reason: String,
        unknown_issuer: bool,
    },

    /// The gateway refused the credential given to `alpacon login`.
    #[error("{detail}")]
    LoginRefused { detail: String, hint: &'static str },

    /// Bad combination of arguments that clap cannot express.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn api(status: u16, code: impl Into<String>, detail: impl Into<String>) -> Self {
        CliError::Api {
            status,
            code: code.into(),
            detail: detail.into(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { code, .. } => api_exit_code(code),
            CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_ERROR,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Api { status, code, .. } => api_hint(*status, code),
            CliError::Connect { url, .. } => Some(format!("is the gateway running at {url}?")),
            CliError::UntrustedCert {
                unknown_issuer: true,
                ..
            } => Some("pass --ca-cert DATA/tls/ca.crt to `alpacon login`".into()),
            CliError::UntrustedCert { .. } => Some(
                "check the gateway URL, or pass its CA with --ca-cert to `alpacon login`".into(),
            ),
            CliError::LoginRefused { hint, .. } => Some(hint.to_string()),
            CliError::NotLoggedIn | CliError::Usage(_) | CliError::Transport { .. } => None,
        }
    }

    /// Whether a request that failed this way may be sent again, provided
    /// it is safe to repeat (it carries an `Idempotency-Key`): the gateway
    /// was unreachable, the connection broke, or it was briefly unable.
    pub fn retryable(&self) -> bool {
        match self {
            CliError::Connect { .. } | CliError::Transport { .. } => true,
            CliError::Api { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// True for "the path (not the server) does not exist".
    pub fn is_path_not_found(&self) -> bool {
        matches!(self, CliError::Api { status: 404, code, .. }
            if ErrorCode::parse(code) == Some(ErrorCode::NotFound))
    }
}

/// The gateway's code, if this CLI knows it (a newer gateway may send one
/// it does not: then only the status and the detail count).
fn known(code: &str) -> Option<ErrorCode> {
    ErrorCode::parse(code)
}

fn api_exit_code(code: &str) -> u8 {
    match known(code).map(ErrorCode::class) {
        Some(Class::Awaiting) => EXIT_AWAITING_APPROVAL,
        Some(Class::Denied) => EXIT_DENIED,
        _ => EXIT_ERROR,
    }
}

fn api_hint(status: u16, code: &str) -> Option<String> {
    use ErrorCode::*;
    let hint = match known(code) {
        Some(NotAuthenticated | InvalidToken) => "run `alpacon login`",
        Some(ServerNotFound) => "see `alpacon server ls`",
        Some(MfaRequired) => "run `alpacon mfa verify`",
        Some(MfaEnrollmentRequired) => "enroll a second factor: `alpacon mfa totp enroll`",
        Some(ServerOffline) => "the server's agent is not connected; see `alpacon server ls`",
        Some(WorkSessionPending) => "an admin must approve the work session first",
        Some(c) if c.class() == Class::Denied && c.as_str().starts_with("work_session") => {
            "request access with a work session (`alpacon work-session create`)"
        }
        Some(ScopeDenied | AclCommandDenied | AclServerDenied | AclFileDenied) => {
            "the token's access list does not allow this"
        }
        _ if status == 401 => "run `alpacon login`",
        _ => return None,
    };
    Some(hint.to_string())
}

/// The exit code and hint for any error: from the first [`CliError`] in
/// its chain, else a plain failure.
pub fn classify(err: &anyhow::Error) -> (u8, Option<String>) {
    match err.chain().find_map(|e| e.downcast_ref::<CliError>()) {
        Some(e) => {
            // The gateway's details often say what to do already.
            let message = e.to_string();
            let hint = e.hint().filter(|h| !message.contains(h.as_str()));
            (e.exit_code(), hint)
        }
        None => (EXIT_ERROR, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn gate_denials_exit_3() {
        assert_eq!(
            CliError::api(403, "work_session_required", "x").exit_code(),
            3
        );
        assert_eq!(CliError::api(403, "acl_command_denied", "x").exit_code(), 3);
        assert_eq!(CliError::api(403, "permission_denied", "x").exit_code(), 1);
        // A code this CLI does not know is an ordinary error.
        assert_eq!(
            CliError::api(403, "acl_from_the_future", "x").exit_code(),
            1
        );
    }

    #[test]
    fn awaiting_approval_exits_4() {
        assert_eq!(
            CliError::api(403, "work_session_pending", "x").exit_code(),
            4
        );
    }

    #[test]
    fn hints() {
        let h = |c: &str| CliError::api(401, c, "d").hint().unwrap_or_default();
        assert!(h("invalid_token").contains("alpacon login"));
        assert!(h("not_authenticated").contains("alpacon login"));
        assert!(CliError::api(404, "server_not_found", "d")
            .hint()
            .unwrap()
            .contains("alpacon server ls"));
        let c = CliError::Connect {
            url: "https://gw:8443".into(),
            reason: "refused".into(),
        };
        assert_eq!(
            c.hint().unwrap(),
            "is the gateway running at https://gw:8443?"
        );
    }

    #[test]
    fn classify_finds_cli_error_under_context() {
        let e =
            anyhow::Error::new(CliError::api(403, "acl_server_denied", "no")).context("running");
        assert_eq!(classify(&e).0, 3);
        let e: anyhow::Result<()> = Err(anyhow::anyhow!("plain"));
        assert_eq!(classify(&e.context("x").unwrap_err()), (1, None));
    }

    #[test]
    fn hints_already_in_the_detail_are_not_repeated() {
        let e = anyhow::Error::new(CliError::api(
            404,
            "server_not_found",
            "no server named \"x\"; see `alpacon server ls`",
        ));
        assert_eq!(classify(&e), (1, None));
        let e = anyhow::Error::new(CliError::api(404, "server_not_found", "no server"));
        assert_eq!(classify(&e).1.unwrap(), "see `alpacon server ls`");
    }

    #[test]
    fn path_not_found_is_not_server_not_found() {
        assert!(CliError::api(404, "not_found", "d").is_path_not_found());
        assert!(!CliError::api(404, "server_not_found", "d").is_path_not_found());
        assert!(!CliError::api(403, "not_found", "d").is_path_not_found());
    }
}
