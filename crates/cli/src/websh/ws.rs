//! The real transport: the session's WebSocket on the gateway
//! (`GET /api/websh/sessions/{id}/ws/?offset=N`, `Authorization: Token`).

use std::sync::Arc;
use std::time::Duration;

use alpacon_api::websh::{WebshSession, WebshStatus};
use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::driver::{Conn, ConnectError, Incoming, Outgoing, Transport};
use super::{session_outcome, SESSIONS};
use crate::client::{api_error, find_rustls_error, Client, USER_AGENT};
use crate::error::CliError;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct WsTransport<'a> {
    client: &'a Client,
    session: String,
    /// Names this client's input stream: the gateway counts input per
    /// client id and answers `input_offset` for it on every attach.
    client_id: String,
    /// `wss://…/api/websh/sessions/{id}/ws/` without the offset.
    url: Url,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl<'a> WsTransport<'a> {
    pub fn new(client: &'a Client, session: &str) -> anyhow::Result<Self> {
        let url = websocket_url(client.endpoint(&[SESSIONS, &[session, "ws"]].concat()))?;
        let tls = if url.scheme() == "wss" {
            Some(Arc::new(client.websocket_tls()?))
        } else {
            None
        };
        Ok(WsTransport {
            client,
            session: session.to_string(),
            client_id: new_client_id(),
            url,
            tls,
        })
    }

    /// A refusal (4xx) of a session that has ended meanwhile is its end,
    /// not an error: the gateway may not attach closed sessions.
    async fn refused(&self, err: CliError) -> ConnectError {
        let path = [SESSIONS, &[self.session.as_str()]].concat();
        if let Ok(s) = self.client.get::<WebshSession>(&path, &[]).await {
            if let Some(outcome) = session_outcome(&s) {
                return ConnectError::Ended(outcome);
            }
        }
        ConnectError::Fatal(err.into())
    }
}

/// A random id for this client's connections to one session (the same
/// across reconnections, different for another `alpacon` process).
pub fn new_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    let a = h.finish();
    h.write_u64(a);
    format!("cli-{a:016x}{:016x}", h.finish())
}

/// `https://` → `wss://`, `http://` → `ws://`.
pub fn websocket_url(mut url: Url) -> anyhow::Result<Url> {
    let scheme = match url.scheme() {
        "https" => "wss",
        "http" => "ws",
        other => anyhow::bail!("cannot open a WebSocket to a {other}: URL"),
    };
    url.set_scheme(scheme)
        .map_err(|_| anyhow::anyhow!("cannot open a WebSocket to {url}"))?;
    Ok(url)
}

pub struct WsConn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Transport for WsTransport<'_> {
    type Conn = WsConn;

    async fn connect(&self, offset: u64) -> Result<WsConn, ConnectError> {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("offset", &offset.to_string())
            .append_pair("client", &self.client_id);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Fatal(e.into()))?;
        if let Some(token) = self.client.token() {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Token {token}")) {
                v.set_sensitive(true);
                req.headers_mut().insert("authorization", v);
            }
        }
        req.headers_mut()
            .insert("user-agent", HeaderValue::from_static(USER_AGENT));
        let connector = match &self.tls {
            Some(c) => Connector::Rustls(c.clone()),
            None => Connector::Plain,
        };
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(req, None, true, Some(connector));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Err(_) => Err(ConnectError::Retry("timed out connecting".into())),
            Ok(Ok((ws, _))) => Ok(WsConn { ws }),
            Ok(Err(e)) => match classify(&e, self.client.base_display()) {
                Classified::Retry(r) => Err(ConnectError::Retry(r)),
                Classified::Refused(err) => Err(self.refused(err).await),
                Classified::Fatal(err) => Err(ConnectError::Fatal(err.into())),
            },
        }
    }

    async fn still_open(&self) -> bool {
        let path = [SESSIONS, &[self.session.as_str()]].concat();
        match self.client.get::<WebshSession>(&path, &[]).await {
            Ok(s) => s.status == WebshStatus::Open,
            Err(_) => false,
        }
    }
}

#[derive(Debug)]
pub enum Classified {
    Retry(String),
    /// The gateway answered the upgrade with a 4xx.
    Refused(CliError),
    Fatal(CliError),
}

