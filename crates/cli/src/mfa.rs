//! `mfa status|verify|totp|recovery-codes|policy`: second factors.
//!
//! The gateway asks for a recent verification at decision points (creating
//! tokens, changing security settings, acting as another system account);
//! `alpacon mfa verify` refreshes it for the current login session.

use std::io::{BufRead, IsTerminal, Write};

use alpacon_api::mfa as api;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::error::CliError;
use crate::output::{self, print_json};
use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Your second factors, recovery codes left, this session's
    /// verification and the workspace policy.
    Status,
    /// Prove a second factor for this login session (prompts for the code
    /// when none is given).
    Verify {
        /// The 6-digit code of your authenticator app.
        code: Option<String>,
        /// Use a recovery code instead (each works once).
        #[arg(long, value_name = "CODE", conflicts_with = "code")]
        recovery_code: Option<String>,
    },
    /// Authenticator apps (TOTP).
    Totp {
        #[command(subcommand)]
        op: TotpOp,
    },
    /// One-time recovery codes.
    RecoveryCodes {
        #[command(subcommand)]
        op: RecoveryOp,
    },
    /// Show the workspace MFA policy, or change it (admins).
    Policy {
        /// Require a second factor at every login.
        #[arg(long, value_name = "BOOL")]
        enforce_at_login: Option<bool>,
        /// Comma-separated: totp, webauthn.
        #[arg(long, value_delimiter = ',', value_name = "METHODS")]
        allowed_methods: Option<Vec<String>>,
        /// How long a verification covers decision points.
        #[arg(long, value_name = "MINUTES")]
        validity_minutes: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TotpOp {
    /// Start enrolling an authenticator app: prints its QR code, the secret
    /// and (with a first factor) your recovery codes, once.
    Enroll,
    /// Confirm the enrollment with a code from the app.
    Verify {
        /// The 6-digit code the app shows.
        code: Option<String>,
    },
    /// Remove the authenticator app (needs a recent verification).
    #[command(visible_alias = "rm")]
    Remove,
}

#[derive(Debug, Subcommand)]
pub enum RecoveryOp {
    /// Replace your recovery codes with new ones, shown once (needs a
    /// recent verification).
    Regenerate,
}

pub async fn run(ctx: &Ctx, cmd: MfaCommand) -> Result<u8> {
    match cmd {
        MfaCommand::Status => status(ctx).await,
        MfaCommand::Verify {
            code,
            recovery_code,
        } => verify(ctx, code, recovery_code).await,
        MfaCommand::Totp { op } => match op {
            TotpOp::Enroll => totp_enroll(ctx).await,
            TotpOp::Verify { code } => totp_verify(ctx, code).await,
            TotpOp::Remove => totp_remove(ctx).await,
        },
        MfaCommand::RecoveryCodes {
            op: RecoveryOp::Regenerate,
        } => recovery_regenerate(ctx).await,
        MfaCommand::Policy {
            enforce_at_login,
            allowed_methods,
            validity_minutes,
        } => policy(ctx, enforce_at_login, allowed_methods, validity_minutes).await,
    }
}

/// Reads a code: from the terminal with a prompt, or a line of standard
/// input when it is piped.
pub fn read_code(prompt: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the code")?;
    let code = line.trim().to_string();
    if code.is_empty() {
        return Err(CliError::Usage("give the code as an argument".into()).into());
    }
    Ok(code)
}

/// A TOTP code is 6 digits; anything else typed at a code prompt is taken
/// as a recovery code.
pub fn looks_like_totp(code: &str) -> bool {
    let c: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit())
}

/// A verification from what was typed: a TOTP code or a recovery code.
pub fn proof(code: &str) -> api::MfaProof {
    let c: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if looks_like_totp(&c) {
        api::MfaProof {
            code: Some(c),
            ..api::MfaProof::default()
        }
    } else {
        api::MfaProof {
            recovery_code: Some(code.trim().to_string()),
            ..api::MfaProof::default()
        }
    }
}

