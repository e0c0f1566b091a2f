//! The foundation, end to end: real gateway, real agent, real CLI, real curl.

use std::process::Command;
use std::time::Duration;

use alpacon_e2e::{
    bin, is_root, peak_rss, run_measured, sha256_file, text, write_big_file, Agent, AgentOpts, Cli,
    Gateway,
};
use serde_json::{json, Value};

/// A stand-in for the docker CLI on the test server: it records how it was
/// called (arguments, working directory, account) and answers like
/// `docker compose up -d` or `docker ps` would.
const FAKE_DOCKER: &str = r#"#!/bin/sh
{ echo "argv: $*"; echo "cwd: $(pwd)"; echo "user: $(id -un)"; } >> /opt/docker-calls
if [ "$1" = compose ]; then
  echo " Container my-app-web-1  Started"
else
  echo "CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    PORTS     NAMES"
fi
"#;

/// An agent in a private namespace where the accounts the product docs use
/// exist (`admin` for the admin's own commands, `docker` from the REST
/// example), `/opt/my-app` belongs to admin and `docker` is the stand-in
/// above (on a tmpfs over /usr/local/bin, so the host is untouched).
fn docs_agent(gw: &mut Gateway, name: &str) -> Agent {
    assert!(
        is_root(),
        "these tests need root (private mount namespace, useradd)"
    );
    let stub = gw.dir.path().join(format!("docker-{name}"));
    std::fs::write(&stub, FAKE_DOCKER).unwrap();
    let opts = AgentOpts {
        private_namespace: true,
        setup: vec![
            // `admin` is provisioned by the agent on first use, with the
            // central UID the gateway gave it (the first person: 20000).
            "useradd -m -s /bin/sh docker".into(),
            "mkdir -p /opt/my-app".into(),
            "chown 20000:20000 /opt/my-app".into(),
            "mount -t tmpfs tmpfs /usr/local/bin".into(),
            format!("install -m 755 '{}' /usr/local/bin/docker", stub.display()),
            "touch /opt/docker-calls && chmod 666 /opt/docker-calls".into(),
        ],
        url: None,
    };
    let agent = Agent::register(gw, name, opts).expect("register agent");
    gw.wait_connected(name, true)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    agent
}

