//! The send-buffer pool: preallocated 64 KiB buffers the caller fills in place, each carrying one
//! send operation (up to 64 equal-size datagrams to one destination, sent with one `UDP_SEGMENT`
//! cmsg, or one by one once GSO is off for the socket). A buffer belongs to the kernel from the
//! moment its operation is issued until its completion is processed.

use std::net::SocketAddr;

use crate::addr::RawAddr;
use crate::cmsg::CmsgBuf;
use crate::mem::Region;
use crate::{Ring, SendError, SocketId};

/// Bytes of one send buffer.
pub const SEND_BUFFER_SIZE: usize = 65536;
/// Most datagrams one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;
/// Most payload bytes one IPv4 UDP send (GSO batch or single datagram) may carry.
pub const MAX_SEND_PAYLOAD: usize = 65507;

/// How many datagrams of `segment_size` bytes one send buffer holds (0 for an invalid size).
pub fn max_datagrams(segment_size: usize) -> usize {
    if segment_size == 0 || segment_size > MAX_SEND_PAYLOAD {
        0
    } else {
        (MAX_SEND_PAYLOAD / segment_size).clamp(1, MAX_SEGMENTS)
    }
}

/// A datagram batch to copy into a send buffer and queue (quinn-udp's `Transmit`).
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    /// The socket to send from.
    pub socket: SocketId,
    /// Where to.
    pub destination: SocketAddr,
    /// Datagram size: `contents` is cut into datagrams of this size (the last may be shorter).
    pub segment_size: usize,
    /// The datagrams back to back (at most 64 of them and [`SEND_BUFFER_SIZE`] bytes).
    pub contents: &'a [u8],
}

/// One pool slot: the buffer's metadata and the kernel-facing `msghdr`s pointing into it.
pub(crate) struct SendSlot {
    pub(crate) data: *mut u8,
    pub(crate) socket: SocketId,
    pub(crate) len: usize,
    pub(crate) segment_size: usize,
    pub(crate) dest: RawAddr,
    pub(crate) cmsg: CmsgBuf,
    pub(crate) iov: libc::iovec,
    pub(crate) msg: libc::msghdr,
    /// One message per datagram, used once GSO is off (capacity fixed at 64: never reallocates,
    /// so the pointers inside stay valid).
    pub(crate) split: Vec<libc::mmsghdr>,
    pub(crate) split_iov: Vec<libc::iovec>,
    pub(crate) split_mode: bool,
    /// io_uring operations of this slot not yet completed.
    pub(crate) outstanding: u32,
    /// A GSO send of this slot failed with EIO/EINVAL: resend it datagram by datagram.
    pub(crate) gso_failed: bool,
}

/// A zeroed `msghdr`.
pub(crate) fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain old data (integers and raw pointers); all-zero is its documented
    // empty value.
    unsafe { std::mem::zeroed() }
}

impl SendSlot {
    /// Number of datagrams in the buffer.
    pub(crate) fn datagrams(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            self.len.div_ceil(self.segment_size.max(1))
        }
    }

    /// Points `msg` at the whole buffer, with a `UDP_SEGMENT` cmsg when it holds several
    /// datagrams.
    pub(crate) fn prepare_single(&mut self) {
        self.split_mode = false;
        self.iov = libc::iovec {
            iov_base: self.data.cast(),
            iov_len: self.len,
        };
        let mut msg = zeroed_msghdr();
        msg.msg_name = self.dest.bytes.as_mut_ptr().cast();
        msg.msg_namelen = self.dest.len;
        msg.msg_iov = &mut self.iov;
        msg.msg_iovlen = 1;
        if self.datagrams() > 1 {
            let seg = u16::try_from(self.segment_size).unwrap_or(u16::MAX);
            let control_len = self.cmsg.write_udp_segment(seg);
            msg.msg_control = self.cmsg.0.as_mut_ptr().cast();
            msg.msg_controllen = control_len;
        }
        self.msg = msg;
    }

    /// Builds one message per datagram (no GSO).
    pub(crate) fn prepare_split(&mut self) {
        self.split_mode = true;
        if self.split.capacity() < MAX_SEGMENTS {
            self.split = Vec::with_capacity(MAX_SEGMENTS);
            self.split_iov = Vec::with_capacity(MAX_SEGMENTS);
        }
        self.split.clear();
        self.split_iov.clear();
        let seg = self.segment_size.max(1);
        let mut offset = 0;
        while offset < self.len && self.split_iov.len() < MAX_SEGMENTS {
            let len = seg.min(self.len - offset);
            self.split_iov.push(libc::iovec {
                // SAFETY: offset < len <= SEND_BUFFER_SIZE, inside this slot's buffer.
                iov_base: unsafe { self.data.add(offset) }.cast(),
                iov_len: len,
            });
            offset += len;
        }
        for i in 0..self.split_iov.len() {
            let mut msg = zeroed_msghdr();
            msg.msg_name = self.dest.bytes.as_mut_ptr().cast();
            msg.msg_namelen = self.dest.len;
            msg.msg_iov = &mut self.split_iov[i];
            msg.msg_iovlen = 1;
            self.split.push(libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            });
        }
    }
}

