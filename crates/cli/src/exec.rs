//! `websh SERVER COMMAND...` and `exec SERVER -- COMMAND...`: run a command
//! through the gateway and stream its output.
//!
//! Commands live on the gateway, not on our connection: if the output stream
//! breaks (gateway restart, network trouble) we reconnect and resume at the
//! byte offset we have printed, so nothing is lost or printed twice.

use std::time::{Duration, Instant};

use alpacon_api::commands::{Command, CommandStreamLine, CreateCommand};
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Args;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client::{append_query, check_status, Client};
use crate::Ctx;

const COMMANDS: &[&str] = &["api", "events", "commands"];

/// Give up when the gateway has been unreachable this long.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10 * 60);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A line is one base64 chunk or the result; anything bigger is a fault.
const MAX_LINE: usize = 64 << 20;

#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// Run as this account (default: your own).
    #[arg(short = 'u', long = "username", value_name = "USER")]
    pub username: Option<String>,
    /// Run with this group.
    #[arg(short = 'g', long = "groupname", value_name = "GROUP")]
    pub groupname: Option<String>,
    /// Set an environment variable (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub opts: RunOptions,
    /// Server name or ID.
    pub server: String,
    /// The command to run (after `--`), word for word: each word reaches the
    /// server as one argument, quoted for the remote shell.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

/// `websh SERVER COMMAND...`: run one command. As ssh does, the words form
/// one shell line, so `websh host 'a | b'` and `websh host a '|' b` both
/// pipe on the server.
pub async fn websh_command(
    ctx: &Ctx,
    opts: &RunOptions,
    server: &str,
    words: &[String],
) -> Result<u8> {
    run_command(ctx, opts, server, &words.join(" ")).await
}

pub async fn exec(ctx: &Ctx, args: ExecArgs) -> Result<u8> {
    run_command(ctx, &args.opts, &args.server, &shell_line(&args.command)).await
}

/// Quotes each word for `/bin/sh` so the server runs exactly this argv.
pub fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The request body of `POST /api/events/commands/`.
pub fn command_body(opts: &RunOptions, server: &str, line: &str) -> CreateCommand {
    CreateCommand {
        server: server.to_string(),
        line: line.to_string(),
        username: opts.username.clone(),
        groupname: opts.groupname.clone(),
        env: opts.env.iter().cloned().collect(),
    }
}

async fn run_command(ctx: &Ctx, opts: &RunOptions, server: &str, line: &str) -> Result<u8> {
    let client = ctx.client()?;
    // Retried under one Idempotency-Key: a lost answer may mean the command
    // was created, and the gateway answers a retry with that same command.
    let created: Command = client
        .post_idempotent(COMMANDS, &command_body(opts, server, line))
        .await?;
    let id = created.id;
    let mut stdout = tokio::io::stdout();
    match follow(&client, &id, &mut stdout).await {
        Ok(command) => outcome(&command),
        // The reader went away (`| head`): end quietly, as a shell
        // pipeline's writer killed by SIGPIPE would.
        Err(e) if is_broken_pipe(&e) => Ok(EXIT_BROKEN_PIPE),
        Err(e) => Err(e),
    }
}

/// 128 + SIGPIPE, what shells report for a writer killed by a closed pipe.
const EXIT_BROKEN_PIPE: u8 = 141;

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The process exit code for a finished command.
pub fn outcome(command: &Command) -> Result<u8> {
    if let Some(e) = &command.error {
        bail!("{}", e.detail.as_deref().unwrap_or(&e.code));
    }
    match command.exit_code {
        Some(code) => Ok(u8::try_from(code).unwrap_or(1)),
        None => bail!("the command ended without an exit code"),
    }
}

/// Where we are in the command's output: bytes below `offset` are printed.
#[derive(Debug, Default)]
pub struct OutputTracker {
    offset: u64,
}

