//! HTTP client for the gateway's REST API: TLS setup, authentication and the
//! mapping of failures to [`CliError`]s that tell the user what to do.

use std::error::Error as StdError;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response, Url};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::CliError;

pub const USER_AGENT: &str = concat!("alpacon/", env!("CARGO_PKG_VERSION"));

/// Listings ask for the largest page the API allows.
const MAX_PAGE_SIZE: usize = 100;
/// Tries of an idempotent `POST` (waits 0.5, 1, 2 and 4 s between them).
const POST_ATTEMPTS: u32 = 5;

/// How the gateway's certificate is checked.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file with the CA(s) to trust instead of the public web roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Accept any certificate.
    pub insecure: bool,
}

impl TlsOptions {
    pub fn from_config(config: &Config) -> Self {
        TlsOptions {
            ca_cert: config.ca_cert.clone(),
            insecure: config.insecure,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the rustls config ourselves so the crypto provider (ring) and the
/// roots are explicit rather than whatever the process default happens to be.
pub fn tls_config(opts: &TlsOptions) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?;
    let mut config = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        let roots = match &opts.ca_cert {
            Some(path) => load_ca(path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // A preconfigured config is used as is, so ALPN is ours to set.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn load_ca(path: &Path) -> Result<RootCertStore> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading CA certificate {}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("invalid CA certificate in {}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(anyhow!(
            "{} contains no PEM certificate (expected the gateway's ca.crt)",
            path.display()
        ));
    }
    Ok(roots)
}

/// `--insecure`: any certificate is accepted. Handshake signatures are still
/// checked so the session keys at least belong to the presented certificate.
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    tls: TlsOptions,
    /// Sent as `X-Alpacon-Work-Session` on every request.
    work_session: Option<String>,
}

