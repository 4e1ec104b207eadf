//! The catalog: which files the server serves, their meta, and whether they changed.
//!
//! Contract:
//! - Only regular files under the (canonicalized) root are served. A name is relative (`dir/file.img`);
//!   empty names, absolute names, `..` components and NUL bytes are refused before touching the disk, and
//!   the resolved path is canonicalized (following symlinks) and must still lie under the root, so a
//!   symlink leading out of the root is refused while a symlink to another file inside the root is fine.
//! - [`Catalog::lookup`] is **blocking** (it stats, opens and, on first use, hashes the file): call it
//!   off the control thread (`tokio::task::spawn_blocking`). Its [`ServedFile`] is cached and reused while
//!   the file's identity (device, inode, size, mtime) stays the same. Hashing reads the mapping, the
//!   segments split over up to [`HASH_THREADS`] threads.
//! - [`Catalog::prehash`] looks up every file under the root (the server runs it on a background
//!   thread at start), so that the first `FileMeta` of a big file does not wait for its digests; a
//!   lookup of a file being hashed waits for that hash (never hashes twice), a file added later is
//!   hashed on its first lookup.
//! - A file that changes while served is noticed by [`Catalog::lookup`] (which then returns the new
//!   version and the replaced one) and by [`Catalog::check_changes`] (call it periodically); callers
//!   restart the sessions of a replaced [`ServedFile`] (compare [`ServedFile::generation`]).
//! - Segment layout: `ccfd_proto::plan_segments` (near-equal segments, a multiple of the symbol size, at
//!   most the configured segment size); every segment but the last is `segment_size` bytes and segment `i`
//!   starts at `i * segment_size`. A 0-byte file has no segment.
//! - Each [`ServedFile`] is mapped read-only (`ccfd_ring::mapped`) once; sessions borrow segment slices
//!   of the mapping ([`ServedFile::segment_bytes`]). The file must not be truncated while mapped: a
//!   change is noticed and the file's sessions restarted, but pages lost to a truncation would fault.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::CodingSettings;

/// A BLAKE3 digest of one segment.
pub type SegmentDigest = [u8; 32];

/// Most threads hashing the segments of one file.
pub const HASH_THREADS: usize = 4;

/// Why a file is not served.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The root directory cannot be used.
    #[error("root {path}: {source}")]
    Root {
        /// The root as configured.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The name is empty or holds a NUL byte.
    #[error("invalid file name {name:?}")]
    InvalidName {
        /// The refused name.
        name: String,
    },
    /// The name is absolute.
    #[error("absolute file name {name:?} refused: names are relative to the root")]
    AbsoluteName {
        /// The refused name.
        name: String,
    },
    /// The name has a `..` component.
    #[error("file name {name:?} refused: `..` is not allowed")]
    ParentComponent {
        /// The refused name.
        name: String,
    },
    /// No such file under the root.
    #[error("no such file {name:?}")]
    NotFound {
        /// The requested name.
        name: String,
    },
    /// The name resolves (through a symlink) to a path outside the root.
    #[error("file name {name:?} refused: it leads out of the root")]
    OutsideRoot {
        /// The refused name.
        name: String,
    },
    /// The name is not a regular file (directory, device, socket...).
    #[error("{name:?} is not a regular file")]
    NotRegularFile {
        /// The refused name.
        name: String,
    },
    /// The file has more segments than the protocol can number.
    #[error("{name:?} is too large: {segments} segments")]
    TooManySegments {
        /// The file.
        name: String,
        /// Its segment count.
        segments: u64,
    },
    /// An I/O error on a file.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (`open`, `stat`, `read`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl CatalogError {
    /// True for errors meaning "this name is not served" (as opposed to a server-side I/O problem).
    pub fn is_no_such_file(&self) -> bool {
        !matches!(self, CatalogError::Io { .. } | CatalogError::Root { .. })
    }
}

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: i64,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// How one file is cut into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLayout {
    /// File size in bytes.
    pub file_size: u64,
    /// Size of every segment but the last.
    pub segment_size: u64,
    /// Number of segments (0 for an empty file).
    pub segment_count: u32,
}

impl SegmentLayout {
    /// Cuts `file_size` bytes into near-equal segments of at most `max_segment_size` bytes whose size is a
    /// multiple of `symbol_size` (except the last segment's).
    pub fn new(file_size: u64, max_segment_size: u64, symbol_size: u32) -> Option<Self> {
        let (segment_size, segment_count) =
            ccfd_proto::plan_segments(file_size, max_segment_size, u64::from(symbol_size.max(1)))?;
        Some(Self {
            file_size,
            segment_size,
            segment_count,
        })
    }

