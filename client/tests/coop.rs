//! Cooperation end to end (issue 5), with real `ccfd-server` and `ccfd-client` processes, each on its
//! own 127.77.x.y address (x = 40..43 here, distinct from the other test files):
//!
//! * eight upload-capped clients get a 64 MiB file: every digest matches, every client got bytes
//!   from peers, and the server (its own statistics line at SIGTERM) sent under 3 copies;
//! * a client SIGKILLed mid-transfer does not stall the others;
//! * a client that joins late is served by peers too;
//! * a hostile peer ([`common::hostile`]) that acknowledges every ask and streams garbage under a
//!   valid MAC (and keeps streaming for 2 s after `StopCoop`, into the server-only refetch) is
//!   caught by the segment digests, and every honest client still ends correct.
//!
//! The server is rate-capped (`--max-rate`) so that it, not the loopback, is the bottleneck: peers
//! must fill the rest, which is what these tests are about. The tests take turns ([`TURN`]): each
//! runs up to eight clients, and running them all at once on a 2-core machine would measure the CPU
//! scheduler rather than cooperation.

mod common;

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::hostile::{Hostile, HostileConfig};
use common::*;

const MIB: usize = 1 << 20;

/// One cooperation test at a time.
static TURN: Mutex<()> = Mutex::new(());

