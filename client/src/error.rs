//! The client's typed errors. Every variant names the path, address or file it is about, and maps to one
//! process [`ExitCode`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::exit::ExitCode;

/// Why a `ccfd-client` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server has no such file, or refused to serve the name.
    #[error("server {server} has no file {name:?}: {reason}")]
    UnknownFile {
        /// Address of the server that answered.
        server: String,
        /// The file name that was asked for.
        name: String,
        /// The server's reason.
        reason: String,
    },
    /// The server could not be reached (or was lost and every retry failed).
    #[error("server {server} unreachable: {detail}")]
    Unreachable {
        /// The address tried.
        server: String,
        /// The last error seen.
        detail: String,
    },
    /// The output path cannot be created or written.
    #[error("cannot {op} {path}: {source}")]
    OutputNotWritable {
        /// What was being done (`create`, `write`, `rename`, ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file system holding the output is full.
    #[error("disk full: cannot {op} {path}: {source}")]
    DiskFull {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error (`ENOSPC` or `EDQUOT`).
        source: io::Error,
    },
    /// A segment kept failing its BLAKE3 digest.
    #[error("integrity failure: segment {segment} of {name:?} failed its digest {attempts} times")]
    Integrity {
        /// The file name.
        name: String,
        /// The segment index.
        segment: u32,
        /// How many decodes of it failed their digest.
        attempts: u32,
    },
    /// The server refused the request for a reason other than an unknown file (limits, bad request).
    #[error("server {server} refused: {reason}")]
    Refused {
        /// The server address.
        server: String,
        /// The server's reason.
        reason: String,
    },
    /// The server broke the protocol or sent inconsistent metadata.
    #[error("protocol error with {server}: {detail}")]
    Protocol {
        /// The server address.
        server: String,
        /// What was wrong.
        detail: String,
    },
    /// The local data socket could not be set up.
    #[error("cannot {op} data socket on {addr}: {source}")]
    DataSocket {
        /// What was being done.
        op: &'static str,
        /// The local address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// An internal failure (a worker thread died, ...).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// Classifies an I/O error on an output path: `ENOSPC`/`EDQUOT` become [`ClientError::DiskFull`],
    /// everything else [`ClientError::OutputNotWritable`].
    pub fn output(op: &'static str, path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ClientError::DiskFull { op, path, source },
            _ if source.kind() == io::ErrorKind::StorageFull => {
                ClientError::DiskFull { op, path, source }
            }
            _ => ClientError::OutputNotWritable { op, path, source },
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ClientError::UnknownFile { .. } => ExitCode::UnknownFile,
            ClientError::Unreachable { .. } => ExitCode::ServerUnreachable,
            ClientError::OutputNotWritable { .. } => ExitCode::OutputNotWritable,
            ClientError::DiskFull { .. } => ExitCode::DiskFull,
            ClientError::Integrity { .. } => ExitCode::IntegrityFailure,
            ClientError::Refused { .. }
            | ClientError::Protocol { .. }
            | ClientError::DataSocket { .. }
            | ClientError::Internal(_) => ExitCode::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_disk_full_and_eacces_is_not_writable() {
        let full = ClientError::output(
            "write",
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(full.exit_code(), ExitCode::DiskFull);
        assert!(full.to_string().contains("/x"), "{full}");
        let denied = ClientError::output(
            "create",
            Path::new("/y"),
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(denied.exit_code(), ExitCode::OutputNotWritable);
        assert!(denied.to_string().contains("/y"), "{denied}");
    }
}
