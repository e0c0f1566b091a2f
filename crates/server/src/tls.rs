//! TLS: the gateway's own CA and server certificate (made on first start,
//! reused after), or the operator's `--tls-cert/--tls-key`; and the rustls
//! configuration (ring provider, ALPN h2 + http/1.1).
//!
//! Layout in the data dir: `tls/ca.crt`, `tls/ca.key`, `tls/server.crt`,
//! `tls/server.key` (keys 0600). The CA key stays so a new server
//! certificate can be issued when the public host changes, without every
//! agent and user having to trust a new CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::ServerConfig;

use crate::iam::write_secret_file;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCert { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The certificate files the gateway serves.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Our own CA, when we made the certificates.
    pub ca_cert: Option<PathBuf>,
}

/// Subject name of our CA. Fixed, because a later start rebuilds the issuer
/// from it (with the stored CA key) to sign a new server certificate: the
/// issuer name in that certificate must match the CA certificate exactly.
const CA_COMMON_NAME: &str = "Alpacon gateway CA";
const CA_ORG: &str = "Alpacon";
const CA_YEARS: i32 = 20;
const SERVER_DAYS: i64 = 825;
/// Renew the server certificate when it has less than this left at start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// Names the server certificate must cover: loopback, this machine and the
/// host of the public URL. Names rustls could not check are left out.
pub fn wanted_names(public_host: Option<&str>) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(h) = hostname() {
        names.push(h);
    }
    if let Some(h) = public_host {
        names.push(h.to_string());
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let n = n.to_ascii_lowercase();
        if ServerName::try_from(n.as_str()).is_ok() && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// This machine's host name.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates
    // on success when the name fits, and we stop at the first NUL anyway.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Makes or reuses the CA and server certificate under `dir`
/// (`DATA/tls`). The server certificate is (re)issued when it is missing,
/// not signed by the CA, close to expiry, or does not cover every name in
/// `names`.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> Result<TlsFiles, TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_crt = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let crt = dir.join("server.crt");
    let key = dir.join("server.key");

    let (ca_key, ca_pem, new_ca) = if ca_crt.exists() && ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        let ca_pem = std::fs::read_to_string(&ca_crt).map_err(io_err(&ca_crt))?;
        (KeyPair::from_pem(&pem)?, ca_pem, false)
    } else {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params()?.self_signed(&ca_key)?;
        write_secret_file(&ca_key_path, ca_key.serialize_pem().as_bytes())
            .map_err(io_err(&ca_key_path))?;
        std::fs::write(&ca_crt, cert.pem()).map_err(io_err(&ca_crt))?;
        tracing::info!(
            "created a new certificate authority at {}",
            ca_crt.display()
        );
        (ca_key, cert.pem(), true)
    };

    let reuse =
        !new_ca && crt.exists() && key.exists() && covers(&ca_pem, &crt, names).unwrap_or(false);
    if !reuse {
        // The issuer as a Certificate: rebuilt from the fixed CA name and the
        // stored CA key (rcgen cannot parse certificates without x509-parser).
        let issuer = ca_params()?.self_signed(&ca_key)?;
        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(names.to_vec())?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(
            DnType::CommonName,
            names.last().cloned().unwrap_or_else(|| "localhost".into()),
        );
        set_validity(&mut p, SERVER_DAYS);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&server_key, &issuer, &ca_key)?;
        write_secret_file(&key, server_key.serialize_pem().as_bytes()).map_err(io_err(&key))?;
        std::fs::write(&crt, cert.pem()).map_err(io_err(&crt))?;
        tracing::info!(
            "issued a TLS certificate for {} at {}",
            names.join(", "),
            crt.display()
        );
    }
    Ok(TlsFiles {
        cert: crt,
        key,
        ca_cert: Some(ca_crt),
    })
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    p.distinguished_name.push(DnType::OrganizationName, CA_ORG);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut p, CA_YEARS as i64 * 365);
    Ok(p)
}

