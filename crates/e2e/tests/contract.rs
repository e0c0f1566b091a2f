//! The API contract against a live gateway: the document it serves is the
//! one `alpacon-server openapi` prints, and schemathesis (property-based
//! API testing, from PyPI) finds no 5xx, no answer that breaks its schema,
//! status code or content type, no route that answers without the
//! credentials it documents, and the gateway's log no panic.

use std::process::Command;

use alpacon_e2e::{bin, is_root, text, Agent, AgentOpts, Gateway};

/// schemathesis, installed by `scripts/test` into the project's venv.
fn schemathesis() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ALPACON_SCHEMATHESIS") {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    std::path::Path::new(&home).join(".cache/alpacon/venv/bin/schemathesis")
}

#[test]
fn the_served_document_is_the_generated_one() {
    let gw = Gateway::start().unwrap();
    let served: serde_json::Value = gw
        .http()
        .get(gw.api("/api/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let out = Command::new(bin("alpacon-server"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(served, printed);
    assert_eq!(served["openapi"], "3.1.0");
}

#[test]
fn schemathesis_finds_nothing() {
    assert!(is_root(), "needs a private mount namespace for the agent");
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} is missing: scripts/test installs it (pip install -r scripts/requirements-test.txt)",
        st.display()
    );
    let mut gw = Gateway::start().unwrap();
    // A connected server, so that server routes have something to find.
    let opts = AgentOpts {
        private_namespace: true,
        setup: vec![],
        url: None,
    };
    let agent = Agent::register(&mut gw, "fuzz-box", opts).unwrap();
    gw.wait_connected("fuzz-box", true)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // An API token, not a login session: a fuzzed logout cannot end it.
    let key = gw.admin_api_token("schemathesis").unwrap();
    let report = tempfile::tempdir().unwrap();
    let out = Command::new(&st)
        .arg("run")
        .arg(gw.api("/api/openapi.json"))
        .args(["--url", &gw.url])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth",
        ])
        // Bounded: a few examples per operation keeps the run to minutes
        // on two cores; each run draws new ones (the seed is printed).
        .args(["--max-examples", "20"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "2"])
        // A token may delete itself (it only gives up power); fuzzed, that
        // would end this run's own credential halfway (tokens.rs tests it).
        .args(["--exclude-operation-id", "delete_token"])
        .args(["--request-timeout", "30"])
        // A keep-alive connection can still end under a request in flight
        // (the gateway closes one after an error that left a body unread,
        // and says so with `Connection: close` since app.rs's
        // close_after_unread_body). A network-level failure is retried;
        // every answer is still checked.
        .args(["--request-retries", "2"])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .arg("--tls-verify")
        .arg(gw.ca())
        .arg("--no-color")
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(report.path())
        .output()
        .unwrap();
    let log = gw.log();
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{}",
        text(&out)
    );
    // Nothing it sent took the admin's own credential away.
    let (status, who) = gw.call_as(&key, "GET", "/api/auth/whoami/", None).unwrap();
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| {
            (l.contains("method=DELETE") || l.contains("method=PATCH") || l.contains("method=PUT"))
                && (l.contains("status=2"))
        })
        .collect();
    assert_eq!(status, 200, "{who}; the changes it made: {changes:#?}");
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    eprintln!(
        "{}",
        text(&out)
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
