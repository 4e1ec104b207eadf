//! The shard thread's loop: commands → verified packets into the recoding buffer → one paced
//! sending round over the streams → `Ring::wait` until the earliest pacing deadline or a wake-up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ccfd_proto::pacing::wire_len;
use ccfd_proto::{
    DataHeader, DataPacket, LinkId, Origin, ReceiverStats, ServeSource, SessionKey, DATA_HEADER_LEN,
};
use ccfd_ring::{max_datagrams, Ring, SendError, SocketId, MAX_SEGMENTS};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use snc::encoder::Stream;
use snc::packet::{self, PacketKind};
use snc::prng::Prng;
use snc::Layout;

use super::rate::{fair_shares, FreshWindow, Pacer, RateController, INITIAL_RATE_BPS};
use super::source::{segment_layout, OutputMap, RecodeBuffer, SegmentCoder};
use super::{ServeCommand, ServeSetup, StreamId};
use crate::error::ClientError;
use crate::receiver::segment_range;
use crate::stats::Counters;

/// Longest sleep in the ring while streams wait (the queue and the channel are looked at after it).
const MAX_WAIT: Duration = Duration::from_millis(10);
/// Poll interval of a recoding stream waiting for packets to reach the buffer.
const STARVED_WAIT: Duration = Duration::from_millis(2);
/// Sleep when every send buffer is in flight.
const EXHAUSTED_WAIT: Duration = Duration::from_micros(200);
/// Verified packets moved from the queue into the buffer per loop turn.
const DRAIN_PER_TURN: usize = 8192;
/// Most GSO batches one stream sends per turn (then the others get theirs).
const BATCHES_PER_TURN: usize = 4;
/// Smallest burst of a stream's pacer, in datagrams (a late wake-up at a low rate still sends
/// what it owes).
const MIN_BURST_DATAGRAMS: usize = 4;
/// Peer links whose last stream rate is remembered.
const LINK_RATES: usize = 1024;
/// How long a stream of a decoded segment waits after its last relayed arrival before it sends
/// fresh recoded packets: peers that got the same arrivals decode within tens of milliseconds of
/// us and need none of them (at once, three peers' fresh packets crowded the asker's downlink and
/// raised its decode overhead from 2-5 % to 6-10 % in the lab at 0 % loss); a real laggard gets
/// them after this.
const FRESH_AFTER: Duration = Duration::from_millis(50);
/// Encoders of complete segments kept while no stream uses them.
const SPARE_CODERS: usize = 2;

/// One stream to one asking peer.
struct ServeStream {
    id: StreamId,
    segment: u32,
    key: SessionKey,
    to: SocketAddr,
    mode: ServeSource,
    layout: Layout,
    /// Encoding stream (own random key; starts past the systematic packets).
    code: Stream,
    /// Coefficients of recoded packets.
    prng: Prng,
    /// Sequence number of the next packet.
    seq: u32,
    /// The next arrival of buffer `generation` to send (each arrival goes out once, in order).
    cursor: u64,
    generation: u64,
    /// Backlog seen when the stream last waited for a fuller batch.
    waited_backlog: u64,
    pacer: Pacer,
    control: RateController,
    /// Caps its fresh packets in flight by the asker's deficit.
    fresh_window: FreshWindow,
    packets: u64,
    bytes: u64,
    started_ns: u64,
    /// When it last relayed an arrival (or started).
    relayed_ns: u64,
    broken: bool,
}

/// An encoder built by a helper thread, or why it could not be.
type Built = (u32, Result<SegmentCoder, String>);

/// Whether a complete segment's encoder is there.
enum CoderState {
    Ready,
    Building,
    Failed,
}

enum Batch {
    Sent,
    /// Nothing sendable for this many nanoseconds.
    Wait(u64),
    PoolExhausted,
    /// Nothing to send until something changes (buffer empty, segment not available).
    Starved,
}

