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

/// Byte offsets of the kernel struct fields the observer's tracing programs read, resolved by
/// user space from the running kernel's BTF (`/sys/kernel/btf/vmlinux`) at load time.
///
/// Rust eBPF has no CO-RE relocations, so these are passed in instead of being compiled in from
/// one kernel's headers: written into the kernel object's read-only data before load, where the
/// verifier sees them as constants (docs/observer.md, "Kernel struct offsets"). Each field is
/// the offset from the start of the named struct; `u16` header offsets of `sk_buff` are offsets
/// from `sk_buff.head`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelOffsets {
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_len: u32,
    /// `sk_buff.network_header` (u16, offset from head).
    pub skb_network_header: u32,
    /// `sk_buff.transport_header` (u16, offset from head).
    pub skb_transport_header: u32,
    pub skb_dev: u32,
    pub dev_ifindex: u32,
    /// `net_device.nd_net` (a `possible_net_t` whose first field is the `struct net *`).
    pub dev_nd_net: u32,
    /// Offset of the netns inode number inside `struct net` (`net.ns.inum`).
    pub net_inum: u32,
    /// `sock.__sk_common.skc_net`.
    pub sk_net: u32,
    pub sk_family: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    /// `skc_dport` (network byte order).
    pub sk_dport: u32,
    /// `skc_num` (local port, host byte order).
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub tp_write_seq: u32,
    pub tp_copied_seq: u32,
    pub tp_rcv_nxt: u32,
    pub tp_snd_nxt: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `TCP_SKB_CB(skb)->seq` from the skb: `sk_buff.cb` + `tcp_skb_cb.seq` (u32). Valid on
    /// TCP's receive path, where TCP has filled its control block.
    pub skb_tcp_seq: u32,
    /// `TCP_SKB_CB(skb)->end_seq` from the skb (u32): seq + data + SYN + FIN.
    pub skb_tcp_end_seq: u32,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 96);

/// Global settings of one observer run (one entry of an array map next to [`SamplingConfig`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObserverGlobals {
    /// Inode of the observer's own network namespace, stamped on interface-layer records.
    pub own_netns: u32,
    /// Test/benchmark mode: emit one record per UDP packet seen on an interface program
    /// (seq 0, len = payload), to exercise the record path at packet rate. 0 in normal runs.
    pub sample_udp: u32,
    /// log2 of the sampling size (`SamplingConfig::sample_mask + 1`), 0..=32.
    pub sample_shift: u32,
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<ObserverGlobals>() == 16);

/// Per-interface packet counters (all packets, and ICMP/ICMPv6 ones), kept per CPU in an array
/// indexed by the slot user space assigned to the interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfaceCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_icmp: u64,
    pub tx_icmp: u64,
}

const _: () = assert!(core::mem::size_of::<IfaceCounters>() == 32);

/// Maximum number of interfaces one observer attaches to.
pub const MAX_IFACES: u32 = 64;

/// The interfaces one observer watches, by ifindex in slot order (a slot indexes the interface
/// counters). Kept in the kernel object's read-only data like [`KernelOffsets`]: the interface
/// programs and dev_xmit look an interface up on every packet, and a short scan of constants is
/// cheaper than a hash map lookup there.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedInterfaces {
    pub count: u32,
    pub ifindex: [u32; MAX_IFACES as usize],
}

impl WatchedInterfaces {
    pub const NONE: Self = Self {
        count: 0,
        ifindex: [0; MAX_IFACES as usize],
    };
}

const _: () = assert!(core::mem::size_of::<WatchedInterfaces>() == 4 + 4 * MAX_IFACES as usize);
/// Maximum number of sample points one program run emits for one packet or call; more are
/// counted and flagged [`SAMPLE_FLAG_TRUNCATED`].
pub const MAX_POINTS_PER_RUN: u32 = 32;
