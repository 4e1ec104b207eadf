//! Shards: pinned sender threads, each with its own `ccfd_ring::Ring`.
//!
//! Contract:
//! - [`Shard::spawn`] starts the thread and returns once its ring exists (or failed); the control plane
//!   then talks to it only through [`Shard::send`] (a bounded crossbeam queue + the ring's `Waker`): it
//!   never blocks on the shard, and the shard never blocks on it.
//! - A session's commands arrive in table order: `Start` (binds the session's UDP socket on
//!   `bind_ip:data_port`; carries the snc encoder over the mapped segment, built by the control plane
//!   off the shard), `AddReceiver`/`SetRate`/`RemoveReceiver`, `End` (closes the socket, drops the
//!   encoder and with it its hold on the mapping).
//! - Packets (see [`pool`]): a systematic session hands out its `K` source symbols once across all its
//!   receivers (the shared pool, in the encoder's interleaved order: each next symbol goes to the
//!   receiver whose batch is being filled, so receivers present together get disjoint symbols and
//!   cooperating peers have something to give each other); once it is exhausted (at once for
//!   non-systematic sessions), each receiver gets coded packets of its own snc
//!   [`Stream`](snc::encoder::Stream) (a fresh random key, so they are distinct from every other
//!   receiver's). A receiver joining a session nobody receives any more gets a fresh pool. The
//!   header's `seq` counts the packets sent to that receiver.
//! - Each receiver has its own [`TokenBucket`] at the rate the session table gave it; the shard also
//!   takes every batch from the server-wide [`EgressLimiter`] when `--max-rate` is set. A receiver's
//!   [`SendWindow`] (fed by `Progress`, the receiver's reported packets and rank) keeps the packets in
//!   flight under what it still needs: a receiver whose window is shut gets nothing until its next
//!   report. A batch is up to
//!   64 equal-size datagrams to one receiver, sealed in place with the session's
//!   [`DataKey`] (expanded once per session; `ccfd_proto::DataPacket::seal_in_place`) and sent as one
//!   GSO `sendmsg`.
//! - Each loop iteration ticks the [`Watchdog`]; a stalled shard stops `WATCHDOG=1`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ccfd_proto::data::DataKey;
use ccfd_proto::{
    ClientId, DataHeader, DataPacket, Origin, SessionId, SessionKey, DATA_HEADER_LEN,
};
use ccfd_ring::{max_datagrams, Ring, RingConfig, SendError, SocketConfig, SocketId, Waker};
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::coder::SessionCoder;
use crate::notify::Watchdog;
use crate::pacing::{
    batch_datagrams, wire_len, EgressLimiter, SendWindow, TokenBucket, SEND_BUFFER_BYTES,
};

pub mod pool;

use pool::{ReceiverStream, SystematicPool};

/// Capacity of each shard's command queue.
pub const QUEUE_CAPACITY: usize = 4096;
/// Most GSO batches sent to one receiver per loop iteration.
const BATCHES_PER_TURN: usize = 4;

/// A command for a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// Start a session: bind its socket and serve the prebuilt encoder.
    Start {
        /// Session id.
        session: SessionId,
        /// Segment index.
        segment: u32,
        /// The encoder over the mapped segment (built off the shard: it computes the precode).
        coder: Box<SessionCoder>,
        /// MAC key.
        key: SessionKey,
        /// Local address of the session's socket (`listen_ip:udp_base + session`).
        bind: SocketAddr,
    },
    /// Stream to a receiver.
    AddReceiver {
        /// Session id.
        session: SessionId,
        /// The client.
        client: ClientId,
        /// Its UDP address.
        addr: SocketAddr,
        /// Pacing rate, bits/s.
        rate_bps: u64,
        /// Whether the client cooperates with peers (else it gets every source symbol itself
        /// instead of a share of the session's pool: see [`pool`]).
        cooperating: bool,
    },
    /// Change a receiver's rate.
    SetRate {
        /// Session id.
        session: SessionId,
        /// The client.
        client: ClientId,
        /// New rate, bits/s.
        rate_bps: u64,
    },
    /// A receiver's progress (from its heartbeat): packets of this session received, decoder rank.
    Progress {
        /// Session id.
        session: SessionId,
        /// The client.
        client: ClientId,
        /// Packets received from this session's stream so far.
        received: u64,
        /// Decoder rank.
        rank: u32,
        /// Loss over the receiver's last interval, ppm.
        loss_ppm: u32,
    },
    /// Stop streaming to a receiver.
    RemoveReceiver {
        /// Session id.
        session: SessionId,
        /// The client.
        client: ClientId,
    },
    /// End a session.
    End {
        /// Session id.
        session: SessionId,
    },
}

