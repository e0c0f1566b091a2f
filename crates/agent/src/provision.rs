//! Managed accounts: a person's own account on this server, created and kept
//! in line with their central identity ("connect as yourself").
//!
//! When the gateway attaches a [`ManagedAccount`] to an operation (the person
//! acts as their own username), the agent makes the local account match
//! before the operation drops to it ([`ensure`]):
//!
//! - `useradd -m -u UID -g GID` with a private group `groupadd -g GID NAME`
//!   (GID = UID), the login shell (or `/bin/sh` when that shell is not
//!   installed), the password locked (`useradd`'s default `!`; `usermod -L`
//!   if someone set one);
//! - supplementary groups = the person's Alpacon groups, created with their
//!   central GID when missing, synced with `usermod -G`. A managed account is
//!   never put in a privileged group (an existing group with a GID below
//!   1000, or one named root/sudo/wheel/admin/adm/shadow/disk): "managed
//!   accounts have no standing sudo". Such groups are skipped and logged;
//! - membership in the system group `alpacon-managed`, which is also **the
//!   record of which accounts the agent manages** (it survives a lost agent
//!   data directory, and needs no file of our own), and which the sshd
//!   drop-in `/etc/ssh/sshd_config.d/alpacon.conf` (`DenyGroups
//!   alpacon-managed`) shuts out of SSH. `~/.ssh/authorized_keys` is kept an
//!   empty root-owned file as well;
//! - a local account of that name with another UID that is not ours is
//!   refused (`account_conflict`), never taken over. One with the same UID
//!   is adopted.
//!
//! [`lock`] handles the gateway's `LockAccount` (termination): `usermod -L
//! -e 1` and the account's processes killed, or `userdel` (home kept).
//!
//! The decisions ([`plan`], [`plan_lock`]) are pure functions of the desired
//! identity and a snapshot of `/etc/passwd`, `/etc/group` and `/etc/shadow`;
//! the I/O runs the shadow-utils tools under one process-wide lock, so two
//! first accesses at once do not race each other's `useradd`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use alpacon_proto::{Account, ErrorCode, ManagedAccount, StreamError};
use tracing::{debug, info, warn};

/// The system group of every managed account: the agent's record, and what
/// the sshd drop-in denies.
pub const MANAGED_GROUP: &str = "alpacon-managed";
/// Groups a managed account never joins, whatever its GID.
pub const PRIVILEGED_GROUPS: &[&str] = &["root", "sudo", "wheel", "admin", "adm", "shadow", "disk"];
/// Existing groups below this GID are system groups: never joined.
pub const MIN_GID: u32 = 1000;
/// The sshd drop-in, written when `/etc/ssh/sshd_config.d` exists.
pub const SSHD_DROPIN_DIR: &str = "/etc/ssh/sshd_config.d";
pub const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/alpacon.conf";
pub const SSHD_DROPIN_TEXT: &str =
    "# Written by alpamon. Accounts managed by Alpacon are reached through\n\
     # the gateway only: no SSH keys, no passwords.\n\
     DenyGroups alpacon-managed\n";
const FALLBACK_SHELL: &str = "/bin/sh";
const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

// ---- the local account database ----------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowEntry {
    pub name: String,
    pub password: String,
    /// Account expiry, days since the epoch; `None` when not set.
    pub expire: Option<i64>,
}

/// A snapshot of the local account files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    pub users: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
    pub shadow: Vec<ShadowEntry>,
}

fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
        return None;
    }
    Some(line.split(':').collect())
}

