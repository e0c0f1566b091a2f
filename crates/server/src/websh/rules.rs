//! Who may do what with a terminal session: decided from facts, so the
//! rules are tested as tables without a database.

/// How a caller may use a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    /// Joined through a share link.
    Participant {
        read_only: bool,
    },
    /// An admin watching someone else's session: read-only.
    Watcher,
}

impl Access {
    pub fn read_only(self) -> bool {
        match self {
            Access::Owner => false,
            Access::Participant { read_only } => read_only,
            Access::Watcher => true,
        }
    }

    /// Closing and sharing a session are for its owner and admins.
    pub fn may_manage(self, is_admin: bool) -> bool {
        self == Access::Owner || is_admin
    }

    /// Whoever may type reaches the server: it must be within their groups.
    /// Read-only viewers of a share link were let in by the owner and only
    /// watch; admins reach every server anyway.
    pub fn needs_reach(self) -> bool {
        !matches!(
            self,
            Access::Watcher | Access::Participant { read_only: true }
        )
    }
}

/// Decides access from facts (testable without a database).
pub fn decide_access(is_owner: bool, participant: Option<bool>, is_admin: bool) -> Option<Access> {
    if is_owner {
        Some(Access::Owner)
    } else if let Some(read_only) = participant {
        Some(Access::Participant { read_only })
    } else if is_admin {
        Some(Access::Watcher)
    } else {
        None
    }
}

/// The share id at the end of a share URL (or the id itself).
pub fn share_id_from(s: &str) -> &str {
    s.trim_end_matches('/').rsplit('/').next().unwrap_or(s)
}

/// How long a share link works: 30 minutes unless asked, 60 seconds to 7
/// days.
pub fn share_lifetime_secs(asked: Option<i64>) -> Option<i64> {
    let secs = asked.unwrap_or(1800);
    (60..=7 * 86_400).contains(&secs).then_some(secs)
}

/// The idle timeout an admin may set.
pub fn valid_idle_timeout(secs: i64) -> bool {
    (super::IDLE_MIN_SECS..=super::IDLE_MAX_SECS).contains(&secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules() {
        assert_eq!(decide_access(true, None, false), Some(Access::Owner));
        assert_eq!(decide_access(true, Some(true), true), Some(Access::Owner));
        assert_eq!(
            decide_access(false, Some(true), false),
            Some(Access::Participant { read_only: true })
        );
        assert_eq!(
            decide_access(false, Some(false), true),
            Some(Access::Participant { read_only: false })
        );
        assert_eq!(decide_access(false, None, true), Some(Access::Watcher));
        assert_eq!(decide_access(false, None, false), None);
        assert!(Access::Watcher.read_only());
        assert!(!Access::Owner.read_only());
    }

    #[test]
    fn managing_and_reaching() {
        // (access, admin) -> may close or share
        for (a, admin, ok) in [
            (Access::Owner, false, true),
            (Access::Watcher, true, true),
            (Access::Participant { read_only: false }, false, false),
            (Access::Participant { read_only: true }, true, true),
        ] {
            assert_eq!(a.may_manage(admin), ok, "{a:?} admin={admin}");
        }
        assert!(Access::Owner.needs_reach());
        assert!(Access::Participant { read_only: false }.needs_reach());
        assert!(!Access::Participant { read_only: true }.needs_reach());
        assert!(!Access::Watcher.needs_reach());
    }

    #[test]
    fn share_ids_from_urls() {
        assert_eq!(share_id_from("https://gw/#/websh/join/abc"), "abc");
        assert_eq!(share_id_from("https://gw/#/websh/join/abc/"), "abc");
        assert_eq!(share_id_from("abc"), "abc");
    }

    #[test]
    fn share_lifetimes_and_idle_timeouts() {
        for (asked, got) in [
            (None, Some(1800)),
            (Some(60), Some(60)),
            (Some(59), None),
            (Some(7 * 86_400), Some(7 * 86_400)),
            (Some(7 * 86_400 + 1), None),
            (Some(-5), None),
        ] {
            assert_eq!(share_lifetime_secs(asked), got, "{asked:?}");
        }
        assert!(valid_idle_timeout(600) && valid_idle_timeout(86_400));
        assert!(!valid_idle_timeout(599) && !valid_idle_timeout(86_401));
    }
}
