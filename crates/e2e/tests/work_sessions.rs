//! Work sessions end to end: no standing access where policy requires a
//! session; request, approve, use, scope, expiry, revocation, timeline.

use std::time::{Duration, Instant};

use alpacon_e2e::{is_root, json_of, login, ok, text, Agent, AgentOpts, Cli, Gateway, Interactive};
use serde_json::json;

const PW: &str = "alice's long password";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The TOTP code at unix time `at`, computed by oathtool.
fn oathtool(secret: &str, at: u64) -> String {
    let out = std::process::Command::new("oathtool")
        .args(["--totp", "-b", "-N", &format!("@{at}"), secret])
        .output()
        .expect("oathtool is installed (scripts/test installs it)");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn refused(cli: &Cli, args: &[&str], code: &str) {
    refused_with(cli, args, code, 3);
}

/// Refused with `exit` (3: denied by the gate; 4: awaiting approval).
fn refused_with(cli: &Cli, args: &[&str], code: &str, exit: i32) {
    let out = cli.run(args);
    assert_eq!(out.status.code(), Some(exit), "{args:?}: {}", text(&out));
    assert!(text(&out).contains(code), "{args:?}: {}", text(&out));
}

fn open_terminal(cli: &Cli, server: &str) -> Interactive {
    let mut c = cli.command();
    c.args(["websh", server]);
    let mut t = Interactive::spawn(c).unwrap();
    t.write(b"echo READY-$((6*7))\n").unwrap();
    t.wait_for("READY-42", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", t.stderr()));
    t
}

fn request(cli: &Cli, scope: &str, expires_in: &str) -> String {
    let v = json_of(
        cli,
        &[
            "work-session",
            "create",
            "--purpose",
            "INC-2384: restart auth-svc",
            "--server",
            "web-1",
            "--scope",
            scope,
            "--expires-in",
            expires_in,
        ],
    );
    assert_eq!(v["status"], "pending", "{v}");
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn nothing_reaches_a_server_without_an_active_session() {
    assert!(is_root(), "needs private mount namespaces");
    let mut gw = Gateway::start().unwrap();
    let opts = AgentOpts {
        private_namespace: true,
        setup: vec![],
        url: None,
    };
    let agent = Agent::register(&mut gw, "web-1", opts).unwrap();
    gw.wait_connected("web-1", true)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let admin = login(&gw, "admin", &gw.admin_password.clone());
    ok(&admin, &["user", "create", "alice", "--password", PW]);
    ok(&admin, &["group", "create", "ops"]);
    ok(&admin, &["group", "add-server", "ops", "web-1"]);
    ok(&admin, &["group", "member", "add", "ops", "alice"]);
    let (s, v) = gw
        .call(
            "PUT",
            "/api/work-sessions/policy/",
            Some(json!({"required_for": "members"})),
        )
        .unwrap();
    assert_eq!(s, 200, "{v}");

    // Without a session: refused by every route, exit code 3, with how to
    // request one.
    let alice = login(&gw, "alice", PW);
    refused(
        &alice,
        &["websh", "web-1", "id"],
        "needs an active work session",
    );
    refused(&alice, &["websh", "web-1"], "needs an active work session");
    std::fs::write(alice.dir.path().join("f"), "x").unwrap();
    refused(
        &alice,
        &["cp", "f", "web-1:/tmp/f"],
        "needs an active work session",
    );
    let out = alice.run(&["websh", "web-1", "id"]);
    assert!(
        text(&out).contains("alpacon work-session create"),
        "{}",
        text(&out)
    );

    // Requested: not usable while pending, nor approvable by the requester.
    let id = request(&alice, "websh,command", "4s");
    ok(&alice, &["work-session", "use", &id]);
    refused_with(&alice, &["websh", "web-1", "id"], "waiting for approval", 4);
    let out = alice.run(&["work-session", "approve", &id]);
    assert!(!out.status.success(), "{}", text(&out));

    // Approved: commands and terminals inside it; files are not in scope.
    let v = json_of(&admin, &["work-session", "approve", &id]);
    assert_eq!(v["status"], "active", "{v}");
    assert_eq!(ok(&alice, &["websh", "web-1", "id -un"]), "alice\n");
    refused(&alice, &["cp", "f", "web-1:/tmp/f"], "does not grant file");
    // Someone else's session is not yours to use.
    let out = admin.run(&["--work-session", &id, "websh", "web-1", "id"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // At expiry the live terminal ends.
    let mut t = open_terminal(&alice, "web-1");
    let status = t
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("terminal outlived its session: {e}"));
    assert!(!status.success());
    let v = json_of(&alice, &["work-session", "describe", &id]);
    assert_eq!(v["status"], "expired", "{v}");
    assert!(
        t.stderr().contains("work session expired"),
        "{}",
        t.stderr()
    );
    refused(&alice, &["websh", "web-1", "id"], "has ended");

    // Revocation ends a live terminal too.
    let id2 = request(&alice, "websh", "1h");
    ok(&admin, &["work-session", "approve", &id2]);
    ok(&alice, &["work-session", "use", &id2]);
    let mut t = open_terminal(&alice, "web-1");
    let since = Instant::now();
    ok(
        &admin,
        &["work-session", "revoke", &id2, "--reason", "done here"],
    );
    let status = t.wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    eprintln!(
        "terminal ended {} ms after revocation",
        since.elapsed().as_millis()
    );

    // One ordered timeline of the first session.
    let tl = json_of(&alice, &["work-session", "timeline", &id]);
    let kinds: Vec<String> = tl["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| match i["kind"].as_str() {
            Some("event") => i["action"].as_str().unwrap().to_string(),
            Some(k) => k.to_string(),
            None => String::new(),
        })
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k} missing from {kinds:?}"))
    };
    assert!(
        pos("work_session.request") < pos("work_session.approve"),
        "{kinds:?}"
    );
    assert!(
        pos("work_session.approve") <= pos("work_session.activate"),
        "{kinds:?}"
    );
    assert!(pos("work_session.activate") < pos("command"), "{kinds:?}");
    assert!(pos("command") < pos("terminal"), "{kinds:?}");
    assert!(pos("terminal") < pos("work_session.expired"), "{kinds:?}");
    let cmd = &tl["results"][pos("command")];
    assert_eq!(cmd["exit_code"], 0, "{cmd}");
    assert!(tl["results"][pos("terminal")]["recording"]
        .as_str()
        .unwrap()
        .contains("/recording/"));
    // Sudo only inside a session with the sudo scope: not in one without
    // it, and gone when the session ends.
    let id3 = request(&alice, "command", "1h");
    ok(&admin, &["work-session", "approve", &id3]);
    ok(&alice, &["work-session", "use", &id3]);
    let out = alice.run(&["websh", "web-1", "sudo -n id -u"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    ok(&alice, &["work-session", "complete", &id3]);

    // (limited to one command: sudo runs `id`, nothing else)
    let v = json_of(
        &alice,
        &[
            "work-session",
            "create",
            "--purpose",
            "INC-2385: check who we are",
            "--server",
            "web-1",
            "--scope",
            "command,sudo",
            "--sudo-command",
            "/usr/bin/id",
        ],
    );
    let id4 = v["id"].as_str().unwrap().to_string();
    // An approver with a second factor must have verified it recently:
    // carol enrolls TOTP in another login, so this one is not verified.
    ok(
        &admin,
        &[
            "user",
            "create",
            "carol",
            "--password",
            "carol's long password",
            "--staff",
        ],
    );
    let carol = login(&gw, "carol", "carol's long password");
    let carol2 = login(&gw, "carol", "carol's long password");
    let enrolled = json_of(&carol2, &["mfa", "totp", "enroll"]);
    let secret = enrolled["secret"].as_str().unwrap().to_string();
    let t = now_secs();
    ok(&carol2, &["mfa", "totp", "verify", &oathtool(&secret, t)]);
    let out = carol.run(&["work-session", "approve", &id4]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("mfa verify"), "{}", text(&out));
    ok(&carol, &["mfa", "verify", &oathtool(&secret, t + 30)]);
    let v = json_of(&carol, &["work-session", "approve", &id4]);
    assert_eq!(v["status"], "active", "{v}");
    // More time is asked for and approved again; nothing changes before.
    let before = v["expires_at"].as_str().unwrap().to_string();
    let v = json_of(&alice, &["work-session", "extend", &id4, "--by", "30m"]);
    assert_eq!(v["extension_requested_seconds"], 1800, "{v}");
    assert_eq!(v["expires_at"], before.as_str(), "{v}");
    let v = json_of(&carol, &["work-session", "approve-extension", &id4]);
    let after = chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    let before = chrono::DateTime::parse_from_rfc3339(&before).unwrap();
    assert_eq!((after - before).num_seconds(), 1800, "{v}");
    ok(&alice, &["work-session", "use", &id4]);
    // The grant travels to the agent on approval; wait until it is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = alice.run(&["websh", "web-1", "sudo -n id -u"]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sudo never worked: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = alice.run(&["websh", "web-1", "sudo -n true"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "only /usr/bin/id: {}",
        text(&out)
    );
    ok(&alice, &["work-session", "complete", &id4]);
    // Gone: the drop-in is removed (the agent checks with the next sync;
    // the session refuses commands at once anyway).
    let id5 = request(&alice, "command", "1h");
    ok(&admin, &["work-session", "approve", &id5]);
    ok(&alice, &["work-session", "use", &id5]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = alice.run(&[
            "websh",
            "web-1",
            "sudo -n true 2>/dev/null && echo SUDO-WORKS; ls /etc/sudoers.d",
        ]);
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        if !listing.contains("SUDO-WORKS") && !listing.contains("alpacon-") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sudo outlived its session: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The use was audited on the session's timeline, with the grant.
    let tl = json_of(&alice, &["work-session", "timeline", &id4]);
    let actions: Vec<&str> = tl["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["action"].as_str())
        .collect();
    for a in [
        "sudo.grant",
        "sudo.use",
        "sudo.revoke",
        "work_session.completed",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let used = tl["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["action"] == "sudo.use")
        .unwrap();
    assert!(
        used["detail"]["entry"]
            .as_str()
            .unwrap()
            .contains("COMMAND=/usr/bin/id"),
        "{used}"
    );

    // Files inside a session with the file scope; sudo that simply runs
    // out with its session is gone from the server too.
    let id6 = request(&alice, "command,file,sudo", "8s");
    ok(&admin, &["work-session", "approve", &id6]);
    ok(&alice, &["work-session", "use", &id6]);
    ok(&alice, &["cp", "f", "web-1:/tmp/from-alice"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !alice
        .run(&["websh", "web-1", "sudo -n id -u"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "sudo never worked in {id6}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while json_of(&alice, &["work-session", "describe", &id6])["status"] != "expired" {
        assert!(Instant::now() < deadline, "{id6} never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = admin.run(&[
        "websh",
        "-u",
        "root",
        "web-1",
        "ls /etc/sudoers.d; sudo -l -U alice | tail -1",
    ]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!listing.contains("alpacon-"), "{listing}");
    assert!(listing.contains("not allowed"), "{listing}");
    let tl = json_of(&alice, &["work-session", "timeline", &id6]);
    let transfer = tl["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "transfer")
        .unwrap_or_else(|| panic!("no transfer on {tl}"));
    assert_eq!(transfer["path"], "/tmp/from-alice");
    assert_eq!(transfer["status"], "completed");

    // Another member never sees it.
    ok(
        &admin,
        &["user", "create", "bob", "--password", "bob's long password"],
    );
    let bob = login(&gw, "bob", "bob's long password");
    let out = bob.run(&["work-session", "timeline", &id]);
    assert!(!out.status.success(), "{}", text(&out));
}
