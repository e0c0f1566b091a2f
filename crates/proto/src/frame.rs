//! The binary frame codec. One frame per binary WebSocket message:
//!
//! ```text
//! +--------+----------------+-----------------------------+
//! | kind u8| stream u32 (BE)| payload                     |
//! +--------+----------------+-----------------------------+
//! ```
//!
//! | kind | frame   | stream | payload                          |
//! |------|---------|--------|----------------------------------|
//! | 0    | Control | 0      | JSON [`Control`]                 |
//! | 1    | Open    | id     | JSON [`Open`]                    |
//! | 2    | Accept  | id     | JSON [`StreamInfo`]              |
//! | 3    | Data    | id     | raw bytes (≤ [`MAX_DATA`])       |
//! | 4    | Window  | id     | u32 BE credit increment          |
//! | 5    | Eof     | id     | empty: sender will send no more  |
//! | 6    | Close   | id     | JSON [`Close`]: stream is done   |
//!
//! Stream ids opened by the gateway are odd, by the agent even; 0 is the
//! control channel.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::msg::{Close, Control, Open, StreamInfo};

/// Largest data payload in one frame.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest encoded frame a peer must accept (JSON control messages carry
/// command output chunks and listings, so they get more room than data).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

const HEADER: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Control(Control),
    Open { stream: u32, open: Open },
    Accept { stream: u32, info: StreamInfo },
    Data { stream: u32, data: Bytes },
    Window { stream: u32, increment: u32 },
    Eof { stream: u32 },
    Close { stream: u32, close: Close },
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame too short ({0} bytes)")]
    Short(usize),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("control frame on stream {0}")]
    ControlOnStream(u32),
    #[error("stream frame on stream 0")]
    StreamZero,
    #[error("bad window payload")]
    BadWindow,
    #[error("bad JSON payload: {0}")]
    Json(#[from] serde_json::Error),
}

impl Frame {
    pub fn stream(&self) -> u32 {
        match self {
            Frame::Control(_) => 0,
            Frame::Open { stream, .. }
            | Frame::Accept { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::Window { stream, .. }
            | Frame::Eof { stream }
            | Frame::Close { stream, .. } => *stream,
        }
    }

    pub fn encode(&self) -> Bytes {
        fn json<T: serde::Serialize>(kind: u8, stream: u32, v: &T) -> Bytes {
            let mut b = BytesMut::with_capacity(128);
            b.put_u8(kind);
            b.put_u32(stream);
            // Serializing our own plain data types cannot fail.
            let body = serde_json::to_vec(v).unwrap_or_default();
            b.extend_from_slice(&body);
            b.freeze()
        }
        match self {
            Frame::Control(c) => json(0, 0, c),
            Frame::Open { stream, open } => json(1, *stream, open),
            Frame::Accept { stream, info } => json(2, *stream, info),
            Frame::Data { stream, data } => {
                let mut b = BytesMut::with_capacity(HEADER + data.len());
                b.put_u8(3);
                b.put_u32(*stream);
                b.extend_from_slice(data);
                b.freeze()
            }
            Frame::Window { stream, increment } => {
                let mut b = BytesMut::with_capacity(HEADER + 4);
                b.put_u8(4);
                b.put_u32(*stream);
                b.put_u32(*increment);
                b.freeze()
            }
            Frame::Eof { stream } => {
                let mut b = BytesMut::with_capacity(HEADER);
                b.put_u8(5);
                b.put_u32(*stream);
                b.freeze()
            }
            Frame::Close { stream, close } => json(6, *stream, close),
        }
    }

    pub fn decode(buf: Bytes) -> Result<Frame, FrameError> {
        if buf.len() < HEADER {
            return Err(FrameError::Short(buf.len()));
        }
        if buf.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(buf.len()));
        }
        let kind = buf[0];
        let stream = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let payload = buf.slice(HEADER..);
        if kind == 0 {
            if stream != 0 {
                return Err(FrameError::ControlOnStream(stream));
            }
            return Ok(Frame::Control(serde_json::from_slice(&payload)?));
        }
        if stream == 0 && kind <= 6 {
            return Err(FrameError::StreamZero);
        }
        Ok(match kind {
            1 => Frame::Open {
                stream,
                open: serde_json::from_slice(&payload)?,
            },
            2 => Frame::Accept {
                stream,
                info: serde_json::from_slice(&payload)?,
            },
            3 => {
                if payload.len() > MAX_DATA {
                    return Err(FrameError::TooLarge(payload.len()));
                }
                Frame::Data {
                    stream,
                    data: payload,
                }
            }
            4 => {
                let p: [u8; 4] = payload[..].try_into().map_err(|_| FrameError::BadWindow)?;
                Frame::Window {
                    stream,
                    increment: u32::from_be_bytes(p),
                }
            }
            5 => Frame::Eof { stream },
            6 => Frame::Close {
                stream,
                close: serde_json::from_slice(&payload)?,
            },
            k => return Err(FrameError::UnknownKind(k)),
        })
    }
}

