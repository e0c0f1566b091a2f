//! `alpamon`: the Alpacon agent. See the library crate for the pieces.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use alpamon::config::{Config, DEFAULT_CONFIG};
use alpamon::register::RegisterArgs;
use alpamon::{helper, Agent};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "alpamon",
    version,
    about = "The Alpacon agent: keeps an outbound link to the gateway and runs commands and file transfers as local accounts."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register this server with a gateway (generates the agent's key).
    Register {
        /// The gateway's URL, e.g. https://gateway.example.com
        #[arg(long)]
        url: String,
        /// A registration token (alprt-...) from `alpacon server token create`.
        #[arg(long, env = "ALPAMON_TOKEN", hide_env_values = true)]
        token: String,
        /// The server's name in Alpacon [default: this host's name]
        #[arg(long)]
        name: Option<String>,
        /// CA certificate (PEM) to trust for the gateway, e.g. its DATA/tls/ca.crt.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Where to write the configuration (key and CA go beside it).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Where the agent keeps its state [default: /var/lib/alpamon for a config under /etc, else CONFIG_DIR/data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Replace an existing registration.
        #[arg(long)]
        force: bool,
    },
    /// Connect to the gateway and serve until stopped (Ctrl-C or SIGTERM).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Delete this agent's key and configuration. An administrator deletes
    /// the server in Alpacon.
    Unregister {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    // The file helpers (see `helper`). `--confine` is a token's file ACL
    // pattern, repeated; `--no-setid` marks a person's own account.
    #[command(name = "__file-write", hide = true)]
    FileWrite {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        overwrite: bool,
        #[arg(long)]
        mode: Option<u32>,
        #[arg(long)]
        confine: Vec<String>,
        #[arg(long)]
        no_setid: bool,
    },
    #[command(name = "__file-read", hide = true)]
    FileRead {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        confine: Vec<String>,
    },
    #[command(name = "__mkdir", hide = true)]
    Mkdir {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        confine: Vec<String>,
    },
    #[command(name = "__stat", hide = true)]
    Stat {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        recursive: bool,
        #[arg(long)]
        confine: Vec<String>,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// One thread: the agent's work is I/O on one link, and hand-offs between
/// worker threads (a futex and an eventfd write per wake) cost more than the
/// work itself — a keystroke's echo was 20–30% faster end to end, and the
/// agent spent less CPU per copied GiB both ways (BENCHMARKS.md). What blocks
/// (account tools, the command spool) runs on the blocking pool.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        // The helpers speak a protocol on stdout: no logging, no runtime.
        Cmd::FileWrite {
            path,
            overwrite,
            mode,
            confine,
            no_setid,
        } => exit(helper::main_file_write(
            &path, overwrite, mode, &confine, no_setid,
        )),
        Cmd::FileRead { path, confine } => exit(helper::main_file_read(&path, &confine)),
        Cmd::Mkdir { path, confine } => exit(helper::main_mkdir(&path, &confine)),
        Cmd::Stat {
            path,
            recursive,
            confine,
        } => exit(helper::main_stat(&path, recursive, &confine)),
        Cmd::Register {
            url,
            token,
            name,
            ca_cert,
            config,
            data_dir,
            force,
        } => {
            init_logging();
            let args = RegisterArgs {
                url,
                token,
                name,
                ca_cert,
                config: config.clone(),
                data_dir,
                force,
            };
            let res = runtime().and_then(|rt| rt.block_on(alpamon::register::register(args)));
            match res {
                Ok(cfg) => {
                    println!(
                        "registered as {} (server id {}); configuration written to {}",
                        cfg.name,
                        cfg.server_id,
                        config.display()
                    );
                    println!(
                        "start the agent with: alpamon run --config {}",
                        config.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("alpamon: registration failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run { config } => {
            init_logging();
            match runtime().and_then(|rt| rt.block_on(run(config))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("alpamon: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Unregister { config } => match alpamon::register::unregister(&config) {
            Ok(removed) => {
                for p in removed {
                    println!("removed {}", p.display());
                }
                println!("an administrator can now delete this server in Alpacon");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("alpamon: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(config: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&config)?;
    let key = cfg.load_key()?;
    let agent = Arc::new(Agent::new(
        cfg,
        key,
        helper::held_open("/proc/self/exe".as_ref())?,
    )?);
    info!(
        "alpamon {} starting: server {} ({})",
        alpamon::VERSION,
        agent.cfg.name,
        agent.cfg.server_id
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("interrupted; shutting down"),
            _ = term.recv() => info!("terminated; shutting down"),
        }
        let _ = stop_tx.send(true);
    });
    agent.run(stop_rx).await;
    info!("stopped");
    Ok(())
}
