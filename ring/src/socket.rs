//! UDP socket setup: bind, a large receive buffer, GRO, GSO probe, nonblocking mode.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::cmsg::{SOL_UDP, SO_RXQ_OVFL, UDP_GRO, UDP_SEGMENT};
use crate::RingError;

/// `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN; ignores `net.core.rmem_max`).
const SO_RCVBUFFORCE: i32 = 33;
/// `SO_SNDBUFFORCE` (needs CAP_NET_ADMIN; ignores `net.core.wmem_max`).
const SO_SNDBUFFORCE: i32 = 32;

/// Whether a socket got less send buffer than asked for (warned once per process).
static SEND_BUFFER_WARNED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Default receive buffer asked for: 16 MiB (about 7000 queued 1280-byte datagrams).
pub const DEFAULT_RECV_BUFFER: usize = 16 << 20;

/// How to set up one UDP socket of the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    /// Local address and port (port 0 picks a free one).
    pub addr: SocketAddr,
    /// Receive buffer to ask for, in bytes (`SO_RCVBUFFORCE` when privileged, else `SO_RCVBUF`
    /// capped by `net.core.rmem_max`; a warning is logged when the kernel gives less).
    pub recv_buffer: usize,
    /// Send buffer, or `None` for the system default (which keeps kernel backpressure behind a
    /// shaping qdisc); like the receive buffer, `SO_SNDBUFFORCE` when privileged, else
    /// `SO_SNDBUF` capped by `net.core.wmem_max` (a warning, once, when the kernel gives less).
    pub send_buffer: Option<usize>,
    /// Enable UDP GRO (coalesced bursts, split again by the ring).
    pub gro: bool,
    /// Use UDP GSO for multi-datagram sends when the kernel supports it.
    pub gso: bool,
    /// `SO_REUSEPORT` (several shards on one port).
    pub reuse_port: bool,
    /// Whether the ring receives on this socket (a send-only socket needs no receive).
    pub receive: bool,
}

impl SocketConfig {
    /// Defaults for `addr`: 16 MiB receive buffer, GRO and GSO on, receiving, no reuse-port.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            recv_buffer: DEFAULT_RECV_BUFFER,
            send_buffer: None,
            gro: true,
            gso: true,
            reuse_port: false,
            receive: true,
        }
    }

    /// Sets the receive buffer size to ask for.
    pub fn recv_buffer(mut self, bytes: usize) -> Self {
        self.recv_buffer = bytes;
        self
    }

    /// Sets the send buffer size (`None`: system default).
    pub fn send_buffer(mut self, bytes: Option<usize>) -> Self {
        self.send_buffer = bytes;
        self
    }

    /// Enables or disables UDP GRO on receive.
    pub fn gro(mut self, on: bool) -> Self {
        self.gro = on;
        self
    }

    /// Enables or disables UDP GSO on send.
    pub fn gso(mut self, on: bool) -> Self {
        self.gso = on;
        self
    }

    /// Enables or disables `SO_REUSEPORT`.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Whether the ring should receive on the socket.
    pub fn receive(mut self, on: bool) -> Self {
        self.receive = on;
        self
    }

    /// Creates, configures and binds the socket (nonblocking). The result is `Send`: bind on a
    /// control thread, then [`Ring::register`](crate::Ring::register) it on the shard.
    pub fn bind(&self) -> Result<BoundSocket, RingError> {
        let op = |what: &str| format!("{what} on {}", self.addr);
        let domain = Domain::for_address(self.addr);
        let socket = Socket::new(
            domain,
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )
        .map_err(|e| RingError::io(op("socket"), e))?;
        if self.reuse_port {
            socket
                .set_reuse_port(true)
                .map_err(|e| RingError::io(op("SO_REUSEPORT"), e))?;
        }
        let recv_buffer = set_recv_buffer(&socket, self.recv_buffer, self.addr);
        let send_buffer = match self.send_buffer {
            Some(bytes) => Some(
                set_send_buffer(&socket, bytes, self.addr)
                    .map_err(|e| RingError::io(op("SO_SNDBUF"), e))?,
            ),
            None => None,
        };
        socket
            .bind(&self.addr.into())
            .map_err(|e| RingError::io(op("bind"), e))?;
        let fd = socket.as_raw_fd();
        // The cumulative drop counter costs one small cmsg per receive: worth it for loss
        // accounting. Failure only loses the counter.
        let _ = set_int(fd, libc::SOL_SOCKET, SO_RXQ_OVFL, 1);
        let gro = self.gro && set_int(fd, SOL_UDP, UDP_GRO, 1).is_ok();
        // Probe GSO: setting the per-socket default segment size to 0 (= only via cmsg) succeeds
        // exactly on kernels that implement UDP_SEGMENT.
        let gso = self.gso && set_int(fd, SOL_UDP, UDP_SEGMENT, 0).is_ok();
        let socket: UdpSocket = socket.into();
        let local = socket
            .local_addr()
            .map_err(|e| RingError::io(op("getsockname"), e))?;
        tracing::debug!(%local, gro, gso, recv_buffer, ?send_buffer, "udp socket bound");
        Ok(BoundSocket {
            socket,
            local,
            gro,
            gso,
            receive: self.receive,
            recv_buffer,
            send_buffer,
        })
    }
}

