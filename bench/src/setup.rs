//! The environment most sections share: one gateway (SQLite), one real
//! agent, the CLI logged in with an API token, and a throwaway sshd.

use std::time::Duration;

use alpacon_e2e::{Agent, AgentOpts, Cli, Gateway};
use anyhow::{Context, Result};

use crate::sshd::Sshd;

pub const SERVER: &str = "bench";

pub struct Env {
    pub gw: Gateway,
    pub agent: Agent,
    pub cli: Cli,
    /// Admin API token (`alpat-…`), as CI would use.
    pub token: String,
    pub sshd: Option<Sshd>,
    /// Why there is no sshd, when there is none.
    pub sshd_missing: Option<String>,
    /// Scratch space for files (copies, terminal output).
    pub work: tempfile::TempDir,
}

impl Env {
    pub fn start() -> Result<Env> {
        let mut gw = Gateway::start().context("starting the gateway")?;
        let agent = Agent::register(&mut gw, SERVER, AgentOpts::default())
            .context("registering the agent")?;
        gw.wait_connected(SERVER, true)
            .with_context(|| format!("agent log:\n{}", agent.log()))?;
        let token = gw.admin_api_token("bench")?;
        let cli = Cli::new()?;
        cli.login_token(&gw, &token)?;
        let (sshd, sshd_missing) = match Sshd::start() {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let work = tempfile::Builder::new().prefix("bench-work-").tempdir()?;
        // Let the agent settle (sysinfo, spool scan) before anything is timed.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Env {
            gw,
            agent,
            cli,
            token,
            sshd,
            sshd_missing,
            work,
        })
    }

    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.gw.ca())?)
    }

    /// An async HTTP client that trusts the gateway's CA.
    pub fn http(&self) -> Result<reqwest::Client> {
        http_client(&self.ca_pem()?)
    }
}

pub fn http_client(ca_pem: &[u8]) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
        .timeout(Duration::from_secs(300))
        .build()?)
}

/// A rustls client config trusting only `ca_pem`, without session
/// resumption (a real agent builds a fresh config for every connection).
pub fn tls_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}
