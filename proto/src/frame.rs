//! Control-protocol messages (TCP) and their strict binary encoding.
//!
//! # Wire format
//! Every frame is `len: u32 LE` followed by `len` body bytes, `len <= MAX_FRAME_LEN`. The body is
//! `version: u8` ([`PROTOCOL_VERSION`]), `tag: u8` (the message kind), then the message's fields in
//! declaration order, little-endian:
//! - integers: fixed width LE; `bool`: one byte 0/1 (anything else is an error);
//! - strings: `u16` length + UTF-8 bytes, at most [`MAX_NAME_LEN`] (names) or [`MAX_TEXT_LEN`] (messages);
//! - lists: `u32` count + entries, each list with its own maximum;
//! - socket addresses: family byte `4`/`6`, 4/16 address bytes, `u16` port (IPv6 flow info and scope id
//!   are not carried); optional addresses use family `0` for "none";
//! - enums: one tag byte.
//!
//! Decoding is strict: an unknown tag, a short body, trailing bytes, an over-long string or list or an
//! inconsistent field (e.g. a digest count that differs from the segment count) is a [`WireError`].

use std::net::SocketAddr;

use crate::wire::{Reader, WireError, Writer};

/// Version byte carried by every control frame. 2 since the data plane moved to
/// [`crate::data::DATA_VERSION`] 2 (POLYVAL-AES MAC) and packet format 2 (sparse coefficients): a
/// peer speaking version 1 would pass its `Hello` and then have every data packet dropped, so it is
/// refused at its first frame instead.
pub const PROTOCOL_VERSION: u8 = 3;

/// Largest frame body (bytes after the 4-byte length prefix): 1 MiB.
///
/// A [`FileMeta`] costs about 70 bytes plus the name (at most [`MAX_NAME_LEN`]) plus 32 bytes per
/// segment, so the limit admits [`MAX_SEGMENTS`] = 32 000 segments: a 100 GiB file in 32 MiB segments
/// has 3 200 (102 400 digest bytes), and 32 000 segments of 32 MiB is 1000 GiB.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Length of the frame length prefix.
pub const FRAME_PREFIX_LEN: usize = 4;

/// Longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 4096;

/// Longest free-text field (error messages), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

/// Most segments (and per-segment digests) in one file.
pub const MAX_SEGMENTS: usize = 32_000;

/// Most entries in a [`Frame::FileList`]; the encoded frame must also fit [`MAX_FRAME_LEN`].
pub const MAX_FILE_LIST: usize = 65_536;

/// Most peers in a [`Frame::PeerList`].
pub const MAX_PEERS: usize = 1024;

/// Most segment ranges in a [`Frame::Have`].
pub const MAX_RANGES: usize = 16_384;

/// Server-allocated session id; the session's UDP data port is `udp_base + id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

impl SessionId {
    /// "No session": a [`Frame::Heartbeat`] for it is a pure keep-alive (answered with a
    /// `HeartbeatAck` for the same id); also the id of an idle link's `CoopHeartbeat` and of the
    /// `Ack` to a `Have`. Never allocated to a session.
    pub const NONE: SessionId = SessionId(u32::MAX);
}

/// A node's self-chosen random identity (clients and peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// Per-session 32-byte MAC key, sent in [`SessionMeta`]. `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey(pub [u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// BLAKE3 digest of one segment.
pub type Digest = [u8; 32];

/// What the sender of a [`Hello`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A downloading client talking to the server.
    Client,
    /// A client talking to another client's cooperation listener.
    Peer,
    /// The server answering a client's Hello.
    Server,
}

/// Code family, mirrored from the codec (the drivers convert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeKind {
    /// Band code: each coded packet combines a window of consecutive source packets.
    Band,
    /// Random sparse code over the whole subgeneration.
    Random,
}

/// Coefficient field, mirrored from the codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// GF(2): coefficients are bits.
    Gf2,
    /// GF(2^8).
    Gf256,
}

/// Codec parameters as plain wire data; `ccfd-server`/`ccfd-client` convert to and from snc's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeParamsWire {
    /// Nominal (maximum) segment size in bytes.
    pub segment_size: u64,
    /// Source packet (symbol) size in bytes.
    pub symbol_size: u32,
    /// Code family.
    pub kind: CodeKind,
    /// Source packets per subgeneration.
    pub subgen_size: u32,
    /// Offset between consecutive subgenerations (band overlap), in source packets.
    pub stride: u32,
    /// Precode check packets per subgeneration (0 for none).
    pub checks: u32,
    /// Coefficient field.
    pub field: FieldKind,
    /// Whether source packets are sent uncoded first.
    pub systematic: bool,
}

