//! The decoder thread: receives data packets on the client's UDP socket through `ccfd-ring`, checks
//! header, session and MAC, decodes into one of two segment buffers reused from segment to segment
//! (their pages stay mapped, so decoding never faults), and hands each decoded segment to the writer
//! stage ([`output_writer`], a thread of its own), which verifies its BLAKE3 digest, writes it into the
//! output with one `pwrite` and records it in the resume record, while the decoder thread already
//! receives the next segment. A segment that fails its digest never reaches the output file.
//!
//! It is driven by [`DecoderCommand`]s from the control thread (sent on a channel, then the ring's
//! [`Waker`](ccfd_ring::Waker) fired) and reports [`DecoderEvent`]s back:
//! `Start(session)` → receive and decode → `Decoded` (sent at full rank, before the decoder's symbol
//! passes, so the session stops and the next one is requested meanwhile) → finish → hand-over → the
//! writer's `Verified { ok }` (in segment order). A `Stop` for the session being received abandons its
//! partial decode (a later `Start` for the same segment starts afresh). `Finish`/`Abort` end the loop
//! (after the writer has drained what it was given). An output error in the writer is reported as
//! `Failed` and ends the loop with that error.
//! `StartServerOnly` is the refetch of a segment that failed its digest: only packets from the
//! server's data address with `Origin::Server` are accepted (others counted in
//! [`SourceBoard::dropped_not_server`]). Peers' packets are tallied per source IP for the cooperation
//! heartbeats ([`LiveSession::sources`]).
//!
//! Drops are counted by reason in [`Counters`]: malformed (bad header, wrong version, segment mismatch,
//! rejected by the codec), bad MAC (right session, MAC fails), wrong session (a session this client never
//! joined) and stale (a session this client already left, e.g. packets in flight after StopSegment).
//! Every packet from the server that passes the MAC and the codec's checks is copied to the
//! cooperation queue ([`CoopQueue`]) unless it is full or the client does not cooperate (no queue);
//! peers' packets are not (one-hop relaying: recoding them again would echo them back to where they
//! came from).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfd_proto::data::DataKey;
use ccfd_proto::{
    CodeParamsWire, DataError, DataHeader, DataPacket, FileMeta, Origin, SessionId, SessionMeta,
};
use ccfd_ring::{Ring, SocketId};
use crossbeam_channel::{Receiver, TryRecvError};
use snc::decoder::{Decoder, Progress};
use snc::Layout;
use tokio::sync::mpsc::UnboundedSender;

use crate::coop::{CoopQueue, VerifiedPacket};
use crate::coop_control::sources::{SourceBoard, SourceTally};
use crate::error::ClientError;
use crate::output::PartFile;
use crate::output_writer::{self, SegmentBuffer, WriterContext, WriterLink};
use crate::params::session_layout;
use crate::resume::ResumeRecord;
use crate::stats::Counters;

/// Longest the decoder thread sleeps in the ring before it looks at its command channel again.
const WAIT: Duration = Duration::from_millis(50);
/// Datagrams handled per `Ring::process` call.
const BATCH: usize = 1024;
/// Sessions remembered as finished (their late packets count as stale, not as wrong session).
const FINISHED_SESSIONS: usize = 64;

/// What the control thread tells the decoder thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecoderCommand {
    /// Receive and decode this session's segment (fresh decoder).
    Start(SessionMeta),
    /// Like `Start`, but accept only packets from `server` with `Origin::Server` (the refetch of a
    /// segment that failed its digest: a polluting peer holds the session key and could forge the
    /// origin, so the source address is checked too).
    StartServerOnly {
        /// The session.
        meta: SessionMeta,
        /// The server's data address for it (its IP, `data_port`).
        server: SocketAddr,
    },
    /// Stop receiving this session (decoded, or abandoned).
    Stop {
        /// The session.
        session: SessionId,
        /// Its segment.
        segment: u32,
    },
    /// Every segment is done: return so the output can be finished.
    Finish,
    /// The download failed: return at once.
    Abort,
}

