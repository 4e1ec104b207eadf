//! `ccfd-perf` library part: the network-namespace lab used by `ccfd-perf swarm` and by the
//! perf integration tests. The benchmarks themselves live in the binary (`src/main.rs`).

pub mod lab;
pub mod links;
