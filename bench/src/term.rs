//! Terminal (issue item 4): keystroke-echo round trip through the gateway's websh
//! WebSocket vs `ssh -tt` vs a local PTY, and bulk output (`cat` of a big
//! file) through each.
//!
//! Every transport starts a login shell on a terminal and has the same lines
//! typed into it, so the programs on the far side are identical; only the
//! path in between differs. Echo: `stty raw -echo; exec cat` (a program reads
//! each key and writes it back, as an editor or readline does), one byte at a
//! time, the next key sent only after the previous came back. Keystrokes go
//! in blocks of 100, rotating over the transports, so drift hits all alike.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::report::{Report, Row};
use crate::setup::{tls_config, Env, SERVER};
use crate::stats::{mbps, ms, ratio_d, secs, Summary};

/// A terminal we type into and read from.
pub trait Term {
    fn send(&mut self, bytes: &[u8]) -> Result<()>;
    /// Output that arrived within `timeout` (empty if none).
    fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>>;
    fn name(&self) -> &'static str;
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads until `needle` appears; returns everything read up to and
/// including it, and what followed.
pub fn wait_for(t: &mut dyn Term, needle: &[u8], limit: Duration) -> Result<(Vec<u8>, Vec<u8>)> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        if let Some(i) = find(&seen, needle) {
            let rest = seen.split_off(i + needle.len());
            return Ok((seen, rest));
        }
        let left = limit.checked_sub(start.elapsed()).ok_or_else(|| {
            anyhow!(
                "{}: no {:?} within {limit:?}; got {:?}",
                t.name(),
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(300)..])
            )
        })?;
        seen.extend(t.recv(left.min(Duration::from_millis(200)))?);
    }
}

/// Reads and drops output until the terminal is quiet for `quiet`.
pub fn drain(t: &mut dyn Term, quiet: Duration) -> Result<()> {
    while !t.recv(quiet)?.is_empty() {}
    Ok(())
}

/// Turns the terminal into an echo program and waits until it is ready.
pub fn start_echo(t: &mut dyn Term) -> Result<()> {
    t.send(b"echo RE''ADY1\r")?;
    wait_for(t, b"READY1", Duration::from_secs(20))?;
    t.send(b"stty raw -echo; echo RE''ADY2; exec cat\r")?;
    wait_for(t, b"READY2", Duration::from_secs(20))?;
    drain(t, Duration::from_millis(300))
}

/// One key out, its echo back.
pub fn keystroke(t: &mut dyn Term, key: u8) -> Result<Duration> {
    let start = Instant::now();
    t.send(&[key])?;
    loop {
        let got = t.recv(Duration::from_secs(10))?;
        if !got.is_empty() {
            let d = start.elapsed();
            if got != [key] {
                bail!(
                    "{}: sent {:?}, got {:?}",
                    t.name(),
                    key as char,
                    String::from_utf8_lossy(&got)
                );
            }
            return Ok(d);
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{}: no echo within 10 s", t.name());
        }
    }
}

/// Types `cat FILE` and reads until the marker after it; returns the time
/// and the bytes of output.
pub fn bulk(t: &mut dyn Term, file: &std::path::Path) -> Result<(Duration, u64)> {
    t.send(b"echo RE''ADY3\r")?;
    wait_for(t, b"READY3", Duration::from_secs(20))?;
    drain(t, Duration::from_millis(300))?;
    let start = Instant::now();
    t.send(format!("cat {}; echo DO''NE\r", file.display()).as_bytes())?;
    let mut n = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let got = t.recv(Duration::from_millis(500))?;
        n += got.len() as u64;
        tail.extend_from_slice(&got);
        if find(&tail, b"DONE").is_some() {
            return Ok((start.elapsed(), n));
        }
        let keep = tail.len().saturating_sub(8);
        tail.drain(..keep);
        if start.elapsed() > Duration::from_secs(600) {
            bail!("{}: cat did not finish in 600 s", t.name());
        }
    }
}

// ---- terminals on a file descriptor: local PTY, ssh -tt --------------------

fn poll_in(fd: RawFd, timeout: Duration) -> Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e.into());
    }
    Ok(r > 0)
}

pub struct FdTerm {
    name: &'static str,
    w: Box<dyn Write + Send>,
    r: File,
    child: Child,
    buf: Vec<u8>,
}

impl Term for FdTerm {
    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes)?;
        self.w.flush()?;
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        if !poll_in(self.r.as_raw_fd(), timeout)? {
            return Ok(Vec::new());
        }
        let n = self.r.read(&mut self.buf)?;
        if n == 0 {
            bail!("{}: the terminal closed", self.name);
        }
        Ok(self.buf[..n].to_vec())
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

impl Drop for FdTerm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// root's login shell, as sshd and the agent would pick it.
fn login_shell() -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines()
                .find(|l| l.starts_with("root:"))
                .and_then(|l| l.rsplit(':').next().map(str::to_string))
        })
        .filter(|s| std::path::Path::new(s).exists())
        .unwrap_or_else(|| "/bin/sh".into())
}

