//! `Ring`: one thread's data plane, dispatching to the io_uring or the syscall backend.

use std::net::SocketAddr;
use std::time::Duration;

use crate::addr::{parse_sockaddr, RawAddr};
use crate::cmsg::parse_recv_control;
use crate::counters::{Counters, LogKind, LogLimiter};
use crate::send::{max_datagrams, SendBuffer, SendPool, Transmit, SEND_BUFFER_SIZE};
use crate::sockets::{SocketEntry, SocketTable};
use crate::syscall::SyscallBackend;
use crate::uring::UringBackend;
use crate::{
    BackendChoice, BackendKind, BoundSocket, RingConfig, RingError, SendError, SocketConfig,
    SocketId, Waker,
};

/// One received datagram, borrowed from a receive buffer for the duration of the callback.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The socket it arrived on.
    pub socket: SocketId,
    /// Its source address.
    pub source: SocketAddr,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What one [`Ring::process`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Datagrams handed to the callback.
    pub datagrams: usize,
    /// A [`Waker`] fired since the last call.
    pub woken: bool,
    /// More completions are ready right now (the datagram budget stopped the call).
    pub more: bool,
}

/// State shared by both backends.
pub(crate) struct Core {
    pub(crate) sockets: SocketTable,
    pub(crate) pool: SendPool,
    pub(crate) counters: Counters,
    pub(crate) log: LogLimiter,
    pub(crate) waker: Waker,
}

pub(crate) enum Backend {
    Uring(Box<UringBackend>),
    Syscall(Box<SyscallBackend>),
}

/// A per-thread UDP data plane: sockets, a send-buffer pool, receive buffers and a backend.
///
/// Not `Send`: create it on the thread that uses it (io_uring's SINGLE_ISSUER and DEFER_TASKRUN
/// tie the ring to its creating thread). The loop of a shard:
///
/// ```no_run
/// # use ccfd_ring::*;
/// # use std::time::Duration;
/// # fn main() -> Result<(), RingError> {
/// let mut ring = Ring::new(&RingConfig::default())?;
/// let sock = ring.bind(&SocketConfig::new("127.0.0.2:0".parse().unwrap()))?;
/// let waker = ring.waker(); // hand to the control plane
/// loop {
///     ring.wait(Some(Duration::from_millis(5)))?; // timer wheel's next deadline
///     let done = ring.process(4096, |d| { let _ = (d.socket, d.source, d.payload); })?;
///     if done.woken { /* drain the control queue */ }
///     if let Ok(mut buf) = ring.send_buffer(sock, "127.0.0.3:9000".parse().unwrap(), 1280) {
///         while !buf.is_full() { buf.push_with(|b| { b.fill(7); b.len() })?; }
///         buf.queue();
///     }
/// #   break;
/// }
/// # Ok(()) }
/// ```
pub struct Ring {
    // Field order matters: the backend (io_uring fd, buffer ring) is dropped before the core's
    // sockets and send buffers. Ring::drop drains in-flight operations first anyway.
    backend: Backend,
    pub(crate) core: Core,
}

