//! Segments of one flow: the ordered path of observation points its bytes pass, and per
//! sampled byte the latency between each two consecutive points.
use super::matching::{Obs, Point, runs};
use super::model::{PointRef, SegmentKind, SeriesPoint};
use super::stats::{Series, SignedHist, Summary};
use super::topology::Topology;
use latplan_common::{Direction, Layer};
use std::collections::HashMap;

/// Time bins per flow for the latency-over-time series.
pub const SERIES_BINS: usize = 300;

/// One segment's accumulated values for one flow.
pub struct SegmentAcc {
    pub name: String,
    pub kind: SegmentKind,
    pub from: usize,
    pub to: usize,
    pub first: SignedHist,
    pub retrans: SignedHist,
    pub sync_bound_ns: f64,
    pub below_bound: u64,
    pub lost: u64,
    pub incomplete: u64,
    pub series: Series,
}

impl SegmentAcc {
    fn new(name: String, kind: SegmentKind, from: usize, to: usize, series: Series) -> SegmentAcc {
        SegmentAcc {
            name,
            kind,
            from,
            to,
            first: SignedHist::default(),
            retrans: SignedHist::default(),
            sync_bound_ns: 0.0,
            below_bound: 0,
            lost: 0,
            incomplete: 0,
            series,
        }
    }

    fn record(&mut self, value: i64, bound: f64, first: bool, t: i64) {
        self.sync_bound_ns = self.sync_bound_ns.max(bound);
        if (value as f64) < -bound {
            self.below_bound += 1;
        }
        if first {
            self.first.record(value);
            self.series.record(t, value);
        } else {
            self.retrans.record(value);
        }
    }

    pub fn series_points(&self, origin: i64) -> Vec<SeriesPoint> {
        self.series
            .bins
            .iter()
            .enumerate()
            .filter(|(_, b)| b.count > 0)
            .map(|(i, b)| SeriesPoint {
                t_ns: self.series.start_ns + i as i64 * self.series.bin_ns - origin,
                mean_ns: b.sum_ns / b.count as f64,
                count: b.count,
            })
            .collect()
    }

    pub fn summaries(&self) -> (Summary, Summary) {
        (self.first.summary(), self.retrans.summary())
    }
}

/// The analysed flow, before it is turned into report rows.
pub struct FlowAcc {
    pub src: usize,
    pub dst: usize,
    pub start: i64,
    pub end: i64,
    /// Points in path order.
    pub path: Vec<u16>,
    pub segments: Vec<SegmentAcc>,
    pub sampled_bytes: u64,
    pub retransmitted: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub in_flight_at_end: u64,
    pub throughput_bps: Option<f64>,
    pub throughput_series: Vec<(i64, f64)>,
    /// Hosts seen for this flow but off the tree path between sender and receiver.
    pub off_path_hosts: usize,
}

#[derive(Default, Clone, Copy)]
struct PointAgg {
    count: u64,
    rel_sum: f64,
    max_t: i64,
}

impl PointAgg {
    fn mean_rel(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.rel_sum / self.count as f64
        }
    }
}

pub fn point_ref(topo: &Topology, p: &Point) -> PointRef {
    PointRef {
        host: topo.name(p.host).to_string(),
        layer: p.layer.name(),
        iface: p.iface.clone(),
    }
}

fn segment_name(topo: &Topology, kind: SegmentKind, a: &Point, b: &Point) -> String {
    let (ha, hb) = (topo.name(a.host), topo.name(b.host));
    match kind {
        SegmentKind::Layer => format!("{ha}:{}→{}", a.label(), b.label()),
        SegmentKind::Vhop => format!("vhop {ha}:{}→{hb}:{}", a.hop_label(), b.hop_label()),
        SegmentKind::Net => format!("net {ha}:{}→{hb}:{}", a.hop_label(), b.hop_label()),
        SegmentKind::E2e => format!("e2e {ha}→{hb}"),
    }
}

