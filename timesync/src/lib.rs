//! timesync: aligns every clock domain's eBPF clock to the manager's (DESIGN.md §8).
//!
//! - [`reflect`]: `timesync reflect`, the XDP reflector run once per clock domain;
//! - [`probe`]: `timesync probe`, the manager side that stamps, pairs and fits;
//! - [`fit`]: the offset/drift estimator (pure, unit-tested on synthetic exchanges);
//! - [`output`]: the JSON lines both commands print (the planner reads them);
//! - [`wire`]: the probe payload, shared with the kernel programs;
//! - [`ebpf`], [`route`], [`signal`]: loading/attaching, interface lookup, shutdown.
pub mod ebpf;
pub mod fit;
pub mod output;
pub mod probe;
pub mod reflect;
pub mod route;
pub mod signal;
pub mod summary;
pub mod wire;
