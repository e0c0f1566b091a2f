//! Who may do what to a group: the role rules, pure and tested as tables.

/// A role within a group, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Manager,
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "manager" => Some(Role::Manager),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Manager => "manager",
            Role::Owner => "owner",
        }
    }
}

/// Who is acting on a group: workspace admin or not, and their own role in
/// the group (if any).
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub is_admin: bool,
    pub role: Option<Role>,
}

/// What they want to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAction {
    View,
    /// Rename, delete.
    Manage,
    /// Add someone with this role.
    Add(Role),
    /// Remove someone who has this role.
    Remove(Role),
    /// Change someone's role.
    ChangeRole {
        from: Role,
        to: Role,
    },
    /// Assign or unassign servers.
    AssignServers,
}

/// The group-level permission rules. `Err` carries the reason.
pub fn may(actor: Actor, action: GroupAction) -> Result<(), &'static str> {
    if actor.is_admin {
        return Ok(());
    }
    let Some(role) = actor.role else {
        return Err("you are not a member of this group");
    };
    let ok = match action {
        GroupAction::View => true,
        GroupAction::Manage => role == Role::Owner,
        GroupAction::AssignServers => false,
        // Owners manage every role; managers only plain members.
        GroupAction::Add(r) | GroupAction::Remove(r) => match role {
            Role::Owner => true,
            Role::Manager => r == Role::Member,
            Role::Member => false,
        },
        GroupAction::ChangeRole { from, to } => match role {
            Role::Owner => true,
            Role::Manager => from == Role::Member && to == Role::Member,
            Role::Member => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(match (role, action) {
            (_, GroupAction::AssignServers) => "only staff and superusers assign servers to groups",
            (Role::Member, _) => "members cannot change the group; ask an owner or manager",
            (Role::Manager, GroupAction::Manage) => "only the group's owners can do this",
            _ => "managers can only add and remove members; owners manage managers and owners",
        })
    }
}

/// The next free id above every used one, starting at `base`.
pub fn next_id(max_used: Option<i64>, base: i64) -> i64 {
    max_used.map_or(base, |m| (m + 1).max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Option<Role>; 4] = [
        None,
        Some(Role::Member),
        Some(Role::Manager),
        Some(Role::Owner),
    ];
    const ALL: [Role; 3] = [Role::Member, Role::Manager, Role::Owner];

    fn actor(role: Option<Role>) -> Actor {
        Actor {
            is_admin: false,
            role,
        }
    }

    #[test]
    fn admins_may_do_everything() {
        let a = Actor {
            is_admin: true,
            role: None,
        };
        for act in [
            GroupAction::View,
            GroupAction::Manage,
            GroupAction::AssignServers,
            GroupAction::Add(Role::Owner),
            GroupAction::Remove(Role::Owner),
            GroupAction::ChangeRole {
                from: Role::Member,
                to: Role::Owner,
            },
        ] {
            assert!(may(a, act).is_ok(), "{act:?}");
        }
    }

    #[test]
    fn outsiders_may_do_nothing_and_nobody_but_admins_assigns_servers() {
        for r in ROLES {
            assert!(may(actor(r), GroupAction::AssignServers).is_err());
        }
        let out = actor(None);
        assert!(may(out, GroupAction::View).is_err());
        for r in ALL {
            assert!(may(out, GroupAction::Add(r)).is_err());
            assert!(may(out, GroupAction::Remove(r)).is_err());
        }
    }

    #[test]
    fn every_role_against_every_membership_change() {
        for r in ALL {
            for target in ALL {
                let add = may(actor(Some(r)), GroupAction::Add(target)).is_ok();
                let remove = may(actor(Some(r)), GroupAction::Remove(target)).is_ok();
                let expect = match r {
                    Role::Owner => true,
                    Role::Manager => target == Role::Member,
                    Role::Member => false,
                };
                assert_eq!(add, expect, "{r:?} add {target:?}");
                assert_eq!(remove, expect, "{r:?} remove {target:?}");
                for to in ALL {
                    let ok =
                        may(actor(Some(r)), GroupAction::ChangeRole { from: target, to }).is_ok();
                    let expect = match r {
                        Role::Owner => true,
                        Role::Manager => target == Role::Member && to == Role::Member,
                        Role::Member => false,
                    };
                    assert_eq!(ok, expect, "{r:?} change {target:?} to {to:?}");
                }
            }
            assert!(may(actor(Some(r)), GroupAction::View).is_ok());
            assert_eq!(
                may(actor(Some(r)), GroupAction::Manage).is_ok(),
                r == Role::Owner
            );
        }
    }

    #[test]
    fn roles_parse_and_ids_are_allocated_above_base() {
        for r in ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
        assert_eq!(next_id(None, 50_000), 50_000);
        assert_eq!(next_id(Some(10), 50_000), 50_000);
        assert_eq!(next_id(Some(50_003), 50_000), 50_004);
    }
}
