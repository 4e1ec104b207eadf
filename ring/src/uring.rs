//! The io_uring backend: `SendMsg` SQEs (one per send buffer, with a `UDP_SEGMENT` cmsg), one
//! multishot `RecvMsg` per socket over a shared registered buffer ring, an eventfd `Read` for
//! wake-ups, and waits through `io_uring_enter` with an extended-argument timeout.
//!
//! Ownership: every SQE's memory (send buffer, `msghdr`, address, cmsg; the receive `msghdr`
//! template; the eventfd read target; the buffer ring) lives in memory that does not move and is
//! not freed or reused until the operation's final CQE has been processed. `in_flight` counts
//! pushed operations whose final CQE has not been seen; `shutdown` cancels and drains them.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use crate::addr::RAW_ADDR_CAP;
use crate::cmsg::RECV_CONTROL_LEN;
use crate::counters::LogKind;
use crate::mem::Region;
use crate::ring::{deliver, log_send_error, Core, Datagram, Processed};
use crate::send::zeroed_msghdr;
use crate::{RingConfig, RingError, SocketId, Waker};

const KIND_SHIFT: u32 = 56;
const KIND_SEND: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;
const INDEX_MASK: u64 = 0xffff_ffff;
/// Buffer group id of the ring's (single) buffer ring.
const BGID: u16 = 0;
/// How long `shutdown` waits for cancelled operations before leaking their memory.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn recv_user_data(index: u32) -> u64 {
    (KIND_RECV << KIND_SHIFT) | u64::from(index)
}

/// Buffers the kernel may use at first; doubled each time a multishot receive runs dry.
const INITIAL_AVAILABLE: u32 = 32;

/// The registered ring of receive buffers.
///
/// Only `target` buffers are offered to the kernel at a time; the others wait on a LIFO stack,
/// so the buffers in use stay few and cache-warm (cycling through all of a large ring made each
/// received byte a cache miss). `target` doubles, up to the whole ring, whenever a multishot
/// receive ends for lack of buffers.
struct BufRing {
    /// Ring entries (page aligned); `None` once leaked.
    entries: Option<Region>,
    entries_base: *mut BufRingEntry,
    /// The buffers themselves; `None` once leaked.
    buffers: Option<Region>,
    buffers_base: *mut u8,
    buf_size: usize,
    count: u16,
    mask: u16,
    /// Tail last published to the kernel.
    tail: u16,
    /// Entries written since then (published by `publish`).
    pending: u16,
    /// Buffers we own that are not in the ring, most recently used last.
    free: Vec<u16>,
    /// Published entries the kernel has not consumed yet.
    available: u32,
    /// How many entries to keep available.
    target: u32,
    registered: bool,
}

