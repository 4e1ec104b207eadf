//! Starting and stopping a whole server: catalog, shards, control plane.
//!
//! [`Server::start`] returns once the control socket is bound and every shard runs (the moment to send
//! `READY=1`); [`Server::shutdown`] stops the control plane, then the shards, and joins every thread.
//! Meanwhile a background thread hashes every file under the root ([`Catalog::prehash`]), so clients
//! rarely wait for digests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ccfd_proto::{SessionKey, SessionTable, TableConfig};

use crate::catalog::{Catalog, CatalogError};
use crate::config::Settings;
use crate::control::{self, ControlSetup, ControlStats};
use crate::notify::Watchdog;
use crate::pacing::EgressLimiter;
use crate::shard::{Shard, ShardError, ShardSettings, ShardStats};

/// Percent of `--max-rate` handed out to receivers on top of it (the egress limiter enforces the cap
/// on the total).
pub const EGRESS_SHARE_HEADROOM_PERCENT: u32 = 25;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The root cannot be served.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The control socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A shard did not start.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// The OS random generator failed.
    #[error("getrandom: {0}")]
    Random(String),
    /// The control thread could not start.
    #[error("control thread: {0}")]
    Thread(std::io::Error),
}

/// Totals over the shards and the control plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Data packets sent.
    pub packets: u64,
    /// Of those, source symbols handed out from the sessions' systematic pools.
    pub pooled: u64,
    /// Data bytes sent (UDP payload).
    pub bytes: u64,
    /// GSO batches.
    pub batches: u64,
    /// Sessions started by shards.
    pub sessions_started: u64,
    /// Sessions that failed to start.
    pub session_errors: u64,
    /// Live sessions.
    pub live_sessions: u64,
    /// Live receivers.
    pub live_receivers: u64,
    /// Datagrams whose send failed.
    pub send_errors: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed for a malformed frame.
    pub malformed: u64,
}

/// A running server.
pub struct Server {
    control_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    control_stop: Arc<tokio::sync::Notify>,
    control: Option<JoinHandle<std::io::Result<()>>>,
    prehash: Option<JoinHandle<()>>,
    shards: Vec<Shard>,
    shard_stats: Vec<Arc<ShardStats>>,
    control_stats: Arc<ControlStats>,
    watchdog: Arc<Watchdog>,
}

impl Server {
    /// Opens the catalog, starts the shards, binds the control socket and starts the control plane.
    pub fn start(settings: &Settings) -> Result<Server, ServerError> {
        Self::start_with_watchdog(settings, None)
    }

    /// Like [`Server::start`] with the systemd watchdog from the environment (`WATCHDOG_USEC`).
    pub fn start_under_systemd(settings: &Settings) -> Result<Server, ServerError> {
        let participants = settings.shards + 1;
        Self::start_with_watchdog(settings, Some(Arc::new(Watchdog::from_env(participants))))
    }

