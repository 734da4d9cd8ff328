//! The analysis result: plain data, serialisable, what every report format renders.
use super::input::HostKind;
use super::stats::Summary;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub session: String,
    pub hosts: Vec<HostNode>,
    pub clocks: Vec<DomainSync>,
    pub observers: Vec<ObserverHealth>,
    pub totals: Totals,
    /// Flows in order of (sending host, receiving host, flow key).
    pub flows: Vec<FlowReport>,
    /// Flows between the same two hosts, merged segment by segment.
    pub pairs: Vec<PairReport>,
    /// Things the reader must know to trust the numbers (missing fits, unknown observers, …).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostNode {
    pub name: String,
    pub kind: HostKind,
    pub parent: Option<String>,
    pub clock_domain: String,
    pub host_interface: Option<String>,
}

/// How well a clock domain is aligned to the manager's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct DomainSync {
    pub domain: String,
    pub fits: usize,
    /// Largest error bound among the fits, nanoseconds; `None` when the domain had no fit and its
    /// timestamps were used unconverted.
    pub max_error_bound_ns: Option<f64>,
}

/// What an observer lost or left out; shown next to the segments that touch its host.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ObserverHealth {
    pub host: String,
    pub samples: u64,
    /// Samples the kernel could not queue (ring buffer full), all layers.
    pub ringbuf_full: u64,
    /// Samples skipped by the per-flow rate limit, all layers.
    pub rate_limited: u64,
    /// Records dropped in user space by the observer.
    pub records_dropped: u64,
    /// Records missing from the stream (sequence gaps).
    pub gap_records: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Totals {
    pub samples: u64,
    /// Distinct (flow, sampled byte) groups.
    pub sampled_bytes: u64,
    pub flows: u64,
    /// Samples from an observer index not in the session's observer list (ignored).
    pub unknown_observer: u64,
    /// Segment values below −(their sync error bound), all segments.
    pub below_bound: u64,
}

/// The class of a segment, which decides how it is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    /// Two consecutive layers on one host ("metal1:sock_send→tcp_send").
    Layer,
    /// Between a host and its parent: VM ↔ metal, container ↔ parent ("vhop vm2:eth0→metal2:tap-vm2").
    Vhop,
    /// Between hosts that are not parent and child ("net metal1:wan0→metal2:wan0").
    Net,
    /// Application send on the sender to application read on the receiver ("e2e ct1→ct2").
    E2e,
}

/// One end of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointRef {
    pub host: String,
    pub layer: &'static str,
    pub iface: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub name: String,
    pub kind: SegmentKind,
    pub from: PointRef,
    pub to: PointRef,
    /// First transmissions (and, for e2e, bytes delivered without retransmission).
    pub latency: Summary,
    /// Later transmissions of a byte (retransmissions, duplicates), kept apart.
    pub retransmitted: Summary,
    /// Largest sync error bound that applied to a value of this segment (0 within one clock domain).
    pub sync_bound_ns: f64,
    /// Values below −(their sync error bound): clock error or misattribution, never hidden.
    pub below_bound: u64,
    /// Bytes seen at `from` and never at `to` (cross-host segments only).
    pub lost: u64,
    /// Bytes seen at one end only of a one-host segment, or at `to` without `from`.
    pub incomplete: u64,
    /// Records the two ends' observers lost (ring buffer full, rate limit, user-space drops,
    /// stream gaps) at these layers: the values here may miss that many samples.
    pub drops: u64,
    /// Mean latency over time (first transmissions), bins relative to the flow's start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesPoint>,
    /// Empirical CDF points (value ns, fraction), pair reports only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cdf: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Bin start, nanoseconds after the flow's first observation.
    pub t_ns: i64,
    pub mean_ns: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowReport {
    pub flow: String,
    pub src_host: String,
    pub dst_host: String,
    /// Manager-timeline bounds of the flow's observations, nanoseconds.
    pub start_ns: i64,
    pub end_ns: i64,
    pub sampled_bytes: u64,
    /// Sampled bytes sent more than once (retransmit flag or repeated observation).
    pub retransmitted: u64,
    /// Extra observations beyond the first per layer (all duplicates).
    pub duplicates: u64,
    /// Sampled bytes that left a host and never arrived at the next observed one.
    pub lost: u64,
    /// Sampled bytes still in flight when the receiver's observations end (not counted as lost).
    pub in_flight_at_end: u64,
    /// Bytes per second at the first observed layer, from sampled offsets over time.
    pub throughput_bps: Option<f64>,
    pub throughput_series: Vec<(i64, f64)>,
    pub segments: Vec<SegmentReport>,
    /// The non-e2e segment with the largest median.
    pub dominant: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    pub src_host: String,
    pub dst_host: String,
    pub flows: usize,
    pub sampled_bytes: u64,
    pub retransmitted: u64,
    pub lost: u64,
    pub segments: Vec<SegmentReport>,
    pub dominant: Option<String>,
}

/// The segment with the largest median among those that are not end to end.
pub fn dominant(segments: &[SegmentReport]) -> Option<String> {
    segments
        .iter()
        .filter(|s| s.kind != SegmentKind::E2e)
        .filter_map(|s| s.latency.p50_ns.map(|p| (p, &s.name)))
        .max_by_key(|(p, _)| *p)
        .map(|(_, n)| n.clone())
}
