//! UDP data packets: a fixed header, the codec payload (opaque here) and a 16-byte MAC.
//!
//! # Layout (little-endian)
//! ```text
//! 0      1      2        4            8            12       16          16+P       32+P
//! | ver  | flags| 0 (u16)| session u32| segment u32| seq u32| payload P | MAC (16) |
//! ```
//! `ver` is [`DATA_VERSION`] (the data plane's own version, separate from the control frames').
//! `flags` bit 0 is the origin (0 = server, 1 = peer); the other bits and the reserved u16 must be 0.
//! `seq` counts the packets of one sender→receiver stream (the receiver derives loss from gaps).
//! A receiver calls [`DataHeader::peek`] to find the session (hence the key), then
//! [`DataPacket::open`].
//!
//! # MAC (version 2)
//! The MAC authenticates `header ‖ payload` under the session key and needs no nonce: the server and
//! every cooperating peer seal under the same [`SessionKey`] with colliding sequence numbers. It is a
//! universal hash then a PRF:
//!
//! 1. Subkeys: 32 bytes of BLAKE3 in key-derivation mode over the session key (context
//!    [`MAC_KDF_CONTEXT`]): a POLYVAL key `H` (16 bytes), then an AES-128 key `K`.
//! 2. Hash: `Y = POLYVAL_H(M ‖ 0* ‖ le64(8 n) ‖ 0^64)` (RFC 8452) over the message `M` (`n` bytes)
//!    zero-padded to whole 16-byte blocks, then one length block.
//! 3. Tag: `AES-128_K(Y)`, all 16 bytes, compared in constant time.
//!
//! POLYVAL with the length block is an almost-universal hash: for `M ≠ M'` of any lengths
//! `Pr[Y = Y'] <= (l + 1) / 2^128` with `l` the message blocks (84 for a 1.3 KB packet), and AES-128
//! is a PRF of `Y`: the classic hash-then-PRF MAC (forgery advantage about `q^2 (l + 1) / 2^128` after
//! `q` packets, plus AES's PRF advantage). The `polyval` crate's CLMUL backend multiplies four blocks
//! per reduction; on 1.3 KB packets the MAC is 3-5x cheaper than keyed BLAKE3
//! (`benches/data_packet.rs`).
//!
//! Expanding the subkeys costs about one BLAKE3 compression plus the key schedules, so hot paths hold
//! a [`DataKey`]; functions that take a [`SessionKey`] expand it through a small per-thread cache.

use std::cell::RefCell;

use aes::cipher::{BlockEncrypt, KeyInit as _};
use aes::Aes128;
use polyval::universal_hash::UniversalHash;
use polyval::Polyval;
use thiserror::Error;

use crate::frame::{SessionId, SessionKey};

