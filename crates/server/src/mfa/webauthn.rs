//! WebAuthn (security keys and passkeys) through webauthn-rs. The relying
//! party is the gateway's public URL: its host is the RP id and the URL the
//! only accepted origin, so an IP-address public URL has no WebAuthn
//! (browsers refuse IP addresses as RP ids).

use alpacon_api::ErrorCode;
use sqlx::FromRow;
use webauthn_rs::prelude::{Passkey, Url, Uuid, Webauthn, WebauthnBuilder};

use crate::app::AppState;
use crate::db::Db;
use crate::error::ApiError;

pub fn webauthn(st: &AppState) -> Result<Webauthn, ApiError> {
    build(&st.config.public_url).map_err(|e| {
        ApiError::new(
            ErrorCode::WebauthnUnavailable,
            format!(
                "WebAuthn needs the gateway's public URL to be an https:// DNS name ({e}); \
                 start the gateway with --public-url https://NAME:PORT"
            ),
        )
    })
}

pub fn build(public_url: &str) -> Result<Webauthn, String> {
    let origin = Url::parse(public_url).map_err(|e| format!("invalid public URL: {e}"))?;
    let rp_id = origin
        .domain()
        .ok_or_else(|| format!("{public_url} has no DNS name"))?
        .to_string();
    WebauthnBuilder::new(&rp_id, &origin)
        .and_then(|b| b.rp_name("Alpacon").build())
        .map_err(|e| e.to_string())
}

/// The WebAuthn user handle for a user id: stable, opaque, 16 bytes.
pub fn user_handle(user_id: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(user_id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid::from_bytes(b)
}

/// Hex of a credential id, as stored in `mfa_webauthn.credential_id`.
pub fn credential_key(pk: &Passkey) -> String {
    hex::encode(pk.cred_id().as_ref() as &[u8])
}

/// A row of `mfa_webauthn`: its id and the passkey as JSON.
#[derive(FromRow)]
struct PasskeyRow {
    id: String,
    passkey: String,
}

/// A user's credentials: (row id, passkey).
pub async fn passkeys(db: &Db, user_id: &str) -> Result<Vec<(String, Passkey)>, ApiError> {
    let rows = sqlx::query("SELECT id, passkey FROM mfa_webauthn WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(&db.pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let r = PasskeyRow::from_row(&r)?;
        let pk: Passkey = serde_json::from_str(&r.passkey).map_err(ApiError::internal)?;
        out.push((r.id, pk));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rp_comes_from_the_public_url() {
        assert!(build("https://localhost:8443").is_ok());
        assert!(build("https://gw.example.com").is_ok());
        assert!(build("https://127.0.0.1:8443").is_err());
        assert!(build("not a url").is_err());
    }

    #[test]
    fn user_handles_are_stable_and_distinct() {
        assert_eq!(user_handle("a"), user_handle("a"));
        assert_ne!(user_handle("a"), user_handle("b"));
    }
}
