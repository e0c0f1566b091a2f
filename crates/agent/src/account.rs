//! Who an operation runs as, and how a child process becomes that account.
//!
//! Commands, terminals and file helpers are child processes that drop to
//! the requested account between `fork` and `exec`, so the kernel's own
//! permission checks and ownership apply. The supplementary groups are computed in the parent
//! (NSS look-ups allocate and take locks); the child only makes
//! async-signal-safe system calls. `Command::uid/gid` are not used because
//! std then clears the supplementary groups.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use alpacon_proto::{ErrorCode, StreamError};
use nix::unistd::{getegid, geteuid, getgrouplist, Gid, Group, User};

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
    /// machine and check that the agent may act as it.
    pub fn resolve(username: &str, groupname: Option<&str>) -> Result<RunAs, StreamError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> String {
        User::from_uid(geteuid()).unwrap().unwrap().name
    }

    #[test]
    fn resolves_the_current_user() {
        let r = RunAs::resolve(&me(), None).unwrap();
        assert_eq!(r.uid, geteuid().as_raw());
        assert_eq!(r.switches(), geteuid().is_root());
    }

    #[test]
    fn unknown_user_and_group() {
        let e = RunAs::resolve("no-such-user-alpacon", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchUser);
        assert_eq!(
            e.detail,
            "no such user on this server: no-such-user-alpacon"
        );
        let e = RunAs::resolve(&me(), Some("no-such-group-alpacon")).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchGroup);
        let e = RunAs::resolve("a\0b", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSuchUser);
    }

    #[test]
    fn unprivileged_agent_acts_only_as_itself() {
        if geteuid().is_root() {
            return; // only meaningful without root
        }
        let e = RunAs::resolve("root", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.detail.contains("can only act as"), "{}", e.detail);
    }
}
