//! End-to-end tests with real processes: one `ccfd-server` and `ccfd-client`s on their own 127.77.x.y
//! addresses (each test uses its own x, so tests run in parallel without sharing ports).

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ccfd_client::resume::ResumeRecord;
use common::*;

/// Small segments and symbols so the edge cases and the multi-segment tests stay fast.
const SMALL_SEGMENTS: &str = "[coding]\nsegment-size = \"1MiB\"\nsymbol-size = 1024\n";

#[test]
fn one_then_four_concurrent_clients_get_64_mib() {
    let scratch = Scratch::new();
    let digest = make_file(&scratch.root(), "big.bin", 64 << 20);
    let server = Server::start(
        "127.77.1.1",
        &scratch.root(),
        scratch.work(),
        "[coding]\nsegment-size = \"16MiB\"\n",
        &[],
    );

    let out = scratch.out("single.bin");
    let run = run_client(
        &strs(&get_args("big.bin", server.addr, &out, "127.77.1.10")),
        scratch.work(),
        "single",
        Duration::from_secs(120),
    );
    run.assert_success();
    assert_eq!(digest_of(&out), digest, "single client: digest mismatch");
    let summary = run.summary();
    assert_eq!(summary.bytes, 64 << 20);
    assert_eq!(summary.segments_fetched, u64::from(summary.segments));
    assert_eq!(
        summary.dropped.bad_mac + summary.dropped.malformed + summary.dropped.wrong_session,
        0
    );
    // One time per segment, and their bytes add up to what came from the server.
    assert_eq!(summary.segment_times.len(), summary.segments as usize);
    assert_eq!(
        summary
            .segment_times
            .iter()
            .map(|t| t.from_server + t.from_peers)
            .sum::<u64>(),
        summary.bytes_from_server + summary.bytes_from_peers
    );
    assert!(summary.segment_times.iter().all(|t| t.seconds > 0.0));
    assert!(summary.fsync_seconds >= 0.0);
    assert!(
        !ccfd_client::output::record_path(&out).exists(),
        "resume record left behind"
    );

    let clients: Vec<_> = (0..4)
        .map(|i| {
            let out = scratch.out(&format!("c{i}.bin"));
            let bind = format!("127.77.1.{}", 20 + i);
            let (proc, stdout, stderr) = spawn_client(
                &strs(&get_args("big.bin", server.addr, &out, &bind)),
                scratch.work(),
                &format!("c{i}"),
            );
            (out, proc, stdout, stderr)
        })
        .collect();
    for (i, (out, proc, stdout, stderr)) in clients.into_iter().enumerate() {
        let run = finish_client(proc, &stdout, &stderr, Duration::from_secs(180));
        run.assert_success();
        assert_eq!(
            digest_of(&out),
            digest,
            "concurrent client {i}: digest mismatch"
        );
        assert_eq!(run.summary().bytes, 64 << 20);
    }
}

#[test]
fn edge_sizes_zero_one_symbol_plus_one_segment_plus_one() {
    let scratch = Scratch::new();
    let symbol = 1024;
    let segment = 1 << 20;
    let files = [
        ("zero", 0),
        ("one", 1),
        ("symbol-plus-one", symbol + 1),
        ("segment-plus-one", segment + 1),
    ];
    let digests: Vec<_> = files
        .iter()
        .map(|(name, len)| make_file(&scratch.root(), name, *len))
        .collect();
    let server = Server::start(
        "127.77.2.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &[],
    );
    for (i, ((name, len), digest)) in files.iter().zip(&digests).enumerate() {
        let out = scratch.out(name);
        let bind = format!("127.77.2.{}", 10 + i);
        let run = run_client(
            &strs(&get_args(name, server.addr, &out, &bind)),
            scratch.work(),
            name,
            Duration::from_secs(60),
        );
        run.assert_success();
        assert_eq!(
            std::fs::metadata(&out).unwrap().len(),
            *len as u64,
            "{name}: size"
        );
        assert_eq!(&digest_of(&out), digest, "{name}: digest mismatch");
        let summary = run.summary();
        assert_eq!(summary.file_size, *len as u64);
        assert_eq!(summary.bytes, *len as u64, "{name}: bytes verified");
    }
}

