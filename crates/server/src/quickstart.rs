//! `alpacon-server quickstart`: the gateway plus a local agent registered
//! against it, ready to use.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::audit::{self, Event};
use crate::config::{Config, Settings};
use crate::db::now_ms;
use crate::gateway::{initial_password_notice, login_line, shutdown_signal, Gateway};
use crate::servers::{create_registration_token, resolve, sanitize_server_name, sh_word};
use crate::{iam, tls};

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let gw = Gateway::start(settings).await?;
    let result = serve_with_agent(&gw).await;
    let stopped = gw.shutdown().await;
    result.and(stopped)
}

async fn serve_with_agent(gw: &Gateway) -> anyhow::Result<()> {
    let cfg = gw.config.clone();
    let alpamon = &cfg.agent_binary;
    if !alpamon.is_file() {
        bail!(
            "the agent binary {} does not exist; build it (`cargo build --release -p alpamon`) \
             or pass --agent-binary PATH",
            alpamon.display()
        );
    }
    let agent_dir = cfg.data_dir.join("agent");
    std::fs::create_dir_all(&agent_dir)
        .with_context(|| format!("cannot create {}", agent_dir.display()))?;
    let agent_cfg = agent_dir.join("alpamon.toml");

    let server_name = if agent_cfg.exists() {
        None
    } else {
        Some(register_agent(gw, alpamon, &agent_cfg).await?)
    };

    let log_path = agent_dir.join("alpamon.log");
    let mut child = spawn_agent(alpamon, &agent_cfg, &log_path)?;

    println!(
        "{}",
        banner(
            &cfg,
            gw.initial_password.as_deref(),
            server_name.as_deref(),
            &log_path
        )
    );

    let result = tokio::select! {
        s = shutdown_signal() => {
            tracing::info!("{s}: stopping the agent and the gateway");
            Ok(())
        }
        status = child.wait() => {
            // Keep the gateway up: the user may still want the API, and the
            // log says why the agent stopped.
            match status {
                Ok(s) => tracing::error!("the local agent exited ({s}); see {}", log_path.display()),
                Err(e) => tracing::error!("waiting for the local agent: {e}"),
            }
            let s = shutdown_signal().await;
            tracing::info!("{s}: stopping the gateway");
            Ok(())
        }
    };
    stop_agent(&mut child).await;
    result
}

/// Registers the local agent with a fresh single-use token. Returns the
/// server name used.
async fn register_agent(gw: &Gateway, alpamon: &Path, agent_cfg: &Path) -> anyhow::Result<String> {
    let cfg = &gw.config;
    let db = &gw.state.db;
    let mut name = sanitize_server_name(&tls::hostname().unwrap_or_else(|| "localhost".into()));
    // A previous quickstart may have registered this name with an agent
    // config since deleted: pick a free variant instead of failing.
    if resolve(db, &name).await.is_ok() {
        let base: String = name.chars().take(56).collect();
        name = format!("{base}-{}", &crate::db::new_id()[..6]);
    }
    let token = create_registration_token(
        db,
        &format!("quickstart-{}", now_ms()),
        None,
        Some(now_ms() + 3_600_000),
        Some(1),
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating a registration token: {}", e.detail))?;
    audit::record(
        db,
        Event::new("registration_token.create")
            .actor_name("quickstart")
            .detail(json!({ "token_id": token.id, "max_uses": 1, "for": name })),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.detail))?;

    let mut cmd = Command::new(alpamon);
    cmd.arg("register")
        .args(["--url", &cfg.public_url])
        .args(["--token", &token.key]);
    if let Some(ca) = &cfg.ca_cert {
        cmd.arg("--ca-cert").arg(ca);
    }
    cmd.arg("--config").arg(agent_cfg).args(["--name", &name]);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} register", alpamon.display()))?;
    if !out.status.success() {
        bail!(
            "`alpamon register` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tracing::info!("registered the local agent as {name:?}");
    Ok(name)
}

fn spawn_agent(alpamon: &Path, agent_cfg: &Path, log_path: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log2 = log.try_clone()?;
    let mut cmd = Command::new(alpamon);
    cmd.arg("run")
        .arg("--config")
        .arg(agent_cfg)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true);
    // If the gateway dies without cleaning up (SIGKILL), the kernel stops
    // the agent too, instead of leaving it orphaned.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {} run", alpamon.display()))
}

async fn stop_agent(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SIGTERM first so the agent can flush its spool and say goodbye.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

fn banner(cfg: &Config, password: Option<&str>, registered: Option<&str>, log: &Path) -> String {
    let pw_file: PathBuf = cfg.data_dir.join(iam::INITIAL_PASSWORD_FILE);
    let mut s = String::from("\nAlpacon is running.\n\n");
    s.push_str(&format!("  console:  {}/\n", cfg.public_url));
    match &cfg.ca_cert {
        Some(ca) => s.push_str(&format!("  CA cert:  {}\n", ca.display())),
        None => s.push_str("  TLS:      operator-provided certificate (--tls-cert)\n"),
    }
    match registered {
        Some(n) => s.push_str(&format!(
            "  agent:    registered as {n:?}, log {}\n",
            log.display()
        )),
        None => s.push_str(&format!("  agent:    running, log {}\n", log.display())),
    }
    s.push('\n');
    match password {
        Some(pw) => s.push_str(&initial_password_notice(cfg, pw)),
        None if pw_file.exists() => {
            s.push_str(&format!(
                "The admin's initial password is in {} (shown on the first start only).\nLog in with:\n    {}\n",
                pw_file.display(),
                login_line(cfg, &format!("\"$(cat {})\"", sh_word(&pw_file.display().to_string())))
            ));
        }
        None => {
            s.push_str(&format!(
                "The admin's initial password was shown on the first start and its file has been removed.\nLog in with:\n    {}\n",
                login_line(cfg, "'<your password>'")
            ));
        }
    }
    s.push_str("\nStop with Ctrl-C.\n");
    s
}
