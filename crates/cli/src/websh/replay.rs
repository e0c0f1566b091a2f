//! Replaying a session's past output to a real terminal: the output may
//! hold queries (a program asking the terminal for its cursor position,
//! its type, its colours…). Replayed, the local terminal would answer them
//! again, and the answers would reach the shell as if typed. This filter
//! takes the queries out of replayed output; everything else passes as is.

/// Longest escape sequence held back while deciding; longer ones pass.
const MAX_SEQ: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Ground,
    Esc,
    Csi,
    Osc,
    OscEsc,
    Dcs,
    DcsEsc,
}

#[derive(Debug, Clone)]
pub struct QueryFilter {
    st: St,
    seq: Vec<u8>,
}

impl Default for QueryFilter {
    fn default() -> Self {
        QueryFilter {
            st: St::Ground,
            seq: Vec::new(),
        }
    }
}

impl QueryFilter {
    /// Filter `input` into `out`; a sequence cut at the end of `input` is
    /// held until the next call (or [`QueryFilter::finish`]).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            match self.st {
                St::Ground => match b {
                    0x1b => {
                        self.seq.push(b);
                        self.st = St::Esc;
                    }
                    // ENQ asks for the answerback message.
                    0x05 => {}
                    _ => out.push(b),
                },
                St::Esc => {
                    self.seq.push(b);
                    self.st = match b {
                        b'[' => St::Csi,
                        b']' => St::Osc,
                        b'P' => St::Dcs,
                        _ => {
                            self.emit(out);
                            St::Ground
                        }
                    };
                }
                St::Csi => {
                    self.seq.push(b);
                    if (0x40..=0x7e).contains(&b) {
                        if !is_csi_query(&self.seq) {
                            out.extend_from_slice(&self.seq);
                        }
                        self.seq.clear();
                        self.st = St::Ground;
                    } else {
                        self.check_len(out);
                    }
                }
                St::Osc | St::Dcs => {
                    self.seq.push(b);
                    if b == 0x07 && self.st == St::Osc {
                        self.end_string(out);
                    } else if b == 0x1b {
                        self.st = if self.st == St::Osc {
                            St::OscEsc
                        } else {
                            St::DcsEsc
                        };
                    } else {
                        self.check_len(out);
                    }
                }
                St::OscEsc | St::DcsEsc => {
                    self.seq.push(b);
                    if b == b'\\' {
                        self.st = if self.st == St::OscEsc {
                            St::Osc
                        } else {
                            St::Dcs
                        };
                        self.end_string(out);
                    } else {
                        self.emit(out);
                        self.st = St::Ground;
                    }
                }
            }
        }
    }

    /// The replay is over: pass on whatever is held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.emit(out);
        self.st = St::Ground;
    }

    fn emit(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.seq);
    }

    fn check_len(&mut self, out: &mut Vec<u8>) {
        if self.seq.len() > MAX_SEQ {
            self.emit(out);
            self.st = St::Ground;
        }
    }

    /// An OSC or DCS string ended (BEL or ST).
    fn end_string(&mut self, out: &mut Vec<u8>) {
        let query = match self.st {
            St::Osc => is_osc_query(&self.seq),
            _ => is_dcs_query(&self.seq),
        };
        if query {
            self.seq.clear();
        } else {
            self.emit(out);
        }
        self.st = St::Ground;
    }
}

/// `ESC [ params final` that makes the terminal answer.
fn is_csi_query(seq: &[u8]) -> bool {
    let Some((&last, _)) = seq.split_last() else {
        return false;
    };
    let body = &seq[2..seq.len() - 1];
    match last {
        // Device status / cursor position reports, device attributes.
        b'n' | b'c' => true,
        // DECRQM (mode query).
        b'p' => body.contains(&b'$'),
        // XTVERSION.
        b'q' => body.first() == Some(&b'>'),
        // Kitty keyboard protocol query (plain `CSI u` restores the cursor).
        b'u' => body.first() == Some(&b'?'),
        // XTQMODKEYS.
        b'm' => body.first() == Some(&b'?'),
        // Window reports (XTWINOPS 11, 13-16, 18-21).
        b't' => {
            let first = body.split(|&c| c == b';').next().unwrap_or_default();
            matches!(
                first,
                b"11" | b"13" | b"14" | b"15" | b"16" | b"18" | b"19" | b"20" | b"21"
            )
        }
        _ => false,
    }
}

/// `ESC ] … ; ? BEL|ST`: a colour (or clipboard) query.
fn is_osc_query(seq: &[u8]) -> bool {
    let body = seq[2..]
        .strip_suffix(b"\x07")
        .or_else(|| seq[2..].strip_suffix(b"\x1b\\"))
        .unwrap_or(&seq[2..]);
    body.split(|&c| c == b';').any(|p| p == b"?")
}

/// `ESC P $q … ST` (DECRQSS) or `ESC P +q … ST` (XTGETTCAP).
fn is_dcs_query(seq: &[u8]) -> bool {
    let body = &seq[2..];
    body.starts_with(b"$q") || body.starts_with(b"+q")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(chunks: &[&[u8]]) -> Vec<u8> {
        let mut f = QueryFilter::default();
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        f.finish(&mut out);
        out
    }

    #[test]
    fn queries_are_removed() {
        for q in [
            &b"\x1b[6n"[..],
            b"\x1b[5n",
            b"\x1b[?6n",
            b"\x1b[c",
            b"\x1b[0c",
            b"\x1b[>c",
            b"\x1b[=c",
            b"\x1b[?2004$p",
            b"\x1b[>q",
            b"\x1b[?u",
            b"\x1b[18t",
            b"\x1b[14;2t",
            b"\x1b]11;?\x07",
            b"\x1b]4;1;?\x1b\\",
            b"\x1b]52;c;?\x07",
            b"\x1bP$qm\x1b\\",
            b"\x1bP+q544e\x1b\\",
            b"\x05",
        ] {
            assert_eq!(filter(&[b"a", q, b"b"]), b"ab", "{q:?}");
        }
    }

    #[test]
    fn everything_else_passes() {
        let s: &[u8] = b"\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[?1049h\x1b[u\x1b[s\x1b[8;24;80t\
              \x1b]0;title\x07\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\x1b(B\x1b=\x1bM\
              \x1b[2 q\x1bPq#0;2;0;0;0\x1b\\\xc3\xa9\r\n";
        assert_eq!(filter(&[s]), s);
    }

    #[test]
    fn sequences_split_across_chunks() {
        assert_eq!(filter(&[b"x\x1b", b"[", b"6", b"n", b"y"]), b"xy");
        assert_eq!(filter(&[b"\x1b]11", b";?", b"\x1b", b"\\z"]), b"z");
        assert_eq!(filter(&[b"\x1b[3", b"1mq"]), b"\x1b[31mq");
    }

    #[test]
    fn unfinished_sequences_are_passed_on_at_the_end() {
        assert_eq!(filter(&[b"ab\x1b[12"]), b"ab\x1b[12");
        let long = [b"\x1b]0;".to_vec(), vec![b'x'; 2000]].concat();
        assert_eq!(filter(&[&long]), long);
    }
}
