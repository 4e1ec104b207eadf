//! Process exit codes of `ccfd-client`, one per class of failure, so scripts can tell them apart.
//!
//! | code | meaning |
//! |-----:|---------|
//! | 0 | success |
//! | 1 | any other error (protocol error, server refused for a reason not listed here, internal error) |
//! | 2 | bad command line (reported by clap) |
//! | 3 | unknown file: the server has no such file, or refused the name (`..`, absolute, symlink out of its root) |
//! | 4 | server unreachable: the control connection could not be made, or was lost and retries ran out |
//! | 5 | output not writable: the output path, its `.part` file or its resume record cannot be created or written |
//! | 6 | disk full (`ENOSPC`/`EDQUOT`) while preallocating or writing the output |
//! | 7 | integrity failure: a segment kept failing its BLAKE3 digest, or the finished file does not match its meta |

/// The exit code of a `ccfd-client` run (see the module documentation for the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExitCode {
    /// The command did what it was asked.
    Success = 0,
    /// Any failure not covered by a more specific code.
    Other = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// The server has no such file or refused the name.
    UnknownFile = 3,
    /// The server cannot be reached.
    ServerUnreachable = 4,
    /// The output (or its `.part` / resume record) cannot be written.
    OutputNotWritable = 5,
    /// The file system of the output is full.
    DiskFull = 6,
    /// Data kept failing its digest.
    IntegrityFailure = 7,
}

impl ExitCode {
    /// The numeric process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}
