//! Scale (issue item 5): simulated agents that speak the real protocol (`crates/proto`:
//! WSS, Challenge → Auth with an Ed25519 signature over `auth::transcript` →
//! Welcome, then Ping/Pong and commands), each from its own source address
//! in 127.0.0.0/8 so ports never run out, against one gateway of their own.
//!
//! Measured: gateway RSS per connected agent at 1k, 10k and as many as the
//! machine holds; command fan-out to 1k agents; how long 10k agents take to
//! be back after the gateway is killed and started again.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alpacon_e2e::Gateway;
use alpacon_proto::{auth, CommandResult, Control, Frame, SystemInfo, SUPPORTED};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, WebSocketStream};

use crate::report::{Report, Row};
use crate::setup::{http_client, tls_config};
use crate::stats::{bytes, secs};

/// One simulated agent's identity: what `alpamon register` would make.
pub struct Identity {
    pub name: String,
    pub server_id: String,
    pub key: SigningKey,
    pub src: Ipv4Addr,
}

/// Source address of agent `i`: 127.b.c.d, a different one for each agent.
pub fn source_addr(i: usize) -> Ipv4Addr {
    let d = 1 + (i % 250) as u8;
    let c = ((i / 250) % 250) as u8;
    let b = 1 + (i / 62_500) as u8;
    Ipv4Addr::new(127, b, c, d)
}

#[derive(Default)]
pub struct Counters {
    /// Links up right now (authenticated).
    pub connected: AtomicUsize,
    /// Successful handshakes, ever.
    pub welcomes: AtomicUsize,
    /// Failed connection attempts, ever.
    pub failures: AtomicUsize,
    pub run_commands: AtomicUsize,
    pub acks: AtomicUsize,
    pub last_error: Mutex<Option<String>>,
}

impl Counters {
    fn get(&self, c: &AtomicUsize) -> usize {
        c.load(Ordering::SeqCst)
    }
}

struct Up<'a>(&'a Counters);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Sim {
    pub addr: SocketAddr,
    pub url: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub counters: Arc<Counters>,
}