/// Counters of one shard (read from any thread).
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Data packets queued for sending.
    pub packets: AtomicU64,
    /// Their bytes (UDP payload: header + codec payload + MAC).
    pub bytes: AtomicU64,
    /// GSO batches queued.
    pub batches: AtomicU64,
    /// Sessions started.
    pub sessions_started: AtomicU64,
    /// Sessions that could not start (bind or encoder error).
    pub session_errors: AtomicU64,
    /// Packets the encoder or sealer refused (should stay 0).
    pub encode_errors: AtomicU64,
    /// Times the send-buffer pool was empty.
    pub pool_exhausted: AtomicU64,
    /// Send errors reported by the ring.
    pub send_errors: AtomicU64,
    /// Live sessions.
    pub live_sessions: AtomicU64,
    /// Live receivers.
    pub live_receivers: AtomicU64,
    /// Times a receiver's send window was found shut (it had all it still needs in flight).
    pub window_shut: AtomicU64,
    /// Packets the send windows counted as lost (in flight, never reported received).
    pub window_lost: AtomicU64,
    /// Source symbols handed out from the sessions' systematic pools (part of `packets`).
    pub pooled: AtomicU64,
    /// Receivers whose peers were taken not to deliver (their send window stopped leaving to peers
    /// what they owe).
    pub peers_failed: AtomicU64,
    /// Packets sent to receivers after their peers were taken not to deliver.
    pub sent_after_peers_failed: AtomicU64,
}

/// Static settings of a shard.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Shard index (also the watchdog participant index).
    pub index: usize,
    /// Core to pin to, if any.
    pub core: Option<core_affinity::CoreId>,
    /// Server-wide egress cap.
    pub egress: Option<Arc<EgressLimiter>>,
    /// The watchdog.
    pub watchdog: Arc<Watchdog>,
    /// Set to stop the shard.
    pub shutdown: Arc<AtomicBool>,
}

/// Why a shard did not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The ring could not be created.
    #[error("shard {index}: {source}")]
    Ring {
        /// Shard index.
        index: usize,
        /// The ring error.
        source: ccfd_ring::RingError,
    },
    /// The thread could not be spawned or died before reporting.
    #[error("shard {index}: thread failed to start: {reason}")]
    Thread {
        /// Shard index.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// The sending side of a shard's command queue (cloneable, `Send`).
#[derive(Debug, Clone)]
pub struct ShardSender {
    tx: Sender<ShardMsg>,
    waker: Waker,
}

impl ShardSender {
    /// Queues a command without blocking and wakes the shard; gives the command back when the queue is
    /// full (or the shard is gone).
    pub fn send(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        let result = match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) | Err(TrySendError::Disconnected(msg)) => Err(msg),
        };
        self.waker.wake();
        result
    }
}

/// Handle of a running shard.
#[derive(Debug)]
pub struct Shard {
    index: usize,
    sender: ShardSender,
    stats: Arc<ShardStats>,
    thread: Option<JoinHandle<()>>,
}

