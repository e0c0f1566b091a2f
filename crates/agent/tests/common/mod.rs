//! The fake gateway shared by the integration tests: the agent's link over
//! an in-memory WebSocket, the handshake, and the gateway's multiplexer.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alpacon_mux::{Incoming, Mux, Side};
use alpacon_proto::{auth, Account, Control, Frame, Open, StreamInfo, SUPPORTED};
use alpamon::config::{Config, LinkConfig};
use alpamon::link::{self, LinkError};
use alpamon::Agent;
use ed25519_dalek::{Signature, SigningKey, Verifier};
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const T: Duration = Duration::from_secs(20);

pub fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name
}

pub fn account(user: &str) -> Account {
    Account {
        username: user.into(),
        groupname: None,
        managed: None,
    }
}

pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub agent: Arc<Agent>,
    pub key: SigningKey,
}

pub fn setup(heartbeat_timeout_secs: u64) -> Setup {
    setup_with(LinkConfig {
        heartbeat_timeout_secs,
        ..LinkConfig::default()
    })
}

pub fn setup_with(link: LinkConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let agent = agent_in(dir.path(), &key, link);
    Setup {
        _dir: dir,
        data,
        agent,
        key,
    }
}

/// An agent whose state lives in `dir` (`dir/data`): a second one on the
/// same directory is the same agent after a restart.
pub fn agent_in(dir: &Path, key: &SigningKey, link: LinkConfig) -> Arc<Agent> {
    let cfg = Config {
        url: "https://gateway.test".into(),
        server_id: "srv-1".into(),
        name: "box".into(),
        key_file: dir.join("agent.key"),
        ca_cert: None,
        data_dir: dir.join("data"),
        link,
    };
    let helper = alpamon::helper::held_open(env!("CARGO_BIN_EXE_alpamon").as_ref()).unwrap();
    Arc::new(Agent::new(cfg, key.clone(), helper).unwrap())
}

pub type Ws = WebSocketStream<DuplexStream>;

/// Connect the agent to a fresh in-memory gateway socket.
pub async fn connect(agent: &Arc<Agent>) -> (Ws, JoinHandle<LinkError>, watch::Sender<bool>) {
    let (a, g) = tokio::io::duplex(256 * 1024);
    let agent_ws = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
    let gw_ws = WebSocketStream::from_raw_socket(g, Role::Server, None).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let agent = agent.clone();
    let h = tokio::spawn(async move { link::serve(&agent, agent_ws, stop_rx).await });
    (gw_ws, h, stop_tx)
}

pub async fn send(ws: &mut Ws, c: Control) {
    ws.send(Message::Binary(Frame::Control(c).encode()))
        .await
        .unwrap();
}

pub async fn recv(ws: &mut Ws) -> Control {
    loop {
        match timeout(T, ws.next())
            .await
            .expect("timed out")
            .unwrap()
            .unwrap()
        {
            Message::Binary(b) => match Frame::decode(b).unwrap() {
                Frame::Control(c) => return c,
                f => panic!("unexpected frame {f:?}"),
            },
            _ => continue,
        }
    }
}

/// Challenge, check the agent's signature, welcome it.
pub async fn handshake(ws: &mut Ws, key: &SigningKey) {
    let nonce = vec![7u8; auth::NONCE_LEN];
    send(
        ws,
        Control::Challenge {
            nonce: nonce.clone(),
            versions: SUPPORTED,
        },
    )
    .await;
    match recv(ws).await {
        Control::Auth {
            server_id,
            signature,
            versions,
            agent_version,
            system,
        } => {
            assert_eq!(server_id, "srv-1");
            assert_eq!(versions, SUPPORTED);
            assert_eq!(agent_version, alpamon::VERSION);
            assert!(!system.hostname.is_empty());
            let sig = Signature::from_slice(&signature).unwrap();
            key.verifying_key()
                .verify(&auth::transcript(&nonce, &server_id), &sig)
                .expect("valid signature");
        }
        other => panic!("expected auth, got {other:?}"),
    }
    send(
        ws,
        Control::Welcome {
            version: 1,
            heartbeat_secs: 15,
        },
    )
    .await;
}

/// After the handshake: the gateway's multiplexer over the socket.
pub fn gateway_mux(ws: Ws) -> (Mux, mpsc::UnboundedReceiver<Control>) {
    let (mux, mut io) = Mux::new(Side::Gateway);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(f) = io.next_frame().await {
            if sink.send(Message::Binary(f.encode())).await.is_err() {
                break;
            }
        }
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let m = mux.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Binary(b) = msg {
                match m.handle_incoming(Frame::decode(b).unwrap()) {
                    Ok(Some(Incoming::Control(c))) => {
                        let _ = tx.send(c);
                    }
                    Ok(Some(Incoming::Open(..))) => panic!("agent opened a stream"),
                    Ok(None) => {}
                    Err(e) => panic!("protocol error: {e}"),
                }
            }
        }
        m.shutdown("closed");
    });
    (mux, rx)
}

pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn open(
    mux: &Mux,
    o: Open,
) -> Result<(alpacon_mux::Stream, StreamInfo), alpacon_proto::StreamError> {
    let mut st = mux.open(o).await.unwrap();
    let info = timeout(T, st.wait_accept()).await.unwrap()?;
    Ok((st, info))
}

/// A connected, welcomed agent: the gateway's multiplexer, its control
/// messages, the agent's link task and the switch that ends the link.
pub async fn link_up(
    s: &Setup,
) -> (
    Mux,
    mpsc::UnboundedReceiver<Control>,
    JoinHandle<LinkError>,
    watch::Sender<bool>,
) {
    link_up_to(&s.agent, &s.key).await
}

pub async fn link_up_to(
    agent: &Arc<Agent>,
    key: &SigningKey,
) -> (
    Mux,
    mpsc::UnboundedReceiver<Control>,
    JoinHandle<LinkError>,
    watch::Sender<bool>,
) {
    let (mut ws, h, stop) = connect(agent).await;
    handshake(&mut ws, key).await;
    let (mux, rx) = gateway_mux(ws);
    (mux, rx, h, stop)
}