/// First frame on every control connection, in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`] (the frame header carries it too; this one is for logs and
    /// for a future negotiation).
    pub version: u8,
    /// Who is speaking.
    pub role: Role,
    /// The sender's node id (the server uses 0).
    pub node_id: NodeId,
    /// Where the sender receives UDP data (clients), if it does.
    pub data_addr: Option<SocketAddr>,
    /// Where the sender accepts cooperation control connections (clients that cooperate).
    pub control_addr: Option<SocketAddr>,
}

/// Everything a client needs to fetch and verify a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Path relative to the server root.
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Length of every segment but the last (which holds the rest); `> 0`.
    pub segment_size: u64,
    /// `size.div_ceil(segment_size)`; 0 for an empty file.
    pub segment_count: u32,
    /// Codec parameters of a full-size segment (`min(segment_size, size)` bytes); its `checks` is
    /// exact for such a segment.
    pub code: CodeParamsWire,
    /// Exact precode check count of the last segment, which may be shorter than the others (equal
    /// to `code.checks` when it is full-size; 0 for an empty file).
    pub last_segment_checks: u32,
    /// BLAKE3 digest of each segment, `segment_count` of them.
    pub digests: Vec<Digest>,
    /// Version tag of the file's content (e.g. mtime in ns mixed with size and inode); a change means
    /// the file changed.
    pub version: u64,
}

impl FileMeta {
    /// Byte range `[start, end)` of segment `index` in the file, or `None` when out of range.
    pub fn segment_range(&self, index: u32) -> Option<std::ops::Range<u64>> {
        segment_range(self.size, self.segment_size, index)
    }

    /// Length of segment `index`, or `None` when out of range.
    pub fn segment_len(&self, index: u32) -> Option<u64> {
        self.segment_range(index).map(|r| r.end - r.start)
    }
}

/// Number of segments of a `size`-byte file cut into `segment_size` slices (`segment_size > 0`).
pub fn segment_count(size: u64, segment_size: u64) -> Option<u32> {
    if segment_size == 0 {
        return None;
    }
    u32::try_from(size.div_ceil(segment_size)).ok()
}

/// Byte range of segment `index` of a `size`-byte file cut into `segment_size` slices.
pub fn segment_range(size: u64, segment_size: u64, index: u32) -> Option<std::ops::Range<u64>> {
    let count = segment_count(size, segment_size)?;
    if index >= count {
        return None;
    }
    let start = u64::from(index) * segment_size;
    Some(start..size.min(start + segment_size))
}

/// Near-equal segmentation: the segment size (a multiple of `align`, `align > 0`) that cuts `size`
/// into the fewest segments of at most `max_segment_size` bytes with as little difference between the
/// last and the others as possible. Returns `(segment_size, segment_count)`, or `None` when the
/// result would exceed [`MAX_SEGMENTS`] or the arguments are zero.
pub fn plan_segments(size: u64, max_segment_size: u64, align: u64) -> Option<(u64, u32)> {
    if max_segment_size == 0 || align == 0 || align > max_segment_size {
        return None;
    }
    let max_aligned = max_segment_size - max_segment_size % align;
    let count = size.div_ceil(max_aligned).max(1);
    let even = size.div_ceil(count);
    let seg = even.div_ceil(align).max(1) * align;
    let seg = seg.min(max_aligned);
    let n = segment_count(size, seg)?;
    if usize::try_from(n).map_or(true, |n| n > MAX_SEGMENTS) {
        return None;
    }
    Some((seg, n))
}

/// One entry of a [`Frame::FileList`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the server root.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Reply to [`Frame::RequestSegment`]: the session the client was added to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    /// Server-allocated session id.
    pub session: SessionId,
    /// File name.
    pub name: String,
    /// Segment index.
    pub segment: u32,
    /// The server's UDP port for this session (`udp_base + session`).
    pub data_port: u16,
    /// Codec parameters.
    pub code: CodeParamsWire,
    /// MAC key of every data packet of this session.
    pub key: SessionKey,
    /// Length of the segment in bytes.
    pub segment_len: u64,
    /// The file's version tag; differs from [`FileMeta::version`] if the file changed.
    pub version: u64,
}

