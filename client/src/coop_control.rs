//! The cooperation control (issue 5, DESIGN.md §5): peer TCP links driven by `ccfd_proto::Coop`,
//! feeding [`crate::coop_shard`] with what to stream where.
//!
//! A thread "ccfd-coop" runs a tokio current-thread runtime with:
//! - the cooperation listener (bound by [`crate::get`] before the control thread starts, so its
//!   address goes into the Hello to the server) accepting inbound peer links;
//! - outbound links opened on `CoopAction::Connect` (from the `--bind` IP, so peers see our IP);
//! - one task per link reading and writing frames ([`crate::connection::ControlConn`] framing);
//! - the `Coop` timers, and a statistics tick that turns the decoder's per-source tallies
//!   ([`sources::SourceBoard`]) into `ReceiverStats` for each source's heartbeat. The receive rate
//!   reported to a source is its *useful* rate (bytes that raised our decoder's rank): peers that
//!   hold what we hold send redundant recoded packets, and the source paces down to what helps.
//!
//! Inputs come as [`CoopEvent`]s from the control thread (session started, decoded, verified or
//! failed, the server's `PeerList` answers, the server's rate) and from `get` (leave after the linger).
//! `CoopAction::RequestPeers` goes back to the control thread as a [`PeersRequest`], which sends
//! `Peers` on the server connection. Serving actions become `ServeCommand`s for the cooperation
//! shard (its waker fired after each batch).
//!
//! Download budget (`--download-rate`): the frame `ReceiverStats` has no budget field, so the server
//! is not told; what we report to each peer source as our receive rate is capped at an equal share of
//! what the budget leaves after the server's current rate to us (a source paces by it).

pub mod sources;

mod driver;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ccfd_proto::{CoopConfig, NodeId, PeerInfo, SessionMeta};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::coop_shard::ServeCommand;
use crate::error::ClientError;
use crate::receiver::LiveSession;

pub use driver::spawn;

/// Heartbeat period on peer links (and of the per-source statistics sample they carry): sources
/// pace by it, so it is short next to a segment's transfer time.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// What the control thread (and `get`) tell the cooperation control.
#[derive(Debug, Clone)]
pub enum CoopEvent {
    /// We now receive this session; `server_only` after a digest failure of its segment.
    Receiving {
        /// The session.
        meta: SessionMeta,
        /// Fetch from the server alone (no peers asked).
        server_only: bool,
    },
    /// The segment decoded (its sources get `StopCoop`).
    Decoded {
        /// The segment.
        segment: u32,
    },
    /// The segment's digest matched (`ok`) or not (its contributors are cut off for it).
    Verified {
        /// The segment.
        segment: u32,
        /// Whether the digest matched.
        ok: bool,
    },
    /// The server's answer to a [`PeersRequest`].
    PeerList {
        /// File name.
        name: String,
        /// Segment.
        segment: u32,
        /// Candidates, most useful first.
        peers: Vec<PeerInfo>,
    },
    /// The server's send rate to us (from its `HeartbeatAck`), bits per second.
    ServerRate {
        /// Rate.
        bps: u64,
    },
    /// The download is over: keep serving for `linger`, then `ExitCoop` everywhere and stop.
    Leave {
        /// How long to keep serving.
        linger: Duration,
    },
}

/// A `Peers` query the control thread must send to the server (answer via [`CoopEvent::PeerList`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersRequest {
    /// File name.
    pub name: String,
    /// Segment.
    pub segment: u32,
}

/// The control thread's ends of the cooperation channels (part of its `Plan`).
#[derive(Debug)]
pub struct CoopHooks {
    /// Events to the cooperation control.
    pub events: UnboundedSender<CoopEvent>,
    /// `Peers` queries to send to the server.
    pub peer_requests: UnboundedReceiver<PeersRequest>,
    /// When the download is done the control thread keeps the server connection (so the server
    /// keeps listing us as a holder) until this fires or its sender is dropped, then sends `Exit`.
    pub linger_until: tokio::sync::oneshot::Receiver<()>,
}

/// The cooperation shard's command end.
#[derive(Debug, Clone)]
pub struct ShardLink {
    /// Commands.
    pub commands: crossbeam_channel::Sender<ServeCommand>,
    /// Fired after each batch of commands.
    pub waker: ccfd_ring::Waker,
}

/// What the cooperation control needs to start.
#[derive(Debug)]
pub struct CoopSetup {
    /// The cooperation listener, already bound (its address was announced in Hello).
    pub listener: std::net::TcpListener,
    /// Local IP for outbound peer links.
    pub bind_ip: IpAddr,
    /// This client's node id.
    pub node_id: NodeId,
    /// The file being fetched.
    pub name: String,
    /// Our UDP data address (peers send there).
    pub data_addr: SocketAddr,
    /// Segments complete and verified at startup (resumed).
    pub completed: Vec<u32>,
    /// Cooperation settings.
    pub config: CoopConfig,
    /// The shard serving our peers.
    pub shard: ShardLink,
    /// Live statistics published by the decoder thread (per-source tallies in `sources`).
    pub live: Arc<LiveSession>,
    /// Download budget in bits per second, if any.
    pub download_rate_bps: Option<u64>,
    /// Events from the control thread and `get`.
    pub events: UnboundedReceiver<CoopEvent>,
    /// `Peers` queries to the control thread.
    pub peer_requests: UnboundedSender<PeersRequest>,
}

/// The running cooperation control thread.
#[derive(Debug)]
pub struct CoopHandle {
    /// Its thread; ends after [`CoopEvent::Leave`] and the linger, or when every event sender is gone.
    pub thread: JoinHandle<Result<(), ClientError>>,
}
