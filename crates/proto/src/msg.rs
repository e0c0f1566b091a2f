//! Message types carried in frames.
//!
//! Control messages (stream 0) and the JSON payloads of `Open`, `Accept` and
//! `Close` frames. All are externally tagged by a `type` field so that an
//! unknown message from a newer peer is a clean decode error, not a misread.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::version::VersionRange;

/// Control messages, carried in `Frame::Control`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    // ---- handshake -------------------------------------------------------
    /// Gateway → agent, first frame on every connection.
    Challenge {
        #[serde(with = "crate::b64")]
        nonce: Vec<u8>,
        versions: VersionRange,
    },
    /// Agent → gateway: identity proof over `auth::transcript(nonce, server_id)`.
    Auth {
        server_id: String,
        #[serde(with = "crate::b64")]
        signature: Vec<u8>,
        versions: VersionRange,
        agent_version: String,
        system: SystemInfo,
    },
    /// Gateway → agent: authenticated; `version` is what both will speak.
    Welcome {
        version: u16,
        heartbeat_secs: u32,
    },
    /// Gateway → agent: refused; the connection closes after this.
    Reject {
        code: String,
        detail: String,
    },

    // ---- liveness --------------------------------------------------------
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },

    // ---- commands --------------------------------------------------------
    /// Gateway → agent: run a command. Delivered at least once; the agent
    /// deduplicates by `id`.
    RunCommand(CommandSpec),
    /// Agent → gateway: live output (best effort; the durable copy is in
    /// `CommandResult`). `offset` counts bytes since the command started.
    CommandOutput {
        id: String,
        offset: u64,
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// Agent → gateway: the final result. The agent spools it to disk first
    /// and resends it on every (re)connection until it is acknowledged.
    CommandResult(CommandResult),
    /// Gateway → agent: the result is stored; the agent may forget it.
    CommandAck {
        id: String,
    },
    /// Gateway → agent: stop a running command (revocation, user cancel).
    CancelCommand {
        id: String,
        reason: String,
    },

    // ---- managed accounts ----------------------------------------------
    /// Gateway → agent: the person behind a managed account was disabled,
    /// deleted or lost their reach to this server. Lock the account
    /// (`usermod -L -e 1`, end its processes) or, with `remove`, delete it
    /// (`userdel`, home kept). The agent acts only on an account it manages
    /// whose UID is `uid`, and answers `AccountLocked` either way (an
    /// account that is already gone or not ours needs nothing more).
    /// Delivered at least once: idempotent.
    LockAccount {
        username: String,
        uid: u32,
        #[serde(default)]
        remove: bool,
    },
    /// Agent → gateway: the `LockAccount` for `username` is done; `error`
    /// says why it could not be (the gateway retries at the next connection).
    AccountLocked {
        username: String,
        uid: u32,
        #[serde(default)]
        removed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },

    // ---- sudo inside work sessions ---------------------------------------
    /// Gateway → agent: the complete set of sudo grants this server should
    /// have now. The agent keeps one sudoers drop-in per grant (validated
    /// with `visudo -c` before it is installed), removes every other drop-in
    /// of ours, and removes each at its `expires_at_ms` on its own even if
    /// the link is down. Sent on every change and every connection.
    SyncSudo {
        grants: Vec<SudoGrant>,
    },
    /// Agent → gateway: a grant was used (a line of sudo's log).
    SudoUsed {
        grant_id: String,
        username: String,
        /// What sudo logged: `TTY=… ; PWD=… ; USER=root ; COMMAND=…`.
        entry: String,
    },
    /// Agent → gateway: a grant could not be installed.
    SudoFailed {
        grant_id: String,
        error: String,
    },

    // ---- terminals -----------------------------------------------------
    /// Gateway → agent: hang up a terminal now (closed, revoked, expired).
    /// Sent here rather than as `PtyIn::Terminate` on the terminal's own
    /// stream, where it would wait behind input a program is not reading.
    HangUp {
        session: String,
    },
}