/// Receive statistics a client reports in heartbeats (per sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ReceiverStats {
    /// Valid data packets received in this session so far.
    pub received_packets: u64,
    /// Payload bytes of those packets.
    pub received_bytes: u64,
    /// Packets dropped (malformed, bad MAC, wrong session) so far.
    pub dropped_packets: u64,
    /// Receive rate over the last interval, bits per second of wire bytes (each datagram with its
    /// IP/UDP/Ethernet headers, [`crate::pacing::wire_bytes`]), as senders pace.
    pub receive_rate_bps: u64,
    /// Loss over the last interval in parts per million (from data-packet sequence gaps).
    pub loss_ppm: u32,
    /// Current rank of the decoder (useful packets so far).
    pub decoded_rank: u32,
}

/// What the client asks peers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeersQuery {
    /// Peers for the segment of this session.
    Session(SessionId),
    /// Peers for a segment of a file.
    Segment {
        /// File name.
        name: String,
        /// Segment index.
        segment: u32,
    },
}

/// How a peer relates to the segment asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerHolding {
    /// The peer has the whole segment decoded and verified.
    Complete,
    /// The peer is currently receiving the segment.
    Receiving,
}

/// One candidate peer in a [`Frame::PeerList`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node id.
    pub node_id: NodeId,
    /// Its cooperation control listener.
    pub control_addr: SocketAddr,
    /// Its UDP data address, if known.
    pub data_addr: Option<SocketAddr>,
    /// Whether it holds or is receiving the segment.
    pub holding: PeerHolding,
    /// Its decoder rank for the segment when receiving (0 otherwise).
    pub rank: u32,
    /// How many segments of the file it holds in total.
    pub segments_held: u32,
}

/// A half-open range `[start, end)` of segment indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentRange {
    /// First segment.
    pub start: u32,
    /// One past the last segment.
    pub end: u32,
}

/// Error codes carried by [`Frame::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The named file does not exist (or is not a regular file).
    NoSuchFile,
    /// The server's session limit is reached; retry later.
    TooManySessions,
    /// The server's client limit is reached; retry later.
    TooManyClients,
    /// The request is malformed or not allowed in this state.
    BadRequest,
    /// The name escapes the root (`..`, absolute, symlink out).
    PathRefused,
    /// The file changed since its meta was sent.
    FileChanged,
    /// Server-side failure; retry later.
    Internal,
    /// The session id is not (or no longer) known.
    NoSuchSession,
    /// The segment index is out of range.
    NoSuchSegment,
    /// The file's meta is still being computed; retry later.
    NotReady,
}

impl ErrorCode {
    /// Whether the request may succeed if retried later (after a backoff).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::TooManySessions
                | ErrorCode::TooManyClients
                | ErrorCode::Internal
                | ErrorCode::NotReady
        )
    }
}

/// Every control message of the protocol.
///
/// Client ↔ server: `Hello` both ways, then `FileMetaRequest`→`FileMeta`, `ListFiles`→`FileList`,
/// `RequestSegment`→`SessionMeta`, `Heartbeat`→`HeartbeatAck`, `StopSegment`→`Ack`, `Have`→`Ack`,
/// `Peers`→`PeerList`, `Exit` (no reply); any request may get `Error` instead.
/// Peer ↔ peer (cooperation): `Hello` both ways, `AskCoop`→`CoopAck`|`CoopDontHave`, `StopCoop`,
/// `CoopHeartbeat` (both directions), `ExitCoop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Connection opener.
    Hello(Hello),
    /// Ask for a file's meta.
    FileMetaRequest {
        /// File name relative to the root.
        name: String,
    },
    /// A file's meta.
    FileMeta(FileMeta),
    /// Ask for the list of files.
    ListFiles,
    /// The files under the root.
    FileList {
        /// Entries (name and size).
        entries: Vec<FileEntry>,
        /// True when the server left entries out to fit the frame.
        truncated: bool,
    },
    /// Join (creating if needed) the session of one segment.
    RequestSegment {
        /// File name.
        name: String,
        /// Segment index.
        segment: u32,
        /// The client's UDP receive address.
        receive_addr: SocketAddr,
    },
    /// The session joined.
    SessionMeta(SessionMeta),
    /// Periodic liveness and receive statistics for one session.
    Heartbeat {
        /// The session.
        session: SessionId,
        /// Statistics for packets from the server in this session.
        stats: ReceiverStats,
    },
    /// Reply to a heartbeat.
    HeartbeatAck {
        /// The session.
        session: SessionId,
        /// The server's current send rate to this receiver, bits per second (0 if unknown).
        send_rate_bps: u64,
    },
    /// The client decoded the segment: stop sending to it.
    StopSegment {
        /// The session.
        session: SessionId,
    },
    /// Generic acknowledgement (of `StopSegment`, `Have`).
    Ack {
        /// The session acknowledged (`SessionId::NONE` for `Have`).
        session: SessionId,
    },
    /// The client holds these segments of a file (on resume), for the cooperation list.
    Have {
        /// File name.
        name: String,
        /// Version tag of the file the segments belong to ([`FileMeta::version`]).
        version: u64,
        /// Segment ranges held.
        ranges: Vec<SegmentRange>,
    },
    /// Ask for peers that can help with a segment.
    Peers(PeersQuery),
    /// Peers that hold or receive the segment, most useful first.
    PeerList {
        /// File name.
        name: String,
        /// Segment index.
        segment: u32,
        /// Candidate peers.
        peers: Vec<PeerInfo>,
    },
    /// The client leaves: remove it from every session and cooperation list.
    Exit,
    /// A request failed.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Ask a peer to send recoded packets of a segment to `receive_addr`.
    AskCoop {
        /// File name.
        name: String,
        /// Segment index.
        segment: u32,
        /// The asker's server session for the segment (data packets carry this id).
        session: SessionId,
        /// The asker's session key: the peer MACs its packets with it.
        key: SessionKey,
        /// The asker's UDP receive address.
        receive_addr: SocketAddr,
    },
    /// The peer will send.
    CoopAck {
        /// The asker's session.
        session: SessionId,
    },
    /// The peer neither holds nor receives the segment.
    CoopDontHave {
        /// The asker's session.
        session: SessionId,
    },
    /// Stop sending for this session.
    StopCoop {
        /// The asker's session.
        session: SessionId,
    },
    /// The sender leaves every cooperation with this peer.
    ExitCoop,
    /// Cooperation liveness plus what the receiver sees from this peer.
    CoopHeartbeat {
        /// The asker's session.
        session: SessionId,
        /// Statistics of packets from this peer.
        stats: ReceiverStats,
    },
}

