//! HTTP-level tests of the ACL routes and their enforcement.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::testutil::TestApp;

async fn add_server(app: &TestApp, name: &str, seed: u8) -> String {
    app.add_server(name, seed).await
}

/// Creates a token for the session `key`; returns (id, key).
async fn token(app: &TestApp, key: &str, name: &str, scopes: Value) -> (String, String) {
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/tokens/",
            Some(key),
            Some(json!({"name": name, "scopes": scopes})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (
        v["id"].as_str().unwrap().into(),
        v["key"].as_str().unwrap().into(),
    )
}

async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, path, Some(key), Some(body)).await
}

async fn run(app: &TestApp, key: &str, server: &str, line: &str) -> (StatusCode, Value) {
    post(
        app,
        "/api/events/commands/",
        key,
        json!({"server": server, "line": line}),
    )
    .await
}

/// The newest audit events with this action: (result, detail).
async fn audit(app: &TestApp, admin: &str, action: &str) -> Vec<(String, Value)> {
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/audit/events/?action={action}"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["result"].as_str().unwrap().to_string(),
                e["detail"].clone(),
            )
        })
        .collect()
}

async fn crud_and_permissions(app: &TestApp) {
    let admin = app.admin_key().await;
    let bob = app.user_key("bob").await;
    add_server(app, "web-1", 1).await;
    let (admin_tok, admin_tok_key) = token(app, &admin, "ci", json!([])).await;
    let (bob_tok, _) = token(app, &bob, "bobs", json!([])).await;

    // Create each kind; invalid bodies are 400.
    let (s, v) = post(
        app,
        "/api/security/command-acl/",
        &admin,
        json!({"token": admin_tok, "line": "docker  ps", "username": "deploy"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["line"], "docker ps");
    assert_eq!(v["username"], "deploy");
    assert_eq!(v["token_name"], "ci");
    let cmd_acl = v["id"].as_str().unwrap().to_string();
    // By token name, `pattern` spelling.
    let (s, v) = post(
        app,
        "/api/security/command-acl/",
        &admin,
        json!({"token": "ci", "pattern": "systemctl status *"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for bad in [
        json!({"token": admin_tok, "line": "docker ps; id"}),
        json!({"token": admin_tok}),
        json!({"token": admin_tok, "line": "x", "username": "a b"}),
    ] {
        let (s, v) = post(app, "/api/security/command-acl/", &admin, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (s, v) = post(
        app,
        "/api/security/server-acl/",
        &admin,
        json!({"token": admin_tok, "server": "web-1"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["server_name"], "web-1");
    let (s, v) = post(
        app,
        "/api/security/server-acl/",
        &admin,
        json!({"token": admin_tok, "server": "web-1"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = post(
        app,
        "/api/security/server-acl/",
        &admin,
        json!({"token": admin_tok, "server": "nope"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = post(
        app,
        "/api/security/file-acl/",
        &admin,
        json!({"token": admin_tok, "path": "/opt/my-app/*", "action": "download"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for bad in [
        json!({"token": admin_tok, "path": "opt/x", "action": "download"}),
        json!({"token": admin_tok, "path": "/opt/../etc", "action": "download"}),
        json!({"token": admin_tok, "path": "/opt/x", "action": "delete"}),
    ] {
        let (s, _) = post(app, "/api/security/file-acl/", &admin, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Listing, by token and overall.
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/security/command-acl/?token={admin_tok}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 2);

    // Bob can neither see nor change admin's token ACLs…
    for kind in ["command", "server", "file"] {
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/security/{kind}-acl/?token={admin_tok}"),
                Some(&bob),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        assert_eq!(v["code"], "token_not_found");
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/security/{kind}-acl/"),
                Some(&bob),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["count"], 0, "{kind}");
    }
    let (s, _) = post(
        app,
        "/api/security/command-acl/",
        &bob,
        json!({"token": admin_tok, "line": "id"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/security/command-acl/{cmd_acl}/"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // …nor does an admin touch Bob's: a person's tokens are theirs
    // alone (`tokens::may_manage`, the rule listing and deleting follow).
    let (s, v) = post(
        app,
        "/api/security/command-acl/",
        &admin,
        json!({"token": bob_tok, "line": "uptime"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("token_not_found"))
    );
    let (_, v) = app
        .call(Method::GET, "/api/security/command-acl/", Some(&bob), None)
        .await;
    assert_eq!(v["count"], 0);
    let (_, v) = app
        .call(
            Method::GET,
            "/api/security/command-acl/",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["count"], 2);

    // A token cannot change ACLs, not even its own.
    let (s, v) = post(
        app,
        "/api/security/command-acl/",
        &admin_tok_key,
        json!({"token": admin_tok, "line": "*"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "token_not_allowed");
    let (s, v) = app
        .call(
            Method::DELETE,
            &format!("/api/security/command-acl/{cmd_acl}/"),
            Some(&admin_tok_key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // The owner deletes; audited.
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/security/command-acl/{cmd_acl}/"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/security/command-acl/{cmd_acl}/"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(audit(app, &admin, "acl.delete").await.len(), 1);
    // Four: the admin's ACL on Bob's token was refused.
    assert_eq!(audit(app, &admin, "acl.create").await.len(), 4);

    // Deleting the token deletes its ACLs.
    let (s, _) = app
        .call(Method::DELETE, "/api/auth/tokens/ci/", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = app
        .call(Method::GET, "/api/security/file-acl/", Some(&admin), None)
        .await;
    assert_eq!(v["count"], 0);
}

async fn command_acl_enforced(app: &TestApp) {
    let admin = app.admin_key().await;
    add_server(app, "web-1", 1).await;
    let (tok, key) = token(app, &admin, "ci", json!([])).await;
    // Before any command ACL, anything goes.
    let (s, v) = run(app, &key, "web-1", "id").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = post(
        app,
        "/api/security/command-acl/",
        &admin,
        json!({"token": tok, "line": "docker ps"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = run(app, &key, "web-1", "docker ps").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for line in ["docker ps; id", "id", "docker ps && id", "docker ps $(id)"] {
        let (s, v) = run(app, &key, "web-1", line).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{line}: {v}");
        assert_eq!(v["code"], "acl_command_denied");
        assert!(v["detail"].as_str().unwrap().len() > 20);
    }
    // Environment variables could change what `docker` runs.
    let (s, v) = post(
        app,
        "/api/events/commands/",
        &key,
        json!({"server": "web-1", "line": "docker ps", "env": {"PATH": "/tmp"}}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Refused commands are not stored; the refusals are audited.
    let lines: Vec<String> = sqlx::query_scalar("SELECT line FROM commands ORDER BY created_at")
        .fetch_all(&app.state.db.pool)
        .await
        .unwrap();
    assert_eq!(lines, vec!["id".to_string(), "docker ps".to_string()]);
    let events = audit(app, &admin, "command.run").await;
    let refused: Vec<&Value> = events
        .iter()
        .filter(|(r, _)| r == "error")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(refused.len(), 5);
    assert!(refused.iter().all(|d| d["reason"] == "acl_command_denied"));
    assert!(refused.iter().any(|d| d["line"] == "docker ps; id"));
    // Sessions (people) are not restricted by a token's ACL.
    let (s, _) = run(app, &admin, "web-1", "id").await;
    assert_eq!(s, StatusCode::CREATED);

    // No terminal for a token with a command ACL (even offline server).
    let (s, v) = post(
        app,
        "/api/websh/sessions/",
        &key,
        json!({"server": "web-1"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "acl_command_denied");
    let ev = audit(app, &admin, "websh.open").await;
    assert_eq!(ev[0].0, "error");
    // Nor uploads (they could replace what `docker` runs) without a
    // file ACL; downloads get as far as the (offline) server.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/webftp/upload/?server=web-1&path=/tmp/docker",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "acl_file_denied");
    let (s, v) = app
        .call(
            Method::GET,
            "/api/webftp/download/?server=web-1&path=/tmp/x",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // A token without one gets as far as the (offline) server.
    let (_, key2) = token(app, &admin, "free", json!([])).await;
    let (s, v) = post(
        app,
        "/api/websh/sessions/",
        &key2,
        json!({"server": "web-1"}),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
}

async fn server_and_file_acls_enforced(app: &TestApp) {
    let admin = app.admin_key().await;
    add_server(app, "web-1", 1).await;
    add_server(app, "db-1", 2).await;
    let (tok, key) = token(app, &admin, "ci", json!([])).await;
    let (s, _) = post(
        app,
        "/api/security/server-acl/",
        &admin,
        json!({"token": tok, "server": "web-1"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = run(app, &key, "web-1", "uptime").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = run(app, &key, "db-1", "uptime").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "acl_server_denied");
    let (s, v) = post(app, "/api/websh/sessions/", &key, json!({"server": "db-1"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "acl_server_denied");
    let (s, v) = app
        .call(
            Method::GET,
            "/api/webftp/download/?server=db-1&path=/tmp/x",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "acl_server_denied");

    let (s, _) = post(
        app,
        "/api/security/file-acl/",
        &admin,
        json!({"token": tok, "path": "/opt/my-app/*", "action": "download"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let key = &key;
    let get = |path: String| async move { app.call(Method::GET, &path, Some(key), None).await };
    // Allowed: gets past the ACL to the (offline) server.
    let (s, v) = get("/api/webftp/download/?server=web-1&path=/opt/my-app/a.yml".into()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (s, v) = get("/api/webftp/stat/?server=web-1&path=/opt/my-app/sub".into()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    for path in [
        "/api/webftp/download/?server=web-1&path=/etc/passwd",
        "/api/webftp/download/?server=web-1&path=/opt/my-app/../../etc/passwd",
        "/api/webftp/stat/?server=web-1&path=/etc",
    ] {
        let (s, v) = get(path.into()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
        assert_eq!(v["code"], "acl_file_denied");
    }
    let (s, v) = app
        .call(
            Method::POST,
            "/api/webftp/upload/?server=web-1&path=/opt/my-app/a.yml",
            Some(key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "acl_file_denied");
    let (s, v) = post(
        app,
        "/api/webftp/mkdir/",
        key,
        json!({"server": "web-1", "path": "/opt/my-app/new"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let ev = audit(app, &admin, "file.*").await;
    assert!(ev.len() >= 5, "{ev:?}");
    assert!(ev.iter().all(|(r, _)| r == "error"));
    assert!(ev.iter().any(|(_, d)| d["reason"] == "acl_file_denied"));
    assert!(ev.iter().any(|(_, d)| d["reason"] == "acl_server_denied"));
}

async fn scopes_and_disable(app: &TestApp) {
    let admin = app.admin_key().await;
    add_server(app, "web-1", 1).await;
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/tokens/",
            Some(&admin),
            Some(json!({"name": "x", "scopes": ["bogus"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("websh"));

    let (tok, key) = token(app, &admin, "cmd-only", json!(["command"])).await;
    let (s, v) = run(app, &key, "web-1", "uptime").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .call(Method::GET, "/api/auth/whoami/", Some(&key), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for (m, path, body) in [
        (
            Method::POST,
            "/api/websh/sessions/",
            Some(json!({"server": "web-1"})),
        ),
        (Method::GET, "/api/servers/servers/", None),
        (Method::GET, "/api/audit/events/", None),
        (Method::GET, "/api/webftp/stat/?server=web-1&path=/", None),
    ] {
        let (s, v) = app.call(m, path, Some(&key), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
        assert_eq!(v["code"], "scope_denied");
    }
    let ev = audit(app, &admin, "token.scope_denied").await;
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[0].1["reason"], "scope_denied");
    // Unauthenticated requests still get the usual 401.
    let (s, v) = app
        .call(Method::GET, "/api/servers/servers/", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");

    // Disable / enable.
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/auth/tokens/{tok}/"),
            Some(&key),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let bob = app.user_key("bob").await;
    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/auth/tokens/{tok}/"),
            Some(&bob),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app
        .call(
            Method::PATCH,
            "/api/auth/tokens/cmd-only/",
            Some(&admin),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["enabled"], false);
    let (s, v) = run(app, &key, "web-1", "uptime").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["code"], "invalid_token");
    assert!(v["detail"].as_str().unwrap().contains("disabled"));
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/auth/tokens/{tok}/"),
            Some(&admin),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = run(app, &key, "web-1", "uptime").await;
    assert_eq!(s, StatusCode::CREATED);
    let ev = audit(app, &admin, "token.update").await;
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].1["enabled"], false);
}

macro_rules! flows {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&TestApp::new().await).await;
                }
            )*
        }

        #[tokio::test]
        async fn acl_flows_on_postgres() {
            let Some(pg) = crate::testutil::Postgres::start() else { return };
            let admin = crate::db::Db::connect(&pg.url).await.expect("connect");
            $(
                let name = concat!("acl_", stringify!($name));
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin.pool)
                    .await
                    .expect("create database");
                let url = pg.url.replace("/postgres", &format!("/{name}"));
                let db = crate::db::Db::connect(&url).await.expect("connect");
                $name(&TestApp::with_db(db).await).await;
            )*
        }
    };
}

flows!(
    crud_and_permissions,
    command_acl_enforced,
    server_and_file_acls_enforced,
    scopes_and_disable,
);
