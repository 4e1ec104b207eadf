//! The "ccfd-coop" thread: a tokio current-thread runtime driving [`Coop`] over real TCP links (see
//! the parent module for the contract).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfd_proto::pacing::wire_bytes;
use ccfd_proto::{Coop, CoopAction, Frame, LinkId, NodeId, ReceiverStats, DATA_OVERHEAD};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use super::sources::SourceEntry;
use super::{CoopEvent, CoopHandle, CoopSetup, PeersRequest, ShardLink};
use crate::connection::{ConnError, ControlConn};
use crate::coop_shard::{ServeCommand, StreamId};
use crate::error::ClientError;
use crate::receiver::LiveSession;

/// How long one outbound peer connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Period of the per-source statistics sample (the heartbeats carry the latest one).
const STATS_TICK: Duration = super::HEARTBEAT_INTERVAL;
/// How long the links may take to flush `ExitCoop` when we leave.
const EXIT_FLUSH: Duration = Duration::from_millis(500);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Starts the "ccfd-coop" thread.
pub fn spawn(setup: CoopSetup) -> Result<CoopHandle, ClientError> {
    let thread = std::thread::Builder::new()
        .name("ccfd-coop".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ClientError::Internal(format!("tokio runtime: {e}")))?;
            let shard = setup.shard.clone();
            let result = runtime.block_on(run(setup));
            // Whatever happened, the shard stops with us.
            let _ = shard.commands.send(ServeCommand::Exit);
            shard.waker.wake();
            result
        })
        .map_err(|e| ClientError::Internal(format!("cooperation thread: {e}")))?;
    Ok(CoopHandle { thread })
}

/// What the link, accept and connect tasks report to the main loop.
enum Internal {
    Accepted(TcpStream),
    Connected { node: NodeId, stream: TcpStream },
    ConnectFailed { node: NodeId },
    Frame { link: LinkId, frame: Frame },
    Disconnected { link: LinkId, malformed: bool },
}

/// What the main loop tells a link task.
enum LinkOut {
    Frame(Frame),
    Close,
}

/// The previous per-source sample (for rates and loss over the last tick).
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    packets: u64,
    bytes: u64,
    useful_bytes: u64,
    useful_packets: u64,
    span: u64,
    stats: ReceiverStats,
}

struct Driver {
    coop: Coop,
    shard: ShardLink,
    shard_dirty: bool,
    bind_ip: IpAddr,
    data_addr: SocketAddr,
    links: HashMap<LinkId, UnboundedSender<LinkOut>>,
    link_tasks: JoinSet<()>,
    next_link: u64,
    internal: UnboundedSender<Internal>,
    peer_requests: UnboundedSender<PeersRequest>,
    node_ips: HashMap<NodeId, IpAddr>,
    live: Arc<LiveSession>,
    receiving: Option<u32>,
    samples: HashMap<IpAddr, Sample>,
    server_rate_bps: u64,
    download_rate_bps: Option<u64>,
    malformed_links: u64,
}

