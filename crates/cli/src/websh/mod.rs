//! `alpacon websh`: interactive terminals that survive network loss, and
//! the session commands (`ls`, `describe`, `close`, `records`, `share`,
//! `join`, `attach`). `websh SERVER COMMAND...` still runs one command
//! (see `exec`).
//!
//! A terminal is a session on the gateway that outlives our connection
//! (ARCHITECTURE.md, "Terminals"). This module creates or finds the
//! session, sets up the local terminal and hands over to [`driver`], which
//! keeps a WebSocket attached, reconnecting as needed; [`state`] holds the
//! offsets that make every output byte appear exactly once.

pub mod driver;
pub mod duration;
pub mod escape;
pub mod replay;
pub mod state;
pub mod term;
pub mod ws;

use std::io::{IsTerminal, Read, Write};

use alpacon_api::websh::{
    CreateWebshSession, CreateWebshShare, JoinWebshShare, JoinedWebshSession, WebshRecord,
    WebshRecords, WebshSession, WebshShare, WebshStatus,
};
use anyhow::{anyhow, Context, Result};
use chrono::DateTime;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;
use tokio::sync::mpsc;

use self::driver::{Local, LocalIo, Options, Outcome, Timing};
use self::state::TermState;
use self::term::{Crossterm, RawGuard};
use crate::client::Client;
use crate::error::{CliError, EXIT_ERROR};
use crate::exec::RunOptions;
use crate::output::{self, print_json, Table};
use crate::Ctx;

pub const SESSIONS: &[&str] = &["api", "websh", "sessions"];
const JOIN: &[&str] = &["api", "websh", "join"];

/// Attaching to a running session from elsewhere replays about this much
/// of its latest output (from the first line start in it), so the screen
/// has the recent lines rather than nothing or the whole history.
pub const REATTACH_BACKLOG: u64 = 16 * 1024;

/// Words that name a websh subcommand; a server with such a name is
/// reached with `alpacon websh -- NAME`.
pub const SUBCOMMAND_WORDS: &[&str] = &[
    "ls", "list", "describe", "close", "records", "share", "join", "attach",
];

const AFTER_HELP: &str = "\
Without COMMAND, opens an interactive terminal that survives network loss: \
the session keeps running on the server and the client reconnects by itself. \
Type ~. after Enter to leave a terminal (it keeps running; `alpacon websh \
attach ID` comes back to it), ~? for help.

