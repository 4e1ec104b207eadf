//! The cooperation shard's data plane (issue 5, DESIGN.md §5): a pinned thread that streams coded
//! packets to the peers that asked us, over its own UDP socket through `ccfd-ring`.
//!
//! It pops the decoder thread's [`VerifiedPacket`]s (the segment being received) into a bounded
//! [`snc::Recoder`] and streams *recoded* packets of that segment to its askers; for segments already
//! complete and verified in our output it *encodes* fresh packets from a read-only map of the output
//! file (like the server; no buffer kept). Every stream is paced, the whole shard stays under the
//! upload cap, and each stream's rate follows what its receiver reports ([`ServeCommand::Report`]).
//!
//! The shard is driven by the cooperation control ([`crate::coop_control`]) through [`ServeCommand`]s
//! and never blocks the decoder thread.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use ccfd_proto::{FileMeta, LinkId, ReceiverStats, ServeSource, SessionId, SessionKey};
use crossbeam_queue::ArrayQueue;

use crate::coop::VerifiedPacket;
use crate::stats::Counters;

/// One stream to one asking peer: the inbound link the ask came on and the asker's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The inbound control link of the asker.
    pub link: LinkId,
    /// The asker's server session for the segment (its data packets carry this id and its key).
    pub session: SessionId,
}

/// What the cooperation control tells the shard.
#[derive(Debug, Clone)]
pub enum ServeCommand {
    /// We now receive `segment`: (re)start the recoding buffer for it (packets of other segments
    /// still in the queue are discarded).
    Receiving {
        /// Segment index.
        segment: u32,
    },
    /// `segment` is complete and verified in our output: it may be encoded from now on.
    Completed {
        /// Segment index.
        segment: u32,
    },
    /// Start streaming `segment` to a peer.
    Start {
        /// The stream.
        stream: StreamId,
        /// Segment index.
        segment: u32,
        /// The asker's session key (every packet is sealed under it, `Origin::Peer`).
        key: SessionKey,
        /// The asker's UDP data address.
        to: SocketAddr,
        /// Recode from the buffer or encode from our copy.
        source: ServeSource,
    },
    /// The stream's segment is now complete in our copy: switch it to encoding.
    FromCopy {
        /// The stream.
        stream: StreamId,
    },
    /// Stop one stream.
    Stop {
        /// The stream.
        stream: StreamId,
    },
    /// What the stream's receiver reports (receive rate, loss): pace the stream by it.
    Report {
        /// The stream.
        stream: StreamId,
        /// The receiver's statistics for this stream.
        stats: ReceiverStats,
    },
    /// Stop every stream and end the thread.
    Exit,
}

/// What the shard needs to start.
#[derive(Debug, Clone)]
pub struct ServeSetup {
    /// The file being fetched (segment layout and code parameters).
    pub meta: FileMeta,
    /// The output file being written (`PATH.part`), mapped read-only to encode complete segments.
    pub output_path: PathBuf,
    /// Local IP the shard's UDP socket binds (port 0).
    pub bind_ip: IpAddr,
    /// Upload cap over all streams, bits per second (`None`: unlimited).
    pub upload_rate_bps: Option<u64>,
    /// The decoder thread's verified packets.
    pub queue: Arc<ArrayQueue<VerifiedPacket>>,
    /// Download counters (the shard adds what it sends to peers).
    pub counters: Arc<Counters>,
    /// Core to pin the shard to (`None`: the first core).
    pub core: Option<usize>,
}
