//! The ring's socket table: dense indices with generations, so stale handles are refused.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use crate::BoundSocket;

/// Handle of a socket registered with a ring. `index()` is dense (reused after close, with a new
/// generation), so callers can keep per-socket state in a `Vec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    index: u32,
    generation: u32,
}

impl SocketId {
    pub(crate) const NONE: SocketId = SocketId {
        index: u32::MAX,
        generation: 0,
    };

    /// Dense slot number of this socket in its ring.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    pub(crate) fn raw_index(&self) -> u32 {
        self.index
    }
}

/// One registered socket.
pub(crate) struct SocketEntry {
    pub(crate) id: SocketId,
    /// Owns the descriptor (closed when the entry is removed).
    pub(crate) _owner: UdpSocket,
    pub(crate) fd: RawFd,
    pub(crate) local: SocketAddr,
    pub(crate) gso: bool,
    pub(crate) receive: bool,
    pub(crate) closing: bool,
    /// io_uring operations in flight that use the fd.
    pub(crate) ops: u32,
    pub(crate) recv_armed: bool,
    pub(crate) queue_drops_seen: u32,
}

struct Slot {
    generation: u32,
    entry: Option<SocketEntry>,
}

/// Dense socket table.
#[derive(Default)]
pub(crate) struct SocketTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl SocketTable {
    pub(crate) fn insert(&mut self, bound: BoundSocket) -> SocketId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let id = SocketId {
            index,
            generation: slot.generation,
        };
        let fd = bound.socket.as_raw_fd();
        slot.entry = Some(SocketEntry {
            id,
            _owner: bound.socket,
            fd,
            local: bound.local,
            gso: bound.gso,
            receive: bound.receive,
            closing: false,
            ops: 0,
            recv_armed: false,
            queue_drops_seen: 0,
        });
        id
    }

    /// A live (not closing) socket by handle.
    pub(crate) fn get(&self, id: SocketId) -> Option<&SocketEntry> {
        let slot = self.slots.get(id.index as usize)?;
        let entry = slot.entry.as_ref()?;
        (entry.id == id && !entry.closing).then_some(entry)
    }

    /// Any registered socket (closing or not) by index.
    pub(crate) fn by_index(&mut self, index: u32) -> Option<&mut SocketEntry> {
        self.slots.get_mut(index as usize)?.entry.as_mut()
    }

    /// Removes (and closes) the socket at `index`.
    pub(crate) fn remove(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(index as usize) {
            if slot.entry.take().is_some() {
                self.free.push(index);
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &SocketEntry> {
        self.slots.iter().filter_map(|s| s.entry.as_ref())
    }
}
