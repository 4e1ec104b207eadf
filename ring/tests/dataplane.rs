//! Data-plane tests on real loopback sockets, each run for both backends. Every test uses its own
//! 127.0.N.x addresses (N per test) and ephemeral ports, so tests run in parallel.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ccfd_ring::{
    BackendChoice, BackendKind, Ring, RingConfig, RingError, SendError, SocketConfig, SocketId,
    Transmit,
};

const BACKENDS: [BackendChoice; 2] = [BackendChoice::Syscall, BackendChoice::Uring];

/// A ring on `backend`, or `None` (with a note) when io_uring is unavailable on this host.
fn ring(backend: BackendChoice) -> Option<Ring> {
    ring_with(RingConfig::default().backend(backend))
}

fn ring_with(config: RingConfig) -> Option<Ring> {
    match Ring::new(&config) {
        Ok(r) => {
            let want = match config.backend {
                BackendChoice::Uring => BackendKind::Uring,
                _ => BackendKind::Syscall,
            };
            assert_eq!(r.backend(), want);
            Some(r)
        }
        Err(RingError::UringUnavailable { reason }) => {
            // Uncaptured by `cargo test`, so the skip is visible in every run.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("SKIP io_uring backend: {reason}\n"),
            );
            None
        }
        Err(e) => panic!("ring setup failed: {e}"),
    }
}

fn addr(net: u8, host: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, net, host], 0))
}

/// Datagram `seq`: 8-byte header (seq, len) then a pattern derived from seq.
fn fill(buf: &mut [u8], seq: u32) {
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&seq.to_le_bytes());
    buf[4..8].copy_from_slice(&len.to_le_bytes());
    for (i, b) in buf[8..].iter_mut().enumerate() {
        *b = (seq as usize * 31 + i * 7) as u8;
    }
}

/// Checks a datagram's pattern; returns its sequence number.
fn check(payload: &[u8]) -> u32 {
    assert!(
        payload.len() >= 8,
        "runt datagram of {} bytes",
        payload.len()
    );
    let seq = u32::from_le_bytes(payload[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, payload.len(), "datagram {seq} has the wrong length");
    for (i, b) in payload[8..].iter().enumerate() {
        assert_eq!(
            *b,
            (seq as usize * 31 + i * 7) as u8,
            "datagram {seq} corrupt at {i}"
        );
    }
    seq
}

/// Receives until `want` datagrams arrived or 5 s passed; returns seq -> (socket, source, len).
fn receive(
    rx: &mut Ring,
    tx: Option<&mut Ring>,
    want: usize,
) -> BTreeMap<u32, (SocketId, SocketAddr, usize)> {
    let mut got = BTreeMap::new();
    let mut tx = tx;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < deadline {
        if let Some(tx) = tx.as_deref_mut() {
            tx.submit().unwrap();
            tx.process(usize::MAX, |_| {}).unwrap();
        }
        rx.wait(Some(Duration::from_millis(20))).unwrap();
        rx.process(64, |d| {
            let seq = check(d.payload);
            let dup = got.insert(seq, (d.socket, d.source, d.payload.len()));
            assert!(dup.is_none(), "datagram {seq} delivered twice");
        })
        .unwrap();
    }
    got
}

/// Sends `batches` buffers of `per_batch` datagrams (`size` bytes; the last batch ends with a
/// short datagram) and checks every one arrives intact.
fn send_batches(backend: BackendChoice, net: u8, tx_gso: bool, rx_gro: bool) -> (Ring, Ring) {
    let (mut tx, mut rx) = match (ring(backend), ring(backend)) {
        (Some(t), Some(r)) => (t, r),
        _ => panic!("unreachable: skipped before"),
    };
    let src = tx
        .bind(&SocketConfig::new(addr(net, 1)).gso(tx_gso))
        .unwrap();
    let dst = rx
        .bind(&SocketConfig::new(addr(net, 2)).gro(rx_gro))
        .unwrap();
    let dst_addr = rx.local_addr(dst).unwrap();
    let src_addr = tx.local_addr(src).unwrap();
    let size = 1200;
    let (batches, per_batch) = (20u32, 40u32);
    let mut seq = 0u32;
    for b in 0..batches {
        // 64 buffers in the pool, 20 batches: never exhausted.
        let mut buf = tx.send_buffer(src, dst_addr, size).unwrap();
        for i in 0..per_batch {
            let len = if b == batches - 1 && i == per_batch - 1 {
                333
            } else {
                size
            };
            let n = buf
                .push_with(|slot| {
                    fill(&mut slot[..len], seq);
                    len
                })
                .unwrap();
            assert_eq!(n, len);
            seq += 1;
        }
        if b == batches - 1 {
            assert!(buf.is_full(), "a short datagram closes the buffer");
            assert!(buf.push(&[0; 10]).is_err());
        }
        buf.queue();
    }
    let total = seq as usize;
    let got = receive(&mut rx, Some(&mut tx), total);
    assert_eq!(got.len(), total, "{backend:?}: lost datagrams");
    for (seq, (socket, source, len)) in &got {
        assert_eq!(*socket, dst);
        assert_eq!(*source, src_addr);
        let expect = if *seq == seq_last(total) { 333 } else { size };
        assert_eq!(*len, expect);
    }
    tx.process(usize::MAX, |_| {}).unwrap();
    let c = tx.counters();
    assert_eq!(c.sent_datagrams, total as u64, "{backend:?}: {c:?}");
    assert_eq!(c.send_error_datagrams, 0);
    assert_eq!(rx.counters().received_datagrams, total as u64);
    (tx, rx)
}

fn seq_last(total: usize) -> u32 {
    total as u32 - 1
}

fn available(backend: BackendChoice) -> bool {
    ring(backend).is_some()
}

#[test]
fn gso_batches_arrive_complete_and_intact() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        if !available(backend) {
            continue;
        }
        let (tx, _rx) = send_batches(backend, 10 + k as u8, true, false);
        // 20 buffers, one GSO send each.
        assert_eq!(tx.counters().send_ops, 20, "{backend:?}");
        assert_eq!(tx.counters().gso_fallbacks, 0);
    }
}

