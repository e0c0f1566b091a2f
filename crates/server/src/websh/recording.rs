//! Terminal recordings: asciicast v2 files, and the command lines a person
//! typed, derived from the recorded input.
//!
//! asciicast stores text, terminals produce bytes: output is cut into valid
//! UTF-8 with incomplete sequences at a chunk's end carried to the next chunk
//! (so a character split across two reads is recorded whole), and only truly
//! invalid bytes become U+FFFD. For valid UTF-8 output the "o" events
//! concatenate to exactly the bytes the client saw.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Splits `carry + chunk` into the longest valid UTF-8 text and the bytes of
/// an incomplete sequence at the end (at most 3), which are returned to be
/// carried into the next call.
pub fn utf8_cut(carry: &mut Vec<u8>, chunk: &[u8]) -> String {
    carry.extend_from_slice(chunk);
    let mut out = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{fffd}');
                        rest = &bad[n..];
                    }
                    // Incomplete at the end: keep for the next chunk.
                    None => {
                        rest = bad;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *carry = keep;
    out
}

/// Appends asciicast v2 events to a file, flushing at most once a second so
/// a crash loses at most the last second.
pub struct CastWriter {
    file: std::io::BufWriter<std::fs::File>,
    started: Instant,
    /// Seconds already elapsed when this writer started (a gateway restart
    /// resumes an existing recording).
    base: f64,
    out_carry: Vec<u8>,
    in_carry: Vec<u8>,
    last_flush: Instant,
}

impl CastWriter {
    /// Creates the file with its header.
    pub fn create(
        path: &Path,
        cols: u16,
        rows: u16,
        title: &str,
        ts: i64,
    ) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)?;
        let mut w = Self::wrap(file, 0.0);
        let header = json!({
            "version": 2, "width": cols, "height": rows, "timestamp": ts,
            "title": title, "env": {"TERM": "xterm-256color"},
        });
        writeln!(w.file, "{header}")?;
        w.file.flush()?;
        Ok(w)
    }

    /// Reopens an existing recording after a gateway restart; new events
    /// continue from its last timestamp.
    pub fn resume(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let last = text
            .lines()
            .skip(1)
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get(0).and_then(Value::as_f64))
            .last()
            .unwrap_or(0.0);
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Self::wrap(file, last))
    }

    fn wrap(file: std::fs::File, base: f64) -> Self {
        Self {
            file: std::io::BufWriter::new(file),
            started: Instant::now(),
            base,
            out_carry: Vec::new(),
            in_carry: Vec::new(),
            last_flush: Instant::now(),
        }
    }

    fn event(&mut self, kind: &str, data: &str) -> std::io::Result<()> {
        let t = self.base + self.started.elapsed().as_secs_f64();
        let line = json!([(t * 1e6).round() / 1e6, kind, data]);
        writeln!(self.file, "{line}")?;
        if self.last_flush.elapsed() >= Duration::from_secs(1) {
            self.flush()?;
        }
        Ok(())
    }

    pub fn output(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut carry = std::mem::take(&mut self.out_carry);
        let text = utf8_cut(&mut carry, bytes);
        self.out_carry = carry;
        if text.is_empty() {
            return Ok(());
        }
        self.event("o", &text)
    }

    pub fn input(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut carry = std::mem::take(&mut self.in_carry);
        let text = utf8_cut(&mut carry, bytes);
        self.in_carry = carry;
        if text.is_empty() {
            return Ok(());
        }
        self.event("i", &text)
    }

    pub fn resize(&mut self, cols: u16, rows: u16) -> std::io::Result<()> {
        self.event("r", &format!("{cols}x{rows}"))
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.last_flush = Instant::now();
        self.file.flush()
    }
}

/// One typed command line and when its first key was pressed (seconds from
/// the session start).
#[derive(Debug, Clone, PartialEq)]
pub struct TypedLine {
    pub at: f64,
    pub line: String,
}

