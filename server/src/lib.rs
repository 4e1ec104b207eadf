//! ccfd-server: serves regular files under a root directory as rateless streams of coded UDP packets.
//!
//! Architecture (DESIGN.md §4): a control plane (tokio, its own thread, TCP frames) drives the session
//! table; one pinned shard thread per core owns the UDP sockets and mmapped segments of its sessions and
//! sends paced GSO batches through `ccfd-ring`. Modules:
//! - [`config`]: command line, TOML file, validated [`config::Settings`];
//! - [`units`]: rates (`500mbit`), sizes (`32MiB`), durations;
//! - [`catalog`]: name resolution under the root, file meta with per-segment BLAKE3 digests, change checks;
//! - [`pacing`]: token buckets and receiver-rate adaptation (pure logic, simulated time);
//! - [`notify`]: systemd readiness, watchdog fed by every shard loop, stopping.

pub mod catalog;
pub mod coder;
pub mod config;
pub mod control;
pub mod notify;
pub mod pacing;
pub mod server;
pub mod shard;
pub mod units;

pub use config::Settings;
pub use server::{Server, ServerError, ServerStats};
