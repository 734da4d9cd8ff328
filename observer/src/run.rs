//! `observer run`: attach, stream records, detach.
//!
//! One thread drains the ring buffer on a timer (records request no wake-up, DESIGN.md/TOOLCHAIN.md
//! measured that as the cheap way; only when the ring is a quarter full does the kernel wake it
//! early), turns events into wire samples and hands batches to the writer queue; a second thread
//! reads the lease heartbeats on stdin.
use crate::btf::Btf;
use crate::config::Config;
use crate::loader::{self, AttachedInterface, KernelSettings};
use crate::sink::{Sink, Writer};
use crate::unwrap::{FlowKey, Unwrapper};
use crate::{netns, sampling};
use anyhow::{Context, Result, bail};
use aya::maps::RingBuf;
use latplan_common::Layer;
use latplan_common::kernel::{MAX_PORTS, ObserverGlobals, SampleEvent, SamplingConfig};
use latplan_common::wire::{Bye, Frame, Hello, Interface, LayerStats, Sample, Stats};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC now, ns: the clock the kernel programs stamp with.
pub use latplan_common::clock::monotonic_ns;

/// Who keeps the observer alive (DESIGN.md §10: an observer whose controller is gone detaches).
pub enum LeaseSource {
    /// Heartbeat lines on stdin (the SSH channel); end of input ends the run.
    Stdin,
    /// A check polled every second (Redis mode: the lease key latplan renews, docs/session.md).
    Poll(Box<dyn FnMut() -> LeaseCheck + Send>),
}

/// One look at a polled lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// The controller renewed it: keep going.
    Held,
    /// The controller asks the observer to stop now (the session's end).
    Stop,
    /// Not renewed, or not readable right now (Redis restarting): counts towards expiry.
    Unknown,
}

/// How a run is driven, besides its configuration.
pub struct RunOptions {
    pub lease: LeaseSource,
    /// Called once everything is attached and the hello is queued (daemon readiness).
    pub on_attached: Option<Box<dyn FnOnce() + Send>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            lease: LeaseSource::Stdin,
            on_attached: None,
        }
    }
}

pub fn run(cfg: Config, sink: Box<dyn Sink>, opts: RunOptions) -> Result<()> {
    let (size, notice) = sampling::round_size(cfg.sampling.size);
    if let Some(n) = notice {
        eprintln!("observer: notice: {n}");
    }
    let own_ns = netns::own()?;
    let mut ns_set = vec![own_ns];
    for c in &cfg.containers {
        let ns = netns::resolve(c)
            .with_context(|| format!("failed to resolve container netns {c:?}"))?;
        if !ns_set.contains(&ns) {
            ns_set.push(ns);
        }
    }
    let mut ports = [0u16; MAX_PORTS];
    ports[..cfg.sampling.ports.len()].copy_from_slice(&cfg.sampling.ports);
    let settings = KernelSettings {
        sampling: SamplingConfig {
            sample_mask: sampling::mask_for(size),
            port_count: cfg.sampling.ports.len() as u32,
            min_interval_ns: cfg.sampling.min_interval_us * 1000,
            ports,
        },
        globals: ObserverGlobals {
            own_netns: own_ns,
            sample_udp: cfg.sample_udp as u32,
            sample_shift: size.trailing_zeros(),
            reserved: 0,
        },
        netns: ns_set.clone(),
        interfaces: cfg
            .interfaces
            .iter()
            .map(|name| loader::ifindex(name))
            .collect::<Result<_>>()?,
    };
    let layers = cfg.layer_set()?;
    let btf = Btf::from_sys_fs()?;
    let mut ebpf = loader::load(&btf, &settings)?;

    // Signals first: a SIGTERM during attach must still detach cleanly.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())
            .context("failed to install signal handler")?;
    }

    let mut ifaces = Vec::new();
    for (slot, name) in cfg.interfaces.iter().enumerate() {
        let ifindex = settings.interfaces[slot];
        let mut a = AttachedInterface {
            name: name.clone(),
            ifindex,
            slot: slot as u32,
            ingress_mode: String::new(),
            egress: false,
        };
        if layers.contains(&Layer::DevRecv) {
            a.ingress_mode = loader::attach_ingress(&mut ebpf, name, &cfg.xdp_mode)?;
        }
        if layers.contains(&Layer::DevSend) {
            loader::attach_tc_egress(&mut ebpf, name)?;
            a.egress = true;
        }
        ifaces.push(a);
    }
    let mut done = Vec::new();
    for &l in &layers {
        loader::attach_layer(&mut ebpf, &btf, l, &mut done)
            .with_context(|| format!("failed to attach layer {}", l.name()))?;
    }
    let mut ring = RingBuf::try_from(
        ebpf.take_map("LP_EVENTS")
            .context("map LP_EVENTS missing")?,
    )?;

    let writer = Writer::spawn(sink, cfg.buffer_frames);
    let started_ns = monotonic_ns();
    let hello = Hello {
        host: cfg.host.clone(),
        session: cfg.session.clone(),
        observer_version: env!("CARGO_PKG_VERSION").into(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().into())
            .unwrap_or_default(),
        sample_size: size,
        interfaces: ifaces
            .iter()
            .map(|i| Interface {
                ifindex: i.ifindex,
                name: i.name.clone(),
                netns: own_ns,
                ingress_mode: if i.ingress_mode.is_empty() {
                    "none".into()
                } else {
                    i.ingress_mode.clone()
                },
            })
            .collect(),
        netns: ns_set,
        started_ns,
    };
    writer.send_blocking(Frame::Hello(hello).encode())?;
    eprintln!(
        "observer: attached {} layer(s) on {} interface(s), sampling 1 byte per {size}",
        layers.len(),
        ifaces.len()
    );

    if let Some(ready) = opts.on_attached {
        ready();
    }
    let lease = Lease::start(cfg.lease_seconds, opts.lease);
    let mut st = RunState {
        unwrap: Unwrapper::new(1 << 16),
        next_seq: 0,
        sent: 0,
        dropped: 0,
        batch: Vec::with_capacity(cfg.batch_max),
        batch_max: cfg.batch_max,
    };
    let mut cpu = CpuMeter::new();
    let stats_every = Duration::from_secs(cfg.stats_interval_seconds);
    let mut next_stats = Instant::now() + stats_every;
    let poll = Duration::from_millis(cfg.poll_interval_ms.max(1));
    let reason = loop {
        drain(&mut ring, &mut st, &writer)?;
        if Instant::now() >= next_stats {
            writer.send_blocking(Frame::Stats(stats(&ebpf, &st, &mut cpu, &ifaces)?).encode())?;
            next_stats += stats_every;
        }
        if stop.load(Ordering::Relaxed) {
            break "signal";
        }
        if let Some(r) = lease.expired() {
            break r;
        }
        if writer.is_finished() {
            bail!("output closed; stopping");
        }
        wait_readable(&ring, poll);
    };
    // Final drain, last stats, then detach (drop) before saying bye.
    drain(&mut ring, &mut st, &writer)?;
    writer.send_blocking(Frame::Stats(stats(&ebpf, &st, &mut cpu, &ifaces)?).encode())?;
    drop(ring);
    drop(ebpf);
    writer.send_blocking(
        Frame::Bye(Bye {
            records_total: st.next_seq,
            reason: reason.into(),
        })
        .encode(),
    )?;
    writer.finish()?;
    eprintln!(
        "observer: detached ({reason}); {} records sent, {} dropped",
        st.sent, st.dropped
    );
    Ok(())
}