/// Whether a failed WebSocket connect is worth retrying.
pub fn classify(e: &tungstenite::Error, gateway: &str) -> Classified {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let body = resp.body().as_deref().unwrap_or_default();
            let code = status.as_u16();
            let err = api_error(
                reqwest::StatusCode::from_u16(code).unwrap_or(reqwest::StatusCode::BAD_REQUEST),
                body,
            );
            // 5xx: a proxy in front of a restarting gateway.
            if status.is_client_error() && code != 408 && code != 429 {
                Classified::Refused(err)
            } else {
                Classified::Retry(format!("the gateway answered {status}"))
            }
        }
        tungstenite::Error::Url(u) => {
            Classified::Fatal(CliError::Usage(format!("invalid WebSocket URL: {u}")))
        }
        other => match rustls_error(other) {
            Some(rustls::Error::InvalidCertificate(cert)) => {
                Classified::Fatal(CliError::UntrustedCert {
                    url: gateway.to_string(),
                    unknown_issuer: matches!(cert, rustls::CertificateError::UnknownIssuer),
                    reason: other.to_string(),
                })
            }
            _ => Classified::Retry(other.to_string()),
        },
    }
}

fn rustls_error(e: &tungstenite::Error) -> Option<&rustls::Error> {
    match e {
        tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(e)) => Some(e),
        other => find_rustls_error(other),
    }
}

impl Conn for WsConn {
    async fn recv(&mut self) -> Option<Result<Incoming, String>> {
        let msg = match self.ws.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e.to_string())),
        };
        Some(Ok(match msg {
            Message::Text(t) => Incoming::Text(t.as_str().to_string()),
            Message::Binary(b) => Incoming::Binary(b.into()),
            Message::Close(f) => Incoming::Close(f.map(|f| f.reason.as_str().to_string())),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Other,
        }))
    }

    async fn send(&mut self, msg: Outgoing) -> Result<(), String> {
        let m = match msg {
            Outgoing::Text(t) => Message::text(t),
            Outgoing::Binary(b) => Message::binary(b),
            Outgoing::Ping => Message::Ping(Default::default()),
            Outgoing::Close => {
                return self.ws.close(None).await.map_err(|e| e.to_string());
            }
        };
        self.ws.send(m).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::Response;

    #[test]
    fn client_ids_differ_and_fit_the_gateways_limit() {
        let (a, b) = (new_client_id(), new_client_id());
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.starts_with("cli-"));
    }

    #[test]
    fn websocket_urls() {
        let u =
            websocket_url(Url::parse("https://gw:8443/api/websh/sessions/a/ws/").unwrap()).unwrap();
        assert_eq!(u.as_str(), "wss://gw:8443/api/websh/sessions/a/ws/");
        let u = websocket_url(Url::parse("http://127.0.0.1:8000/x/").unwrap()).unwrap();
        assert_eq!(u.as_str(), "ws://127.0.0.1:8000/x/");
        assert!(websocket_url(Url::parse("ftp://x/").unwrap()).is_err());
    }

    fn http(status: u16, body: &str) -> tungstenite::Error {
        let resp = Response::builder()
            .status(status)
            .body(Some(body.as_bytes().to_vec()))
            .unwrap();
        tungstenite::Error::Http(Box::new(resp))
    }

    #[test]
    fn refusals_are_final_and_outages_are_retried() {
        match classify(
            &http(404, r#"{"code":"not_found","detail":"no such session"}"#),
            "https://gw",
        ) {
            Classified::Refused(CliError::Api {
                status,
                code,
                detail,
            }) => {
                assert_eq!(
                    (status, code.as_str(), detail.as_str()),
                    (404, "not_found", "no such session")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&http(401, ""), "https://gw"),
            Classified::Refused(CliError::Api { status: 401, .. })
        ));
        for s in [502, 503, 429, 408] {
            assert!(
                matches!(classify(&http(s, ""), "https://gw"), Classified::Retry(_)),
                "{s}"
            );
        }
        let io =
            tungstenite::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(classify(&io, "https://gw"), Classified::Retry(_)));
        let tls = tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(Box::new(
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        assert!(matches!(
            classify(&tls, "https://gw"),
            Classified::Fatal(CliError::UntrustedCert {
                unknown_issuer: true,
                ..
            })
        ));
    }
}
