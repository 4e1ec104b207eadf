//! Cooperation bookkeeping in memory: real `Coop` state machines exchanging encoded frames over
//! simulated peer links (latency, frozen peers, dropped connections), in simulated time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ccfd_proto::*;

const NAME: &str = "f";

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1 + i as u8))
}

fn node_id(i: usize) -> NodeId {
    NodeId(500 + i as u64)
}

fn session_meta(segment: u32, session: u32) -> SessionMeta {
    SessionMeta {
        session: SessionId(session),
        name: NAME.into(),
        segment,
        data_port: 20000 + session as u16,
        code: CodeParamsWire {
            segment_size: 1000,
            symbol_size: 100,
            kind: CodeKind::Band,
            subgen_size: 8,
            stride: 4,
            checks: 0,
            field: FieldKind::Gf2,
            systematic: false,
        },
        key: SessionKey([session as u8; 32]),
        segment_len: 1000,
        version: 1,
    }
}

fn peer(i: usize, holding: PeerHolding) -> PeerInfo {
    PeerInfo {
        node_id: node_id(i),
        control_addr: SocketAddr::new(ip(i), 7700),
        data_addr: Some(SocketAddr::new(ip(i), 9000)),
        holding,
        rank: 0,
        segments_held: 0,
    }
}

struct Link {
    opener: usize,
    acceptor: usize,
    to_acceptor: VecDeque<(Instant, Vec<u8>)>,
    to_opener: VecDeque<(Instant, Vec<u8>)>,
}

#[derive(Default)]
struct Served {
    streams: BTreeMap<(LinkId, SessionId), (u32, ServeSource, SocketAddr)>,
    started: u64,
    stats_reports: u64,
    last_stats: Option<ReceiverStats>,
    switched: Vec<(LinkId, SessionId)>,
}

struct CNode {
    coop: Coop,
    frozen: bool,
    dead: bool,
    served: Served,
    peer_requests: Vec<u32>,
    /// Peer list the "server" answers RequestPeers with.
    directory: Vec<PeerInfo>,
    connects: Vec<NodeId>,
}

struct Net {
    now: Instant,
    nodes: Vec<CNode>,
    links: BTreeMap<LinkId, Link>,
    next_link: u64,
    latency: Duration,
}

