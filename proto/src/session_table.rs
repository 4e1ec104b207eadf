//! The server's session table: a sans-IO state machine over control frames and time.
//!
//! # Contract
//! The driver assigns a [`ClientId`] to every accepted control connection and then:
//! 1. calls [`SessionTable::handle_frame`] for each decoded frame and acts on the returned [`Reply`]
//!    (`FileMetaRequest` and `ListFiles` come back as [`Reply::Unhandled`]: the driver answers them from
//!    the filesystem; `RequestSegment` calls the `resolve` closure to learn the segment's length, code
//!    parameters and file version, or an error frame to send);
//! 2. calls [`SessionTable::disconnect`] when a connection closes (or fails to decode);
//! 3. calls [`SessionTable::handle_timeout`] whenever [`SessionTable::poll_timeout`] is reached;
//! 4. after each call, drains [`SessionTable::poll_output`]: [`ShardCommand`]s for the shards (start/end
//!    a session, add/remove a receiver, set a receiver's pacing rate) and [`TableOutput::Close`] for
//!    connections to close (clients that stopped heartbeating).
//!
//! Sessions are created on the first `RequestSegment` for a (file, segment, version); their id is the
//! smallest free one (data port `udp_base + id`); an id is reused only after its session ended and a
//! quarantine passed. A session without receivers expires after `session_idle_timeout`. A client silent
//! for `client_timeout` is dropped from every session and cooperation list. Each receiver's rate
//! follows the loss and receive rate of its heartbeats (adapted at most once per `adapt_interval`,
//! however often the receiver heartbeats); the sum stays under `max_rate_bps` (plus
//! `cap_headroom_percent`, for drivers that cap the total egress themselves). Every heartbeat of a
//! receiver the shard streams to is also passed on as [`ShardCommand::Progress`] (packets received,
//! rank): the shard caps the packets in flight by it, so receivers heartbeat often (tens of ms) while
//! they receive.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::frame::{
    CodeParamsWire, ErrorCode, Frame, Hello, NodeId, PeerHolding, PeerInfo, PeersQuery,
    ReceiverStats, Role, SegmentRange, SessionId, SessionKey, SessionMeta, MAX_PEERS, MAX_SEGMENTS,
    PROTOCOL_VERSION,
};

/// Most files one client may appear in (cooperation lists), bounding what `Have` can allocate.
pub const MAX_FILES_PER_CLIENT: usize = 64;

/// Driver-assigned identity of one control connection (a new connection is a new client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// Limits and timers of the session table.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// First UDP data port: session `id` uses `udp_base + id`.
    pub udp_base: u16,
    /// Size of the session id space (ids `0..session_ids`, capped so ports stay <= 65535).
    pub session_ids: u32,
    /// Most live sessions.
    pub max_sessions: usize,
    /// Most connected clients.
    pub max_clients: usize,
    /// Most sessions one client may receive at once.
    pub max_sessions_per_client: usize,
    /// A session with no receivers ends after this long.
    pub session_idle_timeout: Duration,
    /// A client (or a receiver of a session) silent for this long is dropped.
    pub client_timeout: Duration,
    /// An ended session's id is not reused for this long.
    pub id_quarantine: Duration,
    /// Total egress cap over all receivers, bits per second (`None`: uncapped).
    pub max_rate_bps: Option<u64>,
    /// Share of the cap, in percent, handed out on top of it (0: the receivers' rates sum to at
    /// most the cap). A driver that enforces the cap on the total egress itself (the server's
    /// egress limiter) oversubscribes, so that a receiver that pauses (between segments, waiting for
    /// a progress report) leaves its share to the others instead of letting it go unused.
    pub cap_headroom_percent: u32,
    /// Rate a new receiver starts at.
    pub initial_rate_bps: u64,
    /// Lowest rate adaptation goes to.
    pub min_rate_bps: u64,
    /// Highest rate one receiver is given.
    pub max_receiver_rate_bps: u64,
    /// Loss (ppm) above which a receiver's rate is cut.
    pub loss_high_ppm: u32,
    /// Shortest interval between two rate adaptations of one receiver (its heartbeats may be more
    /// frequent: they also carry progress for the shard's send window).
    pub adapt_interval: Duration,
    /// Loss (ppm) below which a receiver's rate grows.
    pub loss_low_ppm: u32,
    /// Most peers returned in a `PeerList`.
    pub max_peers: usize,
    /// Secret from which session keys are derived: the driver MUST fill it from the OS RNG
    /// (`getrandom`) at start-up; the default (zeros) is for tests only.
    pub key_secret: SessionKey,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            udp_base: 7655,
            session_ids: 1024,
            max_sessions: 256,
            max_clients: 1024,
            max_sessions_per_client: 4,
            session_idle_timeout: Duration::from_secs(10),
            client_timeout: Duration::from_secs(10),
            id_quarantine: Duration::from_secs(5),
            max_rate_bps: None,
            cap_headroom_percent: 0,
            initial_rate_bps: 1_000_000_000,
            min_rate_bps: 1_000_000,
            max_receiver_rate_bps: 40_000_000_000,
            loss_high_ppm: 20_000,
            loss_low_ppm: 5_000,
            adapt_interval: Duration::from_millis(200),
            max_peers: 32,
            key_secret: SessionKey([0; 32]),
        }
    }
}

/// What the driver knows about a requested segment (from the file and its cached meta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// File name (as requested).
    pub name: String,
    /// Segment index.
    pub segment: u32,
    /// Segment length in bytes.
    pub segment_len: u64,
    /// Codec parameters.
    pub code: CodeParamsWire,
    /// File version tag (a change ends the file's sessions).
    pub version: u64,
}

