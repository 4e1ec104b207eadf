//! Profiling harness (not a benchmark): `cargo run --release -p snc --example profile --
//! <what> [MiB] [field] [reps] [checks|-] [sparse|uniform]` with `what` = decode | encode | recode | relayov |
//! overhead (received / K over `reps` streams, no timing) | decode1 | recode1 (one stream
//! encoded once, only the decodes / recodes in the profile). Runs one configuration
//! (band code, 1280-byte symbols, non-systematic, 10 % loss) `reps` times and prints the
//! thread-CPU MB/s of each run, so `valgrind --tool=callgrind` or `perf` can look inside.
//! Relays take `BURST` and `HEADROOM` (`none` for fixed bursts) from the environment;
//! `relayov` drops `LOSS2` % of the relay's packets before the receiver. `SYS=1`: systematic.

#![allow(missing_docs)]

use snc::decoder::{Decoder, Progress};
use snc::encoder::{Encoder, Stream};
use snc::packet;
use snc::prng::Prng;
use snc::recoder::Recoder;
use snc::{CodeParams, Density, Field};
use std::time::Duration;

/// Thread CPU time: the machine is shared, wall time is meaningless under load.
struct Instant(Duration);

impl Instant {
    fn now() -> Instant {
        // rustix's vDSO lookup crashes under valgrind: `SNC_PROFILE_NO_CLOCK=1` skips it.
        if std::env::var_os("SNC_PROFILE_NO_CLOCK").is_some() {
            return Instant(Duration::from_secs(1));
        }
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Instant(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }

    fn elapsed(&self) -> Duration {
        (Instant::now().0 - self.0).max(Duration::from_nanos(1))
    }
}

/// Environment knob `name`, parsed.
fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A relay holding everything, with `BURST` (longest burst) and `HEADROOM` (`none`: fixed
/// bursts) from the environment when set.
fn relay(layout: &snc::Layout) -> Recoder {
    let mut relay = Recoder::new(layout, usize::MAX);
    if let Some(b) = env("BURST") {
        relay.set_burst(b);
    }
    if let Ok(h) = std::env::var("HEADROOM") {
        relay.set_burst_headroom(h.parse().ok());
    }
    relay
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("decode", |s| s.as_str()).to_string();
    let mib: usize = args.get(2).map_or(32, |s| s.parse().expect("MiB"));
    let field = match args.get(3).map_or("gf2", |s| s.as_str()) {
        "gf256" => Field::Gf256,
        _ => Field::Gf2,
    };
    let reps: usize = args.get(4).map_or(3, |s| s.parse().expect("reps"));
    let len = mib << 20;
    let checks: Option<u32> = args
        .get(5)
        .filter(|s| s.as_str() != "-")
        .map(|s| s.parse().expect("checks"));
    let density = match args.get(6).map(|s| s.as_str()) {
        Some("uniform") => Density::Uniform,
        _ => Density::Sparse,
    };
    let layout = CodeParams::new(len as u64)
        .field(field)
        .checks(checks)
        .density(density)
        .systematic(std::env::var_os("SYS").is_some())
        .validate()
        .unwrap();
    let mut data = vec![0u8; len];
    Prng::new(7).fill_bytes(&mut data);
    let enc = Encoder::new(&layout, &data).unwrap();
    let slot = packet::max_len(&layout);
    let k = layout.source_count() as usize;
    let count = k * 120 / 100 + 64;
    let mut all = vec![0u8; count * slot];
    let mut lens = Vec::with_capacity(count);
    if what == "overhead" {
        // Received packets / K at completion over `reps` streams, 10 % loss (headers only: a
        // counting decoder never reads symbols).
        let slot = packet::max_len(&layout);
        let mut buf = vec![0u8; slot];
        let mut ratios = Vec::new();
        for r in 0..reps {
            let mut s = Stream::new(1000 + r as u64);
            let mut loss = Prng::new(50 + r as u64);
            let mut dec = Decoder::counting(&layout).unwrap();
            let mut got = 0u64;
            loop {
                let plan = enc.next_plan(&mut s).unwrap();
                if loss.below(100) < env("LOSS").unwrap_or(10) {
                    continue;
                }
                let header = match plan {
                    snc::encoder::PacketPlan::Systematic { index } => {
                        packet::Header::Systematic { index }
                    }
                    snc::encoder::PacketPlan::Coded { subgen, seed } => {
                        packet::Header::Coded { subgen, seed }
                    }
                };
                packet::write_header(&layout, &header, &mut buf).unwrap();
                let n = packet::len(&layout, header.kind());
                got += 1;
                if dec.push(&buf[..n]).unwrap() == Progress::Complete {
                    break;
                }
            }
            ratios.push(got as f64 / k as f64);
        }
        ratios.sort_by(f64::total_cmp);
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        let p99 = ratios[(ratios.len() * 99 / 100).min(ratios.len() - 1)];
        println!(
            "overhead mean {mean:.5} p99 {p99:.5} max {:.5}",
            ratios[ratios.len() - 1]
        );
        return;
    }
    if what == "decode1" || what == "recode1" {
        // One stream encoded once, then `reps` timed decodes (or recodes from a fresh relay
        // holding every delivered packet) of it: a profile holds only the timed part, and the
        // output buffer is reused like `ccfd-perf codec` does.
        let mut s = Stream::new(env("STREAM").unwrap_or(1));
        for chunk in all.chunks_exact_mut(slot) {
            lens.push(enc.write_next(&mut s, chunk).unwrap());
        }
        let mut loss = Prng::new(2);
        let kept: Vec<&[u8]> = all
            .chunks_exact(slot)
            .zip(&lens)
            .filter(|_| loss.below(10) != 0)
            .map(|(c, &n)| &c[..n])
            .collect();
        let mut out = vec![0xFFu8; len];
        let mut buf = vec![0u8; slot];
        for r in 0..reps {
            if what == "recode1" {
                // Untimed: MLPI's state moves with every packet, so every run starts afresh.
                let mut relay = relay(&layout);
                for p in &kept {
                    relay.push(&packet::parse(&layout, p).unwrap()).unwrap();
                }
                let mut rng = Prng::new(9 + r as u64);
                let t = Instant::now();
                for _ in 0..k {
                    relay.recode(&mut rng, &mut buf);
                }
                let el = t.elapsed();
                println!(
                    "recode {:.0} MB/s",
                    (k * 1280) as f64 / el.as_secs_f64() / 1e6
                );
                continue;
            }
            out.fill(0xFF);
            let t = Instant::now();
            let mut dec = Decoder::new(&layout, &mut out).unwrap();
            let mut done = false;
            for p in &kept {
                if dec.push(p).unwrap() == Progress::Complete {
                    done = true;
                    break;
                }
            }
            let el = t.elapsed();
            assert!(done);
            let ops = dec.symbol_ops() as f64 / layout.column_count() as f64;
            let tries = dec.solve_attempts();
            drop(dec);
            assert!(out == data);
            println!(
                "decode {:.0} MB/s ({ops:.2} symbol ops per column, {tries} hole solves)",
                len as f64 / el.as_secs_f64() / 1e6
            );
        }
        return;
    }
    for r in 0..reps {
        let mut s = Stream::new(1 + r as u64);
        lens.clear();
        let t = Instant::now();
        for chunk in all.chunks_exact_mut(slot) {
            lens.push(enc.write_next(&mut s, chunk).unwrap());
        }
        let el = t.elapsed();
        if what == "encode" {
            println!(
                "encode {:.0} MB/s",
                (count * 1280) as f64 / el.as_secs_f64() / 1e6
            );
            continue;
        }
        let mut loss = Prng::new(2);
        let kept: Vec<&[u8]> = all
            .chunks_exact(slot)
            .zip(&lens)
            .filter(|_| loss.below(10) != 0)
            .map(|(c, &n)| &c[..n])
            .collect();
        if what == "relayov" {
            // Overhead of a recoded stream: a relay holding the delivered packets recodes
            // until a coefficient-only decoder completes.
            let mut relay = relay(&layout);
            for p in &kept {
                relay.push(&packet::parse(&layout, p).unwrap()).unwrap();
            }
            let mut rng = Prng::new(9 + r as u64);
            let mut buf = vec![0u8; slot];
            let mut dec = Decoder::counting(&layout).unwrap();
            let mut sent = 0u64;
            let loss2: u64 = env("LOSS2").unwrap_or(0);
            let mut hop = Prng::new(77 + r as u64);
            while sent < 3 * k as u64 {
                let n = relay.recode(&mut rng, &mut buf).unwrap();
                if hop.below(100) < loss2 {
                    continue;
                }
                sent += 1;
                if dec.push(&buf[..n]).unwrap() == Progress::Complete {
                    break;
                }
            }
            println!("relayov {:.5}", sent as f64 / k as f64);
            continue;
        }
        if what == "recode" {
            let mut relay = relay(&layout);
            for p in &kept {
                relay.push(&packet::parse(&layout, p).unwrap()).unwrap();
            }
            let mut rng = Prng::new(9);
            let mut buf = vec![0u8; slot];
            let t = Instant::now();
            for _ in 0..k {
                relay.recode(&mut rng, &mut buf);
            }
            let el = t.elapsed();
            println!(
                "recode {:.0} MB/s",
                (k * 1280) as f64 / el.as_secs_f64() / 1e6
            );
            continue;
        }
        let mut out = vec![0xFFu8; len];
        let t = Instant::now();
        let mut dec = Decoder::new(&layout, &mut out).unwrap();
        let mut done = false;
        for p in &kept {
            if dec.push(p).unwrap() == Progress::Complete {
                done = true;
                break;
            }
        }
        let el = t.elapsed();
        assert!(done);
        drop(dec);
        assert!(out == data);
        println!("decode {:.0} MB/s", len as f64 / el.as_secs_f64() / 1e6);
    }
}
