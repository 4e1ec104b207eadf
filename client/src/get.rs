//! `ccfd-client get`: the whole download of one file (see the crate documentation for the threads).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ccfd_proto::{CoopConfig, FileMeta, NodeId};
use ccfd_ring::{Ring, RingConfig, SocketConfig};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::cli::ServerAddr;
use crate::control::{self, ControlSetup, MetaReady, Plan};
use crate::coop::CoopQueue;
use crate::coop_control::{self, CoopEvent, CoopHooks, CoopSetup, ShardLink};
use crate::coop_shard::{self, ServeCommand, ServeSetup};
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
    /// Cooperate with peers (`false`: `--no-coop`, server only).
    pub cooperate: bool,
    /// Where the cooperation listener binds (`None`: the `bind` IP, else the IP routing to the server;
    /// any port).
    pub coop_listen: Option<SocketAddr>,
    /// Upload cap to peers, bits per second (`None`: unlimited).
    pub upload_rate_bps: Option<u64>,
    /// Download budget, bits per second (`None`: none).
    pub download_rate_bps: Option<u64>,
    /// How long to keep serving peers after the download completed.
    pub linger: Duration,
    /// Core to pin the cooperation shard to (default: the first core).
    pub shard_core: Option<usize>,
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
            cooperate: true,
            coop_listen: None,
            upload_rate_bps: None,
            download_rate_bps: None,
            linger: Duration::from_secs(3),
            shard_core: None,
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
/// on the calling thread (pinned), the control connection on a thread of its own and, unless
/// `cooperate` is off, the cooperation control ("ccfd-coop") and the cooperation shard; after the
/// output is renamed they keep serving peers for `linger`, then leave.
pub fn get(options: &GetOptions) -> Result<Summary, ClientError> {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let live = Arc::new(LiveSession::default());
    // The cooperation listener is bound first: its address goes into the Hello to the server.
    let coop_listener = if options.cooperate {
        Some(bind_coop_listener(options)?)
    } else {
        None
    };
    let control_addr =
        match &coop_listener {
            Some(listener) => Some(listener.local_addr().map_err(|e| {
                ClientError::Internal(format!("cooperation listener address: {e}"))
            })?),
            None => None,
        };
    let node_id = random_node_id();
    let handle = control::spawn(ControlSetup {
        name: options.name.clone(),
        server: options.server.clone(),
        bind_ip: options.bind.map(|b| b.ip()),
        retry_for: options.retry_for,
        node_id,
        counters: Arc::clone(&counters),
        live: Arc::clone(&live),
        control_addr,
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

    let coop_queue = CoopQueue::new(options.coop_capacity);
    let (cooperation, hooks) = match coop_listener {
        Some(listener) => {
            let started = Cooperation::start(CoopStart {
                options,
                meta: &meta,
                listener,
                node_id,
                data_ip,
                receive_addr,
                completed: &completed,
                queue: &coop_queue,
                counters: &counters,
                live: &live,
            });
            match started {
                Ok((cooperation, hooks)) => (Some(cooperation), Some(hooks)),
                Err(err) => {
                    drop(handle.plan);
                    let _ = join_control(handle.thread);
                    return Err(err);
                }
            }
        }
        None => (None, None),
    };

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
        coop: hooks,
    };
    if handle.plan.send(plan).is_err() {
        leave(cooperation, Duration::ZERO);
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
        // `--no-coop`: no queue, so the decoder copies no packet for it.
        coop: cooperation.is_some().then_some(coop_queue),
        commands: commands_rx,
        events: handle.events,
    };
    // Pinned only now: threads spawned by this one inherit its affinity (the cooperation shard
    // pins itself to another core, the cooperation control runs unpinned).
    pin_decoder_thread(options.decoder_core);
    let decoded = receiver::run(&mut ring, socket, &mut part, &mut context);
    drop(context.events);
    drop(ring);
    progress.finish();
    // The decoder finishes only when the control thread says the download is done (a cooperating
    // control thread then lingers connected until `leave`).
    let finished = match decoded {
        Ok(true) => {
            finish_output(options, part, &context.record, &counters).map(|()| started.elapsed())
        }
        Ok(false) => Err(ClientError::Internal("download aborted".into())),
        Err(err) => Err(err),
    };
    let linger = if finished.is_ok() {
        options.linger
    } else {
        Duration::ZERO
    };
    // The file is complete and renamed: serve peers for the linger, then leave.
    leave(cooperation, linger);
    let control_result = join_control(handle.thread);
    let elapsed = match (finished, control_result) {
        (Ok(elapsed), Ok(())) => elapsed,
        // The control thread's error says why the decoder was told to abort.
        (Err(_), Err(err)) | (Ok(_), Err(err)) => return Err(err),
        (Err(err), Ok(())) => return Err(err),
    };
    Ok(counters.summary(&meta.name, meta.size, meta.segment_count, elapsed))
}

/// The running cooperation: the control thread ("ccfd-coop") and the shard.
struct Cooperation {
    events: UnboundedSender<CoopEvent>,
    /// Ends the control thread's linger (fired after ours).
    control_linger: tokio::sync::oneshot::Sender<()>,
    control: JoinHandle<Result<(), ClientError>>,
    shard: JoinHandle<Result<(), ClientError>>,
    shard_link: ShardLink,
}

/// What [`Cooperation::start`] needs.
struct CoopStart<'a> {
    options: &'a GetOptions,
    meta: &'a FileMeta,
    listener: std::net::TcpListener,
    node_id: NodeId,
    data_ip: IpAddr,
    receive_addr: SocketAddr,
    completed: &'a [u32],
    queue: &'a CoopQueue,
    counters: &'a Arc<Counters>,
    live: &'a Arc<LiveSession>,
}

