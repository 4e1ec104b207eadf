//! `ccfd-perf codec`: encode/decode/recode throughput, overhead and decoder memory.
//!
//! One JSON line per configuration on stdout (progress on stderr). For every segment size,
//! field (GF(2), GF(2^8)), systematic off/on and loss (0 %, 10 %), with 1280-byte symbols and
//! the default band code (subgenerations of 64, stride 16, default check count, `--density`
//! coefficients; `sparse` in the output says whether the layout's coded packets are sparse):
//! * `encode_mbps`: symbol bytes written per second by `Encoder::write_next` for the packets
//!   of one decode, each into its own slot of a store holding all of them (tens of MB for a
//!   32 MiB segment: every packet costs a fresh cache-line fill and write-back; the store is
//!   what the decode runs are fed from) (median of `--runs`);
//! * `encode_batch_mbps`: the same packets of the same stream written by `Encoder::write_next`
//!   into one reused send-buffer-sized batch (`ccfd_ring::SEND_BUFFER_SIZE` bytes holding
//!   `ccfd_ring::max_datagrams` datagrams of `DataPacket::sealed_len` bytes, each packet at
//!   `DATA_HEADER_LEN` inside its datagram), refilled from its start once full: the server's
//!   pattern (a shard writes a GSO batch into a recycled ring send buffer, packet by packet, with
//!   `Encoder::write`); sealing (MAC) and sending are not timed (median of `--runs`);
//! * `decode_mbps`: segment bytes per second of `Decoder::new` plus every push until complete,
//!   over the packets that survived the loss (median of `--runs`, single thread);
//! * `recode_mbps`: symbol bytes per second of `K` packets written by `Recoder::recode` from a
//!   relay buffer holding every delivered packet (median of `--runs`; systematic layouts
//!   forward their systematic packets first, which is a copy);
//! * `*_cpu_mbps`: the same with the thread's CPU time instead of wall time (the dev machine is
//!   shared), and `baseline_copy_mbps`: one `copy_from_slice` of the segment in the same run,
//!   to read the others as ratios;
//! * `overhead_mean` / `overhead_p99`: packets delivered to the decoder until complete,
//!   divided by `K`, over `--seeds` independent streams (coded-packet seeds, schedule keys and
//!   loss pattern all keyed by the seed). These use `Decoder::counting`, which completes at
//!   exactly the same packet as the full decoder (completion depends on coefficients only), so
//!   no symbol work is spent on them;
//! * `decoder_alloc_bytes`: peak bytes allocated by the decoder (counted by the decoder, the
//!   output buffer excluded), `memory_ratio` = (segment + that) / segment;
//!   `decoder_rss_delta_bytes`: VmHWM growth during the decode after resetting the peak
//!   (`/proc/self/clear_refs`), a cross-check that includes allocator slack.

use anyhow::{bail, Context};
use serde::Serialize;
use snc::decoder::{Decoder, Progress};
use snc::encoder::{Encoder, PacketPlan, Stream};
use snc::packet::{self, Header};
use snc::prng::Prng;
use snc::recoder::Recoder;
use snc::{CodeParams, Density, Field, Layout};
use std::time::{Duration, Instant};

/// CPU time consumed by the calling thread (immune to the other processes sharing the cores).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Wall and thread-CPU time of a closure.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (w, c) = (Instant::now(), thread_cpu());
    let r = f();
    (r, w.elapsed(), thread_cpu() - c)
}

/// Options of `ccfd-perf codec`.
#[derive(Debug, clap::Args)]
pub struct CodecArgs {
    /// Segment sizes (bytes, or with a KiB/MiB/GiB suffix), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "32MiB,4MiB")]
    sizes: Vec<String>,
    /// Independent streams per configuration for the overhead statistics.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Timed runs per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only run configurations whose name contains this string (e.g. "32MiB-gf2-nonsys").
    #[arg(long)]
    filter: Option<String>,
    /// Symbol size in bytes.
    #[arg(long, default_value_t = 1280)]
    symbol_size: u32,
    /// Precode check count (default: the layout's rule, `snc::layout::default_checks`).
    #[arg(long)]
    checks: Option<u32>,
    /// Coefficient density of coded packets: `sparse` (the default: packet format 2 for
    /// non-systematic codes) or `uniform` (packet format 1).
    #[arg(long, default_value = "sparse", value_parser = parse_density)]
    density: Density,
}

fn parse_density(s: &str) -> Result<Density, String> {
    match s {
        "sparse" => Ok(Density::Sparse),
        "uniform" => Ok(Density::Uniform),
        other => Err(format!("unknown density {other:?} (sparse or uniform)")),
    }
}