#[test]
fn killed_client_resumes_without_refetching_completed_segments() {
    let scratch = Scratch::new();
    let size = 12 << 20;
    let digest = make_file(&scratch.root(), "resume.bin", size);
    let server = Server::start(
        "127.77.3.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &["--max-rate", "40mbit"],
    );
    let out = scratch.out("resume.bin");
    let args = get_args("resume.bin", server.addr, &out, "127.77.3.10");

    let (mut first, _, _) = spawn_client(&strs(&args), scratch.work(), "first");
    let done_at_kill = wait_for_segments(&out, 3, Duration::from_secs(30));
    first.kill(); // SIGKILL mid-transfer
    let done_after_kill = wait_for_segments(&out, done_at_kill, Duration::from_secs(1));
    assert!(
        done_after_kill < 12,
        "the first client finished before it could be killed"
    );
    assert!(!out.exists() && ccfd_client::output::part_path(&out).exists());

    let run = run_client(
        &strs(&args),
        scratch.work(),
        "second",
        Duration::from_secs(60),
    );
    run.assert_success();
    assert_eq!(digest_of(&out), digest);
    let summary = run.summary();
    assert!(
        summary.segments_resumed >= u64::from(done_after_kill),
        "{summary:?}"
    );
    assert_eq!(
        summary.segments_resumed + summary.segments_fetched,
        u64::from(summary.segments),
        "{summary:?}"
    );
    assert_eq!(
        summary.bytes_resumed + summary.bytes,
        size as u64,
        "{summary:?}"
    );
    // Only the missing bytes came over the network again (codec overhead and headers are small).
    let missing = size as u64 - summary.bytes_resumed;
    assert!(
        summary.bytes_from_server < missing + missing / 5,
        "fetched {} bytes for {} missing: completed segments were fetched again ({summary:?})",
        summary.bytes_from_server,
        missing
    );
}

#[test]
fn server_killed_and_restarted_mid_transfer_client_completes() {
    let scratch = Scratch::new();
    let digest = make_file(&scratch.root(), "restart.bin", 12 << 20);
    let mut server = Server::start(
        "127.77.4.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &["--max-rate", "40mbit"],
    );
    let out = scratch.out("restart.bin");
    let (client, stdout, stderr) = spawn_client(
        &strs(&get_args("restart.bin", server.addr, &out, "127.77.4.10")),
        scratch.work(),
        "restart",
    );
    let done = wait_for_segments(&out, 2, Duration::from_secs(30));
    assert!(
        done < 12,
        "the transfer finished before the server could be killed"
    );
    server.kill();
    std::thread::sleep(Duration::from_millis(700));
    server.restart();
    let run = finish_client(client, &stdout, &stderr, Duration::from_secs(60));
    run.assert_success();
    assert_eq!(digest_of(&out), digest);
    let summary = run.summary();
    assert!(
        summary.control_connects >= 2,
        "the client never reconnected: {summary:?}"
    );
}

/// A datagram that is not a data packet at all (wrong version byte or too short).
fn garbage(i: usize) -> Vec<u8> {
    let len = i % 40 + if i & 1 == 0 { 0 } else { 1300 };
    let mut bytes = content(&format!("garbage {i}"), len);
    if let Some(first) = bytes.first_mut() {
        *first = 0xEE; // never the protocol version
    }
    bytes
}

/// A well-formed data packet for `session` with a random MAC (forged: nobody outside knows the key).
fn forged(session: u32, seq: u32) -> Vec<u8> {
    let mut packet = vec![ccfd_proto::data::DATA_VERSION, 0, 0, 0];
    packet.extend_from_slice(&session.to_le_bytes());
    packet.extend_from_slice(&0u32.to_le_bytes());
    packet.extend_from_slice(&seq.to_le_bytes());
    packet.extend_from_slice(&content(&format!("forged {session} {seq}"), 1040 + 16));
    packet
}