impl Ring {
    /// Creates a ring with the backend chosen by `config.backend` (and [`crate::BACKEND_ENV`]
    /// for `Auto`).
    pub fn new(config: &RingConfig) -> Result<Self, RingError> {
        config.validate()?;
        let choice = config.backend.resolve()?;
        let waker = Waker::new().map_err(|e| RingError::io("eventfd", e))?;
        let pool = SendPool::new(config.send_buffers)
            .map_err(|e| RingError::io("mmap send buffers", e))?;
        let backend = match choice {
            BackendChoice::Syscall => {
                Backend::Syscall(Box::new(SyscallBackend::new(config, &waker)?))
            }
            BackendChoice::Uring => match UringBackend::new(config, &waker) {
                Ok(u) => Backend::Uring(Box::new(u)),
                Err(reason) => return Err(RingError::UringUnavailable { reason }),
            },
            BackendChoice::Auto => match UringBackend::new(config, &waker) {
                Ok(u) => Backend::Uring(Box::new(u)),
                Err(reason) => {
                    tracing::info!(%reason, "io_uring unavailable, using the syscall backend");
                    Backend::Syscall(Box::new(SyscallBackend::new(config, &waker)?))
                }
            },
        };
        Ok(Self {
            backend,
            core: Core {
                sockets: SocketTable::default(),
                pool,
                counters: Counters::default(),
                log: LogLimiter::default(),
                waker,
            },
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        match self.backend {
            Backend::Uring(_) => BackendKind::Uring,
            Backend::Syscall(_) => BackendKind::Syscall,
        }
    }

    /// Binds a socket per `config` and registers it (receiving starts at the next `wait`).
    pub fn bind(&mut self, config: &SocketConfig) -> Result<SocketId, RingError> {
        let bound = config.bind()?;
        self.register(bound)
    }

    /// Registers a socket bound elsewhere (e.g. on the control thread).
    pub fn register(&mut self, socket: BoundSocket) -> Result<SocketId, RingError> {
        let id = self.core.sockets.insert(socket);
        match &mut self.backend {
            Backend::Uring(u) => u.on_register(&mut self.core, id),
            Backend::Syscall(s) => s.on_register(),
        }
        Ok(id)
    }

    /// Stops receiving on the socket and closes it once its in-flight operations are done.
    /// Queued sends from it are still sent (syscall backend: now).
    pub fn close(&mut self, socket: SocketId) -> Result<(), RingError> {
        if self.core.sockets.get(socket).is_none() {
            return Err(RingError::UnknownSocket(socket));
        }
        match &mut self.backend {
            Backend::Uring(u) => u.close(&mut self.core, socket),
            Backend::Syscall(s) => s.close(&mut self.core, socket),
        }
        Ok(())
    }

    /// The socket's local address.
    pub fn local_addr(&self, socket: SocketId) -> Result<SocketAddr, RingError> {
        self.core
            .sockets
            .get(socket)
            .map(|e| e.local)
            .ok_or(RingError::UnknownSocket(socket))
    }

    /// Whether multi-datagram sends from the socket still use GSO.
    pub fn gso_enabled(&self, socket: SocketId) -> Result<bool, RingError> {
        self.core
            .sockets
            .get(socket)
            .map(|e| e.gso)
            .ok_or(RingError::UnknownSocket(socket))
    }

    /// Send buffers not in flight or being filled.
    pub fn free_send_buffers(&self) -> usize {
        self.core.pool.free_count()
    }

    /// A free send buffer for datagrams of `segment_size` bytes from `socket` to `destination`,
    /// to fill in place (no allocation, no copy). `PoolExhausted` when every buffer is in flight:
    /// `process` completions and retry.
    pub fn send_buffer(
        &mut self,
        socket: SocketId,
        destination: SocketAddr,
        segment_size: usize,
    ) -> Result<SendBuffer<'_>, SendError> {
        let max = max_datagrams(segment_size);
        if max == 0 {
            return Err(SendError::BadSegmentSize {
                segment_size,
                max: crate::MAX_SEND_PAYLOAD,
            });
        }
        let slot = self.take_slot(socket, &destination)?;
        Ok(SendBuffer {
            ring: self,
            slot,
            len: 0,
            segment_size,
            max_len: max * segment_size,
            closed: false,
            done: false,
        })
    }

    /// Copies a transmit into a send buffer and queues it.
    pub fn queue_transmit(&mut self, transmit: &Transmit<'_>) -> Result<(), SendError> {
        let len = transmit.contents.len();
        let seg = transmit.segment_size;
        if seg == 0 {
            return Err(SendError::BadSegmentSize {
                segment_size: seg,
                max: crate::MAX_SEND_PAYLOAD,
            });
        }
        if len > SEND_BUFFER_SIZE || len.div_ceil(seg) > crate::MAX_SEGMENTS {
            return Err(SendError::TooLarge {
                len,
                segment_size: seg,
                max: SEND_BUFFER_SIZE,
            });
        }
        if len == 0 {
            return Ok(());
        }
        let slot = self.take_slot(transmit.socket, &transmit.destination)?;
        self.core.pool.bytes_mut(slot)[..len].copy_from_slice(transmit.contents);
        let s = &mut self.core.pool.slots[slot as usize];
        s.len = len;
        s.segment_size = seg.min(len);
        self.enqueue(slot);
        Ok(())
    }

    fn take_slot(&mut self, socket: SocketId, destination: &SocketAddr) -> Result<u32, SendError> {
        let entry = self
            .core
            .sockets
            .get(socket)
            .ok_or(SendError::UnknownSocket(socket))?;
        if entry.local.is_ipv4() != destination.is_ipv4() {
            return Err(SendError::AddressFamily);
        }
        let slot = match self.core.pool.take() {
            Some(s) => s,
            None => {
                // The syscall backend can free buffers by sending what is queued.
                if let Backend::Syscall(s) = &mut self.backend {
                    s.flush(&mut self.core);
                }
                match self.core.pool.take() {
                    Some(s) => s,
                    None => {
                        self.core.counters.send_pool_exhausted += 1;
                        return Err(SendError::PoolExhausted);
                    }
                }
            }
        };
        let s = &mut self.core.pool.slots[slot as usize];
        s.socket = socket;
        s.dest = RawAddr::from_std(destination);
        Ok(slot)
    }

    /// Hands a filled slot to the backend.
    pub(crate) fn enqueue(&mut self, slot: u32) {
        match &mut self.backend {
            Backend::Uring(u) => u.enqueue(&mut self.core, slot),
            Backend::Syscall(s) => s.enqueue(slot),
        }
    }

    /// Issues everything queued (sends, receive re-arms) without waiting.
    pub fn submit(&mut self) -> Result<(), RingError> {
        match &mut self.backend {
            Backend::Uring(u) => u.submit(&mut self.core),
            Backend::Syscall(s) => {
                s.flush(&mut self.core);
                Ok(())
            }
        }
    }

    /// Issues everything queued, then blocks until a completion or datagram is ready, a
    /// [`Waker`] fires, or `timeout` passes (`None`: no timeout). Returns at once when work is
    /// already pending. Interruptions and timeouts are not errors.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<(), RingError> {
        match &mut self.backend {
            Backend::Uring(u) => u.wait(&mut self.core, timeout),
            Backend::Syscall(s) => s.wait(&mut self.core, timeout),
        }
    }

