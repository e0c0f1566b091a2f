//! TLS client configuration shared by registration (HTTPS) and the link (WSS).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::{ClientConfig, RootCertStore};

/// A rustls client config trusting `ca_cert` (PEM, one or more
/// certificates) if given, else the public web roots. The ring provider is
/// named explicitly so that no process-wide default needs installing.
pub fn client_config(ca_cert: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            let certs = parse_certs(&pem)
                .with_context(|| format!("invalid CA certificate {}", path.display()))?;
            for c in certs {
                roots
                    .add(c)
                    .with_context(|| format!("invalid CA certificate {}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS setup")?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(cfg)
}

/// The certificates in a PEM file; at least one.
pub fn parse_certs(pem: &[u8]) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .context("not a PEM file")?;
    if certs.is_empty() {
        bail!("no certificate found (expected PEM: -----BEGIN CERTIFICATE-----)");
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_certificates() {
        assert!(parse_certs(b"hello").is_err());
        assert!(parse_certs(b"").is_err());
    }

    #[test]
    fn builds_with_web_roots() {
        assert!(client_config(None).is_ok());
    }
}
