//! Terminal sessions between a client (CLI, browser) and the gateway, and
//! the offset bookkeeping that makes them survive a dropped connection.
//!
//! Over the client's WebSocket (`/api/websh/sessions/{id}/ws/?offset=N`):
//! binary messages carry terminal bytes (output from the gateway, input from
//! the client), text messages carry the JSON below. Both directions count
//! bytes from the session's start. On every (re)connection the gateway says
//! where it stands (`Attached`): the client resends input after
//! `input_offset`, and the gateway sends output from the client's `offset`.
//! So nothing is lost or repeated whichever leg drops.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Gateway → client (text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Sent first on every connection. Output binary frames follow from
    /// `output_offset` (the offset the client asked for).
    Attached {
        session: String,
        output_offset: u64,
        /// Input bytes the gateway has taken so far: resend what follows.
        input_offset: u64,
        read_only: bool,
        rows: u16,
        cols: u16,
    },
    /// The server side is reachable (`true`) or waiting for the agent.
    Status {
        agent_connected: bool,
    },
    /// The shell ended; all output has been sent.
    Exit {
        code: i32,
    },
    /// The session ended for another reason (closed, idle timeout, revoked).
    Closed {
        reason: String,
    },
    Error {
        code: String,
        detail: String,
    },
}

/// Client → gateway (text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Resize {
        rows: u16,
        cols: u16,
    },
    /// The client has consumed output up to `offset` (drives flow control).
    Ack {
        offset: u64,
    },
    /// End the session (the shell is hung up).
    Close,
}

/// The sending side of a resumable byte stream: keeps what was sent but not
/// yet acknowledged, up to `cap` bytes, so it can be sent again after a
/// reconnection.
#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    /// Offset of `data[0]`.
    start: u64,
    data: VecDeque<u8>,
    cap: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bytes from offset {wanted} are gone (buffer starts at {start}, ends at {end})")]
pub struct ReplayGap {
    pub wanted: u64,
    pub start: u64,
    pub end: u64,
}

impl ReplayBuffer {
    pub fn new(cap: usize) -> Self {
        Self {
            start: 0,
            data: VecDeque::new(),
            cap,
        }
    }

    /// An empty buffer whose next byte is at `offset` (a stream resumed by
    /// a process that did not see its beginning).
    pub fn starting_at(offset: u64, cap: usize) -> Self {
        Self {
            start: offset,
            data: VecDeque::new(),
            cap,
        }
    }

    /// Offset just past the last byte pushed.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    /// Oldest offset still held.
    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Room left before the producer must wait for an ack.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.data.len())
    }

    /// Appends as much of `bytes` as fits; returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.data.extend(&bytes[..n]);
        n
    }

    /// Appends everything, evicting the oldest bytes past the cap (for
    /// streams where a late resend may fail rather than block the producer).
    pub fn push_evicting(&mut self, bytes: &[u8]) {
        self.data.extend(bytes);
        let over = self.data.len().saturating_sub(self.cap);
        if over > 0 {
            self.data.drain(..over);
            self.start += over as u64;
        }
    }

    /// The peer has everything before `offset`. Offsets outside the buffer
    /// are clamped (an old or duplicate ack is harmless).
    pub fn ack(&mut self, offset: u64) {
        let drop = offset.clamp(self.start, self.end()) - self.start;
        self.data.drain(..drop as usize);
        self.start += drop;
    }

    /// Everything from `offset` to the end, for a resend.
    pub fn since(&self, offset: u64) -> Result<Vec<u8>, ReplayGap> {
        if offset < self.start || offset > self.end() {
            return Err(ReplayGap {
                wanted: offset,
                start: self.start,
                end: self.end(),
            });
        }
        let skip = (offset - self.start) as usize;
        Ok(self.data.iter().skip(skip).copied().collect())
    }
}

/// The receiving side: knows how many bytes it has and keeps only the new
/// part of a chunk that may overlap what it already has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub offset: u64,
}

impl Cursor {
    pub fn new(offset: u64) -> Self {
        Self { offset }
    }

    /// `chunk` starts at `at`. Returns the bytes not seen before, or `Err`
    /// if the chunk starts past our offset (bytes in between are missing).
    pub fn accept<'a>(&mut self, at: u64, chunk: &'a [u8]) -> Result<&'a [u8], ReplayGap> {
        if at > self.offset {
            return Err(ReplayGap {
                wanted: self.offset,
                start: at,
                end: at + chunk.len() as u64,
            });
        }
        let skip = ((self.offset - at) as usize).min(chunk.len());
        let new = &chunk[skip..];
        self.offset += new.len() as u64;
        Ok(new)
    }
}

/// How far ahead of its fastest reader the gateway may read a terminal's
/// output: beyond this the gateway stops reading, the agent's buffer fills
/// and the program writing to the terminal blocks, like on a slow tty. This
/// is what makes Ctrl-C prompt under a flood.
pub const READ_AHEAD: u64 = 256 * 1024;

