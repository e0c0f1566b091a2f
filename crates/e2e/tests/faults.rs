//! Faults, end to end: command results and audit events survive a gateway
//! killed with SIGKILL, an agent killed with SIGKILL, a link cut again and
//! again and a full disk, and nothing runs twice.
//!
//! Every scenario streams commands whose line appends a unique token (the
//! command's `Idempotency-Key`) to a file on the agent's machine, injects its
//! fault, lets everything settle and then counts, never times:
//! - every command the API accepted reached a final status (`finished`, or
//!   `error` with a code the fault explains), none was lost;
//! - no token was appended twice, and one reported `finished` exactly once;
//! - one key made at most one command (a retry with the same key returns the
//!   same command);
//! - every command has exactly one `command.run` and one `command.finish`
//!   audit event;
//! - `PRAGMA integrity_check` says ok.
//!
//! Needs root (the agent runs commands as root; the disk is a tmpfs in a
//! private mount namespace).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alpacon_e2e::relay::CutRelay;
use alpacon_e2e::{is_root, login, wait_for, Agent, AgentOpts, Gateway, GatewayOpts, Interactive};
use anyhow::{anyhow, Result};
use rand::Rng;
use serde_json::{json, Value};

/// How long a client keeps retrying one submission that fails at the
/// transport level (the gateway is down or restarting).
const RETRY_LIMIT: Duration = Duration::from_secs(60);
/// How long everything may take to settle once the faults stopped.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// What became of one logical command (one `Idempotency-Key`).
#[derive(Debug, Clone)]
enum Outcome {
    /// 2xx; `attempts` counts the transport failures before it, plus one.
    Accepted { id: String, attempts: u32 },
    /// A non-2xx answer (never retried).
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// Transport failures until `RETRY_LIMIT`.
    GaveUp { attempts: u32, last_error: String },
}

/// The API as a client of its own sees it: it outlives gateway restarts.
#[derive(Clone)]
struct Client {
    http: reqwest::blocking::Client,
    url: String,
    key: String,
    server: String,
}

impl Client {
    fn new(gw: &mut Gateway, server: &str) -> Client {
        let pem = std::fs::read(gw.ca()).expect("the gateway's CA");
        let http = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM CA"))
            .timeout(Duration::from_secs(15))
            .build()
            .expect("an HTTP client");
        Client {
            http,
            url: gw.url.clone(),
            key: gw.admin_key().expect("an admin session"),
            server: server.to_string(),
        }
    }

    /// Submits `line` under `key`, retrying (same key) what fails at the
    /// transport level; an answer, whatever its status, is final.
    fn submit(&self, key: &str, line: &str) -> Outcome {
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let r = self
                .http
                .post(format!("{}/api/events/commands/", self.url))
                .header("Authorization", format!("Token {}", self.key))
                .header("Idempotency-Key", key)
                .json(&json!({"server": self.server, "line": line, "username": "root"}))
                .send()
                .and_then(|r| {
                    let status = r.status().as_u16();
                    r.text().map(|t| (status, t))
                });
            let last_error = match r {
                Ok((status, text)) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if (200..300).contains(&status) {
                        return match v["id"].as_str() {
                            Some(id) => Outcome::Accepted {
                                id: id.to_string(),
                                attempts,
                            },
                            None => Outcome::Refused {
                                status,
                                code: "(no id in the answer)".into(),
                                detail: v.to_string(),
                            },
                        };
                    }
                    return Outcome::Refused {
                        status,
                        code: v["code"].as_str().unwrap_or("(no code)").to_string(),
                        detail: v["detail"].as_str().unwrap_or_default().to_string(),
                    };
                }
                Err(e) => e.to_string(),
            };
            if start.elapsed() > RETRY_LIMIT {
                return Outcome::GaveUp {
                    attempts,
                    last_error,
                };
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every command of our server, as the API lists them.
    fn commands(&self) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        for page in 1.. {
            let r = self
                .http
                .get(format!(
                    "{}/api/events/commands/?server={}&page_size=100&page={page}",
                    self.url, self.server
                ))
                .header("Authorization", format!("Token {}", self.key))
                .send()?;
            let status = r.status();
            let v: Value = r.json()?;
            if !status.is_success() {
                return Err(anyhow!("listing commands: {status} {v}"));
            }
            all.extend(v["results"].as_array().cloned().unwrap_or_default());
            if v["next"].is_null() {
                break;
            }
        }
        Ok(all)
    }
}

/// One scenario's bookkeeping: its files on the agent's machine and every
/// submission with its outcome.
struct Scenario {
    name: &'static str,
    dir: tempfile::TempDir,
    salt: String,
    subs: Mutex<Vec<(String, Outcome)>>,
    /// Error codes of a final result that this scenario's fault explains.
    explained: &'static [&'static str],
    /// Refusal codes the scenario expects (any other refusal is a failure).
    refusals: &'static [&'static str],
}

