//! ccfd-server: serves regular files under a root directory as rateless streams of coded UDP packets.
//!
//! Architecture (DESIGN.md §4): a control plane (tokio current-thread runtime on its own thread, TCP
//! frames) drives `ccfd_proto::SessionTable`; one pinned shard thread per core owns the UDP sockets of
//! its sessions (`session_id % shards`) and sends paced GSO batches of MAC-sealed snc packets through
//! `ccfd-ring`: a systematic session hands out each source symbol to one of its receivers (the shared
//! pool, `shard::pool`), then every receiver gets coded packets of its own fresh stream.
//!
//! Entry point:
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut settings = ccfd_server::Settings::with_root("/srv/ccfd");
//! settings.listen = "127.0.0.1:0".parse()?;
//! let server = ccfd_server::Server::start(&settings)?; // sockets bound, shards running
//! println!("control on {}", server.control_addr());
//! server.shutdown(); // closes connections and sockets, joins every thread
//! # Ok(()) }
//! ```
//!
//! Modules:
//! - [`config`]: command line, TOML file, validated [`config::Settings`];
//! - [`units`]: rates (`500mbit`), sizes (`32MiB`), durations;
//! - [`catalog`]: name resolution under the root, file meta with per-segment BLAKE3 digests, mapping,
//!   change detection;
//! - [`coder`]: code parameters (config, snc, wire) and the per-session encoder over the mapping;
//! - [`pacing`]: token buckets per receiver and the shared egress cap (pure logic, simulated time);
//! - [`control`]: connections, frames, session table, shard command queues;
//! - [`shard`]: the pinned sender threads;
//! - [`server`]: start/stop of the whole;
//! - [`notify`]: systemd readiness, a watchdog fed by every loop, stopping.

pub mod catalog;
pub mod coder;
pub mod config;
pub mod control;
pub mod notify;
pub mod pacing;
pub mod server;
pub mod shard;
pub use ccfd_proto::units;

pub use config::Settings;
pub use server::{Server, ServerError, ServerStats};
