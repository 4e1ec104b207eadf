//! Loopback smoke test of cooperation with real processes: one `ccfd-server` and three
//! `ccfd-client`s, each on its own 127.78.1.x address, fetch a 12 MiB file together. Every output must
//! match the file's digest, and at least one client must have received bytes from its peers (which
//! means peer links, `AskCoop`, the shard's streams and the decoder's acceptance of `Origin::Peer`
//! packets all worked) while its peers sent them. A fourth client with `--no-coop` fetches the same
//! file at the same time from the server alone: it neither receives from peers nor sends to them.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn three_cooperating_clients_get_the_file_and_share_packets() {
    let scratch = Scratch::new();
    let size = 12 << 20;
    let digest = make_file(&scratch.root(), "swarm.bin", size);
    // Small segments and a server that is the bottleneck (capped egress), so that peers have time to
    // relay while the server is still sending.
    let server = Server::start(
        "127.78.1.1",
        &scratch.root(),
        scratch.work(),
        "[coding]\nsegment-size = \"2MiB\"\n",
        &["--max-rate", "150mbit"],
    );
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let out = scratch.out(&format!("c{i}.bin"));
            let bind = format!("127.78.1.{}", 10 + i);
            let mut args = get_args("swarm.bin", server.addr, &out, &bind);
            if i == 3 {
                args.push("--no-coop".to_string());
            } else {
                args.extend(["--linger".to_string(), "2s".to_string()]);
            }
            let (proc, stdout, stderr) =
                spawn_client(&strs(&args), scratch.work(), &format!("c{i}"));
            (out, proc, stdout, stderr)
        })
        .collect();
    let mut from_peers = 0;
    let mut to_peers = 0;
    for (i, (out, proc, stdout, stderr)) in clients.into_iter().enumerate() {
        let run = finish_client(proc, &stdout, &stderr, Duration::from_secs(120));
        run.assert_success();
        assert_eq!(digest_of(&out), digest, "client {i}: digest mismatch");
        let summary = run.summary();
        assert_eq!(summary.bytes, size as u64, "client {i}: bytes verified");
        assert_eq!(
            summary.segments_failed_digest, 0,
            "client {i}: digest failures"
        );
        eprintln!(
            "client {i}: from server {} from peers {} to peers {} overhead {:.3} in {:.2}s",
            summary.bytes_from_server,
            summary.bytes_from_peers,
            summary.bytes_to_peers,
            summary.decode_overhead,
            summary.seconds
        );
        if i == 3 {
            assert_eq!(
                summary.bytes_from_peers, 0,
                "--no-coop client got peer packets"
            );
            assert_eq!(summary.bytes_to_peers, 0, "--no-coop client served peers");
            continue;
        }
        from_peers += summary.bytes_from_peers;
        to_peers += summary.bytes_to_peers;
    }
    assert!(from_peers > 0, "no client received anything from its peers");
    assert!(to_peers > 0, "no client sent anything to its peers");
}
