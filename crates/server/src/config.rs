//! Settings: command-line flags, `ALPACON_*` environment variables and an
//! optional TOML file, in that order of precedence, then defaults.
//!
//! [`Settings`] is what the operator asked for; [`Config`] is what the
//! running gateway uses (paths made absolute, the real listen address, the
//! public URL and TLS files resolved).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::conn::{self, Limits};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DATA_DIR: &str = "./alpacon-data";
pub const DEFAULT_SESSION_TTL_HOURS: i64 = 24;

#[derive(Debug, Parser)]
#[command(
    name = "alpacon-server",
    version,
    about = "The Alpacon gateway: REST API, agent relay, identity and audit.",
    long_about = "The Alpacon gateway: REST API, agent relay, identity and audit.\n\n\
        Every flag can also be set with an ALPACON_* environment variable or in the TOML \
        file given with --config (keys are the flag names with '_' for '-', e.g. \
        data_dir = \"/var/lib/alpacon\"). Flags win over the environment, which wins over \
        the file. Relative paths in the file are relative to the file's directory."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub opts: Options,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gateway and a local agent registered against it, then print
    /// the console URL, the CA certificate, the admin password and the
    /// `alpacon login` line to paste. Takes the same flags.
    Quickstart,
    /// Print the REST API's OpenAPI 3.1 document (also served at
    /// /api/openapi.json) and exit.
    Openapi,
}

#[derive(Debug, Clone, Default, Args)]
pub struct Options {
    /// TOML file with any of the settings below.
    #[arg(long, value_name = "FILE", env = "ALPACON_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Directory for the database, TLS certificates and the initial admin
    /// password [default: ./alpacon-data].
    #[arg(long, value_name = "DIR", env = "ALPACON_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Address and port to serve HTTPS on [default: 127.0.0.1:8443]. Use
    /// 0.0.0.0:8443 to accept agents and users from other machines.
    #[arg(long, value_name = "ADDR:PORT", env = "ALPACON_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,

    /// sqlite://PATH or postgres://USER:PASS@HOST/DB [default:
    /// sqlite://DATA/alpacon.db]. PostgreSQL lets several gateways share state.
    #[arg(long, value_name = "URL", env = "ALPACON_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// PEM certificate chain to serve instead of the self-made one (needs
    /// --tls-key). Without it, the gateway makes its own CA (DATA/tls/ca.crt)
    /// and a certificate for localhost, this host and the --public-url host.
    #[arg(
        long,
        value_name = "FILE",
        env = "ALPACON_TLS_CERT",
        global = true,
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "ALPACON_TLS_KEY",
        global = true,
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// The https:// URL agents and users reach this gateway at; used in the
    /// install script and in the certificate [default: https://localhost:PORT].
    #[arg(long, value_name = "URL", env = "ALPACON_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// The alpamon binary served at /downloads/alpamon and run by quickstart
    /// [default: alpamon next to this executable].
    #[arg(long, value_name = "PATH", env = "ALPACON_AGENT_BINARY", global = true)]
    pub agent_binary: Option<PathBuf>,

