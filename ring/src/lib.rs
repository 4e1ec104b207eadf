//! `ccfd-ring`: the UDP data plane of ccfd, on io_uring with a syscall fallback.
//!
//! Contract:
//! - One [`Ring`] per thread (not `Send`; create it on its thread). It owns its sockets, a pool
//!   of 64 KiB send buffers and its receive buffers; nothing is allocated per packet.
//! - Sockets: [`SocketConfig`] (bind address, 16 MiB receive buffer via `SO_RCVBUFFORCE` or
//!   `SO_RCVBUF` with a warning naming `net.core.rmem_max`, UDP GRO, GSO probe, nonblocking),
//!   registered with [`Ring::bind`] or [`Ring::register`] → [`SocketId`]; many per ring.
//! - Send: [`Ring::send_buffer`] gives a buffer to fill in place with up to 64 datagrams of one
//!   size for one destination, then [`SendBuffer::queue`]; or [`Ring::queue_transmit`] copies a
//!   [`Transmit`]. One `sendmsg`/`SendMsg` with a `UDP_SEGMENT` cmsg carries the whole buffer. On
//!   the first `EIO`/`EINVAL` GSO is switched off for that socket for good and the buffer is
//!   resent datagram by datagram. Other send errors are counted ([`Counters::send_errors`]),
//!   logged at most once a minute, and never fatal.
//! - Order of calls in a loop: queue sends → [`Ring::wait`] (submits, then blocks until work,
//!   a [`Waker`] or the timeout) → [`Ring::process`] (reaps sends, hands datagrams to a callback
//!   with their socket and source, GRO buffers split by segment size, at most about
//!   `max_datagrams` per call so sending is not starved).
//! - Backends: io_uring (SINGLE_ISSUER|DEFER_TASKRUN when available, `SendMsg`, multishot
//!   `RecvMsg` over a registered buffer ring recycled with one tail store per drain, re-armed
//!   when the kernel ends it) or syscalls (`sendmsg`/`sendmmsg`, `recvmmsg`, `ppoll`), chosen at
//!   runtime ([`BackendChoice`], [`BACKEND_ENV`] = `syscall` | `uring` | `auto`).
//! - Drop cancels in-flight operations and waits for them before freeing any memory they use.
//!
//! `net.core.rmem_max` caps `SO_RCVBUF` for unprivileged processes (4 MiB on the dev VM): raise
//! it to at least 32 MiB (`sysctl -w net.core.rmem_max=33554432`) or run with CAP_NET_ADMIN.

mod addr;
mod clock;
mod cmsg;
mod config;
mod counters;
mod error;
/// Safe file-mapping helpers for crates that must not use `unsafe` (client output, server files).
pub mod mapped;
mod mem;
mod ring;
mod send;
mod socket;
mod sockets;
mod syscall;
mod uring;
mod waker;
/// Early writeback of a file's dirty pages (`sync_file_range`), for crates that must not use `unsafe`.
pub mod writeback;

pub use clock::thread_cpu_time;
pub use config::{BackendChoice, BackendKind, RingConfig, BACKEND_ENV};
pub use counters::{Counters, SendErrorCounts};
pub use error::{RingError, SendError};
pub use ring::{Datagram, Processed, Ring};
pub use send::{
    max_datagrams, SendBuffer, Transmit, MAX_SEGMENTS, MAX_SEND_PAYLOAD, SEND_BUFFER_SIZE,
};
pub use socket::{BoundSocket, SocketConfig, DEFAULT_RECV_BUFFER};
pub use sockets::SocketId;
pub use waker::Waker;
