//! People and groups end to end: a member reaches exactly their groups'
//! servers, as their own account; leaving the group or being disabled ends
//! a live terminal at once; invitations work once.

use std::time::{Duration, Instant};

use alpacon_e2e::{is_root, json_of, login, ok, text, Agent, AgentOpts, Cli, Gateway, Interactive};
use serde_json::{json, Value};

const PW: &str = "alice's long password";

fn agent(gw: &mut Gateway, name: &str) -> Agent {
    let opts = AgentOpts {
        private_namespace: true,
        setup: vec![],
        url: None,
    };
    let a = Agent::register(gw, name, opts).unwrap();
    gw.wait_connected(name, true)
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    a
}

/// Opens a terminal as the CLI user and waits until the shell answers.
fn open_terminal(cli: &Cli, server: &str) -> Interactive {
    let mut c = cli.command();
    c.args(["websh", server]);
    let mut t = Interactive::spawn(c).unwrap();
    t.write(b"echo READY-$((6*7))\n").unwrap();
    t.wait_for("READY-42", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", t.stderr()));
    t
}

/// Waits for the terminal's CLI to exit and says how long that took from
/// `since` (reported, not asserted: timing is measured in bench/).
fn ended(t: &mut Interactive, since: Instant, what: &str) {
    let status = t
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what}: the terminal did not end: {e}"));
    assert!(!status.success(), "{what}: {}", t.stderr());
    assert!(t.stderr().contains("ended:"), "{what}: {}", t.stderr());
    eprintln!(
        "{what}: terminal ended {} ms after the change",
        since.elapsed().as_millis()
    );
}