impl Accounts {
    pub fn parse(passwd: &str, group: &str, shadow: &str) -> Accounts {
        let users = passwd
            .lines()
            .filter_map(fields)
            .filter(|f| f.len() >= 7)
            .filter_map(|f| {
                Some(PasswdEntry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    gecos: f[4].to_string(),
                    home: f[5].to_string(),
                    shell: f[6].to_string(),
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(fields)
            .filter(|f| f.len() >= 4)
            .filter_map(|f| {
                Some(GroupEntry {
                    name: f[0].to_string(),
                    gid: f[2].parse().ok()?,
                    members: f[3]
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect();
        let shadow = shadow
            .lines()
            .filter_map(fields)
            .filter(|f| f.len() >= 2)
            .map(|f| ShadowEntry {
                name: f[0].to_string(),
                password: f[1].to_string(),
                expire: f.get(7).and_then(|e| e.parse().ok()),
            })
            .collect();
        Accounts {
            users,
            groups,
            shadow,
        }
    }

    pub fn user(&self, name: &str) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.uid == uid)
    }

    pub fn group(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn group_by_gid(&self, gid: u32) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.gid == gid)
    }

    pub fn shadow(&self, name: &str) -> Option<&ShadowEntry> {
        self.shadow.iter().find(|s| s.name == name)
    }

    /// Whether `user` is one of ours (a member of [`MANAGED_GROUP`]).
    pub fn is_managed(&self, user: &str) -> bool {
        self.group(MANAGED_GROUP)
            .is_some_and(|g| g.members.iter().any(|m| m == user))
    }

    /// Names of the groups listing `user` as a member, sorted.
    pub fn supplementary(&self, user: &str) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == user))
            .map(|g| g.name.as_str())
            .collect();
        set.into_iter().map(str::to_string).collect()
    }
}

// ---- decisions -------------------------------------------------------------

/// One change to the local account database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `groupadd -g GID NAME`, or `groupadd -r NAME` (a system group) when
    /// `gid` is `None`.
    CreateGroup { name: String, gid: Option<u32> },
    /// `useradd -m -u UID -g GID -s SHELL -c COMMENT -G GROUPS NAME`.
    CreateUser {
        name: String,
        uid: u32,
        gid: u32,
        shell: String,
        comment: String,
        groups: Vec<String>,
    },
    /// `usermod -g GID NAME`.
    SetPrimaryGroup { name: String, gid: u32 },
    /// `usermod -G GROUPS NAME`.
    SetGroups { name: String, groups: Vec<String> },
    /// `usermod -s SHELL NAME`.
    SetShell { name: String, shell: String },
    /// `usermod -c COMMENT NAME`.
    SetComment { name: String, comment: String },
    /// `usermod -L NAME`: the password cannot be used.
    LockPassword { name: String },
    /// `usermod -e '' NAME`: lift an expiry (a lock from termination; the
    /// person was re-enabled).
    Unexpire { name: String },
}

/// What [`plan`] decided: the steps to run, and what it left out on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Human-readable reasons for groups that were not joined.
    pub skipped: Vec<String>,
}

/// Account and group names follow useradd's portable rules.
pub fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && n.len() <= 32
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

fn conflict(detail: String) -> StreamError {
    StreamError::new(ErrorCode::AccountConflict, detail)
}

/// A GECOS comment cannot contain `:` (field separator), `,` (subfield
/// separator) or a newline.
pub fn comment_for(full_name: &str) -> String {
    full_name
        .chars()
        .filter(|c| !matches!(c, ':' | ',' | '\n' | '\r') && !c.is_control())
        .collect::<String>()
        .trim()
        .to_string()
}