async fn run(setup: CoopSetup) -> Result<(), ClientError> {
    let CoopSetup {
        listener,
        bind_ip,
        node_id,
        name,
        data_addr,
        completed,
        config,
        shard,
        live,
        download_rate_bps,
        mut events,
        peer_requests,
    } = setup;
    let listen_addr = listener
        .local_addr()
        .map_err(|e| ClientError::Internal(format!("cooperation listener: {e}")))?;
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
        .map_err(|e| ClientError::Internal(format!("cooperation listener {listen_addr}: {e}")))?;
    let (internal, mut internal_rx) = unbounded_channel();
    let accept = tokio::spawn(accept_loop(listener, internal.clone()));
    tracing::info!(listen = %listen_addr, %data_addr, resumed = completed.len(), "cooperation running");

    let mut driver = Driver {
        coop: Coop::new(
            config,
            node_id,
            data_addr,
            listen_addr,
            name,
            completed.iter().copied(),
        ),
        shard,
        shard_dirty: false,
        bind_ip,
        data_addr,
        links: HashMap::new(),
        link_tasks: JoinSet::new(),
        next_link: 0,
        internal,
        peer_requests,
        node_ips: HashMap::new(),
        live,
        receiving: None,
        samples: HashMap::new(),
        server_rate_bps: 0,
        download_rate_bps,
        malformed_links: 0,
    };
    for segment in completed {
        driver.shard_command(ServeCommand::Completed { segment });
    }
    driver.flush_shard();

    let mut leave_at: Option<Instant> = None;
    let mut next_stats = Instant::now() + STATS_TICK;
    loop {
        driver.perform_actions();
        let now = Instant::now();
        let mut wake_at = next_stats;
        if let Some(at) = driver.coop.poll_timeout() {
            wake_at = wake_at.min(at);
        }
        if let Some(at) = leave_at {
            wake_at = wake_at.min(at);
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => driver.handle_event(Instant::now(), event, &mut leave_at),
                // Nobody can tell us anything any more: leave now.
                None => leave_at = Some(now),
            },
            Some(internal) = internal_rx.recv() => driver.handle_internal(Instant::now(), internal),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at)) => {}
        }
        let now = Instant::now();
        if now >= next_stats {
            driver.sample_sources(now);
            next_stats = now + STATS_TICK;
        }
        if driver.coop.poll_timeout().is_some_and(|at| at <= now) {
            driver.coop.handle_timeout(now);
        }
        if leave_at.is_some_and(|at| at <= now) {
            driver.coop.exit(now);
            driver.perform_actions();
            break;
        }
    }
    accept.abort();
    // Every link got ExitCoop and Close; let them flush (bounded), then drop what is left.
    driver.links.clear();
    let _ = tokio::time::timeout(EXIT_FLUSH, async {
        while driver.link_tasks.join_next().await.is_some() {}
    })
    .await;
    driver.link_tasks.abort_all();
    driver.shard_command(ServeCommand::Exit);
    driver.flush_shard();
    if driver.malformed_links > 0 {
        tracing::info!(
            links = driver.malformed_links,
            "peer links dropped for malformed frames"
        );
    }
    tracing::debug!("cooperation stopped");
    Ok(())
}

impl Driver {
    fn handle_event(&mut self, now: Instant, event: CoopEvent, leave_at: &mut Option<Instant>) {
        match event {
            CoopEvent::Receiving { meta, server_only } => {
                tracing::debug!(
                    segment = meta.segment,
                    session = meta.session.0,
                    server_only,
                    "cooperation: receiving"
                );
                self.receiving = Some(meta.session.0);
                self.samples.clear();
                self.shard_command(ServeCommand::Receiving {
                    segment: meta.segment,
                });
                self.coop.set_want(now, meta, self.data_addr, server_only);
            }
            CoopEvent::Decoded { segment } => {
                self.receiving = None;
                self.coop.segment_decoded(now, segment);
                self.shard_command(ServeCommand::Decoded { segment });
            }
            CoopEvent::Verified { segment, ok: true } => {
                self.coop.segment_completed(now, segment);
                self.shard_command(ServeCommand::Completed { segment });
            }
            CoopEvent::Verified { segment, ok: false } => {
                tracing::warn!(
                    segment,
                    "segment failed its digest: its peers are cut off for it"
                );
                self.coop.segment_failed(now, segment);
                self.shard_command(ServeCommand::Failed { segment });
            }
            CoopEvent::PeerList {
                name,
                segment,
                peers,
            } => self.coop.handle_peer_list(now, &name, segment, peers),
            CoopEvent::ServerRate { bps } => self.server_rate_bps = bps,
            CoopEvent::Leave { linger } => {
                tracing::debug!(
                    linger_ms = linger.as_millis() as u64,
                    "cooperation: lingering"
                );
                self.receiving = None;
                self.coop.clear_want(now);
                *leave_at = Some(now + linger);
            }
        }
    }

