//! The decoder thread on its own: a real UDP socket (through `ccfd-ring`), packets made by snc's encoder
//! and sealed with the session key, commands and events on the real channels. Checks the digest paths
//! (a good segment is recorded, a bad one is discarded and not recorded) and Stop/Finish handling.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfd_client::coop::CoopQueue;
use ccfd_client::output::{record_path, PartFile};
use ccfd_client::params::{code_params, meta_tag};
use ccfd_client::receiver::{self, DecoderCommand, DecoderContext, DecoderEvent, LiveSession};
use ccfd_client::resume::ResumeRecord;
use ccfd_client::stats::Counters;
use ccfd_proto::{
    CodeKind, CodeParamsWire, DataHeader, DataPacket, FieldKind, FileMeta, Origin, SessionId,
    SessionKey, SessionMeta,
};
use ccfd_ring::{Ring, RingConfig, SocketConfig};
use snc::encoder::{Encoder, Stream};

const SEGMENT: usize = 96 * 1024;
const KEY: SessionKey = SessionKey([9; 32]);

fn wire() -> CodeParamsWire {
    CodeParamsWire {
        segment_size: SEGMENT as u64,
        symbol_size: 1024,
        kind: CodeKind::Band,
        subgen_size: 64,
        stride: 16,
        checks: 0,
        field: FieldKind::Gf2,
        systematic: false,
    }
}

fn session(id: u32, segment: u32, len: u64) -> SessionMeta {
    let mut code = wire();
    let layout = code_params(&code, len).checks(None).validate().unwrap();
    code.checks = layout.check_count();
    SessionMeta {
        session: SessionId(id),
        name: "f".into(),
        segment,
        data_port: 0,
        code,
        key: KEY,
        segment_len: len,
        version: 1,
    }
}

/// Sends sealed coded packets of `data` for `meta` to `to` until `stop` is set (bounded in count/time).
fn send_segment(
    meta: SessionMeta,
    data: Vec<u8>,
    to: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let layout = code_params(&meta.code, meta.segment_len)
            .validate()
            .unwrap();
        let encoder = Encoder::new(&layout, &data).unwrap();
        let mut stream = Stream::new(7);
        let socket = UdpSocket::bind("127.77.9.2:0").unwrap();
        let mut payload = vec![0u8; snc::packet::max_len(&layout)];
        let mut packet = Vec::new();
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed)
            && sent < 50_000
            && started.elapsed() < Duration::from_secs(20)
        {
            let len = encoder.write_next(&mut stream, &mut payload).unwrap();
            packet.clear();
            let header = DataHeader {
                origin: Origin::Server,
                session: meta.session,
                segment: meta.segment,
                seq: sent as u32,
            };
            DataPacket::seal(&meta.key, &header, &payload[..len], &mut packet);
            let _ = socket.send_to(&packet, to);
            sent += 1;
            if sent & 31 == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        sent
    })
}

struct Harness {
    commands: crossbeam_channel::Sender<DecoderCommand>,
    events: tokio::sync::mpsc::UnboundedReceiver<DecoderEvent>,
    waker: ccfd_ring::Waker,
    addr: SocketAddr,
    counters: Arc<Counters>,
    thread: std::thread::JoinHandle<(Result<bool, ccfd_client::ClientError>, ResumeRecord)>,
}

/// Runs the decoder thread over a fresh output for `meta`.
fn start(meta: FileMeta, output: &Path) -> Harness {
    let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let counters = Arc::new(Counters::default());
    let thread_counters = Arc::clone(&counters);
    let output = output.to_path_buf();
    let thread = std::thread::spawn(move || {
        let mut ring = Ring::new(&RingConfig::default()).unwrap();
        let socket = ring
            .bind(&SocketConfig::new("127.77.9.1:0".parse().unwrap()))
            .unwrap();
        ready_tx
            .send((ring.waker(), ring.local_addr(socket).unwrap()))
            .unwrap();
        let mut part = PartFile::open(&output, meta.size, false).unwrap();
        let record = ResumeRecord::new(&meta.name, meta.size, meta_tag(&meta), meta.segment_count);
        let mut context = DecoderContext {
            meta,
            record,
            record_path: record_path(&output),
            counters: thread_counters,
            live: Arc::new(LiveSession::default()),
            coop: Some(CoopQueue::new(16)),
            commands: commands_rx,
            events: events_tx,
        };
        let result = receiver::run(&mut ring, socket, &mut part, &mut context);
        (result, context.record)
    });
    let (waker, addr) = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Harness {
        commands: commands_tx,
        events: events_rx,
        waker,
        addr,
        counters,
        thread,
    }
}

impl Harness {
    fn send(&self, command: DecoderCommand) {
        self.commands.send(command).unwrap();
        self.waker.wake();
    }

    fn next_event(&mut self, timeout: Duration) -> DecoderEvent {
        let deadline = Instant::now() + timeout;
        loop {
            match self.events.try_recv() {
                Ok(event) => return event,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no decoder event within {timeout:?}: {e:?}"),
            }
        }
    }
}

fn file_meta(data: &[u8], digests: Vec<[u8; 32]>) -> FileMeta {
    FileMeta {
        name: "f".into(),
        size: data.len() as u64,
        segment_size: SEGMENT as u64,
        segment_count: data.len().div_ceil(SEGMENT) as u32,
        code: wire(),
        last_segment_checks: wire().checks,
        digests,
        version: 1,
    }
}

