//! The syscall backend: `sendmsg` with a `UDP_SEGMENT` cmsg (or `sendmmsg` datagram by datagram
//! once GSO is off), `recvmmsg` with GRO, and `ppoll` over the sockets and the wake eventfd.
//! Sends queued with `enqueue` go out at the next `submit`/`wait` (or when the pool runs dry).

use std::time::Duration;

use crate::addr::{RawAddr, RAW_ADDR_CAP};
use crate::cmsg::{CmsgBuf, RECV_CONTROL_LEN};
use crate::counters::LogKind;
use crate::mem::Region;
use crate::ring::{deliver, log_send_error, Core, Datagram, Processed};
use crate::send::zeroed_msghdr;
use crate::{RingConfig, RingError, SocketId, Waker};

pub(crate) struct SyscallBackend {
    /// Receive buffers (`batch` x `buf_size`).
    region: Region,
    buf_size: usize,
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<RawAddr>,
    controls: Vec<CmsgBuf>,
    /// pollfd 0 is the wake eventfd, then one per receiving socket.
    pollfds: Vec<libc::pollfd>,
    poll_sockets: Vec<u32>,
    poll_dirty: bool,
    /// Sockets known to have data, in service order.
    ready: Vec<u32>,
    pending: Vec<u32>,
    woken: bool,
    wake_fd: i32,
}

