//! Loads the kernel programs, fills their settings maps and attaches each layer's program.
//!
//! Every attachment is fd-owned (bpf_link for XDP, TCX, cgroup and raw tracepoints), so when the
//! process exits — cleanly or by `kill -9` — the kernel detaches everything.
use crate::btf::Btf;
use anyhow::{Context, Result, bail};
use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::CgroupAttachMode;
use aya::programs::tc::{TcAttachOptions, TcAttachType};
use aya::programs::xdp::XdpMode;
use aya::programs::{CgroupSkb, LinkOrder, RawTracePoint, SchedClassifier, Xdp};
use latplan_common::Layer;
use latplan_common::kernel::{
    IfaceCounters, KernelOffsets, LayerCounters, MAX_IFACES, ObserverGlobals, SamplingConfig,
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

/// Where a layer is observed: program name and kernel hook (documented in docs/observer.md).
pub fn hook_of(layer: Layer) -> (&'static [&'static str], &'static str) {
    match layer {
        Layer::SockSend => (
            &["lp_rtp_tcp_sendmsg", "lp_rtp_sock_send"],
            "raw_tp:tcp_sendmsg_locked (sys_enter on kernels without it) + raw_tp:sock_send_length",
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
        Layer::DevXmit => (&["lp_rtp_dev_xmit"], "raw_tp:net_dev_start_xmit"),
        Layer::DevRecv => (
            &["lp_xdp_dev_recv"],
            "xdp per interface; tcx/ingress on virtual devices and where another XDP program holds it",
        ),
        Layer::IpRecv => (
            &["lp_cg_ip_recv"],
            "cgroup_skb/ingress (root cgroup v2): tcp_v4_rcv/tcp_v6_rcv",
        ),
        Layer::TcpRecv => (&["lp_rtp_tcp_recv"], "raw_tp:tcp_probe"),
        Layer::SockQueue => (&["lp_rtp_sock_queue"], "raw_tp:sk_data_ready"),
        Layer::SockRecv => (&["lp_rtp_sock_recv"], "raw_tp:sock_recv_length"),
    }
}

fn raw_tp_name(prog: &str) -> Option<&'static str> {
    Some(match prog {
        "lp_rtp_tcp_sendmsg" => "tcp_sendmsg_locked",
        "lp_rtp_sys_enter" => "sys_enter",
        "lp_rtp_sock_send" => "sock_send_length",
        "lp_rtp_dev_xmit" => "net_dev_start_xmit",
        "lp_rtp_tcp_recv" => "tcp_probe",
        "lp_rtp_sock_queue" => "sk_data_ready",
        "lp_rtp_sock_recv" => "sock_recv_length",
        _ => return None,
    })
}