/// Version byte of data packets: 2 = the POLYVAL/AES-128 MAC (1 was keyed BLAKE3).
pub const DATA_VERSION: u8 = 2;
/// BLAKE3 key-derivation context of the MAC subkeys.
pub const MAC_KDF_CONTEXT: &str = "ccfd 2026-11 data packet MAC v2: POLYVAL then AES-128";

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
    /// Version byte differs from [`DATA_VERSION`].
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
        out[0] = DATA_VERSION;
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
        if h[0] != DATA_VERSION {
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

    /// Appends `header ‖ payload ‖ MAC` to `out`. `key` is a [`SessionKey`] or, on hot paths, its
    /// [`DataKey`].
    pub fn seal<K: MacKey + ?Sized>(
        key: &K,
        header: &DataHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
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
    pub fn seal_in_place<K: MacKey + ?Sized>(
        key: &K,
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
    pub fn open<'a, K: MacKey + ?Sized>(
        key: &K,
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

fn mac<K: MacKey + ?Sized>(key: &K, bytes: &[u8]) -> [u8; MAC_LEN] {
    key.with_data_key(|key| key.tag(bytes))
}

/// Expanded keys the per-thread cache keeps for [`SessionKey`] callers (a server shard seals for a few
/// sessions at a time).
const KEY_CACHE: usize = 16;

/// A session's MAC subkeys, expanded once from its [`SessionKey`] (see the module doc). Cheap to clone
/// (about 300 bytes); `Debug` does not print it.
#[derive(Clone)]
pub struct DataKey {
    hash: Polyval,
    prf: Aes128,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// Expands `key` into the MAC subkeys.
    pub fn new(key: &SessionKey) -> DataKey {
        let mut okm = [0u8; 32];
        let mut kdf = blake3::Hasher::new_derive_key(MAC_KDF_CONTEXT);
        kdf.update(&key.0);
        kdf.finalize_xof().fill(&mut okm);
        let mut h = [0u8; 16];
        h.copy_from_slice(&okm[..16]);
        let hash = Polyval::new(&h.into());
        let prf = Aes128::new(aes::cipher::Key::<Aes128>::from_slice(&okm[16..]));
        okm.fill(0);
        h.fill(0);
        std::hint::black_box((&okm, &h));
        DataKey { hash, prf }
    }

    /// The 16-byte MAC of `bytes` (the whole `header ‖ payload`).
    pub fn tag(&self, bytes: &[u8]) -> [u8; MAC_LEN] {
        let mut hash = self.hash.clone();
        hash.update_padded(bytes);
        let mut length = [0u8; 16];
        length[..8].copy_from_slice(&(bytes.len() as u64).wrapping_mul(8).to_le_bytes());
        hash.update(&[length.into()]);
        let y: [u8; 16] = hash.finalize().into();
        let mut block = aes::Block::from(y);
        self.prf.encrypt_block(&mut block);
        block.into()
    }
}

impl From<&SessionKey> for DataKey {
    fn from(key: &SessionKey) -> DataKey {
        DataKey::new(key)
    }
}

/// A key data packets can be sealed and opened under: a [`DataKey`] directly, or a [`SessionKey`]
/// (expanded through a per-thread cache of the last [`KEY_CACHE`] keys).
pub trait MacKey {
    /// Runs `f` with the expanded subkeys.
    fn with_data_key<R>(&self, f: impl FnOnce(&DataKey) -> R) -> R;
}

impl MacKey for DataKey {
    fn with_data_key<R>(&self, f: impl FnOnce(&DataKey) -> R) -> R {
        f(self)
    }
}

impl MacKey for SessionKey {
    fn with_data_key<R>(&self, f: impl FnOnce(&DataKey) -> R) -> R {
        thread_local! {
            static EXPANDED: RefCell<KeyCache> = const { RefCell::new(KeyCache::new()) };
        }
        EXPANDED.with(|cache| match cache.try_borrow_mut() {
            Ok(mut cache) => f(cache.get(self)),
            // Only reachable if `f` itself seals under a SessionKey: expand without the cache.
            Err(_) => f(&DataKey::new(self)),
        })
    }
}

/// The last few expanded session keys of one thread, replaced round-robin.
struct KeyCache {
    entries: Vec<(SessionKey, DataKey)>,
    next: usize,
}

impl KeyCache {
    const fn new() -> KeyCache {
        KeyCache {
            entries: Vec::new(),
            next: 0,
        }
    }

    fn get(&mut self, key: &SessionKey) -> &DataKey {
        let index = match self.entries.iter().position(|(k, _)| k == key) {
            Some(index) => index,
            None if self.entries.len() < KEY_CACHE => {
                self.entries.push((*key, DataKey::new(key)));
                self.entries.len() - 1
            }
            None => {
                let index = self.next;
                self.next = (self.next + 1) % KEY_CACHE;
                self.entries[index] = (*key, DataKey::new(key));
                index
            }
        };
        &self.entries[index].1
    }
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
    fn data_key_and_session_key_agree_across_lengths() {
        let data_key = DataKey::new(&key(3));
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7 + 1) as u8).collect();
        // Every tail shape: empty, partial block, 1-3 whole blocks past a four-block group.
        for len in 0..bytes.len() {
            let message = &bytes[..len];
            assert_eq!(mac(&key(3), message), data_key.tag(message), "len {len}");
            assert_eq!(mac(&key(3), message), mac(&data_key, message), "len {len}");
            assert_eq!(
                data_key.tag(message),
                reference_tag(&key(3), message),
                "len {len}"
            );
        }
    }

    #[test]
    fn tag_pins_the_construction() {
        // Known answer: a silent change of the MAC (lane order, padding, length block, subkeys) moves it.
        let message: Vec<u8> = (0..1311u32).map(|i| (i % 251) as u8).collect();
        let tag = DataKey::new(&key(9)).tag(&message);
        assert_eq!(hex(&tag), "3a66e8f9cdefce995b5a150e8b528607");
        assert_eq!(tag, reference_tag(&key(9), &message));
    }

    /// The module doc's construction written out plainly: the padded message and the length block
    /// as one byte string, POLYVAL one block at a time.
    fn reference_tag(key: &SessionKey, message: &[u8]) -> [u8; MAC_LEN] {
        let mut okm = [0u8; 32];
        let mut kdf = blake3::Hasher::new_derive_key(MAC_KDF_CONTEXT);
        kdf.update(&key.0);
        kdf.finalize_xof().fill(&mut okm);
        let mut input = message.to_vec();
        input.resize(message.len().div_ceil(16) * 16, 0);
        input.extend_from_slice(&(message.len() as u64 * 8).to_le_bytes());
        input.extend_from_slice(&[0; 8]);
        let h: [u8; 16] = okm[..16].try_into().unwrap();
        let mut hash = Polyval::new(&h.into());
        for block in input.chunks(16) {
            let block: [u8; 16] = block.try_into().unwrap();
            hash.update(&[block.into()]);
        }
        let y: [u8; 16] = hash.finalize().into();
        let mut block = aes::Block::from(y);
        Aes128::new(aes::cipher::Key::<Aes128>::from_slice(&okm[16..])).encrypt_block(&mut block);
        block.into()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn tag_separates_orders_lengths_and_keys() {
        let k = DataKey::new(&key(5));
        let base: Vec<u8> = (0..200u32).map(|i| (i * 13) as u8).collect();
        let tag = k.tag(&base);
        // Two blocks swapped (each meets another power of H).
        let mut swapped = base.clone();
        swapped[..16].copy_from_slice(&base[16..32]);
        swapped[16..32].copy_from_slice(&base[..16]);
        assert_ne!(k.tag(&swapped), tag);
        // Four-block groups swapped (the backend multiplies four blocks per reduction).
        let mut moved = base.clone();
        moved[..64].copy_from_slice(&base[64..128]);
        moved[64..128].copy_from_slice(&base[..64]);
        assert_ne!(k.tag(&moved), tag);
        // Zero padding is not a message extension: appended zero bytes change the tag.
        let mut padded = vec![0u8; 20];
        let short = k.tag(&padded);
        padded.push(0);
        assert_ne!(k.tag(&padded), short);
        assert_ne!(k.tag(&[]), k.tag(&[0]));
        // Another key.
        assert_ne!(DataKey::new(&key(6)).tag(&base), tag);
    }

    #[test]
    fn key_cache_survives_more_keys_than_it_holds() {
        let message = [0xa5u8; 100];
        let expected: Vec<_> = (0..40u8)
            .map(|i| DataKey::new(&key(i)).tag(&message))
            .collect();
        for round in 0..3 {
            for i in (0..40u8).rev() {
                assert_eq!(
                    mac(&key(i), &message),
                    expected[i as usize],
                    "round {round}"
                );
            }
        }
        // A MAC computed while the cache is borrowed (nested use) still verifies.
        let nested = key(1).with_data_key(|_| mac(&key(2), &message));
        assert_eq!(nested, expected[2]);
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
                0 => DataError::WrongVersion(DATA_VERSION ^ 0x10),
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