/// Whether the gateway may take more output from the agent now.
pub fn may_read_more(recorded: u64, fastest_reader: u64) -> bool {
    recorded < fastest_reader.saturating_add(READ_AHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_stable_shapes() {
        let m = ServerMsg::Attached {
            session: "s".into(),
            output_offset: 3,
            input_offset: 4,
            read_only: false,
            rows: 24,
            cols: 80,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "attached");
        assert_eq!(serde_json::from_value::<ServerMsg>(v).unwrap(), m);
        let c: ClientMsg =
            serde_json::from_str(r#"{"type":"resize","rows":40,"cols":120}"#).unwrap();
        assert_eq!(
            c,
            ClientMsg::Resize {
                rows: 40,
                cols: 120
            }
        );
        assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"rm"}"#).is_err());
    }

    #[test]
    fn replay_buffer_resends_exactly_the_unacked_tail() {
        let mut b = ReplayBuffer::new(10);
        assert_eq!(b.push(b"hello"), 5);
        assert_eq!(b.push(b" world!"), 5, "only what fits");
        assert_eq!(b.end(), 10);
        assert_eq!(b.since(3).unwrap(), b"lo worl");
        b.ack(6);
        assert_eq!(b.start(), 6);
        assert_eq!(b.room(), 6);
        assert_eq!(b.since(6).unwrap(), b"worl");
        assert_eq!(b.since(10).unwrap(), b"");
        assert!(b.since(5).is_err(), "acked bytes are gone");
        assert!(b.since(11).is_err(), "future bytes do not exist");
        b.ack(2); // stale ack
        assert_eq!(b.start(), 6);
        b.ack(99); // ack past the end clamps
        assert_eq!(b.start(), 10);
        assert!(b.is_empty());
    }

    #[test]
    fn a_buffer_can_start_mid_stream() {
        let mut b = ReplayBuffer::starting_at(100, 8);
        assert_eq!(b.end(), 100);
        b.push(b"abc");
        assert_eq!(b.since(101).unwrap(), b"bc");
        assert!(b.since(99).is_err());
    }

    #[test]
    fn evicting_push_keeps_the_newest() {
        let mut b = ReplayBuffer::new(4);
        b.push_evicting(b"abcdef");
        assert_eq!(b.start(), 2);
        assert_eq!(b.since(2).unwrap(), b"cdef");
    }

    #[test]
    fn cursor_drops_overlap_and_detects_gaps() {
        let mut c = Cursor::new(0);
        assert_eq!(c.accept(0, b"abc").unwrap(), b"abc");
        assert_eq!(c.accept(1, b"bcde").unwrap(), b"de");
        assert_eq!(c.accept(0, b"ab").unwrap(), b"");
        assert_eq!(c.offset, 5);
        assert!(c.accept(7, b"x").is_err());
        assert_eq!(c.offset, 5);
    }

    /// A sender and a receiver over a link that drops at arbitrary points:
    /// after each drop the receiver reports its cursor and the sender resends
    /// from there. The receiver must end up with exactly the bytes produced.
    #[test]
    fn resume_protocol_is_exact_across_many_drops() {
        let produced: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut tx = ReplayBuffer::new(4096);
        let mut rx = Cursor::new(0);
        let mut got = Vec::new();
        let mut fed = 0usize;
        let mut in_flight: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut step = 0u64;
        while got.len() < produced.len() {
            step += 1;
            // Producer pushes what fits.
            if fed < produced.len() {
                let n = tx.push(&produced[fed..(fed + 1000).min(produced.len())]);
                if n > 0 {
                    in_flight.push((tx.end() - n as u64, produced[fed..fed + n].to_vec()));
                    fed += n;
                }
            }
            if step.is_multiple_of(17) {
                // The link drops: everything in flight is lost; reconnect and
                // resend from the receiver's cursor.
                in_flight.clear();
                let resend = tx.since(rx.offset).expect("unacked bytes are kept");
                in_flight.push((rx.offset, resend));
            }
            // Deliver some of what is in flight, in order.
            if !in_flight.is_empty() && !step.is_multiple_of(3) {
                let (at, chunk) = in_flight.remove(0);
                got.extend_from_slice(rx.accept(at, &chunk).expect("in order"));
                if step.is_multiple_of(5) {
                    tx.ack(rx.offset);
                }
            }
        }
        assert_eq!(got, produced);
    }

    #[test]
    fn read_ahead_limit() {
        assert!(may_read_more(0, 0));
        assert!(may_read_more(READ_AHEAD - 1, 0));
        assert!(!may_read_more(READ_AHEAD, 0));
        assert!(may_read_more(READ_AHEAD, 1));
        assert!(may_read_more(5, u64::MAX));
    }
}
