//! In-memory swarm: the real `SessionTable` and N real `Download`s exchanging encoded frames over
//! simulated TCP links (latency, connection drops, black holes, server restarts) and MACed data
//! packets over a simulated lossy UDP path, in simulated time with a seeded RNG.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ccfd_proto::*;

const SYMBOL: u64 = 1000;
const NAME: &str = "images/disk.img";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

fn code() -> CodeParamsWire {
    CodeParamsWire {
        segment_size: 100_000,
        symbol_size: SYMBOL as u32,
        kind: CodeKind::Band,
        subgen_size: 32,
        stride: 16,
        checks: 2,
        field: FieldKind::Gf2,
        systematic: false,
    }
}

fn file_meta(size: u64, version: u64) -> FileMeta {
    let segment_size = 100_000;
    let n = segment_count(size, segment_size).unwrap();
    FileMeta {
        name: NAME.into(),
        size,
        segment_size,
        segment_count: n,
        code: code(),
        last_segment_checks: code().checks,
        digests: (0..n).map(|i| [i as u8; 32]).collect(),
        version,
    }
}

fn resolve(meta: &FileMeta, name: &str, segment: u32) -> Result<SegmentInfo, Frame> {
    if name != meta.name {
        return Err(Frame::error(ErrorCode::NoSuchFile, name));
    }
    let Some(len) = meta.segment_len(segment) else {
        return Err(Frame::error(ErrorCode::NoSuchSegment, "out of range"));
    };
    Ok(SegmentInfo {
        name: name.into(),
        segment,
        segment_len: len,
        code: meta.code,
        version: meta.version,
    })
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + i as u8)), 9000)
}

struct Conn {
    id: ClientId,
    up: VecDeque<(Instant, Vec<u8>)>,
    down: VecDeque<(Instant, Vec<u8>)>,
    server_dec: FrameDecoder,
    client_dec: FrameDecoder,
    /// Close once `down` is drained (after SendAndClose).
    closing: bool,
    /// Half-open: frames in both directions vanish without a close.
    blackhole: bool,
}

struct Recv {
    session: SessionId,
    segment: u32,
    key: SessionKey,
    needed: u64,
    got: u64,
    last_seq: Option<u32>,
    lost: u64,
}

struct Node {
    addr: SocketAddr,
    dl: Download,
    conn: Option<Conn>,
    connecting: Option<Instant>,
    recv: Option<Recv>,
    /// Segment -> digest failures still to inject.
    corrupt: HashMap<u32, u32>,
    outcome: Option<Result<(), DownloadError>>,
    frozen: bool,
    packets: u64,
    dropped: BTreeMap<&'static str, u64>,
    violations: Vec<String>,
    connects: Vec<Instant>,
    sessions_started: Vec<SessionMeta>,
}

struct ShardSession {
    key: SessionKey,
    segment: u32,
    receivers: BTreeMap<ClientId, (SocketAddr, u64, f64, u32)>,
    muted: bool,
}

struct Sim {
    start: Instant,
    now: Instant,
    rng: Rng,
    cfg: TableConfig,
    table: SessionTable,
    meta: FileMeta,
    nodes: Vec<Node>,
    shard: BTreeMap<SessionId, ShardSession>,
    down_until: Option<Instant>,
    next_client: u64,
    loss: f64,
    drop_conn_p: f64,
    latency: (u64, u64),
    started: Vec<SessionId>,
    ended: Vec<SessionId>,
    forged_sent: u64,
    mute_new_sessions: bool,
    /// `ShardCommand::Progress` seen (each checked to name a receiver the shard streams to).
    progress_reports: u64,
}

fn table_config() -> TableConfig {
    TableConfig {
        udp_base: 20000,
        client_timeout: Duration::from_secs(2),
        session_idle_timeout: Duration::from_secs(1),
        id_quarantine: Duration::from_millis(500),
        initial_rate_bps: 8_000_000,
        min_rate_bps: 1_000_000,
        max_receiver_rate_bps: 40_000_000,
        ..TableConfig::default()
    }
}

fn dl_config(i: usize, seed: u64) -> DownloadConfig {
    DownloadConfig {
        heartbeat_interval: Duration::from_millis(20),
        server_timeout: Duration::from_millis(1500),
        stall_timeout: Duration::from_millis(800),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        control_addr: Some(SocketAddr::new(addr(i).ip(), 7700)),
        seed: seed ^ i as u64,
        ..DownloadConfig::new(NodeId(1000 + i as u64), addr(i))
    }
}

