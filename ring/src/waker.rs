//! Cross-thread wake-ups of a waiting ring through an eventfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Wakes the ring it came from out of [`Ring::wait`](crate::Ring::wait), from any thread.
///
/// Cheap to clone; keeps the eventfd open even after the ring is gone (a wake then does nothing).
#[derive(Debug, Clone)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// Creates the eventfd (blocking mode: the ring reads it only when it is readable).
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Wakes the ring: its current or next [`Ring::wait`](crate::Ring::wait) returns promptly.
    /// Wakes coalesce; never blocks in practice (the counter would need 2^64 unread wakes).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we keep open through the Arc.
        let rc = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if rc < 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "eventfd wake failed");
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Reads (and so resets) a readable eventfd. Used by the syscall backend after `ppoll`.
pub(crate) fn drain_eventfd(fd: RawFd) {
    let mut value: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; the fd was reported readable, so the
    // blocking eventfd read returns at once.
    let _ = unsafe {
        libc::read(
            fd,
            (&mut value as *mut u64).cast(),
            std::mem::size_of::<u64>(),
        )
    };
}