/// Analyses the observations of one flow (sorted by offset, then time).
pub fn analyse_flow(
    topo: &Topology,
    points: &[Point],
    domains: &[usize],
    flow_obs: &[Obs],
    key_src: Option<usize>,
    key_dst: Option<usize>,
    sink: &mut dyn FnMut(usize, u64, i64, bool),
) -> FlowAcc {
    // Pass 1: which points the flow has, when, and in which order they are typically reached.
    let mut agg: HashMap<u16, PointAgg> = HashMap::new();
    let (mut start, mut end) = (i64::MAX, i64::MIN);
    for group in runs(flow_obs, |o| o.offset) {
        let t0 = group.iter().map(|o| o.t).min().unwrap_or(0);
        for o in group {
            let a = agg.entry(o.point).or_default();
            a.count += 1;
            a.rel_sum += (o.t - t0) as f64;
            a.max_t = if a.count == 1 { o.t } else { a.max_t.max(o.t) };
            start = start.min(o.t);
            end = end.max(o.t);
        }
    }
    let present: Vec<u16> = {
        let mut v: Vec<u16> = agg.keys().copied().collect();
        v.sort_unstable();
        v
    };
    let host_mean = |h: usize| {
        present
            .iter()
            .filter(|&&p| points[p as usize].host == h)
            .map(|p| agg[p].mean_rel())
            .fold(f64::INFINITY, f64::min)
    };
    let hosts_with = |layers: &[Layer]| -> Option<usize> {
        layers.iter().find_map(|l| {
            present
                .iter()
                .find(|&&p| points[p as usize].layer == *l)
                .map(|&p| points[p as usize].host)
        })
    };
    let earliest = present
        .iter()
        .min_by(|a, b| agg[a].mean_rel().total_cmp(&agg[b].mean_rel()))
        .map(|&p| points[p as usize].host);
    let latest = present
        .iter()
        .max_by(|a, b| agg[a].mean_rel().total_cmp(&agg[b].mean_rel()))
        .map(|&p| points[p as usize].host);
    let src = hosts_with(&[Layer::SockSend, Layer::TcpSend])
        .or(key_src)
        .or(earliest)
        .unwrap_or(0);
    let dst = hosts_with(&[Layer::SockRecv, Layer::SockQueue, Layer::TcpRecv])
        .or(key_dst)
        .or(latest)
        .unwrap_or(src);

    // Host order: the tree path, with hosts off it slotted in by when they see the bytes.
    let mut hosts: Vec<usize> = Vec::new();
    for p in &present {
        let h = points[*p as usize].host;
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    let tree = topo.path(src, dst);
    let mut order: Vec<usize> = tree.iter().copied().filter(|h| hosts.contains(h)).collect();
    let mut off_path_hosts = 0;
    for h in hosts.iter().copied().filter(|h| !tree.contains(h)) {
        off_path_hosts += 1;
        let m = host_mean(h);
        let at = order
            .iter()
            .position(|&o| host_mean(o) > m)
            .unwrap_or(order.len());
        order.insert(at, h);
    }
    // Within a host: arriving layers before leaving ones (a forwarding host has both), then
    // path order of layers, then (several interfaces at one layer) when they see the bytes.
    let mut path: Vec<u16> = Vec::new();
    for h in order {
        let mut mine: Vec<u16> = present
            .iter()
            .copied()
            .filter(|&p| points[p as usize].host == h)
            .collect();
        mine.sort_by(|&a, &b| {
            let (pa, pb) = (&points[a as usize], &points[b as usize]);
            let dir = |l: Layer| {
                if l.direction() == Direction::Recv {
                    0
                } else {
                    1
                }
            };
            (dir(pa.layer), pa.layer)
                .cmp(&(dir(pb.layer), pb.layer))
                .then(agg[&a].mean_rel().total_cmp(&agg[&b].mean_rel()))
        });
        path.extend(mine);
    }
    let rank: HashMap<u16, usize> = path.iter().enumerate().map(|(i, &p)| (p, i)).collect();

    let new_series = || Series::new(start, end, SERIES_BINS);
    let mut segments: Vec<SegmentAcc> = path
        .windows(2)
        .map(|w| {
            let (a, b) = (&points[w[0] as usize], &points[w[1] as usize]);
            let kind = if a.host == b.host {
                SegmentKind::Layer
            } else if topo.is_virtual_hop(a.host, b.host) {
                SegmentKind::Vhop
            } else {
                SegmentKind::Net
            };
            SegmentAcc::new(
                segment_name(topo, kind, a, b),
                kind,
                w[0] as usize,
                w[1] as usize,
                new_series(),
            )
        })
        .collect();
    let e2e_ends = {
        let send = path.iter().position(|&p| {
            points[p as usize].layer == Layer::SockSend && points[p as usize].host == src
        });
        let recv = path.iter().rposition(|&p| {
            points[p as usize].layer == Layer::SockRecv && points[p as usize].host == dst
        });
        match (send, recv) {
            (Some(s), Some(r)) if s < r => Some((s, r)),
            _ => None,
        }
    };
    if let Some((s, r)) = e2e_ends {
        let (a, b) = (&points[path[s] as usize], &points[path[r] as usize]);
        let name = segment_name(topo, SegmentKind::E2e, a, b);
        segments.push(SegmentAcc::new(
            name,
            SegmentKind::E2e,
            path[s] as usize,
            path[r] as usize,
            new_series(),
        ));
    }

    // Pass 2: per sampled byte, the value of every segment.
    let mut f = FlowAcc {
        src,
        dst,
        start,
        end,
        path: path.clone(),
        segments: Vec::new(),
        sampled_bytes: 0,
        retransmitted: 0,
        duplicates: 0,
        lost: 0,
        in_flight_at_end: 0,
        throughput_bps: None,
        throughput_series: Vec::new(),
        off_path_hosts,
    };
    let n = path.len();
    let mut buf: Vec<(usize, &Obs)> = Vec::new();
    let mut ranges: Vec<(usize, usize)> = vec![(0, 0); n];
    let mut tput = Throughput::new(start, end);
    for group in runs(flow_obs, |o| o.offset) {
        f.sampled_bytes += 1;
        buf.clear();
        buf.extend(group.iter().map(|o| (rank[&o.point], o)));
        buf.sort_by_key(|(r, o)| (*r, o.t)); // stable on time within a point
        ranges.iter_mut().for_each(|r| *r = (0, 0));
        let mut i = 0;
        while i < buf.len() {
            let r = buf[i].0;
            let j = i + buf[i..].iter().take_while(|(rr, _)| *rr == r).count();
            ranges[r] = (i, j);
            i = j;
        }
        let dups: usize = ranges.iter().map(|(a, b)| (b - a).saturating_sub(1)).sum();
        let retrans = dups > 0 || group.iter().any(|o| o.retransmit);
        f.duplicates += dups as u64;
        f.retransmitted += retrans as u64;
        if let Some((_, o)) = buf.first().filter(|(r, _)| *r == 0) {
            tput.record(o.t, o.offset);
        }
        let mut byte_lost = false;
        let mut byte_in_flight = false;
        for (si, seg) in segments.iter_mut().enumerate() {
            let (ra, rb) = if seg.kind == SegmentKind::E2e {
                let (s, r) = e2e_ends.expect("e2e segment exists only with its ends");
                (s, r)
            } else {
                (si, si + 1)
            };
            let (a, b) = (
                &buf[ranges[ra].0..ranges[ra].1],
                &buf[ranges[rb].0..ranges[rb].1],
            );
            let cross_domain = domains[path[ra] as usize] != domains[path[rb] as usize];
            match (a.is_empty(), b.is_empty()) {
                (false, false) => {
                    let bound = |x: &Obs, y: &Obs| {
                        if cross_domain {
                            x.bound as f64 + y.bound as f64
                        } else {
                            0.0
                        }
                    };
                    match seg.kind {
                        SegmentKind::E2e => {
                            let (x, y) = (a[0].1, b[0].1);
                            seg.record(y.t - x.t, bound(x, y), !retrans, y.t);
                            sink(si, x.offset, y.t - x.t, !retrans);
                        }
                        SegmentKind::Layer => {
                            // One host: the k-th pass of a layer belongs to the k-th transmission.
                            for (k, ((_, x), (_, y))) in a.iter().zip(b.iter()).enumerate() {
                                seg.record(y.t - x.t, bound(x, y), k == 0, y.t);
                                sink(si, x.offset, y.t - x.t, k == 0);
                            }
                        }
                        SegmentKind::Net | SegmentKind::Vhop => {
                            for (k, (_, y)) in b.iter().enumerate() {
                                let m = pair_departure(a, b.len(), k, y, &|x| bound(x, y));
                                let x = a[m].1;
                                // Only the first transmission's first arrival is a first value.
                                let first = k == 0 && m == 0;
                                seg.record(y.t - x.t, bound(x, y), first, y.t);
                                sink(si, x.offset, y.t - x.t, first);
                            }
                        }
                    }
                }
                (false, true) => {
                    if matches!(seg.kind, SegmentKind::Net | SegmentKind::Vhop) {
                        // Not lost if the receiver stopped observing before this byte could arrive.
                        let (_, x) = a[0];
                        if x.t <= agg[&path[rb]].max_t {
                            seg.lost += 1;
                            byte_lost = true;
                        } else {
                            byte_in_flight = true;
                        }
                    } else {
                        seg.incomplete += 1;
                    }
                }
                (true, false) => seg.incomplete += 1,
                (true, true) => {}
            }
        }
        if byte_lost {
            f.lost += 1;
        } else if byte_in_flight {
            f.in_flight_at_end += 1;
        }
    }
    f.throughput_bps = tput.overall();
    f.throughput_series = tput.series();
    f.segments = segments;
    f
}

/// Which departure (index into `a`) the `k`-th of `arrivals` arrivals of a byte belongs to.
///
/// As many arrivals as departures: in order (a path does not reorder one byte's copies).
/// Fewer (a copy was lost): the latest departure not after the arrival (within the sync bound);
/// but if the next departure is closer in time, that one — clock error beyond the bound then
/// shows as a negative, flagged value instead of a silent jump to an earlier transmission.
fn pair_departure(
    a: &[(usize, &Obs)],
    arrivals: usize,
    k: usize,
    y: &Obs,
    bound: &dyn Fn(&Obs) -> f64,
) -> usize {
    if a.len() == arrivals {
        return k;
    }
    let before = a
        .iter()
        .rposition(|(_, x)| (x.t as f64) <= y.t as f64 + bound(x));
    match before {
        None => 0,
        Some(m) => match a.get(m + 1) {
            Some((_, next)) if (next.t - y.t).abs() < (y.t - a[m].1.t).abs() => m + 1,
            _ => m,
        },
    }
}

/// Bytes per second at the flow's first point, from sampled offsets over time.
struct Throughput {
    first: Option<(i64, u64)>,
    last: Option<(i64, u64)>,
    bins: Series,
    max_off: Vec<Option<u64>>,
}

impl Throughput {
    fn new(start: i64, end: i64) -> Throughput {
        let bins = Series::new(start, end, SERIES_BINS);
        let n = bins.bins.len();
        Throughput {
            first: None,
            last: None,
            bins,
            max_off: vec![None; n],
        }
    }

    fn record(&mut self, t: i64, off: u64) {
        if self.first.is_none_or(|(ft, _)| t < ft) {
            self.first = Some((t, off));
        }
        if self.last.is_none_or(|(lt, _)| t > lt) {
            self.last = Some((t, off));
        }
        let b = self.bins.bin_of(t);
        self.max_off[b] = Some(self.max_off[b].map_or(off, |m| m.max(off)));
    }

    fn overall(&self) -> Option<f64> {
        let ((t0, o0), (t1, o1)) = (self.first?, self.last?);
        (t1 > t0 && o1 > o0).then(|| (o1 - o0) as f64 * 1e9 / (t1 - t0) as f64)
    }

    /// (bin start relative to the flow start, bytes/s) between consecutive non-empty bins.
    fn series(&self) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        let mut prev: Option<(usize, u64)> = None;
        for (i, m) in self.max_off.iter().enumerate() {
            let Some(m) = *m else { continue };
            if let Some((pi, pm)) = prev {
                let dt = (i - pi) as f64 * self.bins.bin_ns as f64;
                out.push((
                    i as i64 * self.bins.bin_ns,
                    m.saturating_sub(pm) as f64 * 1e9 / dt,
                ));
            }
            prev = Some((i, m));
        }
        out
    }
}