/// A login shell on a PTY of our own: the floor for any remote terminal.
pub fn local_pty() -> Result<FdTerm> {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to two ints, a valid winsize; no name buffer.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("openpty");
    }
    // SAFETY: openpty gave us two fresh descriptors we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let shell = login_shell();
    let mut cmd = Command::new(&shell);
    cmd.arg("-l")
        .env("TERM", "xterm-256color")
        .current_dir("/root")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting a shell on a local PTY")?;
    drop(cmd); // closes our copies of the slave
    let r = File::from(master);
    let w = r.try_clone()?;
    Ok(FdTerm {
        name: "local PTY",
        w: Box::new(w),
        r,
        child,
        buf: vec![0u8; 64 * 1024],
    })
}

/// `ssh -tt root@127.0.0.1` (a login shell on a remote PTY), through pipes.
pub fn ssh_tty(sshd: &crate::sshd::Sshd) -> Result<FdTerm> {
    let mut child = sshd
        .ssh_tty()
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ssh -tt")?;
    let w = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let r = File::from(OwnedFd::from(out));
    Ok(FdTerm {
        name: "ssh -tt",
        w: Box::new(w),
        r,
        child,
        buf: vec![0u8; 64 * 1024],
    })
}

// ---- the gateway's websh WebSocket -------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A websh session on the gateway, attached over its WebSocket directly.
pub struct WsTerm {
    rt: tokio::runtime::Runtime,
    ws: Ws,
    /// Output bytes received since offset 0 (the session's start).
    received: u64,
    acked: u64,
    pub session: String,
}

const ACK_EVERY: u64 = 32 * 1024;

impl WsTerm {
    pub fn open(env: &Env) -> Result<WsTerm> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = env.http()?;
        let base = env.gw.url.clone();
        let auth = format!("Token {}", env.token);
        let tls = Arc::new(tls_config(&env.ca_pem()?)?);
        let (ws, session) = rt.block_on(async {
            let r = http
                .post(format!("{base}/api/websh/sessions/"))
                .header("Authorization", &auth)
                .json(&json!({"server": SERVER, "username": "root", "rows": 24, "cols": 80}))
                .send()
                .await?;
            let status = r.status();
            let v: Value = r.json().await?;
            if status.as_u16() != 201 {
                bail!("POST /api/websh/sessions/: {status} {v}");
            }
            let id = v["id"]
                .as_str()
                .ok_or_else(|| anyhow!("no id in {v}"))?
                .to_string();
            let url = format!(
                "{}/api/websh/sessions/{id}/ws/?offset=0&client=bench-{}",
                base.replacen("https://", "wss://", 1),
                std::process::id()
            );
            let mut req = url.into_client_request()?;
            req.headers_mut()
                .insert("Authorization", HeaderValue::from_str(&auth)?);
            let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
                req,
                None,
                true,
                Some(Connector::Rustls(tls)),
            )
            .await
            .context("websh WebSocket")?;
            Ok((ws, id))
        })?;
        Ok(WsTerm {
            rt,
            ws,
            received: 0,
            acked: 0,
            session,
        })
    }
}

impl Term for WsTerm {
    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let m = Message::Binary(bytes::Bytes::copy_from_slice(bytes));
        self.rt.block_on(self.ws.send(m))?;
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = self
                .rt
                .block_on(async { tokio::time::timeout_at(deadline, self.ws.next()).await });
            let msg = match next {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => bail!("websh: the WebSocket closed"),
                Ok(Some(m)) => m?,
            };
            match msg {
                Message::Binary(b) => {
                    self.received += b.len() as u64;
                    if self.received - self.acked >= ACK_EVERY {
                        self.acked = self.received;
                        let ack = json!({"type": "ack", "offset": self.acked}).to_string();
                        self.rt.block_on(self.ws.send(Message::Text(ack.into())))?;
                    }
                    return Ok(b.to_vec());
                }
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("exit" | "closed" | "error") => bail!("websh session ended: {t}"),
                        _ => continue,
                    }
                }
                Message::Close(_) => bail!("websh: the gateway closed the WebSocket"),
                _ => continue,
            }
        }
    }

    fn name(&self) -> &'static str {
        "gateway websh"
    }
}

impl Drop for WsTerm {
    fn drop(&mut self) {
        let close = json!({"type": "close"}).to_string();
        let _ = self.rt.block_on(async {
            let _ = self.ws.send(Message::Text(close.into())).await;
            tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await
        });
    }
}

// ---- the section ---------------------------------------------------------------

