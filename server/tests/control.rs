//! The server over real TCP and UDP on 127.0.0.x: malformed frames close only their connection, path
//! refusals, limits, and a raw UDP receiver that gets MAC-valid packets which decode with snc.

use std::io::Write as _;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ccfd_proto::{
    DataHeader, DataPacket, ErrorCode, Frame, Hello, NodeId, ReceiverStats, Role, SessionMeta,
    PROTOCOL_VERSION,
};

mod common;
use common::*;

#[test]
fn file_meta_has_blake3_digests_per_segment() {
    let dir = root_dir();
    let server = start(dir.path(), "127.0.0.51", udp_base(0), |_| {});
    let mut ctl = Ctl::connect(server.control_addr());
    ctl.hello(1, None);
    let meta = ctl.meta("a.bin").unwrap();
    let data = patterned(300_000, 7);
    assert_eq!(meta.size, 300_000);
    assert_eq!(meta.segment_count, 3);
    for i in 0..meta.segment_count {
        let range = meta.segment_range(i).unwrap();
        let slice = &data[range.start as usize..range.end as usize];
        assert_eq!(
            meta.digests[i as usize],
            *blake3::hash(slice).as_bytes(),
            "segment {i}"
        );
    }
    let empty = ctl.meta("empty").unwrap();
    assert_eq!((empty.size, empty.segment_count), (0, 0));
    let tiny = ctl.meta("tiny").unwrap();
    assert_eq!((tiny.size, tiny.segment_count), (1, 1));
    match ctl.request(&Frame::ListFiles) {
        Frame::FileList { entries, truncated } => {
            let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, ["a.bin", "empty", "tiny"]);
            assert!(!truncated);
        }
        other => panic!("{other:?}"),
    }
    server.shutdown();
}

#[test]
fn paths_out_of_the_root_are_refused_over_tcp() {
    let dir = root_dir();
    let server = start(dir.path(), "127.0.0.52", udp_base(1), |_| {});
    let mut ctl = Ctl::connect(server.control_addr());
    ctl.hello(1, None);
    for name in [
        "../etc/passwd",
        "/etc/passwd",
        "passwd",
        "secret",
        "../secret",
    ] {
        let (code, _) = ctl.meta(name).expect_err(name);
        assert_eq!(code, ErrorCode::PathRefused, "{name}");
    }
    assert_eq!(ctl.meta("nope").unwrap_err().0, ErrorCode::NoSuchFile);
    let reply = ctl.request(&Frame::RequestSegment {
        name: "../etc/passwd".into(),
        segment: 0,
        receive_addr: "127.0.0.52:9".parse().unwrap(),
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::PathRefused));
    let reply = ctl.request(&Frame::RequestSegment {
        name: "a.bin".into(),
        segment: 3,
        receive_addr: "127.0.0.52:9".parse().unwrap(),
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::NoSuchSegment));
    server.shutdown();
}

#[test]
fn malformed_frame_closes_only_that_connection() {
    let dir = root_dir();
    let server = start(dir.path(), "127.0.0.53", udp_base(2), |_| {});
    let mut good = Ctl::connect(server.control_addr());
    good.hello(1, None);
    let malformed: [&[u8]; 3] = [
        &[2, 0, 0, 0, PROTOCOL_VERSION, 250],  // unknown tag
        &[2, 0, 0, 0, 99, 1],                  // unknown version
        &[0xff, 0xff, 0xff, 0x7f, 1, 1, 1, 1], // length over the limit
    ];
    for bytes in malformed {
        let mut bad = Ctl::connect(server.control_addr());
        bad.hello(2, None);
        bad.stream.write_all(bytes).unwrap();
        let reply = bad.recv();
        assert_eq!(
            reply.as_ref().and_then(error_code),
            Some(ErrorCode::BadRequest),
            "{reply:?}"
        );
        assert!(bad.recv().is_none(), "the malformed connection is closed");
        // The other client keeps working, and new clients are accepted.
        assert_eq!(good.meta("a.bin").unwrap().segment_count, 3);
    }
    let mut late = Ctl::connect(server.control_addr());
    late.hello(3, None);
    assert_eq!(late.meta("tiny").unwrap().size, 1);
    // A request before Hello is refused and closes that connection only.
    let mut rude = Ctl::connect(server.control_addr());
    let reply = rude.request(&Frame::ListFiles);
    assert_eq!(error_code(&reply), Some(ErrorCode::BadRequest));
    assert!(rude.recv().is_none());
    assert_eq!(good.meta("a.bin").unwrap().size, 300_000);
    assert!(server.stats().malformed >= 3);
    server.shutdown();
}

