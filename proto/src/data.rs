//! UDP data packets: a fixed header, the codec payload (opaque here) and a truncated keyed BLAKE3 MAC.
//!
//! # Layout (little-endian)
//! ```text
//! 0      1      2        4            8            12       16          16+P       32+P
//! | ver  | flags| 0 (u16)| session u32| segment u32| seq u32| payload P | MAC (16) |
//! ```
//! `flags` bit 0 is the origin (0 = server, 1 = peer); the other bits and the reserved u16 must be 0.
//! `seq` counts the packets of one sender→receiver stream (the receiver derives loss from gaps).
//! The MAC is `blake3::keyed_hash(session_key, header ‖ payload)` truncated to 16 bytes, compared in
//! constant time. A receiver calls [`DataHeader::peek`] to find the session (hence the key), then
//! [`DataPacket::open`].

use thiserror::Error;

use crate::frame::{SessionId, SessionKey, PROTOCOL_VERSION};

/// Bytes of the data-packet header.
pub const DATA_HEADER_LEN: usize = 16;
/// Bytes of the truncated MAC at the end of every data packet.
pub const MAC_LEN: usize = 16;
/// Header plus MAC: what a data packet adds to the codec payload.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + MAC_LEN;

const FLAG_FROM_PEER: u8 = 1;

/// Who sent a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The server's shard.
    Server,
    /// A cooperating client.
    Peer,
}

/// The parsed header of a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataHeader {
    /// Who sent it.
    pub origin: Origin,
    /// Session the packet belongs to.
    pub session: SessionId,
    /// Segment index within the file.
    pub segment: u32,
    /// Sequence number within the sender→receiver stream.
    pub seq: u32,
}

/// Why a datagram was rejected; receivers count drops per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum DataError {
    /// Too short, or reserved bits/flags set.
    #[error("malformed data packet")]
    Malformed,
    /// Protocol version differs from [`PROTOCOL_VERSION`].
    #[error("data packet version {0} not supported")]
    WrongVersion(u8),
    /// MAC does not verify under the session key (forged, corrupted, or another session's key).
    #[error("data packet MAC mismatch")]
    BadMac,
    /// The output buffer cannot hold the sealed packet.
    #[error("buffer of {have} bytes too small for a {need}-byte packet")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

impl DataError {
    /// Short stable name for counters/logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DataError::Malformed => "malformed",
            DataError::WrongVersion(_) => "wrong_version",
            DataError::BadMac => "bad_mac",
            DataError::BufferTooSmall { .. } => "buffer_too_small",
        }
    }
}

impl DataHeader {
    /// Writes the 16 header bytes.
    pub fn write(&self, out: &mut [u8; DATA_HEADER_LEN]) {
        out[0] = PROTOCOL_VERSION;
        out[1] = match self.origin {
            Origin::Server => 0,
            Origin::Peer => FLAG_FROM_PEER,
        };
        out[2..4].copy_from_slice(&[0, 0]);
        out[4..8].copy_from_slice(&self.session.0.to_le_bytes());
        out[8..12].copy_from_slice(&self.segment.to_le_bytes());
        out[12..16].copy_from_slice(&self.seq.to_le_bytes());
    }

    /// Parses the header of a whole datagram without checking the MAC (to pick the session key).
    /// Fails with `Malformed` when the datagram cannot even hold header and MAC.
    pub fn peek(packet: &[u8]) -> Result<DataHeader, DataError> {
        if packet.len() < DATA_OVERHEAD {
            return Err(DataError::Malformed);
        }
        let h = packet.get(..DATA_HEADER_LEN).ok_or(DataError::Malformed)?;
        if h[0] != PROTOCOL_VERSION {
            return Err(DataError::WrongVersion(h[0]));
        }
        let origin = match h[1] {
            0 => Origin::Server,
            FLAG_FROM_PEER => Origin::Peer,
            _ => return Err(DataError::Malformed),
        };
        if h[2] != 0 || h[3] != 0 {
            return Err(DataError::Malformed);
        }
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Ok(DataHeader {
            origin,
            session: SessionId(word(4)),
            segment: word(8),
            seq: word(12),
        })
    }
}

/// Sealing and opening of data packets.
pub struct DataPacket;

impl DataPacket {
    /// Size of a sealed packet with a `payload_len`-byte payload.
    pub const fn sealed_len(payload_len: usize) -> usize {
        DATA_OVERHEAD + payload_len
    }

