//! `login`, `logout`, `whoami`, `version`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use alpacon_api::auth::{Login, LoginAnswer, LoginSession, WhoAmI};
use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::client::{Client, TlsOptions};
use crate::config::{self, Config};
use crate::error::CliError;
use crate::iam::or_dash;
use crate::output::{self, print_json};
use crate::Ctx;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Gateway URL, e.g. https://gateway:8443 (a workspace path is kept for
    /// display). Defaults to the URL of the current login.
    pub url: Option<String>,

    /// Log in with an API token instead of a password.
    #[arg(short = 't', long, conflicts_with_all = ["username", "password"])]
    pub token: Option<String>,

    /// Username; the password is prompted for unless -p is given.
    #[arg(short = 'u', long)]
    pub username: Option<String>,

    /// Password (prefer the prompt: arguments are visible to other users).
    #[arg(short = 'p', long, requires = "username")]
    pub password: Option<String>,

    /// TOTP code for an account with MFA (prompted for when needed and not
    /// given; for scripts).
    #[arg(long, value_name = "CODE", conflicts_with = "token")]
    pub totp: Option<String>,

    /// A one-time recovery code instead of a TOTP code.
    #[arg(long, value_name = "CODE", conflicts_with_all = ["token", "totp"])]
    pub recovery_code: Option<String>,

    /// PEM file of the CA that signed the gateway's certificate
    /// (the gateway's DATA/tls/ca.crt).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca_cert: Option<PathBuf>,

    /// Do not verify the gateway's certificate (testing only).
    #[arg(long)]
    pub insecure: bool,
}

pub async fn login(ctx: &Ctx, args: LoginArgs) -> Result<u8> {
    // Without a URL, log in again to the gateway we already know.
    let previous = match ctx.config() {
        Ok(c) => Some(c),
        Err(e) if is_not_logged_in(&e) => None,
        // A broken config is what a new login repairs.
        Err(e) => {
            eprintln!("alpacon: warning: ignoring the current config: {e:#}");
            None
        }
    };
    let (url, workspace) = match (&args.url, &previous) {
        (Some(u), _) => config::parse_gateway_url(u)?,
        (None, Some(p)) => (p.url.clone(), p.workspace.clone()),
        (None, None) => {
            return Err(CliError::Usage(
                "give the gateway URL: `alpacon login https://GATEWAY:8443`".into(),
            )
            .into())
        }
    };
    // TLS flags given now win; otherwise reuse those of the same gateway.
    let same_gateway = previous.as_ref().filter(|p| p.url == url);
    let (ca_cert, insecure) = if args.ca_cert.is_some() || args.insecure {
        let ca = match args.ca_cert {
            Some(p) => Some(
                std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))?,
            ),
            None => None,
        };
        (ca, args.insecure)
    } else if let Some(p) = same_gateway {
        (p.ca_cert.clone(), p.insecure)
    } else {
        (None, false)
    };
    if let Some(ca) = &ca_cert {
        if !ca.is_file() {
            return Err(anyhow::anyhow!(
                "no such file: {} (the CA certificate for --ca-cert)",
                ca.display()
            ));
        }
    }
    if insecure {
        crate::warn_insecure();
    }
    let tls = TlsOptions {
        ca_cert: ca_cert.clone(),
        insecure,
    };

    let (token, username, user) = if let Some(token) = args.token {
        let client = Client::new(&url, Some(token.clone()), &tls)?;
        let me: WhoAmI = client
            .get(&["api", "auth", "whoami"], &[])
            .await
            .map_err(|e| refused(e, "check the token"))?;
        let user = serde_json::to_value(&me)?;
        (token, me.username, user)
    } else {
        let username = match args.username {
            Some(u) => u,
            None => prompt_username()?,
        };
        let password = match args.password {
            Some(p) => p,
            None => rpassword::prompt_password(format!("Password for {username}: "))
                .context("cannot read the password (no terminal?); pass -p PASSWORD")?,
        };
        let client = Client::new(&url, None, &tls)?;
        let first: LoginAnswer = client
            .post(
                &["api", "auth", "login"],
                &Login {
                    username: username.clone(),
                    password,
                },
            )
            .await
            .map_err(|e| refused(e, "check the username and password"))?;
        // A correct password of an account with MFA answers the second step.
        let resp: LoginSession = match first {
            LoginAnswer::MfaChallenge(step) => {
                let mut body = if let Some(code) = &args.recovery_code {
                    json!({ "recovery_code": code })
                } else if let Some(code) = &args.totp {
                    json!({ "code": code.trim() })
                } else if std::io::stdin().is_terminal() {
                    if !step.methods.iter().any(|m| m == "totp" || m == "recovery") {
                        return Err(anyhow::anyhow!(
                            "this account's second factor is a security key or passkey, which the \
                         CLI cannot use; log in with the web console"
                        ));
                    }
                    crate::mfa::proof_body(&crate::mfa::read_code(
                        "Authentication code (or recovery code): ",
                    )?)
                } else {
                    return Err(CliError::Usage(
                        "this account uses multi-factor authentication: pass --totp CODE \
                     (or --recovery-code CODE)"
                            .into(),
                    )
                    .into());
                };
                body["mfa_token"] = json!(step.mfa_token);
                let done: LoginSession = client
                    .post(&["api", "auth", "login", "mfa"], &body)
                    .await
                    .map_err(|e| refused(e, "check the code (a TOTP code works once)"))?;
                done
            }
            LoginAnswer::Session(s) => s,
        };
        // The workspace enforces MFA and the account has none yet: the
        // session can only enroll one.
        if resp.mfa_enrollment_required == Some(true) {
            eprintln!(
                "alpacon: this workspace requires multi-factor authentication; until you \
                 enroll a second factor (`alpacon mfa totp enroll`) this login can do nothing else"
            );
        }
        let user = serde_json::to_value(&resp.user)?;
        (resp.key, resp.user.username, user)
    };

    let config = Config {
        url,
        workspace,
        token,
        ca_cert,
        insecure,
        work_session: None,
    };
    config::save(&ctx.config_path, &config)?;
    if ctx.json() {
        print_json(&json!({
            "url": config.url,
            "workspace": config.workspace,
            "user": user,
        }))?;
    } else {
        println!(
            "Logged in to {} as {}.",
            config.display_url(),
            output::sanitize(&username)
        );
    }
    Ok(0)
}

