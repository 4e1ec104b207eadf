//! ccfd-client: fetches one file from a ccfd server as streams of coded UDP packets (DESIGN.md §5).
//!
//! Threads of a `get`:
//! - the **control thread** runs a tokio current-thread runtime with the TCP control connection: it asks
//!   for the file meta, requests segments one by one, heartbeats with receive statistics, sends
//!   `StopSegment` as soon as a segment decodes and `Exit` at the end, and reconnects with backoff when
//!   the server goes away;
//! - the **decoder thread** (the calling thread, pinned to a core) receives data packets on its UDP
//!   socket through `ccfd-ring`, checks header, session and MAC, decodes straight into the mmapped
//!   output (`PATH.part`), verifies each segment's BLAKE3 digest, records it in the resume record and
//!   hands a copy of every verified packet to the cooperation queue ([`coop`]) of the future
//!   cooperation shard.
//!
//! [`get`] ties them together, [`control`] and [`connection`] are the control side, [`receiver`] the
//! decoder thread, [`params`] the wire-to-codec conversions. [`output`] owns the partial file,
//! [`resume`] its resume record, [`stats`] the counters and the `--json` summary, [`progress`] the bar,
//! [`exit`] the process exit codes and [`error`] the typed errors behind them.
//!
//! Cooperation (issue 5) slots in as a third thread: it pops [`coop::VerifiedPacket`]s from the queue
//! the decoder fills (never blocking it), answers peers on a listener announced in Hello, and peers'
//! packets arrive on the same data socket with `Origin::Peer` under the receiver's session key, so the
//! decoder thread already accepts and counts them (`bytes_from_peers`).
pub mod cli;
pub mod connection;
pub mod control;
pub mod coop;
pub mod coop_control;
pub mod coop_shard;
pub mod error;
pub mod exit;
pub mod get;
pub mod output;
pub mod params;
pub mod progress;
pub mod receiver;
pub mod resume;
pub mod stats;

pub use error::ClientError;
pub use exit::ExitCode;