impl Net {
    fn new(n: usize, cfg: CoopConfig, completed: &[&[u32]]) -> Self {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| CNode {
                coop: Coop::new(
                    cfg.clone(),
                    node_id(i),
                    SocketAddr::new(ip(i), 9000),
                    SocketAddr::new(ip(i), 7700),
                    NAME,
                    completed.get(i).copied().unwrap_or(&[]).iter().copied(),
                ),
                frozen: false,
                dead: false,
                served: Served::default(),
                peer_requests: Vec::new(),
                directory: Vec::new(),
                connects: Vec::new(),
            })
            .collect();
        Self {
            now,
            nodes,
            links: BTreeMap::new(),
            next_link: 1,
            latency: Duration::from_millis(3),
        }
    }

    fn index_of(&self, node: NodeId) -> usize {
        (node.0 - 500) as usize
    }

    fn send(&mut self, from: usize, link: LinkId, frame: Frame) {
        let at = self.now + self.latency;
        let bytes = frame.to_bytes().unwrap();
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.opener == from {
            l.to_acceptor.push_back((at, bytes));
        } else {
            l.to_opener.push_back((at, bytes));
        }
    }

    fn close(&mut self, link: LinkId) {
        if let Some(l) = self.links.remove(&link) {
            for side in [l.opener, l.acceptor] {
                if !self.nodes[side].dead {
                    self.nodes[side].coop.handle_disconnected(self.now, link);
                }
            }
        }
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].dead = true;
        let mine: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.opener == i || l.acceptor == i)
            .map(|(k, _)| *k)
            .collect();
        for link in mine {
            self.close(link);
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].coop.poll_action() {
            match a {
                CoopAction::RequestPeers { name, segment } => {
                    assert_eq!(name, NAME);
                    self.nodes[i].peer_requests.push(segment);
                    let peers = self.nodes[i].directory.clone();
                    self.nodes[i]
                        .coop
                        .handle_peer_list(self.now, NAME, segment, peers);
                }
                CoopAction::Connect { node, addr } => {
                    self.nodes[i].connects.push(node);
                    let j = self.index_of(node);
                    assert_eq!(addr.ip(), ip(j));
                    if self.nodes[j].dead {
                        self.nodes[i]
                            .coop
                            .handle_peer_connect_failed(self.now, node);
                    } else {
                        let link = LinkId(self.next_link);
                        self.next_link += 1;
                        self.links.insert(
                            link,
                            Link {
                                opener: i,
                                acceptor: j,
                                to_acceptor: VecDeque::new(),
                                to_opener: VecDeque::new(),
                            },
                        );
                        self.nodes[j].coop.handle_inbound(self.now, link);
                        self.nodes[i]
                            .coop
                            .handle_peer_connected(self.now, node, link);
                    }
                }
                CoopAction::Send { link, frame } => self.send(i, link, frame),
                CoopAction::Close { link } => self.close(link),
                CoopAction::StartServing {
                    link,
                    session,
                    segment,
                    to,
                    source,
                    ..
                } => {
                    let s = &mut self.nodes[i].served;
                    assert!(
                        s.streams
                            .insert((link, session), (segment, source, to))
                            .is_none(),
                        "stream started twice"
                    );
                    s.started += 1;
                }
                CoopAction::ServeFromCopy { link, session } => {
                    let s = &mut self.nodes[i].served;
                    let st = s
                        .streams
                        .get_mut(&(link, session))
                        .expect("switch of unknown stream");
                    assert_eq!(st.1, ServeSource::Recode);
                    st.1 = ServeSource::Encode;
                    s.switched.push((link, session));
                }
                CoopAction::StopServing { link, session } => {
                    let s = &mut self.nodes[i].served;
                    assert!(
                        s.streams.remove(&(link, session)).is_some(),
                        "unknown stream stopped"
                    );
                }
                CoopAction::ServingStats {
                    link,
                    session,
                    stats,
                } => {
                    let s = &mut self.nodes[i].served;
                    assert!(s.streams.contains_key(&(link, session)));
                    s.stats_reports += 1;
                    s.last_stats = Some(stats);
                }
            }
        }
    }

    fn step(&mut self, dt: Duration) {
        self.now += dt;
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            while let Some(l) = self.links.get_mut(&link) {
                let (opener, acceptor) = (l.opener, l.acceptor);
                let to_acc = if self.nodes[acceptor].frozen {
                    None
                } else if l.to_acceptor.front().is_some_and(|(t, _)| *t <= self.now) {
                    l.to_acceptor.pop_front()
                } else {
                    None
                };
                if let Some((_, bytes)) = to_acc {
                    let f = Frame::decode_body(&bytes[4..]).unwrap();
                    self.nodes[acceptor].coop.handle_frame(self.now, link, f);
                    self.drain(acceptor);
                    continue;
                }
                let Some(l) = self.links.get_mut(&link) else {
                    break;
                };
                let to_open = if self.nodes[opener].frozen {
                    None
                } else if l.to_opener.front().is_some_and(|(t, _)| *t <= self.now) {
                    l.to_opener.pop_front()
                } else {
                    None
                };
                if let Some((_, bytes)) = to_open {
                    let f = Frame::decode_body(&bytes[4..]).unwrap();
                    self.nodes[opener].coop.handle_frame(self.now, link, f);
                    self.drain(opener);
                    continue;
                }
                break;
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].frozen || self.nodes[i].dead {
                continue;
            }
            if self.nodes[i]
                .coop
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                self.nodes[i].coop.handle_timeout(self.now);
            }
            self.drain(i);
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(Duration::from_millis(5));
        }
    }

    fn want(&mut self, i: usize, segment: u32, session: u32, server_only: bool) {
        let addr = SocketAddr::new(ip(i), 9000);
        self.nodes[i]
            .coop
            .set_want(self.now, session_meta(segment, session), addr, server_only);
        self.drain(i);
    }

    fn streams_to(&self, from: usize) -> BTreeSet<(u32, ServeSource, IpAddr)> {
        self.nodes[from]
            .served
            .streams
            .values()
            .map(|(seg, src, to)| (*seg, *src, to.ip()))
            .collect()
    }
}