/// What the decoder thread tells the control thread.
#[derive(Debug)]
pub enum DecoderEvent {
    /// The segment decoded (the control thread sends StopSegment now; the digest check follows).
    Decoded {
        /// The segment.
        segment: u32,
        /// Codec payload bytes accepted for it from the server.
        from_server: u64,
        /// Codec payload bytes accepted for it from peers.
        from_peers: u64,
    },
    /// The segment's digest matched (`ok`) and it is recorded, or it did not and was discarded.
    Verified {
        /// The segment.
        segment: u32,
        /// Whether the digest matched.
        ok: bool,
    },
    /// The decoder thread hit a fatal error (output I/O) and stops.
    Failed(ClientError),
}

/// Receive statistics of the session being received, published by the decoder thread after every batch
/// for the control thread's heartbeats and the progress bar. `packets`, `bytes` and `seq_span` count
/// the server's packets only (the server paces by them); peers' packets are tallied per source in
/// `sources`.
#[derive(Debug, Default)]
pub struct LiveSession {
    /// Whether a session is being received.
    pub active: AtomicBool,
    /// Its id.
    pub session: AtomicU32,
    /// Packets accepted in it.
    pub packets: AtomicU64,
    /// Payload bytes accepted in it.
    pub bytes: AtomicU64,
    /// Packets dropped while it was received (any reason).
    pub dropped: AtomicU64,
    /// `highest seq - first seq + 1` of the packets accepted in it (the sender's count, for loss).
    pub seq_span: AtomicU64,
    /// The decoder's rank.
    pub rank: AtomicU32,
    /// Bytes per source symbol of its code.
    pub symbol_size: AtomicU32,
    /// Per-source tallies of the peers' packets (for the cooperation heartbeats).
    pub sources: SourceBoard,
}

/// Everything the decoder thread works with besides the ring and the output.
#[derive(Debug)]
pub struct DecoderContext {
    /// The file meta (segment ranges and digests).
    pub meta: FileMeta,
    /// The resume record, updated after each verified segment.
    pub record: ResumeRecord,
    /// Where the resume record lives.
    pub record_path: PathBuf,
    /// Download counters.
    pub counters: Arc<Counters>,
    /// Live statistics of the current session.
    pub live: Arc<LiveSession>,
    /// Hand-off to the cooperation shard (`None` with `--no-coop`: no packet is copied or offered).
    pub coop: Option<CoopQueue>,
    /// Commands from the control thread.
    pub commands: Receiver<DecoderCommand>,
    /// Events to the control thread.
    pub events: UnboundedSender<DecoderEvent>,
}

enum Outcome {
    Decoded,
    Stopped,
    Command(DecoderCommand),
}

/// Runs the decoder loop until `Finish` (returns `Ok(true)`) or `Abort` (returns `Ok(false)`), or a
/// fatal output error (also reported as [`DecoderEvent::Failed`]).
pub fn run(
    ring: &mut Ring,
    socket: SocketId,
    part: &mut PartFile,
    ctx: &mut DecoderContext,
) -> Result<bool, ClientError> {
    let result = run_inner(ring, socket, part, ctx);
    if let Err(err) = &result {
        let _ = ctx
            .events
            .send(DecoderEvent::Failed(ClientError::Internal(err.to_string())));
    }
    result
}

fn run_inner(
    ring: &mut Ring,
    socket: SocketId,
    part: &mut PartFile,
    ctx: &mut DecoderContext,
) -> Result<bool, ClientError> {
    let DecoderContext {
        meta,
        record,
        record_path,
        counters,
        live,
        coop,
        commands,
        events,
    } = ctx;
    let receiving = Receiving {
        meta,
        counters,
        live,
        coop: coop.as_ref(),
        commands,
        events,
        layouts: RefCell::default(),
    };
    let (link, end) = output_writer::link();
    let writer_ctx = WriterContext {
        part,
        meta,
        record,
        record_path,
        counters,
        events: events.clone(),
    };
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("ccfd-writer".into())
            .spawn_scoped(scope, move || {
                unpin_current_thread();
                output_writer::run(end, writer_ctx)
            })
            .map_err(|e| ClientError::Internal(format!("spawn writer thread: {e}")))?;
        let decoded = decode_loop(ring, socket, &receiving, &link);
        // The writer drains what it was given, then ends.
        drop(link);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(ClientError::Internal("writer thread panicked".into())));
        match (decoded, written) {
            // The writer's error says why the link closed.
            (_, Err(err)) => Err(err),
            (decoded, Ok(())) => decoded,
        }
    })
}

