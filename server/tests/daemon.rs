//! The `ccfd-server` binary as systemd runs it: READY=1 after binding, WATCHDOG=1 from the loops,
//! STOPPING=1 on SIGTERM and a clean exit; config errors name the key and fail the start.

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ccfd-server");

/// Collects notification lines until `wanted` arrives (or the deadline passes).
fn wait_for(socket: &UnixDatagram, seen: &mut Vec<String>, wanted: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let found = text.lines().any(|l| l == wanted);
            seen.push(text);
            if found {
                return true;
            }
        }
    }
    false
}

#[test]
fn notifies_ready_watchdog_stopping_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("f"), b"hello").unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // systemd sets WATCHDOG_PID to the service's pid: `exec` keeps the shell's pid.
    let script = format!(
        "WATCHDOG_PID=$$ exec '{BIN}' --root '{}' --listen 127.0.0.60:0 --udp-base {} --shards 2",
        root.display(),
        30_000 + (std::process::id() % 1000) as u16 * 8
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let ready = wait_for(&notify, &mut seen, "READY=1", Duration::from_secs(20));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(ready, "no READY=1: {seen:?}");
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap()
        .parse()
        .unwrap();
    // The control port answers.
    std::net::TcpStream::connect(addr).expect("control port is bound before READY=1");
    assert!(
        wait_for(&notify, &mut seen, "WATCHDOG=1", Duration::from_secs(5)),
        "no WATCHDOG=1: {seen:?}"
    );
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        wait_for(&notify, &mut seen, "STOPPING=1", Duration::from_secs(5)),
        "no STOPPING=1: {seen:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exit.success(), "exit {exit:?}: {stderr}");
}

#[test]
fn bad_config_fails_the_start_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "root = \"/srv\"\n[limits]\nmax-sesions = 3\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max-sesions"), "{stderr}");
    // A root that does not exist is a start error too.
    let out = Command::new(BIN)
        .args([
            "--root",
            "/nonexistent/ccfd-root",
            "--listen",
            "127.0.0.60:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent"));
}