#[test]
fn holder_encodes_receiver_recodes_and_both_stop_when_decoded() {
    // 0 holds segment 0, 1 receives it, 2 wants it.
    let mut net = Net::new(3, CoopConfig::default(), &[&[0], &[], &[]]);
    net.want(1, 0, 7, false);
    net.nodes[2].directory = vec![
        peer(0, PeerHolding::Complete),
        peer(1, PeerHolding::Receiving),
    ];
    net.want(2, 0, 7, false);
    net.run(Duration::from_millis(100));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(0), node_id(1)]);
    assert_eq!(
        net.streams_to(0),
        BTreeSet::from([(0, ServeSource::Encode, ip(2))])
    );
    assert_eq!(
        net.streams_to(1),
        BTreeSet::from([(0, ServeSource::Recode, ip(2))])
    );
    // Streams carry the asker's session and key (checked through the action in `drain`), and the
    // asker's heartbeats reach the senders as stats for pacing; the links stay up for long.
    net.run(Duration::from_secs(10));
    assert!(net.nodes[0].served.stats_reports >= 30);
    assert_eq!(net.nodes[2].coop.sources().len(), 2);
    // 1 finishes the segment: its recoded stream switches to encoding from its copy.
    net.nodes[1].coop.segment_completed(net.now, 0);
    net.drain(1);
    assert_eq!(net.nodes[1].served.switched.len(), 1);
    // 2 decodes: StopCoop everywhere.
    net.nodes[2].coop.clear_want(net.now);
    net.drain(2);
    net.run(Duration::from_millis(50));
    assert!(net.nodes[0].served.streams.is_empty());
    assert!(net.nodes[1].served.streams.is_empty());
    assert!(net.nodes[2].coop.sources().is_empty());
    // Links stay open (reused for the next segment), kept alive by idle heartbeats.
    net.run(Duration::from_secs(10));
    assert_eq!(net.links.len(), 2);
    // Next segment: held by 0 only; 2 asks 0 on the existing link (no new connect).
    net.nodes[0].coop.segment_completed(net.now, 1);
    net.nodes[2].directory = vec![peer(0, PeerHolding::Complete)];
    net.want(2, 1, 8, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[2].connects.len(), 2);
    assert_eq!(
        net.streams_to(0),
        BTreeSet::from([(1, ServeSource::Encode, ip(2))])
    );
}

#[test]
fn dont_have_moves_on_to_the_next_candidate() {
    let cfg = CoopConfig {
        max_sources: 1,
        ..CoopConfig::default()
    };
    // 1 claims nothing, 0 holds segment 3.
    let mut net = Net::new(3, cfg, &[&[3], &[], &[]]);
    net.nodes[2].directory = vec![
        peer(1, PeerHolding::Complete),
        peer(0, PeerHolding::Complete),
    ];
    net.want(2, 3, 4, false);
    net.run(Duration::from_millis(100));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(0)]);
    assert!(net.streams_to(1).is_empty());
    assert_eq!(net.streams_to(0).len(), 1);
    // A refresh does not re-ask anyone while the source count is full.
    net.run(Duration::from_secs(3));
    assert_eq!(net.nodes[0].served.started, 1);
    assert_eq!(net.nodes[2].connects, vec![node_id(1), node_id(0)]);
}

#[test]
fn duplicate_asks_get_one_stream() {
    let mut net = Net::new(2, CoopConfig::default(), &[&[0], &[]]);
    net.nodes[1].directory = vec![peer(0, PeerHolding::Complete)];
    net.want(1, 0, 9, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[0].served.started, 1);
    // The asker repeats itself (e.g. a retransmitted request after a hiccup).
    let link = *net.links.keys().next().unwrap();
    let ask = Frame::AskCoop {
        name: NAME.into(),
        segment: 0,
        session: SessionId(9),
        key: SessionKey([9; 32]),
        receive_addr: SocketAddr::new(ip(1), 9000),
    };
    for _ in 0..3 {
        net.nodes[0].coop.handle_frame(net.now, link, ask.clone());
    }
    let acks: Vec<CoopAction> = std::iter::from_fn(|| net.nodes[0].coop.poll_action()).collect();
    assert_eq!(
        acks,
        vec![
            CoopAction::Send {
                link,
                frame: Frame::CoopAck {
                    session: SessionId(9)
                }
            };
            3
        ]
    );
    assert_eq!(net.nodes[0].coop.streams().len(), 1);
}

