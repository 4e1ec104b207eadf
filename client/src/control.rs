//! The control thread: a tokio current-thread runtime on its own OS thread that owns the TCP control
//! connection and drives `ccfd_proto::Download`.
//!
//! Order: [`spawn`] connects (retrying with backoff for up to `retry_for`), sends Hello and
//! `FileMetaRequest`, and hands the [`FileMeta`] to the caller ([`MetaReady`]). The caller opens the
//! output, binds the data socket and answers with a [`Plan`] (completed segments, receive address, the
//! decoder's command channel and waker). The thread then runs the `Download` state machine: it performs
//! its actions (connect, send frames, start/stop the decoder on a session), feeds it frames, decoder
//! events, receive statistics and timer ticks, and refreshes the progress bar. When the download is done
//! (or fails) it tells the decoder thread `Finish` (or `Abort`) and returns.
//!
//! When the server goes away the state machine reconnects with exponential backoff; the driver gives up
//! with [`ClientError::Unreachable`] once the server has been unreachable for `retry_for`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ccfd_proto::{
    Download, DownloadAction, DownloadConfig, DownloadError, ErrorCode, FileEntry, FileMeta, Frame,
    NodeId, PeersQuery, ReceiverStats,
};
use crossbeam_channel::Sender;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::cli::ServerAddr;
use crate::connection::{ConnError, ControlConn};
use crate::coop_control::{CoopEvent, CoopHooks, PeersRequest};
use crate::error::ClientError;
use crate::params::check_meta;
use crate::progress::Progress;
use crate::receiver::{DecoderCommand, DecoderEvent, LiveSession};
use crate::stats::Counters;

/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the server may take to answer a request before the connection is considered lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause of the control loop (progress refresh, statistics sampling).
const TICK: Duration = Duration::from_millis(100);
/// Keep-alive period of a lingering cooperating client's server connection.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Smallest interval over which receive rate and loss are computed.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// Interval of a session's first sample. Until it the heartbeats carry no receive rate, and the server
/// grows a receiver's rate x1.5 per heartbeat without the receive-rate bound: over a whole
/// `SAMPLE_INTERVAL` (ten heartbeats) that overshot to 5-26 Gbit/s on loopback, overflowed the socket
/// buffer and cost a coded repair phase per segment.
const FIRST_SAMPLE_INTERVAL: Duration = Duration::from_millis(40);
/// Heartbeat period while a segment is received: the server's shard caps the packets in flight by
/// the progress (packets received, rank) each heartbeat reports, so they go out often.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(20);

/// What the control thread needs to start.
#[derive(Debug, Clone)]
pub struct ControlSetup {
    /// File name on the server.
    pub name: String,
    /// Server address.
    pub server: ServerAddr,
    /// Local IP for the control connection, if pinned by `--bind`.
    pub bind_ip: Option<IpAddr>,
    /// How long the server may stay unreachable before the download gives up.
    pub retry_for: Duration,
    /// This client's random node id.
    pub node_id: NodeId,
    /// Download counters.
    pub counters: Arc<Counters>,
    /// Live statistics of the session being received.
    pub live: Arc<LiveSession>,
    /// The cooperation listener announced in Hello (`None`: this client does not cooperate).
    pub control_addr: Option<SocketAddr>,
}

/// The file meta, sent by the control thread once it has it.
#[derive(Debug, Clone)]
pub struct MetaReady {
    /// The validated file meta.
    pub meta: FileMeta,
    /// The local address of the control connection (the default IP for the data socket).
    pub local_addr: SocketAddr,
}

/// The caller's answer to [`MetaReady`].
#[derive(Debug)]
pub struct Plan {
    /// Segments complete and verified from an earlier run.
    pub completed: Vec<u32>,
    /// The bound UDP address the server should send to.
    pub receive_addr: SocketAddr,
    /// Commands to the decoder thread.
    pub commands: Sender<DecoderCommand>,
    /// Wakes the decoder thread's ring after a command.
    pub waker: ccfd_ring::Waker,
    /// The progress bar.
    pub progress: Arc<Progress>,
    /// The cooperation control's channels (`None` with `--no-coop`).
    pub coop: Option<CoopHooks>,
}