/// A bound, configured, nonblocking UDP socket, ready to be registered with a ring.
#[derive(Debug)]
pub struct BoundSocket {
    pub(crate) socket: UdpSocket,
    pub(crate) local: SocketAddr,
    pub(crate) gro: bool,
    pub(crate) gso: bool,
    pub(crate) receive: bool,
    pub(crate) recv_buffer: usize,
    pub(crate) send_buffer: Option<usize>,
}

impl BoundSocket {
    /// The bound local address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether UDP GRO is on.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Whether UDP GSO will be used for multi-datagram sends.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// The receive buffer the kernel reports (it doubles the value asked for).
    pub fn recv_buffer(&self) -> usize {
        self.recv_buffer
    }

    /// The send buffer the kernel reports (it doubles the value asked for), `None` when the
    /// system default was kept.
    pub fn send_buffer(&self) -> Option<usize> {
        self.send_buffer
    }

    /// The plain std socket (nonblocking), for code that does not use a ring (e.g. baselines).
    pub fn into_std(self) -> UdpSocket {
        self.socket
    }
}

impl std::os::fd::AsRawFd for BoundSocket {
    /// The descriptor, e.g. to set further socket options before registering.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// Asks for `want` bytes of receive buffer; returns what the kernel reports.
fn set_recv_buffer(socket: &Socket, want: usize, addr: SocketAddr) -> usize {
    let _ = ask_buffer(socket, SO_RCVBUFFORCE, want, Socket::set_recv_buffer_size);
    let got = socket.recv_buffer_size().unwrap_or(0);
    // The kernel doubles the request for bookkeeping overhead; anything below the request
    // itself means the rmem_max cap applied.
    if got < want {
        tracing::warn!(
            %addr,
            requested = want,
            effective = got,
            "receive buffer smaller than requested: raise net.core.rmem_max \
             (sysctl -w net.core.rmem_max=33554432) or grant CAP_NET_ADMIN"
        );
    }
    got
}

/// Asks for `want` bytes of send buffer (`SO_SNDBUFFORCE`, else `SO_SNDBUF`); returns what the
/// kernel reports, and warns once per process when that is less than asked for.
fn set_send_buffer(socket: &Socket, want: usize, addr: SocketAddr) -> io::Result<usize> {
    ask_buffer(socket, SO_SNDBUFFORCE, want, Socket::set_send_buffer_size)?;
    let got = socket.send_buffer_size().unwrap_or(0);
    // As for the receive buffer: below the request itself means the wmem_max cap applied.
    if got < want && !SEND_BUFFER_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            %addr,
            requested = want,
            effective = got,
            "send buffer smaller than requested: raise net.core.wmem_max \
             (sysctl -w net.core.wmem_max=8388608) or grant CAP_NET_ADMIN"
        );
    }
    Ok(got)
}

/// Asks for a `want`-byte socket buffer with the privileged `forced` option (`SO_RCVBUFFORCE`,
/// `SO_SNDBUFFORCE`: beyond the sysctl cap), falling back to the capped `plain` setter.
fn ask_buffer(
    socket: &Socket,
    forced: i32,
    want: usize,
    plain: fn(&Socket, usize) -> io::Result<()>,
) -> io::Result<()> {
    let want_int = i32::try_from(want).unwrap_or(i32::MAX);
    match set_int(socket.as_raw_fd(), libc::SOL_SOCKET, forced, want_int) {
        Ok(()) => Ok(()),
        Err(_) => plain(socket, want),
    }
}

/// `setsockopt` with an int value.
pub(crate) fn set_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_buffer_got_is_reported() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let default = SocketConfig::new(addr).bind().unwrap();
        assert_eq!(default.send_buffer(), None);
        // 64 KiB is under any stock net.core.wmem_max: granted (the kernel reports it doubled).
        let sized = SocketConfig::new(addr)
            .send_buffer(Some(64 << 10))
            .bind()
            .unwrap();
        let got = sized.send_buffer().unwrap();
        assert!(got >= 64 << 10, "got {got}");
        let kernel = socket2::SockRef::from(&sized.socket);
        assert_eq!(kernel.send_buffer_size().unwrap(), got);
    }
}