#[test]
fn asks_for_missing_segments_wrong_files_and_over_the_slots_get_dont_have() {
    let cfg = CoopConfig {
        max_serving: 1,
        ..CoopConfig::default()
    };
    let mut net = Net::new(3, cfg, &[&[0], &[], &[]]);
    net.nodes[1].directory = vec![peer(0, PeerHolding::Complete)];
    net.nodes[2].directory = vec![peer(0, PeerHolding::Complete)];
    net.want(1, 0, 1, false);
    net.run(Duration::from_millis(50));
    // Slot taken: 2 is told no.
    net.want(2, 0, 2, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[0].coop.streams().len(), 1);
    assert!(net.nodes[2].coop.sources().is_empty());
    // A segment 0 does not have, and another file: no.
    let link = net
        .links
        .iter()
        .find(|(_, l)| l.opener == 1)
        .map(|(k, _)| *k)
        .unwrap();
    for (name, segment) in [(NAME, 5u32), ("other", 0)] {
        net.nodes[0].coop.handle_frame(
            net.now,
            link,
            Frame::AskCoop {
                name: name.into(),
                segment,
                session: SessionId(77),
                key: SessionKey([0; 32]),
                receive_addr: SocketAddr::new(ip(1), 9000),
            },
        );
        assert_eq!(
            net.nodes[0].coop.poll_action(),
            Some(CoopAction::Send {
                link,
                frame: Frame::CoopDontHave {
                    session: SessionId(77)
                }
            })
        );
    }
}

#[test]
fn exit_while_sending_stops_streams_and_the_asker_moves_on() {
    let mut net = Net::new(3, CoopConfig::default(), &[&[0], &[0], &[]]);
    let cfg_two = [
        peer(0, PeerHolding::Complete),
        peer(1, PeerHolding::Complete),
    ];
    net.nodes[2].directory = cfg_two.to_vec();
    net.want(2, 0, 3, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[2].coop.sources().len(), 2);
    // 0 leaves (linger over) while sending.
    net.nodes[0].coop.exit(net.now);
    net.drain(0);
    assert!(net.nodes[0].served.streams.is_empty());
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(1)]);
    assert!(net.links.values().all(|l| l.opener != 0 && l.acceptor != 0));
    // An exited node accepts nothing new.
    net.run(Duration::from_secs(3));
    assert!(net.nodes[0].served.streams.is_empty());
    assert!(net.links.values().all(|l| l.acceptor != 0));
}

#[test]
fn silent_peers_are_dropped_on_both_sides() {
    let mut net = Net::new(3, CoopConfig::default(), &[&[0], &[0], &[]]);
    net.nodes[2].directory = vec![
        peer(0, PeerHolding::Complete),
        peer(1, PeerHolding::Complete),
    ];
    net.want(2, 0, 3, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[2].coop.sources().len(), 2);
    // Sender 0 hangs: the asker drops it after peer_timeout (3 s) and closes the link.
    net.nodes[0].frozen = true;
    let t0 = net.now;
    net.run(Duration::from_millis(2900));
    assert_eq!(
        net.nodes[2].coop.sources().len(),
        2,
        "not before the timeout"
    );
    net.run(Duration::from_millis(400));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(1)]);
    assert!(net.now - t0 < Duration::from_millis(3400));
    // The asker hangs: sender 1 stops its stream after peer_timeout.
    net.nodes[2].frozen = true;
    net.run(Duration::from_millis(3400));
    assert!(net.nodes[1].served.streams.is_empty());
    assert!(net.links.values().all(|l| l.acceptor != 1));
}

