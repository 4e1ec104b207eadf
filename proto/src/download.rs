//! The client's download of one file: a sans-IO state machine over control frames, driver events and
//! time.
//!
//! # Contract
//! 1. The driver fetches the [`FileMeta`] (and knows from its resume record which segments are already
//!    complete and verified), builds a [`Download`] and calls [`Download::start`] with whether its
//!    control connection is already up (Hello exchanged).
//! 2. It then loops: drain [`Download::poll_action`] and perform each [`DownloadAction`]; feed in
//!    decoded frames ([`Download::handle_frame`]), connection events ([`Download::handle_connected`],
//!    [`Download::handle_connect_failed`], [`Download::handle_disconnected`]), receive statistics
//!    ([`Download::update_stats`]), decoder results ([`Download::segment_decoded`],
//!    [`Download::segment_verified`]), and the timer ([`Download::handle_timeout`] at
//!    [`Download::poll_timeout`]).
//! 3. It stops after [`DownloadAction::Done`] or [`DownloadAction::Failed`].
//!
//! Segments are received one at a time, the first missing one first; completed segments are never
//! requested again. While a segment is received a `Heartbeat` goes out every `heartbeat_interval`.
//! When the segment decodes, `StopSegment` goes out at once and the next missing segment is requested
//! right away, while the driver checks the digest of the decoded one (pipelining: the request's round
//! trip and the digest check overlap the next segment). A segment whose digest fails is missing again
//! and is requested once the current one decodes (up to `max_digest_failures` failures). `Done` comes
//! when every segment verified.
//! A lost connection (reported by the driver, or a server silent for `server_timeout`) is retried
//! after an exponential backoff with seeded jitter; the current segment restarts.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::frame::{
    ErrorCode, FileMeta, Frame, Hello, NodeId, ReceiverStats, Role, SegmentRange, SessionId,
    SessionMeta, PROTOCOL_VERSION,
};

/// Settings of a download.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// This client's node id (random, chosen once per process).
    pub node_id: NodeId,
    /// The UDP address the server should send to.
    pub receive_addr: SocketAddr,
    /// The cooperation listener, if this client cooperates (announced in Hello).
    pub control_addr: Option<SocketAddr>,
    /// Heartbeat period while receiving.
    pub heartbeat_interval: Duration,
    /// The connection is considered lost when a request (or the heartbeats) got no answer for this
    /// long.
    pub server_timeout: Duration,
    /// The segment is re-requested when no packet arrived for this long while receiving.
    pub stall_timeout: Duration,
    /// First backoff delay.
    pub backoff_initial: Duration,
    /// Largest backoff delay; keep it under the server's client timeout (10 s by default), since a
    /// connected client waiting to retry a request sends nothing meanwhile.
    pub backoff_max: Duration,
    /// Consecutive failed attempts (connects or transient errors) before giving up; `None`: never.
    pub max_attempts: Option<u32>,
    /// Digest failures of one segment before giving up.
    pub max_digest_failures: u32,
    /// Send `Have` for the completed segments after each Hello (for the cooperation list).
    pub announce_have: bool,
    /// Send `Exit` to the server when done.
    pub exit_when_done: bool,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

impl DownloadConfig {
    /// Defaults for a node receiving at `receive_addr`.
    pub fn new(node_id: NodeId, receive_addr: SocketAddr) -> Self {
        Self {
            node_id,
            receive_addr,
            control_addr: None,
            heartbeat_interval: Duration::from_millis(250),
            server_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_attempts: None,
            max_digest_failures: 3,
            announce_have: false,
            exit_when_done: true,
            seed: node_id.0,
        }
    }
}

