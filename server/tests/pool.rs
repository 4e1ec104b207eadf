//! The shared systematic pool over real sockets on 127.79.x.y: receivers of one systematic session
//! (the default) get disjoint source symbols that together cover the segment once, then coded packets
//! of their own streams; a lone receiver gets every source symbol then coded repair; a receiver
//! joining after the pool ran dry gets coded packets only (a fresh pool once nobody receives the
//! session); and a receiver whose rank grows from peers stops the server's stream (the send window).

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ccfd_proto::{DataPacket, Frame, ReceiverStats, SessionMeta};
use ccfd_server::units::BitRate;
use snc::packet::Header;

mod common;
use common::*;

/// Segment size of these tests.
const POOL_SEGMENT: u64 = 2 << 20;
/// Size of `big.bin`: one segment of 1600 source symbols of 1280 bytes.
const BIG: usize = 1600 * 1280;

/// A root whose `big.bin` is one segment of `BIG` bytes.
fn pool_root() -> (tempfile::TempDir, Vec<u8>) {
    let dir = root_dir();
    let data = patterned(BIG, 3);
    std::fs::write(dir.path().join("root").join("big.bin"), &data).unwrap();
    (dir, data)
}

/// A server with `POOL_SEGMENT`-byte segments and the default (systematic) coding, its egress capped
/// at `max_rate_bps`.
fn pool_server(
    dir: &tempfile::TempDir,
    ip: &str,
    offset: u16,
    max_rate_bps: u64,
) -> ccfd_server::Server {
    start(dir.path(), ip, udp_base(offset), |s| {
        s.coding.segment_size = POOL_SEGMENT;
        s.max_rate = Some(BitRate::from_bits_per_sec(max_rate_bps).unwrap());
    })
}

/// A receiving socket with a 4 MiB buffer (no loss while the test thread decodes).
fn receiver_socket(ip: &str) -> UdpSocket {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    socket.set_recv_buffer_size(4 << 20).unwrap();
    let addr: std::net::SocketAddr = format!("{ip}:0").parse().unwrap();
    socket.bind(&addr.into()).unwrap();
    let socket: UdpSocket = socket.into();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    socket
}

/// What a raw receiver saw of its session's packets.
#[derive(Debug, Default)]
struct Seen {
    /// Source indices of the systematic packets, in arrival order.
    systematic: Vec<u32>,
    /// Coded packets.
    coded: u64,
    /// A systematic packet came after a coded one.
    systematic_after_coded: bool,
    /// Header sequence numbers, in arrival order.
    seqs: Vec<u32>,
}

impl Seen {
    fn record(&mut self, seq: u32, header: &Header<'_>) {
        self.seqs.push(seq);
        match header {
            Header::Systematic { index } => {
                self.systematic_after_coded |= self.coded > 0;
                self.systematic.push(*index);
            }
            Header::Coded { .. } => self.coded += 1,
            Header::Recoded { .. } => panic!("the server never recodes"),
        }
    }

    /// Every packet sent to this receiver arrived, numbered 0, 1, 2, ...
    fn assert_seqs_count_from_zero(&self, who: &str) {
        let expected: Vec<u32> = (0..self.seqs.len() as u32).collect();
        assert!(
            self.seqs == expected,
            "{who}: sequence numbers {:?}",
            self.seqs
        );
    }
}

/// Receives `meta`'s packets until the segment decodes, reporting progress every 20 ms like a client
/// (packets received, rank); packets whose `seq` `skip` picks are recorded but not decoded (loss
/// after the socket). Stops the segment when done; returns what arrived and the decoded bytes.
fn receive(
    ctl: &mut Ctl,
    socket: &UdpSocket,
    meta: &SessionMeta,
    skip: impl Fn(u32) -> bool,
) -> (Seen, Vec<u8>) {
    let layout = ccfd_server::coder::snc_params_from_wire(&meta.code, meta.segment_len)
        .validate()
        .unwrap();
    let mut out = vec![0u8; meta.segment_len as usize];
    let mut decoder = snc::decoder::Decoder::new(&layout, &mut out).unwrap();
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut heartbeat = Instant::now();
    while !decoder.is_complete() {
        assert!(
            Instant::now() < deadline,
            "not decoded in time: {} systematic, {} coded, rank {}",
            seen.systematic.len(),
            seen.coded,
            decoder.rank()
        );
        report_progress(
            ctl,
            meta,
            &mut heartbeat,
            seen.seqs.len() as u64,
            decoder.rank(),
        );
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let (header, payload) = DataPacket::open(&meta.key, &buf[..n]).expect("MAC verifies");
        assert_eq!(
            (header.session, header.segment),
            (meta.session, meta.segment)
        );
        let packet = snc::packet::parse(&layout, payload).expect("snc packet");
        seen.record(header.seq, &packet.header);
        if !skip(header.seq) {
            decoder.push(payload).expect("decodes");
        }
    }
    drop(decoder);
    stop(ctl, meta);
    (seen, out)
}