#[test]
fn killed_peer_and_failed_connects_are_replaced_by_other_candidates() {
    let cfg = CoopConfig {
        max_sources: 1,
        ..CoopConfig::default()
    };
    let mut net = Net::new(4, cfg, &[&[0], &[0], &[0], &[]]);
    net.kill(0);
    net.nodes[3].directory = vec![
        peer(0, PeerHolding::Complete),
        peer(1, PeerHolding::Complete),
        peer(2, PeerHolding::Complete),
    ];
    net.want(3, 0, 3, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[3].coop.sources(), vec![node_id(1)]);
    net.kill(1);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[3].coop.sources(), vec![node_id(2)]);
}

#[test]
fn digest_failure_cuts_contributors_off_and_goes_server_only() {
    let mut net = Net::new(4, CoopConfig::default(), &[&[0], &[0], &[], &[]]);
    net.nodes[2].directory = vec![
        peer(0, PeerHolding::Complete),
        peer(1, PeerHolding::Complete),
    ];
    net.want(2, 0, 5, false);
    net.run(Duration::from_millis(50));
    // 3 asks 2, which recodes segment 0 for it.
    net.nodes[3].directory = vec![peer(2, PeerHolding::Receiving)];
    net.want(3, 0, 6, false);
    net.run(Duration::from_millis(50));
    assert_eq!(
        net.streams_to(2),
        BTreeSet::from([(0, ServeSource::Recode, ip(3))])
    );
    // Segment 0 fails its digest at 2.
    net.nodes[2].coop.segment_failed(net.now, 0);
    net.drain(2);
    net.run(Duration::from_millis(50));
    assert!(net.nodes[0].served.streams.is_empty());
    assert!(net.nodes[1].served.streams.is_empty());
    assert!(net.nodes[2].coop.is_banned(node_id(0), 0));
    assert!(net.nodes[2].coop.is_banned(node_id(1), 0));
    // The polluted recoding stream to 3 stopped, and 3 was told.
    assert!(net.nodes[2].served.streams.is_empty());
    assert!(net.nodes[3].coop.sources().is_empty());
    // Refetch from the server alone: no peers asked.
    let before = net.nodes[2].peer_requests.len();
    net.want(2, 0, 5, true);
    net.run(Duration::from_secs(3));
    assert_eq!(net.nodes[2].peer_requests.len(), before);
    assert!(net.nodes[2].coop.sources().is_empty());
    // Even when peers are asked again for that segment, the banned ones are skipped; other
    // segments are still asked of them.
    net.want(2, 0, 5, false);
    net.run(Duration::from_millis(100));
    assert!(net.nodes[2].coop.sources().is_empty());
    net.nodes[0].coop.segment_completed(net.now, 1);
    net.want(2, 1, 8, false);
    net.run(Duration::from_millis(100));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(0)]);
}

#[test]
fn a_peer_that_talks_nonsense_is_dropped() {
    let mut net = Net::new(2, CoopConfig::default(), &[&[0], &[]]);
    // An inbound link that does not start with a peer Hello is closed.
    let link = LinkId(999);
    net.nodes[0].coop.handle_inbound(net.now, link);
    net.nodes[0]
        .coop
        .handle_frame(net.now, link, Frame::ListFiles);
    assert_eq!(
        net.nodes[0].coop.poll_action(),
        Some(CoopAction::Close { link })
    );
    // A server-only frame after Hello also closes it, stopping its streams.
    net.nodes[1].directory = vec![peer(0, PeerHolding::Complete)];
    net.want(1, 0, 2, false);
    net.run(Duration::from_millis(50));
    let link = *net.links.keys().next().unwrap();
    net.nodes[0].coop.handle_frame(
        net.now,
        link,
        Frame::RequestSegment {
            name: NAME.into(),
            segment: 0,
            receive_addr: SocketAddr::new(ip(1), 1),
        },
    );
    net.drain(0);
    assert!(net.nodes[0].served.streams.is_empty());
    assert!(net.links.is_empty());
    assert!(net.nodes[1].coop.sources().is_empty());
}

