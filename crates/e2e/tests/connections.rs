//! The gateway under connection abuse: idle and half-sent connections are
//! closed, unauthenticated agent links cannot make it hold large messages,
//! pending connections from one address do not lock others out, and the
//! open-file limit is raised. Long-lived links and transfers are not cut.
//! Real binaries on loopback; attackers use other 127/8 source addresses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use alpacon_e2e::{write_big_file, Agent, AgentOpts, Gateway, GatewayOpts};
use rustls::pki_types::ServerName;

const WAIT: Duration = Duration::from_secs(30);

fn gateway(args: &[&str], nofile: Option<(u64, u64)>) -> Gateway {
    Gateway::start_opts(GatewayOpts {
        args: args.iter().map(|s| s.to_string()).collect(),
        nofile,
        ..Default::default()
    })
    .expect("start gateway")
}

/// The test itself holds many sockets.
fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on structs we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A TCP connection to the gateway from the loopback address `src`.
fn connect_from(src: &str, port: u16) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(connect_from_async(src.to_string(), port))
}

async fn connect_from_async(src: String, port: u16) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{src}:0").parse().expect("address"))?;
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        sock.connect(([127, 0, 0, 1], port).into()),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// TLS over `tcp`, trusting the gateway's CA, handshake completed.
fn tls(gw: &Gateway, tcp: TcpStream) -> Tls {
    try_tls(gw, tcp, WAIT).expect("TLS handshake")
}

/// TLS over `tcp` with `limit` for each read and write of the handshake.
fn try_tls(gw: &Gateway, mut tcp: TcpStream, limit: Duration) -> std::io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(gw.ca())?;
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).expect("CA certificate");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("127.0.0.1").expect("name").to_owned(),
    )
    .map_err(std::io::Error::other)?;
    tcp.set_read_timeout(Some(limit))?;
    tcp.set_write_timeout(Some(limit))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The certificates of a PEM file (the e2e crate has no PEM parser).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut b64 = String::new();
    let mut inside = false;
    for line in text.lines() {
        match line.trim() {
            "-----BEGIN CERTIFICATE-----" => {
                inside = true;
                b64.clear();
            }
            "-----END CERTIFICATE-----" => {
                inside = false;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(&b64)
                    .unwrap();
                out.push(der.into());
            }
            l if inside => b64.push_str(l),
            _ => {}
        }
    }
    out
}

/// Whether the peer closed the connection: waits (up to `WAIT`) for EOF or
/// a reset; false if the connection is still open then.
fn closed_by_peer(r: &mut impl Read) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Reads an HTTP response head; returns its status code.
fn read_status(s: &mut impl Read) -> u16 {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("response head"), 1, "EOF in head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response head: {head}"))
}

/// Opens `GET /ws/agent/` from `src`: the status, and for 101 the link
/// after the gateway's first frame (the challenge) was read.
fn agent_link(gw: &Gateway, src: &str) -> (u16, Tls) {
    let mut s = tls(gw, connect_from(src, gw.port).expect("connect"));
    write!(
        s,
        "GET /ws/agent/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gw.port
    )
    .unwrap();
    s.flush().unwrap();
    let status = read_status(&mut s);
    if status == 101 {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        assert_eq!(h[0], 0x82, "a final binary frame");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).unwrap();
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut challenge = vec![0u8; len];
        s.read_exact(&mut challenge).unwrap();
    }
    (status, s)
}

fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn idle_and_half_sent_connections_are_closed() {
    let gw = gateway(
        &[
            "--tls-handshake-timeout-secs",
            "1",
            "--header-read-timeout-secs",
            "1",
            "--idle-timeout-secs",
            "2",
        ],
        None,
    );
    // Plain TCP, nothing sent: no TLS handshake.
    let mut raw = connect_from("127.0.0.1", gw.port).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    // TLS done, no request.
    let mut silent = tls(&gw, connect_from("127.0.0.1", gw.port).unwrap());
    // TLS done, half a request head.
    let mut half = tls(&gw, connect_from("127.0.0.1", gw.port).unwrap());
    half.write_all(b"GET /api/status/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    half.flush().unwrap();
    // A complete request, then kept alive with nothing more.
    let mut kept = tls(&gw, connect_from("127.0.0.1", gw.port).unwrap());
    kept.write_all(b"GET /api/status/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    kept.flush().unwrap();
    assert_eq!(read_status(&mut kept), 200);

    let closed = [
        ("idle TCP", closed_by_peer(&mut raw)),
        ("TLS without a request", closed_by_peer(&mut silent)),
        ("half a request head", closed_by_peer(&mut half)),
        ("idle keep-alive", closed_by_peer(&mut kept)),
    ];
    assert!(
        closed.iter().all(|(_, c)| *c),
        "closed by the gateway: {closed:?}\n--- gateway log ---\n{}",
        gw.log()
    );
    // Said in the log, once per reason and window at most.
    let log = gw.log();
    assert!(log.contains("did not finish TLS within"), "{log}");
    assert!(log.contains("sent no complete request within"), "{log}");
}

#[test]
fn agent_links_and_downloads_outlive_the_idle_timeout() {
    let mut gw = gateway(
        &[
            "--header-read-timeout-secs",
            "1",
            "--idle-timeout-secs",
            "1",
        ],
        None,
    );
    let agent = Agent::register(&mut gw, "long", AgentOpts::default()).unwrap();
    gw.wait_connected("long", true)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    let size = 8 << 20;
    write_big_file(&file, size).unwrap();
    let key = gw.admin_key().unwrap();
    let mut resp = gw
        .http()
        .get(gw.api(&format!(
            "/api/webftp/download/?server=long&username=root&path={}",
            file.display()
        )))
        .header("Authorization", format!("Token {key}"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = resp.read(&mut buf).unwrap() as u64;
    // Several idle timeouts with the download stalled and the agent link
    // quiet (its heartbeat is 15 s).
    std::thread::sleep(Duration::from_secs(4));
    loop {
        match resp.read(&mut buf).unwrap() {
            0 => break,
            n => got += n as u64,
        }
    }
    assert_eq!(got, size);
    assert!(gw.server("long").unwrap()["is_connected"]
        .as_bool()
        .unwrap());
    let log = gw.log();
    assert_eq!(
        log.matches("agent connected").count(),
        1,
        "the agent link was never cut:\n{log}"
    );
}

#[test]
fn unauthenticated_agent_links_cannot_make_the_gateway_hold_large_messages() {
    let gw = gateway(&[], None);
    let pid = gw.pid().unwrap();
    const LINKS: usize = 20;
    const MESSAGE: u64 = 8 << 20;
    let before = vm_rss(pid);
    let mut links = Vec::new();
    let mut dropped = 0;
    let chunk = vec![0u8; 64 * 1024];
    for i in 0..LINKS {
        // One address each: the per-address handshake cap is not what is
        // tested here.
        let (status, mut s) = agent_link(&gw, &format!("127.0.0.{}", 10 + i));
        assert_eq!(status, 101);
        // A masked binary frame announcing MESSAGE bytes; all but the last
        // byte sent, so a gateway that accepts it holds it all.
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&MESSAGE.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        let mut sent = s.write_all(&head).and_then(|()| s.flush());
        let mut left = MESSAGE - 1;
        while sent.is_ok() && left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            sent = s.write_all(&chunk[..n]).and_then(|()| s.flush());
            left -= n as u64;
        }
        if sent.is_err() {
            dropped += 1;
        }
        links.push(s);
    }
    let after = vm_rss(pid);
    let grown = after.saturating_sub(before);
    assert_eq!(dropped, LINKS, "links dropped before their message ended");
    // Holding the messages would cost LINKS × MESSAGE = 160 MiB.
    assert!(grown < 32 << 20, "gateway RSS grew by {} MiB", grown >> 20);
    assert!(gw.log().contains("agent handshake failed"), "{}", gw.log());
}

#[test]
fn agent_handshakes_are_capped_per_address() {
    let mut gw = gateway(&["--max-agent-handshakes-per-address", "2"], None);
    let (a, _l1) = agent_link(&gw, "127.0.0.3");
    let (b, _l2) = agent_link(&gw, "127.0.0.3");
    let (c, _l3) = agent_link(&gw, "127.0.0.3");
    assert_eq!((a, b, c), (101, 101, 429));
    // Another address is not affected: a real agent gets in.
    let agent = Agent::register(&mut gw, "capped", AgentOpts::default()).unwrap();
    gw.wait_connected("capped", true)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
}

#[test]
fn pending_connections_from_one_address_do_not_lock_others_out() {
    raise_own_nofile();
    // 512 open files: an old gateway that neither closed nor refused
    // pending connections ran out of them and was unreachable.
    // The held connections stay pending for the whole test.
    let mut gw = gateway(
        &[
            "--max-pending-per-address",
            "4",
            "--header-read-timeout-secs",
            "600",
        ],
        Some((512, 512)),
    );
    let mut agent = Agent::register(&mut gw, "natted", AgentOpts::default()).unwrap();
    gw.wait_connected("natted", true).unwrap();
    agent.stop();
    gw.wait_connected("natted", false).unwrap();

    // Up to 600 connections from 127.0.0.2 that finish TLS and then send
    // nothing, until the gateway stops answering (as an old one did once
    // its descriptors ran out).
    const ATTACK: usize = 600;
    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..ATTACK {
        let Ok(tcp) = connect_from("127.0.0.2", gw.port) else {
            break;
        };
        match try_tls(&gw, tcp, Duration::from_secs(2)) {
            Ok(s) => held.push(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            // Closed at once by the gateway.
            Err(_) => refused += 1,
        }
    }

    // A real agent from 127.0.0.1 gets in, and the API answers a new client.
    agent.start().unwrap();
    gw.wait_connected("natted", true)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(gw.ca()).unwrap()).unwrap();
    let fresh = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .timeout(WAIT)
        .build()
        .unwrap();
    let r = fresh.get(gw.api("/api/status/")).send().unwrap();
    assert_eq!(r.status(), 200);

    // Past the cap of 4, every attacking connection was closed at once.
    assert_eq!(
        (held.len(), refused),
        (4, ATTACK - 4),
        "(held, refused)\n--- gateway log ---\n{}",
        gw.log()
    );
    assert!(
        gw.log().contains("--max-pending-per-address"),
        "{}",
        gw.log()
    );
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let gw = gateway(&[], Some((1024, 4096)));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid().unwrap())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  SOFT  HARD  files"
    assert_eq!((v[3], v[4]), ("4096", "4096"), "{line}");
    let log = gw.log();
    assert!(log.contains("soft limit raised from 1024 to 4096"), "{log}");
}
