//! Messages from the gateway to a terminal on the agent, one per `Data`
//! frame of a `Pty`/`PtyAttach` stream:
//!
//! ```text
//! 0x00 bytes…                    input for the PTY
//! 0x01 rows u16 BE, cols u16 BE  window size changed
//! 0x02 offset u64 BE             the gateway has stored output up to here
//! 0x03                           end the session (hang up the shell)
//! ```
//!
//! The other direction (agent → gateway) is the raw PTY output.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyIn {
    Input(Bytes),
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Output up to `offset` is safe at the gateway: the agent may drop it
    /// from its replay buffer.
    Ack {
        offset: u64,
    },
    Terminate,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PtyInError {
    #[error("empty terminal message")]
    Empty,
    #[error("unknown terminal message tag {0}")]
    UnknownTag(u8),
    #[error("terminal message of tag {tag} has a bad length {len}")]
    BadLength { tag: u8, len: usize },
}

impl PtyIn {
    pub fn encode(&self) -> Bytes {
        match self {
            PtyIn::Input(b) => {
                let mut out = BytesMut::with_capacity(1 + b.len());
                out.put_u8(0);
                out.extend_from_slice(b);
                out.freeze()
            }
            PtyIn::Resize { rows, cols } => {
                let mut out = BytesMut::with_capacity(5);
                out.put_u8(1);
                out.put_u16(*rows);
                out.put_u16(*cols);
                out.freeze()
            }
            PtyIn::Ack { offset } => {
                let mut out = BytesMut::with_capacity(9);
                out.put_u8(2);
                out.put_u64(*offset);
                out.freeze()
            }
            PtyIn::Terminate => Bytes::from_static(&[3]),
        }
    }

    pub fn decode(b: Bytes) -> Result<PtyIn, PtyInError> {
        let tag = *b.first().ok_or(PtyInError::Empty)?;
        let body = b.slice(1..);
        let bad = || PtyInError::BadLength {
            tag,
            len: body.len(),
        };
        match tag {
            0 => Ok(PtyIn::Input(body)),
            1 => {
                let a: [u8; 4] = body[..].try_into().map_err(|_| bad())?;
                Ok(PtyIn::Resize {
                    rows: u16::from_be_bytes([a[0], a[1]]),
                    cols: u16::from_be_bytes([a[2], a[3]]),
                })
            }
            2 => {
                let a: [u8; 8] = body[..].try_into().map_err(|_| bad())?;
                Ok(PtyIn::Ack {
                    offset: u64::from_be_bytes(a),
                })
            }
            3 if body.is_empty() => Ok(PtyIn::Terminate),
            3 => Err(bad()),
            t => Err(PtyInError::UnknownTag(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for m in [
            PtyIn::Input(Bytes::from_static(b"ls -la\r")),
            PtyIn::Input(Bytes::from_static(&[0xe2, 0x82])), // half a UTF-8 char
            PtyIn::Input(Bytes::new()),
            PtyIn::Resize {
                rows: 50,
                cols: 200,
            },
            PtyIn::Ack { offset: u64::MAX },
            PtyIn::Terminate,
        ] {
            assert_eq!(PtyIn::decode(m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(PtyIn::decode(Bytes::new()), Err(PtyInError::Empty));
        assert_eq!(
            PtyIn::decode(Bytes::from_static(&[9])),
            Err(PtyInError::UnknownTag(9))
        );
        assert!(PtyIn::decode(Bytes::from_static(&[1, 0, 1])).is_err());
        assert!(PtyIn::decode(Bytes::from_static(&[2, 0])).is_err());
        assert!(PtyIn::decode(Bytes::from_static(&[3, 0])).is_err());
    }
}