/// One output line.
#[derive(Debug, Serialize)]
struct Report {
    config: String,
    segment_len: u64,
    symbol_size: u32,
    field: &'static str,
    systematic: bool,
    loss: f64,
    k: u32,
    checks: u32,
    kernel: &'static str,
    sparse: bool,
    encode_mbps: f64,
    encode_cpu_mbps: f64,
    encode_batch_mbps: f64,
    encode_batch_cpu_mbps: f64,
    batch_datagrams: usize,
    decode_mbps: f64,
    decode_cpu_mbps: f64,
    recode_mbps: Option<f64>,
    recode_cpu_mbps: Option<f64>,
    baseline_copy_mbps: f64,
    solve_attempts_mean: f64,
    overhead_mean: f64,
    overhead_p99: f64,
    overhead_max: f64,
    seeds: u64,
    decoder_alloc_bytes: usize,
    decoder_rss_delta_bytes: Option<u64>,
    memory_ratio: f64,
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1u64 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad size {s:?}"))?;
    Ok(n * mul)
}

fn size_name(len: u64) -> String {
    if len.is_multiple_of(1 << 20) {
        format!("{}MiB", len >> 20)
    } else if len.is_multiple_of(1 << 10) {
        format!("{}KiB", len >> 10)
    } else {
        format!("{len}B")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Peak-RSS probe: resets VmHWM and reads it back (Linux); `None` where unsupported.
struct RssProbe {
    base: u64,
}

impl RssProbe {
    fn status_kib(field: &str) -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn start() -> Option<RssProbe> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        Some(RssProbe {
            base: Self::status_kib("VmRSS:")?,
        })
    }

    fn peak_delta_bytes(&self) -> Option<u64> {
        Some(Self::status_kib("VmHWM:")?.saturating_sub(self.base) * 1024)
    }
}

/// Packets of one stream that survived the loss, stored back to back in fixed slots.
struct Delivered {
    slot: usize,
    lens: Vec<usize>,
    bytes: Vec<u8>,
}

impl Delivered {
    fn get(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.slot..][..self.lens[i]]
    }
}

/// Writes `count` packets of the stream keyed by `seed`, keeping those the loss spares.
/// Returns them and the time spent writing (all packets, lost ones included).
fn encode(
    enc: &Encoder<'_>,
    seed: u64,
    loss_pct: u64,
    count: usize,
) -> anyhow::Result<(Delivered, Duration, Duration)> {
    let layout = enc.layout();
    let slot = packet::max_len(layout);
    let mut all = vec![1u8; count * slot];
    let mut stream = Stream::new(seed);
    let (r, wall, cpu) = timed(|| -> anyhow::Result<()> {
        for chunk in all.chunks_exact_mut(slot) {
            enc.write_next(&mut stream, chunk)?;
        }
        Ok(())
    });
    r?;
    let mut loss = Prng::new(seed ^ 0x1055);
    let mut d = Delivered {
        slot,
        lens: Vec::with_capacity(count),
        bytes: Vec::with_capacity(count * slot),
    };
    let mut st = Stream::new(seed);
    for chunk in all.chunks_exact(slot) {
        let plan = enc.next_plan(&mut st).context("empty segment")?;
        if loss.below(100) < loss_pct {
            continue;
        }
        d.lens.push(enc.packet_len(&plan));
        d.bytes.extend_from_slice(chunk);
    }
    Ok((d, wall, cpu))
}

/// Writes `count` packets of the stream keyed by `seed` the way a server shard does: into one
/// reused send buffer of `ccfd_ring::SEND_BUFFER_SIZE` bytes, `ccfd_ring::max_datagrams`
/// datagrams at a time, each packet after its data header. Returns the datagrams per batch and
/// the time spent writing.
fn encode_batch(
    enc: &Encoder<'_>,
    seed: u64,
    count: usize,
) -> anyhow::Result<(usize, Duration, Duration)> {
    use ccfd_proto::data::{DataPacket, DATA_HEADER_LEN};
    let payload = packet::max_len(enc.layout());
    let dgram = DataPacket::sealed_len(payload);
    let per_batch = ccfd_ring::max_datagrams(dgram).min(ccfd_ring::MAX_SEGMENTS);
    if per_batch == 0 {
        bail!("a {dgram}-byte datagram does not fit a send buffer");
    }
    let mut buffer = vec![1u8; ccfd_ring::SEND_BUFFER_SIZE];
    let mut stream = Stream::new(seed);
    let (r, wall, cpu) = timed(|| -> anyhow::Result<()> {
        let mut left = count;
        while left > 0 {
            let n = left.min(per_batch);
            for d in buffer.chunks_exact_mut(dgram).take(n) {
                enc.write_next(&mut stream, &mut d[DATA_HEADER_LEN..][..payload])?;
            }
            std::hint::black_box(&mut buffer);
            left -= n;
        }
        Ok(())
    });
    r?;
    Ok((per_batch, wall, cpu))
}

