//! The agent ↔ gateway wire protocol.
//!
//! Pure data and decisions, no I/O: message types, the binary frame codec,
//! version negotiation, the authentication transcript and per-stream credit
//! windows. Both `alpacon-server` and `alpamon` speak it over one WebSocket
//! (WSS) connection, one frame per binary WebSocket message.
//!
//! See `ARCHITECTURE.md` ("The agent link") for the picture.

pub mod auth;
pub mod b64;
pub mod flow;
pub mod frame;
pub mod glob;
pub mod msg;
pub mod pty;
pub mod version;
pub mod websh;

pub use flow::{FlowError, RecvWindow, SendCredit, INITIAL_WINDOW};
pub use frame::{Frame, FrameError, MAX_DATA, MAX_FRAME};
pub use glob::glob_match;
pub use msg::*;
pub use version::{negotiate, VersionRange, PROTOCOL_VERSION, SUPPORTED};