struct Shard {
    setup: ServeSetup,
    ring: Ring,
    socket: SocketId,
    epoch: Instant,
    streams: Vec<ServeStream>,
    receiving: Option<RecodeBuffer>,
    /// The buffer of a segment that decoded here but is not encodable from our copy yet (digest
    /// check, write, encoder build pending): its streams recode from it meanwhile.
    decoded: Option<RecodeBuffer>,
    completed: BTreeSet<u32>,
    coders: BTreeMap<u32, SegmentCoder>,
    /// Encoders being built off the shard thread (the precode takes tens of milliseconds).
    building: BTreeSet<u32>,
    built_tx: Sender<Built>,
    built_rx: Receiver<Built>,
    generations: u64,
    /// The rate each peer link's last stream reached.
    link_rates: BTreeMap<LinkId, u64>,
    output: OutputMap,
    /// The upload cap over all streams.
    total: Option<Pacer>,
    discarded: u64,
    turn: usize,
    send_errors_seen: u64,
}

/// Runs the shard until `Exit` or until the command channel disconnects.
pub(super) fn run(
    setup: ServeSetup,
    ring: Ring,
    socket: SocketId,
    commands: Receiver<ServeCommand>,
) -> Result<(), ClientError> {
    let output = OutputMap::open(&setup.output_path);
    let total = setup
        .upload_rate_bps
        .map(|cap| Pacer::new(cap, ccfd_ring::MAX_SEND_PAYLOAD, 0));
    let (built_tx, built_rx) = crossbeam_channel::unbounded();
    let mut shard = Shard {
        setup,
        ring,
        socket,
        epoch: Instant::now(),
        streams: Vec::new(),
        receiving: None,
        decoded: None,
        completed: BTreeSet::new(),
        coders: BTreeMap::new(),
        building: BTreeSet::new(),
        built_tx,
        built_rx,
        generations: 0,
        link_rates: BTreeMap::new(),
        output,
        total,
        discarded: 0,
        turn: 0,
        send_errors_seen: 0,
    };
    let result = shard.run(&commands);
    for stream in std::mem::take(&mut shard.streams) {
        shard.log_stop(&stream, "shard exit");
    }
    let _ = shard.ring.submit();
    result
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: the clock and a counter still make keys distinct per stream.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut h = blake3::Hasher::new();
        h.update(&now.to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        bytes.copy_from_slice(&h.finalize().as_bytes()[..8]);
    }
    u64::from_le_bytes(bytes)
}

