//! `server ls|describe|delete` and `server token create|ls|delete`.

use alpacon_api::servers::{
    CreateRegistrationToken, NewRegistrationToken, RegistrationToken, Server,
};
use anyhow::{anyhow, Result};
use chrono::Utc;
use clap::Subcommand;
use serde_json::json;

use crate::client::Client;
use crate::config::Config;
use crate::error::CliError;
use crate::output::{self, print_json, Table};
use crate::Ctx;

const SERVERS: &[&str] = &["api", "servers", "servers"];
const REG_TOKENS: &[&str] = &["api", "servers", "registration-tokens"];

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// List servers and whether their agent is connected.
    #[command(visible_alias = "list")]
    Ls,
    /// Show everything the gateway knows about a server.
    Describe {
        /// Server name or ID.
        server: String,
    },
    /// Remove a server; its agent can no longer connect.
    #[command(visible_alias = "rm")]
    Delete {
        /// Server name or ID.
        server: String,
    },
    /// Registration tokens, used to connect new servers.
    #[command(subcommand)]
    Token(RegTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum RegTokenCommand {
    /// Create a registration token and print the install command.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
        /// How many servers may register with it.
        #[arg(long, value_name = "N")]
        max_uses: Option<u32>,
    },
    /// List registration tokens.
    #[command(visible_alias = "list")]
    Ls,
    /// Delete a registration token.
    #[command(visible_alias = "rm")]
    Delete {
        /// Token ID or name.
        token: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: ServerCommand) -> Result<u8> {
    match cmd {
        ServerCommand::Ls => ls(ctx).await,
        ServerCommand::Describe { server } => describe(ctx, &server).await,
        ServerCommand::Delete { server } => delete(ctx, &server).await,
        ServerCommand::Token(cmd) => run_token(ctx, cmd).await,
    }
}

async fn ls(ctx: &Ctx) -> Result<u8> {
    let client = ctx.client()?;
    let servers: Vec<Server> = client.list(SERVERS, &[], None).await?;
    if ctx.json() {
        print_json(&servers)?;
        return Ok(0);
    }
    let now = Utc::now();
    let mut t = Table::new(&["NAME", "ID", "CONNECTED", "LAST SEEN", "OS", "ADDRESS"]);
    for s in &servers {
        t.row(server_row(s, now));
    }
    t.print()?;
    Ok(0)
}

fn server_row(s: &Server, now: chrono::DateTime<Utc>) -> Vec<String> {
    let or_dash = |v: &str| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        or_dash(&s.name),
        s.id.clone(),
        output::yes_no(s.is_connected).into(),
        if s.is_connected {
            "now".into()
        } else {
            output::ago_of(s.last_seen_at.as_deref(), now)
        },
        or_dash(&s.os),
        or_dash(s.remote_ip.as_deref().unwrap_or("")),
    ]
}

pub fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A server object from a name or an ID.
pub async fn resolve_server(client: &Client, server: &str) -> Result<Server> {
    if looks_like_uuid(server) {
        return client.get(&[SERVERS, &[server]].concat(), &[]).await;
    }
    let found: Vec<Server> = client.list(SERVERS, &[("name", server)], None).await?;
    let id = pick_by_name(&found, server, "server")?;
    client.get(&[SERVERS, &[id.as_str()]].concat(), &[]).await
}

/// Objects with a name and an id.
pub trait Named {
    fn name(&self) -> Option<&str>;
    fn id(&self) -> Option<&str>;
}

impl Named for Server {
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }
}

impl Named for alpacon_api::tokens::ApiToken {
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }
}

impl Named for RegistrationToken {
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }
}

/// The id of the one item named `name` (filters may match loosely, so the
/// exact name is checked here).
pub fn pick_by_name<T: Named>(items: &[T], name: &str, what: &str) -> Result<String> {
    let ids: Vec<&str> = items
        .iter()
        .filter(|v| v.name() == Some(name))
        .filter_map(Named::id)
        .collect();
    match ids.as_slice() {
        [id] => Ok(id.to_string()),
        [] => Err(CliError::api(
            404,
            format!("{what}_not_found"),
            format!("no {what} named {name:?}"),
        )
        .into()),
        _ => Err(anyhow!(
            "{} {what}s are named {name:?}; give the ID instead",
            ids.len()
        )),
    }
}

async fn describe(ctx: &Ctx, server: &str) -> Result<u8> {
    let client = ctx.client()?;
    let s = resolve_server(&client, server).await?;
    if ctx.json() {
        print_json(&s)?;
    } else {
        print!("{}", output::describe(&serde_json::to_value(&s)?));
    }
    Ok(0)
}

