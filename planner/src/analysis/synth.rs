//! Synthetic sessions with known ground truth, for tests and the analysis benchmark.
//!
//! A byte takes a fixed path of observation points, each reached a known delay after the
//! previous one; each kernel's clock runs at a known offset and drift from the manager's, and the
//! session's clock fits describe it (optionally with a deliberate error). Retransmissions and
//! losses are injected at a chosen hop. Samples are produced lazily, so 10 million of them cost
//! no memory before the analysis sees them.
use super::input::{HostInfo, HostKind, ObserverInfo, SessionData, TaggedSample};
use latplan_common::Layer;
use latplan_common::clock::ClockFit;
use latplan_common::kernel::SAMPLE_FLAG_RETRANSMIT;
use latplan_common::wire::{Interface, Sample};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone)]
pub struct SynthPoint {
    pub host: String,
    pub layer: Layer,
    pub iface: Option<String>,
    /// Delay from the previous point (for the first point: from the byte's send time).
    pub delay_ns: i64,
}

pub fn pt(host: &str, layer: Layer, iface: Option<&str>, delay_ns: i64) -> SynthPoint {
    SynthPoint {
        host: host.into(),
        layer,
        iface: iface.map(Into::into),
        delay_ns,
    }
}

/// A clock domain's truth and what its fit claims.
#[derive(Debug, Clone)]
pub struct SynthClock {
    pub domain: String,
    /// Manager minus host clock at host time 0, nanoseconds.
    pub offset_ns: f64,
    pub drift_ppm: f64,
    /// The fit's error: it claims offset_ns + fit_bias_ns.
    pub fit_bias_ns: f64,
    pub error_bound_ns: f64,
}

#[derive(Debug, Clone)]
pub struct Synth {
    pub hosts: Vec<HostInfo>,
    pub clocks: Vec<SynthClock>,
    pub path: Vec<SynthPoint>,
    pub flows: u32,
    pub bytes_per_flow: u64,
    pub sample_size: u64,
    /// Manager time between two sampled bytes of one flow.
    pub interval_ns: u64,
    pub start_ns: u64,
    /// Every n-th byte's first transmission is lost before `loss_hop` and sent again from
    /// `retrans_from` after `rto_ns`.
    pub retransmit_every: Option<u64>,
    /// Every n-th byte is lost for good before `loss_hop` (never seen from there on).
    pub lose_every: Option<u64>,
    pub loss_hop: usize,
    pub retrans_from: usize,
    pub rto_ns: i64,
    /// Each delay gets a deterministic pseudo-random extra in [0, jitter_ns).
    pub jitter_ns: u64,
}

/// Where each point's samples come from: observer index, ifindex, netns.
#[derive(Debug, Clone, Copy)]
struct Source {
    observer: u32,
    ifindex: u32,
    netns: u32,
    domain: usize,
}

impl Synth {
    /// metal1 sends to metal2 over wan0, all ten layers observed; delays in µs: 10, 20, 5, 2
    /// on the sender, `net_us` on the wire, 3, 4, 6, 30 on the receiver.
    pub fn two_metals(net_us: i64) -> Synth {
        use Layer::*;
        let us = 1000;
        Synth {
            hosts: vec![metal("metal1", "10.78.0.1"), metal("metal2", "10.78.0.2")],
            clocks: vec![clock("metal1", 0.0), clock("metal2", 0.0)],
            path: vec![
                pt("metal1", SockSend, None, 0),
                pt("metal1", TcpSend, None, 10 * us),
                pt("metal1", IpSend, None, 20 * us),
                pt("metal1", DevSend, Some("wan0"), 5 * us),
                pt("metal1", DevXmit, Some("wan0"), 2 * us),
                pt("metal2", DevRecv, Some("wan0"), net_us * us),
                pt("metal2", IpRecv, None, 3 * us),
                pt("metal2", TcpRecv, None, 4 * us),
                pt("metal2", SockQueue, None, 6 * us),
                pt("metal2", SockRecv, None, 30 * us),
            ],
            flows: 1,
            bytes_per_flow: 1000,
            sample_size: 65536,
            interval_ns: 1_000_000,
            start_ns: 1_000_000_000,
            retransmit_every: None,
            lose_every: None,
            loss_hop: 5,
            retrans_from: 1,
            rto_ns: 200_000_000,
            jitter_ns: 0,
        }
    }