impl SyscallBackend {
    pub(crate) fn new(config: &RingConfig, waker: &Waker) -> Result<Self, RingError> {
        let batch = config.recv_batch;
        let buf_size = config.recv_buffer_size;
        let region =
            Region::new(batch * buf_size).map_err(|e| RingError::io("mmap receive buffers", e))?;
        let mut this = Self {
            region,
            buf_size,
            msgs: Vec::with_capacity(batch),
            iovs: Vec::with_capacity(batch),
            names: vec![RawAddr::empty(); batch],
            controls: vec![CmsgBuf::new(); batch],
            pollfds: Vec::new(),
            poll_sockets: Vec::new(),
            poll_dirty: true,
            ready: Vec::new(),
            pending: Vec::with_capacity(config.send_buffers),
            woken: false,
            wake_fd: waker.raw_fd(),
        };
        for i in 0..batch {
            this.iovs.push(libc::iovec {
                // SAFETY: i * buf_size < batch * buf_size = region length.
                iov_base: unsafe { this.region.as_ptr().add(i * buf_size) }.cast(),
                iov_len: buf_size,
            });
        }
        for i in 0..batch {
            let mut msg = zeroed_msghdr();
            msg.msg_name = this.names[i].bytes.as_mut_ptr().cast();
            msg.msg_iov = &mut this.iovs[i];
            msg.msg_iovlen = 1;
            msg.msg_control = this.controls[i].0.as_mut_ptr().cast();
            this.msgs.push(libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            });
        }
        debug_assert!(this.region.len() >= batch * buf_size);
        Ok(this)
    }

    pub(crate) fn on_register(&mut self) {
        self.poll_dirty = true;
    }

    pub(crate) fn close(&mut self, core: &mut Core, id: SocketId) {
        self.flush(core);
        self.ready.retain(|&i| i != id.raw_index());
        core.sockets.remove(id.raw_index());
        self.poll_dirty = true;
    }

    pub(crate) fn enqueue(&mut self, slot: u32) {
        self.pending.push(slot);
    }

    /// Sends every queued buffer and returns it to the pool.
    pub(crate) fn flush(&mut self, core: &mut Core) {
        for i in 0..self.pending.len() {
            let slot = self.pending[i];
            send_slot(core, slot);
            core.pool.release(slot);
        }
        self.pending.clear();
    }

    fn rebuild_pollfds(&mut self, core: &Core) {
        self.pollfds.clear();
        self.poll_sockets.clear();
        self.pollfds.push(libc::pollfd {
            fd: self.wake_fd,
            events: libc::POLLIN,
            revents: 0,
        });
        for entry in core.sockets.iter().filter(|e| e.receive && !e.closing) {
            self.pollfds.push(libc::pollfd {
                fd: entry.fd,
                events: libc::POLLIN,
                revents: 0,
            });
            self.poll_sockets.push(entry.id.raw_index());
        }
        self.poll_dirty = false;
    }

    /// `ppoll` with a timeout; records ready sockets and wake-ups.
    fn poll(&mut self, core: &mut Core, timeout: Option<Duration>) -> Result<(), RingError> {
        if self.poll_dirty {
            self.rebuild_pollfds(core);
        }
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: pollfds is a live array of its length; ts_ptr is null or points at a live
        // timespec; no signal mask.
        let rc = unsafe {
            libc::ppoll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(RingError::io("ppoll", e));
        }
        if rc == 0 {
            return Ok(());
        }
        for (i, pfd) in self.pollfds.iter_mut().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            if i == 0 {
                crate::waker::drain_eventfd(self.wake_fd);
                self.woken = true;
                core.counters.wakeups += 1;
            } else {
                let index = self.poll_sockets[i - 1];
                if !self.ready.contains(&index) {
                    self.ready.push(index);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn wait(
        &mut self,
        core: &mut Core,
        timeout: Option<Duration>,
    ) -> Result<(), RingError> {
        self.flush(core);
        if self.woken {
            return Ok(());
        }
        // With sockets still readable, only refresh readiness (so a wake-up is never starved by
        // a socket that stays busy).
        let timeout = if self.ready.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        self.poll(core, timeout)
    }

    pub(crate) fn process<F: FnMut(Datagram<'_>)>(
        &mut self,
        core: &mut Core,
        budget: usize,
        on_datagram: &mut F,
    ) -> Result<Processed, RingError> {
        if self.ready.is_empty() && !self.woken {
            self.poll(core, Some(Duration::ZERO))?;
        }
        let mut delivered = 0;
        let mut cursor = 0;
        while delivered < budget && !self.ready.is_empty() {
            if cursor >= self.ready.len() {
                cursor = 0;
            }
            let index = self.ready[cursor];
            match self.recv_batch(core, index, on_datagram) {
                Some((n, full)) => {
                    delivered += n;
                    if full {
                        cursor += 1; // still readable: come back after the others
                    } else {
                        self.ready.remove(cursor);
                    }
                }
                None => {
                    self.ready.remove(cursor);
                }
            }
        }
        let woken = std::mem::take(&mut self.woken);
        Ok(Processed {
            datagrams: delivered,
            woken,
            more: !self.ready.is_empty(),
        })
    }

    /// One `recvmmsg` on a socket: (datagrams delivered, whether the batch was full), or `None`
    /// when the socket had nothing (or is gone).
    fn recv_batch<F: FnMut(Datagram<'_>)>(
        &mut self,
        core: &mut Core,
        index: u32,
        on_datagram: &mut F,
    ) -> Option<(usize, bool)> {
        let entry = core.sockets.by_index(index)?;
        if entry.closing {
            return None;
        }
        let fd = entry.fd;
        let batch = self.msgs.len();
        for m in &mut self.msgs {
            m.msg_hdr.msg_namelen = RAW_ADDR_CAP as u32;
            m.msg_hdr.msg_controllen = RECV_CONTROL_LEN;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: msgs holds `batch` initialised mmsghdrs whose name, iovec and control pointers
        // target live buffers owned by self (never reallocated); no timeout.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                batch as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                core.counters.recv_errors += 1;
                if core.log.should_log(LogKind::Receive) {
                    tracing::warn!(error = %e, "udp receive failed (logged at most once a minute)");
                }
            }
            return None;
        }
        let got = rc as usize;
        let mut delivered = 0;
        for i in 0..got {
            let m = &self.msgs[i];
            let len = (m.msg_len as usize).min(self.buf_size);
            let name_len = (m.msg_hdr.msg_namelen as usize).min(RAW_ADDR_CAP);
            let control_len = m.msg_hdr.msg_controllen.min(RECV_CONTROL_LEN);
            let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // SAFETY: the kernel finished writing this buffer when recvmmsg returned and nothing
            // writes it until the next recvmmsg, after this slice is gone.
            let payload = unsafe { self.region.slice(i * self.buf_size, len) };
            let entry = core.sockets.by_index(index)?;
            delivered += deliver(
                &mut core.counters,
                entry,
                &self.names[i].bytes[..name_len],
                &self.controls[i].0[..control_len],
                payload,
                truncated,
                on_datagram,
            );
        }
        Some((delivered, got == batch))
    }
}

/// Sends one buffer: one `sendmsg` (GSO) or `sendmmsg` datagram by datagram.
fn send_slot(core: &mut Core, slot: u32) {
    let socket = core.pool.slots[slot as usize].socket;
    let Some(entry) = core.sockets.by_index(socket.raw_index()) else {
        return;
    };
    let fd = entry.fd;
    let gso = entry.gso;
    let s = &mut core.pool.slots[slot as usize];
    let datagrams = s.datagrams() as u64;
    if datagrams == 1 || gso {
        s.prepare_single();
        // SAFETY: the slot's msghdr points at its own live address, iovec, cmsg and data.
        let rc = unsafe { libc::sendmsg(fd, &s.msg, 0) };
        core.counters.send_ops += 1;
        if rc >= 0 {
            core.counters.sent_datagrams += datagrams;
            core.counters.sent_bytes += rc as u64;
            return;
        }
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if datagrams > 1 && (errno == libc::EIO || errno == libc::EINVAL) {
            if let Some(entry) = core.sockets.by_index(socket.raw_index()) {
                entry.gso = false;
            }
            core.counters.gso_fallbacks += 1;
            tracing::warn!(
                socket = socket.index(),
                error = %std::io::Error::from_raw_os_error(errno),
                "UDP GSO rejected: switched off for this socket"
            );
        } else {
            let kind = core.counters.count_send_error(errno, datagrams);
            log_send_error(core, kind, errno, socket);
            return;
        }
    }
    send_split(core, fd, slot, socket);
}

fn send_split(core: &mut Core, fd: i32, slot: u32, socket: SocketId) {
    let s = &mut core.pool.slots[slot as usize];
    s.prepare_split();
    let n = s.split.len();
    let mut offset = 0;
    while offset < n {
        let s = &mut core.pool.slots[slot as usize];
        // SAFETY: split[offset..n] are initialised mmsghdrs pointing into the slot's live
        // buffers (see prepare_split).
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                s.split.as_mut_ptr().add(offset),
                (n - offset) as libc::c_uint,
                0,
            )
        };
        core.counters.send_ops += 1;
        if rc > 0 {
            let sent = rc as usize;
            let s = &core.pool.slots[slot as usize];
            let bytes: u64 = s.split[offset..offset + sent]
                .iter()
                .map(|m| u64::from(m.msg_len))
                .sum();
            core.counters.sent_datagrams += sent as u64;
            core.counters.sent_bytes += bytes;
            offset += sent;
        } else {
            // The first remaining datagram failed: count it and go on with the rest.
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            let kind = core.counters.count_send_error(errno, 1);
            log_send_error(core, kind, errno, socket);
            offset += 1;
        }
    }
}