impl Client {
    /// `base` is `scheme://host[:port]`; `token` is sent as `Token <key>`.
    pub fn new(base: &str, token: Option<String>, tls: &TlsOptions) -> Result<Self> {
        let base = Url::parse(&format!("{}/", base.trim_end_matches('/')))
            .with_context(|| format!("invalid gateway URL {base:?}"))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(tls)?)
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(15))
            // No overall timeout: command streams and transfers may last
            // hours. Keepalives notice a peer that vanished silently.
            .tcp_keepalive(Duration::from_secs(30))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(true)
            .build()
            .context("setting up the HTTP client")?;
        Ok(Client {
            http,
            base,
            token,
            tls: tls.clone(),
            work_session: None,
        })
    }

    pub fn from_config(config: &Config) -> Result<Self> {
        let mut c = Client::new(
            &config.url,
            Some(config.token.clone()),
            &TlsOptions::from_config(config),
        )?;
        c.work_session = config.work_session.clone();
        Ok(c)
    }

    /// Later requests act in this work session (or in none).
    pub fn set_work_session(&mut self, id: Option<String>) {
        self.work_session = id;
    }

    /// The credential sent as `Authorization: Token <key>`.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// TLS for WebSocket connections: the same trust as the REST client,
    /// but HTTP/1.1 only (the upgrade does not exist in HTTP/2).
    pub fn websocket_tls(&self) -> Result<rustls::ClientConfig> {
        let mut config = tls_config(&self.tls)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The gateway's address as shown in messages.
    pub fn base_display(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// URL of `/seg/seg/…/` with each segment percent-encoded, so ids and
    /// names taken from outside cannot change the path.
    pub fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().extend(segments).push("");
        }
        url
    }

    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let mut rb = self.http.request(method, url);
        if let Some(ws) = &self.work_session {
            rb = rb.header("X-Alpacon-Work-Session", ws.as_str());
        }
        match &self.token {
            Some(token) => match HeaderValue::from_str(&format!("Token {token}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    rb.header(AUTHORIZATION, value)
                }
                // An unprintable token cannot be valid; the gateway says so.
                Err(_) => rb,
            },
            None => rb,
        }
    }

    /// Send and turn transport failures and error statuses into errors.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        check_status(resp).await
    }

    pub async fn send_json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let resp = self.send(rb).await?;
        let url = resp.url().path().to_string();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected answer from the gateway for {url}"))
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T> {
        let mut url = self.endpoint(segments);
        append_query(&mut url, query);
        self.send_json(self.request(Method::GET, url)).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &impl Serialize,
    ) -> Result<T> {
        let url = self.endpoint(segments);
        self.send_json(self.request(Method::POST, url).json(body))
            .await
    }

    /// `POST` with an `Idempotency-Key`, sent again (same key) while the
    /// gateway is unreachable, the connection breaks or it answers 502–504,
    /// for up to about 15 s: the gateway creates one object however many
    /// times the request arrives.
    pub async fn post_idempotent<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &impl Serialize,
    ) -> Result<T> {
        let key = uuid::Uuid::new_v4().to_string();
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let url = self.endpoint(segments);
            let rb = self
                .request(Method::POST, url)
                .header("Idempotency-Key", key.as_str())
                .json(body);
            match self.send_json(rb).await {
                Err(e)
                    if attempt < POST_ATTEMPTS
                        && e.downcast_ref::<CliError>()
                            .is_some_and(CliError::retryable) =>
                {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<()> {
        let url = self.endpoint(segments);
        self.send(self.request(Method::DELETE, url)).await?;
        Ok(())
    }

    /// Every item of a paginated listing (`alpacon_api::Page<T>`), newest
    /// first, up to `limit`.
    pub async fn list<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        limit: Option<usize>,
    ) -> Result<Vec<T>> {
        let page_size = limit
            .unwrap_or(MAX_PAGE_SIZE)
            .clamp(1, MAX_PAGE_SIZE)
            .to_string();
        let mut items = Vec::new();
        // Follow page numbers rather than `next`: `next` is built from the
        // gateway's public URL, which may not be the address we reach it by.
        for page in 1.. {
            let page = page.to_string();
            let mut q = query.to_vec();
            q.push(("page", &page));
            q.push(("page_size", &page_size));
            let p: alpacon_api::Page<T> = self.get(segments, &q).await?;
            let more = !p.results.is_empty() && p.next.is_some();
            items.extend(p.results);
            if !more || limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        if let Some(l) = limit {
            items.truncate(l);
        }
        Ok(items)
    }

    /// Explain a failure to talk to the gateway at all.
    pub fn transport_error(&self, err: reqwest::Error) -> anyhow::Error {
        let url = self.base_display().to_string();
        if let Some(tls) = find_rustls_error(&err) {
            if let rustls::Error::InvalidCertificate(cert) = tls {
                return CliError::UntrustedCert {
                    url,
                    unknown_issuer: matches!(cert, CertificateError::UnknownIssuer),
                    reason: tls.to_string(),
                }
                .into();
            }
            return anyhow!("TLS handshake with {url} failed: {tls}");
        }
        if err.is_connect() || err.is_timeout() {
            return CliError::Connect {
                url,
                reason: root_cause(&err),
            }
            .into();
        }
        CliError::Transport {
            url,
            reason: root_cause(&err),
        }
        .into()
    }
}

pub fn append_query(url: &mut Url, query: &[(&str, &str)]) {
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
}

/// Turn a non-2xx answer into [`CliError::Api`].
pub async fn check_status(resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // The body of an error is small; a proxy's HTML page is cut short below.
    let body = resp.bytes().await.unwrap_or_default();
    Err(api_error(status, &body).into())
}

pub(crate) fn api_error(status: reqwest::StatusCode, body: &[u8]) -> CliError {
    let parsed: Option<ApiErrorBody> = serde_json::from_slice(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|b| b.code.clone())
        .unwrap_or_else(|| format!("http_{}", status.as_u16()));
    let detail = parsed.and_then(|b| b.detail).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text: String = text.trim().chars().take(200).collect();
        if text.is_empty() {
            format!("the gateway answered {status}")
        } else {
            format!("the gateway answered {status}: {text}")
        }
    });
    CliError::api(status.as_u16(), code, detail)
}

fn io_error_kind(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}

/// rustls errors hide under hyper and io::Error layers; `io::Error::source`
/// skips its own payload, so look inside with `get_ref` as well.
pub(crate) fn find_rustls_error<'a>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = find_rustls_error(inner) {
                    return Some(tls);
                }
            }
        }
        cur = e.source();
    }
    None
}

