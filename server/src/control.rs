//! The control plane: TCP connections, frames, the session table, and commands to the shards.
//!
//! Runs on its own thread with a tokio current-thread runtime and a `LocalSet`; the state (session
//! table, catalog handle, shard queues) lives in one `Rc<RefCell<_>>` that is never borrowed across an
//! `.await`. Per connection: a task reads bytes into a `FrameDecoder`, hands each frame to the
//! `SessionTable` and writes the reply. A malformed frame gets an `Error { BadRequest }` and closes
//! **that** connection only. Blocking work (stat, hashing, listing) runs in `spawn_blocking`. Shard
//! commands go through bounded queues with `try_send` (never blocking); a full queue parks commands in an
//! overflow list that a timer flushes, in order.
//!
//! Encoders are built ahead of need: when a session for segment `s` of a file starts, the encoder of
//! segment `s + 1` is built on the blocking pool and kept (at most [`PREBUILT_MAX`] unclaimed, oldest
//! dropped first); the session of `s + 1` then starts without waiting for its precode. A session whose
//! encoder is still being prebuilt waits for that build instead of starting a second one.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfd_proto::{
    ClientId, ErrorCode, FileEntry, FileMeta, Frame, FrameDecoder, Reply, SegmentInfo, SessionId,
    SessionTable, ShardCommand, TableOutput, MAX_FILE_LIST, MAX_FRAME_LEN,
};
use snc::Layout;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::catalog::{Catalog, CatalogError, Lookup, ServedFile};
use crate::coder::{segment_layout, wire_params, SessionCoder};
use crate::config::CodingSettings;
use crate::notify::Watchdog;
use crate::shard::{session_bind_addr, ShardMsg, ShardSender};

/// How often the counters are logged (when they moved).
const STATS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often cached files are checked for changes.
const CHANGE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Longest sleep of the timer task.
const TIMER_MAX_SLEEP: Duration = Duration::from_millis(100);
/// Most encoders built ahead of need and not yet claimed by a session.
pub const PREBUILT_MAX: usize = 8;

/// Counters of the control plane.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Frames handled.
    pub frames: AtomicU64,
    /// Connections closed because of a malformed frame.
    pub malformed: AtomicU64,
    /// Commands that found a shard queue full (parked and retried).
    pub queue_full: AtomicU64,
}

/// Everything the control plane needs.
pub struct ControlSetup {
    /// The bound listener (nonblocking).
    pub listener: std::net::TcpListener,
    /// The session table.
    pub table: SessionTable,
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// Coding settings.
    pub coding: CodingSettings,
    /// Shard queues.
    pub shards: Vec<ShardSender>,
    /// IP the session sockets bind to.
    pub listen_ip: IpAddr,
    /// First UDP port.
    pub udp_base: u16,
    /// Watchdog and the control plane's participant index.
    pub watchdog: Arc<Watchdog>,
    /// Watchdog participant index of the control plane.
    pub watchdog_index: usize,
    /// Counters.
    pub stats: Arc<ControlStats>,
    /// Notified to stop.
    pub shutdown: Arc<tokio::sync::Notify>,
    /// The shards' counters (logged periodically).
    pub shard_stats: Vec<Arc<crate::shard::ShardStats>>,
}

struct State {
    table: SessionTable,
    catalog: Arc<Catalog>,
    coding: CodingSettings,
    /// Latest looked-up version of each file name.
    files: HashMap<String, Arc<ServedFile>>,
    shards: Vec<ShardSender>,
    overflow: Vec<VecDeque<ShardMsg>>,
    listen_ip: IpAddr,
    udp_base: u16,
    closers: HashMap<ClientId, tokio::sync::oneshot::Sender<()>>,
    /// Clients whose Hello announced no cooperation listener (`--no-coop`): no peer will give them
    /// anything, so their shard streams send them every source symbol (not a share of the pool).
    solo: HashSet<ClientId>,
    stats: Arc<ControlStats>,
    /// Per-session command pipelines while an encoder is being built: commands wait behind the
    /// `Start` so the shard sees them in table order.
    pipelines: HashMap<SessionId, VecDeque<Pending>>,
    builds_started: u64,
    /// Encoders built (or being built) ahead of need, by (file generation, segment).
    prebuilt: HashMap<(u64, u32), Prebuilt>,
    /// Their keys, oldest first (eviction order).
    prebuilt_order: VecDeque<(u64, u32)>,
    /// This state, for the build tasks it spawns.
    me: std::rc::Weak<RefCell<State>>,
}

