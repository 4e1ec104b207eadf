//! Typed errors of the data plane.

use std::io;

use crate::SocketId;

/// Errors from ring setup, socket setup and waiting.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The io_uring backend was demanded (config or `CCFD_RING_BACKEND=uring`) but cannot be used.
    #[error("io_uring backend unavailable: {reason}")]
    UringUnavailable {
        /// Why (the failing setup step and its error).
        reason: String,
    },
    /// `CCFD_RING_BACKEND` holds something other than `syscall`, `uring` or `auto`.
    #[error("CCFD_RING_BACKEND={value:?} is not one of syscall, uring, auto")]
    BadBackendEnv {
        /// The value found.
        value: String,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation (`bind 127.0.0.2:9000`, `io_uring_enter`, ...).
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket handle is unknown or was closed.
    #[error("unknown or closed socket {0:?}")]
    UnknownSocket(SocketId),
    /// A send could not be queued.
    #[error(transparent)]
    Send(#[from] SendError),
    /// A configuration value is out of range.
    #[error("invalid ring configuration: {0}")]
    Config(&'static str),
}

impl RingError {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            op: op.into(),
            source,
        }
    }
}

/// Errors from queueing a send. None of them affects the ring or other sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The socket handle is unknown or was closed.
    #[error("unknown or closed socket {0:?}")]
    UnknownSocket(SocketId),
    /// Every send buffer is in flight; process completions (`Ring::process`) and retry.
    #[error("all send buffers are in flight")]
    PoolExhausted,
    /// `segment_size` is 0 or larger than a datagram can be.
    #[error("segment size {segment_size} is not in 1..={max}")]
    BadSegmentSize {
        /// The size asked for.
        segment_size: usize,
        /// The largest allowed.
        max: usize,
    },
    /// The contents do not fit one send (buffer size or 64 segments).
    #[error("{len} bytes in segments of {segment_size} do not fit one send (max {max} bytes, 64 segments)")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Segment size.
        segment_size: usize,
        /// Buffer capacity.
        max: usize,
    },
    /// A datagram longer than the segment size, or one after a short (final) datagram.
    #[error("datagram of {len} bytes does not fit (segment size {segment_size}, buffer full or closed by a short datagram)")]
    BufferFull {
        /// Length offered.
        len: usize,
        /// Segment size.
        segment_size: usize,
    },
    /// The destination's address family differs from the socket's.
    #[error("destination family does not match the socket's")]
    AddressFamily,
}
