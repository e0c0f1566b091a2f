//! Login throttling and multi-factor authentication, end to end: TOTP codes
//! computed by `oathtool` (an independent RFC 6238 implementation),
//! recovery codes, lockout, decision points, and WebAuthn with a software
//! authenticator written here (P-256 ECDSA, CBOR, attestation "none") whose
//! signatures the gateway verifies.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alpacon_e2e::{bin, free_port, text, Cli, Gateway};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The TOTP code at unix time `at` per oathtool.
fn oathtool(secret: &str, at: u64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "-N", &format!("@{at}"), secret])
        .output()
        .expect("oathtool is installed (scripts/test installs it)");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn create_user(gw: &mut Gateway, name: &str, password: &str) {
    let (s, v) = gw
        .call(
            "POST",
            "/api/iam/users/",
            Some(json!({"username": name, "password": password})),
        )
        .unwrap();
    assert_eq!(s, 201, "{v}");
}

fn login(cli: &Cli, gw: &Gateway, user: &str, password: &str, extra: &[&str]) -> Output {
    let ca = gw.ca();
    let mut args = vec![
        "login",
        &gw.url,
        "-u",
        user,
        "-p",
        password,
        "--ca-cert",
        ca.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli.run(&args)
}

fn json_out(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn audit_count(gw: &mut Gateway, action: &str, result: &str) -> usize {
    let (s, v) = gw
        .call(
            "GET",
            &format!("/api/audit/events/?action={action}&page_size=100"),
            None,
        )
        .unwrap();
    assert_eq!(s, 200, "{v}");
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == result)
        .count()
}

#[test]
fn totp_enrollment_login_replay_recovery_codes_and_decision_points() {
    let mut gw = Gateway::start().unwrap();
    let pw = "alice-password-1";
    create_user(&mut gw, "alice", pw);

    // Two logins before enrolling: `second` stays unverified.
    let first = Cli::new().unwrap();
    let out = login(&first, &gw, "alice", pw, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let second = Cli::new().unwrap();
    let out = login(&second, &gw, "alice", pw, &[]);
    assert!(out.status.success(), "{}", text(&out));

    // Enroll: secret, otpauth URI, QR and ten recovery codes, shown once.
    let out = first.run(&["mfa", "totp", "enroll"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains("otpauth://totp/"), "{shown}");
    assert!(shown.contains('▀') || shown.contains('▄'), "{shown}");
    // (Enrolling again replaces the pending secret: use the JSON answer.)
    let v = json_out(&first.run(&["mfa", "totp", "enroll", "-o", "json"]));
    let secret = v["secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32, "160-bit secret: {v}");
    assert!(v["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/Alpacon:alice"));
    let codes: Vec<String> = v["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10, "{v}");

    // Confirm with the code oathtool computes.
    let t = now_secs();
    let code = oathtool(&secret, t);
    let out = first.run(&["mfa", "totp", "verify", &code]);
    assert!(out.status.success(), "{}", text(&out));

    // The same code is never accepted twice.
    let out = first.run(&["mfa", "verify", &code]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already used"),
        "{}",
        text(&out)
    );

    // Logging in now takes a code: without one (no terminal) it says so.
    let third = Cli::new().unwrap();
    let out = login(&third, &gw, "alice", pw, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--totp"),
        "{}",
        text(&out)
    );
    // With the next step's code (the gateway accepts one step of skew).
    let next = oathtool(&secret, t + 30);
    let out = login(&third, &gw, "alice", pw, &["--totp", &next]);
    assert!(out.status.success(), "{}", text(&out));
    let out = third.run(&["whoami"]);
    assert!(out.status.success(), "{}", text(&out));

    // The raw API: a password alone gives the second step, not a session.
    let r = gw
        .http()
        .post(gw.api("/api/auth/login/"))
        .json(&json!({"username": "alice", "password": pw}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let step: Value = r.json().unwrap();
    assert_eq!(step["mfa_required"], true, "{step}");
    assert!(step.get("key").is_none(), "{step}");
    assert_eq!(step["methods"], json!(["totp", "recovery"]), "{step}");
    let token = step["mfa_token"].as_str().unwrap().to_string();
    // A wrong code is refused (and counts toward throttling).
    let r = gw
        .http()
        .post(gw.api("/api/auth/login/mfa/"))
        .json(&json!({"mfa_token": token, "code": "000000"}))
        .send()
        .unwrap();
    let wrong_status = r.status().as_u16();
    let v: Value = r.json().unwrap();
    // (000000 could be the real code once in a million runs.)
    if wrong_status != 200 {
        assert_eq!(wrong_status, 401, "{v}");
        assert_eq!(v["code"], "invalid_mfa_code", "{v}");
    }

    // Decision point: the session from before enrollment never verified a
    // factor, so it cannot create a token until `alpacon mfa verify`.
    let out = second.run(&["token", "create", "--name", "ci"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alpacon mfa verify"), "{}", text(&out));
    assert!(audit_count(&mut gw, "mfa.required", "error") >= 1);
    let out = second.run(&["mfa", "verify", "--recovery-code", &codes[0]]);
    assert!(out.status.success(), "{}", text(&out));
    let out = second.run(&["token", "create", "--name", "ci"]);
    assert!(out.status.success(), "{}", text(&out));

    // A recovery code works exactly once, at login too.
    let fourth = Cli::new().unwrap();
    let out = login(&fourth, &gw, "alice", pw, &["--recovery-code", &codes[1]]);
    assert!(out.status.success(), "{}", text(&out));
    let out = login(&fourth, &gw, "alice", pw, &["--recovery-code", &codes[1]]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = login(&fourth, &gw, "alice", pw, &["--recovery-code", &codes[0]]);
    assert!(!out.status.success(), "{}", text(&out));

    let v = json_out(&first.run(&["mfa", "status", "-o", "json"]));
    assert_eq!(v["enrolled"], true, "{v}");
    assert_eq!(v["totp"]["enabled"], true, "{v}");
    assert_eq!(v["recovery_codes_remaining"], 8, "{v}");
    assert_eq!(v["session"]["verified"], true, "{v}");

    // Regenerating codes needs a recent verification (first has one from
    // confirming the enrollment); the old codes stop working.
    let v = json_out(&first.run(&["mfa", "recovery-codes", "regenerate", "-o", "json"]));
    let fresh: Vec<String> = v["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(fresh.len(), 10);
    let out = login(&fourth, &gw, "alice", pw, &["--recovery-code", &codes[2]]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = login(&fourth, &gw, "alice", pw, &["--recovery-code", &fresh[0]]);
    assert!(out.status.success(), "{}", text(&out));

    // Every step is in the audit trail.
    assert!(audit_count(&mut gw, "mfa.totp.confirm", "ok") == 1);
    assert!(audit_count(&mut gw, "mfa.verify", "ok") >= 1);
    assert!(audit_count(&mut gw, "mfa.verify", "error") >= 1);
    assert!(audit_count(&mut gw, "auth.login_failed", "error") >= 1);
}

#[test]
fn repeated_wrong_passwords_lock_the_account_with_login_throttled() {
    let mut gw = Gateway::start().unwrap();
    let pw = "bob-password-12";
    create_user(&mut gw, "bob", pw);
    let attempt = |gw: &Gateway, password: &str| -> (u16, Value) {
        let r = gw
            .http()
            .post(gw.api("/api/auth/login/"))
            .json(&json!({"username": "bob", "password": password}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    for _ in 0..5 {
        let (s, v) = attempt(&gw, "wrong-password");
        assert_eq!(s, 401, "{v}");
        assert_eq!(v["code"], "invalid_credentials");
    }
    // Locked now: even the right password is turned away, with a wait.
    let (s, v) = attempt(&gw, pw);
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["code"], "login_throttled", "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("try again in"), "{detail}");

    // The CLI says the same.
    let cli = Cli::new().unwrap();
    let out = login(&cli, &gw, "bob", pw, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("try again in"),
        "{}",
        text(&out)
    );

    // Other accounts are not locked; the refusals are audited (repeats
    // from one address within seconds as one event with their count).
    assert!(audit_count(&mut gw, "auth.login_throttled", "error") >= 1);
    assert!(audit_count(&mut gw, "auth.login_failed", "error") >= 5);

    // The lock is in the database: a restarted gateway keeps it.
    gw.restart().unwrap();
    let (s, v) = attempt(&gw, pw);
    assert_eq!(s, 429, "{v}");
}

// ---------------------------------------------------------------------------
// WebAuthn

/// A gateway whose public URL is https://localhost:PORT (WebAuthn needs a
/// DNS name as relying party), reached on 127.0.0.1.
struct LocalhostGateway {
    _dir: tempfile::TempDir,
    child: Child,
    origin: String,
    http: reqwest::blocking::Client,
    admin_password: String,
}

impl LocalhostGateway {
    fn start() -> LocalhostGateway {
        let dir = tempfile::Builder::new()
            .prefix("alpacon-gw-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let data = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let origin = format!("https://localhost:{port}");
        let child = Command::new(bin("alpacon-server"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--public-url", &origin])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ca = data.join("tls/ca.crt");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        let http = loop {
            if let Ok(pem) = std::fs::read(&ca) {
                let http = reqwest::blocking::Client::builder()
                    .use_rustls_tls()
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                    .resolve("localhost", addr)
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                if let Ok(r) = http.get(format!("{origin}/api/status/")).send() {
                    if r.status().is_success() {
                        break http;
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "gateway did not start: {}",
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let admin_password = std::fs::read_to_string(data.join("initial-admin-password"))
            .unwrap()
            .trim()
            .to_string();
        LocalhostGateway {
            _dir: dir,
            child,
            origin,
            http,
            admin_password,
        }
    }

    fn call(&self, key: Option<&str>, method: &str, path: &str, body: Value) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.origin))
            .json(&body);
        if let Some(k) = key {
            req = req.header("Authorization", format!("Token {k}"));
        }
        let r = req.send().unwrap();
        let s = r.status().as_u16();
        let text = r.text().unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for LocalhostGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A software FIDO2 authenticator: one P-256 credential, user present and
/// verified, attestation "none". Everything it sends is built and signed
/// here; the gateway checks it with webauthn-rs.
struct SoftAuthenticator {
    key: p256::ecdsa::SigningKey,
    cred_id: Vec<u8>,
    counter: u32,
    origin: String,
}

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;

impl SoftAuthenticator {
    fn new(origin: &str) -> Self {
        use rand::RngCore;
        let mut cred_id = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut cred_id);
        SoftAuthenticator {
            key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
            cred_id,
            counter: 0,
            origin: origin.to_string(),
        }
    }

    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": kind,
            "challenge": challenge,
            "origin": self.origin,
            "crossOrigin": false,
        }))
        .unwrap()
    }

    fn auth_data(&mut self, rp_id: &str, flags: u8) -> Vec<u8> {
        self.counter += 1;
        let mut d = Sha256::digest(rp_id.as_bytes()).to_vec();
        d.push(flags);
        d.extend_from_slice(&self.counter.to_be_bytes());
        d
    }

    /// COSE_Key of the public key: {1: 2 (EC2), 3: -7 (ES256), -1: 1
    /// (P-256), -2: x, -3: y}.
    fn cose_key(&self) -> Vec<u8> {
        use ciborium::Value as C;
        let point = self.key.verifying_key().to_encoded_point(false);
        let map = C::Map(vec![
            (C::Integer(1.into()), C::Integer(2.into())),
            (C::Integer(3.into()), C::Integer((-7).into())),
            (C::Integer((-1).into()), C::Integer(1.into())),
            (
                C::Integer((-2).into()),
                C::Bytes(point.x().unwrap().to_vec()),
            ),
            (
                C::Integer((-3).into()),
                C::Bytes(point.y().unwrap().to_vec()),
            ),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&map, &mut out).unwrap();
        out
    }

    /// `navigator.credentials.create` for the gateway's creation options.
    fn create(&mut self, options: &Value) -> Value {
        let pk = &options["publicKey"];
        let rp_id = pk["rp"]["id"].as_str().unwrap().to_string();
        let challenge = pk["challenge"].as_str().unwrap();
        let client_data = self.client_data("webauthn.create", challenge);
        let mut auth_data = self.auth_data(&rp_id, FLAG_UP | FLAG_UV | FLAG_AT);
        auth_data.extend_from_slice(&[0u8; 16]); // AAGUID
        auth_data.extend_from_slice(&(self.cred_id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&self.cred_id);
        auth_data.extend_from_slice(&self.cose_key());
        use ciborium::Value as C;
        let att = C::Map(vec![
            (C::Text("fmt".into()), C::Text("none".into())),
            (C::Text("attStmt".into()), C::Map(vec![])),
            (C::Text("authData".into()), C::Bytes(auth_data)),
        ]);
        let mut att_obj = Vec::new();
        ciborium::into_writer(&att, &mut att_obj).unwrap();
        json!({
            "id": B64.encode(&self.cred_id),
            "rawId": B64.encode(&self.cred_id),
            "type": "public-key",
            "response": {
                "attestationObject": B64.encode(att_obj),
                "clientDataJSON": B64.encode(client_data),
            },
            "extensions": {},
        })
    }

    /// `navigator.credentials.get`: signs authenticatorData ‖
    /// SHA-256(clientDataJSON) with the credential's key.
    fn get(&mut self, options: &Value) -> Value {
        use p256::ecdsa::signature::Signer;
        let pk = &options["publicKey"];
        let rp_id = pk["rpId"].as_str().unwrap().to_string();
        let allowed: Vec<&str> = pk["allowCredentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert!(
            allowed.contains(&B64.encode(&self.cred_id).as_str()),
            "{options}"
        );
        let client_data = self.client_data("webauthn.get", pk["challenge"].as_str().unwrap());
        let auth_data = self.auth_data(&rp_id, FLAG_UP | FLAG_UV);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let sig: p256::ecdsa::Signature = self.key.sign(&signed);
        json!({
            "id": B64.encode(&self.cred_id),
            "rawId": B64.encode(&self.cred_id),
            "type": "public-key",
            "response": {
                "authenticatorData": B64.encode(auth_data),
                "clientDataJSON": B64.encode(client_data),
                "signature": B64.encode(sig.to_der().as_bytes()),
                "userHandle": null,
            },
            "extensions": {},
        })
    }
}

#[test]
fn webauthn_registration_and_login_with_a_software_authenticator() {
    let gw = LocalhostGateway::start();
    let pw = gw.admin_password.clone();
    let password_login = || {
        let (s, v) = gw.call(
            None,
            "POST",
            "/api/auth/login/",
            json!({"username": "admin", "password": pw}),
        );
        assert_eq!(s, 200, "{v}");
        v
    };
    let v = password_login();
    let key = v["key"].as_str().unwrap().to_string();

    // Register a passkey.
    let (s, options) = gw.call(
        Some(&key),
        "POST",
        "/api/iam/mfa/webauthn/register/start/",
        json!({}),
    );
    assert_eq!(s, 200, "{options}");
    assert_eq!(options["publicKey"]["rp"]["id"], "localhost", "{options}");
    let mut authenticator = SoftAuthenticator::new(&gw.origin);
    let credential = authenticator.create(&options);
    let (s, v) = gw.call(
        Some(&key),
        "POST",
        "/api/iam/mfa/webauthn/register/finish/",
        json!({"name": "soft key", "credential": credential}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["recovery_codes"].as_array().unwrap().len(), 10, "{v}");

    // Login: the password gives the second step; the assertion completes it.
    let step = password_login();
    assert_eq!(step["mfa_required"], true, "{step}");
    assert_eq!(step["methods"], json!(["webauthn", "recovery"]), "{step}");
    let token = step["mfa_token"].as_str().unwrap().to_string();
    let (s, options) = gw.call(
        None,
        "POST",
        "/api/auth/login/mfa/webauthn/",
        json!({"mfa_token": token}),
    );
    assert_eq!(s, 200, "{options}");

    // An assertion by another key (same credential id) is refused.
    let mut impostor = SoftAuthenticator::new(&gw.origin);
    impostor.cred_id = authenticator.cred_id.clone();
    let forged = impostor.get(&options);
    let (s, v) = gw.call(
        None,
        "POST",
        "/api/auth/login/mfa/",
        json!({"mfa_token": token, "webauthn": forged}),
    );
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["code"], "invalid_mfa_code", "{v}");

    // The challenge answers once: a fresh one for the real key.
    let (s, options) = gw.call(
        None,
        "POST",
        "/api/auth/login/mfa/webauthn/",
        json!({"mfa_token": token}),
    );
    assert_eq!(s, 200, "{options}");
    let assertion = authenticator.get(&options);
    let (s, v) = gw.call(
        None,
        "POST",
        "/api/auth/login/mfa/",
        json!({"mfa_token": token, "webauthn": assertion}),
    );
    assert_eq!(s, 200, "{v}");
    let key2 = v["key"].as_str().unwrap().to_string();
    // The same assertion (and the used mfa_token) cannot log in again.
    let (s, v) = gw.call(
        None,
        "POST",
        "/api/auth/login/mfa/",
        json!({"mfa_token": token, "webauthn": assertion}),
    );
    assert_eq!(s, 401, "{v}");

    // The login verified the factor: token creation is allowed.
    let (s, v) = gw.call(
        Some(&key2),
        "POST",
        "/api/auth/tokens/",
        json!({"name": "after-login"}),
    );
    assert_eq!(s, 201, "{v}");

    // A session from a plain password login (before registration) must
    // verify first, at a decision point, then refresh with the key.
    let (s, v) = gw.call(
        Some(&key),
        "PUT",
        "/api/iam/mfa-policy/",
        json!({"enforce_at_login": false, "allowed_methods": ["webauthn", "totp"], "validity_minutes": 30}),
    );
    // (`key` verified when it registered the key, so it passes.)
    assert_eq!(s, 200, "{v}");
    let (s, options) = gw.call(Some(&key2), "POST", "/api/auth/mfa/webauthn/", json!({}));
    assert_eq!(s, 200, "{options}");
    let assertion = authenticator.get(&options);
    let (s, v) = gw.call(
        Some(&key2),
        "POST",
        "/api/auth/mfa/verify/",
        json!({"webauthn": assertion}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["method"], "webauthn", "{v}");

    let (s, v) = gw.call(Some(&key2), "GET", "/api/iam/mfa/", json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["webauthn"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["policy"]["validity_minutes"], 30, "{v}");
}

#[test]
fn enforced_policy_gives_users_without_mfa_an_enrollment_only_session() {
    let mut gw = Gateway::start().unwrap();
    let pw = "carol-password-1";
    create_user(&mut gw, "carol", pw);
    let (s, v) = gw
        .call(
            "PUT",
            "/api/iam/mfa-policy/",
            Some(json!({"enforce_at_login": true, "allowed_methods": ["totp"], "validity_minutes": 15})),
        )
        .unwrap();
    assert_eq!(s, 200, "{v}");

    let cli = Cli::new().unwrap();
    let out = login(&cli, &gw, "carol", pw, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("alpacon mfa totp enroll"),
        "{}",
        text(&out)
    );
    // Nothing but enrolling works.
    let out = cli.run(&["token", "ls"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mfa totp enroll"),
        "{}",
        text(&out)
    );
    let v = json_out(&cli.run(&["mfa", "totp", "enroll", "-o", "json"]));
    let secret = v["secret"].as_str().unwrap().to_string();
    let out = cli.run(&["mfa", "totp", "verify", &oathtool(&secret, now_secs())]);
    assert!(out.status.success(), "{}", text(&out));
    // Enrolled and verified: the session is a full one now.
    let out = cli.run(&["token", "ls"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// The same storage paths on PostgreSQL: throttle rows, TOTP steps,
/// recovery codes, the policy upsert and the enroll-only session.
#[test]
fn mfa_storage_works_on_postgresql() {
    let pg = alpacon_e2e::pg::Postgres::start().unwrap();
    let mut gw = Gateway::start_with(Some(pg.url())).unwrap();
    let pw = "dave-password-1";
    create_user(&mut gw, "dave", pw);
    let cli = Cli::new().unwrap();
    let out = login(&cli, &gw, "dave", pw, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let v = json_out(&cli.run(&["mfa", "totp", "enroll", "-o", "json"]));
    let secret = v["secret"].as_str().unwrap().to_string();
    let codes = v["recovery_codes"].as_array().unwrap().clone();
    let t = now_secs();
    let code = oathtool(&secret, t);
    let out = cli.run(&["mfa", "totp", "verify", &code]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli.run(&["mfa", "verify", &code]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = login(
        &cli,
        &gw,
        "dave",
        pw,
        &["--totp", &oathtool(&secret, t + 30)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let rc = codes[0].as_str().unwrap();
    let out = login(&cli, &gw, "dave", pw, &["--recovery-code", rc]);
    assert!(out.status.success(), "{}", text(&out));
    let out = login(&cli, &gw, "dave", pw, &["--recovery-code", rc]);
    assert!(!out.status.success(), "{}", text(&out));

    // Policy upsert, twice (insert, then update).
    for validity in [20, 25] {
        let (s, v) = gw
            .call(
                "PUT",
                "/api/iam/mfa-policy/",
                Some(json!({"enforce_at_login": validity == 25, "allowed_methods": ["totp"], "validity_minutes": validity})),
            )
            .unwrap();
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = gw.call("GET", "/api/iam/mfa-policy/", None).unwrap();
    assert_eq!((s, v["validity_minutes"].clone()), (200, json!(25)), "{v}");

    // Throttle rows.
    for _ in 0..5 {
        let r = gw
            .http()
            .post(gw.api("/api/auth/login/"))
            .json(&json!({"username": "nobody", "password": "x"}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let r = gw
        .http()
        .post(gw.api("/api/auth/login/"))
        .json(&json!({"username": "nobody", "password": "x"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
}
