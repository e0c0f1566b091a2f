//! [`Buffered`]: the socket under an agent link's (or any) TLS stream, with
//! reads taken in large pieces and writes gathered until a flush.
//!
//! rustls reads the socket 4 KiB at a time and writes each TLS record
//! (≤ 16 KiB) with a syscall of its own; at hundreds of MB/s that is most of
//! the syscalls, and each one may wake the peer. Below TLS, this adapter
//! turns those into one `read` per 64 KiB and one `write` per flush.
//!
//! Idle connections hold no buffer: the read buffer is released whenever the
//! socket has nothing more to give, the write buffer once it is written out,
//! so tens of thousands of idle agent links cost nothing extra.
//!
//! Every layer above (rustls' handshake, tungstenite, hyper, h2) flushes
//! after writing what the peer must see, which is what makes gathering
//! writes until `poll_flush` safe.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once when the reader asks for less.
pub const READ_AHEAD: usize = 64 * 1024;
/// Writes gathered beyond this go out without waiting for a flush.
pub const WRITE_GATHER: usize = 256 * 1024;

/// A socket with read-ahead and gathered writes; see the module docs.
#[derive(Debug)]
pub struct Buffered<S> {
    io: S,
    /// Bytes read ahead: `rbuf[rpos..]` are not handed out yet.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Bytes written but not yet on the socket: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
}

impl<S> Buffered<S> {
    pub fn new(io: S) -> Self {
        Buffered {
            io,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Bytes currently held (for tests and memory accounting).
    pub fn buffered(&self) -> (usize, usize) {
        (self.rbuf.len() - self.rpos, self.wbuf.len() - self.wpos)
    }
}

impl<S: AsyncWrite + Unpin> Buffered<S> {
    /// Writes out everything gathered. The buffer is kept for more writes
    /// (`release`), or freed (on flush: the writer is done for now).
    fn poll_drain(&mut self, cx: &mut Context<'_>, release: bool) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        if release {
            self.wbuf = Vec::new();
        } else {
            self.wbuf.clear();
        }
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for `more` bytes: the first write after a flush reserves a
    /// good part of the limit at once instead of growing step by step.
    fn reserve(&mut self, more: usize) {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve_exact(more.max(WRITE_GATHER / 4));
        } else {
            self.wbuf.reserve(more);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Buffered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rpos == this.rbuf.len() {
            // Nothing read ahead. A big read goes straight to the socket.
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            this.rbuf.clear();
            this.rpos = 0;
            this.rbuf.reserve_exact(READ_AHEAD);
            let mut rb = ReadBuf::uninit(&mut this.rbuf.spare_capacity_mut()[..READ_AHEAD]);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Idle: hold no memory while waiting.
                    this.rbuf = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    this.rbuf = Vec::new();
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    // SAFETY: `poll_read` initialized the first `n` bytes of
                    // the spare capacity (ReadBuf guarantees `filled` is).
                    unsafe { this.rbuf.set_len(n) };
                    if n == 0 {
                        // End of stream.
                        this.rbuf = Vec::new();
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
        let avail = &this.rbuf[this.rpos..];
        let n = avail.len().min(out.remaining());
        out.put_slice(&avail[..n]);
        this.rpos += n;
        if this.rpos == this.rbuf.len() {
            this.rbuf.clear();
            this.rpos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Buffered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wbuf.len() - this.wpos + data.len() > WRITE_GATHER {
            ready!(this.poll_drain(cx, false))?;
            if data.len() >= WRITE_GATHER {
                return Pin::new(&mut this.io).poll_write(cx, data);
            }
        }
        this.reserve(data.len());
        this.wbuf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.wbuf.len() - this.wpos + total > WRITE_GATHER {
            ready!(this.poll_drain(cx, false))?;
            if total >= WRITE_GATHER {
                return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            }
        }
        this.reserve(total);
        for b in bufs {
            this.wbuf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx, true))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx, true))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_come_from_one_big_read() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        b.write_all(&data).await.unwrap();
        drop(b);
        let mut r = Buffered::new(a);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            // Whatever is held is less than one read-ahead.
            assert!(r.buffered().0 < READ_AHEAD);
        }
        assert_eq!(got, data);
        assert_eq!(r.buffered(), (0, 0));
    }

    #[tokio::test]
    async fn writes_wait_for_flush_and_big_ones_go_through() {
        let (a, mut b) = tokio::io::duplex(4 << 20);
        let mut w = Buffered::new(a);
        w.write_all(b"hello ").await.unwrap();
        w.write_all(b"world").await.unwrap();
        assert_eq!(w.buffered().1, 11);
        w.flush().await.unwrap();
        assert_eq!(w.buffered(), (0, 0));
        let mut buf = [0u8; 11];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello world");

        let big = vec![7u8; WRITE_GATHER + 10];
        w.write_all(b"x").await.unwrap();
        w.write_all(&big).await.unwrap();
        let n = w
            .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .await
            .unwrap();
        assert_eq!(n, 4);
        w.shutdown().await.unwrap();
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 1 + big.len() + 4);
        assert_eq!(all[0], b'x');
        assert_eq!(&all[all.len() - 4..], b"abcd");
    }

    #[tokio::test]
    async fn idle_reader_holds_no_buffer() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut r = Buffered::new(a);
        let mut buf = [0u8; 16];
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut buf)).await;
        assert!(pending.is_err());
        assert_eq!(r.rbuf.capacity(), 0);
        b.write_all(b"ping").await.unwrap();
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(r.rbuf.capacity(), READ_AHEAD);
    }
}
