//! `alpacon`, the command-line client of the Alpacon gateway.
//!
//! One module per command family; `client` speaks the REST API described in
//! ARCHITECTURE.md, `output` renders what comes back.

pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod cp;
pub mod error;
pub mod exec;
pub mod iam;
pub mod mfa;
pub mod output;
pub mod server;
pub mod token;
pub mod websh;
pub mod work_session;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::client::Client;
use crate::config::Config;
use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "alpacon",
    version,
    about = "Command-line client of the Alpacon access gateway",
    propagate_version = true
)]
pub struct Cli {
    /// How results are printed.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Config file with the login state [default: ~/.config/alpacon/config.json].
    #[arg(long, global = true, env = "ALPACON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Act inside this work session [default: the one set with
    /// `alpacon work-session use`].
    #[arg(long, global = true, env = "ALPACON_WORK_SESSION", value_name = "ID")]
    pub work_session: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to a gateway and remember the credential.
    Login(auth::LoginArgs),
    /// Forget the credential (and revoke it if it is a session key).
    Logout,
    /// Show who the stored credential belongs to.
    Whoami,
    /// Show the client's (and the gateway's) version.
    Version,
    /// Servers and their registration tokens.
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// Personal API tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Open a terminal on a server, run a command there, or manage
    /// terminal sessions (ls, describe, close, records, share, join, attach).
    Websh(websh::WebshArgs),
    /// Run a command on a server: `alpacon exec SERVER -- COMMAND...`.
    Exec(exec::ExecArgs),
    /// Copy files to or from a server; the remote side is [USER@]SERVER:PATH.
    Cp(cp::CpArgs),
    /// People: users, their invitations and workspace roles.
    #[command(subcommand)]
    User(iam::UserCommand),
    /// Groups: who is in them and which servers they reach.
    #[command(subcommand)]
    Group(iam::GroupCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Multi-factor authentication: TOTP, recovery codes, verification.
    #[command(subcommand)]
    Mfa(mfa::MfaCommand),
    /// Time-bound, approved access: request, approve, use, end, timeline.
    #[command(subcommand, name = "work-session", visible_alias = "ws")]
    WorkSession(work_session::WorkSessionCommand),
}

/// What every command needs: where the login state lives and how to print.
pub struct Ctx {
    pub output: Format,
    pub config_path: PathBuf,
    /// `--work-session` / `ALPACON_WORK_SESSION`, over the config's.
    pub work_session: Option<String>,
}

impl Ctx {
    pub fn json(&self) -> bool {
        self.output == Format::Json
    }

    pub fn config(&self) -> Result<Config> {
        config::load(&self.config_path)
    }

    /// An authenticated client for the gateway we are logged in to.
    pub fn client(&self) -> Result<Client> {
        let config = self.config()?;
        let mut c = Self::client_for(&config)?;
        if let Some(ws) = &self.work_session {
            // An empty value means "no work session" even if one is in use.
            c.set_work_session(Some(ws.clone()).filter(|w| !w.is_empty()));
        }
        Ok(c)
    }

    pub fn client_for(config: &Config) -> Result<Client> {
        if config.insecure {
            warn_insecure();
        }
        Client::from_config(config)
    }
}

pub fn warn_insecure() {
    eprintln!("alpacon: warning: TLS certificate verification is disabled (--insecure)");
}

/// Run a parsed command line; the result is the process exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    let config_path = match cli.config {
        Some(p) => p,
        None => config::default_path()?,
    };
    let ctx = Ctx {
        output: cli.output,
        config_path,
        work_session: cli.work_session,
    };
    match cli.command {
        Command::Login(args) => auth::login(&ctx, args).await,
        Command::Logout => auth::logout(&ctx).await,
        Command::Whoami => auth::whoami(&ctx).await,
        Command::Version => auth::version(&ctx).await,
        Command::Server(cmd) => server::run(&ctx, cmd).await,
        Command::Token(cmd) => token::run(&ctx, cmd).await,
        Command::Websh(args) => websh::run(&ctx, args).await,
        Command::Exec(args) => exec::exec(&ctx, args).await,
        Command::Cp(args) => cp::run(&ctx, args).await,
        Command::Audit(cmd) => audit::run(&ctx, cmd).await,
        Command::User(cmd) => iam::run_user(&ctx, cmd).await,
        Command::Group(cmd) => iam::run_group(&ctx, cmd).await,
        Command::Mfa(cmd) => mfa::run(&ctx, cmd).await,
        Command::WorkSession(cmd) => work_session::run(&ctx, cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
