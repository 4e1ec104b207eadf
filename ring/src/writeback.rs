//! Early writeback of a file's dirty pages, for crates that must not use `unsafe`: the client starts
//! writing each verified segment to disk as soon as it is in the page cache, so that the final
//! `fsync` of the output has little left to do (`msync(MS_ASYNC)` does nothing on Linux).
//!
//! Contract: [`start_writeback`] only starts the writeback of the range (`sync_file_range` with
//! `SYNC_FILE_RANGE_WRITE`: no wait for pages already under writeback, no metadata, no durability);
//! durability still comes from `fsync`. File systems without writeback (tmpfs) accept it as a no-op.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Starts the writeback of bytes `offset..offset + len` of `file` (dirty pages only) and returns
/// without waiting for it. `len == 0` means "to the end of the file".
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: `sync_file_range` reads no user memory; the descriptor is borrowed from a live `File`
    // for the duration of the call.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
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
    use std::io::Write;

    #[test]
    fn writeback_of_written_range_succeeds_and_keeps_the_bytes() {
        let path = std::env::temp_dir().join(format!("ccfd-ring-writeback-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(&[7u8; 3 * 4096]).unwrap();
        let result = start_writeback(&file, 4096, 8192).and_then(|()| start_writeback(&file, 0, 0));
        let bytes = std::fs::read(&path);
        let _ = std::fs::remove_file(&path);
        result.unwrap();
        assert_eq!(bytes.unwrap(), vec![7u8; 3 * 4096]);
    }

    #[test]
    fn an_out_of_range_offset_is_an_error_not_a_panic() {
        let file = File::open("/dev/null").unwrap();
        assert!(start_writeback(&file, u64::MAX, 1).is_err());
    }
}
