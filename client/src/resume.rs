//! The resume record `PATH.part.ccfd` kept beside a partial output `PATH.part`.
//!
//! It says which file the partial output belongs to and which of its segments are complete, so a restarted
//! client fetches only the missing ones. The record is small, versioned and checksummed, and is replaced
//! atomically (written to `PATH.part.ccfd.tmp`, fsynced, renamed over the old one) after each completed
//! segment. A record that is unreadable, corrupt, of another format version, or for another file (name,
//! size or meta tag differ) is discarded by the caller, which then starts from scratch.
//!
//! Byte layout (little endian), format version 1:
//!
//! | bytes | field |
//! |------:|-------|
//! | 8 | magic `b"CCFDRSM\0"` |
//! | 2 | format version (1) |
//! | 2 | name length `n` |
//! | n | file name (UTF-8) |
//! | 8 | file size |
//! | 32 | meta tag: BLAKE3 of the server's file meta (sizes, code parameters, per-segment digests) |
//! | 4 | segment count `s` |
//! | ceil(s/8) | bitmap of completed segments, bit `i % 8` of byte `i / 8` |
//! | 32 | BLAKE3 of every byte before it |

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CCFDRSM\0";
const FORMAT_VERSION: u16 = 1;
const CHECKSUM_LEN: usize = 32;
/// Largest record accepted when loading (names are bounded by the protocol; bitmaps by segment counts).
const MAX_RECORD_LEN: u64 = 16 << 20;

/// Why a stored record could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than its fields say.
    #[error("record truncated")]
    Truncated,
    /// Does not start with the magic bytes.
    #[error("not a ccfd resume record")]
    BadMagic,
    /// Written by another format version.
    #[error("unsupported record format version {0}")]
    UnsupportedVersion(u16),
    /// The trailing checksum does not match.
    #[error("record checksum mismatch")]
    BadChecksum,
    /// The name is not UTF-8.
    #[error("record file name is not UTF-8")]
    BadName,
    /// Bytes left over after the checksum.
    #[error("record has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Which segments of which file are complete in a partial output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeRecord {
    name: String,
    file_size: u64,
    meta_tag: [u8; 32],
    segment_count: u32,
    completed: Vec<u8>,
}

impl ResumeRecord {
    /// A record with no segment complete.
    pub fn new(name: &str, file_size: u64, meta_tag: [u8; 32], segment_count: u32) -> Self {
        ResumeRecord {
            name: name.to_owned(),
            file_size,
            meta_tag,
            segment_count,
            completed: vec![0; bitmap_len(segment_count)],
        }
    }

    /// Whether this record describes the given file (same name, size, meta tag and segment count).
    pub fn is_for(
        &self,
        name: &str,
        file_size: u64,
        meta_tag: &[u8; 32],
        segment_count: u32,
    ) -> bool {
        self.name == name
            && self.file_size == file_size
            && &self.meta_tag == meta_tag
            && self.segment_count == segment_count
    }

    /// The file name the record belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of segments of the file.
    pub fn segment_count(&self) -> u32 {
        self.segment_count
    }

    /// Whether `segment` is complete (out-of-range segments are not).
    pub fn is_complete(&self, segment: u32) -> bool {
        segment < self.segment_count
            && self.completed[(segment / 8) as usize] & (1 << (segment % 8)) != 0
    }

    /// Marks `segment` complete (or not). Out-of-range segments are ignored.
    pub fn set_complete(&mut self, segment: u32, complete: bool) {
        if segment >= self.segment_count {
            return;
        }
        let byte = &mut self.completed[(segment / 8) as usize];
        if complete {
            *byte |= 1 << (segment % 8);
        } else {
            *byte &= !(1 << (segment % 8));
        }
    }

    /// The first segment not yet complete, or `None` when all are.
    pub fn first_missing(&self) -> Option<u32> {
        (0..self.segment_count).find(|&s| !self.is_complete(s))
    }

    /// How many segments are complete.
    pub fn completed_count(&self) -> u32 {
        self.completed.iter().map(|b| b.count_ones()).sum()
    }