/// Receives until the segment decodes, reporting progress every 20 ms like a client (the server's
/// send window waits for reports when packets are lost in the socket buffer); returns (decoded
/// bytes, valid packets).
fn receive_segment(ctl: &mut Ctl, socket: &UdpSocket, meta: &SessionMeta) -> (Vec<u8>, u64) {
    let params = ccfd_server::coder::snc_params_from_wire(&meta.code, meta.segment_len);
    let layout = params.validate().unwrap();
    let mut out = vec![0u8; meta.segment_len as usize];
    let mut decoder = snc::decoder::Decoder::new(&layout, &mut out).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut valid = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut heartbeat = Instant::now();
    while !decoder.is_complete() {
        assert!(
            Instant::now() < deadline,
            "segment not decoded in time ({valid} packets)"
        );
        report_progress(ctl, meta, &mut heartbeat, valid, decoder.rank());
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let header = DataHeader::peek(&buf[..n]).expect("server header");
        assert_eq!(header.session, meta.session);
        assert_eq!(header.segment, meta.segment);
        let (_, payload) = DataPacket::open(&meta.key, &buf[..n]).expect("MAC verifies");
        // A forged copy (one payload bit flipped) must fail the MAC.
        let mut forged = buf[..n].to_vec();
        forged[20] ^= 1;
        assert!(DataPacket::open(&meta.key, &forged).is_err());
        decoder.push(payload).expect("server payload decodes");
        valid += 1;
    }
    drop(decoder);
    (out, valid)
}

#[test]
fn raw_udp_receiver_gets_mac_valid_packets_that_decode() {
    raw_udp_receiver("127.0.0.54", "127.0.0.55", 3, true);
}

#[test]
fn raw_udp_receiver_decodes_non_systematic_gf256_streams() {
    raw_udp_receiver("127.0.0.66", "127.0.0.67", 8, false);
}

fn raw_udp_receiver(server_ip: &str, receiver_ip: &str, port_offset: u16, systematic: bool) {
    let dir = root_dir();
    let server = start(dir.path(), server_ip, udp_base(port_offset), |s| {
        s.coding.systematic = systematic;
        if !systematic {
            s.coding.field = ccfd_server::config::FieldSetting::Gf256;
        }
    });
    let data = patterned(300_000, 7);
    let socket = UdpSocket::bind(format!("{receiver_ip}:0")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let receive = socket.local_addr().unwrap();
    let mut ctl = Ctl::connect(server.control_addr());
    ctl.hello(9, Some(receive));
    let file = ctl.meta("a.bin").unwrap();
    for segment in [1u32, 2] {
        let meta = request_segment(&mut ctl, "a.bin", segment, receive);
        assert_eq!(
            meta.data_port,
            udp_base(port_offset) + meta.session.0 as u16
        );
        assert_eq!(meta.code.systematic, systematic);
        assert_eq!(meta.version, file.version);
        let (decoded, valid) = receive_segment(&mut ctl, &socket, &meta);
        let range = file.segment_range(segment).unwrap();
        assert_eq!(decoded, &data[range.start as usize..range.end as usize]);
        assert_eq!(
            *blake3::hash(&decoded).as_bytes(),
            file.digests[segment as usize]
        );
        assert!(valid >= u64::from(layout_k(&meta)), "{valid} packets");
        let ack = ctl.request(&Frame::StopSegment {
            session: meta.session,
        });
        assert_eq!(
            ack,
            Frame::Ack {
                session: meta.session
            }
        );
        // After the stop, the stream dries up.
        let mut buf = [0u8; 2048];
        let drain_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < drain_until {
            let _ = socket.recv(&mut buf);
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut late = 0;
        while let Ok(n) = socket.recv(&mut buf) {
            if DataHeader::peek(&buf[..n]).is_ok_and(|h| h.session == meta.session) {
                late += 1;
            }
        }
        assert_eq!(late, 0, "packets after StopSegment");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    let stats = server.stats();
    assert!(stats.packets > 0 && stats.batches > 0);
    assert!(
        stats.packets > stats.batches,
        "GSO batches carry several datagrams: {stats:?}"
    );
    server.shutdown();
}

fn layout_k(meta: &SessionMeta) -> u32 {
    meta.segment_len.div_ceil(u64::from(meta.code.symbol_size)) as u32
}

#[test]
fn session_limit_gives_an_explicit_error() {
    let dir = root_dir();
    let server = start(dir.path(), "127.0.0.56", udp_base(4), |s| {
        s.limits.max_sessions = 1;
        s.max_rate = Some(ccfd_server::units::BitRate::from_bits_per_sec(10_000_000).unwrap());
    });
    let sink = UdpSocket::bind("127.0.0.57:0").unwrap();
    let receive = sink.local_addr().unwrap();
    let mut a = Ctl::connect(server.control_addr());
    a.hello(1, Some(receive));
    let mut b = Ctl::connect(server.control_addr());
    b.hello(2, Some(receive));
    let first = request_segment(&mut a, "a.bin", 0, receive);
    // Same segment: joins the same session.
    let same = request_segment(&mut b, "a.bin", 0, receive);
    assert_eq!(same.session, first.session);
    let reply = b.request(&Frame::RequestSegment {
        name: "a.bin".into(),
        segment: 1,
        receive_addr: receive,
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::TooManySessions));
    server.shutdown();
}

#[test]
fn client_limit_gives_an_explicit_error() {
    let dir = root_dir();
    let server = start(dir.path(), "127.0.0.58", udp_base(5), |s| {
        s.limits.max_clients = 1
    });
    let mut a = Ctl::connect(server.control_addr());
    a.hello(1, None);
    let mut b = Ctl::connect(server.control_addr());
    let reply = b.request(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        role: Role::Client,
        node_id: NodeId(2),
        data_addr: None,
        control_addr: None,
    }));
    assert_eq!(error_code(&reply), Some(ErrorCode::TooManyClients));
    assert!(b.recv().is_none());
    assert_eq!(a.meta("tiny").unwrap().size, 1);
    server.shutdown();
}

/// Counts the session's wire bytes (datagrams with their IP/UDP/Ethernet headers, what
/// `--max-rate` counts) arriving for `window`, heartbeating every 20 ms with the packets
/// received so far (the shard's send window only opens for what a receiver reports receiving).
fn count_bytes(socket: &UdpSocket, ctl: &mut Ctl, meta: &SessionMeta, window: Duration) -> u64 {
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut bytes = 0u64;
    let mut packets = 0u64;
    let end = Instant::now() + window;
    let mut heartbeat = Instant::now();
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            if DataPacket::open(&meta.key, &buf[..n]).is_ok_and(|(h, _)| h.session == meta.session)
            {
                let from = socket.local_addr().unwrap().ip();
                bytes += ccfd_proto::pacing::wire_len(n, from) as u64;
                packets += 1;
            }
        }
        if heartbeat.elapsed() >= Duration::from_millis(20) {
            heartbeat = Instant::now();
            ctl.send(&Frame::Heartbeat {
                session: meta.session,
                stats: ReceiverStats {
                    received_packets: packets,
                    ..ReceiverStats::default()
                },
            });
        }
    }
    bytes
}

