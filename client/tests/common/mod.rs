//! Harness of the end-to-end tests: real `ccfd-server` and `ccfd-client` processes on 127.77.x.y.
//!
//! Binaries are taken from the target directory of the test executable (`target/<profile>/`); `cargo
//! test --workspace` builds both. Every process is wrapped in a guard that SIGKILLs and reaps it on drop,
//! and every wait is bounded.
#![allow(dead_code)]

pub mod hostile;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ccfd_client::resume::ResumeRecord;
use ccfd_client::stats::Summary;

/// Path of a workspace binary next to the test executable, or a panic saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-exe> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable has no target dir");
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: build it first (`cargo test --workspace` or `cargo build -p {name}` \
             with the same profile and target dir)",
            path.display()
        );
    }
    path
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    /// The child.
    pub child: Option<Child>,
    /// For messages.
    pub name: String,
}

impl Proc {
    /// Kills and reaps the process now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits at most `timeout` for the process to exit; panics (after killing it) on timeout.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("process already reaped");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The OS pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `ccfd-server`.
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// Its control address.
    pub addr: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    /// The JSON statistics line the server prints on stdout at a clean shutdown.
    stopped_line: Arc<Mutex<Option<String>>>,
}

/// What the server says it sent in its lifetime (its last stdout line at a clean shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTotals {
    /// Data packets sent.
    pub packets_sent: u64,
    /// Data bytes sent (UDP payloads: header, codec payload, MAC).
    pub bytes_sent: u64,
}