impl BufRing {
    fn new(ring: &IoUring, count: u16, buf_size: usize) -> Result<Self, String> {
        let entries = Region::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())
            .map_err(|e| format!("mmap buffer ring: {e}"))?;
        let buffers = Region::new(usize::from(count) * buf_size)
            .map_err(|e| format!("mmap receive buffers: {e}"))?;
        let mut this = Self {
            entries_base: entries.as_ptr().cast(),
            buffers_base: buffers.as_ptr(),
            entries: Some(entries),
            buffers: Some(buffers),
            buf_size,
            count,
            mask: count - 1,
            tail: 0,
            pending: 0,
            free: (0..count).rev().collect(),
            available: 0,
            target: INITIAL_AVAILABLE.min(u32::from(count)),
            registered: false,
        };
        // SAFETY: the entry array is page aligned, `count` entries long, and lives (never moved)
        // until unregistered in `shutdown` or leaked with the ring.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(this.entries_base as u64, count, BGID, 0)
        }
        .map_err(|e| format!("register buffer ring: {e}"))?;
        this.registered = true;
        this.publish();
        Ok(this)
    }

    /// The kernel used one published entry (a CQE carried its buffer).
    fn consumed(&mut self) {
        self.available = self.available.saturating_sub(1);
    }

    /// Gives buffer `bid` back (offered to the kernel again by `publish` when needed).
    fn recycle(&mut self, bid: u16) {
        self.free.push(bid);
    }

    /// A multishot receive ran out of buffers: offer more from now on.
    fn grow(&mut self) {
        self.target = (self.target * 2).min(u32::from(self.count));
    }

    /// Writes the entry for `bid` after the pending ones.
    fn offer(&mut self, bid: u16) {
        let idx = self.tail.wrapping_add(self.pending) & self.mask;
        // SAFETY: idx <= mask < count, inside the entry array; the kernel only reads entries
        // between its head and the published tail, and this one is beyond the published tail
        // (at most `count` entries are ever published and unconsumed). The setters leave the
        // `resv` field (the tail, in entry 0) untouched.
        let entry = unsafe { &mut *self.entries_base.add(usize::from(idx)) };
        // SAFETY: bid < count, so the offset is inside the buffer region.
        entry.set_addr(unsafe { self.buffers_base.add(usize::from(bid) * self.buf_size) } as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.pending += 1;
        self.available += 1;
    }

    /// Tops the available entries up to `target` (hottest buffers first) and publishes them
    /// with one tail store.
    fn publish(&mut self) {
        while self.available < self.target {
            let Some(bid) = self.free.pop() else { break };
            self.offer(bid);
        }
        if self.pending == 0 {
            return;
        }
        self.tail = self.tail.wrapping_add(self.pending);
        self.pending = 0;
        // SAFETY: the tail is the u16 `resv` field of entry 0, 2-byte aligned inside the page
        // aligned entry array, shared with the kernel, which reads it atomically; the Release
        // store orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries_base).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    /// `bid` must have been handed to us by a CQE and not yet recycled.
    unsafe fn buffer(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if usize::from(bid) > usize::from(self.mask) || len > self.buf_size {
            return None;
        }
        let region = self.buffers.as_ref()?;
        // SAFETY: the kernel gave the buffer back in a CQE and does not write it until it is
        // recycled; bounds checked above.
        Some(unsafe { region.slice(usize::from(bid) * self.buf_size, len) })
    }

    fn leak(&mut self) {
        if let Some(r) = self.entries.take() {
            std::mem::forget(r);
        }
        if let Some(r) = self.buffers.take() {
            std::mem::forget(r);
        }
    }
}

/// io_uring backend state.
pub(crate) struct UringBackend {
    ring: IoUring,
    bufs: BufRing,
    /// Template for every multishot receive (only name/control lengths matter).
    recv_msg: Box<libc::msghdr>,
    wake_fd: RawFd,
    wake_buf: Box<u64>,
    wake_armed: bool,
    woken: bool,
    in_flight: usize,
    /// Sockets whose multishot receive ended and must be re-armed.
    rearm: Vec<u32>,
    shutting_down: bool,
}

/// Checks a kernel release string is at least `major.minor`.
fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let maj: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let min: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (maj, min) >= (major, minor)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
}