#[test]
fn random_swarm_keeps_its_invariants() {
    // Six nodes cycle through segments with random freezes, kills of links and exits; after
    // everyone exits no stream is left and no link is open.
    let mut rng = 0x1234_5678u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let n = 6;
    let mut net = Net::new(
        n,
        CoopConfig {
            peer_timeout: Duration::from_millis(600),
            heartbeat_interval: Duration::from_millis(100),
            ..CoopConfig::default()
        },
        &[&[0, 1, 2, 3]],
    );
    for i in 0..n {
        net.nodes[i].directory = (0..n)
            .filter(|j| *j != i)
            .map(|j| peer(j, PeerHolding::Complete))
            .collect();
    }
    let mut seg = vec![u32::MAX; n];
    let mut held: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); n];
    held[0] = BTreeSet::from([0, 1, 2, 3]);
    for round in 0..400 {
        let i = (next() % n as u64) as usize;
        match next() % 10 {
            0..=3 if !net.nodes[i].frozen => {
                seg[i] = seg[i].wrapping_add(1) % 4;
                let s = seg[i];
                net.want(i, s, 100 + i as u32, false);
            }
            4 if !net.nodes[i].frozen => {
                let s = seg[i];
                held[i].insert(s);
                net.nodes[i].coop.segment_completed(net.now, s);
                net.drain(i);
            }
            5 => net.nodes[i].frozen = !net.nodes[i].frozen,
            6 => {
                if let Some(link) = net.links.keys().nth((next() % 8) as usize).copied() {
                    net.close(link);
                }
            }
            _ => {}
        }
        net.run(Duration::from_millis(20 + next() % 200));
        // Invariants: streams only for segments the node holds or receives, within the slots.
        // (A frozen node has not acted on its queued actions yet: check the others.)
        for (i, node) in net.nodes.iter().enumerate().filter(|(_, n)| !n.frozen) {
            assert!(
                node.coop.streams().len() <= CoopConfig::default().max_serving,
                "round {round}"
            );
            for (_, _, segment, source) in node.coop.streams() {
                match source {
                    ServeSource::Encode => assert!(held[i].contains(&segment), "round {round}"),
                    ServeSource::Recode => assert_eq!(segment, seg[i], "round {round}"),
                }
            }
            assert_eq!(node.served.streams.len(), node.coop.streams().len());
        }
    }
    let started: u64 = net.nodes.iter().map(|n| n.served.started).sum();
    assert!(
        started >= 50,
        "the swarm must exercise serving: {started} streams"
    );
    for i in 0..n {
        net.nodes[i].frozen = false;
        net.nodes[i].coop.exit(net.now);
        net.drain(i);
    }
    net.run(Duration::from_secs(1));
    for node in &net.nodes {
        assert!(node.served.streams.is_empty());
        assert!(node.coop.streams().is_empty());
    }
    assert!(net.links.is_empty());
}

#[test]
fn source_stats_reach_the_serving_peer_in_heartbeats() {
    let mut net = Net::new(2, CoopConfig::default(), &[&[0], &[]]);
    net.nodes[1].directory = vec![peer(0, PeerHolding::Complete)];
    net.want(1, 0, 3, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[1].coop.sources(), vec![node_id(0)]);
    let stats = ReceiverStats {
        received_packets: 120,
        received_bytes: 120_000,
        dropped_packets: 0,
        receive_rate_bps: 42_000_000,
        loss_ppm: 1500,
        decoded_rank: 99,
    };
    net.nodes[1].coop.update_source_stats(node_id(0), stats);
    // Stats for a node that is not a source are ignored.
    net.nodes[1]
        .coop
        .update_source_stats(node_id(7), ReceiverStats::default());
    net.run(CoopConfig::default().heartbeat_interval * 2);
    assert_eq!(net.nodes[0].served.last_stats, Some(stats));
    // After the segment decodes the stream stops and no more stats flow.
    net.nodes[1].coop.clear_want(net.now);
    net.drain(1);
    net.run(Duration::from_millis(50));
    let reports = net.nodes[0].served.stats_reports;
    net.run(Duration::from_secs(1));
    assert_eq!(net.nodes[0].served.stats_reports, reports);
    assert!(net.nodes[0].served.streams.is_empty());
}

