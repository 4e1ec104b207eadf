//! The cooperation shard's data plane on its own: the real shard thread (ring, UDP socket on
//! 127.78.x.y), a real output file mapped read-only, real snc encoders feeding the recoding queue and a
//! real snc decoder on the receiving socket, which opens every packet with the asker's session key.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfd_client::coop::{CoopQueue, VerifiedPacket};
use ccfd_client::coop_shard::source::segment_layout;
use ccfd_client::coop_shard::{spawn, ServeCommand, ServeHandle, ServeSetup, StreamId};
use ccfd_client::stats::Counters;
use ccfd_proto::{
    CodeKind, CodeParamsWire, DataPacket, FieldKind, FileMeta, LinkId, Origin, ServeSource,
    SessionId, SessionKey,
};
use snc::decoder::{Decoder, Progress};
use snc::encoder::{Encoder, Stream};
use snc::packet::{self, Header};

const SEGMENT: usize = 96 * 1024;
const KEY: SessionKey = SessionKey([42; 32]);

fn wire(systematic: bool, field: FieldKind) -> CodeParamsWire {
    CodeParamsWire {
        segment_size: SEGMENT as u64,
        symbol_size: 1024,
        kind: CodeKind::Band,
        subgen_size: 64,
        stride: 16,
        checks: 0,
        field,
        systematic,
    }
}

fn meta(size: usize, systematic: bool, field: FieldKind) -> FileMeta {
    let mut code = wire(systematic, field);
    let full = ccfd_client::params::code_params(&code, SEGMENT.min(size) as u64)
        .checks(None)
        .validate()
        .unwrap();
    code.checks = full.check_count();
    // As the server announces it: the last (maybe shorter) segment's default count.
    let last_len = size - (size.div_ceil(SEGMENT).max(1) - 1) * SEGMENT;
    let last = ccfd_client::params::code_params(&code, last_len as u64)
        .checks(None)
        .validate()
        .unwrap();
    FileMeta {
        name: "f".into(),
        size: size as u64,
        segment_size: SEGMENT as u64,
        segment_count: size.div_ceil(SEGMENT) as u32,
        code,
        last_segment_checks: last.check_count(),
        digests: vec![[0; 32]; size.div_ceil(SEGMENT)],
        version: 1,
    }
}

fn content(len: usize, seed: &str) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut data);
    data
}

struct Shard {
    handle: ServeHandle,
    queue: CoopQueue,
    counters: Arc<Counters>,
}

fn start_shard(ip: &str, meta: FileMeta, output: &Path, cap: Option<u64>) -> Shard {
    let queue = CoopQueue::new(4096);
    let counters = Arc::new(Counters::default());
    let handle = spawn(ServeSetup {
        meta,
        output_path: output.to_path_buf(),
        bind_ip: ip.parse::<IpAddr>().unwrap(),
        upload_rate_bps: cap,
        queue: queue.consumer(),
        counters: Arc::clone(&counters),
        core: None,
    })
    .unwrap();
    Shard {
        handle,
        queue,
        counters,
    }
}

fn stream(link: u64, session: u32) -> StreamId {
    StreamId {
        link: LinkId(link),
        session: SessionId(session),
    }
}

/// A receiving socket with a large buffer (a test thread descheduled on a busy machine must not
/// lose what the shard sent meanwhile).
fn receiver(ip: &str) -> (UdpSocket, SocketAddr) {
    let addr = SocketAddr::new(ip.parse().unwrap(), 0);
    let socket = ccfd_ring::SocketConfig::new(addr)
        .gro(false)
        .recv_buffer(16 << 20)
        .bind()
        .unwrap()
        .into_std();
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Receives until the segment decodes (or `timeout`), checking every packet's MAC, header and kind
/// (systematic packets only if `relayed`: encoded streams never send them); returns the decoded
/// bytes and the packets received.
fn receive_segment(
    socket: &UdpSocket,
    from: SocketAddr,
    meta: &FileMeta,
    segment: u32,
    session: u32,
    timeout: Duration,
    relayed: bool,
) -> (Vec<u8>, u64) {
    let layout = segment_layout(meta, segment).unwrap();
    let mut out = vec![0u8; layout.segment_len() as usize];
    let mut decoder = Decoder::new(&layout, &mut out).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut packets = 0u64;
    let mut expected_seq = 0u32;
    let deadline = Instant::now() + timeout;
    while !decoder.is_complete() {
        assert!(
            Instant::now() < deadline,
            "segment {segment} not decoded after {packets} packets (rank {})",
            decoder.rank()
        );
        let Ok((n, source)) = socket.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(source, from);
        let (header, payload) = DataPacket::open(&KEY, &buf[..n]).expect("MAC under the key");
        assert_eq!(header.origin, Origin::Peer);
        assert_eq!(header.session, SessionId(session));
        assert_eq!(header.segment, segment);
        assert!(header.seq >= expected_seq, "seq goes backwards");
        expected_seq = header.seq + 1;
        let view = packet::parse(&layout, payload).unwrap();
        assert!(
            relayed || !matches!(view.header, Header::Systematic { .. }),
            "an encoding peer sent a systematic packet"
        );
        packets += 1;
        match decoder.push(payload).unwrap() {
            Progress::Complete | Progress::Innovative | Progress::Redundant => {}
        }
    }
    drop(decoder);
    (out, packets)
}

/// Datagrams arriving within `window`.
fn count_arrivals(socket: &UdpSocket, window: Duration) -> (u64, u64) {
    let mut buf = vec![0u8; 65536];
    let (mut packets, mut bytes) = (0u64, 0u64);
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            packets += 1;
            bytes += n as u64;
        }
    }
    (packets, bytes)
}

