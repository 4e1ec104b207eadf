//! A hostile cooperation peer for the pollution tests: real TCP and UDP, built on `ccfd_proto` frames
//! and `snc` packets, no mocks.
//!
//! It joins the server like a client (`Hello` with a cooperation `control_addr`, `FileMetaRequest`,
//! then a `Have` claiming every segment so the server lists it first in `PeerList` answers) and
//! keeps that connection alive with bare heartbeats. On its cooperation listener it accepts
//! peers' links (`Hello { role: Peer }` both ways), acknowledges every `AskCoop`, heartbeats every
//! link, and streams *well-formed* codec packets with random coefficients and garbage symbols,
//! sealed under the asker's session key (so the MAC verifies), to the asker's `receive_addr`.
//! Only the segment digest can tell them from honest packets.
//!
//! Everything is bounded: each stream sends at most [`HostileConfig::max_packets_per_stream`]
//! packets, at a paced rate, and every thread ends at [`HostileConfig::lifetime`] or when the
//! [`Hostile`] is dropped.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ccfd_proto::{
    DataHeader, DataPacket, FileMeta, Frame, FrameDecoder, Hello, NodeId, Origin, ReceiverStats,
    Role, SegmentRange, SessionId, SessionKey, PROTOCOL_VERSION,
};
use snc::packet::{self, Header, PacketKind};
use snc::Layout;

/// How the adversary behaves.
#[derive(Debug, Clone)]
pub struct HostileConfig {
    /// Every thread ends this long after the start, whatever happens.
    pub lifetime: Duration,
    /// Most garbage packets sent per acknowledged ask.
    pub max_packets_per_stream: u64,
    /// Packets per pacing tick (1 ms) of one stream.
    pub packets_per_ms: u32,
    /// Keep sending this long after the asker's `StopCoop` (a peer that ignores stops); zero to
    /// honour stops at once.
    pub ignore_stop_for: Duration,
}

impl Default for HostileConfig {
    fn default() -> Self {
        HostileConfig {
            lifetime: Duration::from_secs(120),
            max_packets_per_stream: 200_000,
            packets_per_ms: 8,
            ignore_stop_for: Duration::ZERO,
        }
    }
}

/// What the adversary did (read by the test).
#[derive(Debug, Default)]
pub struct HostileStats {
    /// Cooperation links peers opened to it.
    pub links: AtomicU64,
    /// `AskCoop`s received (all acknowledged).
    pub asks: AtomicU64,
    /// `StopCoop`s received.
    pub stops: AtomicU64,
    /// Garbage data packets sent.
    pub packets_sent: AtomicU64,
    /// Sends that failed.
    pub send_errors: AtomicU64,
    /// `PeerList`/other frames from the server (liveness of its client connection).
    pub server_frames: AtomicU64,
}

/// A running adversary; dropping it stops and joins every thread.
pub struct Hostile {
    /// Its cooperation listener (announced to the server in Hello).
    pub control_addr: SocketAddr,
    /// Its UDP socket's address (the source of its garbage).
    pub data_addr: SocketAddr,
    /// Counters.
    pub stats: Arc<HostileStats>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

struct Shared {
    config: HostileConfig,
    meta: FileMeta,
    node_id: NodeId,
    control_addr: SocketAddr,
    data_addr: SocketAddr,
    udp: UdpSocket,
    stats: Arc<HostileStats>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Shared {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    fn spawn(self: &Arc<Self>, f: impl FnOnce(Arc<Shared>) + Send + 'static) {
        let shared = Arc::clone(self);
        let handle = std::thread::spawn(move || f(shared));
        if let Ok(mut threads) = self.threads.lock() {
            threads.push(handle);
        }
    }
}

impl Hostile {
    /// Joins `server` as a client on `ip` asking for file `name`, claims every segment and starts
    /// serving garbage. Panics (the test fails) when the server does not answer as expected.
    pub fn start(server: SocketAddr, ip: IpAddr, name: &str, config: HostileConfig) -> Hostile {
        let listener = TcpListener::bind((ip, 0)).expect("hostile: bind listener");
        listener
            .set_nonblocking(true)
            .expect("hostile: nonblocking listener");
        let control_addr = listener.local_addr().expect("listener addr");
        let udp = UdpSocket::bind((ip, 0)).expect("hostile: bind udp");
        let data_addr = udp.local_addr().expect("udp addr");
        let node_id = NodeId(rand_u64() | 1);
        let deadline = Instant::now() + config.lifetime;

        let mut conn = Conn::connect(server);
        conn.send(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            node_id,
            data_addr: Some(data_addr),
            control_addr: Some(control_addr),
        }));
        match conn.recv(Duration::from_secs(10)) {
            Some(Frame::Hello(_)) => {}
            other => panic!("hostile: server answered Hello with {other:?}"),
        }
        // The meta may still be computed: retry NotReady (bounded).
        let mut meta = None;
        for _ in 0..100 {
            conn.send(&Frame::FileMetaRequest { name: name.into() });
            match conn.recv(Duration::from_secs(10)) {
                Some(Frame::FileMeta(m)) => {
                    meta = Some(m);
                    break;
                }
                Some(Frame::Error { code, .. }) if code.is_transient() => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                other => panic!("hostile: FileMetaRequest answered with {other:?}"),
            }
        }
        let meta = meta.expect("hostile: file meta never ready");
        if meta.segment_count > 0 {
            conn.send(&Frame::Have {
                name: name.into(),
                version: meta.version,
                ranges: vec![SegmentRange {
                    start: 0,
                    end: meta.segment_count,
                }],
            });
            match conn.recv(Duration::from_secs(10)) {
                Some(Frame::Ack { .. }) => {}
                other => panic!("hostile: Have answered with {other:?}"),
            }
        }

