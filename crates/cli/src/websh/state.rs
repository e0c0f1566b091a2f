//! The client's side of a resumable terminal, without I/O: which output
//! bytes are new, when to acknowledge them, which input to (re)send and
//! when to resize. The driver feeds it what the connection delivers and
//! does what it answers.
//!
//! Output: [`Cursor`] holds how many output bytes we have written; a
//! (re)connection asks for `?offset=` that, the gateway's `attached` says
//! where its binary frames start, and any overlap is dropped, so every byte
//! is written exactly once and in order.
//!
//! Input: keystrokes go into a [`ReplayBuffer`] as they are sent. The
//! gateway tells in `attached` how much input it has taken; what follows is
//! sent again. Keystrokes typed while disconnected wait in `pending`.

use std::borrow::Cow;

use alpacon_proto::websh::{ClientMsg, Cursor, ReplayBuffer};

use super::replay::QueryFilter;

/// Acknowledge output at least this often (and whenever it pauses).
pub const ACK_EVERY: u64 = 64 * 1024;
/// Input kept for a resend. There is no input ack besides `attached`, so
/// while connected the oldest sent bytes beyond this are forgotten.
pub const INPUT_REPLAY_CAP: usize = 4 << 20;

/// What the gateway said in `attached`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attach {
    pub output_offset: u64,
    pub input_offset: u64,
    pub read_only: bool,
    pub rows: u16,
    pub cols: u16,
}

/// What to do after an `attached`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttachPlan {
    /// Input to send now (the unacknowledged tail, then what was typed
    /// while disconnected), as one binary message if not empty.
    pub input: Vec<u8>,
    /// A resize to send (our window differs from the session's).
    pub resize: Option<ClientMsg>,
    /// Output bytes the gateway no longer has (we skip them).
    pub output_gap: u64,
    /// Input bytes that may not have reached the session (the gateway's
    /// offset is below what we still hold; none is sent twice).
    pub input_lost: u64,
}

/// Input bookkeeping across connections.
#[derive(Debug, Clone)]
pub struct InputLog {
    /// Bytes sent and maybe not taken yet, in local offsets.
    sent: ReplayBuffer,
    /// Gateway offset = local offset + `shift` (differs from 0 only after
    /// input was lost or someone else typed into a shared session).
    shift: i128,
    /// Typed while not attached.
    pending: Vec<u8>,
    cap: usize,
}

impl InputLog {
    pub fn new(cap: usize) -> Self {
        InputLog {
            sent: ReplayBuffer::new(cap),
            shift: 0,
            pending: Vec::new(),
            cap,
        }
    }

    /// The gateway offset just past everything sent so far.
    pub fn sent_end(&self) -> u64 {
        self.to_remote(self.sent.end())
    }

    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    fn to_remote(&self, local: u64) -> u64 {
        (local as i128 + self.shift).max(0) as u64
    }

    /// Whether more keystrokes may be read while disconnected (bounded, so
    /// a paste into a dead connection does not grow without limit).
    pub fn has_room(&self) -> bool {
        self.sent.len() + self.pending.len() < self.cap
    }

    /// Record bytes typed while not attached.
    pub fn hold(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Record bytes about to be sent on a live connection.
    pub fn send(&mut self, bytes: &[u8]) {
        // Everything in the buffer was sent already, so evicting the
        // oldest only narrows what a resend could cover.
        self.sent.push_evicting(bytes);
    }

    /// The gateway has taken input up to `remote` (its `input_offset`):
    /// returns what to send now, and how many bytes are lost for good.
    pub fn attached(&mut self, remote: u64) -> (Vec<u8>, u64) {
        let local = remote as i128 - self.shift;
        let (start, end) = (self.sent.start() as i128, self.sent.end() as i128);
        let mut lost = 0;
        let mut resend = if local < start {
            // Below what we still hold: the gateway forgot (it restarted)
            // or the bytes were evicted. Which of ours it has is unknown,
            // so none is sent again: a keystroke lost is better than a
            // command run twice. Continue after its offset.
            lost = (end - start) as u64;
            self.sent.ack(self.sent.end());
            self.shift = remote as i128 - end;
            Vec::new()
        } else if local > end {
            // It has more than we ever sent (the offset counts another
            // writer too): all of ours was taken; continue after it.
            self.sent.ack(self.sent.end());
            self.shift = remote as i128 - end;
            Vec::new()
        } else {
            let at = local as u64;
            self.sent.ack(at);
            self.sent.since(at).unwrap_or_default()
        };
        let pending = std::mem::take(&mut self.pending);
        self.sent.push_evicting(&pending);
        resend.extend_from_slice(&pending);
        (resend, lost)
    }
}

/// Everything the client knows about the session it shows.
#[derive(Debug, Clone)]
pub struct TermState {
    output: Cursor,
    /// Offset of the next binary frame on the current connection.
    frame_at: u64,
    acked: u64,
    pub input: InputLog,
    attached: bool,
    read_only: bool,
    /// Our window (rows, cols), if we have one to impose.
    local_size: Option<(u16, u16)>,
    /// The session's window as last told or set.
    remote_size: Option<(u16, u16)>,
    /// Output before this offset is history being replayed (see
    /// [`TermState::replaying`]).
    replay_until: Option<u64>,
    /// The replay starts mid-stream: skip to its first line start.
    skip_partial_line: bool,
    replay_filter: QueryFilter,
}

impl TermState {
    /// `output_offset`: where our copy of the output starts (0 for a new
    /// session, or a later point when re-attaching from elsewhere).
    pub fn new(output_offset: u64, local_size: Option<(u16, u16)>) -> Self {
        TermState {
            output: Cursor::new(output_offset),
            frame_at: output_offset,
            acked: output_offset,
            input: InputLog::new(INPUT_REPLAY_CAP),
            attached: false,
            read_only: false,
            local_size,
            remote_size: None,
            replay_until: None,
            skip_partial_line: false,
            replay_filter: QueryFilter::default(),
        }
    }