/// Decide how to bring the local account `username` in line with `want`.
/// `shell_ok` says whether a shell is installed and a valid login shell.
pub fn plan(
    username: &str,
    want: &ManagedAccount,
    have: &Accounts,
    shell_ok: impl Fn(&str) -> bool,
) -> Result<Plan, StreamError> {
    if !valid_name(username) {
        return Err(StreamError::new(
            ErrorCode::Invalid,
            format!("invalid account name {username:?}"),
        ));
    }
    if want.uid < MIN_GID || want.gid < MIN_GID || want.uid == 65534 || want.gid == 65534 {
        return Err(StreamError::new(
            ErrorCode::Invalid,
            format!(
                "refusing to manage {username} with UID {} / GID {}: managed identities start at {MIN_GID}",
                want.uid, want.gid
            ),
        ));
    }
    let shell = if shell_ok(&want.shell) {
        want.shell.clone()
    } else {
        FALLBACK_SHELL.to_string()
    };
    let comment = comment_for(&want.full_name);
    let mut p = Plan::default();

    // The account itself.
    let existing = have.user(username);
    match existing {
        Some(u) if u.uid != want.uid => {
            return Err(conflict(if have.is_managed(username) {
                format!(
                    "the managed account {username} has UID {} on this server, but the person's UID is {}; \
                     remove the local account or fix its UID",
                    u.uid, want.uid
                )
            } else {
                format!(
                    "a local account {username} (UID {}) already exists on this server and is not managed by \
                     Alpacon (the person's UID is {}); refusing to take it over. Remove or rename it, or \
                     give it UID {}",
                    u.uid, want.uid, want.uid
                )
            }))
        }
        Some(_) => {}
        None => {
            if let Some(other) = have.user_by_uid(want.uid) {
                return Err(conflict(format!(
                    "UID {} is already used by the local account {} on this server; cannot create {username}",
                    want.uid, other.name
                )));
            }
        }
    }

    // Its private group.
    match have.group(username) {
        Some(g) if g.gid != want.gid => {
            return Err(conflict(format!(
                "the local group {username} has GID {} on this server, but the person's private group is GID {}",
                g.gid, want.gid
            )))
        }
        Some(_) => {}
        None => {
            if let Some(other) = have.group_by_gid(want.gid) {
                return Err(conflict(format!(
                    "GID {} is already used by the local group {} on this server; cannot create group {username}",
                    want.gid, other.name
                )));
            }
            p.steps.push(Step::CreateGroup {
                name: username.to_string(),
                gid: Some(want.gid),
            });
        }
    }

    // The record / sshd marker group.
    if have.group(MANAGED_GROUP).is_none() {
        p.steps.push(Step::CreateGroup {
            name: MANAGED_GROUP.to_string(),
            gid: None,
        });
    }

    // Supplementary groups: the person's Alpacon groups, minus anything
    // privileged.
    let mut groups: BTreeSet<String> = BTreeSet::new();
    let mut wanted = want.groups.clone();
    wanted.sort();
    wanted.dedup_by(|a, b| a.name == b.name);
    for g in &wanted {
        let skip = |why: String| format!("not joining group {} (GID {}): {why}", g.name, g.gid);
        if !valid_name(&g.name) {
            p.skipped.push(skip("not a valid group name".into()));
            continue;
        }
        if PRIVILEGED_GROUPS.contains(&g.name.as_str()) {
            p.skipped.push(skip(
                "privileged group; managed accounts have no standing sudo".into(),
            ));
            continue;
        }
        if g.name == MANAGED_GROUP || g.name == username {
            p.skipped.push(skip("reserved name".into()));
            continue;
        }
        if g.gid < MIN_GID {
            p.skipped
                .push(skip(format!("GID below {MIN_GID} is a system group")));
            continue;
        }
        match have.group(&g.name) {
            Some(local) if local.gid < MIN_GID => {
                p.skipped.push(skip(format!(
                    "the local group has system GID {}; managed accounts have no standing privileges",
                    local.gid
                )));
                continue;
            }
            Some(local) if local.gid != g.gid => {
                p.skipped.push(skip(format!(
                    "a local group of that name has GID {}",
                    local.gid
                )));
                continue;
            }
            Some(_) => {}
            None => {
                if let Some(other) = have.group_by_gid(g.gid) {
                    p.skipped.push(skip(format!(
                        "the GID is used by the local group {}",
                        other.name
                    )));
                    continue;
                }
                p.steps.push(Step::CreateGroup {
                    name: g.name.clone(),
                    gid: Some(g.gid),
                });
            }
        }
        groups.insert(g.name.clone());
    }
    groups.insert(MANAGED_GROUP.to_string());
    let groups: Vec<String> = groups.into_iter().collect();

    let name = username.to_string();
    match existing {
        None => p.steps.push(Step::CreateUser {
            name,
            uid: want.uid,
            gid: want.gid,
            shell,
            comment,
            groups,
        }),
        Some(u) => {
            if u.gid != want.gid {
                p.steps.push(Step::SetPrimaryGroup {
                    name: name.clone(),
                    gid: want.gid,
                });
            }
            if have.supplementary(username) != groups {
                p.steps.push(Step::SetGroups {
                    name: name.clone(),
                    groups,
                });
            }
            if u.shell != shell {
                p.steps.push(Step::SetShell {
                    name: name.clone(),
                    shell,
                });
            }
            if !comment.is_empty() && u.gecos != comment {
                p.steps.push(Step::SetComment {
                    name: name.clone(),
                    comment,
                });
            }
            match have.shadow(username) {
                Some(s) => {
                    if !password_locked(&s.password) {
                        p.steps.push(Step::LockPassword { name: name.clone() });
                    }
                    if s.expire.is_some() {
                        p.steps.push(Step::Unexpire { name });
                    }
                }
                // No shadow entry: the password (if any) is in passwd;
                // lock it through usermod, which creates the entry.
                None => p.steps.push(Step::LockPassword { name }),
            }
        }
    }
    Ok(p)
}