impl Sim {
    fn new(seed: u64, cfg: TableConfig, meta: FileMeta) -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            rng: Rng(seed),
            table: SessionTable::new(cfg.clone()),
            cfg,
            meta,
            nodes: Vec::new(),
            shard: BTreeMap::new(),
            down_until: None,
            next_client: 1,
            loss: 0.0,
            drop_conn_p: 0.0,
            latency: (1, 8),
            started: Vec::new(),
            ended: Vec::new(),
            forged_sent: 0,
            mute_new_sessions: false,
            progress_reports: 0,
        }
    }

    fn add_node(&mut self, completed: &[u32], seed: u64) -> usize {
        let i = self.nodes.len();
        self.add_node_with(dl_config(i, seed), self.meta.clone(), completed)
    }

    fn add_node_with(
        &mut self,
        config: DownloadConfig,
        meta: FileMeta,
        completed: &[u32],
    ) -> usize {
        let i = self.nodes.len();
        let mut dl = Download::new(config.clone(), meta, completed.iter().copied());
        dl.start(self.now, false);
        self.nodes.push(Node {
            addr: config.receive_addr,
            dl,
            conn: None,
            connecting: None,
            recv: None,
            corrupt: HashMap::new(),
            outcome: None,
            frozen: false,
            packets: 0,
            dropped: BTreeMap::new(),
            violations: Vec::new(),
            connects: Vec::new(),
            sessions_started: Vec::new(),
        });
        i
    }

    fn t(&self) -> Duration {
        self.now - self.start
    }

    fn restart_server(&mut self, down_for: Duration) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].conn.take().is_some() {
                self.nodes[i].dl.handle_disconnected(self.now);
            }
        }
        self.table = SessionTable::new(self.cfg.clone());
        self.shard.clear();
        // A crashed server ends nothing: forget the bookkeeping of its sessions.
        self.started.clear();
        self.ended.clear();
        self.down_until = Some(self.now + down_for);
    }

    fn server_up(&self) -> bool {
        self.down_until.is_none_or(|t| self.now >= t)
    }

    fn deliver_at(&mut self, q: &VecDeque<(Instant, Vec<u8>)>) -> Instant {
        let t = self.now + self.rng.millis(self.latency.0, self.latency.1);
        q.back().map_or(t, |(last, _)| t.max(*last))
    }

    fn close_conn(&mut self, i: usize) {
        if let Some(c) = self.nodes[i].conn.take() {
            self.table.disconnect(self.now, c.id);
            self.drain_table();
            self.nodes[i].dl.handle_disconnected(self.now);
        }
    }

    fn drain_table(&mut self) {
        while let Some(out) = self.table.poll_output() {
            match out {
                TableOutput::Close(id) => {
                    if let Some(i) = self
                        .nodes
                        .iter()
                        .position(|n| n.conn.as_ref().is_some_and(|c| c.id == id))
                    {
                        self.nodes[i].conn = None;
                        self.nodes[i].dl.handle_disconnected(self.now);
                    }
                }
                TableOutput::Shard(cmd) => self.apply(cmd),
            }
        }
    }

    fn apply(&mut self, cmd: ShardCommand) {
        match cmd {
            ShardCommand::StartSession {
                session,
                segment,
                key,
                data_port,
                ..
            } => {
                assert_eq!(data_port, self.cfg.udp_base + session.0 as u16);
                assert!(
                    self.shard
                        .insert(
                            session,
                            ShardSession {
                                key,
                                segment,
                                receivers: BTreeMap::new(),
                                muted: self.mute_new_sessions,
                            }
                        )
                        .is_none(),
                    "session id {session:?} started twice"
                );
                self.started.push(session);
            }
            ShardCommand::AddReceiver {
                session,
                client,
                addr,
                rate_bps,
            } => {
                let s = self
                    .shard
                    .get_mut(&session)
                    .expect("receiver for unknown session");
                assert!(s
                    .receivers
                    .insert(client, (addr, rate_bps, 0.0, 0))
                    .is_none());
            }
            ShardCommand::SetRate {
                session,
                client,
                rate_bps,
            } => {
                let r = self
                    .shard
                    .get_mut(&session)
                    .and_then(|s| s.receivers.get_mut(&client));
                r.expect("rate for unknown receiver").1 = rate_bps;
            }
            ShardCommand::Progress {
                session, client, ..
            } => {
                let known = self
                    .shard
                    .get(&session)
                    .is_some_and(|s| s.receivers.contains_key(&client));
                assert!(
                    known,
                    "progress for a receiver the shard does not stream to"
                );
                self.progress_reports += 1;
            }
            ShardCommand::RemoveReceiver { session, client } => {
                let s = self
                    .shard
                    .get_mut(&session)
                    .expect("remove from unknown session");
                assert!(
                    s.receivers.remove(&client).is_some(),
                    "unknown receiver removed"
                );
            }
            ShardCommand::EndSession { session } => {
                let s = self.shard.remove(&session).expect("end of unknown session");
                assert!(
                    s.receivers.is_empty(),
                    "session ended with receivers still streaming"
                );
                self.ended.push(session);
            }
        }
    }

    fn step(&mut self, dt: Duration) {
        self.now += dt;
        // Random connection drops.
        for i in 0..self.nodes.len() {
            if self.nodes[i].conn.is_some() && self.rng.chance(self.drop_conn_p) {
                self.close_conn(i);
            }
        }
        // Connection attempts resolve.
        for i in 0..self.nodes.len() {
            if self.nodes[i].connecting.is_some_and(|t| t <= self.now) {
                self.nodes[i].connecting = None;
                if self.server_up() {
                    let id = ClientId(self.next_client);
                    self.next_client += 1;
                    self.nodes[i].conn = Some(Conn {
                        id,
                        up: VecDeque::new(),
                        down: VecDeque::new(),
                        server_dec: FrameDecoder::new(),
                        client_dec: FrameDecoder::new(),
                        closing: false,
                        blackhole: false,
                    });
                    self.nodes[i].dl.handle_connected(self.now);
                } else {
                    self.nodes[i].dl.handle_connect_failed(self.now);
                }
            }
        }
        // Client -> server frames.
        for i in 0..self.nodes.len() {
            let mut frames = Vec::new();
            let mut bad = false;
            if let Some(c) = &mut self.nodes[i].conn {
                while c.up.front().is_some_and(|(t, _)| *t <= self.now) {
                    let (_, bytes) = c.up.pop_front().unwrap();
                    if c.blackhole {
                        continue;
                    }
                    c.server_dec.push(&bytes);
                }
                loop {
                    match c.server_dec.next_frame() {
                        Ok(Some(f)) => frames.push(f),
                        Ok(None) => break,
                        Err(_) => {
                            bad = true;
                            break;
                        }
                    }
                }
            }
            for f in frames {
                let Some(id) = self.nodes[i].conn.as_ref().map(|c| c.id) else {
                    break;
                };
                let meta = self.meta.clone();
                let reply = self
                    .table
                    .handle_frame(self.now, id, f, |n, s| resolve(&meta, n, s));
                self.drain_table();
                match reply {
                    Reply::Send(f) => self.send_down(i, f, false),
                    Reply::SendAndClose(f) => self.send_down(i, f, true),
                    Reply::Close => {
                        self.nodes[i].conn = None;
                        self.nodes[i].dl.handle_disconnected(self.now);
                    }
                    Reply::Nothing => {}
                    Reply::Unhandled(Frame::FileMetaRequest { .. }) => {
                        self.send_down(i, Frame::FileMeta(self.meta.clone()), false)
                    }
                    Reply::Unhandled(other) => panic!("unexpected unhandled {other:?}"),
                }
            }
            if bad {
                self.close_conn(i);
            }
        }
        if self.table.poll_timeout().is_some_and(|t| t <= self.now) {
            self.table.handle_timeout(self.now);
            self.drain_table();
        }
        // Server -> client frames.
        for i in 0..self.nodes.len() {
            if self.nodes[i].frozen {
                continue;
            }
            let mut frames = Vec::new();
            let mut close = false;
            if let Some(c) = &mut self.nodes[i].conn {
                while c.down.front().is_some_and(|(t, _)| *t <= self.now) {
                    let (_, bytes) = c.down.pop_front().unwrap();
                    if !c.blackhole {
                        c.client_dec.push(&bytes);
                    }
                }
                while let Some(f) = c.client_dec.next_frame().expect("server sent a bad frame") {
                    frames.push(f);
                }
                close = c.closing && c.down.is_empty();
            }
            for f in frames {
                self.nodes[i].dl.handle_frame(self.now, f);
            }
            if close {
                self.nodes[i].conn = None;
                self.nodes[i].dl.handle_disconnected(self.now);
            }
        }
        // Shard: paced, MACed packets over a lossy path.
        let dt_s = dt.as_secs_f64();
        let mut packets = Vec::new();
        for (sid, s) in &mut self.shard {
            if s.muted {
                continue;
            }
            for (addr, rate, credit, seq) in s.receivers.values_mut() {
                *credit += *rate as f64 * dt_s;
                while *credit >= (SYMBOL * 8) as f64 {
                    *credit -= (SYMBOL * 8) as f64;
                    *seq += 1;
                    let h = DataHeader {
                        origin: Origin::Server,
                        session: *sid,
                        segment: s.segment,
                        seq: *seq,
                    };
                    let mut pkt = Vec::new();
                    DataPacket::seal(&s.key, &h, &seq.to_le_bytes(), &mut pkt);
                    packets.push((*addr, pkt));
                }
            }
        }
        for (to, pkt) in packets {
            if self.rng.chance(self.loss) {
                continue;
            }
            if let Some(i) = self.nodes.iter().position(|n| n.addr == to) {
                self.nodes[i].receive(&pkt);
            }
        }
        // Nodes: decoder progress, timers, actions.
        for i in 0..self.nodes.len() {
            if self.nodes[i].frozen {
                continue;
            }
            let now = self.now;
            let n = &mut self.nodes[i];
            if let Some(r) = &n.recv {
                let loss_ppm = (r.lost * 1_000_000)
                    .checked_div(r.got + r.lost)
                    .unwrap_or(0) as u32;
                n.dl.update_stats(ReceiverStats {
                    received_packets: r.got,
                    received_bytes: r.got * SYMBOL,
                    loss_ppm,
                    decoded_rank: r.got.min(r.needed) as u32,
                    ..ReceiverStats::default()
                });
                if r.got >= r.needed {
                    let seg = r.segment;
                    n.dl.segment_decoded(now, seg);
                    let ok = match n.corrupt.get_mut(&seg) {
                        Some(k) if *k > 0 => {
                            *k -= 1;
                            false
                        }
                        _ => true,
                    };
                    n.dl.segment_verified(now, seg, ok);
                }
            }
            if n.dl.poll_timeout().is_some_and(|t| t <= now) {
                n.dl.handle_timeout(now);
            }
            self.drain_node(i);
        }
    }

    fn send_down(&mut self, i: usize, f: Frame, close: bool) {
        let bytes = f.to_bytes().unwrap();
        let q = match &self.nodes[i].conn {
            Some(c) => &c.down,
            None => return,
        };
        let t = self.deliver_at(&q.clone());
        let c = self.nodes[i].conn.as_mut().unwrap();
        c.down.push_back((t, bytes));
        c.closing |= close;
    }

    fn drain_node(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].dl.poll_action() {
            match a {
                DownloadAction::Connect => {
                    let lat = self.rng.millis(self.latency.0, self.latency.1);
                    self.nodes[i].connecting = Some(self.now + lat);
                    self.nodes[i].connects.push(self.now);
                }
                DownloadAction::Disconnect => {
                    if let Some(c) = self.nodes[i].conn.take() {
                        self.table.disconnect(self.now, c.id);
                        self.drain_table();
                    }
                }
                DownloadAction::Send(f) => {
                    if let Frame::RequestSegment { segment, .. } = &f {
                        if self.nodes[i].dl.completed().contains(segment) {
                            let v = format!("segment {segment} requested after completion");
                            self.nodes[i].violations.push(v);
                        }
                    }
                    let bytes = f.to_bytes().unwrap();
                    let Some(q) = self.nodes[i].conn.as_ref().map(|c| c.up.clone()) else {
                        continue;
                    };
                    let t = self.deliver_at(&q);
                    self.nodes[i]
                        .conn
                        .as_mut()
                        .unwrap()
                        .up
                        .push_back((t, bytes));
                }
                DownloadAction::StartSegment(meta) => {
                    let len = meta.segment_len;
                    self.nodes[i].recv = Some(Recv {
                        session: meta.session,
                        segment: meta.segment,
                        key: meta.key,
                        needed: len.div_ceil(SYMBOL) + 2,
                        got: 0,
                        last_seq: None,
                        lost: 0,
                    });
                    self.nodes[i].sessions_started.push(meta);
                }
                DownloadAction::StopSegment { session, .. } => {
                    if self.nodes[i]
                        .recv
                        .as_ref()
                        .is_some_and(|r| r.session == session)
                    {
                        self.nodes[i].recv = None;
                    }
                }
                DownloadAction::Done => self.nodes[i].outcome = Some(Ok(())),
                DownloadAction::Failed(e) => self.nodes[i].outcome = Some(Err(e)),
            }
        }
    }

    /// Sends `count` forged packets (right session, wrong key) and garbage to node `i`.
    fn forge(&mut self, i: usize, count: u64) {
        let Some((session, segment)) = self.nodes[i].recv.as_ref().map(|r| (r.session, r.segment))
        else {
            return;
        };
        for k in 0..count {
            let mut pkt = Vec::new();
            let h = DataHeader {
                origin: Origin::Peer,
                session,
                segment,
                seq: k as u32,
            };
            DataPacket::seal(&SessionKey([0xAA; 32]), &h, b"forged", &mut pkt);
            self.nodes[i].receive(&pkt);
            self.nodes[i].receive(&self.rng.next().to_le_bytes());
            self.forged_sent += 2;
        }
    }

    fn run_until(&mut self, limit: Duration, dt: Duration, mut stop: impl FnMut(&Sim) -> bool) {
        while self.t() < limit {
            if stop(self) {
                return;
            }
            self.step(dt);
        }
    }

    fn all_finished(&self) -> bool {
        self.nodes.iter().all(|n| n.outcome.is_some())
    }
}