mod tag {
    pub(super) const HELLO: u8 = 1;
    pub(super) const FILE_META_REQUEST: u8 = 2;
    pub(super) const FILE_META: u8 = 3;
    pub(super) const LIST_FILES: u8 = 4;
    pub(super) const FILE_LIST: u8 = 5;
    pub(super) const REQUEST_SEGMENT: u8 = 6;
    pub(super) const SESSION_META: u8 = 7;
    pub(super) const HEARTBEAT: u8 = 8;
    pub(super) const HEARTBEAT_ACK: u8 = 9;
    pub(super) const STOP_SEGMENT: u8 = 10;
    pub(super) const ACK: u8 = 11;
    pub(super) const HAVE: u8 = 12;
    pub(super) const PEERS: u8 = 13;
    pub(super) const PEER_LIST: u8 = 14;
    pub(super) const EXIT: u8 = 15;
    pub(super) const ERROR: u8 = 16;
    pub(super) const ASK_COOP: u8 = 32;
    pub(super) const COOP_ACK: u8 = 33;
    pub(super) const COOP_DONT_HAVE: u8 = 34;
    pub(super) const STOP_COOP: u8 = 35;
    pub(super) const EXIT_COOP: u8 = 36;
    pub(super) const COOP_HEARTBEAT: u8 = 37;
}

impl Frame {
    /// Appends the whole frame (length prefix included) to `out`. On error `out` is left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_PREFIX_LEN]);
        let result = self.encode_body(&mut Writer::new(out));
        let body_len = out.len() - start - FRAME_PREFIX_LEN;
        let result = match result {
            Ok(()) if body_len > MAX_FRAME_LEN => Err(WireError::FrameTooLarge {
                len: body_len,
                max: MAX_FRAME_LEN,
            }),
            other => other,
        };
        match result {
            Ok(()) => {
                // body_len <= MAX_FRAME_LEN < u32::MAX
                let len = u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes();
                out[start..start + FRAME_PREFIX_LEN].copy_from_slice(&len);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// The whole frame (length prefix included) as a new buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes one frame body (the bytes after the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Frame, WireError> {
        if body.len() > MAX_FRAME_LEN {
            return Err(WireError::FrameTooLarge {
                len: body.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let mut r = Reader::new(body);
        let version = r.u8("version")?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::WrongVersion {
                got: version,
                expected: PROTOCOL_VERSION,
            });
        }
        let frame = decode_message(&mut r)?;
        r.finish()?;
        Ok(frame)
    }

    /// Short name of the message kind, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::FileMetaRequest { .. } => "FileMetaRequest",
            Frame::FileMeta(_) => "FileMeta",
            Frame::ListFiles => "ListFiles",
            Frame::FileList { .. } => "FileList",
            Frame::RequestSegment { .. } => "RequestSegment",
            Frame::SessionMeta(_) => "SessionMeta",
            Frame::Heartbeat { .. } => "Heartbeat",
            Frame::HeartbeatAck { .. } => "HeartbeatAck",
            Frame::StopSegment { .. } => "StopSegment",
            Frame::Ack { .. } => "Ack",
            Frame::Have { .. } => "Have",
            Frame::Peers(_) => "Peers",
            Frame::PeerList { .. } => "PeerList",
            Frame::Exit => "Exit",
            Frame::Error { .. } => "Error",
            Frame::AskCoop { .. } => "AskCoop",
            Frame::CoopAck { .. } => "CoopAck",
            Frame::CoopDontHave { .. } => "CoopDontHave",
            Frame::StopCoop { .. } => "StopCoop",
            Frame::ExitCoop => "ExitCoop",
            Frame::CoopHeartbeat { .. } => "CoopHeartbeat",
        }
    }

