//! Lab integration tests of the static observer (needs root and `ci/lab up`; docs/lab.md).
//!
//! The observers run inside lab hosts (network namespaces) exactly as the planner will start
//! them: the static musl binary from the artifacts dir, records on stdout.
mod support;

mod bulk;
mod cleanup;
mod containers;
mod delays;
mod ping;
mod retransmit;
