//! systemd notifications (filled in below).
