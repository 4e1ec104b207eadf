//! Data-plane counters and the once-a-minute limiter for send-error logs.

use std::time::{Duration, Instant};

/// Send errors by kind (each errno class counted separately; none is fatal).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendErrorCounts {
    /// `ECONNREFUSED` (an ICMP port-unreachable reported on a later send).
    pub connection_refused: u64,
    /// `EPERM`/`EACCES` (e.g. a netfilter drop on this host).
    pub permission_denied: u64,
    /// `EAGAIN`: the socket's send buffer was full; the datagrams were dropped.
    pub would_block: u64,
    /// `ENOBUFS`/`ENOMEM`.
    pub no_buffers: u64,
    /// `EMSGSIZE`: a datagram too large for the path.
    pub message_too_long: u64,
    /// `EHOSTUNREACH`/`ENETUNREACH`/`EADDRNOTAVAIL`.
    pub unreachable: u64,
    /// Anything else (including `EIO`/`EINVAL` on a send without GSO).
    pub other: u64,
}

/// What happened on one ring since it was created. Plain numbers: copy them out to publish.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams the kernel accepted for sending.
    pub sent_datagrams: u64,
    /// Payload bytes the kernel accepted for sending.
    pub sent_bytes: u64,
    /// `sendmsg` calls or `SendMsg` SQEs issued.
    pub send_ops: u64,
    /// Send operations that failed, by kind (each op may carry up to 64 datagrams).
    pub send_errors: SendErrorCounts,
    /// Datagrams lost in failed send operations.
    pub send_error_datagrams: u64,
    /// Sockets whose GSO was switched off after an `EIO`/`EINVAL`.
    pub gso_fallbacks: u64,
    /// `send_buffer`/`queue_transmit` calls refused because every buffer was in flight.
    pub send_pool_exhausted: u64,
    /// Datagrams handed to the caller.
    pub received_datagrams: u64,
    /// Payload bytes handed to the caller.
    pub received_bytes: u64,
    /// Receive completions / messages (one per GRO super-buffer).
    pub recv_ops: u64,
    /// Datagrams cut short by the kernel (`MSG_TRUNC`) and dropped.
    pub recv_truncated: u64,
    /// Completions that could not be parsed (bad source address or layout) and were dropped.
    pub recv_malformed: u64,
    /// Receive errors other than buffer exhaustion.
    pub recv_errors: u64,
    /// Multishot receives that ended because the buffer ring ran dry (`ENOBUFS`).
    pub recv_buffer_exhausted: u64,
    /// Multishot receives re-armed after the kernel ended them.
    pub recv_rearms: u64,
    /// Packets the kernel dropped at our sockets' full receive queues (`SO_RXQ_OVFL`; with GRO
    /// one dropped packet may be a whole super-buffer of up to 64 datagrams). Updated when a
    /// later datagram arrives on the same socket.
    pub kernel_queue_drops: u64,
    /// Wake-ups delivered through the [`Waker`](crate::Waker).
    pub wakeups: u64,
}

/// Error classes that are logged (at most once a minute each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogKind {
    ConnectionRefused,
    PermissionDenied,
    WouldBlock,
    NoBuffers,
    MessageTooLong,
    Unreachable,
    OtherSend,
    Receive,
}

const LOG_KINDS: usize = 8;
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Remembers when each error class was last logged.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: [Option<Instant>; LOG_KINDS],
}

impl LogLimiter {
    /// True when `kind` was not logged in the last minute (and records now as its last log).
    pub(crate) fn should_log(&mut self, kind: LogKind) -> bool {
        let now = Instant::now();
        let slot = &mut self.last[kind as usize];
        match slot {
            Some(last) if now.duration_since(*last) < LOG_INTERVAL => false,
            _ => {
                *slot = Some(now);
                true
            }
        }
    }
}

impl Counters {
    /// Counts a failed send op of `datagrams` datagrams with the (positive) errno; returns the
    /// log class.
    pub(crate) fn count_send_error(&mut self, errno: i32, datagrams: u64) -> LogKind {
        self.send_error_datagrams += datagrams;
        let e = &mut self.send_errors;
        match errno {
            libc::ECONNREFUSED => {
                e.connection_refused += 1;
                LogKind::ConnectionRefused
            }
            libc::EPERM | libc::EACCES => {
                e.permission_denied += 1;
                LogKind::PermissionDenied
            }
            libc::EAGAIN => {
                e.would_block += 1;
                LogKind::WouldBlock
            }
            libc::ENOBUFS | libc::ENOMEM => {
                e.no_buffers += 1;
                LogKind::NoBuffers
            }
            libc::EMSGSIZE => {
                e.message_too_long += 1;
                LogKind::MessageTooLong
            }
            libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EADDRNOTAVAIL => {
                e.unreachable += 1;
                LogKind::Unreachable
            }
            _ => {
                e.other += 1;
                LogKind::OtherSend
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_logs_once_per_kind() {
        let mut l = LogLimiter::default();
        assert!(l.should_log(LogKind::WouldBlock));
        assert!(!l.should_log(LogKind::WouldBlock));
        assert!(l.should_log(LogKind::Receive));
    }

    #[test]
    fn errors_are_classified() {
        let mut c = Counters::default();
        c.count_send_error(libc::ECONNREFUSED, 1);
        c.count_send_error(libc::EPERM, 3);
        c.count_send_error(libc::EMSGSIZE, 1);
        c.count_send_error(libc::EBADF, 1);
        assert_eq!(c.send_errors.connection_refused, 1);
        assert_eq!(c.send_errors.permission_denied, 1);
        assert_eq!(c.send_errors.message_too_long, 1);
        assert_eq!(c.send_errors.other, 1);
        assert_eq!(c.send_error_datagrams, 6);
    }
}