fn exit(shard: Shard) {
    assert!(shard.handle.send(ServeCommand::Exit));
    shard.handle.thread.join().unwrap().unwrap();
}

#[test]
fn exit_and_disconnect_end_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    std::fs::write(&output, vec![0u8; SEGMENT]).unwrap();
    let m = meta(SEGMENT, false, FieldKind::Gf2);

    let shard = start_shard("127.78.1.1", m.clone(), &output, None);
    assert_eq!(shard.handle.local_addr.ip().to_string(), "127.78.1.1");
    exit(shard);

    let shard = start_shard("127.78.1.1", m, &output, None);
    drop(shard.handle.commands);
    shard.handle.waker.wake();
    let started = Instant::now();
    shard.handle.thread.join().unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn encodes_a_completed_segment_from_the_output_and_stops_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    // Three segments, the last one short; the systematic layout checks that peers skip them.
    let size = 2 * SEGMENT + 10_000;
    let data = content(size, "encode");
    std::fs::write(&output, &data).unwrap();
    let m = meta(size, true, FieldKind::Gf2);
    let shard = start_shard("127.78.2.1", m.clone(), &output, None);
    let from = shard.handle.local_addr;
    let (socket, to) = receiver("127.78.2.2");

    // Not completed yet: an Encode stream sends nothing.
    let id = stream(1, 7);
    shard.handle.send(ServeCommand::Start {
        stream: id,
        segment: 1,
        key: KEY,
        to,
        source: ServeSource::Encode,
    });
    assert_eq!(count_arrivals(&socket, Duration::from_millis(150)).0, 0);

    shard.handle.send(ServeCommand::Completed { segment: 1 });
    let (decoded, packets) =
        receive_segment(&socket, from, &m, 1, 7, Duration::from_secs(10), false);
    assert_eq!(decoded, &data[SEGMENT..2 * SEGMENT]);
    assert!(packets >= (SEGMENT / 1024) as u64);

    // The short last segment, on a second stream.
    shard.handle.send(ServeCommand::Completed { segment: 2 });
    shard.handle.send(ServeCommand::Start {
        stream: stream(2, 8),
        segment: 2,
        key: KEY,
        to,
        source: ServeSource::Encode,
    });
    shard.handle.send(ServeCommand::Stop { stream: id });
    std::thread::sleep(Duration::from_millis(50));
    let (_, _) = count_arrivals(&socket, Duration::from_millis(50));
    let (decoded, _) = receive_segment(&socket, from, &m, 2, 8, Duration::from_secs(10), false);
    assert_eq!(decoded, &data[2 * SEGMENT..]);

    shard.handle.send(ServeCommand::Stop {
        stream: stream(2, 8),
    });
    std::thread::sleep(Duration::from_millis(100));
    count_arrivals(&socket, Duration::from_millis(50));
    let (after_stop, _) = count_arrivals(&socket, Duration::from_millis(300));
    assert_eq!(after_stop, 0, "packets kept coming after Stop");

    let sent = Counters::get(&shard.counters.packets_to_peers);
    assert!(sent >= packets, "counted {sent} packets");
    assert!(Counters::get(&shard.counters.bytes_to_peers) >= sent * 1024);
    exit(shard);
}

