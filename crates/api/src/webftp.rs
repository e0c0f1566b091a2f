//! File transfer through the agent link (`/api/webftp/...`): uploads and
//! downloads stream, and the agent's sha256 of what it wrote or read is
//! kept with the transfer so the client can compare.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Which file, on which server, as which account (query parameters of the
/// upload, download and stat routes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileTarget {
    /// The server's id or name.
    pub server: String,
    /// An absolute path on the server.
    pub path: String,
    /// The account to act as; absent: the caller's own.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub groupname: Option<String>,
}

/// `POST /api/webftp/upload/` options, beside the [`FileTarget`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadOptions {
    /// Replace an existing file (`true`/`false`, `1`/`0`, `yes`/`no`);
    /// false by default.
    #[serde(default)]
    #[param(value_type = Option<bool>)]
    pub overwrite: Option<String>,
    /// Octal permission bits such as `644` (setuid/setgid only for admins
    /// uploading as a system account); absent: the agent's default.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `GET /api/webftp/stat/` options, beside the [`FileTarget`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatOptions {
    /// List a directory's whole tree (`true`/`false`); false by default.
    #[serde(default)]
    #[param(value_type = Option<bool>)]
    pub recursive: Option<String>,
}

/// A file as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadedFile {
    /// The transfer's id.
    pub id: String,
    /// The server's id.
    pub server: String,
    pub path: String,
    /// The account that owns it.
    pub username: String,
    /// Bytes written.
    pub bytes: u64,
    /// Hex sha256 of what the agent wrote.
    pub sha256: String,
}

/// `POST /api/webftp/mkdir/`: create a directory (and its parents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MakeDirectory {
    /// The server's id or name.
    pub server: String,
    /// An absolute path on the server.
    pub path: String,
    /// The account to act as; absent: the caller's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupname: Option<String>,
}

/// A directory as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DirectoryMade {
    /// The server's id.
    pub server: String,
    pub path: String,
}

/// What a directory entry is (symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl FileKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Relative to the requested path: `""` for the path itself.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (and file-type bits) as `st_mode`.
    pub mode: u32,
}

/// `GET /api/webftp/stat/`: the path itself, and with `recursive` a
/// directory's whole tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileListing {
    /// The requested path.
    pub path: String,
    pub entries: Vec<FileEntry>,
}

/// Which way a transfer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferDirection {
    Upload,
    Download,
}

impl TransferDirection {
    pub const fn as_str(self) -> &'static str {
        match self {
            TransferDirection::Upload => "upload",
            TransferDirection::Download => "download",
        }
    }
}

impl TryFrom<String> for TransferDirection {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "upload" => Ok(TransferDirection::Upload),
            "download" => Ok(TransferDirection::Download),
            _ => Err(format!("unknown transfer direction {s:?}")),
        }
    }
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    Running,
    /// `sha256` is set.
    Completed,
    /// `error` says why.
    Failed,
}

impl TransferStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Running => "running",
            TransferStatus::Completed => "completed",
            TransferStatus::Failed => "failed",
        }
    }
}

impl TryFrom<String> for TransferStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "running" => Ok(TransferStatus::Running),
            "completed" => Ok(TransferStatus::Completed),
            "failed" => Ok(TransferStatus::Failed),
            _ => Err(format!("unknown transfer status {s:?}")),
        }
    }
}

/// A file transfer (`GET /api/webftp/transfers/{id}/`): a download's
/// client reads its `sha256` here once the body has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transfer {
    pub id: String,
    pub server_id: String,
    pub direction: TransferDirection,
    pub path: String,
    /// The account it ran as.
    pub username: String,
    pub status: TransferStatus,
    /// Bytes moved (0 until it completes).
    pub bytes: i64,
    /// Hex sha256 the agent computed over the bytes.
    pub sha256: Option<String>,
    pub error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_mkdir_body_stays_minimal() {
        let b = MakeDirectory {
            server: "web".into(),
            path: "/srv/a".into(),
            username: None,
            groupname: None,
        };
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            serde_json::json!({"server": "web", "path": "/srv/a"})
        );
    }

    #[test]
    fn enums_match_their_stored_names() {
        for d in [TransferDirection::Upload, TransferDirection::Download] {
            assert_eq!(TransferDirection::try_from(d.as_str().to_string()), Ok(d));
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        for s in [
            TransferStatus::Running,
            TransferStatus::Completed,
            TransferStatus::Failed,
        ] {
            assert_eq!(TransferStatus::try_from(s.as_str().to_string()), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for k in [
            FileKind::File,
            FileKind::Dir,
            FileKind::Symlink,
            FileKind::Other,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
