//! The latency breakdown: pure functions from a session's records to numbers (no I/O).
//!
//! 1. [`matching`]: samples → observations on the manager's timeline (the clock fit valid at each
//!    timestamp), sorted so that all observations of one sampled byte are adjacent.
//! 2. [`segments`]: per flow, the ordered path of observation points and, per sampled byte, the
//!    signed latency of each segment between consecutive points, plus end to end.
//! 3. [`stats`]: HdrHistogram percentiles, time series, throughput; flows between the same two
//!    hosts are merged into pair reports.
//!
//! Segment names and kinds are documented in docs/analysis.md.
pub mod groundtruth;
pub mod input;
pub mod matching;
pub mod model;
pub mod segments;
pub mod stats;
pub mod synth;
pub mod topology;

#[cfg(test)]
mod tests;

pub use input::{FlowKey, HostInfo, HostKind, ObserverInfo, SessionData, TaggedSample};
pub use model::{Analysis, FlowReport, PairReport, SegmentKind, SegmentReport};

use matching::{Point, match_samples, runs};
use model::{DomainSync, HostNode, ObserverHealth, Totals, dominant};
use segments::{FlowAcc, SegmentAcc, analyse_flow, point_ref};
use stats::SignedHist;
use std::collections::{BTreeMap, HashMap};
use topology::Topology;

/// Points of the per-segment CDFs in pair reports.
const CDF_POINTS: usize = 100;

/// Analyses a session.
pub fn analyse<I: IntoIterator<Item = TaggedSample>>(data: SessionData<I>) -> Analysis {
    let mut topo = Topology::new(&data.hosts);
    let m = match_samples(&mut topo, &data.observers, &data.fits, data.samples);
    let mut warnings = Vec::new();
    for d in &m.unsynced_domains {
        warnings.push(format!(
            "clock domain {d} has no clock fit: its timestamps are used unconverted and cross-domain segments touching it are not bounded"
        ));
    }
    if m.unknown_observer > 0 {
        warnings.push(format!(
            "{} samples named an observer the session does not list; ignored",
            m.unknown_observer
        ));
    }

    let domains = point_domains(&topo, &m.points);
    let health = observer_health(&data.observers, &m.per_observer);
    // What the observers lost at a segment's two ends: per-layer kernel drops and rate limiting,
    // plus each involved observer's user-space drops and stream gaps, each counted once.
    let drops_of = |a: &Point, b: &Point| -> u64 {
        let layer = |p: &Point| {
            data.observers[p.observer as usize]
                .stats
                .as_ref()
                .and_then(|s| s.layers.iter().find(|l| l.layer == p.layer))
                .map_or(0, |l| l.ringbuf_full + l.rate_limited)
        };
        let observer = |i: u32| {
            let o = &data.observers[i as usize];
            o.stats.as_ref().map_or(0, |s| s.records_dropped) + o.gap_records
        };
        let same_layer = a.observer == b.observer && a.layer == b.layer;
        let layers = layer(a) + if same_layer { 0 } else { layer(b) };
        let observers = observer(a.observer)
            + if a.observer == b.observer {
                0
            } else {
                observer(b.observer)
            };
        layers + observers
    };
    let mut flows = Vec::new();
    let mut pairs: BTreeMap<(String, String), PairAcc> = BTreeMap::new();
    let mut totals = Totals {
        samples: m.obs.len() as u64,
        unknown_observer: m.unknown_observer,
        ..Totals::default()
    };
    let mut off_path = 0;
    for flow_obs in runs(&m.obs, |o| o.flow) {
        let key = m.flows[flow_obs[0].flow as usize];
        let acc = analyse_flow(
            &topo,
            &m.points,
            &domains,
            flow_obs,
            topo.owner_of(key.src()),
            topo.owner_of(key.dst()),
            &mut |_, _, _, _| {},
        );
        off_path += acc.off_path_hosts;
        totals.sampled_bytes += acc.sampled_bytes;
        let report = flow_report(&topo, &m.points, &key, &acc, &drops_of);
        totals.below_bound += report.segments.iter().map(|s| s.below_bound).sum::<u64>();
        let pair = pairs
            .entry((report.src_host.clone(), report.dst_host.clone()))
            .or_default();
        pair.add(&acc, &report);
        flows.push(report);
    }
    if off_path > 0 {
        warnings.push(format!(
            "{off_path} host(s) saw flows they are not on the inventory path of; placed by time"
        ));
    }
    if totals.below_bound > 0 {
        warnings.push(format!(
            "{} segment values lie below minus their sync error bound (clock error or misattributed samples)",
            totals.below_bound
        ));
    }
    flows.sort_by(|a, b| {
        (&a.src_host, &a.dst_host, &a.flow).cmp(&(&b.src_host, &b.dst_host, &b.flow))
    });
    totals.flows = flows.len() as u64;

    let mut clocks: Vec<DomainSync> = Vec::new();
    let mut seen_domains: Vec<String> = (0..topo.hosts.len())
        .map(|i| topo.domain(i).to_string())
        .collect();
    seen_domains.sort();
    seen_domains.dedup();
    for d in seen_domains {
        let fits: Vec<_> = data.fits.iter().filter(|f| f.domain == d).collect();
        let max = fits
            .iter()
            .map(|f| f.error_bound_ns)
            .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.max(b))));
        clocks.push(DomainSync {
            domain: d,
            fits: fits.len(),
            max_error_bound_ns: max,
        });
    }

    Analysis {
        session: data.session,
        hosts: (0..topo.hosts.len())
            .map(|i| {
                let h = &topo.hosts[i];
                HostNode {
                    name: h.name.clone(),
                    kind: h.kind,
                    parent: h.parent.clone(),
                    clock_domain: topo.domain(i).to_string(),
                    host_interface: h.host_interface.clone(),
                }
            })
            .collect(),
        clocks,
        observers: health,
        totals,
        flows,
        pairs: pairs
            .into_iter()
            .map(|((s, d), p)| p.finish(s, d))
            .collect(),
        warnings,
    }
}

