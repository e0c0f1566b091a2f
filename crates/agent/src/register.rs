//! `alpamon register` and `alpamon unregister`.
//!
//! Registration makes a fresh Ed25519 key pair; only the public key goes to
//! the gateway (with a registration token), the private key never leaves
//! this machine. Nothing is written unless the gateway accepted us.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::config::{self, write_file_atomic, Config, LinkConfig};

#[derive(Debug, Clone)]
pub struct RegisterArgs {
    pub url: String,
    pub token: String,
    pub name: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub config: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub force: bool,
}

#[derive(Serialize)]
struct RegisterRequest<'a> {
    token: &'a str,
    name: &'a str,
    public_key: String,
}

#[derive(Deserialize)]
struct Registered {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: String,
    detail: String,
}

/// Register with the gateway and write key, CA certificate and config.
/// Errors read well after "registration failed: ".
pub async fn register(args: RegisterArgs) -> anyhow::Result<Config> {
    let url = args.url.trim_end_matches('/').to_string();
    config::ws_url(&url)?;
    if args.config.exists() && !args.force {
        bail!(
            "{} already exists: this server is already registered (use --force to register it again)",
            args.config.display()
        );
    }
    let name = match args.name {
        Some(n) if !n.trim().is_empty() => n.trim().to_string(),
        Some(_) => bail!("--name must not be empty"),
        None => crate::sysinfo::hostname(),
    };
    let ca_pem = match &args.ca_cert {
        Some(p) => {
            let pem = std::fs::read(p)
                .with_context(|| format!("cannot read the CA certificate {}", p.display()))?;
            crate::tls::parse_certs(&pem)
                .with_context(|| format!("invalid CA certificate {}", p.display()))?;
            Some(pem)
        }
        None => None,
    };

    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let tls = crate::tls::client_config(args.ca_cert.as_deref())?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .user_agent(format!("alpamon/{}", crate::VERSION))
        .build()
        .context("cannot set up the HTTP client")?;
    let endpoint = format!("{url}/api/servers/register/");
    let resp = client
        .post(&endpoint)
        .json(&RegisterRequest {
            token: &args.token,
            name: &name,
            public_key: STANDARD.encode(key.verifying_key().as_bytes()),
        })
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if !status.is_success() {
        if let Ok(e) = serde_json::from_slice::<ApiError>(&body) {
            tracing::debug!(code = %e.code, "registration refused");
            bail!("{}", e.detail);
        }
        let text = String::from_utf8_lossy(&body);
        bail!("the gateway answered {status}: {}", text.trim());
    }
    let reg: Registered = serde_json::from_slice(&body)
        .with_context(|| format!("unexpected answer from {endpoint}"))?;

    // Accepted: now write everything.
    let dir = config::config_dir(&args.config);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_file = dir.join("agent.key");
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow!("cannot encode the key: {e}"))?;
    write_file_atomic(&key_file, pem.as_bytes(), 0o600)?;
    let ca_cert = match ca_pem {
        Some(pem) => {
            let p = dir.join("ca.crt");
            write_file_atomic(&p, &pem, 0o644)?;
            Some(p)
        }
        None => None,
    };
    let cfg = Config {
        url,
        server_id: reg.id,
        name: reg.name,
        key_file: absolute(&key_file),
        ca_cert: ca_cert.map(|p| absolute(&p)),
        data_dir: absolute(
            &args
                .data_dir
                .unwrap_or_else(|| config::default_data_dir(&args.config)),
        ),
        link: LinkConfig::default(),
    };
    cfg.save(&args.config)?;
    Ok(cfg)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Remove this agent's key and configuration (and the CA certificate that
/// registration copied beside them). Returns the removed paths.
pub fn unregister(config_path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let cfg = Config::load(config_path)?;
    let mut removed = Vec::new();
    let mut paths = vec![cfg.key_file.clone()];
    if let Some(ca) = &cfg.ca_cert {
        // Only the copy registration made; a CA file elsewhere is not ours.
        let ours = absolute(&config::config_dir(config_path)).join("ca.crt");
        if absolute(ca) == ours {
            paths.push(ca.clone());
        }
    }
    paths.push(config_path.to_path_buf());
    for p in paths {
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("cannot remove {}: {e}", p.display())),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::DecodePrivateKey;

    #[test]
    fn key_pem_roundtrip() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let back = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        assert_eq!(
            STANDARD
                .decode(STANDARD.encode(key.verifying_key().as_bytes()))
                .unwrap()
                .len(),
            32
        );
    }

    #[tokio::test]
    async fn refuses_existing_config_and_writes_nothing_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("alpamon.toml");
        std::fs::write(&cfg, "x").unwrap();
        let args = RegisterArgs {
            url: "https://127.0.0.1:1".into(),
            token: "t".into(),
            name: Some("n".into()),
            ca_cert: None,
            config: cfg.clone(),
            data_dir: None,
            force: false,
        };
        let e = register(args.clone()).await.unwrap_err().to_string();
        assert!(e.contains("already registered"), "{e}");

        // Unreachable gateway: an error, and no key or config written.
        std::fs::remove_file(&cfg).unwrap();
        let e = register(args).await.unwrap_err().to_string();
        assert!(e.contains("cannot reach"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn unregister_removes_key_config_and_ca() {
        let d = tempfile::tempdir().unwrap();
        let cfgp = d.path().join("alpamon.toml");
        let key = d.path().join("agent.key");
        let ca = d.path().join("ca.crt");
        std::fs::write(&key, "k").unwrap();
        std::fs::write(&ca, "c").unwrap();
        Config {
            url: "https://h".into(),
            server_id: "s".into(),
            name: "n".into(),
            key_file: key.clone(),
            ca_cert: Some(ca.clone()),
            data_dir: d.path().join("data"),
            link: LinkConfig::default(),
        }
        .save(&cfgp)
        .unwrap();
        let removed = unregister(&cfgp).unwrap();
        assert_eq!(removed.len(), 3);
        assert!(!key.exists() && !ca.exists() && !cfgp.exists());
        assert!(unregister(&cfgp).is_err());
    }
}
