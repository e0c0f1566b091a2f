//! The running agent: configuration, identity, spool, commands, terminals
//! and the link.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alpacon_proto::SystemInfo;
use anyhow::Context;
use ed25519_dalek::SigningKey;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::exec::{Retry, Runner};
use crate::link::Link;
use crate::pty::Terminals;
use crate::spool::Spool;

pub struct Agent {
    pub cfg: Config,
    pub(crate) key: SigningKey,
    pub system: SystemInfo,
    pub link: Link,
    pub runner: Runner,
    /// Live terminals; they outlive any one connection.
    pub terminals: Terminals,
    /// This program, started as the requested account for file operations.
    pub helper: Arc<PathBuf>,
    /// Sudo grants of work sessions; set up when the agent runs.
    pub sudo: std::sync::OnceLock<crate::sudo::Sudo>,
}

impl Agent {
    /// Open the spool (stopping and reporting commands cut short by our own
    /// death) and get ready to connect.
    pub fn new(cfg: Config, key: SigningKey, helper: PathBuf) -> anyhow::Result<Agent> {
        let spool = Spool::open(&cfg.data_dir)
            .with_context(|| format!("cannot open the spool in {}", cfg.data_dir.display()))?;
        let recovered = spool.recover().context("cannot recover the spool")?;
        for r in &recovered {
            warn!(
                id = r.id,
                "command was running when the agent stopped; reporting it as interrupted: {}",
                r.leftover.detail()
            );
        }
        let lc = &cfg.link;
        let first = Duration::from_millis(lc.result_retry_initial_ms.max(1));
        let retry = Retry {
            first,
            max: Duration::from_secs(lc.result_retry_max_secs.max(1)).max(first),
        };
        let link = Link::default();
        Ok(Agent {
            runner: Runner::new(spool, link.clone(), retry),
            link,
            terminals: Terminals::default(),
            system: crate::sysinfo::collect(),
            cfg,
            key,
            helper: Arc::new(helper),
            sudo: std::sync::OnceLock::new(),
        })
    }

    /// Serve until `shutdown` turns true, then stop running commands (their
    /// results are spooled and delivered after the next start).
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let _ = self.sudo.set(crate::sudo::Sudo::start(
            &self.cfg.data_dir,
            self.link.clone(),
        ));
        crate::link::run(self.clone(), shutdown).await;
        let n = self.runner.running();
        if n > 0 {
            info!("stopping {n} running command(s)");
            if !self
                .runner
                .shutdown("the agent is shutting down", Duration::from_secs(8))
                .await
            {
                warn!("some commands did not stop in time");
            }
        }
    }
}