    /// ct1 (container on metal1) sends to ct2 (container in vm2 on metal2): container and VM
    /// virtual hops on both sides of a 1 ms network; three clock domains with offsets and drift.
    /// Delays in µs: ct1 10, 5; vhop 7; metal1 4; net 1000; metal2 3; vhop 40; vm2 6; vhop 8; ct2 50.
    pub fn containers_across_metals() -> Synth {
        use Layer::*;
        let us = 1000;
        let mut s = Synth::two_metals(0);
        s.hosts.push(child(
            "ct1",
            HostKind::Container,
            "metal1",
            Some("veth-ct1"),
        ));
        s.hosts.push(child("vm2", HostKind::Vm, "metal2", None));
        s.hosts
            .push(child("ct2", HostKind::Container, "vm2", Some("veth-ct2")));
        s.clocks = vec![
            clock("metal1", 0.0),
            clock("metal2", -3_000_000.0),
            clock("vm2", 9_000_000.0),
        ];
        s.clocks[2].drift_ppm = -15.0;
        s.path = vec![
            pt("ct1", SockSend, None, 0),
            pt("ct1", TcpSend, None, 10 * us),
            pt("ct1", DevSend, Some("eth0"), 5 * us),
            pt("metal1", DevRecv, Some("veth-ct1"), 7 * us),
            pt("metal1", DevSend, Some("wan0"), 4 * us),
            pt("metal2", DevRecv, Some("wan0"), 1000 * us),
            pt("metal2", DevSend, Some("tap-vm2"), 3 * us),
            pt("vm2", DevRecv, Some("eth0"), 40 * us),
            pt("vm2", DevSend, Some("veth-ct2"), 6 * us),
            pt("ct2", DevRecv, Some("eth0"), 8 * us),
            pt("ct2", SockRecv, None, 50 * us),
        ];
        s
    }

    fn sources(&self) -> (Vec<ObserverInfo>, Vec<Source>, Vec<usize>) {
        let by_name: HashMap<&str, &HostInfo> =
            self.hosts.iter().map(|h| (h.name.as_str(), h)).collect();
        let kernel_of = |h: &str| -> String {
            let mut h = h.to_string();
            while let Some(parent) = by_name
                .get(h.as_str())
                .filter(|i| i.kind == HostKind::Container)
                .and_then(|i| i.parent.clone())
            {
                h = parent;
            }
            h
        };
        let mut observers: Vec<ObserverInfo> = Vec::new();
        let mut sources = Vec::new();
        let mut domains = Vec::new();
        for p in &self.path {
            let kernel = kernel_of(&p.host);
            let oi = match observers.iter().position(|o| o.host == kernel) {
                Some(i) => i,
                None => {
                    observers.push(ObserverInfo {
                        host: kernel.clone(),
                        sample_size: self.sample_size,
                        interfaces: Vec::new(),
                        netns_hosts: Vec::new(),
                        stats: None,
                        gap_records: 0,
                    });
                    observers.len() - 1
                }
            };
            let o = &mut observers[oi];
            // Each host's namespace gets an inode; a container's is listed as its own.
            let netns = 4_026_531_840
                + self
                    .hosts
                    .iter()
                    .position(|h| h.name == p.host)
                    .unwrap_or(0) as u32;
            if p.host != kernel && !o.netns_hosts.iter().any(|(n, _)| *n == netns) {
                o.netns_hosts.push((netns, p.host.clone()));
            }
            let ifindex = match &p.iface {
                Some(name) => match o
                    .interfaces
                    .iter()
                    .find(|i| &i.name == name && i.netns == netns)
                {
                    Some(i) => i.ifindex,
                    None => {
                        let ifindex = o.interfaces.len() as u32 + 2;
                        o.interfaces.push(Interface {
                            ifindex,
                            name: name.clone(),
                            netns,
                            ingress_mode: "tc".into(),
                        });
                        ifindex
                    }
                },
                None => 0,
            };
            let domain = by_name
                .get(kernel.as_str())
                .map(|h| {
                    if h.clock_domain.is_empty() {
                        h.name.clone()
                    } else {
                        h.clock_domain.clone()
                    }
                })
                .unwrap_or(kernel.clone());
            let d = self
                .clocks
                .iter()
                .position(|c| c.domain == domain)
                .expect("every kernel's domain has a SynthClock");
            sources.push(Source {
                observer: oi as u32,
                ifindex,
                netns,
                domain: d,
            });
            domains.push(d);
        }
        (observers, sources, domains)
    }

    pub fn fits(&self) -> Vec<ClockFit> {
        self.clocks
            .iter()
            .map(|c| ClockFit {
                domain: c.domain.clone(),
                valid_from_host_ns: 0,
                ref_host_ns: 0,
                offset_ns: c.offset_ns + c.fit_bias_ns,
                drift_ppm: c.drift_ppm,
                error_bound_ns: c.error_bound_ns,
                samples: 100,
                min_delay_ns: 20_000,
            })
            .collect()
    }

    /// Number of samples [`Synth::samples`] yields.
    pub fn sample_count(&self) -> u64 {
        self.samples().count() as u64
    }