impl Scenario {
    fn new(
        name: &'static str,
        explained: &'static [&'static str],
        refusals: &'static [&'static str],
    ) -> Arc<Scenario> {
        let dir = tempfile::Builder::new()
            .prefix("alpacon-faults-")
            .tempdir()
            .expect("a temporary directory");
        let salt: u32 = rand::thread_rng().gen();
        Arc::new(Scenario {
            name,
            dir,
            salt: format!("{salt:08x}"),
            subs: Mutex::new(Vec::new()),
            explained,
            refusals,
        })
    }

    /// Where commands append their token when they complete.
    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    /// Where long commands append their token when they start.
    fn starts(&self) -> PathBuf {
        self.dir.path().join("starts")
    }

    fn key(&self, n: usize) -> String {
        format!("{}-{n:03}-{}", self.name, self.salt)
    }

    /// A command line that appends `key` once it has run; a long one also
    /// marks its start and sleeps `secs` in between.
    fn line(&self, key: &str, long_secs: Option<u32>) -> String {
        let runs = self.runs().display().to_string();
        match long_secs {
            None => format!("echo {key} >> {runs}"),
            Some(s) => format!(
                "echo {key} >> {}; sleep {s}; echo {key} >> {runs}",
                self.starts().display()
            ),
        }
    }

    fn submit(&self, client: &Client, n: usize, long_secs: Option<u32>) -> (String, Outcome) {
        let key = self.key(n);
        let outcome = client.submit(&key, &self.line(&key, long_secs));
        lock(&self.subs).push((key.clone(), outcome.clone()));
        (key, outcome)
    }

    fn accepted(&self) -> usize {
        lock(&self.subs)
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Accepted { .. }))
            .count()
    }

    fn accepted_ids(&self) -> Vec<String> {
        lock(&self.subs)
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Accepted { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tokens in a file, one per line, counted.
fn tokens(p: &Path) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for t in std::fs::read_to_string(p).unwrap_or_default().lines() {
        *n.entry(t.trim().to_string()).or_default() += 1;
    }
    n
}

/// Live processes whose command line names `marker` (our commands' shells,
/// which may outlive an agent killed under them).
fn processes_naming(marker: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(marker))
        .count()
}

/// A process that runs (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// How many times the agent's link came up (its log says so each time).
fn links_up(agent: &Agent) -> usize {
    agent.log().matches("connected to ").count()
}

/// The agent's result for `id` left it (it logs each command it finished).
fn agent_finished(agent: &Agent, id: &str) -> bool {
    agent
        .log()
        .lines()
        .any(|l| l.contains("command finished") && l.contains(id))
}

/// An agent running commands as root on this machine, reconnecting within
/// a second (the default backoff caps at a minute, longer than these tests).
fn agent_for(gw: &mut Gateway, name: &str, url: Option<String>) -> Agent {
    assert!(is_root(), "the fault suite needs root");
    let opts = AgentOpts {
        url,
        ..AgentOpts::default()
    };
    let mut agent = Agent::register(gw, name, opts).expect("register the agent");
    agent.stop();
    let cfg = std::fs::read_to_string(agent.config()).expect("the agent's config");
    let fast = cfg.replace("backoff_max_secs = 60", "backoff_max_secs = 1");
    assert_ne!(cfg, fast, "no backoff_max_secs = 60 in\n{cfg}");
    std::fs::write(agent.config(), fast).expect("write the agent's config");
    agent.start().expect("start the agent");
    gw.wait_connected(name, true)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    agent
}

