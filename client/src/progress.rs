//! The progress bar on the terminal: segments done, bytes, rate, and bytes from peers.
//!
//! Drawn on stderr only when stderr is a terminal and `--no-progress` was not given; otherwise every call
//! is a no-op. It is refreshed from the counters by the control thread, never by the decoder thread.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Counters;

/// A progress bar over the bytes of one file (hidden when not wanted).
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    segments: u32,
}

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
        Progress { bar, segments }
    }

    /// Redraws from the counters; `in_flight_bytes` is the estimate for the segment being decoded.
    pub fn update(&self, counters: &Counters, in_flight_bytes: u64) {
        let done = counters.bytes_verified.load(Ordering::Relaxed)
            + counters.bytes_resumed.load(Ordering::Relaxed);
        let segments_done = counters.segments_completed.load(Ordering::Relaxed)
            + counters.segments_resumed.load(Ordering::Relaxed);
        self.bar.set_position(done + in_flight_bytes);
        let peers = counters.bytes_from_peers.load(Ordering::Relaxed);
        self.bar.set_message(format!(
            "segments {segments_done}/{} peers {}",
            self.segments,
            indicatif::BinaryBytes(peers)
        ));
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
