//! `server ls|describe|delete` and `server token create|ls|delete`.

use anyhow::{anyhow, Result};
use chrono::Utc;
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::client::Client;
use crate::config::Config;
use crate::error::CliError;
use crate::output::{self, print_json, text, Table};
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
    let servers = client.list(SERVERS, &[], None).await?;
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

/// The system details' field names are not pinned by the contract, so the
/// likely spellings are tried in turn.
fn server_row(s: &Value, now: chrono::DateTime<Utc>) -> Vec<String> {
    let connected = s
        .get("is_connected")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    vec![
        text(s, &["name"]),
        text(s, &["id"]),
        output::yes_no(connected).into(),
        if connected {
            "now".into()
        } else {
            output::ago(s, &["last_seen_at"], now)
        },
        text(s, &["os", "system.os", "os_name", "platform"]),
        text(
            s,
            &[
                "address",
                "remote_ip",
                "remote_address",
                "ip",
                "addresses",
                "system.addresses",
            ],
        ),
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
pub async fn resolve_server(client: &Client, server: &str) -> Result<Value> {
    if looks_like_uuid(server) {
        return client.get(&[SERVERS, &[server]].concat(), &[]).await;
    }
    let found = client.list(SERVERS, &[("name", server)], None).await?;
    let id = pick_by_name(&found, server, "server")?;
    client.get(&[SERVERS, &[id.as_str()]].concat(), &[]).await
}

/// The id of the one item named `name` (filters may match loosely, so the
/// exact name is checked here).
pub fn pick_by_name(items: &[Value], name: &str, what: &str) -> Result<String> {
    let ids: Vec<&str> = items
        .iter()
        .filter(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .filter_map(|v| v.get("id").and_then(Value::as_str))
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
        print!("{}", output::describe(&s));
    }
    Ok(0)
}

async fn delete(ctx: &Ctx, server: &str) -> Result<u8> {
    let client = ctx.client()?;
    let s = resolve_server(&client, server).await?;
    let id = text(&s, &["id"]);
    client.delete(&[SERVERS, &[id.as_str()]].concat()).await?;
    if ctx.json() {
        print_json(&json!({ "id": id, "name": s.get("name"), "deleted": true }))?;
    } else {
        println!(
            "Deleted server {} ({id}).",
            output::sanitize(&text(&s, &["name"]))
        );
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
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            if let Some(d) = expires_in_days {
                body.insert("expires_in_days".into(), json!(d));
            }
            if let Some(n) = max_uses {
                body.insert("max_uses".into(), json!(n));
            }
            let created: Value = client.post(REG_TOKENS, &body).await?;
            if ctx.json() {
                print_json(&created)?;
                return Ok(0);
            }
            let key = created
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("the gateway did not return the token's key"))?;
            print!(
                "{}",
                registration_instructions(&config, &name, key, &created)
            );
            Ok(0)
        }
        RegTokenCommand::Ls => {
            let client = ctx.client()?;
            let tokens = client.list(REG_TOKENS, &[], None).await?;
            if ctx.json() {
                print_json(&tokens)?;
                return Ok(0);
            }
            let mut t = Table::new(&["NAME", "ID", "USES", "EXPIRES", "CREATED"]);
            for tok in &tokens {
                let uses = text(tok, &["uses", "use_count", "used"]);
                let max = text(tok, &["max_uses"]);
                t.row(vec![
                    text(tok, &["name"]),
                    text(tok, &["id"]),
                    if max == "-" {
                        uses
                    } else {
                        format!("{uses}/{max}")
                    },
                    expiry(tok),
                    output::time(tok, &["created_at"]),
                ]);
            }
            t.print()?;
            Ok(0)
        }
        RegTokenCommand::Delete { token } => {
            let client = ctx.client()?;
            let id = resolve_by_name(&client, REG_TOKENS, &token, "registration_token").await?;
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
pub fn expiry(v: &Value) -> String {
    match output::lookup(v, "expires_at") {
        None => "never".into(),
        Some(_) => output::time(v, &["expires_at"]),
    }
}

/// An ID as is; a name through the listing (those endpoints have no filter).
pub async fn resolve_by_name(
    client: &Client,
    segments: &[&str],
    id_or_name: &str,
    what: &str,
) -> Result<String> {
    if looks_like_uuid(id_or_name) {
        return Ok(id_or_name.to_string());
    }
    let items = client.list(segments, &[], None).await?;
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

fn registration_instructions(config: &Config, name: &str, key: &str, created: &Value) -> String {
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
        text(created, &["id"]),
        shell_quote(url),
    );
    if ca.is_some() {
        out.push_str(&format!(
            "\nCopy the CA file to the server first (the gateway serves it at {url}/downloads/ca.crt)."
        ));
        // The gateway's own line fetches the CA and pins its sha256, so it
        // works on a fresh server as is.
        match created.get("install_command").and_then(Value::as_str) {
            Some(cmd) if !cmd.is_empty() => out.push_str(&format!(
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
        let items = vec![
            json!({"id": "1", "name": "web"}),
            json!({"id": "2", "name": "web-2"}),
            json!({"id": "3", "name": "db"}),
            json!({"id": "4", "name": "db"}),
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
        let s = json!({"id": "abc", "name": "web", "is_connected": false,
            "last_seen_at": "2024-05-01T11:00:00Z", "system": {"os": "Debian 12"},
            "remote_ip": "10.0.0.5"});
        assert_eq!(
            server_row(&s, now),
            ["web", "abc", "no", "1h ago", "Debian 12", "10.0.0.5"]
        );
        let s = json!({"id": "x", "name": "db", "is_connected": true, "last_seen_at": null});
        assert_eq!(server_row(&s, now), ["db", "x", "yes", "now", "-", "-"]);
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
        let text = registration_instructions(&config, "web", "alprt-K", &json!({"id": "i"}));
        assert!(text.contains(
            "curl -fsSL --cacert /d/tls/ca.crt 'https://gw:8443/install.sh?token=alprt-K' | sudo sh"
        ));
        assert!(text.contains(
            "alpamon register --url https://gw:8443 --token alprt-K --ca-cert /d/tls/ca.crt"
        ));
        assert!(!text.contains("fetches"));
        let created = json!({"id": "i", "install_command": "sh -c 'pinned'"});
        let text = registration_instructions(&config, "web", "alprt-K", &created);
        assert!(text.contains("fetches and checks it:\n  sh -c 'pinned'\n"));
    }
}