impl Node {
    fn receive(&mut self, pkt: &[u8]) {
        if self.frozen {
            return;
        }
        let Some(r) = &mut self.recv else {
            *self.dropped.entry("no session").or_default() += 1;
            return;
        };
        let h = match DataHeader::peek(pkt) {
            Ok(h) => h,
            Err(e) => {
                *self.dropped.entry(e.reason()).or_default() += 1;
                return;
            }
        };
        if h.session != r.session {
            *self.dropped.entry("wrong session").or_default() += 1;
            return;
        }
        match DataPacket::open(&r.key, pkt) {
            Ok((h, _)) => {
                if h.origin == Origin::Server {
                    if let Some(last) = r.last_seq {
                        r.lost += u64::from(h.seq.saturating_sub(last + 1));
                    }
                    r.last_seq = Some(h.seq);
                }
                r.got += 1;
                self.packets += 1;
            }
            Err(e) => *self.dropped.entry(e.reason()).or_default() += 1,
        }
    }
}

fn assert_clean_end(sim: &mut Sim) {
    // Let every idle session expire and every client leave.
    let until = sim.t() + Duration::from_secs(10);
    sim.run_until(until, Duration::from_millis(10), |_| false);
    assert_eq!(
        sim.table.session_count(),
        0,
        "sessions left: {:?}",
        sim.table.sessions()
    );
    assert_eq!(sim.table.client_count(), 0);
    assert!(sim.shard.is_empty());
    let mut started = sim.started.clone();
    let mut ended = sim.ended.clone();
    started.sort();
    ended.sort();
    assert_eq!(started, ended, "every started session ended exactly once");
}

#[test]
fn swarm_completes_under_loss_and_connection_drops() {
    for seed in 1..=6 {
        swarm_run(seed);
    }
}

fn swarm_run(seed: u64) {
    let size = 7 * 100_000 + 1234;
    let mut sim = Sim::new(seed, table_config(), file_meta(size, 7));
    sim.loss = 0.1;
    sim.drop_conn_p = 0.002;
    for _ in 0..6 {
        sim.add_node(&[], seed);
    }
    sim.run_until(
        Duration::from_secs(120),
        Duration::from_millis(2),
        Sim::all_finished,
    );
    for (i, n) in sim.nodes.iter().enumerate() {
        assert_eq!(
            n.outcome,
            Some(Ok(())),
            "seed {seed} node {i} at {:?}",
            sim.t()
        );
        assert_eq!(n.dl.completed().len(), 8);
        assert!(n.violations.is_empty(), "{:?}", n.violations);
        let needed = 7 * (100 + 2) + (2 + 2);
        assert!(n.packets >= needed, "node {i} got {} packets", n.packets);
    }
    // Connections did drop and clients came back.
    let reconnects: usize = sim.nodes.iter().map(|n| n.connects.len() - 1).sum();
    assert!(reconnects > 0, "the test must exercise connection drops");
    // Sessions were shared: fewer sessions started than (clients x segments).
    assert!(sim.started.len() < 6 * 8, "{} sessions", sim.started.len());
    // Heartbeats reached the shard as progress reports (each for a receiver it streams to).
    assert!(sim.progress_reports > 0);
    assert_clean_end(&mut sim);
}

#[test]
fn resume_never_refetches_completed_segments() {
    let mut sim = Sim::new(7, table_config(), file_meta(5 * 100_000, 1));
    sim.loss = 0.05;
    let a = sim.add_node(&[0, 2, 3, 99], 3);
    let b = sim.add_node(&[0, 1, 2, 3, 4], 3);
    sim.run_until(
        Duration::from_secs(60),
        Duration::from_millis(2),
        Sim::all_finished,
    );
    assert_eq!(sim.nodes[a].outcome, Some(Ok(())));
    assert_eq!(sim.nodes[a].dl.requests_sent(), &[1, 4]);
    let segs: Vec<u32> = sim.nodes[a]
        .sessions_started
        .iter()
        .map(|m| m.segment)
        .collect();
    assert_eq!(segs, vec![1, 4]);
    // A complete resume is done at once, without connecting.
    assert_eq!(sim.nodes[b].outcome, Some(Ok(())));
    assert!(sim.nodes[b].connects.is_empty());
    assert!(sim.nodes[b].dl.requests_sent().is_empty());
    assert_clean_end(&mut sim);
}

#[test]
fn empty_file_is_done_at_once() {
    let mut sim = Sim::new(1, table_config(), file_meta(0, 1));
    let a = sim.add_node(&[], 1);
    sim.run_until(
        Duration::from_secs(1),
        Duration::from_millis(5),
        Sim::all_finished,
    );
    assert_eq!(sim.nodes[a].outcome, Some(Ok(())));
    assert!(sim.nodes[a].connects.is_empty());
}

#[test]
fn server_restart_mid_transfer_then_clients_complete() {
    let mut sim = Sim::new(9, table_config(), file_meta(6 * 100_000, 3));
    sim.loss = 0.02;
    for _ in 0..3 {
        sim.add_node(&[], 5);
    }
    sim.run_until(Duration::from_secs(30), Duration::from_millis(2), |s| {
        s.nodes.iter().all(|n| n.dl.completed().len() >= 2)
    });
    let before: Vec<usize> = sim.nodes.iter().map(|n| n.dl.completed().len()).collect();
    assert!(
        before.iter().all(|c| *c < 6),
        "restart must happen mid-transfer"
    );
    let restart_at = sim.now;
    sim.restart_server(Duration::from_secs(4));
    sim.run_until(
        Duration::from_secs(90),
        Duration::from_millis(2),
        Sim::all_finished,
    );
    for n in &sim.nodes {
        assert_eq!(n.outcome, Some(Ok(())));
        assert!(n.violations.is_empty(), "{:?}", n.violations);
        // While the server was down, reconnects backed off: gaps grow (up to jitter) and are few.
        let during: Vec<Instant> = n
            .connects
            .iter()
            .copied()
            .filter(|t| *t >= restart_at && *t <= restart_at + Duration::from_secs(4))
            .collect();
        assert!(
            during.len() >= 3 && during.len() <= 10,
            "{} attempts",
            during.len()
        );
        let gaps: Vec<Duration> = during.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.last() > gaps.first(), "gaps {gaps:?}");
    }
    assert_clean_end(&mut sim);
}

