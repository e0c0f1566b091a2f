//! Scoped tokens for automation, end to end: a token allowed `docker ps`
//! can run exactly that, by every route.

use alpacon_e2e::{is_root, login, text, Agent, AgentOpts, Cli, Gateway};

#[test]
fn a_command_acl_allows_exactly_what_it_lists() {
    assert!(is_root(), "needs a private mount namespace");
    let mut gw = Gateway::start().unwrap();
    let opts = AgentOpts {
        private_namespace: true,
        // `admin` is provisioned by the agent on first use.
        setup: vec![],
        url: None,
    };
    let agent = Agent::register(&mut gw, "ci-box", opts).unwrap();
    gw.wait_connected("ci-box", true)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // The admin sets up a CI token that may only run `echo deploy *`.
    let admin = login(&gw, "admin", &gw.admin_password);
    let out = admin.run(&["token", "create", "--name", "ci", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let out = admin.run(&["token", "acl", "command", "add", "ci", "echo deploy *"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = admin.run(&["token", "acl", "command", "ls", "ci", "--output", "json"]);
    let acls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(acls.as_array().unwrap().len(), 1, "{acls}");

    let ci = Cli::new().unwrap();
    ci.login_token(&gw, &key).unwrap();

    let out = ci.run(&["websh", "ci-box", "echo", "deploy", "v1.2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "deploy v1.2\n");

    // Anything else, or anything smuggled past the pattern: refused with
    // exit code 3 and nothing runs.
    for line in [
        "id",
        "echo deploy x; id",
        "echo deploy x && id",
        "echo deploy $(id)",
        "echo deploy `id`",
        "echo deploy x | sh",
        "echo deploy x > /tmp/owned",
        "echo deploy x\nid",
    ] {
        let out = ci.run(&["websh", "ci-box", line]);
        assert_eq!(out.status.code(), Some(3), "{line:?}: {}", text(&out));
    }
    // No terminal (a shell would bypass the list), no uploads.
    let out = ci.run(&["websh", "ci-box"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    std::fs::write(ci.dir.path().join("f"), "x").unwrap();
    let out = ci.run(&["cp", "f", "ci-box:/tmp/f"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // Only the allowed command was ever stored; refusals are audited.
    let (_, v) = gw.call("GET", "/api/events/commands/", None).unwrap();
    assert_eq!(v["count"], 1, "{v}");
    let (_, v) = gw
        .call(
            "GET",
            "/api/audit/events/?action=command.run&page_size=100",
            None,
        )
        .unwrap();
    let refused = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "error")
        .count();
    assert!(refused >= 8, "{v}");

    // Disabling the token stops it at once.
    let out = admin.run(&["token", "disable", "ci"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ci.run(&["websh", "ci-box", "echo", "deploy", "again"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = admin.run(&["token", "enable", "ci"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ci.run(&["websh", "ci-box", "echo", "deploy", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_file_acl_allows_its_paths_and_no_symlink_leads_out() {
    assert!(is_root(), "needs a private mount namespace");
    let mut gw = Gateway::start().unwrap();
    let opts = AgentOpts {
        private_namespace: true,
        // `admin` is provisioned on first use with UID 20000.
        setup: vec![
            "mkdir -p /opt/app /opt/other".into(),
            "chown 20000:20000 /opt/app /opt/other".into(),
            "ln -s /etc /opt/app/link".into(),
        ],
        url: None,
    };
    let agent = Agent::register(&mut gw, "files-box", opts).unwrap();
    gw.wait_connected("files-box", true)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let admin = login(&gw, "admin", &gw.admin_password);
    let out = admin.run(&["token", "create", "--name", "deploy", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let out = admin.run(&["token", "acl", "file", "add", "deploy", "/opt/app/*"]);
    assert!(out.status.success(), "{}", text(&out));

    let ci = Cli::new().unwrap();
    ci.login_token(&gw, &key).unwrap();
    std::fs::write(ci.dir.path().join("f"), "payload").unwrap();

    // What the ACL lists works both ways.
    let out = ci.run(&["cp", "f", "files-box:/opt/app/f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = ci.run(&["cp", "files-box:/opt/app/f", "back"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read(ci.dir.path().join("back")).unwrap(),
        b"payload"
    );

    // Anything else is refused (exit code 3), by name or through a link.
    for args in [
        vec!["cp", "f", "files-box:/opt/other/f"],
        vec!["cp", "files-box:/etc/hostname", "h"],
        vec!["cp", "f", "files-box:/opt/app/../other/f"],
        vec!["cp", "f", "files-box:/opt/app/link/evil"],
        vec!["cp", "files-box:/opt/app/link/hostname", "h2"],
    ] {
        let out = ci.run(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
    }
    // Nothing was written outside.
    let out = admin.run(&[
        "websh",
        "files-box",
        "test -e /etc/evil || test -e /opt/other/f || echo CLEAN",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "CLEAN\n",
        "{}",
        text(&out)
    );
    assert!(!ci.dir.path().join("h2").exists());
}