impl Control {
    /// The first protocol version with this message: a peer that negotiated
    /// an older one cannot decode it and must not be sent it.
    pub fn since_version(&self) -> u16 {
        match self {
            Control::LockAccount { .. }
            | Control::AccountLocked { .. }
            | Control::SyncSudo { .. }
            | Control::SudoUsed { .. }
            | Control::SudoFailed { .. } => 2,
            Control::HangUp { .. } => 3,
            _ => 1,
        }
    }
}

/// One person's sudo on one server for the life of a work session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudoGrant {
    /// Also the drop-in's name: `/etc/sudoers.d/alpacon-<id>`; plain
    /// `[A-Za-z0-9-]` so it is a valid sudoers.d file name.
    pub id: String,
    pub username: String,
    /// Absolute command paths (with arguments) sudo is limited to; empty
    /// means any command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
}

/// What the agent reports about its machine at every connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    pub id: String,
    /// Run with `/bin/sh -c` semantics.
    pub line: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupname: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Seconds; `None` means the agent's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Set when `username` is the requesting person's own managed account:
    /// the agent creates or updates it before running the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedAccount>,
}

/// The central identity of a person's own account on servers ("connect as
/// yourself"): the agent makes the local account match before an operation
/// runs as it (see the agent's `provision` module). The account's name is the
/// `username` of the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedAccount {
    pub uid: u32,
    /// The private group's GID (equal to `uid`).
    pub gid: u32,
    /// Login shell; the agent falls back to `/bin/sh` if it is not installed.
    pub shell: String,
    /// Supplementary groups: the person's Alpacon groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<ManagedGroup>,
    /// GECOS comment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub full_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ManagedGroup {
    pub name: String,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: String,
    /// Exit status; for a signal death, 128 + signal number (shell style).
    pub exit_code: i32,
    pub elapsed_ms: u64,
    /// Combined stdout and stderr, in order, up to the agent's output cap.
    #[serde(with = "crate::b64")]
    pub output: Vec<u8>,
    /// True when output went past the cap and the tail was dropped.
    #[serde(default)]
    pub truncated: bool,
    /// Set when the command could not run at all (unknown user, spawn
    /// failure, agent restart mid-command); `exit_code` is then -1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StreamError>,
}

/// The request that opens a stream (`Frame::Open`). Streams carry bulk or
/// interactive data with per-stream flow control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Open {
    /// Write a file from the stream's data. `Eof` ends the content; the agent
    /// answers `Close` with `StreamResult::Written`.
    FileWrite {
        path: String,
        #[serde(flatten)]
        account: Account,
        /// Replace an existing file; without it an existing file is an error.
        #[serde(default)]
        overwrite: bool,
        /// Permission bits for a new file (e.g. 0o644); `None` keeps the umask default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// ACL patterns (`glob_match`) the *real* path, symlinks resolved,
        /// must match; empty: no limit. The gateway checks the path it was
        /// given; this closes the way around it through a symlink.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        confine: Vec<String>,
    },
    /// Read a file: the agent answers `Accept` with `StreamInfo::File`, then
    /// streams the content, then `Close` with `StreamResult::Read`.
    FileRead {
        path: String,
        #[serde(flatten)]
        account: Account,
        /// ACL patterns (`glob_match`) the *real* path, symlinks resolved,
        /// must match; empty: no limit. The gateway checks the path it was
        /// given; this closes the way around it through a symlink.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        confine: Vec<String>,
    },
    /// Create a directory (and its parents); answered by `Close`.
    Mkdir {
        path: String,
        #[serde(flatten)]
        account: Account,
        /// ACL patterns (`glob_match`) the *real* path, symlinks resolved,
        /// must match; empty: no limit. The gateway checks the path it was
        /// given; this closes the way around it through a symlink.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        confine: Vec<String>,
    },
    /// Start an interactive terminal: a login shell on a new PTY, as the
    /// account. The agent answers `Accept(StreamInfo::Pty)`, then streams the
    /// PTY's output as `Data` (bytes from offset 0); the gateway sends
    /// [`crate::pty::PtyIn`] messages, one per `Data` frame. The terminal
    /// outlives the stream: if the link drops, it keeps running on the agent
    /// until the gateway re-attaches (`PtyAttach`) or terminates it.
    Pty {
        /// The gateway's session id.
        session: String,
        #[serde(flatten)]
        account: Account,
        rows: u16,
        cols: u16,
    },
    /// Re-attach to a running terminal after a link loss. The agent answers
    /// `Accept(StreamInfo::Pty)` and resumes output at `output_offset` (bytes
    /// the gateway already has), or `Close(Err(NotFound))` if it is gone.
    PtyAttach { session: String, output_offset: u64 },
    /// Describe a path (recursively for directories); answered by `Close`
    /// with `StreamResult::Listing`.
    Stat {
        path: String,
        #[serde(flatten)]
        account: Account,
        #[serde(default)]
        recursive: bool,
        /// ACL patterns (`glob_match`) the *real* path, symlinks resolved,
        /// must match; empty: no limit. The gateway checks the path it was
        /// given; this closes the way around it through a symlink.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        confine: Vec<String>,
    },
}