async fn delete(ctx: &Ctx, server: &str) -> Result<u8> {
    let client = ctx.client()?;
    let s = resolve_server(&client, server).await?;
    let id = &s.id;
    client.delete(&[SERVERS, &[id.as_str()]].concat()).await?;
    if ctx.json() {
        print_json(&json!({ "id": id, "name": s.name, "deleted": true }))?;
    } else {
        println!("Deleted server {} ({id}).", output::sanitize(&s.name));
    }
    Ok(0)
}

async fn run_token(ctx: &Ctx, cmd: RegTokenCommand) -> Result<u8> {
    match cmd {
        RegTokenCommand::Create {
            name,
            expires_in_days,
            max_uses,
        } => {
            let config = ctx.config()?;
            let client = Ctx::client_for(&config)?;
            let body = CreateRegistrationToken {
                name: name.clone(),
                expires_in_days: expires_in_days.map(i64::from),
                max_uses: max_uses.map(i64::from),
            };
            let created: NewRegistrationToken = client.post(REG_TOKENS, &body).await?;
            if ctx.json() {
                print_json(&created)?;
                return Ok(0);
            }
            print!("{}", registration_instructions(&config, &name, &created));
            Ok(0)
        }
        RegTokenCommand::Ls => {
            let client = ctx.client()?;
            let tokens: Vec<RegistrationToken> = client.list(REG_TOKENS, &[], None).await?;
            if ctx.json() {
                print_json(&tokens)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "ID", "USES", "EXPIRES", "CREATED"]);
            for tok in &tokens {
                t.row(vec![
                    tok.name.clone(),
                    tok.id.clone(),
                    match tok.max_uses {
                        None => tok.uses.to_string(),
                        Some(max) => format!("{}/{max}", tok.uses),
                    },
                    expiry_of(tok.expires_at.as_deref()),
                    output::local_time(Some(&tok.created_at)),
                ]);
            }
            t.print()?;
            Ok(0)
        }
        RegTokenCommand::Delete { token } => {
            let client = ctx.client()?;
            let id = resolve_named::<RegistrationToken>(
                &client,
                REG_TOKENS,
                &token,
                "registration_token",
            )
            .await?;
            client
                .delete(&[REG_TOKENS, &[id.as_str()]].concat())
                .await?;
            if ctx.json() {
                print_json(&json!({ "id": id, "deleted": true }))?;
            } else {
                println!("Deleted registration token {id}.");
            }
            Ok(0)
        }
    }
}

/// "never" for tokens without an expiry.
pub fn expiry_of(expires_at: Option<&str>) -> String {
    match expires_at {
        None => "never".into(),
        Some(t) => output::local_time(Some(t)),
    }
}

/// An ID as is; a name through the listing (those endpoints have no filter).
pub async fn resolve_named<T: Named + serde::de::DeserializeOwned>(
    client: &Client,
    segments: &[&str],
    id_or_name: &str,
    what: &str,
) -> Result<String> {
    if looks_like_uuid(id_or_name) {
        return Ok(id_or_name.to_string());
    }
    let items: Vec<T> = client.list(segments, &[], None).await?;
    pick_by_name(&items, id_or_name, what)
}

