//! The work-session lifecycle and the decisions made on it, as plain
//! functions over data (no database, no clock: `now` is an argument).
//!
//! ```text
//!            approve (start in the future)          tick ≥ starts_at
//! pending ─────────────────────────────► approved ───────────────────► active
//!    │  └── approve (start now) ──────────────────────────────────────►  │
//!    ├── reject ──► rejected                                             ├── tick ≥ expires_at ──► expired
//!    └── cancel ──► cancelled     approved ── cancel/revoke ──► ...      ├── revoke ──► revoked
//!                                                                        └── complete ──► completed
//! ```
//!
//! The clock of a session starts when it becomes active, not when it was
//! requested or approved: `expires_at = activated_at + duration`.

use alpacon_api::ErrorCode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Active,
    Completed,
    Expired,
    Revoked,
    Rejected,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Approved,
        Status::Active,
        Status::Completed,
        Status::Expired,
        Status::Revoked,
        Status::Rejected,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Active => "active",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// No way out of these.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Approved | Status::Active)
    }
}

/// What may be done inside a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Websh,
    Command,
    File,
    Sudo,
    Tunnel,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Websh,
        Scope::Command,
        Scope::File,
        Scope::Sudo,
        Scope::Tunnel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Websh => "websh",
            Scope::Command => "command",
            Scope::File => "file",
            Scope::Sudo => "sudo",
            Scope::Tunnel => "tunnel",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl From<Status> for alpacon_api::work_sessions::WorkSessionStatus {
    fn from(s: Status) -> Self {
        use alpacon_api::work_sessions::WorkSessionStatus as A;
        match s {
            Status::Pending => A::Pending,
            Status::Approved => A::Approved,
            Status::Active => A::Active,
            Status::Completed => A::Completed,
            Status::Expired => A::Expired,
            Status::Revoked => A::Revoked,
            Status::Rejected => A::Rejected,
            Status::Cancelled => A::Cancelled,
        }
    }
}

impl From<Scope> for alpacon_api::work_sessions::WorkSessionScope {
    fn from(s: Scope) -> Self {
        use alpacon_api::work_sessions::WorkSessionScope as A;
        match s {
            Scope::Websh => A::Websh,
            Scope::Command => A::Command,
            Scope::File => A::File,
            Scope::Sudo => A::Sudo,
            Scope::Tunnel => A::Tunnel,
        }
    }
}

/// The lifecycle part of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    pub status: Status,
    /// Requested (or approved) start; `None`: as soon as it is approved.
    pub starts_at: Option<i64>,
    pub duration_ms: i64,
    pub activated_at: Option<i64>,
    pub expires_at: Option<i64>,
    /// An extension asked for and not yet decided.
    pub extension_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Approve, possibly with a changed start or duration.
    Approve {
        now: i64,
        starts_at: Option<i64>,
        duration_ms: i64,
    },
    Reject,
    Cancel,
    Revoke {
        now: i64,
    },
    Complete {
        now: i64,
    },
    /// Time passes: approved sessions start, active ones expire.
    Tick {
        now: i64,
    },
    RequestExtension {
        ms: i64,
    },
    /// Approve the pending extension, possibly shortened.
    ApproveExtension {
        ms: i64,
    },
    RejectExtension,
}

/// Why an event does not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub &'static str);

fn refused<T>(why: &'static str) -> Result<T, Refused> {
    Err(Refused(why))
}

