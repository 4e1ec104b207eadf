//! Cooperation bookkeeping of one client for one file: a sans-IO state machine over peer control
//! links, frames and time (DESIGN.md §5, issue 5).
//!
//! # Links
//! Two TCP control connections per peer pair: the *outbound* link this node opened to ask the peer
//! for packets (keyed by the peer's [`NodeId`]), and the *inbound* link the peer opened to ask us
//! (keyed by the driver's [`LinkId`]). Every link starts with a `Hello { role: Peer }` each way.
//!
//! # Asking (we receive)
//! [`Coop::set_want`] with the session being received → [`CoopAction::RequestPeers`] (the driver
//! sends `Peers` to the server and returns the answer to [`Coop::handle_peer_list`]) → up to
//! `max_sources` peers are connected ([`CoopAction::Connect`] / [`Coop::handle_peer_connected`]) and
//! asked (`AskCoop`). `CoopAck` makes the peer a source; `CoopDontHave` makes us try the next
//! candidate. Sources get a `CoopHeartbeat` with the stats the driver reports for them
//! ([`Coop::update_source_stats`]). [`Coop::segment_decoded`] (or [`Coop::clear_want`] when the
//! segment is abandoned) sends `StopCoop` to them.
//! [`Coop::segment_failed`] (digest mismatch) cuts every source of that segment off for it, and the
//! next [`Coop::set_want`] of that segment should pass `server_only = true`.
//!
//! # Serving (we send)
//! An `AskCoop` on an inbound link is acknowledged when we hold the segment (serve by *encoding* from
//! our copy) or are receiving it (serve by *recoding*), within `max_serving` streams; otherwise
//! `CoopDontHave`. A segment decoded and waiting for its digest verdict counts as received: its
//! streams (and new asks for it) stay, and switch to encoding when it verifies (they stop with
//! `CoopDontHave` if it fails). [`CoopAction::StartServing`] / [`CoopAction::StopServing`] tell the driver's
//! cooperation shard what to stream where. Asks repeated for the same session are acknowledged again
//! without a second stream. `StopCoop` stops one stream, `ExitCoop` all of the link's streams.
//!
//! # Liveness
//! Every link carries a `CoopHeartbeat` per active ask/stream every `heartbeat_interval` (an idle
//! link a bare `CoopHeartbeat` for [`SessionId::NONE`]); a link silent for `peer_timeout` is closed
//! and its streams/sources dropped. [`Coop::exit`] sends `ExitCoop` everywhere and closes every link.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::frame::{
    Frame, Hello, NodeId, PeerInfo, ReceiverStats, Role, SessionId, SessionKey, SessionMeta,
    PROTOCOL_VERSION,
};

/// Driver-assigned identity of one peer control connection (inbound or outbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// How a stream to a peer is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServeSource {
    /// Fresh coded packets from our complete copy of the segment.
    Encode,
    /// Recoded packets from the bounded buffer of the segment we are receiving.
    Recode,
}

/// Settings of the cooperation bookkeeping.
#[derive(Debug, Clone)]
pub struct CoopConfig {
    /// Most peers asked at once for the segment being received.
    pub max_sources: usize,
    /// Most streams served to peers at once (upload slots).
    pub max_serving: usize,
    /// Heartbeat period on every link.
    pub heartbeat_interval: Duration,
    /// A link silent this long is dropped.
    pub peer_timeout: Duration,
    /// Ask the server for peers again this often while sources are missing.
    pub peers_refresh: Duration,
}

