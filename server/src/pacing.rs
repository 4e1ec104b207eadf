//! Pacing (filled in below).
