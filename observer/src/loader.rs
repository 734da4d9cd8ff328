//! Loads the kernel programs, fills their settings maps and attaches each layer's program.
//!
//! Every attachment is fd-owned (bpf_link for XDP, TCX, cgroup and raw tracepoints), so when the
//! process exits — cleanly or by `kill -9` — the kernel detaches everything.
use crate::btf::Btf;
use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::CgroupAttachMode;
use aya::programs::tc::{TcAttachOptions, TcAttachType};
use aya::programs::xdp::XdpMode;
use aya::programs::{BtfTracePoint, CgroupSkb, LinkOrder, RawTracePoint, SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader};
use latplan_common::Layer;
use latplan_common::kernel::{
    IfaceCounters, KernelOffsets, LayerCounters, MAX_IFACES, ObserverGlobals, SamplingConfig,
    WatchedInterfaces,
};
use serde::Serialize;

/// The embedded eBPF object (built by build.rs from observer-ebpf).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// aya wants `Pod` values in maps; the shared types live in another crate, so wrap them.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct P<T>(pub T);
// SAFETY: the wrapped types are #[repr(C)] plain data with size asserts in latplan-common.
unsafe impl aya::Pod for P<SamplingConfig> {}
unsafe impl aya::Pod for P<KernelOffsets> {}
unsafe impl aya::Pod for P<ObserverGlobals> {}
unsafe impl aya::Pod for P<LayerCounters> {}
unsafe impl aya::Pod for P<IfaceCounters> {}
unsafe impl aya::Pod for P<WatchedInterfaces> {}

/// Where a layer is observed: program name and kernel hook (documented in docs/observer.md).
pub fn hook_of(layer: Layer) -> (&'static [&'static str], &'static str) {
    match layer {
        Layer::SockSend => (
            &["lp_tp_tcp_sendmsg", "lp_tp_sock_send"],
            "tp_btf:tcp_sendmsg_locked (raw_tp:sys_enter on kernels without it) + tp_btf:sock_send_length",
        ),
        Layer::TcpSend => (
            &["lp_cg_ip_send"],
            "cgroup_skb/egress (root cgroup v2), skb->tstamp set by tcp_transmit_skb",
        ),
        Layer::IpSend => (
            &["lp_cg_ip_send"],
            "cgroup_skb/egress (root cgroup v2): ip_finish_output",
        ),
        Layer::DevSend => (&["lp_tc_dev_send"], "tcx/egress per interface"),
        Layer::DevXmit => (&["lp_tp_dev_xmit"], "tp_btf:net_dev_start_xmit"),
        Layer::DevRecv => (
            &["lp_xdp_dev_recv"],
            "xdp per interface; tcx/ingress on virtual devices and where another XDP program holds it",
        ),
        Layer::IpRecv => (
            &["lp_cg_ip_recv"],
            "cgroup_skb/ingress (root cgroup v2): tcp_v4_rcv/tcp_v6_rcv",
        ),
        Layer::TcpRecv => (&["lp_tp_tcp_recv"], "tp_btf:tcp_probe"),
        Layer::SockQueue => (&["lp_tp_sock_queue"], "tp_btf:sk_data_ready"),
        Layer::SockRecv => (&["lp_tp_sock_recv"], "tp_btf:sock_recv_length"),
    }
}

/// The tracepoint a tracing program sits on. The `lp_tp_` programs are BTF-typed (`tp_btf`):
/// they read kernel structs with plain loads, which the verifier allows only through typed
/// pointers. `lp_rtp_sys_enter`, the fallback for kernels without `tcp_sendmsg_locked`, reads no
/// struct and stays a raw tracepoint.
fn tracepoint_of(prog: &str) -> Option<&'static str> {
    Some(match prog {
        "lp_tp_tcp_sendmsg" => "tcp_sendmsg_locked",
        "lp_rtp_sys_enter" => "sys_enter",
        "lp_tp_sock_send" => "sock_send_length",
        "lp_tp_dev_xmit" => "net_dev_start_xmit",
        "lp_tp_tcp_recv" => "tcp_probe",
        "lp_tp_sock_queue" => "sk_data_ready",
        "lp_tp_sock_recv" => "sock_recv_length",
        _ => return None,
    })
}

/// What the kernel side is told.
pub struct KernelSettings {
    pub sampling: SamplingConfig,
    pub globals: ObserverGlobals,
    /// Network namespaces recorded (own first).
    pub netns: Vec<u32>,
    /// The interfaces watched, by ifindex; the position is the interface's counter slot.
    pub interfaces: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub slot: u32,
    /// "xdp-native" or "xdp-generic" (empty when dev_recv is not attached).
    pub ingress_mode: String,
    pub egress: bool,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub interfaces: Vec<AttachedInterface>,
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name has a NUL byte")?;
    // SAFETY: a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface {name} not found in this network namespace");
    }
    Ok(idx)
}