impl Default for CoopConfig {
    fn default() -> Self {
        Self {
            max_sources: 4,
            max_serving: 8,
            heartbeat_interval: Duration::from_millis(250),
            peer_timeout: Duration::from_secs(3),
            peers_refresh: Duration::from_secs(1),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoopAction {
    /// Send `Frame::Peers(PeersQuery::Segment { name, segment })` to the server and feed the
    /// `PeerList` to [`Coop::handle_peer_list`].
    RequestPeers {
        /// File name.
        name: String,
        /// Segment index.
        segment: u32,
    },
    /// Open an outbound control connection to a peer; report [`Coop::handle_peer_connected`] or
    /// [`Coop::handle_peer_connect_failed`].
    Connect {
        /// The peer.
        node: NodeId,
        /// Its cooperation listener.
        addr: SocketAddr,
    },
    /// Send a frame on a link.
    Send {
        /// The link.
        link: LinkId,
        /// The frame.
        frame: Frame,
    },
    /// Close a link (do not report it back).
    Close {
        /// The link.
        link: LinkId,
    },
    /// Start streaming packets of `segment` to `to`, sealed with `key` under `session`.
    StartServing {
        /// The inbound link of the asker.
        link: LinkId,
        /// The asker's session id (carried in the data packets).
        session: SessionId,
        /// Segment index.
        segment: u32,
        /// The asker's session key.
        key: SessionKey,
        /// The asker's UDP address.
        to: SocketAddr,
        /// Encode from our copy or recode from our buffer.
        source: ServeSource,
    },
    /// The segment we were recoding for this stream is now complete: encode from our copy.
    ServeFromCopy {
        /// The inbound link.
        link: LinkId,
        /// The asker's session.
        session: SessionId,
    },
    /// Stop a stream.
    StopServing {
        /// The inbound link.
        link: LinkId,
        /// The asker's session.
        session: SessionId,
    },
    /// What the asker reports about our stream (for pacing it).
    ServingStats {
        /// The inbound link.
        link: LinkId,
        /// The asker's session.
        session: SessionId,
        /// The asker's statistics of our packets.
        stats: ReceiverStats,
    },
}

#[derive(Debug, Clone)]
struct Want {
    meta: SessionMeta,
    receive_addr: SocketAddr,
    server_only: bool,
    candidates: VecDeque<PeerInfo>,
    next_peers_request: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    Connecting { since: Instant },
    Open { link: LinkId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ask {
    session: SessionId,
    segment: u32,
    acked: bool,
}

#[derive(Debug)]
struct Outbound {
    state: OutState,
    last_heard: Instant,
    next_heartbeat: Instant,
    ask: Option<Ask>,
    /// Segments this peer said it lacks (not asked again until a new peer list says otherwise).
    lacking: BTreeSet<u32>,
    /// Segments this peer is cut off for (it contributed to a segment that failed its digest).
    banned: BTreeSet<u32>,
    /// Segments this peer acknowledged (contributed to) since they were last wanted.
    contributed: BTreeSet<u32>,
    stats: ReceiverStats,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    segment: u32,
    source: ServeSource,
}

#[derive(Debug)]
struct Inbound {
    hello: bool,
    last_heard: Instant,
    next_heartbeat: Instant,
    streams: BTreeMap<SessionId, Stream>,
}

/// One client's cooperation state for one file (see the module docs).
#[derive(Debug)]
pub struct Coop {
    config: CoopConfig,
    node_id: NodeId,
    data_addr: SocketAddr,
    control_addr: SocketAddr,
    name: String,
    completed: BTreeSet<u32>,
    /// Segments decoded whose digest verdict is pending.
    verifying: BTreeSet<u32>,
    want: Option<Want>,
    outbound: BTreeMap<NodeId, Outbound>,
    inbound: BTreeMap<LinkId, Inbound>,
    exited: bool,
    actions: VecDeque<CoopAction>,
}

impl Coop {
    /// Bookkeeping for file `name`, of which `completed` segments are held (verified).
    pub fn new(
        config: CoopConfig,
        node_id: NodeId,
        data_addr: SocketAddr,
        control_addr: SocketAddr,
        name: impl Into<String>,
        completed: impl IntoIterator<Item = u32>,
    ) -> Self {
        Self {
            config,
            node_id,
            data_addr,
            control_addr,
            name: name.into(),
            completed: completed.into_iter().collect(),
            verifying: BTreeSet::new(),
            want: None,
            outbound: BTreeMap::new(),
            inbound: BTreeMap::new(),
            exited: false,
            actions: VecDeque::new(),
        }
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<CoopAction> {
        self.actions.pop_front()
    }

    /// Peers currently acknowledged as sources of the wanted segment.
    pub fn sources(&self) -> Vec<NodeId> {
        self.outbound
            .iter()
            .filter(|(_, o)| o.ask.is_some_and(|a| a.acked))
            .map(|(n, _)| *n)
            .collect()
    }

    /// Streams currently served: (link, session, segment, source).
    pub fn streams(&self) -> Vec<(LinkId, SessionId, u32, ServeSource)> {
        self.inbound
            .iter()
            .flat_map(|(l, i)| {
                i.streams
                    .iter()
                    .map(move |(s, st)| (*l, *s, st.segment, st.source))
            })
            .collect()
    }

    /// Whether `node` is cut off for `segment`.
    pub fn is_banned(&self, node: NodeId, segment: u32) -> bool {
        self.outbound
            .get(&node)
            .is_some_and(|o| o.banned.contains(&segment))
    }

    /// We now receive `meta`'s segment at `receive_addr`: ask peers for it unless `server_only`
    /// (a segment that failed its digest is fetched from the server alone). Streams recoding another
    /// (unfinished) segment stop with `CoopDontHave`.
    pub fn set_want(
        &mut self,
        now: Instant,
        meta: SessionMeta,
        receive_addr: SocketAddr,
        server_only: bool,
    ) {
        if self.exited || meta.name != self.name {
            return;
        }
        self.clear_want(now);
        let segment = meta.segment;
        // Streams recoding another segment lose their buffer (the driver drops it): tell them. A
        // segment waiting for its verdict keeps its streams (they encode once it verifies).
        let verifying = self.verifying.clone();
        self.stop_recoding(|s| s != segment && !verifying.contains(&s));
        self.want = Some(Want {
            meta,
            receive_addr,
            server_only,
            candidates: VecDeque::new(),
            next_peers_request: now + self.config.peers_refresh,
        });
        if !server_only {
            self.actions.push_back(CoopAction::RequestPeers {
                name: self.name.clone(),
                segment,
            });
        }
    }

    /// The wanted segment is decoded (or abandoned): `StopCoop` to its sources.
    pub fn clear_want(&mut self, _now: Instant) {
        if self.want.take().is_none() {
            return;
        }
        for o in self.outbound.values_mut() {
            let Some(ask) = o.ask.take() else { continue };
            if let OutState::Open { link } = o.state {
                self.actions.push_back(CoopAction::Send {
                    link,
                    frame: Frame::StopCoop {
                        session: ask.session,
                    },
                });
            }
        }
        // Contributions (who acknowledged) are kept until the segment verifies (segment_completed)
        // or fails its digest (segment_failed).
    }

    /// The wanted segment `segment` decoded: `StopCoop` to its sources; it counts as received until
    /// its digest verdict ([`Coop::segment_completed`] or [`Coop::segment_failed`]).
    pub fn segment_decoded(&mut self, now: Instant, segment: u32) {
        if self
            .want
            .as_ref()
            .is_some_and(|w| w.meta.segment == segment)
        {
            self.clear_want(now);
            self.verifying.insert(segment);
        }
    }

    /// Segment `segment` verified: we hold it; streams recoding it switch to encoding from our copy.
    pub fn segment_completed(&mut self, _now: Instant, segment: u32) {
        self.verifying.remove(&segment);
        self.completed.insert(segment);
        for o in self.outbound.values_mut() {
            o.contributed.remove(&segment);
        }
        for (link, i) in &mut self.inbound {
            for (session, st) in &mut i.streams {
                if st.segment == segment && st.source == ServeSource::Recode {
                    st.source = ServeSource::Encode;
                    self.actions.push_back(CoopAction::ServeFromCopy {
                        link: *link,
                        session: *session,
                    });
                }
            }
        }
    }

    /// Segment `segment` failed its digest: every peer that contributed to it is cut off for it,
    /// and streams recoding it (from a polluted buffer) stop with `CoopDontHave`.
    pub fn segment_failed(&mut self, now: Instant, segment: u32) {
        self.verifying.remove(&segment);
        if self
            .want
            .as_ref()
            .is_some_and(|w| w.meta.segment == segment)
        {
            self.clear_want(now);
        }
        for o in self.outbound.values_mut() {
            if o.contributed.remove(&segment) {
                o.banned.insert(segment);
            }
        }
        self.stop_recoding(|s| s == segment);
    }

    /// Stops (with `CoopDontHave`) the streams recoding a segment that `which` selects.
    fn stop_recoding(&mut self, which: impl Fn(u32) -> bool) {
        for (link, i) in &mut self.inbound {
            let stale: Vec<SessionId> = i
                .streams
                .iter()
                .filter(|(_, st)| st.source == ServeSource::Recode && which(st.segment))
                .map(|(s, _)| *s)
                .collect();
            for session in stale {
                i.streams.remove(&session);
                self.actions.push_back(CoopAction::StopServing {
                    link: *link,
                    session,
                });
                self.actions.push_back(CoopAction::Send {
                    link: *link,
                    frame: Frame::CoopDontHave { session },
                });
            }
        }
    }

    /// Receive statistics of the packets from `node` (sent to it in the next heartbeat).
    pub fn update_source_stats(&mut self, node: NodeId, stats: ReceiverStats) {
        if let Some(o) = self.outbound.get_mut(&node) {
            o.stats = stats;
        }
    }

    /// The server's answer to [`CoopAction::RequestPeers`].
    pub fn handle_peer_list(
        &mut self,
        now: Instant,
        name: &str,
        segment: u32,
        peers: Vec<PeerInfo>,
    ) {
        let Some(want) = &mut self.want else { return };
        if name != self.name || want.meta.segment != segment || want.server_only {
            return;
        }
        want.candidates = peers
            .into_iter()
            .filter(|p| p.node_id != self.node_id)
            .collect();
        want.next_peers_request = now + self.config.peers_refresh;
        for o in self.outbound.values_mut() {
            // A fresh list is fresh information: peers may have got the segment since.
            o.lacking.remove(&segment);
        }
        self.fill_sources(now);
    }

    /// An outbound connection to `node` is up as `link`.
    pub fn handle_peer_connected(&mut self, now: Instant, node: NodeId, link: LinkId) {
        let hello = self.hello();
        let Some(o) = self.outbound.get_mut(&node) else {
            self.actions.push_back(CoopAction::Close { link });
            return;
        };
        if !matches!(o.state, OutState::Connecting { .. }) || self.exited {
            self.actions.push_back(CoopAction::Close { link });
            return;
        }
        o.state = OutState::Open { link };
        o.last_heard = now;
        o.next_heartbeat = now + self.config.heartbeat_interval;
        self.actions
            .push_back(CoopAction::Send { link, frame: hello });
        self.ask(now, node);
    }

    /// An outbound connection to `node` could not be opened.
    pub fn handle_peer_connect_failed(&mut self, now: Instant, node: NodeId) {
        if self
            .outbound
            .get(&node)
            .is_some_and(|o| matches!(o.state, OutState::Connecting { .. }))
        {
            self.outbound.remove(&node);
            self.fill_sources(now);
        }
    }

    /// A peer opened an inbound connection as `link`.
    pub fn handle_inbound(&mut self, now: Instant, link: LinkId) {
        if self.exited {
            self.actions.push_back(CoopAction::Close { link });
            return;
        }
        self.inbound.insert(
            link,
            Inbound {
                hello: false,
                last_heard: now,
                next_heartbeat: now + self.config.heartbeat_interval,
                streams: BTreeMap::new(),
            },
        );
    }

    /// A link closed or broke (either direction).
    pub fn handle_disconnected(&mut self, now: Instant, link: LinkId) {
        if let Some(i) = self.inbound.remove(&link) {
            for session in i.streams.keys() {
                self.actions.push_back(CoopAction::StopServing {
                    link,
                    session: *session,
                });
            }
            return;
        }
        if let Some(node) = self.node_of(link) {
            self.outbound.remove(&node);
            self.fill_sources(now);
        }
    }

    /// A frame on `link`.
    pub fn handle_frame(&mut self, now: Instant, link: LinkId, frame: Frame) {
        if self.inbound.contains_key(&link) {
            self.inbound_frame(now, link, frame);
        } else if let Some(node) = self.node_of(link) {
            self.outbound_frame(now, node, link, frame);
        }
    }

    /// Leave: `ExitCoop` on every link, stop every stream, close every link.
    pub fn exit(&mut self, _now: Instant) {
        if self.exited {
            return;
        }
        self.exited = true;
        self.want = None;
        for (link, i) in std::mem::take(&mut self.inbound) {
            for session in i.streams.keys() {
                self.actions.push_back(CoopAction::StopServing {
                    link,
                    session: *session,
                });
            }
            self.actions.push_back(CoopAction::Send {
                link,
                frame: Frame::ExitCoop,
            });
            self.actions.push_back(CoopAction::Close { link });
        }
        for (_, o) in std::mem::take(&mut self.outbound) {
            if let OutState::Open { link } = o.state {
                self.actions.push_back(CoopAction::Send {
                    link,
                    frame: Frame::ExitCoop,
                });
                self.actions.push_back(CoopAction::Close { link });
            }
        }
    }

    /// When [`Coop::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timeout = self.config.peer_timeout;
        let out = self.outbound.values().map(|o| match o.state {
            OutState::Connecting { since } => since + timeout,
            OutState::Open { .. } => o.next_heartbeat.min(o.last_heard + timeout),
        });
        let inb = self
            .inbound
            .values()
            .map(|i| i.next_heartbeat.min(i.last_heard + timeout));
        let peers = self
            .want
            .as_ref()
            .filter(|w| !w.server_only)
            .map(|w| w.next_peers_request);
        out.chain(inb).chain(peers).min()
    }

    /// Heartbeats, silent links, stuck connects, peer-list refresh.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.peer_timeout;
        let interval = self.config.heartbeat_interval;
        // Outbound links.
        let nodes: Vec<NodeId> = self.outbound.keys().copied().collect();
        let mut lost = false;
        for node in nodes {
            let Some(o) = self.outbound.get_mut(&node) else {
                continue;
            };
            match o.state {
                OutState::Connecting { since } => {
                    if now >= since + timeout {
                        self.outbound.remove(&node);
                        lost = true;
                    }
                }
                OutState::Open { link } => {
                    if now >= o.last_heard + timeout {
                        self.outbound.remove(&node);
                        self.actions.push_back(CoopAction::Close { link });
                        lost = true;
                    } else if now >= o.next_heartbeat {
                        o.next_heartbeat = now + interval;
                        let (session, stats) = match o.ask {
                            Some(a) => (a.session, o.stats),
                            None => (SessionId::NONE, ReceiverStats::default()),
                        };
                        self.actions.push_back(CoopAction::Send {
                            link,
                            frame: Frame::CoopHeartbeat { session, stats },
                        });
                    }
                }
            }
        }
        // Inbound links.
        let links: Vec<LinkId> = self.inbound.keys().copied().collect();
        for link in links {
            let Some(i) = self.inbound.get_mut(&link) else {
                continue;
            };
            if now >= i.last_heard + timeout {
                let i = self.inbound.remove(&link);
                for session in i.iter().flat_map(|i| i.streams.keys()) {
                    self.actions.push_back(CoopAction::StopServing {
                        link,
                        session: *session,
                    });
                }
                self.actions.push_back(CoopAction::Close { link });
            } else if now >= i.next_heartbeat {
                i.next_heartbeat = now + interval;
                let sessions: Vec<SessionId> = if i.streams.is_empty() {
                    vec![SessionId::NONE]
                } else {
                    i.streams.keys().copied().collect()
                };
                for session in sessions {
                    self.actions.push_back(CoopAction::Send {
                        link,
                        frame: Frame::CoopHeartbeat {
                            session,
                            stats: ReceiverStats::default(),
                        },
                    });
                }
            }
        }
        // Peer-list refresh while sources are missing.
        if let Some(w) = &mut self.want {
            if !w.server_only && now >= w.next_peers_request {
                w.next_peers_request = now + self.config.peers_refresh;
                let active = self.outbound.values().filter(|o| o.ask.is_some()).count();
                if active < self.config.max_sources {
                    self.actions.push_back(CoopAction::RequestPeers {
                        name: self.name.clone(),
                        segment: w.meta.segment,
                    });
                }
            }
        }
        if lost {
            self.fill_sources(now);
        }
    }

    fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: Role::Peer,
            node_id: self.node_id,
            data_addr: Some(self.data_addr),
            control_addr: Some(self.control_addr),
        })
    }

    fn node_of(&self, link: LinkId) -> Option<NodeId> {
        self.outbound
            .iter()
            .find(|(_, o)| o.state == OutState::Open { link })
            .map(|(n, _)| *n)
    }

    /// Connects to / asks candidates until `max_sources` asks are pending or active.
    fn fill_sources(&mut self, now: Instant) {
        let Some(want) = &mut self.want else { return };
        if want.server_only || self.exited {
            return;
        }
        let segment = want.meta.segment;
        loop {
            let busy = self
                .outbound
                .values()
                .filter(|o| o.ask.is_some() || matches!(o.state, OutState::Connecting { .. }))
                .count();
            if busy >= self.config.max_sources {
                return;
            }
            let Some(want) = &mut self.want else { return };
            let Some(peer) = want.candidates.pop_front() else {
                return;
            };
            match self.outbound.get(&peer.node_id) {
                Some(o)
                    if o.ask.is_some()
                        || o.banned.contains(&segment)
                        || o.lacking.contains(&segment) =>
                {
                    continue
                }
                Some(o) if matches!(o.state, OutState::Connecting { .. }) => continue,
                Some(_) => self.ask(now, peer.node_id),
                None => {
                    self.outbound.insert(
                        peer.node_id,
                        Outbound {
                            state: OutState::Connecting { since: now },
                            last_heard: now,
                            next_heartbeat: now + self.config.heartbeat_interval,
                            ask: None,
                            lacking: BTreeSet::new(),
                            banned: BTreeSet::new(),
                            contributed: BTreeSet::new(),
                            stats: ReceiverStats::default(),
                        },
                    );
                    self.actions.push_back(CoopAction::Connect {
                        node: peer.node_id,
                        addr: peer.control_addr,
                    });
                }
            }
        }
    }

    /// Sends `AskCoop` for the wanted segment to an open outbound link.
    fn ask(&mut self, _now: Instant, node: NodeId) {
        let Some(want) = &self.want else { return };
        if want.server_only {
            return;
        }
        let Some(o) = self.outbound.get_mut(&node) else {
            return;
        };
        let OutState::Open { link } = o.state else {
            return;
        };
        let segment = want.meta.segment;
        if o.ask.is_some() || o.banned.contains(&segment) || o.lacking.contains(&segment) {
            return;
        }
        o.ask = Some(Ask {
            session: want.meta.session,
            segment,
            acked: false,
        });
        o.stats = ReceiverStats::default();
        self.actions.push_back(CoopAction::Send {
            link,
            frame: Frame::AskCoop {
                name: self.name.clone(),
                segment,
                session: want.meta.session,
                key: want.meta.key,
                receive_addr: want.receive_addr,
            },
        });
    }

    fn outbound_frame(&mut self, now: Instant, node: NodeId, link: LinkId, frame: Frame) {
        let Some(o) = self.outbound.get_mut(&node) else {
            return;
        };
        o.last_heard = now;
        match frame {
            Frame::Hello(h) if h.role == Role::Peer => {}
            Frame::CoopAck { session } => {
                if let Some(a) = &mut o.ask {
                    if a.session == session {
                        a.acked = true;
                        o.contributed.insert(a.segment);
                    }
                }
            }
            Frame::CoopDontHave { session } => {
                if o.ask.is_some_and(|a| a.session == session) {
                    let a = o.ask.take();
                    if let Some(a) = a {
                        o.lacking.insert(a.segment);
                    }
                    self.fill_sources(now);
                }
            }
            Frame::CoopHeartbeat { .. } => {}
            Frame::ExitCoop => {
                self.outbound.remove(&node);
                self.actions.push_back(CoopAction::Close { link });
                self.fill_sources(now);
            }
            _ => {
                // Anything else on our outbound link is a protocol violation: drop the peer.
                self.outbound.remove(&node);
                self.actions.push_back(CoopAction::Close { link });
                self.fill_sources(now);
            }
        }
    }

    fn inbound_frame(&mut self, now: Instant, link: LinkId, frame: Frame) {
        let hello = self.hello();
        let streams_total: usize = self.inbound.values().map(|i| i.streams.len()).sum();
        let Some(i) = self.inbound.get_mut(&link) else {
            return;
        };
        i.last_heard = now;
        if !i.hello {
            if let Frame::Hello(h) = &frame {
                if h.role == Role::Peer && h.version == PROTOCOL_VERSION {
                    i.hello = true;
                    self.actions
                        .push_back(CoopAction::Send { link, frame: hello });
                    return;
                }
            }
            self.drop_inbound(link);
            return;
        }
        match frame {
            Frame::AskCoop {
                name,
                segment,
                session,
                key,
                receive_addr,
            } => {
                let source = if name != self.name {
                    None
                } else if self.completed.contains(&segment) {
                    Some(ServeSource::Encode)
                } else if self
                    .want
                    .as_ref()
                    .is_some_and(|w| w.meta.segment == segment)
                    || self.verifying.contains(&segment)
                {
                    Some(ServeSource::Recode)
                } else {
                    None
                };
                if i.streams.contains_key(&session) {
                    // Duplicate ask: acknowledge again, one stream only.
                    self.actions.push_back(CoopAction::Send {
                        link,
                        frame: Frame::CoopAck { session },
                    });
                    return;
                }
                match source {
                    Some(source) if streams_total < self.config.max_serving => {
                        i.streams.insert(session, Stream { segment, source });
                        self.actions.push_back(CoopAction::Send {
                            link,
                            frame: Frame::CoopAck { session },
                        });
                        self.actions.push_back(CoopAction::StartServing {
                            link,
                            session,
                            segment,
                            key,
                            to: receive_addr,
                            source,
                        });
                    }
                    _ => self.actions.push_back(CoopAction::Send {
                        link,
                        frame: Frame::CoopDontHave { session },
                    }),
                }
            }
            Frame::StopCoop { session } => {
                if i.streams.remove(&session).is_some() {
                    self.actions
                        .push_back(CoopAction::StopServing { link, session });
                }
            }
            Frame::CoopHeartbeat { session, stats } => {
                if i.streams.contains_key(&session) {
                    self.actions.push_back(CoopAction::ServingStats {
                        link,
                        session,
                        stats,
                    });
                }
            }
            Frame::ExitCoop => self.drop_inbound(link),
            _ => self.drop_inbound(link),
        }
    }

    fn drop_inbound(&mut self, link: LinkId) {
        if let Some(i) = self.inbound.remove(&link) {
            for session in i.streams.keys() {
                self.actions.push_back(CoopAction::StopServing {
                    link,
                    session: *session,
                });
            }
            self.actions.push_back(CoopAction::Close { link });
        }
    }
}
