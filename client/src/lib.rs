//! ccfd-client: fetches one file from a ccfd server as streams of coded UDP packets (DESIGN.md §5).
//!
//! Threads of a `get`:
//! - the **control thread** runs a tokio current-thread runtime with the TCP control connection: it asks
//!   for the file meta, requests segments one by one, heartbeats with receive statistics, sends
//!   `StopSegment` as soon as a segment decodes and `Exit` at the end, and reconnects with backoff when
//!   the server goes away;
//! - the **decoder thread** (the calling thread, pinned to a core) receives data packets on its UDP
//!   socket through `ccfd-ring`, checks header, session and MAC, decodes into one of two segment
//!   buffers and hands a copy of every verified server packet to the cooperation queue ([`coop`]) of
//!   the cooperation shard (none with `--no-coop`);
//! - the **writer thread** ([`output_writer`]) takes each decoded segment's buffer, verifies its
//!   BLAKE3 digest, writes it into the output (`PATH.part`) and records it in the resume record,
//!   while the decoder thread already receives the next segment.
//!
//! [`get`] ties them together, [`control`] and [`connection`] are the control side, [`receiver`] the
//! decoder thread, [`output_writer`] the writer thread, [`params`] the wire-to-codec conversions. [`output`] owns the partial file,
//! [`resume`] its resume record, [`stats`] the counters and the `--json` summary, [`progress`] the bar,
//! [`exit`] the process exit codes and [`error`] the typed errors behind them.
//!
//! Cooperation (issue 5, on unless `--no-coop`) adds two threads: [`coop_control`] (`ccfd-coop`: peer
//! TCP links driven by `ccfd_proto::Coop`, peer lists through the control thread, linger) and
//! [`coop_shard`] (the pinned sender: recodes the segment being received from the packets the decoder
//! queues, encodes completed segments from the output, paces every stream under the upload cap).
//! Peers' packets arrive on the same data socket with `Origin::Peer` under the receiver's session key;
//! the decoder thread counts them per source (`bytes_from_peers`, per-source heartbeats).
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
pub mod output_writer;
pub mod params;
pub mod progress;
pub mod receiver;
pub mod resume;
pub mod stats;

pub use error::ClientError;
pub use exit::ExitCode;