#[test]
fn garbage_and_forged_datagrams_are_counted_and_dropped() {
    let scratch = Scratch::new();
    let digest = make_file(&scratch.root(), "target.bin", 10 << 20);
    let server = Server::start(
        "127.77.5.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &["--max-rate", "30mbit"],
    );
    let out = scratch.out("target.bin");
    let data_addr = "127.77.5.10:40000";
    let (client, stdout, stderr) = spawn_client(
        &strs(&get_args("target.bin", server.addr, &out, data_addr)),
        scratch.work(),
        "target",
    );
    // The data socket is bound right after the first resume record is written; wait for the first segment.
    wait_for_segments(&out, 1, Duration::from_secs(30));
    let attacker = UdpSocket::bind("127.77.5.99:0").unwrap();
    let (mut garbage_sent, mut forged_sent) = (0u64, 0u64);
    for round in 0..5 {
        for i in 0..40 {
            attacker
                .send_to(&garbage(round * 40 + i), data_addr)
                .unwrap();
            garbage_sent += 1;
        }
        for session in 0..16u32 {
            for seq in 0..4 {
                attacker
                    .send_to(&forged(session, round as u32 * 4 + seq), data_addr)
                    .unwrap();
                forged_sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    let run = finish_client(client, &stdout, &stderr, Duration::from_secs(60));
    run.assert_success();
    assert_eq!(
        digest_of(&out),
        digest,
        "the file is wrong after the attack"
    );
    let summary = run.summary();
    let dropped = &summary.dropped;
    assert_eq!(dropped.malformed, garbage_sent, "{summary:?}");
    assert!(
        dropped.bad_mac + dropped.wrong_session + dropped.stale >= forged_sent,
        "{summary:?}"
    );
    assert!(
        dropped.bad_mac > 0,
        "no forged packet hit the live session: {summary:?}"
    );
    assert!(dropped.wrong_session > 0, "{summary:?}");
}

#[test]
fn malformed_control_frame_closes_only_that_connection() {
    let scratch = Scratch::new();
    let digest = make_file(&scratch.root(), "f.bin", 6 << 20);
    let server = Server::start(
        "127.77.6.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &["--max-rate", "60mbit"],
    );
    let out = scratch.out("f.bin");
    let (client, stdout, stderr) = spawn_client(
        &strs(&get_args("f.bin", server.addr, &out, "127.77.6.10")),
        scratch.work(),
        "good",
    );
    wait_for_segments(&out, 1, Duration::from_secs(30));

    // Unknown message tag, then an over-long frame on a second connection.
    for bad in [
        vec![5u8, 0, 0, 0, 1, 0xC8, 1, 2, 3],
        vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 1],
    ] {
        let mut conn = TcpStream::connect(server.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(&bad).unwrap();
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        let closed = loop {
            match conn.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // an Error frame before the close is fine
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => break true,
                Err(_) => break false,
            }
        };
        assert!(
            closed,
            "the server did not close the connection after {bad:?} ({:?})",
            started.elapsed()
        );
    }

    let run = finish_client(client, &stdout, &stderr, Duration::from_secs(60));
    run.assert_success();
    assert_eq!(digest_of(&out), digest);
    let list = run_client(
        &[
            "list",
            "--server",
            &server.addr.to_string(),
            "--json",
            "--bind",
            "127.77.6.11",
        ],
        scratch.work(),
        "list",
        Duration::from_secs(20),
    );
    list.assert_success();
    assert!(
        list.stdout.contains("\"f.bin\""),
        "list after the bad frames: {}",
        list.stdout
    );
}

#[test]
fn refused_names_and_local_failures_have_distinct_exit_codes() {
    let scratch = Scratch::new();
    make_file(&scratch.root(), "ok.bin", 2 << 20);
    std::os::unix::fs::symlink("/etc/passwd", scratch.root().join("escape")).unwrap();
    let server = Server::start(
        "127.77.7.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &[],
    );
    let addr = server.addr.to_string();
    let get = |name: &str, output: &std::path::Path, server: &str, tag: &str| {
        let output = output.display().to_string();
        run_client(
            &[
                "get",
                name,
                "--server",
                server,
                "-o",
                &output,
                "--bind",
                "127.77.7.10",
                "--no-progress",
                "--retry-for",
                "0s",
            ],
            scratch.work(),
            tag,
            Duration::from_secs(30),
        )
    };

    for (i, name) in ["../etc/passwd", "escape", "/etc/passwd", "no-such-file"]
        .iter()
        .enumerate()
    {
        let run = get(name, &scratch.out("refused"), &addr, &format!("refused{i}"));
        assert_eq!(run.code(), 3, "{name}: {run:?}");
        assert!(!scratch.out("refused").exists());
    }

    let run = get(
        "ok.bin",
        &scratch.out("x"),
        "127.77.7.2:7653",
        "unreachable",
    );
    assert_eq!(run.code(), 4, "{run:?}");
    assert!(run.stderr.contains("127.77.7.2:7653"), "{}", run.stderr);

    let unwritable = scratch.work().join("no-such-dir/x.bin");
    let run = get("ok.bin", &unwritable, &addr, "unwritable");
    assert_eq!(run.code(), 5, "{run:?}");
    assert!(run.stderr.contains("no-such-dir/x.bin"), "{}", run.stderr);

    // Disk full: a 1 MiB tmpfs for a 2 MiB file (needs root; skipped with a message otherwise).
    let mount_point = scratch.work().join("tiny");
    let Some(_mounted) = Tmpfs::mount(&mount_point, "1m") else {
        say("SKIPPED disk-full check: cannot mount a tmpfs here (not root?)");
        return;
    };
    let full = mount_point.join("ok.bin");
    let run = get("ok.bin", &full, &addr, "full");
    assert_eq!(run.code(), 6, "{run:?}");
    assert!(
        run.stderr.contains(&full.display().to_string()),
        "{}",
        run.stderr
    );
}

/// A tmpfs of `size` mounted on a new directory for one test (needs root), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Creates `dir` and mounts a tmpfs of `size` (e.g. `1m`) on it; `None` when it cannot.
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// An output that fills up mid-transfer (a tmpfs the test mounts, filled once the first segment is
/// recorded): the client stops with the disk-full exit code (6) and names the path. The `.part` is
/// preallocated, so what fails for real is the next resume-record write (`ENOSPC`).
#[test]
fn an_output_filling_up_mid_transfer_exits_disk_full_naming_the_path() {
    let scratch = Scratch::new();
    make_file(&scratch.root(), "m.bin", 8 << 20);
    let mount_point = scratch.work().join("filling");
    // Room for the 8 MiB `.part` and the record, not much more.
    let Some(_mounted) = Tmpfs::mount(&mount_point, "9m") else {
        say("SKIPPED mid-transfer disk-full check: cannot mount a tmpfs here (not root?)");
        return;
    };
    // 8 segments at 16 Mbit/s: about half a second each, so the filler lands mid-transfer.
    let server = Server::start(
        "127.77.11.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &["--max-rate", "16mbit"],
    );
    let out = mount_point.join("m.bin");
    let mut args = get_args("m.bin", server.addr, &out, "127.77.11.10");
    args.push("--no-coop".into());
    let (proc, stdout, stderr) = spawn_client(&strs(&args), scratch.work(), "filling");
    wait_for_segments(&out, 1, Duration::from_secs(30));
    // Take every free byte of the file system.
    let mut filler = std::fs::File::create(mount_point.join("filler")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut filled = 0usize;
    while let Ok(n) = filler.write(&chunk) {
        if n == 0 {
            break;
        }
        filled += n;
    }
    drop(filler);
    let run = finish_client(proc, &stdout, &stderr, Duration::from_secs(60));
    let record = ccfd_client::output::record_path(&out);
    let done = ResumeRecord::load(&record)
        .ok()
        .flatten()
        .and_then(Result::ok)
        .map_or(0, |r| r.completed_count());
    assert!(
        done < 8,
        "the download finished before the filler ({filled} B) took the space"
    );
    assert_eq!(run.code(), 6, "{run:?}");
    assert!(
        run.stderr.contains(&out.display().to_string()),
        "the error names the output path: {}",
        run.stderr
    );
    say(&format!(
        "mid-transfer disk full: filler took {filled} B after {done} segments; client said: {}",
        run.stderr.lines().last().unwrap_or_default()
    ));
}

#[test]
fn resume_record_of_an_older_file_version_is_discarded() {
    let scratch = Scratch::new();
    make_file(&scratch.root(), "v.bin", 8 << 20);
    let server = Server::start(
        "127.77.8.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &["--max-rate", "40mbit"],
    );
    let out = scratch.out("v.bin");
    let args = get_args("v.bin", server.addr, &out, "127.77.8.10");
    let (mut first, _, _) = spawn_client(&strs(&args), scratch.work(), "old");
    let done = wait_for_segments(&out, 2, Duration::from_secs(30));
    first.kill();
    assert!(
        done < 8,
        "the first client finished before it could be killed"
    );

    // New content under the same name (and a different size, so the server sees the change at once).
    let data = content("v.bin version 2", (8 << 20) + 4096);
    std::fs::write(scratch.root().join("v.bin"), &data).unwrap();
    let run = run_client(&strs(&args), scratch.work(), "new", Duration::from_secs(60));
    run.assert_success();
    assert_eq!(
        digest_of(&out),
        blake3::hash(&data),
        "resumed old segments into the new version"
    );
    let summary = run.summary();
    assert_eq!(summary.segments_resumed, 0, "{summary:?}");
    assert_eq!(summary.bytes, data.len() as u64);
}

#[test]
fn server_gone_for_good_gives_up_after_retry_for_and_keeps_the_partial_output() {
    let scratch = Scratch::new();
    make_file(&scratch.root(), "gone.bin", 8 << 20);
    let mut server = Server::start(
        "127.77.10.1",
        &scratch.root(),
        scratch.work(),
        SMALL_SEGMENTS,
        &["--max-rate", "40mbit"],
    );
    let out = scratch.out("gone.bin");
    let mut args = get_args("gone.bin", server.addr, &out, "127.77.10.10");
    let retry = args.iter().position(|a| a == "--retry-for").unwrap();
    args[retry + 1] = "2s".into();
    let (client, stdout, stderr) = spawn_client(&strs(&args), scratch.work(), "gone");
    let done = wait_for_segments(&out, 1, Duration::from_secs(30));
    server.kill();
    let started = Instant::now();
    let run = finish_client(client, &stdout, &stderr, Duration::from_secs(30));
    assert_eq!(run.code(), 4, "{run:?}");
    assert!(run.stderr.contains("127.77.10.1:7653"), "{}", run.stderr);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "gave up before --retry-for"
    );
    assert!(
        ccfd_client::output::part_path(&out).exists(),
        "the partial output was removed"
    );
    assert!(wait_for_segments(&out, done, Duration::from_secs(1)) >= done);
}