#[test]
fn batches_without_gso_arrive_complete_and_intact() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        if !available(backend) {
            continue;
        }
        let (tx, _rx) = send_batches(backend, 12 + k as u8, false, false);
        let ops = tx.counters().send_ops;
        match backend {
            // One SendMsg per datagram.
            BackendChoice::Uring => assert_eq!(ops, 800),
            // sendmmsg per buffer (more only if the kernel sent a partial batch).
            _ => assert!((20..=800).contains(&ops), "{ops}"),
        }
    }
}

#[test]
fn gro_buffers_split_into_the_original_datagrams() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        if !available(backend) {
            continue;
        }
        let (_tx, rx) = send_batches(backend, 14 + k as u8, true, true);
        let c = rx.counters();
        // On loopback a GSO super-buffer reaches a GRO socket whole: far fewer messages than
        // datagrams, each split again by its segment size.
        assert!(
            c.recv_ops * 4 <= c.received_datagrams,
            "{backend:?}: no coalescing seen: {c:?}"
        );
    }
}

#[test]
fn transmit_copies_and_splits_by_segment_size() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        let (Some(mut tx), Some(mut rx)) = (ring(backend), ring(backend)) else {
            continue;
        };
        let net = 16 + k as u8;
        let src = tx.bind(&SocketConfig::new(addr(net, 1))).unwrap();
        let dst = rx.bind(&SocketConfig::new(addr(net, 2))).unwrap();
        let dst_addr = rx.local_addr(dst).unwrap();
        let mut contents = vec![0u8; 10 * 500 + 77];
        for (i, chunk) in contents.chunks_mut(500).enumerate() {
            fill(chunk, i as u32);
        }
        tx.queue_transmit(&Transmit {
            socket: src,
            destination: dst_addr,
            segment_size: 500,
            contents: &contents,
        })
        .unwrap();
        let got = receive(&mut rx, Some(&mut tx), 11);
        assert_eq!(got.len(), 11, "{backend:?}");
        assert_eq!(got[&10].2, 77);
        // Invalid requests are refused without touching the ring.
        let too_many = vec![0u8; 65 * 10];
        let bad = tx.queue_transmit(&Transmit {
            socket: src,
            destination: dst_addr,
            segment_size: 10,
            contents: &too_many,
        });
        assert!(matches!(bad, Err(SendError::TooLarge { .. })), "{bad:?}");
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert!(matches!(
            tx.send_buffer(src, v6, 100),
            Err(SendError::AddressFamily)
        ));
        assert!(matches!(
            tx.send_buffer(src, dst_addr, 0),
            Err(SendError::BadSegmentSize { .. })
        ));
    }
}