/// An encoder built ahead of need.
enum Prebuilt {
    /// Being built; a session that wanted it meanwhile waits for it here.
    Building(Option<Claim>),
    /// Built, not claimed yet.
    Ready(Box<SessionCoder>),
}

/// A session waiting for a prebuild: what its `Start` needs.
struct Claim {
    session: SessionId,
    ticket: u64,
    key: ccfd_proto::SessionKey,
    bind: SocketAddr,
}

/// A command waiting in a session's pipeline.
enum Pending {
    /// Ready to go to the shard.
    Ready(usize, ShardMsg),
    /// An encoder build with this ticket is running.
    Building(u64),
}

/// An encoder to build off the control thread.
struct Build {
    ticket: u64,
    session: SessionId,
    segment: u32,
    file: Arc<ServedFile>,
    layout: Layout,
    key: ccfd_proto::SessionKey,
    bind: SocketAddr,
}

impl State {
    /// Acts on every pending table output.
    fn pump(&mut self) {
        while let Some(output) = self.table.poll_output() {
            match output {
                TableOutput::Close(client) => {
                    if let Some(closer) = self.closers.remove(&client) {
                        let _ = closer.send(());
                    }
                }
                TableOutput::Shard(ShardCommand::StartSession {
                    session,
                    name,
                    segment,
                    version,
                    key,
                    data_port,
                    ..
                }) => self.start_build(session, &name, segment, version, key, data_port),
                TableOutput::Shard(command) => {
                    if let Some((session, shard, msg)) = self.shard_msg(command) {
                        match self.pipelines.get_mut(&session) {
                            Some(pipeline) => pipeline.push_back(Pending::Ready(shard, msg)),
                            None => self.dispatch(shard, msg),
                        }
                    }
                }
            }
        }
    }

    fn shard_of(&self, session: ccfd_proto::SessionId) -> usize {
        session.0 as usize % self.shards.len()
    }

    /// Queues the build of a session's encoder; its commands wait behind it.
    fn start_build(
        &mut self,
        session: SessionId,
        name: &str,
        segment: u32,
        version: u64,
        key: ccfd_proto::SessionKey,
        data_port: u16,
    ) {
        let Some(file) = self.files.get(name).filter(|f| f.version() == version) else {
            tracing::error!(session = session.0, file = %name, "no mapped file for session");
            return;
        };
        let layout = match segment_layout(&self.coding, file, segment) {
            Ok(layout) => layout,
            Err(error) => {
                tracing::error!(session = session.0, %error, "bad code parameters");
                return;
            }
        };
        let file = Arc::clone(file);
        self.builds_started += 1;
        let ticket = self.builds_started;
        self.pipelines
            .entry(session)
            .or_default()
            .push_back(Pending::Building(ticket));
        let bind = session_bind_addr(self.listen_ip, data_port);
        let cache_key = (file.generation, segment);
        match self.prebuilt.remove(&cache_key) {
            Some(Prebuilt::Ready(coder)) => {
                self.prebuilt_order.retain(|k| *k != cache_key);
                tracing::debug!(session = session.0, segment, "prebuilt encoder used");
                let start = ShardMsg::Start {
                    session,
                    segment,
                    coder,
                    key,
                    bind,
                };
                self.build_done(session, ticket, Some(start));
            }
            Some(Prebuilt::Building(None)) => {
                tracing::debug!(session = session.0, segment, "waiting for the prebuild");
                let claim = Claim {
                    session,
                    ticket,
                    key,
                    bind,
                };
                self.prebuilt
                    .insert(cache_key, Prebuilt::Building(Some(claim)));
            }
            other => {
                if let Some(other) = other {
                    self.prebuilt.insert(cache_key, other);
                }
                let build = Build {
                    ticket,
                    session,
                    segment,
                    file: Arc::clone(&file),
                    layout,
                    key,
                    bind,
                };
                // Runs once the current task yields; it only touches the state after the blocking
                // build.
                tokio::task::spawn_local(build_task(self.me.clone(), build));
            }
        }
        self.prebuild(&file, segment + 1);
    }