    /// Convenience constructor for [`Frame::Error`] (the message is cut to [`MAX_TEXT_LEN`] bytes on a
    /// character boundary).
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        let mut message = message.into();
        if message.len() > MAX_TEXT_LEN {
            let mut cut = MAX_TEXT_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Frame::Error { code, message }
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u8(PROTOCOL_VERSION);
        match self {
            Frame::Hello(h) => {
                w.u8(tag::HELLO);
                w.u8(h.version);
                w.u8(match h.role {
                    Role::Client => 1,
                    Role::Peer => 2,
                    Role::Server => 3,
                });
                w.u64(h.node_id.0);
                w.opt_addr(&h.data_addr);
                w.opt_addr(&h.control_addr);
            }
            Frame::FileMetaRequest { name } => {
                w.u8(tag::FILE_META_REQUEST);
                w.str("name", name, MAX_NAME_LEN)?;
            }
            Frame::FileMeta(m) => {
                w.u8(tag::FILE_META);
                w.str("name", &m.name, MAX_NAME_LEN)?;
                w.u64(m.size);
                w.u64(m.segment_size);
                w.u32(m.segment_count);
                put_code(w, &m.code);
                w.u32(m.last_segment_checks);
                w.u64(m.version);
                if segment_count(m.size, m.segment_size) != Some(m.segment_count) {
                    return Err(WireError::InvalidValue {
                        field: "segment_count",
                    });
                }
                if m.digests.len() != usize::try_from(m.segment_count).unwrap_or(usize::MAX) {
                    return Err(WireError::InvalidValue { field: "digests" });
                }
                w.count("digests", m.digests.len(), MAX_SEGMENTS)?;
                for d in &m.digests {
                    w.bytes(d);
                }
            }
            Frame::ListFiles => w.u8(tag::LIST_FILES),
            Frame::FileList { entries, truncated } => {
                w.u8(tag::FILE_LIST);
                w.bool(*truncated);
                w.count("entries", entries.len(), MAX_FILE_LIST)?;
                for e in entries {
                    w.str("entry name", &e.name, MAX_NAME_LEN)?;
                    w.u64(e.size);
                }
            }
            Frame::RequestSegment {
                name,
                segment,
                receive_addr,
            } => {
                w.u8(tag::REQUEST_SEGMENT);
                w.str("name", name, MAX_NAME_LEN)?;
                w.u32(*segment);
                w.addr(receive_addr);
            }
            Frame::SessionMeta(s) => {
                w.u8(tag::SESSION_META);
                w.u32(s.session.0);
                w.str("name", &s.name, MAX_NAME_LEN)?;
                w.u32(s.segment);
                w.u16(s.data_port);
                put_code(w, &s.code);
                w.bytes(&s.key.0);
                w.u64(s.segment_len);
                w.u64(s.version);
            }
            Frame::Heartbeat { session, stats } => {
                w.u8(tag::HEARTBEAT);
                w.u32(session.0);
                put_stats(w, stats);
            }
            Frame::HeartbeatAck {
                session,
                send_rate_bps,
            } => {
                w.u8(tag::HEARTBEAT_ACK);
                w.u32(session.0);
                w.u64(*send_rate_bps);
            }
            Frame::StopSegment { session } => {
                w.u8(tag::STOP_SEGMENT);
                w.u32(session.0);
            }
            Frame::Ack { session } => {
                w.u8(tag::ACK);
                w.u32(session.0);
            }
            Frame::Have {
                name,
                version,
                ranges,
            } => {
                w.u8(tag::HAVE);
                w.str("name", name, MAX_NAME_LEN)?;
                w.u64(*version);
                w.count("ranges", ranges.len(), MAX_RANGES)?;
                for r in ranges {
                    if r.start >= r.end {
                        return Err(WireError::InvalidValue { field: "range" });
                    }
                    w.u32(r.start);
                    w.u32(r.end);
                }
            }
            Frame::Peers(q) => {
                w.u8(tag::PEERS);
                match q {
                    PeersQuery::Session(s) => {
                        w.u8(1);
                        w.u32(s.0);
                    }
                    PeersQuery::Segment { name, segment } => {
                        w.u8(2);
                        w.str("name", name, MAX_NAME_LEN)?;
                        w.u32(*segment);
                    }
                }
            }
            Frame::PeerList {
                name,
                segment,
                peers,
            } => {
                w.u8(tag::PEER_LIST);
                w.str("name", name, MAX_NAME_LEN)?;
                w.u32(*segment);
                w.count("peers", peers.len(), MAX_PEERS)?;
                for p in peers {
                    w.u64(p.node_id.0);
                    w.addr(&p.control_addr);
                    w.opt_addr(&p.data_addr);
                    w.u8(match p.holding {
                        PeerHolding::Complete => 1,
                        PeerHolding::Receiving => 2,
                    });
                    w.u32(p.rank);
                    w.u32(p.segments_held);
                }
            }
            Frame::Exit => w.u8(tag::EXIT),
            Frame::Error { code, message } => {
                w.u8(tag::ERROR);
                w.u8(error_code_tag(*code));
                w.str("message", message, MAX_TEXT_LEN)?;
            }
            Frame::AskCoop {
                name,
                segment,
                session,
                key,
                receive_addr,
            } => {
                w.u8(tag::ASK_COOP);
                w.str("name", name, MAX_NAME_LEN)?;
                w.u32(*segment);
                w.u32(session.0);
                w.bytes(&key.0);
                w.addr(receive_addr);
            }
            Frame::CoopAck { session } => {
                w.u8(tag::COOP_ACK);
                w.u32(session.0);
            }
            Frame::CoopDontHave { session } => {
                w.u8(tag::COOP_DONT_HAVE);
                w.u32(session.0);
            }
            Frame::StopCoop { session } => {
                w.u8(tag::STOP_COOP);
                w.u32(session.0);
            }
            Frame::ExitCoop => w.u8(tag::EXIT_COOP),
            Frame::CoopHeartbeat { session, stats } => {
                w.u8(tag::COOP_HEARTBEAT);
                w.u32(session.0);
                put_stats(w, stats);
            }
        }
        Ok(())
    }
}

