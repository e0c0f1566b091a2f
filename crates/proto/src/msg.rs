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
    },
    /// Read a file: the agent answers `Accept` with `StreamInfo::File`, then
    /// streams the content, then `Close` with `StreamResult::Read`.
    FileRead {
        path: String,
        #[serde(flatten)]
        account: Account,
    },
    /// Create a directory (and its parents); answered by `Close`.
    Mkdir {
        path: String,
        #[serde(flatten)]
        account: Account,
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
    },
}

/// The account an operation runs as on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupname: Option<String>,
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
        });
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type": "run_command", "id": "x", "line": "true", "username": "u"})
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
            },
            overwrite: true,
            mode: Some(0o600),
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
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
        }
    }
}
