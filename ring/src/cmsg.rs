//! Control messages: the `UDP_SEGMENT` cmsg written on GSO sends, and the `UDP_GRO` segment size
//! and `SO_RXQ_OVFL` drop counter read on receive. Pure byte handling, no unsafe code.

/// `SOL_UDP` option: GSO segment size (a cmsg on send, a sockopt for probing).
pub(crate) const UDP_SEGMENT: i32 = 103;
/// `SOL_UDP` option: enable GRO on receive; also the cmsg type carrying the segment size.
pub(crate) const UDP_GRO: i32 = 104;
/// `SOL_UDP` level.
pub(crate) const SOL_UDP: i32 = 17;
/// `SOL_SOCKET` option/cmsg: the socket's cumulative receive-queue drop counter.
pub(crate) const SO_RXQ_OVFL: i32 = 40;

/// Size of `struct cmsghdr` on 64-bit Linux (`size_t len; int level; int type`).
const HDR: usize = std::mem::size_of::<usize>() + 8;

/// `CMSG_ALIGN`.
const fn align(len: usize) -> usize {
    (len + std::mem::size_of::<usize>() - 1) & !(std::mem::size_of::<usize>() - 1)
}

/// `CMSG_SPACE(data_len)`.
pub(crate) const fn space(data_len: usize) -> usize {
    align(HDR) + align(data_len)
}

/// Control buffer capacity used for receives (GRO int + RXQ_OVFL u32 fit with room to spare).
pub(crate) const RECV_CONTROL_LEN: usize = 64;

/// An aligned control-message buffer that `msg_control` may point at.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct CmsgBuf(pub(crate) [u8; RECV_CONTROL_LEN]);

impl CmsgBuf {
    pub(crate) const fn new() -> Self {
        Self([0; RECV_CONTROL_LEN])
    }

    /// Writes one `UDP_SEGMENT` cmsg carrying `segment_size`; returns the `msg_controllen`.
    pub(crate) fn write_udp_segment(&mut self, segment_size: u16) -> usize {
        let len = align(HDR) + 2; // CMSG_LEN(sizeof(u16))
        self.0 = [0; RECV_CONTROL_LEN];
        self.0[0..8].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&SOL_UDP.to_ne_bytes());
        self.0[12..16].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
        self.0[16..18].copy_from_slice(&segment_size.to_ne_bytes());
        space(2)
    }
}

/// What the receive path needs from a message's control data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvControl {
    /// GRO segment size ("stride") when the kernel coalesced datagrams.
    pub(crate) gro_segment: Option<usize>,
    /// The socket's cumulative count of datagrams dropped for lack of receive buffer.
    pub(crate) queue_drops: Option<u32>,
}

/// Parses control data; unknown or malformed cmsgs are skipped.
pub(crate) fn parse_recv_control(mut control: &[u8]) -> RecvControl {
    let mut out = RecvControl::default();
    while control.len() >= HDR {
        let Ok(len_bytes) = control[0..8].try_into() else {
            break;
        };
        let cmsg_len = usize::from_ne_bytes(len_bytes);
        if cmsg_len < HDR || cmsg_len > control.len() {
            break;
        }
        let level = i32::from_ne_bytes([control[8], control[9], control[10], control[11]]);
        let kind = i32::from_ne_bytes([control[12], control[13], control[14], control[15]]);
        let data = &control[align(HDR)..cmsg_len];
        if level == SOL_UDP && kind == UDP_GRO && data.len() >= 4 {
            let size = i32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
            if size > 0 {
                out.gro_segment = Some(size as usize);
            }
        } else if level == libc::SOL_SOCKET && kind == SO_RXQ_OVFL && data.len() >= 4 {
            out.queue_drops = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
        }
        let next = align(cmsg_len);
        if next >= control.len() {
            break;
        }
        control = &control[next..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let len = align(HDR) + data.len();
        let mut v = vec![0u8; align(len)];
        v[0..8].copy_from_slice(&len.to_ne_bytes());
        v[8..12].copy_from_slice(&level.to_ne_bytes());
        v[12..16].copy_from_slice(&kind.to_ne_bytes());
        v[16..16 + data.len()].copy_from_slice(data);
        v
    }

    #[test]
    fn parses_gro_and_overflow() {
        let mut c = cmsg(SOL_UDP, UDP_GRO, &1280i32.to_ne_bytes());
        c.extend(cmsg(libc::SOL_SOCKET, SO_RXQ_OVFL, &7u32.to_ne_bytes()));
        let parsed = parse_recv_control(&c);
        assert_eq!(parsed.gro_segment, Some(1280));
        assert_eq!(parsed.queue_drops, Some(7));
    }

    #[test]
    fn malformed_control_is_ignored() {
        assert_eq!(parse_recv_control(&[]), RecvControl::default());
        assert_eq!(parse_recv_control(&[0xff; 40]), RecvControl::default());
        let mut c = cmsg(SOL_UDP, UDP_GRO, &1280i32.to_ne_bytes());
        c[0..8].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(parse_recv_control(&c), RecvControl::default());
    }

    #[test]
    fn segment_cmsg_layout() {
        let mut b = CmsgBuf::new();
        let len = b.write_udp_segment(1280);
        assert_eq!(len, 24);
        assert_eq!(usize::from_ne_bytes(b.0[0..8].try_into().unwrap()), 18);
        assert_eq!(u16::from_ne_bytes([b.0[16], b.0[17]]), 1280);
    }
}