/// Which side opened a stream id.
pub fn opened_by_gateway(stream: u32) -> bool {
    stream % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Control(Control::Ping { seq: 42 }),
            Frame::Open {
                stream: 1,
                open: Open::FileRead {
                    path: "/etc/hostname".into(),
                    account: Account {
                        username: "root".into(),
                        groupname: None,
                        managed: None,
                    },
                    confine: Vec::new(),
                },
            },
            Frame::Accept {
                stream: 1,
                info: StreamInfo::File {
                    size: 10,
                    mode: 0o644,
                },
            },
            Frame::Data {
                stream: 3,
                data: Bytes::from_static(b"\x00\xffraw"),
            },
            Frame::Data {
                stream: 5,
                data: Bytes::new(),
            },
            Frame::Window {
                stream: 3,
                increment: u32::MAX,
            },
            Frame::Eof { stream: 7 },
            Frame::Close {
                stream: u32::MAX,
                close: Close::Err(StreamError::new(ErrorCode::Io, "disk full")),
            },
        ]
    }

    #[test]
    fn every_frame_kind_roundtrips() {
        for f in all_frames() {
            let enc = f.encode();
            assert_eq!(Frame::decode(enc).unwrap(), f);
        }
    }

    #[test]
    fn header_layout_is_stable() {
        let enc = Frame::Window {
            stream: 0x01020304,
            increment: 0x0a0b0c0d,
        }
        .encode();
        assert_eq!(&enc[..], &[4, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(&Frame::Eof { stream: 9 }.encode()[..], &[5, 0, 0, 0, 9]);
    }

    #[test]
    fn rejects_malformed_frames() {
        assert!(matches!(
            Frame::decode(Bytes::from_static(&[3, 0, 0])),
            Err(FrameError::Short(3))
        ));
        assert!(matches!(
            Frame::decode(Bytes::from_static(&[9, 0, 0, 0, 1])),
            Err(FrameError::UnknownKind(9))
        ));
        assert!(matches!(
            Frame::decode(Bytes::from_static(&[0, 0, 0, 0, 1, b'{', b'}'])),
            Err(FrameError::ControlOnStream(1))
        ));
        assert!(matches!(
            Frame::decode(Bytes::from_static(&[3, 0, 0, 0, 0])),
            Err(FrameError::StreamZero)
        ));
        assert!(matches!(
            Frame::decode(Bytes::from_static(&[4, 0, 0, 0, 1, 1, 2])),
            Err(FrameError::BadWindow)
        ));
        assert!(matches!(
            Frame::decode(Bytes::from_static(&[0, 0, 0, 0, 0, b'x'])),
            Err(FrameError::Json(_))
        ));
        let mut big = vec![3u8, 0, 0, 0, 1];
        big.resize(HEADER + MAX_DATA + 1, 0);
        assert!(matches!(
            Frame::decode(Bytes::from(big)),
            Err(FrameError::TooLarge(_))
        ));
        let mut huge = vec![0u8; MAX_FRAME + 1];
        huge[0] = 0;
        assert!(matches!(
            Frame::decode(Bytes::from(huge)),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn truncated_frames_never_panic() {
        for f in all_frames() {
            let enc = f.encode();
            for cut in 0..enc.len() {
                let _ = Frame::decode(enc.slice(..cut));
            }
        }
    }

    #[test]
    fn stream_parity() {
        assert!(opened_by_gateway(1));
        assert!(!opened_by_gateway(2));
    }
}