/// Packets the encoder makes per decode attempt: enough for the worst overhead seen.
fn packets_for(layout: &Layout, loss_pct: u64, overhead: f64) -> usize {
    let k = layout.source_count() as f64;
    ((k * (overhead + 0.02) + 64.0) * 100.0 / (100 - loss_pct) as f64) as usize
}

/// Overhead and solve attempts of one seed with a counting decoder: only headers are built,
/// no symbols.
fn overhead_of(enc: &Encoder<'_>, seed: u64, loss_pct: u64) -> anyhow::Result<(f64, u32)> {
    let layout = enc.layout();
    let mut dec = Decoder::counting(layout)?;
    let mut stream = Stream::new(seed);
    let mut loss = Prng::new(seed ^ 0x1055);
    let mut buf = vec![0u8; packet::max_len(layout)];
    let limit = 10 * layout.column_count() as u64 + 1000;
    for _ in 0..limit {
        let plan = enc.next_plan(&mut stream).context("empty segment")?;
        if loss.below(100) < loss_pct {
            continue;
        }
        let header = match plan {
            PacketPlan::Systematic { index } => Header::Systematic { index },
            PacketPlan::Coded { subgen, seed } => Header::Coded { subgen, seed },
        };
        packet::write_header(layout, &header, &mut buf)?;
        let len = packet::len(layout, header.kind());
        if dec.push(&buf[..len])? == Progress::Complete {
            return Ok((dec.overhead(), dec.solve_attempts()));
        }
    }
    bail!("seed {seed}: not decoded after {limit} packets")
}