/// The pool of send buffers of one ring.
pub(crate) struct SendPool {
    /// Owns the buffer memory; `None` once leaked (a ring that could not drain its operations).
    region: Option<Region>,
    pub(crate) slots: Box<[SendSlot]>,
    free: Vec<u32>,
}

impl SendPool {
    pub(crate) fn new(count: usize) -> std::io::Result<Self> {
        let region = Region::new(count * SEND_BUFFER_SIZE)?;
        let base = region.as_ptr();
        let slots = (0..count)
            .map(|i| SendSlot {
                // SAFETY: i * SEND_BUFFER_SIZE < count * SEND_BUFFER_SIZE = region length.
                data: unsafe { base.add(i * SEND_BUFFER_SIZE) },
                socket: SocketId::NONE,
                len: 0,
                segment_size: 1,
                dest: RawAddr::empty(),
                cmsg: CmsgBuf::new(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                msg: zeroed_msghdr(),
                split: Vec::new(),
                split_iov: Vec::new(),
                split_mode: false,
                outstanding: 0,
                gso_failed: false,
            })
            .collect();
        let free = (0..count as u32).rev().collect();
        Ok(Self {
            region: Some(region),
            slots,
            free,
        })
    }

    pub(crate) fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    pub(crate) fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.len = 0;
        s.outstanding = 0;
        s.gso_failed = false;
        s.split_mode = false;
        self.free.push(slot);
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// The buffer of a slot the caller holds exclusively (taken, not queued).
    pub(crate) fn bytes_mut(&mut self, slot: u32) -> &mut [u8] {
        let data = self.slots[slot as usize].data;
        // SAFETY: the slot was taken from the free list and not yet queued, so neither the kernel
        // nor other code touches its buffer; &mut self makes this the only live view.
        unsafe { std::slice::from_raw_parts_mut(data, SEND_BUFFER_SIZE) }
    }

    /// Forgets the memory instead of unmapping it (the kernel may still read it).
    pub(crate) fn leak(&mut self) {
        if let Some(region) = self.region.take() {
            std::mem::forget(region);
        }
    }
}

/// A send buffer being filled in place, for one socket, destination and segment size.
///
/// Push datagrams (all `segment_size` bytes except possibly the last), then [`queue`](Self::queue)
/// it. Dropping it without queueing returns the buffer to the pool unsent.
pub struct SendBuffer<'r> {
    pub(crate) ring: &'r mut Ring,
    pub(crate) slot: u32,
    pub(crate) len: usize,
    pub(crate) segment_size: usize,
    pub(crate) max_len: usize,
    pub(crate) closed: bool,
    pub(crate) done: bool,
}

impl SendBuffer<'_> {
    /// The datagram size of this buffer.
    pub fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// Datagrams pushed so far.
    pub fn datagrams(&self) -> usize {
        self.len.div_ceil(self.segment_size)
    }

    /// Payload bytes pushed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no further datagram fits (64 datagrams, 65507 bytes, or a short one was pushed).
    pub fn is_full(&self) -> bool {
        self.closed || self.len + self.segment_size > self.max_len
    }

    /// Copies one datagram in (at most `segment_size` bytes; a shorter one must be the last).
    pub fn push(&mut self, datagram: &[u8]) -> Result<(), SendError> {
        if datagram.len() > self.segment_size || self.is_full() {
            return Err(SendError::BufferFull {
                len: datagram.len(),
                segment_size: self.segment_size,
            });
        }
        self.push_with(|buf| {
            buf[..datagram.len()].copy_from_slice(datagram);
            datagram.len()
        })
        .map(|_| ())
    }

    /// Lets `write` fill the next datagram in place: it gets `segment_size` bytes and returns how
    /// many it wrote (0 adds nothing; fewer than `segment_size` makes this the last datagram).
    /// Returns the datagram's length.
    pub fn push_with<F: FnOnce(&mut [u8]) -> usize>(
        &mut self,
        write: F,
    ) -> Result<usize, SendError> {
        if self.is_full() {
            return Err(SendError::BufferFull {
                len: self.segment_size,
                segment_size: self.segment_size,
            });
        }
        let start = self.len;
        let seg = self.segment_size;
        let bytes = self.ring.core.pool.bytes_mut(self.slot);
        let written = write(&mut bytes[start..start + seg]).min(seg);
        if written == 0 {
            return Ok(0);
        }
        self.len += written;
        if written < seg {
            self.closed = true;
        }
        Ok(written)
    }

    /// Hands the buffer to the ring: the send is issued now (io_uring: queued in the SQ and
    /// submitted by the next `submit`/`wait`; syscall: sent at the next `submit`/`wait`).
    pub fn queue(mut self) {
        self.done = true;
        if self.len == 0 {
            self.ring.core.pool.release(self.slot);
            return;
        }
        let slot = &mut self.ring.core.pool.slots[self.slot as usize];
        slot.len = self.len;
        slot.segment_size = self.segment_size;
        self.ring.enqueue(self.slot);
    }
}

impl Drop for SendBuffer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.ring.core.pool.release(self.slot);
        }
    }
}
