//! Cost of sealing and opening data packets (the POLYVAL/AES MAC on every datagram), with baselines
//! measured in the same run: copying the packet, and keyed BLAKE3 of it (the version-1 MAC). Compare
//! ratios, not absolute times (the machine is shared).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use ccfd_proto::data::DataKey;
use ccfd_proto::{DataHeader, DataPacket, Origin, SessionId, SessionKey, DATA_HEADER_LEN};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let key = SessionKey([7; 32]);
    let data_key = DataKey::new(&key);
    let header = DataHeader {
        origin: Origin::Server,
        session: SessionId(3),
        segment: 9,
        seq: 1,
    };
    let mut group = c.benchmark_group("data_packet");
    for payload_len in [64usize, 1300, 1440] {
        let payload = vec![0x5a; payload_len];
        let mut buf = vec![0u8; DataPacket::sealed_len(payload_len)];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + payload_len].copy_from_slice(&payload);
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_function(format!("seal_in_place/{payload_len}"), |b| {
            b.iter(|| {
                DataPacket::seal_in_place(&key, black_box(&header), &mut buf, payload_len).unwrap()
            })
        });
        group.bench_function(format!("seal_in_place_data_key/{payload_len}"), |b| {
            b.iter(|| {
                DataPacket::seal_in_place(&data_key, black_box(&header), &mut buf, payload_len)
                    .unwrap()
            })
        });
        let mut copy = vec![0u8; buf.len()];
        group.bench_function(format!("baseline_copy/{payload_len}"), |b| {
            b.iter(|| copy.copy_from_slice(black_box(&buf)))
        });
        group.bench_function(format!("baseline_blake3_keyed/{payload_len}"), |b| {
            b.iter(|| blake3::keyed_hash(&key.0, black_box(&buf)))
        });
        let mut sealed = Vec::new();
        DataPacket::seal(&key, &header, &payload, &mut sealed);
        group.bench_function(format!("open/{payload_len}"), |b| {
            b.iter(|| DataPacket::open(&key, black_box(&sealed)).unwrap().1.len())
        });
        group.bench_function(format!("open_data_key/{payload_len}"), |b| {
            b.iter(|| {
                DataPacket::open(&data_key, black_box(&sealed))
                    .unwrap()
                    .1
                    .len()
            })
        });
    }
    group.bench_function("data_key_new", |b| b.iter(|| DataKey::new(black_box(&key))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
