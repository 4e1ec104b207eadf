//! ccfd wire protocol and sans-IO protocol state machines.
//!
//! This crate never touches a socket, a clock or a thread: drivers (`ccfd-server`, `ccfd-client`) feed it
//! bytes, frames and the current time, and act on what it returns.
//!
//! - [`frame`]: control messages on TCP ([`Frame`]), their strict length-prefixed binary encoding
//!   ([`Frame::encode`], [`Frame::decode_body`]) and a stream reassembler ([`FrameDecoder`]).
//! - [`data`]: the UDP data-packet header and its MAC ([`DataPacket::seal`], [`DataPacket::open`]).
//! - [`session_table`]: the server's sessions, receivers, rates and cooperation lists ([`SessionTable`]).
//! - [`download`]: the client's download of one file ([`Download`]).
//! - [`coop`]: one client's cooperation bookkeeping for a file: peer links, asks, streams served
//!   ([`Coop`]).
//! - [`pacing`]: a token bucket over simulated time ([`pacing::TokenBucket`]), shared by every sender.
//! - [`units`]: rates (`500mbit`), sizes (`32MiB`) and durations as written on command lines and in
//!   config files.
//! - [`wire`]: the codec errors ([`WireError`]).
#![forbid(unsafe_code)]

pub mod coop;
pub mod data;
pub mod download;
pub mod frame;
pub mod pacing;
pub mod session_table;
pub mod units;
pub mod wire;

pub use coop::{Coop, CoopAction, CoopConfig, LinkId, ServeSource};
pub use data::{
    DataError, DataHeader, DataPacket, Origin, DATA_HEADER_LEN, DATA_OVERHEAD, MAC_LEN,
};
pub use download::{Download, DownloadAction, DownloadConfig, DownloadError};
pub use frame::*;
pub use session_table::{
    ClientId, ReceiverView, Reply, SegmentInfo, SessionTable, SessionView, ShardCommand,
    TableConfig, TableOutput, MAX_FILES_PER_CLIENT,
};
pub use wire::WireError;
