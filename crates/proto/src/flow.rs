//! Per-stream flow control by credit windows.
//!
//! Every stream starts with [`INITIAL_WINDOW`] bytes of credit in each
//! direction. A sender may only send `Data` while it has credit; a receiver
//! returns credit with `Window` frames as its consumer drains the data. So a
//! slow reader holds at most one window of buffered data per stream, and one
//! busy stream never blocks another: only its own credit runs out.

use thiserror::Error;

/// Bytes a side may send on a new stream before it hears a `Window` frame.
pub const INITIAL_WINDOW: u32 = 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FlowError {
    #[error("peer sent {got} bytes with only {allowed} bytes of window left")]
    WindowExceeded { got: u32, allowed: u32 },
    #[error("window update overflows the credit counter")]
    Overflow,
}

/// The sending half: how much we may still send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCredit {
    credit: u64,
}

impl Default for SendCredit {
    fn default() -> Self {
        Self::new(INITIAL_WINDOW)
    }
}

impl SendCredit {
    pub fn new(initial: u32) -> Self {
        Self {
            credit: initial as u64,
        }
    }

    pub fn available(&self) -> u64 {
        self.credit
    }

    /// Take up to `want` bytes of credit; returns how many were granted
    /// (0 when the window is closed).
    pub fn take(&mut self, want: usize) -> usize {
        let n = (want as u64).min(self.credit);
        self.credit -= n;
        n as usize
    }

    /// Apply a `Window { increment }` from the peer.
    pub fn grant(&mut self, increment: u32) -> Result<(), FlowError> {
        let next = self.credit + increment as u64;
        // A peer can never legitimately grant more than 4 GiB outstanding.
        if next > u32::MAX as u64 {
            return Err(FlowError::Overflow);
        }
        self.credit = next;
        Ok(())
    }
}

/// The receiving half: how much the peer may still send, and when to tell it
/// it may send more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow {
    window: u32,
    /// Bytes the peer may still send before we update it.
    remaining: u32,
    /// Bytes the consumer has drained since the last update we sent.
    consumed: u32,
}

impl Default for RecvWindow {
    fn default() -> Self {
        Self::new(INITIAL_WINDOW)
    }
}

impl RecvWindow {
    pub fn new(window: u32) -> Self {
        Self {
            window,
            remaining: window,
            consumed: 0,
        }
    }

    /// Account for `n` bytes of `Data` arriving. A peer that overruns its
    /// window is violating the protocol.
    pub fn on_data(&mut self, n: u32) -> Result<(), FlowError> {
        if n > self.remaining {
            return Err(FlowError::WindowExceeded {
                got: n,
                allowed: self.remaining,
            });
        }
        self.remaining -= n;
        Ok(())
    }

    /// Account for `n` bytes handed to the consumer. Returns the increment to
    /// send in a `Window` frame once at least half a window has drained
    /// (batching updates keeps their overhead negligible).
    pub fn on_consumed(&mut self, n: u32) -> Option<u32> {
        self.consumed = self.consumed.saturating_add(n);
        if self.consumed >= self.window / 2 {
            let inc = self.consumed;
            self.consumed = 0;
            self.remaining = self.remaining.saturating_add(inc);
            Some(inc)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_credit_is_bounded_and_replenished() {
        let mut c = SendCredit::new(100);
        assert_eq!(c.take(60), 60);
        assert_eq!(c.take(60), 40);
        assert_eq!(c.take(1), 0);
        c.grant(10).unwrap();
        assert_eq!(c.available(), 10);
        assert_eq!(c.take(100), 10);
    }

    #[test]
    fn send_credit_rejects_overflow() {
        let mut c = SendCredit::new(u32::MAX);
        assert_eq!(c.grant(1), Err(FlowError::Overflow));
        assert_eq!(c.available(), u32::MAX as u64);
    }

    #[test]
    fn recv_window_detects_overrun() {
        let mut w = RecvWindow::new(10);
        w.on_data(6).unwrap();
        assert_eq!(
            w.on_data(5),
            Err(FlowError::WindowExceeded { got: 5, allowed: 4 })
        );
        w.on_data(4).unwrap();
        assert!(w.on_data(1).is_err());
    }

    #[test]
    fn recv_window_batches_updates_at_half() {
        let mut w = RecvWindow::new(10);
        w.on_data(10).unwrap();
        assert_eq!(w.on_consumed(4), None);
        assert_eq!(w.on_consumed(1), Some(5));
        // Exactly the returned credit may now arrive.
        w.on_data(5).unwrap();
        assert!(w.on_data(1).is_err());
    }

    #[test]
    fn sender_and_receiver_agree_over_a_long_transfer() {
        // Simulate a sender pushing 10 MiB through a 64 KiB window with a
        // consumer that drains in odd-sized pieces; no overrun must occur and
        // all bytes must arrive.
        let win = 64 * 1024;
        let mut tx = SendCredit::new(win);
        let mut rx = RecvWindow::new(win);
        let total = 10 * 1024 * 1024usize;
        let (mut sent, mut buffered, mut drained) = (0usize, 0usize, 0usize);
        let mut step = 0usize;
        while drained < total {
            step += 1;
            let n = tx.take((total - sent).min(16 * 1024 + step % 7));
            if n > 0 {
                rx.on_data(n as u32).unwrap();
                sent += n;
                buffered += n;
            }
            assert!(buffered <= win as usize, "receiver buffered past window");
            let d = buffered.min(5000 + step % 13);
            buffered -= d;
            drained += d;
            if let Some(inc) = rx.on_consumed(d as u32) {
                tx.grant(inc).unwrap();
            }
        }
        assert_eq!(sent, total);
    }
}