/// Commands for the shard that owns a session (the driver picks the shard, e.g. by session id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardCommand {
    /// Open the session's socket on `data_port`, map the segment, be ready for receivers.
    StartSession {
        /// Session id.
        session: SessionId,
        /// File name.
        name: String,
        /// Segment index.
        segment: u32,
        /// Segment length.
        segment_len: u64,
        /// File version the session serves.
        version: u64,
        /// Codec parameters.
        code: CodeParamsWire,
        /// MAC key.
        key: SessionKey,
        /// UDP port (`udp_base + session`).
        data_port: u16,
    },
    /// Start streaming coded packets to a receiver at `rate_bps`.
    AddReceiver {
        /// Session id.
        session: SessionId,
        /// The receiving client.
        client: ClientId,
        /// Its UDP address.
        addr: SocketAddr,
        /// Pacing rate, bits per second.
        rate_bps: u64,
    },
    /// A receiver's progress, from its heartbeat (for the shard's cap on packets in flight).
    Progress {
        /// Session id.
        session: SessionId,
        /// The receiving client.
        client: ClientId,
        /// Packets of the session's stream it received so far.
        received_packets: u64,
        /// Its decoder rank.
        rank: u32,
        /// Loss over its last interval, ppm.
        loss_ppm: u32,
    },
    /// Change a receiver's pacing rate.
    SetRate {
        /// Session id.
        session: SessionId,
        /// The receiving client.
        client: ClientId,
        /// New pacing rate, bits per second.
        rate_bps: u64,
    },
    /// Stop streaming to a receiver.
    RemoveReceiver {
        /// Session id.
        session: SessionId,
        /// The receiving client.
        client: ClientId,
    },
    /// Close the session's socket and unmap its segment.
    EndSession {
        /// Session id.
        session: SessionId,
    },
}

/// Output of the table besides direct replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableOutput {
    /// A command for the shards.
    Shard(ShardCommand),
    /// Close this client's control connection (it timed out); the table already forgot it.
    Close(ClientId),
}

/// The table's answer to one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send this frame back.
    Send(Frame),
    /// Send this frame, then close the connection (the table already forgot the client).
    SendAndClose(Frame),
    /// Close the connection (after `Exit`; the table already forgot the client).
    Close,
    /// Nothing to send.
    Nothing,
    /// Not the table's business: the driver answers it (`FileMetaRequest`, `ListFiles`).
    Unhandled(Frame),
}

/// Read-only view of one receiver, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverView {
    /// The client.
    pub client: ClientId,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Current pacing rate.
    pub rate_bps: u64,
    /// Last reported statistics.
    pub stats: ReceiverStats,
}

/// Read-only view of one session, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Session id.
    pub session: SessionId,
    /// File name.
    pub name: String,
    /// Segment index.
    pub segment: u32,
    /// Data port.
    pub data_port: u16,
    /// Current receivers.
    pub receivers: Vec<ReceiverView>,
}

#[derive(Debug)]
struct Receiver {
    addr: SocketAddr,
    stats: ReceiverStats,
    /// Rate adaptation target (before the global cap).
    demand_bps: u64,
    /// Rate last sent to the shard.
    rate_bps: u64,
    last_heartbeat: Instant,
    /// When the rate was last adapted to a heartbeat.
    last_adapt: Option<Instant>,
    /// Packets it had received at that adaptation (the next sample's packet count follows).
    adapt_packets: u64,
}

#[derive(Debug)]
struct Session {
    name: String,
    segment: u32,
    version: u64,
    segment_len: u64,
    code: CodeParamsWire,
    key: SessionKey,
    data_port: u16,
    receivers: BTreeMap<ClientId, Receiver>,
    idle_since: Option<Instant>,
}

#[derive(Debug)]
struct Client {
    hello: Hello,
    last_seen: Instant,
    sessions: BTreeSet<SessionId>,
    files: BTreeSet<String>,
    /// Adapted demand of the client's latest receiver: its next session starts there when that is
    /// above the initial rate (segments are short: a fast client keeps the speed it reached).
    demand_hint_bps: Option<u64>,
    /// Loss of its latest rate adaptations (all its sessions), newest last: their least is the
    /// random loss of its path, there at every rate ([`LOSS_FLOOR_REPORTS`]).
    losses: VecDeque<u32>,
}

/// Adaptations over which a client's loss floor is the least loss seen.
pub const LOSS_FLOOR_REPORTS: usize = 8;
/// Largest loss taken as a floor (5 %): more is always congestion.
pub const LOSS_FLOOR_MAX_PPM: u32 = 50_000;

#[derive(Debug, Default)]
struct Member {
    /// File version the member's segments belong to.
    version: u64,
    held: BTreeSet<u32>,
    /// Segment being received -> decoder rank.
    receiving: BTreeMap<u32, u32>,
    /// How often this member was recommended (spreads load among equals).
    recommended: u64,
}

#[derive(Debug, Default)]
struct FileCoop {
    /// The file's current version, once a `RequestSegment` resolved it (`None`: only `Have`s so far).
    version: Option<u64>,
    members: BTreeMap<ClientId, Member>,
}

/// The server's sessions, receivers, clients and cooperation lists.
#[derive(Debug)]
pub struct SessionTable {
    config: TableConfig,
    sessions: BTreeMap<SessionId, Session>,
    by_segment: HashMap<(String, u32), SessionId>,
    quarantine: BTreeMap<SessionId, Instant>,
    clients: BTreeMap<ClientId, Client>,
    coop: HashMap<String, FileCoop>,
    out: VecDeque<TableOutput>,
    keys_made: u64,
}

