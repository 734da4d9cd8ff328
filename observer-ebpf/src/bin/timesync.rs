//! timesync's kernel programs.
//!
//! - `lp_ts_reflect` (XDP, on every clock domain): answers the session's probes addressed to it in
//!   place with `XDP_TX`, writing its receive and transmit stamps into the UDP payload.
//! - `lp_ts_egress` (TC egress) and `lp_ts_ingress` (XDP, or `lp_ts_ingress_tc` on TC ingress) on the
//!   manager: stamp a probe's departure and its reply's arrival into LRU maps keyed by probe id,
//!   which the prober reads when the reply reaches its socket.
//!
//! Every stamp comes from `observer_ebpf::clock_ns()`, the clock the observer stamps with.
//!
//! The probe layout (UDP payload, big-endian) is mirrored in `timesync/src/wire.rs`; the
//! `BPF_PROG_TEST_RUN` tests in `timesync/tests/reflector.rs` hold the two together.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_UNSPEC, xdp_action},
        macros::{classifier, map, xdp},
        maps::{HashMap, LruHashMap},
        programs::{TcContext, XdpContext},
    };
    use observer_ebpf::clock_ns;

    const ETH_HLEN: usize = 14;
    const IP_HLEN: usize = 20; // probes never carry IP options
    const UDP_HLEN: usize = 8;
    const IP_OFF: usize = ETH_HLEN;
    const UDP_OFF: usize = ETH_HLEN + IP_HLEN;
    const PAY_OFF: usize = UDP_OFF + UDP_HLEN;

    // Payload layout (see timesync/src/wire.rs).
    const PAYLOAD_LEN: usize = 48;
    const MAGIC: u32 = 0x4c50_5453; // "LPTS"
    const VERSION: u8 = 1;
    const KIND_PROBE: u8 = 1;
    const KIND_REPLY: u8 = 2;
    const O_MAGIC: usize = 0;
    const O_VERSION: usize = 4;
    const O_KIND: usize = 5;
    const O_TOKEN: usize = 8;
    const O_ID: usize = 16;
    const O_T2: usize = 24;
    const O_T3: usize = 32;
    const FRAME_LEN: usize = PAY_OFF + PAYLOAD_LEN;

    /// The session token; only probes carrying it are answered or stamped. Set at load.
    #[unsafe(no_mangle)]
    static LP_TS_TOKEN: u64 = 0;
    /// The probe UDP port (probes go to it, replies come from it). Set at load.
    #[unsafe(no_mangle)]
    static LP_TS_PORT: u16 = 31999;
    /// Test only: the reflector's stamps become
    /// `t + offset + (t - ref) * drift_ppb / 1e9`, a known offset and drift for tests.
    #[unsafe(no_mangle)]
    static LP_TS_TEST_OFFSET_NS: i64 = 0;
    #[unsafe(no_mangle)]
    static LP_TS_TEST_DRIFT_PPB: i64 = 0;
    #[unsafe(no_mangle)]
    static LP_TS_TEST_REF_NS: u64 = 0;
    /// Test only: probes dropped instead of answered, out of 2^32 (emulated probe loss).
    #[unsafe(no_mangle)]
    static LP_TS_TEST_DROP: u32 = 0;

    /// The reflector's own IPv4 addresses (as big-endian numbers): probes to other addresses are
    /// someone else's (e.g. a host routed through this one) and pass on.
    #[map]
    static LP_TS_LOCAL: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);
    /// Departure stamps of the manager's probes, by probe id.
    #[map]
    static LP_TS_TX: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);
    /// Arrival stamps of the replies, by probe id.
    #[map]
    static LP_TS_RX: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

    #[inline(always)]
    fn token() -> u64 {
        unsafe { core::ptr::read_volatile(&LP_TS_TOKEN) }
    }

    #[inline(always)]
    fn port() -> u16 {
        unsafe { core::ptr::read_volatile(&LP_TS_PORT) }
    }

    /// The reflector's stamp, with the test-only offset and drift applied (both zero in real use).
    #[inline(always)]
    fn reflector_stamp(t: u64) -> u64 {
        let offset = unsafe { core::ptr::read_volatile(&LP_TS_TEST_OFFSET_NS) };
        let ppb = unsafe { core::ptr::read_volatile(&LP_TS_TEST_DRIFT_PPB) };
        let reference = unsafe { core::ptr::read_volatile(&LP_TS_TEST_REF_NS) };
        if offset == 0 && ppb == 0 {
            return t;
        }
        // Unsigned arithmetic only: signed division needs BPF cpu v4.
        let (dt, dt_neg) = if t >= reference {
            (t - reference, false)
        } else {
            (reference - t, true)
        };
        let (rate, rate_neg) = if ppb >= 0 {
            (ppb as u64, false)
        } else {
            (ppb.unsigned_abs(), true)
        };
        // Split dt so that dt * rate cannot overflow for any realistic uptime and rate (< 1e6 ppb).
        let secs = dt / 1_000_000_000;
        let frac = dt % 1_000_000_000;
        let adj = secs * rate + frac * rate / 1_000_000_000;
        let t = if dt_neg != rate_neg {
            t.wrapping_sub(adj)
        } else {
            t.wrapping_add(adj)
        };
        t.wrapping_add(offset as u64)
    }

    #[inline(always)]
    unsafe fn rd8(p: *const u8, off: usize) -> u8 {
        unsafe { *p.add(off) }
    }

    #[inline(always)]
    unsafe fn rd16(p: *const u8, off: usize) -> u16 {
        unsafe { ((*p.add(off) as u16) << 8) | *p.add(off + 1) as u16 }
    }

    #[inline(always)]
    unsafe fn rd32(p: *const u8, off: usize) -> u32 {
        unsafe { ((rd16(p, off) as u32) << 16) | rd16(p, off + 2) as u32 }
    }

    #[inline(always)]
    unsafe fn rd64(p: *const u8, off: usize) -> u64 {
        unsafe { ((rd32(p, off) as u64) << 32) | rd32(p, off + 4) as u64 }
    }

    #[inline(always)]
    unsafe fn wr16(p: *mut u8, off: usize, v: u16) {
        unsafe {
            *p.add(off) = (v >> 8) as u8;
            *p.add(off + 1) = v as u8;
        }
    }

    #[inline(always)]
    unsafe fn wr64(p: *mut u8, off: usize, v: u64) {
        let mut i = 0;
        while i < 8 {
            unsafe { *p.add(off + i) = (v >> (56 - 8 * i)) as u8 };
            i += 1;
        }
    }

    #[inline(always)]
    fn fold(mut sum: u64) -> u16 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }

    #[inline(always)]
    fn sum64(v: u64) -> u64 {
        (v >> 48) + ((v >> 32) & 0xffff) + ((v >> 16) & 0xffff) + (v & 0xffff)
    }

    /// The frame is an untagged IPv4/UDP datagram of exactly a probe's size, without IP options or
    /// fragmentation, whose payload carries our magic, version, `kind` and token.
    #[inline(always)]
    unsafe fn is_ours(p: *const u8, kind: u8) -> bool {
        unsafe {
            rd16(p, 12) == 0x0800
                && rd8(p, IP_OFF) == 0x45
                && rd16(p, IP_OFF + 2) as usize == IP_HLEN + UDP_HLEN + PAYLOAD_LEN
                && rd16(p, IP_OFF + 6) & 0x3fff == 0
                && rd8(p, IP_OFF + 9) == 17
                && rd16(p, UDP_OFF + 4) as usize == UDP_HLEN + PAYLOAD_LEN
                && rd32(p, PAY_OFF + O_MAGIC) == MAGIC
                && rd8(p, PAY_OFF + O_VERSION) == VERSION
                && rd8(p, PAY_OFF + O_KIND) == kind
                && rd64(p, PAY_OFF + O_TOKEN) == token()
        }
    }

    #[xdp]
    pub fn lp_ts_reflect(ctx: XdpContext) -> u32 {
        // The receive stamp is taken first, before any parsing, so parsing counts as residence.
        let t2 = clock_ns();
        let start = ctx.data();
        let end = ctx.data_end();
        if start + FRAME_LEN > end {
            return xdp_action::XDP_PASS;
        }
        let p = start as *mut u8;
        unsafe {
            if !is_ours(p, KIND_PROBE) || rd16(p, UDP_OFF + 2) != port() {
                return xdp_action::XDP_PASS;
            }
            if LP_TS_LOCAL.get(rd32(p, IP_OFF + 16)).is_none() {
                return xdp_action::XDP_PASS;
            }
            let drop = core::ptr::read_volatile(&LP_TS_TEST_DROP);
            if drop != 0 && aya_ebpf::helpers::bpf_get_prandom_u32() < drop {
                return xdp_action::XDP_DROP;
            }
            reflect(p, t2);
        }
        xdp_action::XDP_TX
    }

    /// Turns the probe at `p` into its reply: swapped addresses and ports, a fresh TTL, both
    /// stamps, and checksums recomputed from scratch (the probe's UDP checksum may be a partial
    /// one left by checksum offload, so an incremental update would not be enough).
    #[inline(always)]
    unsafe fn reflect(p: *mut u8, t2: u64) {
        unsafe {
            // Ethernet: swap MACs.
            let mut i = 0;
            while i < 6 {
                let a = *p.add(i);
                *p.add(i) = *p.add(6 + i);
                *p.add(6 + i) = a;
                i += 1;
            }
            // IP: swap addresses, fresh TTL so the reply crosses as many routers as the probe could.
            let mut i = 0;
            while i < 4 {
                let a = *p.add(IP_OFF + 12 + i);
                *p.add(IP_OFF + 12 + i) = *p.add(IP_OFF + 16 + i);
                *p.add(IP_OFF + 16 + i) = a;
                i += 1;
            }
            *p.add(IP_OFF + 8) = 64;
            wr16(p, IP_OFF + 10, 0);
            let mut sum: u64 = 0;
            let mut i = 0;
            while i < IP_HLEN {
                sum += rd16(p, IP_OFF + i) as u64;
                i += 2;
            }
            wr16(p, IP_OFF + 10, !fold(sum));
            // UDP: swap ports, mark as a reply, stamp.
            let sport = rd16(p, UDP_OFF);
            wr16(p, UDP_OFF, rd16(p, UDP_OFF + 2));
            wr16(p, UDP_OFF + 2, sport);
            wr16(p, UDP_OFF + 6, 0);
            *p.add(PAY_OFF + O_KIND) = KIND_REPLY;
            wr64(p, PAY_OFF + O_T2, reflector_stamp(t2));
            wr64(p, PAY_OFF + O_T3, 0);
            // Pseudo header + UDP header + payload, with the t3 field still zero ...
            let mut sum: u64 = 17 + (UDP_HLEN + PAYLOAD_LEN) as u64;
            let mut i = 0;
            while i < 8 {
                sum += rd16(p, IP_OFF + 12 + i) as u64;
                i += 2;
            }
            let mut i = 0;
            while i < UDP_HLEN + PAYLOAD_LEN {
                sum += rd16(p, UDP_OFF + i) as u64;
                i += 2;
            }
            // ... so that the transmit stamp is taken as late as possible and added to the sum.
            let t3 = reflector_stamp(clock_ns());
            wr64(p, PAY_OFF + O_T3, t3);
            sum += sum64(t3);
            let mut csum = !fold(sum);
            if csum == 0 {
                csum = 0xffff; // zero means "no checksum" in UDP over IPv4
            }
            wr16(p, UDP_OFF + 6, csum);
        }
    }

    #[xdp]
    pub fn lp_ts_ingress(ctx: XdpContext) -> u32 {
        let t4 = clock_ns();
        let start = ctx.data();
        if start + FRAME_LEN <= ctx.data_end() {
            let p = start as *const u8;
            unsafe {
                if is_ours(p, KIND_REPLY) && rd16(p, UDP_OFF) == port() {
                    let id = rd64(p, PAY_OFF + O_ID);
                    let _ = LP_TS_RX.insert(id, t4, 0);
                }
            }
        }
        xdp_action::XDP_PASS
    }

    /// Copies the first `FRAME_LEN` bytes of an skb (which may be non-linear) to the stack.
    #[inline(always)]
    fn skb_frame(ctx: &TcContext, buf: &mut [u8; FRAME_LEN]) -> bool {
        ctx.len() as usize >= FRAME_LEN && ctx.load_bytes(0, buf).is_ok()
    }

    #[classifier]
    pub fn lp_ts_ingress_tc(ctx: TcContext) -> i32 {
        let t4 = clock_ns();
        let mut buf = [0u8; FRAME_LEN];
        if skb_frame(&ctx, &mut buf) {
            let p = buf.as_ptr();
            unsafe {
                if is_ours(p, KIND_REPLY) && rd16(p, UDP_OFF) == port() {
                    let id = rd64(p, PAY_OFF + O_ID);
                    let _ = LP_TS_RX.insert(id, t4, 0);
                }
            }
        }
        // Let whatever else is attached here run too.
        TC_ACT_UNSPEC
    }

    #[classifier]
    pub fn lp_ts_egress(ctx: TcContext) -> i32 {
        let t1 = clock_ns();
        let mut buf = [0u8; FRAME_LEN];
        if skb_frame(&ctx, &mut buf) {
            let p = buf.as_ptr();
            unsafe {
                if is_ours(p, KIND_PROBE) && rd16(p, UDP_OFF + 2) == port() {
                    let id = rd64(p, PAY_OFF + O_ID);
                    let _ = LP_TS_TX.insert(id, t1, 0);
                }
            }
        }
        TC_ACT_UNSPEC
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