/// A text file of `size` bytes: printable lines, as a log or a listing.
pub fn write_text_file(p: &std::path::Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(p)?);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
    let mut written = 0u64;
    let mut line = 0u64;
    while written < size {
        let mut l = format!("{line:08} ").into_bytes();
        for i in 0..90u64 {
            l.push(alphabet[((line * 7 + i * 13) % 64) as usize]);
        }
        l.push(b'\n');
        let n = (size - written).min(l.len() as u64) as usize;
        if n < l.len() {
            l.truncate(n.saturating_sub(1));
            l.push(b'\n');
        }
        f.write_all(&l[..n])?;
        written += n as u64;
        line += 1;
    }
    f.flush()?;
    Ok(())
}

pub fn run(env: &Env, quick: bool, rep: &mut Report) -> Result<()> {
    let keys = if quick { 60 } else { 2000 };
    let block = if quick { 20 } else { 100 };
    let cat_size: u64 = if quick { 2_000_000 } else { 100_000_000 };

    // Keystrokes.
    let mut terms: Vec<Box<dyn Term>> = vec![Box::new(WsTerm::open(env)?), Box::new(local_pty()?)];
    if let Some(s) = &env.sshd {
        terms.push(Box::new(ssh_tty(s)?));
    }
    for t in terms.iter_mut() {
        start_echo(t.as_mut())?;
        // Warm-up keys.
        for i in 0..20u8 {
            keystroke(t.as_mut(), b'a' + i % 26)?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); terms.len()];
    let mut sent = 0;
    while sent < keys {
        for (t, s) in terms.iter_mut().zip(samples.iter_mut()) {
            for i in 0..block {
                s.push(keystroke(t.as_mut(), b'a' + ((sent + i) % 26) as u8)?);
            }
        }
        sent += block;
    }
    crate::dump_samples(
        "keystroke",
        &terms.iter().map(|t| t.name()).collect::<Vec<_>>(),
        &samples,
    );
    drop(terms);
    let ours = Summary::of(&samples[0]);
    let local = Summary::of(&samples[1]);
    let ssh = samples.get(2).map(|s| Summary::of(s));
    let added = ours.p99.saturating_sub(local.p99);
    let mut p50 = Row::new("terminal", "keystroke echo round trip, p50", ms(ours.p50));
    let mut p99 = Row::new("terminal", "keystroke echo round trip, p99", ms(ours.p99));
    let mut add = Row::new(
        "terminal",
        format!(
            "keystroke echo p99 added over a local PTY (local: p50 {}, p99 {})",
            ms(local.p50),
            ms(local.p99)
        ),
        ms(added),
    );
    if let Some(s) = ssh {
        p50 = p50
            .openssh(ms(s.p50))
            .ratio(ratio_d(ours.p50, s.p50))
            .goal("≤ ssh", ours.p50 <= s.p50);
        p99 = p99
            .openssh(ms(s.p99))
            .ratio(ratio_d(ours.p99, s.p99))
            .goal("≤ ssh", ours.p99 <= s.p99);
        add = add.openssh(ms(s.p99.saturating_sub(local.p99)));
    }
    rep.push(p50);
    rep.push(p99);
    rep.push(add.goal("≤ 2 ms", added <= Duration::from_millis(2)));

    // Bulk output.
    let file = env.work.path().join("cat.txt");
    write_text_file(&file, cat_size)?;
    let label = if quick { "2 MB" } else { "100 MB" };
    let (tours, bours) = bulk(&mut WsTerm::open(env)?, &file)?;
    let (tlocal, _) = bulk(&mut local_pty()?, &file)?;
    let theirs = match &env.sshd {
        Some(s) => Some(bulk(&mut ssh_tty(s)?, &file)?),
        None => None,
    };
    std::fs::remove_file(&file)?;
    let fig = format!(
        "terminal `cat` of {label} (local PTY: {:.0} MB/s)",
        mbps(cat_size, tlocal)
    );
    let ours_s = format!("{:.0} MB/s ({})", mbps(cat_size, tours), secs(tours));
    let row = match theirs {
        Some((t, _)) => Row::new("terminal", fig, ours_s)
            .openssh(format!("{:.0} MB/s ({})", mbps(cat_size, t), secs(t)))
            .ratio(format!("{} time", ratio_d(tours, t))),
        None => Row::new("terminal", fig, ours_s),
    };
    rep.push(row);
    if bours < cat_size {
        bail!("websh delivered {bours} bytes of a {cat_size}-byte cat");
    }
    rep.note(format!(
        "terminal: a login shell as root on a 80×24 terminal in each of: a websh session attached \
         over its WebSocket directly (tokio-tungstenite, acks every 32 KiB), `ssh -tt`, and a PTY \
         of the benchmark's own; echo = `stty raw -echo; exec cat`, one key in flight, {keys} keys \
         per transport after 20 warm-ups, in blocks of {block} rotating over the transports; bulk = \
         `cat` of a {label} text file, from typing the line until the marker echoed after it \
         (MB/s of the file's size; the PTY turns \\n into \\r\\n)"
    ));
    Ok(())
}
