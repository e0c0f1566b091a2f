//! The REST API's contract, shared by the gateway (`alpacon-server`) and
//! the CLI (`alpacon`): every request and response body, and the error
//! codes every error body carries (`{"code": "...", "detail": "..."}`).
//! Only this crate defines them; the gateway serializes these types, the
//! CLI deserializes the same ones, and the OpenAPI document (and from it
//! the console's TypeScript types) is generated from their schemas.
//!
//! Conventions: times are RFC 3339 strings in UTC; ids are UUID strings;
//! a field that can be absent in the data is `null`, never missing.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod acl;
pub mod audit;
pub mod auth;
pub mod commands;
pub mod iam;
pub mod mfa;
pub mod servers;
pub mod tokens;
pub mod webftp;
pub mod websh;
pub mod work_sessions;

/// Every error answer: a stable `code` to branch on and a `detail` for a
/// person, ideally saying what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub detail: String,
}

/// One page of a list: `next`/`previous` are relative URLs that keep the
/// request's filters, `null` at the ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// Rows matching the filters, over all pages.
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<T>,
}

/// `GET /api/status/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// Always `ok` when the gateway answers.
    pub status: String,
    /// The gateway's version.
    pub version: String,
}

/// How a client should take an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The caller must (re)authenticate.
    Auth,
    /// The gate refused: a work session or the token's access list.
    Denied,
    /// The request waits for an admin's approval.
    Awaiting,
    /// Anything else: the request, the caller's role, the target's state.
    Other,
}

/// A stable, machine-readable error code. Serialized as its snake_case
/// name; clients branch on it, people read the `detail` beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// An operation ended because access to it was revoked.
    AccessRevoked,
    /// A local account on the server is in the way of the person's managed account.
    AccountConflict,
    /// The caller may not act as that account on servers.
    AccountNotAllowed,
    /// The token's command ACL does not allow the line.
    AclCommandDenied,
    /// The token already has that ACL entry.
    AclExists,
    /// The token's file ACL does not allow the path.
    AclFileDenied,
    /// No such ACL entry the caller manages.
    AclNotFound,
    /// The token's server ACL does not include the server.
    AclServerDenied,
    /// The gateway has no agent binary to serve.
    AgentBinaryMissing,
    /// The agent failed in a way it did not classify.
    AgentError,
    /// The server is already assigned to the group.
    AlreadyAssigned,
    /// The path already exists on the server.
    AlreadyExists,
    /// The person is already a member of the group.
    AlreadyMember,
    /// A contended allocation gave up; try again.
    Busy,
    /// The request conflicts with the current state.
    Conflict,
    /// No such second-factor credential.
    CredentialNotFound,
    /// The security key is already registered.
    CredentialRegistered,
    /// The database was busy; try again.
    DatabaseBusy,
    /// The primary group is not one of the account's groups.
    GroupNotAllowed,
    /// No such group the caller can see.
    GroupNotFound,
    /// The Idempotency-Key was used for a different request.
    IdempotencyKeyReused,
    /// An internal error; the gateway log has the cause.
    Internal,
    /// The request is malformed.
    Invalid,
    /// Wrong username or password.
    InvalidCredentials,
    /// Wrong second-factor code.
    InvalidMfaCode,
    /// The MFA challenge token is unknown or expired.
    InvalidMfaToken,
    /// The password was refused (wrong current password or too weak).
    InvalidPassword,
    /// The agent registration token is unknown, used up or expired.
    InvalidRegistrationToken,
    /// The key is unknown, disabled, expired or deleted.
    InvalidToken,
    /// No such invitation.
    InvitationNotFound,
    /// The invitation was used, expired or its inviter lost the right to invite.
    InvitationUnusable,
    /// The path is a directory.
    IsADirectory,
    /// A group must keep at least one owner.
    LastOwner,
    /// Too many failed logins; wait the time given.
    LoginThrottled,
    /// No such membership.
    MembershipNotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// A second factor must be enrolled first.
    MfaEnrollmentRequired,
    /// The workspace policy does not allow that second factor.
    MfaMethodNotAllowed,
    /// The person has no second factor of that kind.
    MfaNotEnrolled,
    /// A recently verified second factor is needed.
    MfaRequired,
    /// The name is taken.
    NameTaken,
    /// The gateway does not use its own CA.
    NoCa,
    /// No such group on the server.
    NoSuchGroup,
    /// No such account on the server.
    NoSuchUser,
    /// The path is not a directory.
    NotADirectory,
    /// The server is not assigned to the group.
    NotAssigned,
    /// No credentials were sent.
    NotAuthenticated,
    /// No such route or object.
    NotFound,
    /// The caller's role does not allow this.
    PermissionDenied,
    /// The agent could not create the managed account.
    ProvisionFailed,
    /// A read-only participant cannot type.
    ReadOnly,
    /// The token's scopes do not include this route.
    ScopeDenied,
    /// No server by that name that the caller can reach.
    ServerNotFound,
    /// The server's agent is not connected.
    ServerOffline,
    /// The terminal session has ended.
    SessionClosed,
    /// The share link has expired.
    ShareExpired,
    /// The gateway's disk is full.
    StorageFull,
    /// The caller already has a token with that name.
    TokenNameTaken,
    /// API tokens cannot do this; log in with a password.
    TokenNotAllowed,
    /// No such token the caller manages.
    TokenNotFound,
    /// The token's stored policy cannot be read, so it is refused.
    TokenPolicyInvalid,
    /// Too many agent links are authenticating; retry later.
    TooManyHandshakes,
    /// A TOTP authenticator is already enrolled.
    TotpAlreadyEnrolled,
    /// No TOTP authenticator is enrolled.
    TotpNotEnrolled,
    /// No such person.
    UserNotFound,
    /// The username is taken.
    UsernameTaken,
    /// Security keys need a gateway URL with a DNS name.
    WebauthnUnavailable,
    /// The route is a WebSocket.
    WebsocketRequired,
    /// The work session is not active.
    WorkSessionInactive,
    /// The work session waits for an admin's approval.
    WorkSessionPending,
    /// No such work session.
    WorkSessionNotFound,
    /// The work session belongs to someone else.
    WorkSessionNotYours,
    /// The server needs an active work session.
    WorkSessionRequired,
    /// The work session does not cover this kind of access.
    WorkSessionScope,
    /// The work session does not cover the server.
    WorkSessionServer,
    /// The work session is not in a state that allows this.
    WorkSessionState,
}