    /// How long a login session lasts [default: 24].
    #[arg(
        long,
        value_name = "HOURS",
        env = "ALPACON_SESSION_TTL_HOURS",
        global = true
    )]
    pub session_ttl_hours: Option<i64>,

    /// What happens to a person's managed account on servers when they are
    /// disabled, deleted or lose their reach: `lock` (usermod -L -e 1, the
    /// account's processes killed) or `remove` (userdel; the home directory
    /// is kept) [default: lock].
    #[arg(
        long,
        value_name = "lock|remove",
        env = "ALPACON_ACCOUNT_TERMINATION",
        global = true
    )]
    pub account_termination: Option<AccountTermination>,

    /// Seconds a new connection gets to finish the TLS handshake [default:
    /// 10].
    #[arg(
        long,
        value_name = "SECS",
        env = "ALPACON_TLS_HANDSHAKE_TIMEOUT_SECS",
        global = true,
        help_heading = "Connections and limits"
    )]
    pub tls_handshake_timeout_secs: Option<u64>,

    /// Seconds from the TLS handshake until a new connection's first
    /// request head must be complete; a connection sending nothing or half
    /// a header is closed [default: 10].
    #[arg(
        long,
        value_name = "SECS",
        env = "ALPACON_HEADER_READ_TIMEOUT_SECS",
        global = true,
        help_heading = "Connections and limits"
    )]
    pub header_read_timeout_secs: Option<u64>,

    /// Seconds a connection may stay open with no request in flight
    /// (keep-alive); WebSockets (agent links, terminals) and transfers in
    /// progress are not affected [default: 60].
    #[arg(
        long,
        value_name = "SECS",
        env = "ALPACON_IDLE_TIMEOUT_SECS",
        global = true,
        help_heading = "Connections and limits"
    )]
    pub idle_timeout_secs: Option<u64>,

    /// Most connections open at once, agent links included; more are closed
    /// as they arrive [default: the open-file limit (soft limit raised to
    /// the hard one at start) less a quarter of it, 128 to 1024, kept for
    /// the database and files].
    #[arg(
        long,
        value_name = "N",
        env = "ALPACON_MAX_CONNECTIONS",
        global = true,
        help_heading = "Connections and limits"
    )]
    pub max_connections: Option<usize>,

    /// Most connections from one address (IPv6: one /64) that have not yet
    /// finished TLS and their first request; more are closed as they arrive.
    /// Established connections are not capped per address [default: 64].
    #[arg(
        long,
        value_name = "N",
        env = "ALPACON_MAX_PENDING_PER_ADDRESS",
        global = true,
        help_heading = "Connections and limits"
    )]
    pub max_pending_per_address: Option<usize>,

    /// Most such pending connections from all addresses together; past it
    /// the gateway stops accepting (up to the TLS handshake timeout) and new
    /// connections wait in the kernel's backlog [default: 1024].
    #[arg(
        long,
        value_name = "N",
        env = "ALPACON_MAX_PENDING",
        global = true,
        help_heading = "Connections and limits"
    )]
    pub max_pending: Option<usize>,

    /// Most agent links from one address that have not yet authenticated;
    /// more are refused (429) and the agent retries later [default: 8].
    #[arg(
        long,
        value_name = "N",
        env = "ALPACON_MAX_AGENT_HANDSHAKES_PER_ADDRESS",
        global = true,
        help_heading = "Connections and limits"
    )]
    pub max_agent_handshakes_per_address: Option<usize>,

    /// Most agent links from all addresses that have not yet authenticated
    /// (503 beyond) [default: 256].
    #[arg(
        long,
        value_name = "N",
        env = "ALPACON_MAX_AGENT_HANDSHAKES",
        global = true,
        help_heading = "Connections and limits"
    )]
    pub max_agent_handshakes: Option<usize>,
}

/// What the agent does with a managed account at termination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccountTermination {
    #[default]
    Lock,
    Remove,
}

/// The TOML file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    database_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    public_url: Option<String>,
    agent_binary: Option<PathBuf>,
    session_ttl_hours: Option<i64>,
    account_termination: Option<AccountTermination>,
    tls_handshake_timeout_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_pending_per_address: Option<usize>,
    max_pending: Option<usize>,
    max_agent_handshakes_per_address: Option<usize>,
    max_agent_handshakes: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What the operator asked for, merged from flags, env and file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// None: SQLite in the data dir.
    pub database_url: Option<String>,
    /// Both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// None: https://localhost:PORT once the port is known.
    pub public_url: Option<String>,
    pub agent_binary: PathBuf,
    pub session_ttl_hours: i64,
    pub account_termination: AccountTermination,
    /// Connection timeouts and caps (`conn.rs`).
    pub limits: Limits,
}

impl Settings {
    pub fn load(opts: &Options) -> Result<Settings, ConfigError> {
        let (file, base) = match &opts.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let file: FileConfig =
                    toml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, base)
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        let from_file = |p: Option<PathBuf>| p.map(|p| base.join(p));
        let limits = limits(opts, &file)?;

