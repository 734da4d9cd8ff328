//! Loading and attaching timesync's kernel programs (built from `observer-ebpf`, bin `timesync`).
use anyhow::{Context, bail};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC now, ns: the clock the kernel programs stamp with.
pub use latplan_common::clock::monotonic_ns;

/// The compiled kernel object.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/timesync"));

pub const PROG_REFLECT: &str = "lp_ts_reflect";
pub const PROG_EGRESS: &str = "lp_ts_egress";
pub const PROG_INGRESS_XDP: &str = "lp_ts_ingress";
pub const PROG_INGRESS_TC: &str = "lp_ts_ingress_tc";
pub const MAP_TX: &str = "LP_TS_TX";
pub const MAP_RX: &str = "LP_TS_RX";
pub const MAP_LOCAL: &str = "LP_TS_LOCAL";

/// Tells the reflector which destination addresses are its own.
pub fn set_local_addresses(bpf: &mut Ebpf, addrs: &[std::net::Ipv4Addr]) -> anyhow::Result<()> {
    let mut map: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(bpf.map_mut(MAP_LOCAL).context("map LP_TS_LOCAL missing")?)?;
    for a in addrs {
        map.insert(u32::from(*a), 1, 0)
            .with_context(|| format!("failed to add {a} to the reflector's addresses"))?;
    }
    Ok(())
}

/// Values fixed at load time (globals of the kernel programs).
#[derive(Debug, Clone, Default)]
pub struct Globals {
    pub token: u64,
    pub port: u16,
    /// Test only: added to the reflector's stamps.
    pub test_offset_ns: i64,
    /// Test only: rate added to the reflector's clock, parts per billion.
    pub test_drift_ppb: i64,
    /// Test only: where the added drift is zero (reflector clock, ns).
    pub test_ref_ns: u64,
    /// Test only: fraction of probes dropped by the reflector, out of 2^32.
    pub test_drop: u32,
}

/// Loads the object with its globals set (programs still need `load()` before attaching).
pub fn load(g: &Globals) -> anyhow::Result<Ebpf> {
    raise_memlock();
    EbpfLoader::new()
        .override_global("LP_TS_TOKEN", &g.token, true)
        .override_global("LP_TS_PORT", &g.port, true)
        .override_global("LP_TS_TEST_OFFSET_NS", &g.test_offset_ns, true)
        .override_global("LP_TS_TEST_DRIFT_PPB", &g.test_drift_ppb, true)
        .override_global("LP_TS_TEST_REF_NS", &g.test_ref_ns, true)
        .override_global("LP_TS_TEST_DROP", &g.test_drop, true)
        .load(OBJECT)
        .context("failed to load the timesync eBPF object (needs root or CAP_BPF+CAP_NET_ADMIN)")
}

/// Older kernels charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it. Best effort.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

pub fn xdp<'a>(bpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let prog: &mut Xdp = bpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not XDP"))?;
    Ok(prog)
}

pub fn tc<'a>(bpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = bpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))?;
    Ok(prog)
}

/// How an XDP program was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum XdpAttach {
    /// Native (driver) mode, with generic as the fallback; on veth, generic (see `docs/timesync.md`).
    Auto,
    Native,
    Generic,
}

/// Attaches an XDP program in the requested mode; returns the mode it ended up in.
pub fn attach_xdp(prog: &mut Xdp, iface: &str, mode: XdpAttach) -> anyhow::Result<XdpAttach> {
    let native = |prog: &mut Xdp| {
        prog.attach(iface, XdpMode::Driver)
            .map(|_| XdpAttach::Native)
    };
    let generic = |prog: &mut Xdp| prog.attach(iface, XdpMode::Skb).map(|_| XdpAttach::Generic);
    let res = match mode {
        XdpAttach::Native => native(prog),
        XdpAttach::Generic => generic(prog),
        // A native XDP_TX on veth lands in the peer's NAPI ring, which exists only while the peer
        // has an XDP program or GRO on: otherwise the kernel drops the reply silently. Generic XDP
        // transmits through the stack and always works there.
        XdpAttach::Auto if driver_name(iface).as_deref() == Some("veth") => generic(prog),
        XdpAttach::Auto => match native(prog) {
            Ok(m) => Ok(m),
            Err(native_err) => generic(prog).inspect(|_| {
                eprintln!(
                    "timesync: native XDP on {iface} failed ({native_err}); using generic XDP"
                );
            }),
        },
    };
    res.with_context(|| format!("failed to attach XDP ({mode:?}) to interface {iface}"))
}

/// Attaches a TC program (TCX on 6.6+, else netlink with a clsact qdisc).
pub fn attach_tc(prog: &mut SchedClassifier, iface: &str, dir: TcAttachType) -> anyhow::Result<()> {
    if let Err(e) = prog.attach(iface, dir) {
        // Pre-TCX kernels need a clsact qdisc first; adding it twice is harmless.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        prog.attach(iface, dir)
            .with_context(|| format!("failed to attach TC {dir:?} to {iface} (first try: {e})"))?;
    }
    Ok(())
}

/// The driver behind an interface (ethtool's GDRVINFO), e.g. "veth", "virtio_net", "bridge".
pub fn driver_name(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 164],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if iface.len() >= 16 {
        return None;
    }
    let mut info = DrvInfo {
        cmd: 0x3,
        driver: [0; 32],
        rest: [0; 164],
    }; // ETHTOOL_GDRVINFO
    let mut req = IfReq {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: a datagram socket used only for this ioctl; `req` and `info` outlive the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, 0x8946, &mut req); // SIOCETHTOOL
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Refuses tokens and ports the programs cannot use.
pub fn check_globals(g: &Globals) -> anyhow::Result<()> {
    if g.token == 0 {
        bail!("the session token must not be zero");
    }
    if g.port == 0 {
        bail!("the probe port must not be zero");
    }
    Ok(())
}