/// Reconstructs the lines a person entered from a recording's input events:
/// Enter ends a line, backspace and Ctrl-U edit it, Ctrl-C abandons it,
/// escape sequences (arrow keys and the like) are ignored. This is what was
/// typed, not what the shell's history editing made of it.
pub fn typed_lines(cast: &str) -> Vec<TypedLine> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut started: Option<f64> = None;
    let mut in_escape = false;
    for ev in cast.lines().skip(1) {
        let Ok(Value::Array(a)) = serde_json::from_str::<Value>(ev) else {
            continue;
        };
        if a.get(1).and_then(Value::as_str) != Some("i") {
            continue;
        }
        let t = a.first().and_then(Value::as_f64).unwrap_or(0.0);
        let data = a.get(2).and_then(Value::as_str).unwrap_or_default();
        for c in data.chars() {
            if in_escape {
                // CSI/SS3 sequences end with a letter or '~'.
                if c.is_ascii_alphabetic() || c == '~' {
                    in_escape = false;
                }
                continue;
            }
            match c {
                '\u{1b}' => in_escape = true,
                '\r' | '\n' => {
                    let line = cur.trim().to_string();
                    if !line.is_empty() {
                        lines.push(TypedLine {
                            at: started.unwrap_or(t),
                            line,
                        });
                    }
                    cur.clear();
                    started = None;
                }
                '\u{7f}' | '\u{8}' => {
                    cur.pop();
                }
                '\u{15}' | '\u{3}' => {
                    cur.clear();
                    started = None;
                }
                c if c.is_control() => {}
                c => {
                    started.get_or_insert(t);
                    cur.push(c);
                }
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_kept_whole() {
        let s = "héllo → wörld";
        let b = s.as_bytes();
        for cut in 0..b.len() {
            let mut carry = Vec::new();
            let mut out = utf8_cut(&mut carry, &b[..cut]);
            out += &utf8_cut(&mut carry, &b[cut..]);
            assert_eq!(out, s, "cut at {cut}");
            assert!(carry.is_empty());
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        let mut carry = Vec::new();
        assert_eq!(utf8_cut(&mut carry, b"a\xffb"), "a\u{fffd}b");
        assert_eq!(utf8_cut(&mut carry, b"x\xe2\x82"), "x");
        assert_eq!(carry, b"\xe2\x82");
        assert_eq!(utf8_cut(&mut carry, b"\xac"), "€");
    }

    #[test]
    fn cast_file_is_valid_asciicast() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.cast");
        let mut w = CastWriter::create(&p, 80, 24, "t", 1).unwrap();
        w.output(b"hello \xe2\x82").unwrap();
        w.output(b"\xac\r\n").unwrap();
        w.input(b"ls\r").unwrap();
        w.resize(100, 30).unwrap();
        w.flush().unwrap();
        drop(w);
        let mut w = CastWriter::resume(&p).unwrap();
        w.output(b"more").unwrap();
        w.flush().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines = text.lines();
        let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(header["version"], 2);
        assert_eq!(header["width"], 80);
        let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        let out: String = events
            .iter()
            .filter(|e| e[1] == "o")
            .map(|e| e[2].as_str().unwrap())
            .collect();
        assert_eq!(out, "hello €\r\nmore");
        assert!(events.iter().any(|e| e[1] == "r" && e[2] == "100x30"));
        let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    #[test]
    fn typed_lines_follow_editing_keys() {
        let cast = [
            r#"{"version":2,"width":80,"height":24}"#,
            r#"[0.5,"i","ls -l"]"#,
            r#"[0.6,"o","ls -l"]"#,
            r#"[0.7,"i","a\u007f\r"]"#,
            r#"[1.0,"i","rm -rf /\u0003"]"#,
            r#"[2.0,"i","echo \u001b[Ahi\r"]"#,
            r#"[3.0,"i","junk\u0015whoami\n"]"#,
            r#"[4.0,"i","\r"]"#,
        ]
        .join("\n");
        let lines = typed_lines(&cast);
        assert_eq!(
            lines,
            vec![
                TypedLine {
                    at: 0.5,
                    line: "ls -l".into()
                },
                TypedLine {
                    at: 2.0,
                    line: "echo hi".into()
                },
                TypedLine {
                    at: 3.0,
                    line: "whoami".into()
                },
            ]
        );
    }
}