/// Loads the object and writes the settings maps; attaches nothing yet.
pub fn load(btf: &Btf, s: &KernelSettings) -> Result<Ebpf> {
    // The programs read kernel structs by offset; fail early and clearly if BTF lacks a field.
    // The offsets go into the object's read-only data before the programs are verified, so that
    // the verifier sees them as constants (observer-ebpf: `LP_KOFF`).
    let offsets = P(btf
        .kernel_offsets()
        .context("failed to resolve kernel struct offsets from BTF")?);
    if s.interfaces.len() > MAX_IFACES as usize {
        bail!("more than {MAX_IFACES} interfaces");
    }
    let mut watched = WatchedInterfaces::NONE;
    watched.count = s.interfaces.len() as u32;
    watched.ifindex[..s.interfaces.len()].copy_from_slice(&s.interfaces);
    let watched = P(watched);
    let mut ebpf = EbpfLoader::new()
        .btf(Some(btf.kernel()))
        .override_global("LP_KOFF", &offsets, true)
        .override_global("LP_WATCHED", &watched, true)
        .load(OBJECT)
        .context("failed to load the observer's eBPF object")?;
    let mut a: Array<&mut MapData, P<SamplingConfig>> =
        Array::try_from(map(&mut ebpf, "LP_CONFIG")?)?;
    a.set(0, P(s.sampling), 0)
        .context("failed to write the sampling settings")?;
    let mut a: Array<&mut MapData, P<ObserverGlobals>> =
        Array::try_from(map(&mut ebpf, "LP_GLOBALS")?)?;
    a.set(0, P(s.globals), 0)
        .context("failed to write the observer settings")?;
    let mut h: HashMap<&mut MapData, u32, u8> = HashMap::try_from(map(&mut ebpf, "LP_NETNS")?)?;
    for ns in &s.netns {
        h.insert(ns, 1, 0)
            .context("failed to write the netns set")?;
    }
    Ok(ebpf)
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

/// Attaches dev_recv to an interface in `mode` ("native"; "generic"; "tc" = TCX ingress;
/// "auto" = TCX ingress on virtual devices, native XDP else, generic XDP as the fallback);
/// returns the mode that worked. Where another program holds the interface's XDP (one per
/// interface, and we never replace it: someone else's, or a session's own clock reflector on
/// the interface towards the manager), every mode observes at TCX ingress instead, where links
/// coexist; the Hello frame says so.
///
/// Why "auto" avoids XDP on virtual devices: native XDP on a veth moves the device onto its NAPI
/// path, which costs far more throughput than the program (measured in BENCHMARKS.md), and
/// generic XDP linearises GRO super-packets; TCX ingress sees the same bytes a few hundred
/// nanoseconds later at no such cost.
///
/// `probe::ingress_in` reports this choice from the probe's attach tests; keep the two alike.
pub fn attach_ingress(ebpf: &mut Ebpf, iface: &str, mode: &str) -> Result<String> {
    if mode == "tc" || (mode == "auto" && is_virtual(iface)) {
        attach_tc(ebpf, iface, "lp_tc_dev_recv", TcAttachType::Ingress)?;
        return Ok("tc".into());
    }
    match attach_xdp(ebpf, iface, mode) {
        Err(e) if mentions_busy(&format!("{e:?}")) => {
            attach_tc(ebpf, iface, "lp_tc_dev_recv", TcAttachType::Ingress)?;
            Ok("tc".into())
        }
        attached => attached,
    }
}

/// Attaches dev_recv (XDP) to an interface; returns the mode that worked.
pub fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: &str) -> Result<String> {
    let prog: &mut Xdp = program(ebpf, "lp_xdp_dev_recv")?.try_into()?;
    if prog.fd().is_err() {
        prog.load().context("the kernel refused the XDP program")?;
    }
    let try_native = mode != "generic";
    if try_native {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(_) => return Ok("xdp-native".into()),
            Err(e) if mode == "native" => {
                return Err(e).with_context(|| format!("failed to attach native XDP to {iface}"));
            }
            Err(_) => {}
        }
    }
    match prog.attach(iface, XdpMode::Skb) {
        Ok(_) => Ok("xdp-generic".into()),
        Err(e) => Err(e).with_context(|| format!("failed to attach generic XDP to {iface}")),
    }
}

