//! The progress bar on the terminal: segments done, bytes, rate, bytes from the server and from peers,
//! and bytes sent to peers.
//!
//! Drawn on stderr only when stderr is a terminal and `--no-progress` was not given; otherwise every call
//! is a no-op. It is refreshed from the counters by the control thread, never by the decoder thread.
//!
//! With `--progress-json` ([`Progress::with_json_lines`]) it also prints one JSON object per second on
//! stderr for programs that watch the download (`ccfd-perf swarm`), and a last one when it finishes:
//! `{"event":"progress","seconds":..,"bytes":..,"file_size":..,"segments_done":..,"segments":..,
//! "bytes_from_server":..,"bytes_from_peers":..,"bytes_to_peers":..,"packets_received":..}`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Counters;

/// A progress bar over the bytes of one file (hidden when not wanted).
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    segments: u32,
    json: Option<JsonLines>,
}

/// State of the `--progress-json` lines.
#[derive(Debug)]
struct JsonLines {
    started: Instant,
    file_size: u64,
    /// When the last line was printed, and the last figures (printed again by `finish`).
    last: Mutex<(Option<Instant>, Option<String>)>,
}

/// Interval between two `--progress-json` lines.
const JSON_INTERVAL: Duration = Duration::from_secs(1);

impl Progress {
    /// A bar for a file of `file_size` bytes in `segments` segments; `enabled` is `!--no-progress`, and the
    /// bar is also hidden when stderr is not a terminal.
    pub fn new(enabled: bool, file_size: u64, segments: u32) -> Self {
        let bar = if enabled && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(
                Some(file_size),
                ProgressDrawTarget::stderr_with_hz(8),
            );
            let style = ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            segments,
            json: None,
        }
    }

    /// Also prints a JSON progress line on stderr every second (`--progress-json`).
    pub fn with_json_lines(mut self, file_size: u64) -> Self {
        self.json = Some(JsonLines {
            started: Instant::now(),
            file_size,
            last: Mutex::new((None, None)),
        });
        self
    }

    /// Redraws from the counters; `in_flight_bytes` is the estimate for the segment being decoded.
    pub fn update(&self, counters: &Counters, in_flight_bytes: u64) {
        let done = counters.bytes_verified.load(Ordering::Relaxed)
            + counters.bytes_resumed.load(Ordering::Relaxed);
        let segments_done = counters.segments_completed.load(Ordering::Relaxed)
            + counters.segments_resumed.load(Ordering::Relaxed);
        self.bar.set_position(done + in_flight_bytes);
        let peers = counters.bytes_from_peers.load(Ordering::Relaxed);
        let server = counters.bytes_from_server.load(Ordering::Relaxed);
        let to_peers = counters.bytes_to_peers.load(Ordering::Relaxed);
        if let Some(json) = &self.json {
            let line = serde_json::json!({
                "event": "progress",
                "seconds": json.started.elapsed().as_secs_f64(),
                "bytes": (done + in_flight_bytes).min(json.file_size),
                "file_size": json.file_size,
                "segments_done": segments_done,
                "segments": self.segments,
                "bytes_from_server": server,
                "bytes_from_peers": peers,
                "bytes_to_peers": to_peers,
                "packets_received": counters.packets_received.load(Ordering::Relaxed),
            })
            .to_string();
            if let Ok(mut last) = json.last.lock() {
                let due = last.0.is_none_or(|at| at.elapsed() >= JSON_INTERVAL);
                if due {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                    last.0 = Some(Instant::now());
                    last.1 = None;
                } else {
                    last.1 = Some(line);
                }
            }
        }
        self.bar.set_message(format!(
            "segments {segments_done}/{} server {} peers {} sent to peers {}",
            self.segments,
            indicatif::BinaryBytes(server),
            indicatif::BinaryBytes(peers),
            indicatif::BinaryBytes(to_peers)
        ));
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if let Some(json) = &self.json {
            if let Ok(mut last) = json.last.lock() {
                if let Some(line) = last.1.take() {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            }
        }
        self.bar.finish_and_clear();
    }
}