impl ErrorCode {
    /// Every code, in the order above.
    pub const ALL: [ErrorCode; 76] = [
        ErrorCode::AccessRevoked,
        ErrorCode::AccountConflict,
        ErrorCode::AccountNotAllowed,
        ErrorCode::AclCommandDenied,
        ErrorCode::AclExists,
        ErrorCode::AclFileDenied,
        ErrorCode::AclNotFound,
        ErrorCode::AclServerDenied,
        ErrorCode::AgentBinaryMissing,
        ErrorCode::AgentError,
        ErrorCode::AlreadyAssigned,
        ErrorCode::AlreadyExists,
        ErrorCode::AlreadyMember,
        ErrorCode::Busy,
        ErrorCode::Conflict,
        ErrorCode::CredentialNotFound,
        ErrorCode::CredentialRegistered,
        ErrorCode::DatabaseBusy,
        ErrorCode::GroupNotAllowed,
        ErrorCode::GroupNotFound,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::Internal,
        ErrorCode::Invalid,
        ErrorCode::InvalidCredentials,
        ErrorCode::InvalidMfaCode,
        ErrorCode::InvalidMfaToken,
        ErrorCode::InvalidPassword,
        ErrorCode::InvalidRegistrationToken,
        ErrorCode::InvalidToken,
        ErrorCode::InvitationNotFound,
        ErrorCode::InvitationUnusable,
        ErrorCode::IsADirectory,
        ErrorCode::LastOwner,
        ErrorCode::LoginThrottled,
        ErrorCode::MembershipNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::MfaEnrollmentRequired,
        ErrorCode::MfaMethodNotAllowed,
        ErrorCode::MfaNotEnrolled,
        ErrorCode::MfaRequired,
        ErrorCode::NameTaken,
        ErrorCode::NoCa,
        ErrorCode::NoSuchGroup,
        ErrorCode::NoSuchUser,
        ErrorCode::NotADirectory,
        ErrorCode::NotAssigned,
        ErrorCode::NotAuthenticated,
        ErrorCode::NotFound,
        ErrorCode::PermissionDenied,
        ErrorCode::ProvisionFailed,
        ErrorCode::ReadOnly,
        ErrorCode::ScopeDenied,
        ErrorCode::ServerNotFound,
        ErrorCode::ServerOffline,
        ErrorCode::SessionClosed,
        ErrorCode::ShareExpired,
        ErrorCode::StorageFull,
        ErrorCode::TokenNameTaken,
        ErrorCode::TokenNotAllowed,
        ErrorCode::TokenNotFound,
        ErrorCode::TokenPolicyInvalid,
        ErrorCode::TooManyHandshakes,
        ErrorCode::TotpAlreadyEnrolled,
        ErrorCode::TotpNotEnrolled,
        ErrorCode::UserNotFound,
        ErrorCode::UsernameTaken,
        ErrorCode::WebauthnUnavailable,
        ErrorCode::WebsocketRequired,
        ErrorCode::WorkSessionInactive,
        ErrorCode::WorkSessionPending,
        ErrorCode::WorkSessionNotFound,
        ErrorCode::WorkSessionNotYours,
        ErrorCode::WorkSessionRequired,
        ErrorCode::WorkSessionScope,
        ErrorCode::WorkSessionServer,
        ErrorCode::WorkSessionState,
    ];

