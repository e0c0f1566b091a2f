//! The login state: `config.json` in the user's config directory.
//!
//! It holds a credential, so it is written 0600 in a 0700 directory, and
//! atomically (temp file + rename) so a crash never leaves half a file.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::error::CliError;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// API base, `scheme://host[:port]` without a trailing slash.
    pub url: String,
    /// Workspace name from the login URL; shown to the user only.
    #[serde(default)]
    pub workspace: Option<String>,
    pub token: String,
    /// Absolute path of the CA certificate that signs the gateway's cert.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
    /// The work session later commands run in (`alpacon work-session use`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_session: Option<String>,
}

// Hand-written so that a stray `{:?}` never prints the credential.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("workspace", &self.workspace)
            .field("token", &"<redacted>")
            .field("ca_cert", &self.ca_cert)
            .field("insecure", &self.insecure)
            .field("work_session", &self.work_session)
            .finish()
    }
}

impl Config {
    /// The API base as a URL ending in `/`, ready for `join`.
    pub fn base_url(&self) -> Result<Url> {
        Url::parse(&format!("{}/", self.url.trim_end_matches('/')))
            .with_context(|| format!("invalid gateway URL {:?} in the config", self.url))
    }

    /// The URL as the user knows it, workspace included.
    pub fn display_url(&self) -> String {
        display_url(&self.url, self.workspace.as_deref())
    }

    /// Session keys (from `login -u`) can be revoked with `logout`; API
    /// tokens are managed with `alpacon token`.
    pub fn is_session_key(&self) -> bool {
        self.token.starts_with("alpses-")
    }
}

pub fn display_url(base: &str, workspace: Option<&str>) -> String {
    match workspace {
        Some(ws) => format!("{}/{ws}", base.trim_end_matches('/')),
        None => base.trim_end_matches('/').to_string(),
    }
}

/// Split a login URL into the API base (`scheme://host[:port]`) and the
/// workspace (first path segment, if any). A bare `host:port` means https.
pub fn parse_gateway_url(input: &str) -> Result<(String, Option<String>)> {
    let input = input.trim();
    let with_scheme = if input.contains("://") {
        input.to_string()
    } else {
        format!("https://{input}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| anyhow!("invalid URL {input:?}: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(CliError::Usage(format!(
            "invalid URL {input:?}: the scheme must be https (or http)"
        ))
        .into());
    }
    let has_host = matches!(url.host_str(), Some(h) if !h.is_empty());
    if !has_host {
        return Err(CliError::Usage(format!("invalid URL {input:?}: no host")).into());
    }
    let workspace = url
        .path_segments()
        .and_then(|mut segs| segs.find(|s| !s.is_empty()))
        .map(str::to_string);
    // The origin omits default ports and never has a trailing slash.
    Ok((url.origin().ascii_serialization(), workspace))
}

/// `--config`, else `$ALPACON_CONFIG` (handled by clap), else the default.
pub fn default_path() -> Result<PathBuf> {
    let dir = dirs::config_dir()
        .ok_or_else(|| anyhow!("cannot find the user's config directory; pass --config FILE"))?;
    Ok(dir.join("alpacon").join("config.json"))
}

/// Load the config; a missing file means "not logged in".
pub fn load(path: &Path) -> Result<Config> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(CliError::NotLoggedIn.into()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid alpacon config; run `alpacon login` again",
            path.display()
        )
    })
}

pub fn save(path: &Path, config: &Config) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    // tempfile creates the file 0600 on unix, so the token is never readable
    // by others, not even for a moment.
    let mut tmp = tempfile::Builder::new()
        .prefix(".alpacon-config")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(config)?;
    text.push('\n');
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Delete the config; `Ok(false)` if there was none.
pub fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting {}", path.display())),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            url: "https://gw.example:8443".into(),
            workspace: Some("ops".into()),
            token: "alpses-secret".into(),
            ca_cert: Some("/data/tls/ca.crt".into()),
            insecure: false,
            work_session: None,
        }
    }

    #[test]
    fn parses_workspace_from_url() {
        assert_eq!(
            parse_gateway_url("https://host:8443/my-workspace").unwrap(),
            ("https://host:8443".into(), Some("my-workspace".into()))
        );
        assert_eq!(
            parse_gateway_url("https://host:8443/ws/extra/").unwrap(),
            ("https://host:8443".into(), Some("ws".into()))
        );
        assert_eq!(
            parse_gateway_url("https://host:8443/").unwrap(),
            ("https://host:8443".into(), None)
        );
        assert_eq!(
            parse_gateway_url("https://host:443").unwrap(),
            ("https://host".into(), None)
        );
        assert_eq!(
            parse_gateway_url(" 127.0.0.1:8443 ").unwrap(),
            ("https://127.0.0.1:8443".into(), None)
        );
        assert_eq!(
            parse_gateway_url("http://[::1]:8080/w?x=1").unwrap(),
            ("http://[::1]:8080".into(), Some("w".into()))
        );
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(parse_gateway_url("ftp://host").is_err());
        assert!(parse_gateway_url("https://").is_err());
        assert!(parse_gateway_url("not a url at all").is_err());
    }

    #[test]
    fn display_url_includes_workspace() {
        assert_eq!(sample().display_url(), "https://gw.example:8443/ops");
        assert_eq!(display_url("https://gw/", None), "https://gw");
        assert_eq!(
            sample().base_url().unwrap().as_str(),
            "https://gw.example:8443/"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", sample()).contains("secret"));
    }

    #[cfg(unix)]
    #[test]
    fn saves_0600_in_0700_dir_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("alpacon").join("config.json");
        save(&path, &sample()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(load(&path).unwrap(), sample());

        // Overwriting keeps 0600 and leaves no temp files behind.
        let mut other = sample();
        other.token = "alpat-x".into();
        save(&path, &other).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load(&path).unwrap().token, "alpat-x");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );

        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
    }

    #[test]
    fn missing_config_means_not_logged_in() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load(&tmp.path().join("nope.json")).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<CliError>(),
            Some(CliError::NotLoggedIn)
        ));
    }

    #[test]
    fn session_keys_are_recognised() {
        assert!(sample().is_session_key());
        let mut c = sample();
        c.token = "alpat-abc".into();
        assert!(!c.is_session_key());
    }
}