/// Why a download gave up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DownloadError {
    /// The server has no such file.
    #[error("no such file on the server: {0}")]
    NoSuchFile(String),
    /// The server refused the name.
    #[error("the server refused the path: {0}")]
    PathRefused(String),
    /// The file changed on the server (version tag differs from the meta's).
    #[error("the file changed on the server")]
    FileChanged,
    /// A segment failed its digest too often.
    #[error("segment {segment} failed its digest {failures} times")]
    DigestMismatch {
        /// The segment.
        segment: u32,
        /// How many failures.
        failures: u32,
    },
    /// The server stayed unreachable (or busy) for `max_attempts` attempts.
    #[error("server unreachable after {attempts} attempts")]
    Unreachable {
        /// Attempts made.
        attempts: u32,
    },
    /// The server answered something that makes no sense or a non-retryable error.
    #[error("server error {code:?}: {message}")]
    Server {
        /// Error code.
        code: ErrorCode,
        /// Server message.
        message: String,
    },
    /// The server's session meta contradicts the file meta.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadAction {
    /// Open a new control connection; report [`Download::handle_connected`] or
    /// [`Download::handle_connect_failed`] within `server_timeout` (after that the attempt is
    /// abandoned with `Disconnect`).
    Connect,
    /// Close the control connection or abandon the pending connect (the state machine considers it
    /// dead; do not report it back).
    Disconnect,
    /// Send this frame on the control connection.
    Send(Frame),
    /// Start receiving and decoding this session's packets into the segment (fresh decoder).
    StartSegment(SessionMeta),
    /// Stop receiving this session (decoded, or abandoned: discard a partial decoder).
    StopSegment {
        /// The session.
        session: SessionId,
        /// The segment.
        segment: u32,
    },
    /// Every segment is complete and verified.
    Done,
    /// The download gave up.
    Failed(DownloadError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not started.
    Idle,
    /// Waiting to (re)connect at `at`.
    Backoff { at: Instant },
    /// `Connect` emitted, waiting for the driver.
    Connecting { since: Instant },
    /// Connected, a transient error: re-request at `at`.
    RetryRequest { at: Instant },
    /// `RequestSegment` sent at `since`.
    Requesting { segment: u32, since: Instant },
    /// Receiving a session.
    Receiving {
        meta: SessionMeta,
        next_heartbeat: Instant,
        last_progress: Instant,
        last_packets: u64,
    },
    /// Nothing left to request: waiting for the driver's digest verdicts of decoded segments.
    Waiting,
    /// Finished (Done or Failed emitted).
    Finished,
}

/// One file's download (see the module docs for the call order).
#[derive(Debug)]
pub struct Download {
    config: DownloadConfig,
    meta: FileMeta,
    completed: BTreeSet<u32>,
    /// Decoded segments whose digest verdict is pending.
    verifying: BTreeSet<u32>,
    state: State,
    connected: bool,
    /// Last frame from the server (or connection/start instant); `None` before `start`.
    last_server_frame: Option<Instant>,
    attempts: u32,
    digest_failures: Vec<(u32, u32)>,
    stats: ReceiverStats,
    server_rate_bps: u64,
    rng: u64,
    actions: VecDeque<DownloadAction>,
    requests: Vec<u32>,
}

impl Download {
    /// A download of `meta`, with `completed` segments already done (out-of-range indices ignored).
    pub fn new(
        config: DownloadConfig,
        meta: FileMeta,
        completed: impl IntoIterator<Item = u32>,
    ) -> Self {
        let completed = completed
            .into_iter()
            .filter(|s| *s < meta.segment_count)
            .collect();
        let rng = config.seed ^ 0x9e37_79b9_7f4a_7c15;
        Self {
            config,
            meta,
            completed,
            verifying: BTreeSet::new(),
            state: State::Idle,
            connected: false,
            last_server_frame: None,
            attempts: 0,
            digest_failures: Vec::new(),
            stats: ReceiverStats::default(),
            server_rate_bps: 0,
            rng,
            actions: VecDeque::new(),
            requests: Vec::new(),
        }
    }

    /// Starts: requests the first missing segment if `connected` (Hello already exchanged on the
    /// driver's connection), otherwise asks for a connection. Emits `Done` at once when nothing is
    /// missing.
    pub fn start(&mut self, now: Instant, connected: bool) {
        if self.state != State::Idle {
            return;
        }
        self.last_server_frame = Some(now);
        if self.next_missing().is_none() {
            self.finish_done();
            return;
        }
        if connected {
            self.connected = true;
            self.announce();
            self.request_next(now);
        } else {
            self.state = State::Connecting { since: now };
            self.actions.push_back(DownloadAction::Connect);
        }
    }

    /// The file meta this download works on.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    /// Segments complete and verified.
    pub fn completed(&self) -> &BTreeSet<u32> {
        &self.completed
    }

