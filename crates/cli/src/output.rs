//! Rendering: aligned tables, JSON, and tolerant field lookups in the
//! gateway's JSON objects.

use std::io::Write;

use anyhow::Result;
use chrono::{DateTime, Local, Utc};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn print_json(value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A plain text table: a header line, columns separated by two spaces.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| sanitize(&c)).collect());
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().take(cols).enumerate() {
                if i + 1 == cols {
                    text.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> Result<()> {
        std::io::stdout()
            .lock()
            .write_all(self.render().as_bytes())?;
        Ok(())
    }
}

/// Text from the gateway goes to a terminal: control characters (escape
/// sequences, newlines) are shown escaped, never interpreted.
pub fn sanitize(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The value at a dotted path (`"system.os"`), if present and not null.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |cur, key| cur.get(key))
        .filter(|v| !v.is_null())
}

/// The first of several candidate fields that is present, as display text;
/// "-" when none is. Field names the contract leaves open are tried in turn.
pub fn text(v: &Value, paths: &[&str]) -> String {
    paths
        .iter()
        .find_map(|p| lookup(v, p))
        .map(value_text)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".to_string())
}

pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => yes_no(*b).to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// An RFC 3339 timestamp in the local time zone; unparseable text as is.
pub fn time(v: &Value, paths: &[&str]) -> String {
    in_local_time(text(v, paths))
}

fn in_local_time(raw: String) -> String {
    match DateTime::parse_from_rfc3339(&raw) {
        Ok(t) => t
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => raw,
    }
}

/// An RFC 3339 timestamp of a typed answer in the local time zone; "-"
/// when absent.
pub fn local_time(t: Option<&str>) -> String {
    match t {
        Some(raw) if !raw.is_empty() => in_local_time(raw.to_string()),
        _ => "-".to_string(),
    }
}

/// [`ago`] for a typed answer's timestamp.
pub fn ago_of(t: Option<&str>, now: DateTime<Utc>) -> String {
    match t {
        Some(raw) if !raw.is_empty() => ago_since(raw.to_string(), now),
        _ => "never".to_string(),
    }
}

/// "just now", "5m ago", "3d ago"; `never` when absent.
pub fn ago(v: &Value, paths: &[&str], now: DateTime<Utc>) -> String {
    let raw = text(v, paths);
    if raw == "-" {
        return "never".into();
    }
    ago_since(raw, now)
}

fn ago_since(raw: String, now: DateTime<Utc>) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(&raw) else {
        return raw;
    };
    let secs = (now - t.with_timezone(&Utc)).num_seconds();
    match secs {
        i64::MIN..=4 => "just now".into(),
        5..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `key: value` lines for an object, nested objects flattened with dots.
pub fn describe(v: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, child, out);
                }
            }
            other => {
                let t = value_text(other);
                out.push((
                    prefix.to_string(),
                    if t.is_empty() { "-".into() } else { t },
                ));
            }
        }
    }
    let mut pairs = Vec::new();
    walk("", v, &mut pairs);
    record(&pairs)
}

/// Aligned `key: value` lines.
pub fn record<K: AsRef<str>>(pairs: &[(K, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.as_ref().chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, val) in pairs {
        let key = format!("{}:", k.as_ref());
        out.push_str(&format!(
            "{key:width$}  {}\n",
            sanitize(val),
            width = width + 1
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["NAME", "ID", "CONNECTED"]);
        t.row(vec!["web-1".into(), "abc".into(), "yes".into()]);
        t.row(vec!["db".into(), "abcdef".into(), "no".into()]);
        assert_eq!(
            t.render(),
            "NAME   ID      CONNECTED\n\
             web-1  abc     yes\n\
             db     abcdef  no\n"
        );
    }

    #[test]
    fn table_escapes_control_characters() {
        let mut t = Table::new(&["A"]);
        t.row(vec!["x\x1b[31my\nz".into()]);
        assert_eq!(t.render(), "A\nx\\u{1b}[31my\\nz\n");
    }

    #[test]
    fn text_tries_fields_in_turn() {
        let v = json!({"system": {"os": "Debian 12"}, "addresses": ["10.0.0.1", "fe80::1"], "x": null, "up": true});
        assert_eq!(text(&v, &["os", "system.os"]), "Debian 12");
        assert_eq!(text(&v, &["addresses"]), "10.0.0.1,fe80::1");
        assert_eq!(text(&v, &["x", "missing"]), "-");
        assert_eq!(text(&v, &["up"]), "yes");
    }

    #[test]
    fn ago_is_relative() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| ago(&json!({ "t": s }), &["t"], now);
        assert_eq!(at("2024-05-01T12:00:00Z"), "just now");
        assert_eq!(at("2024-05-01T11:59:30Z"), "30s ago");
        assert_eq!(at("2024-05-01T11:55:00Z"), "5m ago");
        assert_eq!(at("2024-05-01T09:00:00+00:00"), "3h ago");
        assert_eq!(at("2024-04-28T12:00:00Z"), "3d ago");
        assert_eq!(ago(&json!({}), &["t"], now), "never");
        assert_eq!(at("yesterday"), "yesterday");
    }

    #[test]
    fn describe_flattens_objects() {
        let v =
            json!({"name": "web", "system": {"os": "Debian", "cpus": 2}, "tags": [], "note": null});
        // Key order depends on serde_json's map features; compare as a set.
        let mut lines: Vec<String> = describe(&v).lines().map(str::to_string).collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "name:         web",
                "note:         -",
                "system.cpus:  2",
                "system.os:    Debian",
                "tags:         -",
            ]
        );
    }
}
