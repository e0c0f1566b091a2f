//! Tests of the REST API as a client sees it, through the real router.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::testutil::{pubkey, TestApp, TEST_CLIENT_IP};

async fn audit_actions(app: &TestApp, key: &str, query: &str) -> Vec<(String, String)> {
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/audit/events/{query}"),
            Some(key),
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
                e["action"].as_str().unwrap().to_string(),
                e["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn status_and_unknown_paths(app: &TestApp) {
    let (s, v) = app.call(Method::GET, "/api/status/", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    let (s, v) = app.call(Method::GET, "/api/status", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "not_found");
    assert!(v["detail"].as_str().unwrap().contains("end with '/'"));
    let (s, v) = app.call(Method::DELETE, "/api/status/", None, None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(v["code"], "method_not_allowed");
}

async fn authentication_errors_and_header_styles(app: &TestApp) {
    let (s, v) = app.call(Method::GET, "/api/auth/whoami/", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "not_authenticated");
    assert!(v["detail"]
        .as_str()
        .unwrap()
        .contains("Authorization: Token"));

    for bad in ["alpat-doesnotexist", "alpses-nope", "garbage"] {
        let (s, v) = app
            .call(Method::GET, "/api/auth/whoami/", Some(bad), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["code"], "invalid_token", "{bad}");
    }

    // Wrong password: 401 and an audit event.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/login/",
            None,
            Some(json!({"username": "admin", "password": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "invalid_credentials");

    let key = app.admin_key().await;
    assert!(key.starts_with("alpses-"));
    for style in [
        format!("Token {key}"),
        format!("token=\"{key}\""),
        format!("Bearer {key}"),
    ] {
        let req = Request::builder()
            .uri("/api/auth/whoami/")
            .header(header::AUTHORIZATION, style.clone())
            .body(Body::empty())
            .unwrap();
        let (s, v) = app.send(req).await;
        assert_eq!(s, StatusCode::OK, "{style}: {v}");
        assert_eq!(v["username"], "admin");
        assert_eq!(v["auth"], "session");
        assert!(v["token"].is_null());
        assert_eq!(v["is_superuser"], true);
    }

    let actions = audit_actions(app, &key, "").await;
    assert_eq!(actions[0], ("auth.login".into(), "ok".into()));
    assert_eq!(actions[1], ("auth.login_failed".into(), "error".into()));
    let (_, v) = app
        .call(Method::GET, "/api/audit/events/", Some(&key), None)
        .await;
    assert_eq!(v["results"][0]["client_ip"], TEST_CLIENT_IP);
    assert_eq!(v["results"][0]["user"], "admin");
    assert!(v["results"][0]["timestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    // Logout ends the session at once.
    let (s, v) = app
        .call(Method::POST, "/api/auth/logout/", Some(&key), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["revoked"], true);
    let (s, v) = app
        .call(Method::GET, "/api/auth/whoami/", Some(&key), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "invalid_token");
}

async fn api_tokens_lifecycle(app: &TestApp) {
    let admin = app.admin_key().await;
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/tokens/",
            Some(&admin),
            Some(json!({"name": "ci", "expires_in_days": 30, "scopes": ["command", "file"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let tok = v["key"].as_str().unwrap().to_string();
    let tok_id = v["id"].as_str().unwrap().to_string();
    assert!(tok.starts_with("alpat-"));
    assert_eq!(v["scopes"], json!(["command", "file"]));
    assert!(v["expires_at"].is_string());

    // The key is stored hashed only.
    let stored: String = sqlx::query_scalar("SELECT key_hash FROM api_tokens WHERE id = $1")
        .bind(&tok_id)
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, crate::auth::hash_key(&tok));

    let (s, v) = app
        .call(Method::GET, "/api/auth/whoami/", Some(&tok), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["auth"], "token");
    assert_eq!(v["token"]["name"], "ci");

    // Listing never shows keys; last_used_at is set by the use above.
    let (_, v) = app
        .call(Method::GET, "/api/auth/tokens/", Some(&admin), None)
        .await;
    assert_eq!(v["count"], 1);
    assert!(v["results"][0].get("key").is_none());
    assert!(v["results"][0]["last_used_at"].is_string());

    // Same name again: 409.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/tokens/",
            Some(&admin),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["code"], "token_name_taken");

    // Tokens cannot mint tokens.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/tokens/",
            Some(&tok),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "token_not_allowed");

    // Validation.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/tokens/",
            Some(&admin),
            Some(json!({"name": "y", "expires_in_days": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "invalid");

    // Expired tokens are refused with a clear reason.
    sqlx::query("UPDATE api_tokens SET expires_at = $1 WHERE id = $2")
        .bind(crate::db::now_ms() - 1)
        .bind(&tok_id)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    let (s, v) = app
        .call(Method::GET, "/api/auth/whoami/", Some(&tok), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["detail"].as_str().unwrap().contains("expired"));

    // Another user cannot delete it; the owner can, by name.
    let bob = app.user_key("bob").await;
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/auth/tokens/{tok_id}/"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(Method::DELETE, "/api/auth/tokens/ci/", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let actions = audit_actions(app, &admin, "?action=token.*").await;
    assert_eq!(
        actions,
        vec![
            ("token.delete".to_string(), "ok".to_string()),
            ("token.create".to_string(), "ok".to_string())
        ]
    );
}

async fn registration_and_servers(app: &TestApp) {
    let admin = app.admin_key().await;
    let bob = app.user_key("bob").await;

    // Only admins handle registration tokens.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/servers/registration-tokens/",
            Some(&bob),
            Some(json!({"name": "t"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "permission_denied");

    let (s, v) = app
        .call(
            Method::POST,
            "/api/servers/registration-tokens/",
            Some(&admin),
            Some(json!({"name": "prod", "expires_in_days": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let key = v["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("alprt-"));
    assert_eq!(v["max_uses"], 1);
    assert_eq!(v["created_by"], "admin");
    assert!(v["install_command"].as_str().unwrap().contains(&key));

    // Install script for a usable token; clear errors otherwise.
    let (s, v) = app
        .call(Method::GET, &format!("/install.sh?token={key}"), None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let script = v.as_str().unwrap();
    assert!(script.starts_with("#!/bin/sh"));
    assert!(script.contains(&key));
    assert!(script.contains("systemctl enable --now alpamon"));
    let (s, v) = app
        .call(Method::GET, "/install.sh?token=alprt-unknown", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v.as_str().unwrap().contains("unknown registration token"));

    let register = |token: String, name: &str, pk: String| {
        let body = json!({"token": token, "name": name, "public_key": pk});
        async move {
            app.call(Method::POST, "/api/servers/register/", None, Some(body))
                .await
        }
    };
    let (s, v) = register("alprt-bad".into(), "web-1", pubkey(1)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "invalid_registration_token");
    let (s, v) = register(key.clone(), "bad name", pubkey(1)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = register(key.clone(), "web-1", "AAAA".into()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains("32 bytes"));

    let (s, v) = register(key.clone(), "web-1", pubkey(1)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["name"], "web-1");

    // Single use by default.
    let (s, v) = register(key.clone(), "web-2", pubkey(2)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["detail"].as_str().unwrap().contains("used 1 of 1"), "{v}");

    // A second token, and a taken name.
    let (_, v) = app
        .call(
            Method::POST,
            "/api/servers/registration-tokens/",
            Some(&admin),
            Some(json!({"name": "fleet", "max_uses": 0})),
        )
        .await;
    assert!(v["max_uses"].is_null());
    let fleet = v["key"].as_str().unwrap().to_string();
    let (s, v) = register(fleet.clone(), "web-1", pubkey(3)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["code"], "name_taken");
    let (s, _) = register(fleet.clone(), "db-1", pubkey(4)).await;
    assert_eq!(s, StatusCode::CREATED);

    // A member sees no server until one of their groups has it; then the
    // group's servers, newest first, filterable by name.
    let (s, v) = app
        .call(Method::GET, "/api/servers/servers/", Some(&bob), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["count"], 0);
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/servers/servers/{id}/"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["code"], "server_not_found");
    let (s, _) = app
        .call(
            Method::POST,
            "/api/iam/groups/",
            Some(&admin),
            Some(json!({"name": "ops"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for server in ["web-1", "db-1"] {
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/groups/ops/servers/",
                Some(&admin),
                Some(json!({ "server": server })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = app
        .call(
            Method::POST,
            "/api/iam/memberships/",
            Some(&admin),
            Some(json!({"group": "ops", "user": "bob"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .call(Method::GET, "/api/servers/servers/", Some(&bob), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["count"], 2);
    assert_eq!(v["results"][0]["name"], "db-1");
    assert_eq!(v["results"][1]["is_connected"], false);
    let (_, v) = app
        .call(
            Method::GET,
            "/api/servers/servers/?name=web-1",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(v["count"], 1);
    assert_eq!(v["results"][0]["id"], id.as_str());
    let (_, v) = app
        .call(
            Method::GET,
            "/api/servers/servers/?page_size=1",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(v["next"], "/api/servers/servers/?page_size=1&page=2");
    let (s, v) = app
        .call(
            Method::GET,
            "/api/servers/servers/?page=zero",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "invalid");

    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/servers/servers/{id}/"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["name"], "web-1");
    let (s, v) = app
        .call(Method::GET, "/api/servers/servers/nope/", Some(&bob), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "server_not_found");

    // Deleting: admins only.
    let (s, _) = app
        .call(
            Method::DELETE,
            "/api/servers/servers/web-1/",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .call(
            Method::DELETE,
            "/api/servers/servers/web-1/",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Registration tokens: list and delete by name.
    let (_, v) = app
        .call(
            Method::GET,
            "/api/servers/registration-tokens/",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["count"], 2);
    assert_eq!(v["results"][1]["uses"], 1);
    let (s, _) = app
        .call(
            Method::DELETE,
            "/api/servers/registration-tokens/fleet/",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = register(fleet, "db-2", pubkey(5)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Audit: registrations (ok and failed) with server and client IP;
    // the server filter matches a deleted server by name.
    let (_, v) = app
        .call(
            Method::GET,
            "/api/audit/events/?server=web-1",
            Some(&admin),
            None,
        )
        .await;
    let actions: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // (the admin's group assignment names the server too.)
    assert_eq!(
        actions,
        vec!["server.delete", "group.server_add", "server.register"]
    );
    assert_eq!(v["results"][2]["client_ip"], TEST_CLIENT_IP);
    assert_eq!(v["results"][2]["detail"]["registration_token"], "prod");
    // bob's look before his group had the server was refused and audited
    // under what he typed (its id), exactly as a look at a missing server
    // would be: his own trail tells him nothing more.
    let probes = audit_actions(app, &admin, &format!("?server={id}&action=server.read")).await;
    assert_eq!(
        probes,
        vec![("server.read".to_string(), "error".to_string())]
    );
    let failed = audit_actions(app, &admin, "?action=server.register_failed").await;
    assert_eq!(failed.len(), 6);
    assert!(failed.iter().all(|(_, r)| r == "error"));

    // Non-admins see only their own events.
    let (_, v) = app
        .call(Method::GET, "/api/audit/events/", Some(&bob), None)
        .await;
    assert!(v["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["user"] == "bob"));
    // bob's login and his two refused looks: at web-1 before he could reach
    // it, and at a server that does not exist (audited alike).
    assert_eq!(v["count"], 3);
}

async fn users_list_is_for_admins(app: &TestApp) {
    let admin = app.admin_key().await;
    let bob = app.user_key("bob").await;
    let (s, _) = app
        .call(Method::GET, "/api/iam/users/", Some(&bob), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = app
        .call(Method::GET, "/api/iam/users/", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["count"], 2);
    assert_eq!(v["results"][0]["username"], "bob");
    assert!(v["results"][0].get("password_hash").is_none());
}

/// People and groups made after a deletion get fresh UIDs and GIDs; only a
/// superuser makes staff; a member cannot learn which names exist by
/// filtering memberships.
async fn identities_are_never_reused_and_staff_come_from_superusers(app: &TestApp) {
    let admin = app.admin_key().await;
    let pw = "correct horse battery staple";
    let create = |name: &'static str, staff: bool, key: String| async move {
        app.call(
            Method::POST,
            "/api/iam/users/",
            Some(&key),
            Some(json!({"username": name, "password": pw, "is_staff": staff})),
        )
        .await
    };
    let (s, carol) = create("carol", false, admin.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{carol}");
    let (s, g1) = app
        .call(
            Method::POST,
            "/api/iam/groups/",
            Some(&admin),
            Some(json!({"name": "ops"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g1}");
    let (s, _) = app
        .call(Method::DELETE, "/api/iam/users/carol/", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .call(Method::DELETE, "/api/iam/groups/ops/", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, dave) = create("dave", true, admin.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{dave}");
    let (s, g2) = app
        .call(
            Method::POST,
            "/api/iam/groups/",
            Some(&admin),
            Some(json!({"name": "dev"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g2}");
    let uid = |v: &Value| v["uid"].as_i64().expect("uid");
    let gid = |v: &Value| v["gid"].as_i64().expect("gid");
    assert!(uid(&dave) > uid(&carol), "{dave} after {carol}");
    assert!(gid(&g2) > gid(&g1), "{g2} after {g1}");

    // dave is staff: he may make people, not more staff.
    let dave_key = app.login("dave", pw).await;
    let (s, v) = create("erin", true, dave_key.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = create("erin", false, dave_key).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // A member filtering by a name: an unknown one and a known stranger
    // look the same (an empty page); an admin is told the name is unknown.
    let bob = app.user_key("bob").await;
    for who in ["nobody-here", "erin"] {
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/iam/memberships/?user={who}"),
                Some(&bob),
                None,
            )
            .await;
        assert_eq!(
            (s, v["count"].as_i64()),
            (StatusCode::OK, Some(0)),
            "{who}: {v}"
        );
    }
    let (s, _) = app
        .call(
            Method::GET,
            "/api/iam/memberships/?user=nobody-here",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Two owners leaving at once, in ten groups at once: in each, one goes,
/// the other is refused as the last owner, and the group keeps an owner
/// (the check holds the group until the change commits).
async fn the_last_owner_stays_under_concurrent_leaves(app: &TestApp) {
    let admin = app.admin_key().await;
    let alice = app.user_key("alice").await;
    let bob = app.user_key("bob").await;
    let mut leaves = Vec::new();
    for n in 0..10 {
        let group = format!("ops{n}");
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/groups/",
                Some(&admin),
                Some(json!({"name": group})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for (who, key) in [("alice", &alice), ("bob", &bob)] {
            let (s, v) = app
                .call(
                    Method::POST,
                    "/api/iam/memberships/",
                    Some(&admin),
                    Some(json!({"group": group, "user": who, "role": "owner"})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            let path = format!("/api/iam/memberships/{}/", v["id"].as_str().unwrap());
            leaves.push((group.clone(), path, key.clone()));
        }
    }
    let answers = futures_util::future::join_all(
        leaves
            .iter()
            .map(|(_, path, key)| app.call(Method::DELETE, path, Some(key), None)),
    )
    .await;
    for (pair, group) in answers.chunks(2).zip(leaves.chunks(2).map(|l| &l[0].0)) {
        let mut codes = [pair[0].0, pair[1].0];
        codes.sort();
        assert_eq!(
            codes,
            [StatusCode::OK, StatusCode::CONFLICT],
            "{group}: {pair:?}"
        );
        let (_, v) = app
            .call(
                Method::GET,
                &format!("/api/iam/memberships/?group={group}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(v["count"], 1, "{group}: {v}");
        assert_eq!(v["results"][0]["role"], "owner", "{group}: {v}");
    }
}

async fn bad_bodies_are_json_errors_and_bodies_are_limited(app: &TestApp) {
    let admin = app.admin_key().await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/auth/login/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (s, v) = app.send(req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "invalid");

    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/auth/login/")
        .body(Body::from("{}"))
        .unwrap();
    let (s, v) = app.send(req).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(v["code"], "invalid");

    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/tokens/",
            Some(&admin),
            Some(json!({"nam": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains("name"), "{v}");

    let big = json!({"name": "x".repeat(crate::app::BODY_LIMIT + 1)});
    let (s, v) = app
        .call(Method::POST, "/api/auth/tokens/", Some(&admin), Some(big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["code"], "invalid");
}

async fn downloads_explain_what_is_missing(app: &TestApp) {
    let (s, v) = app.call(Method::GET, "/downloads/ca.crt", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "no_ca");
    let (s, v) = app
        .call(Method::GET, "/downloads/alpamon", None, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "agent_binary_missing");
    std::fs::write(app.dir.path().join("alpamon"), b"#!/bin/sh\n").unwrap();
    let (s, v) = app
        .call(Method::GET, "/downloads/alpamon", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, Value::String("#!/bin/sh\n".into()));
}

/// Runs each flow on a fresh SQLite database; the PostgreSQL test below runs
/// the same flows there.
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
        async fn postgres_backend_runs_every_flow() {
            let Some(pg) = crate::testutil::Postgres::start() else { return };
            let admin = crate::db::Db::connect(&pg.url).await.expect("connect to postgres");
            assert_eq!(admin.backend, crate::db::Backend::Postgres);
            crate::db::tests::round_trip(&admin).await;
            // Migrations are idempotent on a second connect.
            crate::db::Db::connect(&pg.url).await.expect("reconnect");
            $(
                let name = stringify!($name);
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin.pool)
                    .await
                    .expect("create database");
                let url = pg.url.replace("/postgres", &format!("/{name}"));
                let db = crate::db::Db::connect(&url).await.expect("connect");
                $name(&TestApp::with_db(db).await).await;
            )*
            concurrent_registrations(&admin).await;
        }
    };
}

flows!(
    status_and_unknown_paths,
    authentication_errors_and_header_styles,
    api_tokens_lifecycle,
    registration_and_servers,
    users_list_is_for_admins,
    identities_are_never_reused_and_staff_come_from_superusers,
    the_last_owner_stays_under_concurrent_leaves,
    bad_bodies_are_json_errors_and_bodies_are_limited,
    downloads_explain_what_is_missing,
);

/// Racing agents never use a token more often than allowed.
async fn concurrent_registrations(db: &crate::db::Db) {
    use crate::servers::{create_registration_token, register_server};
    let t = create_registration_token(db, "race", None, None, Some(3))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10u8 {
        let (db, key) = (db.clone(), t.key.clone());
        tasks.push(tokio::spawn(async move {
            register_server(&db, &key, &format!("race{i}"), &pubkey(40 + i))
                .await
                .is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as usize;
    }
    assert_eq!(wins, 3);
}

/// The whole gateway over real TLS: first start, a client trusting the CA,
/// the client address in the audit trail, and a restart that reuses
/// everything.
#[tokio::test]
async fn gateway_serves_https_and_restarts_cleanly() {
    use crate::config::Settings;
    use crate::gateway::Gateway;
    let d = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: d.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: None,
        tls: None,
        public_url: None,
        agent_binary: d.path().join("alpamon"),
        session_ttl_hours: 1,
        account_termination: Default::default(),
        limits: Default::default(),
    };
    let gw = Gateway::start(settings.clone()).await.unwrap();
    let pw = gw
        .initial_password
        .clone()
        .expect("first start makes admin");
    let port = gw.config.listen.port();
    assert_eq!(gw.config.public_url, format!("https://localhost:{port}"));
    let ca_path = gw.config.ca_cert.clone().unwrap();
    assert!(ca_path.ends_with("data/tls/ca.crt"));
    let ca = std::fs::read(&ca_path).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let url = gw.config.public_url.clone();
    let r = client
        .post(format!("{url}/api/auth/login/"))
        .json(&json!({"username": "admin", "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let v: Value = client
        .get(format!("{url}/api/audit/events/"))
        .header("Authorization", format!("Token {key}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["results"][0]["client_ip"], "127.0.0.1");
    let served_ca = client
        .get(format!("{url}/downloads/ca.crt"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&served_ca[..], &ca[..]);
    gw.shutdown().await.unwrap();

    let cert_before = std::fs::read(d.path().join("data/tls/server.crt")).unwrap();
    let gw = Gateway::start(settings).await.unwrap();
    assert!(gw.initial_password.is_none());
    assert_eq!(std::fs::read(&ca_path).unwrap(), ca);
    assert_eq!(
        std::fs::read(d.path().join("data/tls/server.crt")).unwrap(),
        cert_before
    );
    gw.shutdown().await.unwrap();
}