        let data_dir = opts
            .data_dir
            .clone()
            .or_else(|| from_file(file.data_dir))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let listen = match (opts.listen, file.listen) {
            (Some(l), _) => l,
            (None, Some(s)) => s
                .parse()
                .map_err(|_| ConfigError::Invalid(format!("listen = {s:?} is not ADDR:PORT")))?,
            (None, None) => DEFAULT_LISTEN
                .parse()
                .expect("valid default listen address"),
        };
        let database_url = opts.database_url.clone().or(file.database_url);
        let tls_cert = opts.tls_cert.clone().or_else(|| from_file(file.tls_cert));
        let tls_key = opts.tls_key.clone().or_else(|| from_file(file.tls_key));
        let tls = match (tls_cert, tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "--tls-cert and --tls-key go together: give both or neither".into(),
                ))
            }
        };
        let public_url = opts
            .public_url
            .clone()
            .or(file.public_url)
            .map(|u| normalize_public_url(&u))
            .transpose()?;
        let agent_binary = opts
            .agent_binary
            .clone()
            .or_else(|| from_file(file.agent_binary))
            .unwrap_or_else(default_agent_binary);
        let session_ttl_hours = opts
            .session_ttl_hours
            .or(file.session_ttl_hours)
            .unwrap_or(DEFAULT_SESSION_TTL_HOURS);
        if !(1..=24 * 366).contains(&session_ttl_hours) {
            return Err(ConfigError::Invalid(format!(
                "session_ttl_hours must be between 1 and {}, not {session_ttl_hours}",
                24 * 366
            )));
        }
        let account_termination = opts
            .account_termination
            .or(file.account_termination)
            .unwrap_or_default();
        Ok(Settings {
            data_dir,
            listen,
            database_url,
            tls,
            public_url,
            agent_binary,
            session_ttl_hours,
            account_termination,
            limits,
        })
    }
}

/// The connection limits from flags, environment and file; zero or absurd
/// values are refused rather than taken to mean "no limit".
fn limits(opts: &Options, file: &FileConfig) -> Result<Limits, ConfigError> {
    let secs = |name: &str, flag: Option<u64>, file: Option<u64>, default: u64| {
        let v = flag.or(file).unwrap_or(default);
        if (1..=3600).contains(&v) {
            Ok(Duration::from_secs(v))
        } else {
            Err(ConfigError::Invalid(format!(
                "{name} must be between 1 and 3600 seconds, not {v}"
            )))
        }
    };
    let count = |name: &str, flag: Option<usize>, file: Option<usize>, default: usize| {
        let v = flag.or(file).unwrap_or(default);
        if v >= 1 {
            Ok(v)
        } else {
            Err(ConfigError::Invalid(format!("{name} must be at least 1")))
        }
    };
    let max_connections = match opts.max_connections.or(file.max_connections) {
        Some(n) => Some(count("max_connections", Some(n), None, 0)?),
        None => None,
    };
    Ok(Limits {
        tls_handshake_timeout: secs(
            "tls_handshake_timeout_secs",
            opts.tls_handshake_timeout_secs,
            file.tls_handshake_timeout_secs,
            conn::DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
        )?,
        header_read_timeout: secs(
            "header_read_timeout_secs",
            opts.header_read_timeout_secs,
            file.header_read_timeout_secs,
            conn::DEFAULT_HEADER_READ_TIMEOUT_SECS,
        )?,
        idle_timeout: secs(
            "idle_timeout_secs",
            opts.idle_timeout_secs,
            file.idle_timeout_secs,
            conn::DEFAULT_IDLE_TIMEOUT_SECS,
        )?,
        max_connections,
        max_pending_per_address: count(
            "max_pending_per_address",
            opts.max_pending_per_address,
            file.max_pending_per_address,
            conn::DEFAULT_MAX_PENDING_PER_ADDRESS,
        )?,
        max_pending: count(
            "max_pending",
            opts.max_pending,
            file.max_pending,
            conn::DEFAULT_MAX_PENDING,
        )?,
        max_agent_handshakes_per_address: count(
            "max_agent_handshakes_per_address",
            opts.max_agent_handshakes_per_address,
            file.max_agent_handshakes_per_address,
            conn::DEFAULT_MAX_AGENT_HANDSHAKES_PER_ADDRESS,
        )?,
        max_agent_handshakes: count(
            "max_agent_handshakes",
            opts.max_agent_handshakes,
            file.max_agent_handshakes,
            conn::DEFAULT_MAX_AGENT_HANDSHAKES,
        )?,
    })
}