    /// Starts building the encoder of `segment` of `file` ahead of need (if it exists and is not
    /// built or being built already).
    fn prebuild(&mut self, file: &Arc<ServedFile>, segment: u32) {
        let cache_key = (file.generation, segment);
        if segment >= file.layout.segment_count || self.prebuilt.contains_key(&cache_key) {
            return;
        }
        let Ok(layout) = segment_layout(&self.coding, file, segment) else {
            return;
        };
        while self.prebuilt_order.len() >= PREBUILT_MAX {
            let Some(old) = self.prebuilt_order.pop_front() else {
                break;
            };
            // A claimed build is in use: keep it (it leaves the map when it completes).
            if let Some(Prebuilt::Building(Some(claim))) = self.prebuilt.remove(&old) {
                self.prebuilt.insert(old, Prebuilt::Building(Some(claim)));
            }
        }
        self.prebuilt.insert(cache_key, Prebuilt::Building(None));
        self.prebuilt_order.push_back(cache_key);
        tokio::task::spawn_local(prebuild_task(
            self.me.clone(),
            Arc::clone(file),
            segment,
            layout,
        ));
    }

    /// A prebuild finished: hand it to the session waiting for it, or keep it for the next one.
    fn prebuild_done(&mut self, cache_key: (u64, u32), built: Option<Box<SessionCoder>>) {
        match self.prebuilt.remove(&cache_key) {
            Some(Prebuilt::Building(Some(claim))) => {
                self.prebuilt_order.retain(|k| *k != cache_key);
                let start = built.map(|coder| ShardMsg::Start {
                    session: claim.session,
                    segment: cache_key.1,
                    coder,
                    key: claim.key,
                    bind: claim.bind,
                });
                self.build_done(claim.session, claim.ticket, start);
            }
            Some(Prebuilt::Building(None)) => match built {
                Some(coder) => {
                    self.prebuilt.insert(cache_key, Prebuilt::Ready(coder));
                }
                None => self.prebuilt_order.retain(|k| *k != cache_key),
            },
            // Evicted meanwhile (or a stale entry): drop the encoder.
            Some(other) => {
                self.prebuilt.insert(cache_key, other);
            }
            None => {}
        }
    }