/// Pushes `count` packets of `data` (segment `segment`, systematic first if the layout is) into
/// the shard's queue, as the decoder thread would.
fn feed(queue: &CoopQueue, meta: &FileMeta, data: &[u8], segment: u32, count: usize, key: u64) {
    feed_share(queue, meta, data, segment, count, key, 1);
}

/// Like [`feed`], but only every `share`-th packet of the stream (`count` of them), as a server
/// handing a segment to `share` receivers at once gives each its part; returns the payloads fed.
fn feed_share(
    queue: &CoopQueue,
    meta: &FileMeta,
    data: &[u8],
    segment: u32,
    count: usize,
    key: u64,
    share: usize,
) -> Vec<Vec<u8>> {
    let layout = segment_layout(meta, segment).unwrap();
    let encoder = Encoder::new(&layout, data).unwrap();
    let mut code = Stream::new(key);
    let mut buf = vec![0u8; packet::max_len(&layout)];
    let counters = Counters::default();
    let mut fed = Vec::new();
    for i in 0..count * share {
        let len = encoder.write_next(&mut code, &mut buf).unwrap();
        if i % share != 0 {
            continue;
        }
        fed.push(buf[..len].to_vec());
        queue.offer(
            VerifiedPacket {
                segment,
                session: 3,
                payload: buf[..len].to_vec(),
                from_peer: None,
            },
            &counters,
        );
    }
    assert_eq!(Counters::get(&counters.coop_dropped_full), 0);
    fed
}

#[test]
fn recodes_the_segment_being_received() {
    for (systematic, field, ip) in [
        (true, FieldKind::Gf2, "127.78.3.1"),
        (false, FieldKind::Gf2, "127.78.3.3"),
        (false, FieldKind::Gf256, "127.78.3.5"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.part");
        let size = 2 * SEGMENT;
        let data = content(size, "recode");
        // The output holds nothing yet: recoding must not read it.
        std::fs::write(&output, vec![0u8; size]).unwrap();
        let m = meta(size, systematic, field);
        let shard = start_shard(ip, m.clone(), &output, None);
        let from = shard.handle.local_addr;
        let to_ip: IpAddr = ip.parse().unwrap();
        let IpAddr::V4(v4) = to_ip else {
            unreachable!()
        };
        let mut octets = v4.octets();
        octets[3] += 1;
        let (socket, to) = receiver(&IpAddr::from(octets).to_string());

        let id = stream(5, 11);
        shard.handle.send(ServeCommand::Receiving { segment: 1 });
        shard.handle.send(ServeCommand::Start {
            stream: id,
            segment: 1,
            key: KEY,
            to,
            source: ServeSource::Recode,
        });
        // An empty buffer: nothing is sent.
        assert_eq!(count_arrivals(&socket, Duration::from_millis(150)).0, 0);
        // Packets of another segment are discarded, not recoded.
        feed(&shard.queue, &m, &data[..SEGMENT], 0, 200, 1);
        assert_eq!(count_arrivals(&socket, Duration::from_millis(150)).0, 0);
        // Enough packets of segment 1 for the receiver to decode from our relayed ones alone.
        let k = SEGMENT / 1024;
        // (Within the buffer's 1.25 N: more could evict arrivals before they are sent.)
        let fed = k + k / 4;
        feed(&shard.queue, &m, &data[SEGMENT..], 1, fed, 2);
        let (decoded, packets) =
            receive_segment(&socket, from, &m, 1, 11, Duration::from_secs(10), true);
        assert_eq!(
            decoded,
            &data[SEGMENT..],
            "systematic {systematic} {field:?}"
        );
        // Each arrival once, nothing more.
        let (late, _) = count_arrivals(&socket, Duration::from_millis(200));
        assert_eq!(
            packets + late,
            fed as u64,
            "systematic {systematic} {field:?}"
        );
        exit(shard);
    }
}

#[test]
fn a_recoding_stream_encodes_once_its_segment_completes() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    let data = content(SEGMENT, "from copy");
    std::fs::write(&output, &data).unwrap();
    let m = meta(SEGMENT, false, FieldKind::Gf2);
    let shard = start_shard("127.78.4.1", m.clone(), &output, None);
    let (socket, to) = receiver("127.78.4.2");
    let id = stream(9, 4);
    shard.handle.send(ServeCommand::Receiving { segment: 0 });
    shard.handle.send(ServeCommand::Start {
        stream: id,
        segment: 0,
        key: KEY,
        to,
        source: ServeSource::Recode,
    });
    feed(&shard.queue, &m, &data, 0, 10, 3); // far too few to decode
    std::thread::sleep(Duration::from_millis(100));
    shard.handle.send(ServeCommand::Completed { segment: 0 });
    shard.handle.send(ServeCommand::FromCopy { stream: id });
    let (decoded, _) = receive_segment(
        &socket,
        shard.handle.local_addr,
        &m,
        0,
        4,
        Duration::from_secs(10),
        true,
    );
    assert_eq!(decoded, data);
    exit(shard);
}