impl SessionTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            sessions: BTreeMap::new(),
            by_segment: HashMap::new(),
            quarantine: BTreeMap::new(),
            clients: BTreeMap::new(),
            coop: HashMap::new(),
            out: VecDeque::new(),
            keys_made: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Connected clients (that sent `Hello`).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// A view of one session.
    pub fn session(&self, id: SessionId) -> Option<SessionView> {
        let s = self.sessions.get(&id)?;
        Some(SessionView {
            session: id,
            name: s.name.clone(),
            segment: s.segment,
            data_port: s.data_port,
            receivers: s
                .receivers
                .iter()
                .map(|(c, r)| ReceiverView {
                    client: *c,
                    addr: r.addr,
                    rate_bps: r.rate_bps,
                    stats: r.stats,
                })
                .collect(),
        })
    }

    /// Views of every session, by id.
    pub fn sessions(&self) -> Vec<SessionView> {
        self.sessions
            .keys()
            .filter_map(|id| self.session(*id))
            .collect()
    }

    /// Next output to act on, if any.
    pub fn poll_output(&mut self) -> Option<TableOutput> {
        self.out.pop_front()
    }

    /// Handles one frame from `client`. `resolve(name, segment)` is called only for
    /// `RequestSegment` and returns the segment's info or the error frame to reply with.
    pub fn handle_frame<F>(
        &mut self,
        now: Instant,
        client: ClientId,
        frame: Frame,
        resolve: F,
    ) -> Reply
    where
        F: FnOnce(&str, u32) -> Result<SegmentInfo, Frame>,
    {
        if let Frame::Hello(hello) = frame {
            return self.hello(now, client, hello);
        }
        let Some(c) = self.clients.get_mut(&client) else {
            return Reply::SendAndClose(Frame::error(
                ErrorCode::BadRequest,
                "Hello expected first",
            ));
        };
        c.last_seen = now;
        match frame {
            Frame::FileMetaRequest { .. } | Frame::ListFiles => Reply::Unhandled(frame),
            Frame::RequestSegment {
                name,
                segment,
                receive_addr,
            } => match resolve(&name, segment) {
                Ok(info) => self.request_segment(now, client, info, receive_addr),
                Err(reply) => Reply::Send(reply),
            },
            Frame::Heartbeat { session, stats } => self.heartbeat(now, client, session, stats),
            Frame::StopSegment { session } => self.stop_segment(now, client, session),
            Frame::Have {
                name,
                version,
                ranges,
            } => self.have(client, name, version, ranges),
            Frame::Peers(query) => self.peers(client, query),
            Frame::Exit => {
                self.remove_client(now, client);
                Reply::Close
            }
            other => Reply::SendAndClose(Frame::error(
                ErrorCode::BadRequest,
                format!("{} is not a request to the server", other.kind()),
            )),
        }
    }

    /// The connection of `client` closed: remove it everywhere.
    pub fn disconnect(&mut self, now: Instant, client: ClientId) {
        self.remove_client(now, client);
    }

    /// The file changed on disk: end its sessions (receivers' heartbeats then get `NoSuchSession`)
    /// and forget its cooperation list.
    pub fn file_changed(&mut self, now: Instant, name: &str) {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end_session(now, id);
        }
        self.coop.remove(name);
    }

    /// Earliest instant at which [`SessionTable::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self
            .sessions
            .values()
            .filter_map(|s| s.idle_since.map(|t| t + self.config.session_idle_timeout));
        let clients = self
            .clients
            .values()
            .map(|c| c.last_seen + self.config.client_timeout);
        let receivers = self
            .sessions
            .values()
            .flat_map(|s| s.receivers.values())
            .map(|r| r.last_heartbeat + self.config.client_timeout);
        idle.chain(clients).chain(receivers).min()
    }

    /// Expires idle sessions, silent receivers and silent clients.
    pub fn handle_timeout(&mut self, now: Instant) {
        let silent: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| now >= c.last_seen + self.config.client_timeout)
            .map(|(id, _)| *id)
            .collect();
        for client in silent {
            self.remove_client(now, client);
            self.out.push_back(TableOutput::Close(client));
        }
        let stale: Vec<(SessionId, ClientId)> = self
            .sessions
            .iter()
            .flat_map(|(sid, s)| {
                s.receivers
                    .iter()
                    .filter(|(_, r)| now >= r.last_heartbeat + self.config.client_timeout)
                    .map(|(c, _)| (*sid, *c))
            })
            .collect();
        for (sid, client) in stale {
            self.remove_receiver(now, sid, client);
        }
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.idle_since
                    .is_some_and(|t| now >= t + self.config.session_idle_timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end_session(now, id);
        }
        self.quarantine.retain(|_, until| *until > now);
    }

    fn hello(&mut self, now: Instant, client: ClientId, hello: Hello) -> Reply {
        if hello.version != PROTOCOL_VERSION || hello.role != Role::Client {
            return Reply::SendAndClose(Frame::error(
                ErrorCode::BadRequest,
                "expected a client Hello of this protocol version",
            ));
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.hello = hello;
            c.last_seen = now;
        } else {
            if self.clients.len() >= self.config.max_clients {
                return Reply::SendAndClose(Frame::error(
                    ErrorCode::TooManyClients,
                    format!(
                        "server limit of {} clients reached",
                        self.config.max_clients
                    ),
                ));
            }
            self.clients.insert(
                client,
                Client {
                    hello,
                    last_seen: now,
                    sessions: BTreeSet::new(),
                    files: BTreeSet::new(),
                    demand_hint_bps: None,
                    losses: VecDeque::with_capacity(LOSS_FLOOR_REPORTS),
                },
            );
        }
        Reply::Send(Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: Role::Server,
            node_id: NodeId(0),
            data_addr: None,
            control_addr: None,
        }))
    }

    fn request_segment(
        &mut self,
        now: Instant,
        client: ClientId,
        info: SegmentInfo,
        receive_addr: SocketAddr,
    ) -> Reply {
        let key = (info.name.clone(), info.segment);
        // A version change ends the old sessions of the file and its cooperation list.
        if let Some(sid) = self.by_segment.get(&key).copied() {
            if self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.version != info.version)
            {
                self.file_changed(now, &info.name);
            }
        }
        // Members holding another version of the file are useless to this one.
        if let Some(f) = self.coop.get_mut(&info.name) {
            f.version = Some(info.version);
            f.members.retain(|_, m| m.version == info.version);
        }
        let sid = match self.by_segment.get(&key).copied() {
            Some(sid) => sid,
            None => {
                let in_client = self.clients.get(&client).map_or(0, |c| c.sessions.len());
                if in_client >= self.config.max_sessions_per_client {
                    return Reply::Send(Frame::error(
                        ErrorCode::TooManySessions,
                        format!(
                            "at most {} concurrent sessions per client",
                            self.config.max_sessions_per_client
                        ),
                    ));
                }
                match self.create_session(now, &info) {
                    Some(sid) => sid,
                    None => {
                        return Reply::Send(Frame::error(
                            ErrorCode::TooManySessions,
                            format!(
                                "server limit of {} sessions reached",
                                self.config.max_sessions
                            ),
                        ))
                    }
                }
            }
        };
        let Some(c) = self.clients.get_mut(&client) else {
            return Reply::SendAndClose(Frame::error(
                ErrorCode::BadRequest,
                "Hello expected first",
            ));
        };
        if !c.sessions.contains(&sid) && c.sessions.len() >= self.config.max_sessions_per_client {
            return Reply::Send(Frame::error(
                ErrorCode::TooManySessions,
                format!(
                    "at most {} concurrent sessions per client",
                    self.config.max_sessions_per_client
                ),
            ));
        }
        c.sessions.insert(sid);
        c.files.insert(info.name.clone());
        let hint = c.demand_hint_bps;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Reply::Send(Frame::error(ErrorCode::Internal, "session vanished"));
        };
        s.idle_since = None;
        // A client that reached more than the initial rate resumes there; one held below it (loss, a
        // slow host) starts over from the initial rate, as a new client would.
        let initial = hint
            .unwrap_or(0)
            .max(self.config.initial_rate_bps)
            .min(self.config.max_receiver_rate_bps);
        let mut changed_addr = false;
        match s.receivers.get_mut(&client) {
            Some(r) => {
                r.last_heartbeat = now;
                if r.addr != receive_addr {
                    r.addr = receive_addr;
                    changed_addr = true;
                }
            }
            None => {
                s.receivers.insert(
                    client,
                    Receiver {
                        addr: receive_addr,
                        stats: ReceiverStats::default(),
                        demand_bps: initial,
                        rate_bps: 0,
                        last_heartbeat: now,
                        last_adapt: None,
                        adapt_packets: 0,
                    },
                );
                changed_addr = true;
            }
        }
        let meta = SessionMeta {
            session: sid,
            name: s.name.clone(),
            segment: s.segment,
            data_port: s.data_port,
            code: s.code,
            key: s.key,
            segment_len: s.segment_len,
            version: s.version,
        };
        if changed_addr {
            if let Some(r) = s.receivers.get_mut(&client) {
                if r.rate_bps != 0 {
                    self.out
                        .push_back(TableOutput::Shard(ShardCommand::RemoveReceiver {
                            session: sid,
                            client,
                        }));
                }
                r.rate_bps = 0;
            }
        }
        // Cooperation list: the client now receives this segment.
        let coop = self.coop.entry(info.name.clone()).or_default();
        coop.version = Some(info.version);
        let member = coop.members.entry(client).or_default();
        member.version = info.version;
        member.held.remove(&info.segment);
        member.receiving.entry(info.segment).or_insert(0);
        self.reallocate_rates();
        Reply::Send(Frame::SessionMeta(meta))
    }

    fn create_session(&mut self, now: Instant, info: &SegmentInfo) -> Option<SessionId> {
        if self.sessions.len() >= self.config.max_sessions {
            // Make room by ending the session idle for the longest time, if any.
            let oldest_idle = self
                .sessions
                .iter()
                .filter_map(|(id, s)| s.idle_since.map(|t| (t, *id)))
                .min()?;
            self.end_session(now, oldest_idle.1);
        }
        self.quarantine.retain(|_, until| *until > now);
        let port_room = u32::from(u16::MAX - self.config.udp_base) + 1;
        let limit = self.config.session_ids.min(port_room);
        let id = (0..limit)
            .map(SessionId)
            .find(|id| !self.sessions.contains_key(id) && !self.quarantine.contains_key(id))?;
        let data_port = self.config.udp_base + u16::try_from(id.0).ok()?;
        self.keys_made += 1;
        let key = session_key(&self.config.key_secret.0, self.keys_made, info, id);
        self.sessions.insert(
            id,
            Session {
                name: info.name.clone(),
                segment: info.segment,
                version: info.version,
                segment_len: info.segment_len,
                code: info.code,
                key,
                data_port,
                receivers: BTreeMap::new(),
                idle_since: None,
            },
        );
        self.by_segment
            .insert((info.name.clone(), info.segment), id);
        self.out
            .push_back(TableOutput::Shard(ShardCommand::StartSession {
                session: id,
                name: info.name.clone(),
                segment: info.segment,
                segment_len: info.segment_len,
                version: info.version,
                code: info.code,
                key,
                data_port,
            }));
        Some(id)
    }

    fn heartbeat(
        &mut self,
        now: Instant,
        client: ClientId,
        sid: SessionId,
        stats: ReceiverStats,
    ) -> Reply {
        if sid == SessionId::NONE {
            return Reply::Send(Frame::HeartbeatAck {
                session: sid,
                send_rate_bps: 0,
            });
        }
        let cfg = &self.config;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Reply::Send(no_such_session(sid));
        };
        let Some(r) = s.receivers.get_mut(&client) else {
            return Reply::Send(no_such_session(sid));
        };
        r.last_heartbeat = now;
        r.stats = stats;
        if r.rate_bps != 0 {
            self.out
                .push_back(TableOutput::Shard(ShardCommand::Progress {
                    session: sid,
                    client,
                    received_packets: stats.received_packets,
                    rank: stats.decoded_rank,
                    loss_ppm: stats.loss_ppm,
                }));
        }
        // A heartbeat without a receive sample (a session's first ~40 ms) says nothing about the
        // rate: it must not take the adaptation slot, or a session shorter than two intervals (a
        // 32 MiB segment lasts ~200 ms at 1.3 Gbit/s) never adapts and the rate never grows.
        let adapt_now = stats.receive_rate_bps > 0
            && r.last_adapt
                .is_none_or(|at| now.saturating_duration_since(at) >= cfg.adapt_interval);
        if adapt_now {
            r.last_adapt = Some(now);
            // A cooperating client (its Hello names a cooperation listener) is held back by the
            // shard's send window while its peers deliver what the others got, and by the even
            // pool shares: taking less than its rate then says nothing about its socket buffer.
            let settle = self
                .clients
                .get(&client)
                .is_none_or(|c| c.hello.control_addr.is_none());
            // Random loss on the client's path is there at every rate: only loss above its
            // floor (the least of its recent adaptations) is congestion. At 2 % random loss in the
            // lab the rates otherwise halved on every other report and never grew (growth needs
            // under 0.5 %): the server sent 40 of 200 Mbit/s for seconds.
            let floor = self.clients.get_mut(&client).map_or(0, |c| {
                let floor = c.losses.iter().copied().min().unwrap_or(0);
                if c.losses.len() == LOSS_FLOOR_REPORTS {
                    c.losses.pop_front();
                }
                c.losses.push_back(stats.loss_ppm);
                floor.min(LOSS_FLOOR_MAX_PPM)
            });
            // A loss rate measured over few packets swings by more than the thresholds (a
            // receiver held back by its window gets a few hundred per sample): they widen to
            // three standard deviations of it.
            let packets = stats.received_packets.saturating_sub(r.adapt_packets);
            r.adapt_packets = stats.received_packets;
            let noise = loss_noise_ppm(floor, packets);
            r.demand_bps = adapt(cfg, r.demand_bps, r.rate_bps, &stats, settle, floor, noise);
            let demand = r.demand_bps;
            if let Some(c) = self.clients.get_mut(&client) {
                c.demand_hint_bps = Some(demand);
            }
        }
        let (name, segment) = (s.name.clone(), s.segment);
        if let Some(m) = self
            .coop
            .get_mut(&name)
            .and_then(|f| f.members.get_mut(&client))
        {
            if let Some(rank) = m.receiving.get_mut(&segment) {
                *rank = stats.decoded_rank;
            }
        }
        if adapt_now {
            self.reallocate_rates();
        }
        let rate = self
            .sessions
            .get(&sid)
            .and_then(|s| s.receivers.get(&client))
            .map_or(0, |r| r.rate_bps);
        Reply::Send(Frame::HeartbeatAck {
            session: sid,
            send_rate_bps: rate,
        })
    }

    fn stop_segment(&mut self, now: Instant, client: ClientId, sid: SessionId) -> Reply {
        let Some(s) = self.sessions.get(&sid) else {
            return Reply::Send(no_such_session(sid));
        };
        if !s.receivers.contains_key(&client) {
            return Reply::Send(no_such_session(sid));
        }
        let (name, segment) = (s.name.clone(), s.segment);
        self.remove_receiver(now, sid, client);
        if let Some(m) = self
            .coop
            .get_mut(&name)
            .and_then(|f| f.members.get_mut(&client))
        {
            m.receiving.remove(&segment);
            m.held.insert(segment);
        }
        Reply::Send(Frame::Ack { session: sid })
    }

    fn peers(&mut self, client: ClientId, query: PeersQuery) -> Reply {
        let (name, segment) = match query {
            PeersQuery::Segment { name, segment } => (name, segment),
            PeersQuery::Session(sid) => match self.sessions.get(&sid) {
                Some(s) => (s.name.clone(), s.segment),
                None => return Reply::Send(no_such_session(sid)),
            },
        };
        let mut candidates: Vec<(PeerHolding, std::cmp::Reverse<u32>, u64, ClientId, PeerInfo)> =
            Vec::new();
        if let Some(file) = self.coop.get(&name) {
            for (id, m) in &file.members {
                if *id == client || file.version.is_some_and(|v| v != m.version) {
                    continue;
                }
                let Some(hello) = self.clients.get(id).map(|c| &c.hello) else {
                    continue;
                };
                let Some(control_addr) = hello.control_addr else {
                    continue;
                };
                let (holding, rank) = if m.held.contains(&segment) {
                    (PeerHolding::Complete, 0)
                } else if let Some(rank) = m.receiving.get(&segment) {
                    (PeerHolding::Receiving, *rank)
                } else {
                    continue;
                };
                let info = PeerInfo {
                    node_id: hello.node_id,
                    control_addr,
                    data_addr: hello.data_addr,
                    holding,
                    rank,
                    segments_held: u32::try_from(m.held.len()).unwrap_or(u32::MAX),
                };
                candidates.push((holding, std::cmp::Reverse(rank), m.recommended, *id, info));
            }
        }
        // Most useful first: complete holders, then receivers with the highest rank; among equals the
        // least recommended so far, so that load spreads.
        candidates.sort_by_key(|a| (a.0, a.1, a.2, a.3));
        candidates.truncate(self.config.max_peers.min(MAX_PEERS));
        // Rotate the head of the list among equals: the peer listed first is charged for it.
        if let (Some(file), Some(first)) = (self.coop.get_mut(&name), candidates.first()) {
            if let Some(m) = file.members.get_mut(&first.3) {
                m.recommended += 1;
            }
        }
        Reply::Send(Frame::PeerList {
            name,
            segment,
            peers: candidates.into_iter().map(|c| c.4).collect(),
        })
    }

    fn have(
        &mut self,
        client: ClientId,
        name: String,
        version: u64,
        ranges: Vec<SegmentRange>,
    ) -> Reply {
        let Some(c) = self.clients.get_mut(&client) else {
            return Reply::SendAndClose(Frame::error(
                ErrorCode::BadRequest,
                "Hello expected first",
            ));
        };
        if !c.files.contains(&name) && c.files.len() >= MAX_FILES_PER_CLIENT {
            return Reply::Send(Frame::error(
                ErrorCode::BadRequest,
                format!("at most {MAX_FILES_PER_CLIENT} files per client"),
            ));
        }
        c.files.insert(name.clone());
        let file = self.coop.entry(name).or_default();
        if file.version.is_some_and(|v| v != version) {
            return Reply::Send(Frame::error(
                ErrorCode::FileChanged,
                "the held segments belong to another version of the file",
            ));
        }
        let member = file.members.entry(client).or_default();
        if member.version != version {
            member.version = version;
            member.held.clear();
            member.receiving.clear();
        }
        // Bound the work and memory a hostile Have can cause: at most MAX_SEGMENTS insertions of
        // indices below MAX_SEGMENTS, whatever the ranges.
        let limit = u32::try_from(MAX_SEGMENTS).unwrap_or(u32::MAX);
        let mut budget = MAX_SEGMENTS;
        for r in ranges {
            for seg in r.start..r.end.min(limit) {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                member.held.insert(seg);
            }
        }
        Reply::Send(Frame::Ack {
            session: SessionId::NONE,
        })
    }

    fn remove_client(&mut self, now: Instant, client: ClientId) {
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        for sid in c.sessions {
            self.remove_receiver(now, sid, client);
        }
        for name in c.files {
            if let Some(f) = self.coop.get_mut(&name) {
                f.members.remove(&client);
                if f.members.is_empty() {
                    self.coop.remove(&name);
                }
            }
        }
    }

    fn remove_receiver(&mut self, now: Instant, sid: SessionId, client: ClientId) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.sessions.remove(&sid);
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(r) = s.receivers.remove(&client) {
            if r.rate_bps != 0 {
                self.out
                    .push_back(TableOutput::Shard(ShardCommand::RemoveReceiver {
                        session: sid,
                        client,
                    }));
            }
            if let Some(m) = self
                .coop
                .get_mut(&s.name)
                .and_then(|f| f.members.get_mut(&client))
            {
                m.receiving.remove(&s.segment);
            }
        }
        if s.receivers.is_empty() && s.idle_since.is_none() {
            s.idle_since = Some(now);
        }
        self.reallocate_rates();
    }

    fn end_session(&mut self, now: Instant, sid: SessionId) {
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        for (client, r) in &s.receivers {
            if let Some(c) = self.clients.get_mut(client) {
                c.sessions.remove(&sid);
            }
            if let Some(m) = self
                .coop
                .get_mut(&s.name)
                .and_then(|f| f.members.get_mut(client))
            {
                m.receiving.remove(&s.segment);
            }
            if r.rate_bps != 0 {
                self.out
                    .push_back(TableOutput::Shard(ShardCommand::RemoveReceiver {
                        session: sid,
                        client: *client,
                    }));
            }
        }
        self.by_segment.remove(&(s.name, s.segment));
        self.quarantine.insert(sid, now + self.config.id_quarantine);
        self.out
            .push_back(TableOutput::Shard(ShardCommand::EndSession {
                session: sid,
            }));
        self.reallocate_rates();
    }

    /// Max-min fair split of the egress cap over the receivers' demands; emits `AddReceiver` for new
    /// receivers, `SetRate` for every cut and for raises of more than 1/32, so the sum of the rates
    /// the shards use never exceeds the cap (plus the configured headroom).
    fn reallocate_rates(&mut self) {
        let mut demands: Vec<(u64, SessionId, ClientId)> = self
            .sessions
            .iter()
            .flat_map(|(sid, s)| {
                s.receivers
                    .iter()
                    .map(move |(c, r)| (r.demand_bps, *sid, *c))
            })
            .collect();
        demands.sort_unstable();
        let headroom = u64::from(self.config.cap_headroom_percent);
        let mut left = self
            .config
            .max_rate_bps
            .map_or(u64::MAX, |cap| cap.saturating_add(cap / 100 * headroom));
        let mut n = demands.len() as u64;
        let mut alloc: Vec<(SessionId, ClientId, u64)> = Vec::with_capacity(demands.len());
        for (demand, sid, client) in demands {
            let fair = left / n.max(1);
            let rate = demand.min(fair).max(1);
            left = left.saturating_sub(rate);
            n -= 1;
            alloc.push((sid, client, rate));
        }
        for (sid, client, rate) in alloc {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            let Some(r) = s.receivers.get_mut(&client) else {
                continue;
            };
            if r.rate_bps == 0 {
                r.rate_bps = rate;
                self.out
                    .push_back(TableOutput::Shard(ShardCommand::AddReceiver {
                        session: sid,
                        client,
                        addr: r.addr,
                        rate_bps: rate,
                    }));
            } else if rate < r.rate_bps || rate - r.rate_bps > r.rate_bps / 32 {
                // Cuts apply at once (the cap holds); raises only past a 1/32 step (less chatter).
                r.rate_bps = rate;
                self.out
                    .push_back(TableOutput::Shard(ShardCommand::SetRate {
                        session: sid,
                        client,
                        rate_bps: rate,
                    }));
            }
        }
    }
}