    /// Forgets the prebuilt encoders of a file generation (the file changed).
    fn drop_prebuilt(&mut self, generation: u64) {
        let keys: Vec<(u64, u32)> = self
            .prebuilt
            .iter()
            .filter(|(k, p)| k.0 == generation && matches!(p, Prebuilt::Ready(_)))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.prebuilt.remove(&key);
            self.prebuilt_order.retain(|k| *k != key);
        }
    }

    /// A build finished: its `Start` (or nothing, on failure) takes its place in the pipeline, and the
    /// pipeline's ready prefix goes to the shard.
    fn build_done(&mut self, session: SessionId, ticket: u64, start: Option<ShardMsg>) {
        let shard = self.shard_of(session);
        let Some(pipeline) = self.pipelines.get_mut(&session) else {
            return;
        };
        let Some(slot) = pipeline
            .iter_mut()
            .find(|p| matches!(p, Pending::Building(t) if *t == ticket))
        else {
            return;
        };
        match start {
            Some(msg) => *slot = Pending::Ready(shard, msg),
            // Failed: leave a no-op (a receiver for a session the shard does not know is ignored).
            None => *slot = Pending::Building(0),
        }
        let mut ready = Vec::new();
        while let Some(front) = pipeline.front() {
            match front {
                Pending::Building(0) => {
                    pipeline.pop_front();
                }
                Pending::Building(_) => break,
                Pending::Ready(..) => {
                    if let Some(Pending::Ready(shard, msg)) = pipeline.pop_front() {
                        ready.push((shard, msg));
                    }
                }
            }
        }
        if pipeline.is_empty() {
            self.pipelines.remove(&session);
        }
        for (shard, msg) in ready {
            self.dispatch(shard, msg);
        }
    }

    fn shard_msg(&self, command: ShardCommand) -> Option<(SessionId, usize, ShardMsg)> {
        let session = match &command {
            ShardCommand::StartSession { session, .. }
            | ShardCommand::AddReceiver { session, .. }
            | ShardCommand::SetRate { session, .. }
            | ShardCommand::Progress { session, .. }
            | ShardCommand::RemoveReceiver { session, .. }
            | ShardCommand::EndSession { session } => *session,
        };
        let (shard, msg) = match command {
            ShardCommand::StartSession { .. } => return None,
            ShardCommand::AddReceiver {
                session,
                client,
                addr,
                rate_bps,
            } => {
                // A receive address without a port means "the session's data port".
                let addr = if addr.port() == 0 {
                    SocketAddr::new(addr.ip(), self.udp_base.wrapping_add(session.0 as u16))
                } else {
                    addr
                };
                (
                    self.shard_of(session),
                    ShardMsg::AddReceiver {
                        session,
                        client,
                        addr,
                        rate_bps,
                        cooperating: !self.solo.contains(&client),
                    },
                )
            }
            ShardCommand::SetRate {
                session,
                client,
                rate_bps,
            } => (
                self.shard_of(session),
                ShardMsg::SetRate {
                    session,
                    client,
                    rate_bps,
                },
            ),
            ShardCommand::Progress {
                session,
                client,
                received_packets,
                rank,
                loss_ppm,
            } => (
                self.shard_of(session),
                ShardMsg::Progress {
                    session,
                    client,
                    received: received_packets,
                    rank,
                    loss_ppm,
                },
            ),
            ShardCommand::RemoveReceiver { session, client } => (
                self.shard_of(session),
                ShardMsg::RemoveReceiver { session, client },
            ),
            ShardCommand::EndSession { session } => {
                (self.shard_of(session), ShardMsg::End { session })
            }
        };
        Some((session, shard, msg))
    }

    /// Sends in order: behind anything already parked for that shard.
    fn dispatch(&mut self, shard: usize, msg: ShardMsg) {
        if self.overflow[shard].is_empty() {
            if let Err(msg) = self.shards[shard].send(msg) {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                self.overflow[shard].push_back(msg);
            }
        } else {
            self.overflow[shard].push_back(msg);
        }
    }

    fn flush_overflow(&mut self) {
        for (shard, queue) in self.overflow.iter_mut().enumerate() {
            while let Some(msg) = queue.pop_front() {
                if let Err(msg) = self.shards[shard].send(msg) {
                    queue.push_front(msg);
                    break;
                }
            }
        }
    }
}

/// Builds a session's encoder on the blocking pool, then hands the `Start` to its pipeline.
async fn build_task(state: std::rc::Weak<RefCell<State>>, build: Build) {
    let Build {
        ticket,
        session,
        segment,
        file,
        layout,
        key,
        bind,
    } = build;
    let name = file.name.clone();
    let built = tokio::task::spawn_blocking(move || {
        file.prefetch_segment(segment);
        SessionCoder::build(&layout, file, segment)
    })
    .await;
    let start = match built {
        Ok(Ok(coder)) => Some(ShardMsg::Start {
            session,
            segment,
            coder: Box::new(coder),
            key,
            bind,
        }),
        Ok(Err(error)) => {
            tracing::error!(session = session.0, file = %name, segment, %error, "cannot encode segment");
            None
        }
        Err(error) => {
            tracing::error!(session = session.0, %error, "encoder build task failed");
            None
        }
    };
    if let Some(state) = state.upgrade() {
        state.borrow_mut().build_done(session, ticket, start);
    }
}