#[test]
fn a_decoded_segment_is_recoded_fresh_until_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    let size = 2 * SEGMENT;
    let data = content(size, "decoded");
    // Neither verified nor written yet: the output holds nothing of it.
    std::fs::write(&output, vec![0u8; size]).unwrap();
    let m = meta(size, true, FieldKind::Gf2);
    let shard = start_shard("127.78.9.1", m.clone(), &output, None);
    let (socket, to) = receiver("127.78.9.2");
    let layout = segment_layout(&m, 1).unwrap();
    let k = SEGMENT / 1024;
    // A peer asks for segment 1 while it arrives here in full (systematic packets, then coded
    // ones) and we relay each arrival once; the first quarter of our relays is lost on its way.
    shard.handle.send(ServeCommand::Receiving { segment: 1 });
    let id = stream(3, 9);
    shard.handle.send(ServeCommand::Start {
        stream: id,
        segment: 1,
        key: KEY,
        to,
        source: ServeSource::Recode,
    });
    let fed = k + k / 8;
    feed(&shard.queue, &m, &data[SEGMENT..], 1, fed, 5);
    let mut out = vec![0u8; layout.segment_len() as usize];
    let mut decoder = Decoder::new(&layout, &mut out).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut received = 0usize;
    let mut decoded_here = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !decoder.is_complete() {
        assert!(
            Instant::now() < deadline,
            "rank {} after {received}",
            decoder.rank()
        );
        let Ok(n) = socket.recv(&mut buf) else {
            if !decoded_here && received >= fed {
                // Every arrival went out and the asker still lacks rank: the segment decodes
                // here and the next one starts.
                shard.handle.send(ServeCommand::Decoded { segment: 1 });
                shard.handle.send(ServeCommand::Receiving { segment: 2 });
                decoded_here = true;
            }
            continue;
        };
        received += 1;
        if received <= k / 4 {
            continue;
        }
        let (_, payload) = DataPacket::open(&KEY, &buf[..n]).expect("MAC under the key");
        decoder.push(payload).unwrap();
    }
    drop(decoder);
    assert_eq!(out, &data[SEGMENT..]);
    assert!(decoded_here, "decoded from the relayed arrivals alone");
    assert!(received > fed, "{received} packets, {fed} arrivals");
    // The segment fails its digest: nothing more of it goes out.
    shard.handle.send(ServeCommand::Failed { segment: 1 });
    std::thread::sleep(Duration::from_millis(100));
    count_arrivals(&socket, Duration::from_millis(50));
    let (after, _) = count_arrivals(&socket, Duration::from_millis(300));
    assert_eq!(after, 0, "packets of a failed segment kept coming");
    exit(shard);
}

/// Every payload arriving on `socket` within `window`.
fn drain(socket: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            let (_, payload) = DataPacket::open(&KEY, &buf[..n]).expect("MAC under the key");
            out.push(payload.to_vec());
        }
    }
    out
}