    /// Serialises the record (see the module documentation for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        let name = &name[..name_len as usize];
        let mut out =
            Vec::with_capacity(8 + 2 + 2 + name.len() + 8 + 32 + 4 + self.completed.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&self.file_size.to_le_bytes());
        out.extend_from_slice(&self.meta_tag);
        out.extend_from_slice(&self.segment_count.to_le_bytes());
        out.extend_from_slice(&self.completed);
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        out
    }

    /// Parses a record, checking magic, version and checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(8)? != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let version = u16::from_le_bytes(reader.array()?);
        if version != FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion(version));
        }
        let name_len = u16::from_le_bytes(reader.array()?) as usize;
        let name = reader.take(name_len)?;
        let file_size = u64::from_le_bytes(reader.array()?);
        let meta_tag: [u8; 32] = reader.array()?;
        let segment_count = u32::from_le_bytes(reader.array()?);
        let completed = reader.take(bitmap_len(segment_count))?.to_vec();
        let body_len = reader.at;
        let checksum = reader.take(CHECKSUM_LEN)?;
        if blake3::hash(&bytes[..body_len]).as_bytes() != checksum {
            return Err(RecordError::BadChecksum);
        }
        if reader.at != bytes.len() {
            return Err(RecordError::TrailingBytes(bytes.len() - reader.at));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| RecordError::BadName)?
            .to_owned();
        let mut record = ResumeRecord {
            name,
            file_size,
            meta_tag,
            segment_count,
            completed,
        };
        // Bits past the last segment carry no meaning: clear them so equality is exact.
        for segment in segment_count..(bitmap_len(segment_count) as u32 * 8) {
            let byte = &mut record.completed[(segment / 8) as usize];
            *byte &= !(1 << (segment % 8));
        }
        Ok(record)
    }

    /// Loads the record at `path`. `Ok(None)` when there is none; `Ok(Some(Err(_)))` when one exists but is
    /// unusable (the caller discards it); `Err` only when it exists and cannot be read.
    pub fn load(path: &Path) -> io::Result<Option<Result<Self, RecordError>>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let len = file.metadata()?.len();
        if len > MAX_RECORD_LEN {
            return Ok(Some(Err(RecordError::TrailingBytes(
                (len - MAX_RECORD_LEN) as usize,
            ))));
        }
        let bytes = fs::read(path)?;
        Ok(Some(Self::decode(&bytes)))
    }

    /// Atomically replaces the record at `path`: writes `path.tmp`, fsyncs it, renames it over `path`.
    /// (The directory is fsynced when the output is finished, which also covers the record's removal.)
    pub fn store(&self, path: &Path) -> io::Result<()> {
        let tmp = tmp_path(path);
        let mut file = File::create(&tmp)?;
        file.write_all(&self.encode())?;
        file.sync_data()?;
        drop(file);
        fs::rename(&tmp, path)
    }

    /// Removes the record at `path` and a leftover temporary; missing files are not an error.
    pub fn remove(path: &Path) -> io::Result<()> {
        for p in [path.to_path_buf(), tmp_path(path)] {
            match fs::remove_file(&p) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }
}

fn bitmap_len(segment_count: u32) -> usize {
    (segment_count as usize).div_ceil(8)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(len).ok_or(RecordError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(RecordError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ResumeRecord {
        let mut record = ResumeRecord::new("dir/image.iso", 123_456_789, [7; 32], 11);
        record.set_complete(0, true);
        record.set_complete(3, true);
        record.set_complete(10, true);
        record
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let record = sample();
        let decoded = ResumeRecord::decode(&record.encode()).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.completed_count(), 3);
        assert_eq!(decoded.first_missing(), Some(1));
        assert!(decoded.is_for("dir/image.iso", 123_456_789, &[7; 32], 11));
        assert!(!decoded.is_for("dir/image.iso", 123_456_789, &[8; 32], 11));
        assert!(!decoded.is_for("other", 123_456_789, &[7; 32], 11));
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_rejected() {
        let bytes = sample().encode();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[at] ^= 1 << bit;
                assert!(
                    ResumeRecord::decode(&bad).is_err(),
                    "flip at byte {at} bit {bit} accepted"
                );
            }
            assert!(
                ResumeRecord::decode(&bytes[..at]).is_err(),
                "truncation to {at} accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            ResumeRecord::decode(&longer),
            Err(RecordError::TrailingBytes(1))
        );
    }

    #[test]
    fn first_missing_is_none_when_all_complete_and_zero_segments_work() {
        let mut record = ResumeRecord::new("a", 10, [0; 32], 2);
        record.set_complete(1, true);
        assert_eq!(record.first_missing(), Some(0));
        record.set_complete(0, true);
        assert_eq!(record.first_missing(), None);
        record.set_complete(5, true);
        assert_eq!(record.completed_count(), 2);
        let empty = ResumeRecord::new("empty", 0, [0; 32], 0);
        assert_eq!(ResumeRecord::decode(&empty.encode()).unwrap(), empty);
        assert_eq!(empty.first_missing(), None);
    }

    #[test]
    fn store_load_remove_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.part.ccfd");
        assert!(ResumeRecord::load(&path).unwrap().is_none());
        let record = sample();
        record.store(&path).unwrap();
        assert_eq!(ResumeRecord::load(&path).unwrap().unwrap().unwrap(), record);
        fs::write(&path, b"garbage").unwrap();
        assert!(ResumeRecord::load(&path).unwrap().unwrap().is_err());
        ResumeRecord::remove(&path).unwrap();
        assert!(!path.exists());
        ResumeRecord::remove(&path).unwrap();
    }
}
