//! Command API (issue item 2): `POST /api/events/commands/` (`true`) to its result, read
//! from the command's NDJSON stream, at 1 and 100 concurrent clients.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::report::{Report, Row};
use crate::setup::{Env, SERVER};
use crate::stats::{ms, Summary};

/// One command's timings.
#[derive(Debug, Clone, Copy)]
pub struct Trip {
    /// POST sent → result line read.
    pub total: Duration,
    /// POST sent → 201 read.
    pub post: Duration,
    /// The agent's own `elapsed_ms` for running the command.
    pub agent: Duration,
}

#[derive(Clone)]
pub struct ApiClient {
    pub http: reqwest::Client,
    pub base: String,
    pub auth: String,
}

impl ApiClient {
    pub fn new(env: &Env) -> Result<ApiClient> {
        Ok(ApiClient {
            http: env.http()?,
            base: env.gw.url.clone(),
            auth: format!("Token {}", env.token),
        })
    }

    /// Creates a command; returns its id.
    pub async fn create(&self, server: &str, line: &str) -> Result<String> {
        let r = self
            .http
            .post(format!("{}/api/events/commands/", self.base))
            .header("Authorization", &self.auth)
            .json(&json!({"server": server, "line": line, "username": "root"}))
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        if status.as_u16() != 201 {
            bail!("POST /api/events/commands/: {status} {v}");
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no id in {v}"))
    }

    /// Follows the command's stream until its result line; returns the
    /// command object.
    pub async fn result(&self, id: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}/api/events/commands/{id}/stream/", self.base))
            .header("Authorization", &self.auth)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET …/stream/: {}", r.status());
        }
        let mut body = r.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let v: Value = serde_json::from_slice(&line).context("NDJSON line")?;
                if v["type"] == "result" {
                    return Ok(v["command"].clone());
                }
            }
        }
        bail!("the stream ended without a result")
    }

    /// One round trip: create `true`, wait for its result.
    pub async fn round_trip(&self, server: &str) -> Result<Trip> {
        let t = Instant::now();
        let id = self.create(server, "true").await?;
        let post = t.elapsed();
        let c = self.result(&id).await?;
        let total = t.elapsed();
        if c["status"] != "finished" || c["exit_code"] != 0 {
            bail!("command did not succeed: {c}");
        }
        let agent = Duration::from_millis(c["elapsed_ms"].as_u64().unwrap_or(0));
        Ok(Trip { total, post, agent })
    }
}

/// `clients` concurrent clients (each its own connection) doing `each`
/// round trips; returns all latencies and the wall time.
pub async fn load(env: &Env, clients: usize, each: usize) -> Result<(Vec<Trip>, Duration)> {
    let mut cs = Vec::new();
    for _ in 0..clients {
        let c = ApiClient::new(env)?;
        // Connect (TLS) before the clock starts, as a long-lived client would.
        c.http.get(format!("{}/api/status/", c.base)).send().await?;
        cs.push(c);
    }
    let t = Instant::now();
    let tasks: Vec<_> = cs
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let mut v = Vec::with_capacity(each);
                for _ in 0..each {
                    v.push(c.round_trip(SERVER).await?);
                }
                Ok::<_, anyhow::Error>(v)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, t.elapsed()))
}

pub fn run(env: &Env, quick: bool, rep: &mut Report) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (n1, clients, each) = if quick { (10, 10, 2) } else { (300, 100, 10) };
    rt.block_on(async {
        // Warm-up (connections, SQLite pages, the agent's first spawns).
        load(env, 1, 10).await?;
        let (trips1, _) = load(env, 1, n1).await?;
        let total = |v: &[Trip]| v.iter().map(|t| t.total).collect::<Vec<_>>();
        let s1 = Summary::of(&total(&trips1));
        let post1 = Summary::of(&trips1.iter().map(|t| t.post).collect::<Vec<_>>());
        let agent1 = Summary::of(&trips1.iter().map(|t| t.agent).collect::<Vec<_>>());
        let gw_pid = env.gw.pid().unwrap_or(0);
        let agent_pid = env.agent.pid().unwrap_or(0);
        let cpu = |pid| crate::scale::cpu_ticks_with_children(pid).unwrap_or(0);
        let (g0, a0) = (cpu(gw_pid), cpu(agent_pid));
        let (latn, wall) = load(env, clients, each).await?;
        let (g1, a1) = (cpu(gw_pid), cpu(agent_pid));
        let per_cmd = |t0: u64, t1: u64| {
            Duration::from_secs_f64(
                (t1 - t0) as f64 / crate::scale::ticks_per_sec() / latn.len().max(1) as f64,
            )
        };
        let sn = Summary::of(&total(&latn));
        let rate = latn.len() as f64 / wall.as_secs_f64();
        rep.push(
            Row::new("api", "API `true` POST → result, 1 client, p50", ms(s1.p50))
                .goal("≤ 5 ms", s1.p50 <= Duration::from_millis(5)),
        );
        rep.push(
            Row::new("api", "API `true` POST → result, 1 client, p99", ms(s1.p99))
                .goal("≤ 20 ms", s1.p99 <= Duration::from_millis(20)),
        );
        rep.push(Row::new(
            "api",
            format!(
                "… of which POST → 201 (stored, audited, sent to the agent), 1 client, p50 \
                 (agent's own run time of `true`: p50 {})",
                ms(agent1.p50)
            ),
            ms(post1.p50),
        ));
        rep.push(Row::new(
            "api",
            format!("API `true` POST → result, {clients} concurrent clients, p50"),
            ms(sn.p50),
        ));
        rep.push(Row::new(
            "api",
            format!("API `true` POST → result, {clients} concurrent clients, p99"),
            ms(sn.p99),
        ));
        rep.push(Row::new(
            "api",
            format!("API commands/s, {clients} concurrent clients"),
            format!("{rate:.0}/s"),
        ));
        rep.push(Row::new(
            "api",
            format!(
                "… CPU per command at {clients} clients: gateway (agent incl. its `sh`: {})",
                ms(per_cmd(a0, a1))
            ),
            ms(per_cmd(g0, g1)),
        ));
        rep.note(format!(
            "api: each round trip is `POST /api/events/commands/` {{line: true, username: root}} \
             then `GET …/{{id}}/stream/` until the `result` line (status finished, exit 0), on \
             kept-alive connections (HTTP/2 over TLS, one client per connection); {n1} sequential \
             round trips after 10 warm-ups, then {clients} clients × {each}; SQLite database, real \
             agent running `/bin/sh -c true`"
        ));
        Ok(())
    })
}