    fn start_with_watchdog(
        settings: &Settings,
        watchdog: Option<Arc<Watchdog>>,
    ) -> Result<Server, ServerError> {
        let catalog = Arc::new(Catalog::open(&settings.root, settings.coding.clone())?);
        let watchdog =
            watchdog.unwrap_or_else(|| Arc::new(Watchdog::new(None, settings.shards + 1, false)));
        let stop = Arc::new(AtomicBool::new(false));
        let egress = settings.max_rate.map(|rate| {
            Arc::new(EgressLimiter::new(
                rate.bits_per_sec(),
                settings.coding.symbol_size as usize + 64,
            ))
        });
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut shards = Vec::with_capacity(settings.shards);
        for index in 0..settings.shards {
            let shard = Shard::spawn(ShardSettings {
                index,
                core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
                egress: egress.clone(),
                watchdog: Arc::clone(&watchdog),
                shutdown: Arc::clone(&stop),
            });
            match shard {
                Ok(shard) => shards.push(shard),
                Err(error) => {
                    stop.store(true, Ordering::Release);
                    for shard in shards {
                        shard.join();
                    }
                    return Err(error.into());
                }
            }
        }
        let stop_shards = |shards: Vec<Shard>| {
            stop.store(true, Ordering::Release);
            for shard in shards {
                shard.join();
            }
        };
        let listener = match std::net::TcpListener::bind(settings.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(listener) => listener,
            Err(source) => {
                stop_shards(shards);
                return Err(ServerError::Listen {
                    addr: settings.listen,
                    source,
                });
            }
        };
        let control_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: settings.listen,
                source,
            })?;
        let mut secret = [0u8; 32];
        if let Err(error) = getrandom::fill(&mut secret) {
            stop_shards(shards);
            return Err(ServerError::Random(error.to_string()));
        }
        let limits = &settings.limits;
        let pacing = &settings.pacing;
        let table = SessionTable::new(TableConfig {
            udp_base: settings.udp_base,
            session_ids: limits.max_sessions,
            max_sessions: limits.max_sessions as usize,
            max_clients: limits.max_clients as usize,
            max_sessions_per_client: limits.max_sessions_per_client as usize,
            session_idle_timeout: limits.session_idle_timeout,
            client_timeout: limits.client_heartbeat_timeout,
            max_rate_bps: settings.max_rate.map(|r| r.bits_per_sec()),
            // The shards' egress limiter holds the total at the cap; the receivers' shares may add
            // up to more, so that one receiver's pause is another's gain.
            cap_headroom_percent: EGRESS_SHARE_HEADROOM_PERCENT,
            initial_rate_bps: pacing.initial_receiver_rate.bits_per_sec(),
            min_rate_bps: pacing.min_receiver_rate.bits_per_sec(),
            max_receiver_rate_bps: pacing
                .max_receiver_rate
                .map_or(TableConfig::default().max_receiver_rate_bps, |r| {
                    r.bits_per_sec()
                }),
            loss_high_ppm: (pacing.loss_backoff_threshold * 1e6) as u32,
            loss_low_ppm: (pacing.loss_increase_threshold * 1e6) as u32,
            key_secret: SessionKey(secret),
            ..TableConfig::default()
        });
        let control_stop = Arc::new(tokio::sync::Notify::new());
        let control_stats = Arc::new(ControlStats::default());
        let prehash_catalog = Arc::clone(&catalog);
        let setup = ControlSetup {
            listener,
            table,
            catalog,
            coding: settings.coding.clone(),
            shards: shards.iter().map(Shard::sender).collect(),
            listen_ip: settings.listen.ip(),
            udp_base: settings.udp_base,
            watchdog: Arc::clone(&watchdog),
            watchdog_index: settings.shards,
            stats: Arc::clone(&control_stats),
            shutdown: Arc::clone(&control_stop),
            shard_stats: shards.iter().map(|s| Arc::clone(s.stats())).collect(),
        };
        let control = std::thread::Builder::new()
            .name("ccfd-control".into())
            .spawn(move || {
                let result = control::run(setup);
                if let Err(error) = &result {
                    tracing::error!(%error, "control plane failed");
                }
                result
            });
        let control = match control {
            Ok(handle) => handle,
            Err(error) => {
                stop_shards(shards);
                return Err(ServerError::Thread(error));
            }
        };
        let prehash = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ccfd-prehash".into())
                .spawn(move || {
                    prehash_catalog.prehash(&stop);
                })
                .map_err(|error| tracing::warn!(%error, "no background hashing"))
                .ok()
        };
        let shard_stats = shards.iter().map(|s| Arc::clone(s.stats())).collect();
        tracing::info!(control = %control_addr, shards = settings.shards, udp_base = settings.udp_base,
            max_rate = ?settings.max_rate.map(|r| r.to_string()), "server running");
        Ok(Server {
            control_addr,
            stop,
            control_stop,
            control: Some(control),
            prehash,
            shards,
            shard_stats,
            control_stats,
            watchdog,
        })
    }

    /// The bound control address (useful with port 0).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The watchdog the loops feed.
    pub fn watchdog(&self) -> &Arc<Watchdog> {
        &self.watchdog
    }

    /// Current totals.
    pub fn stats(&self) -> ServerStats {
        let mut total = ServerStats::default();
        for s in &self.shard_stats {
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            total.packets += get(&s.packets);
            total.pooled += get(&s.pooled);
            total.bytes += get(&s.bytes);
            total.batches += get(&s.batches);
            total.sessions_started += get(&s.sessions_started);
            total.session_errors += get(&s.session_errors);
            total.live_sessions += get(&s.live_sessions);
            total.live_receivers += get(&s.live_receivers);
            total.send_errors += get(&s.send_errors);
        }
        total.connections = self.control_stats.connections.load(Ordering::Relaxed);
        total.malformed = self.control_stats.malformed.load(Ordering::Relaxed);
        total
    }

    /// Stops accepting, closes connections, stops the shards (closing their sockets) and joins every
    /// thread.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.control_stop.notify_one();
        if let Some(control) = self.control.take() {
            if control.join().is_err() {
                tracing::error!("control thread panicked");
            }
        }
        self.stop.store(true, Ordering::Release);
        for shard in self.shards.drain(..) {
            shard.join();
        }
        if let Some(prehash) = self.prehash.take() {
            let _ = prehash.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_all();
    }
}
