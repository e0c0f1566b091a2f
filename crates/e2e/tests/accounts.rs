//! Managed accounts end to end ("connect as yourself"): a person's first
//! access to a server creates their passwordless account with their central
//! UID/GID and groups; files they upload are theirs; disabling them locks
//! the account; an unmanaged local account of the same name is not taken
//! over.
//!
//! The agent runs in a private mount namespace (copied /etc, tmpfs /home),
//! so `useradd` there does not touch the host. The test looks inside through
//! commands the admin runs as root.

use std::time::Duration;

use alpacon_e2e::{is_root, login, text, wait_for, Agent, AgentOpts, Gateway, Interactive};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Runs `line` as root on `server` (as the admin) and returns its output.
fn root(gw: &mut Gateway, server: &str, line: &str) -> String {
    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": server, "line": line, "username": "root"})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let done = gw
        .wait_command(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(done["exit_code"], 0, "{line}: {done}");
    done["output"].as_str().unwrap_or_default().to_string()
}

fn created(gw: &mut Gateway, path: &str, body: Value) -> Value {
    let (s, v) = gw.call("POST", path, Some(body.clone())).unwrap();
    assert_eq!(s, 201, "POST {path} {body}: {v}");
    v
}

/// Field `n` (0-based) of alice's line in a colon-separated file.
fn field(line: &str, n: usize) -> String {
    line.trim()
        .split(':')
        .nth(n)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn accounts_are_provisioned_owned_locked_and_never_taken_over() {
    assert!(is_root(), "needs root: private mount namespace, useradd");
    let mut gw = Gateway::start().unwrap();
    let agent = Agent::register(
        &mut gw,
        "acct",
        AgentOpts {
            private_namespace: true,
            setup: vec![
                // An unmanaged local account that a person of the same name
                // must not take over.
                "useradd -m -u 1500 -s /bin/sh mallory".into(),
                // A system group with the name of an Alpacon group: never
                // joined by a managed account.
                "(getent group docker >/dev/null || groupadd -g 990 docker)".into(),
                "mkdir -p /etc/ssh/sshd_config.d".into(),
                "rm -f /etc/ssh/sshd_config.d/alpacon.conf".into(),
            ],
            url: None,
        },
    )
    .unwrap();
    gw.wait_connected("acct", true)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));

    // A person (a member, not an admin) in two groups that reach the server.
    let alice = created(
        &mut gw,
        "/api/iam/users/",
        json!({"username": "alice", "password": "alice-password-1",
               "full_name": "Alice Example", "shell": "/bin/bash"}),
    );
    let uid = alice["uid"].as_u64().expect("users have a UID");
    let web = created(&mut gw, "/api/iam/groups/", json!({"name": "web"}));
    let web_gid = web["gid"].as_u64().expect("groups have a GID");
    created(
        &mut gw,
        "/api/iam/groups/web/servers/",
        json!({"server": "acct"}),
    );
    // A group may no longer take a system name...
    let (s, v) = gw
        .call("POST", "/api/iam/groups/", Some(json!({"name": "docker"})))
        .unwrap();
    assert_eq!(s, 400, "{v}");
    // ...but one made before names were reserved must still give nothing.
    gw.exec_sql(
        "INSERT INTO iam_groups (id, name, gid, created_at)
         SELECT 'legacy-docker', 'docker', MAX(gid) + 1, 0 FROM iam_groups",
        &[],
    )
    .unwrap();
    let mut memberships = vec![];
    for g in ["web", "docker"] {
        let m = created(
            &mut gw,
            "/api/iam/memberships/",
            json!({"group": g, "user": "alice"}),
        );
        memberships.push(m["id"].as_str().unwrap().to_string());
    }

    // First access, as herself: the account appears with her identity.
    let cli = login(&gw, "alice", "alice-password-1");
    let out = cli.run(&["websh", "acct", "id"]);
    assert!(
        out.status.success(),
        "{}\n--- agent log ---\n{}",
        text(&out),
        agent.log()
    );
    let id = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        id.starts_with(&format!("uid={uid}(alice) gid={uid}(alice) ")),
        "{id}"
    );
    assert!(id.contains(&format!("{web_gid}(web)")), "{id}");
    assert!(id.contains("(alpacon-managed)"), "{id}");
    // No standing privileges: the system group `docker` was skipped.
    assert!(!id.contains("docker"), "{id}");

    let passwd = root(&mut gw, "acct", "getent passwd alice");
    assert_eq!(field(&passwd, 2), uid.to_string(), "{passwd}");
    assert_eq!(field(&passwd, 3), uid.to_string(), "{passwd}");
    assert_eq!(field(&passwd, 4), "Alice Example", "{passwd}");
    assert_eq!(field(&passwd, 5), "/home/alice", "{passwd}");
    assert_eq!(field(&passwd, 6), "/bin/bash", "{passwd}");
    let group = root(&mut gw, "acct", "getent group alice");
    assert_eq!(field(&group, 2), uid.to_string(), "{group}");
    // Password locked, no expiry.
    let shadow = root(&mut gw, "acct", "getent shadow alice");
    assert!(field(&shadow, 1).starts_with('!'), "{shadow}");
    assert_eq!(field(&shadow, 7), "", "{shadow}");
    // No SSH: an empty root-owned authorized_keys, and sshd denies the group.
    let keys = root(
        &mut gw,
        "acct",
        "stat -c '%u %a %s' /home/alice/.ssh/authorized_keys /home/alice/.ssh; stat -c '%u' /home/alice",
    );
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys[0], "0 644 0", "{keys:?}");
    assert!(keys[1].starts_with("0 755 "), "{keys:?}");
    assert_eq!(keys[2], uid.to_string(), "home belongs to alice: {keys:?}");
    let dropin = root(&mut gw, "acct", "cat /etc/ssh/sshd_config.d/alpacon.conf");
    assert!(
        dropin.lines().any(|l| l == "DenyGroups alpacon-managed"),
        "{dropin}"
    );

    // A key planted by hand is gone after the next access.
    root(
        &mut gw,
        "acct",
        "echo 'ssh-ed25519 AAAA planted' > /home/alice/.ssh/authorized_keys",
    );
    // Files she uploads are hers.
    let local = cli.dir.path().join("notes.txt");
    std::fs::write(&local, "mine\n").unwrap();
    let out = cli.run(&["cp", local.to_str().unwrap(), "acct:/home/alice/notes.txt"]);
    assert!(out.status.success(), "{}", text(&out));
    let st = root(
        &mut gw,
        "acct",
        "stat -c '%u %g' /home/alice/notes.txt; stat -c '%s' /home/alice/.ssh/authorized_keys",
    );
    assert_eq!(st, format!("{uid} {uid}\n0\n"));

    // Group changes are synced at the next access: leaving `web`...
    let (s, v) = gw
        .call(
            "DELETE",
            &format!("/api/iam/memberships/{}/", memberships[0]),
            None,
        )
        .unwrap();
    assert!(s == 204 || s == 200, "{s} {v}");
    // ...loses the only group that reached the server: the account is
    // locked there.
    wait_for("the account to be locked after losing reach", WAIT, || {
        let shadow = root(&mut gw, "acct", "getent shadow alice");
        (field(&shadow, 7) == "1").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    // Back in `web`: the next access unlocks it and drops nothing else.
    created(
        &mut gw,
        "/api/iam/memberships/",
        json!({"group": "web", "user": "alice"}),
    );
    let out = cli.run(&["websh", "acct", "id", "-Gn"]);
    assert!(out.status.success(), "{}", text(&out));
    let groups = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        groups.contains("web") && groups.contains("alpacon-managed"),
        "{groups}"
    );
    let shadow = root(&mut gw, "acct", "getent shadow alice");
    assert_eq!(field(&shadow, 7), "", "unlocked: {shadow}");

    // Disabling her locks the account on the server.
    let (s, v) = gw
        .call(
            "PATCH",
            &format!("/api/iam/users/{}/", alice["id"].as_str().unwrap()),
            Some(json!({"is_active": false})),
        )
        .unwrap();
    assert_eq!(s, 200, "{v}");
    wait_for("the account to be locked after disabling", WAIT, || {
        let shadow = root(&mut gw, "acct", "getent shadow alice");
        (field(&shadow, 7) == "1" && field(&shadow, 1).starts_with('!')).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    let (s, v) = gw
        .call(
            "GET",
            "/api/audit/events/?action=account.lock&server=acct",
            None,
        )
        .unwrap();
    assert_eq!(s, 200, "{v}");
    assert!(
        v["results"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["detail"]["username"] == "alice")),
        "{v}"
    );

    // A terminal is a first access too.
    created(
        &mut gw,
        "/api/iam/users/",
        json!({"username": "carol", "password": "carol-password-1", "shell": "/bin/no-such-shell"}),
    );
    created(
        &mut gw,
        "/api/iam/memberships/",
        json!({"group": "web", "user": "carol"}),
    );
    let carol = login(&gw, "carol", "carol-password-1");
    let mut term = {
        let mut c = carol.command();
        c.args(["websh", "acct"]);
        Interactive::spawn(c).unwrap()
    };
    term.write(b"echo \"ME=$(id -un)-$(id -gn)-$(getent passwd carol | cut -d: -f7)\"; exit\n")
        .unwrap();
    // The shell that is not installed fell back to /bin/sh.
    term.wait_for("ME=carol-carol-/bin/sh", WAIT)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    term.wait(WAIT).unwrap();

    // A person whose name is taken by an unmanaged local account with
    // another UID is refused, and the local account is untouched.
    created(
        &mut gw,
        "/api/iam/users/",
        json!({"username": "mallory", "password": "mallory-password-1"}),
    );
    created(
        &mut gw,
        "/api/iam/memberships/",
        json!({"group": "web", "user": "mallory"}),
    );
    let cli = login(&gw, "mallory", "mallory-password-1");
    let out = cli.run(&["websh", "acct", "id"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("not managed by Alpacon") && all.contains("UID 1500"),
        "{all}"
    );
    let (s, v) = gw
        .call("GET", "/api/events/commands/?server=acct", None)
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let refused = v["results"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["username"] == "mallory").cloned())
        .unwrap_or_default();
    assert_eq!(refused["error"]["code"], "account_conflict", "{v}");
    let passwd = root(&mut gw, "acct", "getent passwd mallory; id -Gn mallory");
    assert!(passwd.starts_with("mallory:x:1500:"), "{passwd}");
    assert!(!passwd.contains("alpacon-managed"), "{passwd}");
    // The admin acting as `mallory` is not mallory: nothing is managed and
    // the local account is used as it is.
    let (s, v) = gw
        .call(
            "POST",
            "/api/events/commands/",
            Some(json!({"server": "acct", "line": "id", "username": "mallory"})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let done = gw
        .wait_command(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(done["exit_code"], 0, "{done}");
    assert!(
        done["output"]
            .as_str()
            .unwrap_or_default()
            .contains("uid=1500(mallory)"),
        "{done}"
    );

    // With `account_termination = "remove"`, deleting the person removes
    // the account (this test is alone in its binary: the variable reaches
    // only this gateway). The home directory is kept.
    std::env::set_var("ALPACON_ACCOUNT_TERMINATION", "remove");
    gw.restart().unwrap();
    gw.wait_connected("acct", true)
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    let (s, v) = gw
        .call(
            "DELETE",
            &format!("/api/iam/users/{}/", alice["id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    assert!(s == 204 || s == 200, "{s} {v}");
    wait_for("the account to be removed", WAIT, || {
        let out = root(&mut gw, "acct", "getent passwd alice || echo GONE");
        (out == "GONE\n").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", agent.log()));
    let kept = root(&mut gw, "acct", "stat -c %u /home/alice/notes.txt");
    assert_eq!(kept, format!("{uid}\n"));
}