fn no_such_session(sid: SessionId) -> Frame {
    Frame::error(
        ErrorCode::NoSuchSession,
        format!("session {} is not active for this client", sid.0),
    )
}

/// Receiver-driven rate adaptation: cut towards what got through when loss is high; when the receiver
/// takes clearly less than it is sent (`rate`, the pacing rate in force), a backlog is building in its
/// socket buffer (no loss shows until that overflows, and every queued packet of a finished segment is
/// wasted): settle just above what it takes; otherwise grow multiplicatively, but only on a receive
/// sample (no sample yet: keep the rate). A cut at most halves the rate: one bad interval (the
/// receiver's decoder pausing for a digest) must not collapse it (measured on loopback, 1 GiB lone
/// client: 1.43x the goodput of 7/8-of-received cuts and unbounded growth without a sample).
///
/// `settle: false` (cooperating receivers) skips settling: the shard holds such a receiver back
/// (send window, even pool shares) while its peers deliver, and its send window bounds what can
/// queue. Settling on what it took there spiralled down in the lab (N=4, 200 Mbit/s): receivers
/// held for a while settled to 25-40 Mbit/s, the even shares then held the others to that pace,
/// and the server's egress ran at 100-150 of 200 Mbit/s.
///
/// `floor_ppm`: the receiver's loss floor; the loss thresholds apply above it, and are at least
/// `noise_ppm` (the spread of a loss rate measured over the sample's few packets).
fn adapt(
    cfg: &TableConfig,
    demand: u64,
    rate: u64,
    stats: &ReceiverStats,
    settle: bool,
    floor_ppm: u32,
    noise_ppm: u32,
) -> u64 {
    let sent = if rate > 0 { rate.min(demand) } else { demand };
    let (high, low) = (
        cfg.loss_high_ppm.max(noise_ppm),
        cfg.loss_low_ppm.max(noise_ppm),
    );
    let next = if stats.loss_ppm > floor_ppm.saturating_add(high) {
        let through = if stats.receive_rate_bps > 0 {
            demand.min(stats.receive_rate_bps)
        } else {
            demand
        };
        // At most halve: one bad interval (a receiver's decoder pausing) must not collapse the
        // rate. A cooperating receiver takes less than it is sent while the shard holds it back
        // (send window, even pool shares), so what it took says little about its path: it is cut
        // by a quarter at most (halving on every lossy sample held the lab's receivers at 10-50
        // Mbit/s at 2 % random loss, and the even shares held the others to that pace).
        let least = if settle { sent / 2 } else { sent / 4 * 3 };
        (through / 8 * 7).max(least)
    } else if stats.receive_rate_bps == 0 {
        // No receive sample yet: nothing says the receiver keeps up, so do not grow.
        demand
    } else if settle && stats.receive_rate_bps > 0 && stats.receive_rate_bps < sent / 4 * 3 {
        // Keep 1/8 of headroom so a receiver that speeds up is seen doing so. (Halving at most
        // instead was slower on a loaded host: a CPU-starved receiver's socket buffer overflowed
        // for several intervals, 3 of 4 loopback runs at load 12-18 lost 1.6-3.6x the time.)
        let settled = stats
            .receive_rate_bps
            .saturating_add(stats.receive_rate_bps / 8);
        demand.min(settled)
    } else if stats.loss_ppm < floor_ppm.saturating_add(low) {
        // Multiplicative growth finds a fast receiver's speed within a few heartbeats; loss or the
        // receive-rate bound below stop it. A lone (`settle`) receiver doubles: its sessions are
        // short (a 32 MiB segment lasts 60-200 ms on loopback) and each adapts about once, so x1.5
        // took four segments to reach 5 Gbit/s; a cooperating one grows x1.5.
        let step = if settle { demand } else { demand / 2 };
        let grown = demand.saturating_add(step).saturating_add(cfg.min_rate_bps);
        // Grow only while the receiver keeps up: at most twice what it reports receiving (a receiver
        // the server cannot feed faster does not hoard a share of the cap it cannot use).
        if stats.receive_rate_bps > 0 {
            grown.min(
                stats
                    .receive_rate_bps
                    .saturating_mul(2)
                    .max(cfg.initial_rate_bps),
            )
        } else {
            grown
        }
    } else {
        demand
    };
    next.clamp(
        cfg.min_rate_bps.max(1),
        cfg.max_receiver_rate_bps.max(cfg.min_rate_bps.max(1)),
    )
}