#[test]
fn each_arrival_goes_once_to_every_asker_then_encoding_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    let data = content(SEGMENT, "arrivals");
    std::fs::write(&output, &data).unwrap();
    let m = meta(SEGMENT, true, FieldKind::Gf2);
    let layout = segment_layout(&m, 0).unwrap();
    let k = layout.source_count() as usize;
    let shard = start_shard("127.78.10.1", m.clone(), &output, None);
    let (a, to_a) = receiver("127.78.10.2");
    let (b, to_b) = receiver("127.78.10.3");
    shard.handle.send(ServeCommand::Receiving { segment: 0 });
    shard.handle.send(ServeCommand::Start {
        stream: stream(1, 1),
        segment: 0,
        key: KEY,
        to: to_a,
        source: ServeSource::Recode,
    });
    // Our share of a segment three receivers get at once: a third of the source symbols, then
    // coded packets of our own stream. P of them.
    let p = k / 3 + 40;
    let fed = feed_share(&shard.queue, &m, &data, 0, p, 5, 3);
    let systematic = fed
        .iter()
        .filter(|f| packet::parse(&layout, f).unwrap().header.kind() == snc::PacketKind::Systematic)
        .count();
    assert!(systematic > 0 && systematic < p, "{systematic} of {p}");
    let got_a = drain(&a, Duration::from_millis(500));
    // A second asker, late: it gets the backlog.
    shard.handle.send(ServeCommand::Start {
        stream: stream(2, 1),
        segment: 0,
        key: KEY,
        to: to_b,
        source: ServeSource::Recode,
    });
    let got_b = drain(&b, Duration::from_millis(500));
    for (name, got) in [("a", &got_a), ("b", &got_b)] {
        assert_eq!(
            got.len(),
            p,
            "stream {name}: exactly one packet per arrival"
        );
        let mut forwarded = 0;
        for (sent, original) in got.iter().zip(&fed) {
            let ours = packet::parse(&layout, sent).unwrap();
            let theirs = packet::parse(&layout, original).unwrap();
            match (ours.header, theirs.header) {
                (Header::Systematic { .. }, Header::Systematic { .. }) => {
                    assert_eq!(sent, original, "stream {name}: forwarded byte for byte");
                    forwarded += 1;
                }
                (Header::Recoded { subgen: g, .. }, Header::Coded { subgen, .. }) => {
                    assert_eq!(g, subgen, "stream {name}: in arrival order");
                }
                other => panic!("stream {name}: {other:?}"),
            }
        }
        assert_eq!(forwarded, systematic);
    }
    // Nothing more until the segment completes here; then fresh coded packets.
    assert!(drain(&a, Duration::from_millis(100)).is_empty());
    shard.handle.send(ServeCommand::Completed { segment: 0 });
    let encoded = payloads(&a, 50);
    assert!(encoded.iter().all(|e| matches!(
        packet::parse(&layout, e).unwrap().header,
        Header::Coded { .. }
    )));
    exit(shard);
}

#[test]
fn upload_cap_bounds_the_send_rate_of_all_streams() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    let data = content(SEGMENT, "cap");
    std::fs::write(&output, &data).unwrap();
    let m = meta(SEGMENT, false, FieldKind::Gf2);
    let cap = 16_000_000u64;
    let shard = start_shard("127.78.5.1", m, &output, Some(cap));
    let (socket, to) = receiver("127.78.5.2");
    shard.handle.send(ServeCommand::Completed { segment: 0 });
    for (link, session) in [(1, 1), (2, 2)] {
        shard.handle.send(ServeCommand::Start {
            stream: stream(link, session),
            segment: 0,
            key: KEY,
            to,
            source: ServeSource::Encode,
        });
    }
    count_arrivals(&socket, Duration::from_millis(200));
    let window = Duration::from_millis(1000);
    let (packets, bytes) = count_arrivals(&socket, window);
    let bps = bytes as f64 * 8.0 / window.as_secs_f64();
    assert!(packets > 0);
    assert!(
        bps < 1.3 * cap as f64,
        "sent {bps} bit/s under a cap of {cap}"
    );
    assert!(
        bps > 0.3 * cap as f64,
        "sent only {bps} bit/s under a cap of {cap}"
    );
    exit(shard);
}

/// Codec payloads of the next `count` packets arriving on `socket`.
fn payloads(socket: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < count && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let (_, payload) = DataPacket::open(&KEY, &buf[..n]).unwrap();
            out.push(payload.to_vec());
        }
    }
    assert_eq!(out.len(), count, "too few packets");
    out
}

#[test]
fn two_streams_of_one_segment_never_send_the_same_packet() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    let data = content(SEGMENT, "distinct");
    std::fs::write(&output, &data).unwrap();
    let m = meta(SEGMENT, false, FieldKind::Gf2);
    let shard = start_shard("127.78.6.1", m.clone(), &output, None);
    let (a, to_a) = receiver("127.78.6.2");
    let (b, to_b) = receiver("127.78.6.3");
    shard.handle.send(ServeCommand::Completed { segment: 0 });
    for (link, to) in [(1, to_a), (2, to_b)] {
        shard.handle.send(ServeCommand::Start {
            stream: stream(link, 1),
            segment: 0,
            key: KEY,
            to,
            source: ServeSource::Encode,
        });
    }
    let from_a: std::collections::HashSet<Vec<u8>> = payloads(&a, 300).into_iter().collect();
    let from_b = payloads(&b, 300);
    assert!(from_b.iter().all(|p| !from_a.contains(p)));
    assert_eq!(from_a.len(), 300);
    exit(shard);
}