/// The decoder thread's view of its context while the writer holds the record.
struct Receiving<'a> {
    meta: &'a FileMeta,
    counters: &'a Counters,
    live: &'a LiveSession,
    coop: Option<&'a CoopQueue>,
    commands: &'a Receiver<DecoderCommand>,
    events: &'a UnboundedSender<DecoderEvent>,
    layouts: RefCell<LayoutCache>,
}

/// Receives one session after another, handing each decoded segment to the writer; returns at
/// `Finish`/`Abort`, or when the writer has stopped (its error is the result then).
fn decode_loop(
    ring: &mut Ring,
    socket: SocketId,
    ctx: &Receiving<'_>,
    writer: &WriterLink,
) -> Result<bool, ClientError> {
    let mut finished: VecDeque<SessionId> = VecDeque::with_capacity(FINISHED_SESSIONS);
    let mut pending: Option<DecoderCommand> = None;
    let mut buffer: Option<SegmentBuffer> = None;
    let writer_gone = |_| ClientError::Internal("output writer stopped".into());
    loop {
        let command = match pending.take() {
            Some(command) => command,
            None => idle(ctx),
        };
        let (session, server_only) = match command {
            DecoderCommand::Finish => {
                count_queued(ring, socket, ctx, &finished)?;
                return Ok(true);
            }
            DecoderCommand::Abort => {
                count_queued(ring, socket, ctx, &finished)?;
                return Ok(false);
            }
            DecoderCommand::Stop { .. } => continue,
            DecoderCommand::Start(meta) => (meta, None),
            DecoderCommand::StartServerOnly { meta, server } => (meta, Some(server)),
        };
        // Waits only while the writer holds both buffers.
        let mut current = match buffer.take() {
            Some(current) => current,
            None => writer.buffer().map_err(writer_gone)?,
        };
        let outcome = receive(
            ring,
            socket,
            &mut current,
            ctx,
            &session,
            &finished,
            server_only,
        )?;
        if finished.len() == FINISHED_SESSIONS {
            finished.pop_front();
        }
        finished.push_back(session.session);
        ctx.live.active.store(false, Ordering::Relaxed);
        match outcome {
            // `receive` already sent `Decoded`; the writer reports `Verified`.
            Outcome::Decoded => writer
                .submit(session.segment, current)
                .map_err(writer_gone)?,
            Outcome::Stopped => buffer = Some(current),
            Outcome::Command(command) => {
                buffer = Some(current);
                pending = Some(command);
            }
        }
    }
}

/// The layout of the last session's code (every full segment of a file shares one; building it, the
/// precode graph, costs milliseconds).
#[derive(Default)]
struct LayoutCache {
    last: Option<(CodeParamsWire, u64, Layout)>,
}

impl LayoutCache {
    fn get(&mut self, session: &SessionMeta) -> Result<Layout, ClientError> {
        if let Some((code, len, layout)) = &self.last {
            if *code == session.code && *len == session.segment_len {
                return Ok(layout.clone());
            }
        }
        let layout = session_layout(session).map_err(|detail| ClientError::Protocol {
            server: String::new(),
            detail,
        })?;
        self.last = Some((session.code, session.segment_len, layout.clone()));
        Ok(layout)
    }
}

/// Lets the calling thread run on every core (threads inherit the pinned decoder thread's affinity).
fn unpin_current_thread() {
    let mut all = rustix::thread::CpuSet::new();
    for core in core_affinity::get_core_ids().unwrap_or_default() {
        if core.id < rustix::thread::CpuSet::MAX_CPU {
            all.set(core.id);
        }
    }
    if let Err(error) = rustix::thread::sched_setaffinity(None, &all) {
        tracing::debug!(%error, "writer thread keeps the decoder's affinity");
    }
}

/// Waits for a command while no session is received. Datagrams are left queued meanwhile (in the ring
/// and the socket): the next session's first packets often arrive before its `Start` (the server
/// starts sending as it answers the request, peers as they are asked), and must not be dropped as a
/// wrong session; what a finished session left is counted as stale when the next one is received
/// (or by [`count_queued`] at the end).
fn idle(ctx: &Receiving<'_>) -> DecoderCommand {
    ctx.commands.recv().unwrap_or(DecoderCommand::Abort)
}

