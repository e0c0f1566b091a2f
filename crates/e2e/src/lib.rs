//! End-to-end test harness: starts the real `alpacon-server`, `alpamon` and
//! `alpacon` binaries on loopback, each in its own temporary directory.
//!
//! The binaries are looked up next to the test executable's target directory
//! (`target/<profile>/`), or in `ALPACON_BIN_DIR`. Build them first
//! (`cargo build --workspace --bins`); `scripts/test` does.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

pub mod mountns;
pub mod pg;
pub mod relay;

/// A crate's directory: from cargo at run time, else `compiled` (its
/// `env!("CARGO_MANIFEST_DIR")`). A test binary reused from a build in
/// another checkout keeps that checkout's path in `env!`.
pub fn crate_dir(compiled: &str) -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| compiled.to_string())
}

pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("ALPACON_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found; build the binaries first: cargo build --workspace --bins",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Polls `f` until it returns `Some`, or fails after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How a gateway is started beyond the defaults.
#[derive(Clone, Default)]
pub struct GatewayOpts {
    pub database_url: Option<String>,
    /// More flags for `alpacon-server`.
    pub args: Vec<String>,
    /// The process's RLIMIT_NOFILE (soft, hard), set before it starts.
    pub nofile: Option<(u64, u64)>,
    /// Put the data directory on a tmpfs of this many MiB in a private
    /// mount namespace (see `mountns`), so a test can fill it. Needs root.
    pub data_tmpfs_mib: Option<u64>,
}

/// A running gateway with its own data directory.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    pub database_url: Option<String>,
    opts: GatewayOpts,
    child: Option<Child>,
    pub admin_password: String,
    http: reqwest::blocking::Client,
    admin_key: Option<String>,
    /// Dropped after `Drop::drop` stopped the gateway that runs in it.
    tmpfs: Option<mountns::PrivateTmpfs>,
    /// The gateway's own PostgreSQL when the suite runs on it
    /// ([`e2e_on_postgres`]); stopped after the gateway.
    _pg: Option<pg::Postgres>,
}

/// Whether gateways started without a database URL get a throwaway
/// PostgreSQL of their own instead of SQLite: `scripts/test` runs the
/// end-to-end flows both ways (`ALPACON_E2E_DB=postgres`).
pub fn e2e_on_postgres() -> bool {
    std::env::var("ALPACON_E2E_DB").is_ok_and(|v| v == "postgres")
}

impl Gateway {
    pub fn start() -> Result<Gateway> {
        Self::start_with(None)
    }

    pub fn start_with(database_url: Option<String>) -> Result<Gateway> {
        Self::start_opts(GatewayOpts {
            database_url,
            ..Default::default()
        })
    }

    pub fn start_opts(opts: GatewayOpts) -> Result<Gateway> {
        let (database_url, pg) = match opts.database_url.clone() {
            Some(url) => (Some(url), None),
            // A test that fills the data disk needs the database on it.
            None if e2e_on_postgres() && opts.data_tmpfs_mib.is_none() => {
                let pg = pg::Postgres::start().context("ALPACON_E2E_DB=postgres")?;
                (Some(pg.url()), Some(pg))
            }
            None => (None, None),
        };
        let dir = tempfile::Builder::new().prefix("alpacon-gw-").tempdir()?;
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let tmpfs = match opts.data_tmpfs_mib {
            Some(mib) => Some(mountns::PrivateTmpfs::mount(&dir.path().join("data"), mib)?),
            None => None,
        };
        let mut gw = Gateway {
            dir,
            port,
            url,
            database_url,
            opts,
            child: None,
            admin_password: String::new(),
            http: reqwest::blocking::Client::new(),
            admin_key: None,
            tmpfs,
            _pg: pg,
        };
        gw.spawn()?;
        gw.admin_password = std::fs::read_to_string(gw.data().join("initial-admin-password"))
            .context("reading initial-admin-password")?
            .trim()
            .to_string();
        Ok(gw)
    }

    /// The data directory as this process sees it (through the mount
    /// namespace when it is on a private tmpfs).
    pub fn data(&self) -> PathBuf {
        match &self.tmpfs {
            Some(t) => t.view(&self.data_arg()),
            None => self.data_arg(),
        }
    }