/// Builds an encoder ahead of need on the blocking pool, then files it with the state.
async fn prebuild_task(
    state: std::rc::Weak<RefCell<State>>,
    file: Arc<ServedFile>,
    segment: u32,
    layout: Layout,
) {
    let cache_key = (file.generation, segment);
    let name = file.name.clone();
    let built = tokio::task::spawn_blocking(move || {
        file.prefetch_segment(segment);
        SessionCoder::build(&layout, file, segment)
    })
    .await;
    let built = match built {
        Ok(Ok(coder)) => Some(Box::new(coder)),
        Ok(Err(error)) => {
            tracing::error!(file = %name, segment, %error, "cannot encode segment");
            None
        }
        Err(error) => {
            tracing::error!(%error, "encoder prebuild task failed");
            None
        }
    };
    if let Some(state) = state.upgrade() {
        state.borrow_mut().prebuild_done(cache_key, built);
    }
}

/// Runs the control plane until `setup.shutdown` is notified (blocks the calling thread).
pub fn run(setup: ControlSetup) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(setup))
}

async fn serve(setup: ControlSetup) -> std::io::Result<()> {
    let listener = TcpListener::from_std(setup.listener)?;
    let shard_count = setup.shards.len();
    let state = Rc::new(RefCell::new(State {
        table: setup.table,
        catalog: setup.catalog,
        coding: setup.coding,
        files: HashMap::new(),
        shards: setup.shards,
        overflow: (0..shard_count).map(|_| VecDeque::new()).collect(),
        listen_ip: setup.listen_ip,
        udp_base: setup.udp_base,
        closers: HashMap::new(),
        solo: HashSet::new(),
        stats: Arc::clone(&setup.stats),
        pipelines: HashMap::new(),
        builds_started: 0,
        prebuilt: HashMap::new(),
        prebuilt_order: VecDeque::new(),
        me: std::rc::Weak::new(),
    }));
    state.borrow_mut().me = Rc::downgrade(&state);
    let timer = tokio::task::spawn_local(timer_task(
        Rc::clone(&state),
        Arc::clone(&setup.watchdog),
        setup.watchdog_index,
    ));
    let stats_log = tokio::task::spawn_local(stats_task(setup.shard_stats.clone()));
    let mut next_client = 1u64;
    let result = loop {
        tokio::select! {
            _ = setup.shutdown.notified() => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let client = ClientId(next_client);
                    next_client += 1;
                    setup.stats.connections.fetch_add(1, Ordering::Relaxed);
                    let (close_tx, close_rx) = tokio::sync::oneshot::channel();
                    state.borrow_mut().closers.insert(client, close_tx);
                    tokio::task::spawn_local(connection(Rc::clone(&state), stream, peer, client, close_rx));
                }
                Err(error) => {
                    // EMFILE and friends: log and back off a little, never exit.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    timer.abort();
    stats_log.abort();
    // Close every connection; their tasks end at their next poll.
    let closers: Vec<_> = state.borrow_mut().closers.drain().collect();
    for (_, closer) in closers {
        let _ = closer.send(());
    }
    tokio::task::yield_now().await;
    result
}

async fn timer_task(state: Rc<RefCell<State>>, watchdog: Arc<Watchdog>, index: usize) {
    let mut last_check = Instant::now();
    loop {
        let now = Instant::now();
        watchdog.tick(index, watchdog.now_ns());
        let next = {
            let mut st = state.borrow_mut();
            st.table.handle_timeout(now);
            st.pump();
            st.flush_overflow();
            st.table.poll_timeout()
        };
        if now.duration_since(last_check) >= CHANGE_CHECK_INTERVAL {
            last_check = now;
            let catalog = Arc::clone(&state.borrow().catalog);
            if let Ok(changed) = tokio::task::spawn_blocking(move || catalog.check_changes()).await
            {
                let mut st = state.borrow_mut();
                for file in changed {
                    let current = st.files.get(&file.name).map(|f| f.generation);
                    if current == Some(file.generation) {
                        st.files.remove(&file.name);
                        st.table.file_changed(Instant::now(), &file.name);
                    }
                    st.drop_prebuilt(file.generation);
                }
                st.pump();
            }
        }
        let sleep = next
            .map_or(TIMER_MAX_SLEEP, |at| {
                at.saturating_duration_since(Instant::now())
            })
            .min(TIMER_MAX_SLEEP)
            .min(watchdog.max_sleep());
        tokio::time::sleep(sleep).await;
    }
}

/// Logs the shards' send counters every [`STATS_LOG_INTERVAL`] while they move.
async fn stats_task(shards: Vec<Arc<crate::shard::ShardStats>>) {
    let mut last = (0u64, 0u64);
    let mut last_second = 0u64;
    let mut ticks = 0u64;
    let ticks_per_log = STATS_LOG_INTERVAL.as_secs().max(1);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ticks += 1;
        let sum = |f: fn(&crate::shard::ShardStats) -> &AtomicU64| -> u64 {
            shards.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
        };
        let packets = sum(|s| &s.packets);
        let bytes = sum(|s| &s.bytes);
        let receivers = sum(|s| &s.live_receivers);
        if bytes != last_second {
            // Per-second egress (UDP payload bits), for measuring `--max-rate` accuracy.
            tracing::debug!(
                rate_bps = (bytes - last_second) * 8,
                receivers,
                "egress second"
            );
            last_second = bytes;
        }
        if !ticks.is_multiple_of(ticks_per_log) {
            continue;
        }
        if (packets, bytes) != last {
            let rate_bps = (bytes - last.1) * 8 / ticks_per_log;
            tracing::info!(
                packets,
                pooled = sum(|s| &s.pooled),
                bytes,
                rate_bps,
                batches = sum(|s| &s.batches),
                sessions = sum(|s| &s.live_sessions),
                receivers,
                send_errors = sum(|s| &s.send_errors),
                window_shut = sum(|s| &s.window_shut),
                window_lost = sum(|s| &s.window_lost),
                peers_failed = sum(|s| &s.peers_failed),
                sent_after_peers_failed = sum(|s| &s.sent_after_peers_failed),
                "data plane"
            );
            last = (packets, bytes);
        }
    }
}

/// Looks a file up off the control thread.
async fn lookup(state: &Rc<RefCell<State>>, name: &str) -> Result<Lookup, CatalogError> {
    let catalog = Arc::clone(&state.borrow().catalog);
    let owned = name.to_owned();
    match tokio::task::spawn_blocking(move || catalog.lookup(&owned)).await {
        Ok(result) => result,
        Err(join) => Err(CatalogError::Io {
            op: "lookup",
            path: name.into(),
            source: std::io::Error::other(join.to_string()),
        }),
    }
}

/// Records a lookup's file as the current version (ending the sessions of a replaced one).
fn remember(st: &mut State, found: &Lookup) {
    let name = found.file.name.clone();
    let previous = st.files.insert(name.clone(), Arc::clone(&found.file));
    if let Some(old) = &found.replaced {
        st.drop_prebuilt(old.generation);
    }
    let replaced = found.replaced.is_some()
        || previous.is_some_and(|p| {
            let changed = p.version() != found.file.version();
            if changed {
                st.drop_prebuilt(p.generation);
            }
            changed
        });
    if replaced {
        st.table.file_changed(Instant::now(), &name);
    }
}

/// The error frame for a catalog refusal.
pub fn catalog_error_frame(error: &CatalogError) -> Frame {
    let code = match error {
        CatalogError::AbsoluteName { .. }
        | CatalogError::ParentComponent { .. }
        | CatalogError::OutsideRoot { .. } => ErrorCode::PathRefused,
        CatalogError::InvalidName { .. } => ErrorCode::BadRequest,
        CatalogError::NotFound { .. } | CatalogError::NotRegularFile { .. } => {
            ErrorCode::NoSuchFile
        }
        CatalogError::TooManySegments { .. } => ErrorCode::BadRequest,
        CatalogError::Io { .. } | CatalogError::Root { .. } => ErrorCode::Internal,
    };
    let message = match error {
        CatalogError::Io { op, .. } => format!("server I/O error during {op}"),
        other => other.to_string(),
    };
    Frame::error(code, message)
}

fn file_meta_frame(coding: &CodingSettings, file: &ServedFile) -> Frame {
    let nominal = file.layout.segment_size;
    let layout =
        match crate::coder::snc_params(coding, nominal.min(file.layout.file_size)).validate() {
            Ok(layout) => layout,
            Err(error) => return Frame::error(ErrorCode::Internal, error.to_string()),
        };
    // The last segment may be shorter, and a default check count depends on the segment's length.
    let last_segment_checks = match file.layout.segment_count.checked_sub(1) {
        None => 0,
        Some(last) => {
            let last_len = ccfd_proto::segment_range(file.layout.file_size, nominal, last)
                .map_or(0, |range| range.end - range.start);
            match crate::coder::snc_params(coding, last_len).validate() {
                Ok(last_layout) => last_layout.check_count(),
                Err(error) => return Frame::error(ErrorCode::Internal, error.to_string()),
            }
        }
    };
    Frame::FileMeta(FileMeta {
        name: file.name.clone(),
        size: file.layout.file_size,
        segment_size: nominal,
        segment_count: file.layout.segment_count,
        code: wire_params(&layout, nominal),
        last_segment_checks,
        digests: file.digests.clone(),
        version: file.version(),
    })
}

fn resolve_segment(
    coding: &CodingSettings,
    found: &Result<Lookup, CatalogError>,
    segment: u32,
) -> Result<SegmentInfo, Frame> {
    let file = match found {
        Ok(found) => &found.file,
        Err(error) => return Err(catalog_error_frame(error)),
    };
    let Some((_, len)) = file.layout.segment_range(segment) else {
        return Err(Frame::error(
            ErrorCode::NoSuchSegment,
            format!(
                "segment {segment} out of range ({} segments)",
                file.layout.segment_count
            ),
        ));
    };
    let layout = segment_layout(coding, file, segment)
        .map_err(|e| Frame::error(ErrorCode::Internal, e.to_string()))?;
    Ok(SegmentInfo {
        name: file.name.clone(),
        segment,
        segment_len: len as u64,
        code: wire_params(&layout, file.layout.segment_size),
        version: file.version(),
    })
}

/// What to do after answering a frame.
enum After {
    Continue,
    Close,
}

async fn handle_frame(
    state: &Rc<RefCell<State>>,
    client: ClientId,
    greeted: &mut bool,
    frame: Frame,
    out: &mut Vec<u8>,
) -> After {
    // RequestSegment needs the file (blocking lookup) before the table sees it.
    let found = match (&frame, *greeted) {
        (Frame::RequestSegment { name, .. }, true) => Some(lookup(state, name).await),
        _ => None,
    };
    let is_hello = matches!(frame, Frame::Hello(_));
    let reply = {
        let mut guard = state.borrow_mut();
        let st = &mut *guard;
        st.stats.frames.fetch_add(1, Ordering::Relaxed);
        if let Some(Ok(found)) = &found {
            remember(st, found);
        }
        if let Frame::Hello(hello) = &frame {
            if hello.control_addr.is_none() {
                st.solo.insert(client);
            } else {
                st.solo.remove(&client);
            }
        }
        let coding = &st.coding;
        let reply =
            st.table
                .handle_frame(Instant::now(), client, frame, |_, segment| match &found {
                    Some(found) => resolve_segment(coding, found, segment),
                    None => Err(Frame::error(ErrorCode::BadRequest, "Hello expected first")),
                });
        st.pump();
        reply
    };
    let (frame, after) = match reply {
        Reply::Send(frame) => {
            if is_hello && matches!(frame, Frame::Hello(_)) {
                *greeted = true;
            }
            (Some(frame), After::Continue)
        }
        Reply::SendAndClose(frame) => (Some(frame), After::Close),
        Reply::Close => (None, After::Close),
        Reply::Nothing => (None, After::Continue),
        Reply::Unhandled(Frame::FileMetaRequest { name }) => {
            let found = lookup(state, &name).await;
            let frame = match found {
                Ok(found) => {
                    let mut st = state.borrow_mut();
                    remember(&mut st, &found);
                    st.pump();
                    file_meta_frame(&st.coding, &found.file)
                }
                Err(error) => catalog_error_frame(&error),
            };
            (Some(frame), After::Continue)
        }
        Reply::Unhandled(Frame::ListFiles) => {
            let catalog = Arc::clone(&state.borrow().catalog);
            let listed = tokio::task::spawn_blocking(move || catalog.list()).await;
            let frame = match listed {
                Ok(Ok(files)) => file_list_frame(files),
                Ok(Err(error)) => catalog_error_frame(&error),
                Err(error) => Frame::error(ErrorCode::Internal, error.to_string()),
            };
            (Some(frame), After::Continue)
        }
        Reply::Unhandled(other) => (
            Some(Frame::error(
                ErrorCode::BadRequest,
                format!("{} is not a request to the server", other.kind()),
            )),
            After::Continue,
        ),
    };
    if let Some(frame) = frame {
        if let Err(error) = frame.encode(out) {
            tracing::error!(%error, kind = frame.kind(), "cannot encode reply");
            let _ = Frame::error(ErrorCode::Internal, "reply too large").encode(out);
        }
    }
    after
}

fn file_list_frame(files: Vec<crate::catalog::ListedFile>) -> Frame {
    // Stay well inside the frame limit: each entry costs its name + 10 bytes.
    let budget = MAX_FRAME_LEN - 1024;
    let mut used = 0;
    let mut entries = Vec::new();
    let mut truncated = false;
    for file in files {
        let cost = file.name.len() + 10;
        if entries.len() >= MAX_FILE_LIST || used + cost > budget {
            truncated = true;
            break;
        }
        used += cost;
        entries.push(FileEntry {
            name: file.name,
            size: file.size,
        });
    }
    Frame::FileList { entries, truncated }
}

async fn connection(
    state: Rc<RefCell<State>>,
    mut stream: TcpStream,
    peer: SocketAddr,
    client: ClientId,
    mut close_rx: tokio::sync::oneshot::Receiver<()>,
) {
    let span = tracing::debug_span!("connection", client = client.0, %peer);
    let _ = stream.set_nodelay(true);
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::new();
    let mut greeted = false;
    tracing::debug!(parent: &span, "connected");
    'conn: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let after = handle_frame(&state, client, &mut greeted, frame, &mut out).await;
                    if !out.is_empty() {
                        if stream.write_all(&out).await.is_err() {
                            break 'conn;
                        }
                        out.clear();
                    }
                    if matches!(after, After::Close) {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    state
                        .borrow()
                        .stats
                        .malformed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(parent: &span, %error, "malformed frame, closing connection");
                    let mut bytes = Vec::new();
                    if Frame::error(ErrorCode::BadRequest, format!("malformed frame: {error}"))
                        .encode(&mut bytes)
                        .is_ok()
                    {
                        let _ = stream.write_all(&bytes).await;
                    }
                    break 'conn;
                }
            }
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break 'conn,
                Ok(n) => decoder.push(&buf[..n]),
            },
            _ = &mut close_rx => break 'conn,
        }
    }
    let _ = stream.shutdown().await;
    let mut st = state.borrow_mut();
    st.closers.remove(&client);
    st.solo.remove(&client);
    st.table.disconnect(Instant::now(), client);
    st.pump();
    tracing::debug!(parent: &span, "disconnected");
}
