//! Matching: every sample becomes a compact observation on the manager's timeline, and
//! observations of the same sampled byte (flow key + offset) are brought together by sorting.
//!
//! Sorting one flat vector of 32-byte records by (flow, offset, time) is what keeps 10 million
//! samples within seconds and a few hundred megabytes; a map of per-byte vectors would not.
use super::input::{FlowKey, ObserverInfo, TaggedSample};
use super::topology::Topology;
use latplan_common::Layer;
use latplan_common::clock::{ClockFit, DomainClock};
use latplan_common::kernel::SAMPLE_FLAG_RETRANSMIT;
use std::collections::HashMap;

/// One sample, resolved and converted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Obs {
    pub flow: u32,
    pub point: u16,
    pub retransmit: bool,
    pub offset: u64,
    /// Manager timeline, nanoseconds (rounded).
    pub t: i64,
    /// Error bound of the clock fit that converted `t`, nanoseconds.
    pub bound: f32,
}

/// An observation point: a layer on a host, and for device layers the interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Point {
    pub host: usize,
    pub layer: Layer,
    pub iface: Option<String>,
    /// The observer that recorded it (for its drop counters).
    pub observer: u32,
}

impl Point {
    /// "dev_send(wan0)" or "tcp_send".
    pub fn label(&self) -> String {
        match &self.iface {
            Some(i) => format!("{}({i})", self.layer.name()),
            None => self.layer.name().to_string(),
        }
    }

    /// The interface name if any, else the layer name: how a hop between hosts names its ends.
    pub fn hop_label(&self) -> String {
        self.iface
            .clone()
            .unwrap_or_else(|| self.layer.name().to_string())
    }
}

pub struct Matched {
    pub obs: Vec<Obs>,
    pub flows: Vec<FlowKey>,
    pub points: Vec<Point>,
    /// Per observer: samples it contributed.
    pub per_observer: Vec<u64>,
    pub unknown_observer: u64,
    /// Domains that had no fit; their timestamps were used unconverted.
    pub unsynced_domains: Vec<String>,
}

/// Per observer: the clock of its kernel and how to name hosts and interfaces.
struct ObserverCtx {
    host: usize,
    clock: Option<DomainClock>,
    netns_hosts: HashMap<u32, usize>,
    /// (ifindex, netns) → name, and ifindex → name when unique.
    ifaces: HashMap<(u32, u32), String>,
    ifaces_any: HashMap<u32, Option<String>>,
}

pub fn match_samples(
    topo: &mut Topology,
    observers: &[ObserverInfo],
    fits: &[ClockFit],
    samples: impl IntoIterator<Item = TaggedSample>,
) -> Matched {
    let mut by_domain: HashMap<&str, Vec<ClockFit>> = HashMap::new();
    for f in fits {
        by_domain
            .entry(f.domain.as_str())
            .or_default()
            .push(f.clone());
    }
    let mut unsynced = Vec::new();
    let ctx: Vec<ObserverCtx> = observers
        .iter()
        .map(|o| {
            let host = topo.intern(&o.host);
            let domain = topo.domain(host).to_string();
            let clock = by_domain
                .get(domain.as_str())
                .map(|f| DomainClock::new(f.clone()));
            if clock.is_none() && !unsynced.contains(&domain) {
                unsynced.push(domain);
            }
            let netns_hosts = o
                .netns_hosts
                .iter()
                .map(|(ns, h)| (*ns, topo.intern(h)))
                .collect();
            let ifaces = o
                .interfaces
                .iter()
                .map(|i| ((i.ifindex, i.netns), i.name.clone()))
                .collect();
            let mut ifaces_any: HashMap<u32, Option<String>> = HashMap::new();
            for i in &o.interfaces {
                ifaces_any
                    .entry(i.ifindex)
                    .and_modify(|n| {
                        if n.as_deref() != Some(i.name.as_str()) {
                            *n = None // the same index in two namespaces: ambiguous
                        }
                    })
                    .or_insert_with(|| Some(i.name.clone()));
            }
            ObserverCtx {
                host,
                clock,
                netns_hosts,
                ifaces,
                ifaces_any,
            }
        })
        .collect();

    let mut flows: Vec<FlowKey> = Vec::new();
    let mut flow_ids: HashMap<FlowKey, u32> = HashMap::new();
    let mut points: Vec<Point> = Vec::new();
    let mut point_ids: HashMap<Point, u16> = HashMap::new();
    let mut point_cache: HashMap<(u32, Layer, u32, u32), u16> = HashMap::new();
    let mut per_observer = vec![0u64; observers.len()];
    let mut unknown_observer = 0u64;
    let mut last_flow: Option<(FlowKey, u32)> = None;

    let samples = samples.into_iter();
    let mut obs = Vec::with_capacity(samples.size_hint().0);
    for ts in samples {
        let Some(c) = ctx.get(ts.observer as usize) else {
            unknown_observer += 1;
            continue;
        };
        per_observer[ts.observer as usize] += 1;
        let s = &ts.sample;
        let key = FlowKey::of(s);
        // Samples come in batches of one flow; remembering the last flow skips most lookups.
        let flow = match last_flow {
            Some((k, id)) if k == key => id,
            _ => {
                let next = flows.len() as u32;
                let id = *flow_ids.entry(key).or_insert_with(|| {
                    flows.push(key);
                    next
                });
                last_flow = Some((key, id));
                id
            }
        };
        let ifindex = if s.layer.is_interface_layer() {
            s.ifindex
        } else {
            0
        };
        let point = *point_cache
            .entry((ts.observer, s.layer, ifindex, s.netns))
            .or_insert_with(|| {
                let host = c.netns_hosts.get(&s.netns).copied().unwrap_or(c.host);
                let iface = s.layer.is_interface_layer().then(|| {
                    c.ifaces
                        .get(&(s.ifindex, s.netns))
                        .cloned()
                        // Index-only lookup is for the observer's own namespace: an index in a
                        // container's namespace names a different device (ifindexes are per netns).
                        .or_else(|| {
                            (!c.netns_hosts.contains_key(&s.netns))
                                .then(|| c.ifaces_any.get(&s.ifindex).cloned().flatten())
                                .flatten()
                        })
                        .unwrap_or_else(|| format!("if{}", s.ifindex))
                });
                let p = Point {
                    host,
                    layer: s.layer,
                    iface,
                    observer: ts.observer,
                };
                let next = points.len() as u16;
                *point_ids.entry(p.clone()).or_insert_with(|| {
                    points.push(p);
                    next
                })
            });
        let (t, bound) = match &c.clock {
            Some(clock) => clock
                .to_manager_ns(s.ts_ns)
                .unwrap_or((s.ts_ns as f64, 0.0)),
            None => (s.ts_ns as f64, 0.0),
        };
        obs.push(Obs {
            flow,
            point,
            retransmit: s.flags & SAMPLE_FLAG_RETRANSMIT != 0,
            offset: s.offset,
            t: t.round() as i64,
            bound: bound as f32,
        });
    }
    obs.sort_unstable_by_key(|o| (o.flow, o.offset, o.t, o.point));
    Matched {
        obs,
        flows,
        points,
        per_observer,
        unknown_observer,
        unsynced_domains: unsynced,
    }
}

/// Splits a slice sorted by `key` into runs of equal keys.
pub fn runs<T, K: PartialEq>(v: &[T], key: impl Fn(&T) -> K) -> impl Iterator<Item = &[T]> {
    let mut rest = v;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let k = key(first);
        let n = rest.iter().position(|x| key(x) != k).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}
