//! The workspace MFA policy and the pure decisions built on it: what a
//! correct password leads to ([`login_next`]) and whether a session's last
//! verification still covers a decision point ([`recent_mfa`]).

/// Key of the policy in `workspace_settings`.
pub const SETTING_KEY: &str = "mfa.policy";

pub const MAX_VALIDITY_MINUTES: i64 = 24 * 60;

/// The policy and its methods are the API's own types: the stored setting
/// is the body of `GET/PUT /api/iam/mfa-policy/`.
pub use alpacon_api::mfa::{MfaFactor as Factor, MfaMethod as Method, MfaPolicy as Policy};

/// The rules of a [`Policy`].
pub trait PolicyRules {
    /// Why the policy cannot be stored, if it cannot.
    fn validate(&self) -> Result<(), String>;
    fn allows(&self, m: Method) -> bool;
    /// How long a verification covers decision points, in ms.
    fn validity_ms(&self) -> i64;
}

impl PolicyRules for Policy {
    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_VALIDITY_MINUTES).contains(&self.validity_minutes) {
            return Err(format!(
                "validity_minutes must be between 1 and {MAX_VALIDITY_MINUTES}"
            ));
        }
        if self.allowed_methods.is_empty() {
            return Err("allowed_methods must name at least one of totp, webauthn".into());
        }
        Ok(())
    }

    fn allows(&self, m: Method) -> bool {
        self.allowed_methods.contains(&m)
    }

    fn validity_ms(&self) -> i64 {
        self.validity_minutes * 60_000
    }
}

/// What a user has enrolled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enrolled {
    /// A confirmed TOTP secret.
    pub totp: bool,
    pub webauthn: bool,
    /// Unused recovery codes.
    pub recovery_codes: usize,
}

impl Enrolled {
    /// Has at least one second factor (recovery codes alone are not one).
    pub fn any(&self) -> bool {
        self.totp || self.webauthn
    }
}

/// What a correct password leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginNext {
    /// A full session.
    Session,
    /// A second factor first, by one of these.
    SecondFactor(Vec<Factor>),
    /// The policy requires MFA the user cannot present: a session that can
    /// only enroll a second factor.
    EnrollOnly,
}

pub fn login_next(e: &Enrolled, p: &Policy) -> LoginNext {
    if !e.any() {
        return if p.enforce_at_login {
            LoginNext::EnrollOnly
        } else {
            LoginNext::Session
        };
    }
    let mut methods = Vec::new();
    if e.totp && p.allows(Method::Totp) {
        methods.push(Factor::Totp);
    }
    if e.webauthn && p.allows(Method::Webauthn) {
        methods.push(Factor::Webauthn);
    }
    if e.recovery_codes > 0 {
        methods.push(Factor::Recovery);
    }
    if methods.is_empty() {
        // Enrolled only in methods the policy no longer allows, and no
        // recovery codes: enroll an allowed one.
        LoginNext::EnrollOnly
    } else {
        LoginNext::SecondFactor(methods)
    }
}

/// Which decision point: using another system account is the one API
/// tokens pass (a token is created by an MFA-verified session); everything
/// else (creating tokens, security settings) needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    SystemAccount,
    Sensitive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// MFA applies but the user has no second factor.
    NotEnrolled,
    /// The session never verified a second factor.
    NotVerified,
    /// Its verification is older than the policy's validity.
    Expired,
    /// An API token cannot present a second factor.
    Token,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotEnrolled => "not_enrolled",
            Refusal::NotVerified => "not_verified",
            Refusal::Expired => "expired",
            Refusal::Token => "api_token",
        }
    }
}

/// Whether a caller passes a decision point. MFA applies when the user has
/// a second factor or the policy enforces MFA; then a session must have
/// verified one within the validity window.
pub fn recent_mfa(
    enrolled: bool,
    policy: &Policy,
    is_token: bool,
    point: Point,
    verified_at: Option<i64>,
    now: i64,
) -> Result<(), Refusal> {
    if !enrolled && !policy.enforce_at_login {
        return Ok(());
    }
    if is_token {
        return match point {
            Point::SystemAccount => Ok(()),
            Point::Sensitive => Err(Refusal::Token),
        };
    }
    if !enrolled {
        return Err(Refusal::NotEnrolled);
    }
    match verified_at {
        None => Err(Refusal::NotVerified),
        Some(t) if now - t > policy.validity_ms() => Err(Refusal::Expired),
        Some(_) => Ok(()),
    }
}