impl OutputTracker {
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The part of a chunk not printed yet. After a reconnection the gateway
    /// may resend bytes we have; a gap (bytes it no longer has) is skipped.
    pub fn accept<'a>(&mut self, offset: u64, data: &'a [u8]) -> &'a [u8] {
        let end = offset.saturating_add(data.len() as u64);
        if end <= self.offset {
            return &[];
        }
        // end > self.offset, so the skip is shorter than the chunk.
        let skip = usize::try_from(self.offset.saturating_sub(offset)).unwrap_or(data.len());
        self.offset = end;
        &data[skip.min(data.len())..]
    }
}

/// Splits NDJSON bytes into lines across chunk boundaries.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// `buf[..scanned]` has no newline: a long line (the result carries the
    /// whole output) arriving in small pieces is scanned once, not per piece.
    scanned: usize,
}

impl LineSplitter {
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.buf.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(pos) = self.buf[from..].iter().position(|&b| b == b'\n') {
            let end = from + pos;
            lines.push(self.buf[start..end].to_vec());
            start = end + 1;
            from = start;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_LINE {
            bail!("the gateway sent a line longer than {MAX_LINE} bytes");
        }
        Ok(lines)
    }

    /// What is left after the stream ended: a last line without `\n`, or a
    /// line cut by a broken connection.
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }
}

/// Handle one NDJSON line: print new output, or return the final command.
async fn handle_line<W: AsyncWrite + Unpin>(
    line: &[u8],
    tracker: &mut OutputTracker,
    out: &mut W,
) -> Result<Option<Box<Command>>> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let parsed: CommandStreamLine = serde_json::from_slice(line).with_context(|| {
        format!(
            "unexpected line in the command stream: {}",
            String::from_utf8_lossy(&line[..line.len().min(200)])
        )
    })?;
    match parsed {
        CommandStreamLine::Output { offset, data } => {
            let bytes = B64
                .decode(data.as_bytes())
                .context("invalid base64 in the command stream")?;
            let new = tracker.accept(offset, &bytes);
            if !new.is_empty() {
                out.write_all(new).await.context("writing the output")?;
                out.flush().await.context("writing the output")?;
            }
            Ok(None)
        }
        CommandStreamLine::Result { command } => Ok(Some(command)),
        // A kind of line a newer gateway added (heartbeats, …).
        CommandStreamLine::Unknown => Ok(None),
    }
}

enum Attempt {
    Finished(Box<Command>),
    /// The stream broke; worth reconnecting. The text says why.
    Broken(String),
}

/// One connection to the output stream. `Err` is fatal (e.g. the command
/// does not exist); `Broken` means try again.
async fn attempt<W: AsyncWrite + Unpin>(
    client: &Client,
    id: &str,
    tracker: &mut OutputTracker,
    out: &mut W,
    progressed: &mut bool,
) -> Result<Attempt> {
    let mut url = client.endpoint(&[COMMANDS, &[id, "stream"]].concat());
    append_query(&mut url, &[("offset", &tracker.offset().to_string())]);
    let resp = match client.request(Method::GET, url).send().await {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Broken(format!("{:#}", client.transport_error(e)))),
    };
    let status = resp.status();
    // 5xx is what a proxy in front of a restarting gateway answers.
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        return Ok(Attempt::Broken(format!("the gateway answered {status}")));
    }
    let resp = check_status(resp).await?;
    let mut lines = LineSplitter::default();
    let mut body = resp.bytes_stream();
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                for line in lines.push(&chunk)? {
                    *progressed = true;
                    if let Some(command) = handle_line(&line, tracker, out).await? {
                        return Ok(Attempt::Finished(command));
                    }
                }
            }
            Some(Err(e)) => {
                return Ok(Attempt::Broken(format!("{:#}", client.transport_error(e))));
            }
            None => {
                // A final line may lack its newline; a cut one will not
                // parse and is read again after reconnecting.
                let rest = lines.take_rest();
                if let Ok(Some(command)) = handle_line(&rest, tracker, out).await {
                    return Ok(Attempt::Finished(command));
                }
                return Ok(Attempt::Broken(
                    "the stream ended before the command's result".into(),
                ));
            }
        }
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

