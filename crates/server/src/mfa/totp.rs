//! TOTP (RFC 6238): SHA-1, 6 digits, 30 s steps, 160-bit secrets, one step
//! of clock skew either way. [`accept`] is the pure decision, including the
//! replay rule: a code is accepted only for a step later than the last one
//! accepted, so no code works twice.

use rand::RngCore;
use totp_rs::{Algorithm, Secret, TOTP};

pub const DIGITS: usize = 6;
pub const STEP_SECS: u64 = 30;
/// 160 bits, the RFC 4226 recommendation.
pub const SECRET_BYTES: usize = 20;
pub const ISSUER: &str = "Alpacon";

pub fn new_secret() -> Vec<u8> {
    let mut s = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// Base32 (RFC 4648, no padding) of a secret, as authenticator apps and
/// `oathtool -b` take it.
pub fn encode_secret(secret: &[u8]) -> String {
    Secret::Raw(secret.to_vec()).to_encoded().to_string()
}

pub fn decode_secret(b32: &str) -> Option<Vec<u8>> {
    Secret::Encoded(b32.to_string()).to_bytes().ok()
}

/// The generator for `secret`, labelled `Alpacon:<account>` in apps.
pub fn generator(secret: &[u8], account: &str) -> Result<TOTP, String> {
    // The otpauth label may not contain ':'.
    let account = account.replace(':', "_");
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECS,
        secret.to_vec(),
        Some(ISSUER.to_string()),
        account,
    )
    .map_err(|e| e.to_string())
}

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not six digits.
    Malformed,
    /// Matches no step near now.
    Wrong,
    /// Matches only steps already used.
    Replayed,
}

/// The step (unix time / 30) `code` matches at `now_secs`, checking the
/// current step and one either side, if that step is later than
/// `last_step` (the last accepted one).
pub fn accept(gen: &TOTP, code: &str, now_secs: u64, last_step: i64) -> Result<i64, Reject> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::Malformed);
    }
    let now_step = (now_secs / STEP_SECS) as i64;
    let mut replayed = false;
    for step in [now_step, now_step - 1, now_step + 1] {
        if step < 0 {
            continue;
        }
        let expected = gen.generate(step as u64 * STEP_SECS);
        if constant_time_eq(expected.as_bytes(), code.as_bytes()) {
            if step > last_step {
                return Ok(step);
            }
            replayed = true;
        }
    }
    Err(if replayed {
        Reject::Replayed
    } else {
        Reject::Wrong
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B's SHA-1 key.
    fn rfc_gen() -> TOTP {
        generator(b"12345678901234567890", "alice").unwrap()
    }

    #[test]
    fn rfc6238_vectors_last_six_digits() {
        let g = rfc_gen();
        // RFC 6238 Appendix B (8 digits there; 6 here are the last six).
        assert_eq!(g.generate(59), "287082");
        assert_eq!(g.generate(1111111109), "081804");
        assert_eq!(g.generate(1234567890), "005924");
        assert_eq!(g.generate(2000000000), "279037");
    }

    #[test]
    fn accepts_the_current_and_adjacent_steps_only() {
        let g = rfc_gen();
        let now = 1234567890;
        let step = (now / 30) as i64;
        assert_eq!(accept(&g, &g.generate(now), now, 0), Ok(step));
        assert_eq!(accept(&g, &g.generate(now - 30), now, 0), Ok(step - 1));
        assert_eq!(accept(&g, &g.generate(now + 30), now, 0), Ok(step + 1));
        assert_eq!(
            accept(&g, &g.generate(now - 90), now, 0),
            Err(Reject::Wrong)
        );
        assert_eq!(accept(&g, "12345", now, 0), Err(Reject::Malformed));
        assert_eq!(accept(&g, "12345a", now, 0), Err(Reject::Malformed));
    }

    #[test]
    fn a_code_is_never_accepted_twice() {
        let g = rfc_gen();
        let now = 1234567890;
        let code = g.generate(now);
        let step = accept(&g, &code, now, 0).unwrap();
        assert_eq!(accept(&g, &code, now, step), Err(Reject::Replayed));
        // Nor a code older than one already used.
        let older = g.generate(now - 30);
        assert_eq!(accept(&g, &older, now, step), Err(Reject::Replayed));
        // The next step's code is fine.
        assert_eq!(
            accept(&g, &g.generate(now + 30), now + 30, step),
            Ok(step + 1)
        );
    }

    #[test]
    fn secrets_are_160_bits_and_round_trip_base32() {
        let s = new_secret();
        assert_eq!(s.len(), 20);
        let b32 = encode_secret(&s);
        assert_eq!(b32.len(), 32);
        assert_eq!(decode_secret(&b32).unwrap(), s);
        assert_ne!(new_secret(), s);
    }

    #[test]
    fn otpauth_uri_names_issuer_and_account() {
        let g = generator(&new_secret(), "alice@gw").unwrap();
        let uri = g.get_url();
        assert!(
            uri.starts_with("otpauth://totp/Alpacon:alice%40gw?"),
            "{uri}"
        );
        assert!(uri.contains("issuer=Alpacon"), "{uri}");
    }
}