fn run_config(
    args: &CodecArgs,
    len: u64,
    field: Field,
    systematic: bool,
    loss_pct: u64,
) -> anyhow::Result<Option<Report>> {
    let fname = match field {
        Field::Gf2 => "gf2",
        Field::Gf256 => "gf256",
    };
    let config = format!(
        "{}-{}-{}-loss{}",
        size_name(len),
        fname,
        if systematic { "sys" } else { "nonsys" },
        loss_pct
    );
    if let Some(f) = &args.filter {
        if !config.contains(f.as_str()) {
            return Ok(None);
        }
    }
    eprintln!("codec: {config}");
    let layout = CodeParams::new(len)
        .symbol_size(args.symbol_size)
        .field(field)
        .systematic(systematic)
        .checks(args.checks)
        .density(args.density)
        .validate()?;
    if layout.source_count() == 0 {
        bail!("segment size must be positive");
    }
    let mut rng = Prng::new(len ^ 0xDA7A);
    let mut data = vec![0u8; len as usize];
    rng.fill_bytes(&mut data);
    let enc = Encoder::new(&layout, &data)?;

    // Overhead over many seeds (coefficients only).
    let mut ovs = Vec::with_capacity(args.seeds as usize);
    let mut attempts = 0u64;
    for seed in 0..args.seeds {
        let (ov, tries) = overhead_of(&enc, 1_000_000 + seed, loss_pct)?;
        ovs.push(ov);
        attempts += tries as u64;
    }
    ovs.sort_by(|a, b| a.total_cmp(b));
    let (overhead_mean, overhead_p99, overhead_max) = if ovs.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        let p99 = ovs[((ovs.len() as f64 * 0.99).ceil() as usize).clamp(1, ovs.len()) - 1];
        (
            ovs.iter().sum::<f64>() / ovs.len() as f64,
            p99,
            *ovs.last().expect("non-empty"),
        )
    };
    let worst = if ovs.is_empty() { 1.1 } else { overhead_max };

    // Timed full encode + decode runs.
    let mut enc_rates = Vec::new();
    let mut enc_cpu = Vec::new();
    let mut batch_rates = Vec::new();
    let mut batch_cpu = Vec::new();
    let mut batch_datagrams = 0;
    let mut dec_rates = Vec::new();
    let mut dec_cpu = Vec::new();
    let mut copy_rates = Vec::new();
    let mut rec_rates = Vec::new();
    let mut rec_cpu = Vec::new();
    let mut alloc = 0usize;
    let mut rss: Option<u64> = None;
    let mut out = vec![0u8; len as usize];
    for run in 0..args.runs.max(1) {
        let seed = run as u64;
        let count = packets_for(&layout, loss_pct, worst.max(1.05));
        let (delivered, wall, cpu) = encode(&enc, seed, loss_pct, count)?;
        let produced = count as u64 * args.symbol_size as u64;
        enc_rates.push(mbps(produced, wall));
        enc_cpu.push(mbps(produced, cpu));
        // The same packets into one reused send buffer (the server's pattern).
        let (per_batch, wall, cpu) = encode_batch(&enc, seed, count)?;
        batch_datagrams = per_batch;
        batch_rates.push(mbps(produced, wall));
        batch_cpu.push(mbps(produced, cpu));
        // Baseline in the same conditions: one copy of the segment.
        out.fill(0xFF);
        let ((), copy_wall, _) = timed(|| out.copy_from_slice(&data));
        copy_rates.push(mbps(len, copy_wall));
        out.fill(0xFF);
        let probe = RssProbe::start();
        let (r, wall, cpu) = timed(|| -> anyhow::Result<(bool, usize)> {
            let mut dec = Decoder::new(&layout, &mut out)?;
            for i in 0..delivered.lens.len() {
                if dec.push(delivered.get(i))? == Progress::Complete {
                    return Ok((true, dec.peak_memory()));
                }
            }
            Ok((false, dec.peak_memory()))
        });
        let (done, peak) = r?;
        if !done {
            bail!(
                "{config}: run {run} did not decode from {} packets",
                delivered.lens.len()
            );
        }
        alloc = alloc.max(peak);
        if let Some(p) = probe.and_then(|p| p.peak_delta_bytes()) {
            rss = Some(rss.map_or(p, |r| r.max(p)));
        }
        if out != data {
            bail!("{config}: run {run} decoded wrong data");
        }
        // Recode: a relay holding every delivered packet writes K packets.
        let mut relay = Recoder::new(&layout, usize::MAX);
        for i in 0..delivered.lens.len() {
            relay.push(&packet::parse(&layout, delivered.get(i))?)?;
        }
        let mut rng = Prng::new(seed ^ 0x2ec0);
        let mut buf = vec![1u8; packet::max_len(&layout)];
        let k = layout.source_count() as u64;
        let (made, rwall, rcpu) = timed(|| {
            (0..k)
                .filter(|_| relay.recode(&mut rng, &mut buf).is_some())
                .count()
        });
        let rbytes = made as u64 * args.symbol_size as u64;
        rec_rates.push(mbps(rbytes, rwall));
        rec_cpu.push(mbps(rbytes, rcpu));
        drop(relay);
        dec_rates.push(mbps(len, wall));
        dec_cpu.push(mbps(len, cpu));
    }
    Ok(Some(Report {
        config,
        segment_len: len,
        symbol_size: args.symbol_size,
        field: fname,
        systematic,
        loss: loss_pct as f64 / 100.0,
        k: layout.source_count(),
        checks: layout.check_count(),
        kernel: snc::field::Kernel::best().name(),
        sparse: layout.sparse(),
        encode_mbps: median(enc_rates),
        encode_cpu_mbps: median(enc_cpu),
        encode_batch_mbps: median(batch_rates),
        encode_batch_cpu_mbps: median(batch_cpu),
        batch_datagrams,
        decode_mbps: median(dec_rates),
        decode_cpu_mbps: median(dec_cpu),
        recode_mbps: Some(median(rec_rates)),
        recode_cpu_mbps: Some(median(rec_cpu)),
        baseline_copy_mbps: median(copy_rates),
        solve_attempts_mean: attempts as f64 / args.seeds.max(1) as f64,
        overhead_mean,
        overhead_p99,
        overhead_max,
        seeds: args.seeds,
        decoder_alloc_bytes: alloc,
        decoder_rss_delta_bytes: rss,
        memory_ratio: (len as f64 + alloc as f64) / len as f64,
    }))
}

/// Runs the codec benchmark.
pub fn run(args: &CodecArgs) -> anyhow::Result<()> {
    let sizes = args
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    for &len in &sizes {
        for field in [Field::Gf2, Field::Gf256] {
            for systematic in [false, true] {
                for loss in [10, 0] {
                    if let Some(r) = run_config(args, len, field, systematic, loss)? {
                        println!("{}", serde_json::to_string(&r)?);
                    }
                }
            }
        }
    }
    Ok(())
}