/// A password field no password can match: `!…` (locked) or `*`.
pub fn password_locked(field: &str) -> bool {
    field.starts_with('!') || field.starts_with('*')
}

/// What to do with a `LockAccount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockPlan {
    /// Lock (`usermod -L -e 1`) and end the account's processes.
    Lock,
    /// End the account's processes and `userdel` it (home kept).
    Remove,
    /// Nothing to do (the reason, for the log).
    Nothing(String),
}

pub fn plan_lock(username: &str, uid: u32, remove: bool, have: &Accounts) -> LockPlan {
    let Some(u) = have.user(username) else {
        return LockPlan::Nothing(format!("no local account {username}"));
    };
    if u.uid != uid {
        return LockPlan::Nothing(format!(
            "the local account {username} has UID {}, not {uid}: not the managed account",
            u.uid
        ));
    }
    if !have.is_managed(username) {
        return LockPlan::Nothing(format!(
            "the local account {username} is not managed by Alpacon"
        ));
    }
    if remove {
        LockPlan::Remove
    } else {
        LockPlan::Lock
    }
}

// ---- I/O -----------------------------------------------------------------

/// Serializes every change to the account database made by this agent.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn failed(detail: String) -> StreamError {
    StreamError::new(ErrorCode::ProvisionFailed, detail)
}

/// Make sure the managed account of `account` (if it has one) exists and
/// matches before an operation runs as it. A no-op for unmanaged accounts,
/// and when the agent is not root (it could not switch to the account
/// anyway; `RunAs::resolve` says so).
pub async fn ensure_account(account: &Account) -> Result<(), StreamError> {
    match &account.managed {
        Some(m) => ensure(&account.username, m).await,
        None => Ok(()),
    }
}

/// See [`ensure_account`].
pub async fn ensure(username: &str, want: &ManagedAccount) -> Result<(), StreamError> {
    if !nix::unistd::geteuid().is_root() {
        debug!(
            user = username,
            "not root: cannot provision managed accounts"
        );
        return Ok(());
    }
    let _serial = LOCK.lock().await;
    let username = username.to_string();
    let want = want.clone();
    tokio::task::spawn_blocking(move || ensure_blocking(&username, &want))
        .await
        .map_err(|e| failed(format!("provisioning task failed: {e}")))?
}

fn read(path: &str) -> Result<String, StreamError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(failed(format!("cannot read {path}: {e}"))),
    }
}

/// The local account files as they are now.
pub fn snapshot() -> Result<Accounts, StreamError> {
    Ok(Accounts::parse(
        &read("/etc/passwd")?,
        &read("/etc/group")?,
        &read("/etc/shadow")?,
    ))
}

/// Whether `shell` is installed and a valid login shell (listed in
/// `/etc/shells` when that file exists).
fn shell_installed(shell: &str) -> bool {
    let p = Path::new(shell);
    if !p.is_absolute() || !p.is_file() {
        return false;
    }
    match std::fs::read_to_string("/etc/shells") {
        Ok(list) => list
            .lines()
            .map(str::trim)
            .any(|l| !l.starts_with('#') && l == shell),
        Err(_) => true,
    }
}