/// Three standard deviations of a loss rate around `floor_ppm` (at least 1 %) measured over
/// `packets` packets, in ppm (0 when no count is known: a receiver reporting a receive rate but
/// no packets).
fn loss_noise_ppm(floor_ppm: u32, packets: u64) -> u32 {
    if packets == 0 {
        return 0;
    }
    let p = f64::from(floor_ppm.max(10_000)) / 1e6;
    let n = packets as f64;
    (3.0 * (p * (1.0 - p) / n).sqrt() * 1e6) as u32
}

/// Session key = keyed BLAKE3 (a PRF) under the server's random secret over a never-repeating
/// counter and the session identity: unpredictable without the secret, deterministic in tests.
fn session_key(secret: &[u8; 32], counter: u64, info: &SegmentInfo, id: SessionId) -> SessionKey {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"ccfd session key v1");
    h.update(&counter.to_le_bytes());
    h.update(&id.0.to_le_bytes());
    h.update(&info.segment.to_le_bytes());
    h.update(&info.version.to_le_bytes());
    h.update(info.name.as_bytes());
    SessionKey(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(receive_rate_bps: u64, loss_ppm: u32) -> ReceiverStats {
        ReceiverStats {
            receive_rate_bps,
            loss_ppm,
            ..ReceiverStats::default()
        }
    }

    #[test]
    fn no_receive_sample_means_no_growth() {
        let cfg = TableConfig::default();
        assert_eq!(
            adapt(&cfg, 400_000_000, 400_000_000, &stats(0, 0), true, 0, 0),
            400_000_000
        );
        // With a sample, a receiver keeping up grows (at most to twice what it receives).
        let grown = adapt(
            &cfg,
            400_000_000,
            400_000_000,
            &stats(400_000_000, 0),
            true,
            0,
            0,
        );
        assert!(
            grown > 400_000_000 && grown <= 800_000_000 + cfg.min_rate_bps,
            "{grown}"
        );
    }

    #[test]
    fn a_cooperating_receiver_taking_less_than_its_rate_is_not_settled_on() {
        let cfg = TableConfig::default();
        // 200 Mbit/s sent, 40 taken without loss: a lone receiver is settled on 45 Mbit/s...
        let lone = adapt(
            &cfg,
            200_000_000,
            200_000_000,
            &stats(40_000_000, 0),
            true,
            0,
            0,
        );
        assert_eq!(lone, 45_000_000);
        // ...a cooperating one (held back for its peers) keeps its rate.
        let coop = adapt(
            &cfg,
            200_000_000,
            200_000_000,
            &stats(40_000_000, 0),
            false,
            0,
            0,
        );
        assert!(coop >= 200_000_000, "{coop}");
        // Loss still cuts it, by a quarter (what it took says little: it was held back).
        let cut = adapt(
            &cfg,
            200_000_000,
            200_000_000,
            &stats(40_000_000, 100_000),
            false,
            0,
            0,
        );
        assert_eq!(cut, 150_000_000);
        // A lone receiver is cut towards what it took, at most halved.
        let lone = adapt(
            &cfg,
            200_000_000,
            200_000_000,
            &stats(40_000_000, 100_000),
            true,
            0,
            0,
        );
        assert_eq!(lone, 100_000_000);
    }

    #[test]
    fn loss_thresholds_widen_over_few_packets() {
        let cfg = TableConfig::default();
        // 4 % loss over 400 packets on a path losing 2 %: within three standard deviations
        // (2.1 %) of the floor, not a cut...
        let noise = loss_noise_ppm(20_000, 400);
        assert!((20_000..22_000).contains(&noise), "{noise}");
        let held = adapt(
            &cfg,
            60_000_000,
            60_000_000,
            &stats(58_000_000, 40_500),
            false,
            20_000,
            noise,
        );
        assert!(held >= 60_000_000, "{held}");
        // ...4.5 % over 20000 packets is one.
        let noise = loss_noise_ppm(20_000, 20_000);
        assert!(noise < 3_000, "{noise}");
        let cut = adapt(
            &cfg,
            60_000_000,
            60_000_000,
            &stats(58_000_000, 45_000),
            false,
            20_000,
            noise,
        );
        assert!(cut < 60_000_000, "{cut}");
    }

    #[test]
    fn random_loss_under_the_floor_neither_cuts_nor_stops_growth() {
        let cfg = TableConfig::default();
        // 2.4 % loss on a path that always loses 2 %: growth, not a cut.
        let grown = adapt(
            &cfg,
            60_000_000,
            60_000_000,
            &stats(58_000_000, 24_000),
            false,
            20_000,
            0,
        );
        assert!(grown > 60_000_000, "{grown}");
        // Without the floor the same report cuts.
        let cut = adapt(
            &cfg,
            60_000_000,
            60_000_000,
            &stats(58_000_000, 24_000),
            false,
            0,
            0,
        );
        assert!(cut < 60_000_000, "{cut}");
        // Congestion on top of the floor still cuts.
        let cut = adapt(
            &cfg,
            60_000_000,
            60_000_000,
            &stats(40_000_000, 150_000),
            false,
            20_000,
            0,
        );
        assert!(cut < 60_000_000, "{cut}");
    }

    #[test]
    fn a_lone_receiver_keeping_up_doubles_a_cooperating_one_grows_by_half() {
        let cfg = TableConfig::default();
        let g = 1_000_000_000;
        let lone = adapt(&cfg, g, g, &stats(g, 0), true, 0, 0);
        assert_eq!(lone, 2 * g);
        let coop = adapt(&cfg, g, g, &stats(g, 0), false, 0, 0);
        assert_eq!(coop, g + g / 2 + cfg.min_rate_bps);
        // Still at most twice what it takes.
        let lone = adapt(&cfg, 4 * g, 4 * g, &stats(3 * g + g / 2, 0), true, 0, 0);
        assert_eq!(lone, 7 * g);
    }

    #[test]
    fn one_lossy_interval_at_most_halves_the_rate() {
        let cfg = TableConfig::default();
        // 10 % loss while the receiver took only 50 Mbit/s of 1 Gbit/s sent: halve, not 7/8 of 50.
        let cut = adapt(
            &cfg,
            1_000_000_000,
            1_000_000_000,
            &stats(50_000_000, 100_000),
            true,
            0,
            0,
        );
        assert_eq!(cut, 500_000_000);
        // A mild overshoot is cut to 7/8 of what got through.
        let cut = adapt(
            &cfg,
            1_000_000_000,
            1_000_000_000,
            &stats(900_000_000, 100_000),
            true,
            0,
            0,
        );
        assert_eq!(cut, 900_000_000 / 8 * 7);
    }
}
