//! Control-frame and data-packet codecs: round trips, strictness, limits, and no panics on garbage.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ccfd_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_./-]{0,40}",
        ".{0,20}",
        Just("x".repeat(MAX_NAME_LEN)),
    ]
}

fn code() -> impl Strategy<Value = CodeParamsWire> {
    (
        any::<u64>(),
        any::<u32>(),
        prop_oneof![Just(CodeKind::Band), Just(CodeKind::Random)],
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        prop_oneof![Just(FieldKind::Gf2), Just(FieldKind::Gf256)],
        any::<bool>(),
    )
        .prop_map(
            |(segment_size, symbol_size, kind, subgen_size, stride, checks, field, systematic)| {
                CodeParamsWire {
                    segment_size,
                    symbol_size,
                    kind,
                    subgen_size,
                    stride,
                    checks,
                    field,
                    systematic,
                }
            },
        )
}

fn stats() -> impl Strategy<Value = ReceiverStats> {
    any::<(u64, u64, u64, u64, u32, u32)>().prop_map(|(a, b, c, d, e, f)| ReceiverStats {
        received_packets: a,
        received_bytes: b,
        dropped_packets: c,
        receive_rate_bps: d,
        loss_ppm: e,
        decoded_rank: f,
    })
}

fn session() -> impl Strategy<Value = SessionId> {
    any::<u32>().prop_map(SessionId)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::NoSuchFile),
        Just(ErrorCode::TooManySessions),
        Just(ErrorCode::TooManyClients),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::PathRefused),
        Just(ErrorCode::FileChanged),
        Just(ErrorCode::Internal),
        Just(ErrorCode::NoSuchSession),
        Just(ErrorCode::NoSuchSegment),
        Just(ErrorCode::NotReady),
    ]
}

fn file_meta() -> impl Strategy<Value = FileMeta> {
    (name(), 0u64..1 << 40, 1u64..1 << 36, code(), any::<u64>())
        .prop_filter("segment count within limits", |(_, size, seg, _, _)| {
            size.div_ceil(*seg) <= 300
        })
        .prop_flat_map(|(name, size, segment_size, code, version)| {
            let n = size.div_ceil(segment_size) as usize;
            vec(any::<[u8; 32]>(), n).prop_map(move |digests| FileMeta {
                name: name.clone(),
                size,
                segment_size,
                segment_count: n as u32,
                code,
                last_segment_checks: code.checks / 2,
                digests,
                version,
            })
        })
}

