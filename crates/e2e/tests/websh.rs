//! Interactive terminals end to end: real gateway, agent, CLI (in tmux and
//! through pipes), cut connections, floods, recordings, sharing.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use alpacon_e2e::relay::CutRelay;
use alpacon_e2e::{
    bin, bin_dir, is_root, login, peak_rss, text, Agent, AgentOpts, Cli, Gateway, Interactive,
};
use serde_json::{json, Value};

/// An agent in a private namespace with the accounts `docker` and `bob`.
fn agent(gw: &mut Gateway, name: &str, url: Option<String>) -> Agent {
    assert!(is_root(), "needs root: private mount namespace, useradd");
    let opts = AgentOpts {
        private_namespace: true,
        setup: vec![
            "useradd -m -s /bin/bash docker".into(),
            "useradd -m -s /bin/bash bob".into(),
        ],
        url,
    };
    let a = Agent::register(gw, name, opts).expect("register agent");
    gw.wait_connected(name, true)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", a.log()));
    a
}

fn cli_for(gw: &mut Gateway, url: Option<&str>) -> Cli {
    let cli = Cli::new().unwrap();
    let token = gw.admin_api_token(&format!("t{}", rand_suffix())).unwrap();
    let ca = gw.ca();
    let out = cli.run(&[
        "login",
        url.unwrap_or(&gw.url),
        "-t",
        &token,
        "--ca-cert",
        ca.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    cli
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

fn newest_session(gw: &mut Gateway) -> Value {
    let (s, v) = gw.call("GET", "/api/websh/sessions/", None).unwrap();
    assert_eq!(s, 200, "{v}");
    v["results"][0].clone()
}

/// A tmux server of the test's own, driving the CLI in a real terminal.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str, cols: u16, rows: u16) -> Tmux {
        let socket = format!("alpacon-e2e-{}", rand_suffix());
        let st = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "t"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .arg(cmd)
            .status()
            .unwrap();
        assert!(st.success());
        Tmux { socket }
    }

    fn keys(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t"])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_screen(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn resize(&self, cols: u16, rows: u16) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "resize-window", "-t", "t"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn interactive_terminal_in_a_real_tty() {
    let mut gw = Gateway::start().unwrap();
    let _agent = agent(&mut gw, "box", None);
    let cli = cli_for(&mut gw, None);
    let exit_file = cli.dir.path().join("exit-code");
    let cmd = format!(
        "ALPACON_CONFIG='{}' '{}' websh -u docker box; echo $? > '{}'; sleep 60",
        cli.config().display(),
        bin("alpacon").display(),
        exit_file.display()
    );
    let t = Tmux::start(&cmd, 100, 30);
    t.wait_screen("a prompt", |s| s.contains("docker@"));

    t.keys(&["tty", "Enter"]);
    t.wait_screen("tty", |s| s.contains("/dev/pts/"));
    t.keys(&["echo TERM=$TERM; stty size", "Enter"]);
    t.wait_screen("the terminal's size", |s| {
        s.contains("TERM=xterm-256color") && s.contains("30 100")
    });
    t.resize(120, 40);
    std::thread::sleep(Duration::from_millis(300));
    t.keys(&["clear; stty size", "Enter"]);
    t.wait_screen("the new size", |s| s.contains("40 120"));

    // Full-screen programs start and quit.
    t.keys(&["top", "Enter"]);
    t.wait_screen("top", |s| s.contains("load average"));
    // top may draw before it takes the terminal raw (flushing what was
    // typed), so a `q` sent at once can be lost: press it until top goes.
    let start = Instant::now();
    while t.screen().contains("load average") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "top did not quit"
        );
        t.keys(&["q"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    t.keys(&["clear; echo back-from-top", "Enter"]);
    t.wait_screen("prompt after top", |s| s.contains("back-from-top"));
    t.keys(&["vi /tmp/x", "Enter"]);
    // vi is up once it draws its empty-line markers.
    t.wait_screen("vi", |s| {
        s.lines().filter(|l| l.trim_end() == "~").count() > 3
    });
    t.keys(&["Escape", ":q!", "Enter"]);
    t.wait_screen("the prompt after vi", |s| {
        s.lines().filter(|l| l.trim_end() == "~").count() == 0
    });
    t.keys(&["clear; echo back-from-vi", "Enter"]);
    t.wait_screen("prompt after vi", |s| s.contains("back-from-vi"));

    // Ctrl-C interrupts the foreground program, not the session.
    t.keys(&["sleep 1000", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    t.keys(&["C-c"]);
    t.keys(&["echo after-ctrl-c", "Enter"]);
    t.wait_screen("Ctrl-C handled", |s| s.contains("after-ctrl-c\n"));

    t.keys(&["exit 5", "Enter"]);
    let start = Instant::now();
    let code = loop {
        if let Ok(c) = std::fs::read_to_string(&exit_file) {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{}", t.screen());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code.trim(), "5", "the CLI exits with the shell's status");
    let s = newest_session(&mut gw);
    assert_eq!(s["status"], "closed", "{s}");
    assert_eq!(s["exit_code"], 5, "{s}");
}

/// Runs the CLI with piped stdin/stdout against a session.
fn piped_websh(cli: &Cli, args: &[&str]) -> Interactive {
    let mut c = cli.command();
    c.arg("websh").args(args);
    Interactive::spawn(c).unwrap()
}

#[test]
fn output_survives_cutting_each_leg_twenty_times() {
    let mut gw = Gateway::start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw_addr: SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    let agent_leg = rt.block_on(CutRelay::start(gw_addr)).unwrap();
    let client_leg = rt.block_on(CutRelay::start(gw_addr)).unwrap();
    let _agent = agent(
        &mut gw,
        "flaky",
        Some(format!("https://127.0.0.1:{}", agent_leg.port)),
    );
    let cli = cli_for(
        &mut gw,
        Some(&format!("https://127.0.0.1:{}", client_leg.port)),
    );
    let mut term = piped_websh(&cli, &["-u", "docker", "flaky"]);
    term.write(b"stty -echo; echo READY\n").unwrap();
    term.wait_for("READY", Duration::from_secs(30)).unwrap();

    const N: u32 = 4000;
    term.write(
        format!(
            "i=0; while [ $i -lt {N} ]; do echo line-$i; i=$((i+1)); \
             [ $((i % 100)) = 0 ] && sleep 0.1; done; echo END-OF-TEST\n"
        )
        .as_bytes(),
    )
    .unwrap();
    // Cut the agent's and the client's connections alternately while the
    // output flows.
    let mut cuts = (0, 0);
    while cuts.0 < 20 || cuts.1 < 20 {
        std::thread::sleep(Duration::from_millis(150));
        if cuts.0 <= cuts.1 {
            if agent_leg.cut() > 0 {
                cuts.0 += 1;
            }
        } else if client_leg.cut() > 0 {
            cuts.1 += 1;
        }
    }
    term.wait_for("END-OF-TEST", Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}\n--- gateway ---\n{}", gw.log()));
    term.write(b"exit\n").unwrap();
    let status = term.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", term.stderr());

    // Every line exactly once, in order.
    let out = term.output();
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text
        .split("\r\n")
        .filter(|l| l.starts_with("line-"))
        .collect();
    let expected: Vec<String> = (0..N).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines.len(), expected.len(), "lost or repeated lines");
    assert!(
        lines.iter().zip(&expected).all(|(a, b)| a == b),
        "lines out of order"
    );
    // And the client saw exactly the bytes the gateway recorded.
    let s = newest_session(&mut gw);
    let raw = std::fs::read(
        gw.data()
            .join(format!("websh/{}.out", s["id"].as_str().unwrap())),
    )
    .unwrap();
    assert!(raw == out, "client stream differs from the session log");
    assert!(
        term.stderr().contains("reconnect"),
        "the CLI said it reconnected: {}",
        term.stderr()
    );
}

#[test]
fn a_flood_keeps_memory_bounded_and_ctrl_c_stops_it() {
    let mut gw = Gateway::start().unwrap();
    let agent = agent(&mut gw, "flood", None);
    let cli = cli_for(&mut gw, None);
    let mut term = piped_websh(&cli, &["-u", "docker", "flood"]);
    term.write(b"echo READY\n").unwrap();
    term.wait_for("READY", Duration::from_secs(30)).unwrap();
    term.write(b"yes flood-flood-flood\n").unwrap();
    // Let it run until a good amount has passed through every hop.
    let start = Instant::now();
    while term.output_len() < 200 << 20 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let flooded = term.output_len();
    assert!(
        flooded > 10 << 20,
        "the flood did not flow: {flooded} bytes"
    );
    // Memory stays bounded: the bound stated here is 64 MiB of peak RSS for
    // the gateway and 32 MiB for the agent, whatever the volume.
    let gw_peak = peak_rss(gw.pid().unwrap()).unwrap();
    let agent_peak = peak_rss(agent.pid().unwrap()).unwrap();
    assert!(gw_peak < 64 << 20, "gateway peaked at {gw_peak} bytes");
    assert!(agent_peak < 32 << 20, "agent peaked at {agent_peak} bytes");

    term.write(b"\x03").unwrap();
    // The flood stops: output goes quiet, then the shell answers again.
    let mut last = term.output_len();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = term.output_len();
        if now == last {
            break;
        }
        last = now;
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the flood never stopped"
        );
    }
    term.write(b"echo AFTER-$((6*7))\n").unwrap();
    term.wait_for("AFTER-42", Duration::from_secs(30)).unwrap();
    term.write(b"exit\n").unwrap();
    term.wait(Duration::from_secs(30)).unwrap();
}

/// A program that reads no input, and more input than every buffer on the
/// way holds: the terminal's stream is stuck behind that input. Closing the
/// session must still let the client go at once and end the program on the
/// server (the gateway's hang-up travels out of band).
#[test]
fn closing_reaches_a_terminal_that_reads_no_input() {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut gw = Gateway::start().unwrap();
    let _agent = agent(&mut gw, "deaf", None);
    let cli = cli_for(&mut gw, None);
    let mut term = piped_websh(&cli, &["-u", "docker", "deaf"]);
    let marker = 7000 + rand_suffix() % 1000;
    term.write(format!("stty -icanon -echo; echo READY; sleep {marker}\n").as_bytes())
        .unwrap();
    term.wait_for("READY", Duration::from_secs(30)).unwrap();
    let sleeping = || {
        Command::new("pgrep")
            .args(["-x", "-f", &format!("sleep {marker}")])
            .status()
            .unwrap()
            .success()
    };
    let start = Instant::now();
    while !sleeping() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sleep never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Type far more than the PTY, the agent, the link's window and the
    // gateway buffer, until the CLI's stdin no longer takes any.
    const TOTAL: usize = 16 << 20;
    let written = Arc::new(AtomicUsize::new(0));
    let mut stdin = term.take_stdin().unwrap();
    let w = written.clone();
    std::thread::spawn(move || {
        let chunk = vec![b'x'; 16 << 10];
        while w.load(Ordering::SeqCst) < TOTAL {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
            w.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = written.load(Ordering::SeqCst);
        assert!(
            now < TOTAL,
            "all {now} bytes of input went through: nothing is stuck"
        );
        if now == last {
            break;
        }
        last = now;
    }

    let id = newest_session(&mut gw)["id"].as_str().unwrap().to_string();
    let (s, v) = gw
        .call("POST", &format!("/api/websh/sessions/{id}/close/"), None)
        .unwrap();
    assert_eq!(s, 200, "{v}");
    // The client hears why and exits; the program on the server is gone.
    term.wait(Duration::from_secs(30)).unwrap();
    let err = String::from_utf8_lossy(&term.err.lock().unwrap()).into_owned();
    assert!(err.contains("closed by"), "client said: {err}");
    let start = Instant::now();
    while sleeping() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sleep {marker} still runs after the session was closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, v) = gw
        .call("GET", &format!("/api/websh/sessions/{id}/"), None)
        .unwrap();
    assert_eq!(v["status"], "closed", "{v}");
}

/// The idle timeout closes a terminal nobody uses, and says so. The API
/// takes 10 minutes at the least; the test writes a one-second timeout
/// into the gateway's database, which the reaper reads on each pass.
#[test]
fn idle_terminals_are_closed_with_the_reason() {
    let mut gw = Gateway::start().unwrap();
    let _agent = agent(&mut gw, "idle", None);
    let cli = cli_for(&mut gw, None);
    let mut term = piped_websh(&cli, &["-u", "docker", "idle"]);
    term.write(b"echo READY\n").unwrap();
    term.wait_for("READY", Duration::from_secs(30)).unwrap();
    gw.exec_sql(
        "DELETE FROM settings WHERE key = 'websh_idle_timeout_secs'",
        &[],
    )
    .unwrap();
    gw.exec_sql(
        "INSERT INTO settings (key, value) VALUES ('websh_idle_timeout_secs', '1')",
        &[],
    )
    .unwrap();
    // The reaper looks every 15 s.
    term.wait(Duration::from_secs(60)).unwrap();
    assert!(
        term.stderr().contains("idle for more than"),
        "client said: {}",
        term.stderr()
    );
    let s = newest_session(&mut gw);
    assert_eq!(s["status"], "closed", "{s}");
    assert!(
        s["close_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("idle for more than")),
        "{s}"
    );
}

#[test]
fn recordings_replay_exactly_what_the_client_saw() {
    let mut gw = Gateway::start().unwrap();
    let _agent = agent(&mut gw, "rec", None);
    let cli = cli_for(&mut gw, None);
    let mut term = piped_websh(&cli, &["-u", "docker", "rec"]);
    term.write(b"echo 'h\xc3\xa9llo \xe2\x82\xac w\xc3\xb6rld'\n")
        .unwrap();
    term.write(b"printf 'a\\tb\\n'; ls -d /tm\x7fmp\n").unwrap();
    term.wait_for("/tmp", Duration::from_secs(30)).unwrap();
    term.write(b"exit 3\n").unwrap();
    let status = term.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(3));
    let out = term.output();

    let s = newest_session(&mut gw);
    let id = s["id"].as_str().unwrap().to_string();
    let key = gw.admin_key().unwrap();
    let r = gw
        .http()
        .get(gw.api(&format!("/api/websh/sessions/{id}/recording/")))
        .header("Authorization", format!("Token {key}"))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let cast = r.text().unwrap();
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{header}");
    assert!(header["width"].as_u64().unwrap() > 0);
    let mut output = String::new();
    let mut kinds = std::collections::BTreeSet::new();
    let mut last_t = 0.0;
    for l in lines {
        let ev: Value = serde_json::from_str(l).unwrap();
        let t = ev[0].as_f64().unwrap();
        assert!(t >= last_t, "timestamps go forward");
        last_t = t;
        let kind = ev[1].as_str().unwrap().to_string();
        if kind == "o" {
            output.push_str(ev[2].as_str().unwrap());
        }
        kinds.insert(kind);
    }
    assert_eq!(
        output.as_bytes(),
        &out[..],
        "output events == bytes the client saw"
    );
    assert!(kinds.contains("i"), "input is recorded: {kinds:?}");

    let path = cli.dir.path().join("s.cast");
    std::fs::write(&path, &cast).unwrap();
    // An independent player reads it (`asciinema cat` wants a tty: give it
    // one with script(1)).
    let o = Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat '{}'", path.display()),
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "asciinema cat: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("w\u{f6}rld"),
        "asciinema cat: {}",
        text(&o)
    );

    // The typed command lines, with the backspace applied.
    let out = cli.run(&["websh", "records", &id, "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let records: Value = serde_json::from_slice(&out.stdout).unwrap();
    let typed: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["line"].as_str())
        .collect();
    assert!(
        typed.contains(&"printf 'a\\tb\\n'; ls -d /tmp"),
        "{typed:?}"
    );
    assert!(typed.contains(&"exit 3"), "{typed:?}");
}

#[test]
fn sessions_survive_a_gateway_restart_and_can_be_reattached() {
    let mut gw = Gateway::start().unwrap();
    let _agent = agent(&mut gw, "durable", None);
    let cli = cli_for(&mut gw, None);
    let mut term = piped_websh(&cli, &["-u", "docker", "durable"]);
    term.write(b"export MARK=kept-$((40+2)); echo READY\n")
        .unwrap();
    term.wait_for("READY", Duration::from_secs(30)).unwrap();
    let id = newest_session(&mut gw)["id"].as_str().unwrap().to_string();

    // `websh ls` lists it.
    let out = cli.run(&["websh", "ls", "--output", "json"]);
    let ls: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{ls}"
    );

    gw.restart().unwrap();
    term.write(b"echo still-here-$MARK\n").unwrap();
    term.wait_for("still-here-kept-42", Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    term.write(b"echo sync-$((1+1))\n").unwrap();
    term.wait_for("sync-2", Duration::from_secs(30)).unwrap();
    // Nothing typed before the restart ran again, nothing after it was lost.
    let seen = String::from_utf8_lossy(&term.output()).into_owned();
    // (Count the command's output, not its echo: input typed before the
    // shell's first prompt is echoed twice, by the tty and by readline.)
    let ready_lines = seen
        .split("\r\n")
        .filter(|l| l.ends_with("READY") && !l.contains("echo"))
        .count();
    assert_eq!(ready_lines, 1, "{seen}");
    assert_eq!(seen.matches("still-here-kept-42").count(), 1, "{seen}");

    // Close this client; the shell keeps running; attach from another one.
    drop(term);
    let mut again = piped_websh(&cli, &["--attach", &id]);
    again.write(b"echo again-$MARK\n").unwrap();
    again
        .wait_for("again-kept-42", Duration::from_secs(30))
        .unwrap();
    again.write(b"exit\n").unwrap();
    again.wait(Duration::from_secs(30)).unwrap();
}

#[test]
fn share_links_and_watching_are_audited_and_read_only_means_read_only() {
    let mut gw = Gateway::start().unwrap();
    let _agent = agent(&mut gw, "shared", None);
    let cli = cli_for(&mut gw, None);
    let mut owner = piped_websh(&cli, &["-u", "docker", "shared"]);
    owner.write(b"echo READY\n").unwrap();
    owner.wait_for("READY", Duration::from_secs(30)).unwrap();
    let id = newest_session(&mut gw)["id"].as_str().unwrap().to_string();

    let out = cli.run(&[
        "websh",
        "share",
        &id,
        "--read-only",
        "--expires-in",
        "30m",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let share: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = share["url"].as_str().unwrap().to_string();
    let password = share["password"].as_str().unwrap().to_string();

    // Bob, a member, must authenticate before joining.
    let (s, v) = gw
        .call(
            "POST",
            "/api/iam/users/",
            Some(json!({"username": "bob", "password": "bob-password-1"})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let bob = login(&gw, "bob", "bob-password-1");
    let mut viewer = {
        let mut c = bob.command();
        c.args(["websh", "join", &url, "--password", &password]);
        Interactive::spawn(c).unwrap()
    };
    viewer.wait_for("READY", Duration::from_secs(30)).unwrap();
    // The viewer's keystrokes go nowhere.
    viewer.write(b"echo VIEWER-TYPED-$((1+1))\n").unwrap();
    owner.write(b"echo OWNER-TYPED-$((2+2))\n").unwrap();
    viewer
        .wait_for("OWNER-TYPED-4", Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!alpacon_e2e::memfind(&owner.output(), b"VIEWER-TYPED-2"));

    // A wrong password is refused.
    let out = bob.run(&["websh", "join", &url, "--password", "wrong"]);
    assert_ne!(out.status.code(), Some(0));

    // Staff can watch any live session without a link: read-only, audited.
    let (s, v) = gw
        .call(
            "POST",
            "/api/iam/users/",
            Some(json!({"username": "carol", "password": "carol-password-1", "is_staff": true})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let carol = login(&gw, "carol", "carol-password-1");
    let mut watcher = {
        let mut c = carol.command();
        c.args(["websh", "attach", &id, "--from-start"]);
        Interactive::spawn(c).unwrap()
    };
    watcher
        .wait_for("OWNER-TYPED-4", Duration::from_secs(30))
        .unwrap();
    watcher.write(b"echo WATCHER-TYPED-$((3+3))\n").unwrap();
    owner.write(b"echo OWNER-AGAIN-$((4+4))\n").unwrap();
    watcher
        .wait_for("OWNER-AGAIN-8", Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!alpacon_e2e::memfind(&owner.output(), b"WATCHER-TYPED-6"));

    let (_, v) = gw
        .call("GET", "/api/audit/events/?page_size=100", None)
        .unwrap();
    let actions: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["websh.open", "websh.share", "websh.join", "websh.watch"] {
        assert!(actions.contains(&a), "no {a} in {actions:?}");
    }
    owner.write(b"exit\n").unwrap();
    owner.wait(Duration::from_secs(30)).unwrap();
    let _ = bin_dir();
}

/// Runs `sql` (with one text bind) against a running gateway's database.
fn poke_db(gw: &Gateway, sql: &str, bind: &str) {
    gw.exec_sql(sql, &[bind]).unwrap();
}

/// Every client attached to a terminal is known to revocation, not only the
/// terminal's owner: a person joined through a share link loses it when
/// disabled or when their reach shrinks, an admin watching loses it when
/// demoted, and a share link's participant when the link expires. Once the
/// API call that removed the access has answered, nothing they type
/// arrives.
#[test]
fn attachments_end_when_their_access_does() {
    let mut gw = Gateway::start().unwrap();
    let _agent = agent(&mut gw, "att", None);
    let cli = cli_for(&mut gw, None);
    let mut owner = piped_websh(&cli, &["-u", "docker", "att"]);
    owner.write(b"echo READY\n").unwrap();
    owner.wait_for("READY", Duration::from_secs(30)).unwrap();
    let id = newest_session(&mut gw)["id"].as_str().unwrap().to_string();
    let out = cli.run(&["websh", "share", &id, "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let share: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = share["url"].as_str().unwrap().to_string();
    let password = share["password"].as_str().unwrap().to_string();

    // Members of ops reach the server, so they may type into a share.
    let (s, v) = gw
        .call("POST", "/api/iam/groups/", Some(json!({"name": "ops"})))
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let (s, v) = gw
        .call(
            "POST",
            "/api/iam/groups/ops/servers/",
            Some(json!({"server": "att"})),
        )
        .unwrap();
    assert!(s < 300, "{v}");
    let mut memberships = std::collections::HashMap::new();
    for (name, staff) in [
        ("pat", false),
        ("dan", false),
        ("eve", false),
        ("cal", true),
    ] {
        let (s, v) = gw
            .call(
                "POST",
                "/api/iam/users/",
                Some(json!({"username": name, "password": format!("{name}-password-1"), "is_staff": staff})),
            )
            .unwrap();
        assert_eq!(s, 201, "{v}");
        let (s, v) = gw
            .call(
                "POST",
                "/api/iam/memberships/",
                Some(json!({"group": "ops", "user": name})),
            )
            .unwrap();
        assert!(s < 300, "{v}");
        memberships.insert(name, v["id"].as_str().unwrap().to_string());
    }
    let admin = gw.admin_key().unwrap();
    let join = |name: &str| {
        let c = login(&gw, name, &format!("{name}-password-1"));
        let mut cmd = c.command();
        cmd.args(["websh", "join", &url, "--password", &password]);
        (Interactive::spawn(cmd).unwrap(), c)
    };
    let mut mark = 0;
    // `who` types while attached (it arrives), then its access goes
    // (`revoke`), then it types again: that must never arrive, and the
    // client is let go.
    let mut check = |who: &mut Interactive, owner: &mut Interactive, revoke: &dyn Fn()| {
        mark += 1;
        let typed = format!("echo TYPED-{mark}-$((1+{mark}))\n");
        who.write(typed.as_bytes()).unwrap();
        owner
            .wait_for(
                &format!("TYPED-{mark}-{}", 1 + mark),
                Duration::from_secs(30),
            )
            .unwrap();
        revoke();
        let _ = who.write(format!("echo LATE-{mark}-$((2+{mark}))\n").as_bytes());
        owner
            .write(format!("echo SYNC-{mark}-$((3+{mark}))\n").as_bytes())
            .unwrap();
        owner
            .wait_for(
                &format!("SYNC-{mark}-{}", 3 + mark),
                Duration::from_secs(30),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let late = format!("LATE-{mark}-{}", 2 + mark);
        assert!(
            !alpacon_e2e::memfind(&owner.output(), late.as_bytes()),
            "input after revocation arrived ({late})"
        );
        let status = who.wait(Duration::from_secs(30)).unwrap();
        assert!(!status.success(), "the client should report the end");
    };

    // Disabled.
    let (mut pat, _pat_cli) = join("pat");
    pat.wait_for("READY", Duration::from_secs(30)).unwrap();
    check(&mut pat, &mut owner, &|| {
        let (s, v) = gw_call(
            &gw,
            &admin,
            "PATCH",
            "/api/iam/users/pat/",
            json!({"is_active": false}),
        );
        assert_eq!(s, 200, "{v}");
    });

    // Removed from the server's group.
    let (mut dan, _dan_cli) = join("dan");
    dan.wait_for("READY", Duration::from_secs(30)).unwrap();
    let dan_membership = memberships["dan"].clone();
    check(&mut dan, &mut owner, &|| {
        let (s, v) = gw_call(
            &gw,
            &admin,
            "DELETE",
            &format!("/api/iam/memberships/{dan_membership}/"),
            Value::Null,
        );
        assert!(s < 300, "{v}");
    });

    // The share link expires while attached (the API's shortest link lasts
    // a minute: the test moves the expiry into the next two seconds, then
    // attaches again as the participant).
    let (eve, eve_cli) = join("eve");
    eve.wait_for("READY", Duration::from_secs(30)).unwrap();
    drop(eve);
    let soon = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 2000)
        .to_string();
    poke_db(
        &gw,
        &format!("UPDATE websh_participants SET expires_at = {soon} WHERE share_id = $1"),
        url.rsplit('/').next().unwrap(),
    );
    let mut eve = {
        let mut c = eve_cli.command();
        c.args(["websh", "attach", &id]);
        Interactive::spawn(c).unwrap()
    };
    eve.wait_for("SYNC-2", Duration::from_secs(30)).unwrap();
    let status = eve.wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    assert!(eve.stderr().contains("expired"), "{}", eve.stderr());

    // An admin watching (read-only), demoted.
    let cal = login(&gw, "cal", "cal-password-1");
    let mut watcher = {
        let mut c = cal.command();
        c.args(["websh", "attach", &id, "--from-start"]);
        Interactive::spawn(c).unwrap()
    };
    watcher.wait_for("SYNC-2", Duration::from_secs(30)).unwrap();
    let (s, v) = gw_call(
        &gw,
        &admin,
        "PATCH",
        "/api/iam/users/cal/",
        json!({"is_staff": false}),
    );
    assert_eq!(s, 200, "{v}");
    owner.write(b"echo AFTER-DEMOTION-$((7+7))\n").unwrap();
    owner
        .wait_for("AFTER-DEMOTION-14", Duration::from_secs(30))
        .unwrap();
    let status = watcher.wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success());

    // The owner's terminal went on through all of it.
    owner.write(b"exit\n").unwrap();
    owner.wait(Duration::from_secs(30)).unwrap();
}

/// `Gateway::call_as` with an optional body, unwrapped.
fn gw_call(gw: &Gateway, key: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    gw.call_as(key, method, path, (!body.is_null()).then_some(body))
        .unwrap()
}
