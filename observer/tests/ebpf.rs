//! The interface programs driven with crafted packets through BPF_PROG_TEST_RUN (needs root, no
//! network): the ingress programs (XDP, and TCX ingress where XDP is unwanted) and the egress
//! program (TC) pick exactly the sample points the sampling arithmetic says, the same ones, around
//! sampling boundaries, across sequence wrap, and under the per-flow rate limit.
use aya::maps::RingBuf;
use latplan_common::Layer;
use latplan_common::kernel::{
    MAX_POINTS_PER_RUN, MAX_PORTS, ObserverGlobals, SAMPLE_FLAG_TRUNCATED, SampleEvent,
    SamplingConfig,
};
use observer::btf::Btf;
use observer::loader::{self, KernelSettings};
use observer::sampling;
use std::os::fd::{AsFd, AsRawFd};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "BPF_PROG_TEST_RUN tests load eBPF programs: run them as root"
    );
}

const SIZE: u64 = 4096;

fn settings(ports: &[u16]) -> KernelSettings {
    let mut p = [0u16; MAX_PORTS];
    p[..ports.len()].copy_from_slice(ports);
    KernelSettings {
        sampling: SamplingConfig {
            sample_mask: sampling::mask_for(SIZE),
            port_count: ports.len() as u32,
            min_interval_ns: 0,
            ports: p,
        },
        globals: ObserverGlobals {
            own_netns: 7,
            sample_udp: 0,
            sample_shift: SIZE.trailing_zeros(),
            reserved: 0,
        },
        netns: vec![observer::netns::own().unwrap()],
        // BPF_PROG_TEST_RUN runs the programs on lo (ifindex 1): its counters are slot 0.
        interfaces: vec![1],
    }
}

/// Ethernet + IPv4 + TCP (20-byte header) carrying `payload` bytes starting at `seq`.
///
/// Only the first 64 payload bytes are in the buffer; the IP header gives the full length, as
/// in a GSO super-packet or a multi-buffer XDP frame whose linear part holds the headers. The
/// programs take lengths from the headers, and BPF_PROG_TEST_RUN accepts at most a page.
fn tcp_packet(seq: u32, payload: usize, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 20 + payload.min(64)];
    p[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    p[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 20 + payload) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 78, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 78, 0, 2]);
    let sum = checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let tcp = &mut p[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs a program once on `data` with the kernel's BPF_PROG_TEST_RUN; returns its verdict.
fn test_run(prog_fd: i32, data: &[u8], ctx: Option<&[u8]>) -> u32 {
    let mut out = vec![0u8; data.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    if let Some(c) = ctx {
        attr.ctx_size_in = c.len() as u32;
        attr.ctx_in = c.as_ptr() as u64;
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: attr points to valid buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut _,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN failed: {}",
        std::io::Error::last_os_error()
    );
    attr.retval
}

struct Harness {
    ebpf: aya::Ebpf,
    ring: RingBuf<aya::maps::MapData>,
    xdp_fd: i32,
    tc_fd: i32,
    tc_recv_fd: i32,
}

impl Harness {
    fn new(ports: &[u16]) -> Harness {
        Harness::with(settings(ports))
    }

    fn with(settings: KernelSettings) -> Harness {
        require_root();
        let btf = Btf::from_sys_fs().unwrap();
        let mut ebpf = loader::load(&btf, &settings).unwrap();
        for name in ["lp_xdp_dev_recv", "lp_tc_dev_send", "lp_tc_dev_recv"] {
            let p = ebpf.program_mut(name).unwrap();
            match p {
                aya::programs::Program::Xdp(x) => x.load().unwrap(),
                aya::programs::Program::SchedClassifier(c) => c.load().unwrap(),
                _ => unreachable!("interface programs are XDP and TC"),
            }
        }
        let fd = |e: &aya::Ebpf, n: &str| -> i32 {
            let p = e.program(n).unwrap();
            p.fd().unwrap().as_fd().as_raw_fd()
        };
        let xdp_fd = fd(&ebpf, "lp_xdp_dev_recv");
        let tc_fd = fd(&ebpf, "lp_tc_dev_send");
        let tc_recv_fd = fd(&ebpf, "lp_tc_dev_recv");
        let ring = RingBuf::try_from(ebpf.take_map("LP_EVENTS").unwrap()).unwrap();
        Harness {
            ebpf,
            ring,
            xdp_fd,
            tc_fd,
            tc_recv_fd,
        }
    }

    /// Feeds the packet to both ingress programs and to TC egress; returns the ingress events
    /// (after checking that XDP and TCX ingress emitted the same ones) and the egress events.
    /// Without a rate limit; with one, each program keeps its own per-flow state.
    fn both(&mut self, pkt: &[u8]) -> (Vec<SampleEvent>, Vec<SampleEvent>) {
        let (rx, tx) = self.xdp_and_tc(pkt);
        // __sk_buff.ifindex is taken from the device the test run uses (lo, 1).
        assert_eq!(test_run(self.tc_recv_fd, pkt, None), 3, "TC_ACT_PIPE");
        let rx_tc = self.drain();
        assert_eq!(seqs(&rx_tc), seqs(&rx), "TCX ingress and XDP disagree");
        assert!(rx_tc.iter().all(|e| e.layer == Layer::DevRecv as u8));
        (rx, tx)
    }

    fn xdp_and_tc(&mut self, pkt: &[u8]) -> (Vec<SampleEvent>, Vec<SampleEvent>) {
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
        md[12..16].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(test_run(self.xdp_fd, pkt, Some(&md)), 2, "XDP_PASS");
        let rx = self.drain();
        assert_eq!(test_run(self.tc_fd, pkt, None), 3, "TC_ACT_PIPE");
        let tx = self.drain();
        (rx, tx)
    }

    fn drain(&mut self) -> Vec<SampleEvent> {
        let mut v = Vec::new();
        while let Some(item) = self.ring.next() {
            // SAFETY: the programs write SampleEvent records.
            v.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SampleEvent) });
        }
        v
    }
}