/// The session after `e`, or why `e` does not apply. `Tick` never fails; it
/// returns the session unchanged when nothing is due.
pub fn apply(s: &Life, e: &Event) -> Result<Life, Refused> {
    let mut n = s.clone();
    match (s.status, e) {
        (
            Status::Pending,
            Event::Approve {
                now,
                starts_at,
                duration_ms,
            },
        ) => {
            if *duration_ms <= 0 {
                return refused("the duration must be positive");
            }
            n.duration_ms = *duration_ms;
            n.starts_at = *starts_at;
            match starts_at {
                Some(t) if t > now => n.status = Status::Approved,
                _ => activate(&mut n, *now),
            }
        }
        (Status::Pending, Event::Reject) => n.status = Status::Rejected,
        (Status::Pending | Status::Approved, Event::Cancel) => n.status = Status::Cancelled,
        (Status::Approved | Status::Active, Event::Revoke { now }) => {
            n.status = Status::Revoked;
            end_clock(&mut n, *now);
        }
        (Status::Active, Event::Complete { now }) => {
            n.status = Status::Completed;
            end_clock(&mut n, *now);
        }
        (Status::Approved, Event::Tick { now }) => {
            if s.starts_at.is_none_or(|t| t <= *now) {
                activate(&mut n, s.starts_at.unwrap_or(*now));
                // Started so late that it is already over.
                if n.expires_at.is_some_and(|x| x <= *now) {
                    n.status = Status::Expired;
                }
            }
        }
        (Status::Active, Event::Tick { now }) => {
            if s.expires_at.is_some_and(|x| x <= *now) {
                n.status = Status::Expired;
                n.extension_ms = None;
            }
        }
        (_, Event::Tick { .. }) => {}
        (Status::Active | Status::Approved, Event::RequestExtension { ms }) => {
            if *ms <= 0 {
                return refused("the extension must be positive");
            }
            if s.extension_ms.is_some() {
                return refused("an extension is already waiting for approval");
            }
            n.extension_ms = Some(*ms);
        }
        (Status::Active | Status::Approved, Event::ApproveExtension { ms }) => {
            let Some(asked) = s.extension_ms else {
                return refused("no extension was requested");
            };
            if *ms <= 0 || *ms > asked {
                return refused(
                    "the approved extension must be positive and at most what was asked",
                );
            }
            n.duration_ms = n.duration_ms.saturating_add(*ms);
            if let Some(x) = n.expires_at.as_mut() {
                *x = x.saturating_add(*ms);
            }
            n.extension_ms = None;
        }
        (Status::Active | Status::Approved, Event::RejectExtension) => {
            if s.extension_ms.is_none() {
                return refused("no extension was requested");
            }
            n.extension_ms = None;
        }
        (st, ev) => return Err(Refused(why_not(st, ev))),
    }
    Ok(n)
}

fn activate(n: &mut Life, at: i64) {
    n.status = Status::Active;
    n.activated_at = Some(at);
    n.expires_at = Some(at.saturating_add(n.duration_ms));
}

fn end_clock(n: &mut Life, now: i64) {
    n.expires_at = Some(n.expires_at.map_or(now, |x| x.min(now)));
    n.extension_ms = None;
}

fn why_not(st: Status, ev: &Event) -> &'static str {
    match (st, ev) {
        (Status::Approved | Status::Active, Event::Approve { .. } | Event::Reject) => {
            "the session was already approved"
        }
        (Status::Active, Event::Cancel) => {
            "an active session cannot be cancelled; complete it (or revoke it)"
        }
        (Status::Pending, Event::Revoke { .. }) => "a pending request is rejected, not revoked",
        (Status::Pending | Status::Approved, Event::Complete { .. }) => {
            "only an active session can be completed"
        }
        (Status::Pending, _) => "the session is still waiting for approval",
        _ => "the session has ended",
    }
}

// ---------------------------------------------------------------------------
// Using a session
// ---------------------------------------------------------------------------

/// What an operation presents: a session and what it wants to do with it.
#[derive(Debug, Clone)]
pub struct Grant<'a> {
    pub requester_id: &'a str,
    pub status: Status,
    pub expires_at: Option<i64>,
    pub server_ids: &'a [String],
    pub scopes: &'a [Scope],
}

/// Why an operation cannot run under a session; `code` is the API code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseRefused {
    pub code: ErrorCode,
    pub detail: String,
}

pub const CODE_REQUIRED: ErrorCode = ErrorCode::WorkSessionRequired;
pub const CODE_INACTIVE: ErrorCode = ErrorCode::WorkSessionInactive;
/// Still waiting for an admin (the CLI exits 4, "awaiting approval").
pub const CODE_PENDING: ErrorCode = ErrorCode::WorkSessionPending;
pub const CODE_NOT_YOURS: ErrorCode = ErrorCode::WorkSessionNotYours;
pub const CODE_SERVER: ErrorCode = ErrorCode::WorkSessionServer;
pub const CODE_SCOPE: ErrorCode = ErrorCode::WorkSessionScope;

fn no(code: ErrorCode, detail: String) -> Result<(), UseRefused> {
    Err(UseRefused { code, detail })
}