#[test]
fn half_open_connection_is_detected_by_silence() {
    let mut sim = Sim::new(11, table_config(), file_meta(4 * 100_000, 3));
    let a = sim.add_node(&[], 2);
    sim.run_until(Duration::from_secs(10), Duration::from_millis(2), |s| {
        s.nodes[0].dl.current_session().is_some()
    });
    let t0 = sim.now;
    sim.nodes[a].conn.as_mut().unwrap().blackhole = true;
    sim.run_until(
        Duration::from_secs(60),
        Duration::from_millis(2),
        Sim::all_finished,
    );
    assert_eq!(sim.nodes[a].outcome, Some(Ok(())));
    // A reconnect happened after about server_timeout of silence.
    let re = sim.nodes[a]
        .connects
        .iter()
        .find(|t| **t > t0)
        .copied()
        .unwrap();
    assert!(re - t0 >= Duration::from_millis(1500), "{:?}", re - t0);
    assert!(
        re - t0 <= Duration::from_millis(1500 + 200),
        "{:?}",
        re - t0
    );
    assert_clean_end(&mut sim);
}

#[test]
fn forged_and_garbage_datagrams_are_dropped_and_counted() {
    let mut sim = Sim::new(5, table_config(), file_meta(3 * 100_000, 3));
    let a = sim.add_node(&[], 2);
    let mut forge_in = 10;
    while !sim.all_finished() && sim.t() < Duration::from_secs(60) {
        sim.step(Duration::from_millis(2));
        forge_in -= 1;
        if forge_in == 0 {
            forge_in = 10;
            sim.forge(a, 3);
        }
    }
    assert_eq!(sim.nodes[a].outcome, Some(Ok(())));
    let bad_mac = sim.nodes[a].dropped.get("bad_mac").copied().unwrap_or(0);
    let malformed = sim.nodes[a].dropped.get("malformed").copied().unwrap_or(0);
    assert!(bad_mac > 0 && malformed > 0, "{:?}", sim.nodes[a].dropped);
    assert_eq!(bad_mac + malformed, sim.forged_sent);
    assert_clean_end(&mut sim);
}

#[test]
fn digest_failure_restarts_the_segment_then_gives_up_after_the_limit() {
    let mut sim = Sim::new(13, table_config(), file_meta(3 * 100_000, 3));
    let a = sim.add_node(&[], 2);
    let b = sim.add_node(&[], 2);
    sim.nodes[a].corrupt.insert(1, 2); // fails twice, then verifies
    sim.nodes[b].corrupt.insert(2, 10); // always fails
    sim.run_until(
        Duration::from_secs(60),
        Duration::from_millis(2),
        Sim::all_finished,
    );
    assert_eq!(sim.nodes[a].outcome, Some(Ok(())));
    // Pipelined: segment 2 is requested as soon as 1 decodes; the failed 1 comes back after it.
    assert_eq!(sim.nodes[a].dl.requests_sent(), &[0, 1, 2, 1, 1]);
    assert_eq!(
        sim.nodes[b].outcome,
        Some(Err(DownloadError::DigestMismatch {
            segment: 2,
            failures: 3
        }))
    );
    assert_eq!(sim.nodes[b].dl.requests_sent(), &[0, 1, 2, 2, 2]);
    // b failed without Exit: the server drops it when its connection goes silent.
    sim.close_conn(b);
    assert_clean_end(&mut sim);
}

#[test]
fn stalled_session_is_requested_again() {
    let mut sim = Sim::new(17, table_config(), file_meta(2 * 100_000, 3));
    sim.mute_new_sessions = true;
    let a = sim.add_node(&[], 2);
    sim.run_until(Duration::from_secs(5), Duration::from_millis(2), |s| {
        s.nodes[0].dl.requests_sent().len() >= 2
    });
    // Nothing arrived: after stall_timeout the segment was requested again.
    assert_eq!(sim.nodes[a].dl.requests_sent(), &[0, 0]);
    assert!(sim.t() >= Duration::from_millis(800));
    for s in sim.shard.values_mut() {
        s.muted = false;
    }
    sim.mute_new_sessions = false;
    sim.run_until(
        Duration::from_secs(60),
        Duration::from_millis(2),
        Sim::all_finished,
    );
    assert_eq!(sim.nodes[a].outcome, Some(Ok(())));
    assert_clean_end(&mut sim);
}

#[test]
fn frozen_client_is_dropped_from_every_session_and_the_others_finish() {
    let mut sim = Sim::new(19, table_config(), file_meta(6 * 100_000, 3));
    sim.loss = 0.05;
    let a = sim.add_node(&[], 2);
    let b = sim.add_node(&[], 2);
    sim.run_until(Duration::from_secs(10), Duration::from_millis(2), |s| {
        s.nodes[0].dl.current_session().is_some() && s.nodes[1].dl.current_session().is_some()
    });
    let sid = sim.nodes[a].dl.current_session().unwrap().session;
    sim.nodes[a].frozen = true;
    let frozen_at = sim.now;
    sim.run_until(Duration::from_secs(60), Duration::from_millis(2), |s| {
        s.nodes[1].outcome.is_some() && s.nodes[0].conn.is_none()
    });
    assert_eq!(sim.nodes[b].outcome, Some(Ok(())));
    // The frozen client was dropped (its connection closed by the server) after client_timeout.
    assert!(sim.nodes[a].conn.is_none());
    let dropped_after = sim.now - frozen_at;
    assert!(
        dropped_after >= Duration::from_millis(1950)
            && dropped_after <= Duration::from_millis(2100),
        "{dropped_after:?}"
    );
    assert!(sim
        .table
        .session(sid)
        .is_none_or(|s| s.receivers.is_empty()));
    assert_clean_end(&mut sim);
}

#[test]
fn changed_file_fails_the_download_with_file_changed() {
    let mut sim = Sim::new(23, table_config(), file_meta(3 * 100_000, 3));
    let old = sim.meta.clone();
    let a = sim.add_node(&[], 2);
    sim.run_until(Duration::from_secs(10), Duration::from_millis(2), |s| {
        s.nodes[0].dl.completed().len() == 1
    });
    // The file changes on the server: new version, its sessions end.
    sim.meta = file_meta(3 * 100_000, 4);
    sim.table.file_changed(sim.now, NAME);
    sim.drain_table();
    sim.run_until(
        Duration::from_secs(20),
        Duration::from_millis(2),
        Sim::all_finished,
    );
    assert_eq!(sim.nodes[a].outcome, Some(Err(DownloadError::FileChanged)));
    assert_eq!(sim.nodes[a].dl.meta(), &old);
    sim.close_conn(a);
    assert_clean_end(&mut sim);
}

// ---- SessionTable in isolation ------------------------------------------------------------------

fn hello(i: u64, control: bool) -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        role: Role::Client,
        node_id: NodeId(i),
        data_addr: Some(addr(i as usize)),
        control_addr: control.then(|| SocketAddr::new(addr(i as usize).ip(), 7700)),
    })
}

fn req(seg: u32, i: u64) -> Frame {
    Frame::RequestSegment {
        name: NAME.into(),
        segment: seg,
        receive_addr: addr(i as usize),
    }
}

fn handle(t: &mut SessionTable, now: Instant, c: u64, f: Frame, meta: &FileMeta) -> Reply {
    t.handle_frame(now, ClientId(c), f, |n, s| resolve(meta, n, s))
}

fn session_of(r: Reply) -> SessionMeta {
    match r {
        Reply::Send(Frame::SessionMeta(m)) => m,
        other => panic!("expected SessionMeta, got {other:?}"),
    }
}