fn error_code_tag(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::NoSuchFile => 1,
        ErrorCode::TooManySessions => 2,
        ErrorCode::TooManyClients => 3,
        ErrorCode::BadRequest => 4,
        ErrorCode::PathRefused => 5,
        ErrorCode::FileChanged => 6,
        ErrorCode::Internal => 7,
        ErrorCode::NoSuchSession => 8,
        ErrorCode::NoSuchSegment => 9,
        ErrorCode::NotReady => 10,
    }
}

fn put_code(w: &mut Writer<'_>, c: &CodeParamsWire) {
    w.u64(c.segment_size);
    w.u32(c.symbol_size);
    w.u8(match c.kind {
        CodeKind::Band => 1,
        CodeKind::Random => 2,
    });
    w.u32(c.subgen_size);
    w.u32(c.stride);
    w.u32(c.checks);
    w.u8(match c.field {
        FieldKind::Gf2 => 1,
        FieldKind::Gf256 => 2,
    });
    w.bool(c.systematic);
}

fn get_code(r: &mut Reader<'_>) -> Result<CodeParamsWire, WireError> {
    Ok(CodeParamsWire {
        segment_size: r.u64("code.segment_size")?,
        symbol_size: r.u32("code.symbol_size")?,
        kind: match r.u8("code.kind")? {
            1 => CodeKind::Band,
            2 => CodeKind::Random,
            tag => {
                return Err(WireError::UnknownTag {
                    what: "code kind",
                    tag,
                })
            }
        },
        subgen_size: r.u32("code.subgen_size")?,
        stride: r.u32("code.stride")?,
        checks: r.u32("code.checks")?,
        field: match r.u8("code.field")? {
            1 => FieldKind::Gf2,
            2 => FieldKind::Gf256,
            tag => return Err(WireError::UnknownTag { what: "field", tag }),
        },
        systematic: r.bool("code.systematic")?,
    })
}