    pub fn samples(&self) -> impl Iterator<Item = TaggedSample> + '_ {
        let (_, sources, _) = self.sources();
        let mut out: Vec<TaggedSample> = Vec::new();
        let mut flow = 0u32;
        let mut byte = 0u64;
        std::iter::from_fn(move || {
            while out.is_empty() {
                if flow >= self.flows {
                    return None;
                }
                self.byte_samples(flow, byte, &sources, &mut out);
                out.reverse();
                byte += 1;
                if byte == self.bytes_per_flow {
                    byte = 0;
                    flow += 1;
                }
            }
            out.pop()
        })
    }

    fn byte_samples(&self, flow: u32, b: u64, sources: &[Source], out: &mut Vec<TaggedSample>) {
        let stagger = self.interval_ns / self.flows.max(1) as u64 * flow as u64;
        let t0 = (self.start_ns + b * self.interval_ns + stagger) as i64;
        let offset = 1_000_000 + b * self.sample_size;
        let retrans = self.retransmit_every.is_some_and(|n| b.is_multiple_of(n));
        let lost = !retrans && self.lose_every.is_some_and(|n| b.is_multiple_of(n));
        let mut emit = |k: usize, t: i64, flags: u8| {
            let p = &self.path[k];
            let s = &sources[k];
            out.push(TaggedSample {
                observer: s.observer,
                sample: Sample {
                    ts_ns: self.host_ns(s.domain, t),
                    offset,
                    saddr: addr(10, flow),
                    daddr: addr(20, 0),
                    sport: 40_000 + flow as u16,
                    dport: 5201,
                    len: 1448,
                    ifindex: s.ifindex,
                    netns: s.netns,
                    cpu: 0,
                    layer: p.layer,
                    flags,
                },
            });
        };
        let mut t = t0;
        let delay = |k: usize, salt: u64| {
            let j = if self.jitter_ns == 0 {
                0
            } else {
                (mix(b, k as u64, salt) % self.jitter_ns) as i64
            };
            self.path[k].delay_ns + j
        };
        let stop = if retrans || lost {
            self.loss_hop
        } else {
            self.path.len()
        };
        let mut times = Vec::with_capacity(self.path.len());
        for k in 0..stop {
            t += delay(k, flow as u64);
            times.push(t);
            emit(k, t, 0);
        }
        if retrans {
            // The second transmission starts an RTO after the first left `retrans_from`.
            let mut t = times[self.retrans_from] + self.rto_ns;
            emit(self.retrans_from, t, SAMPLE_FLAG_RETRANSMIT);
            for k in self.retrans_from + 1..self.path.len() {
                t += delay(k, flow as u64);
                emit(
                    k,
                    t,
                    if k < self.loss_hop {
                        SAMPLE_FLAG_RETRANSMIT
                    } else {
                        0
                    },
                );
            }
        }
    }

    /// The host clock reading of a domain at manager time `m`.
    fn host_ns(&self, domain: usize, m: i64) -> u64 {
        let c = &self.clocks[domain];
        // m = h + offset + drift·1e-6·h  ⇒  h = (m − offset) / (1 + drift·1e-6)
        ((m as f64 - c.offset_ns) / (1.0 + c.drift_ppm * 1e-6)).round() as u64
    }

    pub fn session(&self) -> SessionData<impl Iterator<Item = TaggedSample> + '_> {
        let (observers, _, _) = self.sources();
        SessionData {
            session: "synthetic".into(),
            hosts: self.hosts.clone(),
            observers,
            fits: self.fits(),
            samples: self.samples(),
        }
    }
}

pub fn metal(name: &str, addr: &str) -> HostInfo {
    HostInfo {
        name: name.into(),
        kind: HostKind::Metal,
        parent: None,
        clock_domain: name.into(),
        host_interface: None,
        addresses: vec![addr.parse().expect("valid address literal")],
    }
}

pub fn child(name: &str, kind: HostKind, parent: &str, host_interface: Option<&str>) -> HostInfo {
    HostInfo {
        name: name.into(),
        kind,
        parent: Some(parent.into()),
        clock_domain: if kind == HostKind::Vm {
            name.into()
        } else {
            String::new()
        },
        host_interface: host_interface.map(Into::into),
        addresses: Vec::new(),
    }
}

pub fn clock(domain: &str, offset_ns: f64) -> SynthClock {
    SynthClock {
        domain: domain.into(),
        offset_ns,
        drift_ppm: 0.0,
        fit_bias_ns: 0.0,
        error_bound_ns: 0.0,
    }
}

fn addr(net: u8, i: u32) -> [u8; 16] {
    let ip = Ipv4Addr::new(10, net, (i >> 8) as u8, i as u8);
    super::input::raw_of(IpAddr::V4(ip))
}

/// A cheap deterministic hash (splitmix64) for jitter.
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.rotate_left(17) ^ c.rotate_left(41);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