impl Shard {
    /// Starts shard `settings.index` and waits until its ring is up.
    pub fn spawn(settings: ShardSettings) -> Result<Shard, ShardError> {
        let index = settings.index;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let stats = Arc::new(ShardStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(format!("ccfd-shard-{index}"))
            .spawn(move || {
                if let Some(core) = settings.core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = index, core = core.id, "could not pin shard");
                    }
                }
                let ring = match Ring::new(&ring_config()) {
                    Ok(ring) => ring,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(ring.waker()));
                let span = tracing::info_span!("shard", index);
                let _enter = span.enter();
                tracing::info!(backend = ?ring.backend(), "shard running");
                ShardLoop::new(settings, ring, rx, thread_stats).run();
            })
            .map_err(|e| ShardError::Thread {
                index,
                reason: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(waker)) => Ok(Shard {
                index,
                sender: ShardSender { tx, waker },
                stats,
                thread: Some(thread),
            }),
            Ok(Err(source)) => {
                let _ = thread.join();
                Err(ShardError::Ring { index, source })
            }
            Err(_) => {
                let _ = thread.join();
                Err(ShardError::Thread {
                    index,
                    reason: "exited before reporting".into(),
                })
            }
        }
    }

    /// A sender for the shard's queue.
    pub fn sender(&self) -> ShardSender {
        self.sender.clone()
    }

    /// The shard's counters.
    pub fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }

    /// Waits for the thread to end (after the shutdown flag was set).
    pub fn join(mut self) {
        self.sender.waker.wake();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(shard = self.index, "shard thread panicked");
            }
        }
    }
}

fn ring_config() -> RingConfig {
    // The server only sends: a tiny receive side, a larger send pool.
    RingConfig::default()
        .recv_buffers(16, 4096)
        .send_buffers(256)
}

struct ShardReceiver {
    client: ClientId,
    addr: SocketAddr,
    bucket: TokenBucket,
    stream: ReceiverStream,
    window: SendWindow,
}

struct ShardSession {
    segment: u32,
    /// The session key's MAC subkeys, expanded once when the session starts.
    key: DataKey,
    socket: SocketId,
    coder: SessionCoder,
    pool: SystematicPool,
    receivers: Vec<ShardReceiver>,
    started_ns: u64,
    packets: u64,
}

enum BatchOutcome {
    /// Sent a batch.
    Sent,
    /// Nothing to send before this many nanoseconds.
    Wait(u64),
    /// The receiver's send window is shut until its next progress report.
    Shut,
    /// No send buffer free.
    Exhausted,
    /// Nothing to send at all (empty segment, encoder failure).
    Idle,
}

struct ShardLoop {
    settings: ShardSettings,
    ring: Ring,
    rx: Receiver<ShardMsg>,
    stats: Arc<ShardStats>,
    sessions: BTreeMap<SessionId, ShardSession>,
    /// Secret from which receivers' stream keys derive.
    stream_secret: [u8; 32],
    streams_made: u64,
    turn: usize,
}

impl ShardLoop {
    fn new(
        settings: ShardSettings,
        ring: Ring,
        rx: Receiver<ShardMsg>,
        stats: Arc<ShardStats>,
    ) -> Self {
        let mut stream_secret = [0u8; 32];
        if let Err(error) = getrandom::fill(&mut stream_secret) {
            tracing::warn!(%error, "getrandom failed; stream keys derive from the clock");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            stream_secret = *blake3::hash(&now.as_nanos().to_le_bytes()).as_bytes();
        }
        Self {
            settings,
            ring,
            rx,
            stats,
            sessions: BTreeMap::new(),
            stream_secret,
            streams_made: 0,
            turn: 0,
        }
    }

    fn now_ns(&self) -> u64 {
        self.settings.watchdog.now_ns()
    }

