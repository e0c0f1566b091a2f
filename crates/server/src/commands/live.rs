//! Live output of running commands, in memory, for `…/stream/` readers.
//! The durable copy is the result's output, stored when the command ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Live output kept per running command for stream readers; the agent caps
/// stored output at the same size.
pub(super) const LIVE_CAP: usize = 8 * 1024 * 1024;
/// Largest NDJSON output chunk (before base64).
pub(super) const CHUNK: usize = 64 * 1024;

/// In-memory live output of running commands, for stream readers.
#[derive(Default)]
pub struct LiveOutputs {
    entries: Mutex<HashMap<String, Arc<LiveEntry>>>,
}

pub struct LiveEntry {
    /// The server whose agent runs it: only that agent's output is taken.
    pub(super) server_id: String,
    buf: Mutex<LiveBuf>,
    pub(super) notify: Notify,
}

impl LiveEntry {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, LiveBuf> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Output bytes `[base, base + data.len())` of one command.
#[derive(Debug, Default, PartialEq)]
pub struct LiveBuf {
    base: u64,
    data: Vec<u8>,
    started: bool,
    /// Output was lost or went past the cap: readers wait for the result.
    broken: bool,
    pub(super) finished: bool,
}

impl LiveBuf {
    /// Accept a chunk at `offset`; overlapping bytes are dropped, a gap
    /// breaks the live view (the durable result still has everything).
    pub fn append(&mut self, offset: u64, chunk: &[u8]) {
        if self.broken || self.finished {
            return;
        }
        if !self.started {
            self.started = true;
            self.base = offset;
        }
        let end = self.base + self.data.len() as u64;
        if offset > end {
            self.broken = true;
            return;
        }
        let skip = (end - offset) as usize;
        if skip >= chunk.len() {
            return;
        }
        if self.data.len() + chunk.len() - skip > LIVE_CAP {
            self.broken = true;
            return;
        }
        self.data.extend_from_slice(&chunk[skip..]);
    }

    /// Bytes from `offset` on (at most one chunk), if the buffer has them.
    pub fn read_from(&self, offset: u64) -> Option<Vec<u8>> {
        if self.broken || offset < self.base {
            return None;
        }
        let start = (offset - self.base) as usize;
        if start >= self.data.len() {
            return None;
        }
        let end = (start + CHUNK).min(self.data.len());
        Some(self.data[start..end].to_vec())
    }
}

impl LiveOutputs {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveEntry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start tracking a command (idempotent). Only tracked commands accept
    /// output, so an agent cannot make the gateway allocate for made-up ids.
    pub fn start(&self, id: &str, server_id: &str) {
        self.map().entry(id.to_string()).or_insert_with(|| {
            Arc::new(LiveEntry {
                server_id: server_id.to_string(),
                buf: Mutex::new(LiveBuf::default()),
                notify: Notify::new(),
            })
        });
    }

    pub fn get(&self, id: &str) -> Option<Arc<LiveEntry>> {
        self.map().get(id).cloned()
    }

    /// Output from `server_id`'s agent; another agent's is ignored.
    pub fn append(&self, server_id: &str, id: &str, offset: u64, data: &[u8]) {
        if let Some(e) = self.get(id).filter(|e| e.server_id == server_id) {
            e.lock().append(offset, data);
            e.notify.notify_waiters();
        }
    }

    /// The result is stored: readers switch to it and the buffer goes.
    pub fn finish(&self, id: &str) {
        if let Some(e) = self.map().remove(id) {
            e.lock().finished = true;
            e.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_buffer_appends_in_order_and_drops_overlap() {
        let mut b = LiveBuf::default();
        b.append(0, b"hello ");
        b.append(3, b"lo world"); // resent overlap
        assert_eq!(b.read_from(0).unwrap(), b"hello world");
        assert_eq!(b.read_from(6).unwrap(), b"world");
        assert_eq!(b.read_from(11), None);
        b.append(0, b"hel"); // entirely old
        assert_eq!(b.data, b"hello world");
    }

    #[test]
    fn live_buffer_late_start_and_gaps() {
        let mut b = LiveBuf::default();
        b.append(100, b"abc");
        assert_eq!(b.read_from(100).unwrap(), b"abc");
        assert_eq!(b.read_from(0), None, "bytes before the buffer are not live");
        b.append(200, b"x");
        assert!(b.broken);
        assert_eq!(b.read_from(100), None);
    }

    #[test]
    fn live_buffer_is_capped() {
        let mut b = LiveBuf::default();
        let big = vec![0u8; LIVE_CAP];
        b.append(0, &big);
        assert!(!b.broken);
        b.append(LIVE_CAP as u64, b"more");
        assert!(b.broken);
    }

    #[test]
    fn untracked_ids_are_ignored() {
        let l = LiveOutputs::default();
        l.append("s", "nope", 0, b"x");
        assert!(l.get("nope").is_none());
        l.start("c", "s");
        // Another server's agent cannot write into it.
        l.append("other", "c", 0, b"forged");
        assert_eq!(l.get("c").unwrap().lock().read_from(0), None);
        l.append("s", "c", 0, b"x");
        assert_eq!(l.get("c").unwrap().lock().read_from(0).unwrap(), b"x");
        l.finish("c");
        assert!(l.get("c").is_none());
    }
}