fn put_stats(w: &mut Writer<'_>, s: &ReceiverStats) {
    w.u64(s.received_packets);
    w.u64(s.received_bytes);
    w.u64(s.dropped_packets);
    w.u64(s.receive_rate_bps);
    w.u32(s.loss_ppm);
    w.u32(s.decoded_rank);
}

fn get_stats(r: &mut Reader<'_>) -> Result<ReceiverStats, WireError> {
    Ok(ReceiverStats {
        received_packets: r.u64("stats.received_packets")?,
        received_bytes: r.u64("stats.received_bytes")?,
        dropped_packets: r.u64("stats.dropped_packets")?,
        receive_rate_bps: r.u64("stats.receive_rate_bps")?,
        loss_ppm: r.u32("stats.loss_ppm")?,
        decoded_rank: r.u32("stats.decoded_rank")?,
    })
}

fn session(r: &mut Reader<'_>) -> Result<SessionId, WireError> {
    r.u32("session").map(SessionId)
}

fn decode_message(r: &mut Reader<'_>) -> Result<Frame, WireError> {
    let t = r.u8("tag")?;
    Ok(match t {
        tag::HELLO => Frame::Hello(Hello {
            version: r.u8("hello.version")?,
            role: match r.u8("role")? {
                1 => Role::Client,
                2 => Role::Peer,
                3 => Role::Server,
                tag => return Err(WireError::UnknownTag { what: "role", tag }),
            },
            node_id: NodeId(r.u64("node_id")?),
            data_addr: r.opt_addr("data_addr")?,
            control_addr: r.opt_addr("control_addr")?,
        }),
        tag::FILE_META_REQUEST => Frame::FileMetaRequest {
            name: r.str("name", MAX_NAME_LEN)?,
        },
        tag::FILE_META => {
            let name = r.str("name", MAX_NAME_LEN)?;
            let size = r.u64("size")?;
            let segment_size = r.u64("segment_size")?;
            let count = r.u32("segment_count")?;
            let code = get_code(r)?;
            let last_segment_checks = r.u32("last_segment_checks")?;
            let version = r.u64("version")?;
            if segment_count(size, segment_size) != Some(count) {
                return Err(WireError::InvalidValue {
                    field: "segment_count",
                });
            }
            let n = r.count("digests", MAX_SEGMENTS, 32)?;
            if n != usize::try_from(count).unwrap_or(usize::MAX) {
                return Err(WireError::InvalidValue { field: "digests" });
            }
            let mut digests = Vec::with_capacity(n);
            for _ in 0..n {
                digests.push(r.bytes32("digest")?);
            }
            Frame::FileMeta(FileMeta {
                name,
                size,
                segment_size,
                segment_count: count,
                code,
                last_segment_checks,
                digests,
                version,
            })
        }
        tag::LIST_FILES => Frame::ListFiles,
        tag::FILE_LIST => {
            let truncated = r.bool("truncated")?;
            let n = r.count("entries", MAX_FILE_LIST, 2 + 8)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(FileEntry {
                    name: r.str("entry name", MAX_NAME_LEN)?,
                    size: r.u64("entry size")?,
                });
            }
            Frame::FileList { entries, truncated }
        }
        tag::REQUEST_SEGMENT => Frame::RequestSegment {
            name: r.str("name", MAX_NAME_LEN)?,
            segment: r.u32("segment")?,
            receive_addr: r.addr("receive_addr")?,
        },
        tag::SESSION_META => Frame::SessionMeta(SessionMeta {
            session: session(r)?,
            name: r.str("name", MAX_NAME_LEN)?,
            segment: r.u32("segment")?,
            data_port: r.u16("data_port")?,
            code: get_code(r)?,
            key: SessionKey(r.bytes32("key")?),
            segment_len: r.u64("segment_len")?,
            version: r.u64("version")?,
        }),
        tag::HEARTBEAT => Frame::Heartbeat {
            session: session(r)?,
            stats: get_stats(r)?,
        },
        tag::HEARTBEAT_ACK => Frame::HeartbeatAck {
            session: session(r)?,
            send_rate_bps: r.u64("send_rate_bps")?,
        },
        tag::STOP_SEGMENT => Frame::StopSegment {
            session: session(r)?,
        },
        tag::ACK => Frame::Ack {
            session: session(r)?,
        },
        tag::HAVE => {
            let name = r.str("name", MAX_NAME_LEN)?;
            let version = r.u64("version")?;
            let n = r.count("ranges", MAX_RANGES, 8)?;
            let mut ranges = Vec::with_capacity(n);
            for _ in 0..n {
                let start = r.u32("range start")?;
                let end = r.u32("range end")?;
                if start >= end {
                    return Err(WireError::InvalidValue { field: "range" });
                }
                ranges.push(SegmentRange { start, end });
            }
            Frame::Have {
                name,
                version,
                ranges,
            }
        }
        tag::PEERS => Frame::Peers(match r.u8("peers query")? {
            1 => PeersQuery::Session(session(r)?),
            2 => PeersQuery::Segment {
                name: r.str("name", MAX_NAME_LEN)?,
                segment: r.u32("segment")?,
            },
            tag => {
                return Err(WireError::UnknownTag {
                    what: "peers query",
                    tag,
                })
            }
        }),
        tag::PEER_LIST => {
            let name = r.str("name", MAX_NAME_LEN)?;
            let segment = r.u32("segment")?;
            let n = r.count("peers", MAX_PEERS, 8 + 7 + 1 + 1 + 8)?;
            let mut peers = Vec::with_capacity(n);
            for _ in 0..n {
                peers.push(PeerInfo {
                    node_id: NodeId(r.u64("peer node_id")?),
                    control_addr: r.addr("peer control_addr")?,
                    data_addr: r.opt_addr("peer data_addr")?,
                    holding: match r.u8("peer holding")? {
                        1 => PeerHolding::Complete,
                        2 => PeerHolding::Receiving,
                        tag => {
                            return Err(WireError::UnknownTag {
                                what: "peer holding",
                                tag,
                            })
                        }
                    },
                    rank: r.u32("peer rank")?,
                    segments_held: r.u32("peer segments_held")?,
                });
            }
            Frame::PeerList {
                name,
                segment,
                peers,
            }
        }
        tag::EXIT => Frame::Exit,
        tag::ERROR => Frame::Error {
            code: match r.u8("error code")? {
                1 => ErrorCode::NoSuchFile,
                2 => ErrorCode::TooManySessions,
                3 => ErrorCode::TooManyClients,
                4 => ErrorCode::BadRequest,
                5 => ErrorCode::PathRefused,
                6 => ErrorCode::FileChanged,
                7 => ErrorCode::Internal,
                8 => ErrorCode::NoSuchSession,
                9 => ErrorCode::NoSuchSegment,
                10 => ErrorCode::NotReady,
                tag => {
                    return Err(WireError::UnknownTag {
                        what: "error code",
                        tag,
                    })
                }
            },
            message: r.str("message", MAX_TEXT_LEN)?,
        },
        tag::ASK_COOP => Frame::AskCoop {
            name: r.str("name", MAX_NAME_LEN)?,
            segment: r.u32("segment")?,
            session: session(r)?,
            key: SessionKey(r.bytes32("key")?),
            receive_addr: r.addr("receive_addr")?,
        },
        tag::COOP_ACK => Frame::CoopAck {
            session: session(r)?,
        },
        tag::COOP_DONT_HAVE => Frame::CoopDontHave {
            session: session(r)?,
        },
        tag::STOP_COOP => Frame::StopCoop {
            session: session(r)?,
        },
        tag::EXIT_COOP => Frame::ExitCoop,
        tag::COOP_HEARTBEAT => Frame::CoopHeartbeat {
            session: session(r)?,
            stats: get_stats(r)?,
        },
        tag => {
            return Err(WireError::UnknownTag {
                what: "message",
                tag,
            })
        }
    })
}