    /// Attaching to a running session: output before `until` is history.
    /// It is shown without the terminal queries in it (the local terminal
    /// would answer them into the shell), and when `mid_stream` only from
    /// its first line start.
    pub fn replaying(&mut self, until: u64, mid_stream: bool) {
        self.replay_until = Some(until);
        self.skip_partial_line = mid_stream;
    }

    /// The `?offset=` for the next connection.
    pub fn output_offset(&self) -> u64 {
        self.output.offset
    }

    pub fn is_attached(&self) -> bool {
        self.attached
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// A read-only viewer (known from `join`) sends nothing from the start.
    pub fn set_read_only(&mut self) {
        self.read_only = true;
    }

    /// The connection is gone; output and input bookkeeping stay.
    pub fn disconnected(&mut self) {
        self.attached = false;
    }

    pub fn on_attached(&mut self, a: Attach) -> AttachPlan {
        let mut plan = AttachPlan::default();
        self.attached = true;
        self.read_only |= a.read_only;
        self.remote_size = Some((a.rows, a.cols));
        if a.output_offset > self.output.offset {
            plan.output_gap = a.output_offset - self.output.offset;
            self.output.offset = a.output_offset;
        }
        self.frame_at = a.output_offset;
        if self.read_only {
            // Nothing typed here goes anywhere.
            self.input.pending.clear();
            return plan;
        }
        let (input, lost) = self.input.attached(a.input_offset);
        plan.input = input;
        plan.input_lost = lost;
        plan.resize = self.resize_if_needed();
        plan
    }

    /// A binary frame: returns the bytes to write (none if all were seen).
    pub fn on_output<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]> {
        let at = self.frame_at;
        self.frame_at += chunk.len() as u64;
        // `frame_at` never passes `output.offset` (see `on_attached`), so
        // there is no gap here.
        let new = self.output.accept(at, chunk).unwrap_or_default();
        let Some(limit) = self.replay_until else {
            return Cow::Borrowed(new);
        };
        // History and live output in this chunk. Either way the bytes are
        // consumed (and acked); only what is shown differs.
        let start = self.output.offset - new.len() as u64;
        let within = (limit.saturating_sub(start) as usize).min(new.len());
        let (mut old, live) = new.split_at(within);
        if self.skip_partial_line && !old.is_empty() {
            match old.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    old = &old[nl + 1..];
                    self.skip_partial_line = false;
                }
                None => old = &[],
            }
        }
        let mut shown = Vec::with_capacity(new.len());
        self.replay_filter.feed(old, &mut shown);
        if self.output.offset >= limit {
            self.replay_filter.finish(&mut shown);
            self.replay_until = None;
            self.skip_partial_line = false;
        }
        shown.extend_from_slice(live);
        Cow::Owned(shown)
    }

    /// The ack to send after output was written: when `ACK_EVERY` bytes
    /// are unacknowledged, or any are when `pause` (output stopped).
    pub fn ack(&mut self, pause: bool) -> Option<ClientMsg> {
        let unacked = self.output.offset.saturating_sub(self.acked);
        if !self.attached || unacked == 0 || (!pause && unacked < ACK_EVERY) {
            return None;
        }
        self.acked = self.output.offset;
        Some(ClientMsg::Ack {
            offset: self.output.offset,
        })
    }

    pub fn has_unacked(&self) -> bool {
        self.output.offset > self.acked
    }

    /// Keystrokes (escapes already taken out): the bytes to send now, if
    /// any. Read-only viewers send nothing; disconnected ones hold them.
    pub fn on_input(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.read_only || bytes.is_empty() {
            return None;
        }
        if !self.attached {
            self.input.hold(bytes);
            return None;
        }
        self.input.send(bytes);
        Some(bytes.to_vec())
    }

    /// Whether to read more keystrokes now.
    pub fn wants_input(&self) -> bool {
        self.attached || self.read_only || self.input.has_room()
    }

    /// The local window changed.
    pub fn on_local_resize(&mut self, rows: u16, cols: u16) -> Option<ClientMsg> {
        if rows == 0 || cols == 0 {
            return None;
        }
        self.local_size = Some((rows, cols));
        if self.attached && !self.read_only {
            self.resize_if_needed()
        } else {
            None
        }
    }

    fn resize_if_needed(&mut self) -> Option<ClientMsg> {
        let (rows, cols) = self.local_size?;
        if self.remote_size == Some((rows, cols)) {
            return None;
        }
        self.remote_size = Some((rows, cols));
        Some(ClientMsg::Resize { rows, cols })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(output_offset: u64, input_offset: u64) -> Attach {
        Attach {
            output_offset,
            input_offset,
            read_only: false,
            rows: 24,
            cols: 80,
        }
    }

    #[test]
    fn output_overlap_is_dropped_after_reconnect() {
        let mut s = TermState::new(0, None);
        s.on_attached(attach(0, 0));
        assert_eq!(shown(&mut s, b"hello "), b"hello ");
        assert_eq!(shown(&mut s, b"wor"), b"wor");
        s.disconnected();
        assert_eq!(s.output_offset(), 9);
        // The gateway resends from an earlier point than asked.
        s.on_attached(attach(6, 0));
        assert_eq!(shown(&mut s, b"world"), b"ld");
        assert_eq!(shown(&mut s, b"!"), b"!");
        assert_eq!(s.output_offset(), 12);
    }

    fn shown(s: &mut TermState, chunk: &[u8]) -> Vec<u8> {
        s.on_output(chunk).into_owned()
    }

    #[test]
    fn reattaching_mid_stream_starts_at_a_line_start() {
        let mut s = TermState::new(10, None);
        s.replaying(30, true);
        s.on_attached(attach(10, 0));
        assert_eq!(shown(&mut s, b"tial line"), b"");
        assert_eq!(shown(&mut s, b"\r\n$ ls\r\n"), b"$ ls\r\n");
        assert_eq!(shown(&mut s, b"a\nb"), b"a\nb", "only the first line start");
        assert_eq!(s.output_offset(), 30);
        // No line start in the backlog: shown from its end on.
        let mut s = TermState::new(10, None);
        s.replaying(15, true);
        s.on_attached(attach(10, 0));
        assert_eq!(shown(&mut s, b"abcdefg\n"), b"fg\n");
        assert_eq!(shown(&mut s, b"h"), b"h");
    }

    #[test]
    fn replayed_history_loses_its_terminal_queries_live_output_keeps_them() {
        let mut s = TermState::new(0, None);
        s.replaying(12, false);
        s.on_attached(attach(0, 0));
        // A query split across frames, then the live part of the chunk.
        assert_eq!(shown(&mut s, b"ab\x1b["), b"ab");
        assert_eq!(shown(&mut s, b"6ncdefg\x1b[6n"), b"cdefg\x1b[6n");
        assert_eq!(shown(&mut s, b"\x1b[c"), b"\x1b[c");
        // A sequence cut at the end of the history is passed on whole.
        let mut s = TermState::new(0, None);
        s.replaying(4, false);
        s.on_attached(attach(0, 0));
        assert_eq!(shown(&mut s, b"x\x1b[3"), b"x\x1b[3");
        assert_eq!(shown(&mut s, b"1m"), b"1m");
    }

    #[test]
    fn output_gap_is_reported_and_skipped() {
        let mut s = TermState::new(0, None);
        let plan = s.on_attached(attach(100, 0));
        assert_eq!(plan.output_gap, 100);
        assert_eq!(shown(&mut s, b"x"), b"x");
        assert_eq!(s.output_offset(), 101);
    }

    #[test]
    fn acks_every_64k_and_on_pause() {
        let mut s = TermState::new(0, None);
        assert_eq!(s.ack(true), None, "not attached");
        s.on_attached(attach(0, 0));
        assert_eq!(s.ack(true), None, "nothing to ack");
        s.on_output(&[b'x'; 1000]);
        assert_eq!(s.ack(false), None);
        assert_eq!(s.ack(true), Some(ClientMsg::Ack { offset: 1000 }));
        assert!(!s.has_unacked());
        s.on_output(&vec![b'y'; 70_000]);
        assert_eq!(s.ack(false), Some(ClientMsg::Ack { offset: 71_000 }));
        assert_eq!(s.ack(true), None);
    }

    #[test]
    fn input_resent_after_the_gateways_offset() {
        let mut s = TermState::new(0, None);
        s.on_attached(attach(0, 0));
        assert_eq!(s.on_input(b"echo hi\r").unwrap(), b"echo hi\r");
        s.disconnected();
        // Typed while disconnected: held.
        assert_eq!(s.on_input(b"ls\r"), None);
        assert_eq!(s.input.pending(), b"ls\r");
        // The gateway got 5 of the first 8 bytes.
        let plan = s.on_attached(attach(0, 5));
        assert_eq!(plan.input, b"hi\rls\r");
        assert_eq!(plan.input_lost, 0);
        assert_eq!(s.input.sent_end(), 11);
        s.disconnected();
        // Everything was taken: nothing to resend.
        let plan = s.on_attached(attach(0, 11));
        assert!(plan.input.is_empty());
        // Same offset again (a duplicate attach) is harmless.
        let plan = s.on_attached(attach(0, 11));
        assert!(plan.input.is_empty());
    }

    #[test]
    fn input_from_another_writer_shifts_offsets() {
        let mut s = TermState::new(0, None);
        s.on_attached(attach(0, 0));
        s.on_input(b"abc");
        s.disconnected();
        s.on_input(b"d");
        // Someone else typed 10 bytes: ours (3) were taken, 13 in total.
        let plan = s.on_attached(attach(0, 13));
        assert_eq!(plan.input, b"d");
        assert_eq!(s.input.sent_end(), 14);
        s.on_input(b"ef");
        s.disconnected();
        let plan = s.on_attached(attach(0, 15));
        assert_eq!(plan.input, b"f");
    }

    #[test]
    fn input_is_never_sent_twice_when_the_gateway_forgot() {
        let mut log = InputLog::new(4);
        log.send(b"abcdef"); // "ab" evicted
        let (resend, lost) = log.attached(1);
        assert_eq!((resend.as_slice(), lost), (&b""[..], 4));
        // From now on the gateway's offsets are ours shifted by -5.
        assert_eq!(log.sent_end(), 1);
        log.send(b"g");
        let (resend, lost) = log.attached(1);
        assert_eq!((resend.as_slice(), lost), (&b"g"[..], 0));
        // A gateway restart: its count starts again at 0.
        let mut log = InputLog::new(1 << 20);
        log.send(b"make deploy\r");
        let (resend, _) = log.attached(12);
        assert!(resend.is_empty());
        log.send(b"ls\r");
        log.hold(b"pwd\r");
        let (resend, lost) = log.attached(0);
        assert_eq!((resend.as_slice(), lost), (&b"pwd\r"[..], 3));
        assert_eq!(log.sent_end(), 4);
    }

    #[test]
    fn input_is_bounded_while_disconnected() {
        let mut log = InputLog::new(4);
        assert!(log.has_room());
        log.hold(b"abcd");
        assert!(!log.has_room());
        let (resend, _) = log.attached(0);
        assert_eq!(resend, b"abcd");
    }

    #[test]
    fn read_only_sends_nothing() {
        let mut s = TermState::new(0, Some((30, 100)));
        s.on_input(b"typed before attach");
        let plan = s.on_attached(Attach {
            read_only: true,
            ..attach(0, 0)
        });
        assert_eq!(plan, AttachPlan::default());
        assert_eq!(s.on_input(b"rm -rf /\r"), None);
        assert_eq!(s.on_local_resize(40, 120), None);
        assert!(s.wants_input(), "keystrokes are still read for the escape");
    }

    #[test]
    fn resize_on_attach_and_on_change() {
        let mut s = TermState::new(0, Some((30, 100)));
        assert_eq!(s.on_local_resize(31, 100), None, "not attached yet");
        let plan = s.on_attached(attach(0, 0));
        assert_eq!(
            plan.resize,
            Some(ClientMsg::Resize {
                rows: 31,
                cols: 100
            })
        );
        assert_eq!(s.on_local_resize(31, 100), None, "unchanged");
        assert_eq!(
            s.on_local_resize(40, 120),
            Some(ClientMsg::Resize {
                rows: 40,
                cols: 120
            })
        );
        assert_eq!(s.on_local_resize(0, 0), None);
        // Same size as the session: nothing to send.
        let mut s = TermState::new(0, Some((24, 80)));
        assert_eq!(s.on_attached(attach(0, 0)).resize, None);
        // No window of our own (piped stdin, attach): never resize.
        let mut s = TermState::new(0, None);
        assert_eq!(s.on_attached(attach(0, 0)).resize, None);
    }

    #[test]
    fn resize_message_shape() {
        let m = ClientMsg::Resize {
            rows: 40,
            cols: 120,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"resize","rows":40,"cols":120}"#
        );
        assert_eq!(
            serde_json::to_string(&ClientMsg::Ack { offset: 7 }).unwrap(),
            r#"{"type":"ack","offset":7}"#
        );
    }
}
