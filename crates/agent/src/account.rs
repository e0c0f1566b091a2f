//! Who an operation runs as, and how a child process becomes that account.
//!
//! Commands, terminals and file helpers are child processes that drop to
//! the requested account between `fork` and `exec`, so the kernel's own
//! permission checks and ownership apply. The supplementary groups are computed in the parent
//! (NSS look-ups allocate and take locks); the child only makes
//! async-signal-safe system calls. `Command::uid/gid` are not used because
//! std then clears the supplementary groups.
//!
//! A person's own (managed) account runs only with its own groups
//! ([`managed_group`]): the gateway checks the requested group too, and the
//! agent does not rely on it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use alpacon_proto::{ErrorCode, ManagedAccount, StreamError};
use nix::unistd::{getegid, geteuid, getgrouplist, Gid, Group, User};

use crate::provision::{MANAGED_GROUP, MIN_GID, PRIVILEGED_GROUPS};

#[derive(Debug, Clone)]
pub struct RunAs {
    pub username: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
    /// The identity to switch to; `None` when the agent is unprivileged and
    /// the child simply keeps the agent's own identity.
    switch: Option<Switch>,
}

#[derive(Debug, Clone)]
struct Switch {
    groups: Vec<libc::gid_t>,
}

fn lookup_err(what: &str, name: &str, e: nix::Error) -> StreamError {
    StreamError::new(ErrorCode::Io, format!("cannot look up {what} {name}: {e}"))
}

impl RunAs {
    /// Resolve `username` (and `groupname` as the primary group) on this
    /// machine and check that the agent may act as it. `managed` is the
    /// person's identity when `username` is their own account: then the
    /// group must be one of theirs ([`managed_group`]).
    pub fn resolve(
        username: &str,
        groupname: Option<&str>,
        managed: Option<&ManagedAccount>,
    ) -> Result<RunAs, StreamError> {
        let user = User::from_name(username)
            .map_err(|e| lookup_err("user", username, e))?
            .ok_or_else(|| {
                StreamError::new(
                    ErrorCode::NoSuchUser,
                    format!("no such user on this server: {username}"),
                )
            })?;
        let gid = match groupname {
            Some(g) => {
                Group::from_name(g)
                    .map_err(|e| lookup_err("group", g, e))?
                    .ok_or_else(|| {
                        StreamError::new(
                            ErrorCode::NoSuchGroup,
                            format!("no such group on this server: {g}"),
                        )
                    })?
                    .gid
            }
            None => user.gid,
        };
        if let Some(m) = managed {
            let name = match groupname {
                Some(g) => g.to_string(),
                // The primary group from /etc/passwd, which provisioning
                // made the private group; anything else is refused too.
                None => Group::from_gid(gid)
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_else(|| format!("#{gid}")),
            };
            managed_group(&user.name, m, &name, gid.as_raw())
                .map_err(|detail| StreamError::new(ErrorCode::PermissionDenied, detail))?;
        }
        let shell = if user.shell.as_os_str().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            user.shell.clone()
        };
        let mut runas = RunAs {
            username: user.name.clone(),
            uid: user.uid.as_raw(),
            gid: gid.as_raw(),
            home: user.dir.clone(),
            shell,
            switch: None,
        };