impl Shard {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn run(&mut self, commands: &Receiver<ServeCommand>) -> Result<(), ClientError> {
        loop {
            loop {
                match commands.try_recv() {
                    Ok(ServeCommand::Exit) | Err(TryRecvError::Disconnected) => return Ok(()),
                    Ok(command) => self.handle(command),
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.collect_built();
            self.release_decoded();
            self.drain_queue();
            let timeout = self.send_round()?;
            if let Err(error) = self.ring.wait(Some(timeout)) {
                tracing::warn!(%error, "cooperation shard: ring wait failed");
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Err(error) = self.ring.process(256, |_| {}) {
                tracing::warn!(%error, "cooperation shard: ring process failed");
            }
            let errors = self.ring.counters().send_error_datagrams;
            if errors > self.send_errors_seen {
                tracing::debug!(
                    datagrams = errors - self.send_errors_seen,
                    "cooperation shard: send errors (counted, not fatal)"
                );
                self.send_errors_seen = errors;
            }
        }
    }

    fn handle(&mut self, command: ServeCommand) {
        let now = self.now_ns();
        match command {
            ServeCommand::Receiving { segment } => self.receiving(segment),
            ServeCommand::Decoded { segment } => {
                for buffer in [&mut self.receiving, &mut self.decoded]
                    .into_iter()
                    .flatten()
                {
                    if buffer.segment == segment {
                        buffer.decoded = true;
                    }
                }
            }
            ServeCommand::Failed { segment } => {
                if self.decoded.as_ref().is_some_and(|b| b.segment == segment) {
                    self.decoded = None;
                }
                if let Some(b) = self.receiving.as_mut().filter(|b| b.segment == segment) {
                    b.decoded = false;
                }
            }
            ServeCommand::Completed { segment } => {
                if self.setup.meta.segment_len(segment).is_none() {
                    tracing::warn!(segment, "completed segment outside the file: ignored");
                    return;
                }
                self.completed.insert(segment);
                if self
                    .receiving
                    .as_ref()
                    .is_some_and(|b| b.segment == segment)
                {
                    // Complete: its streams encode from our copy once its encoder is built, and
                    // recode from the buffer until then.
                    let buffer = self.receiving.take();
                    if buffer.as_ref().is_some_and(|b| b.decoded) {
                        self.decoded = buffer;
                    }
                }
            }
            ServeCommand::Start {
                stream,
                segment,
                key,
                to,
                source,
            } => self.start(stream, segment, key, to, source, now),
            ServeCommand::FromCopy { stream } => {
                if let Some(s) = self.streams.iter_mut().find(|s| s.id == stream) {
                    s.mode = ServeSource::Encode;
                    tracing::debug!(
                        link = stream.link.0,
                        session = stream.session.0,
                        "peer stream switched to encoding"
                    );
                }
            }
            ServeCommand::Stop { stream } => {
                if let Some(i) = self.streams.iter().position(|s| s.id == stream) {
                    let stopped = self.streams.swap_remove(i);
                    self.log_stop(&stopped, "stop");
                    self.remember_rate(&stopped);
                    self.reshare(now);
                    self.drop_spare_coders();
                }
            }
            ServeCommand::Report { stream, stats } => self.report(stream, &stats, now),
            ServeCommand::Exit => {}
        }
    }

    /// (Re)starts the recoding buffer: a segment fetched again (after a failed digest) starts
    /// from an empty buffer, so nothing of the failed attempt is recoded.
    fn receiving(&mut self, segment: u32) {
        // A decoded segment's buffer serves its streams until its encoder is built.
        if let Some(previous) = self.receiving.take() {
            if previous.decoded && previous.segment != segment {
                self.decoded = Some(previous);
            }
        }
        if self.decoded.as_ref().is_some_and(|b| b.segment == segment) {
            // Fetched again (a failed digest): nothing of the earlier attempt is sent.
            self.decoded = None;
        }
        if self.completed.contains(&segment) {
            self.receiving = None;
            return;
        }
        match segment_layout(&self.setup.meta, segment) {
            Ok(layout) => {
                self.generations += 1;
                let buffer = RecodeBuffer::new(segment, layout, self.generations);
                tracing::debug!(
                    segment,
                    capacity = buffer.recoder.capacity(),
                    discarded = self.discarded,
                    "recoding buffer started"
                );
                self.receiving = Some(buffer);
            }
            Err(error) => {
                tracing::warn!(segment, %error, "cannot recode this segment");
                self.receiving = None;
            }
        }
    }

    fn start(
        &mut self,
        id: StreamId,
        segment: u32,
        key: SessionKey,
        to: SocketAddr,
        source: ServeSource,
        now: u64,
    ) {
        // A replaced stream's sequence numbers go on (the receiver derives loss from their gaps),
        // and so does its place in the arrivals of the same segment (nothing is sent twice).
        let mut seq = 0;
        let mut resume = (0, 0);
        if let Some(i) = self.streams.iter().position(|s| s.id == id) {
            let old = self.streams.swap_remove(i);
            self.log_stop(&old, "restarted");
            self.remember_rate(&old);
            seq = old.seq;
            if old.segment == segment {
                resume = (old.cursor, old.generation);
            }
        }
        let layout = match segment_layout(&self.setup.meta, segment) {
            Ok(layout) => layout,
            Err(error) => {
                tracing::warn!(segment, %error, "peer stream not started");
                return;
            }
        };
        let mut code = Stream::new(random_u64());
        if layout.systematic() {
            // Peers never send systematic packets: the server's stream carries those.
            code.counter = u64::from(layout.source_count());
        }
        let max_wire = wire_len(DataPacket::sealed_len(packet::max_len(&layout)), to.ip());
        let min_burst = MIN_BURST_DATAGRAMS * max_wire;
        // A peer we served before resumes at the rate its last stream reached (at least a quarter
        // of the initial rate: a stream's end, when nothing we send is useful any more, is no
        // measure of the link); a new one starts at the initial rate or its share of the cap.
        let count = self.streams.len() as u64 + 1;
        let initial = match self.link_rates.get(&id.link) {
            Some(&rate) => rate.max(INITIAL_RATE_BPS / 4),
            None => self
                .setup
                .upload_rate_bps
                .map_or(INITIAL_RATE_BPS, |cap| INITIAL_RATE_BPS.min(cap / count)),
        };
        tracing::debug!(
            link = id.link.0,
            session = id.session.0,
            segment,
            %to,
            ?source,
            rate_bps = initial,
            "peer stream started"
        );
        let layout_source_count = layout.source_count();
        let mut control = RateController::new(initial, now);
        control.set_arrival_driven(source == ServeSource::Recode);
        control.set_datagram_bytes(max_wire);
        self.streams.push(ServeStream {
            id,
            segment,
            key,
            to,
            mode: source,
            layout,
            code,
            prng: Prng::new(random_u64()),
            seq,
            cursor: resume.0,
            generation: resume.1,
            waited_backlog: 0,
            pacer: Pacer::new(initial, min_burst, now),
            control,
            fresh_window: FreshWindow::new(layout_source_count),
            packets: 0,
            bytes: 0,
            started_ns: now,
            relayed_ns: now,
            broken: false,
        });
        self.reshare(now);
    }

    fn report(&mut self, id: StreamId, stats: &ReceiverStats, now: u64) {
        let Some(stream) = self.streams.iter_mut().find(|s| s.id == id) else {
            return;
        };
        let before = stream.control.rate_bps();
        // The stream's packets since the receiver's tally for the session started: a replaced
        // stream's `seq` goes on, and so does the tally.
        stream.fresh_window.on_report(
            stats.received_packets,
            stats.decoded_rank,
            u64::from(stream.seq),
        );
        let change = stream.control.on_report(stats, now);
        let after = stream.control.rate_bps();
        if before != after {
            tracing::debug!(
                link = id.link.0,
                session = id.session.0,
                ?change,
                receive_bps = stats.receive_rate_bps,
                loss_ppm = stats.loss_ppm,
                from_bps = before,
                to_bps = after,
                "peer stream rate"
            );
        }
        self.reshare(now);
    }

    /// Sets every stream's pacer to its controller's rate within its fair share of the cap.
    fn reshare(&mut self, now: u64) {
        let demands: Vec<u64> = self.streams.iter().map(|s| s.control.rate_bps()).collect();
        let shares = fair_shares(self.setup.upload_rate_bps, &demands);
        for (stream, share) in self.streams.iter_mut().zip(shares) {
            if stream.pacer.rate_bps() != share.max(1) {
                let min_burst = MIN_BURST_DATAGRAMS
                    * wire_len(
                        DataPacket::sealed_len(packet::max_len(&stream.layout)),
                        stream.to.ip(),
                    );
                stream.pacer.set_rate(share.max(1), min_burst, now);
            }
        }
    }

    /// Remembers the rate a stream reached for the next stream on its link.
    fn remember_rate(&mut self, stream: &ServeStream) {
        if self.link_rates.len() >= LINK_RATES && !self.link_rates.contains_key(&stream.id.link) {
            // Links are numbered in order: forget the oldest.
            self.link_rates.pop_first();
        }
        self.link_rates
            .insert(stream.id.link, stream.control.rate_bps());
    }

    fn log_stop(&self, stream: &ServeStream, why: &'static str) {
        let elapsed_ns = self.now_ns().saturating_sub(stream.started_ns).max(1);
        // Arrivals of the stream's buffer it had not sent yet (how far it lagged).
        let unsent = match &self.receiving {
            Some(b) if b.segment == stream.segment && b.generation == stream.generation => {
                b.recoder.arrivals().saturating_sub(stream.cursor)
            }
            _ => 0,
        };
        tracing::debug!(
            link = stream.id.link.0,
            session = stream.id.session.0,
            segment = stream.segment,
            why,
            packets = stream.packets,
            unsent,
            bytes = stream.bytes,
            mean_bps = (stream.bytes as f64 * 8e9 / elapsed_ns as f64) as u64,
            rate_bps = stream.control.rate_bps(),
            "peer stream stopped"
        );
    }

    fn drop_spare_coders(&mut self) {
        let used: BTreeSet<u32> = self.streams.iter().map(|s| s.segment).collect();
        let spare: Vec<u32> = self
            .coders
            .keys()
            .copied()
            .filter(|s| !used.contains(s))
            .collect();
        for segment in spare.iter().take(spare.len().saturating_sub(SPARE_CODERS)) {
            self.coders.remove(segment);
        }
    }

    /// Moves verified packets from the decoder's queue into the recoding buffer (packets of other
    /// segments are discarded).
    fn drain_queue(&mut self) {
        let queue = &self.setup.queue;
        for _ in 0..DRAIN_PER_TURN {
            let Some(packet) = queue.pop() else {
                break;
            };
            match &mut self.receiving {
                Some(buffer) if buffer.segment == packet.segment => {
                    buffer.push(&packet.payload, packet.from_peer)
                }
                _ => self.discarded += 1,
            }
        }
    }

    /// Starts building the encoder of a complete `segment` on a helper thread unless it exists.
    fn ensure_coder(&mut self, segment: u32, layout: &Layout) -> CoderState {
        if self.coders.contains_key(&segment) {
            return CoderState::Ready;
        }
        if self.building.contains(&segment) {
            return CoderState::Building;
        }
        let bytes = match segment_range(&self.setup.meta, segment)
            .ok_or_else(|| format!("segment {segment} outside the file"))
            .and_then(|range| self.output.segment(range))
        {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(segment, %error, "cannot encode from our copy");
                return CoderState::Failed;
            }
        };
        let layout = layout.clone();
        let done = self.built_tx.clone();
        let waker = self.ring.waker();
        let spawned = std::thread::Builder::new()
            .name("ccfd-coop-precode".into())
            .spawn(move || {
                let built = SegmentCoder::build(&layout, bytes).map_err(|e| e.to_string());
                let _ = done.send((segment, built));
                waker.wake();
            });
        match spawned {
            Ok(_) => {
                self.building.insert(segment);
                CoderState::Building
            }
            Err(error) => {
                tracing::warn!(segment, %error, "cannot start the encoder build");
                CoderState::Failed
            }
        }
    }

    /// Drops the kept buffer of a decoded segment once its encoder is built and no stream of it
    /// still has arrivals to relay.
    fn release_decoded(&mut self) {
        let Some(b) = self.decoded.as_ref() else {
            return;
        };
        if !self.coders.contains_key(&b.segment) {
            return;
        }
        if !self.streams.iter().any(|s| relay_pending(s, b)) {
            self.decoded = None;
        }
    }

    /// Takes the encoders the helper threads finished.
    fn collect_built(&mut self) {
        while let Ok((segment, built)) = self.built_rx.try_recv() {
            self.building.remove(&segment);
            match built {
                Ok(coder) => {
                    tracing::debug!(segment, "encoder of a complete segment built");
                    self.coders.insert(segment, coder);
                    self.release_decoded();
                }
                Err(error) => {
                    tracing::warn!(segment, %error, "cannot encode from our copy");
                    for stream in self.streams.iter_mut().filter(|s| s.segment == segment) {
                        stream.broken = true;
                    }
                }
            }
        }
    }

    /// One pass over the streams (starting at a rotating one); returns how long to wait next.
    fn send_round(&mut self) -> Result<Duration, ClientError> {
        if self.streams.is_empty() {
            return Ok(MAX_WAIT);
        }
        self.turn = self.turn.wrapping_add(1);
        let count = self.streams.len();
        let mut next_ns: Option<u64> = None;
        let mut sent_any = false;
        let mut starved = false;
        for k in 0..count {
            let i = (self.turn + k) % count;
            let (segment, encode) = {
                let s = &self.streams[i];
                (
                    s.segment,
                    s.mode == ServeSource::Encode || self.completed.contains(&s.segment),
                )
            };
            if encode && self.completed.contains(&segment) && !self.streams[i].broken {
                let layout = self.streams[i].layout.clone();
                match self.ensure_coder(segment, &layout) {
                    CoderState::Ready => {}
                    CoderState::Building => {
                        starved = true;
                        continue;
                    }
                    CoderState::Failed => self.streams[i].broken = true,
                }
            }
            for _ in 0..BATCHES_PER_TURN {
                let now = self.now_ns();
                match self.send_batch(i, now)? {
                    Batch::Sent => sent_any = true,
                    Batch::Wait(ns) => {
                        let at = now + ns;
                        next_ns = Some(next_ns.map_or(at, |n| n.min(at)));
                        break;
                    }
                    Batch::PoolExhausted => return Ok(EXHAUSTED_WAIT),
                    Batch::Starved => {
                        starved = true;
                        break;
                    }
                }
            }
        }
        if sent_any {
            return Ok(Duration::ZERO);
        }
        let now = self.now_ns();
        let mut wait = next_ns.map_or(MAX_WAIT, |at| Duration::from_nanos(at.saturating_sub(now)));
        if starved {
            wait = wait.min(STARVED_WAIT);
        }
        Ok(wait.min(MAX_WAIT))
    }

    /// Fills and queues one GSO batch for stream `i` if its pacing (and the cap) allow it now.
    fn send_batch(&mut self, i: usize, now: u64) -> Result<Batch, ClientError> {
        let Shard {
            ring,
            socket,
            streams,
            receiving,
            decoded,
            completed,
            coders,
            total,
            setup,
            ..
        } = self;
        let stream = &mut streams[i];
        if stream.broken {
            return Ok(Batch::Starved);
        }
        // Encode when the segment is complete in our copy (asked to, or it completed meanwhile),
        // recode while it is the one being received and the buffer holds something new.
        // The buffer of the stream's segment: the one being received, or the one kept after it
        // decoded here until its encoder is built.
        let segment_buffer = match (receiving.as_mut(), decoded.as_mut()) {
            (Some(b), _) if b.segment == stream.segment => Some(b),
            (_, Some(b)) if b.segment == stream.segment => Some(b),
            _ => None,
        };
        let coder = if completed.contains(&stream.segment) {
            match coders.get(&stream.segment) {
                // Arrivals it has not relayed yet go first, even once the segment is encodable:
                // each is innovative to the asker (the server gave it to us alone), a fresh
                // coded packet only while the asker lacks rank in its subgeneration.
                Some(_)
                    if segment_buffer
                        .as_ref()
                        .is_some_and(|b| relay_pending(stream, b)) =>
                {
                    None
                }
                Some(coder) => Some(coder),
                None if segment_buffer.as_ref().is_some_and(|b| b.decoded) => None,
                None => return Ok(Batch::Starved),
            }
        } else {
            None
        };
        // Fresh recoded packets of a decoded segment's buffer once every arrival went out.
        let fresh = coder.is_none()
            && now.saturating_sub(stream.relayed_ns) >= FRESH_AFTER.as_nanos() as u64
            && segment_buffer.as_ref().is_some_and(|b| {
                b.decoded
                    && (b.generation != stream.generation
                        || b.next_arrival_for(stream.cursor, stream.to.ip()).is_none())
            });
        if (coder.is_some() || fresh) && stream.control.arrival_driven() {
            // From relaying to encoding: on from the rate it relayed at, not beyond (the
            // receiver's downlink is as full as our arrivals made it).
            stream.control.set_arrival_driven(false);
            let rate = stream.control.rate_bps().min(stream.pacer.rate_bps());
            let min_burst = MIN_BURST_DATAGRAMS
                * wire_len(
                    DataPacket::sealed_len(packet::max_len(&stream.layout)),
                    stream.to.ip(),
                );
            stream.pacer.set_rate(rate, min_burst, now);
        }
        let mut buffer = None;
        // The form of the packets of this batch (one GSO send carries datagrams of one size).
        let mut kind = PacketKind::Coded;
        let mut backlog = u64::MAX;
        if fresh {
            kind = PacketKind::Recoded;
            buffer = segment_buffer;
        } else if coder.is_none() {
            match segment_buffer {
                Some(b) if stream.mode == ServeSource::Recode || b.decoded => {
                    if stream.generation != b.generation {
                        // A new buffer (or a new stream): from its first arrival on.
                        stream.generation = b.generation;
                        stream.cursor = 0;
                        stream.waited_backlog = 0;
                    }
                    // Arrivals evicted from the bounded buffer are skipped, and so are those
                    // that came from this stream's peer.
                    let Some(next) = b.next_arrival_for(stream.cursor, stream.to.ip()) else {
                        return Ok(Batch::Starved);
                    };
                    stream.cursor = next;
                    kind = match b.recoder.arrival_kind(next) {
                        Some(kind) => kind,
                        None => return Ok(Batch::Starved),
                    };
                    backlog = b.recoder.arrivals() - next;
                    buffer = Some(b)
                }
                _ => return Ok(Batch::Starved),
            }
        }
        let payload_len = packet::len(&stream.layout, kind);
        let dgram = DataPacket::sealed_len(payload_len);
        let max = max_datagrams(dgram).min(MAX_SEGMENTS);
        if max == 0 {
            stream.broken = true;
            tracing::warn!(dgram, "peer stream: packets too large for a datagram");
            return Ok(Batch::Starved);
        }
        // The pacers and the upload cap count wire bytes (IP/UDP/Ethernet headers included).
        let wire = wire_len(dgram, stream.to.ip());
        // Wait for a full batch (or the whole burst at low rates): fewer, larger GSO sends.
        let full = max.min((stream.pacer.burst_bytes() / wire).max(1));
        let mut limit = max;
        if buffer.is_some() && !fresh {
            if backlog < full as u64 && backlog != stream.waited_backlog {
                // Arrivals are still coming: let a full batch's worth arrive (a backlog that
                // stopped growing over one poll is sent as it is).
                stream.waited_backlog = backlog;
                return Ok(Batch::Starved);
            }
            stream.waited_backlog = 0;
            limit = limit.min(backlog.min(max as u64) as usize);
        }
        let target = limit.min(full);
        let mut n = (stream.pacer.available(now) / wire).min(limit);
        if n < target {
            return Ok(Batch::Wait(stream.pacer.wait_ns(now, target * wire).max(1)));
        }
        if let Some(cap) = total.as_mut() {
            let allowed = cap.available(now) / wire;
            if allowed < target {
                return Ok(Batch::Wait(cap.wait_ns(now, target * wire).max(1)));
            }
            n = n.min(allowed);
        }
        if buffer.is_none() || fresh {
            // Fresh packets: no more in flight than half of what the asker lacks.
            let allowed = stream.fresh_window.allowance(u64::from(stream.seq));
            if allowed == 0 {
                return Ok(Batch::Starved);
            }
            n = n.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        }
        let mut out = match ring.send_buffer(*socket, stream.to, dgram) {
            Ok(out) => out,
            Err(SendError::PoolExhausted) => return Ok(Batch::PoolExhausted),
            Err(SendError::UnknownSocket(_)) => {
                return Err(ClientError::Internal(
                    "cooperation shard: its socket is gone".into(),
                ))
            }
            Err(error) => {
                stream.broken = true;
                tracing::warn!(%error, to = %stream.to, "peer stream: cannot send");
                return Ok(Batch::Starved);
            }
        };
        let mut sent = 0usize;
        let mut failed = false;
        while sent < n && !out.is_full() {
            // The next held arrival, if it has this batch's form.
            let arrival = match buffer.as_deref() {
                Some(_) if fresh => None,
                Some(b) => match b.next_arrival_for(stream.cursor, stream.to.ip()) {
                    Some(next) if b.recoder.arrival_kind(next) == Some(kind) => Some(next),
                    _ => break,
                },
                None => None,
            };
            let header = DataHeader {
                origin: Origin::Peer,
                session: stream.id.session,
                segment: stream.segment,
                seq: stream.seq,
            };
            let key = &stream.key;
            let written = out.push_with(|buf| {
                let body = &mut buf[DATA_HEADER_LEN..];
                let len = match (coder, buffer.as_deref_mut()) {
                    (Some(coder), _) => {
                        let encoder = coder.encoder();
                        let plan = encoder.next_plan(&mut stream.code);
                        match plan.map(|plan| encoder.write(&plan, body)) {
                            Some(Ok(len)) => len,
                            _ => return 0,
                        }
                    }
                    (None, Some(b)) if fresh => match b.recode_fresh(&mut stream.prng, body) {
                        Some(len) => len,
                        None => return 0,
                    },
                    (None, Some(b)) => {
                        let stamp = arrival.unwrap_or(u64::MAX);
                        match b.recoder.recode_arrival(stamp, &mut stream.prng, body) {
                            Some(len) => len,
                            None => return 0,
                        }
                    }
                    (None, None) => return 0,
                };
                if len != payload_len {
                    return 0;
                }
                DataPacket::seal_in_place(key, &header, buf, len).unwrap_or(0)
            });
            match written {
                Ok(len) if len == dgram => {
                    stream.seq = stream.seq.wrapping_add(1);
                    if let Some(stamp) = arrival {
                        stream.cursor = stamp + 1;
                    }
                    sent += 1;
                }
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        if sent == 0 {
            drop(out);
            if failed {
                stream.broken = true;
                tracing::warn!(segment = stream.segment, "peer stream: packet not written");
            }
            return Ok(Batch::Starved);
        }
        out.queue();
        let bytes = sent * dgram;
        stream.pacer.consume(sent * wire);
        stream.control.on_sent(sent * wire);
        if let Some(cap) = total.as_mut() {
            cap.consume(sent * wire);
        }
        stream.packets += sent as u64;
        stream.bytes += bytes as u64;
        if !fresh && coder.is_none() {
            stream.relayed_ns = now;
        }
        let counters = &setup.counters;
        Counters::add(&counters.packets_to_peers, sent as u64);
        Counters::add(&counters.bytes_to_peers, (sent * payload_len) as u64);
        Ok(Batch::Sent)
    }
}

/// Whether `stream` has arrivals of `buffer` it has not relayed yet (it relays that buffer: same
/// generation).
fn relay_pending(stream: &ServeStream, buffer: &RecodeBuffer) -> bool {
    stream.segment == buffer.segment
        && stream.generation == buffer.generation
        && buffer
            .next_arrival_for(stream.cursor, stream.to.ip())
            .is_some()
}
