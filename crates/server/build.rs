//! The web console is built by npm into `web/dist` and embedded by
//! `console.rs`. A fresh clone has no `web/dist`: write a one-page
//! placeholder that says how to build it, so the gateway always compiles.

use std::path::PathBuf;

const PLACEHOLDER: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Alpacon: console not built</title>
<style>body{font:15px/1.6 system-ui,sans-serif;background:#0d1117;color:#e6edf3;margin:0;display:grid;place-items:center;min-height:100vh;padding:16px;box-sizing:border-box}main{max-width:34em}code{background:#1f2630;padding:2px 6px;border-radius:4px}</style>
</head>
<body><main>
<h1>The console is not built</h1>
<p>This gateway was compiled without its web console. Run <code>scripts/quickstart</code>
(it runs <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code>), or run those two
commands yourself, then build the gateway again.</p>
<p>The API, the CLI and agents work without it.</p>
</main></body>
</html>
"#;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = manifest.join("../../web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let index = dist.join("index.html");
    if !index.exists() {
        std::fs::create_dir_all(&dist).expect("create web/dist");
        std::fs::write(&index, PLACEHOLDER).expect("write web/dist/index.html");
        println!(
            "cargo:warning=web/dist is missing: the gateway embeds a placeholder page; \
             run `npm ci && npm run build` in web/ for the console"
        );
    }
}