/// From yesterday (tolerates clock skew between gateway and clients) for
/// `days` days.
fn set_validity(p: &mut CertificateParams, days: i64) {
    use chrono::Datelike;
    let today = chrono::Utc::now().date_naive();
    let ymd = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    p.not_before = ymd(today - chrono::Days::new(1));
    p.not_after = ymd(today + chrono::Days::new(days.max(1) as u64));
}

/// Whether the certificate at `crt` chains to `ca_pem`, is valid for
/// `RENEW_BEFORE` more, and covers every name. Checked with the same
/// verifier clients use, so "covers" means what a client would accept.
pub fn covers(ca_pem: &str, crt: &Path, names: &[String]) -> Result<bool, TlsError> {
    let ca = pem_certs(ca_pem.as_bytes(), Path::new("ca.crt"))?;
    let certs = load_certs(crt)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c)?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let later =
        UnixTime::since_unix_epoch(Duration::from_secs(UnixTime::now().as_secs()) + RENEW_BEFORE);
    for n in names {
        let Ok(sn) = ServerName::try_from(n.clone()) else {
            continue;
        };
        for at in [UnixTime::now(), later] {
            if verifier
                .verify_server_cert(&certs[0], &certs[1..], &sn, &[], at)
                .is_err()
            {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn pem_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &*pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    pem_certs(&pem, path)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut &*pem)
        .map_err(io_err(path))?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

/// rustls server configuration over the ring provider (explicitly: no
/// process-wide default provider is installed), offering HTTP/2 and 1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let mut cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn makes_reuses_and_reissues_certificates() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("tls");
        let names = wanted_names(Some("gw.example.com"));
        assert!(names.contains(&"127.0.0.1".to_string()) && names.contains(&"::1".to_string()));
        let f = ensure_self_signed(&dir, &names).unwrap();
        for k in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(dir.join(k)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{k}");
        }
        let ca = std::fs::read_to_string(f.ca_cert.as_ref().unwrap()).unwrap();
        assert!(covers(&ca, &f.cert, &names).unwrap());
        assert!(!covers(&ca, &f.cert, &["other.example.com".to_string()]).unwrap());
        server_config(&f.cert, &f.key).unwrap();

        // Same names: nothing changes.
        let before = std::fs::read(&f.cert).unwrap();
        ensure_self_signed(&dir, &names).unwrap();
        assert_eq!(std::fs::read(&f.cert).unwrap(), before);

        // A new public host: a new server certificate from the same CA.
        let names2 = wanted_names(Some("new.example.com"));
        ensure_self_signed(&dir, &names2).unwrap();
        assert_ne!(std::fs::read(&f.cert).unwrap(), before);
        assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), ca);
        assert!(covers(&ca, &f.cert, &names2).unwrap());

        // A certificate from a different CA is not accepted as covering.
        let other = tempfile::tempdir().unwrap();
        let g = ensure_self_signed(other.path(), &names).unwrap();
        assert!(!covers(&ca, &g.cert, &names).unwrap());
    }

    #[tokio::test]
    async fn clients_trusting_the_ca_connect_over_h2() {
        let d = tempfile::tempdir().unwrap();
        let f = ensure_self_signed(d.path(), &wanted_names(None)).unwrap();
        let cfg = server_config(&f.cert, &f.key).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let srv = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(cfg)),
        )
        .handle(handle.clone())
        .serve(app.into_make_service());
        let task = tokio::spawn(srv);
        let client = reqwest::Client::builder()
            .use_preconfigured_tls({
                let mut roots = rustls::RootCertStore::empty();
                for c in load_certs(&d.path().join("ca.crt")).unwrap() {
                    roots.add(c).unwrap();
                }
                let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
                c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                c
            })
            .build()
            .unwrap();
        for host in ["localhost", "127.0.0.1"] {
            let r = client
                .get(format!("https://{host}:{}/", addr.port()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            assert_eq!(r.text().await.unwrap(), "hi");
        }
        handle.shutdown();
        task.await.unwrap().unwrap();
    }
}