    /// Handles ready completions: finished sends free their buffers (or are resent without GSO),
    /// received datagrams go to `on_datagram` (GRO buffers split into the original datagrams),
    /// receives the kernel ended are re-armed. Stops after about `max_datagrams` datagrams (a
    /// GRO buffer is always finished) so the caller can send in between.
    pub fn process<F: FnMut(Datagram<'_>)>(
        &mut self,
        max_datagrams: usize,
        mut on_datagram: F,
    ) -> Result<Processed, RingError> {
        match &mut self.backend {
            Backend::Uring(u) => u.process(&mut self.core, max_datagrams, &mut on_datagram),
            Backend::Syscall(s) => s.process(&mut self.core, max_datagrams, &mut on_datagram),
        }
    }

    /// A handle other threads use to wake this ring.
    pub fn waker(&self) -> Waker {
        self.core.waker.clone()
    }

    /// Counters since creation.
    pub fn counters(&self) -> &Counters {
        &self.core.counters
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        match &mut self.backend {
            Backend::Uring(u) => {
                if !u.shutdown(&mut self.core) {
                    // The kernel may still touch send buffers: never unmap them.
                    self.core.pool.leak();
                }
            }
            Backend::Syscall(s) => s.flush(&mut self.core),
        }
    }
}

/// Logs a send error unless its class was logged in the last minute.
pub(crate) fn log_send_error(core: &mut Core, kind: LogKind, errno: i32, socket: SocketId) {
    if core.log.should_log(kind) {
        tracing::warn!(
            error = %std::io::Error::from_raw_os_error(errno),
            socket = socket.index(),
            counters = ?core.counters.send_errors,
            "udp send failed (datagrams dropped; logged at most once a minute per kind)"
        );
    }
}

/// Parses one received message and hands its datagram(s) to the callback; returns how many.
#[allow(clippy::too_many_arguments)]
pub(crate) fn deliver<F: FnMut(Datagram<'_>)>(
    counters: &mut Counters,
    entry: &mut SocketEntry,
    name: &[u8],
    control: &[u8],
    payload: &[u8],
    truncated: bool,
    on_datagram: &mut F,
) -> usize {
    counters.recv_ops += 1;
    let control = parse_recv_control(control);
    if let Some(drops) = control.queue_drops {
        counters.kernel_queue_drops += u64::from(drops.wrapping_sub(entry.queue_drops_seen));
        entry.queue_drops_seen = drops;
    }
    if truncated {
        counters.recv_truncated += 1;
        return 0;
    }
    let Some(source) = parse_sockaddr(name) else {
        counters.recv_malformed += 1;
        return 0;
    };
    let socket = entry.id;
    let mut n = 0;
    if payload.is_empty() {
        on_datagram(Datagram {
            socket,
            source,
            payload,
        });
        n = 1;
    } else {
        let stride = control.gro_segment.unwrap_or(payload.len()).max(1);
        for chunk in payload.chunks(stride) {
            on_datagram(Datagram {
                socket,
                source,
                payload: chunk,
            });
            n += 1;
        }
    }
    counters.received_datagrams += n as u64;
    counters.received_bytes += payload.len() as u64;
    n
}
