//! Starting and stopping the gateway: data dir, listener, TLS, database,
//! initial admin, HTTPS server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::app::{router, AppState};
use crate::config::{public_url_host, Config, Settings};
use crate::conn::{self, Stats, Stop};
use crate::db::{sqlite_url, Db};
use crate::{iam, tls};

/// Connections the kernel holds for the gateway before it accepts them.
const LISTEN_BACKLOG: i32 = 4096;

/// How long in-flight requests (and agent links) get to finish on shutdown.
const GRACE: Duration = Duration::from_secs(10);

/// A running gateway.
pub struct Gateway {
    pub config: Arc<Config>,
    pub state: AppState,
    /// The initial admin password, when this start created the admin.
    pub initial_password: Option<String>,
    /// Connections open and pending, for logs and tests.
    pub connections: Arc<Stats>,
    stop: Stop,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Prepares everything and starts serving. When this returns the socket
    /// is bound and listening: connections made from now on are served.
    pub async fn start(settings: Settings) -> anyhow::Result<Gateway> {
        create_private_dir(&settings.data_dir)
            .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
        let data_dir: PathBuf = settings
            .data_dir
            .canonicalize()
            .with_context(|| format!("data dir {}", settings.data_dir.display()))?;

        // Every connection is a file descriptor: use all the system allows.
        let nofile = conn::raise_nofile();
        let cap = conn::resolve_cap(settings.limits.max_connections, nofile);

        // Bind first: with --listen :0 the real port goes into the public URL.
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        listener.set_nonblocking(true)?;
        // std listens with a backlog of 128; agents redialing after a
        // restart come by the thousand and wait there while accepting
        // pauses (conn.rs). Listening again raises it (the kernel caps it
        // at net.core.somaxconn).
        {
            use std::os::fd::AsRawFd;
            // SAFETY: listen(2) on a listening socket this function owns.
            if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
                tracing::warn!(
                    "cannot raise the listen backlog to {LISTEN_BACKLOG}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let listen = listener.local_addr()?;
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("https://localhost:{}", listen.port()));
        if settings.public_url.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(
                "no --public-url: the install script will point agents at {public_url}; \
                 pass --public-url https://HOST:{} for agents on other machines",
                listen.port()
            );
        }

        let files = match &settings.tls {
            Some((cert, key)) => tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca_cert: None,
            },
            None => {
                let names = tls::wanted_names(public_url_host(&public_url).as_deref());
                tls::ensure_self_signed(&data_dir.join("tls"), &names)?
            }
        };
        let rustls_cfg = tls::server_config(&files.cert, &files.key)
            .with_context(|| format!("TLS certificate {}", files.cert.display()))?;

        let database_url = settings
            .database_url
            .clone()
            .unwrap_or_else(|| sqlite_url(&data_dir.join("alpacon.db")));
        let db = Db::connect(&database_url)
            .await
            .with_context(|| format!("database {}", redact_url(&database_url)))?;
        let initial_password = iam::ensure_initial_admin(&db, &data_dir).await?;
        iam::assign_missing_uids(&db)
            .await
            .map_err(|e| anyhow::anyhow!("cannot assign UIDs: {}", e.detail))?;

        let config = Config {
            data_dir,
            listen,
            database_url,
            public_url,
            tls_cert: files.cert,
            tls_key: files.key,
            ca_cert: files.ca_cert,
            agent_binary: settings.agent_binary.clone(),
            session_ttl_secs: settings.session_ttl_hours * 3600,
            account_termination: settings.account_termination,
            limits: settings.limits.clone(),
        };
        let state = AppState::new(db, config);
        tokio::spawn(crate::websh::reaper(state.clone()));
        crate::work_sessions::spawn_ticker(state.clone());
        let app = router(state.clone());
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(rustls_cfg));
        let stats = Arc::new(Stats::default());
        let stop = Stop::default();
        let task = tokio::spawn(conn::serve(
            listener,
            acceptor,
            app,
            settings.limits.clone(),
            cap,
            stats.clone(),
            stop.clone(),
        ));
        tracing::info!(
            "connections: at most {cap} open, {} pending ({} per address), {} agent handshakes \
             ({} per address); timeouts: TLS {:?}, first request {:?}, idle {:?}",
            settings.limits.max_pending,
            settings.limits.max_pending_per_address,
            settings.limits.max_agent_handshakes,
            settings.limits.max_agent_handshakes_per_address,
            settings.limits.tls_handshake_timeout,
            settings.limits.header_read_timeout,
            settings.limits.idle_timeout,
        );
        tracing::info!(
            "alpacon-server {} listening on {listen}, public URL {}",
            env!("CARGO_PKG_VERSION"),
            state.config.public_url
        );
        Ok(Gateway {
            config: state.config.clone(),
            state,
            initial_password,
            connections: stats,
            stop,
            task,
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to a grace
    /// period) and waits for the server to end.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.shutdown(GRACE).await;
        self.task.await?;
        self.state.db.pool.close().await;
        Ok(())
    }

    /// Serves until SIGINT/SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.task => {
                // The server ended by itself: that is an error.
                r?;
                anyhow::bail!("the HTTPS server stopped unexpectedly");
            }
            s = shutdown_signal() => {
                tracing::info!("{s}: shutting down");
            }
        }
        self.shutdown().await
    }
}

/// Creates `dir` (and parents) if missing, the last level 0700: it holds
/// the database, keys and the initial password. An existing directory keeps
/// the mode the operator gave it.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Resolves on SIGINT or SIGTERM, naming which.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers there is nothing to wait for but Ctrl-C.
        let _ = tokio::signal::ctrl_c().await;
        return "interrupt";
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Text printed once when the admin was just created.
pub fn initial_password_notice(config: &Config, password: &str) -> String {
    format!(
        "First start: created superuser \"admin\" with the one-time password\n\n    {password}\n\n\
         It is also in {} (mode 0600). Log in with:\n    {}\n",
        config.data_dir.join(iam::INITIAL_PASSWORD_FILE).display(),
        login_line(config, &format!("'{password}'")),
    )
}

/// The `alpacon login` line for the admin, with `pw_arg` as the -p value.
pub fn login_line(config: &Config, pw_arg: &str) -> String {
    let ca = config
        .ca_cert
        .as_ref()
        .map(|p| {
            format!(
                " --ca-cert {}",
                crate::servers::sh_word(&p.display().to_string())
            )
        })
        .unwrap_or_default();
    format!(
        "alpacon login {} -u admin -p {pw_arg}{ca}",
        config.public_url
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite:///a@b/c.db"), "sqlite:///a@b/c.db");
    }
}