/// The caller's side of a running control thread.
#[derive(Debug)]
pub struct ControlHandle {
    /// Delivers the file meta once (closed if the thread fails first).
    pub meta: crossbeam_channel::Receiver<MetaReady>,
    /// Takes the plan (drop it to make the thread stop).
    pub plan: oneshot::Sender<Plan>,
    /// Where the decoder thread reports its events.
    pub events: UnboundedSender<DecoderEvent>,
    /// The thread; its result is the download's control-side outcome.
    pub thread: JoinHandle<Result<(), ClientError>>,
}

/// Starts the control thread for a `get`.
pub fn spawn(setup: ControlSetup) -> Result<ControlHandle, ClientError> {
    let (meta_tx, meta_rx) = crossbeam_channel::bounded(1);
    let (plan_tx, plan_rx) = oneshot::channel();
    let (events_tx, events_rx) = unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("ccfd-control".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ClientError::Internal(format!("tokio runtime: {e}")))?;
            runtime.block_on(control_main(setup, meta_tx, plan_rx, events_rx))
        })
        .map_err(|e| ClientError::Internal(format!("spawn control thread: {e}")))?;
    Ok(ControlHandle {
        meta: meta_rx,
        plan: plan_tx,
        events: events_tx,
        thread,
    })
}

async fn control_main(
    setup: ControlSetup,
    meta_tx: Sender<MetaReady>,
    plan_rx: oneshot::Receiver<Plan>,
    events: UnboundedReceiver<DecoderEvent>,
) -> Result<(), ClientError> {
    let (conn, meta) = fetch_meta(&setup).await?;
    Counters::add(&setup.counters.control_connects, 1);
    if meta_tx
        .send(MetaReady {
            meta: meta.clone(),
            local_addr: conn.local_addr(),
        })
        .is_err()
    {
        return Ok(());
    }
    let Ok(plan) = plan_rx.await else {
        // The caller failed (output not writable, ...) and reports its own error.
        let mut conn = conn;
        let _ = conn.send(&Frame::Exit).await;
        return Ok(());
    };
    let commands = plan.commands.clone();
    let waker = plan.waker.clone();
    let result = drive(&setup, conn, meta, plan, events).await;
    let _ = commands.send(if result.is_ok() {
        DecoderCommand::Finish
    } else {
        DecoderCommand::Abort
    });
    waker.wake();
    match result {
        Ok(Some((conn, hooks))) => {
            linger(conn, hooks).await;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(err) => Err(err),
    }
}

/// A cooperating client that is done keeps its server connection (keep-alive heartbeats) until
/// `get` says the linger is over, so the server keeps listing it as a holder of every segment; then
/// it sends `Exit`.
async fn linger(mut conn: ControlConn, mut hooks: CoopHooks) {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        tokio::select! {
            _ = &mut hooks.linger_until => break,
            frame = conn.recv() => match frame {
                Ok(Frame::PeerList { name, segment, peers }) => {
                    let _ = hooks.events.send(CoopEvent::PeerList { name, segment, peers });
                }
                Ok(_) => {}
                // The server went away: nothing to keep.
                Err(_) => return,
            },
            _ = keepalive.tick() => {
                let heartbeat = Frame::Heartbeat {
                    session: ccfd_proto::SessionId::NONE,
                    stats: ReceiverStats::default(),
                };
                if conn.send(&heartbeat).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.send(&Frame::Exit).await;
    conn.close().await;
}

/// Connects and fetches the file meta, retrying transient failures for up to `retry_for`.
async fn fetch_meta(setup: &ControlSetup) -> Result<(ControlConn, FileMeta), ClientError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let error = match meta_attempt(setup).await {
            Ok(found) => return Ok(found),
            Err(MetaFailure::Fatal(err)) => return Err(err),
            Err(MetaFailure::Retry(detail)) => detail,
        };
        let elapsed = started.elapsed();
        if elapsed >= setup.retry_for {
            return Err(ClientError::Unreachable {
                server: setup.server.to_string(),
                detail: error,
            });
        }
        tracing::info!(server = %setup.server, %error, retry_in_ms = delay.as_millis() as u64, "server not reachable yet");
        tokio::time::sleep(delay.min(setup.retry_for - elapsed)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

enum MetaFailure {
    Retry(String),
    Fatal(ClientError),
}

async fn meta_attempt(setup: &ControlSetup) -> Result<(ControlConn, FileMeta), MetaFailure> {
    let server = setup.server.to_string();
    let mut conn = ControlConn::connect(&setup.server, setup.bind_ip, CONNECT_TIMEOUT)
        .await
        .map_err(|e| MetaFailure::Retry(format!("connect: {e}")))?;
    let lost = |e: &dyn std::fmt::Display| MetaFailure::Retry(format!("connection lost: {e}"));
    conn.send_hello_cooperating(setup.node_id, None, setup.control_addr)
        .await
        .map_err(|e| lost(&e))?;
    conn.send(&Frame::FileMetaRequest {
        name: setup.name.clone(),
    })
    .await
    .map_err(|e| lost(&e))?;
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let frame = match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => return Err(MetaFailure::Retry("no answer to FileMetaRequest".into())),
            Ok(Err(e)) => return Err(lost(&e)),
            Ok(Ok(frame)) => frame,
        };
        match frame {
            Frame::FileMeta(meta) if meta.name == setup.name => {
                check_meta(&meta).map_err(|detail| {
                    MetaFailure::Fatal(ClientError::Protocol { server, detail })
                })?;
                return Ok((conn, meta));
            }
            Frame::Error { code, message } if code.is_transient() => {
                return Err(MetaFailure::Retry(format!(
                    "server busy ({code:?}): {message}"
                )));
            }
            Frame::Error { code, message } => {
                return Err(MetaFailure::Fatal(server_error(
                    &server,
                    &setup.name,
                    code,
                    message,
                )));
            }
            _ => {}
        }
    }
}

/// Maps a non-transient server error to the client error (and so the exit code).
fn server_error(server: &str, name: &str, code: ErrorCode, message: String) -> ClientError {
    match code {
        ErrorCode::NoSuchFile | ErrorCode::PathRefused => ClientError::UnknownFile {
            server: server.to_owned(),
            name: name.to_owned(),
            reason: message,
        },
        _ => ClientError::Refused {
            server: server.to_owned(),
            reason: format!("{code:?}: {message}"),
        },
    }
}

fn download_error(setup: &ControlSetup, err: DownloadError, last_error: &str) -> ClientError {
    let server = setup.server.to_string();
    match err {
        DownloadError::NoSuchFile(reason) | DownloadError::PathRefused(reason) => {
            ClientError::UnknownFile {
                server,
                name: setup.name.clone(),
                reason,
            }
        }
        DownloadError::DigestMismatch { segment, failures } => ClientError::Integrity {
            name: setup.name.clone(),
            segment,
            attempts: failures,
        },
        DownloadError::Unreachable { attempts } => ClientError::Unreachable {
            server,
            detail: format!("{attempts} attempts, last: {last_error}"),
        },
        DownloadError::FileChanged => ClientError::Protocol {
            server,
            detail: format!("{:?} changed on the server during the download", setup.name),
        },
        DownloadError::Server { code, message } => {
            server_error(&server, &setup.name, code, message)
        }
        DownloadError::Protocol(detail) => ClientError::Protocol { server, detail },
    }
}

/// Turns the live session counters into heartbeat statistics (rate and loss over the last interval).
#[derive(Debug, Default)]
struct StatsSampler {
    session: Option<u32>,
    at: Option<Instant>,
    bytes: u64,
    packets: u64,
    span: u64,
    /// Whether this session has had its first sample.
    sampled: bool,
    current: ReceiverStats,
}

impl StatsSampler {
    /// Statistics of session `expected` (the one the download heartbeats for): zeros until the
    /// decoder thread receives it (the counters of the session before must not be reported for it:
    /// the server's send window trusts them).
    ///
    /// The receive rate counts wire bytes (data header, MAC and the IP/UDP/Ethernet headers of
    /// `family`'s datagrams added to the codec bytes), as the server's pacer does.
    fn sample(
        &mut self,
        now: Instant,
        live: &LiveSession,
        expected: Option<u32>,
        family: IpAddr,
    ) -> ReceiverStats {
        let session = live.session.load(Ordering::Relaxed);
        if !live.active.load(Ordering::Relaxed) || expected != Some(session) {
            return ReceiverStats::default();
        }
        let bytes = live.bytes.load(Ordering::Relaxed);
        let packets = live.packets.load(Ordering::Relaxed);
        let span = live.seq_span.load(Ordering::Relaxed);
        if self.session != Some(session) {
            *self = StatsSampler {
                session: Some(session),
                at: Some(now),
                ..StatsSampler::default()
            };
        }
        if !self.sampled && bytes == 0 {
            // The first window starts with the first packet: a session whose data is late (the
            // server still building its encoder) would otherwise report a receive rate far below
            // what it is sent, and the server cut the rate on it.
            self.at = Some(now);
        }
        let since = self
            .at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let interval = if self.sampled {
            SAMPLE_INTERVAL
        } else {
            FIRST_SAMPLE_INTERVAL
        };
        if since >= interval {
            self.sampled = true;
            let seconds = since.as_secs_f64();
            let wire = ccfd_proto::pacing::wire_bytes(
                bytes.saturating_sub(self.bytes),
                packets.saturating_sub(self.packets),
                ccfd_proto::DATA_OVERHEAD,
                family,
            );
            let rate = (wire * 8) as f64 / seconds;
            let expected = span.saturating_sub(self.span);
            let got = packets.saturating_sub(self.packets).min(expected);
            let loss_ppm = ((expected - got) * 1_000_000)
                .checked_div(expected)
                .unwrap_or(0);
            self.current.receive_rate_bps = rate as u64;
            self.current.loss_ppm = loss_ppm as u32;
            tracing::trace!(
                session,
                rate_bps = rate as u64,
                loss_ppm,
                packets,
                seq_span = span,
                "receive sample"
            );
            self.at = Some(now);
            self.bytes = bytes;
            self.packets = packets;
            self.span = span;
        }
        self.current.received_packets = packets;
        self.current.received_bytes = bytes;
        self.current.dropped_packets = live.dropped.load(Ordering::Relaxed);
        self.current.decoded_rank = live.rank.load(Ordering::Relaxed);
        self.current
    }
}

async fn next_peers_request(coop: &mut Option<CoopHooks>) -> Option<PeersRequest> {
    match coop {
        Some(hooks) => hooks.peer_requests.recv().await,
        None => std::future::pending().await,
    }
}

fn tell_coop(coop: &Option<CoopHooks>, event: CoopEvent) {
    if let Some(hooks) = coop {
        let _ = hooks.events.send(event);
    }
}

async fn recv_from(conn: &mut Option<ControlConn>) -> Result<Frame, ConnError> {
    match conn {
        Some(conn) => conn.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the download state machine until it is done or fails.
async fn drive(
    setup: &ControlSetup,
    conn: ControlConn,
    meta: FileMeta,
    plan: Plan,
    mut events: UnboundedReceiver<DecoderEvent>,
) -> Result<Option<(ControlConn, CoopHooks)>, ClientError> {
    let mut config = DownloadConfig::new(setup.node_id, plan.receive_addr);
    config.backoff_max = Duration::from_secs(5);
    config.heartbeat_interval = HEARTBEAT_INTERVAL;
    config.control_addr = setup.control_addr;
    config.announce_have = setup.control_addr.is_some();
    // A cooperating client lingers connected (see `linger`) and sends Exit afterwards.
    let cooperating = plan.coop.is_some();
    config.exit_when_done = !cooperating;
    let mut coop = plan.coop;
    let mut server_rate = 0;
    let mut download = Download::new(config, meta, plan.completed.iter().copied());
    let mut conn = Some(conn);
    let mut down_since: Option<Instant> = None;
    let mut last_error = String::new();
    let mut sampler = StatsSampler::default();
    // When each segment was last requested (for the per-segment times of the summary).
    let mut requested: HashMap<u32, Instant> = HashMap::new();
    let counters = &setup.counters;
    let live = &setup.live;
    download.start(Instant::now(), true);
    loop {
        while let Some(action) = download.poll_action() {
            let now = Instant::now();
            match action {
                DownloadAction::Connect => {
                    if down_since.is_some_and(|since| now.duration_since(since) >= setup.retry_for)
                    {
                        return Err(ClientError::Unreachable {
                            server: setup.server.to_string(),
                            detail: last_error,
                        });
                    }
                    match ControlConn::connect(&setup.server, setup.bind_ip, CONNECT_TIMEOUT).await
                    {
                        Ok(new_conn) => {
                            tracing::info!(server = %setup.server, "control connection re-established");
                            conn = Some(new_conn);
                            Counters::add(&counters.control_connects, 1);
                            download.handle_connected(Instant::now());
                        }
                        Err(err) => {
                            last_error = format!("connect: {err}");
                            down_since.get_or_insert(now);
                            download.handle_connect_failed(Instant::now());
                        }
                    }
                }
                DownloadAction::Disconnect => {
                    if let Some(old) = conn.take() {
                        old.close().await;
                    }
                    down_since.get_or_insert(now);
                }
                DownloadAction::Send(frame) => {
                    if let Frame::RequestSegment { segment, .. } = &frame {
                        requested.insert(*segment, now);
                    }
                    if let Some(c) = conn.as_mut() {
                        if let Err(err) = c.send(&frame).await {
                            tracing::info!(server = %setup.server, %err, "control connection lost while sending");
                            last_error = format!("send: {err}");
                            conn = None;
                            down_since.get_or_insert(now);
                            download.handle_disconnected(Instant::now());
                        }
                    }
                }
                DownloadAction::StartSegment(session) => {
                    tracing::debug!(
                        segment = session.segment,
                        session = session.session.0,
                        "receiving segment"
                    );
                    // After a digest failure a cooperating client refetches from the server alone.
                    let server_ip = conn.as_ref().map(|c| c.peer_addr().ip());
                    let server_only = coop.is_some()
                        && download.digest_failures(session.segment) > 0
                        && server_ip.is_some();
                    tell_coop(
                        &coop,
                        CoopEvent::Receiving {
                            meta: session.clone(),
                            server_only,
                        },
                    );
                    let command = match server_ip {
                        Some(ip) if server_only => DecoderCommand::StartServerOnly {
                            server: SocketAddr::new(ip, session.data_port),
                            meta: session,
                        },
                        _ => DecoderCommand::Start(session),
                    };
                    let _ = plan.commands.send(command);
                    plan.waker.wake();
                }
                DownloadAction::StopSegment { session, segment } => {
                    let _ = plan
                        .commands
                        .send(DecoderCommand::Stop { session, segment });
                    plan.waker.wake();
                }
                DownloadAction::Done => {
                    plan.progress.update(counters, 0);
                    match (conn.take(), coop.take()) {
                        (Some(c), Some(hooks)) => return Ok(Some((c, hooks))),
                        (Some(mut c), None) => {
                            if cooperating {
                                // Exit was left to the linger, which is not coming.
                                let _ = c.send(&Frame::Exit).await;
                            }
                            c.close().await;
                        }
                        (None, _) => {}
                    }
                    return Ok(None);
                }
                DownloadAction::Failed(err) => {
                    if let Some(mut c) = conn.take() {
                        let _ = c.send(&Frame::Exit).await;
                        c.close().await;
                    }
                    return Err(download_error(setup, err, &last_error));
                }
            }
        }
        let now = Instant::now();
        let wake_at = download
            .poll_timeout()
            .map_or(now + TICK, |at| at.min(now + TICK));
        tokio::select! {
            event = events.recv() => {
                let now = Instant::now();
                match event {
                    Some(DecoderEvent::Decoded { segment, from_server, from_peers }) => {
                        let took = requested
                            .remove(&segment)
                            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                        counters.record_segment(segment, took, from_server, from_peers);
                        tell_coop(&coop, CoopEvent::Decoded { segment });
                        download.segment_decoded(now, segment)
                    }
                    Some(DecoderEvent::Verified { segment, ok }) => {
                        tell_coop(&coop, CoopEvent::Verified { segment, ok });
                        download.segment_verified(now, segment, ok)
                    }
                    Some(DecoderEvent::Failed(err)) => return Err(err),
                    None => return Err(ClientError::Internal("decoder thread ended".into())),
                }
            }
            frame = recv_from(&mut conn) => {
                let now = Instant::now();
                match frame {
                    Ok(frame) => {
                        down_since = None;
                        if let Frame::PeerList { name, segment, peers } = &frame {
                            let (name, segment, peers) = (name.clone(), *segment, peers.clone());
                            tell_coop(&coop, CoopEvent::PeerList { name, segment, peers });
                        }
                        download.handle_frame(now, frame);
                        if download.server_rate_bps() != server_rate {
                            server_rate = download.server_rate_bps();
                            tell_coop(&coop, CoopEvent::ServerRate { bps: server_rate });
                        }
                    }
                    Err(err) => {
                        tracing::info!(server = %setup.server, %err, "control connection lost");
                        last_error = err.to_string();
                        conn = None;
                        down_since.get_or_insert(now);
                        download.handle_disconnected(now);
                    }
                }
            }
            request = next_peers_request(&mut coop) => {
                match (request, conn.as_mut()) {
                    (Some(PeersRequest { name, segment }), Some(c)) => {
                        // A lost connection shows on the next receive; the coop asks again later.
                        let _ = c.send(&Frame::Peers(PeersQuery::Segment { name, segment })).await;
                    }
                    (Some(_), None) => {}
                    // The cooperation control ended: no more queries.
                    (None, _) => coop = None,
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at)) => {}
        }
        let now = Instant::now();
        let expected = download.current_session().map(|m| m.session.0);
        download.update_stats(sampler.sample(now, live, expected, plan.receive_addr.ip()));
        if download.poll_timeout().is_some_and(|at| at <= now) {
            download.handle_timeout(now);
        }
        let in_flight = if live.active.load(Ordering::Relaxed) {
            u64::from(live.rank.load(Ordering::Relaxed))
                * u64::from(live.symbol_size.load(Ordering::Relaxed))
        } else {
            0
        };
        plan.progress.update(counters, in_flight);
    }
}

/// Fetches the server's file list (the `list` command), retrying for up to `retry_for`.
pub fn list_files(
    server: &ServerAddr,
    bind_ip: Option<IpAddr>,
    retry_for: Duration,
    node_id: NodeId,
) -> Result<(Vec<FileEntry>, bool), ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Internal(format!("tokio runtime: {e}")))?;
    runtime.block_on(async {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let detail = match list_attempt(server, bind_ip, node_id).await {
                Ok(Ok(list)) => return Ok(list),
                Ok(Err(err)) => return Err(err),
                Err(detail) => detail,
            };
            let elapsed = started.elapsed();
            if elapsed >= retry_for {
                return Err(ClientError::Unreachable {
                    server: server.to_string(),
                    detail,
                });
            }
            tokio::time::sleep(delay.min(retry_for - elapsed)).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    })
}

/// One attempt: `Err(detail)` to retry, `Ok(Err(_))` for a final server answer.
async fn list_attempt(
    server: &ServerAddr,
    bind_ip: Option<IpAddr>,
    node_id: NodeId,
) -> Result<Result<(Vec<FileEntry>, bool), ClientError>, String> {
    let mut conn = ControlConn::connect(server, bind_ip, CONNECT_TIMEOUT)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    conn.send_hello(node_id, None)
        .await
        .map_err(|e| format!("send: {e}"))?;
    conn.send(&Frame::ListFiles)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => return Err("no answer to ListFiles".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(Frame::FileList { entries, truncated })) => {
                let _ = conn.send(&Frame::Exit).await;
                conn.close().await;
                return Ok(Ok((entries, truncated)));
            }
            Ok(Ok(Frame::Error { code, message })) if code.is_transient() => {
                return Err(format!("server busy ({code:?}): {message}"));
            }
            Ok(Ok(Frame::Error { code, message })) => {
                return Ok(Err(ClientError::Refused {
                    server: server.to_string(),
                    reason: format!("{code:?}: {message}"),
                }));
            }
            Ok(Ok(_)) => {}
        }
    }
}
