//! HTTP-level tests of the routes in `http.rs`: the answers keep their
//! shapes, and the rules hold under concurrent requests.

use crate::testutil::TestApp;
use axum::http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn of_two_racing_approvals_one_wins_and_only_it_is_recorded() {
    let app = TestApp::new().await;
    let admin = app.admin_key().await;
    let web = app.add_server("web-1", 1).await;
    let alice = app.user_key("alice").await;
    app.reach("alice", &web).await;
    let staff = app.user_key("carol").await;
    sqlx::query("UPDATE users SET is_staff = 1 WHERE username = 'carol'")
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    let (s, v) = app
        .call(
            Method::POST,
            "/api/work-sessions/sessions/",
            Some(&alice),
            Some(
                json!({"purpose": "INC-1", "servers": ["web-1"], "scopes": ["command"],
                        "duration": "1h"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let path = format!(
        "/api/work-sessions/sessions/{}/approve/",
        v["id"].as_str().unwrap()
    );
    let (a, b) = tokio::join!(
        app.call(
            Method::POST,
            &path,
            Some(&admin),
            Some(json!({"note": "a"}))
        ),
        app.call(
            Method::POST,
            &path,
            Some(&staff),
            Some(json!({"note": "b"}))
        ),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{a:?} {b:?}"
    );
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'work_session.approve' AND result = 'ok'",
    )
    .fetch_one(&app.state.db.pool)
    .await
    .unwrap();
    assert_eq!(n, 1);
    let winner = if a.0 == StatusCode::OK { "a" } else { "b" };
    let note: Option<String> = sqlx::query_scalar("SELECT decision_note FROM work_sessions")
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
    assert_eq!(
        note.as_deref(),
        Some(winner),
        "the loser overwrote the decision"
    );
}

#[tokio::test]
async fn an_agent_cannot_write_sudo_or_account_events_at_will() {
    let app = TestApp::new().await;
    let web = app.add_server("web-1", 1).await;
    let forged = alpacon_proto::Control::SudoUsed {
        grant_id: "nonexistent".into(),
        username: "admin".into(),
        entry: "COMMAND=/usr/bin/rm -rf /var/lib/important".into(),
    };
    super::on_sudo_report(&app.state, &web, &forged).await;
    crate::accounts::on_locked(&app.state, &web, "alice", 20001, true, None).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE action IN ('sudo.use', 'account.remove', 'account.lock')",
    )
    .fetch_one(&app.state.db.pool)
    .await
    .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_huge_numeric_duration_is_refused_not_wrapped() {
    let app = TestApp::new().await;
    let web = app.add_server("web-1", 1).await;
    let alice = app.user_key("alice").await;
    app.reach("alice", &web).await;
    let (s, v) = app
        .call(
            Method::POST,
            "/api/work-sessions/sessions/",
            Some(&alice),
            Some(
                json!({"purpose": "x", "servers": ["web-1"], "scopes": ["command"],
                        "duration": i64::MAX}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

const SESSION_KEYS: [&str; 18] = [
    "activated_at",
    "created_at",
    "decided_at",
    "decided_by",
    "decision_note",
    "duration_seconds",
    "end_reason",
    "ended_at",
    "expires_at",
    "extension_requested_seconds",
    "id",
    "purpose",
    "requester",
    "scopes",
    "servers",
    "starts_at",
    "status",
    "sudo_commands",
];

/// The answers keep the fields (and nulls) they had as hand-built JSON.
#[tokio::test]
async fn sessions_timelines_and_the_policy_keep_their_shapes() {
    let app = TestApp::new().await;
    let admin = app.admin_key().await;
    let web = app.add_server("web-1", 1).await;
    let alice = app.user_key("alice").await;
    app.reach("alice", &web).await;
    let (s, v) = app
        .call(
            Method::POST,
            "/api/work-sessions/sessions/",
            Some(&alice),
            Some(
                json!({"purpose": " INC-7 ", "servers": ["web-1"], "scopes": ["sudo", "command"],
                        "duration": 5400}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(keys(&v), SESSION_KEYS);
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["status"], "pending");
    assert_eq!(v["purpose"], "INC-7");
    assert_eq!(v["scopes"], json!(["command", "sudo"]));
    assert_eq!(v["servers"], json!([{"id": web, "name": "web-1"}]));
    assert_eq!(v["duration_seconds"], 5400);
    assert_eq!(v["sudo_commands"], json!([]));
    for k in [
        "starts_at",
        "activated_at",
        "expires_at",
        "decided_by",
        "ended_at",
    ] {
        assert!(v[k].is_null(), "{k}: {v}");
    }

    let (s, v) = app
        .call(
            Method::GET,
            "/api/work-sessions/sessions/?status=pending",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 1);
    assert_eq!(keys(&v["results"][0]), SESSION_KEYS);

    // No body at all approves as requested.
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/work-sessions/sessions/{id}/approve/"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "active");
    assert_eq!(v["decided_by"], "admin");
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/work-sessions/sessions/{id}/extend/"),
            Some(&alice),
            Some(json!({"duration": "1h"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["extension_requested_seconds"], 3600);
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/work-sessions/sessions/{id}/extend/"),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/work-sessions/sessions/{id}/timeline/"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(keys(&v), ["results", "session"]);
    assert_eq!(keys(&v["session"]), SESSION_KEYS);
    let items = v["results"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"work_session.request"), "{actions:?}");
    assert!(actions.contains(&"sudo.grant"), "{actions:?}");
    for i in items {
        assert_eq!(
            keys(i),
            [
                "action",
                "detail",
                "kind",
                "result",
                "server_name",
                "timestamp",
                "user"
            ]
        );
        assert_eq!(i["kind"], "event");
    }

    let (s, v) = app
        .call(
            Method::GET,
            "/api/work-sessions/policy/",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"required_for": "nobody", "required_groups": [],
               "auto_approve_superusers": false, "max_duration_hours": 24})
    );
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/work-sessions/policy/",
            Some(&admin),
            Some(json!({"required_for": "members"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"required_for": "members", "required_groups": [],
               "auto_approve_superusers": false, "max_duration_hours": 24})
    );
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/work-sessions/policy/",
            Some(&admin),
            Some(json!({"required_for": "members", "x": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}
