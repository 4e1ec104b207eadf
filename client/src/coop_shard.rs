//! The cooperation shard's data plane (issue 5, DESIGN.md §5): a pinned thread that streams coded
//! packets to the peers that asked us, over its own UDP socket through `ccfd-ring`.
//!
//! It pops the decoder thread's [`VerifiedPacket`]s (the server's packets of the segment being
//! received) into a bounded [`snc::recoder::Recoder`] and relays each of them *once* to every asker of that
//! segment, in arrival order (arrival-driven relaying); for segments already
//! complete and verified in our output it *encodes* fresh packets from a read-only map of the output
//! file (like the server; no buffer kept). Every stream is paced, the whole shard stays under the
//! upload cap, and each stream's rate follows what its receiver reports ([`ServeCommand::Report`]).
//!
//! The shard is driven by the cooperation control ([`crate::coop_control`]) through [`ServeCommand`]s
//! and never blocks the decoder thread.
//!
//! Contract ([`spawn`] → [`ServeHandle`]; send a command, then fire its waker):
//! - `Receiving { segment }` (re)starts the recoding buffer, even for the segment it already held
//!   (a refetch after a failed digest recodes nothing of the failed attempt). Queued packets of other
//!   segments are discarded. The buffer holds up to `1.25 N` packets (`N` source + check columns,
//!   about the segment's size), never more than [`source::RECODER_MAX_BYTES`] (64 MiB).
//! - `Decoded { segment }` (our decoder reached full rank) keeps that segment's buffer when the
//!   next `Receiving` starts a new one, until the segment's encoder is built (`Failed { segment }`,
//!   a failed digest, drops it). A recoding stream of a decoded segment that has relayed every
//!   arrival goes on with fresh recoded packets of the buffer (MLPI over its subgenerations) at
//!   its own rate, no longer arrival-driven: the buffer spans the segment, so they serve an asker
//!   that still lacks rank as well as encoded packets would, without waiting for the digest check,
//!   the write and the encoder build (300-400 ms on a loaded host: in the lab the last asker of
//!   each segment got nothing from its peers that long, and the server then sent it what they owed).
//! - `Completed { segment }` allows encoding it from the output; its recoding buffer is dropped
//!   once the encoder is built. A
//!   stream whose segment is complete encodes whatever its source (`FromCopy` is then implied). Only
//!   segments named by `Completed` are ever read from the output. Encoders (the precode takes tens
//!   of milliseconds for 32 MiB) are built on a helper thread; the stream starts when it is ready.
//! - `Start` opens a stream (a `Start` for a live [`StreamId`] replaces it, keeping its place in
//!   the arrivals of the same segment): a random coefficient key per stream, so two streams (or
//!   two peers) never send the same packets.
//! - A recoding stream sends every packet the buffer stored exactly once, in arrival order, from
//!   the buffer's first arrival (a late stream sends the backlog, paced): a systematic packet as
//!   it is (the server hands each source symbol to one receiver of a segment, so the others get
//!   it from us), a coded one as one recoded packet of its subgeneration that includes it
//!   ([`snc::recoder::Recoder::recode_arrival`]: innovative to the asker as often as the server's packet).
//!   It waits when it has sent the newest arrival (recoding beyond what we got would only repeat
//!   it), skips arrivals evicted from the bounded buffer, and restarts at a buffer restart. One
//!   GSO send carries one packet form (systematic and recoded packets differ in length).
//! - Encoded streams (complete segments) skip the systematic packets: they send fresh coded ones.
//! - Packets are sealed under the stream's key with `Origin::Peer`, the asker's session, the
//!   segment and a per-stream `seq` from 0; up to 64 equal-size datagrams per GSO send.
//! - Pacing: see [`rate`] (token bucket per stream with 8 ms bursts, receiver-driven controller
//!   starting at 100 Mbit/s or the cap's share, max-min fair split of `upload_rate_bps`, plus a
//!   shard-wide bucket at the cap).
//! - `Stop` ends a stream at once; `Exit` or a disconnected channel ends the thread with `Ok(())`.
//!   Send errors are counted by the ring and logged, never fatal; only a vanished socket is.
//! - Counters: `packets_to_peers`, `bytes_to_peers` (codec payload bytes, like `bytes_from_peers`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use ccfd_proto::{FileMeta, LinkId, ReceiverStats, ServeSource, SessionId, SessionKey};
use ccfd_ring::{Ring, RingConfig, SocketConfig, Waker};
use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;