/// Accumulates bytes from a stream and yields whole frames.
///
/// Feed received bytes with [`FrameDecoder::push`], then call [`FrameDecoder::next_frame`] until it
/// returns `Ok(None)`.
/// The first error poisons the decoder: every later call returns the same error, and the connection
/// should be closed (a bad frame closes that connection only).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    poisoned: Option<WireError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the stream (ignored once the decoder is poisoned).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned.is_some() {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or the error that poisoned the
    /// decoder. An announced length over [`MAX_FRAME_LEN`] fails as soon as the prefix arrives.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let pending = &self.buf[self.start..];
        let Some(prefix) = pending.get(..FRAME_PREFIX_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; FRAME_PREFIX_LEN];
        len_bytes.copy_from_slice(prefix);
        let len = usize::try_from(u32::from_le_bytes(len_bytes)).unwrap_or(usize::MAX);
        if len > MAX_FRAME_LEN {
            return Err(self.poison(WireError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            }));
        }
        let Some(body) = pending.get(FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len) else {
            return Ok(None);
        };
        match Frame::decode_body(body) {
            Ok(frame) => {
                self.start += FRAME_PREFIX_LEN + len;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(frame))
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    fn poison(&mut self, e: WireError) -> WireError {
        self.poisoned = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        e
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}