fn peer() -> impl Strategy<Value = PeerInfo> {
    (
        any::<u64>(),
        addr(),
        proptest::option::of(addr()),
        prop_oneof![Just(PeerHolding::Complete), Just(PeerHolding::Receiving)],
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(id, control_addr, data_addr, holding, rank, segments_held)| PeerInfo {
                node_id: NodeId(id),
                control_addr,
                data_addr,
                holding,
                rank,
                segments_held,
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u8>(),
            prop_oneof![Just(Role::Client), Just(Role::Peer), Just(Role::Server)],
            any::<u64>(),
            proptest::option::of(addr()),
            proptest::option::of(addr())
        )
            .prop_map(
                |(version, role, id, data_addr, control_addr)| Frame::Hello(Hello {
                    version,
                    role,
                    node_id: NodeId(id),
                    data_addr,
                    control_addr
                })
            ),
        name().prop_map(|name| Frame::FileMetaRequest { name }),
        file_meta().prop_map(Frame::FileMeta),
        Just(Frame::ListFiles),
        (
            vec(
                (name(), any::<u64>()).prop_map(|(name, size)| FileEntry { name, size }),
                0..20
            ),
            any::<bool>()
        )
            .prop_map(|(entries, truncated)| Frame::FileList { entries, truncated }),
        (name(), any::<u32>(), addr()).prop_map(|(name, segment, receive_addr)| {
            Frame::RequestSegment {
                name,
                segment,
                receive_addr,
            }
        }),
        (
            session(),
            name(),
            any::<u32>(),
            any::<u16>(),
            code(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(session, name, segment, data_port, code, key, segment_len, version)| {
                    Frame::SessionMeta(SessionMeta {
                        session,
                        name,
                        segment,
                        data_port,
                        code,
                        key: SessionKey(key),
                        segment_len,
                        version,
                    })
                }
            ),
        (session(), stats()).prop_map(|(session, stats)| Frame::Heartbeat { session, stats }),
        (session(), any::<u64>()).prop_map(|(session, send_rate_bps)| Frame::HeartbeatAck {
            session,
            send_rate_bps
        }),
        session().prop_map(|session| Frame::StopSegment { session }),
        session().prop_map(|session| Frame::Ack { session }),
        (
            name(),
            vec(
                (any::<u32>(), 1u32..1000).prop_map(|(s, l)| SegmentRange {
                    start: s.min(u32::MAX - l),
                    end: s.min(u32::MAX - l) + l
                }),
                0..10
            )
        )
            .prop_map(|(name, ranges)| Frame::Have {
                name,
                version: 77,
                ranges
            }),
        session().prop_map(|s| Frame::Peers(PeersQuery::Session(s))),
        (name(), any::<u32>())
            .prop_map(|(name, segment)| Frame::Peers(PeersQuery::Segment { name, segment })),
        (name(), any::<u32>(), vec(peer(), 0..10)).prop_map(|(name, segment, peers)| {
            Frame::PeerList {
                name,
                segment,
                peers,
            }
        }),
        Just(Frame::Exit),
        (error_code(), ".{0,100}").prop_map(|(code, message)| Frame::Error { code, message }),
        (name(), any::<u32>(), session(), any::<[u8; 32]>(), addr()).prop_map(
            |(name, segment, session, key, receive_addr)| Frame::AskCoop {
                name,
                segment,
                session,
                key: SessionKey(key),
                receive_addr
            }
        ),
        session().prop_map(|session| Frame::CoopAck { session }),
        session().prop_map(|session| Frame::CoopDontHave { session }),
        session().prop_map(|session| Frame::StopCoop { session }),
        Just(Frame::ExitCoop),
        (session(), stats()).prop_map(|(session, stats)| Frame::CoopHeartbeat { session, stats }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_round_trip(f in frame()) {
        let bytes = f.to_bytes().unwrap();
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, bytes.len() - 4);
        let back = Frame::decode_body(&bytes[4..]).unwrap();
        prop_assert_eq!(&back, &f);
        // Re-encoding the decoded frame gives the same bytes.
        prop_assert_eq!(back.to_bytes().unwrap(), bytes.clone());
        // Every strict prefix of the body fails, never panics, and one extra byte is rejected.
        for cut in 0..bytes.len() - 4 {
            prop_assert!(Frame::decode_body(&bytes[4..4 + cut]).is_err());
        }
        let mut extra = bytes[4..].to_vec();
        extra.push(0);
        prop_assert_eq!(
            Frame::decode_body(&extra),
            Err(WireError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn decoder_reassembles_any_chunking(frames in vec(frame(), 1..6), chunk in 1usize..200) {
        let mut stream = Vec::new();
        for f in &frames {
            f.encode(&mut stream).unwrap();
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            dec.push(piece);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn decoder_never_panics_on_garbage(bytes in vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
        let mut dec = FrameDecoder::new();
        for piece in bytes.chunks(chunk) {
            dec.push(piece);
            while let Ok(Some(_)) = dec.next_frame() {}
        }
    }

    #[test]
    fn decode_body_never_panics(mut bytes in vec(any::<u8>(), 0..512), tag in any::<u8>()) {
        // Also aim at valid version + arbitrary tag so the message parsers see garbage.
        let _ = Frame::decode_body(&bytes);
        if bytes.len() >= 2 {
            bytes[0] = PROTOCOL_VERSION;
            bytes[1] = tag;
            let _ = Frame::decode_body(&bytes);
        }
    }

    #[test]
    fn mutated_frames_never_panic(f in frame(), pos in any::<usize>(), val in any::<u8>()) {
        let mut bytes = f.to_bytes().unwrap();
        let i = 4 + pos % (bytes.len() - 4);
        bytes[i] = val;
        if let Ok(g) = Frame::decode_body(&bytes[4..]) {
            // Whatever decodes must re-encode to the same bytes (no lossy acceptance).
            prop_assert_eq!(g.to_bytes().unwrap(), bytes);
        }
    }

    #[test]
    fn data_open_never_panics(bytes in vec(any::<u8>(), 0..1600), key in any::<[u8; 32]>()) {
        let _ = DataHeader::peek(&bytes);
        let _ = DataPacket::open(&SessionKey(key), &bytes);
    }

    #[test]
    fn data_round_trip(
        key in any::<[u8; 32]>(),
        peer in any::<bool>(),
        session in any::<u32>(),
        segment in any::<u32>(),
        seq in any::<u32>(),
        payload in vec(any::<u8>(), 0..1500),
        flip in any::<usize>(),
    ) {
        let key = SessionKey(key);
        let header = DataHeader {
            origin: if peer { Origin::Peer } else { Origin::Server },
            session: SessionId(session),
            segment,
            seq,
        };
        let mut pkt = Vec::new();
        DataPacket::seal(&key, &header, &payload, &mut pkt);
        prop_assert_eq!(DataHeader::peek(&pkt), Ok(header));
        let (h, p) = DataPacket::open(&key, &pkt).unwrap();
        prop_assert_eq!(h, header);
        prop_assert_eq!(p, &payload[..]);
        // Any single-bit change past the flags is caught by the MAC.
        let i = 4 + flip % (pkt.len() - 4);
        pkt[i] ^= 1 << (flip % 8);
        prop_assert_eq!(DataPacket::open(&key, &pkt), Err(DataError::BadMac));
    }
}

fn sample_code() -> CodeParamsWire {
    CodeParamsWire {
        segment_size: 32 << 20,
        symbol_size: 1280,
        kind: CodeKind::Band,
        subgen_size: 64,
        stride: 32,
        checks: 4,
        field: FieldKind::Gf2,
        systematic: true,
    }
}

#[test]
fn file_meta_of_100_gib_fits_and_the_limit_is_where_documented() {
    let size = 100u64 << 30;
    let seg = 32u64 << 20;
    let n = segment_count(size, seg).unwrap();
    assert_eq!(n, 3200);
    let meta = FileMeta {
        name: "n".repeat(MAX_NAME_LEN),
        size,
        segment_size: seg,
        segment_count: n,
        code: sample_code(),
        last_segment_checks: 3,
        digests: vec![[7; 32]; n as usize],
        version: 1,
    };
    let bytes = Frame::FileMeta(meta.clone()).to_bytes().unwrap();
    assert!(bytes.len() < MAX_FRAME_LEN / 8, "{}", bytes.len());

    // The documented maximum segment count, with the longest name, still fits.
    let big = FileMeta {
        size: seg * MAX_SEGMENTS as u64,
        segment_count: MAX_SEGMENTS as u32,
        digests: vec![[1; 32]; MAX_SEGMENTS],
        ..meta.clone()
    };
    let bytes = Frame::FileMeta(big.clone()).to_bytes().unwrap();
    assert!(bytes.len() <= MAX_FRAME_LEN + FRAME_PREFIX_LEN);
    let mut dec = FrameDecoder::new();
    dec.push(&bytes);
    assert_eq!(
        dec.next_frame().unwrap(),
        Some(Frame::FileMeta(big.clone()))
    );

    // One more segment is refused by the encoder.
    let too_many = FileMeta {
        size: seg * (MAX_SEGMENTS as u64 + 1),
        segment_count: MAX_SEGMENTS as u32 + 1,
        digests: vec![[1; 32]; MAX_SEGMENTS + 1],
        ..meta
    };
    let mut out = vec![9u8];
    assert!(matches!(
        Frame::FileMeta(too_many).encode(&mut out),
        Err(WireError::ListTooLong { .. })
    ));
    assert_eq!(out, vec![9u8], "failed encode leaves the buffer untouched");
}

#[test]
fn inconsistent_file_meta_is_refused() {
    let meta = FileMeta {
        name: "f".into(),
        size: 10,
        segment_size: 4,
        segment_count: 3,
        code: sample_code(),
        last_segment_checks: 3,
        digests: vec![[0; 32]; 3],
        version: 0,
    };
    assert!(Frame::FileMeta(meta.clone()).to_bytes().is_ok());
    assert_eq!(meta.segment_range(2), Some(8..10));
    assert_eq!(meta.segment_len(0), Some(4));
    assert_eq!(meta.segment_range(3), None);
    let wrong_count = FileMeta {
        segment_count: 2,
        digests: vec![[0; 32]; 2],
        ..meta.clone()
    };
    assert_eq!(
        Frame::FileMeta(wrong_count).to_bytes(),
        Err(WireError::InvalidValue {
            field: "segment_count"
        })
    );
    let wrong_digests = FileMeta {
        digests: vec![[0; 32]; 2],
        ..meta.clone()
    };
    assert!(Frame::FileMeta(wrong_digests).to_bytes().is_err());
    let zero_seg = FileMeta {
        segment_size: 0,
        ..meta
    };
    assert!(Frame::FileMeta(zero_seg).to_bytes().is_err());
}

#[test]
fn strictness() {
    // Unknown message tag.
    assert_eq!(
        Frame::decode_body(&[PROTOCOL_VERSION, 200]),
        Err(WireError::UnknownTag {
            what: "message",
            tag: 200
        })
    );
    // Wrong version.
    assert_eq!(
        Frame::decode_body(&[PROTOCOL_VERSION + 1, 15]),
        Err(WireError::WrongVersion {
            got: PROTOCOL_VERSION + 1,
            expected: PROTOCOL_VERSION
        })
    );
    // Over-long string: announce MAX_NAME_LEN + 1.
    let mut body = vec![PROTOCOL_VERSION, 2];
    body.extend_from_slice(&(MAX_NAME_LEN as u16 + 1).to_le_bytes());
    body.extend(std::iter::repeat_n(b'a', MAX_NAME_LEN + 1));
    assert!(matches!(
        Frame::decode_body(&body),
        Err(WireError::StringTooLong { .. })
    ));
    // Invalid UTF-8.
    assert!(matches!(
        Frame::decode_body(&[PROTOCOL_VERSION, 2, 1, 0, 0xff]),
        Err(WireError::InvalidUtf8 { .. })
    ));
    // Huge list count with no bytes behind it: refused without allocating.
    let mut body = vec![PROTOCOL_VERSION, 5, 0];
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Frame::decode_body(&body),
        Err(WireError::ListTooLong { .. })
    ));
    let mut body = vec![PROTOCOL_VERSION, 5, 0];
    body.extend_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(
        Frame::decode_body(&body),
        Err(WireError::Truncated { .. })
    ));
    // A bool that is 2.
    assert!(matches!(
        Frame::decode_body(&[PROTOCOL_VERSION, 5, 2, 0, 0, 0, 0]),
        Err(WireError::InvalidValue { .. })
    ));
    // Empty Have range.
    let f = Frame::Have {
        name: "a".into(),
        version: 0,
        ranges: vec![SegmentRange { start: 3, end: 3 }],
    };
    assert!(f.to_bytes().is_err());
}

#[test]
fn decoder_rejects_oversized_prefix_at_once_and_stays_poisoned() {
    let mut dec = FrameDecoder::new();
    dec.push(&((MAX_FRAME_LEN as u32) + 1).to_le_bytes());
    let e = dec.next_frame().unwrap_err();
    assert!(matches!(e, WireError::FrameTooLarge { .. }));
    dec.push(&Frame::Exit.to_bytes().unwrap());
    assert_eq!(dec.next_frame().unwrap_err(), e);
    assert_eq!(dec.buffered(), 0);

    // A frame after a good one that is bad: the good one is delivered first.
    let mut dec = FrameDecoder::new();
    let mut s = Frame::ListFiles.to_bytes().unwrap();
    s.extend_from_slice(&[2, 0, 0, 0, PROTOCOL_VERSION, 250]);
    dec.push(&s);
    assert_eq!(dec.next_frame().unwrap(), Some(Frame::ListFiles));
    assert!(dec.next_frame().is_err());
}

#[test]
fn file_list_too_big_for_a_frame_is_an_encode_error() {
    let entries = vec![
        FileEntry {
            name: "x".repeat(MAX_NAME_LEN),
            size: 1
        };
        300
    ];
    assert!(matches!(
        Frame::FileList {
            entries,
            truncated: false
        }
        .to_bytes(),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn error_constructor_truncates_on_char_boundary() {
    let f = Frame::error(ErrorCode::Internal, "é".repeat(MAX_TEXT_LEN));
    let Frame::Error { message, .. } = &f else {
        unreachable!()
    };
    assert!(message.len() <= MAX_TEXT_LEN);
    assert!(f.to_bytes().is_ok());
}

#[test]
fn plan_segments_is_near_equal_and_aligned() {
    let max = 32u64 << 20;
    assert_eq!(plan_segments(0, max, 1280), Some((1280, 0)));
    assert_eq!(plan_segments(1, max, 1280), Some((1280, 1)));
    let (seg, n) = plan_segments(33 << 20, max, 1280).unwrap();
    assert_eq!(n, 2);
    assert_eq!(seg % 1280, 0);
    assert!(seg <= max);
    let last = (33u64 << 20) - seg;
    assert!(seg - last < 2 * 1280, "near-equal: {seg} vs {last}");
    for size in [1u64, 1279, 1280, 1281, max - 1, max, max + 1, 100 << 30] {
        let (seg, n) = plan_segments(size, max, 1280).unwrap();
        assert_eq!(Some(n), segment_count(size, seg));
        assert!(seg <= max && seg % 1280 == 0);
    }
    assert_eq!(plan_segments(10, 0, 1), None);
    assert_eq!(plan_segments(u64::MAX, 1 << 20, 1), None);
}