/// The innermost message, e.g. "Connection refused (os error 111)" rather
/// than reqwest's "error sending request"; a dropped connection in plain words.
pub(crate) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    match io_error_kind(err) {
        Some(ErrorKind::UnexpectedEof) => return "the connection was closed unexpectedly".into(),
        Some(ErrorKind::ConnectionReset) => return "the connection was reset".into(),
        Some(ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe) => {
            return "the connection was lost".into()
        }
        _ => {}
    }
    let mut last = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !msg.is_empty() {
            last = msg;
        }
        cur = e.source();
    }
    // Over HTTP/2 the io::Error sits inside an h2 error that does not expose
    // it as a source; rustls' wording for a dropped TLS connection is stable.
    if last.contains("close_notify") {
        return "the connection was closed unexpectedly".into();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_encodes_segments_and_ends_with_slash() {
        let c = Client::new("https://gw:8443", None, &TlsOptions::default()).unwrap();
        assert_eq!(
            c.endpoint(&["api", "servers", "servers"]).as_str(),
            "https://gw:8443/api/servers/servers/"
        );
        assert_eq!(
            c.endpoint(&["api", "x", "a/../b?c"]).as_str(),
            "https://gw:8443/api/x/a%2F..%2Fb%3Fc/"
        );
        let mut u = c.endpoint(&["api", "webftp", "stat"]);
        append_query(&mut u, &[("server", "web 1"), ("path", "/a&b")]);
        assert_eq!(
            u.as_str(),
            "https://gw:8443/api/webftp/stat/?server=web+1&path=%2Fa%26b"
        );
        assert_eq!(c.base_display(), "https://gw:8443");
    }

    /// A gateway that drops the first request unanswered and answers the
    /// second: the client sends it again, with the same key.
    #[tokio::test]
    async fn an_idempotent_post_is_sent_again_with_its_key() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut keys = Vec::new();
            for n in 0..2 {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&req).contains("\r\n\r\n{") {
                    let k = sock.read(&mut buf).await.unwrap();
                    if k == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..k]);
                }
                let text = String::from_utf8_lossy(&req).to_lowercase();
                keys.push(
                    text.lines()
                        .find_map(|l| l.strip_prefix("idempotency-key: "))
                        .map(|k| k.trim().to_string()),
                );
                if n == 1 {
                    let body = r#"{"id":"c1"}"#;
                    let resp = format!(
                        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    sock.write_all(resp.as_bytes()).await.unwrap();
                }
                // The first connection just closes: the answer is lost.
            }
            keys
        });
        let c = Client::new(&format!("http://{addr}"), None, &TlsOptions::default()).unwrap();
        let v: serde_json::Value = c
            .post_idempotent(
                &["api", "events", "commands"],
                &serde_json::json!({"line": "x"}),
            )
            .await
            .unwrap();
        assert_eq!(v["id"], "c1");
        let keys = server.await.unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys[0].is_some());
        assert_eq!(keys[0], keys[1]);
    }

    #[test]
    fn only_failures_a_retry_can_mend_are_retried() {
        let api = |status| CliError::api(status, "x", "y");
        assert!(api(503).retryable());
        assert!(api(502).retryable());
        assert!(!api(500).retryable());
        assert!(!api(507).retryable());
        assert!(!api(403).retryable());
        assert!(CliError::Transport {
            url: "u".into(),
            reason: "reset".into()
        }
        .retryable());
        assert!(!CliError::NotLoggedIn.retryable());
    }

    #[test]
    fn api_errors_use_code_and_detail() {
        let e = api_error(
            reqwest::StatusCode::UNAUTHORIZED,
            br#"{"code":"invalid_token","detail":"Invalid token."}"#,
        );
        match e {
            CliError::Api {
                status,
                code,
                detail,
            } => {
                assert_eq!(
                    (status, code.as_str(), detail.as_str()),
                    (401, "invalid_token", "Invalid token.")
                );
            }
            other => panic!("{other:?}"),
        }
        let e = api_error(reqwest::StatusCode::BAD_GATEWAY, b"<html>bad</html>");
        assert!(e.to_string().contains("502"));
        assert!(matches!(e, CliError::Api { ref code, .. } if code == "http_502"));
    }

    #[test]
    fn root_cause_words_dropped_connections_plainly() {
        let eof = std::io::Error::new(ErrorKind::UnexpectedEof, "peer closed without close_notify");
        let e = anyhow::Error::new(eof).context("error decoding response body");
        assert_eq!(
            root_cause(e.as_ref()),
            "the connection was closed unexpectedly"
        );
        let refused = std::io::Error::new(ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(refused).context("error sending request");
        assert_eq!(root_cause(e.as_ref()), "Connection refused");
    }

    #[test]
    fn finds_rustls_error_inside_io_error() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = anyhow::Error::new(io).context("connecting");
        let found = find_rustls_error(outer.as_ref()).unwrap();
        assert!(matches!(
            found,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ));
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.crt");
        std::fs::write(&p, "not a pem").unwrap();
        let err = tls_config(&TlsOptions {
            ca_cert: Some(p),
            insecure: false,
        })
        .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"));
        assert!(tls_config(&TlsOptions {
            ca_cert: Some(dir.path().join("missing.crt")),
            insecure: false
        })
        .is_err());
        assert!(tls_config(&TlsOptions {
            ca_cert: None,
            insecure: true
        })
        .is_ok());
    }
}
