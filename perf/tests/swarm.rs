//! `ccfd-perf swarm` end to end, with the real `ccfd-server` and `ccfd-client` binaries (built next
//! to `ccfd-perf` by `cargo test --workspace`, since both crates have integration tests).
//!
//! * the loopback demo at a small size passes, checks digests, draws a plot and leaves no file;
//! * a broken run (a client asking for a file the server does not have, or a `--file` that does not
//!   exist) exits non-zero with the reason;
//! * `--no-coop` makes every byte come from the server, and the server's own count of what it
//!   sent (its statistics line at SIGTERM) is reported as a multiple of the file;
//! * the lab variant (`--rate 200mbit`) runs when root with the tools present, and otherwise says
//!   why it cannot run (on stderr, uncaptured); its server veth counter agrees with the server's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ccfd_perf::lab::{Lab, LabConfig, LabError};
use serde_json::Value;

/// Prints a message that `cargo test` does not capture.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// The lab-backed tests share the lab name `ccfdswarm`: they take turns.
static LAB_TURN: Mutex<()> = Mutex::new(());

/// Whether the lab can run here; otherwise says why (uncaptured) so the skip is never silent.
fn lab_runnable(test: &str) -> bool {
    let probe = LabConfig {
        rate_bps: Some(200_000_000),
        ..LabConfig::new("ccfdswarm", 2)
    };
    match Lab::check(&probe) {
        Ok(()) => true,
        Err(error @ (LabError::NotRoot | LabError::MissingTool { .. })) => {
            say(&format!(
                "{test}: CANNOT RUN on this machine and was not executed: {error}"
            ));
            false
        }
        Err(error) => panic!("lab prerequisites: {error}"),
    }
}

fn perf_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ccfd-perf"))
}

/// Panics with the build command when the server or client binary is missing.
fn require_binaries() {
    let dir = perf_exe().parent().unwrap().to_path_buf();
    for name in ["ccfd-server", "ccfd-client"] {
        assert!(
            dir.join(name).is_file(),
            "{name} is not built in {}: run the whole suite (`cargo test --workspace`) or \
             `cargo build --workspace` first",
            dir.display()
        );
    }
}

/// Runs `ccfd-perf swarm ARGS` with TMPDIR pointed at `tmp` (so leftovers can be checked).
fn swarm(tmp: &Path, args: &[&str]) -> Output {
    require_binaries();
    Command::new(perf_exe())
        .arg("swarm")
        .args(args)
        .env("TMPDIR", tmp)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run ccfd-perf swarm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn report_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    })
}

fn assert_clean(tmp: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("ccfd-swarm-"))
        .collect();
    assert!(left.is_empty(), "swarm left files behind: {left:?}");
}

/// Checks a successful report: every client finished with the right digest.
fn assert_all_ok(report: &Value, clients: usize, file_bytes: u64) {
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["file_bytes"], file_bytes);
    let rows = report["per_client"].as_array().expect("per_client");
    assert_eq!(rows.len(), clients);
    for row in rows {
        assert_eq!(row["digest_ok"], true, "{row:#}");
        let seconds = row["seconds"].as_f64().expect("seconds");
        assert!(seconds > 0.0, "{row:#}");
        let received = row["bytes_from_server"].as_u64().unwrap_or(0)
            + row["bytes_from_peers"].as_u64().unwrap_or(0);
        assert!(
            received >= file_bytes,
            "received {received} of {file_bytes}: {row:#}"
        );
    }
}

#[test]
fn small_loopback_demo_passes_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let plot = tmp.path().join("progress.png");
    let output = swarm(
        tmp.path(),
        &[
            "--size",
            "8MiB",
            "--clients",
            "3",
            "--json",
            "--timeout",
            "120s",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    let report = report_of(&output);
    assert!(output.status.success(), "stderr:\n{}", text(&output.stderr));
    assert_all_ok(&report, 3, 8 << 20);
    assert_eq!(report["mode"], "loopback");
    assert!(report["t_min_seconds"].is_null(), "no T_min on loopback");
    let png = std::fs::read(&plot).expect("plot written");
    assert!(png.starts_with(b"\x89PNG"));
    assert_clean(tmp.path());

    // The human table names every client and its digest check.
    let output = swarm(
        tmp.path(),
        &["--size", "1MiB", "--clients", "2", "--timeout", "60s"],
    );
    let table = text(&output.stdout);
    assert!(output.status.success(), "{table}\n{}", text(&output.stderr));
    assert!(
        table.contains("goodput") && table.matches(" ok ").count() == 2,
        "{table}"
    );
    assert_clean(tmp.path());
}

#[test]
fn no_coop_takes_every_byte_from_the_server_and_the_server_count_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let size: u64 = 4 << 20;
    let output = swarm(
        tmp.path(),
        &[
            "--size",
            "4MiB",
            "--clients",
            "2",
            "--no-coop",
            "--json",
            "--timeout",
            "60s",
        ],
    );
    let report = report_of(&output);
    assert!(output.status.success(), "stderr:\n{}", text(&output.stderr));
    assert_all_ok(&report, 2, size);
    assert_eq!(report["coop"], false, "{report:#}");
    let passed = report["client_options"].as_array().expect("client_options");
    if passed.iter().any(|o| o == "--no-coop") {
        for row in report["per_client"].as_array().unwrap() {
            assert_eq!(row["bytes_from_peers"], 0, "{row:#}");
        }
    }
    // Two clients, each the whole file from the server: two copies plus headers and overhead.
    let sent = report["server_bytes_sent"]
        .as_u64()
        .expect("server_bytes_sent");
    let copies = report["server_copies"].as_f64().expect("server_copies");
    assert!((copies - sent as f64 / size as f64).abs() < 1e-9);
    assert!((2.0..3.0).contains(&copies), "server sent {copies} copies");
    assert!(
        report["server_veth_tx_bytes"].is_null(),
        "no veth on loopback"
    );
    assert_clean(tmp.path());
}