fn ws_config() -> WebSocketConfig {
    // A lean load generator: small buffers (this is not the agent under test).
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// The agent's reconnect policy (alpamon's `link::backoff_delay` with its
/// defaults): full jitter, 0.5 s doubling to 60 s; the count of failures
/// starts again after a link that was up.
fn backoff(failures: u32) -> Duration {
    let initial = Duration::from_millis(500);
    let max = Duration::from_secs(60);
    let ceiling = initial
        .checked_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    ceiling.mul_f64(rand::thread_rng().gen::<f64>())
}

async fn recv_control<S>(ws: &mut WebSocketStream<S>) -> Result<Control>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => match Frame::decode(b)? {
                Frame::Control(c) => return Ok(c),
                f => bail!(
                    "expected a control frame, got one for stream {}",
                    f.stream()
                ),
            },
            Some(Ok(Message::Close(_))) | None => bail!("closed during the handshake"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

impl Sim {
    /// One connection: handshake, then answer until the link ends.
    /// Sets `authenticated` once the gateway welcomed us.
    async fn session(&self, id: &Identity, authenticated: &mut bool) -> Result<()> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::V4(SocketAddrV4::new(id.src, 0)))?;
        let tcp = sock.connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let req = self.url.as_str().into_client_request()?;
        let handshake = async {
            let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
                req,
                tcp,
                Some(ws_config()),
                Some(Connector::Rustls(self.tls.clone())),
            )
            .await?;
            let nonce = match recv_control(&mut ws).await? {
                Control::Challenge { nonce, .. } => nonce,
                other => bail!("expected a challenge, got {other:?}"),
            };
            let signature = id
                .key
                .sign(&auth::transcript(&nonce, &id.server_id))
                .to_bytes()
                .to_vec();
            let a = Frame::Control(Control::Auth {
                server_id: id.server_id.clone(),
                signature,
                versions: SUPPORTED,
                agent_version: "bench-sim".into(),
                system: SystemInfo {
                    hostname: id.name.clone(),
                    os: "sim".into(),
                    kernel: "sim".into(),
                    arch: "x86_64".into(),
                    cpus: 1,
                    memory_bytes: 1 << 30,
                },
            });
            ws.send(Message::Binary(a.encode())).await?;
            match recv_control(&mut ws).await? {
                Control::Welcome { .. } => Ok(ws),
                Control::Reject { code, detail } => bail!("rejected ({code}): {detail}"),
                other => bail!("expected welcome, got {other:?}"),
            }
        };
        let mut ws = tokio::time::timeout(Duration::from_secs(30), handshake)
            .await
            .map_err(|_| anyhow!("handshake timed out"))??;
        *authenticated = true;
        let c = &*self.counters;
        c.connected.fetch_add(1, Ordering::SeqCst);
        c.welcomes.fetch_add(1, Ordering::SeqCst);
        let _up = Up(c);
        while let Some(m) = ws.next().await {
            let b = match m? {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let reply = match Frame::decode(b)? {
                Frame::Control(Control::Ping { seq }) => Some(Control::Pong { seq }),
                Frame::Control(Control::RunCommand(spec)) => {
                    c.run_commands.fetch_add(1, Ordering::SeqCst);
                    Some(Control::CommandResult(CommandResult {
                        id: spec.id,
                        exit_code: 0,
                        elapsed_ms: 0,
                        output: Vec::new(),
                        truncated: false,
                        error: None,
                    }))
                }
                Frame::Control(Control::CommandAck { .. }) => {
                    c.acks.fetch_add(1, Ordering::SeqCst);
                    None
                }
                _ => None,
            };
            if let Some(r) = reply {
                ws.send(Message::Binary(Frame::Control(r).encode())).await?;
            }
        }
        Ok(())
    }

    /// Keeps agent `id` connected until `stop` turns true, reconnecting as
    /// alpamon does.
    pub async fn run_agent(self: Arc<Self>, id: Arc<Identity>, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let began = Instant::now();
            let mut authenticated = false;
            let r = tokio::select! {
                r = self.session(&id, &mut authenticated) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            if *stop.borrow() {
                return;
            }
            if let Err(e) = r {
                self.counters.failures.fetch_add(1, Ordering::SeqCst);
                *self
                    .counters
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(format!("{}: {e:#}", id.name));
            }
            // As alpamon: a link that was up and got lost comes back
            // without the backoff of earlier failures; refusals back off.
            if began.elapsed() > Duration::from_secs(30) || authenticated {
                failures = 0;
            }
            let delay = backoff(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Registers `n` agents through `POST /api/servers/register/`.
pub async fn register(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    n: usize,
) -> Result<Vec<Arc<Identity>>> {
    let salt: u64 = rand::thread_rng().gen();
    let reqs = (0..n).map(|i| {
        let http = http.clone();
        async move {
            let seed: [u8; 32] = Sha256::digest(format!("bench-sim-{salt}-{i}")).into();
            let key = SigningKey::from_bytes(&seed);
            let name = format!("sim-{i:05}");
            let pk =
                base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
            let r = http
                .post(format!("{base}/api/servers/register/"))
                .json(&json!({"token": token, "name": name, "public_key": pk}))
                .send()
                .await?;
            let status = r.status();
            let v: Value = r.json().await?;
            if status.as_u16() != 201 {
                bail!("register {name}: {status} {v}");
            }
            let server_id = v["id"]
                .as_str()
                .ok_or_else(|| anyhow!("no id"))?
                .to_string();
            Ok(Arc::new(Identity {
                name,
                server_id,
                key,
                src: source_addr(i),
            }))
        }
    });
    let mut out: Vec<Arc<Identity>> = futures_util::stream::iter(reqs)
        .buffer_unordered(32)
        .collect::<Vec<Result<_>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime + cutime + cstime: the process and its waited-for children.
pub fn cpu_ticks_with_children(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (11..=14).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The scale run's sizes.
pub struct Plan {
    /// Connected counts at which gateway memory is read (ascending).
    pub levels: Vec<usize>,
    pub fanout: usize,
    pub restart: usize,
    /// How long to wait for a phase before giving up on it.
    pub limit: Duration,
    /// How long to watch the gateway's CPU while the agents idle.
    pub idle_window: Duration,
}

impl Plan {
    pub fn new(quick: bool, max: usize) -> Plan {
        if quick {
            Plan {
                levels: vec![20, 50],
                fanout: 20,
                restart: 50,
                limit: Duration::from_secs(30),
                idle_window: Duration::from_secs(1),
            }
        } else {
            let mut levels = vec![1_000, 10_000];
            levels.retain(|&l| l < max);
            levels.push(max);
            Plan {
                levels,
                fanout: 1_000.min(max),
                restart: 10_000.min(max),
                limit: Duration::from_secs(120),
                idle_window: Duration::from_secs(20),
            }
        }
    }
}

/// How many agents this machine lets one gateway hold: one descriptor per
/// link (and the load generator needs as many, in its own process). The
/// gateway keeps up to 1024 descriptors for files (`conn::connection_cap`)
/// and the bench's own API clients need a few links, hence 2000 below the
/// limit, in whole thousands.
pub fn machine_max() -> usize {
    let (_, hard) = crate::nofile_limit();
    let n = (hard as usize).saturating_sub(2_000).clamp(100, 50_000);
    if n >= 1_000 {
        n / 1_000 * 1_000
    } else {
        n
    }
}

pub fn run(quick: bool, max: usize, rep: &mut Report) -> Result<()> {
    let plan = Plan::new(quick, max);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut gw = Gateway::start().context("starting the scale gateway")?;
    let result = rt.block_on(scale(&mut gw, &plan, rep));
    if result.is_err() {
        let log = gw.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        eprintln!("--- scale gateway log (tail) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    drop(rt);
    result
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An admin API token and an unlimited registration token.
fn tokens(gw: &mut Gateway) -> Result<(String, String)> {
    let admin = gw.admin_api_token("bench-scale")?;
    let (st, v) = gw.call(
        "POST",
        "/api/servers/registration-tokens/",
        Some(json!({"name": "bench-scale", "max_uses": 0})),
    )?;
    if st != 201 {
        bail!("registration token: {st} {v}");
    }
    let reg = v["key"]
        .as_str()
        .ok_or_else(|| anyhow!("no key in {v}"))?
        .to_string();
    Ok((admin, reg))
}

async fn scale(gw: &mut Gateway, plan: &Plan, rep: &mut Report) -> Result<()> {
    let top = *plan.levels.last().unwrap_or(&0);
    let n = top.max(plan.restart).max(plan.fanout);
    let ca = std::fs::read(gw.ca())?;
    let http = http_client(&ca)?;
    let base = gw.url.clone();
    let (admin, reg) = tokio::task::block_in_place(|| tokens(gw))?;
    let pid = gw.pid().ok_or_else(|| anyhow!("no gateway pid"))?;

    let t = Instant::now();
    let ids = register(&http, &base, &reg, n).await?;
    let reg_time = t.elapsed();
    eprintln!("bench: scale: {n} agents registered in {}", secs(reg_time));
    // Let the gateway finish whatever the burst left behind.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = rss(pid).unwrap_or(0);

    let counters = Arc::new(Counters::default());
    let sim = Arc::new(Sim {
        addr: format!("127.0.0.1:{}", gw.port).parse()?,
        url: format!("wss://127.0.0.1:{}/ws/agent/", gw.port),
        tls: Arc::new(tls_config(&ca)?),
        counters: counters.clone(),
    });
    let c = &*counters;
    // Agents below `plan.restart` stay for the restart; those above are
    // stopped before it.
    let (stop_keep, keep_rx) = watch::channel(false);
    let (stop_extra, extra_rx) = watch::channel(false);
    let mut spawned = 0usize;
    let mut rows = Vec::new();
    let mut per_agent_top = 0.0f64;
    let mut idle_cpu = None;
    let mut fan_row = None;
    for &level in &plan.levels {
        let t = Instant::now();
        while spawned < level {
            // At most 256 handshakes in flight: a fleet does not all boot
            // in the same millisecond, and the accept queue is finite.
            if spawned - c.get(&c.connected) > 256 {
                if t.elapsed() > plan.limit {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let rx = if spawned < plan.restart {
                keep_rx.clone()
            } else {
                extra_rx.clone()
            };
            tokio::spawn(sim.clone().run_agent(ids[spawned].clone(), rx));
            spawned += 1;
        }
        let up = wait_until(&format!("{level} agents connected"), plan.limit, || {
            c.get(&c.connected) >= level
        })
        .await;
        if let Err(e) = up {
            let last = c
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            bail!(
                "{e}: {} connected, {} failed attempts; last error: {}",
                c.get(&c.connected),
                c.get(&c.failures),
                last.unwrap_or_default()
            );
        }
        let connect_time = t.elapsed();
        eprintln!(
            "bench: scale: {level} agents connected in {}",
            secs(connect_time)
        );
        // Settle, then read memory (and, at the restart size, idle CPU).
        tokio::time::sleep(Duration::from_secs(if plan.limit.as_secs() > 60 {
            5
        } else {
            1
        }))
        .await;
        let r = rss(pid).unwrap_or(0);
        let per = r.saturating_sub(rss0) as f64 / level as f64;
        if level == plan.restart {
            eprintln!(
                "bench: scale: watching the gateway idle for {}",
                secs(plan.idle_window)
            );
            let t0 = cpu_ticks(pid).unwrap_or(0);
            let w = Instant::now();
            tokio::time::sleep(plan.idle_window).await;
            let t1 = cpu_ticks(pid).unwrap_or(0);
            idle_cpu = Some((t1 - t0) as f64 / ticks_per_sec() / w.elapsed().as_secs_f64());
            // Fan-out at this size too (1k of 10k in the full run).
            fan_row = Some(fanout(&http, &base, &admin, &ids, c, plan.fanout, plan.limit).await?);
        }
        per_agent_top = per;
        rows.push((level, r, per, connect_time));
    }
    for (level, r, per, connect_time) in &rows {
        let met = *per <= 30_000.0;
        let mut row = Row::new(
            "scale",
            format!(
                "gateway RSS per idle agent at {level} agents (RSS {}; {level} connected in {})",
                bytes(*r),
                secs(*connect_time)
            ),
            format!("{:.1} KB", per / 1000.0),
        );
        if *level >= 1_000 || plan.limit.as_secs() <= 60 {
            row = row.goal("≤ 30 KB", met);
        }
        rep.push(row);
    }
    let _ = per_agent_top;
    if let Some(cpu) = idle_cpu {
        rep.push(Row::new(
            "scale",
            format!(
                "gateway CPU while {} agents idle (heartbeats), over {}",
                plan.restart,
                secs(plan.idle_window)
            ),
            format!("{:.1}% of a core", cpu * 100.0),
        ));
    }

    if let Some(r) = fan_row {
        rep.push(r);
    }

    // Restart: only `plan.restart` agents stay.
    let _ = stop_extra.send(true);
    wait_until("extra agents gone", plan.limit, || {
        c.get(&c.connected) <= plan.restart
    })
    .await?;
    let before = c.get(&c.connected);
    eprintln!("bench: scale: restarting the gateway under {before} agents");
    let welcomes0 = c.get(&c.welcomes);
    let t = Instant::now();
    // The e2e helpers use a blocking HTTP client: keep it off the runtime.
    tokio::task::block_in_place(|| gw.restart()).context("restarting the gateway")?;
    let ready = t.elapsed();
    let back = wait_until(&format!("{before} agents back"), plan.limit, || {
        c.get(&c.welcomes) - welcomes0 >= before && c.get(&c.connected) >= before
    })
    .await;
    let back_time = t.elapsed();
    let lost = before.saturating_sub(c.get(&c.connected));
    // The gateway's own view: servers it lists as connected.
    let gw_connected = count_connected(&http, &base, &format!("Token {admin}"))
        .await
        .unwrap_or(0);
    let ok = back.is_ok() && lost == 0;
    rep.push(
        Row::new(
            "scale",
            format!(
                "{before} agents back after a gateway restart (kill → all re-authenticated; gateway ready after {}; gateway lists {gw_connected} connected)",
                secs(ready)
            ),
            format!(
                "{}{}",
                secs(back_time),
                if lost > 0 { format!(", {lost} not back") } else { ", none lost".into() }
            ),
        )
        .goal("≤ 20 s, none lost", ok && back_time <= Duration::from_secs(20)),
    );
    let _ = stop_keep.send(true);
    rep.note(format!(
        "scale: {n} agents registered through `POST /api/servers/register/` in {} ({:.0}/s); \
         each simulated agent is a tokio task speaking the real protocol (WSS with rustls, \
         Challenge → Auth signed with its Ed25519 key → Welcome, Pong to every Ping, a \
         CommandResult for every RunCommand) from its own source address 127.b.c.d, reconnecting \
         with alpamon's backoff (full jitter, 0.5 s doubling, 60 s cap, reset by a link that was up); at most 256 first \
         handshakes in flight while filling; gateway RSS (VmRSS) read 5 s after each level \
         minus its RSS before any agent connected, divided by the agents (KB = 1000 bytes); the load generator shares the machine's 2 \
         cores with the gateway, which makes connect and reconnect times pessimistic",
        secs(reg_time),
        n as f64 / reg_time.as_secs_f64()
    ));
    let (soft, hard) = crate::nofile_limit();
    let max = top;
    if max < 50_000 && plan.limit.as_secs() > 60 {
        rep.note(format!(
            "scale: the most agents tried is {max}, not 50k: this machine's open-file limit is \
             {soft} (hard {hard}) per process and it cannot be raised here (no CAP_SYS_RESOURCE); \
             the gateway needs one descriptor per agent link"
        ));
    }
    Ok(())
}

/// One command to each of the first `fan` agents at once; the time until
/// every result is committed (the agents see the gateway's CommandAck).
async fn fanout(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    ids: &[Arc<Identity>],
    c: &Counters,
    fan: usize,
    limit: Duration,
) -> Result<Row> {
    let connected = c.get(&c.connected);
    let api = |path: &str| format!("{base}{path}");
    let auth = format!("Token {admin}");
    let acks0 = c.get(&c.acks);
    let t = Instant::now();
    let posts = ids[..fan].iter().map(|id| {
        let http = http.clone();
        let url = api("/api/events/commands/");
        let auth = auth.clone();
        let server = id.server_id.clone();
        async move {
            let r = http
                .post(url)
                .header("Authorization", auth)
                .json(&json!({"server": server, "line": "true", "username": "root"}))
                .send()
                .await?;
            if r.status().as_u16() != 201 {
                bail!(
                    "POST command: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
            Ok(())
        }
    });
    let results: Vec<Result<()>> = futures_util::stream::iter(posts)
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;
    let posted = t.elapsed();
    eprintln!("bench: scale: {} commands posted in {}", fan, secs(posted));
    wait_until(&format!("results of {fan} commands stored"), limit, || {
        c.get(&c.acks) - acks0 >= fan
    })
    .await?;
    let fan_time = t.elapsed();
    Ok(Row::new(
        "scale",
        format!(
            "command fan-out to {fan} of {connected} connected agents: all POSTed → all results committed (POSTs took {})",
            secs(posted)
        ),
        format!(
            "{} ({:.0} commands/s)",
            secs(fan_time),
            fan as f64 / fan_time.as_secs_f64()
        ),
    ))
}

/// Pages through the server list and counts `is_connected`.
async fn count_connected(http: &reqwest::Client, base: &str, auth: &str) -> Result<usize> {
    let mut n = 0;
    let mut page = 1;
    loop {
        let v: Value = http
            .get(format!(
                "{base}/api/servers/servers/?page={page}&page_size=100"
            ))
            .header("Authorization", auth)
            .send()
            .await?
            .json()
            .await?;
        let results = v["results"].as_array().cloned().unwrap_or_default();
        n += results
            .iter()
            .filter(|s| s["is_connected"].as_bool() == Some(true))
            .count();
        if v["next"].is_null() || results.is_empty() {
            return Ok(n);
        }
        page += 1;
    }
}