fn seqs(evs: &[SampleEvent]) -> Vec<u32> {
    evs.iter().map(|e| e.seq).collect()
}

#[test]
fn ingress_and_egress_sample_the_same_points_around_boundaries_and_wrap() {
    let mut h = Harness::new(&[]);
    let mask = sampling::mask_for(SIZE);
    let cases: &[(u32, usize)] = &[
        (0, 1),                      // a point at the first byte
        (1, 4095),                   // ends right before a point: none
        (1, 4096),                   // last byte is a point
        (4096 - 1448, 1448),         // ends right before 4096
        (4096 - 1447, 1448),         // last byte is 4096
        (10_000, 1448),              // no point inside
        (u32::MAX - 700, 1448),      // wraps: point at 0
        (u32::MAX, 1),               // the last sequence number: not a point
        (u32::MAX - 4095 - 5, 1448), // point at 2^32 - 4096
        (123_456_789, 1400),         // arbitrary
    ];
    for &(seq, len) in cases {
        let pkt = tcp_packet(seq, len, 40000, 5201);
        let (rx, tx) = h.both(&pkt);
        let want: Vec<u32> = sampling::points(seq, len as u32, mask).collect();
        assert_eq!(seqs(&rx), want, "XDP at seq {seq} len {len}");
        assert_eq!(seqs(&tx), want, "TC at seq {seq} len {len}");
        for e in rx.iter().chain(&tx) {
            assert_eq!((e.sport, e.dport, e.len), (40000, 5201, len as u32));
            assert_eq!(&e.saddr[10..], &[0xff, 0xff, 10, 78, 0, 1]);
            assert_eq!(&e.daddr[12..], &[10, 78, 0, 2]);
            assert_eq!(e.netns, 7);
            assert_eq!(e.ifindex, 1);
            assert_eq!(e.flags, 0);
        }
        assert!(rx.iter().all(|e| e.layer == Layer::DevRecv as u8));
        assert!(tx.iter().all(|e| e.layer == Layer::DevSend as u8));
    }
}

#[test]
fn a_gso_super_packet_emits_every_point_it_carries() {
    let mut h = Harness::new(&[]);
    let mask = sampling::mask_for(SIZE);
    // 60 kB straddling the wrap: 15 points, all emitted by both programs.
    let seq = u32::MAX - 30_000;
    let (rx, tx) = h.both(&tcp_packet(seq, 60_000, 40000, 5201));
    let want: Vec<u32> = sampling::points(seq, 60_000, mask).collect();
    assert_eq!(want.len(), 15);
    assert_eq!(seqs(&rx), want);
    assert_eq!(seqs(&tx), want);
    // The IP header can describe at most 65495 payload bytes: 16 points, under the bound of 32,
    // so truncation never happens for one packet at this size; check the flag stays clear.
    assert!(
        rx.iter()
            .chain(&tx)
            .all(|e| e.flags & SAMPLE_FLAG_TRUNCATED == 0)
    );
}