fn take_turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `n` clients on `127.77.{net}.{10+i}` with `extra` arguments; returns (output, process,
/// stdout, stderr) per client.
fn start_clients(
    scratch: &Scratch,
    server: &Server,
    name: &str,
    net: u8,
    range: std::ops::Range<usize>,
    extra: &[&str],
) -> Vec<(
    std::path::PathBuf,
    Proc,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    range
        .map(|i| {
            let out = scratch.out(&format!("c{i}.bin"));
            let bind = format!("127.77.{net}.{}", 10 + i);
            let (proc, stdout, stderr) = spawn_client(
                &strs(&coop_get_args(name, server.addr, &out, &bind, extra)),
                scratch.work(),
                &format!("c{i}"),
            );
            (out, proc, stdout, stderr)
        })
        .collect()
}

#[test]
fn eight_capped_clients_share_64_mib_and_the_server_sends_under_three_copies() {
    let _turn = take_turn();
    let scratch = Scratch::new();
    let size = 64 * MIB;
    let digest = make_file(&scratch.root(), "big.bin", size);
    let mut server = Server::start(
        "127.77.40.1",
        &scratch.root(),
        scratch.work(),
        "[coding]\nsegment-size = \"8MiB\"\n",
        &["--max-rate", "100mbit"],
    );
    let started = Instant::now();
    let clients = start_clients(
        &scratch,
        &server,
        "big.bin",
        40,
        0..8,
        &["--upload-rate", "400mbit"],
    );
    let mut from_peers = Vec::new();
    for (i, (out, proc, stdout, stderr)) in clients.into_iter().enumerate() {
        let run = finish_client(proc, &stdout, &stderr, Duration::from_secs(150));
        run.assert_success();
        assert_eq!(digest_of(&out), digest, "client {i}: digest mismatch");
        let summary = run.summary();
        assert_eq!(summary.bytes, size as u64, "client {i}: {summary:?}");
        assert!(
            summary.bytes_from_peers > 0,
            "client {i} received nothing from peers: {summary:?}"
        );
        from_peers.push(summary.bytes_from_peers as f64 / size as f64);
    }
    let elapsed = started.elapsed();
    let totals = server.stop(Duration::from_secs(20));
    let copies = totals.bytes_sent as f64 / size as f64;
    say(&format!(
        "coop 8 clients, 64 MiB, server capped at 100 Mbit/s: {:.1} s, server sent {copies:.2} copies; \
         share from peers per client {from_peers:.2?}",
        elapsed.as_secs_f64()
    ));
    assert!(
        copies < 3.0,
        "the server sent {copies:.2} copies of the file ({totals:?}): cooperation did not carry the load"
    );
}

#[test]
fn a_client_killed_mid_transfer_does_not_stall_the_others() {
    let _turn = take_turn();
    let scratch = Scratch::new();
    let size = 24 * MIB;
    let digest = make_file(&scratch.root(), "kill.bin", size);
    let server = Server::start(
        "127.77.41.1",
        &scratch.root(),
        scratch.work(),
        "[coding]\nsegment-size = \"2MiB\"\n",
        &["--max-rate", "80mbit"],
    );
    let mut clients = start_clients(
        &scratch,
        &server,
        "kill.bin",
        41,
        0..4,
        &["--upload-rate", "200mbit", "--linger", "1s"],
    );
    // Kill client 0 once it holds a few segments (it is serving its peers by then).
    let (victim_out, mut victim, _, _) = clients.remove(0);
    let done = wait_for_segments(&victim_out, 3, Duration::from_secs(60));
    assert!(done < 12, "client 0 finished before it could be killed");
    victim.kill(); // SIGKILL
    let killed_at = Instant::now();
    let mut peers_total = 0;
    for (i, (out, proc, stdout, stderr)) in clients.into_iter().enumerate() {
        let run = finish_client(proc, &stdout, &stderr, Duration::from_secs(90));
        run.assert_success();
        assert_eq!(digest_of(&out), digest, "client {}: digest mismatch", i + 1);
        peers_total += run.summary().bytes_from_peers;
    }
    say(&format!(
        "coop kill: the 3 survivors finished {:.1} s after client 0 was killed",
        killed_at.elapsed().as_secs_f64()
    ));
    assert!(
        peers_total > 0,
        "no survivor received anything from peers: cooperation was not exercised"
    );
}

#[test]
fn a_late_joiner_is_served_by_peers() {
    let _turn = take_turn();
    let scratch = Scratch::new();
    let size = 24 * MIB;
    let digest = make_file(&scratch.root(), "late.bin", size);
    let server = Server::start(
        "127.77.42.1",
        &scratch.root(),
        scratch.work(),
        "[coding]\nsegment-size = \"2MiB\"\n",
        &["--max-rate", "80mbit"],
    );
    let early = start_clients(
        &scratch,
        &server,
        "late.bin",
        42,
        0..3,
        &["--upload-rate", "200mbit", "--linger", "5s"],
    );
    // Join once the first early client holds half the file.
    let done = wait_for_segments(&early[0].0, 6, Duration::from_secs(60));
    assert!(
        done < 12,
        "the early clients finished before the late one joined"
    );
    let late_out = scratch.out("late.bin");
    let (late, late_stdout, late_stderr) = spawn_client(
        &strs(&coop_get_args(
            "late.bin",
            server.addr,
            &late_out,
            "127.77.42.30",
            &["--upload-rate", "200mbit", "--linger", "0s"],
        )),
        scratch.work(),
        "late",
    );
    let run = finish_client(late, &late_stdout, &late_stderr, Duration::from_secs(90));
    run.assert_success();
    assert_eq!(digest_of(&late_out), digest, "late client: digest mismatch");
    let summary = run.summary();
    assert!(
        summary.bytes_from_peers > 0,
        "the late client received nothing from peers: {summary:?}"
    );
    say(&format!(
        "coop late joiner: {:.0} % of its bytes from peers",
        100.0 * summary.bytes_from_peers as f64
            / (summary.bytes_from_peers + summary.bytes_from_server).max(1) as f64
    ));
    for (i, (out, proc, stdout, stderr)) in early.into_iter().enumerate() {
        let run = finish_client(proc, &stdout, &stderr, Duration::from_secs(90));
        run.assert_success();
        assert_eq!(digest_of(&out), digest, "early client {i}: digest mismatch");
    }
}

#[test]
fn a_hostile_peer_with_valid_macs_is_caught_by_the_digest_and_cut_off() {
    let _turn = take_turn();
    let scratch = Scratch::new();
    let size = 16 * MIB;
    let digest = make_file(&scratch.root(), "hostile.bin", size);
    let server = Server::start(
        "127.77.43.1",
        &scratch.root(),
        scratch.work(),
        "[coding]\nsegment-size = \"2MiB\"\n",
        &["--max-rate", "80mbit"],
    );
    let ip: IpAddr = "127.77.43.66".parse().expect("ip");
    let hostile = Hostile::start(
        server.addr,
        ip,
        "hostile.bin",
        HostileConfig {
            lifetime: Duration::from_secs(150),
            ignore_stop_for: Duration::from_secs(2),
            ..HostileConfig::default()
        },
    );
    let started = Instant::now();
    let clients = start_clients(
        &scratch,
        &server,
        "hostile.bin",
        43,
        0..3,
        &["--upload-rate", "200mbit", "--linger", "1s"],
    );
    let mut failed_digests = Vec::new();
    for (i, (out, proc, stdout, stderr)) in clients.into_iter().enumerate() {
        let run = finish_client(proc, &stdout, &stderr, Duration::from_secs(120));
        run.assert_success();
        assert_eq!(
            digest_of(&out),
            digest,
            "honest client {i} ended with a wrong file"
        );
        failed_digests.push(run.summary().segments_failed_digest);
    }
    say(&format!(
        "coop hostile peer: {} asks, {} garbage packets sent; segments failing their digest per \
         client {failed_digests:?}; honest clients done in {:.1} s",
        hostile.asks(),
        hostile.packets_sent(),
        started.elapsed().as_secs_f64()
    ));
    assert!(
        hostile.asks() > 0,
        "no honest client ever asked the hostile peer (the server lists it as holding every segment)"
    );
    assert!(
        failed_digests.iter().any(|&n| n > 0),
        "the hostile peer's garbage was never detected: {failed_digests:?} ({} packets sent)",
        hostile.packets_sent()
    );
}