/// Stops receiving `meta`'s session and waits for the ack (skipping heartbeat acks).
fn stop(ctl: &mut Ctl, meta: &SessionMeta) {
    ctl.send(&Frame::StopSegment {
        session: meta.session,
    });
    loop {
        match ctl.recv().expect("the stop's ack") {
            Frame::HeartbeatAck { .. } => continue,
            frame => {
                assert_eq!(
                    frame,
                    Frame::Ack {
                        session: meta.session
                    }
                );
                break;
            }
        }
    }
}

fn source_count(meta: &SessionMeta) -> u32 {
    meta.segment_len.div_ceil(u64::from(meta.code.symbol_size)) as u32
}

/// Two receivers on `ips` say Hello (with a cooperation listener when `cooperating`; without one it
/// is `--no-coop`), wait for each other, ask for segment 0 of `big.bin` at the same moment and
/// receive it loss-free: each one's session meta, what it saw and what it decoded.
fn two_receivers_together(
    server: &ccfd_server::Server,
    ips: [&str; 2],
    cooperating: bool,
) -> Vec<(SessionMeta, Seen, Vec<u8>)> {
    let addr = server.control_addr();
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let handles: Vec<_> = ips
            .into_iter()
            .enumerate()
            .map(|(i, ip)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let socket = receiver_socket(ip);
                    let receive_addr = socket.local_addr().unwrap();
                    let mut ctl = Ctl::connect(addr);
                    if cooperating {
                        ctl.hello_cooperating(100 + i as u64, receive_addr);
                    } else {
                        ctl.hello(200 + i as u64, Some(receive_addr));
                    }
                    barrier.wait();
                    let meta = request_segment(&mut ctl, "big.bin", 0, receive_addr);
                    let (seen, decoded) = receive(&mut ctl, &socket, &meta, |_| false);
                    (meta, seen, decoded)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn receivers_joining_together_share_the_source_symbols_then_get_coded_packets() {
    let (dir, data) = pool_root();
    let server = pool_server(&dir, "127.79.1.1", 0, 20_000_000);
    let results = two_receivers_together(&server, ["127.79.1.2", "127.79.1.3"], true);
    let (meta, a, b) = (&results[0].0, &results[0].1, &results[1].1);
    assert_eq!(meta.session, results[1].0.session, "one session");
    assert!(meta.code.systematic, "systematic by default");
    let k = source_count(meta);
    for (who, (_, seen, decoded)) in ["a", "b"].iter().zip(&results) {
        assert!(decoded == &data, "{who} decoded the segment");
        assert!(!seen.systematic_after_coded, "{who}: pool first");
        assert!(seen.coded > 0, "{who} got coded packets after the pool");
        seen.assert_seqs_count_from_zero(who);
        // Shared by pacing (equal rates): neither took (nearly) all of it.
        assert!(
            seen.systematic.len() as u32 >= k / 4,
            "{who} got {} of {k} source symbols",
            seen.systematic.len()
        );
    }
    let a_set: BTreeSet<u32> = a.systematic.iter().copied().collect();
    let b_set: BTreeSet<u32> = b.systematic.iter().copied().collect();
    assert_eq!(a_set.len(), a.systematic.len(), "a got a symbol twice");
    assert_eq!(b_set.len(), b.systematic.len(), "b got a symbol twice");
    assert!(a_set.is_disjoint(&b_set), "a source symbol went to both");
    let all: Vec<u32> = a_set.union(&b_set).copied().collect();
    assert_eq!(
        all,
        (0..k).collect::<Vec<_>>(),
        "together: every symbol once"
    );
    assert_eq!(server.stats().pooled, u64::from(k));
    server.shutdown();
}

#[test]
fn a_lone_receiver_gets_every_source_symbol_then_coded_repair() {
    let (dir, data) = pool_root();
    let server = pool_server(&dir, "127.79.2.1", 1, 100_000_000);
    let socket = receiver_socket("127.79.2.2");
    let receive_addr = socket.local_addr().unwrap();
    let mut ctl = Ctl::connect(server.control_addr());
    ctl.hello_cooperating(1, receive_addr);
    let meta = request_segment(&mut ctl, "big.bin", 0, receive_addr);
    let k = source_count(&meta);
    // One packet in ten lost after the socket: coded packets repair the holes.
    let (seen, decoded) = receive(&mut ctl, &socket, &meta, |seq| seq % 10 == 3);
    assert!(decoded == data, "decoded the segment");
    seen.assert_seqs_count_from_zero("lone");
    assert_eq!(
        seen.systematic.iter().copied().collect::<BTreeSet<u32>>(),
        (0..k).collect(),
        "every source symbol, once"
    );
    assert_eq!(seen.systematic.len() as u32, k);
    assert!(!seen.systematic_after_coded);
    assert!(seen.coded >= u64::from(k / 10) - 10, "{} coded", seen.coded);
    assert_eq!(server.stats().pooled, u64::from(k));
    server.shutdown();
}

#[test]
fn receivers_that_do_not_cooperate_each_get_every_source_symbol() {
    let (dir, data) = pool_root();
    let server = pool_server(&dir, "127.79.5.1", 4, 20_000_000);
    let results = two_receivers_together(&server, ["127.79.5.2", "127.79.5.3"], false);
    assert_eq!(results[0].0.session, results[1].0.session, "one session");
    let k = source_count(&results[0].0);
    for (who, (_, seen, decoded)) in ["a", "b"].iter().zip(&results) {
        assert!(decoded == &data, "{who} decoded the segment");
        seen.assert_seqs_count_from_zero(who);
        assert_eq!(
            seen.systematic.iter().copied().collect::<BTreeSet<u32>>(),
            (0..k).collect(),
            "{who}: every source symbol"
        );
        assert_eq!(seen.systematic.len() as u32, k, "{who}: each once");
        assert_eq!(seen.coded, 0, "{who}: no loss, no repair");
    }
    assert_eq!(server.stats().pooled, 0, "the pool is left alone");
    server.shutdown();
}

/// A receiver joining while another holds the whole pool gets coded packets only; once nobody
/// receives the session any more, the next receiver gets a fresh pool.
#[test]
fn a_receiver_joining_after_the_pool_ran_dry_gets_coded_packets_only() {
    let (dir, data) = pool_root();
    let server = pool_server(&dir, "127.79.3.1", 2, 100_000_000);
    // The first receiver takes every source symbol and stays (it has not stopped yet).
    let first_socket = receiver_socket("127.79.3.2");
    let first_addr = first_socket.local_addr().unwrap();
    let mut first = Ctl::connect(server.control_addr());
    first.hello_cooperating(1, first_addr);
    let first_meta = request_segment(&mut first, "big.bin", 0, first_addr);
    let layout = ccfd_server::coder::snc_params_from_wire(&first_meta.code, first_meta.segment_len)
        .validate()
        .unwrap();
    let k = source_count(&first_meta);
    let mut sources = BTreeSet::new();
    let mut buf = vec![0u8; 65536];
    let mut heartbeat = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sources.len() < k as usize {
        assert!(
            Instant::now() < deadline,
            "{} source symbols",
            sources.len()
        );
        let got = sources.len();
        report_progress(
            &mut first,
            &first_meta,
            &mut heartbeat,
            got as u64,
            got as u32,
        );
        let Ok(n) = first_socket.recv(&mut buf) else {
            continue;
        };
        let (_, payload) = DataPacket::open(&first_meta.key, &buf[..n]).unwrap();
        match snc::packet::parse(&layout, payload).unwrap().header {
            Header::Systematic { index } => assert!(sources.insert(index), "{index} twice"),
            other => panic!("{other:?} before the pool ran dry"),
        }
    }
    // A late receiver of the same session: coded packets of its own stream only.
    let late_socket = receiver_socket("127.79.3.3");
    let late_addr = late_socket.local_addr().unwrap();
    let mut late = Ctl::connect(server.control_addr());
    late.hello_cooperating(2, late_addr);
    let late_meta = request_segment(&mut late, "big.bin", 0, late_addr);
    assert_eq!(late_meta.session, first_meta.session, "same session");
    let (seen, decoded) = receive(&mut late, &late_socket, &late_meta, |_| false);
    assert!(decoded == data, "the late receiver decoded the segment");
    assert!(
        seen.systematic.is_empty(),
        "the late one got source symbols"
    );
    assert!(seen.coded >= u64::from(k));
    seen.assert_seqs_count_from_zero("late");
    assert_eq!(server.stats().pooled, u64::from(k));
    // Nobody receives the session any more: the next receiver gets every source symbol again.
    stop(&mut first, &first_meta);
    let next_socket = receiver_socket("127.79.3.4");
    let next_addr = next_socket.local_addr().unwrap();
    let mut next = Ctl::connect(server.control_addr());
    next.hello_cooperating(3, next_addr);
    let next_meta = request_segment(&mut next, "big.bin", 0, next_addr);
    assert_eq!(next_meta.session, first_meta.session, "same session");
    let (seen, decoded) = receive(&mut next, &next_socket, &next_meta, |_| false);
    assert!(decoded == data, "the next receiver decoded the segment");
    assert_eq!(
        seen.systematic.iter().copied().collect::<BTreeSet<u32>>(),
        (0..k).collect(),
        "a fresh pool"
    );
    assert_eq!(server.stats().pooled, 2 * u64::from(k));
    server.shutdown();
}

/// Cooperation: a receiver's rank also grows from its peers' packets. Once it reports a rank near
/// the segment's, the server's stream stops at what it still needs plus the margin, instead of
/// running on at the receiver's full share.
#[test]
fn a_receiver_filled_by_peers_stops_the_servers_stream() {
    let (dir, _) = pool_root();
    const RATE: u64 = 10_000_000;
    let server = pool_server(&dir, "127.79.4.1", 3, RATE);
    let socket = receiver_socket("127.79.4.2");
    let receive_addr = socket.local_addr().unwrap();
    let mut ctl = Ctl::connect(server.control_addr());
    ctl.hello_cooperating(1, receive_addr);
    let meta = request_segment(&mut ctl, "big.bin", 0, receive_addr);
    let k = source_count(&meta);
    let mut buf = vec![0u8; 65536];
    let mut received = 0u64;
    let mut recv = |socket: &UdpSocket| {
        socket
            .recv(&mut buf)
            .is_ok_and(|n| DataPacket::open(&meta.key, &buf[..n]).is_ok())
    };
    // 200 packets from the server, reported as a client would (each innovative).
    let mut heartbeat = Instant::now();
    let started = Instant::now();
    while received < 200 {
        assert!(started.elapsed() < Duration::from_secs(10));
        report_progress(&mut ctl, &meta, &mut heartbeat, received, received as u32);
        received += u64::from(recv(&socket));
    }
    // Peers brought the rank to K - 50.
    let missing = 50u32;
    ctl.send(&Frame::Heartbeat {
        session: meta.session,
        stats: ReceiverStats {
            received_packets: received,
            decoded_rank: k - missing,
            ..ReceiverStats::default()
        },
    });
    let reported = received;
    let window = Duration::from_secs(1);
    let end = Instant::now() + window;
    while Instant::now() < end {
        received += u64::from(recv(&socket));
    }
    let after = received - reported;
    // What it still needs plus the window's margin (1/16 + one 64-packet batch), plus what was on its
    // way (unread or sent) before the server read the report: at 10 Mbit/s (~960 packets/s), up to
    // 130 ms of a stalled test thread on a busy host.
    let bound = u64::from(missing + missing / 16) + 64 + 128;
    // At the receiver's share the stream would have brought this many more.
    let full_share = RATE as f64 / 8.0 / 1300.0 * window.as_secs_f64();
    assert!(
        after <= bound,
        "{after} packets after the report (bound {bound}; full share ~{full_share:.0})"
    );
    assert!(full_share > 3.0 * bound as f64);
    server.shutdown();
}