#[test]
fn good_segment_is_decoded_verified_and_recorded_bad_digest_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.bin");
    let mut data = vec![0u8; 2 * SEGMENT];
    blake3::Hasher::new()
        .update(b"decoder thread")
        .finalize_xof()
        .fill(&mut data);
    let good = *blake3::hash(&data[..SEGMENT]).as_bytes();
    let wrong = [0xAB; 32]; // segment 1's digest does not match what the sender encodes
    let mut harness = start(file_meta(&data, vec![good, wrong]), &output);

    for (segment, expect_ok) in [(0u32, true), (1u32, false)] {
        let meta = session(segment + 3, segment, SEGMENT as u64);
        harness.send(DecoderCommand::Start(meta.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let range = segment as usize * SEGMENT..(segment as usize + 1) * SEGMENT;
        let sender = send_segment(
            meta.clone(),
            data[range].to_vec(),
            harness.addr,
            Arc::clone(&stop),
        );
        match harness.next_event(Duration::from_secs(20)) {
            DecoderEvent::Decoded { segment: s, .. } => assert_eq!(s, segment),
            other => panic!("expected Decoded, got {other:?}"),
        }
        match harness.next_event(Duration::from_secs(20)) {
            DecoderEvent::Verified { segment: s, ok } => assert_eq!((s, ok), (segment, expect_ok)),
            other => panic!("expected Verified, got {other:?}"),
        }
        harness.send(DecoderCommand::Stop {
            session: meta.session,
            segment,
        });
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
    }
    harness.send(DecoderCommand::Finish);
    let (result, record) = harness.thread.join().unwrap();
    assert!(result.unwrap(), "Finish must end the loop successfully");
    assert!(
        record.is_complete(0) && !record.is_complete(1),
        "{record:?}"
    );
    let stored = ResumeRecord::load(&record_path(&output))
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(stored, record, "the record on disk lags the decoder's");
    let counters = &harness.counters;
    assert_eq!(counters.segments_completed.load(Ordering::Relaxed), 1);
    assert_eq!(counters.segments_failed_digest.load(Ordering::Relaxed), 1);
    assert_eq!(
        counters.coop_forwarded.load(Ordering::Relaxed),
        16,
        "the coop queue holds 16"
    );
    assert!(counters.coop_dropped_full.load(Ordering::Relaxed) > 0);
    assert!(
        counters.dropped_stale.load(Ordering::Relaxed) > 0,
        "late packets of a finished session are stale"
    );
    assert_eq!(counters.dropped_bad_mac.load(Ordering::Relaxed), 0);
    let part = std::fs::read(ccfd_client::output::part_path(&output)).unwrap();
    assert_eq!(&part[..SEGMENT], &data[..SEGMENT]);
}

#[test]
fn stop_abandons_the_segment_and_abort_ends_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.bin");
    let data = vec![5u8; SEGMENT];
    let mut harness = start(
        file_meta(&data, vec![*blake3::hash(&data).as_bytes()]),
        &output,
    );
    let meta = session(1, 0, SEGMENT as u64);
    harness.send(DecoderCommand::Start(meta.clone()));
    harness.send(DecoderCommand::Stop {
        session: meta.session,
        segment: 0,
    });
    // Packets for the abandoned session are now stale, and produce no event.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_segment(meta, data, harness.addr, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    assert!(
        harness.events.try_recv().is_err(),
        "an abandoned session produced an event"
    );
    harness.send(DecoderCommand::Abort);
    let (result, record) = harness.thread.join().unwrap();
    assert!(!result.unwrap(), "Abort must report an unfinished download");
    assert_eq!(record.completed_count(), 0);
    let stale = harness.counters.dropped_stale.load(Ordering::Relaxed);
    assert!(stale > 0 && stale <= sent, "stale {stale} of {sent} sent");
}

#[test]
fn packets_arriving_before_start_are_kept_for_their_session() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.bin");
    let mut data = vec![0u8; SEGMENT];
    blake3::Hasher::new()
        .update(b"early packets")
        .finalize_xof()
        .fill(&mut data);
    let mut harness = start(
        file_meta(&data, vec![*blake3::hash(&data).as_bytes()]),
        &output,
    );
    let meta = session(11, 0, SEGMENT as u64);
    // The server starts sending as it answers the request: its first packets can reach the socket
    // before the control thread has told the decoder thread about the session.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_segment(meta.clone(), data.clone(), harness.addr, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(150));
    harness.send(DecoderCommand::Start(meta.clone()));
    match harness.next_event(Duration::from_secs(20)) {
        DecoderEvent::Decoded { segment, .. } => assert_eq!(segment, 0),
        other => panic!("expected Decoded, got {other:?}"),
    }
    match harness.next_event(Duration::from_secs(20)) {
        DecoderEvent::Verified { segment, ok } => assert_eq!((segment, ok), (0, true)),
        other => panic!("expected Verified, got {other:?}"),
    }
    harness.send(DecoderCommand::Stop {
        session: meta.session,
        segment: 0,
    });
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    harness.send(DecoderCommand::Finish);
    let (result, record) = harness.thread.join().unwrap();
    assert!(result.unwrap());
    assert!(record.is_complete(0));
    let counters = &harness.counters;
    assert_eq!(
        counters.dropped_wrong_session.load(Ordering::Relaxed),
        0,
        "early packets were dropped as a wrong session"
    );
    assert!(counters.packets_accepted.load(Ordering::Relaxed) > 0);
    let part = std::fs::read(ccfd_client::output::part_path(&output)).unwrap();
    assert_eq!(part, data);
}
