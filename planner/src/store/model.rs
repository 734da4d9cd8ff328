//! Rows as the store's callers see them. Unsigned kernel values are `u64` here and signed 64-bit
//! integers with the same bits in SQL (every real value is below 2^63).
use latplan_common::wire::{Sample, Stats};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

pub type SessionId = i64;
pub type HostId = i64;
/// One observer run on one host: the unit record sequence numbers count in (they restart at 0
/// when an observer restarts, so (run, record_seq) — not (host, record_seq) — names a record).
pub type RunId = i64;
/// A flow's id within a session: a 63-bit hash of its key (see [`FlowKey::id`]), so every
/// collector — and a restarted one — gives the same flow the same id without asking the database.
pub type FlowId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: SessionId,
    pub name: String,
    pub started_unix_ms: i64,
    pub ended_unix_ms: Option<i64>,
    /// `running`, then whatever the caller passed to [`crate::store::Store::end_session`].
    pub status: String,
}

/// A host as the inventory declares it (what apply registers before observers start).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostRecord {
    pub name: String,
    /// `metal`, `vm`, `container`, or `unknown` for a host first seen in a stream.
    pub kind: String,
    /// The parent host's name (a VM's metal, a container's metal or VM).
    pub parent: Option<String>,
    pub clock_domain: Option<String>,
    pub boot_id: Option<String>,
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub id: HostId,
    pub session_id: SessionId,
    pub host: HostRecord,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: RunId,
    pub session_id: SessionId,
    pub host_id: HostId,
    pub host: String,
    pub boot_id: String,
    pub started_ns: u64,
    pub observer_version: String,
    pub sample_size: u64,
    pub netns: Vec<u32>,
    pub bye_records_total: Option<u64>,
    pub bye_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRow {
    pub run_id: RunId,
    pub host_id: HostId,
    pub ifindex: u32,
    pub netns: u32,
    pub name: String,
    pub ingress_mode: String,
}

/// A flow, normalised to the data direction (`saddr:sport` sends the data), as the observers
/// record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl FlowKey {
    pub fn of(s: &Sample) -> FlowKey {
        FlowKey {
            saddr: s.saddr,
            daddr: s.daddr,
            sport: s.sport,
            dport: s.dport,
        }
    }

    /// FNV-1a over the key, folded to 63 bits (non-negative in SQL). Stable across builds and
    /// platforms; it is stored, so never change it.
    pub fn id(&self) -> FlowId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: u8| {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        self.saddr
            .iter()
            .chain(self.daddr.iter())
            .for_each(|b| eat(*b));
        self.sport
            .to_be_bytes()
            .into_iter()
            .chain(self.dport.to_be_bytes())
            .for_each(&mut eat);
        (h & (u64::MAX >> 1)) as i64
    }

    pub fn src(&self) -> IpAddr {
        ip_of(self.saddr)
    }

    pub fn dst(&self) -> IpAddr {
        ip_of(self.daddr)
    }
}

/// IPv4-mapped addresses print as IPv4, everything else as IPv6.
pub fn ip_of(raw: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(raw);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The 16-byte form observers use for an address (IPv4 as IPv4-mapped IPv6).
pub fn raw_of(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ep = |ip: IpAddr, port: u16| match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        write!(
            f,
            "{}→{}",
            ep(self.src(), self.sport),
            ep(self.dst(), self.dport)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    pub flow_id: FlowId,
    pub key: FlowKey,
}

/// A stored record: the sample as the observer shipped it, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSample {
    pub run_id: RunId,
    pub host_id: HostId,
    pub record_seq: u64,
    pub flow_id: FlowId,
    pub sample: Sample,
}

/// One stats frame of one run (counters cumulative since the run started).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    pub run_id: RunId,
    pub host_id: HostId,
    pub stats: Stats,
}

/// A range of record sequence numbers `[from_seq, to_seq)` of a run that never reached the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapRow {
    pub run_id: RunId,
    pub host_id: HostId,
    pub host: String,
    pub from_seq: u64,
    pub to_seq: u64,
    /// `missing`: records before the highest stored one are absent; `tail`: the observer reported
    /// more records sent (stats or bye) than the store holds after the last stored one.
    pub kind: String,
}

impl GapRow {
    pub fn missing(&self) -> u64 {
        self.to_seq - self.from_seq
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamErrorRow {
    pub host: String,
    pub at_unix_ms: i64,
    pub error: String,
    pub skipped_bytes: u64,
}

/// Whether a segment row is one latency or a statistic over many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentRowKind {
    Sample,
    Summary,
}

impl SegmentRowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentRowKind::Sample => "sample",
            SegmentRowKind::Summary => "summary",
        }
    }
}

/// Analysis output: a generic row keyed by (session, flow, segment name).
///
/// `segment` is the analysis' name for the pair of observations, e.g. `metal1:sock_send→metal1:tcp_send`
/// or `network:metal1/eth0→metal2/eth0`. Sample rows carry `t_ns` (manager time) and
/// `byte_offset`; summary rows carry `stat` (`p50`, `p99`, `count`, `loss`, …). `value` is
/// nanoseconds for latencies, a plain number for counts. `flagged` marks values the analysis
/// does not trust (e.g. below the clock-sync error bound).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRow {
    pub flow_id: Option<FlowId>,
    pub segment: String,
    pub kind: SegmentRowKind,
    pub stat: Option<String>,
    pub t_ns: Option<i64>,
    pub byte_offset: Option<u64>,
    pub value: f64,
    pub flagged: bool,
}