/// A 401 during login is about the credential just typed, not a stale
/// login, so it gets its own hint.
fn refused(err: anyhow::Error, hint: &'static str) -> anyhow::Error {
    match err.downcast_ref::<CliError>() {
        Some(CliError::Api {
            status: 401,
            detail,
            ..
        }) => CliError::LoginRefused {
            detail: detail.clone(),
            hint,
        }
        .into(),
        _ => err,
    }
}

fn is_not_logged_in(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<CliError>(), Some(CliError::NotLoggedIn))
}

fn prompt_username() -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage("give -u USERNAME or -t TOKEN".into()).into());
    }
    eprint!("Username: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let name = line.trim().to_string();
    if name.is_empty() {
        return Err(CliError::Usage("a username is required".into()).into());
    }
    Ok(name)
}

pub async fn logout(ctx: &Ctx) -> Result<u8> {
    let config = match ctx.config() {
        Ok(c) => c,
        Err(e) if is_not_logged_in(&e) => {
            eprintln!("Not logged in.");
            return Ok(0);
        }
        // An unreadable config is still removed: that is what logout is for.
        Err(e) => {
            eprintln!("alpacon: {e:#}");
            config::remove(&ctx.config_path)?;
            return Ok(0);
        }
    };
    // API tokens outlive the login on purpose (`alpacon token delete`);
    // session keys are revoked so a copied config stops working.
    if config.is_session_key() {
        let revoked = async {
            let client = Ctx::client_for(&config)?;
            let url = client.endpoint(&["api", "auth", "logout"]);
            client
                .send(client.request(reqwest::Method::POST, url))
                .await
        }
        .await;
        if let Err(e) = revoked {
            // Expired or revoked keys are fine; anything else is worth a word.
            if !matches!(
                e.downcast_ref::<CliError>(),
                Some(CliError::Api { status: 401, .. })
            ) {
                eprintln!("alpacon: warning: could not revoke the session key: {e:#}");
            }
        }
    }
    config::remove(&ctx.config_path)?;
    if !ctx.json() {
        println!("Logged out of {}.", config.display_url());
        if !config.is_session_key() {
            println!("The API token stays valid; revoke it with `alpacon token delete NAME`.");
        }
    }
    Ok(0)
}

pub async fn whoami(ctx: &Ctx) -> Result<u8> {
    let config = ctx.config()?;
    let client = Ctx::client_for(&config)?;
    let me: WhoAmI = client.get(&["api", "auth", "whoami"], &[]).await?;
    if ctx.json() {
        print_json(&me)?;
        return Ok(0);
    }
    let role = if me.is_superuser {
        "superuser"
    } else if me.is_staff {
        "staff"
    } else {
        "member"
    };
    let auth = match &me.token {
        Some(t) => format!("token {}", t.name),
        None => me.auth.as_str().to_string(),
    };
    print!(
        "{}",
        output::record(&[
            ("username", or_dash(&me.username)),
            ("id", or_dash(&me.id)),
            ("role", role.to_string()),
            ("auth", auth),
            ("gateway", config.display_url()),
        ])
    );
    Ok(0)
}

pub async fn version(ctx: &Ctx) -> Result<u8> {
    let client_version = env!("CARGO_PKG_VERSION");
    // The gateway's version is a bonus: never fail or hang because of it.
    let gateway = match ctx.config() {
        Ok(config) => {
            let status = async {
                let client = Client::from_config(&config)?;
                client
                    .get::<alpacon_api::Status>(&["api", "status"], &[])
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(5), status).await {
                Ok(Ok(v)) => Some((config.display_url(), or_dash(&v.version))),
                _ => None,
            }
        }
        Err(_) => None,
    };
    if ctx.json() {
        let mut v = json!({ "version": client_version });
        if let Some((url, ver)) = &gateway {
            v["gateway"] = json!({ "url": url, "version": ver });
        }
        print_json(&v)?;
    } else {
        println!("alpacon {client_version}");
        if let Some((url, ver)) = gateway {
            println!("gateway {} at {url}", output::sanitize(&ver));
        }
    }
    Ok(0)
}