/// SIGKILL, as a crash or an OOM kill would: no shutdown code runs.
fn sigkill(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on a process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A command as the gateway's database holds it.
struct Stored {
    id: String,
    line: String,
    status: String,
    error_code: Option<String>,
    exit_code: Option<i64>,
}

/// The gateway's database, read directly once it is stopped.
struct DbView {
    commands: Vec<Stored>,
    /// command id → (command.run events, command.finish events)
    audit: HashMap<String, (usize, usize)>,
    integrity: String,
}

/// The gateway's database as it stands: its PostgreSQL, or a copy of its
/// SQLite file.
fn read_gateway_db(gw: &Gateway) -> Result<DbView> {
    match &gw.database_url {
        Some(url) => read_db_at(url, false),
        None => read_db(&gw.data().join("alpacon.db")),
    }
}

/// Reads a copy of the database (and its WAL): SQLite resolves symbolic
/// links, so it cannot open a file through `/proc/<pid>/root` (the private
/// tmpfs), and a copy leaves the gateway's own files untouched.
fn read_db(path: &Path) -> Result<DbView> {
    let copy = tempfile::tempdir()?;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("no file name in {}", path.display()))?;
    for ext in ["", "-wal"] {
        let mut from = path.as_os_str().to_owned();
        from.push(ext);
        let mut to = copy.path().join(name).into_os_string();
        to.push(ext);
        match std::fs::copy(&from, &to) {
            Ok(_) => {}
            Err(e) if ext == "-wal" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let path = copy.path().join(name);
    read_db_at(&format!("sqlite://{}", path.display()), true)
}

/// The commands and their audit events in the database at `url`; SQLite's
/// own integrity check when `sqlite`.
fn read_db_at(url: &str, sqlite: bool) -> Result<DbView> {
    use sqlx::{Connection, Row};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url).await?;
        let integrity: Vec<String> = if sqlite {
            sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_all(&mut conn)
                .await?
        } else {
            vec!["ok".to_string()]
        };
        let mut commands = Vec::new();
        for r in sqlx::query("SELECT id, line, status, error_code, exit_code FROM commands")
            .fetch_all(&mut conn)
            .await?
        {
            commands.push(Stored {
                id: r.try_get("id")?,
                line: r.try_get("line")?,
                status: r.try_get("status")?,
                error_code: r.try_get("error_code")?,
                exit_code: r.try_get("exit_code")?,
            });
        }
        let mut audit: HashMap<String, (usize, usize)> = HashMap::new();
        for r in sqlx::query(
            // Any result: a command that ended in an error is audited as
            // a failed command.finish.
            "SELECT action, detail FROM audit_events
             WHERE action IN ('command.run', 'command.finish')",
        )
        .fetch_all(&mut conn)
        .await?
        {
            let action: String = r.try_get("action")?;
            let detail: String = r.try_get("detail")?;
            let detail: Value = serde_json::from_str(&detail)?;
            let Some(id) = detail["command_id"].as_str() else {
                continue;
            };
            let e = audit.entry(id.to_string()).or_default();
            if action == "command.run" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        conn.close().await?;
        Ok(DbView {
            commands,
            audit,
            integrity: integrity.join("; "),
        })
    })
}

/// The token a command line appends: its second word (`echo KEY >> …`).
fn key_of(line: &str) -> String {
    line.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn is_final(status: &str) -> bool {
    matches!(status, "finished" | "error")
}

/// Ids, at most a few, for a failure message.
fn some(ids: &[String]) -> String {
    let shown: Vec<&str> = ids.iter().take(8).map(String::as_str).collect();
    let more = ids.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} (+{more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Waits (up to `SETTLE_LIMIT`) until every command is final and no shell
/// of ours still runs; a failure to settle is noted, and the counts are
/// taken as they stand.
fn settle(sc: &Scenario, client: &Client, failures: &mut Vec<String>) {
    let marker = sc.dir.path().display().to_string();
    let accepted: HashSet<String> = sc.accepted_ids().into_iter().collect();
    let settled = wait_for("commands to settle", SETTLE_LIMIT, || {
        let listed = client.commands().ok()?;
        let all_final = listed
            .iter()
            .all(|c| c["status"].as_str().is_some_and(is_final));
        let ids: HashSet<&str> = listed.iter().filter_map(|c| c["id"].as_str()).collect();
        let all_listed = accepted.iter().all(|id| ids.contains(id.as_str()));
        (all_final && all_listed && processes_naming(&marker) == 0).then_some(())
    });
    if let Err(e) = settled {
        failures.push(format!("{e} (the counts below are as they stood then)"));
    }
}

/// Stops agent and gateway, reads what they left and judges it (`verdict`).
/// Returns the failures, one line each, after printing the scenario's
/// one-line summary.
fn check(
    sc: &Scenario,
    gw: &mut Gateway,
    agent: &mut Agent,
    mut failures: Vec<String>,
    extra: &str,
) -> Vec<String> {
    agent.stop();
    gw.stop();
    let db = match read_gateway_db(gw) {
        Ok(db) => db,
        Err(e) => {
            failures.push(format!("cannot read the gateway's database: {e:#}"));
            return failures;
        }
    };
    let subs = lock(&sc.subs).clone();
    let v = verdict(&Evidence {
        subs: &subs,
        db: &db,
        runs: &tokens(&sc.runs()),
        explained: sc.explained,
        refusals: sc.refusals,
    });
    println!("faults[{}]: {}; {extra}", sc.name, v.summary);
    failures.extend(v.failures);
    failures
}

/// Everything a scenario is judged on.
struct Evidence<'a> {
    subs: &'a [(String, Outcome)],
    db: &'a DbView,
    /// token → times appended
    runs: &'a HashMap<String, usize>,
    explained: &'a [&'a str],
    refusals: &'a [&'a str],
}

struct Verdict {
    failures: Vec<String>,
    summary: String,
}

