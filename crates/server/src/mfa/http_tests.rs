//! HTTP-level tests of the routes in `http.rs`: the answers keep the
//! fields (and nulls) they had as hand-built JSON.

use crate::testutil::TestApp;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

/// The answers keep the fields (and nulls) they had as hand-built JSON.
#[tokio::test]
async fn enrolling_verifying_and_logging_in_keep_their_shapes() {
    let app = TestApp::new().await;
    let alice = app.user_key("alice").await;
    let (s, v) = app
        .call(Method::GET, "/api/iam/mfa/", Some(&alice), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        keys(&v),
        [
            "enrolled",
            "policy",
            "recovery_codes_remaining",
            "session",
            "totp",
            "webauthn"
        ]
    );
    assert_eq!(v["totp"], json!({"enabled": false, "pending": false}));
    assert_eq!(
        v["session"],
        json!({"mfa_verified_at": null, "valid_until": null, "verified": false, "enroll_only": false})
    );
    assert_eq!(v["webauthn"], json!([]));

    let (s, e) = app
        .call(
            Method::POST,
            "/api/iam/mfa/totp/",
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    assert_eq!(
        keys(&e),
        [
            "confirmed",
            "detail",
            "otpauth_uri",
            "qr_svg",
            "recovery_codes",
            "secret"
        ]
    );
    assert_eq!(e["confirmed"], false);
    assert_eq!(e["recovery_codes"].as_array().unwrap().len(), 10);

    let secret = super::totp::decode_secret(e["secret"].as_str().unwrap()).unwrap();
    let gen = super::totp::generator(&secret, "alice").unwrap();
    let now = crate::db::now_ms() as u64 / 1000;
    let (s, v) = app
        .call(
            Method::POST,
            "/api/iam/mfa/totp/verify/",
            Some(&alice),
            Some(json!({"code": gen.generate(now)})),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"enabled": true})));

    let code = e["recovery_codes"][0].as_str().unwrap();
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/mfa/verify/",
            Some(&alice),
            Some(json!({"recovery_code": code})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(keys(&v), ["method", "mfa_verified_at", "valid_until"]);
    assert_eq!(v["method"], "recovery");

    // A malformed assertion is a malformed request, as before.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/mfa/verify/",
            Some(&alice),
            Some(json!({"webauthn": {"id": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "invalid");

    let (s, step) = app
        .try_login_from(
            crate::testutil::TEST_CLIENT_IP,
            "alice",
            "correct horse battery staple",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{step}");
    assert_eq!(
        keys(&step),
        ["expires_at", "methods", "mfa_required", "mfa_token"]
    );
    assert_eq!(step["methods"], json!(["totp", "recovery"]));
    let (s, v) = app
        .call(
            Method::POST,
            "/api/auth/login/mfa/",
            None,
            Some(json!({"mfa_token": step["mfa_token"], "recovery_code": e["recovery_codes"][1]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(keys(&v), ["expires_at", "key", "user"]);
    assert_eq!(v["user"]["username"], "alice");
    let fresh = v["key"].as_str().unwrap().to_string();

    let (s, v) = app
        .call(
            Method::POST,
            "/api/iam/mfa/recovery-codes/",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(keys(&v), ["recovery_codes"]);
    let (s, v) = app
        .call(Method::DELETE, "/api/iam/mfa/totp/", Some(&fresh), None)
        .await;
    // The fresh session verified at login.
    assert_eq!((s, v), (StatusCode::OK, json!({"removed": true})));
    let (s, v) = app
        .call(Method::GET, "/api/iam/mfa/webauthn/", Some(&alice), None)
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

#[tokio::test]
async fn the_policy_round_trips_and_refuses_unknown_fields() {
    let app = TestApp::new().await;
    let admin = app.admin_key().await;
    let (s, v) = app
        .call(Method::GET, "/api/iam/mfa-policy/", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"enforce_at_login": false, "allowed_methods": ["totp", "webauthn"], "validity_minutes": 15})
    );
    let p = json!({"enforce_at_login": false, "allowed_methods": ["totp"], "validity_minutes": 30});
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/iam/mfa-policy/",
            Some(&admin),
            Some(p.clone()),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, p));
    for bad in [
        json!({"enforce_at_login": false, "allowed_methods": ["sms"], "validity_minutes": 30}),
        json!({"enforce_at_login": false, "allowed_methods": ["totp"]}),
        json!({"enforce_at_login": false, "allowed_methods": ["totp"], "validity_minutes": 0}),
    ] {
        let (s, v) = app
            .call(Method::PUT, "/api/iam/mfa-policy/", Some(&admin), Some(bad))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["code"], "invalid");
    }
}