fn ensure_blocking(username: &str, want: &ManagedAccount) -> Result<(), StreamError> {
    let have = snapshot()?;
    // An account known to NSS (LDAP, sssd) but not in /etc/passwd: useradd
    // would shadow it with a local twin.
    if have.user(username).is_none() {
        if let Ok(Some(u)) = nix::unistd::User::from_name(username) {
            if u.uid.as_raw() != want.uid {
                return Err(conflict(format!(
                    "an account {username} (UID {}) already exists in this server's user directory and is \
                     not managed by Alpacon (the person's UID is {}); refusing to take it over",
                    u.uid, want.uid
                )));
            }
        }
    }
    let plan = plan(username, want, &have, shell_installed)?;
    for s in &plan.skipped {
        warn!(user = username, "{s}");
    }
    for step in &plan.steps {
        info!(user = username, "provisioning: {step:?}");
        run_step(step)?;
    }
    let after = snapshot()?;
    let Some(u) = after.user(username) else {
        return Err(failed(format!(
            "the account {username} does not exist after provisioning"
        )));
    };
    let home = PathBuf::from(&u.home);
    ensure_home(&home, u.uid, u.gid);
    if let Err(e) = empty_authorized_keys(&home) {
        warn!(user = username, "cannot reset ~/.ssh/authorized_keys: {e}");
    }
    ensure_sshd_dropin();
    Ok(())
}

