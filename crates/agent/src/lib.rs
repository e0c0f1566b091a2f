//! `alpamon`, the Alpacon agent.
//!
//! One agent runs on every managed server. It dials out to the gateway over
//! WSS (`link`), proves its identity with the Ed25519 key made at
//! `alpamon register` (`register`), runs commands as the requested account
//! (`exec`) with a durable result spool (`spool`) and stops what a command
//! left running when the agent died (`procs`), performs file
//! operations in helper processes that have dropped to the requested account
//! (`files` in the agent, `helper` in the child), and keeps interactive
//! terminals that outlive the link (`pty`).
//!
//! See `ARCHITECTURE.md` ("The agent link", "Commands", "File transfers",
//! "Terminals (websh)").

pub mod account;
pub mod agent;
pub mod config;
pub mod confine;
pub mod exec;
pub mod files;
pub mod helper;
pub mod link;
pub mod procs;
pub mod provision;
pub mod pty;
pub mod register;
pub mod spool;
pub mod sudo;
pub mod sysinfo;
pub mod tls;

pub use agent::Agent;
pub use config::Config;

/// The agent's version, reported to the gateway at every connection.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
