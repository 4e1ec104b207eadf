//! The writer stage of the decoder thread: checks each decoded segment's BLAKE3 digest and writes the
//! verified segment into the output, on a thread of its own, so the decoder thread goes back to its
//! socket as soon as a segment's symbol passes are done.
//!
//! Contract:
//! - Two segment buffers circulate between the decoder thread and the writer ([`BUFFERS`]): the
//!   decoder decodes into one while the writer checks and writes the other. [`WriterLink::buffer`]
//!   hands the decoder a free buffer (waiting for the writer only when both are in use);
//!   [`WriterLink::submit`] passes a decoded one over and returns at once.
//! - For each submitted segment the writer hashes it (one `blake3::Hasher::update` over the whole
//!   buffer: SIMD over many chunks at once, no rayon), and on a match `pwrite`s it at its offset,
//!   starts its writeback, marks it complete in the resume record and stores the record; then it
//!   reports [`DecoderEvent::Verified`] (`ok: false` on a mismatch: nothing is written, the download
//!   refetches it) and returns the buffer.
//! - An output error (disk full, unwritable) ends the writer: it reports
//!   [`DecoderEvent::Failed`] with the error (naming the path) and returns it from [`run`]; the
//!   decoder thread sees the link closed at its next hand-over and stops.
//! - Segments are verified and recorded in the order they were submitted.

use std::path::Path;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ClientError;
use crate::output::PartFile;
use crate::receiver::{segment_range, DecoderEvent};
use crate::resume::ResumeRecord;
use crate::stats::Counters;
use ccfd_proto::FileMeta;

/// Segment buffers in circulation: one being decoded, one being checked and written.
pub const BUFFERS: usize = 2;

/// A reusable segment buffer. Its pages stay mapped from segment to segment, so decoding into it never
/// faults after the first segment.
#[derive(Debug, Default)]
pub struct SegmentBuffer {
    bytes: Vec<u8>,
    /// Length of the segment it holds (or is decoding).
    len: usize,
}

impl SegmentBuffer {
    /// The first `len` bytes, grown (zero-filled) if needed; their content is whatever the last
    /// segment left, which the decoder overwrites.
    pub fn take(&mut self, len: usize) -> &mut [u8] {
        if self.bytes.len() < len {
            self.bytes.resize(len, 0);
        }
        self.len = len;
        &mut self.bytes[..len]
    }