/// `SO_NO_CHECK` makes the kernel refuse GSO sends with EINVAL (checksum offload is needed to
/// segment): the ring must switch GSO off for that socket and resend datagram by datagram.
#[test]
fn gso_rejection_switches_gso_off_and_resends() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        let (Some(mut tx), Some(mut rx)) = (ring(backend), ring(backend)) else {
            continue;
        };
        let net = 28 + k as u8;
        let bound = SocketConfig::new(addr(net, 1)).bind().unwrap();
        assert!(bound.gso(), "GSO probe failed on this kernel");
        let one: libc::c_int = 1;
        // SAFETY: valid fd, pointer to a live int and its size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&bound),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let src = tx.register(bound).unwrap();
        let dst = rx.bind(&SocketConfig::new(addr(net, 2))).unwrap();
        let dst_addr = rx.local_addr(dst).unwrap();
        let mut seq = 0;
        for _ in 0..3 {
            let mut buf = tx.send_buffer(src, dst_addr, 900).unwrap();
            for _ in 0..30 {
                buf.push_with(|b| {
                    fill(b, seq);
                    b.len()
                })
                .unwrap();
                seq += 1;
            }
            buf.queue();
        }
        let got = receive(&mut rx, Some(&mut tx), seq as usize);
        assert_eq!(
            got.len(),
            seq as usize,
            "{backend:?}: resent datagrams lost"
        );
        tx.process(usize::MAX, |_| {}).unwrap();
        let c = tx.counters();
        assert_eq!(c.gso_fallbacks, 1, "{backend:?}: {c:?}");
        assert!(!tx.gso_enabled(src).unwrap());
        assert_eq!(c.sent_datagrams, 90, "{backend:?}: {c:?}");
        assert_eq!(c.send_error_datagrams, 0, "{backend:?}: {c:?}");
    }
}

#[test]
fn errors_do_not_stop_the_ring() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        let (Some(mut tx), Some(mut rx)) = (ring(backend), ring(backend)) else {
            continue;
        };
        let net = 18 + k as u8;
        let src = tx.bind(&SocketConfig::new(addr(net, 1))).unwrap();
        let dst = rx.bind(&SocketConfig::new(addr(net, 2))).unwrap();
        let dst_addr = rx.local_addr(dst).unwrap();
        // A port nobody listens on (bound, then closed).
        let closed = std::net::UdpSocket::bind(addr(net, 3)).unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let mut seq = 0u32;
        for round in 0..3 {
            // Too large for one UDP/IPv4 datagram: the kernel answers EMSGSIZE.
            let huge = vec![0u8; 65520];
            tx.queue_transmit(&Transmit {
                socket: src,
                destination: dst_addr,
                segment_size: huge.len(),
                contents: &huge,
            })
            .unwrap();
            // To a closed port (ICMP port unreachable comes back).
            let mut buf = tx.send_buffer(src, closed_addr, 100).unwrap();
            for _ in 0..5 {
                buf.push(&[round; 100]).unwrap();
            }
            buf.queue();
            // And good datagrams, which must all arrive.
            let mut buf = tx.send_buffer(src, dst_addr, 1000).unwrap();
            for _ in 0..10 {
                buf.push_with(|b| {
                    fill(b, seq);
                    b.len()
                })
                .unwrap();
                seq += 1;
            }
            buf.queue();
            tx.submit().unwrap();
        }
        let got = receive(&mut rx, Some(&mut tx), seq as usize);
        assert_eq!(got.len(), seq as usize, "{backend:?}: good sends lost");
        tx.process(usize::MAX, |_| {}).unwrap();
        let c = tx.counters();
        assert_eq!(c.send_errors.message_too_long, 3, "{backend:?}: {c:?}");
        assert_eq!(c.sent_datagrams, 30 + 15, "{backend:?}: {c:?}");
        assert_eq!(c.gso_fallbacks, 0);
        assert_eq!(rx.counters().recv_truncated, 0);
    }
}