impl Server {
    /// Starts a server serving `root` on `ip:7653` (UDP base 7655) with `config` as its TOML config and
    /// `extra` command-line arguments; waits (bounded) until it prints its listening address.
    pub fn start(ip: &str, root: &Path, work: &Path, config: &str, extra: &[&str]) -> Server {
        let config_path = work.join(format!("server-{ip}.toml"));
        std::fs::write(&config_path, config).expect("write server config");
        let mut args = vec![
            "--root".to_string(),
            root.display().to_string(),
            "--listen".into(),
            format!("{ip}:7653"),
            "--udp-base".into(),
            "7655".into(),
            "--shards".into(),
            "2".into(),
            "--config".into(),
            config_path.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = work.join(format!("server-{ip}.log"));
        Self::spawn(args, log)
    }

    fn spawn(args: Vec<String>, log: PathBuf) -> Server {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log");
        let mut child = Command::new(binary("ccfd-server"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn ccfd-server");
        let stdout = child.stdout.take().expect("server stdout");
        let mut proc = Proc {
            child: Some(child),
            name: "ccfd-server".into(),
        };
        let (tx, rx) = mpsc::channel();
        let stopped_line = Arc::new(Mutex::new(None));
        let stopped = Arc::clone(&stopped_line);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening ") {
                    let _ = tx.send(addr.trim().to_string());
                } else if line.starts_with("{\"event\":\"stopped\"") {
                    if let Ok(mut slot) = stopped.lock() {
                        *slot = Some(line);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(addr) => addr.parse().expect("server printed a bad address"),
            Err(_) => {
                proc.kill();
                panic!(
                    "ccfd-server did not start within 15 s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Server {
            proc,
            addr,
            args,
            log,
            stopped_line,
        }
    }

    /// Stops the server cleanly (SIGTERM, bounded wait) and returns the totals it printed.
    pub fn stop(&mut self, timeout: Duration) -> ServerTotals {
        let pid = self.proc.pid();
        assert!(pid != 0, "ccfd-server already reaped");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let status = self.proc.wait(timeout);
        assert!(
            status.success(),
            "ccfd-server exited with {status:?} after SIGTERM; log:\n{}",
            self.log()
        );
        // The stdout reader may still be catching up with the last line.
        let deadline = Instant::now() + Duration::from_secs(5);
        let line = loop {
            if let Some(line) = self.stopped_line.lock().ok().and_then(|l| l.clone()) {
                break line;
            }
            assert!(
                Instant::now() < deadline,
                "ccfd-server printed no statistics line at shutdown"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let json: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad statistics line {line:?}: {e}"));
        let field = |name: &str| {
            json.get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or_else(|| panic!("statistics line {line:?} has no {name}"))
        };
        ServerTotals {
            packets_sent: field("packets_sent"),
            bytes_sent: field("bytes_sent"),
        }
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again with the same arguments (after [`Server::kill`]).
    pub fn restart(&mut self) {
        let fresh = Self::spawn(self.args.clone(), self.log.clone());
        *self = fresh;
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The outcome of a client run.
#[derive(Debug)]
pub struct ClientRun {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl ClientRun {
    /// The exit code (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// The `--json` summary; panics with the client's output when there is none.
    pub fn summary(&self) -> Summary {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "no JSON summary ({e}); exit {:?}\nstdout:\n{}\nstderr:\n{}",
                self.status, self.stdout, self.stderr
            )
        })
    }

    /// Panics with the output unless the run succeeded.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "client failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Starts `ccfd-client ARGS` with stdout/stderr captured into files in `work`.
pub fn spawn_client(args: &[&str], work: &Path, tag: &str) -> (Proc, PathBuf, PathBuf) {
    let out = work.join(format!("client-{tag}.stdout"));
    let err = work.join(format!("client-{tag}.stderr"));
    let child = Command::new(binary("ccfd-client"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn ccfd-client");
    (
        Proc {
            child: Some(child),
            name: format!("ccfd-client {tag}"),
        },
        out,
        err,
    )
}

/// Waits (bounded) for a client started with [`spawn_client`] and collects its output.
pub fn finish_client(mut proc: Proc, out: &Path, err: &Path, timeout: Duration) -> ClientRun {
    let status = proc.wait(timeout);
    ClientRun {
        status,
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    }
}

/// Runs `ccfd-client ARGS` to completion (at most `timeout`).
pub fn run_client(args: &[&str], work: &Path, tag: &str, timeout: Duration) -> ClientRun {
    let (proc, out, err) = spawn_client(args, work, tag);
    finish_client(proc, &out, &err, timeout)
}

/// Deterministic pseudo-random content of `len` bytes (BLAKE3 XOF of `seed`).
pub fn content(seed: &str, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut data);
    data
}

/// Writes a file of deterministic content into `root` and returns its BLAKE3 digest.
pub fn make_file(root: &Path, name: &str, len: usize) -> blake3::Hash {
    let data = content(name, len);
    std::fs::write(root.join(name), &data).expect("write test file");
    blake3::hash(&data)
}

/// BLAKE3 of a file.
pub fn digest_of(path: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// Polls the resume record of `output` until it marks at least `segments` complete (bounded).
pub fn wait_for_segments(output: &Path, segments: u32, timeout: Duration) -> u32 {
    let record_path = ccfd_client::output::record_path(output);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(Ok(record))) = ResumeRecord::load(&record_path) {
            if record.completed_count() >= segments {
                return record.completed_count();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached {segments} completed segments",
            record_path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch directory with `root/` (served) and `out/` (outputs).
pub struct Scratch {
    /// Owner of the directory.
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// Creates it.
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("root")).expect("mkdir root");
        std::fs::create_dir(dir.path().join("out")).expect("mkdir out");
        Scratch { dir }
    }

    /// The served root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// An output path.
    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    /// The scratch directory itself (logs, configs).
    pub fn work(&self) -> &Path {
        self.dir.path()
    }
}

/// Arguments of a `get` with JSON output and no progress bar.
pub fn get_args(name: &str, server: SocketAddr, output: &Path, bind: &str) -> Vec<String> {
    vec![
        "get".into(),
        name.into(),
        "--server".into(),
        server.to_string(),
        "-o".into(),
        output.display().to_string(),
        "--bind".into(),
        bind.into(),
        "--json".into(),
        "--no-progress".into(),
        "--retry-for".into(),
        "20s".into(),
    ]
}

/// `Vec<String>` → `Vec<&str>`.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Arguments of a cooperating `get` ([`get_args`] plus `extra`, e.g. `--upload-rate 400mbit`).
pub fn coop_get_args(
    name: &str,
    server: SocketAddr,
    output: &Path,
    bind: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args = get_args(name, server, output, bind);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Prints a message that `cargo test` does not capture (skips and figures are never silent).
pub fn say(message: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{message}");
}