    /// The code as it appears in an error body.
    /// The HTTP status this code is answered with. Part of the contract:
    /// the gateway's one mapping from errors to answers uses it (a few
    /// answers name another status where the same reason arrives by a
    /// different door, e.g. a wrong second factor at step-up is 403).
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::Invalid
            | ErrorCode::IsADirectory
            | ErrorCode::NotADirectory
            | ErrorCode::NoSuchGroup
            | ErrorCode::NoSuchUser => 400,
            ErrorCode::InvalidCredentials
            | ErrorCode::InvalidMfaCode
            | ErrorCode::InvalidMfaToken
            | ErrorCode::InvalidRegistrationToken
            | ErrorCode::InvalidToken
            | ErrorCode::NotAuthenticated => 401,
            ErrorCode::AccessRevoked
            | ErrorCode::AccountNotAllowed
            | ErrorCode::AclCommandDenied
            | ErrorCode::AclFileDenied
            | ErrorCode::AclServerDenied
            | ErrorCode::GroupNotAllowed
            | ErrorCode::InvalidPassword
            | ErrorCode::MfaEnrollmentRequired
            | ErrorCode::MfaMethodNotAllowed
            | ErrorCode::MfaRequired
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly
            | ErrorCode::ScopeDenied
            | ErrorCode::ShareExpired
            | ErrorCode::TokenNotAllowed
            | ErrorCode::TokenPolicyInvalid
            | ErrorCode::WorkSessionInactive
            | ErrorCode::WorkSessionPending
            | ErrorCode::WorkSessionNotYours
            | ErrorCode::WorkSessionRequired
            | ErrorCode::WorkSessionScope
            | ErrorCode::WorkSessionServer => 403,
            ErrorCode::AclNotFound
            | ErrorCode::AgentBinaryMissing
            | ErrorCode::CredentialNotFound
            | ErrorCode::GroupNotFound
            | ErrorCode::InvitationNotFound
            | ErrorCode::MembershipNotFound
            | ErrorCode::NoCa
            | ErrorCode::NotAssigned
            | ErrorCode::NotFound
            | ErrorCode::ServerNotFound
            | ErrorCode::TokenNotFound
            | ErrorCode::TotpNotEnrolled
            | ErrorCode::UserNotFound
            | ErrorCode::WorkSessionNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AccountConflict
            | ErrorCode::AclExists
            | ErrorCode::AlreadyAssigned
            | ErrorCode::AlreadyExists
            | ErrorCode::AlreadyMember
            | ErrorCode::Conflict
            | ErrorCode::CredentialRegistered
            | ErrorCode::LastOwner
            | ErrorCode::MfaNotEnrolled
            | ErrorCode::NameTaken
            | ErrorCode::SessionClosed
            | ErrorCode::TokenNameTaken
            | ErrorCode::TotpAlreadyEnrolled
            | ErrorCode::UsernameTaken
            | ErrorCode::WebauthnUnavailable
            | ErrorCode::WorkSessionState => 409,
            ErrorCode::InvitationUnusable => 410,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::WebsocketRequired => 426,
            ErrorCode::LoginThrottled | ErrorCode::TooManyHandshakes => 429,
            ErrorCode::Internal => 500,
            ErrorCode::AgentError | ErrorCode::ProvisionFailed => 502,
            ErrorCode::Busy | ErrorCode::DatabaseBusy | ErrorCode::ServerOffline => 503,
            ErrorCode::StorageFull => 507,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AccessRevoked => "access_revoked",
            ErrorCode::AccountConflict => "account_conflict",
            ErrorCode::AccountNotAllowed => "account_not_allowed",
            ErrorCode::AclCommandDenied => "acl_command_denied",
            ErrorCode::AclExists => "acl_exists",
            ErrorCode::AclFileDenied => "acl_file_denied",
            ErrorCode::AclNotFound => "acl_not_found",
            ErrorCode::AclServerDenied => "acl_server_denied",
            ErrorCode::AgentBinaryMissing => "agent_binary_missing",
            ErrorCode::AgentError => "agent_error",
            ErrorCode::AlreadyAssigned => "already_assigned",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::AlreadyMember => "already_member",
            ErrorCode::Busy => "busy",
            ErrorCode::Conflict => "conflict",
            ErrorCode::CredentialNotFound => "credential_not_found",
            ErrorCode::CredentialRegistered => "credential_registered",
            ErrorCode::DatabaseBusy => "database_busy",
            ErrorCode::GroupNotAllowed => "group_not_allowed",
            ErrorCode::GroupNotFound => "group_not_found",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::Internal => "internal",
            ErrorCode::Invalid => "invalid",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::InvalidMfaCode => "invalid_mfa_code",
            ErrorCode::InvalidMfaToken => "invalid_mfa_token",
            ErrorCode::InvalidPassword => "invalid_password",
            ErrorCode::InvalidRegistrationToken => "invalid_registration_token",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvitationNotFound => "invitation_not_found",
            ErrorCode::InvitationUnusable => "invitation_unusable",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::LastOwner => "last_owner",
            ErrorCode::LoginThrottled => "login_throttled",
            ErrorCode::MembershipNotFound => "membership_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::MfaEnrollmentRequired => "mfa_enrollment_required",
            ErrorCode::MfaMethodNotAllowed => "mfa_method_not_allowed",
            ErrorCode::MfaNotEnrolled => "mfa_not_enrolled",
            ErrorCode::MfaRequired => "mfa_required",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NoCa => "no_ca",
            ErrorCode::NoSuchGroup => "no_such_group",
            ErrorCode::NoSuchUser => "no_such_user",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::NotAssigned => "not_assigned",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::ProvisionFailed => "provision_failed",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::ScopeDenied => "scope_denied",
            ErrorCode::ServerNotFound => "server_not_found",
            ErrorCode::ServerOffline => "server_offline",
            ErrorCode::SessionClosed => "session_closed",
            ErrorCode::ShareExpired => "share_expired",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::TokenNameTaken => "token_name_taken",
            ErrorCode::TokenNotAllowed => "token_not_allowed",
            ErrorCode::TokenNotFound => "token_not_found",
            ErrorCode::TokenPolicyInvalid => "token_policy_invalid",
            ErrorCode::TooManyHandshakes => "too_many_handshakes",
            ErrorCode::TotpAlreadyEnrolled => "totp_already_enrolled",
            ErrorCode::TotpNotEnrolled => "totp_not_enrolled",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::WebauthnUnavailable => "webauthn_unavailable",
            ErrorCode::WebsocketRequired => "websocket_required",
            ErrorCode::WorkSessionInactive => "work_session_inactive",
            ErrorCode::WorkSessionPending => "work_session_pending",
            ErrorCode::WorkSessionNotFound => "work_session_not_found",
            ErrorCode::WorkSessionNotYours => "work_session_not_yours",
            ErrorCode::WorkSessionRequired => "work_session_required",
            ErrorCode::WorkSessionScope => "work_session_scope",
            ErrorCode::WorkSessionServer => "work_session_server",
            ErrorCode::WorkSessionState => "work_session_state",
        }
    }

    /// The code named `s`, if this version knows it.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// How a client should take it.
    pub const fn class(self) -> Class {
        use ErrorCode::*;
        match self {
            NotAuthenticated | InvalidToken | InvalidCredentials => Class::Auth,
            WorkSessionPending => Class::Awaiting,
            WorkSessionRequired | WorkSessionInactive | WorkSessionNotYours
            | WorkSessionNotFound | WorkSessionServer | WorkSessionScope | AclCommandDenied
            | AclServerDenied | AclFileDenied | ScopeDenied => Class::Denied,
            _ => Class::Other,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_an_error_status() {
        for c in ErrorCode::ALL {
            assert!((400..=599).contains(&c.status()), "{c:?}");
        }
        assert_eq!(ErrorCode::ServerNotFound.status(), 404);
        assert_eq!(ErrorCode::Internal.status(), 500);
    }

    #[test]
    fn names_serialize_parse_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert_eq!(
                serde_json::from_value::<ErrorCode>(c.as_str().into()).unwrap(),
                c
            );
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    #[test]
    fn classes() {
        assert_eq!(ErrorCode::InvalidToken.class(), Class::Auth);
        assert_eq!(ErrorCode::WorkSessionScope.class(), Class::Denied);
        assert_eq!(ErrorCode::AclCommandDenied.class(), Class::Denied);
        assert_eq!(ErrorCode::PermissionDenied.class(), Class::Other);
        assert_eq!(ErrorCode::MfaRequired.class(), Class::Other);
        assert_eq!(ErrorCode::WorkSessionPending.class(), Class::Awaiting);
    }
}
