//! The most recent output of a live terminal, kept in memory so that clients
//! keeping up are served without reading the session's log back (the log on
//! disk stays the source for anyone further behind, and for resumes).

use std::collections::VecDeque;

/// At most this much output is kept: the gateway reads at most
/// `READ_AHEAD` past the fastest client, so that client is always served
/// from here.
pub const TAIL_MAX: usize = alpacon_proto::websh::READ_AHEAD as usize + 64 * 1024;

#[derive(Debug)]
pub struct OutputTail {
    /// Offset (in the session's output) of `buf[0]`.
    start: u64,
    buf: VecDeque<u8>,
    cap: usize,
}

/// Where a reader at some offset finds its next bytes.
#[derive(Debug, PartialEq)]
pub enum TailRead {
    /// Here: up to the wanted number of bytes (empty when caught up).
    Bytes(Vec<u8>),
    /// Older than what is kept: read the log file.
    Evicted,
}

impl OutputTail {
    pub fn new(start: u64, cap: usize) -> OutputTail {
        OutputTail {
            start,
            buf: VecDeque::new(),
            cap,
        }
    }

    /// Offset just past the newest byte.
    pub fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    pub fn push(&mut self, d: &[u8]) {
        let skip = d.len().saturating_sub(self.cap);
        if skip > 0 {
            self.start = self.end() + skip as u64;
            self.buf.clear();
            self.buf.extend(&d[skip..]);
            return;
        }
        let over = (self.buf.len() + d.len()).saturating_sub(self.cap);
        self.forget(over);
        self.buf.extend(d);
    }

    /// Drops what lies before `offset` (everyone who could need it from
    /// memory has read past it).
    pub fn trim_to(&mut self, offset: u64) {
        let n = offset.saturating_sub(self.start).min(self.buf.len() as u64);
        self.forget(n as usize);
        // Give memory back after a burst of output (a `cat` of a big file).
        if self.buf.capacity() > 64 * 1024 && self.buf.len() < self.buf.capacity() / 4 {
            self.buf.shrink_to(self.buf.len().max(4096));
        }
    }

    fn forget(&mut self, n: usize) {
        self.buf.drain(..n);
        self.start += n as u64;
    }

    pub fn read(&self, pos: u64, max: usize) -> TailRead {
        if pos < self.start {
            return TailRead::Evicted;
        }
        let from = ((pos - self.start) as usize).min(self.buf.len());
        let to = from.saturating_add(max).min(self.buf.len());
        let mut out = Vec::with_capacity(to - from);
        out.extend(self.buf.range(from..to));
        TailRead::Bytes(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(t: &OutputTail, pos: u64, max: usize) -> Vec<u8> {
        match t.read(pos, max) {
            TailRead::Bytes(b) => b,
            TailRead::Evicted => panic!("{pos} was evicted"),
        }
    }

    #[test]
    fn serves_from_where_it_starts() {
        let mut t = OutputTail::new(100, 8);
        assert_eq!(t.end(), 100);
        assert_eq!(bytes(&t, 100, 10), b"");
        t.push(b"abc");
        t.push(b"de");
        assert_eq!(t.end(), 105);
        assert_eq!(bytes(&t, 100, 10), b"abcde");
        assert_eq!(bytes(&t, 101, 2), b"bc");
        assert_eq!(bytes(&t, 105, 2), b"");
        // A reader past the end (cannot happen) is simply caught up.
        assert_eq!(bytes(&t, 200, 2), b"");
        assert_eq!(t.read(99, 1), TailRead::Evicted);
    }

    #[test]
    fn evicts_the_oldest_beyond_its_capacity() {
        let mut t = OutputTail::new(0, 4);
        t.push(b"abc");
        t.push(b"def");
        assert_eq!(t.end(), 6);
        assert_eq!(t.read(1, 10), TailRead::Evicted);
        assert_eq!(bytes(&t, 2, 10), b"cdef");
        // A chunk larger than the whole capacity keeps its last bytes.
        t.push(b"0123456789");
        assert_eq!(t.end(), 16);
        assert_eq!(t.read(11, 1), TailRead::Evicted);
        assert_eq!(bytes(&t, 12, 10), b"6789");
    }

    #[test]
    fn wraps_around_inside() {
        let mut t = OutputTail::new(0, 6);
        t.push(b"abcd");
        t.trim_to(3);
        t.push(b"efgh");
        assert_eq!(bytes(&t, 3, 10), b"defgh");
        assert_eq!(bytes(&t, 4, 3), b"efg");
    }

    #[test]
    fn trims_to_what_readers_passed() {
        let mut t = OutputTail::new(10, 100);
        t.push(b"hello");
        t.trim_to(12);
        assert_eq!(t.read(11, 1), TailRead::Evicted);
        assert_eq!(bytes(&t, 12, 10), b"llo");
        // Trimming behind the start or past the end is harmless.
        t.trim_to(5);
        assert_eq!(bytes(&t, 12, 10), b"llo");
        t.trim_to(1000);
        assert_eq!(t.end(), 15);
        assert_eq!(bytes(&t, 15, 10), b"");
    }

    #[test]
    fn gives_memory_back_after_a_burst() {
        let mut t = OutputTail::new(0, TAIL_MAX);
        t.push(&vec![b'x'; TAIL_MAX]);
        assert!(t.buf.capacity() >= TAIL_MAX);
        t.trim_to(TAIL_MAX as u64 - 10);
        assert!(t.buf.capacity() < 64 * 1024);
        assert_eq!(bytes(&t, TAIL_MAX as u64 - 10, 100), vec![b'x'; 10]);
    }
}