/// Whether `iface` is a virtual device (veth, tap, bridge, …): sysfs gives it no `device`.
pub fn is_virtual(iface: &str) -> bool {
    !std::path::Path::new(&format!("/sys/class/net/{iface}/device")).exists()
}

/// Whether an XDP attach failed (by its error's text) because another program holds the
/// interface: EBUSY when that one was attached through netlink, EEXIST when through a BPF link
/// (as timesync's reflector does on a real NIC, e.g. a guest's virtio-net, where "auto" tries
/// XDP first).
pub fn mentions_busy(text: &str) -> bool {
    [
        "Resource busy",
        "EBUSY",
        "code: 16",
        "File exists",
        "EEXIST",
        "code: 17",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// Attaches dev_send (TCX egress) to an interface.
pub fn attach_tc_egress(ebpf: &mut Ebpf, iface: &str) -> Result<()> {
    attach_tc(ebpf, iface, "lp_tc_dev_send", TcAttachType::Egress)
}

fn attach_tc(ebpf: &mut Ebpf, iface: &str, name: &str, dir: TcAttachType) -> Result<()> {
    let prog: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
    if prog.fd().is_err() {
        prog.load().context("the kernel refused the TC program")?;
    }
    prog.attach_with_options(iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("failed to attach TCX {dir:?} to {iface}"))?;
    Ok(())
}

/// Attaches a cgroup_skb program (egress: tcp_send + ip_send; ingress: ip_recv) to the cgroup
/// v2 root, where it sees every socket of the host.
pub fn attach_cgroup(ebpf: &mut Ebpf, name: &str, dir: CgroupSkbAttachType) -> Result<()> {
    // Opened once for both programs: inside `ip netns exec` opening it means a private mount
    // namespace and a cgroup2 mount (~10 ms on the lab, a copy of every mount), not worth twice.
    static ROOT: std::sync::OnceLock<std::result::Result<(std::fs::File, String), String>> =
        std::sync::OnceLock::new();
    let (f, root) = ROOT
        .get_or_init(|| open_cgroup2().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let prog: &mut CgroupSkb = program(ebpf, name)?.try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .context("the kernel refused the cgroup_skb program")?;
    }
    // With bpf_link (kernel ≥ 5.7) cgroup attachments always coexist with others; the link API
    // rejects the legacy BPF_F_ALLOW_MULTI flag, so "Single" (no flag) is the right mode here.
    prog.attach(f, dir, CgroupAttachMode::Single)
        .with_context(|| format!("failed to attach cgroup_skb {name} to {root}"))?;
    Ok(())
}

/// The cgroup v2 mount point (cgroup_skb programs there see every socket on the host).
///
/// Inside `ip netns exec` /sys is remounted and the cgroup2 mount is not visible in our own mount
/// namespace; then init's view (`/proc/1/root`) is used, which shares the same hierarchy.
pub fn cgroup2_root() -> Result<String> {
    for (mountinfo, prefix) in [
        ("/proc/self/mountinfo", ""),
        ("/proc/1/mountinfo", "/proc/1/root"),
    ] {
        let Ok(mounts) = std::fs::read_to_string(mountinfo) else {
            continue;
        };
        for line in mounts.lines() {
            // "id parent major:minor root mountpoint opts ... - fstype source opts"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            if right.split_whitespace().next() != Some("cgroup2") {
                continue;
            }
            if let Some(mp) = left.split_whitespace().nth(4) {
                let path = format!("{prefix}{mp}");
                if std::path::Path::new(&path).is_dir() {
                    return Ok(path);
                }
            }
        }
    }
    bail!("no cgroup v2 hierarchy is mounted (needed for tcp_send/ip_send)")
}

/// Opens the cgroup v2 root. When it is not visible here (inside `ip netns exec`, which remounts
/// /sys), the observer moves itself into a private mount namespace and mounts cgroup2 there: the
/// mount is never seen by anyone else and vanishes with the process, even on `kill -9`.
/// Must run before the observer starts threads (unshare(CLONE_NEWNS) needs a single thread).
fn open_cgroup2() -> Result<(std::fs::File, String)> {
    if let Ok(root) = cgroup2_root() {
        let f = std::fs::File::open(&root)
            .with_context(|| format!("failed to open cgroup v2 root {root}"))?;
        return Ok((f, root));
    }
    let dir = format!("/tmp/lp-cgroup2-{}", std::process::id());
    // SAFETY: plain syscalls with valid C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!(
                "failed to make a private mount namespace for cgroup2: {}",
                std::io::Error::last_os_error()
            );
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!(
                "failed to make mounts private: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {dir}"))?;
    let cdir = std::ffi::CString::new(dir.clone()).expect("no NUL");
    let fstype = c"cgroup2";
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            cdir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(&dir);
        bail!("no cgroup v2 hierarchy visible and mounting one failed: {e}");
    }
    let f = std::fs::File::open(&dir).with_context(|| format!("failed to open {dir}"));
    // The open fd keeps the cgroup; the mount point itself is no longer needed.
    // SAFETY: valid C string.
    unsafe { libc::umount2(cdir.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(&dir);
    Ok((f?, "cgroup2 (private mount)".into()))
}

/// Attaches one tracepoint program (BTF-typed, or raw for `lp_rtp_sys_enter`).
pub fn attach_tracepoint(ebpf: &mut Ebpf, btf: &Btf, prog_name: &str) -> Result<()> {
    let tp = tracepoint_of(prog_name)
        .with_context(|| format!("{prog_name} is not a tracepoint program"))?;
    let refused = || format!("the kernel refused {prog_name} (tracepoint {tp})");
    let attach_failed = || format!("failed to attach {prog_name} to tracepoint {tp}");
    let prog = program(ebpf, prog_name)?;
    if prog_name.starts_with("lp_rtp_") {
        let prog: &mut RawTracePoint = prog.try_into()?;
        if prog.fd().is_err() {
            prog.load().with_context(refused)?;
        }
        prog.attach(tp).with_context(attach_failed)?;
    } else {
        let prog: &mut BtfTracePoint = prog.try_into()?;
        if prog.fd().is_err() {
            prog.load(tp, btf.kernel()).with_context(refused)?;
        }
        prog.attach().with_context(attach_failed)?;
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

/// Attaches the non-interface programs of `layer` (interface layers are attached per interface).
pub fn attach_layer(
    ebpf: &mut Ebpf,
    btf: &Btf,
    layer: Layer,
    done: &mut Vec<&'static str>,
) -> Result<()> {
    let (progs, _) = hook_of(layer);
    for &p in progs {
        if done.contains(&p) {
            continue;
        }
        match p {
            "lp_cg_ip_send" => attach_cgroup(ebpf, p, CgroupSkbAttachType::Egress)?,
            "lp_cg_ip_recv" => attach_cgroup(ebpf, p, CgroupSkbAttachType::Ingress)?,
            "lp_xdp_dev_recv" | "lp_tc_dev_send" | "lp_tc_dev_recv" => {}
            // Older kernels lack the tracepoint: stamp send-type syscalls instead, which
            // costs every syscall on the host a program run.
            "lp_tp_tcp_sendmsg" => {
                if let Err(e) = attach_tracepoint(ebpf, btf, p) {
                    attach_tracepoint(ebpf, btf, "lp_rtp_sys_enter").with_context(|| {
                        format!("{e:#}; and the fallback to sys_enter failed too")
                    })?;
                    eprintln!("observer: notice: {e:#}; stamping send calls at sys_enter instead");
                }
            }
            _ => attach_tracepoint(ebpf, btf, p)?,
        }
        done.push(p);
    }
    Ok(())
}

/// Sums the per-CPU layer counters.
pub fn layer_counters(ebpf: &Ebpf) -> Result<Vec<(Layer, LayerCounters)>> {
    let m = ebpf.map("LP_COUNTERS").context("map LP_COUNTERS missing")?;
    let a: PerCpuArray<&MapData, P<LayerCounters>> = PerCpuArray::try_from(m)?;
    let mut out = Vec::new();
    for l in Layer::ALL {
        let mut sum = LayerCounters::default();
        for c in a.get(&(l.index() as u32), 0)?.iter() {
            sum.seen += c.0.seen;
            sum.sampled += c.0.sampled;
            sum.ringbuf_full += c.0.ringbuf_full;
            sum.rate_limited += c.0.rate_limited;
        }
        out.push((l, sum));
    }
    Ok(out)
}

/// Sums the per-CPU interface counters of one slot.
pub fn iface_counters(ebpf: &Ebpf, slot: u32) -> Result<IfaceCounters> {
    let m = ebpf.map("LP_IFCOUNT").context("map LP_IFCOUNT missing")?;
    let a: PerCpuArray<&MapData, P<IfaceCounters>> = PerCpuArray::try_from(m)?;
    let mut sum = IfaceCounters::default();
    for c in a.get(&slot, 0)?.iter() {
        sum.rx_packets += c.0.rx_packets;
        sum.tx_packets += c.0.tx_packets;
        sum.rx_icmp += c.0.rx_icmp;
        sum.tx_icmp += c.0.tx_icmp;
    }
    Ok(sum)
}