    fn handle_internal(&mut self, now: Instant, internal: Internal) {
        match internal {
            Internal::Accepted(stream) => {
                if let Some(link) = self.open_link(stream) {
                    self.coop.handle_inbound(now, link);
                }
            }
            Internal::Connected { node, stream } => match self.open_link(stream) {
                Some(link) => self.coop.handle_peer_connected(now, node, link),
                None => self.coop.handle_peer_connect_failed(now, node),
            },
            Internal::ConnectFailed { node } => self.coop.handle_peer_connect_failed(now, node),
            Internal::Frame { link, frame } => {
                if self.links.contains_key(&link) {
                    self.coop.handle_frame(now, link, frame);
                }
            }
            Internal::Disconnected { link, malformed } => {
                self.malformed_links += u64::from(malformed);
                if self.links.remove(&link).is_some() {
                    self.coop.handle_disconnected(now, link);
                }
            }
        }
    }

    /// Gives `stream` a link id and a task; `None` when the socket is unusable.
    fn open_link(&mut self, stream: TcpStream) -> Option<LinkId> {
        let conn = match ControlConn::from_stream(stream) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(%err, "peer link unusable");
                return None;
            }
        };
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let (tx, rx) = unbounded_channel();
        self.links.insert(link, tx);
        tracing::debug!(link = link.0, peer = %conn.peer_addr(), "peer link open");
        self.link_tasks
            .spawn(link_task(link, conn, rx, self.internal.clone()));
        Some(link)
    }

    fn perform_actions(&mut self) {
        while let Some(action) = self.coop.poll_action() {
            match action {
                CoopAction::RequestPeers { name, segment } => {
                    let _ = self.peer_requests.send(PeersRequest { name, segment });
                }
                CoopAction::Connect { node, addr } => {
                    self.node_ips.insert(node, addr.ip());
                    let internal = self.internal.clone();
                    let bind_ip = self.bind_ip;
                    tokio::spawn(async move {
                        let event = match connect(addr, bind_ip).await {
                            Ok(stream) => Internal::Connected { node, stream },
                            Err(err) => {
                                tracing::debug!(%addr, %err, "peer connect failed");
                                Internal::ConnectFailed { node }
                            }
                        };
                        let _ = internal.send(event);
                    });
                }
                CoopAction::Send { link, frame } => {
                    if let Some(tx) = self.links.get(&link) {
                        let _ = tx.send(LinkOut::Frame(frame));
                    }
                }
                CoopAction::Close { link } => {
                    if let Some(tx) = self.links.remove(&link) {
                        let _ = tx.send(LinkOut::Close);
                    }
                }
                CoopAction::StartServing {
                    link,
                    session,
                    segment,
                    key,
                    to,
                    source,
                } => {
                    tracing::debug!(link = link.0, session = session.0, segment, %to, ?source, "serving a peer");
                    self.shard_command(ServeCommand::Start {
                        stream: StreamId { link, session },
                        segment,
                        key,
                        to,
                        source,
                    });
                }
                CoopAction::ServeFromCopy { link, session } => {
                    self.shard_command(ServeCommand::FromCopy {
                        stream: StreamId { link, session },
                    });
                }
                CoopAction::StopServing { link, session } => {
                    tracing::debug!(link = link.0, session = session.0, "stop serving a peer");
                    self.shard_command(ServeCommand::Stop {
                        stream: StreamId { link, session },
                    });
                }
                CoopAction::ServingStats {
                    link,
                    session,
                    stats,
                } => {
                    self.shard_command(ServeCommand::Report {
                        stream: StreamId { link, session },
                        stats,
                    });
                }
            }
        }
        self.flush_shard();
    }

    fn shard_command(&mut self, command: ServeCommand) {
        let _ = self.shard.commands.send(command);
        self.shard_dirty = true;
    }

    fn flush_shard(&mut self) {
        if std::mem::take(&mut self.shard_dirty) {
            self.shard.waker.wake();
        }
    }

    /// Turns the decoder's per-source tallies into each source's `ReceiverStats`.
    fn sample_sources(&mut self, now: Instant) {
        let Some(session) = self.receiving else {
            return;
        };
        let (board_session, entries) = self.live.sources.snapshot();
        if board_session != Some(session) {
            return;
        }
        let sources = self.coop.sources();
        let share = self.download_rate_bps.map(|budget| {
            budget.saturating_sub(self.server_rate_bps) / (sources.len().max(1) as u64)
        });
        let rank = self.live.rank.load(Ordering::Relaxed);
        for node in sources {
            let Some(ip) = self.node_ips.get(&node).copied() else {
                continue;
            };
            let Some(entry) = entries.iter().find(|e| e.ip == ip) else {
                continue;
            };
            let stats = self.sample_one(now, entry, rank, share);
            self.coop.update_source_stats(node, stats);
        }
    }

    fn sample_one(
        &mut self,
        now: Instant,
        entry: &SourceEntry,
        rank: u32,
        share: Option<u64>,
    ) -> ReceiverStats {
        let span = entry.seq_span();
        let mut stats = ReceiverStats {
            received_packets: entry.packets,
            received_bytes: entry.bytes,
            dropped_packets: 0,
            receive_rate_bps: 0,
            loss_ppm: 0,
            decoded_rank: rank,
        };
        if let Some(prev) = self.samples.get(&entry.ip) {
            let seconds = now.saturating_duration_since(prev.at).as_secs_f64();
            if seconds < STATS_TICK.as_secs_f64() / 2.0 {
                return prev.stats;
            }
            // The rate we report is the *useful* one (bytes that raised our rank): recoded packets
            // of peers that hold what we hold are worthless, and a source paces down to what helps.
            // A source that sent only redundant packets is reported at 1 bit/s (known, not zero).
            let got_bytes = entry.bytes.saturating_sub(prev.bytes);
            // In wire bytes (data header, MAC and IP/UDP/Ethernet headers of each packet added),
            // as the source's pacer counts what it sends.
            let useful = wire_bytes(
                entry.useful_bytes.saturating_sub(prev.useful_bytes),
                entry.useful_packets.saturating_sub(prev.useful_packets),
                DATA_OVERHEAD,
                entry.ip,
            );
            let rate = (useful * 8) as f64 / seconds;
            let expected = span.saturating_sub(prev.span);
            let got = entry.packets.saturating_sub(prev.packets).min(expected);
            stats.receive_rate_bps = if got_bytes > 0 {
                (rate as u64).max(1)
            } else {
                0
            };
            stats.loss_ppm = ((expected - got) * 1_000_000)
                .checked_div(expected)
                .unwrap_or(0) as u32;
            if let Some(share) = share {
                // Our download budget: no source is told we take more than its share.
                stats.receive_rate_bps = stats.receive_rate_bps.min(share.max(1));
            }
        }
        self.samples.insert(
            entry.ip,
            Sample {
                at: now,
                packets: entry.packets,
                bytes: entry.bytes,
                useful_bytes: entry.useful_bytes,
                useful_packets: entry.useful_packets,
                span,
                stats,
            },
        );
        stats
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, internal: UnboundedSender<Internal>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if internal.send(Internal::Accepted(stream)).is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cooperation listener: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connect(addr: SocketAddr, bind_ip: IpAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if bind_ip.is_ipv4() == addr.is_ipv4() && !bind_ip.is_unspecified() {
        socket.bind(SocketAddr::new(bind_ip, 0))?;
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out"),
        )),
    }
}

/// One peer link: frames in to the main loop, frames out from it, until either side closes.
async fn link_task(
    link: LinkId,
    mut conn: ControlConn,
    mut out: UnboundedReceiver<LinkOut>,
    internal: UnboundedSender<Internal>,
) {
    loop {
        tokio::select! {
            frame = conn.recv() => match frame {
                Ok(frame) => {
                    let _ = internal.send(Internal::Frame { link, frame });
                }
                Err(err) => {
                    tracing::debug!(link = link.0, %err, "peer link closed");
                    let malformed = matches!(err, ConnError::Wire(_));
                    let _ = internal.send(Internal::Disconnected { link, malformed });
                    return;
                }
            },
            next = out.recv() => match next {
                Some(LinkOut::Frame(frame)) => {
                    if let Err(err) = conn.send(&frame).await {
                        tracing::debug!(link = link.0, %err, "peer link broke while sending");
                        let _ = internal.send(Internal::Disconnected { link, malformed: false });
                        return;
                    }
                }
                Some(LinkOut::Close) | None => {
                    conn.close().await;
                    return;
                }
            },
        }
    }
}