fn tool(program: &str, args: &[&str]) -> Result<(), StreamError> {
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", TOOL_PATH)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(failed(format!(
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn run_step(step: &Step) -> Result<(), StreamError> {
    match step {
        Step::CreateGroup { name, gid: Some(g) } => tool("groupadd", &["-g", &g.to_string(), name]),
        Step::CreateGroup { name, gid: None } => tool("groupadd", &["-r", name]),
        Step::CreateUser {
            name,
            uid,
            gid,
            shell,
            comment,
            groups,
        } => {
            let (uid, gid, groups) = (uid.to_string(), gid.to_string(), groups.join(","));
            let mut args = vec!["-m", "-u", &uid, "-g", &gid, "-s", shell, "-G", &groups];
            if !comment.is_empty() {
                args.extend(["-c", comment]);
            }
            args.push(name);
            tool("useradd", &args)?;
            // useradd leaves the password locked (`!`); make sure of it.
            match snapshot()?.shadow(name) {
                Some(s) if password_locked(&s.password) => Ok(()),
                _ => tool("usermod", &["-L", name]),
            }
        }
        Step::SetPrimaryGroup { name, gid } => tool("usermod", &["-g", &gid.to_string(), name]),
        Step::SetGroups { name, groups } => tool("usermod", &["-G", &groups.join(","), name]),
        Step::SetShell { name, shell } => tool("usermod", &["-s", shell, name]),
        Step::SetComment { name, comment } => tool("usermod", &["-c", comment, name]),
        Step::LockPassword { name } => tool("usermod", &["-L", name]),
        Step::Unexpire { name } => tool("usermod", &["-e", "", name]),
    }
}

/// An adopted account, or one whose home was removed, gets an empty home.
fn ensure_home(home: &Path, uid: u32, gid: u32) {
    if home.as_os_str().is_empty() || home == Path::new("/") || home.exists() {
        return;
    }
    use std::os::unix::fs::DirBuilderExt;
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(home)
        .and_then(|()| std::os::unix::fs::chown(home, Some(uid), Some(gid)));
    if let Err(e) = made {
        warn!("cannot create home directory {}: {e}", home.display());
    }
}

/// `~/.ssh` root-owned 0755 and `~/.ssh/authorized_keys` an empty root-owned
/// 0644 file, made fresh on every sync. Works on file descriptors opened
/// without following symlinks: the home belongs to the account, which must
/// not be able to point us at another file.
fn empty_authorized_keys(home: &Path) -> nix::Result<()> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{fchmod, mkdirat, Mode};
    use nix::unistd::{close, fchown, unlinkat, Gid, Uid, UnlinkatFlags};
    use std::os::fd::{FromRawFd, OwnedFd};

    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let h = open(home, dir_flags, Mode::empty())?;
    // SAFETY: `open` returned a new descriptor we own.
    let h = unsafe { OwnedFd::from_raw_fd(h) };
    use std::os::fd::AsRawFd;
    let hfd = h.as_raw_fd();
    let ssh = match openat(Some(hfd), ".ssh", dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::Error::ENOENT) => {
            mkdirat(Some(hfd), ".ssh", Mode::from_bits_truncate(0o755))?;
            openat(Some(hfd), ".ssh", dir_flags, Mode::empty())?
        }
        Err(nix::Error::ENOTDIR | nix::Error::ELOOP) => {
            // A symlink or a file named .ssh: replace it with our directory.
            unlinkat(Some(hfd), ".ssh", UnlinkatFlags::NoRemoveDir)?;
            mkdirat(Some(hfd), ".ssh", Mode::from_bits_truncate(0o755))?;
            openat(Some(hfd), ".ssh", dir_flags, Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    // SAFETY: a new descriptor we own.
    let ssh = unsafe { OwnedFd::from_raw_fd(ssh) };
    let sfd = ssh.as_raw_fd();
    fchown(sfd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))?;
    fchmod(sfd, Mode::from_bits_truncate(0o755))?;
    match unlinkat(Some(sfd), "authorized_keys", UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let f = openat(
        Some(sfd),
        "authorized_keys",
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    let r = fchown(f, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
        .and_then(|()| fchmod(f, Mode::from_bits_truncate(0o644)));
    let _ = close(f);
    r
}

/// Writes the sshd drop-in when sshd has a drop-in directory and the file
/// is not there yet (or differs), then asks a running sshd to reload.
fn ensure_sshd_dropin() {
    if !Path::new(SSHD_DROPIN_DIR).is_dir() {
        return;
    }
    if std::fs::read_to_string(SSHD_DROPIN).ok().as_deref() == Some(SSHD_DROPIN_TEXT) {
        return;
    }
    if let Err(e) =
        crate::config::write_file_atomic(Path::new(SSHD_DROPIN), SSHD_DROPIN_TEXT.as_bytes(), 0o644)
    {
        warn!("cannot write {SSHD_DROPIN}: {e:#}");
        return;
    }
    info!("wrote {SSHD_DROPIN}: managed accounts cannot log in with SSH");
    reload_sshd();
}

/// SIGHUP to the sshd named by its pid file, if it is running.
fn reload_sshd() {
    for pidfile in ["/run/sshd.pid", "/var/run/sshd.pid"] {
        let Ok(text) = std::fs::read_to_string(pidfile) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.trim().starts_with("sshd") {
            continue;
        }
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        ) {
            Ok(()) => info!("asked sshd (pid {pid}) to reload its configuration"),
            Err(e) => warn!("cannot reload sshd (pid {pid}): {e}"),
        }
        return;
    }
    debug!("sshd is not running; nothing to reload");
}

/// Kill every process running as `uid` (best effort).
fn kill_processes(uid: u32) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    use std::os::unix::fs::MetadataExt;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::metadata(e.path()).is_ok_and(|m| m.uid() == uid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The gateway's `LockAccount`: lock or remove the managed account. Returns
/// whether the account was removed.
pub async fn lock(username: &str, uid: u32, remove: bool) -> Result<bool, StreamError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(failed(
            "the agent is not root and cannot lock accounts".into(),
        ));
    }
    let _serial = LOCK.lock().await;
    let username = username.to_string();
    tokio::task::spawn_blocking(move || {
        let have = snapshot()?;
        match plan_lock(&username, uid, remove, &have) {
            LockPlan::Nothing(why) => {
                info!(user = %username, "account lock: nothing to do: {why}");
                Ok(false)
            }
            LockPlan::Lock => {
                tool("usermod", &["-L", "-e", "1", &username])?;
                kill_processes(uid);
                info!(user = %username, uid, "managed account locked");
                Ok(false)
            }
            LockPlan::Remove => {
                // Lock first: should userdel fail, the account is unusable.
                tool("usermod", &["-L", "-e", "1", &username])?;
                kill_processes(uid);
                tool("userdel", &[&username])?;
                info!(user = %username, uid, "managed account removed (home kept)");
                Ok(true)
            }
        }
    })
    .await
    .map_err(|e| failed(format!("lock task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use alpacon_proto::ManagedGroup;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        bob:x:1000:1000:Bob:/home/bob:/bin/bash\n\
        alice:x:20001:20001:Alice:/home/alice:/bin/bash\n";
    const GROUP: &str = "root:x:0:\n\
        sudo:x:27:bob\n\
        docker:x:999:\n\
        bob:x:1000:\n\
        alice:x:20001:\n\
        web:x:30001:alice\n\
        alpacon-managed:x:998:alice\n";
    const SHADOW: &str = "root:*:19000:0:99999:7:::\n\
        bob:$y$hash:19000:0:99999:7:::\n\
        alice:!:19000:0:99999:7:::\n";

    fn have() -> Accounts {
        Accounts::parse(PASSWD, GROUP, SHADOW)
    }

    fn want(uid: u32, groups: &[(&str, u32)]) -> ManagedAccount {
        ManagedAccount {
            uid,
            gid: uid,
            shell: "/bin/bash".into(),
            groups: groups
                .iter()
                .map(|(n, g)| ManagedGroup {
                    name: n.to_string(),
                    gid: *g,
                })
                .collect(),
            full_name: "Carol C".into(),
        }
    }

    fn any_shell(_: &str) -> bool {
        true
    }

    #[test]
    fn parses_the_account_files() {
        let h = have();
        assert_eq!(h.user("alice").unwrap().uid, 20001);
        assert_eq!(h.group("web").unwrap().members, vec!["alice"]);
        assert!(h.is_managed("alice"));
        assert!(!h.is_managed("bob"));
        assert_eq!(h.supplementary("alice"), vec!["alpacon-managed", "web"]);
        assert_eq!(h.shadow("bob").unwrap().password, "$y$hash");
        assert_eq!(h.shadow("bob").unwrap().expire, None);
        let h = Accounts::parse("# c\n+nis\nbad\n", "x:y:notanumber:\n", "a:!:1:0:9:7::1:\n");
        assert!(h.users.is_empty() && h.groups.is_empty());
        assert_eq!(h.shadow("a").unwrap().expire, Some(1));
    }

    #[test]
    fn new_account_gets_private_group_groups_and_the_marker() {
        let p = plan(
            "carol",
            &want(20002, &[("web", 30001), ("ops", 30002)]),
            &have(),
            any_shell,
        )
        .unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::CreateGroup {
                    name: "carol".into(),
                    gid: Some(20002)
                },
                Step::CreateGroup {
                    name: "ops".into(),
                    gid: Some(30002)
                },
                Step::CreateUser {
                    name: "carol".into(),
                    uid: 20002,
                    gid: 20002,
                    shell: "/bin/bash".into(),
                    comment: "Carol C".into(),
                    groups: vec!["alpacon-managed".into(), "ops".into(), "web".into()],
                },
            ]
        );
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn marker_group_is_created_once() {
        let h = Accounts::parse(PASSWD, "root:x:0:\n", SHADOW);
        let p = plan("carol", &want(20002, &[]), &h, any_shell).unwrap();
        assert!(p.steps.contains(&Step::CreateGroup {
            name: MANAGED_GROUP.into(),
            gid: None
        }));
    }

    #[test]
    fn missing_shell_falls_back_to_sh() {
        let p = plan("carol", &want(20002, &[]), &have(), |s| s == "/bin/sh").unwrap();
        assert!(matches!(&p.steps[1], Step::CreateUser { shell, .. } if shell == "/bin/sh"));
    }

    #[test]
    fn privileged_and_system_groups_are_skipped() {
        let p = plan(
            "carol",
            &want(
                20002,
                &[
                    ("sudo", 30010),
                    ("wheel", 30011),
                    ("docker", 30012), // exists locally with GID 999
                    ("low", 500),
                    ("alpacon-managed", 30013),
                    ("carol", 30014),
                    ("Bad Name", 30015),
                    ("bob", 30016),  // exists locally with GID 1000
                    ("taken", 1000), // GID used by group bob
                ],
            ),
            &have(),
            any_shell,
        )
        .unwrap();
        assert_eq!(p.skipped.len(), 9, "{:#?}", p.skipped);
        let Some(Step::CreateUser { groups, .. }) = p.steps.last() else {
            panic!("{:?}", p.steps)
        };
        assert_eq!(groups, &vec!["alpacon-managed".to_string()]);
        assert_eq!(p.steps.len(), 2); // private group + user
    }

    #[test]
    fn existing_unmanaged_account_with_other_uid_is_a_conflict() {
        let e = plan("bob", &want(20003, &[]), &have(), any_shell).unwrap_err();
        assert_eq!(e.code, ErrorCode::AccountConflict);
        assert!(e.detail.contains("not managed by Alpacon"), "{}", e.detail);
        assert!(e.detail.contains("UID 1000"), "{}", e.detail);
        // The UID belongs to someone else.
        let e = plan("dave", &want(1000, &[]), &have(), any_shell).unwrap_err();
        assert_eq!(e.code, ErrorCode::AccountConflict);
        assert!(
            e.detail.contains("used by the local account bob"),
            "{}",
            e.detail
        );
        // The private GID belongs to another group.
        let h = Accounts::parse(PASSWD, "ops:x:20009:\n", SHADOW);
        let e = plan("dave", &want(20009, &[]), &h, any_shell).unwrap_err();
        assert_eq!(e.code, ErrorCode::AccountConflict);
        // A managed account whose UID moved is a conflict too.
        let e = plan("alice", &want(20004, &[]), &have(), any_shell).unwrap_err();
        assert_eq!(e.code, ErrorCode::AccountConflict);
        assert!(e.detail.contains("managed account"), "{}", e.detail);
    }

    #[test]
    fn an_account_with_the_same_uid_is_adopted() {
        let p = plan("bob", &want(1000, &[]), &have(), any_shell).unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::SetGroups {
                    name: "bob".into(),
                    groups: vec!["alpacon-managed".into()],
                },
                Step::SetComment {
                    name: "bob".into(),
                    comment: "Carol C".into()
                },
                Step::LockPassword { name: "bob".into() },
            ]
        );
    }

    #[test]
    fn in_sync_account_needs_nothing() {
        let mut w = want(20001, &[("web", 30001)]);
        w.full_name = "Alice".into();
        let p = plan("alice", &w, &have(), any_shell).unwrap();
        assert_eq!(p, Plan::default());
        // An empty full name leaves the comment alone.
        w.full_name = String::new();
        assert_eq!(
            plan("alice", &w, &have(), any_shell).unwrap(),
            Plan::default()
        );
    }

    #[test]
    fn changes_are_synced() {
        let mut w = want(20001, &[("ops", 30002)]);
        w.shell = "/bin/zsh".into();
        w.full_name = "Alice".into();
        let shadow = "alice:$6$pw:19000:0:99999:7::1:\n";
        let h = Accounts::parse(PASSWD, GROUP, shadow);
        let p = plan("alice", &w, &h, any_shell).unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::CreateGroup {
                    name: "ops".into(),
                    gid: Some(30002)
                },
                Step::SetGroups {
                    name: "alice".into(),
                    groups: vec!["alpacon-managed".into(), "ops".into()],
                },
                Step::SetShell {
                    name: "alice".into(),
                    shell: "/bin/zsh".into()
                },
                Step::LockPassword {
                    name: "alice".into()
                },
                Step::Unexpire {
                    name: "alice".into()
                },
            ]
        );
    }

    #[test]
    fn refuses_system_identities_and_bad_names() {
        assert_eq!(
            plan("carol", &want(0, &[]), &have(), any_shell)
                .unwrap_err()
                .code,
            ErrorCode::Invalid
        );
        assert_eq!(
            plan("carol", &want(65534, &[]), &have(), any_shell)
                .unwrap_err()
                .code,
            ErrorCode::Invalid
        );
        assert_eq!(
            plan("-o", &want(20002, &[]), &have(), any_shell)
                .unwrap_err()
                .code,
            ErrorCode::Invalid
        );
    }

    #[test]
    fn comments_cannot_break_the_passwd_format() {
        assert_eq!(comment_for("A:B,C\nD"), "ABCD");
        assert_eq!(comment_for("  Zoë  "), "Zoë");
    }

    #[test]
    fn lock_acts_only_on_our_accounts() {
        let h = have();
        assert_eq!(plan_lock("alice", 20001, false, &h), LockPlan::Lock);
        assert_eq!(plan_lock("alice", 20001, true, &h), LockPlan::Remove);
        assert!(matches!(
            plan_lock("alice", 1, false, &h),
            LockPlan::Nothing(_)
        ));
        assert!(matches!(
            plan_lock("bob", 1000, true, &h),
            LockPlan::Nothing(_)
        ));
        assert!(matches!(
            plan_lock("zed", 20001, true, &h),
            LockPlan::Nothing(_)
        ));
    }
}
