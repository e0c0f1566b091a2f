//! The layout's rules (ARCHITECTURE.md, "Layout"), checked on the sources:
//! only the edge knows axum, files stay small, and SQL stays out of the
//! route handlers (with a list of files still to be moved that may only
//! shrink).

use std::path::PathBuf;

use crate::testutil::crate_dir;

/// The shell around the features: the files besides `http.rs`/`ws.rs`
/// that may name axum, and why.
const AXUM_SHELL: &[&str] = &[
    "app.rs",      // the one router
    "api.rs",      // extractors with JSON rejections, pagination
    "error.rs",    // the one mapping from errors to answers
    "openapi.rs",  // the document and its route
    "conn/mod.rs", // serving connections
    "console.rs",  // the embedded web console
    "relay.rs",    // the agent link's WebSocket upgrade
];

/// `http.rs` files that still run SQL themselves; move it to the feature's
/// store and take the file off this list (the test fails until you do).
const SQL_IN_HTTP_TO_MOVE: &[&str] = &[
    "auth/http.rs",
    "commands/http.rs",
    "iam/groups/http.rs",
    "iam/http.rs",
    "iam/invitations/http.rs",
    "tokens/http.rs",
];

const MAX_LINES: usize = 800;

/// Every non-test source file, relative to `src/`, with its code before
/// any `#[cfg(test)]`.
fn sources() -> Vec<(String, String)> {
    let root = PathBuf::from(crate_dir()).join("src");
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            // Whole-file test modules.
            if p.extension().is_none_or(|x| x != "rs")
                || rel.ends_with("tests.rs")
                || rel == "testutil.rs"
            {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            out.push((rel, code));
        }
    }
    out.sort();
    out
}

fn is_edge(rel: &str) -> bool {
    rel.ends_with("http.rs") || rel.ends_with("ws.rs") || AXUM_SHELL.contains(&rel)
}

#[test]
fn only_the_edge_knows_axum() {
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|(rel, code)| code.contains("axum") && !is_edge(rel))
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        offenders.is_empty(),
        "axum outside http.rs/ws.rs and the shell: {offenders:?}; \
         domain code returns ApiError (a code and a detail) and never HTTP types"
    );
}

#[test]
fn no_file_is_over_800_lines_of_code() {
    let big: Vec<String> = sources()
        .into_iter()
        .filter(|(_, code)| code.lines().count() > MAX_LINES)
        .map(|(rel, code)| format!("{rel} ({} lines)", code.lines().count()))
        .collect();
    assert!(big.is_empty(), "split these: {big:?}");
}

#[test]
fn route_handlers_leave_sql_to_their_store() {
    let with_sql: Vec<String> = sources()
        .into_iter()
        .filter(|(rel, code)| rel.ends_with("http.rs") && code.contains("sqlx::query"))
        .map(|(rel, _)| rel)
        .collect();
    let new: Vec<&String> = with_sql
        .iter()
        .filter(|r| !SQL_IN_HTTP_TO_MOVE.contains(&r.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "SQL in route handlers: {new:?}; put it in the feature's store.rs"
    );
    let done: Vec<&&str> = SQL_IN_HTTP_TO_MOVE
        .iter()
        .filter(|r| !with_sql.iter().any(|w| w == *r))
        .collect();
    assert!(
        done.is_empty(),
        "{done:?} no longer run SQL: take them off SQL_IN_HTTP_TO_MOVE"
    );
}