#[test]
fn members_reach_their_groups_servers_and_lose_them_at_once() {
    assert!(is_root(), "needs private mount namespaces");
    let mut gw = Gateway::start().unwrap();
    let _web = agent(&mut gw, "web-1");
    let _db = agent(&mut gw, "db-1");
    let admin = login(&gw, "admin", &gw.admin_password.clone());

    let u = json_of(&admin, &["user", "create", "alice", "--password", PW]);
    let uid = u["uid"].as_i64().unwrap();
    assert!(uid >= 20_000, "{u}");
    let g = json_of(&admin, &["group", "create", "ops"]);
    assert!(g["gid"].as_i64().unwrap() >= 50_000, "{g}");
    ok(&admin, &["group", "add-server", "ops", "web-1"]);

    // Not in a group yet: no server at all.
    let alice = login(&gw, "alice", PW);
    let servers = json_of(&alice, &["server", "ls"]);
    assert_eq!(servers.as_array().unwrap().len(), 0, "{servers}");
    let out = alice.run(&["websh", "web-1", "id"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no server named"), "{}", text(&out));

    ok(&admin, &["group", "member", "add", "ops", "alice"]);
    let members = json_of(&admin, &["group", "member", "ls", "ops"]);
    assert_eq!(members[0]["username"], "alice", "{members}");
    assert_eq!(members[0]["role"], "member", "{members}");
    let servers = json_of(&alice, &["server", "ls"]);
    let names: Vec<&str> = servers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["web-1"]);

    // Their group's server, as their own account with their central UID.
    let out = ok(&alice, &["websh", "web-1", "id -u; id -un"]);
    assert_eq!(out, format!("{uid}\nalice\n"));
    // Not another server, not another account, by any route.
    for args in [
        vec!["websh", "db-1", "id"],
        vec!["websh", "-u", "root", "web-1", "id"],
    ] {
        let out = alice.run(&args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
    }
    std::fs::write(alice.dir.path().join("f"), "x").unwrap();
    let out = alice.run(&["cp", "f", "db-1:/tmp/f"]);
    assert!(!out.status.success(), "{}", text(&out));
    let (s, v) = gw
        .call(
            "GET",
            "/api/audit/events/?action=command.run&page_size=100",
            None,
        )
        .unwrap();
    assert_eq!(s, 200);
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["result"] == "error" && e["server_name"] == "db-1"),
        "{v}"
    );

    // Leaving the group ends the live terminal.
    let mut t = open_terminal(&alice, "web-1");
    let since = Instant::now();
    ok(&admin, &["group", "member", "delete", "ops", "alice"]);
    ended(&mut t, since, "removed from the group");
    let out = alice.run(&["websh", "web-1", "id"]);
    assert!(!out.status.success(), "{}", text(&out));

    // Disabling the user ends the terminal and their API session.
    ok(&admin, &["group", "member", "add", "ops", "alice"]);
    let mut t = open_terminal(&alice, "web-1");
    let since = Instant::now();
    ok(&admin, &["user", "disable", "alice"]);
    ended(&mut t, since, "user disabled");
    let out = alice.run(&["server", "ls"]);
    assert!(!out.status.success(), "{}", text(&out));
    let (_, v) = gw
        .call("GET", "/api/audit/events/?action=user.disable", None)
        .unwrap();
    let ev = &v["results"][0];
    assert_eq!(ev["detail"]["ended"]["terminals"], 1, "{v}");
    assert!(
        ev["detail"]["ended"]["api_sessions"].as_u64().unwrap() >= 1,
        "{v}"
    );

    // A disabled user cannot log in; enabled again, they can.
    let cli = Cli::new().unwrap();
    let out = cli.run(&[
        "login",
        &gw.url,
        "-u",
        "alice",
        "-p",
        PW,
        "--ca-cert",
        gw.ca().to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    ok(&admin, &["user", "enable", "alice"]);
    let alice = login(&gw, "alice", PW);
    let out = ok(&alice, &["websh", "web-1", "id -un"]);
    assert_eq!(out, "alice\n");

    // A member cannot manage groups or users.
    for args in [
        vec!["group", "create", "mine"],
        vec!["group", "add-server", "ops", "db-1"],
        vec!["user", "create", "mallory", "--password", "0123456789ab"],
        vec!["user", "disable", "admin"],
    ] {
        let out = alice.run(&args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
    }

    // A service identity: no password, an `alpst-` token, its own account.
    ok(&admin, &["user", "create", "deployer", "--service"]);
    ok(&admin, &["group", "member", "add", "ops", "deployer"]);
    let tok = json_of(
        &admin,
        &["token", "create", "--name", "ci", "--service", "deployer"],
    );
    let key = tok["key"].as_str().unwrap();
    assert!(key.starts_with("alpst-"), "{tok}");
    let svc = Cli::new().unwrap();
    svc.login_token(&gw, key).unwrap();
    assert_eq!(ok(&svc, &["websh", "web-1", "id -un"]), "deployer\n");
    let out = svc.run(&["websh", "db-1", "id"]);
    assert!(!out.status.success(), "{}", text(&out));
    let tokens = json_of(&admin, &["token", "ls"]);
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "ci" && t["owner"] == "deployer"),
        "{tokens}"
    );
    let r = gw
        .http()
        .post(gw.api("/api/auth/login/"))
        .json(&json!({"username": "deployer", "password": "!"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Deleting the identity's token ends its access.
    ok(&admin, &["token", "delete", "ci"]);
    let out = svc.run(&["websh", "web-1", "id"]);
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn an_invitation_link_works_once() {
    let gw = Gateway::start().unwrap();
    let admin = login(&gw, "admin", &gw.admin_password.clone());
    ok(&admin, &["group", "create", "dev"]);
    let inv = json_of(
        &admin,
        &[
            "user",
            "invite",
            "--email",
            "bob@example.com",
            "--group",
            "dev",
        ],
    );
    let url = inv["url"].as_str().unwrap().to_string();
    let key = url.rsplit('/').next().unwrap().to_string();
    assert!(key.starts_with("alpinv-"), "{url}");
    assert!(url.starts_with(&gw.url), "{url}");

    // The link opens a page; the API says who invited and to what.
    let page = gw.http().get(&url).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().unwrap().contains("Join Alpacon"));
    let peek: Value = gw
        .http()
        .get(gw.api(&format!("/api/iam/invitations/accept/?key={key}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(peek["group"], "dev", "{peek}");
    assert_eq!(peek["invited_by"], "admin", "{peek}");

    let accept = |username: &str| {
        let r = gw
            .http()
            .post(gw.api("/api/iam/invitations/accept/"))
            .json(&json!({"key": key, "username": username, "password": "bob's long password"}))
            .send()
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().unwrap_or(Value::Null))
    };
    let (s, v) = accept("bob");
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["email"], "bob@example.com");
    let (s, v) = accept("bob2");
    assert_eq!(s, 410, "{v}");
    assert_eq!(v["code"], "invitation_unusable");

    let bob = login(&gw, "bob", "bob's long password");
    let me = json_of(&bob, &["user", "describe", "me"]);
    assert_eq!(me["groups"][0]["group"], "dev", "{me}");
    // A made-up key is refused the same clear way.
    let r = gw
        .http()
        .get(gw.api("/api/iam/invitations/accept/?key=alpinv-nope"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
