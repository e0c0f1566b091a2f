//! Protocol version negotiation: each side announces the inclusive range it
//! speaks and both pick the highest version in the intersection.

use serde::{Deserialize, Serialize};

/// The newest protocol version this build speaks. 2 added managed
/// accounts (`LockAccount`, `AccountLocked`) and sudo grants (`SyncSudo`,
/// `SudoUsed`, `SudoFailed`); 3 added `HangUp` (terminals hung up out of
/// band); see `Control::since_version`.
pub const PROTOCOL_VERSION: u16 = 3;

/// Everything this build speaks.
pub const SUPPORTED: VersionRange = VersionRange {
    min: 1,
    max: PROTOCOL_VERSION,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

impl VersionRange {
    pub fn contains(&self, v: u16) -> bool {
        self.min <= v && v <= self.max
    }
}

/// The highest version both ranges contain, or `None` when they do not meet
/// (or either range is empty).
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Option<u16> {
    if ours.min > ours.max || theirs.min > theirs.max {
        return None;
    }
    let hi = ours.max.min(theirs.max);
    let lo = ours.min.max(theirs.min);
    (lo <= hi).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn picks_highest_common() {
        assert_eq!(negotiate(r(1, 3), r(2, 5)), Some(3));
        assert_eq!(negotiate(r(2, 5), r(1, 3)), Some(3));
        assert_eq!(negotiate(r(1, 1), r(1, 1)), Some(1));
        assert_eq!(negotiate(r(1, 9), r(4, 4)), Some(4));
    }

    #[test]
    fn disjoint_or_empty_ranges_fail() {
        assert_eq!(negotiate(r(1, 2), r(3, 4)), None);
        assert_eq!(negotiate(r(3, 4), r(1, 2)), None);
        assert_eq!(negotiate(r(2, 1), r(1, 2)), None);
        assert_eq!(negotiate(r(1, 2), r(5, 0)), None);
    }

    #[test]
    fn supported_contains_current() {
        assert!(SUPPORTED.contains(PROTOCOL_VERSION));
        assert_eq!(negotiate(SUPPORTED, SUPPORTED), Some(PROTOCOL_VERSION));
    }
}
