//! The observer's kernel programs: one per layer of DESIGN.md §6, all sampling the same bytes.
//!
//! Every program reduces what it sees to "a TCP byte range [seq, seq+len) of flow K, observed at
//! time T at layer L" and hands it to `emit_range`, which emits one record per sample point in
//! the range (a byte whose sequence number is a multiple of the sampling size). Because the choice
//! depends on sequence numbers only, every layer on every host picks the same bytes (§7).
//! Which kernel function each program sits in, and why, is in docs/observer.md.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{
            BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SK_STORAGE_GET_F_CREATE,
            TC_ACT_PIPE, xdp_action,
        },
        btf_maps::SkStorage,
        helpers::{
            bpf_get_smp_processor_id, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
            bpf_sk_storage_get, bpf_skc_to_tcp_sock,
        },
        macros::{btf_map, btf_tracepoint, cgroup_skb, classifier, map, raw_tracepoint, xdp},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
        programs::{
            BtfTracePointContext, RawTracePointContext, SkBuffContext, TcContext, XdpContext,
        },
    };
    use latplan_common::{
        Layer,
        kernel::{
            IfaceCounters, KernelOffsets, LayerCounters, MAX_IFACES, MAX_POINTS_PER_RUN, MAX_PORTS,
            ObserverGlobals, SAMPLE_FLAG_RETRANSMIT, SAMPLE_FLAG_TRUNCATED, SampleEvent,
            SamplingConfig, WatchedInterfaces,
        },
    };
    use observer_ebpf::clock_ns;

    // ---- maps (names start with lp_ so `observer cleanup` recognises them) ----

    #[map]
    static LP_CONFIG: Array<SamplingConfig> = Array::with_max_entries(1, 0);
    #[map]
    static LP_GLOBALS: Array<ObserverGlobals> = Array::with_max_entries(1, 0);
    /// Kernel struct offsets, written by user space before load (`EbpfLoader::override_global`). In
    /// the object's read-only data, which the kernel freezes, the verifier knows every value as
    /// a constant: that is what lets the programs read kernel structs with plain loads through
    /// their BTF-typed pointers instead of one `bpf_probe_read_kernel` call per field. Read only
    /// through `off!`, which keeps the compiler from folding the zeros below into the code.
    #[unsafe(no_mangle)]
    static LP_KOFF: KernelOffsets = unsafe { core::mem::zeroed() };

    /// One field of `LP_KOFF`, as the verifier-known constant the loader wrote.
    macro_rules! off {
        ($field:ident) => {
            unsafe { core::ptr::read_volatile(&raw const LP_KOFF.$field) }
        };
    }
    /// Network namespaces (inode) whose sockets and packets this observer records.
    #[map]
    static LP_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);
    /// Interfaces this observer is attached to, in counter-slot order; set before load like
    /// `LP_KOFF`, so the verifier walks `iface_slot`'s scan only `count` times.
    #[unsafe(no_mangle)]
    static LP_WATCHED: WatchedInterfaces = WatchedInterfaces::NONE;

    /// The counter slot of a watched interface.
    #[inline(always)]
    fn iface_slot(ifindex: u32) -> Option<u32> {
        let n = unsafe { core::ptr::read_volatile(&raw const LP_WATCHED.count) };
        let mut i = 0;
        while i < MAX_IFACES as usize {
            if i as u32 >= n {
                break;
            }
            if unsafe { core::ptr::read_volatile(&raw const LP_WATCHED.ifindex[i]) } == ifindex {
                return Some(i as u32);
            }
            i += 1;
        }
        None
    }
    #[map]
    static LP_IFCOUNT: PerCpuArray<IfaceCounters> = PerCpuArray::with_max_entries(MAX_IFACES, 0);
    #[map]
    static LP_COUNTERS: PerCpuArray<LayerCounters> =
        PerCpuArray::with_max_entries(Layer::SLOTS as u32, 0);
    #[map]
    static LP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
    /// When the send call a thread is in handed its bytes to TCP (pid_tgid → `SendEntry`).
    #[map]
    static LP_SEND_ENTRY: LruHashMap<u64, SendEntry> = LruHashMap::with_max_entries(16384, 0);
    /// Receive queue tail last seen per socket, for sock_queue ranges, in the socket's own
    /// storage: one lookup through the socket instead of a hash of its address, nothing to
    /// evict while the host has many sockets, freed with the socket (and with this map when the
    /// observer exits).
    #[btf_map]
    static LP_RCV_TAIL: SkStorage<RcvTail> = SkStorage::new();

    /// `rcv_nxt` at the socket's previous wake-up; `seen` is 0 in storage just created.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct RcvTail {
        nxt: u32,
        seen: u32,
    }
    /// Per-flow rate-limit state (see `RateState`).
    #[map]
    static LP_RATE: LruHashMap<RateKey, RateState> = LruHashMap::with_max_entries(16384, 0);

    /// Unread bytes in the ring above which a record wakes the reader (a quarter of the ring).
    /// Below it no record wakes anyone and the reader drains on its timer (cheap in the steady
    /// state); above it the reader is late, and waking it early is cheaper than losing records.
    const RING_WAKE_BYTES: u64 = 1 << 20;

    #[inline(always)]
    fn ring_flags() -> u64 {
        if LP_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= RING_WAKE_BYTES {
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
    }

    // ---- the flow and its byte range ----

    /// A TCP byte range of a flow, normalised to the data direction (`saddr:sport` sends).
    struct Range {
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport: u16,
        dport: u16,
        seq: u32,
        len: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct RateKey {
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport: u16,
        dport: u16,
        layer: u32,
    }

    /// Rate-limit state of one flow at one layer (see `rate_mask`).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct RateState {
        last_ns: u64,
        level: u32,
        _pad: u32,
    }

    #[inline(always)]
    fn counters(layer: Layer) -> Option<&'static mut LayerCounters> {
        LP_COUNTERS
            .get_ptr_mut(layer.index() as u32)
            .map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn config() -> Option<&'static SamplingConfig> {
        LP_CONFIG.get(0)
    }

    #[inline(always)]
    fn port_match(cfg: &SamplingConfig, sport: u16, dport: u16) -> bool {
        let n = cfg.port_count as usize;
        if n == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_PORTS {
            if i >= n {
                break;
            }
            let p = cfg.ports[i];
            if p == sport || p == dport {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Goes on only if `[seq, seq+len)` holds a sample point. The socket- and stack-side programs
    /// ask this as soon as they know a packet's range, before they read anything else of the
    /// flow (its namespace, addresses, TCP state), which only a sampled packet needs: at the
    /// default 64 KiB one 1448-byte segment in 45 holds a point, and the reads the others skip
    /// were most of a program's cost on a sampled flow (BENCHMARKS.md). The clock, too, is read
    /// only after this test passed (docs/observer.md, "When the clock is read"). A packet
    /// stopped here is counted as seen at `layers` before its namespace is known.
    #[inline(always)]
    fn only_if_sampled(layers: &[Layer], seq: u32, len: u32) -> Option<()> {
        if first_point(config()?.sample_mask, seq, len).is_some() {
            return Some(());
        }
        for layer in layers {
            if let Some(c) = counters(*layer) {
                c.seen += 1;
            }
        }
        None
    }

    /// The first sample point in `[seq, seq+len)` (mod 2^32) and its offset from `seq`, if the
    /// range holds one.
    #[inline(always)]
    fn first_point(mask: u32, seq: u32, len: u32) -> Option<(u32, u32)> {
        let first = seq.wrapping_add(mask) & !mask;
        let off = first.wrapping_sub(seq);
        (off < len).then_some((first, off))
    }

    /// Whether sequence number `a` comes before `b` in TCP's modulo-2^32 order (RFC 9293's
    /// `SEG.SEQ < SND.NXT`): a segment starting before the next new byte is a retransmission.
    #[inline(always)]
    fn seq_before(a: u32, b: u32) -> bool {
        (a.wrapping_sub(b) as i32) < 0
    }

    /// Emits one record per sample point in `r` (at most MAX_POINTS_PER_RUN), counting as it goes.
    /// Every caller has applied the port filter already (it decides what counts as seen).
    ///
    /// The points are emitted by `bpf_loop` with `emit_point` as its body, so the verifier checks
    /// the body once instead of once per possible iteration: with the loop written out, the
    /// bound of 32 cost 1.2 s of verifier time per observer start (0.1 s with a bound of 4;
    /// docs/observer.md). The rate limit is decided once per call (as a coarser mask).
    #[inline(always)]
    fn emit_range(layer: Layer, r: &Range, ts: u64, ifindex: u32, netns: u32, flags: u8) {
        let Some(cfg) = config() else { return };
        let Some(g) = globals() else { return };
        let Some(c) = counters(layer) else { return };
        c.seen += 1;
        let shift = g.sample_shift & 63;
        // The first sample point in the range, then every 2^shift bytes.
        let Some((first, off)) = first_point(cfg.sample_mask, r.seq, r.len) else {
            return;
        };
        let total = (((r.len - 1 - off) as u64) >> shift) + 1;
        c.sampled += total;
        let n = if total > MAX_POINTS_PER_RUN as u64 {
            MAX_POINTS_PER_RUN
        } else {
            total as u32
        };
        let mut run = EmitRun {
            ev: SampleEvent {
                ts_ns: ts,
                saddr: r.saddr,
                daddr: r.daddr,
                sport: r.sport,
                dport: r.dport,
                seq: 0,
                len: r.len,
                ifindex,
                netns,
                cpu: unsafe { bpf_get_smp_processor_id() } as u16,
                layer: layer as u8,
                flags,
            },
            first,
            shift,
            keep_mask: rate_mask(cfg, g, layer, r, ts),
            truncated_at: if total > n as u64 { n - 1 } else { u32::MAX },
            flags,
            wake: ring_flags(),
            rate_limited: 0,
            ringbuf_full: 0,
        };
        // A pointer cast, never through an integer: the callback must reach the instruction as
        // a function reference, which the loader turns into BPF_PSEUDO_FUNC.
        type Body = extern "C" fn(u64, *mut EmitRun) -> i64;
        let body = emit_point as Body as *mut core::ffi::c_void;
        let ctx = &mut run as *mut EmitRun as *mut core::ffi::c_void;
        if unsafe { bpf_loop(n, body, ctx, 0) } < 0 {
            return;
        }
        c.rate_limited += run.rate_limited;
        c.ringbuf_full += run.ringbuf_full;
    }

    /// What `emit_point` needs from `emit_range`, on its stack.
    #[repr(C)]
    struct EmitRun {
        ev: SampleEvent,
        first: u32,
        shift: u32,
        keep_mask: u32,
        /// Index of the last point emitted when the range held more than the bound.
        truncated_at: u32,
        flags: u8,
        wake: u64,
        rate_limited: u64,
        ringbuf_full: u64,
    }

    /// One iteration of `emit_range`'s loop: the `i`-th sample point of the range.
    #[inline(never)]
    extern "C" fn emit_point(i: u64, run: *mut EmitRun) -> i64 {
        let run = unsafe { &mut *run };
        let i = (i & 0xffff_ffff) as u32;
        let seq = run
            .first
            .wrapping_add(((i as u64) << (run.shift & 63)) as u32);
        if seq & run.keep_mask != 0 {
            run.rate_limited += 1;
            return 0;
        }
        run.ev.seq = seq;
        run.ev.flags = if i == run.truncated_at {
            run.flags | SAMPLE_FLAG_TRUNCATED
        } else {
            run.flags
        };
        if LP_EVENTS.output::<SampleEvent>(&run.ev, run.wake).is_err() {
            run.ringbuf_full += 1;
        }
        0
    }

    /// The per-flow rate limit as a mask: a point is kept when `seq & mask == 0`.
    ///
    /// Nested levels: at level l the flow keeps one point in 2^l, namely those whose index
    /// (`seq >> log2(size)`) has l trailing zero bits. The point sets nest (level l+1 ⊂ level l),
    /// so layers or hosts that happen to run at different levels still agree on every point the
    /// coarser one keeps. The level rises while kept points come faster than `min_interval_ns`
    /// and falls when they come 4× slower.
    #[inline(always)]
    fn rate_mask(
        cfg: &SamplingConfig,
        g: &ObserverGlobals,
        layer: Layer,
        r: &Range,
        ts: u64,
    ) -> u32 {
        let mask = cfg.sample_mask;
        if cfg.min_interval_ns == 0 {
            return mask;
        }
        let key = RateKey {
            saddr: r.saddr,
            daddr: r.daddr,
            sport: r.sport,
            dport: r.dport,
            layer: layer as u32,
        };
        let Some(st) = LP_RATE.get_ptr_mut(key) else {
            let _ = LP_RATE.insert(
                key,
                RateState {
                    last_ns: ts,
                    level: 0,
                    _pad: 0,
                },
                0,
            );
            return mask;
        };
        let st = unsafe { &mut *st };
        let gap = ts.wrapping_sub(st.last_ns);
        let max_level = 32u32.saturating_sub(g.sample_shift);
        if gap < cfg.min_interval_ns {
            if st.level < max_level {
                st.level += 1;
            }
        } else if gap > 4 * cfg.min_interval_ns && st.level > 0 {
            st.level -= 1;
        }
        st.last_ns = ts;
        let bits = (g.sample_shift + (st.level & 31)) & 63;
        if bits >= 32 {
            u32::MAX
        } else {
            ((1u64 << bits) - 1) as u32
        }
    }

    // ---- header parsing, shared by every program through a byte reader ----

    trait Bytes {
        fn read<T: Copy>(&self, off: u32) -> Option<T>;
    }

    struct XdpBytes<'a>(&'a XdpContext);
    impl Bytes for XdpBytes<'_> {
        #[inline(always)]
        fn read<T: Copy>(&self, off: u32) -> Option<T> {
            let start = self.0.data();
            let end = self.0.data_end();
            let p = start + off as usize;
            if p + core::mem::size_of::<T>() > end {
                return None;
            }
            Some(unsafe { core::ptr::read_unaligned(p as *const T) })
        }
    }

    /// An skb seen by TC or cgroup_skb: headers are read straight from the linear data when they
    /// are there (nearly always), through `bpf_skb_load_bytes` when they are not.
    struct SkbBytes<'a>(&'a aya_ebpf::programs::sk_buff::SkBuff);
    impl Bytes for SkbBytes<'_> {
        #[inline(always)]
        fn read<T: Copy>(&self, off: u32) -> Option<T> {
            let skb = unsafe { &*self.0.skb };
            let start = skb.data as usize;
            let end = skb.data_end as usize;
            let p = start + off as usize;
            if p + core::mem::size_of::<T>() <= end {
                return Some(unsafe { core::ptr::read_unaligned(p as *const T) });
            }
            self.0.load::<T>(off as usize).ok()
        }
    }

    /// Kernel memory at `base` (a network header inside an skb's buffer).
    struct KernelBytes(u64);
    impl Bytes for KernelBytes {
        #[inline(always)]
        fn read<T: Copy>(&self, off: u32) -> Option<T> {
            unsafe { bpf_probe_read_kernel((self.0 + off as u64) as *const T).ok() }
        }
    }

    /// How many bytes of a network header `HeadBytes` copies: IPv6's 40 and the first 24 of TCP,
    /// or IPv4's 20 and the first 44 of TCP (its fixed 20 and, unused here, some options).
    const HEAD_BYTES: usize = 64;

    /// The start of a packet's network header in kernel memory, copied with one helper call;
    /// reads beyond it (IP options) go to kernel memory like `KernelBytes`. One copy instead of
    /// one call per header: the tracing programs parse every segment of a watched flow.
    /// Reading past a short packet's end stays inside the skb's buffer (the shared info follows
    /// it), and only bytes the headers' own lengths cover are used.
    struct HeadBytes {
        base: u64,
        buf: [u8; HEAD_BYTES],
    }
    impl HeadBytes {
        #[inline(always)]
        fn fetch(base: u64) -> Option<Self> {
            let mut buf = [0u8; HEAD_BYTES];
            unsafe { bpf_probe_read_kernel_buf(base as *const u8, &mut buf) }.ok()?;
            Some(Self { base, buf })
        }
    }
    impl Bytes for HeadBytes {
        #[inline(always)]
        fn read<T: Copy>(&self, off: u32) -> Option<T> {
            let off = off as usize;
            if off + core::mem::size_of::<T>() <= HEAD_BYTES {
                return Some(unsafe {
                    core::ptr::read_unaligned(self.buf.as_ptr().add(off) as *const T)
                });
            }
            KernelBytes(self.base).read(off as u32)
        }
    }

    const IPPROTO_TCP: u8 = 6;
    const IPPROTO_UDP: u8 = 17;
    const IPPROTO_ICMP: u8 = 1;
    const IPPROTO_ICMPV6: u8 = 58;

    enum L4 {
        Tcp(Range),
        Udp(Range),
        Icmp,
        Other,
    }

    /// The IPv4 header without options, byte for byte.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Ipv4Header {
        vihl: u8,
        tos: u8,
        tot_len: [u8; 2],
        id: [u8; 2],
        frag: [u8; 2],
        ttl: u8,
        protocol: u8,
        check: [u8; 2],
        saddr: [u8; 4],
        daddr: [u8; 4],
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Ipv6Header {
        vtc: u8,
        tc_flow: [u8; 3],
        payload_len: [u8; 2],
        next: u8,
        hop_limit: u8,
        saddr: [u8; 16],
        daddr: [u8; 16],
    }

    /// The TCP header up to its data offset byte.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct TcpHeadStart {
        sport: [u8; 2],
        dport: [u8; 2],
        seq: [u8; 4],
        ack: [u8; 4],
        doff: u8,
    }

    /// Parses an IPv4/IPv6 packet starting at `l3` whose EtherType (network order) is `proto`.
    /// Lengths come from the IP header, not from the buffer, so a GSO super-packet or a
    /// multi-buffer XDP frame still yields its whole byte range.
    ///
    /// Each header is fetched with one read (one helper call on the skb and kernel paths, not
    /// one per field): these programs run for every packet on the host, most of them not ours,
    /// and the helper calls were most of their cost.
    #[inline(always)]
    fn parse_ip<B: Bytes>(b: &B, l3: u32, proto: u16) -> Option<L4> {
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        let (l4, l4_len, next) = if proto == 0x0800u16.to_be() {
            let h: Ipv4Header = b.read(l3)?;
            if h.vihl >> 4 != 4 {
                return Some(L4::Other);
            }
            let ihl = ((h.vihl & 0x0f) as u32) * 4;
            // Only first fragments (offset 0) carry the transport header.
            if u16::from_be_bytes(h.frag) & 0x1fff != 0 {
                return Some(L4::Other);
            }
            saddr[10] = 0xff;
            saddr[11] = 0xff;
            daddr[10] = 0xff;
            daddr[11] = 0xff;
            saddr[12..16].copy_from_slice(&h.saddr);
            daddr[12..16].copy_from_slice(&h.daddr);
            let tot = u16::from_be_bytes(h.tot_len) as u32;
            // TSO super-packets built by TCP may carry tot_len 0 above 64 KiB; treat as unknown.
            (l3 + ihl, tot.saturating_sub(ihl), h.protocol)
        } else if proto == 0x86ddu16.to_be() {
            let h: Ipv6Header = b.read(l3)?;
            if h.vtc >> 4 != 6 {
                return Some(L4::Other);
            }
            saddr = h.saddr;
            daddr = h.daddr;
            (l3 + 40, u16::from_be_bytes(h.payload_len) as u32, h.next)
        } else {
            return Some(L4::Other);
        };
        match next {
            IPPROTO_TCP => {
                let t: TcpHeadStart = b.read(l4)?;
                let hdr = ((t.doff >> 4) as u32) * 4;
                Some(L4::Tcp(Range {
                    saddr,
                    daddr,
                    sport: u16::from_be_bytes(t.sport),
                    dport: u16::from_be_bytes(t.dport),
                    seq: u32::from_be_bytes(t.seq),
                    len: l4_len.saturating_sub(hdr),
                }))
            }
            IPPROTO_UDP => {
                let ports: [[u8; 2]; 2] = b.read(l4)?;
                Some(L4::Udp(Range {
                    saddr,
                    daddr,
                    sport: u16::from_be_bytes(ports[0]),
                    dport: u16::from_be_bytes(ports[1]),
                    seq: 0,
                    len: l4_len.saturating_sub(8),
                }))
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => Some(L4::Icmp),
            _ => Some(L4::Other),
        }
    }

    #[inline(always)]
    fn globals() -> Option<&'static ObserverGlobals> {
        LP_GLOBALS.get(0)
    }

    /// The interface programs' common body: count, parse, sample.
    #[inline(always)]
    fn on_interface<B: Bytes>(
        b: &B,
        l3: u32,
        proto: u16,
        ifindex: u32,
        layer: Layer,
        retransmit: impl Fn(u32) -> bool,
    ) {
        let Some(g) = globals() else { return };
        let slot = iface_slot(ifindex).unwrap_or(u32::MAX);
        let ifc = LP_IFCOUNT.get_ptr_mut(slot);
        let rx = layer == Layer::DevRecv;
        if let Some(ifc) = ifc {
            let ifc = unsafe { &mut *ifc };
            if rx {
                ifc.rx_packets += 1;
            } else {
                ifc.tx_packets += 1;
            }
        }
        match parse_ip(b, l3, proto) {
            Some(L4::Tcp(r)) => {
                // The socket's state (is it a retransmission?) only for a packet that holds a
                // sample point.
                let Some(cfg) = config() else { return };
                if !port_match(cfg, r.sport, r.dport)
                    || only_if_sampled(&[layer], r.seq, r.len).is_none()
                {
                    return;
                }
                let flags = if retransmit(r.seq) {
                    SAMPLE_FLAG_RETRANSMIT
                } else {
                    0
                };
                emit_range(layer, &r, clock_ns(), ifindex, g.own_netns, flags)
            }
            Some(L4::Udp(r)) if g.sample_udp != 0 => {
                emit_udp(layer, &r, clock_ns(), ifindex, g.own_netns)
            }
            Some(L4::Icmp) => {
                if let Some(ifc) = ifc {
                    let ifc = unsafe { &mut *ifc };
                    if rx {
                        ifc.rx_icmp += 1;
                    } else {
                        ifc.tx_icmp += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Benchmark mode: one record per UDP packet (no sequence space to sample from).
    #[inline(always)]
    fn emit_udp(layer: Layer, r: &Range, ts: u64, ifindex: u32, netns: u32) {
        let Some(c) = counters(layer) else { return };
        let wake = ring_flags();
        c.seen += 1;
        c.sampled += 1;
        let ev = SampleEvent {
            ts_ns: ts,
            saddr: r.saddr,
            daddr: r.daddr,
            sport: r.sport,
            dport: r.dport,
            seq: 0,
            len: r.len,
            ifindex,
            netns,
            cpu: unsafe { bpf_get_smp_processor_id() } as u16,
            layer: layer as u8,
            flags: 0,
        };
        if LP_EVENTS.output::<SampleEvent>(&ev, wake).is_err() {
            c.ringbuf_full += 1;
        }
    }

    // ---- dev_recv: XDP on each named interface ----

    #[xdp]
    pub fn lp_xdp_dev_recv(ctx: XdpContext) -> u32 {
        let b = XdpBytes(&ctx);
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        // Ethernet, with up to one VLAN tag.
        let Some(mut proto) = b.read::<u16>(12) else {
            return xdp_action::XDP_PASS;
        };
        let mut l3 = 14;
        if proto == 0x8100u16.to_be() {
            let Some(p) = b.read::<u16>(16) else {
                return xdp_action::XDP_PASS;
            };
            proto = p;
            l3 = 18;
        }
        on_interface(&b, l3, proto, ifindex, Layer::DevRecv, |_| false);
        xdp_action::XDP_PASS
    }

    // ---- dev_send: TC egress (TCX) on each named interface ----

    #[classifier]
    pub fn lp_tc_dev_send(ctx: TcContext) -> i32 {
        let skb = unsafe { &*ctx.skb.skb };
        let ifindex = skb.ifindex;
        let proto = skb.protocol as u16;
        let sk = unsafe { skb.__bindgen_anon_2.sk } as u64;
        let b = SkbBytes(&ctx.skb);
        // TC sees the frame from the MAC header; assume Ethernet (what veths and NICs give).
        let l3 = 14;
        on_interface(&b, l3, proto, ifindex, Layer::DevSend, |seq| {
            sk_retransmit(sk, seq)
        });
        TC_ACT_PIPE
    }

    // ---- dev_recv, alternative: TC ingress (TCX), where XDP is unwanted or unavailable ----

    /// Same samples as `lp_xdp_dev_recv`, a little later (after GRO, in __netif_receive_skb_core):
    /// on veths native XDP switches the device to its NAPI path, which costs more throughput
    /// than the program itself. Also where another XDP program (a timesync reflector, someone
    /// else's) holds the interface: it has one XDP program, but TCX links coexist.
    #[classifier]
    pub fn lp_tc_dev_recv(ctx: TcContext) -> i32 {
        let skb = unsafe { &*ctx.skb.skb };
        let b = SkbBytes(&ctx.skb);
        on_interface(
            &b,
            14,
            skb.protocol as u16,
            skb.ifindex,
            Layer::DevRecv,
            |_| false,
        );
        TC_ACT_PIPE
    }

    /// Whether a segment starting at `seq` was sent before (seq < snd_nxt): TCP advances snd_nxt
    /// only after a new segment has been handed down, so on the transmit path a first
    /// transmission has seq == snd_nxt and a retransmission seq < snd_nxt.
    #[inline(always)]
    fn sk_retransmit(sk: u64, seq: u32) -> bool {
        if sk == 0 {
            return false;
        }
        let Some(tp) = tcp_sock(sk) else {
            return false;
        };
        let snd_nxt: u32 = read_k(tp, off!(tp_snd_nxt));
        seq_before(seq, snd_nxt)
    }

    /// A kernel struct field at `base + off`, where `base` is a BTF-typed pointer (a `tp_btf`
    /// argument, or what `bpf_skc_to_tcp_sock` returned) and `off` an `off!` constant: one plain
    /// load, which the verifier checks against the struct's BTF and the JIT guards against
    /// faults (a bad pointer reads 0). Packet bytes are not struct fields: see `KernelBytes`.
    #[inline(always)]
    fn read_k<T: Copy>(base: u64, off: u32) -> T {
        unsafe { core::ptr::read_volatile((base + off as u64) as *const T) }
    }

    /// The cgroup programs' common start: a TCP segment that passes the port filter and holds a
    /// sample point (cgroup_skb data starts at the network header, read in place), then its
    /// socket, if it lives in a namespace this observer records. The packet's own ports and
    /// range decide first: they cost no helper call, and most segments stop there.
    #[inline(always)]
    fn cg_tcp_segment(ctx: &SkBuffContext, layers: &[Layer]) -> Option<(u64, u32, Range)> {
        let skb = unsafe { &*ctx.skb.skb };
        let b = SkbBytes(&ctx.skb);
        let L4::Tcp(r) = parse_ip(&b, 0, skb.protocol as u16)? else {
            return None;
        };
        port_match(config()?, r.sport, r.dport).then_some(())?;
        only_if_sampled(layers, r.seq, r.len)?;
        let sk = unsafe { skb.__bindgen_anon_2.sk } as u64;
        if sk == 0 {
            return None;
        }
        let tp = tcp_sock(sk)?;
        let netns = sock_netns(tp)?;
        Some((tp, netns, r))
    }

    // ---- tcp_send + ip_send: cgroup_skb egress on the root cgroup (ip_finish_output) ----

    #[cgroup_skb]
    pub fn lp_cg_ip_send(ctx: SkBuffContext) -> i32 {
        let Some((tp, netns, r)) = cg_tcp_segment(&ctx, &[Layer::TcpSend, Layer::IpSend]) else {
            return 1;
        };
        let now = clock_ns();
        let skb = unsafe { &*ctx.skb.skb };
        let nxt: u32 = read_k(tp, off!(tp_snd_nxt));
        let flags = if r.len > 0 && seq_before(r.seq, nxt) {
            SAMPLE_FLAG_RETRANSMIT
        } else {
            0
        };
        // TCP stamps each segment with its transmit time on this clock (skb->skb_mstamp_ns =
        // tcp_wstamp_ns, from tcp_clock_ns() when tcp_write_xmit ran); that is tcp_send.
        // A future stamp means EDT pacing set a departure time, and a realtime stamp is far in
        // the future on this clock (cgroup_skb cannot read tstamp_type): fall back to now then.
        let tstamp = skb.tstamp;
        let tcp_ts = if tstamp != 0 && tstamp <= now && now - tstamp < 1_000_000_000 {
            tstamp
        } else {
            now
        };
        emit_range(Layer::TcpSend, &r, tcp_ts, 0, netns, flags);
        emit_range(Layer::IpSend, &r, now, 0, netns, flags);
        1
    }

    /// Whether the socket's ports pass the port filter. Checked first by every socket-keyed
    /// program: they fire for every socket on the host, and most are not ours. `skc_dport` and
    /// `skc_num` sit side by side (`skc_portpair`), so one read fetches both.
    #[inline(always)]
    fn sock_ports_match(sk: u64) -> Option<()> {
        let cfg = config()?;
        if cfg.port_count == 0 {
            return Some(());
        }
        let (lport, rport) = if off!(sk_num) == off!(sk_dport) + 2 {
            let pair: [[u8; 2]; 2] = read_k(sk, off!(sk_dport));
            (u16::from_ne_bytes(pair[1]), u16::from_be_bytes(pair[0]))
        } else {
            let l: u16 = read_k(sk, off!(sk_num));
            let r: u16 = read_k(sk, off!(sk_dport));
            (l, u16::from_be(r))
        };
        port_match(cfg, lport, rport).then_some(())
    }

    /// The socket's network namespace inode, if it is one this observer records.
    #[inline(always)]
    fn sock_netns(sk: u64) -> Option<u32> {
        let net: u64 = read_k(sk, off!(sk_net));
        let inum: u32 = read_k(net, off!(net_inum));
        unsafe { LP_NETNS.get(inum) }?;
        Some(inum)
    }

    /// The inode number of a device's network namespace.
    #[inline(always)]
    fn dev_inum(dev: u64) -> u32 {
        let net: u64 = read_k(dev, off!(dev_nd_net));
        read_k(net, off!(net_inum))
    }

    // ---- dev_xmit: net_dev_start_xmit (after the qdisc, handed to the driver) ----

    #[btf_tracepoint(function = "net_dev_start_xmit")]
    pub fn lp_tp_dev_xmit(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        let dev: u64 = ctx.arg(1);
        let _ = try_dev_xmit(skb, dev);
        0
    }

    // ---- ip_recv: cgroup_skb ingress (IP delivered the segment to TCP) ----

    /// Runs in tcp_v4_rcv()/tcp_v6_rcv() → tcp_filter() → sk_filter(), once the receiving
    /// socket is known: after the device hooks (XDP and TC ingress) and IP input, before
    /// tcp_rcv_established (tcp_recv). netif_receive_skb would be earlier than TC ingress, which
    /// breaks the path order when dev_recv is TCX ingress.
    #[cgroup_skb]
    pub fn lp_cg_ip_recv(ctx: SkBuffContext) -> i32 {
        let Some((_, netns, r)) = cg_tcp_segment(&ctx, &[Layer::IpRecv]) else {
            return 1;
        };
        emit_range(Layer::IpRecv, &r, clock_ns(), 0, netns, 0);
        1
    }

    #[inline(always)]
    fn try_dev_xmit(skb: u64, dev: u64) -> Option<()> {
        // Only on the interfaces this observer was told to watch, which are in its own
        // namespace. An ifindex is unique only within a namespace and this tracepoint fires for
        // every device on the kernel: a container's device with a watched interface's number
        // is not that interface.
        let ifindex: u32 = read_k(dev, off!(dev_ifindex));
        iface_slot(ifindex)?;
        let netns = dev_inum(dev);
        if netns != globals()?.own_netns {
            return None;
        }
        let (r, _) = skb_tcp_range(skb)?;
        port_match(config()?, r.sport, r.dport).then_some(())?;
        only_if_sampled(&[Layer::DevXmit], r.seq, r.len)?;
        let ts = clock_ns();
        // No retransmit flag here: after a qdisc wait TCP has long advanced snd_nxt past the
        // segment, so `seq < snd_nxt` would flag every queued segment (it did, behind a token
        // bucket). The layers before the qdisc flag retransmissions, and a byte sent twice
        // passes dev_xmit twice, which the analysis counts as well.
        emit_range(Layer::DevXmit, &r, ts, ifindex, netns, 0);
        Some(())
    }

    /// The TCP byte range of an skb whose network header is set (transmit path after IP, TCP
    /// receive), and the skb's `head`; `None` for anything but TCP.
    #[inline(always)]
    fn skb_tcp_range(skb: u64) -> Option<(Range, u64)> {
        let head: u64 = read_k(skb, off!(skb_head));
        let nh: u16 = read_k(skb, off!(skb_network_header));
        let b = HeadBytes::fetch(head + nh as u64)?;
        let v: u8 = b.read(0)?;
        let proto = if v >> 4 == 6 {
            0x86ddu16.to_be()
        } else {
            0x0800u16.to_be()
        };
        match parse_ip(&b, 0, proto)? {
            L4::Tcp(r) => Some((r, head)),
            _ => None,
        }
    }

    /// The TCP socket behind a socket pointer (the `tcp_sock` fields lie past `struct sock`,
    /// where the verifier lets no load through a `struct sock *` go).
    #[inline(always)]
    fn tcp_sock(sk: u64) -> Option<u64> {
        let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as u64;
        (tp != 0).then_some(tp)
    }

    // ---- tcp_recv: tcp_probe (tcp_rcv_established, segment accepted by an established socket) ----

    #[btf_tracepoint(function = "tcp_probe")]
    pub fn lp_tp_tcp_recv(ctx: BtfTracePointContext) -> i32 {
        let sk: u64 = ctx.arg(0);
        let skb: u64 = ctx.arg(1);
        let _ = try_tcp_recv(sk, skb);
        0
    }

    #[inline(always)]
    fn try_tcp_recv(sk: u64, skb: u64) -> Option<()> {
        sock_ports_match(sk)?;
        // TCP's own [seq, end_seq) of the segment, from the control block tcp_v4_rcv() filled:
        // one read decides whether it can hold a sample point. end_seq also counts a FIN, so
        // this range may be one longer than the data; the exact length is taken below.
        let (seq, end) = if off!(skb_tcp_end_seq) == off!(skb_tcp_seq) + 4 {
            let pair: [u32; 2] = read_k(skb, off!(skb_tcp_seq));
            (pair[0], pair[1])
        } else {
            (
                read_k(skb, off!(skb_tcp_seq)),
                read_k(skb, off!(skb_tcp_end_seq)),
            )
        };
        only_if_sampled(&[Layer::TcpRecv], seq, end.wrapping_sub(seq))?;
        let ts = clock_ns();
        let netns = sock_netns(sk)?;
        let (mut r, head) = skb_tcp_range(skb)?;
        // Segments queued to a busy socket's backlog are coalesced into one skb whose IP header
        // still describes the first: take the length from the skb (data starts at the TCP header).
        let th: u16 = read_k(skb, off!(skb_transport_header));
        let doff: u8 = KernelBytes(head + th as u64).read(12)?;
        let skb_len: u32 = read_k(skb, off!(skb_len));
        r.len = skb_len.saturating_sub(((doff >> 4) as u32) * 4);
        // A segment starting below rcv_nxt is (partly) a duplicate: flag it like a retransmission.
        let nxt: u32 = read_k(tcp_sock(sk)?, off!(tp_rcv_nxt));
        let flags = if r.len > 0 && seq_before(r.seq, nxt) {
            SAMPLE_FLAG_RETRANSMIT
        } else {
            0
        };
        emit_range(Layer::TcpRecv, &r, ts, 0, netns, flags);
        Some(())
    }

    // ---- socket layers: the flow key from the socket ----

    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;

    /// Reads the socket's (local, remote) addresses and ports; `None` for non-IP sockets.
    #[inline(always)]
    fn sock_endpoints(sk: u64) -> Option<([u8; 16], u16, [u8; 16], u16)> {
        let family: u16 = read_k(sk, off!(sk_family));
        let protocol: u16 = read_k(sk, off!(sk_protocol));
        if protocol != IPPROTO_TCP as u16 {
            return None;
        }
        let mut local = [0u8; 16];
        let mut remote = [0u8; 16];
        if family == AF_INET {
            let l: [u8; 4] = read_k(sk, off!(sk_rcv_saddr));
            let r: [u8; 4] = read_k(sk, off!(sk_daddr));
            local[10] = 0xff;
            local[11] = 0xff;
            remote[10] = 0xff;
            remote[11] = 0xff;
            local[12..16].copy_from_slice(&l);
            remote[12..16].copy_from_slice(&r);
        } else if family == AF_INET6 {
            local = read_k(sk, off!(sk_v6_rcv_saddr));
            remote = read_k(sk, off!(sk_v6_daddr));
        } else {
            return None;
        }
        let lport: u16 = read_k(sk, off!(sk_num));
        let rport: u16 = u16::from_be(read_k(sk, off!(sk_dport)));
        Some((local, lport, remote, rport))
    }

    // ---- sock_send: the application's send call, and the bytes it queued ----

    /// The start of a thread's current send call.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct SendEntry {
        /// The socket, or 0 when stamped at syscall entry (the socket is not known there).
        sk: u64,
        /// 0 once `sock_send_length` consumed it.
        ts: u64,
    }

    /// `tcp_sendmsg_locked` fires at the top of each round of TCP's copy loop, before any wait
    /// for buffer space; the first round of a call is when the application handed its bytes
    /// over. It fires for TCP sends only, so unlike a syscall hook it costs the rest of the host
    /// nothing (every syscall of every process pays for a `sys_enter` program: BENCHMARKS.md).
    #[btf_tracepoint(function = "tcp_sendmsg_locked")]
    pub fn lp_tp_tcp_sendmsg(ctx: BtfTracePointContext) -> i32 {
        let sk: u64 = ctx.arg(0);
        let _ = try_tcp_sendmsg(sk);
        0
    }

    #[inline(always)]
    fn try_tcp_sendmsg(sk: u64) -> Option<()> {
        sock_ports_match(sk)?;
        let t = aya_ebpf::helpers::bpf_get_current_pid_tgid();
        match LP_SEND_ENTRY.get_ptr_mut(t) {
            // A later round of the same call keeps the first round's time.
            Some(slot) => unsafe {
                if (*slot).ts == 0 || (*slot).sk != sk {
                    *slot = SendEntry { sk, ts: clock_ns() };
                }
            },
            None => {
                let e = SendEntry { sk, ts: clock_ns() };
                let _ = LP_SEND_ENTRY.insert(t, e, 0);
            }
        }
        Some(())
    }

    const SYS_WRITE: u64 = 1;
    const SYS_WRITEV: u64 = 20;
    const SYS_SENDTO: u64 = 44;
    const SYS_SENDMSG: u64 = 46;

    /// Fallback for kernels without `tcp_sendmsg_locked` (a recent tracepoint): the entry of every
    /// send-type syscall on the host.
    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn lp_rtp_sys_enter(ctx: RawTracePointContext) -> i32 {
        let id: u64 = ctx.arg(1);
        if id == SYS_WRITE || id == SYS_WRITEV || id == SYS_SENDTO || id == SYS_SENDMSG {
            let t = aya_ebpf::helpers::bpf_get_current_pid_tgid();
            let e = SendEntry {
                sk: 0,
                ts: clock_ns(),
            };
            // In place when the thread has a slot: an LRU insert allocates and relinks a node,
            // several times the cost of a store, and this runs on every write on the host.
            match LP_SEND_ENTRY.get_ptr_mut(t) {
                Some(slot) => unsafe { *slot = e },
                None => {
                    let _ = LP_SEND_ENTRY.insert(t, e, 0);
                }
            }
        }
        0
    }

    #[btf_tracepoint(function = "sock_send_length")]
    pub fn lp_tp_sock_send(ctx: BtfTracePointContext) -> i32 {
        let sk: u64 = ctx.arg(0);
        let ret: i32 = ctx.arg::<u64>(1) as i32;
        let _ = try_sock_send(sk, ret);
        0
    }

    #[inline(always)]
    fn try_sock_send(sk: u64, ret: i32) -> Option<()> {
        let now = clock_ns();
        sock_ports_match(sk)?;
        let t = aya_ebpf::helpers::bpf_get_current_pid_tgid();
        // The call may have blocked for buffer space: the bytes were handed over at its start.
        // The stamp is consumed (zeroed in place, cheaper than a delete) so that the next call
        // never inherits it.
        let entry = match LP_SEND_ENTRY.get_ptr_mut(t) {
            Some(slot) => unsafe {
                if (*slot).sk == sk || (*slot).sk == 0 {
                    core::mem::replace(&mut (*slot).ts, 0)
                } else {
                    0
                }
            },
            None => 0,
        };
        if ret <= 0 {
            return None;
        }
        let write_seq: u32 = read_k(tcp_sock(sk)?, off!(tp_write_seq));
        let len = ret as u32;
        only_if_sampled(&[Layer::SockSend], write_seq.wrapping_sub(len), len)?;
        let netns = sock_netns(sk)?;
        let (local, lport, remote, rport) = sock_endpoints(sk)?;
        let r = Range {
            saddr: local,
            daddr: remote,
            sport: lport,
            dport: rport,
            seq: write_seq.wrapping_sub(len),
            len,
        };
        let ts = if entry != 0 && entry <= now {
            entry
        } else {
            now
        };
        emit_range(Layer::SockSend, &r, ts, 0, netns, 0);
        Some(())
    }

    // ---- sock_queue: data queued on the socket, reader woken ----

    #[btf_tracepoint(function = "sk_data_ready")]
    pub fn lp_tp_sock_queue(ctx: BtfTracePointContext) -> i32 {
        let sk: u64 = ctx.arg(0);
        let _ = try_sock_queue(sk);
        0
    }

    #[inline(always)]
    fn try_sock_queue(sk: u64) -> Option<()> {
        sock_ports_match(sk)?;
        let nxt: u32 = read_k(tcp_sock(sk)?, off!(tp_rcv_nxt));
        // The bytes newly queued since the last wake-up are [previous rcv_nxt, rcv_nxt).
        // (`SkStorage`'s own accessors take a socket-address context; the helper is the same.)
        let tail = unsafe {
            bpf_sk_storage_get(
                &raw const LP_RCV_TAIL as *mut core::ffi::c_void,
                sk as *mut core::ffi::c_void,
                core::ptr::null_mut(),
                BPF_SK_STORAGE_GET_F_CREATE as u64,
            )
        } as *mut RcvTail;
        if tail.is_null() {
            return None;
        }
        let tail = unsafe { &mut *tail };
        let prev = core::mem::replace(&mut tail.nxt, nxt);
        if core::mem::replace(&mut tail.seen, 1) == 0 {
            return None;
        }
        let len = nxt.wrapping_sub(prev);
        if len == 0 || len > (1 << 30) {
            return None;
        }
        only_if_sampled(&[Layer::SockQueue], prev, len)?;
        let ts = clock_ns();
        let netns = sock_netns(sk)?;
        let (local, lport, remote, rport) = sock_endpoints(sk)?;
        let r = Range {
            saddr: remote,
            daddr: local,
            sport: rport,
            dport: lport,
            seq: prev,
            len,
        };
        emit_range(Layer::SockQueue, &r, ts, 0, netns, 0);
        Some(())
    }

    // ---- sock_recv: the application read the bytes ----

    const MSG_PEEK: i32 = 2;

    #[btf_tracepoint(function = "sock_recv_length")]
    pub fn lp_tp_sock_recv(ctx: BtfTracePointContext) -> i32 {
        let sk: u64 = ctx.arg(0);
        let ret = ctx.arg::<u64>(1) as i32;
        let flags = ctx.arg::<u64>(2) as i32;
        if ret > 0 && flags & MSG_PEEK == 0 {
            let _ = try_sock_recv(sk, ret as u32);
        }
        0
    }

    #[inline(always)]
    fn try_sock_recv(sk: u64, len: u32) -> Option<()> {
        sock_ports_match(sk)?;
        let copied: u32 = read_k(tcp_sock(sk)?, off!(tp_copied_seq));
        only_if_sampled(&[Layer::SockRecv], copied.wrapping_sub(len), len)?;
        let ts = clock_ns();
        let netns = sock_netns(sk)?;
        let (local, lport, remote, rport) = sock_endpoints(sk)?;
        let r = Range {
            saddr: remote,
            daddr: local,
            sport: rport,
            dport: lport,
            seq: copied.wrapping_sub(len),
            len,
        };
        emit_range(Layer::SockRecv, &r, ts, 0, netns, 0);
        Some(())
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