/// Sleeps until the poll interval has passed or the kernel wakes the ring's reader (it does so
/// only when the ring is filling up, see `RING_WAKE_BYTES` in the kernel programs).
fn wait_readable(ring: &RingBuf<aya::maps::MapData>, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; an error or EINTR just ends the wait early.
    unsafe {
        libc::poll(
            &mut pfd,
            1,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
}

struct RunState {
    unwrap: Unwrapper,
    /// Record sequence number of the next record; dropped batches consume theirs (a visible gap).
    next_seq: u64,
    sent: u64,
    dropped: u64,
    batch: Vec<Sample>,
    batch_max: usize,
}

fn drain(ring: &mut RingBuf<aya::maps::MapData>, st: &mut RunState, writer: &Writer) -> Result<()> {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<SampleEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a SampleEvent (64 bytes, plain data); read unaligned.
        let ev: SampleEvent =
            unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SampleEvent) };
        drop(item);
        if let Some(s) = to_sample(&ev, &mut st.unwrap) {
            st.batch.push(s);
        }
        if st.batch.len() >= st.batch_max {
            flush_batch(st, writer)?;
        }
    }
    flush_batch(st, writer)
}

pub fn to_sample(ev: &SampleEvent, unwrap: &mut Unwrapper) -> Option<Sample> {
    let layer = Layer::from_u8(ev.layer)?;
    let key = FlowKey {
        saddr: ev.saddr,
        daddr: ev.daddr,
        sport: ev.sport,
        dport: ev.dport,
    };
    Some(Sample {
        ts_ns: ev.ts_ns,
        offset: unwrap.unwrap(key, ev.seq),
        saddr: ev.saddr,
        daddr: ev.daddr,
        sport: ev.sport,
        dport: ev.dport,
        len: ev.len,
        ifindex: ev.ifindex,
        netns: ev.netns,
        cpu: ev.cpu,
        layer,
        flags: ev.flags,
    })
}

fn flush_batch(st: &mut RunState, writer: &Writer) -> Result<()> {
    if st.batch.is_empty() {
        return Ok(());
    }
    let n = st.batch.len() as u64;
    let frame = Frame::Samples {
        first_seq: st.next_seq,
        samples: std::mem::take(&mut st.batch),
    };
    st.next_seq += n;
    if writer.try_send(frame.encode())? {
        st.sent += n;
    } else {
        st.dropped += n;
    }
    st.batch = Vec::with_capacity(st.batch_max);
    Ok(())
}