/// The checks the module comment promises, over data only.
fn verdict(e: &Evidence) -> Verdict {
    let Evidence {
        subs,
        db,
        runs,
        explained,
        refusals,
    } = e;
    let mut failures = Vec::new();
    let accepted: HashSet<String> = subs
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Accepted { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();

    // Submissions: every refusal is one the scenario expects; no give-ups.
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut gave_up = Vec::new();
    let mut retried = 0;
    let mut refused_keys = HashSet::new();
    let mut unexpected: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (key, o) in subs.iter() {
        match o {
            Outcome::Accepted { attempts, .. } if *attempts > 1 => retried += 1,
            Outcome::Accepted { .. } => {}
            Outcome::Refused {
                status,
                code,
                detail,
            } => {
                let what = format!("{status} {code}");
                *refused.entry(what.clone()).or_default() += 1;
                refused_keys.insert(key.clone());
                // Expected refusals say "not now": 503 or 507.
                if !(refusals.contains(&code.as_str()) && matches!(status, 503 | 507)) {
                    let u = unexpected
                        .entry(what)
                        .or_insert_with(|| (detail.clone(), vec![]));
                    u.1.push(key.clone());
                }
            }
            Outcome::GaveUp {
                attempts,
                last_error,
            } => gave_up.push(format!("{key} ({attempts} attempts: {last_error})")),
        }
    }
    for (what, (detail, keys)) in &unexpected {
        failures.push(format!(
            "{} submission(s) refused with {what} ({detail:?}): {}",
            keys.len(),
            some(keys)
        ));
    }
    if !gave_up.is_empty() {
        failures.push(format!(
            "{} submission(s) failed at the transport level for {RETRY_LIMIT:?}: {}",
            gave_up.len(),
            some(&gave_up)
        ));
    }

    // Lost: accepted, but not final (or not stored at all).
    let by_id: HashMap<&str, &Stored> = db.commands.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut lost: Vec<String> = accepted
        .iter()
        .filter(|id| !by_id.get(id.as_str()).is_some_and(|c| is_final(&c.status)))
        .cloned()
        .collect();
    lost.sort();
    if !lost.is_empty() {
        failures.push(format!(
            "{} of {} accepted command(s) never reached a final status: {}",
            lost.len(),
            accepted.len(),
            some(&lost)
        ));
    }
    let mut pending: Vec<String> = db
        .commands
        .iter()
        .filter(|c| !accepted.contains(&c.id) && !is_final(&c.status))
        .map(|c| c.id.clone())
        .collect();
    pending.sort();
    if !pending.is_empty() {
        failures.push(format!(
            "{} stored command(s) the client never saw accepted are not final: {}",
            pending.len(),
            some(&pending)
        ));
    }

    // Final statuses: finished with 0, or an error the fault explains.
    let mut finished = 0;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexplained = Vec::new();
    for c in &db.commands {
        match c.status.as_str() {
            "finished" => {
                finished += 1;
                if c.exit_code != Some(0) {
                    unexplained.push(format!("{} finished with exit {:?}", c.id, c.exit_code));
                }
            }
            "error" => {
                let code = c.error_code.clone().unwrap_or_default();
                *errors.entry(code.clone()).or_default() += 1;
                if !explained.contains(&code.as_str()) {
                    unexplained.push(format!("{} error {code:?}", c.id));
                }
            }
            _ => {}
        }
    }
    if !unexplained.is_empty() {
        failures.push(format!(
            "{} command(s) ended in a way this fault does not explain: {}",
            unexplained.len(),
            some(&unexplained)
        ));
    }

    // One key, one command; refused keys, none.
    let mut per_key: HashMap<String, Vec<&Stored>> = HashMap::new();
    for c in &db.commands {
        per_key.entry(key_of(&c.line)).or_default().push(c);
    }
    let mut dup_keys: Vec<String> = per_key
        .iter()
        .filter(|(_, cs)| cs.len() > 1)
        .map(|(k, cs)| {
            let ids: Vec<&str> = cs.iter().map(|c| c.id.as_str()).collect();
            format!("{k} → {}", ids.join(" + "))
        })
        .collect();
    dup_keys.sort();
    if !dup_keys.is_empty() {
        failures.push(format!(
            "{} Idempotency-Key(s) made more than one command: {}",
            dup_keys.len(),
            some(&dup_keys)
        ));
    }
    let mut stored_refused: Vec<String> = refused_keys
        .iter()
        .filter(|k| per_key.contains_key(*k))
        .cloned()
        .collect();
    stored_refused.sort();
    if !stored_refused.is_empty() {
        failures.push(format!(
            "{} refused submission(s) were stored anyway: {}",
            stored_refused.len(),
            some(&stored_refused)
        ));
    }

    // Runs: no token twice; a command finished with 0 ran exactly once.
    let mut twice: Vec<String> = runs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| {
            let status: Vec<String> = per_key
                .get(k)
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            format!(
                                "{} {}{}",
                                c.id,
                                c.status,
                                c.error_code
                                    .as_deref()
                                    .map(|e| format!(" {e}"))
                                    .unwrap_or_default()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("{k} ran {n}× ({})", status.join("; "))
        })
        .collect();
    twice.sort();
    if !twice.is_empty() {
        failures.push(format!(
            "{} command(s) ran more than once: {}",
            twice.len(),
            some(&twice)
        ));
    }
    let mut never: Vec<String> = db
        .commands
        .iter()
        .filter(|c| c.status == "finished" && c.exit_code == Some(0))
        .filter(|c| !runs.contains_key(&key_of(&c.line)))
        .map(|c| c.id.clone())
        .collect();
    never.sort();
    if !never.is_empty() {
        failures.push(format!(
            "{} command(s) reported finished with 0 never ran: {}",
            never.len(),
            some(&never)
        ));
    }

    // Audit: one command.run and one command.finish per command.
    let mut no_run = Vec::new();
    let mut no_finish = Vec::new();
    let mut dup_audit = Vec::new();
    for c in &db.commands {
        let (run, finish) = db.audit.get(&c.id).copied().unwrap_or_default();
        if run == 0 {
            no_run.push(c.id.clone());
        }
        if finish == 0 && is_final(&c.status) {
            no_finish.push(c.id.clone());
        }
        if run > 1 || finish > 1 {
            dup_audit.push(format!("{} ({run} run, {finish} finish)", c.id));
        }
    }
    for (what, ids) in [
        ("without a command.run event", &no_run),
        ("final without a command.finish event", &no_finish),
        ("with duplicated audit events", &dup_audit),
    ] {
        if !ids.is_empty() {
            failures.push(format!("{} command(s) {what}: {}", ids.len(), some(ids)));
        }
    }

    if db.integrity != "ok" {
        failures.push(format!("PRAGMA integrity_check: {}", db.integrity));
    }

    let once = runs.values().filter(|n| **n == 1).count();
    let summary = format!(
        "{} submitted, {} accepted ({retried} after retries), refused {refused:?}, \
         {} gave up; {} stored: {finished} finished, errors {errors:?}, {} not final; \
         runs: {once} once, {} more than once, {} finished-but-never; audit: {} without \
         command.run, {} without command.finish, {} duplicated; integrity {}",
        subs.len(),
        accepted.len(),
        gave_up.len(),
        db.commands.len(),
        db.commands.iter().filter(|c| !is_final(&c.status)).count(),
        twice.len(),
        never.len(),
        no_run.len(),
        no_finish.len(),
        dup_audit.len(),
        db.integrity,
    );
    Verdict { failures, summary }
}

/// Fails the test with every failure, keeping the logs for diagnosis.
fn report(sc: &Scenario, gw: &Gateway, agent: &Agent, failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let gw_log = keep.join(format!("faults-{}-gateway.log", sc.name));
    let agent_log = keep.join(format!("faults-{}-agent.log", sc.name));
    let _ = std::fs::write(&gw_log, gw.log());
    let _ = std::fs::write(&agent_log, agent.log());
    panic!(
        "faults[{}]: {} failure(s):\n- {}\nlogs: {} {}",
        sc.name,
        failures.len(),
        failures.join("\n- "),
        gw_log.display(),
        agent_log.display()
    );
}

/// Submits `n` commands from a thread of their own, every `long_every`-th a
/// long one (`long_secs`), `pause` apart.
fn stream(
    sc: &Arc<Scenario>,
    client: &Client,
    n: usize,
    long_every: usize,
    long_secs: u32,
    pause: Duration,
) -> JoinHandle<()> {
    let sc = sc.clone();
    let client = client.clone();
    std::thread::spawn(move || {
        for i in 0..n {
            let long = (i % long_every == long_every - 1).then_some(long_secs);
            sc.submit(&client, i, long);
            std::thread::sleep(pause);
        }
    })
}

#[test]
fn gateway_sigkill_loses_nothing_and_runs_nothing_twice() {
    const COMMANDS: usize = 40;
    const KILLS: usize = 4;
    let sc = Scenario::new("gateway-kill", &[], &[]);
    let mut gw = Gateway::start().unwrap();
    let mut agent = agent_for(&mut gw, "gk", None);
    let client = Client::new(&mut gw, "gk");

    let producer = stream(&sc, &client, COMMANDS, 4, 1, Duration::from_millis(50));
    let mut failures = Vec::new();
    let mut kills = 0;
    for k in 1..=KILLS {
        // Kill after every COMMANDS/(KILLS+1) acceptances, mid-stream: the
        // client is sending its next command, the agent running others.
        let due = k * COMMANDS / (KILLS + 1);
        let reached = wait_for("acceptances", RETRY_LIMIT * 2, || {
            (sc.accepted() >= due || producer.is_finished()).then_some(())
        });
        if reached.is_err() || producer.is_finished() {
            break;
        }
        sigkill(gw.pid());
        if let Err(e) = gw.restart() {
            failures.push(format!("the gateway did not come back: {e:#}"));
            break;
        }
        kills += 1;
    }
    producer.join().expect("the client thread");
    if kills < KILLS {
        failures.push(format!(
            "only {kills} of {KILLS} kills happened during the stream"
        ));
    }
    settle(&sc, &client, &mut failures);
    let failures = check(
        &sc,
        &mut gw,
        &mut agent,
        failures,
        &format!("{kills} gateway SIGKILLs"),
    );
    report(&sc, &gw, &agent, &failures);
}

#[test]
fn agent_sigkill_loses_nothing_and_runs_nothing_twice() {
    const ROUNDS: usize = 3;
    const LONG: usize = 4;
    let sc = Scenario::new("agent-kill", &["agent_restarted"], &[]);
    let mut gw = Gateway::start().unwrap();
    let mut agent = agent_for(&mut gw, "ak", None);
    let client = Client::new(&mut gw, "ak");

    let mut failures = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    for round in 0..ROUNDS {
        // Long commands in flight (started, sleeping) and short ones around
        // them, then the agent dies under them.
        let mut long_keys = Vec::new();
        for _ in 0..LONG {
            let (key, _) = sc.submit(&client, next(), Some(3));
            long_keys.push(key);
            sc.submit(&client, next(), None);
        }
        let started = wait_for("long commands to start", SETTLE_LIMIT, || {
            let s = tokens(&sc.starts());
            long_keys.iter().all(|k| s.contains_key(k)).then_some(())
        });
        if let Err(e) = started {
            failures.push(format!("round {round}: {e}"));
            break;
        }
        sigkill(agent.pid());
        agent.stop();
        // Queued while the agent is away.
        for _ in 0..3 {
            sc.submit(&client, next(), None);
        }
        agent.start().unwrap();
    }
    for _ in 0..4 {
        sc.submit(&client, next(), None);
    }
    settle(&sc, &client, &mut failures);
    let failures = check(
        &sc,
        &mut gw,
        &mut agent,
        failures,
        &format!("{ROUNDS} agent SIGKILLs with {LONG} long commands in flight each"),
    );
    report(&sc, &gw, &agent, &failures);
}

#[test]
fn link_cuts_lose_nothing_and_run_nothing_twice() {
    const COMMANDS: usize = 48;
    const MIN_CUTS: usize = 12;
    let sc = Scenario::new("link-cut", &[], &[]);
    let mut gw = Gateway::start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relay = rt
        .block_on(CutRelay::start(
            format!("127.0.0.1:{}", gw.port).parse().unwrap(),
        ))
        .unwrap();
    let via = format!("https://127.0.0.1:{}", relay.port);
    let mut agent = agent_for(&mut gw, "lc", Some(via));
    let client = Client::new(&mut gw, "lc");

    let producer = stream(&sc, &client, COMMANDS, 4, 1, Duration::from_millis(100));
    let mut failures = Vec::new();
    let (mut cuts, mut live_cut) = (0, 0);
    let mut seen = 0;
    while cuts < MIN_CUTS || !producer.is_finished() {
        // Cut each link once it is up, at staggered moments after.
        let up = wait_for("the link to come back", SETTLE_LIMIT, || {
            let n = links_up(&agent);
            (n > seen).then_some(n)
        });
        match up {
            Ok(n) => seen = n,
            Err(e) => {
                failures.push(format!("after {cuts} cuts: {e}"));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(150 * (cuts % 4) as u64));
        live_cut += relay.cut();
        cuts += 1;
        if cuts >= 4 * MIN_CUTS {
            break;
        }
    }
    producer.join().expect("the client thread");
    settle(&sc, &client, &mut failures);
    let failures = check(
        &sc,
        &mut gw,
        &mut agent,
        failures,
        &format!("{cuts} cuts ({live_cut} live connections aborted)"),
    );
    drop(relay);
    report(&sc, &gw, &agent, &failures);
}

/// Fills the file system under `p`: writes until it is out of space.
fn fill(p: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(p).expect("create the filler");
    let mut written = 0;
    for size in [1 << 20, 4096, 512] {
        let block = vec![0xa5u8; size];
        while f.write_all(&block).is_ok() {
            written += size as u64;
        }
    }
    let _ = f.sync_all();
    written
}

#[test]
fn disk_full_refuses_clearly_and_recovers_without_reconnecting() {
    const BEFORE: usize = 8;
    const LONG: usize = 4;
    const AFTER: usize = 4;
    let sc = Scenario::new("disk-full", &[], &["storage_full"]);
    let mut gw = Gateway::start_opts(GatewayOpts {
        data_tmpfs_mib: Some(48),
        ..GatewayOpts::default()
    })
    .unwrap();
    let mut agent = agent_for(&mut gw, "df", None);
    let client = Client::new(&mut gw, "df");
    let mut failures = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };

    // Committed before the disk fills: must all survive.
    let mut early = Vec::new();
    for _ in 0..BEFORE {
        if let (_, Outcome::Accepted { id, .. }) = sc.submit(&client, next(), None) {
            early.push(id);
        }
    }
    for id in &early {
        if let Err(e) = gw.wait_command(id, SETTLE_LIMIT) {
            failures.push(format!("before the disk filled: {e:#}"));
        }
    }
    // Running while the disk fills: their results arrive on a full disk.
    let mut long = Vec::new();
    for _ in 0..LONG {
        if let (key, Outcome::Accepted { id, .. }) = sc.submit(&client, next(), Some(2)) {
            long.push((key, id));
        }
    }
    let started = wait_for("long commands to start", SETTLE_LIMIT, || {
        let s = tokens(&sc.starts());
        long.iter().all(|(k, _)| s.contains_key(k)).then_some(())
    });
    if let Err(e) = started {
        failures.push(e.to_string());
    }
    let links_before = links_up(&agent);
    let agent_pid = agent.pid();
    let filler = gw.data().join("filler");
    let filled = fill(&filler);

    // The long commands finish and the agent sends their results.
    let sent = wait_for("results sent on a full disk", SETTLE_LIMIT, || {
        long.iter()
            .all(|(_, id)| agent_finished(&agent, id))
            .then_some(())
    });
    if let Err(e) = sent {
        failures.push(e.to_string());
    }
    // New submissions are refused with storage_full (the first few may
    // still fit in space the database already holds).
    let (mut full_accepted, mut full_refused) = (0, 0);
    for _ in 0..60 {
        match sc.submit(&client, next(), None).1 {
            Outcome::Accepted { .. } => full_accepted += 1,
            Outcome::Refused { code, .. } if code == "storage_full" => full_refused += 1,
            _ => {}
        }
        if full_refused >= 5 {
            break;
        }
    }
    if full_refused == 0 {
        failures.push(format!(
            "no submission on the full disk was refused with storage_full \
             ({full_accepted} accepted)"
        ));
    }

    // Space comes back: everything accepted finishes, on the same link.
    std::fs::remove_file(&filler).expect("remove the filler");
    for _ in 0..AFTER {
        sc.submit(&client, next(), None);
    }
    settle(&sc, &client, &mut failures);
    // Same agent process, same link: no reconnection delivered the results.
    let links_after = links_up(&agent);
    if links_after != links_before {
        failures.push(format!(
            "the agent's link came up {} more time(s) after the disk filled",
            links_after.saturating_sub(links_before)
        ));
    }
    if !agent_pid.is_some_and(alive) {
        failures.push("the agent process died".into());
    }
    let failures = check(
        &sc,
        &mut gw,
        &mut agent,
        failures,
        &format!(
            "filled {} MiB; on the full disk {full_accepted} accepted, {full_refused} refused",
            filled >> 20
        ),
    );
    report(&sc, &gw, &agent, &failures);
}

/// A terminal whose output the gateway can no longer record (its disk is
/// full) is hung up on the server as well: its shell does not live on
/// unrecorded, and it does not come back after a gateway restart, though its
/// user was told it ended.
#[test]
fn a_terminal_that_cannot_be_recorded_is_hung_up_and_stays_ended() {
    let mut gw = Gateway::start_opts(GatewayOpts {
        data_tmpfs_mib: Some(32),
        ..GatewayOpts::default()
    })
    .unwrap();
    let mut agent = agent_for(&mut gw, "tf", None);
    let cli = login(&gw, "admin", &gw.admin_password.clone());
    let work = tempfile::tempdir().unwrap();
    let pid_file = work.path().join("shell.pid");
    let mut term = {
        let mut c = cli.command();
        c.args(["websh", "-u", "root", "tf"]);
        Interactive::spawn(c).unwrap()
    };
    term.write(format!("echo $$ > {}; echo READY-$((1+1))\n", pid_file.display()).as_bytes())
        .unwrap();
    term.wait_for("READY-2", Duration::from_secs(30)).unwrap();
    let shell: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(shell));
    let (_, v) = gw.call("GET", "/api/websh/sessions/", None).unwrap();
    let id = v["results"][0]["id"].as_str().unwrap().to_string();

    let filler = gw.data().join("filler");
    fill(&filler);
    // More output than the little space left can take.
    term.write(b"head -c 4000000 /dev/zero | tr '\\0' x; echo\n")
        .unwrap();
    let status = term.wait(Duration::from_secs(60)).unwrap_or_else(|e| {
        let log = gw.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{e}\n--- gateway log (newest first) ---\n{}",
            tail.join("\n")
        )
    });
    assert!(!status.success());
    assert!(term.stderr().contains("disk is full"), "{}", term.stderr());
    wait_for("the shell to be hung up", Duration::from_secs(30), || {
        (!alive(shell)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));

    // Space comes back and the gateway restarts: the session stays ended.
    std::fs::remove_file(&filler).unwrap();
    gw.restart().unwrap();
    gw.wait_connected("tf", true).unwrap();
    let closed = wait_for(
        "the session to be recorded as closed",
        Duration::from_secs(60),
        || {
            let (_, v) = gw
                .call("GET", &format!("/api/websh/sessions/{id}/"), None)
                .ok()?;
            (v["status"] == "closed").then_some(v)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    assert!(
        closed["close_reason"]
            .as_str()
            .is_some_and(|r| r.contains("disk is full") || r.contains("gone")),
        "{closed}"
    );
    assert!(!alive(shell));
    agent.stop();
}

/// The verdict catches each fault it exists for (no sockets: data only).
#[test]
fn verdict_catches_each_kind_of_failure() {
    fn stored(id: &str, status: &str, error: Option<&str>, exit: Option<i64>) -> Stored {
        Stored {
            id: id.into(),
            line: format!("echo k-{id} >> /tmp/runs"),
            status: status.into(),
            error_code: error.map(str::to_string),
            exit_code: exit,
        }
    }
    let accepted = |id: &str| {
        (
            format!("k-{id}"),
            Outcome::Accepted {
                id: id.into(),
                attempts: 1,
            },
        )
    };
    let clean = || {
        let subs = vec![accepted("a"), accepted("b")];
        let db = DbView {
            commands: vec![
                stored("a", "finished", None, Some(0)),
                stored("b", "error", Some("agent_restarted"), Some(-1)),
            ],
            audit: [("a".to_string(), (1, 1)), ("b".to_string(), (1, 1))].into(),
            integrity: "ok".into(),
        };
        let runs: HashMap<String, usize> = [("k-a".to_string(), 1)].into();
        (subs, db, runs)
    };
    type Case = (
        &'static str,
        fn(&mut Vec<(String, Outcome)>, &mut DbView, &mut HashMap<String, usize>),
    );
    let cases: &[Case] = &[
        ("", |_, _, _| {}),
        ("ran more than once", |_, _, r| {
            r.insert("k-a".into(), 2);
        }),
        ("ran more than once", |_, _, r| {
            r.insert("k-b".into(), 2);
        }),
        ("never ran", |_, _, r| {
            r.clear();
        }),
        ("never reached a final status", |_, db, _| {
            db.commands[0].status = "sent".into();
        }),
        ("never reached a final status", |_, db, _| {
            db.commands.remove(0);
        }),
        ("does not explain", |_, db, _| {
            db.commands[1].error_code = Some("io".into());
        }),
        ("does not explain", |_, db, _| {
            db.commands[0].exit_code = Some(137);
        }),
        ("more than one command", |_, db, _| {
            db.commands.push(stored("a2", "finished", None, Some(0)));
            db.commands[2].line = db.commands[0].line.clone();
            db.audit.insert("a2".into(), (1, 1));
        }),
        ("without a command.run", |_, db, _| {
            db.audit.insert("a".into(), (0, 1));
        }),
        ("without a command.finish", |_, db, _| {
            db.audit.insert("b".into(), (1, 0));
        }),
        ("duplicated audit", |_, db, _| {
            db.audit.insert("b".into(), (2, 1));
        }),
        ("integrity_check", |_, db, _| {
            db.integrity = "row 3 missing from index".into();
        }),
        ("refused with 500 internal", |s, _, _| {
            s.push((
                "k-c".into(),
                Outcome::Refused {
                    status: 500,
                    code: "internal".into(),
                    detail: String::new(),
                },
            ));
        }),
        ("stored anyway", |s, db, r| {
            r.insert("k-c".into(), 1);
            s.push((
                "k-c".into(),
                Outcome::Refused {
                    status: 507,
                    code: "storage_full".into(),
                    detail: String::new(),
                },
            ));
            db.commands.push(stored("c", "finished", None, Some(0)));
            db.audit.insert("c".into(), (1, 1));
        }),
        ("transport level", |s, _, _| {
            s.push((
                "k-c".into(),
                Outcome::GaveUp {
                    attempts: 9,
                    last_error: "refused".into(),
                },
            ));
        }),
    ];
    for (want, spoil) in cases {
        let (mut subs, mut db, mut runs) = clean();
        spoil(&mut subs, &mut db, &mut runs);
        let v = verdict(&Evidence {
            subs: &subs,
            db: &db,
            runs: &runs,
            explained: &["agent_restarted"],
            refusals: &["storage_full"],
        });
        if want.is_empty() {
            assert!(v.failures.is_empty(), "{:?}", v.failures);
        } else {
            assert!(
                v.failures.len() == 1 && v.failures[0].contains(want),
                "want one failure with {want:?}, got {:?}",
                v.failures
            );
        }
    }
}
