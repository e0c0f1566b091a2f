//! What an agent signs to prove its identity.
//!
//! The gateway sends a fresh random nonce on every connection; the agent signs
//! the transcript below with its Ed25519 key and the gateway verifies it
//! against the public key it stored at registration. No shared secret ever
//! travels, and a signature is useless for any other connection (nonce), any
//! other server id, or any other protocol (domain prefix).

/// Domain separation prefix, so a signature made here can never be replayed
/// as a signature over anything else.
pub const AUTH_DOMAIN: &[u8] = b"alpacon-agent-auth-v1\0";

/// Length of the gateway's challenge nonce, in bytes.
pub const NONCE_LEN: usize = 32;

/// The exact bytes an agent signs: domain, nonce, server id (length-prefixed
/// so that no two (nonce, id) pairs share an encoding).
pub fn transcript(nonce: &[u8], server_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(AUTH_DOMAIN.len() + 8 + nonce.len() + server_id.len());
    out.extend_from_slice(AUTH_DOMAIN);
    out.extend_from_slice(&(nonce.len() as u32).to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&(server_id.len() as u32).to_be_bytes());
    out.extend_from_slice(server_id.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_is_injective_over_boundaries() {
        // Moving a byte from the nonce into the id must change the encoding.
        assert_ne!(transcript(b"ab", "c"), transcript(b"a", "bc"));
        assert_ne!(transcript(b"", "x"), transcript(b"x", ""));
    }

    #[test]
    fn transcript_starts_with_domain() {
        assert!(transcript(&[0; NONCE_LEN], "id").starts_with(AUTH_DOMAIN));
    }

    #[test]
    fn transcript_is_deterministic() {
        assert_eq!(transcript(b"n", "s"), transcript(b"n", "s"));
    }
}