    fn run(&mut self) {
        let watchdog = Arc::clone(&self.settings.watchdog);
        while !self.settings.shutdown.load(Ordering::Acquire) {
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
            let now = self.now_ns();
            watchdog.tick(self.settings.index, now);
            let (next_ns, exhausted, sent) = self.send_round(now);
            let max_sleep = watchdog.max_sleep();
            let timeout = if exhausted {
                Some(Duration::from_micros(200))
            } else if sent {
                Some(Duration::ZERO)
            } else {
                Some(next_ns.map_or(max_sleep, |ns| {
                    Duration::from_nanos(ns.saturating_sub(self.now_ns())).min(max_sleep)
                }))
            };
            if let Err(error) = self.ring.wait(timeout) {
                tracing::warn!(%error, "ring wait failed");
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Err(error) = self.ring.process(1024, |_| {}) {
                tracing::warn!(%error, "ring process failed");
            }
            let counters = self.ring.counters();
            self.stats
                .send_errors
                .store(counters.send_error_datagrams, Ordering::Relaxed);
        }
        // Clean exit: close every socket (queued sends still go out).
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end(id);
        }
        let _ = self.ring.submit();
        tracing::info!("shard stopped");
    }

    fn handle(&mut self, msg: ShardMsg) {
        let now = self.now_ns();
        match msg {
            ShardMsg::Start {
                session,
                segment,
                coder,
                key,
                bind,
            } => self.start(session, segment, *coder, key, bind),
            ShardMsg::AddReceiver {
                session,
                client,
                addr,
                rate_bps,
                cooperating,
            } => {
                let key = self.next_stream_key();
                // A session nobody receives any more starts a fresh pool: no receiver present
                // holds its source symbols, and a lone newcomer then decodes from copies.
                let refill = self
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.receivers.is_empty() && s.pool.handed() > 0);
                let pool_key = refill.then(|| self.next_stream_key());
                let Some(s) = self.sessions.get_mut(&session) else {
                    tracing::debug!(session = session.0, "receiver for an unknown session");
                    return;
                };
                let dgram = max_datagram_len(&s.coder);
                let layout = s.coder.encoder().layout();
                let needed = layout.source_count();
                if let Some(pool_key) = pool_key {
                    s.pool.refill(layout, pool_key);
                }
                let before = s.receivers.len();
                s.receivers.retain(|r| r.client != client);
                let replaced = (before - s.receivers.len()) as u64;
                s.receivers.push(ShardReceiver {
                    client,
                    addr,
                    bucket: TokenBucket::new(rate_bps, wire_len(dgram, addr.ip()), now),
                    stream: if cooperating {
                        ReceiverStream::new(key)
                    } else {
                        ReceiverStream::solo(key)
                    },
                    window: SendWindow::new(needed),
                });
                self.stats
                    .live_receivers
                    .fetch_add(1 - replaced, Ordering::Relaxed);
                tracing::debug!(
                    session = session.0,
                    client = client.0,
                    %addr,
                    rate_bps,
                    cooperating,
                    pool_left = s.pool.remaining(),
                    refill,
                    "receiver added"
                );
            }
            ShardMsg::SetRate {
                session,
                client,
                rate_bps,
            } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    let dgram = max_datagram_len(&s.coder);
                    if let Some(r) = s.receivers.iter_mut().find(|r| r.client == client) {
                        r.bucket
                            .set_rate(rate_bps, wire_len(dgram, r.addr.ip()), now);
                        tracing::debug!(
                            session = session.0,
                            client = client.0,
                            rate_bps,
                            "rate set"
                        );
                    }
                }
            }
            ShardMsg::Progress {
                session,
                client,
                received,
                rank,
                loss_ppm,
            } => {
                if let Some(r) = self
                    .sessions
                    .get_mut(&session)
                    .and_then(|s| s.receivers.iter_mut().find(|r| r.client == client))
                {
                    let lost = r.window.lost();
                    r.window.on_report(received, rank, loss_ppm);
                    self.stats
                        .window_lost
                        .fetch_add(r.window.lost() - lost, Ordering::Relaxed);
                }
            }
            ShardMsg::RemoveReceiver { session, client } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    let before = s.receivers.len();
                    let found = s.receivers.iter().find(|r| r.client == client).map(|r| {
                        (
                            r.stream.sent(),
                            r.stream.pooled(),
                            r.window.clone(),
                            r.stream.is_solo(),
                        )
                    });
                    let (sent, pooled, window_lost) = found
                        .as_ref()
                        .map_or((0, 0, 0), |(sent, pooled, w, _)| (*sent, *pooled, w.lost()));
                    let window = found.map(|(_, _, w, solo)| (w, solo));
                    if let Some((w, solo)) = &window {
                        // What it got is owed by it (a peer now) to the session's other receivers
                        // (not by a solo receiver: it serves no peer).
                        if !solo {
                            s.pool.on_receiver_left(w.delivered());
                        }
                        if w.peers_failed() {
                            self.stats.peers_failed.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .sent_after_peers_failed
                                .fetch_add(w.sent_after_failure(), Ordering::Relaxed);
                        }
                    }
                    s.receivers.retain(|r| r.client != client);
                    let removed = (before - s.receivers.len()) as u64;
                    let elapsed_ms = now.saturating_sub(s.started_ns) / 1_000_000;
                    tracing::debug!(
                        session = session.0,
                        client = client.0,
                        packets = s.packets,
                        sent,
                        pooled,
                        pool_left = s.pool.remaining(),
                        window_lost,
                        delivered = window.as_ref().map_or(0, |(w, _)| w.delivered()),
                        peers_failed = window.as_ref().is_some_and(|(w, _)| w.peers_failed()),
                        after_failure = window.as_ref().map_or(0, |(w, _)| w.sent_after_failure()),
                        held_reports = window.as_ref().map_or(0, |(w, _)| w.held_reports()),
                        departed = s.pool.departed(),
                        elapsed_ms,
                        "receiver removed"
                    );
                    self.stats
                        .live_receivers
                        .fetch_sub(removed, Ordering::Relaxed);
                }
            }
            ShardMsg::End { session } => self.end(session),
        }
    }

    fn next_stream_key(&mut self) -> u64 {
        self.streams_made += 1;
        let mut hasher = blake3::Hasher::new_keyed(&self.stream_secret);
        hasher.update(&self.settings.index.to_le_bytes());
        hasher.update(&self.streams_made.to_le_bytes());
        u64::from_le_bytes(
            hasher.finalize().as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        )
    }

    fn start(
        &mut self,
        session: SessionId,
        segment: u32,
        coder: SessionCoder,
        key: SessionKey,
        bind: SocketAddr,
    ) {
        if self.sessions.contains_key(&session) {
            self.end(session);
        }
        let name = coder.segment().file().name.clone();
        let config = SocketConfig::new(bind)
            .receive(false)
            .gro(false)
            .recv_buffer(64 << 10)
            .send_buffer(Some(SEND_BUFFER_BYTES));
        let socket = match self.ring.bind(&config) {
            Ok(socket) => socket,
            Err(error) => {
                self.stats.session_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(session = session.0, %bind, %error, "cannot bind session socket");
                return;
            }
        };
        self.stats.sessions_started.fetch_add(1, Ordering::Relaxed);
        self.stats.live_sessions.fetch_add(1, Ordering::Relaxed);
        let pool = SystematicPool::new(coder.encoder().layout(), self.next_stream_key());
        tracing::info!(
            session = session.0,
            file = %name,
            segment,
            %bind,
            pool = pool.remaining(),
            "session started"
        );
        self.sessions.insert(
            session,
            ShardSession {
                segment,
                key: DataKey::new(&key),
                socket,
                coder,
                pool,
                receivers: Vec::new(),
                started_ns: self.now_ns(),
                packets: 0,
            },
        );
    }

    fn end(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.remove(&session) {
            self.stats
                .live_receivers
                .fetch_sub(s.receivers.len() as u64, Ordering::Relaxed);
            self.stats.live_sessions.fetch_sub(1, Ordering::Relaxed);
            if let Err(error) = self.ring.close(s.socket) {
                tracing::warn!(session = session.0, %error, "closing session socket");
            }
            let elapsed_ms = (self.now_ns() - s.started_ns) / 1_000_000;
            tracing::info!(
                session = session.0,
                packets = s.packets,
                pooled = s.pool.handed(),
                elapsed_ms,
                "session ended"
            );
        }
    }

    /// One pass over every receiver (starting at a rotating one, so no receiver is always first).
    /// Returns (earliest instant something becomes sendable, pool exhausted, anything sent).
    fn send_round(&mut self, now: u64) -> (Option<u64>, bool, bool) {
        let mut next: Option<u64> = None;
        let mut sent_any = false;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        if ids.is_empty() {
            return (None, false, false);
        }
        self.turn = self.turn.wrapping_add(1);
        let start = self.turn % ids.len();
        for k in 0..ids.len() {
            let id = ids[(start + k) % ids.len()];
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            let receivers = session.receivers.len();
            // Packets the session's receivers got, present or gone after decoding, once per round
            // (not per batch): a receiver's peers owe it what the others got (reports lag, which
            // only widens a window).
            let delivered: u64 = session.pool.departed()
                + session
                    .receivers
                    .iter()
                    .filter(|x| !x.stream.is_solo())
                    .map(|x| x.window.delivered())
                    .sum::<u64>();
            // Even pool shares: the fewest pool symbols receivers with an open window hold (the
            // two fewest, so each receiver gets the fewest among the *others*).
            let mut fewest = [(u64::MAX, usize::MAX); 2];
            for (i, x) in session.receivers.iter().enumerate() {
                if x.window.is_open() && !x.stream.is_solo() {
                    let p = x.stream.pooled();
                    if p < fewest[0].0 {
                        fewest = [(p, i), fewest[0]];
                    } else if p < fewest[1].0 {
                        fewest[1] = (p, i);
                    }
                }
            }
            for j in 0..receivers {
                let r = (self.turn + j) % receivers;
                let other = if fewest[0].1 == r {
                    fewest[1]
                } else {
                    fewest[0]
                };
                session.receivers[r]
                    .stream
                    .set_share_cap((other.1 != usize::MAX).then_some(other.0));
                // A solo receiver is owed nothing (its stream holds every source symbol).
                let owed = if session.receivers[r].stream.is_solo() {
                    0
                } else {
                    delivered.saturating_sub(session.receivers[r].window.delivered())
                };
                session.receivers[r].window.set_owed_by_peers(owed);
                for _ in 0..BATCHES_PER_TURN {
                    match send_batch(
                        &mut self.ring,
                        session,
                        id,
                        r,
                        now,
                        self.settings.egress.as_deref(),
                        &self.stats,
                    ) {
                        BatchOutcome::Sent => sent_any = true,
                        BatchOutcome::Wait(ns) => {
                            let at = now + ns;
                            next = Some(next.map_or(at, |n: u64| n.min(at)));
                            break;
                        }
                        BatchOutcome::Exhausted => {
                            self.stats.pool_exhausted.fetch_add(1, Ordering::Relaxed);
                            return (next, true, sent_any);
                        }
                        BatchOutcome::Shut => {
                            self.stats.window_shut.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        BatchOutcome::Idle => break,
                    }
                }
            }
        }
        (next, false, sent_any)
    }
}