/// Stream the command's output to `out` until its result arrives,
/// reconnecting as long as the gateway comes back within [`GIVE_UP_AFTER`].
pub async fn follow<W: AsyncWrite + Unpin>(
    client: &Client,
    id: &str,
    out: &mut W,
) -> Result<Command> {
    let mut tracker = OutputTracker::default();
    let mut backoff = Backoff::default();
    let mut outage_since: Option<Instant> = None;
    loop {
        let mut progressed = false;
        let reason = match attempt(client, id, &mut tracker, out, &mut progressed).await? {
            Attempt::Finished(command) => return Ok(*command),
            Attempt::Broken(reason) => reason,
        };
        if progressed {
            outage_since = None;
            backoff = Backoff::default();
        }
        let since = *outage_since.get_or_insert_with(|| {
            eprintln!(
                "alpacon: output stream interrupted ({reason}); reconnecting at byte {}",
                tracker.offset()
            );
            Instant::now()
        });
        if since.elapsed() >= GIVE_UP_AFTER {
            return Err(anyhow!(
                "gave up reconnecting to the gateway after {} minutes ({reason}); \
                 command {id} may still be running",
                GIVE_UP_AFTER.as_secs() / 60
            ));
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alpacon_api::commands::{CommandError, CommandStatus};
    use clap::Parser;
    use serde_json::json;

    /// A finished command as the gateway sends it.
    fn finished(exit_code: Option<i64>, error: Option<CommandError>) -> Command {
        Command {
            id: "c".into(),
            server: "0b7c".into(),
            server_name: Some("web".into()),
            line: "true".into(),
            username: "root".into(),
            groupname: None,
            env: Default::default(),
            status: if error.is_some() {
                CommandStatus::Error
            } else {
                CommandStatus::Finished
            },
            requested_by: Some("alice".into()),
            added_at: "2024-05-01T12:00:00Z".into(),
            delivered_at: Some("2024-05-01T12:00:00Z".into()),
            finished_at: Some("2024-05-01T12:00:01Z".into()),
            exit_code,
            elapsed_ms: Some(5),
            output: Some(String::new()),
            output_truncated: false,
            error,
        }
    }

    #[test]
    fn tracker_skips_what_was_printed() {
        let mut t = OutputTracker::default();
        assert_eq!(t.accept(0, b"hello "), b"hello ");
        assert_eq!(t.offset(), 6);
        // Fully resent chunk: nothing new.
        assert_eq!(t.accept(0, b"hello "), b"");
        // Overlapping chunk: only the new tail.
        assert_eq!(t.accept(3, b"lo world"), b"world");
        assert_eq!(t.offset(), 11);
        // Empty data changes nothing.
        assert_eq!(t.accept(11, b""), b"");
        assert_eq!(t.offset(), 11);
        // Gap: print what we get and move on.
        assert_eq!(t.accept(20, b"!"), b"!");
        assert_eq!(t.offset(), 21);
    }

    #[test]
    fn splitter_joins_chunks_and_keeps_partial_lines() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"{\"a\":").unwrap().is_empty());
        assert_eq!(s.push(b"1}\n{\"b\"").unwrap(), vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(
            s.push(b":2}\n\n{\"c\":3}\n").unwrap(),
            vec![b"{\"b\":2}".to_vec(), Vec::new(), b"{\"c\":3}".to_vec()]
        );
        assert!(s.take_rest().is_empty());
        s.push(b"tail").unwrap();
        assert_eq!(s.take_rest(), b"tail");
        // Byte by byte, the scan resumes where it stopped.
        let mut got = Vec::new();
        for b in b"abc\nde\n\nf" {
            got.extend(s.push(&[*b]).unwrap());
        }
        assert_eq!(got, vec![b"abc".to_vec(), b"de".to_vec(), Vec::new()]);
        assert_eq!(s.take_rest(), b"f");
    }

    fn output_line(offset: u64, data: &[u8]) -> Vec<u8> {
        format!(
            r#"{{"type":"output","offset":{offset},"data":"{}"}}"#,
            B64.encode(data)
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn lines_print_output_and_end_with_result() {
        let mut t = OutputTracker::default();
        let mut out = Vec::new();
        for (o, d) in [(0, &b"abc"[..]), (1, b"bcdef"), (0, b"ab")] {
            let r = handle_line(&output_line(o, d), &mut t, &mut out)
                .await
                .unwrap();
            assert!(r.is_none());
        }
        assert_eq!(out, b"abcdef");
        assert!(handle_line(b"  \r", &mut t, &mut out)
            .await
            .unwrap()
            .is_none());
        assert!(handle_line(br#"{"type":"heartbeat"}"#, &mut t, &mut out)
            .await
            .unwrap()
            .is_none());
        let result = serde_json::to_vec(&CommandStreamLine::Result {
            command: Box::new(finished(Some(3), None)),
        })
        .unwrap();
        let r = handle_line(&result, &mut t, &mut out)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*r, finished(Some(3), None));
        assert_eq!(outcome(&r).unwrap(), 3);
        assert!(handle_line(b"{not json", &mut t, &mut out).await.is_err());
        assert!(handle_line(
            br#"{"type":"output","offset":0,"data":"!!"}"#,
            &mut t,
            &mut out
        )
        .await
        .is_err());
    }

    #[test]
    fn outcome_maps_exit_codes_and_errors() {
        assert_eq!(outcome(&finished(Some(0), None)).unwrap(), 0);
        assert_eq!(outcome(&finished(Some(255), None)).unwrap(), 255);
        assert_eq!(outcome(&finished(Some(-1), None)).unwrap(), 1);
        assert_eq!(outcome(&finished(Some(300), None)).unwrap(), 1);
        let error = |detail: Option<&str>| CommandError {
            code: "no_such_user".into(),
            detail: detail.map(str::to_string),
        };
        let e = outcome(&finished(Some(-1), Some(error(Some("no user bob"))))).unwrap_err();
        assert_eq!(e.to_string(), "no user bob");
        let e = outcome(&finished(Some(-1), Some(error(None)))).unwrap_err();
        assert_eq!(e.to_string(), "no_such_user");
        assert!(outcome(&finished(None, None)).is_err());
    }

    #[test]
    fn broken_pipe_is_recognised_under_context() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing the output");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow!("other")));
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: crate::Command,
    }

    fn parse(args: &[&str]) -> crate::Command {
        T::try_parse_from(std::iter::once("alpacon").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    #[test]
    fn exec_takes_the_command_after_dashes() {
        let crate::Command::Exec(a) = parse(&[
            "exec", "-u", "root", "--env", "A=1=2", "web", "--", "ls", "-la", "/tmp",
        ]) else {
            panic!()
        };
        assert_eq!(a.server, "web");
        assert_eq!(a.command, ["ls", "-la", "/tmp"]);
        let body = command_body(&a.opts, &a.server, &shell_line(&a.command));
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!({"server": "web", "line": "ls -la /tmp", "username": "root",
                   "env": {"A": "1=2"}})
        );
    }

    #[test]
    fn exec_quotes_words_for_the_remote_shell() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shell_line(&w(&["sh", "-c", "echo out; exit 42"])),
            "sh -c 'echo out; exit 42'"
        );
        assert_eq!(shell_line(&w(&["echo", "it's", ""])), "echo 'it'\\''s' ''");
        assert_eq!(shell_line(&w(&["a$(id)", "b`x`"])), "'a$(id)' 'b`x`'");
    }

    #[test]
    fn websh_command_body() {
        let crate::Command::Websh(a) =
            parse(&["websh", "-g", "adm", "web", "echo", "-n", "hi there"])
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(command_body(&a.opts, "web", &a.command.join(" "))).unwrap(),
            json!({"server": "web", "line": "echo -n hi there", "groupname": "adm"})
        );
    }

    #[test]
    fn env_needs_a_key() {
        assert!(parse_env("=x").is_err());
        assert!(parse_env("X").is_err());
        assert_eq!(parse_env("X=").unwrap(), ("X".into(), String::new()));
    }
}