#[test]
fn receiving_again_restarts_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    let data = content(SEGMENT, "again");
    std::fs::write(&output, vec![0u8; SEGMENT]).unwrap();
    let m = meta(SEGMENT, false, FieldKind::Gf2);
    let shard = start_shard("127.78.7.1", m.clone(), &output, None);
    let (socket, to) = receiver("127.78.7.2");
    shard.handle.send(ServeCommand::Receiving { segment: 0 });
    shard.handle.send(ServeCommand::Start {
        stream: stream(1, 1),
        segment: 0,
        key: KEY,
        to,
        source: ServeSource::Recode,
    });
    feed(&shard.queue, &m, &data, 0, 20, 1);
    let (first, _) = count_arrivals(&socket, Duration::from_millis(300));
    assert_eq!(first, 20, "one packet per arrival");
    // The segment is fetched again (say its digest failed): the old packets are gone.
    shard.handle.send(ServeCommand::Receiving { segment: 0 });
    assert_eq!(count_arrivals(&socket, Duration::from_millis(200)).0, 0);
    feed(&shard.queue, &m, &data, 0, 5, 2);
    assert_eq!(count_arrivals(&socket, Duration::from_millis(300)).0, 5);
    exit(shard);
}

/// A shard at `shard_ip` whose output holds one completed segment of `seed` content (GF(2),
/// non-systematic), encoding to a receiver at `receiver_ip`: the output's directory (kept alive),
/// the meta, the shard, the receiving socket and the stream.
fn one_encoding_stream(
    shard_ip: &str,
    receiver_ip: &str,
    seed: &str,
) -> (tempfile::TempDir, FileMeta, Shard, UdpSocket, StreamId) {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    std::fs::write(&output, content(SEGMENT, seed)).unwrap();
    let m = meta(SEGMENT, false, FieldKind::Gf2);
    let shard = start_shard(shard_ip, m.clone(), &output, None);
    let (socket, to) = receiver(receiver_ip);
    let id = stream(1, 1);
    shard.handle.send(ServeCommand::Completed { segment: 0 });
    shard.handle.send(ServeCommand::Start {
        stream: id,
        segment: 0,
        key: KEY,
        to,
        source: ServeSource::Encode,
    });
    (dir, m, shard, socket, id)
}

#[test]
fn receiver_reports_of_loss_slow_the_stream_down() {
    let (_dir, _meta, shard, socket, id) =
        one_encoding_stream("127.78.8.1", "127.78.8.2", "reports");
    let report = |receive_rate_bps: u64, loss_ppm: u32| ServeCommand::Report {
        stream: id,
        stats: ccfd_proto::ReceiverStats {
            receive_rate_bps,
            loss_ppm,
            ..Default::default()
        },
    };
    count_arrivals(&socket, Duration::from_millis(100));
    // The first report only starts the measurement; each next one says 20 % was lost (8 Mbit/s of
    // it useful): every report cuts the stream to 7/8 of what got through, the 80 % of what it sent
    // (from 100 Mbit/s: 70, 49, 34 Mbit/s).
    shard.handle.send(report(0, 0));
    count_arrivals(&socket, Duration::from_millis(100));
    for _ in 0..3 {
        shard.handle.send(report(8_000_000, 200_000));
        count_arrivals(&socket, Duration::from_millis(100));
    }
    let window = Duration::from_millis(1000);
    let (_, bytes) = count_arrivals(&socket, window);
    let bps = bytes as f64 * 8.0 / window.as_secs_f64();
    assert!(bps < 45e6, "still {bps} bit/s after cuts to 34 Mbit/s");
    assert!(bps > 8e6, "only {bps} bit/s after cuts to 34 Mbit/s");
    exit(shard);
}

#[test]
fn fresh_packets_in_flight_stay_under_half_the_askers_deficit() {
    let (_dir, m, shard, socket, id) =
        one_encoding_stream("127.78.11.1", "127.78.11.2", "fresh window");
    let needed = segment_layout(&m, 0).unwrap().source_count();
    // Before any report the stream sends at its rate (100 Mbit/s: hundreds of packets in 100 ms).
    let (first, _) = count_arrivals(&socket, Duration::from_millis(100));
    assert!(
        first > 2 * u64::from(needed),
        "only {first} packets before a report"
    );
    // The asker got them all and lacks 10 symbols: at most 5 + the slack more may be in flight.
    let deficit = 10;
    shard.handle.send(ServeCommand::Report {
        stream: id,
        stats: ccfd_proto::ReceiverStats {
            receive_rate_bps: 50_000_000,
            received_packets: first,
            decoded_rank: needed - deficit,
            ..Default::default()
        },
    });
    // Unbounded, 300 ms at 100 Mbit/s are ~3,000 packets; the window lets through 5 + 64 (plus
    // what the shard sent before the report reached it, a few batches on a busy machine).
    let (after, _) = count_arrivals(&socket, Duration::from_millis(300));
    assert!(
        after < 400,
        "{after} packets after a report of a deficit of {deficit}"
    );
    exit(shard);
}