fn outputs(t: &mut SessionTable) -> Vec<TableOutput> {
    std::iter::from_fn(|| t.poll_output()).collect()
}

#[test]
fn table_limits_reply_with_explicit_errors_and_ids_are_reused_after_expiry() {
    let meta = file_meta(10 * 100_000, 1);
    let cfg = TableConfig {
        max_clients: 2,
        max_sessions: 2,
        max_sessions_per_client: 2,
        ..table_config()
    };
    let mut t = SessionTable::new(cfg);
    let t0 = Instant::now();
    // Requests before Hello are refused.
    assert!(matches!(
        handle(&mut t, t0, 1, req(0, 1), &meta),
        Reply::SendAndClose(Frame::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
    assert!(matches!(
        handle(&mut t, t0, 1, hello(1, false), &meta),
        Reply::Send(Frame::Hello(_))
    ));
    assert!(matches!(
        handle(&mut t, t0, 2, hello(2, false), &meta),
        Reply::Send(Frame::Hello(_))
    ));
    assert!(matches!(
        handle(&mut t, t0, 3, hello(3, false), &meta),
        Reply::SendAndClose(Frame::Error {
            code: ErrorCode::TooManyClients,
            ..
        })
    ));
    // Sessions: ids from 0, ports udp_base + id, shared by clients of the same segment.
    let s0 = session_of(handle(&mut t, t0, 1, req(0, 1), &meta));
    let s0b = session_of(handle(&mut t, t0, 2, req(0, 2), &meta));
    assert_eq!(s0.session, SessionId(0));
    assert_eq!(s0b.session, s0.session);
    assert_eq!(s0b.key, s0.key);
    assert_eq!(s0.data_port, 20000);
    let s1 = session_of(handle(&mut t, t0, 1, req(1, 1), &meta));
    assert_eq!(s1.session, SessionId(1));
    assert_ne!(s1.key, s0.key);
    // Per-client limit, then the server's session limit.
    assert!(matches!(
        handle(&mut t, t0, 1, req(2, 1), &meta),
        Reply::Send(Frame::Error {
            code: ErrorCode::TooManySessions,
            ..
        })
    ));
    assert!(matches!(
        handle(&mut t, t0, 2, req(3, 2), &meta),
        Reply::Send(Frame::Error {
            code: ErrorCode::TooManySessions,
            ..
        })
    ));
    // Out-of-range segment and unknown files come from the resolver.
    assert!(matches!(
        handle(&mut t, t0, 2, req(99, 2), &meta),
        Reply::Send(Frame::Error {
            code: ErrorCode::NoSuchSegment,
            ..
        })
    ));
    let out = outputs(&mut t);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, TableOutput::Shard(ShardCommand::StartSession { .. })))
            .count(),
        2
    );
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, TableOutput::Shard(ShardCommand::AddReceiver { .. })))
            .count(),
        3
    );
    // Client 1 stops session 1: it goes idle and expires after the idle timeout; its id is
    // quarantined, then reused.
    assert_eq!(
        handle(
            &mut t,
            t0,
            1,
            Frame::StopSegment {
                session: s1.session
            },
            &meta
        ),
        Reply::Send(Frame::Ack {
            session: s1.session
        })
    );
    let t1 = t0 + Duration::from_millis(1100);
    for c in [1, 2] {
        handle(
            &mut t,
            t1,
            c,
            Frame::Heartbeat {
                session: s0.session,
                stats: ReceiverStats::default(),
            },
            &meta,
        );
    }
    assert!(t.poll_timeout().unwrap() <= t1);
    t.handle_timeout(t1);
    assert_eq!(t.session_count(), 1);
    assert!(
        outputs(&mut t).contains(&TableOutput::Shard(ShardCommand::EndSession {
            session: s1.session
        }))
    );
    // Within the quarantine a new session gets id 2, after it the id 1 comes back.
    let s2 = session_of(handle(&mut t, t1, 2, req(5, 2), &meta));
    assert_eq!(s2.session, SessionId(2));
    handle(
        &mut t,
        t1,
        2,
        Frame::StopSegment {
            session: s2.session,
        },
        &meta,
    );
    let t2 = t1 + Duration::from_millis(600);
    for c in [1, 2] {
        handle(
            &mut t,
            t2,
            c,
            Frame::Heartbeat {
                session: s0.session,
                stats: ReceiverStats::default(),
            },
            &meta,
        );
    }
    // The session table is full (s0 + idle s2): the idle one is evicted to make room.
    let s3 = session_of(handle(&mut t, t2, 1, req(6, 1), &meta));
    assert_eq!(s3.session, SessionId(1));
    assert!(t.session(SessionId(2)).is_none());
    // Heartbeats for sessions the client is not in are refused.
    assert!(matches!(
        handle(
            &mut t,
            t2,
            2,
            Frame::Heartbeat {
                session: s3.session,
                stats: ReceiverStats::default()
            },
            &meta
        ),
        Reply::Send(Frame::Error {
            code: ErrorCode::NoSuchSession,
            ..
        })
    ));
    // Exit removes the client everywhere; a third client can now connect.
    assert_eq!(handle(&mut t, t2, 1, Frame::Exit, &meta), Reply::Close);
    assert_eq!(t.client_count(), 1);
    assert!(t.session(s3.session).unwrap().receivers.is_empty());
    assert!(matches!(
        handle(&mut t, t2, 3, hello(3, false), &meta),
        Reply::Send(Frame::Hello(_))
    ));
    // Driver-level frames are handed back; peer frames are refused.
    assert_eq!(
        handle(&mut t, t2, 3, Frame::ListFiles, &meta),
        Reply::Unhandled(Frame::ListFiles)
    );
    assert!(matches!(
        handle(&mut t, t2, 3, Frame::ExitCoop, &meta),
        Reply::SendAndClose(Frame::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
}

#[test]
fn rates_share_the_cap_and_follow_reported_loss() {
    let meta = file_meta(10 * 100_000, 1);
    let cfg = TableConfig {
        max_rate_bps: Some(100_000_000),
        initial_rate_bps: 10_000_000,
        max_receiver_rate_bps: 1_000_000_000,
        ..table_config()
    };
    let mut t = SessionTable::new(cfg);
    let mut now = Instant::now();
    let mut sids = Vec::new();
    for c in 1..=4u64 {
        handle(&mut t, now, c, hello(c, false), &meta);
        sids.push(session_of(handle(&mut t, now, c, req((c % 2) as u32, c), &meta)).session);
    }
    let mut rates: HashMap<(SessionId, ClientId), u64> = HashMap::new();
    let apply = |out: Vec<TableOutput>, rates: &mut HashMap<(SessionId, ClientId), u64>| {
        for o in out {
            match o {
                TableOutput::Shard(ShardCommand::AddReceiver {
                    session,
                    client,
                    rate_bps,
                    ..
                })
                | TableOutput::Shard(ShardCommand::SetRate {
                    session,
                    client,
                    rate_bps,
                }) => {
                    rates.insert((session, client), rate_bps);
                }
                _ => {}
            }
        }
    };
    apply(outputs(&mut t), &mut rates);
    assert_eq!(rates.len(), 4);
    assert!(rates.values().all(|r| *r == 10_000_000));
    // Clients 1-3 see no loss and receive what they are sent; client 4 sees 10 % loss at 8 Mbit/s.
    for _ in 0..30 {
        now += Duration::from_millis(250);
        for c in 1..=4u64 {
            let lossy = c == 4;
            let sid = sids[c as usize - 1];
            let stats = ReceiverStats {
                loss_ppm: if lossy { 100_000 } else { 0 },
                receive_rate_bps: if lossy {
                    8_000_000
                } else {
                    rates[&(sid, ClientId(c))]
                },
                ..ReceiverStats::default()
            };
            let r = handle(
                &mut t,
                now,
                c,
                Frame::Heartbeat {
                    session: sids[c as usize - 1],
                    stats,
                },
                &meta,
            );
            assert!(matches!(r, Reply::Send(Frame::HeartbeatAck { .. })));
        }
        apply(outputs(&mut t), &mut rates);
        let total: u64 = rates.values().sum();
        assert!(total <= 100_000_000, "total {total} over the cap");
    }
    let lossy = rates[&(sids[3], ClientId(4))];
    let clean = rates[&(sids[0], ClientId(1))];
    assert!(lossy < 8_000_000, "lossy receiver kept {lossy}");
    assert!(
        clean > 30_000_000,
        "clean receivers share the rest: {clean}"
    );
    let total: u64 = rates.values().sum();
    assert!(total > 95_000_000, "the cap is used: {total}");
    // The table's view agrees with the commands.
    for v in t.sessions() {
        for r in v.receivers {
            assert_eq!(rates[&(v.session, r.client)], r.rate_bps);
        }
    }
}

#[test]
fn peers_are_listed_most_useful_first() {
    let meta = file_meta(10 * 100_000, 1);
    let mut t = SessionTable::new(table_config());
    let now = Instant::now();
    for c in 1..=5u64 {
        handle(&mut t, now, c, hello(c, c != 5), &meta);
    }
    // 1 holds segment 3 (decoded), 2 and 3 receive it (ranks 10 and 40), 4 resumed with it (Have),
    // 5 receives it but does not cooperate (no control address).
    let s = session_of(handle(&mut t, now, 1, req(3, 1), &meta)).session;
    handle(&mut t, now, 1, Frame::StopSegment { session: s }, &meta);
    for (c, rank) in [(2u64, 10u32), (3, 40), (5, 50)] {
        handle(&mut t, now, c, req(3, c), &meta);
        let stats = ReceiverStats {
            decoded_rank: rank,
            ..ReceiverStats::default()
        };
        handle(
            &mut t,
            now,
            c,
            Frame::Heartbeat { session: s, stats },
            &meta,
        );
    }
    let have = Frame::Have {
        name: NAME.into(),
        version: 1,
        ranges: vec![SegmentRange { start: 0, end: 5 }],
    };
    assert!(matches!(
        handle(&mut t, now, 4, have, &meta),
        Reply::Send(Frame::Ack { .. })
    ));
    let ask = |t: &mut SessionTable, c: u64, q: PeersQuery| match handle(
        t,
        now,
        c,
        Frame::Peers(q),
        &meta,
    ) {
        Reply::Send(Frame::PeerList { peers, segment, .. }) => {
            assert_eq!(segment, 3);
            peers
                .iter()
                .map(|p| (p.node_id.0, p.holding))
                .collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    let by_segment = PeersQuery::Segment {
        name: NAME.into(),
        segment: 3,
    };
    let got = ask(&mut t, 2, by_segment.clone());
    assert_eq!(got.len(), 3);
    // Complete holders first (1 and 4, least recommended first), then receiver 3 (rank 40).
    assert_eq!(
        &got[..2].iter().map(|p| p.1).collect::<Vec<_>>(),
        &[PeerHolding::Complete; 2]
    );
    assert_eq!(got[2], (3, PeerHolding::Receiving));
    // Load spreads: the next asker sees the other complete holder first.
    let again = ask(&mut t, 3, PeersQuery::Session(s));
    assert_ne!(again[0].0, got[0].0);
    assert_eq!(again[2], (2, PeerHolding::Receiving));
    // Exit removes a peer from the lists.
    handle(&mut t, now, 1, Frame::Exit, &meta);
    let after = ask(&mut t, 2, by_segment);
    assert!(after.iter().all(|p| p.0 != 1));
    assert_eq!(after.len(), 2);
}

// ---- Download in isolation ----------------------------------------------------------------------

fn connects_until_failure(seed: u64) -> (Vec<Duration>, Option<DownloadError>) {
    let cfg = DownloadConfig {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        max_attempts: Some(9),
        seed,
        ..DownloadConfig::new(NodeId(1), addr(0))
    };
    let t0 = Instant::now();
    let mut dl = Download::new(cfg, file_meta(100, 1), []);
    dl.start(t0, false);
    let mut now = t0;
    let mut connects = Vec::new();
    let mut failed = None;
    for _ in 0..100_000 {
        while let Some(a) = dl.poll_action() {
            match a {
                DownloadAction::Connect => {
                    connects.push(now - t0);
                    dl.handle_connect_failed(now);
                }
                DownloadAction::Failed(e) => failed = Some(e),
                other => panic!("unexpected {other:?}"),
            }
        }
        if failed.is_some() {
            break;
        }
        now = dl.poll_timeout().expect("a retry is scheduled");
        dl.handle_timeout(now);
    }
    (connects, failed)
}

#[test]
fn backoff_is_exponential_with_seeded_jitter_and_bounded_attempts() {
    let (connects, failed) = connects_until_failure(1);
    assert_eq!(failed, Some(DownloadError::Unreachable { attempts: 9 }));
    assert_eq!(connects.len(), 9);
    for (k, w) in connects.windows(2).enumerate() {
        let gap = w[1] - w[0];
        let base = (Duration::from_millis(100) * (1 << k)).min(Duration::from_secs(2));
        assert!(
            gap >= base / 2 && gap <= base,
            "attempt {k}: gap {gap:?}, base {base:?}"
        );
    }
    // Deterministic per seed, different across seeds.
    assert_eq!(connects_until_failure(1).0, connects);
    assert_ne!(connects_until_failure(2).0, connects);
}

#[test]
fn download_rejects_mismatched_session_meta_and_fatal_errors() {
    let t0 = Instant::now();
    let meta = file_meta(3 * 100_000, 5);
    let mk = || {
        let mut dl = Download::new(DownloadConfig::new(NodeId(1), addr(0)), meta.clone(), []);
        dl.start(t0, true);
        let first: Vec<_> = std::iter::from_fn(|| dl.poll_action()).collect();
        assert_eq!(first, vec![DownloadAction::Send(req(0, 0))]);
        dl
    };
    let sm = |segment_len: u64, version: u64| {
        Frame::SessionMeta(SessionMeta {
            session: SessionId(4),
            name: NAME.into(),
            segment: 0,
            data_port: 1,
            code: code(),
            key: SessionKey([1; 32]),
            segment_len,
            version,
        })
    };
    let mut dl = mk();
    dl.handle_frame(t0, sm(100_000, 6));
    assert_eq!(
        dl.poll_action(),
        Some(DownloadAction::Failed(DownloadError::FileChanged))
    );
    let mut dl = mk();
    dl.handle_frame(t0, sm(99_999, 5));
    assert!(matches!(
        dl.poll_action(),
        Some(DownloadAction::Failed(DownloadError::Protocol(_)))
    ));
    let mut dl = mk();
    dl.handle_frame(t0, Frame::error(ErrorCode::NoSuchFile, "nope"));
    assert!(matches!(
        dl.poll_action(),
        Some(DownloadAction::Failed(DownloadError::NoSuchFile(_)))
    ));
    // A transient error retries the request after a backoff on the same connection.
    let mut dl = mk();
    dl.handle_frame(t0, Frame::error(ErrorCode::TooManySessions, "busy"));
    assert_eq!(dl.poll_action(), None);
    let at = dl.poll_timeout().unwrap();
    assert!(at > t0 && at <= t0 + Duration::from_millis(100));
    dl.handle_timeout(at);
    assert_eq!(dl.poll_action(), Some(DownloadAction::Send(req(0, 0))));
    // A good meta starts the segment; heartbeats follow on the timer with the driver's stats.
    dl.handle_frame(at, sm(100_000, 5));
    assert!(
        matches!(dl.poll_action(), Some(DownloadAction::StartSegment(m)) if m.session == SessionId(4))
    );
    let stats = ReceiverStats {
        received_packets: 7,
        ..ReceiverStats::default()
    };
    dl.update_stats(stats);
    let hb = dl.poll_timeout().unwrap();
    assert_eq!(hb, at + Duration::from_millis(250));
    dl.handle_timeout(hb);
    assert_eq!(
        dl.poll_action(),
        Some(DownloadAction::Send(Frame::Heartbeat {
            session: SessionId(4),
            stats
        }))
    );
    dl.handle_frame(
        hb,
        Frame::HeartbeatAck {
            session: SessionId(4),
            send_rate_bps: 123,
        },
    );
    assert_eq!(dl.server_rate_bps(), 123);
    // Decoded: StopSegment at once and the next segment requested before the verdict.
    dl.segment_decoded(hb, 0);
    assert_eq!(
        dl.poll_action(),
        Some(DownloadAction::Send(Frame::StopSegment {
            session: SessionId(4)
        }))
    );
    assert_eq!(
        dl.poll_action(),
        Some(DownloadAction::StopSegment {
            session: SessionId(4),
            segment: 0
        })
    );
    assert_eq!(dl.poll_action(), Some(DownloadAction::Send(req(1, 0))));
    assert_eq!(dl.verifying().iter().copied().collect::<Vec<_>>(), [0]);
    dl.segment_verified(hb, 0, true);
    assert!(dl.verifying().is_empty());
    assert!(dl.completed().contains(&0));
    assert_eq!(dl.poll_action(), None, "the verdict sends nothing more");
}

#[test]
fn hostile_have_is_bounded() {
    let meta = file_meta(10 * 100_000, 1);
    let mut t = SessionTable::new(table_config());
    let now = Instant::now();
    handle(&mut t, now, 1, hello(1, true), &meta);
    handle(&mut t, now, 2, hello(2, true), &meta);
    let huge = Frame::Have {
        name: NAME.into(),
        version: 1,
        ranges: vec![
            SegmentRange {
                start: 0,
                end: u32::MAX
            };
            MAX_RANGES
        ],
    };
    let started = std::time::Instant::now();
    assert!(matches!(
        handle(&mut t, now, 1, huge, &meta),
        Reply::Send(Frame::Ack { .. })
    ));
    // Bounded work: MAX_SEGMENTS insertions, not 2^32 x 16384 (generous bound for slow CI).
    assert!(started.elapsed() < Duration::from_secs(5));
    let q = PeersQuery::Segment {
        name: NAME.into(),
        segment: 5,
    };
    match handle(&mut t, now, 2, Frame::Peers(q), &meta) {
        Reply::Send(Frame::PeerList { peers, .. }) => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].segments_held, MAX_SEGMENTS as u32);
        }
        other => panic!("{other:?}"),
    }
    // Files per client are limited.
    for k in 1..MAX_FILES_PER_CLIENT {
        let f = Frame::Have {
            name: format!("f{k}"),
            version: 1,
            ranges: vec![],
        };
        assert!(matches!(
            handle(&mut t, now, 1, f, &meta),
            Reply::Send(Frame::Ack { .. })
        ));
    }
    let f = Frame::Have {
        name: "one-too-many".into(),
        version: 1,
        ranges: vec![],
    };
    assert!(matches!(
        handle(&mut t, now, 1, f, &meta),
        Reply::Send(Frame::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
}

#[test]
fn rate_growth_follows_what_the_receiver_takes() {
    let meta = file_meta(10 * 100_000, 1);
    let cfg = TableConfig {
        initial_rate_bps: 10_000_000,
        max_receiver_rate_bps: 10_000_000_000,
        ..table_config()
    };
    let mut t = SessionTable::new(cfg);
    let mut now = Instant::now();
    handle(&mut t, now, 1, hello(1, false), &meta);
    let s = session_of(handle(&mut t, now, 1, req(0, 1), &meta)).session;
    for _ in 0..50 {
        now += Duration::from_millis(250);
        // No loss, but the receiver only ever gets 30 Mbit/s.
        let stats = ReceiverStats {
            receive_rate_bps: 30_000_000,
            ..ReceiverStats::default()
        };
        handle(
            &mut t,
            now,
            1,
            Frame::Heartbeat { session: s, stats },
            &meta,
        );
    }
    let rate = t.session(s).unwrap().receivers[0].rate_bps;
    assert!((30_000_000..=60_000_000).contains(&rate), "{rate}");
}

#[test]
fn connect_that_never_answers_is_abandoned() {
    let t0 = Instant::now();
    let mut dl = Download::new(
        DownloadConfig::new(NodeId(1), addr(0)),
        file_meta(100, 1),
        [],
    );
    dl.start(t0, false);
    assert_eq!(dl.poll_action(), Some(DownloadAction::Connect));
    let at = dl.poll_timeout().unwrap();
    assert_eq!(at, t0 + Duration::from_secs(5));
    dl.handle_timeout(at);
    assert_eq!(dl.poll_action(), Some(DownloadAction::Disconnect));
    // A late success report is ignored; the next Connect comes after the backoff.
    dl.handle_connected(at);
    assert_eq!(dl.poll_action(), None);
    let retry = dl.poll_timeout().unwrap();
    assert!(retry > at && retry <= at + Duration::from_millis(100));
    dl.handle_timeout(retry);
    assert_eq!(dl.poll_action(), Some(DownloadAction::Connect));
}

#[test]
fn have_is_versioned() {
    let meta = file_meta(10 * 100_000, 1);
    let mut t = SessionTable::new(table_config());
    let now = Instant::now();
    for c in 1..=3u64 {
        handle(&mut t, now, c, hello(c, true), &meta);
    }
    let have = |version| Frame::Have {
        name: NAME.into(),
        version,
        ranges: vec![SegmentRange { start: 0, end: 10 }],
    };
    // Resumed holders announce before anyone requested: both are kept until the version is known.
    assert!(matches!(
        handle(&mut t, now, 1, have(1), &meta),
        Reply::Send(Frame::Ack { .. })
    ));
    assert!(matches!(
        handle(&mut t, now, 2, have(0), &meta),
        Reply::Send(Frame::Ack { .. })
    ));
    // A request resolves the version: the stale holder is dropped, the current one kept.
    session_of(handle(&mut t, now, 3, req(4, 3), &meta));
    let q = PeersQuery::Segment {
        name: NAME.into(),
        segment: 4,
    };
    match handle(&mut t, now, 3, Frame::Peers(q), &meta) {
        Reply::Send(Frame::PeerList { peers, .. }) => {
            assert_eq!(
                peers.iter().map(|p| p.node_id).collect::<Vec<_>>(),
                vec![NodeId(1)]
            );
        }
        other => panic!("{other:?}"),
    }
    // Later stale announcements are refused with FileChanged.
    assert!(matches!(
        handle(&mut t, now, 2, have(0), &meta),
        Reply::Send(Frame::Error {
            code: ErrorCode::FileChanged,
            ..
        })
    ));
}

#[test]
fn next_segment_starts_at_the_rate_the_client_reached() {
    let meta = file_meta(10 * 100_000, 1);
    let cfg = TableConfig {
        initial_rate_bps: 100_000_000,
        max_receiver_rate_bps: 40_000_000_000,
        ..table_config()
    };
    let mut t = SessionTable::new(cfg);
    let mut now = Instant::now();
    for c in 1..=2u64 {
        handle(&mut t, now, c, hello(c, false), &meta);
    }
    let fast = session_of(handle(&mut t, now, 1, req(0, 1), &meta)).session;
    let slow = session_of(handle(&mut t, now, 2, req(1, 2), &meta)).session;
    for _ in 0..20 {
        now += Duration::from_millis(250);
        // Client 1 takes everything it is sent; client 2 loses 10 %.
        let rate = t.session(fast).unwrap().receivers[0].rate_bps;
        let stats = ReceiverStats {
            receive_rate_bps: rate,
            ..ReceiverStats::default()
        };
        handle(
            &mut t,
            now,
            1,
            Frame::Heartbeat {
                session: fast,
                stats,
            },
            &meta,
        );
        let stats = ReceiverStats {
            receive_rate_bps: 20_000_000,
            loss_ppm: 100_000,
            ..ReceiverStats::default()
        };
        handle(
            &mut t,
            now,
            2,
            Frame::Heartbeat {
                session: slow,
                stats,
            },
            &meta,
        );
    }
    let fast_rate = t.session(fast).unwrap().receivers[0].rate_bps;
    let slow_rate = t.session(slow).unwrap().receivers[0].rate_bps;
    assert!(fast_rate >= 1_000_000_000, "{fast_rate}");
    assert!(slow_rate <= 20_000_000, "{slow_rate}");
    // Each client finishes its segment and asks for the next: the fast one resumes at the rate it
    // reached, the slow one starts over from the initial rate (and is cut again by its loss).
    handle(&mut t, now, 1, Frame::StopSegment { session: fast }, &meta);
    handle(&mut t, now, 2, Frame::StopSegment { session: slow }, &meta);
    let fast2 = session_of(handle(&mut t, now, 1, req(2, 1), &meta)).session;
    let slow2 = session_of(handle(&mut t, now, 2, req(3, 2), &meta)).session;
    assert_eq!(t.session(fast2).unwrap().receivers[0].rate_bps, fast_rate);
    assert_eq!(t.session(slow2).unwrap().receivers[0].rate_bps, 100_000_000);
}

/// Pipelining: the next segment is requested when the current one decodes, before its digest
/// verdict; a failed verdict makes the segment missing again (requested after the current one);
/// `Done` waits for the last verdict, and a late verdict after a reconnect still counts.
#[test]
fn next_segment_is_requested_at_decode_and_done_waits_for_every_verdict() {
    let t0 = Instant::now();
    let meta = file_meta(3 * 100_000, 5);
    let mut dl = Download::new(DownloadConfig::new(NodeId(1), addr(0)), meta.clone(), []);
    let actions = |dl: &mut Download| std::iter::from_fn(|| dl.poll_action()).collect::<Vec<_>>();
    let sm = |session: u32, segment: u32| {
        Frame::SessionMeta(SessionMeta {
            session: SessionId(session),
            name: NAME.into(),
            segment,
            data_port: 1,
            code: code(),
            key: SessionKey([1; 32]),
            segment_len: 100_000,
            version: 5,
        })
    };
    let stop = |session: u32, segment: u32| {
        vec![
            DownloadAction::Send(Frame::StopSegment {
                session: SessionId(session),
            }),
            DownloadAction::StopSegment {
                session: SessionId(session),
                segment,
            },
        ]
    };
    dl.start(t0, true);
    assert_eq!(actions(&mut dl), [DownloadAction::Send(req(0, 0))]);
    dl.handle_frame(t0, sm(10, 0));
    assert!(matches!(&actions(&mut dl)[..], [DownloadAction::StartSegment(m)] if m.segment == 0));
    // Segment 0 decodes: stop it and ask for 1 at once.
    dl.segment_decoded(t0, 0);
    let mut want = stop(10, 0);
    want.push(DownloadAction::Send(req(1, 0)));
    assert_eq!(actions(&mut dl), want);
    // The verdict of 0 (bad) arrives while 1 is requested: nothing is sent now.
    dl.segment_verified(t0, 0, false);
    assert_eq!(actions(&mut dl), []);
    assert_eq!(dl.digest_failures(0), 1);
    dl.handle_frame(t0, sm(11, 1));
    assert!(matches!(&actions(&mut dl)[..], [DownloadAction::StartSegment(m)] if m.segment == 1));
    // 1 decodes: the failed 0 comes next, before 2.
    dl.segment_decoded(t0, 1);
    let mut want = stop(11, 1);
    want.push(DownloadAction::Send(req(0, 0)));
    assert_eq!(actions(&mut dl), want);
    dl.segment_verified(t0, 1, true);
    dl.handle_frame(t0, sm(12, 0));
    actions(&mut dl);
    dl.segment_decoded(t0, 0);
    let mut want = stop(12, 0);
    want.push(DownloadAction::Send(req(2, 0)));
    assert_eq!(actions(&mut dl), want);
    dl.handle_frame(t0, sm(13, 2));
    actions(&mut dl);
    // 2 decodes while 0's verdict is still pending: nothing left to request, not done yet.
    dl.segment_decoded(t0, 2);
    assert_eq!(actions(&mut dl), stop(13, 2));
    assert_eq!(dl.verifying().iter().copied().collect::<Vec<_>>(), [0, 2]);
    assert!(!dl.is_finished());
    assert_eq!(
        dl.poll_timeout(),
        None,
        "no timer while only verdicts are pending"
    );
    // A verdict for a segment that is not being verified is ignored.
    dl.segment_verified(t0, 1, false);
    assert_eq!(dl.digest_failures(1), 0);
    // The connection drops meanwhile; the verdicts still complete the download.
    dl.handle_disconnected(t0);
    actions(&mut dl);
    dl.segment_verified(t0, 2, true);
    assert_eq!(actions(&mut dl), []);
    dl.segment_verified(t0, 0, true);
    assert_eq!(actions(&mut dl), [DownloadAction::Done]);
    assert_eq!(dl.requests_sent(), &[0, 1, 0, 2]);
}

/// Frequent heartbeats: each one reaches the shard as `Progress` (received packets, rank, loss) for
/// its send window, while the rate adapts at most once per `adapt_interval`.
#[test]
fn every_heartbeat_is_progress_for_the_shard_and_rates_adapt_once_per_interval() {
    let meta = file_meta(3 * 100_000, 1);
    let cfg = TableConfig {
        initial_rate_bps: 100_000_000,
        adapt_interval: Duration::from_millis(200),
        ..TableConfig::default()
    };
    let mut t = SessionTable::new(cfg);
    let mut now = Instant::now();
    handle(&mut t, now, 1, hello(1, false), &meta);
    let s = session_of(handle(&mut t, now, 1, req(0, 1), &meta)).session;
    outputs(&mut t);
    let mut rates = Vec::new();
    let mut progress = Vec::new();
    for i in 1..=20u64 {
        now += Duration::from_millis(20);
        let stats = ReceiverStats {
            received_packets: i * 100,
            decoded_rank: (i * 90) as u32,
            receive_rate_bps: 100_000_000,
            loss_ppm: 7,
            ..ReceiverStats::default()
        };
        handle(
            &mut t,
            now,
            1,
            Frame::Heartbeat { session: s, stats },
            &meta,
        );
        for o in outputs(&mut t) {
            match o {
                TableOutput::Shard(ShardCommand::Progress {
                    session,
                    client,
                    received_packets,
                    rank,
                    loss_ppm,
                }) => {
                    assert_eq!((session, client, loss_ppm), (s, ClientId(1), 7));
                    progress.push((received_packets, rank));
                }
                TableOutput::Shard(ShardCommand::SetRate { rate_bps, .. }) => rates.push(rate_bps),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(progress.len(), 20);
    assert_eq!(progress[19], (2000, 1800));
    // 400 ms of heartbeats every 20 ms: the first adapts, then one per 200 ms (two more).
    assert!(
        (1..=3).contains(&rates.len()),
        "{} rate changes: {rates:?}",
        rates.len()
    );
    // A heartbeat for a session the client left is refused and reaches no shard.
    handle(&mut t, now, 1, Frame::StopSegment { session: s }, &meta);
    outputs(&mut t);
    let reply = handle(
        &mut t,
        now,
        1,
        Frame::Heartbeat {
            session: s,
            stats: ReceiverStats::default(),
        },
        &meta,
    );
    assert!(matches!(
        reply,
        Reply::Send(Frame::Error {
            code: ErrorCode::NoSuchSession,
            ..
        })
    ));
    assert!(outputs(&mut t)
        .iter()
        .all(|o| !matches!(o, TableOutput::Shard(ShardCommand::Progress { .. }))));
}

/// With `cap_headroom_percent`, the receivers' shares add up to the cap plus that headroom (the
/// driver caps the total egress itself), split fairly.
#[test]
fn cap_headroom_oversubscribes_the_shares() {
    let meta = file_meta(10 * 100_000, 1);
    let cfg = TableConfig {
        max_rate_bps: Some(100_000_000),
        cap_headroom_percent: 25,
        initial_rate_bps: 1_000_000_000,
        max_receiver_rate_bps: 1_000_000_000,
        ..table_config()
    };
    let mut t = SessionTable::new(cfg);
    let now = Instant::now();
    for c in 1..=4u64 {
        handle(&mut t, now, c, hello(c, false), &meta);
        session_of(handle(&mut t, now, c, req((c % 2) as u32, c), &meta));
    }
    let rates: Vec<u64> = t
        .sessions()
        .iter()
        .flat_map(|s| s.receivers.iter().map(|r| r.rate_bps).collect::<Vec<_>>())
        .collect();
    assert_eq!(rates.len(), 4);
    assert!(rates.iter().all(|r| *r == 125_000_000 / 4), "{rates:?}");
}
