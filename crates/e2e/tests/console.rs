//! The web console in real headless Chromium. In a test binary of its own so
//! that it never shares the machine's two cores with a terminal flood.
//! Covers terminals, the recording's replay, and the work-session workflow
//! (policy, a member's refusal, request, approval, use, timeline).

use std::process::Command;

use alpacon_e2e::{is_root, text, Agent, AgentOpts, Gateway};

#[test]
fn browser_console_in_headless_chromium() {
    let web = std::path::PathBuf::from(alpacon_e2e::crate_dir(env!("CARGO_MANIFEST_DIR")))
        .join("../../web");
    assert!(
        web.join("node_modules").exists() && web.join("dist/index.html").exists(),
        "build the console first: (cd web && npm ci && npm run build); scripts/test does"
    );
    let mut gw = Gateway::start().unwrap();
    assert!(is_root(), "needs root: private mount namespace, useradd");
    let opts = AgentOpts {
        private_namespace: true,
        setup: vec!["useradd -m -s /bin/bash docker".into()],
        url: None,
    };
    let agent = Agent::register(&mut gw, "web-box", opts).unwrap();
    gw.wait_connected("web-box", true)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // Screenshots go to a temp dir, or where ALPACON_ARTIFACTS says (kept).
    let artifacts = tempfile::tempdir().unwrap();
    let artifacts = std::env::var_os("ALPACON_ARTIFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| artifacts.path().to_path_buf());
    let out = Command::new("node")
        .arg(web.join("tests/run.mjs"))
        .current_dir(&web)
        .env("ALPACON_URL", &gw.url)
        .env("ALPACON_PASSWORD", &gw.admin_password)
        .env("ALPACON_SERVER", "web-box")
        .env("ALPACON_CA", gw.ca())
        .env("ALPACON_RUN_AS", "docker")
        // The work-session workflow too: this gateway is ours to change.
        .env("ALPACON_WORK_SESSIONS", "1")
        .env("ALPACON_ARTIFACTS", &artifacts)
        .output()
        .unwrap();
    // The steps passed (shown with --nocapture).
    println!("{}", text(&out));
    assert!(
        out.status.success(),
        "{}\n--- gateway ---\n{}",
        text(&out),
        gw.log()
    );
}
