//! The cooperation control (issue 5, DESIGN.md §5): peer TCP links driven by `ccfd_proto::Coop`,
//! feeding [`crate::coop_shard`] with what to stream where.

pub mod sources;