/// The body of a verification: `{code}` or `{recovery_code}`.
pub fn proof_body(code: &str) -> Value {
    serde_json::to_value(proof(code)).unwrap_or_else(|_| json!({}))
}

/// Text from the gateway as shown: "-" when empty.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// The QR code of `data` in unicode half blocks (two rows per line), light
/// modules drawn so that it scans on a dark terminal.
pub fn qr_text(data: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(data.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

async fn status(ctx: &Ctx) -> Result<u8> {
    let client = ctx.client()?;
    let v: api::MfaStatus = client.get(&["api", "iam", "mfa"], &[]).await?;
    if ctx.json() {
        print_json(&v)?;
        return Ok(0);
    }
    let key_names: Vec<String> = v.webauthn.iter().map(|k| or_dash(&k.name)).collect();
    let totp = if v.totp.enabled {
        "enabled"
    } else if v.totp.pending {
        "pending confirmation (`alpacon mfa totp verify CODE`)"
    } else {
        "no"
    };
    let session = if v.session.enroll_only {
        "enrollment only (enroll a second factor)".to_string()
    } else if v.session.verified {
        format!(
            "verified until {}",
            output::local_time(v.session.valid_until.as_deref())
        )
    } else {
        "not verified (`alpacon mfa verify`)".to_string()
    };
    let methods: Vec<&str> = v
        .policy
        .allowed_methods
        .iter()
        .map(|m| m.as_str())
        .collect();
    print!(
        "{}",
        output::record(&[
            ("mfa", output::yes_no(v.enrolled).to_string()),
            ("totp", totp.to_string()),
            (
                "security keys",
                if key_names.is_empty() {
                    "-".to_string()
                } else {
                    key_names.join(", ")
                }
            ),
            (
                "recovery codes left",
                v.recovery_codes_remaining.to_string()
            ),
            ("this session", session),
            (
                "policy",
                format!(
                    "enforce at login: {}, methods: {}, verification valid {} min",
                    output::yes_no(v.policy.enforce_at_login),
                    methods.join(", "),
                    v.policy.validity_minutes
                )
            ),
        ])
    );
    Ok(0)
}

async fn verify(ctx: &Ctx, code: Option<String>, recovery: Option<String>) -> Result<u8> {
    let client = ctx.client()?;
    let body = match (code, recovery) {
        (_, Some(r)) => api::MfaProof {
            recovery_code: Some(r),
            ..api::MfaProof::default()
        },
        (Some(c), None) => proof(&c),
        (None, None) => proof(&read_code("Authentication code (or recovery code): ")?),
    };
    let v: api::MfaVerified = client
        .post(&["api", "auth", "mfa", "verify"], &body)
        .await?;
    if ctx.json() {
        print_json(&v)?;
    } else {
        println!(
            "Verified; valid until {}.",
            output::local_time(Some(&v.valid_until))
        );
    }
    Ok(0)
}

async fn totp_enroll(ctx: &Ctx) -> Result<u8> {
    let client = ctx.client()?;
    let e: api::TotpEnrollment = client
        .post(&["api", "iam", "mfa", "totp"], &json!({}))
        .await?;
    if ctx.json() {
        // The QR code as SVG is for the console.
        let mut v = serde_json::to_value(&e)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("qr_svg");
        }
        print_json(&v)?;
        return Ok(0);
    }
    let uri = or_dash(&e.otpauth_uri);
    println!("Scan this QR code with an authenticator app:\n");
    if let Some(qr) = qr_text(&uri) {
        println!("{qr}");
    }
    println!("or enter the secret by hand: {}", or_dash(&e.secret));
    println!("URI: {uri}\n");
    if let Some(codes) = &e.recovery_codes {
        println!("Recovery codes (each works once; shown only now, keep them safe):");
        for c in codes {
            println!("  {c}");
        }
        println!();
    }
    println!("Then confirm with a code from the app: alpacon mfa totp verify CODE");
    Ok(0)
}

async fn totp_verify(ctx: &Ctx, code: Option<String>) -> Result<u8> {
    let client = ctx.client()?;
    let code = match code {
        Some(c) => c,
        None => read_code("Code from the authenticator app: ")?,
    };
    let v: api::TotpConfirmed = client
        .post(
            &["api", "iam", "mfa", "totp", "verify"],
            &api::TotpConfirm {
                code: code.trim().to_string(),
            },
        )
        .await?;
    if ctx.json() {
        print_json(&v)?;
    } else {
        println!("TOTP enabled: logins now ask for a code.");
    }
    Ok(0)
}

async fn totp_remove(ctx: &Ctx) -> Result<u8> {
    let client = ctx.client()?;
    client.delete(&["api", "iam", "mfa", "totp"]).await?;
    if ctx.json() {
        print_json(&api::TotpRemoved { removed: true })?;
    } else {
        println!("TOTP authenticator removed.");
    }
    Ok(0)
}

async fn recovery_regenerate(ctx: &Ctx) -> Result<u8> {
    let client = ctx.client()?;
    let v: api::RecoveryCodes = client
        .post(&["api", "iam", "mfa", "recovery-codes"], &json!({}))
        .await?;
    if ctx.json() {
        print_json(&v)?;
        return Ok(0);
    }
    println!("New recovery codes (the old ones no longer work; shown only now):");
    for c in &v.recovery_codes {
        println!("  {c}");
    }
    Ok(0)
}

async fn policy(
    ctx: &Ctx,
    enforce: Option<bool>,
    methods: Option<Vec<String>>,
    validity: Option<i64>,
) -> Result<u8> {
    let client = ctx.client()?;
    let mut p: api::MfaPolicy = client.get(&["api", "iam", "mfa-policy"], &[]).await?;
    if enforce.is_some() || methods.is_some() || validity.is_some() {
        if let Some(e) = enforce {
            p.enforce_at_login = e;
        }
        if let Some(v) = validity {
            p.validity_minutes = v;
        }
        let mut body = serde_json::to_value(&p)?;
        // The method names go as given: the gateway says which it does not
        // know.
        if let Some(m) = methods {
            body["allowed_methods"] = json!(m);
        }
        let url = client.endpoint(&["api", "iam", "mfa-policy"]);
        p = client
            .send_json(client.request(reqwest::Method::PUT, url).json(&body))
            .await?;
    }
    if ctx.json() {
        print_json(&p)?;
    } else {
        let methods: Vec<&str> = p.allowed_methods.iter().map(|m| m.as_str()).collect();
        print!(
            "{}",
            output::record(&[
                (
                    "enforce at login",
                    output::yes_no(p.enforce_at_login).to_string()
                ),
                ("allowed methods", or_dash(&methods.join(","))),
                ("validity minutes", p.validity_minutes.to_string()),
            ])
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_told_apart() {
        assert!(looks_like_totp("123456"));
        assert!(looks_like_totp("123 456"));
        assert!(!looks_like_totp("12345"));
        assert!(!looks_like_totp("abcd-efgh-jkmn-pqrs"));
        assert_eq!(proof_body(" 123 456 "), json!({"code": "123456"}));
        assert_eq!(
            proof_body("abcd-efgh-jkmn-pqrs"),
            json!({"recovery_code": "abcd-efgh-jkmn-pqrs"})
        );
    }

    #[test]
    fn qr_is_drawn_with_half_blocks() {
        let q = qr_text("otpauth://totp/Alpacon:a?secret=AAAA&issuer=Alpacon").unwrap();
        assert!(q.contains('▀') || q.contains('▄') || q.contains('█'));
        assert!(q.lines().count() > 10);
    }
}