    /// Byte range `(offset, len)` of segment `index`, `None` past the end.
    pub fn segment_range(&self, index: u32) -> Option<(u64, usize)> {
        if index >= self.segment_count {
            return None;
        }
        let offset = u64::from(index) * self.segment_size;
        let len = self.segment_size.min(self.file_size - offset);
        Some((offset, len as usize))
    }
}

/// One version of one served file: identity, layout, digests and the open handle.
#[derive(Debug)]
pub struct ServedFile {
    /// The name clients use (relative to the root).
    pub name: String,
    /// The canonical path.
    pub path: PathBuf,
    /// Identity when opened.
    pub identity: FileIdentity,
    /// Segment layout.
    pub layout: SegmentLayout,
    /// Symbol size the segments are coded with.
    pub symbol_size: u32,
    /// BLAKE3 digest of each segment.
    pub digests: Vec<SegmentDigest>,
    /// Unique among every [`ServedFile`] of this process; changes when the file changes.
    pub generation: u64,
    file: File,
    mapping: Option<ccfd_ring::mapped::Mmap>,
}

impl ServedFile {
    /// The open file (same inode as `identity`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads segment `index` into memory (blocking; used when a session starts if no mapping is used).
    pub fn read_segment(&self, index: u32) -> Result<Vec<u8>, CatalogError> {
        let (offset, len) =
            self.layout
                .segment_range(index)
                .ok_or_else(|| CatalogError::NotFound {
                    name: format!("{}#{index}", self.name),
                })?;
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| CatalogError::Io {
                op: "read",
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// The bytes of segment `index` in the read-only mapping (`None` past the end).
    pub fn segment_bytes(&self, index: u32) -> Option<&[u8]> {
        let (offset, len) = self.layout.segment_range(index)?;
        let map = self.mapping.as_ref()?;
        map.get(offset as usize..offset as usize + len)
    }

    /// Asks the kernel to read segment `index` ahead (`MADV_WILLNEED`); failures are ignored.
    pub fn prefetch_segment(&self, index: u32) {
        if let (Some(map), Some((offset, len))) =
            (self.mapping.as_ref(), self.layout.segment_range(index))
        {
            let _ = map.advise_range(memmap2::Advice::WillNeed, offset as usize, len);
        }
    }

    /// Version tag sent to clients: a hash of device, inode, size and mtime (stable across restarts of
    /// the server as long as the file is unchanged).
    pub fn version(&self) -> u64 {
        let id = &self.identity;
        let mut hasher = blake3::Hasher::new();
        for word in [
            id.dev,
            id.ino,
            id.size,
            id.mtime_sec as u64,
            id.mtime_nsec as u64,
        ] {
            hasher.update(&word.to_le_bytes());
        }
        let bytes = hasher.finalize();
        u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// True if the file on disk is no longer this version (or is gone).
    pub fn has_changed(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => FileIdentity::of(&meta) != self.identity,
            Err(_) => true,
        }
    }
}

/// A file listing entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Name relative to the root.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Result of [`Catalog::lookup`].
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The current version of the file.
    pub file: Arc<ServedFile>,
    /// The cached version it replaced, if the file changed since it was last looked up.
    pub replaced: Option<Arc<ServedFile>>,
}

/// The served files under one root. Shareable (`Arc<Catalog>`); all methods block on the disk.
#[derive(Debug)]
pub struct Catalog {
    root: PathBuf,
    coding: CodingSettings,
    cache: Mutex<HashMap<PathBuf, Arc<ServedFile>>>,
    loading: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    next_generation: AtomicU64,
}

impl Catalog {
    /// A catalog of the regular files under `root` (which must be a directory).
    pub fn open(root: &Path, coding: CodingSettings) -> Result<Self, CatalogError> {
        let canonical = root.canonicalize().map_err(|source| CatalogError::Root {
            path: root.to_owned(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(CatalogError::Root {
                path: root.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(Self {
            root: canonical,
            coding,
            cache: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a client-supplied name to a canonical path of a regular file under the root.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, CatalogError> {
        let refuse_name = || name.to_owned();
        if name.is_empty() || name.contains('\0') {
            return Err(CatalogError::InvalidName {
                name: refuse_name(),
            });
        }
        let relative = Path::new(name);
        for component in relative.components() {
            match component {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(CatalogError::AbsoluteName {
                        name: refuse_name(),
                    })
                }
                Component::ParentDir => {
                    return Err(CatalogError::ParentComponent {
                        name: refuse_name(),
                    })
                }
                Component::CurDir | Component::Normal(_) => {}
            }
        }
        let canonical = match self.root.join(relative).canonicalize() {
            Ok(path) => path,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CatalogError::NotFound {
                    name: refuse_name(),
                })
            }
            Err(source) => {
                return Err(CatalogError::Io {
                    op: "resolve",
                    path: self.root.join(relative),
                    source,
                })
            }
        };
        if !canonical.starts_with(&self.root) || canonical == self.root {
            return Err(CatalogError::OutsideRoot {
                name: refuse_name(),
            });
        }
        Ok(canonical)
    }

    /// The current version of file `name` (blocking: hashes the file on first use or after a change).
    pub fn lookup(&self, name: &str) -> Result<Lookup, CatalogError> {
        let path = self.resolve(name)?;
        let meta = std::fs::metadata(&path).map_err(|source| CatalogError::Io {
            op: "stat",
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(CatalogError::NotRegularFile {
                name: name.to_owned(),
            });
        }
        let identity = FileIdentity::of(&meta);
        let cached = self.lock_cache().get(&path).cloned();
        if let Some(file) = &cached {
            if file.identity == identity {
                return Ok(Lookup {
                    file: Arc::clone(file),
                    replaced: None,
                });
            }
        }
        // One load per path at a time: concurrent first requests wait for it instead of hashing again.
        let gate = Arc::clone(
            self.loading
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(path.clone())
                .or_default(),
        );
        let _loading = gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = self.lock_cache().get(&path) {
            if file.identity == identity {
                let replaced = cached.filter(|old| old.identity != identity);
                return Ok(Lookup {
                    file: Arc::clone(file),
                    replaced,
                });
            }
        }
        let fresh = Arc::new(self.load(name, &path)?);
        let replaced = self.lock_cache().insert(path, Arc::clone(&fresh));
        // Another thread may have loaded the same version meanwhile: only report a real replacement.
        let replaced = replaced
            .filter(|old| old.identity != fresh.identity)
            .or_else(|| cached.filter(|old| old.identity != fresh.identity));
        if let Some(old) = &replaced {
            tracing::info!(file = %old.name, old_generation = old.generation,
                new_generation = fresh.generation, "file changed on disk");
        }
        Ok(Lookup {
            file: fresh,
            replaced,
        })
    }

    /// Looks up (and so hashes) every regular file under the root, stopping early when `stop` turns
    /// true. Returns how many files are ready. Errors of single files are logged and skipped.
    pub fn prehash(&self, stop: &std::sync::atomic::AtomicBool) -> usize {
        let started = std::time::Instant::now();
        let files = match self.list() {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(%error, "cannot list the root for hashing");
                return 0;
            }
        };
        let mut ready = 0;
        for listed in files {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match self.lookup(&listed.name) {
                Ok(_) => ready += 1,
                Err(error) => tracing::debug!(file = %listed.name, %error, "not prehashed"),
            }
        }
        tracing::info!(
            files = ready,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "files under the root hashed"
        );
        ready
    }

    /// Stats every cached file and drops (and returns) the ones that changed or vanished.
    pub fn check_changes(&self) -> Vec<Arc<ServedFile>> {
        let snapshot: Vec<Arc<ServedFile>> = self.lock_cache().values().cloned().collect();
        let changed: Vec<Arc<ServedFile>> = snapshot
            .into_iter()
            .filter(|file| file.has_changed())
            .collect();
        if !changed.is_empty() {
            let mut cache = self.lock_cache();
            for file in &changed {
                if cache
                    .get(&file.path)
                    .is_some_and(|current| current.generation == file.generation)
                {
                    cache.remove(&file.path);
                }
                tracing::info!(file = %file.name, generation = file.generation, "file changed on disk");
            }
        }
        changed
    }

    /// Every regular file under the root (recursively, symlinks followed only within the root), sorted.
    pub fn list(&self) -> Result<Vec<ListedFile>, CatalogError> {
        const MAX_DEPTH: usize = 32;
        let mut out = Vec::new();
        let mut pending = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = pending.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|source| CatalogError::Io {
                op: "read_dir",
                path: dir.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(relative) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(name) = relative.to_str() else {
                    continue;
                };
                let Ok(canonical) = self.resolve(name) else {
                    continue;
                };
                let Ok(meta) = std::fs::metadata(&canonical) else {
                    continue;
                };
                if meta.is_file() {
                    out.push(ListedFile {
                        name: name.to_owned(),
                        size: meta.len(),
                    });
                } else if meta.is_dir() && depth < MAX_DEPTH && !entry.path().is_symlink() {
                    pending.push((path, depth + 1));
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<ServedFile>>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens, lays out and hashes one file.
    fn load(&self, name: &str, path: &Path) -> Result<ServedFile, CatalogError> {
        let io = |op: &'static str| {
            move |source| CatalogError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let file = File::open(path).map_err(io("open"))?;
        let meta = file.metadata().map_err(io("stat"))?;
        if !meta.is_file() {
            return Err(CatalogError::NotRegularFile {
                name: name.to_owned(),
            });
        }
        let identity = FileIdentity::of(&meta);
        let layout = SegmentLayout::new(
            identity.size,
            self.coding.segment_size,
            self.coding.symbol_size,
        )
        .ok_or_else(|| CatalogError::TooManySegments {
            name: name.to_owned(),
            segments: identity.size.div_ceil(self.coding.segment_size),
        })?;
        let started = std::time::Instant::now();
        let mapping = if identity.size > 0 {
            let map = ccfd_ring::mapped::map_file(&file).map_err(io("mmap"))?;
            if map.len() as u64 != identity.size {
                return Err(CatalogError::Io {
                    op: "mmap",
                    path: path.to_owned(),
                    source: std::io::Error::other("file size changed while mapping"),
                });
            }
            let _ = map.advise(memmap2::Advice::Sequential);
            Some(map)
        } else {
            None
        };
        let digests = match &mapping {
            Some(map) => hash_mapped_segments(map, &layout),
            None => hash_segments(&file, &layout).map_err(io("read"))?,
        };
        tracing::debug!(
            file = name,
            segments = layout.segment_count,
            bytes = identity.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "hashed file"
        );
        Ok(ServedFile {
            name: name.to_owned(),
            path: path.to_owned(),
            identity,
            layout,
            symbol_size: self.coding.symbol_size,
            digests,
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            file,
            mapping,
        })
    }
}

/// BLAKE3 of every segment of a mapped file, the segments split over up to [`HASH_THREADS`]
/// threads (no copy: the hasher reads the mapping).
fn hash_mapped_segments(map: &[u8], layout: &SegmentLayout) -> Vec<SegmentDigest> {
    let count = layout.segment_count as usize;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(HASH_THREADS)
        .min(count)
        .max(1);
    let digest = |index: u32| -> SegmentDigest {
        let (offset, len) = layout.segment_range(index).expect("index < count");
        let bytes = &map[offset as usize..offset as usize + len];
        *blake3::hash(bytes).as_bytes()
    };
    if threads == 1 {
        return (0..layout.segment_count).map(digest).collect();
    }
    let mut digests = vec![[0u8; 32]; count];
    let per = count.div_ceil(threads);
    std::thread::scope(|scope| {
        for (part, out) in digests.chunks_mut(per).enumerate() {
            let digest = &digest;
            scope.spawn(move || {
                for (k, slot) in out.iter_mut().enumerate() {
                    *slot = digest((part * per + k) as u32);
                }
            });
        }
    });
    digests
}

/// BLAKE3 of every segment, reading the file sequentially in 1 MiB chunks.
fn hash_segments(file: &File, layout: &SegmentLayout) -> std::io::Result<Vec<SegmentDigest>> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut chunk = vec![0u8; 1 << 20];
    let mut digests = Vec::with_capacity(layout.segment_count as usize);
    for index in 0..layout.segment_count {
        let (_, len) = layout.segment_range(index).expect("index < count");
        let mut hasher = blake3::Hasher::new();
        let mut left = len;
        while left > 0 {
            let take = left.min(chunk.len());
            reader.read_exact(&mut chunk[..take])?;
            hasher.update(&chunk[..take]);
            left -= take;
        }
        digests.push(*hasher.finalize().as_bytes());
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_near_equal_and_symbol_aligned() {
        let l = SegmentLayout::new(100, 40, 8).unwrap();
        assert_eq!(l.segment_count, 3);
        assert_eq!(l.segment_size, 40);
        assert_eq!(l.segment_range(2), Some((80, 20)));
        assert_eq!(l.segment_range(3), None);
        let l = SegmentLayout::new(81, 40, 1).unwrap();
        assert_eq!((l.segment_count, l.segment_size), (3, 27));
        let l = SegmentLayout::new(100, 40, 8).unwrap();
        assert_eq!((l.segment_count, l.segment_size), (3, 40));
        let l = SegmentLayout::new(0, 40, 8).unwrap();
        assert_eq!(l.segment_count, 0);
        let l = SegmentLayout::new(1, 32 << 20, 1280).unwrap();
        assert_eq!(l.segment_range(0), Some((0, 1)));
        let total: usize = (0..l.segment_count)
            .map(|i| l.segment_range(i).unwrap().1)
            .sum();
        assert_eq!(total, 1);
    }

    #[test]
    fn layout_covers_file_exactly() {
        for size in [1u64, 1279, 1280, 1281, 40_000, 33 << 20, (64 << 20) + 1] {
            let l = SegmentLayout::new(size, 32 << 20, 1280).unwrap();
            let mut next = 0;
            for i in 0..l.segment_count {
                let (offset, len) = l.segment_range(i).unwrap();
                assert_eq!(offset, next);
                assert!(len > 0);
                next += len as u64;
            }
            assert_eq!(next, size);
        }
    }
}