    /// The segment it holds.
    pub fn segment(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A decoded segment for the writer.
#[derive(Debug)]
struct Job {
    segment: u32,
    buffer: SegmentBuffer,
}

/// The decoder thread's end of the writer stage.
#[derive(Debug)]
pub struct WriterLink {
    jobs: Sender<Job>,
    free: Receiver<SegmentBuffer>,
}

/// The writer thread's end.
#[derive(Debug)]
pub struct WriterEnd {
    jobs: Receiver<Job>,
    free: Sender<SegmentBuffer>,
}

/// The writer has stopped (after an output error, which it reported itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the output writer stopped")]
pub struct WriterGone;

/// A linked pair with [`BUFFERS`] empty buffers.
pub fn link() -> (WriterLink, WriterEnd) {
    // Unbounded but never longer than BUFFERS: only buffers taken from `free` are submitted.
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
    let (free_tx, free_rx) = crossbeam_channel::unbounded();
    for _ in 0..BUFFERS {
        let _ = free_tx.send(SegmentBuffer::default());
    }
    (
        WriterLink {
            jobs: jobs_tx,
            free: free_rx,
        },
        WriterEnd {
            jobs: jobs_rx,
            free: free_tx,
        },
    )
}

impl WriterLink {
    /// A free buffer; blocks while the writer still holds both.
    pub fn buffer(&self) -> Result<SegmentBuffer, WriterGone> {
        self.free.recv().map_err(|_| WriterGone)
    }

    /// Hands decoded `segment` (in `buffer`) to the writer; never blocks.
    pub fn submit(&self, segment: u32, buffer: SegmentBuffer) -> Result<(), WriterGone> {
        self.jobs
            .send(Job { segment, buffer })
            .map_err(|_| WriterGone)
    }
}

/// What the writer works with (borrowed from the decoder's context for the life of the stage).
#[derive(Debug)]
pub struct WriterContext<'a> {
    /// The output.
    pub part: &'a PartFile,
    /// The file meta (segment ranges and digests).
    pub meta: &'a FileMeta,
    /// The resume record, updated after each verified segment.
    pub record: &'a mut ResumeRecord,
    /// Where the resume record lives.
    pub record_path: &'a Path,
    /// Download counters.
    pub counters: &'a Counters,
    /// Events to the control thread.
    pub events: UnboundedSender<DecoderEvent>,
}

/// Runs the writer until the decoder drops its [`WriterLink`] (`Ok`) or an output error (reported as
/// [`DecoderEvent::Failed`], then returned).
pub fn run(end: WriterEnd, ctx: WriterContext<'_>) -> Result<(), ClientError> {
    let WriterContext {
        part,
        meta,
        record,
        record_path,
        counters,
        events,
    } = ctx;
    for job in end.jobs.iter() {
        match verify(part, meta, record, record_path, counters, &job) {
            Ok(ok) => {
                let _ = events.send(DecoderEvent::Verified {
                    segment: job.segment,
                    ok,
                });
                // The decoder may have left already (Abort): nothing to return the buffer to.
                let _ = end.free.send(job.buffer);
            }
            Err(err) => {
                tracing::error!(segment = job.segment, %err, "output write failed");
                let _ = events.send(DecoderEvent::Failed(duplicate(&err)));
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Checks the decoded segment's digest; on success writes it into the output and records it as
/// complete (resume record rewritten).
fn verify(
    part: &PartFile,
    meta: &FileMeta,
    record: &mut ResumeRecord,
    record_path: &Path,
    counters: &Counters,
    job: &Job,
) -> Result<bool, ClientError> {
    let segment = job.segment;
    let range = segment_range(meta, segment).unwrap_or(0..0);
    let decoded = job.buffer.segment();
    let expected = meta.digests.get(segment as usize);
    let ok = decoded.len() == range.len()
        && expected.is_some_and(|d| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(decoded);
            hasher.finalize().as_bytes() == d
        });
    if ok {
        part.write_segment(range.start, decoded)?;
        // Writeback starts now, so the final fsync has little left to do. (The record's
        // fdatasync below then waits for it on ext4, data=ordered: the writer thread pays the
        // disk time while the decoder receives the next segment, not the end of the download.)
        part.flush_segment(range.clone())?;
        record.set_complete(segment, true);
        record
            .store(record_path)
            .map_err(|e| ClientError::output("write", record_path, e))?;
        Counters::add(&counters.segments_completed, 1);
        Counters::add(&counters.bytes_verified, range.len() as u64);
        tracing::debug!(segment, "segment verified");
    } else {
        Counters::add(&counters.segments_failed_digest, 1);
        tracing::warn!(
            segment,
            "segment failed its digest: discarded, it will be fetched again"
        );
    }
    Ok(ok)
}

/// The same error for the control thread (the original is returned from [`run`]): output errors keep
/// their variant (and so the exit code), operation, path and message.
fn duplicate(err: &ClientError) -> ClientError {
    let copy = |source: &std::io::Error| std::io::Error::new(source.kind(), source.to_string());
    match err {
        ClientError::OutputNotWritable { op, path, source } => ClientError::OutputNotWritable {
            op,
            path: path.clone(),
            source: copy(source),
        },
        ClientError::DiskFull { op, path, source } => ClientError::DiskFull {
            op,
            path: path.clone(),
            source: copy(source),
        },
        other => ClientError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_errors_keep_their_exit_code_and_path_when_duplicated() {
        let full = ClientError::output(
            "write",
            Path::new("/out/f.part"),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let copy = duplicate(&full);
        assert_eq!(copy.exit_code(), full.exit_code());
        assert_eq!(copy.to_string(), full.to_string());
        let denied = ClientError::output(
            "write",
            Path::new("/ro/f.part"),
            std::io::Error::from_raw_os_error(libc::EROFS),
        );
        assert_eq!(duplicate(&denied).exit_code(), denied.exit_code());
        assert!(duplicate(&denied).to_string().contains("/ro/f.part"));
    }

    #[test]
    fn two_buffers_circulate_and_a_closed_writer_is_seen() {
        let (link, end) = link();
        let a = link.buffer().unwrap();
        let b = link.buffer().unwrap();
        assert!(link.free.try_recv().is_err(), "only two buffers");
        link.submit(0, a).unwrap();
        let job = end.jobs.recv().unwrap();
        end.free.send(job.buffer).unwrap();
        assert!(link.buffer().is_ok());
        drop(end);
        assert_eq!(link.submit(1, b), Err(WriterGone));
        assert_eq!(link.buffer().unwrap_err(), WriterGone);
    }
}
