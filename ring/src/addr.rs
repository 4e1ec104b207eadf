//! Socket addresses in their raw kernel form (`sockaddr_in`/`sockaddr_in6`), encoded and parsed
//! without unsafe code.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Room for any socket address the data plane uses (`sockaddr_in6` is 28 bytes).
pub(crate) const RAW_ADDR_CAP: usize = 32;

/// A `sockaddr_in`/`sockaddr_in6` in kernel layout, 8-byte aligned so `msg_name` may point at it.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct RawAddr {
    pub(crate) bytes: [u8; RAW_ADDR_CAP],
    pub(crate) len: u32,
}

impl RawAddr {
    /// An empty address with the full capacity as its length (ready for the kernel to fill).
    pub(crate) const fn empty() -> Self {
        Self {
            bytes: [0; RAW_ADDR_CAP],
            len: RAW_ADDR_CAP as u32,
        }
    }

    /// Encodes a std address.
    pub(crate) fn from_std(addr: &SocketAddr) -> Self {
        let mut raw = Self::empty();
        match addr {
            SocketAddr::V4(v4) => {
                raw.bytes[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                raw.bytes[2..4].copy_from_slice(&v4.port().to_be_bytes());
                raw.bytes[4..8].copy_from_slice(&v4.ip().octets());
                raw.len = 16;
            }
            SocketAddr::V6(v6) => {
                raw.bytes[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                raw.bytes[2..4].copy_from_slice(&v6.port().to_be_bytes());
                raw.bytes[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
                raw.bytes[8..24].copy_from_slice(&v6.ip().octets());
                raw.bytes[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
                raw.len = 28;
            }
        }
        raw
    }
}

/// Parses a kernel `sockaddr` (as written into `msg_name`); `None` for an unknown family or a
/// short buffer.
pub(crate) fn parse_sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
    if family == libc::AF_INET as u16 {
        let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if family == libc::AF_INET6 as u16 {
        let flow = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
        let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
        let scope = u32::from_ne_bytes(bytes.get(24..28)?.try_into().ok()?);
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            flow,
            scope,
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_v4_and_v6() {
        for addr in ["127.0.0.7:4242", "[::1]:9", "[fe80::1%3]:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let raw = RawAddr::from_std(&addr);
            assert_eq!(parse_sockaddr(&raw.bytes[..raw.len as usize]), Some(addr));
        }
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert_eq!(parse_sockaddr(&[]), None);
        assert_eq!(parse_sockaddr(&[2, 0, 0]), None);
        let mut unix = [0u8; 16];
        unix[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(parse_sockaddr(&unix), None);
    }
}