#[test]
fn max_rate_caps_total_egress_shared_by_receivers() {
    const CAP: u64 = 40_000_000;
    let dir = root_dir();
    let server = start(dir.path(), "127.0.0.61", udp_base(6), |s| {
        s.shards = 2;
        s.max_rate = Some(ccfd_server::units::BitRate::from_bits_per_sec(CAP).unwrap());
    });
    let mut metas = Vec::new();
    let mut sockets = Vec::new();
    let mut ctls = Vec::new();
    for (i, ip) in ["127.0.0.62", "127.0.0.63"].into_iter().enumerate() {
        let socket = UdpSocket::bind(format!("{ip}:0")).unwrap();
        let receive = socket.local_addr().unwrap();
        let mut ctl = Ctl::connect(server.control_addr());
        ctl.hello(10 + i as u64, Some(receive));
        // Different segments: different sessions, on different shards.
        metas.push(request_segment(&mut ctl, "a.bin", i as u32, receive));
        sockets.push(socket);
        ctls.push(ctl);
    }
    assert_ne!(metas[0].session, metas[1].session);
    // Let the rates settle, then measure both receivers at once for one second.
    std::thread::sleep(Duration::from_millis(200));
    let window = Duration::from_secs(1);
    let counts: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .iter()
            .zip(ctls.iter_mut())
            .zip(&metas)
            .map(|((socket, ctl), meta)| {
                scope.spawn(move || count_bytes(socket, ctl, meta, window))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total_bps = (counts[0] + counts[1]) as f64 * 8.0 / window.as_secs_f64();
    assert!(
        total_bps <= CAP as f64 * 1.1,
        "total {total_bps} bit/s over the cap {CAP} ({counts:?})"
    );
    assert!(
        total_bps >= CAP as f64 * 0.6,
        "total {total_bps} bit/s far under the cap {CAP} ({counts:?})"
    );
    let share = counts[0] as f64 / (counts[0] + counts[1]) as f64;
    assert!((0.3..=0.7).contains(&share), "unfair split {counts:?}");
    drop(ctls);
    server.shutdown();
}

#[test]
fn a_changed_file_restarts_its_sessions() {
    let dir = root_dir();
    let server = start(dir.path(), "127.0.0.64", udp_base(7), |_| {});
    let socket = UdpSocket::bind("127.0.0.65:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let receive = socket.local_addr().unwrap();
    let mut ctl = Ctl::connect(server.control_addr());
    ctl.hello(1, Some(receive));
    let before = ctl.meta("a.bin").unwrap();
    let old = request_segment(&mut ctl, "a.bin", 0, receive);
    // Replace the file with other content (new inode), as an operator's `mv` would.
    let root = dir.path().join("root");
    let new_data = patterned(200_000, 9);
    std::fs::write(root.join("a.new"), &new_data).unwrap();
    std::fs::rename(root.join("a.new"), root.join("a.bin")).unwrap();
    // The next meta request notices the change: new version and digests, old session ended.
    let after = ctl.meta("a.bin").unwrap();
    assert_ne!(after.version, before.version);
    assert_eq!(after.size, 200_000);
    let reply = ctl.request(&Frame::Heartbeat {
        session: old.session,
        stats: Default::default(),
    });
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::NoSuchSession),
        "{reply:?}"
    );
    // A new request serves the new content.
    let new = request_segment(&mut ctl, "a.bin", 0, receive);
    assert_eq!(new.version, after.version);
    let (decoded, _) = receive_segment_skipping(&mut ctl, &socket, &new);
    let range = after.segment_range(0).unwrap();
    assert_eq!(decoded, &new_data[range.start as usize..range.end as usize]);
    server.shutdown();
}

/// Like `receive_segment`, ignoring packets of other (ended) sessions still in flight, and reporting
/// progress every 20 ms like a client (the server's send window waits for reports: packets lost in
/// the socket buffer to the old session's flood would otherwise shut it).
fn receive_segment_skipping(
    ctl: &mut Ctl,
    socket: &UdpSocket,
    meta: &SessionMeta,
) -> (Vec<u8>, u64) {
    let layout = ccfd_server::coder::snc_params_from_wire(&meta.code, meta.segment_len)
        .validate()
        .unwrap();
    let mut out = vec![0u8; meta.segment_len as usize];
    let mut decoder = snc::decoder::Decoder::new(&layout, &mut out).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut valid = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut heartbeat = Instant::now();
    while !decoder.is_complete() {
        assert!(Instant::now() < deadline, "not decoded in time");
        report_progress(ctl, meta, &mut heartbeat, valid, decoder.rank());
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let Ok((header, payload)) = DataPacket::open(&meta.key, &buf[..n]) else {
            continue;
        };
        if header.session == meta.session {
            decoder.push(payload).unwrap();
            valid += 1;
        }
    }
    drop(decoder);
    (out, valid)
}

/// The send window: a receiver that reports no progress gets about one segment's worth of packets
/// (what it needs plus the margin), not an endless stream; its reports open the window again.
#[test]
fn a_receiver_gets_no_more_in_flight_than_it_still_needs() {
    let dir = root_dir();
    let server = start(dir.path(), "127.0.0.68", udp_base(9), |_| {});
    let socket = UdpSocket::bind("127.0.0.69:0").unwrap();
    let receive = socket.local_addr().unwrap();
    let mut ctl = Ctl::connect(server.control_addr());
    ctl.hello(1, Some(receive));
    let meta = request_segment(&mut ctl, "a.bin", 0, receive);
    let needed = meta.segment_len.div_ceil(u64::from(meta.code.symbol_size));
    let cap = needed + needed / 16 + 64;
    let packets = |socket: &UdpSocket, window: Duration| {
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let mut count = 0u64;
        let end = Instant::now() + window;
        while Instant::now() < end {
            if let Ok(n) = socket.recv(&mut buf) {
                if DataPacket::open(&meta.key, &buf[..n]).is_ok() {
                    count += 1;
                }
            }
        }
        count
    };
    // Silent: the stream stops at the window (1 Gbit/s would send thousands in 500 ms).
    let first = packets(&socket, Duration::from_millis(500));
    assert!(
        (needed..=cap).contains(&first),
        "{first} packets for a segment of {needed} (cap {cap})"
    );
    // Reporting everything received at rank 0 (nothing innovative, say): the window reopens.
    ctl.send(&Frame::Heartbeat {
        session: meta.session,
        stats: ReceiverStats {
            received_packets: first,
            ..ReceiverStats::default()
        },
    });
    let second = packets(&socket, Duration::from_millis(500));
    assert!(
        (needed..=cap).contains(&second),
        "{second} more packets after the report (cap {cap})"
    );
    drop(ctl);
    server.shutdown();
}
