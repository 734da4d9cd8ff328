//! The observer's library half: everything `observer` (src/main.rs) does, importable by the
//! integration tests (BPF_PROG_TEST_RUN and lab tests) and by benchmarks.
pub mod btf;
pub mod cleanup;
pub mod config;
pub mod daemon;
pub mod dump;
pub mod loader;
pub mod netns;
pub mod probe;
pub mod run;
pub mod sampling;
pub mod sink;
pub mod unwrap;