#[test]
fn a_client_asking_for_a_missing_file_fails_the_run_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let output = swarm(
        tmp.path(),
        &[
            "--size",
            "2MiB",
            "--clients",
            "2",
            "--json",
            "--timeout",
            "60s",
            "--missing-name-clients",
            "1",
        ],
    );
    assert!(
        !output.status.success(),
        "a failed client must fail the run"
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("client 1") && stderr.contains("no-such-file.bin"),
        "the reason names the client and the file:\n{stderr}"
    );
    let report = report_of(&output);
    assert_eq!(report["ok"], false);
    assert_eq!(report["per_client"][0]["ok"], false);
    assert_eq!(
        report["per_client"][1]["digest_ok"], true,
        "the other client is unaffected"
    );
    assert_clean(tmp.path());

    let output = swarm(
        tmp.path(),
        &["--file", "/nonexistent/ccfd-file", "--timeout", "30s"],
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("/nonexistent/ccfd-file"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn lab_run_reports_t_min() {
    if !lab_runnable("swarm lab test") {
        return;
    }
    let _turn = LAB_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let output = swarm(
        tmp.path(),
        &[
            "--rate",
            "200mbit",
            "--size",
            "16MiB",
            "--clients",
            "2",
            "--json",
            "--timeout",
            "150s",
        ],
    );
    let report = report_of(&output);
    assert!(output.status.success(), "stderr:\n{}", text(&output.stderr));
    assert_all_ok(&report, 2, 16 << 20);
    assert_eq!(report["mode"], "namespace-lab");
    let t_min = report["t_min_seconds"].as_f64().expect("T_min");
    // 16 MiB at 200 Mbit/s: F/u_s = 0.671 s.
    assert!((t_min - 0.671).abs() < 0.001, "T_min {t_min}");
    let ratio = report["slowest_to_t_min"].as_f64().expect("ratio");
    assert!(ratio >= 1.0, "nothing beats the fluid bound: {ratio}");
    // The server's veth carried at least one copy of the file and about what the server says it
    // sent (plus 42 header bytes per datagram; less what its tbf queue dropped, which UDP does not
    // report to the sender).
    let sent = report["server_bytes_sent"]
        .as_u64()
        .expect("server_bytes_sent");
    let packets = report["server_packets_sent"].as_u64().expect("packets");
    let veth = report["server_veth_tx_bytes"].as_u64().expect("veth bytes");
    assert!(
        sent >= 16 << 20 && veth >= 16 << 20,
        "server {sent}, veth {veth} bytes"
    );
    assert!(
        veth as f64 >= 0.9 * (sent + 42 * packets) as f64,
        "veth {veth} far below server {sent} + headers of {packets} datagrams"
    );
    assert!(
        report["server_veth_steady_mbit_per_s"].as_f64().is_some(),
        "{report:#}"
    );
    say(&format!(
        "swarm lab: 2 clients, 16 MiB, 200 Mbit/s: slowest {:.2} s = {ratio:.2} x T_min",
        report["slowest_seconds"].as_f64().unwrap_or(f64::NAN)
    ));
    assert!(
        Lab::existing_namespaces("ccfdswarm").unwrap().is_empty(),
        "lab namespaces left behind"
    );
    assert_clean(tmp.path());
}

#[test]
fn sigterm_during_a_lab_run_tears_everything_down() {
    if !lab_runnable("swarm SIGTERM test") {
        return;
    }
    require_binaries();
    let _turn = LAB_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    // 64 MiB at 50 Mbit/s takes over 10 s: the signal arrives mid-transfer.
    let mut child = Command::new(perf_exe())
        .args([
            "swarm",
            "--rate",
            "50mbit",
            "--size",
            "64MiB",
            "--clients",
            "2",
        ])
        .args(["--timeout", "60s"])
        .env("TMPDIR", tmp.path())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ccfd-perf swarm");
    let up_by = Instant::now() + Duration::from_secs(30);
    while Lab::existing_namespaces("ccfdswarm").unwrap().len() < 4 {
        assert!(Instant::now() < up_by, "the lab never came up");
        assert!(child.try_wait().unwrap().is_none(), "swarm exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let done_by = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= done_by {
            let _ = child.kill();
            panic!("swarm did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "an interrupted run is a failure");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        Lab::existing_namespaces("ccfdswarm").unwrap().is_empty(),
        "lab namespaces left behind after SIGTERM"
    );
    assert_clean(tmp.path());
}