        let stats = Arc::new(HostileStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            config,
            meta,
            node_id,
            control_addr,
            data_addr,
            udp,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            deadline,
            threads: Arc::clone(&threads),
        });
        shared.spawn(move |s| server_keepalive(&s, conn));
        shared.spawn(move |s| accept_loop(&s, listener));
        Hostile {
            control_addr,
            data_addr,
            stats,
            stop,
            threads,
        }
    }

    /// `AskCoop`s received so far.
    pub fn asks(&self) -> u64 {
        self.stats.asks.load(Ordering::Relaxed)
    }

    /// Garbage packets sent so far.
    pub fn packets_sent(&self) -> u64 {
        self.stats.packets_sent.load(Ordering::Relaxed)
    }

    /// Stops every thread and waits for them (bounded by their own pacing: at most a few ms each).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        loop {
            let next = self.threads.lock().ok().and_then(|mut t| t.pop());
            match next {
                Some(handle) => {
                    let _ = handle.join();
                }
                None => break,
            }
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A blocking frame connection with bounded reads.
struct Conn {
    stream: TcpStream,
    decoder: FrameDecoder,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("hostile: connect {addr}: {e}"));
        Conn::new(stream)
    }

    fn new(stream: TcpStream) -> Conn {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        Conn {
            stream,
            decoder: FrameDecoder::new(),
        }
    }

    /// Sends a frame; false when the connection is gone.
    fn send(&mut self, frame: &Frame) -> bool {
        let bytes = frame.to_bytes().expect("encode frame");
        self.stream.write_all(&bytes).is_ok()
    }

    /// The next frame within `timeout`; `None` on timeout, close or a bad frame.
    fn recv(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_recv() {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) if Instant::now() < deadline => {}
                _ => return None,
            }
        }
    }

    /// A frame if one is buffered or arrives within the read timeout; `Err` when the connection
    /// closed or sent garbage.
    fn try_recv(&mut self) -> Result<Option<Frame>, ()> {
        if let Some(frame) = self.decoder.next_frame().map_err(|_| ())? {
            return Ok(Some(frame));
        }
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(()),
            Ok(n) => {
                self.decoder.push(&buf[..n]);
                self.decoder.next_frame().map_err(|_| ())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(_) => Err(()),
        }
    }
}

/// Keeps the client connection to the server alive (bare heartbeats) and drains its replies.
fn server_keepalive(s: &Shared, mut conn: Conn) {
    let mut next_beat = Instant::now();
    while !s.done() {
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + Duration::from_millis(500);
            if !conn.send(&Frame::Heartbeat {
                session: SessionId::NONE,
                stats: ReceiverStats::default(),
            }) {
                return;
            }
        }
        match conn.try_recv() {
            Ok(Some(_)) => {
                s.stats.server_frames.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(()) => return,
        }
    }
    let _ = conn.send(&Frame::Exit);
}