/// Every point's clock domain, as an index, to tell same-domain segments (no sync error) apart.
fn point_domains(topo: &Topology, points: &[Point]) -> Vec<usize> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    points
        .iter()
        .map(|p| {
            let next = ids.len();
            *ids.entry(topo.domain(p.host).to_string()).or_insert(next)
        })
        .collect()
}

/// Per-byte values of the segments `keep` selects (for comparison with ground truth).
#[derive(Debug, Clone, Default)]
pub struct SegmentValues {
    /// Segment names and kinds; [`ByteValue::segment`] indexes this.
    pub segments: Vec<(String, SegmentKind)>,
    pub values: Vec<ByteValue>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteValue {
    pub flow: FlowKey,
    /// The sampled byte's offset (its TCP sequence number is the low 32 bits).
    pub offset: u64,
    pub segment: u32,
    pub value_ns: i64,
    /// A first transmission's value (see [`SegmentReport::latency`]).
    pub first: bool,
}

impl SegmentValues {
    /// (flow, offset, value) of one segment's first-transmission values.
    pub fn of<'a>(&'a self, name: &str) -> impl Iterator<Item = (FlowKey, u64, i64)> + 'a {
        let id = self
            .segments
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i as u32);
        self.values
            .iter()
            .filter(move |v| Some(v.segment) == id && v.first)
            .map(|v| (v.flow, v.offset, v.value_ns))
    }
}

/// The per-byte values behind [`analyse`]'s distributions, for the segments `keep` selects.
pub fn segment_values<I: IntoIterator<Item = TaggedSample>>(
    data: SessionData<I>,
    keep: impl Fn(SegmentKind, &str) -> bool,
) -> SegmentValues {
    let mut topo = Topology::new(&data.hosts);
    let m = match_samples(&mut topo, &data.observers, &data.fits, data.samples);
    let domains = point_domains(&topo, &m.points);
    let mut out = SegmentValues::default();
    for flow_obs in runs(&m.obs, |o| o.flow) {
        let key = m.flows[flow_obs[0].flow as usize];
        let (src, dst) = (topo.owner_of(key.src()), topo.owner_of(key.dst()));
        let mut raw: Vec<(usize, u64, i64, bool)> = Vec::new();
        let acc = analyse_flow(
            &topo,
            &m.points,
            &domains,
            flow_obs,
            src,
            dst,
            &mut |si, off, v, first| raw.push((si, off, v, first)),
        );
        let ids: Vec<Option<u32>> = acc
            .segments
            .iter()
            .map(|s| {
                keep(s.kind, &s.name).then(|| {
                    match out.segments.iter().position(|(n, _)| *n == s.name) {
                        Some(i) => i as u32,
                        None => {
                            out.segments.push((s.name.clone(), s.kind));
                            out.segments.len() as u32 - 1
                        }
                    }
                })
            })
            .collect();
        out.values
            .extend(raw.into_iter().filter_map(|(si, offset, value_ns, first)| {
                ids[si].map(|segment| ByteValue {
                    flow: key,
                    offset,
                    segment,
                    value_ns,
                    first,
                })
            }));
    }
    out
}