impl Cooperation {
    /// Starts the shard, then the cooperation control; returns the control thread's hooks.
    fn start(start: CoopStart<'_>) -> Result<(Cooperation, CoopHooks), ClientError> {
        let options = start.options;
        let shard = coop_shard::spawn(ServeSetup {
            meta: start.meta.clone(),
            output_path: output::part_path(&options.output),
            bind_ip: start.data_ip,
            upload_rate_bps: options.upload_rate_bps,
            queue: start.queue.consumer(),
            counters: Arc::clone(start.counters),
            core: options.shard_core,
        })?;
        let shard_link = ShardLink {
            commands: shard.commands.clone(),
            waker: shard.waker.clone(),
        };
        let (events_tx, events_rx) = unbounded_channel();
        let (requests_tx, requests_rx) = unbounded_channel();
        let listen_ip = start
            .listener
            .local_addr()
            .map_or(start.data_ip, |a| a.ip());
        let setup = CoopSetup {
            listener: start.listener,
            bind_ip: listen_ip,
            node_id: start.node_id,
            name: start.meta.name.clone(),
            data_addr: start.receive_addr,
            completed: start.completed.to_vec(),
            // Segments last well under a second on a fast network: ask for peers again soon when
            // none were found (the leader finds its followers only once they start the segment).
            // Every peer receiving the segment holds its own share of the server's source symbols
            // (the server's pool), so ask all of them (the server lists up to 32), and as early as
            // possible: a late ask leaves a backlog that the peer relays at only 4/3 of its arrivals.
            config: CoopConfig {
                max_sources: 32,
                max_serving: 64,
                peers_refresh: Duration::from_millis(50),
                // Sources pace by our heartbeats: react within a fraction of a segment.
                heartbeat_interval: coop_control::HEARTBEAT_INTERVAL,
                ..CoopConfig::default()
            },
            shard: shard_link.clone(),
            live: Arc::clone(start.live),
            download_rate_bps: options.download_rate_bps,
            events: events_rx,
            peer_requests: requests_tx,
        };
        let control = match coop_control::spawn(setup) {
            Ok(handle) => handle.thread,
            Err(err) => {
                let _ = shard.commands.send(ServeCommand::Exit);
                shard.waker.wake();
                let _ = shard.thread.join();
                return Err(err);
            }
        };
        tracing::info!(shard = %shard.local_addr, "cooperation shard ready");
        let (linger_tx, linger_rx) = tokio::sync::oneshot::channel();
        let hooks = CoopHooks {
            events: events_tx.clone(),
            peer_requests: requests_rx,
            linger_until: linger_rx,
        };
        Ok((
            Cooperation {
                events: events_tx,
                control_linger: linger_tx,
                control,
                shard: shard.thread,
                shard_link,
            },
            hooks,
        ))
    }
}

/// Keeps serving for `linger` (the control thread keeps us listed at the server meanwhile), then
/// `ExitCoop` to every peer, the shard stopped, both threads joined, the control thread released.
/// Cooperation errors after the download are logged, not returned (the file is complete).
fn leave(cooperation: Option<Cooperation>, linger: Duration) {
    let Some(c) = cooperation else { return };
    let _ = c.events.send(CoopEvent::Leave { linger });
    drop(c.events);
    let control = c
        .control
        .join()
        .unwrap_or_else(|_| Err(ClientError::Internal("cooperation thread panicked".into())));
    // The control thread stops the shard on its way out; make sure even if it did not start.
    let _ = c.shard_link.commands.send(ServeCommand::Exit);
    c.shard_link.waker.wake();
    let shard = c
        .shard
        .join()
        .unwrap_or_else(|_| Err(ClientError::Internal("cooperation shard panicked".into())));
    for (what, result) in [("control", control), ("shard", shard)] {
        if let Err(err) = result {
            tracing::warn!(what, %err, "cooperation ended with an error");
        }
    }
    // Now the server may forget us (the control thread sends Exit).
    let _ = c.control_linger.send(());
}

/// Binds the cooperation listener: `--coop-listen`, else the `--bind` IP, else the local IP that
/// routes to the server (found with an unconnected-then-connected UDP socket: nothing is sent), any
/// port.
fn bind_coop_listener(options: &GetOptions) -> Result<std::net::TcpListener, ClientError> {
    let addr = match (options.coop_listen, options.bind) {
        (Some(addr), _) => addr,
        (None, Some(bind)) => SocketAddr::new(bind.ip(), 0),
        (None, None) => SocketAddr::new(route_ip(&options.server), 0),
    };
    std::net::TcpListener::bind(addr).map_err(|source| ClientError::DataSocket {
        op: "bind cooperation listener",
        addr,
        source,
    })
}

/// The local IP the kernel would use to reach `server` (unspecified when it cannot be resolved now).
fn route_ip(server: &ServerAddr) -> IpAddr {
    let resolved = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next());
    let Some(target) = resolved else {
        tracing::warn!(%server, "server not resolvable now: cooperation listener on every address");
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    let local: IpAddr = if target.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    UdpSocket::bind(SocketAddr::new(local, 0))
        .and_then(|socket| {
            socket.connect(target)?;
            socket.local_addr()
        })
        .map_or(local, |addr| addr.ip())
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
    counters: &Counters,
) -> Result<(), ClientError> {
    if record.first_missing().is_some() {
        return Err(ClientError::Internal(format!(
            "download ended with {} of {} segments",
            record.completed_count(),
            record.segment_count()
        )));
    }
    let fsync = part.finish()?;
    tracing::info!(
        fsync_ms = fsync.as_millis() as u64,
        "output fsynced (the writeback left at the end)"
    );
    counters.set_fsync(fsync);
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