/// What the kernel side is told.
pub struct KernelSettings {
    pub sampling: SamplingConfig,
    pub globals: ObserverGlobals,
    /// Network namespaces recorded (own first).
    pub netns: Vec<u32>,
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
    let offsets = btf
        .kernel_offsets()
        .context("failed to resolve kernel struct offsets from BTF")?;
    let mut ebpf = Ebpf::load(OBJECT).context("failed to load the observer's eBPF object")?;
    let mut a: Array<&mut MapData, P<SamplingConfig>> =
        Array::try_from(map(&mut ebpf, "LP_CONFIG")?)?;
    a.set(0, P(s.sampling), 0)
        .context("failed to write the sampling settings")?;
    let mut a: Array<&mut MapData, P<ObserverGlobals>> =
        Array::try_from(map(&mut ebpf, "LP_GLOBALS")?)?;
    a.set(0, P(s.globals), 0)
        .context("failed to write the observer settings")?;
    let mut a: Array<&mut MapData, P<KernelOffsets>> =
        Array::try_from(map(&mut ebpf, "LP_OFFSETS")?)?;
    a.set(0, P(offsets), 0)
        .context("failed to write the kernel offsets")?;
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

/// Registers an interface (its counter slot) so the interface programs count it.
pub fn register_interface(ebpf: &mut Ebpf, ifindex: u32, slot: u32) -> Result<()> {
    if slot >= MAX_IFACES {
        bail!("more than {MAX_IFACES} interfaces");
    }
    let mut h: HashMap<&mut MapData, u32, u32> = HashMap::try_from(map(ebpf, "LP_IFACES")?)?;
    h.insert(ifindex, slot, 0)
        .context("failed to register interface")?;
    Ok(())
}

/// Attaches dev_recv to an interface in `mode` ("native"; "generic"; "tc" = TCX ingress;
/// "auto" = TCX ingress on virtual devices, native XDP else, generic XDP as the fallback);
/// returns the mode that worked.
///
/// Why "auto" avoids XDP on virtual devices: native XDP on a veth moves the device onto its NAPI
/// path, which costs far more throughput than the program (measured in BENCHMARKS.md), and
/// generic XDP linearises GRO super-packets; TCX ingress sees the same bytes a few hundred
/// nanoseconds later at no such cost.
pub fn attach_ingress(ebpf: &mut Ebpf, iface: &str, mode: &str) -> Result<String> {
    let virtual_dev = !std::path::Path::new(&format!("/sys/class/net/{iface}/device")).exists();
    if mode == "tc" || (mode == "auto" && virtual_dev) {
        attach_tc(ebpf, iface, "lp_tc_dev_recv", TcAttachType::Ingress)?;
        return Ok("tc".into());
    }
    attach_xdp(ebpf, iface, mode)
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
        // Another XDP program holds the interface (one per interface; we never replace it):
        // observe at TC ingress instead, where links coexist.
        Err(e) if mode == "auto" && is_busy(&e) => {
            attach_tc(ebpf, iface, "lp_tc_dev_recv", TcAttachType::Ingress)?;
            Ok("tc".into())
        }
        Err(e) => Err(e).with_context(|| format!("failed to attach generic XDP to {iface}")),
    }
}

/// Whether an XDP attach failed because another program holds the interface: EBUSY when that one
/// was attached through netlink, EEXIST when through a BPF link (as timesync's reflector does on a
/// real NIC, e.g. a guest's virtio-net, where "auto" tries XDP first).
fn is_busy(e: &aya::programs::ProgramError) -> bool {
    let text = format!("{e:?}");
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
    let (f, root) = open_cgroup2()?;
    let prog: &mut CgroupSkb = program(ebpf, name)?.try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .context("the kernel refused the cgroup_skb program")?;
    }
    // With bpf_link (kernel ≥ 5.7) cgroup attachments always coexist with others; the link API
    // rejects the legacy BPF_F_ALLOW_MULTI flag, so "Single" (no flag) is the right mode here.
    prog.attach(&f, dir, CgroupAttachMode::Single)
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

/// Attaches one raw-tracepoint program.
pub fn attach_raw_tp(ebpf: &mut Ebpf, prog_name: &str) -> Result<()> {
    let tp = raw_tp_name(prog_name)
        .with_context(|| format!("{prog_name} is not a raw tracepoint program"))?;
    let prog: &mut RawTracePoint = program(ebpf, prog_name)?.try_into()?;
    if prog.fd().is_err() {
        let t = std::time::Instant::now();
        let r = prog.load();
        if std::env::var_os("LP_DEBUG").is_some() {
            eprintln!(
                "debug: load {prog_name}: {:?} in {:?}",
                r.as_ref().err(),
                t.elapsed()
            );
        }
        r.with_context(|| format!("the kernel refused {prog_name}"))?;
    }
    prog.attach(tp)
        .with_context(|| format!("failed to attach {prog_name} to raw tracepoint {tp}"))?;
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

/// Attaches the non-interface programs of `layer` (interface layers are attached per interface).
pub fn attach_layer(ebpf: &mut Ebpf, layer: Layer, done: &mut Vec<&'static str>) -> Result<()> {
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
            "lp_rtp_tcp_sendmsg" => {
                if let Err(e) = attach_raw_tp(ebpf, p) {
                    attach_raw_tp(ebpf, "lp_rtp_sys_enter").with_context(|| {
                        format!("{e:#}; and the fallback to sys_enter failed too")
                    })?;
                    eprintln!("observer: notice: {e:#}; stamping send calls at sys_enter instead");
                }
            }
            _ => attach_raw_tp(ebpf, p)?,
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
