//! Ring configuration and backend selection (including the `CCFD_RING_BACKEND` override).

use crate::RingError;

/// Environment variable that picks the backend when the config says [`BackendChoice::Auto`]:
/// `syscall` forces the fallback, `uring` demands io_uring (error if unavailable), `auto` or
/// unset tries io_uring first.
pub const BACKEND_ENV: &str = "CCFD_RING_BACKEND";

/// Which backend a ring should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Follow [`BACKEND_ENV`]; without it, io_uring when usable, else the syscall backend.
    #[default]
    Auto,
    /// io_uring, or fail.
    Uring,
    /// `sendmsg`/`sendmmsg` + `recvmmsg` + `ppoll`.
    Syscall,
}

/// The backend a ring actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring: SendMsg SQEs, multishot RecvMsg over a buffer ring.
    Uring,
    /// Plain system calls.
    Syscall,
}

impl BackendChoice {
    /// Resolves `Auto` through [`BACKEND_ENV`].
    pub fn resolve(self) -> Result<BackendChoice, RingError> {
        if self != BackendChoice::Auto {
            return Ok(self);
        }
        match std::env::var(BACKEND_ENV) {
            Err(_) => Ok(BackendChoice::Auto),
            Ok(v) => Self::parse_env(&v),
        }
    }

    /// Parses a [`BACKEND_ENV`] value.
    pub fn parse_env(value: &str) -> Result<BackendChoice, RingError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::Uring),
            "syscall" | "fallback" => Ok(BackendChoice::Syscall),
            _ => Err(RingError::BadBackendEnv {
                value: value.to_string(),
            }),
        }
    }
}

/// Sizes and backend of one ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Backend choice.
    pub backend: BackendChoice,
    /// io_uring: buffer-ring entries for receives (a power of two, at most 32768).
    pub recv_buffers: u16,
    /// Bytes per receive buffer (both backends). 68 KiB holds a whole GRO super-buffer plus
    /// the io_uring recvmsg header, address and control data.
    pub recv_buffer_size: usize,
    /// Syscall backend: messages per `recvmmsg`.
    pub recv_batch: usize,
    /// Send buffers of [`SEND_BUFFER_SIZE`](crate::SEND_BUFFER_SIZE) bytes in the pool.
    pub send_buffers: usize,
    /// io_uring submission-queue entries (the completion queue gets 4x).
    pub sq_entries: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            recv_buffers: 256,
            recv_buffer_size: 68 * 1024,
            recv_batch: 32,
            send_buffers: 64,
            sq_entries: 1024,
        }
    }
}

impl RingConfig {
    /// Sets the backend choice.
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the receive buffer count (io_uring buffer ring) and size.
    pub fn recv_buffers(mut self, count: u16, size: usize) -> Self {
        self.recv_buffers = count;
        self.recv_buffer_size = size;
        self
    }

    /// Sets the number of send buffers.
    pub fn send_buffers(mut self, count: usize) -> Self {
        self.send_buffers = count;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), RingError> {
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768 {
            return Err(RingError::Config(
                "recv_buffers must be a power of two <= 32768",
            ));
        }
        if self.recv_buffer_size < 2048 || self.recv_buffer_size > (1 << 20) {
            return Err(RingError::Config(
                "recv_buffer_size must be in 2 KiB..=1 MiB",
            ));
        }
        if self.recv_batch == 0 || self.recv_batch > 1024 {
            return Err(RingError::Config("recv_batch must be in 1..=1024"));
        }
        if self.send_buffers == 0 || self.send_buffers > 65536 {
            return Err(RingError::Config("send_buffers must be in 1..=65536"));
        }
        if self.sq_entries < 8 || self.sq_entries > 32768 {
            return Err(RingError::Config("sq_entries must be in 8..=32768"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_env_values() {
        assert_eq!(
            BackendChoice::parse_env("syscall").unwrap(),
            BackendChoice::Syscall
        );
        assert_eq!(
            BackendChoice::parse_env(" URING ").unwrap(),
            BackendChoice::Uring
        );
        assert_eq!(BackendChoice::parse_env("").unwrap(), BackendChoice::Auto);
        assert!(matches!(
            BackendChoice::parse_env("epoll"),
            Err(RingError::BadBackendEnv { .. })
        ));
        // An explicit choice is not overridden.
        assert_eq!(
            BackendChoice::Syscall.resolve().unwrap(),
            BackendChoice::Syscall
        );
    }

    #[test]
    fn config_limits() {
        assert!(RingConfig::default().validate().is_ok());
        assert!(RingConfig::default()
            .recv_buffers(100, 68 * 1024)
            .validate()
            .is_err());
        assert!(RingConfig::default()
            .recv_buffers(64, 100)
            .validate()
            .is_err());
        assert!(RingConfig::default().send_buffers(0).validate().is_err());
    }
}