    /// Every `RequestSegment` sent so far, in order (segment indices), for accounting and tests.
    pub fn requests_sent(&self) -> &[u32] {
        &self.requests
    }

    /// The session being received, if any.
    pub fn current_session(&self) -> Option<&SessionMeta> {
        match &self.state {
            State::Receiving { meta, .. } => Some(meta),
            _ => None,
        }
    }

    /// How many times `segment` failed its digest so far (a cooperating driver fetches a segment
    /// that failed from the server alone).
    pub fn digest_failures(&self, segment: u32) -> u32 {
        self.digest_failures
            .iter()
            .find(|(s, _)| *s == segment)
            .map_or(0, |(_, n)| *n)
    }

    /// The server's last announced send rate to us (from `HeartbeatAck`), bits per second.
    pub fn server_rate_bps(&self) -> u64 {
        self.server_rate_bps
    }

    /// Whether Done or Failed was emitted.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<DownloadAction> {
        self.actions.pop_front()
    }

    /// When [`Download::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let liveness = self.last_server_frame? + self.config.server_timeout;
        match &self.state {
            State::Idle | State::Finished | State::Waiting => None,
            State::Backoff { at } | State::RetryRequest { at } => Some(*at),
            State::Connecting { since } => Some(*since + self.config.server_timeout),
            State::Requesting { since, .. } => {
                Some((*since + self.config.server_timeout).max(liveness))
            }
            State::Receiving {
                next_heartbeat,
                last_progress,
                ..
            } => Some(
                (*next_heartbeat)
                    .min(liveness)
                    .min(*last_progress + self.config.stall_timeout),
            ),
        }
    }

    /// Latest receive statistics of the current session (sent in the next heartbeat).
    pub fn update_stats(&mut self, stats: ReceiverStats) {
        self.stats = stats;
    }

    /// The driver's connection attempt succeeded: sends Hello and requests the next segment.
    pub fn handle_connected(&mut self, now: Instant) {
        if !matches!(self.state, State::Connecting { .. }) {
            return;
        }
        self.connected = true;
        self.last_server_frame = Some(now);
        self.actions
            .push_back(DownloadAction::Send(Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Client,
                node_id: self.config.node_id,
                data_addr: Some(self.config.receive_addr),
                control_addr: self.config.control_addr,
            })));
        self.announce();
        self.request_next(now);
    }

    /// The driver's connection attempt failed.
    pub fn handle_connect_failed(&mut self, now: Instant) {
        if matches!(self.state, State::Connecting { .. }) {
            self.connected = false;
            self.backoff(now);
        }
    }

    /// The control connection closed or broke.
    pub fn handle_disconnected(&mut self, now: Instant) {
        if matches!(
            self.state,
            State::Idle | State::Finished | State::Backoff { .. }
        ) {
            return;
        }
        self.connection_lost(now, false);
    }

    /// A frame from the server.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if !self.connected || self.state == State::Finished {
            return;
        }
        self.last_server_frame = Some(now);
        match frame {
            Frame::SessionMeta(meta) => self.session_meta(now, meta),
            Frame::HeartbeatAck {
                session,
                send_rate_bps,
            } if self.current_session().is_some_and(|m| m.session == session) => {
                self.server_rate_bps = send_rate_bps;
            }
            Frame::Error { code, message } => self.server_error(now, code, message),
            // Hello (server), Ack, PeerList and others need nothing here.
            _ => {}
        }
    }

    /// The decoder rebuilt segment `segment`: stop the session at once and request the next missing
    /// segment (then verify the digest and report [`Download::segment_verified`]).
    pub fn segment_decoded(&mut self, now: Instant, segment: u32) {
        let State::Receiving { meta, .. } = &self.state else {
            return;
        };
        if meta.segment != segment {
            return;
        }
        let session = meta.session;
        self.actions
            .push_back(DownloadAction::Send(Frame::StopSegment { session }));
        self.actions
            .push_back(DownloadAction::StopSegment { session, segment });
        self.verifying.insert(segment);
        self.request_next(now);
    }

    /// Decoded segments whose digest verdict is pending.
    pub fn verifying(&self) -> &BTreeSet<u32> {
        &self.verifying
    }

    /// The digest of `segment` matched (`true`; the driver has written it) or not (`false`).
    pub fn segment_verified(&mut self, now: Instant, segment: u32, ok: bool) {
        if self.state == State::Finished || !self.verifying.remove(&segment) {
            return;
        }
        if ok {
            self.completed.insert(segment);
            if self.next_missing().is_none() && self.verifying.is_empty() {
                if self.config.exit_when_done && self.connected {
                    self.actions.push_back(DownloadAction::Send(Frame::Exit));
                }
                self.finish_done();
                return;
            }
        } else {
            let failures = match self.digest_failures.iter_mut().find(|(s, _)| *s == segment) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    self.digest_failures.push((segment, 1));
                    1
                }
            };
            if failures >= self.config.max_digest_failures {
                self.fail(DownloadError::DigestMismatch { segment, failures });
                return;
            }
        }
        // A segment is being requested or received meanwhile: the failed one waits its turn. Idle
        // (waiting for verdicts): it is requested now. Disconnected: the reconnect requests it.
        if self.state == State::Waiting && self.connected {
            self.request_next(now);
        }
    }

    /// Timers: heartbeats, stalls, server silence, backoff expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(last_server_frame) = self.last_server_frame else {
            return;
        };
        let silent = now >= last_server_frame + self.config.server_timeout;
        match self.state.clone() {
            State::Idle | State::Finished | State::Waiting => {}
            State::Backoff { at } => {
                if now >= at {
                    self.state = State::Connecting { since: now };
                    self.actions.push_back(DownloadAction::Connect);
                }
            }
            State::Connecting { since } => {
                if now >= since + self.config.server_timeout {
                    // Abandon the attempt (a late handle_connected is ignored).
                    self.actions.push_back(DownloadAction::Disconnect);
                    self.connected = false;
                    self.backoff(now);
                }
            }
            State::RetryRequest { at } => {
                if now >= at {
                    self.request_next(now);
                }
            }
            State::Requesting { since, .. } => {
                if silent && now >= since + self.config.server_timeout {
                    self.connection_lost(now, true);
                }
            }
            State::Receiving {
                meta,
                next_heartbeat,
                last_progress,
                last_packets,
            } => {
                if silent {
                    self.connection_lost(now, true);
                    return;
                }
                let (last_progress, last_packets) = if self.stats.received_packets != last_packets {
                    (now, self.stats.received_packets)
                } else {
                    (last_progress, last_packets)
                };
                if now >= last_progress + self.config.stall_timeout {
                    // Nothing arrives: leave the session and ask again (the server may have lost it).
                    let (session, segment) = (meta.session, meta.segment);
                    self.actions
                        .push_back(DownloadAction::Send(Frame::StopSegment { session }));
                    self.actions
                        .push_back(DownloadAction::StopSegment { session, segment });
                    self.request_next(now);
                    return;
                }
                let next_heartbeat = if now >= next_heartbeat {
                    self.actions
                        .push_back(DownloadAction::Send(Frame::Heartbeat {
                            session: meta.session,
                            stats: self.stats,
                        }));
                    now + self.config.heartbeat_interval
                } else {
                    next_heartbeat
                };
                self.state = State::Receiving {
                    meta,
                    next_heartbeat,
                    last_progress,
                    last_packets,
                };
            }
        }
    }

    /// The first segment neither complete nor waiting for its digest verdict.
    fn next_missing(&self) -> Option<u32> {
        (0..self.meta.segment_count)
            .find(|s| !self.completed.contains(s) && !self.verifying.contains(s))
    }

    fn announce(&mut self) {
        if !self.config.announce_have || self.completed.is_empty() {
            return;
        }
        let mut ranges: Vec<SegmentRange> = Vec::new();
        for &s in &self.completed {
            match ranges.last_mut() {
                Some(r) if r.end == s => r.end = s + 1,
                _ => ranges.push(SegmentRange {
                    start: s,
                    end: s + 1,
                }),
            }
        }
        ranges.truncate(crate::frame::MAX_RANGES);
        self.actions.push_back(DownloadAction::Send(Frame::Have {
            name: self.meta.name.clone(),
            version: self.meta.version,
            ranges,
        }));
    }

    fn request_next(&mut self, now: Instant) {
        let Some(segment) = self.next_missing() else {
            if self.verifying.is_empty() {
                self.finish_done();
            } else {
                self.state = State::Waiting;
            }
            return;
        };
        self.requests.push(segment);
        self.actions
            .push_back(DownloadAction::Send(Frame::RequestSegment {
                name: self.meta.name.clone(),
                segment,
                receive_addr: self.config.receive_addr,
            }));
        self.state = State::Requesting {
            segment,
            since: now,
        };
    }

    fn session_meta(&mut self, now: Instant, meta: SessionMeta) {
        let State::Requesting { segment, .. } = self.state else {
            return;
        };
        if meta.name != self.meta.name || meta.segment != segment {
            return;
        }
        if meta.version != self.meta.version {
            self.fail(DownloadError::FileChanged);
            return;
        }
        if Some(meta.segment_len) != self.meta.segment_len(segment) {
            self.fail(DownloadError::Protocol(format!(
                "segment {segment} length {} differs from the file meta",
                meta.segment_len
            )));
            return;
        }
        self.attempts = 0;
        self.stats = ReceiverStats::default();
        self.actions
            .push_back(DownloadAction::StartSegment(meta.clone()));
        self.state = State::Receiving {
            meta,
            next_heartbeat: now + self.config.heartbeat_interval,
            last_progress: now,
            last_packets: 0,
        };
    }

    fn server_error(&mut self, now: Instant, code: ErrorCode, message: String) {
        match (&self.state, code) {
            (State::Requesting { .. }, ErrorCode::NoSuchFile) => {
                self.fail(DownloadError::NoSuchFile(message))
            }
            (State::Requesting { .. }, ErrorCode::PathRefused) => {
                self.fail(DownloadError::PathRefused(message))
            }
            (State::Requesting { .. }, ErrorCode::FileChanged) => {
                self.fail(DownloadError::FileChanged)
            }
            (_, ErrorCode::TooManyClients) => self.connection_lost(now, true),
            (State::Requesting { .. }, c) if c.is_transient() => self.backoff(now),
            (State::Receiving { meta, .. }, ErrorCode::NoSuchSession) => {
                // The server dropped our session (expired, file changed): ask again.
                let (session, segment) = (meta.session, meta.segment);
                self.actions
                    .push_back(DownloadAction::StopSegment { session, segment });
                self.request_next(now);
            }
            // A late NoSuchSession for a session we already left, or a reply to Have/Peers.
            (_, ErrorCode::NoSuchSession) => {}
            (State::Requesting { .. }, _) => self.fail(DownloadError::Server { code, message }),
            _ => {}
        }
    }

    /// Leaves the current session (if any) and goes to backoff; `close` asks the driver to close
    /// the connection.
    fn connection_lost(&mut self, now: Instant, close: bool) {
        if let State::Receiving { meta, .. } = &self.state {
            let (session, segment) = (meta.session, meta.segment);
            self.actions
                .push_back(DownloadAction::StopSegment { session, segment });
        }
        if close && self.connected {
            self.actions.push_back(DownloadAction::Disconnect);
        }
        self.connected = false;
        self.backoff(now);
    }

    /// Schedules a retry: a reconnect when disconnected, else a re-request.
    fn backoff(&mut self, now: Instant) {
        self.attempts += 1;
        if self
            .config
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            self.fail(DownloadError::Unreachable {
                attempts: self.attempts,
            });
            return;
        }
        let at = now + self.backoff_delay(self.attempts);
        self.state = if self.connected {
            State::RetryRequest { at }
        } else {
            State::Backoff { at }
        };
    }

    /// Delay before attempt `attempt + 1`: `min(max, initial * 2^(attempt-1))`, jittered uniformly
    /// into its upper half.
    fn backoff_delay(&mut self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(self.config.backoff_max);
        let half = base / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 {
            0
        } else {
            self.next_rand() % (nanos + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// splitmix64.
    fn next_rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn finish_done(&mut self) {
        self.state = State::Finished;
        self.actions.push_back(DownloadAction::Done);
    }

    fn fail(&mut self, e: DownloadError) {
        if let State::Receiving { meta, .. } = &self.state {
            let (session, segment) = (meta.session, meta.segment);
            self.actions
                .push_back(DownloadAction::StopSegment { session, segment });
        }
        self.state = State::Finished;
        self.actions.push_back(DownloadAction::Failed(e));
    }
}
