use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use alpacon_server::config::{Cli, Command, Settings};
use alpacon_server::gateway::{initial_password_notice, Gateway};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Logs to stderr: stdout carries what the operator must read (the
        // initial password, quickstart's summary).
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("alpacon-server: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alpacon-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Openapi) = cli.command {
        println!("{}", alpacon_server::openapi::document());
        return Ok(());
    }
    let settings = Settings::load(&cli.opts)?;
    match cli.command {
        Some(Command::Quickstart) => alpacon_server::quickstart::run(settings).await,
        Some(Command::Openapi) => Ok(()),
        None => {
            let gw = Gateway::start(settings).await?;
            if let Some(pw) = &gw.initial_password {
                println!("{}", initial_password_notice(&gw.config, pw));
            }
            gw.run_until_signal().await
        }
    }
}