fn accept_loop(s: &Arc<Shared>, listener: TcpListener) {
    while !s.done() {
        match listener.accept() {
            Ok((stream, _)) => {
                s.stats.links.fetch_add(1, Ordering::Relaxed);
                s.spawn(move |s| peer_link(&s, Conn::new(stream)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One stream's stop switch: `Some(at)` once stopped (it keeps sending until `at`).
type StopAt = Arc<Mutex<Option<Instant>>>;

/// One peer's cooperation link: answer Hello, acknowledge every ask, heartbeat, start/stop streams.
fn peer_link(s: &Arc<Shared>, mut conn: Conn) {
    let mut streams: Vec<(SessionId, StopAt)> = Vec::new();
    let mut next_beat = Instant::now() + Duration::from_millis(200);
    let stop_all = |streams: &[(SessionId, StopAt)], ignore: Duration| {
        for (_, at) in streams {
            if let Ok(mut at) = at.lock() {
                at.get_or_insert(Instant::now() + ignore);
            }
        }
    };
    while !s.done() {
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + Duration::from_millis(200);
            let live: Vec<SessionId> = streams
                .iter()
                .filter(|(_, at)| at.lock().map(|a| a.is_none()).unwrap_or(false))
                .map(|(id, _)| *id)
                .collect();
            let sessions = if live.is_empty() {
                vec![SessionId::NONE]
            } else {
                live
            };
            for session in sessions {
                if !conn.send(&Frame::CoopHeartbeat {
                    session,
                    stats: ReceiverStats::default(),
                }) {
                    stop_all(&streams, s.config.ignore_stop_for);
                    return;
                }
            }
        }
        let frame = match conn.try_recv() {
            Ok(Some(frame)) => frame,
            Ok(None) => continue,
            Err(()) => break,
        };
        match frame {
            Frame::Hello(h) if h.role == Role::Peer => {
                conn.send(&Frame::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    role: Role::Peer,
                    node_id: s.node_id,
                    data_addr: Some(s.data_addr),
                    control_addr: Some(s.control_addr),
                }));
            }
            Frame::AskCoop {
                segment,
                session,
                key,
                receive_addr,
                ..
            } => {
                s.stats.asks.fetch_add(1, Ordering::Relaxed);
                conn.send(&Frame::CoopAck { session });
                if streams.iter().any(|(id, _)| *id == session) {
                    continue;
                }
                let Some(layout) = layout_of(&s.meta, segment) else {
                    continue;
                };
                let at: StopAt = Arc::new(Mutex::new(None));
                streams.push((session, Arc::clone(&at)));
                s.spawn(move |s| {
                    garbage_stream(&s, &layout, session, segment, key, receive_addr, &at)
                });
            }
            Frame::StopCoop { session } => {
                s.stats.stops.fetch_add(1, Ordering::Relaxed);
                if let Some((_, at)) = streams.iter().find(|(id, _)| *id == session) {
                    if let Ok(mut at) = at.lock() {
                        at.get_or_insert(Instant::now() + s.config.ignore_stop_for);
                    }
                }
                streams.retain(|(id, _)| *id != session);
            }
            Frame::ExitCoop => break,
            _ => {}
        }
    }
    stop_all(&streams, s.config.ignore_stop_for);
}

fn layout_of(meta: &FileMeta, segment: u32) -> Option<Layout> {
    let len = meta.segment_len(segment)?;
    ccfd_client::params::code_params(&meta.code, len)
        .validate()
        .ok()
}

/// Streams garbage (valid header, valid MAC, random coefficients, random symbols) until stopped.
fn garbage_stream(
    s: &Shared,
    layout: &Layout,
    session: SessionId,
    segment: u32,
    key: SessionKey,
    to: SocketAddr,
    stopped: &StopAt,
) {
    let mut rng = SplitMix(rand_u64());
    let mut payload = vec![0u8; packet::max_len(layout)];
    let mut datagram = Vec::with_capacity(payload.len() + ccfd_proto::DATA_OVERHEAD);
    let vector = packet::vector_len(layout);
    let window = layout.window() as usize;
    let mut coeffs = vec![0u8; vector];
    let mut seq: u32 = 0;
    let mut sent: u64 = 0;
    while !s.done() && sent < s.config.max_packets_per_stream {
        if stopped
            .lock()
            .map(|at| at.is_some_and(|at| Instant::now() >= at))
            .unwrap_or(true)
        {
            return;
        }
        for _ in 0..s.config.packets_per_ms {
            let subgen = (rng.next() % u64::from(layout.subgen_count().max(1))) as u32;
            // Alternate the two coded forms: a random seed, or an explicit random vector.
            let len = if seq.is_multiple_of(2) {
                let header = Header::Coded {
                    subgen,
                    seed: rng.next(),
                };
                let sym = packet::write_header(layout, &header, &mut payload).expect("header");
                rng.fill(sym);
                packet::len(layout, PacketKind::Coded)
            } else {
                rng.fill(&mut coeffs);
                if layout.field() == snc::Field::Gf2 && !window.is_multiple_of(8) {
                    if let Some(last) = coeffs.last_mut() {
                        *last &= (1u8 << (window % 8)) - 1;
                    }
                }
                if coeffs.iter().all(|&b| b == 0) {
                    coeffs[0] = 1;
                }
                let header = Header::Recoded {
                    subgen,
                    coeffs: &coeffs,
                };
                let sym = packet::write_header(layout, &header, &mut payload).expect("header");
                rng.fill(sym);
                packet::len(layout, PacketKind::Recoded)
            };
            datagram.clear();
            DataPacket::seal(
                &key,
                &DataHeader {
                    origin: Origin::Peer,
                    session,
                    segment,
                    seq,
                },
                &payload[..len],
                &mut datagram,
            );
            seq = seq.wrapping_add(1);
            match s.udp.send_to(&datagram, to) {
                Ok(_) => {
                    sent += 1;
                    s.stats.packets_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    s.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn rand_u64() -> u64 {
    getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15)
}

/// SplitMix64: fast, good enough for garbage.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}