/// The account an operation runs as on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupname: Option<String>,
    /// Set when `username` is the requesting person's own managed account
    /// (see [`CommandSpec::managed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedAccount>,
}

/// `Frame::Accept` payload: the agent took the stream on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamInfo {
    Ready,
    File {
        size: u64,
        mode: u32,
    },
    /// A terminal: output resumes at `output_offset`; the agent has written
    /// `input_offset` bytes of input to the PTY so far, so the gateway resends
    /// anything after that.
    Pty {
        output_offset: u64,
        input_offset: u64,
    },
}

/// `Frame::Close` payload: how a stream ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Close {
    Ok(StreamResult),
    Err(StreamError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResult {
    Done,
    Written {
        bytes: u64,
        sha256: String,
    },
    Read {
        bytes: u64,
        sha256: String,
    },
    Listing {
        entries: Vec<Entry>,
    },
    /// A terminal's shell ended (exit status, or 128 + signal).
    Exited {
        code: i32,
    },
}

/// One filesystem entry; `path` is relative to the requested path ("" for
/// the path itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A failure reported by the agent, with a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{detail}")]
pub struct StreamError {
    pub code: ErrorCode,
    pub detail: String,
}

impl StreamError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    IsADirectory,
    NotADirectory,
    NoSuchUser,
    NoSuchGroup,
    Invalid,
    Io,
    Cancelled,
    AgentRestarted,
    Timeout,
    Protocol,
    /// A local account of the requested name exists and is not the person's
    /// managed account (another UID, not created by Alpacon): the agent
    /// refuses to take it over.
    AccountConflict,
    /// The managed account could not be created or updated.
    ProvisionFailed,
    /// The real path (symlinks resolved) is outside the token's file ACL.
    OutsideAcl,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::NoSuchUser => "no_such_user",
            ErrorCode::NoSuchGroup => "no_such_group",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Io => "io",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::AgentRestarted => "agent_restarted",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Protocol => "protocol",
            ErrorCode::AccountConflict => "account_conflict",
            ErrorCode::ProvisionFailed => "provision_failed",
            ErrorCode::OutsideAcl => "outside_acl",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_messages_roundtrip() {
        let msgs = vec![
            Control::Challenge {
                nonce: vec![1, 2, 3],
                versions: crate::SUPPORTED,
            },
            Control::Auth {
                server_id: "s".into(),
                signature: vec![9; 64],
                versions: crate::SUPPORTED,
                agent_version: "0.1.0".into(),
                system: SystemInfo::default(),
            },
            Control::Welcome {
                version: 1,
                heartbeat_secs: 15,
            },
            Control::Reject {
                code: "c".into(),
                detail: "d".into(),
            },
            Control::Ping { seq: 1 },
            Control::Pong { seq: 1 },
            Control::RunCommand(CommandSpec {
                id: "c1".into(),
                line: "echo hi; exit 3".into(),
                username: "root".into(),
                groupname: Some("wheel".into()),
                env: [("A".to_string(), "b".to_string())].into(),
                timeout_secs: None,
                managed: None,
            }),
            Control::CommandOutput {
                id: "c1".into(),
                offset: 7,
                data: vec![0xff, 0, b'\n'],
            },
            Control::CommandResult(CommandResult {
                id: "c1".into(),
                exit_code: 3,
                elapsed_ms: 12,
                output: b"hi\n".to_vec(),
                truncated: false,
                error: None,
            }),
            Control::CommandAck { id: "c1".into() },
            Control::CancelCommand {
                id: "c1".into(),
                reason: "revoked".into(),
            },
        ];
        for m in msgs {
            let s = serde_json::to_vec(&m).unwrap();
            assert_eq!(serde_json::from_slice::<Control>(&s).unwrap(), m);
            assert_eq!(m.since_version(), 1, "{m:?}");
        }
    }

    #[test]
    fn run_command_wire_shape_is_stable() {
        let m = Control::RunCommand(CommandSpec {
            id: "x".into(),
            line: "true".into(),
            username: "u".into(),
            groupname: None,
            env: BTreeMap::new(),
            timeout_secs: None,
            managed: None,
        });
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type": "run_command", "id": "x", "line": "true", "username": "u"})
        );
    }

    fn managed() -> ManagedAccount {
        ManagedAccount {
            uid: 20001,
            gid: 20001,
            shell: "/bin/bash".into(),
            groups: vec![ManagedGroup {
                name: "web".into(),
                gid: 30001,
            }],
            full_name: "Alice Example".into(),
        }
    }

    #[test]
    fn managed_account_roundtrips_everywhere() {
        let account = Account {
            username: "alice".into(),
            groupname: None,
            managed: Some(managed()),
        };
        for o in [
            Open::Pty {
                session: "s".into(),
                account: account.clone(),
                rows: 24,
                cols: 80,
            },
            Open::FileWrite {
                path: "/tmp/x".into(),
                account: account.clone(),
                overwrite: false,
                mode: None,
                confine: Vec::new(),
            },
            Open::FileRead {
                path: "/tmp/x".into(),
                account: account.clone(),
                confine: Vec::new(),
            },
            Open::Mkdir {
                path: "/tmp/d".into(),
                account: account.clone(),
                confine: Vec::new(),
            },
            Open::Stat {
                path: "/tmp".into(),
                account: account.clone(),
                recursive: true,
                confine: Vec::new(),
            },
        ] {
            let v = serde_json::to_vec(&o).unwrap();
            assert_eq!(serde_json::from_slice::<Open>(&v).unwrap(), o);
        }
        let msgs = [
            Control::RunCommand(CommandSpec {
                id: "c".into(),
                line: "id".into(),
                username: "alice".into(),
                groupname: None,
                env: BTreeMap::new(),
                timeout_secs: None,
                managed: Some(managed()),
            }),
            Control::LockAccount {
                username: "alice".into(),
                uid: 20001,
                remove: true,
            },
            Control::AccountLocked {
                username: "alice".into(),
                uid: 20001,
                removed: false,
                error: Some("userdel failed".into()),
            },
            Control::AccountLocked {
                username: "alice".into(),
                uid: 20001,
                removed: true,
                error: None,
            },
            Control::SyncSudo { grants: vec![] },
            Control::SyncSudo {
                grants: vec![SudoGrant {
                    id: "g-1".into(),
                    username: "alice".into(),
                    commands: vec!["/usr/bin/systemctl restart auth-svc".into()],
                    expires_at_ms: 1_700_000_000_000,
                }],
            },
            Control::SudoUsed {
                grant_id: "g-1".into(),
                username: "alice".into(),
                entry: "TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/usr/bin/id".into(),
            },
            Control::SudoFailed {
                grant_id: "g-1".into(),
                error: "visudo -c failed".into(),
            },
            Control::HangUp {
                session: "s-1".into(),
            },
        ];
        for m in msgs {
            let s = serde_json::to_vec(&m).unwrap();
            assert_eq!(serde_json::from_slice::<Control>(&s).unwrap(), m);
            // Newer than version 1, except commands.
            let want = match m {
                Control::RunCommand(_) => 1,
                Control::HangUp { .. } => 3,
                _ => 2,
            };
            assert_eq!(m.since_version(), want, "{m:?}");
            assert!(m.since_version() <= crate::PROTOCOL_VERSION);
        }
    }

    #[test]
    fn managed_account_wire_shape_is_backward_compatible() {
        // Old peers never send `managed`: it decodes as None, and None is
        // not sent, so an old agent sees exactly what it knew.
        let old = json!({"type": "file_read", "path": "/x", "username": "root"});
        let o: Open = serde_json::from_value(old.clone()).unwrap();
        assert!(matches!(&o, Open::FileRead { account, .. } if account.managed.is_none()));
        assert_eq!(serde_json::to_value(&o).unwrap(), old);
        let v = serde_json::to_value(Control::RunCommand(CommandSpec {
            id: "x".into(),
            line: "true".into(),
            username: "alice".into(),
            groupname: None,
            env: BTreeMap::new(),
            timeout_secs: None,
            managed: Some(ManagedAccount {
                groups: vec![],
                full_name: String::new(),
                ..managed()
            }),
        }))
        .unwrap();
        assert_eq!(
            v["managed"],
            json!({"uid": 20001, "gid": 20001, "shell": "/bin/bash"})
        );
        // `remove` defaults to a lock.
        let l: Control =
            serde_json::from_value(json!({"type": "lock_account", "username": "a", "uid": 5}))
                .unwrap();
        assert_eq!(
            l,
            Control::LockAccount {
                username: "a".into(),
                uid: 5,
                remove: false
            }
        );
    }

    #[test]
    fn unknown_message_is_an_error() {
        assert!(serde_json::from_value::<Control>(json!({"type": "launch_missiles"})).is_err());
        assert!(serde_json::from_value::<Open>(json!({"type": "file_write"})).is_err());
    }

    #[test]
    fn pty_messages_roundtrip() {
        for o in [
            Open::Pty {
                session: "s".into(),
                account: Account {
                    username: "alice".into(),
                    groupname: None,
                    managed: None,
                },
                rows: 24,
                cols: 80,
            },
            Open::PtyAttach {
                session: "s".into(),
                output_offset: 1 << 40,
            },
        ] {
            let v = serde_json::to_vec(&o).unwrap();
            assert_eq!(serde_json::from_slice::<Open>(&v).unwrap(), o);
        }
        let i = StreamInfo::Pty {
            output_offset: 5,
            input_offset: 7,
        };
        let v = serde_json::to_vec(&i).unwrap();
        assert_eq!(serde_json::from_slice::<StreamInfo>(&v).unwrap(), i);
    }

    #[test]
    fn open_flattens_account() {
        let o = Open::FileWrite {
            path: "/tmp/x".into(),
            account: Account {
                username: "alice".into(),
                groupname: None,
                managed: None,
            },
            overwrite: true,
            mode: Some(0o600),
            confine: Vec::new(),
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["username"], "alice");
        assert_eq!(serde_json::from_value::<Open>(v).unwrap(), o);
    }

    #[test]
    fn close_roundtrips() {
        for c in [
            Close::Ok(StreamResult::Written {
                bytes: 3,
                sha256: "ab".into(),
            }),
            Close::Ok(StreamResult::Listing {
                entries: vec![Entry {
                    path: "a/b".into(),
                    kind: EntryKind::File,
                    size: 1,
                    mode: 0o644,
                }],
            }),
            Close::Err(StreamError::new(ErrorCode::NotFound, "no such file: /x")),
            Close::Ok(StreamResult::Exited { code: 130 }),
        ] {
            let s = serde_json::to_vec(&c).unwrap();
            assert_eq!(serde_json::from_slice::<Close>(&s).unwrap(), c);
        }
    }

    #[test]
    fn error_code_strings_match_serde() {
        for c in [
            ErrorCode::NotFound,
            ErrorCode::PermissionDenied,
            ErrorCode::AlreadyExists,
            ErrorCode::IsADirectory,
            ErrorCode::NotADirectory,
            ErrorCode::NoSuchUser,
            ErrorCode::NoSuchGroup,
            ErrorCode::Invalid,
            ErrorCode::Io,
            ErrorCode::Cancelled,
            ErrorCode::AgentRestarted,
            ErrorCode::Timeout,
            ErrorCode::Protocol,
            ErrorCode::AccountConflict,
            ErrorCode::ProvisionFailed,
            ErrorCode::OutsideAcl,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
        }
    }
}