use crate::coop::VerifiedPacket;
use crate::error::ClientError;
use crate::stats::Counters;

pub mod rate;
mod run;
pub mod source;

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
    /// Our decoder reached full rank on `segment` (before its digest check and write): its
    /// recoding buffer is kept until the segment completes, and streams of it that relayed every
    /// arrival go on with fresh recoded packets of the buffer.
    Decoded {
        /// Segment index.
        segment: u32,
    },
    /// `segment` failed its digest: its kept recoding buffer is dropped (nothing of it is sent
    /// any more).
    Failed {
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

/// A running cooperation shard.
#[derive(Debug)]
pub struct ServeHandle {
    /// Commands to the shard; fire [`ServeHandle::waker`] after each send so it acts at once.
    pub commands: Sender<ServeCommand>,
    /// Wakes the shard's ring.
    pub waker: Waker,
    /// Local address of the shard's UDP socket (the source of every packet it sends).
    pub local_addr: SocketAddr,
    /// The shard thread: `Ok(())` after `Exit` or when the command channel is gone; `Err` only when
    /// its socket is gone.
    pub thread: JoinHandle<Result<(), ClientError>>,
}

impl ServeHandle {
    /// Sends a command and wakes the shard; `false` when the shard has ended.
    pub fn send(&self, command: ServeCommand) -> bool {
        let sent = self.commands.send(command).is_ok();
        self.waker.wake();
        sent
    }
}

/// Starts the shard thread (pinned to `setup.core`, else the first core), binds its UDP socket on
/// `setup.bind_ip:0` and returns once both exist.
pub fn spawn(setup: ServeSetup) -> Result<ServeHandle, ClientError> {
    let (commands, commands_rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let bind = SocketAddr::new(setup.bind_ip, 0);
    let thread = std::thread::Builder::new()
        .name("ccfd-coop-shard".into())
        .spawn(move || {
            pin(setup.core);
            let started = Ring::new(&ring_config()).and_then(|mut ring| {
                let socket = ring.bind(&socket_config(bind))?;
                let addr = ring.local_addr(socket)?;
                Ok((ring, socket, addr))
            });
            let (ring, socket, addr) = match started {
                Ok(started) => started,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok((ring.waker(), addr)));
            tracing::debug!(%addr, backend = ?ring.backend(), "cooperation shard running");
            run::run(setup, ring, socket, commands_rx)
        })
        .map_err(|e| ClientError::Internal(format!("cooperation shard thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok((waker, local_addr))) => Ok(ServeHandle {
            commands,
            waker,
            local_addr,
            thread,
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(ClientError::DataSocket {
                op: "bind cooperation",
                addr: bind,
                source: std::io::Error::other(error.to_string()),
            })
        }
        Err(_) => {
            let _ = thread.join();
            Err(ClientError::Internal(
                "cooperation shard thread ended before it started".into(),
            ))
        }
    }
}

/// The shard only sends: a small receive side, a send pool deep enough for many GSO batches in flight.
fn ring_config() -> RingConfig {
    RingConfig::default()
        .recv_buffers(16, 4096)
        .send_buffers(128)
}

/// Send buffer of the shard's socket (`SO_SNDBUFFORCE`, else `SO_SNDBUF` clamped by
/// `net.core.wmem_max`): larger than
/// an uplink's qdisc queue, so a full queue never parks sends in io_uring, whose retries then
/// overtook later sends (receivers took the reordering for 20-70 % loss and cut our rates).
const SEND_BUFFER_BYTES: usize = 4 << 20;

fn socket_config(bind: SocketAddr) -> SocketConfig {
    SocketConfig::new(bind)
        .receive(false)
        .gro(false)
        .recv_buffer(64 << 10)
        .send_buffer(Some(SEND_BUFFER_BYTES))
}

/// Pins the calling thread to core `index` of the machine's list (the first when `None`).
fn pin(index: Option<usize>) {
    let Some(cores) = core_affinity::get_core_ids() else {
        tracing::debug!("core ids unavailable: cooperation shard not pinned");
        return;
    };
    let core = cores.get(index.unwrap_or(0)).copied();
    match core {
        Some(core) if core_affinity::set_for_current(core) => {
            tracing::debug!(core = core.id, "cooperation shard pinned")
        }
        _ => tracing::warn!(?index, "could not pin the cooperation shard"),
    }
}