/// Counts (and drops) the datagrams queued when no session is received any more.
fn count_queued(
    ring: &mut Ring,
    socket: SocketId,
    ctx: &Receiving<'_>,
    finished: &VecDeque<SessionId>,
) -> Result<(), ClientError> {
    ring.wait(Some(Duration::ZERO)).map_err(ring_error)?;
    let counters = ctx.counters;
    let mut more = true;
    while more {
        more = ring
            .process(BATCH, |datagram| {
                if datagram.socket != socket {
                    return;
                }
                Counters::add(&counters.packets_received, 1);
                Counters::add(
                    &counters.datagram_bytes_received,
                    datagram.payload.len() as u64,
                );
                match DataHeader::peek(datagram.payload) {
                    Ok(header) if finished.contains(&header.session) => {
                        Counters::add(&counters.dropped_stale, 1)
                    }
                    Ok(_) => Counters::add(&counters.dropped_wrong_session, 1),
                    Err(_) => Counters::add(&counters.dropped_malformed, 1),
                }
            })
            .map_err(ring_error)?
            .more;
    }
    Ok(())
}

/// Receives and decodes one session's segment into `buffer`.
fn receive(
    ring: &mut Ring,
    socket: SocketId,
    buffer: &mut SegmentBuffer,
    ctx: &Receiving<'_>,
    session: &SessionMeta,
    finished: &VecDeque<SessionId>,
    server_only: Option<SocketAddr>,
) -> Result<Outcome, ClientError> {
    let Some(range) = segment_range(ctx.meta, session.segment) else {
        return Err(ClientError::Protocol {
            server: String::new(),
            detail: format!("session for segment {} outside the file", session.segment),
        });
    };
    let layout = ctx.layouts.borrow_mut().get(session)?;
    let live = ctx.live;
    live.session.store(session.session.0, Ordering::Relaxed);
    for counter in [&live.packets, &live.bytes, &live.dropped, &live.seq_span] {
        counter.store(0, Ordering::Relaxed);
    }
    live.rank.store(0, Ordering::Relaxed);
    live.symbol_size
        .store(layout.symbol_size() as u32, Ordering::Relaxed);
    live.active.store(true, Ordering::Relaxed);

    let mut decoder =
        Decoder::new(&layout, buffer.take(range.len())).map_err(|e| ClientError::Protocol {
            server: String::new(),
            detail: format!("decoder setup: {e}"),
        })?;
    // The rank-completing push returns before the symbol passes (`finish` below runs them).
    decoder.set_deferred_finish(true);
    let counters = ctx.counters;
    let coop = ctx.coop;
    // Expanded once per session: the per-packet MAC then costs only the hash and one AES block.
    let key = DataKey::new(&session.key);
    let mut seq_first: Option<u32> = None;
    let mut seq_max: u32 = 0;
    let mut tally = SourceTally::new(session.session.0);
    let mut dropped_here: u64 = 0;
    let mut peer_bytes: u64 = 0;
    let mut complete = decoder.is_solved();
    let started = Instant::now();
    let mut last_push = Duration::ZERO;
    // The boundary diagnostics below are kept only when the debug line that shows them is on.
    let traced = tracing::enabled!(tracing::Level::DEBUG);
    let mut timeline = Timeline::default();
    let mut redundant = RedundantKinds::default();
    let rank_95 = layout.source_count().saturating_mul(19) / 20;
    let mut rank_95_at: Option<Duration> = None;
    while !complete {
        match ctx.commands.try_recv() {
            Ok(DecoderCommand::Stop { session: s, .. }) if s == session.session => {
                return Ok(Outcome::Stopped)
            }
            Ok(DecoderCommand::Stop { .. }) => continue,
            Ok(command) => return Ok(Outcome::Command(command)),
            Err(TryRecvError::Disconnected) => return Ok(Outcome::Command(DecoderCommand::Abort)),
            Err(TryRecvError::Empty) => {}
        }
        ring.wait(Some(WAIT)).map_err(ring_error)?;
        let mut more = true;
        while more && !complete {
            // One clock read per batch for the timeline (its bins are 50 ms).
            let batch_at = if traced {
                started.elapsed()
            } else {
                Duration::ZERO
            };
            let processed = ring
                .process(BATCH, |datagram| {
                    if datagram.socket != socket {
                        return;
                    }
                    let bytes = datagram.payload;
                    Counters::add(&counters.packets_received, 1);
                    Counters::add(&counters.datagram_bytes_received, bytes.len() as u64);
                    let header = match DataHeader::peek(bytes) {
                        Ok(header) => header,
                        Err(_) => {
                            Counters::add(&counters.dropped_malformed, 1);
                            dropped_here += 1;
                            return;
                        }
                    };
                    if header.session != session.session {
                        if finished.contains(&header.session) {
                            Counters::add(&counters.dropped_stale, 1);
                        } else {
                            Counters::add(&counters.dropped_wrong_session, 1);
                        }
                        dropped_here += 1;
                        return;
                    }
                    if server_only.is_some_and(|server| {
                        datagram.source != server || header.origin != Origin::Server
                    }) {
                        Counters::add(&live.sources.dropped_not_server, 1);
                        dropped_here += 1;
                        return;
                    }
                    let (header, payload) = match DataPacket::open(&key, bytes) {
                        Ok(opened) => opened,
                        Err(DataError::BadMac) => {
                            Counters::add(&counters.dropped_bad_mac, 1);
                            dropped_here += 1;
                            return;
                        }
                        Err(_) => {
                            Counters::add(&counters.dropped_malformed, 1);
                            dropped_here += 1;
                            return;
                        }
                    };
                    if header.segment != session.segment {
                        Counters::add(&counters.dropped_malformed, 1);
                        dropped_here += 1;
                        return;
                    }
                    if complete {
                        Counters::add(&counters.dropped_stale, 1);
                        return;
                    }
                    let push_started = Instant::now();
                    let mut innovative = true;
                    match decoder.push(payload) {
                        Err(_) => {
                            Counters::add(&counters.dropped_malformed, 1);
                            dropped_here += 1;
                            return;
                        }
                        Ok(Progress::Redundant) => {
                            innovative = false;
                            if traced {
                                redundant.record(header.origin, payload);
                            }
                            Counters::add(&counters.packets_redundant, 1)
                        }
                        Ok(Progress::Innovative) => {}
                        Ok(Progress::Complete) => {
                            complete = true;
                            last_push = push_started.elapsed();
                        }
                    }
                    Counters::add(&counters.packets_accepted, 1);
                    if traced {
                        timeline.record(batch_at, header.origin, innovative);
                    }
                    match header.origin {
                        Origin::Server => {
                            Counters::add(&counters.bytes_from_server, payload.len() as u64);
                            live.packets.fetch_add(1, Ordering::Relaxed);
                            live.bytes
                                .fetch_add(payload.len() as u64, Ordering::Relaxed);
                            let first = *seq_first.get_or_insert(header.seq);
                            seq_max = seq_max.max(header.seq);
                            live.seq_span.store(
                                u64::from(seq_max.saturating_sub(first)) + 1,
                                Ordering::Relaxed,
                            );
                        }
                        Origin::Peer => {
                            Counters::add(&counters.bytes_from_peers, payload.len() as u64);
                            peer_bytes += payload.len() as u64;
                            tally.record(
                                datagram.source.ip(),
                                header.seq,
                                payload.len() as u64,
                                innovative,
                            );
                        }
                    }
                    // What the server sent us goes to the recoding buffer, and so do the fresh
                    // coded packets peers encoded for us from their complete copy (distinct per
                    // asker: the shard relays them to its other askers); peers' relays of their
                    // server packets would only echo what every asker got from them directly.
                    let Some(coop) = coop else {
                        // `--no-coop`: nobody recodes.
                        return;
                    };
                    let from_peer = (header.origin == Origin::Peer).then(|| datagram.source.ip());
                    if from_peer.is_some() && !crate::coop::is_fresh_coded(payload) {
                        // Not for the recoding buffer.
                    } else if coop.is_full() {
                        Counters::add(&counters.coop_dropped_full, 1);
                    } else {
                        coop.offer(
                            VerifiedPacket {
                                segment: session.segment,
                                session: session.session.0,
                                payload: payload.to_vec(),
                                from_peer,
                            },
                            counters,
                        );
                    }
                })
                .map_err(ring_error)?;
            more = processed.more;
        }
        live.rank.store(decoder.rank(), Ordering::Relaxed);
        if traced && rank_95_at.is_none() && decoder.rank() >= rank_95 {
            rank_95_at = Some(started.elapsed());
        }
        live.dropped.store(dropped_here, Ordering::Relaxed);
        live.sources.publish(&mut tally);
    }
    // Full rank: the control thread sends StopSegment and requests the next segment while the symbol
    // passes run.
    let full_rank_at = started.elapsed();
    let _ = ctx.events.send(DecoderEvent::Decoded {
        segment: session.segment,
        from_server: live.bytes.load(Ordering::Relaxed),
        from_peers: peer_bytes,
    });
    let finish_started = Instant::now();
    decoder
        .finish()
        .map_err(|e| ClientError::Internal(format!("decoder finish: {e}")))?;
    let finish_ms = finish_started.elapsed().as_millis() as u64;
    Counters::add(
        &counters.source_packets_decoded,
        u64::from(layout.source_count()),
    );
    Counters::add(&counters.packets_used_by_decoded, decoder.received());
    tracing::debug!(
        segment = session.segment,
        session = session.session.0,
        packets = decoder.received(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        final_push_ms = last_push.as_millis() as u64,
        finish_ms,
        full_rank_ms = full_rank_at.as_millis() as u64,
        rank_95_ms = rank_95_at.unwrap_or(full_rank_at).as_millis() as u64,
        stale_total = counters.dropped_stale.load(Ordering::Relaxed),
        redundant_from_server = ?redundant.server,
        redundant_from_peers = ?redundant.peers,
        timeline = %timeline,
        "segment decoded"
    );
    live.rank.store(decoder.rank(), Ordering::Relaxed);
    Ok(Outcome::Decoded)
}

/// Redundant packets of a session by origin and form (systematic, coded from a seed, recoded), for
/// the debug log: which senders waste the receiver's downlink.
#[derive(Default)]
struct RedundantKinds {
    server: [u32; 3],
    peers: [u32; 3],
}

impl RedundantKinds {
    fn record(&mut self, origin: Origin, payload: &[u8]) {
        let flags = payload.get(1).copied().unwrap_or(0);
        let form = if flags & snc::packet::FLAG_SYSTEMATIC != 0 {
            0
        } else if flags & snc::packet::FLAG_RECODED != 0 {
            2
        } else {
            1
        };
        match origin {
            Origin::Server => self.server[form] += 1,
            Origin::Peer => self.peers[form] += 1,
        }
    }
}

/// Packets accepted per [`Timeline::BIN`] of a session, from the server and from peers, and how many
/// of them were redundant: the debug log of segment boundaries (how fast a segment starts, how much of
/// its tail is wasted).
#[derive(Default)]
struct Timeline {
    bins: Vec<(u32, u32, u32)>,
}

impl Timeline {
    const BIN: Duration = Duration::from_millis(50);
    /// Bins kept (the rest of a very slow segment is not logged).
    const MAX_BINS: usize = 4096;

    fn record(&mut self, elapsed: Duration, origin: Origin, innovative: bool) {
        let index = (elapsed.as_millis() / Self::BIN.as_millis()) as usize;
        if index >= Self::MAX_BINS {
            return;
        }
        if self.bins.len() <= index {
            self.bins.resize(index + 1, (0, 0, 0));
        }
        let bin = &mut self.bins[index];
        match origin {
            Origin::Server => bin.0 += 1,
            Origin::Peer => bin.1 += 1,
        }
        if !innovative {
            bin.2 += 1;
        }
    }
}

/// `server/peers/redundant` per bin, space-separated.
impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (server, peers, redundant)) in self.bins.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{server}/{peers}/{redundant}")?;
        }
        Ok(())
    }
}

/// The byte range of `segment` in the output, as `usize` (the meta was checked to fit).
pub fn segment_range(meta: &FileMeta, segment: u32) -> Option<Range<usize>> {
    let range = meta.segment_range(segment)?;
    Some(usize::try_from(range.start).ok()?..usize::try_from(range.end).ok()?)
}

fn ring_error(err: ccfd_ring::RingError) -> ClientError {
    ClientError::Internal(format!("data socket: {err}"))
}
