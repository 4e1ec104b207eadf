//! `ccfd-client get`: the whole download of one file (see the crate documentation for the threads).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfd_proto::{FileMeta, NodeId};
use ccfd_ring::{Ring, RingConfig, SocketConfig};

use crate::cli::ServerAddr;
use crate::control::{self, ControlSetup, MetaReady, Plan};
use crate::coop::CoopQueue;
use crate::error::ClientError;
use crate::output::{self, PartFile};
use crate::params::meta_tag;
use crate::progress::Progress;
use crate::receiver::{self, DecoderContext, LiveSession};
use crate::resume::ResumeRecord;
use crate::stats::{Counters, Summary};

/// Options of a `get`.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// File name on the server.
    pub name: String,
    /// Server control address.
    pub server: ServerAddr,
    /// Output path.
    pub output: PathBuf,
    /// Local address: its IP for the control connection and data socket, its port (if not 0) for the
    /// data socket.
    pub bind: Option<SocketAddr>,
    /// How long the server may stay unreachable.
    pub retry_for: Duration,
    /// Whether to draw the progress bar (on a terminal).
    pub progress: bool,
    /// Whether to print one JSON progress line per second on stderr (`--progress-json`).
    pub progress_json: bool,
    /// Core to pin the decoder thread to (default: the last core).
    pub decoder_core: Option<usize>,
    /// Capacity of the cooperation queue, in packets.
    pub coop_capacity: usize,
}

impl GetOptions {
    /// Options with defaults for everything but the name, server and output.
    pub fn new(name: impl Into<String>, server: ServerAddr, output: impl Into<PathBuf>) -> Self {
        GetOptions {
            name: name.into(),
            server,
            output: output.into(),
            bind: None,
            retry_for: Duration::from_secs(60),
            progress: true,
            progress_json: false,
            decoder_core: None,
            coop_capacity: crate::coop::DEFAULT_CAPACITY,
        }
    }
}

/// A fresh random node id (falls back to time and pid if the OS RNG fails).
pub fn random_node_id() -> NodeId {
    NodeId(getrandom::u64().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    }))
}

/// Downloads `options.name` into `options.output`, resuming from an earlier partial run. Runs the decoder
/// on the calling thread (pinned) and the control connection on a thread of its own.
pub fn get(options: &GetOptions) -> Result<Summary, ClientError> {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let live = Arc::new(LiveSession::default());
    let handle = control::spawn(ControlSetup {
        name: options.name.clone(),
        server: options.server.clone(),
        bind_ip: options.bind.map(|b| b.ip()),
        retry_for: options.retry_for,
        node_id: random_node_id(),
        counters: Arc::clone(&counters),
        live: Arc::clone(&live),
    })?;
    let ready = match handle.meta.recv() {
        Ok(ready) => ready,
        Err(_) => {
            return Err(join_control(handle.thread)
                .err()
                .unwrap_or_else(control_vanished))
        }
    };
    let MetaReady { meta, local_addr } = ready;
    tracing::info!(name = %meta.name, size = meta.size, segments = meta.segment_count, "file meta received");

    // Output and resume state. On failure the control thread sees its plan dropped and leaves.
    let prepared = prepare_output(options, &meta, &counters);
    let (mut part, record) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => {
            drop(handle.plan);
            let _ = join_control(handle.thread);
            return Err(err);
        }
    };
    let completed: Vec<u32> = (0..meta.segment_count)
        .filter(|&s| record.is_complete(s))
        .collect();

    pin_decoder_thread(options.decoder_core);
    let data_ip: IpAddr = options.bind.map_or(local_addr.ip(), |b| b.ip());
    let data_port = options.bind.map_or(0, |b| b.port());
    let socket_setup = Ring::new(&RingConfig::default()).and_then(|mut ring| {
        let socket = ring.bind(&SocketConfig::new(SocketAddr::new(data_ip, data_port)))?;
        let addr = ring.local_addr(socket)?;
        Ok((ring, socket, addr))
    });
    let (mut ring, socket, receive_addr) = match socket_setup {
        Ok(setup) => setup,
        Err(err) => {
            drop(handle.plan);
            let _ = join_control(handle.thread);
            return Err(ClientError::DataSocket {
                op: "bind",
                addr: SocketAddr::new(data_ip, data_port),
                source: std::io::Error::other(err.to_string()),
            });
        }
    };
    tracing::info!(%receive_addr, backend = ?ring.backend(), resumed = completed.len(), "data socket ready");

    let mut progress = Progress::new(options.progress, meta.size, meta.segment_count);
    if options.progress_json {
        progress = progress.with_json_lines(meta.size);
    }
    let progress = Arc::new(progress);
    let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
    let plan = Plan {
        completed,
        receive_addr,
        commands: commands_tx,
        waker: ring.waker(),
        progress: Arc::clone(&progress),
    };
    if handle.plan.send(plan).is_err() {
        return Err(join_control(handle.thread)
            .err()
            .unwrap_or_else(control_vanished));
    }
    let mut context = DecoderContext {
        meta: meta.clone(),
        record,
        record_path: output::record_path(&options.output),
        counters: Arc::clone(&counters),
        live,
        coop: CoopQueue::new(options.coop_capacity),
        commands: commands_rx,
        events: handle.events,
    };
    let decoded = receiver::run(&mut ring, socket, &mut part, &mut context);
    drop(context.events);
    drop(ring);
    let control_result = join_control(handle.thread);
    progress.finish();
    match (decoded, control_result) {
        (Err(err), _) => return Err(err),
        (Ok(_), Err(err)) => return Err(err),
        (Ok(false), Ok(())) => return Err(ClientError::Internal("download aborted".into())),
        (Ok(true), Ok(())) => {}
    }
    finish_output(options, part, &context.record)?;
    Ok(counters.summary(&meta.name, meta.size, meta.segment_count, started.elapsed()))
}