#[test]
fn digest_verdict_after_the_next_segment_started_still_cuts_contributors_off() {
    // The driver requests the next segment as soon as one decodes; the digest verdict of the
    // previous one arrives while the next is already asked of peers.
    let mut net = Net::new(3, CoopConfig::default(), &[&[0, 1], &[0, 1], &[]]);
    net.nodes[2].directory = vec![peer(0, PeerHolding::Complete)];
    net.want(2, 0, 5, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(0)]);
    net.nodes[2].coop.clear_want(net.now);
    net.drain(2);
    net.nodes[2].directory = vec![
        peer(0, PeerHolding::Complete),
        peer(1, PeerHolding::Complete),
    ];
    net.want(2, 1, 6, false);
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(0), node_id(1)]);
    // Segment 0 fails: node 0 (its only contributor) is cut off for 0, not for 1.
    net.nodes[2].coop.segment_failed(net.now, 0);
    net.drain(2);
    net.run(Duration::from_millis(50));
    assert!(net.nodes[2].coop.is_banned(node_id(0), 0));
    assert!(!net.nodes[2].coop.is_banned(node_id(1), 0));
    assert!(!net.nodes[2].coop.is_banned(node_id(0), 1));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(0), node_id(1)]);
    // Segment 1 verifies; the refetch of 0 (when not server-only) skips node 0.
    net.nodes[2].coop.segment_completed(net.now, 1);
    net.nodes[2].coop.clear_want(net.now);
    net.drain(2);
    net.want(2, 0, 7, false);
    net.run(Duration::from_millis(100));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(1)]);
}

#[test]
fn recoding_streams_survive_the_next_want_while_the_segment_is_verified() {
    // 1 receives segment 0 and recodes it for 2 and 3; 1 decodes it and moves on to segment 1
    // before its digest verdict: the streams stay, switch to encoding when 0 verifies (at 2),
    // and stop with CoopDontHave when it fails (second round, at 3).
    let mut net = Net::new(4, CoopConfig::default(), &[&[], &[], &[], &[]]);
    net.want(1, 0, 4, false);
    net.nodes[2].directory = vec![peer(1, PeerHolding::Receiving)];
    net.want(2, 0, 5, false);
    net.run(Duration::from_millis(50));
    assert_eq!(
        net.streams_to(1),
        BTreeSet::from([(0, ServeSource::Recode, ip(2))])
    );
    net.nodes[1].coop.segment_decoded(net.now, 0);
    net.drain(1);
    net.want(1, 1, 6, false);
    net.run(Duration::from_millis(50));
    // A new ask for the segment being verified is accepted too.
    net.nodes[3].directory = vec![peer(1, PeerHolding::Receiving)];
    net.want(3, 0, 7, false);
    net.run(Duration::from_millis(50));
    assert_eq!(
        net.streams_to(1),
        BTreeSet::from([
            (0, ServeSource::Recode, ip(2)),
            (0, ServeSource::Recode, ip(3))
        ])
    );
    net.nodes[1].coop.segment_completed(net.now, 0);
    net.drain(1);
    assert_eq!(net.nodes[1].served.switched.len(), 2);
    assert_eq!(
        net.streams_to(1),
        BTreeSet::from([
            (0, ServeSource::Encode, ip(2)),
            (0, ServeSource::Encode, ip(3))
        ])
    );

    // Segment 1 decodes, 2 asks for it, 1 moves on to 2; segment 1 then fails its digest.
    net.nodes[1].coop.segment_decoded(net.now, 1);
    net.drain(1);
    net.want(1, 2, 8, false);
    net.nodes[2].coop.segment_completed(net.now, 0);
    net.nodes[2].coop.clear_want(net.now);
    net.drain(2);
    net.nodes[2].directory = vec![peer(1, PeerHolding::Receiving)];
    net.want(2, 1, 9, false);
    net.run(Duration::from_millis(50));
    assert!(net.streams_to(1).contains(&(1, ServeSource::Recode, ip(2))));
    assert_eq!(net.nodes[2].coop.sources(), vec![node_id(1)]);
    net.nodes[1].coop.segment_failed(net.now, 1);
    net.drain(1);
    net.run(Duration::from_millis(50));
    assert!(!net.streams_to(1).contains(&(1, ServeSource::Recode, ip(2))));
    assert!(net.nodes[2].coop.sources().is_empty());
}