/// Whether `user_id` may do `scope` on `server_id` at `now` under `g`.
pub fn check_use(
    g: &Grant<'_>,
    user_id: &str,
    server_id: &str,
    server_name: &str,
    scope: Scope,
    now: i64,
) -> Result<(), UseRefused> {
    if g.requester_id != user_id {
        return no(
            CODE_NOT_YOURS,
            "this work session belongs to someone else; request your own with `alpacon work-session create`".into(),
        );
    }
    let live = g.status == Status::Active && g.expires_at.is_some_and(|x| now < x);
    if !live {
        let state = match g.status {
            Status::Active => "has expired",
            Status::Pending => "is waiting for approval",
            Status::Approved => "has not started yet",
            _ => "has ended",
        };
        let code = if g.status == Status::Pending {
            CODE_PENDING
        } else {
            CODE_INACTIVE
        };
        return no(
            code,
            format!("the work session {state}; see `alpacon work-session ls`"),
        );
    }
    if !g.server_ids.iter().any(|s| s == server_id) {
        return no(
            CODE_SERVER,
            format!("the work session does not cover server {server_name}"),
        );
    }
    if !g.scopes.contains(&scope) {
        return no(
            CODE_SCOPE,
            format!(
                "the work session does not grant {}; it grants {}",
                scope.as_str(),
                g.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

/// The policy is the API's own type: the stored setting
/// (`work_session.policy`) is the body of `GET/PUT /api/work-sessions/policy/`.
pub use alpacon_api::work_sessions::{
    WorkSessionPolicy as Policy, WorkSessionRequiredFor as Required,
};

/// The rules of a [`Policy`].
pub trait PolicyRules {
    /// Why the policy cannot be stored, if it cannot.
    fn validate(&self) -> Result<(), String>;
}

impl PolicyRules for Policy {
    fn validate(&self) -> Result<(), String> {
        if !(1..=24 * 30).contains(&self.max_duration_hours) {
            return Err("max_duration_hours must be between 1 and 720".into());
        }
        Ok(())
    }
}

/// Whether someone with this role needs a session for a server in
/// `server_groups`.
pub fn required(p: &Policy, is_admin: bool, server_groups: &[String]) -> bool {
    let by_role = match p.required_for {
        Required::Nobody => false,
        Required::Members => !is_admin,
        Required::Everyone => true,
    };
    by_role || server_groups.iter().any(|g| p.required_groups.contains(g))
}

/// Whether a request is approved without an approver.
pub fn auto_approves(p: &Policy, requester_is_superuser: bool) -> bool {
    p.auto_approve_superusers && requester_is_superuser
}

/// Parses `90m`, `2h`, `1d`, `30s` (or plain seconds) into milliseconds.
/// A duration given as a number of seconds, in ms; `None` unless positive
/// and representable (a huge number must not wrap into a negative one).
pub fn duration_from_secs(secs: i64) -> Option<i64> {
    (secs > 0).then(|| secs.checked_mul(1000)).flatten()
}

pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    (n > 0).then(|| n.checked_mul(mult)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn durations_never_wrap() {
        assert_eq!(duration_from_secs(90), Some(90_000));
        assert_eq!(duration_from_secs(0), None);
        assert_eq!(duration_from_secs(-5), None);
        assert_eq!(duration_from_secs(i64::MAX), None);
        assert_eq!(duration_from_secs(i64::MAX / 1000 + 1), None);
        assert_eq!(parse_duration("9223372036854775807s"), None);
        assert_eq!(parse_duration("2h"), Some(2 * H));
    }

    fn life(status: Status) -> Life {
        let active = matches!(status, Status::Active);
        Life {
            status,
            starts_at: None,
            duration_ms: 2 * H,
            activated_at: active.then_some(1000),
            expires_at: active.then_some(1000 + 2 * H),
            extension_ms: None,
        }
    }

    fn every_event(now: i64) -> Vec<Event> {
        vec![
            Event::Approve {
                now,
                starts_at: None,
                duration_ms: H,
            },
            Event::Reject,
            Event::Cancel,
            Event::Revoke { now },
            Event::Complete { now },
            Event::Tick { now },
            Event::RequestExtension { ms: H },
            Event::ApproveExtension { ms: H },
            Event::RejectExtension,
        ]
    }

    #[test]
    fn approving_now_starts_the_clock_at_approval_not_at_request() {
        let s = life(Status::Pending);
        let n = apply(
            &s,
            &Event::Approve {
                now: 5000,
                starts_at: None,
                duration_ms: H,
            },
        )
        .unwrap();
        assert_eq!(n.status, Status::Active);
        assert_eq!(n.activated_at, Some(5000));
        assert_eq!(n.expires_at, Some(5000 + H));
        // A start in the past is "now".
        let n = apply(
            &s,
            &Event::Approve {
                now: 5000,
                starts_at: Some(10),
                duration_ms: H,
            },
        )
        .unwrap();
        assert_eq!(n.activated_at, Some(5000));
    }

    #[test]
    fn a_future_start_waits_then_runs_its_full_duration() {
        let s = life(Status::Pending);
        let n = apply(
            &s,
            &Event::Approve {
                now: 0,
                starts_at: Some(10 * H),
                duration_ms: H,
            },
        )
        .unwrap();
        assert_eq!(n.status, Status::Approved);
        assert_eq!(n.expires_at, None);
        // Clock edges: one ms before the start nothing happens; at it, it runs.
        let before = apply(&n, &Event::Tick { now: 10 * H - 1 }).unwrap();
        assert_eq!(before, n);
        let at = apply(&n, &Event::Tick { now: 10 * H }).unwrap();
        assert_eq!(at.status, Status::Active);
        assert_eq!(at.activated_at, Some(10 * H));
        assert_eq!(at.expires_at, Some(11 * H));
        // A gateway that was down past the whole window finds it expired.
        let late = apply(&n, &Event::Tick { now: 11 * H }).unwrap();
        assert_eq!(late.status, Status::Expired);
    }

    #[test]
    fn active_sessions_expire_exactly_at_their_end() {
        let s = life(Status::Active);
        let end = s.expires_at.unwrap();
        assert_eq!(apply(&s, &Event::Tick { now: end - 1 }).unwrap(), s);
        assert_eq!(
            apply(&s, &Event::Tick { now: end }).unwrap().status,
            Status::Expired
        );
    }

    #[test]
    fn every_transition_from_every_state() {
        use Status::*;
        // (from, event index) -> expected status, or None when refused.
        for from in Status::ALL {
            for (i, ev) in every_event(1500).iter().enumerate() {
                let mut s = life(from);
                if i == 7 || i == 8 {
                    s.extension_ms = Some(H);
                }
                let got = apply(&s, ev).map(|n| n.status);
                let want = match (from, i) {
                    (Pending, 0) => Some(Active),
                    (Pending, 1) => Some(Rejected),
                    (Pending | Approved, 2) => Some(Cancelled),
                    (Approved | Active, 3) => Some(Revoked),
                    (Active, 4) => Some(Completed),
                    (Approved, 5) => Some(Active),
                    (_, 5) => Some(from),
                    (Approved | Active, 6) => None, // one already waiting (set below)
                    (Approved | Active, 7 | 8) => Some(from),
                    _ => None,
                };
                let want = if i == 6 && matches!(from, Approved | Active) {
                    Some(from)
                } else {
                    want
                };
                assert_eq!(got.ok(), want, "{from:?} + {ev:?}");
                if let Err(Refused(why)) = apply(&s, ev) {
                    assert!(!why.is_empty());
                }
            }
        }
    }

    #[test]
    fn final_states_are_final() {
        for st in Status::ALL.into_iter().filter(|s| s.is_final()) {
            for ev in every_event(10) {
                match apply(&life(st), &ev) {
                    Ok(n) => {
                        assert!(matches!(ev, Event::Tick { .. }));
                        assert_eq!(n.status, st);
                    }
                    Err(Refused(why)) => assert_eq!(why, "the session has ended"),
                }
            }
        }
    }

    #[test]
    fn revoking_or_completing_ends_the_clock_now() {
        let s = life(Status::Active);
        let n = apply(&s, &Event::Revoke { now: 2000 }).unwrap();
        assert_eq!(n.expires_at, Some(2000));
        let n = apply(&s, &Event::Complete { now: 3000 }).unwrap();
        assert_eq!(n.expires_at, Some(3000));
    }

    #[test]
    fn extensions_ask_again_and_add_at_most_what_was_asked() {
        let s = life(Status::Active);
        assert!(apply(&s, &Event::ApproveExtension { ms: H }).is_err());
        assert!(apply(&s, &Event::RequestExtension { ms: 0 }).is_err());
        let asked = apply(&s, &Event::RequestExtension { ms: H }).unwrap();
        assert_eq!(
            asked.expires_at, s.expires_at,
            "nothing changes until approved"
        );
        assert!(apply(&asked, &Event::RequestExtension { ms: H }).is_err());
        assert!(apply(&asked, &Event::ApproveExtension { ms: 2 * H }).is_err());
        let ok = apply(&asked, &Event::ApproveExtension { ms: H / 2 }).unwrap();
        assert_eq!(ok.expires_at, Some(s.expires_at.unwrap() + H / 2));
        assert_eq!(ok.extension_ms, None);
        let no = apply(&asked, &Event::RejectExtension).unwrap();
        assert_eq!(no.expires_at, s.expires_at);
        assert_eq!(no.extension_ms, None);
        // Expiry drops an undecided extension.
        let gone = apply(&asked, &Event::Tick { now: i64::MAX }).unwrap();
        assert_eq!((gone.status, gone.extension_ms), (Status::Expired, None));
    }

    #[test]
    fn approval_needs_a_positive_duration() {
        let r = apply(
            &life(Status::Pending),
            &Event::Approve {
                now: 0,
                starts_at: None,
                duration_ms: 0,
            },
        );
        assert!(r.is_err());
    }

    fn grant<'a>(servers: &'a [String], scopes: &'a [Scope]) -> Grant<'a> {
        Grant {
            requester_id: "alice",
            status: Status::Active,
            expires_at: Some(100),
            server_ids: servers,
            scopes,
        }
    }

    #[test]
    fn every_refusal_reason_when_using_a_session() {
        let servers = vec!["s1".to_string()];
        let scopes = [Scope::Websh, Scope::Command];
        let g = grant(&servers, &scopes);
        assert!(check_use(&g, "alice", "s1", "web", Scope::Websh, 50).is_ok());
        let code = |g: &Grant, user, server, scope, now| {
            check_use(g, user, server, "web", scope, now)
                .err()
                .map(|r| r.code)
        };
        assert_eq!(
            code(&g, "bob", "s1", Scope::Websh, 50),
            Some(CODE_NOT_YOURS)
        );
        assert_eq!(code(&g, "alice", "s2", Scope::Websh, 50), Some(CODE_SERVER));
        assert_eq!(code(&g, "alice", "s1", Scope::File, 50), Some(CODE_SCOPE));
        assert_eq!(code(&g, "alice", "s1", Scope::Sudo, 50), Some(CODE_SCOPE));
        // Clock edge: usable up to the last ms, not at expiry.
        assert_eq!(code(&g, "alice", "s1", Scope::Websh, 99), None);
        assert_eq!(
            code(&g, "alice", "s1", Scope::Websh, 100),
            Some(CODE_INACTIVE)
        );
        for st in Status::ALL.into_iter().filter(|s| *s != Status::Active) {
            let g = Grant {
                status: st,
                ..grant(&servers, &scopes)
            };
            let want = if st == Status::Pending {
                CODE_PENDING
            } else {
                CODE_INACTIVE
            };
            assert_eq!(
                code(&g, "alice", "s1", Scope::Websh, 50),
                Some(want),
                "{st:?}"
            );
        }
    }

    #[test]
    fn policy_decides_who_needs_a_session() {
        let mut p = Policy::default();
        let prod = vec!["production".to_string()];
        assert!(!required(&p, false, &prod));
        p.required_for = Required::Members;
        assert!(required(&p, false, &[]));
        assert!(!required(&p, true, &[]));
        p.required_for = Required::Everyone;
        assert!(required(&p, true, &[]));
        p.required_for = Required::Nobody;
        p.required_groups = prod.clone();
        assert!(required(&p, true, &prod));
        assert!(!required(&p, true, &["staging".to_string()]));
        assert!(!auto_approves(&p, true));
        p.auto_approve_superusers = true;
        assert!(auto_approves(&p, true) && !auto_approves(&p, false));
        assert!(p.validate().is_ok());
        p.max_duration_hours = 0;
        assert!(p.validate().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2h"), Some(2 * H));
        assert_eq!(parse_duration("90m"), Some(90 * 60_000));
        assert_eq!(parse_duration("1d"), Some(24 * H));
        assert_eq!(parse_duration("30"), Some(30_000));
        for bad in ["", "h", "0h", "-1h", "2w", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("root"), None);
    }

    #[test]
    fn names_are_the_api_names() {
        use alpacon_api::work_sessions::{WorkSessionScope, WorkSessionStatus};
        for s in Status::ALL {
            assert_eq!(WorkSessionStatus::from(s).as_str(), s.as_str());
        }
        for s in Scope::ALL {
            assert_eq!(WorkSessionScope::from(s).as_str(), s.as_str());
        }
    }
}