/// Opens `PATH.part` and its resume record: keeps the record only if it is for this file version, and
/// re-verifies the digest of every segment it marks complete (unmarking any that fail).
fn prepare_output(
    options: &GetOptions,
    meta: &FileMeta,
    counters: &Counters,
) -> Result<(PartFile, ResumeRecord), ClientError> {
    let record_path = output::record_path(&options.output);
    let tag = meta_tag(meta);
    let stored = ResumeRecord::load(&record_path)
        .map_err(|e| ClientError::output("read", &record_path, e))?;
    let record = match stored {
        Some(Ok(record)) if record.is_for(&meta.name, meta.size, &tag, meta.segment_count) => {
            Some(record)
        }
        Some(Ok(record)) => {
            tracing::warn!(path = %record_path.display(), record_name = record.name(), "resume record is for another file or version: discarded");
            None
        }
        Some(Err(err)) => {
            tracing::warn!(path = %record_path.display(), %err, "resume record unusable: discarded");
            None
        }
        None => None,
    };
    let resume = record.is_some();
    let part = PartFile::open(&options.output, meta.size, resume)?;
    let mut record =
        record.unwrap_or_else(|| ResumeRecord::new(&meta.name, meta.size, tag, meta.segment_count));
    for segment in 0..meta.segment_count {
        if !record.is_complete(segment) {
            continue;
        }
        let range = receiver::segment_range(meta, segment).unwrap_or(0..0);
        let good = meta
            .digests
            .get(segment as usize)
            .is_some_and(|d| blake3::hash(part.segment(range.clone())).as_bytes() == d);
        if good {
            Counters::add(&counters.segments_resumed, 1);
            Counters::add(&counters.bytes_resumed, range.len() as u64);
        } else {
            tracing::warn!(
                segment,
                "segment marked complete fails its digest: fetching it again"
            );
            record.set_complete(segment, false);
        }
    }
    // Write the record now so a crash before the first segment still leaves a consistent pair.
    record
        .store(&record_path)
        .map_err(|e| ClientError::output("write", &record_path, e))?;
    Ok((part, record))
}

/// Final checks, then `PATH.part` → `PATH` and the record removed.
fn finish_output(
    options: &GetOptions,
    part: PartFile,
    record: &ResumeRecord,
) -> Result<(), ClientError> {
    if record.first_missing().is_some() {
        return Err(ClientError::Internal(format!(
            "download ended with {} of {} segments",
            record.completed_count(),
            record.segment_count()
        )));
    }
    part.finish()?;
    let record_path = output::record_path(&options.output);
    ResumeRecord::remove(&record_path)
        .map_err(|e| ClientError::output("remove", &record_path, e))?;
    let dir = match options.output.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    output::sync_dir(&dir).map_err(|e| ClientError::output("fsync", &dir, e))
}

fn pin_decoder_thread(requested: Option<usize>) {
    let Some(cores) = core_affinity::get_core_ids() else {
        tracing::debug!("core ids unavailable: decoder thread not pinned");
        return;
    };
    let chosen = match requested {
        Some(index) => cores.iter().copied().find(|c| c.id == index),
        None => cores.last().copied(),
    };
    match chosen {
        Some(core) if core_affinity::set_for_current(core) => {
            tracing::debug!(core = core.id, "decoder thread pinned")
        }
        _ => tracing::warn!(?requested, "could not pin the decoder thread"),
    }
}

fn join_control(
    thread: std::thread::JoinHandle<Result<(), ClientError>>,
) -> Result<(), ClientError> {
    thread
        .join()
        .unwrap_or_else(|_| Err(ClientError::Internal("control thread panicked".into())))
}

fn control_vanished() -> ClientError {
    ClientError::Internal("control thread ended without a result".into())
}
