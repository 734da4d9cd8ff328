//! What the analysis reads: a session's hosts, observers, clock fits and samples.
//!
//! The analysis does not know where these come from (the store, a dump file, a test): the caller
//! fills a [`SessionData`]. Samples arrive as an iterator so a store reader can stream them.
use latplan_common::clock::ClockFit;
use latplan_common::wire::{Interface, Sample, Stats};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// How a host runs: its own kernel (metal, vm) or a namespace on its parent's (container).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKind {
    Metal,
    Vm,
    Container,
}

/// One node of the host tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub name: String,
    pub kind: HostKind,
    /// The metal a vm runs on, or the metal/vm a container runs in.
    #[serde(default)]
    pub parent: Option<String>,
    /// The clock domain of the kernel this host's timestamps come from (a container's is its
    /// parent's). Empty means "inherit from the parent".
    #[serde(default)]
    pub clock_domain: String,
    /// For a container: the parent's end of its link (e.g. the host-side veth).
    #[serde(default)]
    pub host_interface: Option<String>,
    /// Addresses of the host, used to tell a flow's sender and receiver apart when the socket
    /// layers were not observed.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// One observer run: the host it ran on and what its stream said about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserverInfo {
    /// The host whose kernel the observer watched (never a container).
    pub host: String,
    /// Sampling period in bytes of sequence space ([`latplan_common::wire::Hello::sample_size`]).
    pub sample_size: u64,
    /// Interfaces it attached to ([`latplan_common::wire::Hello::interfaces`]).
    pub interfaces: Vec<Interface>,
    /// Network namespaces (inode) it recorded on behalf of a container, and that container's name.
    /// Samples from any other namespace belong to `host`.
    #[serde(default)]
    pub netns_hosts: Vec<(u32, String)>,
    /// The last (cumulative) stats frame of the run, if any.
    #[serde(default)]
    pub stats: Option<Stats>,
    /// Records missing from the stream (gaps in record sequence numbers, seen by the collector).
    #[serde(default)]
    pub gap_records: u64,
}

/// A sample and the observer (index into [`SessionData::observers`]) that shipped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedSample {
    pub observer: u32,
    pub sample: Sample,
}

/// Everything the analysis needs about one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionData<I> {
    pub session: String,
    pub hosts: Vec<HostInfo>,
    pub observers: Vec<ObserverInfo>,
    /// Every clock fit of every domain; the analysis picks the one valid at each timestamp.
    pub fits: Vec<ClockFit>,
    pub samples: I,
}

pub use crate::store::model::{FlowKey, ip_of, raw_of};