/// `alpamon` in the directory of the running executable.
pub fn default_agent_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("alpamon")))
        .unwrap_or_else(|| PathBuf::from("alpamon"))
}

/// Checks an https URL and drops a trailing slash. Quotes and whitespace are
/// refused: the URL is pasted into shell lines.
pub fn normalize_public_url(u: &str) -> Result<String, ConfigError> {
    let u = u.trim().trim_end_matches('/');
    let bad = || {
        ConfigError::Invalid(format!(
            "public URL {u:?} must look like https://HOST[:PORT][/PATH]"
        ))
    };
    if !u.starts_with("https://")
        || u.contains(|c: char| c.is_whitespace() || "'\"`\\$;&|<>".contains(c))
    {
        return Err(bad());
    }
    let uri: hyper::Uri = u.parse().map_err(|_| bad())?;
    if uri.host().unwrap_or("").is_empty() || uri.query().is_some() {
        return Err(bad());
    }
    Ok(u.to_string())
}

/// The host part of a public URL, without IPv6 brackets.
pub fn public_url_host(u: &str) -> Option<String> {
    let uri: hyper::Uri = u.parse().ok()?;
    let h = uri.host()?;
    Some(h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// The configuration of the running gateway.
#[derive(Debug, Clone)]
pub struct Config {
    /// Absolute.
    pub data_dir: PathBuf,
    /// The address actually bound (the real port when 0 was asked for).
    pub listen: SocketAddr,
    pub database_url: String,
    /// No trailing slash.
    pub public_url: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The gateway's own CA certificate; None with operator-provided TLS.
    pub ca_cert: Option<PathBuf>,
    pub agent_binary: PathBuf,
    pub session_ttl_secs: i64,
    /// Lock or remove managed accounts at termination (`accounts.rs`).
    pub account_termination: AccountTermination,
    /// Connection timeouts and caps (`conn.rs`; the agent handshake caps
    /// are applied in `relay.rs`).
    pub limits: Limits,
}

impl Config {
    /// A config rooted in `data_dir` with defaults, for tests.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("valid address"),
            database_url: crate::db::sqlite_url(&data_dir.join("alpacon.db")),
            public_url: "https://localhost:8443".into(),
            tls_cert: data_dir.join("tls/server.crt"),
            tls_key: data_dir.join("tls/server.key"),
            ca_cert: None,
            agent_binary: data_dir.join("alpamon"),
            session_ttl_secs: DEFAULT_SESSION_TTL_HOURS * 3600,
            account_termination: AccountTermination::Lock,
            limits: Limits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls() {
        assert_eq!(
            normalize_public_url("https://gw.example.com/").unwrap(),
            "https://gw.example.com"
        );
        assert_eq!(
            normalize_public_url("https://[::1]:8443/ws").unwrap(),
            "https://[::1]:8443/ws"
        );
        for bad in [
            "http://x",
            "https://",
            "https://a b",
            "https://x/'",
            "gw:8443",
            "https://x/?a=1",
        ] {
            assert!(normalize_public_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            public_url_host("https://[::1]:8443").as_deref(),
            Some("::1")
        );
        assert_eq!(
            public_url_host("https://gw.example.com:1/x").as_deref(),
            Some("gw.example.com")
        );
    }

    #[test]
    fn flags_win_over_file_and_file_paths_are_relative_to_it() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(
            &f,
            "data_dir = \"data\"\nlisten = \"0.0.0.0:9000\"\npublic_url = \"https://gw.example.com\"\nsession_ttl_hours = 2\n",
        )
        .unwrap();
        let opts = Options {
            config: Some(f.clone()),
            listen: Some("127.0.0.1:1234".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::load(&opts).unwrap();
        assert_eq!(s.data_dir, d.path().join("data"));
        assert_eq!(s.listen.port(), 1234);
        assert_eq!(s.public_url.as_deref(), Some("https://gw.example.com"));
        assert_eq!(s.session_ttl_hours, 2);

        std::fs::write(&f, "datadir = \"x\"\n").unwrap();
        let e = Settings::load(&opts).unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn defaults_and_help() {
        let s = Settings::load(&Options::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(s.tls.is_none() && s.public_url.is_none() && s.database_url.is_none());
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--data-dir",
            "--listen",
            "--database-url",
            "--public-url",
            "--tls-cert",
            "--config",
        ] {
            assert!(help.contains(flag), "{flag}");
        }
        let cli =
            Cli::try_parse_from(["alpacon-server", "quickstart", "--data-dir", "/x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Quickstart)));
        assert_eq!(cli.opts.data_dir, Some(PathBuf::from("/x")));
        assert!(Cli::try_parse_from(["alpacon-server", "--tls-cert", "a"]).is_err());
    }

    #[test]
    fn connection_limits_from_flags_and_file() {
        let s = Settings::load(&Options::default()).unwrap();
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.limits.max_connections, None);

        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(
            &f,
            "idle_timeout_secs = 5\nmax_pending_per_address = 3\nmax_connections = 500\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "alpacon-server",
            "--config",
            f.to_str().unwrap(),
            "--idle-timeout-secs",
            "7",
            "--tls-handshake-timeout-secs",
            "2",
            "--max-agent-handshakes-per-address",
            "4",
        ])
        .unwrap();
        let l = Settings::load(&cli.opts).unwrap().limits;
        assert_eq!(l.idle_timeout, Duration::from_secs(7));
        assert_eq!(l.tls_handshake_timeout, Duration::from_secs(2));
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.max_pending_per_address, 3);
        assert_eq!(l.max_connections, Some(500));
        assert_eq!(l.max_agent_handshakes_per_address, 4);
        assert_eq!(l.max_agent_handshakes, 256);

        for bad in [
            "idle_timeout_secs = 0\n",
            "header_read_timeout_secs = 100000\n",
            "max_pending = 0\n",
            "max_connections = 0\n",
        ] {
            std::fs::write(&f, bad).unwrap();
            let opts = Options {
                config: Some(f.clone()),
                ..Default::default()
            };
            assert!(Settings::load(&opts).is_err(), "{bad}");
        }
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--tls-handshake-timeout-secs",
            "--header-read-timeout-secs",
            "--idle-timeout-secs",
            "--max-connections",
            "--max-pending-per-address",
            "--max-pending ",
            "--max-agent-handshakes-per-address",
            "--max-agent-handshakes ",
        ] {
            assert!(help.contains(flag), "{flag}");
        }
    }

    #[test]
    fn account_termination_defaults_to_lock() {
        assert_eq!(
            Settings::load(&Options::default())
                .unwrap()
                .account_termination,
            AccountTermination::Lock
        );
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(&f, "account_termination = \"remove\"\n").unwrap();
        let opts = Options {
            config: Some(f.clone()),
            ..Default::default()
        };
        assert_eq!(
            Settings::load(&opts).unwrap().account_termination,
            AccountTermination::Remove
        );
        let cli =
            Cli::try_parse_from(["alpacon-server", "--account-termination", "remove"]).unwrap();
        assert_eq!(
            cli.opts.account_termination,
            Some(AccountTermination::Remove)
        );
        assert!(Cli::try_parse_from(["alpacon-server", "--account-termination", "burn"]).is_err());
        std::fs::write(&f, "account_termination = \"burn\"\n").unwrap();
        assert!(Settings::load(&opts).is_err());
    }
}