    /// The data directory as the gateway sees it.
    fn data_arg(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ca(&self) -> PathBuf {
        self.data().join("tls/ca.crt")
    }

    /// Runs `sql` with text binds against the gateway's database (SQLite
    /// or PostgreSQL), as a test that must reach past the API does; the
    /// rows it changed.
    pub fn exec_sql(&self, sql: &str, binds: &[&str]) -> Result<u64> {
        let url = self
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data().join("alpacon.db").display()));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                sqlx::any::install_default_drivers();
                let pool = sqlx::AnyPool::connect(&url).await?;
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                let n = q.execute(&pool).await?.rows_affected();
                pool.close().await;
                Ok(n)
            })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))?;
        let mut cmd = match &self.tmpfs {
            Some(t) => t.command(bin("alpacon-server")),
            None => Command::new(bin("alpacon-server")),
        };
        cmd.arg("--data-dir")
            .arg(self.data_arg())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--public-url")
            .arg(&self.url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(db) = &self.database_url {
            cmd.arg("--database-url").arg(db);
        }
        cmd.args(&self.opts.args);
        if let Some((soft, hard)) = self.opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit (async-signal-safe) runs in the child
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        self.child = Some(cmd.spawn().context("starting alpacon-server")?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("alpacon-server exited with {status}:\n{}", self.log());
                }
            }
            if self.ca().exists() && self.http_client().is_ok() {
                if let Ok(r) = self.http.get(self.api("/api/status/")).send() {
                    if r.status().is_success() {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("alpacon-server did not become ready:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn http_client(&mut self) -> Result<()> {
        let pem = std::fs::read(self.ca())?;
        let cert = reqwest::Certificate::from_pem(&pem)?;
        self.http = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(cert)
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(())
    }

    /// Kills the gateway (SIGKILL: no graceful shutdown) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `stop` (SIGKILL), then start again on the same data and port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// An admin session key (logged in once, reused).
    pub fn admin_key(&mut self) -> Result<String> {
        if let Some(k) = &self.admin_key {
            return Ok(k.clone());
        }
        let r = self
            .http
            .post(self.api("/api/auth/login/"))
            .json(&json!({"username": "admin", "password": self.admin_password}))
            .send()?;
        let status = r.status();
        let v: Value = r.json()?;
        if !status.is_success() {
            bail!("admin login failed: {status} {v}");
        }
        let k = v["key"]
            .as_str()
            .ok_or_else(|| anyhow!("no key in {v}"))?
            .to_string();
        self.admin_key = Some(k.clone());
        Ok(k)
    }

    /// Calls the API as admin; returns (status, JSON body).
    pub fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let key = self.admin_key()?;
        self.call_as(&key, method, path, body)
    }

    pub fn call_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(m, self.api(path))
            .header("Authorization", format!("Token {key}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send()?;
        let status = r.status().as_u16();
        let text = r.text()?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    /// A personal API token (`alpat-…`) for admin.
    pub fn admin_api_token(&mut self, name: &str) -> Result<String> {
        let (s, v) = self.call("POST", "/api/auth/tokens/", Some(json!({"name": name})))?;
        if s != 201 {
            bail!("token create failed: {s} {v}");
        }
        Ok(v["key"]
            .as_str()
            .ok_or_else(|| anyhow!("no key"))?
            .to_string())
    }

    pub fn registration_token(&mut self, name: &str) -> Result<String> {
        let (s, v) = self.call(
            "POST",
            "/api/servers/registration-tokens/",
            Some(json!({"name": name})),
        )?;
        if s != 201 {
            bail!("registration token create failed: {s} {v}");
        }
        Ok(v["key"]
            .as_str()
            .ok_or_else(|| anyhow!("no key"))?
            .to_string())
    }

    pub fn server(&mut self, name: &str) -> Result<Value> {
        let (s, v) = self.call("GET", &format!("/api/servers/servers/?name={name}"), None)?;
        if s != 200 {
            bail!("server list failed: {s} {v}");
        }
        v["results"]
            .as_array()
            .and_then(|a| a.first().cloned())
            .ok_or_else(|| anyhow!("no server named {name}"))
    }

    pub fn wait_connected(&mut self, name: &str, connected: bool) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(s) = self.server(name) {
                if s["is_connected"].as_bool() == Some(connected) {
                    return Ok(());
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "server {name} did not become connected={connected}\n--- gateway log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls a command until it has a result.
    pub fn wait_command(&mut self, id: &str, limit: Duration) -> Result<Value> {
        let start = Instant::now();
        loop {
            let (s, v) = self.call("GET", &format!("/api/events/commands/{id}/"), None)?;
            if s != 200 {
                bail!("command get failed: {s} {v}");
            }
            if matches!(v["status"].as_str(), Some("finished" | "error")) {
                return Ok(v);
            }
            if start.elapsed() > limit {
                bail!("command {id} did not finish: {v}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        // A failing test loses its temporary directory: keep what the
        // gateway said about it.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- gateway log (last {} lines) ---", tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// How an agent is run.
#[derive(Clone, Default)]
pub struct AgentOpts {
    /// Run inside a private mount namespace with a copy of /etc, a fresh
    /// /home and /opt, so `useradd` and files under /opt touch nothing on the
    /// host. Needs root.
    pub private_namespace: bool,
    /// Shell lines run inside the namespace before the agent starts (e.g.
    /// `useradd -m docker`).
    pub setup: Vec<String>,
    /// Connect through this URL instead of the gateway's (a cuttable relay).
    pub url: Option<String>,
}

/// A registered agent.
pub struct Agent {
    pub name: String,
    pub dir: tempfile::TempDir,
    opts: AgentOpts,
    child: Option<Child>,
}

impl Agent {
    pub fn register(gw: &mut Gateway, name: &str, opts: AgentOpts) -> Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("alpacon-agent-")
            .tempdir()?;
        let token = gw.registration_token(&format!("reg-{name}"))?;
        let config = dir.path().join("agent/alpamon.toml");
        let url = opts.url.clone().unwrap_or_else(|| gw.url.clone());
        let out = Command::new(bin("alpamon"))
            .args(["register", "--url", &url, "--token", &token, "--name", name])
            .arg("--ca-cert")
            .arg(gw.ca())
            .arg("--config")
            .arg(&config)
            .output()?;
        if !out.status.success() {
            bail!(
                "alpamon register failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut a = Agent {
            name: name.to_string(),
            dir,
            opts,
            child: None,
        };
        a.start()?;
        Ok(a)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent/alpamon.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))?;
        let alpamon = bin("alpamon");
        let mut cmd = if self.opts.private_namespace {
            let root = self.dir.path();
            let mut script = format!(
                "set -e; rm -rf '{r}/etc' && cp -a /etc '{r}/etc' && mount --bind '{r}/etc' /etc && \
                 mount -t tmpfs tmpfs /home && mount -t tmpfs tmpfs /opt && ",
                r = root.display()
            );
            for line in &self.opts.setup {
                script.push_str(line);
                script.push_str(" && ");
            }
            script.push_str(&format!(
                "exec '{}' run --config '{}'",
                alpamon.display(),
                self.config().display()
            ));
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new(alpamon);
            c.arg("run").arg("--config").arg(self.config());
            c
        };
        cmd.env("RUST_LOG", "info,alpamon=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("starting alpamon")?);
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// The agent's pid (`unshare` and `sh` exec into it, so it is the same).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `alpacon` CLI with its own config file.
pub struct Cli {
    pub dir: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Result<Cli> {
        Ok(Cli {
            dir: tempfile::Builder::new().prefix("alpacon-cli-").tempdir()?,
        })
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(bin("alpacon"));
        c.env("ALPACON_CONFIG", self.config())
            .env("HOME", self.dir.path())
            .env_remove("XDG_CONFIG_HOME")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running alpacon")
    }

    pub fn login_password(&self, gw: &Gateway, user: &str, password: &str) -> Result<()> {
        let ca = gw.ca();
        let out = self.run(&[
            "login",
            &gw.url,
            "-u",
            user,
            "-p",
            password,
            "--ca-cert",
            ca.to_str().unwrap_or_default(),
        ]);
        if !out.status.success() {
            bail!("alpacon login failed: {}", text(&out));
        }
        Ok(())
    }

    pub fn login_token(&self, gw: &Gateway, token: &str) -> Result<()> {
        let ca = gw.ca();
        let out = self.run(&[
            "login",
            &gw.url,
            "-t",
            token,
            "--ca-cert",
            ca.to_str().unwrap_or_default(),
        ]);
        if !out.status.success() {
            bail!("alpacon login failed: {}", text(&out));
        }
        Ok(())
    }
}

/// A CLI logged in as `user` with a password; panics (it is for tests) if
/// the login fails.
pub fn login(gw: &Gateway, user: &str, password: &str) -> Cli {
    let cli = Cli::new().expect("a CLI home");
    cli.login_password(gw, user, password)
        .unwrap_or_else(|e| panic!("{e:#}"));
    cli
}

/// Runs the CLI and returns its stdout; panics if it fails.
pub fn ok(cli: &Cli, args: &[&str]) -> String {
    let out = cli.run(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ok` with `--output json`, parsed.
pub fn json_of(cli: &Cli, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    serde_json::from_str(&ok(cli, &a)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Peak resident memory of a live process, in bytes (`VmHWM`).
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs a command to completion while sampling its peak RSS; returns its
/// output and the last peak seen (the peak is monotonic, so the last sample
/// before exit is the best we can read).
pub fn run_measured(mut cmd: Command) -> Result<(Output, u64)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    let mut peak = 0;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_end(&mut o);
        }
        if let Some(s) = err.as_mut() {
            let _ = s.read_to_end(&mut e);
        }
        (o, e)
    });
    let status = loop {
        if let Some(p) = peak_rss(pid) {
            peak = peak.max(p);
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = reader.join().map_err(|_| anyhow!("reader panicked"))?;
    Ok((
        Output {
            status,
            stdout,
            stderr,
        },
        peak,
    ))
}

/// stdout + stderr of a finished process, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn sha256_file(p: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Writes `size` bytes of incompressible, position-dependent data.
pub fn write_big_file(p: &Path, size: u64) -> Result<()> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(p)?);
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut i = 0u64;
    while written < size {
        // Each MiB differs: a 32-byte hash of its index, repeated with a
        // rolling xor, so no two blocks and no two offsets look alike.
        let seed = Sha256::digest(i.to_le_bytes());
        for (j, b) in block.iter_mut().enumerate() {
            *b = seed[j % 32] ^ (j as u8).wrapping_mul(31) ^ ((j >> 8) as u8);
        }
        let n = ((size - written) as usize).min(block.len());
        f.write_all(&block[..n])?;
        written += n as u64;
        i += 1;
    }
    f.flush()?;
    Ok(())
}

/// Shared handle so tests can pass the gateway to threads.
pub type Shared<T> = Arc<std::sync::Mutex<T>>;

/// A process whose stdin we write and whose stdout we collect as it comes.
pub struct Interactive {
    pub child: Child,
    stdin: Option<std::process::ChildStdin>,
    pub out: Arc<std::sync::Mutex<Vec<u8>>>,
    pub err: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Interactive {
    pub fn spawn(mut cmd: Command) -> Result<Interactive> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
        let err: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
        for (src, dst) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                out.clone(),
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                err.clone(),
            ),
        ] {
            if let Some(mut s) = src {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        dst.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buf[..n]);
                    }
                });
            }
        }
        Ok(Interactive {
            stdin: child.stdin.take(),
            child,
            out,
            err,
        })
    }

    pub fn write(&mut self, s: &[u8]) -> Result<()> {
        use std::io::Write;
        let w = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin closed"))?;
        w.write_all(s)?;
        w.flush()?;
        Ok(())
    }

    /// The child's stdin, for writing from another thread (a write that
    /// may block); `write` fails afterwards.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.stdin.take()
    }

    pub fn output(&self) -> Vec<u8> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn output_len(&self) -> usize {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            {
                let o = self.out.lock().unwrap_or_else(|e| e.into_inner());
                if memfind(&o, needle.as_bytes()) {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                let o = self.output();
                let tail = &o[o.len().saturating_sub(2000)..];
                bail!(
                    "timed out waiting for {needle:?}; output tail: {:?}\nstderr: {}",
                    String::from_utf8_lossy(tail),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                bail!("process did not exit; stderr: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