#[test]
fn cicd_flow_from_the_docs() {
    let mut gw = Gateway::start().unwrap();
    let _agent = docs_agent(&mut gw, "prod-docker");
    let token = gw.admin_api_token("ci").unwrap();
    assert!(token.starts_with("alpat-"), "{token}");

    let cli = Cli::new().unwrap();
    // The documented login line, with a workspace path in the URL.
    let ca = gw.ca();
    let out = cli.run(&[
        "login",
        &format!("{}/my-workspace", gw.url),
        "-t",
        &token,
        "--ca-cert",
        ca.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // Credentials are private to the user.
    let mode = std::fs::metadata(cli.config()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let work = cli.dir.path();
    std::fs::write(
        work.join("docker-compose.yml"),
        "services:\n  web:\n    image: nginx:alpine\n    env_file: .env\n",
    )
    .unwrap();
    std::fs::write(work.join(".env"), "APP_ENV=production\nAPP_PORT=8080\n").unwrap();

    let out = cli.run(&["cp", "docker-compose.yml", "prod-docker:/opt/my-app/"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli.run(&["cp", ".env", "prod-docker:/opt/my-app/"]);
    assert!(out.status.success(), "{}", text(&out));

    // The documented deploy line runs, with its words as given.
    let out = cli.run(&[
        "websh",
        "prod-docker",
        "docker",
        "compose",
        "-p",
        "my-app",
        "--env-file",
        ".env",
        "up",
        "-d",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        " Container my-app-web-1  Started\n"
    );

    // The files arrived intact, owned by the person who sent them.
    let out = cli.run(&[
        "websh",
        "prod-docker",
        "cd /opt/my-app && cat .env && stat -c '%U %n' docker-compose.yml .env",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("APP_ENV=production\nAPP_PORT=8080\n"),
        "{stdout}"
    );
    assert!(stdout.contains("admin docker-compose.yml"), "{stdout}");
    assert!(stdout.contains("admin .env"), "{stdout}");
    // docker got exactly the documented arguments, as the admin's account.
    let out = cli.run(&["websh", "prod-docker", "cat", "/opt/docker-calls"]);
    let calls = String::from_utf8_lossy(&out.stdout);
    assert!(
        calls.contains("argv: compose -p my-app --env-file .env up -d\n"),
        "{calls}"
    );
    assert!(calls.contains("user: admin\n"), "{calls}");

    // Everything above is in the audit log, attributed to the token.
    let (s, v) = gw
        .call("GET", "/api/audit/events/?page_size=100", None)
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let events = v["results"].as_array().unwrap();
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    for a in [
        "auth.login",
        "token.create",
        "server.register",
        "file.upload",
        "command.run",
        "command.finish",
    ] {
        assert!(actions.contains(&a), "no {a} in {actions:?}");
    }
    let upload = events
        .iter()
        .find(|e| e["action"] == "file.upload" && e["detail"]["path"] == "/opt/my-app/.env")
        .expect("upload event for .env");
    assert_eq!(upload["token"], "ci");
    assert_eq!(upload["detail"]["bytes"], 33);
    assert_eq!(
        upload["detail"]["sha256"].as_str().unwrap(),
        sha256_file(&work.join(".env")).unwrap()
    );
    let finish = events
        .iter()
        .find(|e| {
            e["action"] == "command.finish"
                && e["detail"]["line"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("docker compose"))
        })
        .expect("command.finish event with exit code");
    assert!(finish["detail"]["line"]
        .as_str()
        .unwrap()
        .starts_with("docker compose -p my-app"));

    // `alpacon audit ls` shows the same trail.
    let out = cli.run(&["audit", "ls", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.as_array().map(|a| !a.is_empty()).unwrap_or(false));
}

#[test]
fn rest_example_verbatim_with_curl() {
    let mut gw = Gateway::start().unwrap();
    let _agent = docs_agent(&mut gw, "prod-docker");
    let token = gw.admin_api_token("curl").unwrap();
    let server = gw.server("prod-docker").unwrap();
    let uuid = server["id"].as_str().unwrap();
    let ca = gw.ca();
    let commands_url = gw.api("/api/events/commands/");
    let whoami_url = gw.api("/api/auth/whoami/");

    let run = |line: &str| -> Value {
        let body = format!(r#"{{"server": "{uuid}", "line": "{line}", "username": "docker"}}"#);
        let out = Command::new("curl")
            .args(["-sS", "--cacert", ca.to_str().unwrap()])
            .args(["-X", "POST", &commands_url])
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", &format!("Authorization: Token {token}")])
            .args(["-d", &body])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)))
    };

    let created = run("docker ps");
    assert_eq!(created["line"], "docker ps", "{created}");
    assert_eq!(created["username"], "docker");
    let id = created["id"].as_str().unwrap().to_string();
    let done = gw.wait_command(&id, Duration::from_secs(30)).unwrap();
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert!(
        done["output"].as_str().unwrap().starts_with("CONTAINER ID"),
        "{done}"
    );

    // A command that exists shows it really ran as `docker`.
    let created = run("id -un; echo $HOME; pwd");
    let done = gw
        .wait_command(created["id"].as_str().unwrap(), Duration::from_secs(30))
        .unwrap();
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(done["output"], "docker\n/home/docker\n/home/docker\n");
    assert!(done["elapsed_ms"].is_number());

    // All three Authorization spellings work.
    for header in [
        format!("Token {token}"),
        format!("token=\"{token}\""),
        format!("Bearer {token}"),
    ] {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--cacert", ca.to_str().unwrap()])
            .args(["-H", &format!("Authorization: {header}")])
            .arg(&whoami_url)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{header}");
    }
}

#[test]
fn exit_codes_propagate_and_errors_are_clear() {
    let mut gw = Gateway::start().unwrap();
    let mut agent = docs_agent(&mut gw, "box");
    let cli = Cli::new().unwrap();
    let token = gw.admin_api_token("cli").unwrap();
    cli.login_token(&gw, &token).unwrap();

    let out = cli.run(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 42",
    ]);
    assert_eq!(out.status.code(), Some(42), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nerr\n");
    let out = cli.run(&["websh", "box", "false"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = cli.run(&["websh", "-u", "docker", "box", "id", "-un"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "docker\n");
    // Output streams while the command runs.
    let out = cli.run(&[
        "websh",
        "box",
        "for i in 1 2 3; do echo $i; sleep 0.2; done",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n3\n");

    // Unknown server: a clear error that says what to do.
    let out = cli.run(&["websh", "nope", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("server ls"), "{err}");

    // Unknown account on the server.
    let out = cli.run(&["websh", "-u", "ghost", "box", "true"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ghost"),
        "{}",
        text(&out)
    );

    // Bad API token: refused with a JSON error, by the API and by the CLI.
    let (s, v) = gw
        .call_as("alpat-bogus", "GET", "/api/servers/servers/", None)
        .unwrap();
    assert_eq!(s, 401);
    assert_eq!(v["code"], "invalid_token", "{v}");
    let (s, v) = gw
        .call_as("", "GET", "/api/servers/servers/", None)
        .unwrap();
    assert_eq!(s, 401, "{v}");
    let other = Cli::new().unwrap();
    let ca = gw.ca();
    let out = other.run(&[
        "login",
        &gw.url,
        "-t",
        "alpat-bogus",
        "--ca-cert",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        !other.config().exists(),
        "a failed login must not store anything"
    );

    // Bad registration token: refused, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alpamon.toml");
    let out = Command::new(alpacon_e2e::bin("alpamon"))
        .args([
            "register",
            "--url",
            &gw.url,
            "--token",
            "alprt-bogus",
            "--name",
            "evil",
        ])
        .arg("--ca-cert")
        .arg(&ca)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registration token"),
        "{}",
        text(&out)
    );
    assert!(!config.exists());
    assert!(gw.server("evil").is_err());

    // A registration token is single-use by default.
    let key = gw.registration_token("once").unwrap();
    let reg = |name: &str| {
        let d = tempfile::tempdir().unwrap();
        Command::new(alpacon_e2e::bin("alpamon"))
            .args([
                "register", "--url", &gw.url, "--token", &key, "--name", name,
            ])
            .arg("--ca-cert")
            .arg(&ca)
            .arg("--config")
            .arg(d.path().join("a.toml"))
            .output()
            .unwrap()
    };
    assert!(reg("first").status.success());
    assert!(!reg("second").status.success());

    // The server list shows the agent's state live.
    let out = cli.run(&["server", "ls", "--output", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "box")
        .unwrap();
    assert_eq!(b["is_connected"], true);
    agent.stop();
    gw.wait_connected("box", false).unwrap();
}

#[test]
fn queued_command_runs_when_the_agent_comes_back() {
    let mut gw = Gateway::start().unwrap();
    let mut agent = docs_agent(&mut gw, "later");
    agent.stop();
    gw.wait_connected("later", false).unwrap();

    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": "later", "line": "echo ran as $(id -un)", "username": "docker"})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "queued");
    let id = v["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(500));
    let (_, v) = gw
        .call("GET", &format!("/api/events/commands/{id}/"), None)
        .unwrap();
    assert_eq!(v["status"], "queued");

    agent.start().unwrap();
    let done = gw.wait_command(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(done["output"], "ran as docker\n", "{done}");
    assert_eq!(done["exit_code"], 0);
}

#[test]
fn result_survives_a_gateway_restart_mid_command() {
    let mut gw = Gateway::start().unwrap();
    let _agent = docs_agent(&mut gw, "steady");
    let cli = Cli::new().unwrap();
    let token = gw.admin_api_token("cli").unwrap();
    cli.login_token(&gw, &token).unwrap();

    // The CLI follows the command across the restart.
    let child = cli
        .command()
        .args(["websh", "steady", "echo start; sleep 4; echo done; exit 7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it start, then take the gateway away while it runs.
    std::thread::sleep(Duration::from_millis(1500));
    gw.stop();
    std::thread::sleep(Duration::from_millis(1000));
    gw.restart().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}\n{}", text(&out), gw.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "start\ndone\n",
        "{}",
        text(&out)
    );

    // And the stored result is complete.
    let (_, v) = gw
        .call("GET", "/api/events/commands/?server=steady", None)
        .unwrap();
    let cmd = &v["results"][0];
    assert_eq!(cmd["status"], "finished", "{v}");
    assert_eq!(cmd["output"], "start\ndone\n");
    assert_eq!(cmd["exit_code"], 7);
}

#[test]
fn copy_one_gib_both_ways() {
    let mut gw = Gateway::start().unwrap();
    let agent = docs_agent(&mut gw, "bulk");
    let cli = Cli::new().unwrap();
    let token = gw.admin_api_token("cli").unwrap();
    cli.login_token(&gw, &token).unwrap();

    let src = cli.dir.path().join("big.bin");
    write_big_file(&src, 1 << 30).unwrap();
    let want = sha256_file(&src).unwrap();

    // Memory stays bounded whatever the file size: each process holds a few
    // windows of data, never the file. The bound stated here (64 MiB of peak
    // RSS per process for a 1 GiB file) leaves room for the allocator.
    const BOUND: u64 = 64 << 20;
    let mut up = cli.command();
    up.args(["cp", "big.bin", "bulk:/opt/my-app/big.bin"]);
    let (out, cli_up) = run_measured(up).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let back = cli.dir.path().join("back.bin");
    let mut down = cli.command();
    down.args(["cp", "bulk:/opt/my-app/big.bin", back.to_str().unwrap()]);
    let (out, cli_down) = run_measured(down).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let gw_peak = peak_rss(gw.pid().unwrap()).unwrap();
    let agent_peak = peak_rss(agent.pid().unwrap()).unwrap();
    for (who, peak) in [
        ("cli upload", cli_up),
        ("cli download", cli_down),
        ("gateway", gw_peak),
        ("agent", agent_peak),
    ] {
        assert!(peak > 0 && peak < BOUND, "{who} peaked at {peak} bytes");
    }
    std::fs::remove_file(&src).unwrap();
    assert_eq!(sha256_file(&back).unwrap(), want);
    assert_eq!(std::fs::metadata(&back).unwrap().len(), 1 << 30);

    // The gateway recorded the same checksum for both transfers.
    let (_, v) = gw
        .call("GET", "/api/audit/events/?action=file.download", None)
        .unwrap();
    assert_eq!(v["results"][0]["detail"]["sha256"], want.as_str(), "{v}");
}

#[test]
fn plain_http1_download_is_verifiable() {
    let mut gw = Gateway::start().unwrap();
    let _agent = docs_agent(&mut gw, "h1");
    let token = gw.admin_api_token("h1").unwrap();
    let ca = gw.ca();
    for (name, content) in [("empty", ""), ("small", "hello\n")] {
        let (s, v) = gw
            .call(
                "POST",
                "/api/events/commands/",
                Some(json!({"server": "h1", "username": "root",
                            "line": format!("printf '{content}' > /opt/{name}")})),
            )
            .unwrap();
        assert_eq!(s, 201, "{v}");
        gw.wait_command(v["id"].as_str().unwrap(), Duration::from_secs(30))
            .unwrap();
        let out = Command::new("curl")
            .args([
                "-sS",
                "--http1.1",
                "-D",
                "-",
                "--cacert",
                ca.to_str().unwrap(),
            ])
            .args(["-H", &format!("Authorization: Token {token}")])
            .arg(gw.api(&format!(
                "/api/webftp/download/?server=h1&username=root&path=/opt/{name}"
            )))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let resp = String::from_utf8_lossy(&out.stdout);
        assert!(
            resp.ends_with(&format!("\r\n\r\n{}", content.replace("\\n", "\n"))),
            "{resp}"
        );
        let id = resp
            .lines()
            .find_map(|l| l.strip_prefix("x-alpacon-transfer-id: "))
            .unwrap()
            .trim();
        let (s, t) = gw
            .call("GET", &format!("/api/webftp/transfers/{id}/"), None)
            .unwrap();
        assert_eq!(s, 200, "{t}");
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["sha256"].as_str().unwrap().len(), 64, "{t}");
    }
}

#[test]
fn quickstart_prints_a_working_login_line() {
    assert!(is_root(), "the quickstart agent runs commands as root here");
    let dir = tempfile::tempdir().unwrap();
    let port = alpacon_e2e::free_port();
    let mut child = Command::new(bin("alpacon-server"))
        .arg("quickstart")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let login = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no login line in {printed:#?}"));
        if line.trim_start().starts_with("alpacon login ") {
            break line.trim().to_string();
        }
        printed.push(line);
    };
    let all = printed.join("\n");
    assert!(all.contains("https://"), "{all}");
    assert!(all.contains("ca.crt"), "{all}");
    let password = std::fs::read_to_string(dir.path().join("data/initial-admin-password")).unwrap();
    assert!(
        all.contains(password.trim()),
        "the one-time password is printed: {all}"
    );

    // Paste the line as printed (through a shell, as a person would).
    let cli = Cli::new().unwrap();
    let mut sh = Command::new("sh");
    sh.env("ALPACON_CONFIG", cli.config())
        .env(
            "PATH",
            format!(
                "{}:{}",
                alpacon_e2e::bin_dir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args(["-c", &login]);
    let out = sh.output().unwrap();
    assert!(out.status.success(), "{login}: {}", text(&out));

    // The local agent is there and answers.
    let out = cli.run(&["server", "ls", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let servers: Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = servers[0]["name"].as_str().unwrap().to_string();
    let mut connected = false;
    for _ in 0..100 {
        let out = cli.run(&["server", "ls", "--output", "json"]);
        let servers: Value = serde_json::from_slice(&out.stdout).unwrap();
        if servers[0]["is_connected"] == true {
            connected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(connected, "the quickstart agent did not connect");
    let out = cli.run(&[
        "websh",
        "-u",
        "root",
        &name,
        "echo",
        "hello from quickstart",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from quickstart\n",
        "{}",
        text(&out)
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn cp_errors_are_clear_and_change_nothing() {
    let mut gw = Gateway::start().unwrap();
    let _agent = docs_agent(&mut gw, "files");
    let cli = Cli::new().unwrap();
    let token = gw.admin_api_token("cli").unwrap();
    cli.login_token(&gw, &token).unwrap();
    let work = cli.dir.path();

    // Missing local source.
    let out = cli.run(&["cp", "missing.txt", "files:/opt/my-app/"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.txt"));

    // A directory without -r.
    std::fs::create_dir_all(work.join("tree/sub")).unwrap();
    std::fs::write(work.join("tree/a.txt"), "a").unwrap();
    std::fs::write(work.join("tree/sub/b.txt"), "bb").unwrap();
    let out = cli.run(&["cp", "tree", "files:/opt/my-app/"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-r"),
        "{}",
        text(&out)
    );

    // With -r the tree arrives, and comes back.
    let out = cli.run(&["cp", "-r", "tree", "files:/opt/my-app/"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli.run(&["cp", "-r", "files:/opt/my-app/tree", "copy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(work.join("copy/sub/b.txt")).unwrap(),
        "bb"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("copy/a.txt")).unwrap(),
        "a"
    );

    // Missing remote path.
    let out = cli.run(&["cp", "files:/opt/my-app/nope.txt", "x.txt"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!work.join("x.txt").exists());

    // An existing file the account may not overwrite: refused, unchanged.
    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": "files", "line": "echo precious > /opt/my-app/root-owned && chmod 644 /opt/my-app/root-owned", "username": "root"})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    gw.wait_command(v["id"].as_str().unwrap(), Duration::from_secs(30))
        .unwrap();
    std::fs::write(work.join("evil.txt"), "overwritten").unwrap();
    let out = cli.run(&["cp", "evil.txt", "files:/opt/my-app/root-owned"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ermission denied"),
        "{}",
        text(&out)
    );
    let out = cli.run(&["websh", "files", "cat /opt/my-app/root-owned"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "precious\n");
}

#[test]
fn bad_command_input_is_refused() {
    let mut gw = Gateway::start().unwrap();
    let _agent = docs_agent(&mut gw, "guarded");
    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": "guarded", "line": "id", "username": "nosuchperm", "env": {"BAD-KEY": "x"}})),
        )
        .unwrap();
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "invalid");
    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": "guarded", "line": ""})),
        )
        .unwrap();
    assert_eq!(s, 400, "{v}");
    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": "guarded", "line": "id", "username": "root;id"})),
        )
        .unwrap();
    assert_eq!(s, 400, "{v}");
    let (s, v) = gw
        .call("POST", "/api/events/commands/", Some(json!({"line": "id"})))
        .unwrap();
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "invalid");
    let (s, v) = gw
        .call("GET", "/api/events/commands/?page_size=100", None)
        .unwrap();
    assert_eq!(s, 200);
    assert_eq!(v["count"], 0, "refused commands are not stored: {v}");
}

#[test]
fn works_on_postgresql_too() {
    let pg = alpacon_e2e::pg::Postgres::start().unwrap();
    let mut gw = Gateway::start_with(Some(pg.url())).unwrap();
    let _agent = docs_agent(&mut gw, "pg-box");
    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": "pg-box", "line": "printf 'bin\\000ary'", "username": "docker"})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let done = gw
        .wait_command(v["id"].as_str().unwrap(), Duration::from_secs(30))
        .unwrap();
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(done["output"], "bin\u{0}ary");
    let (s, v) = gw.call("GET", "/api/audit/events/", None).unwrap();
    assert_eq!(s, 200);
    assert!(v["count"].as_i64().unwrap() > 3, "{v}");
    // Restart on the same database: data and the admin are still there.
    gw.restart().unwrap();
    let (s, v) = gw.call("GET", "/api/servers/servers/", None).unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["count"], 1);
}

#[test]
fn install_one_liner_registers_and_starts_the_agent() {
    assert!(is_root(), "needs a private mount namespace");
    let mut gw = Gateway::start().unwrap();
    let (s, v) = gw
        .call(
            "POST",
            "/api/servers/registration-tokens/",
            Some(json!({"name": "fleet"})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let install = v["install_command"].as_str().unwrap().to_string();

    // A throwaway "machine": private /etc, /usr/local/bin and /var/lib, with
    // stand-ins for sudo and systemctl (the latter starts the unit's
    // ExecStart in the background and records its pid).
    let root = tempfile::tempdir().unwrap();
    let r = root.path().display().to_string();
    let script = format!(
        r#"set -e
cp -a /etc '{r}/etc' && mount --bind '{r}/etc' /etc
mount -t tmpfs tmpfs /usr/local/bin && mount -t tmpfs tmpfs /var/lib
printf '#!/bin/sh\nexec "$@"\n' > /usr/local/bin/sudo
cat > /usr/local/bin/systemctl <<'STUB'
#!/bin/sh
if [ "$1" = enable ]; then
  cmd=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/alpamon.service)
  setsid $cmd > '{r}/agent.log' 2>&1 < /dev/null &
  echo $! > '{r}/agent.pid'
fi
STUB
chmod 755 /usr/local/bin/sudo /usr/local/bin/systemctl
export PATH=/usr/local/bin:$PATH
{install}
"#
    );
    // The installer names the server after `hostname`: a private UTS
    // namespace gives it a stable one.
    let out = Command::new("unshare")
        .args(["--mount", "--uts", "--propagation", "private", "sh", "-c"])
        .arg(format!("hostname installed-box && {script}"))
        .output()
        .unwrap();
    let pid: Option<i32> = std::fs::read_to_string(root.path().join("agent.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let kill_agent = || {
        if let Some(p) = pid {
            // SAFETY: plain kill(2) on a pid we started.
            unsafe { libc::kill(p, libc::SIGTERM) };
        }
    };
    if !out.status.success() {
        kill_agent();
        panic!("install failed: {}", text(&out));
    }
    let stdout =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let connected = gw.wait_connected("installed-box", true);
    if let Err(e) = connected {
        kill_agent();
        let log = std::fs::read_to_string(root.path().join("agent.log")).unwrap_or_default();
        panic!("{e}\ninstaller said: {stdout}\nagent log: {log}");
    }
    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": "installed-box", "line": "cat /etc/alpamon/alpamon.toml | grep -c server_id", "username": "root"})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let done = gw
        .wait_command(v["id"].as_str().unwrap(), Duration::from_secs(30))
        .unwrap();
    kill_agent();
    assert_eq!(done["output"], "1\n", "{done}");
    assert!(
        stdout.contains("alpamon is installed and running"),
        "{stdout}"
    );
}
