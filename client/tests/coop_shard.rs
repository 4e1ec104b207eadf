//! The cooperation shard's data plane on its own: the real shard thread (ring, UDP socket on
//! 127.78.x.y), a real output file mapped read-only, real snc encoders/decoders on the receiving end.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ccfd_client::coop::CoopQueue;
use ccfd_client::coop_shard::{spawn, ServeCommand, ServeSetup};
use ccfd_client::stats::Counters;
use ccfd_proto::{CodeKind, CodeParamsWire, FieldKind, FileMeta};

const SEGMENT: usize = 96 * 1024;

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

fn meta(size: usize) -> FileMeta {
    FileMeta {
        name: "f".into(),
        size: size as u64,
        segment_size: SEGMENT as u64,
        segment_count: size.div_ceil(SEGMENT) as u32,
        code: wire(),
        digests: vec![[0; 32]; size.div_ceil(SEGMENT)],
        version: 1,
    }
}

fn setup(ip: &str, output: &std::path::Path, size: usize) -> (ServeSetup, CoopQueue) {
    let queue = CoopQueue::new(1024);
    let setup = ServeSetup {
        meta: meta(size),
        output_path: output.to_path_buf(),
        bind_ip: ip.parse::<IpAddr>().unwrap(),
        upload_rate_bps: None,
        queue: queue.consumer(),
        counters: Arc::new(Counters::default()),
        core: None,
    };
    (setup, queue)
}

#[test]
fn exit_and_disconnect_end_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.part");
    std::fs::write(&output, vec![0u8; SEGMENT]).unwrap();

    let (s, _queue) = setup("127.78.1.1", &output, SEGMENT);
    let handle = spawn(s).unwrap();
    assert_eq!(handle.local_addr.ip().to_string(), "127.78.1.1");
    assert!(handle.send(ServeCommand::Exit));
    handle.thread.join().unwrap().unwrap();

    let (s, _queue) = setup("127.78.1.1", &output, SEGMENT);
    let handle = spawn(s).unwrap();
    drop(handle.commands);
    handle.waker.wake();
    let started = std::time::Instant::now();
    handle.thread.join().unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}
