//! Safe wrappers around `memmap2` file mappings, so crates outside `ring` (which must not contain
//! `unsafe`) can map files: read-only for senders (server, cooperation shard), `MAP_SHARED` read-write for
//! the client writing its output in place.
//!
//! The contract callers must keep (it cannot be checked here): the mapped file is not truncated by anyone
//! while mapped. A file truncated under a read-only mapping raises `SIGBUS` on access to the lost pages;
//! senders detect size/mtime changes and remap, the client owns its `.part` file exclusively.

use std::fs::File;
use std::io;

pub use memmap2::{Mmap, MmapMut};

/// Maps the whole of `file` read-only (`MAP_SHARED`, `PROT_READ`).
pub fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: memmap2 requires that the file is not modified or truncated concurrently for the memory
    // safety of the returned slice; the module contract above places that duty on the caller, who owns the
    // file's lifecycle (the server watches size/mtime and never reads past the meta it validated).
    unsafe { Mmap::map(file) }
}

/// Maps the whole of `file` read-write and shared (`MAP_SHARED`, `PROT_READ|PROT_WRITE`): writes go to the
/// page cache of the file itself.
pub fn map_file_mut(file: &File) -> io::Result<MmapMut> {
    // SAFETY: as for `map_file`: the caller owns the file exclusively (the client's `.part` output) and does
    // not truncate it while the mapping lives; the file was opened read-write.
    unsafe { MmapMut::map_mut(file) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unique path in the system temp dir, removed on drop (this crate has no tempfile dependency).
    struct TmpPath(std::path::PathBuf);

    impl Drop for TmpPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn shared_writes_reach_the_file_and_read_only_maps_see_them() {
        let tmp =
            TmpPath(std::env::temp_dir().join(format!("ccfd-ring-mapped-{}", std::process::id())));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp.0)
            .unwrap();
        file.set_len(4096).unwrap();
        let mut map = map_file_mut(&file).unwrap();
        map[..5].copy_from_slice(b"hello");
        map.flush().unwrap();
        let read_only = map_file(&File::open(&tmp.0).unwrap()).unwrap();
        assert_eq!(&read_only[..5], b"hello");
        assert_eq!(&std::fs::read(&tmp.0).unwrap()[..5], b"hello");
    }
}
