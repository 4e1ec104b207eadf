//! Sparse network codec (SNC): band and random-grouping codes over GF(2) and GF(2^8).
//!
//! No I/O, no clocks, no threads and no global RNG. (Work in progress: see issue 2.)
pub mod field;