        let euid = geteuid();
        if !euid.is_root() {
            // Without root we cannot change identity: allow only ourselves.
            if user.uid != euid || (groupname.is_some() && gid != getegid()) {
                let me = User::from_uid(euid)
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| euid.to_string());
                return Err(StreamError::new(
                    ErrorCode::PermissionDenied,
                    format!("the agent runs unprivileged and can only act as {me}"),
                ));
            }
            return Ok(runas);
        }

        let cname = CString::new(user.name.as_bytes())
            .map_err(|_| StreamError::new(ErrorCode::Invalid, "user name contains NUL"))?;
        let groups = getgrouplist(&cname, Gid::from_raw(runas.gid))
            .map_err(|e| lookup_err("the groups of", username, e))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        runas.switch = Some(Switch { groups });
        Ok(runas)
    }

    /// Whether the child changes identity (the agent runs as root).
    pub fn switches(&self) -> bool {
        self.switch.is_some()
    }

    /// Make `cmd` start in a new session (its own process group, so it can be
    /// signalled as a whole), as this account, in `cwd` (falling back to `/`
    /// when the account cannot enter it).
    pub fn configure(&self, cmd: &mut tokio::process::Command, cwd: Option<&Path>) {
        self.setup(cmd, cwd, false)
    }

    /// Like [`RunAs::configure`], and the child's stdin (a PTY slave) becomes
    /// the controlling terminal of its new session.
    pub fn configure_terminal(&self, cmd: &mut tokio::process::Command, cwd: Option<&Path>) {
        self.setup(cmd, cwd, true)
    }

    fn setup(&self, cmd: &mut tokio::process::Command, cwd: Option<&Path>, ctty: bool) {
        let ids = self
            .switch
            .as_ref()
            .map(|s| (s.groups.clone(), self.uid, self.gid));
        let cwd = cwd.and_then(|p| CString::new(p.as_os_str().as_bytes()).ok());
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe calls (setsid, ioctl, setgroups, setgid, setuid,
        // chdir) on data prepared beforehand; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // Still privileged here: take the terminal on fd 0 (already
                // the PTY slave) as this session's controlling terminal.
                if ctty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((groups, uid, gid)) = &ids {
                    if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                        || libc::setgid(*gid) != 0
                        || libc::setuid(*uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let entered = match &cwd {
                    Some(dir) => libc::chdir(dir.as_ptr()) == 0,
                    None => false,
                };
                if !entered && libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Whether the managed account `username` (identity `m`) may run with the
/// local group `name` (GID `gid`) as its primary group: only its private
/// group (named after it, GID = UID) or one of its Alpacon groups (the same
/// name and central GID), and never a system or privileged group (the ones
/// provisioning never joins). `Err` is the refusal's detail.
pub fn managed_group(
    username: &str,
    m: &ManagedAccount,
    name: &str,
    gid: u32,
) -> Result<(), String> {
    let not_theirs = format!("group {name} is not one of {username}'s groups");
    // The private group first: it is the account's own primary group even
    // when the person's name is one of the privileged ones (a user `admin`).
    if name == username && gid == m.uid && m.gid == m.uid && gid >= MIN_GID {
        return Ok(());
    }
    if gid < MIN_GID || PRIVILEGED_GROUPS.contains(&name) || name == MANAGED_GROUP {
        return Err(format!(
            "{not_theirs}; a person's own account never runs with a system or privileged group (GID {gid})"
        ));
    }
    if name != username && m.groups.iter().any(|g| g.name == name && g.gid == gid) {
        return Ok(());
    }
    let mut own: Vec<&str> = vec![username];
    own.extend(
        m.groups
            .iter()
            .filter(|g| {
                g.gid >= MIN_GID
                    && g.name != username
                    && g.name != MANAGED_GROUP
                    && !PRIVILEGED_GROUPS.contains(&g.name.as_str())
            })
            .map(|g| g.name.as_str()),
    );
    let why = match m.groups.iter().find(|g| g.name == name) {
        // A private group's GID is the UID.
        _ if name == username => format!(
            "here it has GID {gid}, not {username}'s private GID {}",
            m.uid
        ),
        Some(g) => format!(
            "here it has GID {gid}, not the GID {} of {username}'s Alpacon group",
            g.gid
        ),
        None => format!("{username}'s groups are {}", own.join(", ")),
    };
    Err(format!("{not_theirs}; {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alpacon_proto::ManagedGroup;

    #[test]
    fn a_managed_account_runs_only_with_its_own_groups() {
        let m = ManagedAccount {
            uid: 20001,
            gid: 20001,
            shell: "/bin/sh".into(),
            groups: vec![
                ManagedGroup {
                    name: "web".into(),
                    gid: 50001,
                },
                // Central groups that provisioning never joins.
                ManagedGroup {
                    name: "sudo".into(),
                    gid: 50002,
                },
                ManagedGroup {
                    name: "legacy".into(),
                    gid: 500,
                },
                ManagedGroup {
                    name: "alice".into(),
                    gid: 50003,
                },
            ],
            full_name: String::new(),
        };
        let ok = |name: &str, gid: u32| managed_group("alice", &m, name, gid);
        // (group, local GID, allowed)
        let table = [
            ("alice", 20001, true),  // private group
            ("web", 50001, true),    // Alpacon group
            ("alice", 50003, false), // the name is the private group's
            ("alice", 20002, false), // private group with another GID
            ("web", 50009, false),   // local group of that name, other GID
            ("shadow", 42, false),
            ("root", 0, false),
            ("sudo", 27, false),
            ("sudo", 50002, false), // privileged name, whatever the GID
            ("wheel", 5000, false),
            ("disk", 6, false),
            ("adm", 4, false),
            ("legacy", 500, false), // system GID even though it is theirs
            ("alpacon-managed", 999, false),
            ("alpacon-managed", 5000, false),
            ("nogroup", 65534, false),
            ("bob", 20002, false), // someone else's private group
            ("ops", 50004, false), // a group that is not theirs
        ];
        for (name, gid, allowed) in table {
            assert_eq!(
                ok(name, gid).is_ok(),
                allowed,
                "{name} {gid}: {:?}",
                ok(name, gid)
            );
        }
        assert_eq!(
            ok("shadow", 42).unwrap_err(),
            "group shadow is not one of alice's groups; a person's own account never runs \
             with a system or privileged group (GID 42)"
        );
        assert_eq!(
            ok("ops", 50004).unwrap_err(),
            "group ops is not one of alice's groups; alice's groups are alice, web"
        );
        assert_eq!(
            ok("web", 50009).unwrap_err(),
            "group web is not one of alice's groups; here it has GID 50009, not the GID 50001 \
             of alice's Alpacon group"
        );
        assert_eq!(
            ok("alice", 50003).unwrap_err(),
            "group alice is not one of alice's groups; here it has GID 50003, not alice's \
             private GID 20001"
        );
        // A person named like a privileged group has that private group,
        // and no other group of that name.
        let admin = ManagedAccount {
            uid: 20000,
            gid: 20000,
            ..m.clone()
        };
        assert!(managed_group("admin", &admin, "admin", 20000).is_ok());
        assert!(managed_group("admin", &admin, "admin", 115).is_err());
        assert!(managed_group("admin", &admin, "sudo", 27).is_err());
        assert!(managed_group("alice", &m, "admin", 20000).is_err());
        // A private group is only that when its GID is the UID.
        let odd = ManagedAccount {
            gid: 20005,
            ..m.clone()
        };
        assert!(managed_group("alice", &odd, "alice", 20005).is_err());
    }

    #[test]
    fn resolve_refuses_groups_that_are_not_the_managed_accounts() {
        // Resolving needs no provisioning: nobody stands in for a person.
        let nobody = User::from_name("nobody").unwrap().unwrap();
        let m = ManagedAccount {
            uid: nobody.uid.as_raw(),
            gid: nobody.gid.as_raw(),
            shell: "/bin/sh".into(),
            groups: Vec::new(),
            full_name: String::new(),
        };
        for g in ["shadow", "root"] {
            let e = RunAs::resolve("nobody", Some(g), Some(&m)).unwrap_err();
            assert_eq!(e.code, ErrorCode::PermissionDenied);
            assert!(
                e.detail
                    .starts_with(&format!("group {g} is not one of nobody's groups")),
                "{}",
                e.detail
            );
        }
        // Not managed: unchanged (an administrator may pick any group).
        if geteuid().is_root() {
            let r = RunAs::resolve("nobody", Some("shadow"), None).unwrap();
            assert_eq!(
                r.gid,
                Group::from_name("shadow").unwrap().unwrap().gid.as_raw()
            );
        }
    }

    fn me() -> String {
        User::from_uid(geteuid()).unwrap().unwrap().name
    }

    #[test]
    fn resolves_the_current_user() {
        let r = RunAs::resolve(&me(), None, None).unwrap();
        assert_eq!(r.uid, geteuid().as_raw());
        assert_eq!(r.switches(), geteuid().is_root());
    }

    #[test]
    fn unknown_user_and_group() {
        let e = RunAs::resolve("no-such-user-alpacon", None, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchUser);
        assert_eq!(
            e.detail,
            "no such user on this server: no-such-user-alpacon"
        );
        let e = RunAs::resolve(&me(), Some("no-such-group-alpacon"), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchGroup);
        let e = RunAs::resolve("a\0b", None, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchUser);
    }

    #[test]
    fn unprivileged_agent_acts_only_as_itself() {
        if geteuid().is_root() {
            return; // only meaningful without root
        }
        let e = RunAs::resolve("root", None, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.detail.contains("can only act as"), "{}", e.detail);
    }
}