impl UringBackend {
    /// Sets up the ring; `Err` carries why io_uring cannot be used here.
    pub(crate) fn new(config: &RingConfig, waker: &Waker) -> Result<Self, String> {
        let release = kernel_release();
        // Multishot RecvMsg needs 6.0 (buffer rings 5.19, ext-arg waits 5.11).
        if !kernel_at_least(release.trim(), 6, 0) {
            return Err(format!(
                "kernel {} < 6.0 lacks multishot recvmsg",
                release.trim()
            ));
        }
        let cq = config.sq_entries.saturating_mul(4);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq)
            .build(config.sq_entries)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(config.sq_entries))
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err("io_uring lacks EXT_ARG or NODROP".into());
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("io_uring probe: {e}"))?;
        for (code, name) in [
            (opcode::SendMsg::CODE, "SENDMSG"),
            (opcode::RecvMsg::CODE, "RECVMSG"),
            (opcode::Read::CODE, "READ"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        ] {
            if !probe.is_supported(code) {
                return Err(format!("io_uring opcode {name} unsupported"));
            }
        }
        let bufs = BufRing::new(&ring, config.recv_buffers, config.recv_buffer_size)?;
        let mut recv_msg = Box::new(zeroed_msghdr());
        recv_msg.msg_namelen = RAW_ADDR_CAP as u32;
        recv_msg.msg_controllen = RECV_CONTROL_LEN;
        let mut this = Self {
            ring,
            bufs,
            recv_msg,
            wake_fd: waker.raw_fd(),
            wake_buf: Box::new(0),
            wake_armed: false,
            woken: false,
            in_flight: 0,
            rearm: Vec::with_capacity(64),
            shutting_down: false,
        };
        this.arm_wake()
            .map_err(|e| format!("arm eventfd read: {e}"))?;
        tracing::debug!(
            single_issuer = this.ring.params().is_setup_single_issuer(),
            buffers = config.recv_buffers,
            buffer_size = config.recv_buffer_size,
            "io_uring backend ready"
        );
        Ok(this)
    }

    /// Pushes one SQE, submitting first when the SQ is full.
    ///
    /// # Safety
    /// Every buffer the entry points at must stay valid and untouched until its final CQE.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> std::io::Result<()> {
        for _ in 0..4 {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::from_raw_os_error(libc::EBUSY))
    }

    fn arm_wake(&mut self) -> std::io::Result<()> {
        let entry = opcode::Read::new(
            Fd(self.wake_fd),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(KIND_WAKE << KIND_SHIFT);
        // SAFETY: wake_buf is boxed (stable) and only freed after shutdown drained this read;
        // the eventfd stays open through the ring's Waker.
        unsafe { self.push(&entry) }?;
        self.wake_armed = true;
        Ok(())
    }

    fn arm_recv(&mut self, core: &mut Core, index: u32) {
        let Some(entry) = core.sockets.by_index(index) else {
            return;
        };
        if entry.closing || entry.recv_armed || !entry.receive {
            return;
        }
        let fd = entry.fd;
        let sqe = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_msg, BGID)
            .build()
            .user_data(recv_user_data(index));
        // SAFETY: recv_msg is boxed and outlives the ring's operations; buffers come from the
        // registered buffer ring; the fd stays open while `ops` > 0.
        match unsafe { self.push(&sqe) } {
            Ok(()) => {
                if let Some(entry) = core.sockets.by_index(index) {
                    entry.recv_armed = true;
                    entry.ops += 1;
                }
            }
            Err(e) => {
                core.counters.recv_errors += 1;
                tracing::warn!(error = %e, "cannot arm multishot receive; retrying later");
                self.rearm.push(index);
            }
        }
    }

    pub(crate) fn on_register(&mut self, core: &mut Core, id: SocketId) {
        self.arm_recv(core, id.raw_index());
    }

    pub(crate) fn close(&mut self, core: &mut Core, id: SocketId) {
        let index = id.raw_index();
        let Some(entry) = core.sockets.by_index(index) else {
            return;
        };
        entry.closing = true;
        let armed = entry.recv_armed;
        let ops = entry.ops;
        if armed {
            let sqe = opcode::AsyncCancel::new(recv_user_data(index))
                .build()
                .user_data(KIND_CANCEL << KIND_SHIFT);
            // SAFETY: a cancel request references no memory.
            if unsafe { self.push(&sqe) }.is_err() {
                tracing::warn!("cannot queue cancel of a closing socket's receive");
            }
        } else if ops == 0 {
            core.sockets.remove(index);
        }
    }

    pub(crate) fn enqueue(&mut self, core: &mut Core, slot: u32) {
        let socket = core.pool.slots[slot as usize].socket;
        let gso = match core.sockets.get(socket) {
            Some(e) => e.gso,
            None => {
                core.pool.release(slot);
                return;
            }
        };
        let s = &mut core.pool.slots[slot as usize];
        if gso || s.datagrams() == 1 {
            s.prepare_single();
        } else {
            s.prepare_split();
        }
        self.issue(core, slot);
    }

    /// Pushes the prepared message(s) of a slot.
    fn issue(&mut self, core: &mut Core, slot: u32) {
        let socket = core.pool.slots[slot as usize].socket;
        let Some(entry) = core.sockets.by_index(socket.raw_index()) else {
            core.pool.release(slot);
            return;
        };
        let fd = entry.fd;
        let user_data = (KIND_SEND << KIND_SHIFT) | u64::from(slot);
        let s = &core.pool.slots[slot as usize];
        let messages: usize = if s.split_mode { s.split.len() } else { 1 };
        let mut issued = 0u32;
        let mut failed = 0u64;
        for i in 0..messages {
            let s = &core.pool.slots[slot as usize];
            let msg: *const libc::msghdr = if s.split_mode {
                &s.split[i].msg_hdr
            } else {
                &s.msg
            };
            let sqe = opcode::SendMsg::new(Fd(fd), msg)
                .build()
                .user_data(user_data);
            // SAFETY: the msghdr, iovec, address, cmsg and data live in the slot, which is not
            // reused or freed until `outstanding` drops to 0 in `on_send`; the fd stays open
            // while the socket's `ops` > 0.
            match unsafe { self.push(&sqe) } {
                Ok(()) => issued += 1,
                Err(_) => failed += 1,
            }
        }
        core.counters.send_ops += u64::from(issued);
        if failed > 0 {
            let kind = core.counters.count_send_error(libc::EBUSY, failed);
            log_send_error(core, kind, libc::EBUSY, socket);
        }
        if let Some(entry) = core.sockets.by_index(socket.raw_index()) {
            entry.ops += issued;
        }
        core.pool.slots[slot as usize].outstanding = issued;
        if issued == 0 {
            core.pool.release(slot);
        }
    }

    pub(crate) fn submit(&mut self, core: &mut Core) -> Result<(), RingError> {
        self.flush_rearms(core);
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(RingError::io("io_uring_enter (submit)", e)),
        }
    }

    pub(crate) fn wait(
        &mut self,
        core: &mut Core,
        timeout: Option<Duration>,
    ) -> Result<(), RingError> {
        self.flush_rearms(core);
        if self.woken || !self.ring.completion().is_empty() {
            return self.submit(core);
        }
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(d) => {
                let ts = Timespec::from(d);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(RingError::io("io_uring_enter (wait)", e)),
        }
    }

    fn flush_rearms(&mut self, core: &mut Core) {
        if !self.wake_armed && !self.shutting_down && self.arm_wake().is_err() {
            tracing::warn!("cannot re-arm the eventfd read; retrying later");
        }
        while let Some(index) = self.rearm.pop() {
            let before = self.rearm.len();
            self.arm_recv(core, index);
            if self.rearm.len() > before {
                // arm_recv put it back: the SQ is stuck; try again at the next call.
                break;
            }
        }
    }

    pub(crate) fn process<F: FnMut(Datagram<'_>)>(
        &mut self,
        core: &mut Core,
        budget: usize,
        on_datagram: &mut F,
    ) -> Result<Processed, RingError> {
        let mut delivered = 0usize;
        while delivered < budget {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let user_data = cqe.user_data();
            let index = (user_data & INDEX_MASK) as u32;
            match user_data >> KIND_SHIFT {
                KIND_SEND => self.on_send(core, index, cqe.result()),
                KIND_RECV => delivered += self.on_recv(core, index, &cqe, on_datagram),
                KIND_WAKE => {
                    self.in_flight -= 1;
                    self.wake_armed = false;
                    self.woken = true;
                    core.counters.wakeups += 1;
                }
                _ => self.in_flight -= 1,
            }
        }
        self.bufs.publish();
        self.flush_rearms(core);
        let woken = std::mem::take(&mut self.woken);
        Ok(Processed {
            datagrams: delivered,
            woken,
            more: !self.ring.completion().is_empty(),
        })
    }

    fn on_send(&mut self, core: &mut Core, slot: u32, result: i32) {
        self.in_flight -= 1;
        let Some(s) = core.pool.slots.get_mut(slot as usize) else {
            return;
        };
        let socket = s.socket;
        let split = s.split_mode;
        let datagrams = if split { 1 } else { s.datagrams() as u64 };
        if result >= 0 {
            core.counters.sent_datagrams += datagrams;
            core.counters.sent_bytes += result as u64;
        } else {
            let errno = -result;
            if !split && datagrams > 1 && (errno == libc::EIO || errno == libc::EINVAL) {
                s.gso_failed = true;
                if let Some(entry) = core.sockets.by_index(socket.raw_index()) {
                    if entry.gso {
                        entry.gso = false;
                        core.counters.gso_fallbacks += 1;
                        tracing::warn!(
                            socket = socket.index(),
                            error = %std::io::Error::from_raw_os_error(errno),
                            "UDP GSO rejected: switched off for this socket"
                        );
                    }
                }
            } else {
                let kind = core.counters.count_send_error(errno, datagrams);
                log_send_error(core, kind, errno, socket);
            }
        }
        let s = &mut core.pool.slots[slot as usize];
        s.outstanding = s.outstanding.saturating_sub(1);
        let finished = s.outstanding == 0;
        let resend = finished && s.gso_failed;
        let mut socket_gone = false;
        if let Some(entry) = core.sockets.by_index(socket.raw_index()) {
            entry.ops = entry.ops.saturating_sub(1);
            if entry.closing && entry.ops == 0 && !resend {
                socket_gone = true;
            }
        }
        if !finished {
            return;
        }
        if resend && !self.shutting_down && core.sockets.by_index(socket.raw_index()).is_some() {
            let s = &mut core.pool.slots[slot as usize];
            s.gso_failed = false;
            s.prepare_split();
            self.issue(core, slot);
        } else {
            core.pool.release(slot);
        }
        if socket_gone {
            if let Some(entry) = core.sockets.by_index(socket.raw_index()) {
                if entry.ops == 0 {
                    core.sockets.remove(socket.raw_index());
                }
            }
        }
    }

    fn on_recv<F: FnMut(Datagram<'_>)>(
        &mut self,
        core: &mut Core,
        index: u32,
        cqe: &cqueue::Entry,
        on_datagram: &mut F,
    ) -> usize {
        let result = cqe.result();
        let flags = cqe.flags();
        let more = cqueue::more(flags);
        let mut delivered = 0;
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            self.bufs.consumed();
        }
        if result < 0 {
            if -result == libc::ENOBUFS {
                core.counters.recv_buffer_exhausted += 1;
                self.bufs.grow();
            } else if -result != libc::ECANCELED {
                core.counters.recv_errors += 1;
                if core.log.should_log(LogKind::Receive) {
                    tracing::warn!(
                        error = %std::io::Error::from_raw_os_error(-result),
                        "udp receive failed (logged at most once a minute)"
                    );
                }
            }
        } else if let Some(bid) = bid {
            // SAFETY: the kernel handed `bid` to us in this CQE; it is recycled just below,
            // after the last use of the slice.
            let data = unsafe { self.bufs.buffer(bid, result as usize) };
            match (data, core.sockets.by_index(index)) {
                (Some(data), Some(entry)) if !entry.closing => {
                    match io_uring::types::RecvMsgOut::parse(data, &self.recv_msg) {
                        Ok(out) => {
                            let truncated = out.is_payload_truncated();
                            delivered = deliver(
                                &mut core.counters,
                                entry,
                                out.name_data(),
                                out.control_data(),
                                out.payload_data(),
                                truncated,
                                on_datagram,
                            );
                        }
                        Err(()) => core.counters.recv_malformed += 1,
                    }
                }
                (None, _) => core.counters.recv_malformed += 1,
                _ => {}
            }
        } else {
            core.counters.recv_malformed += 1;
        }
        if let Some(bid) = bid {
            self.bufs.recycle(bid);
        }
        if !more {
            self.in_flight -= 1;
            if let Some(entry) = core.sockets.by_index(index) {
                entry.recv_armed = false;
                entry.ops = entry.ops.saturating_sub(1);
                if entry.closing {
                    if entry.ops == 0 {
                        core.sockets.remove(index);
                    }
                } else if matches!(
                    -result,
                    libc::EBADF
                        | libc::ENOTSOCK
                        | libc::EINVAL
                        | libc::EOPNOTSUPP
                        | libc::ECANCELED
                ) {
                    tracing::error!(
                        socket = index,
                        error = %std::io::Error::from_raw_os_error(-result),
                        "multishot receive ended for good on this socket"
                    );
                } else if !self.shutting_down {
                    core.counters.recv_rearms += 1;
                    self.rearm.push(index);
                }
            }
        }
        delivered
    }

    /// Cancels and drains every operation. Returns false when some did not finish in time (the
    /// caller must then leak the memory they use).
    pub(crate) fn shutdown(&mut self, core: &mut Core) -> bool {
        self.shutting_down = true;
        self.rearm.clear();
        let mut targets: Vec<u64> = core
            .sockets
            .iter()
            .filter(|e| e.recv_armed)
            .map(|e| recv_user_data(e.id.raw_index()))
            .collect();
        if self.wake_armed {
            targets.push(KIND_WAKE << KIND_SHIFT);
        }
        for target in targets {
            let sqe = opcode::AsyncCancel::new(target)
                .build()
                .user_data(KIND_CANCEL << KIND_SHIFT);
            // SAFETY: a cancel request references no memory.
            let _ = unsafe { self.push(&sqe) };
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.in_flight > 0 && Instant::now() < deadline {
            let ts = Timespec::from(Duration::from_millis(20));
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                let user_data = cqe.user_data();
                let index = (user_data & INDEX_MASK) as u32;
                match user_data >> KIND_SHIFT {
                    KIND_SEND => self.on_send(core, index, cqe.result()),
                    KIND_RECV => {
                        if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                            self.bufs.consumed();
                            self.bufs.recycle(bid);
                        }
                        if !cqueue::more(cqe.flags()) {
                            self.in_flight -= 1;
                            if let Some(e) = core.sockets.by_index(index) {
                                e.recv_armed = false;
                                e.ops = e.ops.saturating_sub(1);
                            }
                        }
                    }
                    KIND_WAKE => {
                        self.in_flight -= 1;
                        self.wake_armed = false;
                    }
                    _ => self.in_flight -= 1,
                }
            }
            self.bufs.publish();
        }
        if self.in_flight > 0 {
            tracing::error!(
                in_flight = self.in_flight,
                "io_uring operations did not finish on drop; leaking their buffers"
            );
            self.bufs.leak();
            std::mem::forget(std::mem::replace(
                &mut self.recv_msg,
                Box::new(zeroed_msghdr()),
            ));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            return false;
        }
        if self.bufs.registered {
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
            self.bufs.registered = false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_version_compare() {
        assert!(kernel_at_least("6.18.44", 6, 0));
        assert!(kernel_at_least("6.0.0-rc1", 6, 0));
        assert!(!kernel_at_least("5.19.3", 6, 0));
        assert!(!kernel_at_least("", 6, 0));
    }
}