/// Paths an enroll-only session may call: who am I, log out, and the MFA
/// endpoints.
pub fn enroll_only_allows(path: &str) -> bool {
    matches!(
        path,
        "/api/auth/whoami/" | "/api/auth/logout/" | "/api/iam/mfa-policy/"
    ) || path.starts_with("/api/iam/mfa/")
        || path.starts_with("/api/auth/mfa/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enforced() -> Policy {
        Policy {
            enforce_at_login: true,
            ..Policy::default()
        }
    }

    #[test]
    fn policy_json_shape_and_validation() {
        let p: Policy = serde_json::from_str(
            r#"{"enforce_at_login":true,"allowed_methods":["totp","webauthn"],"validity_minutes":15}"#,
        )
        .unwrap();
        assert!(p.enforce_at_login && p.validate().is_ok());
        assert_eq!(
            serde_json::to_value(Policy::default()).unwrap(),
            serde_json::json!({"enforce_at_login": false, "allowed_methods": ["totp", "webauthn"], "validity_minutes": 15})
        );
        assert!(serde_json::from_str::<Policy>(
            r#"{"enforce_at_login":true,"allowed_methods":["sms"],"validity_minutes":15}"#
        )
        .is_err());
        let mut bad = Policy {
            validity_minutes: 0,
            ..Policy::default()
        };
        assert!(bad.validate().is_err());
        bad.validity_minutes = 24 * 60 + 1;
        assert!(bad.validate().is_err());
        let bad = Policy {
            allowed_methods: vec![],
            ..Policy::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn login_without_mfa_is_a_session_unless_enforced() {
        let none = Enrolled::default();
        assert_eq!(login_next(&none, &Policy::default()), LoginNext::Session);
        assert_eq!(login_next(&none, &enforced()), LoginNext::EnrollOnly);
        // Recovery codes alone are not a second factor.
        let codes_only = Enrolled {
            recovery_codes: 3,
            ..Enrolled::default()
        };
        assert_eq!(
            login_next(&codes_only, &Policy::default()),
            LoginNext::Session
        );
    }

    #[test]
    fn login_with_mfa_asks_for_the_allowed_methods() {
        let e = Enrolled {
            totp: true,
            webauthn: true,
            recovery_codes: 10,
        };
        assert_eq!(
            login_next(&e, &Policy::default()),
            LoginNext::SecondFactor(vec![Factor::Totp, Factor::Webauthn, Factor::Recovery])
        );
        let only_webauthn = Policy {
            allowed_methods: vec![Method::Webauthn],
            ..Policy::default()
        };
        assert_eq!(
            login_next(&e, &only_webauthn),
            LoginNext::SecondFactor(vec![Factor::Webauthn, Factor::Recovery])
        );
        let totp_only_user = Enrolled {
            totp: true,
            ..Enrolled::default()
        };
        assert_eq!(
            login_next(&totp_only_user, &only_webauthn),
            LoginNext::EnrollOnly
        );
    }

    #[test]
    fn decision_points_need_a_recent_verification() {
        let p = Policy::default();
        let v = p.validity_ms();
        let s = Point::Sensitive;
        // No MFA anywhere: nothing to verify.
        assert_eq!(recent_mfa(false, &p, false, s, None, 0), Ok(()));
        assert_eq!(
            recent_mfa(true, &p, false, s, None, 0),
            Err(Refusal::NotVerified)
        );
        assert_eq!(recent_mfa(true, &p, false, s, Some(1000), 1000 + v), Ok(()));
        assert_eq!(
            recent_mfa(true, &p, false, s, Some(1000), 1001 + v),
            Err(Refusal::Expired)
        );
        // Enforced but not enrolled: enroll first.
        assert_eq!(
            recent_mfa(false, &enforced(), false, s, None, 0),
            Err(Refusal::NotEnrolled)
        );
    }

    #[test]
    fn tokens_pass_the_system_account_point_only() {
        let p = Policy::default();
        assert_eq!(
            recent_mfa(true, &p, true, Point::SystemAccount, None, 0),
            Ok(())
        );
        assert_eq!(
            recent_mfa(true, &p, true, Point::Sensitive, None, 0),
            Err(Refusal::Token)
        );
        // A user without MFA and no policy: tokens are not held back.
        assert_eq!(
            recent_mfa(false, &p, true, Point::Sensitive, None, 0),
            Ok(())
        );
    }

    #[test]
    fn enroll_only_sessions_reach_only_mfa_endpoints() {
        assert!(enroll_only_allows("/api/iam/mfa/totp/"));
        assert!(enroll_only_allows("/api/auth/mfa/verify/"));
        assert!(enroll_only_allows("/api/auth/whoami/"));
        assert!(!enroll_only_allows("/api/events/commands/"));
        assert!(!enroll_only_allows("/api/auth/tokens/"));
        assert!(!enroll_only_allows("/api/iam/users/"));
    }
}