fn stats(
    ebpf: &aya::Ebpf,
    st: &RunState,
    cpu: &mut CpuMeter,
    ifaces: &[AttachedInterface],
) -> Result<Stats> {
    let layers = loader::layer_counters(ebpf)?
        .into_iter()
        .map(|(layer, c)| LayerStats {
            layer,
            seen: c.seen,
            sampled: c.sampled,
            ringbuf_full: c.ringbuf_full,
            rate_limited: c.rate_limited,
        })
        .collect();
    // Interface packet counters are not part of wire version 1's Stats; they go to stderr as
    // one JSON line per stats interval, for people and the lab tests.
    let mut counts = Vec::new();
    for i in ifaces {
        let c = loader::iface_counters(ebpf, i.slot)?;
        counts.push(serde_json::json!({
            "name": i.name, "ifindex": i.ifindex, "rx_packets": c.rx_packets, "tx_packets": c.tx_packets,
            "rx_icmp": c.rx_icmp, "tx_icmp": c.tx_icmp,
        }));
    }
    eprintln!("observer: interfaces {}", serde_json::Value::Array(counts));
    Ok(Stats {
        ts_ns: monotonic_ns(),
        layers,
        records_sent: st.sent,
        records_dropped: st.dropped,
        cpu_percent: cpu.percent(),
    })
}

/// CPU time of this process between calls, as percent of one core.
struct CpuMeter {
    last_cpu: Duration,
    last_wall: Instant,
}

impl CpuMeter {
    fn new() -> Self {
        CpuMeter {
            last_cpu: process_cpu(),
            last_wall: Instant::now(),
        }
    }
    fn percent(&mut self) -> f64 {
        let cpu = process_cpu();
        let wall = Instant::now();
        let dw = wall.duration_since(self.last_wall).as_secs_f64();
        let dc = cpu.saturating_sub(self.last_cpu).as_secs_f64();
        self.last_cpu = cpu;
        self.last_wall = wall;
        if dw > 0.0 { 100.0 * dc / dw } else { 0.0 }
    }
}

fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The controller's lease: any byte on stdin renews it and EOF ends it, or (polled) a renewed
/// lease key; silence past the lease ends the run.
struct Lease {
    seconds: u64,
    last: Arc<AtomicU64>,
    eof: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    start: Instant,
}

impl Lease {
    fn start(seconds: u64, source: LeaseSource) -> Lease {
        let l = Lease {
            seconds,
            last: Arc::new(AtomicU64::new(0)),
            eof: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            start: Instant::now(),
        };
        let (last, start) = (l.last.clone(), l.start);
        let renew = move || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        match source {
            LeaseSource::Stdin if seconds > 0 => {
                let eof = l.eof.clone();
                std::thread::Builder::new()
                    .name("lp-lease".into())
                    .spawn(move || {
                        let mut buf = [0u8; 512];
                        let mut stdin = std::io::stdin();
                        loop {
                            match stdin.read(&mut buf) {
                                Ok(0) | Err(_) => {
                                    eof.store(true, Ordering::Relaxed);
                                    return;
                                }
                                Ok(_) => renew(),
                            }
                        }
                    })
                    .expect("spawn lease thread");
            }
            LeaseSource::Stdin => {}
            LeaseSource::Poll(mut check) => {
                let stop = l.stop.clone();
                std::thread::Builder::new()
                    .name("lp-lease".into())
                    .spawn(move || {
                        loop {
                            match check() {
                                LeaseCheck::Held => renew(),
                                LeaseCheck::Stop => {
                                    stop.store(true, Ordering::Relaxed);
                                    return;
                                }
                                LeaseCheck::Unknown => {}
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    })
                    .expect("spawn lease thread");
            }
        }
        l
    }

    fn expired(&self) -> Option<&'static str> {
        if self.stop.load(Ordering::Relaxed) {
            return Some("stopped by latplan");
        }
        if self.seconds == 0 {
            return None;
        }
        if self.eof.load(Ordering::Relaxed) {
            return Some("lease: stdin closed");
        }
        let since = self.start.elapsed().as_millis() as u64 - self.last.load(Ordering::Relaxed);
        (since > self.seconds * 1000).then_some("lease expired")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_samples_with_unwrapped_offsets() {
        let mut u = Unwrapper::new(8);
        let mut ev = SampleEvent {
            seq: u32::MAX - 1,
            layer: Layer::DevSend as u8,
            len: 100,
            ..Default::default()
        };
        let a = to_sample(&ev, &mut u).unwrap();
        ev.seq = 10;
        ev.layer = Layer::DevRecv as u8;
        let b = to_sample(&ev, &mut u).unwrap();
        assert_eq!(b.offset - a.offset, 12);
        assert_eq!(b.layer, Layer::DevRecv);
        ev.layer = 99;
        assert!(to_sample(&ev, &mut u).is_none());
    }
}