/// Quote for a POSIX shell only when needed, so the common case stays
/// readable and copy-pasteable.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn registration_instructions(
    config: &Config,
    name: &str,
    created: &NewRegistrationToken,
) -> String {
    let key = &created.key;
    let url = &config.url;
    let ca = config.ca_cert.as_ref().map(|p| p.display().to_string());
    let curl_tls = match (&ca, config.insecure) {
        (Some(ca), _) => format!(" --cacert {}", shell_quote(ca)),
        (None, true) => " --insecure".into(),
        (None, false) => String::new(),
    };
    let register_tls = match &ca {
        Some(ca) => format!(" --ca-cert {}", shell_quote(ca)),
        None => String::new(),
    };
    let install_url = shell_quote(&format!("{url}/install.sh?token={key}"));
    let mut out = format!(
        "Registration token {} created (id {}).\n\
         Key (shown only once): {key}\n\n\
         Connect a server by running this on it:\n  \
         curl -fsSL{curl_tls} {install_url} | sudo sh\n\n\
         or, with alpamon already installed:\n  \
         alpamon register --url {} --token {key}{register_tls}\n",
        output::sanitize(name),
        created.token.id,
        shell_quote(url),
    );
    if ca.is_some() {
        out.push_str(&format!(
            "\nCopy the CA file to the server first (the gateway serves it at {url}/downloads/ca.crt)."
        ));
        // The gateway's own line fetches the CA and pins its sha256, so it
        // works on a fresh server as is.
        match created.install_command.as_str() {
            cmd if !cmd.is_empty() => out.push_str(&format!(
                " Or run this, which fetches and checks it:\n  {}\n",
                output::sanitize(cmd)
            )),
            _ => out.push('\n'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn uuid_detection() {
        assert!(looks_like_uuid("0b9e1c52-4b5e-4a8e-9f0a-1c2d3e4f5a6b"));
        assert!(!looks_like_uuid("web-1"));
        assert!(!looks_like_uuid("0b9e1c52x4b5e-4a8e-9f0a-1c2d3e4f5a6b"));
        assert!(!looks_like_uuid("0b9e1c52-4b5e-4a8e-9f0a-1c2d3e4f5a6g"));
    }

    #[test]
    fn pick_by_name_wants_exactly_one() {
        struct Item(&'static str, &'static str);
        impl Named for Item {
            fn name(&self) -> Option<&str> {
                Some(self.1)
            }
            fn id(&self) -> Option<&str> {
                Some(self.0)
            }
        }
        let items = vec![
            Item("1", "web"),
            Item("2", "web-2"),
            Item("3", "db"),
            Item("4", "db"),
        ];
        assert_eq!(pick_by_name(&items, "web", "server").unwrap(), "1");
        let missing = pick_by_name(&items, "cache", "server").unwrap_err();
        assert!(matches!(
            missing.downcast_ref::<CliError>(),
            Some(CliError::Api { code, .. }) if code == "server_not_found"
        ));
        assert!(pick_by_name(&items, "db", "server")
            .unwrap_err()
            .to_string()
            .contains("2 servers"));
    }

    #[test]
    fn server_rows() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let server = |id: &str, name: &str, connected: bool, seen: Option<&str>| Server {
            id: id.into(),
            name: name.into(),
            is_connected: connected,
            connected_at: None,
            last_seen_at: seen.map(str::to_string),
            remote_ip: None,
            hostname: String::new(),
            os: String::new(),
            kernel: String::new(),
            arch: String::new(),
            cpus: 0,
            memory_bytes: 0,
            agent_version: String::new(),
            created_at: "2024-05-01T00:00:00Z".into(),
        };
        let mut s = server("abc", "web", false, Some("2024-05-01T11:00:00Z"));
        s.os = "Debian 12".into();
        s.remote_ip = Some("10.0.0.5".into());
        assert_eq!(
            server_row(&s, now),
            ["web", "abc", "no", "1h ago", "Debian 12", "10.0.0.5"]
        );
        let s = server("x", "db", true, None);
        assert_eq!(server_row(&s, now), ["db", "x", "yes", "now", "-", "-"]);
        let s = server("y", "cache", false, None);
        assert_eq!(server_row(&s, now)[3], "never");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/data/tls/ca.crt"), "/data/tls/ca.crt");
        assert_eq!(
            shell_quote("https://gw:8443/install.sh?token=alprt-x"),
            "'https://gw:8443/install.sh?token=alprt-x'"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn install_instructions() {
        let config = Config {
            url: "https://gw:8443".into(),
            workspace: None,
            token: "t".into(),
            ca_cert: Some("/d/tls/ca.crt".into()),
            insecure: false,
            work_session: None,
        };
        let created = |install_command: &str| NewRegistrationToken {
            token: RegistrationToken {
                id: "i".into(),
                name: "web".into(),
                created_by: None,
                created_at: "2024-05-01T00:00:00Z".into(),
                expires_at: None,
                max_uses: Some(1),
                uses: 0,
            },
            key: "alprt-K".into(),
            install_command: install_command.into(),
        };
        let text = registration_instructions(&config, "web", &created(""));
        assert!(text.contains(
            "curl -fsSL --cacert /d/tls/ca.crt 'https://gw:8443/install.sh?token=alprt-K' | sudo sh"
        ));
        assert!(text.contains(
            "alpamon register --url https://gw:8443 --token alprt-K --ca-cert /d/tls/ca.crt"
        ));
        assert!(!text.contains("fetches"));
        let text = registration_instructions(&config, "web", &created("sh -c 'pinned'"));
        assert!(text.contains("fetches and checks it:\n  sh -c 'pinned'\n"));
    }
}