fn observer_health(observers: &[ObserverInfo], per_observer: &[u64]) -> Vec<ObserverHealth> {
    observers
        .iter()
        .zip(per_observer)
        .map(|(o, &n)| {
            let (ring, rate) = o.stats.as_ref().map_or((0, 0), |s| {
                (
                    s.layers.iter().map(|l| l.ringbuf_full).sum(),
                    s.layers.iter().map(|l| l.rate_limited).sum(),
                )
            });
            ObserverHealth {
                host: o.host.clone(),
                samples: n,
                ringbuf_full: ring,
                rate_limited: rate,
                records_dropped: o.stats.as_ref().map_or(0, |s| s.records_dropped),
                gap_records: o.gap_records,
            }
        })
        .collect()
}

fn segment_report(
    topo: &Topology,
    points: &[Point],
    s: &SegmentAcc,
    origin: i64,
    drops: u64,
) -> SegmentReport {
    let (latency, retransmitted) = s.summaries();
    SegmentReport {
        name: s.name.clone(),
        kind: s.kind,
        from: point_ref(topo, &points[s.from]),
        to: point_ref(topo, &points[s.to]),
        latency,
        retransmitted,
        sync_bound_ns: s.sync_bound_ns,
        below_bound: s.below_bound,
        lost: s.lost,
        incomplete: s.incomplete,
        drops,
        series: s.series_points(origin),
        cdf: Vec::new(),
    }
}

fn flow_report(
    topo: &Topology,
    points: &[Point],
    key: &FlowKey,
    f: &FlowAcc,
    drops_of: &dyn Fn(&Point, &Point) -> u64,
) -> FlowReport {
    let segments: Vec<SegmentReport> = f
        .segments
        .iter()
        .map(|s| {
            segment_report(
                topo,
                points,
                s,
                f.start,
                drops_of(&points[s.from], &points[s.to]),
            )
        })
        .collect();
    FlowReport {
        flow: key.to_string(),
        src_host: topo.name(f.src).to_string(),
        dst_host: topo.name(f.dst).to_string(),
        start_ns: f.start,
        end_ns: f.end,
        sampled_bytes: f.sampled_bytes,
        retransmitted: f.retransmitted,
        duplicates: f.duplicates,
        lost: f.lost,
        in_flight_at_end: f.in_flight_at_end,
        throughput_bps: f.throughput_bps,
        throughput_series: f.throughput_series.clone(),
        dominant: dominant(&segments),
        segments,
    }
}

/// Flows between one pair of hosts, merged by segment name.
#[derive(Default)]
struct PairAcc {
    flows: usize,
    sampled_bytes: u64,
    retransmitted: u64,
    lost: u64,
    segments: Vec<(SegmentReport, SignedHist, SignedHist)>,
}

impl PairAcc {
    fn add(&mut self, acc: &FlowAcc, report: &FlowReport) {
        self.flows += 1;
        self.sampled_bytes += acc.sampled_bytes;
        self.retransmitted += acc.retransmitted;
        self.lost += acc.lost;
        for (s, r) in acc.segments.iter().zip(&report.segments) {
            match self.segments.iter_mut().find(|(x, _, _)| x.name == s.name) {
                Some((x, first, retrans)) => {
                    first.add(&s.first);
                    retrans.add(&s.retrans);
                    x.sync_bound_ns = x.sync_bound_ns.max(r.sync_bound_ns);
                    x.below_bound += r.below_bound;
                    x.lost += r.lost;
                    x.incomplete += r.incomplete;
                    x.drops = x.drops.max(r.drops);
                }
                None => {
                    let mut x = r.clone();
                    x.series.clear();
                    self.segments.push((x, s.first.clone(), s.retrans.clone()));
                }
            }
        }
    }

    fn finish(self, src_host: String, dst_host: String) -> PairReport {
        let segments: Vec<SegmentReport> = self
            .segments
            .into_iter()
            .map(|(mut x, first, retrans)| {
                x.latency = first.summary();
                x.retransmitted = retrans.summary();
                x.cdf = first.cdf(CDF_POINTS);
                x
            })
            .collect();
        PairReport {
            src_host,
            dst_host,
            flows: self.flows,
            sampled_bytes: self.sampled_bytes,
            retransmitted: self.retransmitted,
            lost: self.lost,
            dominant: dominant(&segments),
            segments,
        }
    }
}