/// Largest datagram a session sends (coded packet + data header + MAC).
fn max_datagram_len(coder: &SessionCoder) -> usize {
    DataPacket::sealed_len(snc::packet::max_len(coder.encoder().layout()))
}

/// Fills and queues one GSO batch for receiver `r` of `session`.
fn send_batch(
    ring: &mut Ring,
    session: &mut ShardSession,
    id: SessionId,
    r: usize,
    now: u64,
    egress: Option<&EgressLimiter>,
    stats: &ShardStats,
) -> BatchOutcome {
    let encoder = session.coder.encoder();
    let pool = &mut session.pool;
    let receiver = &mut session.receivers[r];
    let Some(first) = receiver.stream.peek(pool, encoder) else {
        return BatchOutcome::Idle;
    };
    let payload_len = encoder.packet_len(&first.plan);
    let dgram = DataPacket::sealed_len(payload_len);
    // The bucket and the egress cap count wire bytes (IP/UDP/Ethernet headers included).
    let wire = wire_len(dgram, receiver.addr.ip());
    let allowed = usize::try_from(receiver.window.allowance()).unwrap_or(usize::MAX);
    if allowed == 0 {
        return BatchOutcome::Shut;
    }
    let max = max_datagrams(dgram)
        .min(ccfd_ring::MAX_SEGMENTS)
        .min(allowed);
    // Wait for a full batch (64 datagrams, or the whole burst at low rates, or what the window
    // allows): fewer, larger GSO sends cost far less CPU than a trickle of one-datagram sends, and the
    // burst stays within the window.
    let target = max.min((receiver.bucket.burst_bytes() / wire).max(1));
    let n = batch_datagrams(&mut receiver.bucket, now, wire, max);
    if n < target {
        return BatchOutcome::Wait(receiver.bucket.wait_ns(now, target * wire).max(1));
    }
    if let Some(limiter) = egress {
        if let Err(wait) = limiter.try_acquire(now, n * wire) {
            return BatchOutcome::Wait(wait.max(1));
        }
    }
    let mut buffer = match ring.send_buffer(session.socket, receiver.addr, dgram) {
        Ok(buffer) => buffer,
        Err(SendError::PoolExhausted) => return BatchOutcome::Exhausted,
        Err(error) => {
            stats.encode_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(session = id.0, %error, "no send buffer");
            return BatchOutcome::Idle;
        }
    };
    let mut sent = 0usize;
    let mut pooled = 0u64;
    let mut failed = false;
    while sent < n && !buffer.is_full() {
        let Some(next) = receiver.stream.peek(pool, encoder) else {
            break;
        };
        if encoder.packet_len(&next.plan) != payload_len {
            break; // pool → coded switch: the next batch has the other size
        }
        let header = DataHeader {
            origin: Origin::Server,
            session: id,
            segment: session.segment,
            seq: receiver.stream.seq(),
        };
        let key = &session.key;
        let written = buffer.push_with(|buf| {
            let Ok(len) = encoder.write(&next.plan, &mut buf[DATA_HEADER_LEN..]) else {
                return 0;
            };
            DataPacket::seal_in_place(key, &header, buf, len).unwrap_or(0)
        });
        match written {
            Ok(len) if len == dgram => {
                receiver.stream.advance(pool, &next);
                pooled += u64::from(next.pooled);
                sent += 1;
            }
            _ => {
                failed = true;
                break;
            }
        }
    }
    if failed {
        stats.encode_errors.fetch_add(1, Ordering::Relaxed);
    }
    if sent == 0 {
        drop(buffer);
        return BatchOutcome::Idle;
    }
    buffer.queue();
    let bytes = sent * dgram;
    receiver.bucket.consume(sent * wire);
    receiver.window.on_sent(sent as u64);
    session.packets += sent as u64;
    stats.packets.fetch_add(sent as u64, Ordering::Relaxed);
    stats.pooled.fetch_add(pooled, Ordering::Relaxed);
    stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    BatchOutcome::Sent
}

/// The socket address of a session: the listen IP and `udp_base + session`.
pub fn session_bind_addr(listen_ip: IpAddr, data_port: u16) -> SocketAddr {
    SocketAddr::new(listen_ip, data_port)
}
