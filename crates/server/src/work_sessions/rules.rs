//! Pure checks of what a request asks for: durations, start times, scopes,
//! sudo commands, the purpose, optional bodies. Each refusal is a 400
//! `invalid` saying what is wrong.

use serde_json::Value;

use super::state::{self, Policy, Scope};
use crate::error::ApiError;

pub const MAX_PURPOSE: usize = 500;

/// A JSON body that may be left out entirely (`POST .../approve/` alone).
pub fn optional_body<T: Default + serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The purpose, trimmed: 1 to [`MAX_PURPOSE`] printable characters.
pub fn check_purpose(purpose: &str) -> Result<String, ApiError> {
    let purpose = purpose.trim().to_string();
    if purpose.is_empty() || purpose.len() > MAX_PURPOSE || purpose.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "purpose must be 1 to {MAX_PURPOSE} printable characters: say why you need access"
        )));
    }
    Ok(purpose)
}

pub fn parse_duration_field(v: &Value, what: &str) -> Result<Option<i64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .and_then(state::duration_from_secs)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!("{what} must be a positive number of seconds"))
            }),
        Value::String(s) => state::parse_duration(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{what} must look like 90m, 2h or 1d, not {s:?}"))
        }),
        _ => Err(ApiError::bad_request(format!("{what} must be like \"2h\""))),
    }
}

pub fn parse_time(s: &Option<String>) -> Result<Option<i64>, ApiError> {
    match s.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| Some(d.timestamp_millis()))
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "starts_at must be RFC 3339, e.g. 2026-11-23T22:00:00Z, not {t:?}"
                ))
            }),
    }
}

pub fn parse_scope_list(v: &[String]) -> Result<Vec<Scope>, ApiError> {
    let mut out: Vec<Scope> = Vec::new();
    for s in v {
        let sc = Scope::parse(s.trim()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown scope {s:?}; scopes are websh, command, file, sudo, tunnel"
            ))
        })?;
        if !out.contains(&sc) {
            out.push(sc);
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("give at least one scope"));
    }
    out.sort();
    Ok(out)
}

pub fn check_duration(p: &Policy, ms: i64) -> Result<(), ApiError> {
    if ms > p.max_duration_hours as i64 * 3_600_000 {
        return Err(ApiError::bad_request(format!(
            "a work session lasts at most {} hours here",
            p.max_duration_hours
        )));
    }
    Ok(())
}

pub fn check_sudo_commands(cmds: &[String]) -> Result<(), ApiError> {
    for c in cmds {
        let ok = c.starts_with('/')
            && c.len() <= 200
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || " -_./=:@%+".contains(ch));
        if !ok {
            return Err(ApiError::bad_request(format!(
                "sudo commands must be absolute paths with plain arguments, not {c:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const H: i64 = 3_600_000;

    #[test]
    fn durations_from_json() {
        for (v, want) in [
            (json!(null), Some(None)),
            (json!("2h"), Some(Some(2 * H))),
            (json!(90), Some(Some(90_000))),
            (json!("90m"), Some(Some(90 * 60_000))),
            (json!(0), None),
            (json!(-5), None),
            (json!(1.5), None),
            (json!(i64::MAX), None),
            (json!("2w"), None),
            (json!(true), None),
            (json!(["2h"]), None),
        ] {
            let got = parse_duration_field(&v, "duration");
            match want {
                Some(w) => assert_eq!(got.unwrap(), w, "{v}"),
                None => assert_eq!(got.unwrap_err().code.as_str(), "invalid", "{v}"),
            }
        }
    }

    #[test]
    fn start_times() {
        assert_eq!(parse_time(&None).unwrap(), None);
        assert_eq!(parse_time(&Some(String::new())).unwrap(), None);
        assert_eq!(
            parse_time(&Some("1970-01-01T00:00:01Z".into())).unwrap(),
            Some(1000)
        );
        assert!(parse_time(&Some("tomorrow".into())).is_err());
    }

    #[test]
    fn scopes_are_deduplicated_sorted_and_known() {
        let l = |v: &[&str]| parse_scope_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            l(&["sudo", " command", "sudo"]).unwrap(),
            vec![Scope::Command, Scope::Sudo]
        );
        assert!(l(&[]).is_err());
        assert!(l(&["root"]).is_err());
    }

    #[test]
    fn sudo_commands_purposes_and_durations() {
        let c =
            |v: &[&str]| check_sudo_commands(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(c(&["/usr/bin/systemctl restart nginx"]).is_ok());
        assert!(c(&["systemctl"]).is_err());
        assert!(c(&["/bin/sh -c 'x; y'"]).is_err());
        assert_eq!(check_purpose("  INC-1 ").unwrap(), "INC-1");
        assert!(check_purpose(" ").is_err());
        assert!(check_purpose("a\nb").is_err());
        assert!(check_purpose(&"x".repeat(MAX_PURPOSE + 1)).is_err());
        let p = Policy::default();
        assert!(check_duration(&p, 24 * H).is_ok());
        assert!(check_duration(&p, 24 * H + 1).is_err());
    }

    #[test]
    fn bodies_may_be_left_out() {
        let b: alpacon_api::work_sessions::ApproveWorkSession = optional_body(b"  ").unwrap();
        assert!(b.note.is_none());
        let b: alpacon_api::work_sessions::ApproveWorkSession =
            optional_body(br#"{"note": "ok"}"#).unwrap();
        assert_eq!(b.note.as_deref(), Some("ok"));
        assert!(
            optional_body::<alpacon_api::work_sessions::ApproveWorkSession>(br#"{"x": 1}"#)
                .is_err()
        );
    }
}