#[test]
fn waker_reaches_a_waiting_ring() {
    for backend in BACKENDS {
        let Some(mut r) = ring(backend) else { continue };
        // A wake before the wait is not lost.
        r.waker().wake();
        r.wait(Some(Duration::from_secs(10))).unwrap();
        let p = r.process(16, |_| {}).unwrap();
        assert!(p.woken, "{backend:?}: early wake lost");
        // A wake from another thread ends a long wait.
        let waker = r.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        let start = Instant::now();
        let mut woken = false;
        while !woken && start.elapsed() < Duration::from_secs(20) {
            r.wait(Some(Duration::from_secs(30))).unwrap();
            woken = r.process(16, |_| {}).unwrap().woken;
        }
        t.join().unwrap();
        assert!(woken, "{backend:?}: wake never arrived");
        assert!(start.elapsed() < Duration::from_secs(20));
        assert_eq!(r.counters().wakeups, 2);
        // With no wake, a short timeout just returns.
        r.wait(Some(Duration::from_millis(10))).unwrap();
        assert!(!r.process(16, |_| {}).unwrap().woken);
    }
}

#[test]
fn closed_sockets_are_released_and_refused() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        let Some(mut r) = ring(backend) else { continue };
        let net = 20 + k as u8;
        let a = r.bind(&SocketConfig::new(addr(net, 1))).unwrap();
        let a_addr = r.local_addr(a).unwrap();
        r.close(a).unwrap();
        assert!(matches!(r.close(a), Err(RingError::UnknownSocket(_))));
        assert!(matches!(
            r.send_buffer(a, a_addr, 10),
            Err(SendError::UnknownSocket(_))
        ));
        // Let the cancelled receive finish, then the port can be bound again.
        for _ in 0..20 {
            r.wait(Some(Duration::from_millis(5))).unwrap();
            r.process(16, |_| {}).unwrap();
        }
        let b = r.bind(&SocketConfig::new(a_addr)).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.index(), a.index(), "slot reused with a new generation");
        // The new socket works: loop a datagram through it to itself.
        let mut buf = r.send_buffer(b, a_addr, 64).unwrap();
        buf.push_with(|s| {
            fill(s, 7);
            s.len()
        })
        .unwrap();
        buf.queue();
        let got = receive(&mut r, None, 1);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            vec![7],
            "{backend:?}"
        );
    }
}

#[test]
fn many_sockets_on_one_ring() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        let (Some(mut tx), Some(mut rx)) = (ring(backend), ring(backend)) else {
            continue;
        };
        let net = 22 + k as u8;
        let src = tx.bind(&SocketConfig::new(addr(net, 1))).unwrap();
        let sockets: Vec<SocketId> = (0..8)
            .map(|i| {
                rx.bind(&SocketConfig::new(addr(net, 10 + i)).recv_buffer(1 << 20))
                    .unwrap()
            })
            .collect();
        let mut seq = 0;
        let mut expect = BTreeMap::new();
        for (i, s) in sockets.iter().enumerate() {
            let to = rx.local_addr(*s).unwrap();
            for _ in 0..=i {
                let mut buf = tx.send_buffer(src, to, 256).unwrap();
                buf.push_with(|b| {
                    fill(b, seq);
                    b.len()
                })
                .unwrap();
                buf.queue();
                expect.insert(seq, *s);
                seq += 1;
            }
        }
        let got = receive(&mut rx, Some(&mut tx), expect.len());
        assert_eq!(got.len(), expect.len(), "{backend:?}");
        for (seq, (socket, _, _)) in got {
            assert_eq!(expect[&seq], socket, "datagram {seq} on the wrong socket");
        }
    }
}

/// Drop with multishot receives armed, datagrams queued in the kernel, sends queued and in
/// flight, and a socket mid-close. Run under valgrind with:
/// `valgrind --error-exitcode=1 target/.../dataplane-* drop_with_operations_in_flight`.
#[test]
fn drop_with_operations_in_flight_is_clean() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        let net = 24 + k as u8;
        for round in 0..3 {
            let config = RingConfig::default()
                .backend(backend)
                .recv_buffers(16, 68 * 1024)
                .send_buffers(8);
            let Some(mut r) = ring_with(config) else {
                continue;
            };
            let mut socks = Vec::new();
            for i in 0..3 {
                socks.push(
                    r.bind(&SocketConfig::new(addr(net, 1 + i)).recv_buffer(1 << 20))
                        .unwrap(),
                );
            }
            let targets: Vec<SocketAddr> =
                socks.iter().map(|s| r.local_addr(*s).unwrap()).collect();
            // Arm the receives.
            r.submit().unwrap();
            // Fill the send pool towards our own sockets (so receives complete too), leave
            // some submitted, some only queued.
            let mut queued = 0;
            while queued < 8 {
                let mut buf = r.send_buffer(socks[0], targets[queued % 3], 1200).unwrap();
                while !buf.is_full() {
                    buf.push(&[queued as u8; 1200]).unwrap();
                }
                buf.queue();
                queued += 1;
                if queued == 4 {
                    r.submit().unwrap();
                }
            }
            if backend == BackendChoice::Uring {
                // Every buffer is owned by the kernel or queued: none left.
                assert!(matches!(
                    r.send_buffer(socks[0], targets[0], 1200),
                    Err(SendError::PoolExhausted)
                ));
            }
            if round == 1 {
                r.close(socks[2]).unwrap();
            }
            if round == 2 {
                // Let completions pile up unprocessed in the CQ.
                r.wait(Some(Duration::from_millis(20))).unwrap();
            }
            drop(r);
        }
        // The addresses are free again: nothing leaked a socket.
        for i in 0..3 {
            std::net::UdpSocket::bind(addr(net, 1 + i)).unwrap();
        }
    }
}