#[test]
fn a_range_with_more_points_than_the_bound_emits_the_bound_and_flags_the_last() {
    // 1 KiB sampling: a 60 kB super-packet carries 59 points, over MAX_POINTS_PER_RUN (32).
    const SMALL: u64 = 1024;
    let mut s = settings(&[]);
    s.sampling.sample_mask = sampling::mask_for(SMALL);
    s.globals.sample_shift = SMALL.trailing_zeros();
    let mut h = Harness::with(s);
    let seq = 1_000_000_123;
    let (rx, tx) = h.both(&tcp_packet(seq, 60_000, 40000, 5201));
    let all: Vec<u32> = sampling::points(seq, 60_000, sampling::mask_for(SMALL)).collect();
    assert_eq!(all.len(), 59);
    let bound = MAX_POINTS_PER_RUN as usize;
    for (name, got) in [("XDP", &rx), ("TC", &tx)] {
        assert_eq!(
            seqs(got),
            all[..bound],
            "{name}: the first points, in order"
        );
        let flagged: Vec<usize> = (0..got.len())
            .filter(|&i| got[i].flags & SAMPLE_FLAG_TRUNCATED != 0)
            .collect();
        assert_eq!(
            flagged,
            [bound - 1],
            "{name}: only the last emitted record is flagged"
        );
    }
    // The stats count every point found, emitted or not.
    let c = loader::layer_counters(&h.ebpf).unwrap();
    let dev_send = c.iter().find(|(l, _)| *l == Layer::DevSend).unwrap().1;
    assert_eq!(dev_send.sampled, 59);
}

#[test]
fn the_port_filter_drops_other_flows_and_keeps_either_direction() {
    let mut h = Harness::new(&[5201, 22]);
    let (rx, tx) = h.both(&tcp_packet(0, 100, 40000, 5201));
    assert_eq!((rx.len(), tx.len()), (1, 1));
    let (rx, tx) = h.both(&tcp_packet(0, 100, 22, 40000));
    assert_eq!((rx.len(), tx.len()), (1, 1));
    let (rx, tx) = h.both(&tcp_packet(0, 100, 40000, 80));
    assert_eq!((rx.len(), tx.len()), (0, 0));
    // Counters saw the matching packets only (each twice at dev_recv: XDP and TCX ingress).
    let c = loader::layer_counters(&h.ebpf).unwrap();
    let dev_recv = c.iter().find(|(l, _)| *l == Layer::DevRecv).unwrap().1;
    assert_eq!((dev_recv.seen, dev_recv.sampled), (4, 4));
    let ifc = loader::iface_counters(&h.ebpf, 0).unwrap();
    assert_eq!((ifc.rx_packets, ifc.tx_packets), (6, 3));
}

#[test]
fn the_rate_limit_keeps_the_same_nested_points_at_every_layer() {
    // 50 ms between kept points per flow and layer. Level rises by one per point that comes
    // sooner, falls by one per point that comes more than 4x later; at level l a point is kept
    // when its index (seq / size) has l trailing zero bits.
    let mut s = settings(&[]);
    s.sampling.min_interval_ns = 50_000_000;
    let mut h = Harness::with(s);
    let mut kept_rx = Vec::new();
    let mut kept_tx = Vec::new();
    let mut feed = |h: &mut Harness, index: u32| {
        // XDP and TCX ingress share dev_recv's rate state (only one is ever attached), so only
        // one of them runs here.
        let (rx, tx) = h.xdp_and_tc(&tcp_packet(index * SIZE as u32, 1, 40000, 5201));
        kept_rx.extend(rx.iter().map(|e| e.seq / SIZE as u32));
        kept_tx.extend(tx.iter().map(|e| e.seq / SIZE as u32));
    };
    // Back to back: the first point is kept, the level climbs to 7 and keeps nothing else.
    for index in 0..8 {
        feed(&mut h, index);
    }
    // Slow: the level falls 6, 5, 4, 3, 2, 1, 0, 0; kept where index % 2^level == 0.
    for index in 8..16 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        feed(&mut h, index);
    }
    assert_eq!(kept_rx, [0, 12, 14, 15], "ingress kept points");
    assert_eq!(kept_tx, kept_rx, "egress kept the same points");
    let c = loader::layer_counters(&h.ebpf).unwrap();
    let dev_send = c.iter().find(|(l, _)| *l == Layer::DevSend).unwrap().1;
    assert_eq!((dev_send.sampled, dev_send.rate_limited), (16, 12));
}
