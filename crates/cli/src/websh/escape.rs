//! The local escape, as in ssh: `~.` typed at the start of a line leaves a
//! stuck session from this terminal (the session keeps running on the
//! server). `~~` sends one `~`, `~?` lists the escapes; any other byte after
//! `~` is sent along with the `~`.

/// What a chunk of keystrokes means once the escapes are taken out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// Bytes for the remote terminal.
    pub send: Vec<u8>,
    /// `~.` was typed: leave now (anything after it is dropped).
    pub detach: bool,
    /// `~?` was typed: show the help.
    pub help: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After Enter (or at the very start): a `~` may begin an escape.
    LineStart,
    Normal,
    /// A `~` at the start of a line, held back until the next byte.
    Tilde,
}

#[derive(Debug, Clone)]
pub struct EscapeDetector {
    state: State,
}

impl Default for EscapeDetector {
    fn default() -> Self {
        EscapeDetector {
            state: State::LineStart,
        }
    }
}

pub const HELP: &str = "Supported escape sequences (after Enter):\r\n\
 ~.  leave this terminal; the session keeps running on the server\r\n\
 ~?  this help\r\n\
 ~~  send the escape character itself\r\n";

impl EscapeDetector {
    pub fn feed(&mut self, input: &[u8]) -> Filtered {
        let mut out = Filtered::default();
        for &b in input {
            match self.state {
                State::Tilde => match b {
                    b'.' => {
                        out.detach = true;
                        return out;
                    }
                    b'?' => {
                        out.help = true;
                        self.state = State::LineStart;
                    }
                    b'~' => {
                        out.send.push(b'~');
                        self.state = State::Normal;
                    }
                    _ => {
                        out.send.extend_from_slice(&[b'~', b]);
                        self.state = after(b);
                    }
                },
                State::LineStart if b == b'~' => self.state = State::Tilde,
                _ => {
                    out.send.push(b);
                    self.state = after(b);
                }
            }
        }
        out
    }
}

fn after(b: u8) -> State {
    if b == b'\r' || b == b'\n' {
        State::LineStart
    } else {
        State::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut d = EscapeDetector::default();
        let mut sent = Vec::new();
        for c in chunks {
            let f = d.feed(c);
            sent.extend(f.send);
            if f.detach {
                return (sent, true);
            }
        }
        (sent, false)
    }

    #[test]
    fn tilde_dot_after_enter_detaches() {
        assert_eq!(run(&[b"ls\r~."]), (b"ls\r".to_vec(), true));
        assert_eq!(run(&[b"~.rest"]), (Vec::new(), true), "at the very start");
        assert_eq!(run(&[b"x\n", b"~", b"."]), (b"x\n".to_vec(), true), "split");
    }

    #[test]
    fn tilde_elsewhere_is_plain_input() {
        assert_eq!(run(&[b"cd ~.\r"]), (b"cd ~.\r".to_vec(), false));
        assert_eq!(run(&[b"~/bin\r"]), (b"~/bin\r".to_vec(), false));
        assert_eq!(run(&[b"~", b"x"]), (b"~x".to_vec(), false));
        assert_eq!(run(&[b"~~."]), (b"~.".to_vec(), false), "~~ sends one ~");
        assert_eq!(run(&[b"\r~\r~."]), (b"\r~\r".to_vec(), true));
    }

    #[test]
    fn help_is_not_sent() {
        let mut d = EscapeDetector::default();
        let f = d.feed(b"~?");
        assert!(f.help && f.send.is_empty() && !f.detach);
        // Still at a line start afterwards.
        assert!(d.feed(b"~.").detach);
    }
}