#[test]
fn wait_with_timeout_returns() {
    for backend in BACKENDS {
        let Some(mut r) = ring(backend) else { continue };
        let _s = r.bind(&SocketConfig::new(addr(26, 1))).unwrap();
        let start = Instant::now();
        r.wait(Some(Duration::from_millis(30))).unwrap();
        let p = r.process(16, |_| {}).unwrap();
        assert_eq!(p.datagrams, 0);
        assert!(
            start.elapsed() >= Duration::from_millis(25),
            "{backend:?}: returned early"
        );
    }
}

#[test]
fn ipv6_loopback_works_too() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        // Uncaptured by `cargo test`, so the skip is visible in every run.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("SKIP: no IPv6 loopback here\n"),
        );
        return;
    }
    for backend in BACKENDS {
        let (Some(mut tx), Some(mut rx)) = (ring(backend), ring(backend)) else {
            continue;
        };
        let any6: SocketAddr = "[::1]:0".parse().unwrap();
        let src = tx.bind(&SocketConfig::new(any6)).unwrap();
        let dst = rx.bind(&SocketConfig::new(any6)).unwrap();
        let dst_addr = rx.local_addr(dst).unwrap();
        let mut buf = tx.send_buffer(src, dst_addr, 1000).unwrap();
        for seq in 0..20 {
            buf.push_with(|b| {
                fill(b, seq);
                b.len()
            })
            .unwrap();
        }
        buf.queue();
        let got = receive(&mut rx, Some(&mut tx), 20);
        assert_eq!(got.len(), 20, "{backend:?}");
        assert!(got
            .values()
            .all(|(_, from, _)| *from == tx.local_addr(src).unwrap()));
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(matches!(
            tx.send_buffer(src, v4, 100),
            Err(SendError::AddressFamily)
        ));
    }
}

/// A burst larger than the buffers offered to the kernel: the multishot receive runs dry
/// (ENOBUFS, no F_MORE), is re-armed with more buffers, and nothing is lost.
#[test]
fn multishot_receive_is_rearmed_after_running_dry() {
    for (k, backend) in BACKENDS.into_iter().enumerate() {
        let (Some(mut tx), Some(mut rx)) = (ring(backend), ring(backend)) else {
            continue;
        };
        let net = 30 + k as u8;
        let src = tx.bind(&SocketConfig::new(addr(net, 1))).unwrap();
        // No GRO: every datagram is its own message and takes one receive buffer.
        let dst = rx
            .bind(&SocketConfig::new(addr(net, 2)).gro(false))
            .unwrap();
        let dst_addr = rx.local_addr(dst).unwrap();
        // Arm the receive, then queue 600 datagrams in the socket before the ring looks.
        rx.submit().unwrap();
        let mut seq = 0;
        for _ in 0..15 {
            let mut buf = tx.send_buffer(src, dst_addr, 200).unwrap();
            for _ in 0..40 {
                buf.push_with(|b| {
                    fill(b, seq);
                    b.len()
                })
                .unwrap();
                seq += 1;
            }
            buf.queue();
        }
        tx.submit().unwrap();
        let got = receive(&mut rx, Some(&mut tx), seq as usize);
        assert_eq!(got.len(), seq as usize, "{backend:?}");
        let c = rx.counters();
        assert_eq!(c.recv_ops, 600, "{backend:?}: {c:?}");
        if backend == BackendChoice::Uring {
            assert!(c.recv_buffer_exhausted >= 1, "{c:?}");
            assert!(c.recv_rearms >= 1, "{c:?}");
        }
        assert_eq!(c.kernel_queue_drops, 0);
    }
}
