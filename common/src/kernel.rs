//! Layouts written by the eBPF programs and read by the observer (and timesync).

/// One sampled byte seen at one layer, as the kernel program writes it to the ring buffer.
///
/// The flow key is normalised to the data direction: `saddr:sport` is the data sender.
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the layer saw the byte.
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// 32-bit TCP sequence number of the sampled byte; user space unwraps it per flow.
    pub seq: u32,
    /// Payload bytes of the packet (or of the write/read) that carried the sampled byte.
    pub len: u32,
    /// Interface index for interface layers, 0 otherwise.
    pub ifindex: u32,
    /// Inode number of the network namespace the observation was made in.
    pub netns: u32,
    pub cpu: u16,
    /// [`crate::Layer`] as `u8`.
    pub layer: u8,
    /// [`SAMPLE_FLAG_RETRANSMIT`] and friends.
    pub flags: u8,
}

const _: () = assert!(core::mem::size_of::<SampleEvent>() == 64);

/// The segment carrying the sampled byte was a retransmission (or a duplicate, on receive).
pub const SAMPLE_FLAG_RETRANSMIT: u8 = 1;
/// The record was cut short: a write or packet held more sampled bytes than one program run emits.
pub const SAMPLE_FLAG_TRUNCATED: u8 = 2;

/// Per-layer counters kept by the kernel programs in a per-CPU array indexed by
/// [`crate::Layer::index`]. User space sums over CPUs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerCounters {
    /// Packets or calls of an in-scope TCP flow seen by the layer's program.
    pub seen: u64,
    /// Sampled bytes found (and attempted to emit).
    pub sampled: u64,
    /// Sampled bytes lost because the ring buffer had no room.
    pub ringbuf_full: u64,
    /// Sampled bytes skipped by the per-flow rate limit.
    pub rate_limited: u64,
}

const _: () = assert!(core::mem::size_of::<LayerCounters>() == 32);

/// Maximum number of TCP ports in a port filter (0 entries = all ports).
pub const MAX_PORTS: usize = 16;

/// Settings the observer passes to its kernel programs (one entry of an array map).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SamplingConfig {
    /// A byte is sampled when `seq & sample_mask == 0`; `sample_mask = size - 1`, size a power of two.
    pub sample_mask: u32,
    /// Number of valid entries in `ports`; 0 means every port.
    pub port_count: u32,
    /// Minimum nanoseconds between samples of one flow at one layer; 0 = no limit.
    /// The limit acts on whole sample points of sequence space (see `rate_limit_stride`) so every
    /// layer and host keeps the same subset.
    pub min_interval_ns: u64,
    /// A flow matches when its source or destination port is one of these.
    pub ports: [u16; MAX_PORTS],
}

const _: () = assert!(core::mem::size_of::<SamplingConfig>() == 48);