/// CPU time (user + system) of this process's thread named `name`, from /proc (10 ms ticks).
fn thread_cpu(name: &str) -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        return Some(Duration::from_millis(ticks * 10));
    }
    None
}

/// A bare send loop like the server shard's (encode or recode into a GSO buffer, seal in place,
/// queue, submit) for `window`, to a socket nobody reads; returns packets per second and CPU
/// nanoseconds per packet.
fn bare_loop(
    layout: &snc::Layout,
    data: &[u8],
    recode: Option<&mut snc::recoder::Recoder>,
    window: Duration,
) -> (f64, f64) {
    use ccfd_proto::{DataHeader, DATA_HEADER_LEN};
    use ccfd_ring::{Ring, RingConfig, SocketConfig};
    let mut ring = Ring::new(&RingConfig::default().send_buffers(128)).unwrap();
    let socket = ring
        .bind(&SocketConfig::new("127.78.9.1:0".parse().unwrap()).receive(false))
        .unwrap();
    let sink = UdpSocket::bind("127.78.9.2:0").unwrap();
    let to = sink.local_addr().unwrap();
    let encoder = Encoder::new(layout, data).unwrap();
    let mut code = Stream::new(99);
    let mut prng = snc::prng::Prng::new(5);
    let mut recoder = recode;
    let kind = if recoder.is_some() {
        snc::PacketKind::Recoded
    } else {
        snc::PacketKind::Coded
    };
    let payload_len = packet::len(layout, kind);
    let dgram = DataPacket::sealed_len(payload_len);
    let mut fresh = Stream::new(98);
    let mut scratch = vec![0u8; packet::max_len(layout)];
    let stored: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let n = encoder.write_next(&mut fresh, &mut scratch).unwrap();
            scratch[..n].to_vec()
        })
        .collect();
    let started = Instant::now();
    let cpu_started = ccfd_ring::thread_cpu_time();
    let mut packets = 0u64;
    let mut seq = 0u32;
    while started.elapsed() < window {
        if let Ok(mut out) = ring.send_buffer(socket, to, dgram) {
            while !out.is_full() {
                let header = DataHeader {
                    origin: Origin::Peer,
                    session: SessionId(1),
                    segment: 0,
                    seq,
                };
                let written = out.push_with(|buf| {
                    let body = &mut buf[DATA_HEADER_LEN..];
                    let len = match recoder.as_deref_mut() {
                        Some(r) => {
                            // One stored packet per relayed one, as the shard sends them.
                            let view = packet::parse(layout, &stored[seq as usize % stored.len()]);
                            r.push(&view.unwrap()).unwrap();
                            r.recode_arrival(r.arrivals() - 1, &mut prng, body)
                                .unwrap_or(0)
                        }
                        None => {
                            let plan = encoder.next_plan(&mut code).unwrap();
                            encoder.write(&plan, body).unwrap()
                        }
                    };
                    DataPacket::seal_in_place(&KEY, &header, buf, len).unwrap()
                });
                assert_eq!(written.unwrap(), dgram);
                seq += 1;
                packets += 1;
            }
            out.queue();
        }
        ring.wait(Some(Duration::ZERO)).unwrap();
        ring.process(64, |_| {}).unwrap();
    }
    let cpu = ccfd_ring::thread_cpu_time() - cpu_started;
    (
        packets as f64 / started.elapsed().as_secs_f64(),
        cpu.as_nanos() as f64 / packets.max(1) as f64,
    )
}

/// Verified packets per second fed to a recoding shard in `send_rates`.
const FEED_PPS: f64 = 40_000.0;