Subcommand words (ls, list, describe, close, records, share, join, attach) \
win over server names: to reach a server named like one, put `--` before it \
(`alpacon websh -- ls`) or use its ID.";

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = AFTER_HELP
)]
pub struct WebshArgs {
    #[command(subcommand)]
    pub action: Option<WebshCommand>,
    #[command(flatten)]
    pub opts: RunOptions,
    /// Attach to a running session (see `alpacon websh ls`) instead of
    /// starting one.
    #[arg(long, value_name = "ID")]
    pub attach: Option<String>,
    /// With --attach: replay the session's output from its beginning.
    #[arg(long, requires = "attach")]
    pub from_start: bool,
    #[command(flatten)]
    pub term: TermArgs,
    /// Server name or ID (optional with --attach).
    #[arg(required_unless_present = "attach")]
    pub server: Option<String>,
    /// A command to run instead of a terminal; its words are joined with
    /// spaces, as ssh does.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The window size when stdin is not a terminal (tests, scripts).
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct TermArgs {
    #[arg(long, hide = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub rows: Option<u16>,
    #[arg(long, hide = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub cols: Option<u16>,
}

impl TermArgs {
    fn size(&self) -> Option<(u16, u16)> {
        match (self.rows, self.cols) {
            (None, None) => None,
            (r, c) => Some((r.unwrap_or(24), c.unwrap_or(80))),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum WebshCommand {
    /// List your live terminal sessions (admins: everyone's).
    #[command(visible_alias = "list")]
    Ls {
        /// Include sessions that have ended.
        #[arg(long)]
        all: bool,
    },
    /// Show a session.
    Describe { id: String },
    /// End a session (its shell is hung up).
    Close { id: String },
    /// The command lines typed in a session, with their times.
    Records { id: String },
    /// Let someone else join a session: prints a link and a password.
    Share {
        id: String,
        /// Viewers can watch but not type.
        #[arg(long)]
        read_only: bool,
        /// How long the link works, e.g. 30m, 2h, 1d.
        #[arg(long, value_name = "DURATION", default_value = "1h",
              value_parser = duration::parse_duration)]
        expires_in: u64,
    },
    /// Join a session shared with you (you must be logged in).
    Join {
        /// The share link (or its ID).
        url: String,
        /// The share's password (asked for if not given).
        #[arg(long, short = 'p')]
        password: Option<String>,
        #[command(flatten)]
        term: TermArgs,
    },
    /// Attach to one of your running sessions.
    Attach {
        id: String,
        /// Replay the session's output from its beginning.
        #[arg(long)]
        from_start: bool,
        #[command(flatten)]
        term: TermArgs,
    },
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    CliError::Usage(msg.into()).into()
}

pub async fn run(ctx: &Ctx, args: WebshArgs) -> Result<u8> {
    if let Some(cmd) = args.action {
        return run_subcommand(ctx, cmd).await;
    }
    if let (None, Some(id)) = (&args.server, &args.attach) {
        return attach(ctx, id, None, args.from_start, args.term).await;
    }
    let Some(server) = args.server else {
        return Err(usage("give a server: `alpacon websh SERVER`"));
    };
    if !args.command.is_empty() {
        if args.attach.is_some() {
            return Err(usage("--attach opens a terminal; it takes no command"));
        }
        return crate::exec::websh_command(ctx, &args.opts, &server, &args.command).await;
    }
    if !args.opts.env.is_empty() {
        return Err(usage(
            "--env applies to commands; a terminal gets the account's login environment",
        ));
    }
    match args.attach {
        Some(id) => {
            if args.opts.username.is_some() || args.opts.groupname.is_some() {
                return Err(usage(
                    "-u/-g choose the account of a new session; an existing one keeps its own",
                ));
            }
            attach(ctx, &id, Some(&server), args.from_start, args.term).await
        }
        None => open(ctx, &args.opts, &server, args.term).await,
    }
}

async fn run_subcommand(ctx: &Ctx, cmd: WebshCommand) -> Result<u8> {
    match cmd {
        WebshCommand::Ls { all } => ls(ctx, all).await,
        WebshCommand::Describe { id } => describe(ctx, &id).await,
        WebshCommand::Close { id } => close(ctx, &id).await,
        WebshCommand::Records { id } => records(ctx, &id).await,
        WebshCommand::Share {
            id,
            read_only,
            expires_in,
        } => share(ctx, &id, read_only, expires_in).await,
        WebshCommand::Join {
            url,
            password,
            term,
        } => join(ctx, &url, password, term).await,
        WebshCommand::Attach {
            id,
            from_start,
            term,
        } => attach(ctx, &id, None, from_start, term).await,
    }
}

fn session_path(id: &str) -> Vec<&str> {
    [SESSIONS, &[id]].concat()
}

/// The request body of `POST /api/websh/sessions/`.
pub fn session_body(opts: &RunOptions, server: &str, rows: u16, cols: u16) -> CreateWebshSession {
    CreateWebshSession {
        server: server.to_string(),
        username: opts.username.clone(),
        groupname: opts.groupname.clone(),
        rows: Some(rows),
        cols: Some(cols),
    }
}

/// How an ended session ended (`None` while it runs).
pub fn session_outcome(s: &WebshSession) -> Option<Outcome> {
    if s.status != WebshStatus::Closed {
        return None;
    }
    match s.exit_code {
        Some(code) => Some(Outcome::Exit(i32::try_from(code).unwrap_or(1))),
        None => Some(Outcome::Closed(
            s.close_reason
                .clone()
                .unwrap_or_else(|| "closed".to_string()),
        )),
    }
}

/// Where to start showing a running session attached from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub offset: u64,
    /// The session's output length when we looked: before it is history.
    pub until: Option<u64>,
    /// History starts mid-stream (skip its partial first line).
    pub mid_stream: bool,
}

/// The latest [`REATTACH_BACKLOG`] bytes of the session's output (from
/// the first line start in them), or with `from_start` everything.
pub fn reattach_point(s: &WebshSession, from_start: bool) -> Replay {
    let total = s.output_bytes;
    let offset = if from_start {
        0
    } else {
        total.saturating_sub(REATTACH_BACKLOG)
    };
    Replay {
        offset,
        until: Some(total),
        mid_stream: offset > 0,
    }
}

/// Whether `server` (a name or an ID) is the session's server.
pub fn session_on_server(s: &WebshSession, server: &str) -> bool {
    s.server == server || s.server_name.as_deref() == Some(server)
}

/// The server as shown: its name, or its ID once it is deleted.
fn server_shown(s: &WebshSession) -> &str {
    s.server_name.as_deref().unwrap_or(&s.server)
}

/// A cell of text; "-" for an empty one.
fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

fn ended(id: &str, outcome: &Outcome) -> anyhow::Error {
    match outcome {
        Outcome::Exit(code) => anyhow!("session {id} has ended (exit code {code})"),
        Outcome::Closed(reason) => anyhow!("session {id} has ended ({reason})"),
        _ => anyhow!("session {id} has ended"),
    }
}

/// What to attach to, and how.
struct Target {
    id: String,
    replay: Replay,
    read_only: bool,
    /// We created it (so piped input ending means the script ended).
    created: bool,
    /// How to come back after leaving (default: `alpacon websh attach ID`).
    come_back: Option<String>,
}

async fn open(ctx: &Ctx, opts: &RunOptions, server: &str, term: TermArgs) -> Result<u8> {
    let client = ctx.client()?;
    let (rows, cols) = local_size(&term).unwrap_or((24, 80));
    let s: WebshSession = client
        .post(SESSIONS, &session_body(opts, server, rows, cols))
        .await?;
    let target = Target {
        id: s.id,
        replay: Replay {
            offset: 0,
            until: None,
            mid_stream: false,
        },
        read_only: false,
        created: true,
        come_back: None,
    };
    terminal(&client, target, term).await
}

async fn attach(
    ctx: &Ctx,
    id: &str,
    server: Option<&str>,
    from_start: bool,
    term: TermArgs,
) -> Result<u8> {
    let client = ctx.client()?;
    let s: WebshSession = client.get(&session_path(id), &[]).await?;
    if let Some(server) = server {
        if !session_on_server(&s, server) {
            return Err(usage(format!(
                "session {id} is on server {}, not {server}",
                output::sanitize(&dash(server_shown(&s)))
            )));
        }
    }
    if let Some(o) = session_outcome(&s) {
        return Err(ended(id, &o));
    }
    let target = Target {
        replay: reattach_point(&s, from_start),
        id: s.id,
        read_only: false,
        created: false,
        come_back: None,
    };
    terminal(&client, target, term).await
}

/// The body of `POST /api/websh/join/`: the share's link or ID.
pub fn join_body(link: &str, password: &str) -> JoinWebshShare {
    JoinWebshShare {
        share: link.to_string(),
        password: password.to_string(),
    }
}

async fn join(ctx: &Ctx, link: &str, password: Option<String>, term: TermArgs) -> Result<u8> {
    let client = ctx.client()?;
    let password = match password {
        Some(p) => p,
        None => rpassword::prompt_password("Share password: ")
            .context("reading the password (or pass --password)")?,
    };
    let joined: JoinedWebshSession = client.post(JOIN, &join_body(link, &password)).await?;
    let session = joined.session;
    if let Some(o) = session_outcome(&session) {
        return Err(ended(&session.id, &o));
    }
    let target = Target {
        replay: reattach_point(&session, false),
        id: session.id,
        read_only: joined.read_only,
        created: false,
        come_back: Some(format!("alpacon websh join {}", output::sanitize(link))),
    };
    terminal(&client, target, term).await
}

/// Our window: the hidden flags, else the terminal's, if stdin is one.
fn local_size(term: &TermArgs) -> Option<(u16, u16)> {
    term.size().or_else(|| {
        if std::io::stdin().is_terminal() {
            term::window_size()
        } else {
            None
        }
    })
}

/// Show a line while the terminal may be raw (where `\n` does not return
/// the carriage).
fn notice(msg: &str, raw: bool) {
    let msg = msg.replace("\r\n", "\n");
    let line = if raw {
        format!("\r\n{}\r\n", msg.replace('\n', "\r\n"))
    } else {
        format!("{msg}\n")
    };
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

/// Keystrokes come from a thread: a blocking read of stdin cannot be
/// cancelled, and the thread must not keep the process alive at exit.
fn spawn_stdin_reader(tx: mpsc::Sender<Vec<u8>>) -> Result<()> {
    std::thread::Builder::new()
        .name("alpacon-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .context("starting the input reader")?;
    Ok(())
}

/// SIGWINCH becomes a resize; SIGTERM/SIGHUP (and SIGINT, which only
/// `kill` can send in raw mode) end the client with the terminal restored.
fn spawn_signal_watchers(tx: mpsc::Sender<Local>, winch: bool, int: bool) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if winch {
        let mut sig = signal(SignalKind::window_change()).context("watching SIGWINCH")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while sig.recv().await.is_some() {
                if let Some((rows, cols)) = term::window_size() {
                    if tx.send(Local::Resize(rows, cols)).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    let mut kinds = vec![(SignalKind::terminate(), 15), (SignalKind::hangup(), 1)];
    if int {
        kinds.push((SignalKind::interrupt(), 2));
    }
    for (kind, n) in kinds {
        let mut sig = signal(kind).context("watching signals")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            if sig.recv().await.is_some() {
                let _ = tx.send(Local::Signal(n)).await;
            }
        });
    }
    Ok(())
}

/// The shell's exit status as ours.
pub fn exit_status(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(EXIT_ERROR)
}

async fn terminal(client: &Client, target: Target, term_args: TermArgs) -> Result<u8> {
    let stdin_tty = std::io::stdin().is_terminal();
    let flag_size = term_args.size();
    let size = flag_size.or_else(|| if stdin_tty { term::window_size() } else { None });
    let id = target.id.clone();
    let mut state = TermState::new(target.replay.offset, size);
    if target.read_only {
        state.set_read_only();
    }
    if let Some(until) = target.replay.until {
        state.replaying(until, target.replay.mid_stream);
    }
    let transport = ws::WsTransport::new(client, &id)?;
    if stdin_tty {
        let ro = if target.read_only { " (read-only)" } else { "" };
        eprintln!(
            "alpacon: session {}{ro}; ~. after Enter leaves it running, ~? for help",
            output::sanitize(&id)
        );
    }
    let guard = if stdin_tty {
        Some(RawGuard::enable(Crossterm).context("switching the terminal to raw mode")?)
    } else {
        None
    };
    let raw = guard.is_some();
    let (in_tx, in_rx) = mpsc::channel(16);
    let (ev_tx, ev_rx) = mpsc::channel(16);
    spawn_stdin_reader(in_tx)?;
    spawn_signal_watchers(ev_tx, stdin_tty && flag_size.is_none(), raw)?;
    let mut io = LocalIo {
        out: tokio::io::stdout(),
        input: in_rx,
        events: ev_rx,
        notice: Box::new(move |m| notice(m, raw)),
    };
    let opts = Options {
        session: id.clone(),
        escape: stdin_tty,
        eof_sends_eot: !stdin_tty && target.created,
        timing: Timing::default(),
    };
    let result = driver::run(&transport, &mut state, &mut io, &opts).await;
    // Cooked mode again before anything else is printed.
    drop(guard);
    let come_back = target
        .come_back
        .unwrap_or_else(|| format!("alpacon websh attach {id}"));
    let left = |why: &str| {
        eprintln!(
            "{}alpacon: {why} session {id}; it keeps running. Come back with: {come_back}",
            if raw { "\n" } else { "" },
        );
    };
    match result? {
        Outcome::Exit(code) => Ok(exit_status(code)),
        Outcome::Closed(reason) => {
            eprintln!("alpacon: session {id} ended: {}", output::sanitize(&reason));
            Ok(EXIT_ERROR)
        }
        Outcome::Detached => {
            left("left");
            Ok(0)
        }
        Outcome::Signal(n) => {
            left("interrupted; left");
            Ok(128 + n as u8)
        }
    }
}

async fn ls(ctx: &Ctx, all: bool) -> Result<u8> {
    let client = ctx.client()?;
    let query: &[(&str, &str)] = if all { &[] } else { &[("status", "open")] };
    let sessions: Vec<WebshSession> = client.list(SESSIONS, query, None).await?;
    if ctx.json() {
        print_json(&sessions)?;
        return Ok(0);
    }
    let mut t = Table::new(&["ID", "SERVER", "USER", "CREATED", "STATUS"]);
    for s in &sessions {
        t.row(session_row(s));
    }
    t.print()?;
    Ok(0)
}

fn session_row(s: &WebshSession) -> Vec<String> {
    vec![
        dash(&s.id),
        dash(server_shown(s)),
        dash(&s.username),
        output::local_time(Some(&s.created_at)),
        s.status.to_string(),
    ]
}

async fn describe(ctx: &Ctx, id: &str) -> Result<u8> {
    let client = ctx.client()?;
    let s: WebshSession = client.get(&session_path(id), &[]).await?;
    if ctx.json() {
        print_json(&s)?;
    } else {
        print!("{}", output::describe(&serde_json::to_value(&s)?));
    }
    Ok(0)
}

async fn close(ctx: &Ctx, id: &str) -> Result<u8> {
    let client = ctx.client()?;
    let url = client.endpoint(&[SESSIONS, &[id, "close"]].concat());
    let resp = client
        .send(client.request(Method::POST, url).json(&json!({})))
        .await?;
    // The answer is the session as it ended (or, from an older gateway,
    // may be empty).
    let body = resp.bytes().await.unwrap_or_default();
    let s: Option<WebshSession> = serde_json::from_slice(&body).ok();
    if ctx.json() {
        match s {
            Some(s) => print_json(&s)?,
            None => print_json(&json!({"id": id, "status": "closed"}))?,
        }
    } else {
        println!("Closed session {}.", output::sanitize(id));
    }
    Ok(0)
}

async fn records(ctx: &Ctx, id: &str) -> Result<u8> {
    let client = ctx.client()?;
    let r: WebshRecords = client
        .get(&[SESSIONS, &[id, "records"]].concat(), &[])
        .await?;
    let mut items = r.results;
    sort_by_time(&mut items);
    if ctx.json() {
        print_json(&items)?;
        return Ok(0);
    }
    let mut t = Table::new(&["TIME", "LINE"]);
    for r in &items {
        t.row(vec![output::local_time(Some(&r.timestamp)), dash(&r.line)]);
    }
    t.print()?;
    Ok(0)
}

/// Oldest first; unparseable times keep their place relative to each
/// other.
fn sort_by_time(items: &mut [WebshRecord]) {
    items.sort_by_key(|r| DateTime::parse_from_rfc3339(&r.timestamp).ok());
}

async fn share(ctx: &Ctx, id: &str, read_only: bool, expires_in: u64) -> Result<u8> {
    let client = ctx.client()?;
    let body = CreateWebshShare {
        read_only,
        expires_in_secs: Some(i64::try_from(expires_in).unwrap_or(i64::MAX)),
    };
    let r: WebshShare = client
        .post(&[SESSIONS, &[id, "share"]].concat(), &body)
        .await?;
    if ctx.json() {
        print_json(&r)?;
        return Ok(0);
    }
    let url = dash(&r.url);
    print!(
        "{}",
        output::record(&[
            ("URL", url.clone()),
            ("Password", dash(&r.password)),
            (
                "Access",
                if r.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
                .into()
            ),
            ("Expires", output::local_time(Some(&r.expires_at))),
        ])
    );
    println!(
        "\nThe other person joins with: alpacon websh join {}",
        output::sanitize(&url)
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: crate::Command,
    }

    fn try_parse(args: &[&str]) -> Result<WebshArgs, clap::Error> {
        let t = T::try_parse_from(["alpacon", "websh"].into_iter().chain(args.iter().copied()))?;
        match t.cmd {
            crate::Command::Websh(a) => Ok(a),
            _ => panic!("not websh"),
        }
    }

    fn parse(args: &[&str]) -> WebshArgs {
        try_parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn one_shot_commands_parse_as_before() {
        let a = parse(&["-g", "adm", "web", "echo", "-n", "hi there"]);
        assert!(a.action.is_none());
        assert_eq!(a.server.as_deref(), Some("web"));
        assert_eq!(a.command, ["echo", "-n", "hi there"]);
        assert_eq!(a.opts.groupname.as_deref(), Some("adm"));
        let a = parse(&["-u", "docker", "box", "id", "-un"]);
        assert_eq!(a.command, ["id", "-un"]);
        // A command word that is also a subcommand word stays a command.
        let a = parse(&["box", "ls", "-la"]);
        assert_eq!(a.server.as_deref(), Some("box"));
        assert_eq!(a.command, ["ls", "-la"]);
        let a = parse(&["box", "close"]);
        assert_eq!(a.command, ["close"]);
    }

    #[test]
    fn no_command_is_interactive() {
        let a = parse(&["web"]);
        assert!(a.command.is_empty() && a.action.is_none() && a.attach.is_none());
        let a = parse(&["-u", "root", "web", "--rows", "40", "--cols", "120"]);
        assert_eq!(a.term.size(), Some((40, 120)));
        let a = parse(&["web", "--attach", "abc"]);
        assert_eq!(a.attach.as_deref(), Some("abc"));
        let a = parse(&["--attach", "abc"]);
        assert_eq!((a.attach.as_deref(), a.server), (Some("abc"), None));
        assert!(try_parse(&["web", "--from-start"]).is_err());
        assert!(try_parse(&[]).is_err(), "a server is required");
        assert!(try_parse(&["web", "--rows", "0"]).is_err());
    }

    #[test]
    fn subcommand_words_win_and_dashes_reach_a_server_named_ls() {
        assert!(matches!(
            parse(&["ls"]).action,
            Some(WebshCommand::Ls { all: false })
        ));
        assert!(matches!(
            parse(&["list", "--all"]).action,
            Some(WebshCommand::Ls { all: true })
        ));
        let a = parse(&["--", "ls"]);
        assert!(a.action.is_none());
        assert_eq!(a.server.as_deref(), Some("ls"));
        let a = parse(&["--", "ls", "uptime"]);
        assert_eq!(a.command, ["uptime"]);
        for w in SUBCOMMAND_WORDS {
            let a = try_parse(&[w, "x"]);
            assert!(
                a.map(|a| a.action.is_some()).unwrap_or(true),
                "{w} is a subcommand"
            );
        }
    }

    #[test]
    fn subcommands_parse() {
        match parse(&["share", "s1", "--read-only", "--expires-in", "30m"]).action {
            Some(WebshCommand::Share {
                id,
                read_only,
                expires_in,
            }) => assert_eq!((id.as_str(), read_only, expires_in), ("s1", true, 1800)),
            other => panic!("{other:?}"),
        }
        match parse(&["share", "s1"]).action {
            Some(WebshCommand::Share {
                read_only: false,
                expires_in: 3600,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(try_parse(&["share", "s1", "--expires-in", "soon"]).is_err());
        match parse(&["join", "https://gw/websh/join/abc", "-p", "pw"]).action {
            Some(WebshCommand::Join { url, password, .. }) => {
                assert_eq!(url, "https://gw/websh/join/abc");
                assert_eq!(password.as_deref(), Some("pw"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["attach", "s1", "--from-start", "--rows", "10"]).action {
            Some(WebshCommand::Attach {
                id,
                from_start: true,
                term,
            }) => {
                assert_eq!(id, "s1");
                assert_eq!(term.size(), Some((10, 80)));
            }
            other => panic!("{other:?}"),
        }
        for cmd in ["describe", "close", "records"] {
            assert!(parse(&[cmd, "s1"]).action.is_some());
            assert!(try_parse(&[cmd]).is_err(), "{cmd} needs an id");
        }
    }

    /// A session as the gateway sends it, with some fields replaced.
    fn session(fields: serde_json::Value) -> WebshSession {
        let mut v = json!({"id": "s1", "server": "0b7c", "server_name": "web", "user": "alice",
            "username": "deploy", "groupname": null, "rows": 24, "cols": 80, "status": "open",
            "created_at": "2024-05-01T12:00:00Z", "closed_at": null, "exit_code": null,
            "close_reason": null, "output_bytes": 0});
        for (k, x) in fields.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn session_body_has_size_and_account() {
        let a = parse(&["-u", "deploy", "-g", "adm", "web"]);
        assert_eq!(
            serde_json::to_value(session_body(&a.opts, "web", 30, 100)).unwrap(),
            json!({"server": "web", "username": "deploy", "groupname": "adm",
                   "rows": 30, "cols": 100})
        );
        let a = parse(&["web"]);
        assert_eq!(
            serde_json::to_value(session_body(&a.opts, "web", 24, 80)).unwrap(),
            json!({"server": "web", "rows": 24, "cols": 80})
        );
    }

    #[test]
    fn reattach_starts_near_the_end() {
        let r = |offset, until, mid_stream| Replay {
            offset,
            until,
            mid_stream,
        };
        assert_eq!(
            reattach_point(&session(json!({"output_bytes": 100})), false),
            r(0, Some(100), false)
        );
        let total = REATTACH_BACKLOG + 5000;
        assert_eq!(
            reattach_point(&session(json!({ "output_bytes": total })), false),
            r(5000, Some(total), true)
        );
        assert_eq!(
            reattach_point(&session(json!({ "output_bytes": total })), true),
            r(0, Some(total), false)
        );
    }

    #[test]
    fn ended_sessions() {
        assert_eq!(session_outcome(&session(json!({"status": "open"}))), None);
        assert_eq!(
            session_outcome(&session(json!({"status": "closed", "exit_code": 3}))),
            Some(Outcome::Exit(3))
        );
        assert_eq!(
            session_outcome(&session(json!({"status": "closed", "exit_code": null}))),
            Some(Outcome::Closed("closed".into()))
        );
        assert_eq!(
            session_outcome(&session(
                json!({"status": "closed", "close_reason": "idle for more than 60 minutes"})
            )),
            Some(Outcome::Closed("idle for more than 60 minutes".into()))
        );
    }

    #[test]
    fn server_match_by_name_or_id() {
        let s = session(json!({"server": "0b7c", "server_name": "web"}));
        assert!(session_on_server(&s, "web"));
        assert!(session_on_server(&s, "0b7c"));
        assert!(!session_on_server(&s, "db"));
        // A deleted server is known by its ID only.
        let s = session(json!({"server": "0b7c", "server_name": null}));
        assert!(session_on_server(&s, "0b7c"));
        assert!(!session_on_server(&s, "web"));
        assert_eq!(server_shown(&s), "0b7c");
    }

    #[test]
    fn join_body_takes_link_or_id() {
        assert_eq!(
            serde_json::to_value(join_body("https://gw:8443/#/websh/join/abc", "pw")).unwrap(),
            json!({"share": "https://gw:8443/#/websh/join/abc", "password": "pw"})
        );
        assert_eq!(
            serde_json::to_value(join_body("abc", "pw")).unwrap(),
            json!({"share": "abc", "password": "pw"})
        );
    }

    #[test]
    fn rows_and_records() {
        let s = session(json!({"created_at": "not a time"}));
        assert_eq!(
            session_row(&s),
            ["s1", "web", "deploy", "not a time", "open"]
        );
        let record = |t: &str, line: &str| WebshRecord {
            timestamp: t.into(),
            offset_secs: 0.0,
            line: line.into(),
        };
        let mut r = vec![
            record("2024-05-01T12:00:02Z", "b"),
            record("2024-05-01T12:00:01.5Z", "a"),
        ];
        sort_by_time(&mut r);
        assert_eq!(r[0].line, "a");
    }

    #[test]
    fn a_session_prints_as_it_came() {
        // `--json` and `describe` show what the gateway sent, field for field.
        let v = json!({"id": "s1", "server": "0b7c", "server_name": "web", "user": "alice",
            "username": "deploy", "groupname": null, "rows": 24, "cols": 80, "status": "open",
            "created_at": "2024-05-01T12:00:00Z", "closed_at": null, "exit_code": null,
            "close_reason": null, "output_bytes": 7, "agent_connected": true});
        let s: WebshSession = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let mut v = v;
        v.as_object_mut().unwrap().remove("agent_connected");
        let s: WebshSession = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(130), 130);
        assert_eq!(exit_status(-1), 1);
        assert_eq!(exit_status(256), 1);
    }
}