    /// Appends `header ‖ payload ‖ MAC` to `out`.
    pub fn seal(key: &SessionKey, header: &DataHeader, payload: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut h = [0u8; DATA_HEADER_LEN];
        header.write(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        let mac = mac(key, &out[start..]);
        out.extend_from_slice(&mac);
    }

    /// Seals in place without copying the payload: the caller has written the payload at
    /// `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + payload_len]`; this writes the header before it and
    /// the MAC after it, and returns the packet length.
    pub fn seal_in_place(
        key: &SessionKey,
        header: &DataHeader,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, DataError> {
        let need = Self::sealed_len(payload_len);
        if buf.len() < need {
            return Err(DataError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let mut h = [0u8; DATA_HEADER_LEN];
        header.write(&mut h);
        buf[..DATA_HEADER_LEN].copy_from_slice(&h);
        let body_end = DATA_HEADER_LEN + payload_len;
        let mac = mac(key, &buf[..body_end]);
        buf[body_end..need].copy_from_slice(&mac);
        Ok(need)
    }

    /// Checks version, header and MAC of a received datagram and returns the header and the payload.
    pub fn open<'a>(
        key: &SessionKey,
        packet: &'a [u8],
    ) -> Result<(DataHeader, &'a [u8]), DataError> {
        let header = DataHeader::peek(packet)?;
        let body_end = packet.len() - MAC_LEN;
        let expected = mac(key, &packet[..body_end]);
        if !constant_time_eq(&expected, &packet[body_end..]) {
            return Err(DataError::BadMac);
        }
        Ok((header, &packet[DATA_HEADER_LEN..body_end]))
    }
}

fn mac(key: &SessionKey, bytes: &[u8]) -> [u8; MAC_LEN] {
    let full = blake3::keyed_hash(&key.0, bytes);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
    out
}

/// Compares without an early exit, so timing does not reveal the first differing byte.
fn constant_time_eq(a: &[u8; MAC_LEN], b: &[u8]) -> bool {
    if b.len() != MAC_LEN {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SessionKey {
        SessionKey([b; 32])
    }

    fn hdr() -> DataHeader {
        DataHeader {
            origin: Origin::Peer,
            session: SessionId(7),
            segment: 3,
            seq: 99,
        }
    }

    #[test]
    fn seal_open_round_trip_and_in_place_agree() {
        let mut a = Vec::new();
        DataPacket::seal(&key(1), &hdr(), b"payload bytes", &mut a);
        assert_eq!(a.len(), DataPacket::sealed_len(13));
        let (h, p) = DataPacket::open(&key(1), &a).unwrap();
        assert_eq!(h, hdr());
        assert_eq!(p, b"payload bytes");

        let mut b = vec![0u8; 100];
        b[DATA_HEADER_LEN..DATA_HEADER_LEN + 13].copy_from_slice(b"payload bytes");
        let n = DataPacket::seal_in_place(&key(1), &hdr(), &mut b, 13).unwrap();
        assert_eq!(&b[..n], &a[..]);
        assert_eq!(
            DataPacket::seal_in_place(&key(1), &hdr(), &mut [0u8; 20], 13),
            Err(DataError::BufferTooSmall { need: 45, have: 20 })
        );
    }

    #[test]
    fn rejections_are_typed() {
        let mut pkt = Vec::new();
        DataPacket::seal(&key(1), &hdr(), &[5; 40], &mut pkt);
        assert_eq!(DataPacket::open(&key(2), &pkt), Err(DataError::BadMac));
        for i in 0..pkt.len() {
            let mut bad = pkt.clone();
            bad[i] ^= 0x10;
            let err = DataPacket::open(&key(1), &bad).unwrap_err();
            let expected = match i {
                0 => DataError::WrongVersion(PROTOCOL_VERSION ^ 0x10),
                1..=3 => DataError::Malformed,
                _ => DataError::BadMac,
            };
            assert_eq!(err, expected, "flip at byte {i}");
        }
        assert_eq!(
            DataPacket::open(&key(1), &pkt[..DATA_OVERHEAD - 1]),
            Err(DataError::Malformed)
        );
        assert_eq!(DataPacket::open(&key(1), &[]), Err(DataError::Malformed));
        // An empty payload is valid.
        let mut empty = Vec::new();
        DataPacket::seal(&key(1), &hdr(), &[], &mut empty);
        assert_eq!(DataPacket::open(&key(1), &empty).unwrap().1, &[] as &[u8]);
    }
}