/// Send rate of the shard against the bare loop, same run, same machine state. Not a pass/fail
/// test (timing is for benchmarks): run with
/// `cargo test --release -p ccfd-client --test coop_shard -- --ignored --nocapture send_rates`.
#[test]
#[ignore]
fn send_rates() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    // One 64 MiB segment (default-like: the encoder's window walks a segment far beyond the
    // caches, and the feeder keeps the arrivals ahead of the stream during the run).
    let size = 64 << 20;
    let data = content(size, "rates");
    std::fs::write(&output, &data).unwrap();
    let mut m = meta(SEGMENT, false, FieldKind::Gf2);
    m.size = size as u64;
    m.segment_size = size as u64;
    m.code.segment_size = size as u64;
    m.code.checks = ccfd_client::params::code_params(&m.code, size as u64)
        .checks(None)
        .validate()
        .unwrap()
        .check_count();
    let layout = segment_layout(&m, 0).unwrap();
    let window = Duration::from_millis(1500);
    let mut rows = Vec::new();
    for source in [ServeSource::Encode, ServeSource::Recode] {
        // Baseline.
        let mut recoder = snc::recoder::Recoder::new(&layout, 64 << 20);
        recoder.set_forward_systematic(false);
        {
            let encoder = Encoder::new(&layout, &data).unwrap();
            let mut code = Stream::new(3);
            let mut buf = vec![0u8; packet::max_len(&layout)];
            for _ in 0..2 * layout.column_count() {
                let n = encoder.write_next(&mut code, &mut buf).unwrap();
                recoder
                    .push(&packet::parse(&layout, &buf[..n]).unwrap())
                    .unwrap();
            }
        }
        let (bare, bare_cpu) = bare_loop(
            &layout,
            &data,
            (source == ServeSource::Recode).then_some(&mut recoder),
            window,
        );
        // The shard, its rate grown by clean reports until the CPU limits it.
        let shard = start_shard("127.78.9.3", m.clone(), &output, None);
        let sink = UdpSocket::bind("127.78.9.4:0").unwrap();
        let id = stream(1, 1);
        match source {
            ServeSource::Encode => {
                shard.handle.send(ServeCommand::Completed { segment: 0 });
            }
            ServeSource::Recode => {
                shard.handle.send(ServeCommand::Receiving { segment: 0 });
            }
        }
        shard.handle.send(ServeCommand::Start {
            stream: id,
            segment: 0,
            key: KEY,
            to: sink.local_addr().unwrap(),
            source,
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let feeder = (source == ServeSource::Recode).then(|| {
            // Keeps the arrivals ahead of the shard (the decoder thread's role).
            let queue = shard.queue.clone();
            let stop = Arc::clone(&stop);
            let m = m.clone();
            let segment = data.clone();
            std::thread::spawn(move || {
                let layout = segment_layout(&m, 0).unwrap();
                let encoder = Encoder::new(&layout, &segment).unwrap();
                let mut code = Stream::new(4);
                let mut buf = vec![0u8; packet::max_len(&layout)];
                let counters = Counters::default();
                let started = Instant::now();
                let mut fed = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(30)
                {
                    // FEED_PPS, as a decoder thread receiving that fast would.
                    let due = (started.elapsed().as_secs_f64() * FEED_PPS) as u64;
                    if fed >= due || queue.len() > 3000 {
                        std::thread::sleep(Duration::from_micros(500));
                        continue;
                    }
                    fed += 1;
                    let n = encoder.write_next(&mut code, &mut buf).unwrap();
                    let payload = buf[..n].to_vec();
                    queue.offer(
                        VerifiedPacket {
                            segment: 0,
                            session: 1,
                            payload,
                            from_peer: None,
                        },
                        &counters,
                    );
                }
            })
        });
        for _ in 0..25 {
            std::thread::sleep(Duration::from_millis(40));
            shard.handle.send(ServeCommand::Report {
                stream: id,
                stats: ccfd_proto::ReceiverStats {
                    receive_rate_bps: 40_000_000_000,
                    ..Default::default()
                },
            });
        }
        let before = Counters::get(&shard.counters.packets_to_peers);
        let cpu_before = thread_cpu("ccfd-coop-shard").unwrap_or_default();
        let started = Instant::now();
        std::thread::sleep(window);
        let sent = Counters::get(&shard.counters.packets_to_peers) - before;
        let cpu = thread_cpu("ccfd-coop-shard").unwrap_or_default() - cpu_before;
        let pps = sent as f64 / started.elapsed().as_secs_f64();
        let cpu_per_packet = cpu.as_nanos() as f64 / sent.max(1) as f64;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(feeder) = feeder {
            feeder.join().unwrap();
        }
        exit(shard);
        rows.push(format!(
            "{{\"source\":\"{source:?}\",\"bare_pps\":{bare:.0},\"shard_pps\":{pps:.0},\"pps_ratio\":{:.3},\"bare_cpu_ns_per_packet\":{bare_cpu:.0},\"shard_cpu_ns_per_packet\":{cpu_per_packet:.0},\"cpu_ratio\":{:.3}}}",
            pps / bare,
            cpu_per_packet / bare_cpu
        ));
    }
    for row in rows {
        eprintln!("{row}");
    }
}
