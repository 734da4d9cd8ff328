//! Independent ground truth: tcpdump at both ends of the wan, and the stored session's per-byte
//! network values to compare with it (`planner::analysis::groundtruth`).
//!
//! Where each side stamps a packet:
//! - leaving metal1's wan0: tcpdump's copy is stamped in `dev_queue_xmit_nit()`, which
//!   `xmit_one()` calls right before the `net_dev_start_xmit` tracepoint where our dev_xmit runs;
//! - arriving on metal2's wan0: the kernel stamps the skb when it is queued for receive
//!   (`netif_rx()` → `net_timestamp_check()`, the relay's send runs that softirq at once), taps
//!   see it in `__netif_receive_skb_core()` after generic XDP; our dev_recv runs later in the
//!   same function, at TCX ingress.
//!
//! With that default (`net.core.netdev_tstamp_prequeue = 1`) the capture's one-way time ends
//! before ours by the packet's wait in the receive backlog: a few µs, but tens of µs whenever
//! the softirq is late on a loaded machine (1 of 8 sessions had 2.1 % of bytes beyond ±20 µs,
//! max 62 µs, median difference 0.6 µs). While capturing, [`Captures`] sets the sysctl to 0 so
//! the kernel stamps in `__netif_receive_skb_core()` itself, just before the taps and TCX
//! ingress, and puts it back afterwards (it is machine-wide; the caller holds the lab lock).
//! What remains is the clock fits' error between the two domains and a µs of tap delivery.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use latplan_common::layer::Layer;
use planner::analysis::groundtruth::{self, Agreement, Capture, End, OneWayTimes};
use planner::analysis::{self, FlowKey, ObserverInfo, SessionData, TaggedSample};
use planner::store::Store;

/// tcpdump running in one namespace, writing a pcap file.
struct Tcpdump {
    child: Child,
    file: PathBuf,
    log: PathBuf,
}

impl Tcpdump {
    fn start(dir: &Path, netns: &str, tag: &str) -> Tcpdump {
        let file = dir.join(format!("{tag}-{netns}.pcap"));
        let log = dir.join(format!("{tag}-{netns}.log"));
        // Nanosecond stamps; `-j host` is the only stamp type a veth offers (no adapter clock);
        // a large buffer so the capture itself drops nothing. Headers only (`-s 128`): libpcap's
        // TPACKET_V3 ring wakes tcpdump from inside the packet path whenever a 256 KiB block
        // fills, and that wake-up (an IPI to an idle vCPU on a virtual machine) lands between
        // the capture's stamp and ours and cost 20–70 µs; with whole 1 KiB packets a block filled
        // every ~200 packets, about 1 % of bytes on each end — the capture's own disturbance, as
        // large as the 99 % criterion's margin. Cut records hold 6× more per block.
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", "wan0", "-n"])
            .args([
                "-s",
                "128",
                "-B",
                "16384",
                "-j",
                "host",
                "--time-stamp-precision=nano",
                "-w",
            ])
            .arg(&file)
            .args(["tcp", "and", "portrange", "5201-5203"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("tcpdump log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start tcpdump in {netns} (apt-get install tcpdump): {e}"));
        let t = Tcpdump { child, file, log };
        let started = Instant::now();
        while !t.log_text().contains("listening on") {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "tcpdump in {netns} did not start: {}",
                t.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it with SIGINT (it flushes and prints its counters) and parses the file.
    fn stop(mut self) -> (Capture, u64) {
        // SAFETY: a signal to our own child's pid (`ip netns exec` execs tcpdump in place).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait for tcpdump");
        let log = self.log_text();
        assert!(status.success(), "tcpdump failed ({status}): {log}");
        let dropped = log
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("tcpdump printed no drop count: {log}"));
        let f = std::fs::File::open(&self.file).expect("open the capture");
        let cap = groundtruth::read_capture(std::io::BufReader::new(f))
            .unwrap_or_else(|e| panic!("{}: {e}", self.file.display()));
        (cap, dropped)
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PREQUEUE: &str = "/proc/sys/net/core/netdev_tstamp_prequeue";

/// Receive stamps taken when the packet is processed, not when it is queued, while alive.
struct StampAtProcessing(String);

impl StampAtProcessing {
    fn set() -> StampAtProcessing {
        let before =
            std::fs::read_to_string(PREQUEUE).unwrap_or_else(|e| panic!("read {PREQUEUE}: {e}"));
        std::fs::write(PREQUEUE, "0").unwrap_or_else(|e| panic!("write {PREQUEUE}: {e}"));
        StampAtProcessing(before.trim().to_string())
    }
}

impl Drop for StampAtProcessing {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(PREQUEUE, &self.0) {
            eprintln!("could not restore {PREQUEUE} to {}: {e}", self.0);
        }
    }
}

/// Captures on both ends of the wan (metal1's and metal2's wan0).
pub struct Captures {
    _stamps: Option<StampAtProcessing>,
    metal1: Option<Tcpdump>,
    metal2: Option<Tcpdump>,
    pub truth: OneWayTimes,
    /// Packets the kernel dropped from either capture.
    pub dropped: u64,
    pub packets: (usize, usize),
}

impl Captures {
    pub fn start(dir: &Path, tag: &str) -> Captures {
        Captures {
            _stamps: Some(StampAtProcessing::set()),
            metal1: Some(Tcpdump::start(dir, "lp-metal1", tag)),
            metal2: Some(Tcpdump::start(dir, "lp-metal2", tag)),
            truth: OneWayTimes::default(),
            dropped: 0,
            packets: (0, 0),
        }
    }

    pub fn stop(mut self) -> Captures {
        let (a, da) = self.metal1.take().expect("running").stop();
        let (b, db) = self.metal2.take().expect("running").stop();
        self._stamps = None;
        self.truth = groundtruth::one_way_times(&a, &b);
        self.dropped = da + db;
        self.packets = (a.packets.len(), b.packets.len());
        self
    }
}

/// The stored session as the analysis reads it (samples collected: a test session is small).
pub fn stored_session(store: &str, name: &str) -> SessionData<Vec<TaggedSample>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(store).await.expect("open the store");
        let meta = planner::cli::report::load_session(&store, Some(name))
            .await
            .expect("load the session");
        let mut samples = Vec::new();
        let mut cursor = store
            .samples(meta.session.id, 50_000)
            .await
            .expect("read samples");
        while let Some(page) = cursor.next_page().await.expect("read a page of samples") {
            samples.extend(page.into_iter().map(|s| TaggedSample {
                observer: meta.run_index[&s.run_id],
                sample: s.sample,
            }));
        }
        drop(cursor);
        store.close().await;
        SessionData {
            session: meta.session.name,
            hosts: meta.hosts,
            observers: meta.observers,
            fits: meta.fits,
            samples,
        }
    })
}

/// How a segment's per-byte values agree with the captures.
pub struct CaptureAgreement {
    /// Over every byte the captures paired.
    pub all: Agreement,
    /// Over the bytes neither host held up between the capture's stamp and its own hook's.
    pub referenced: Agreement,
    /// Bytes held up at the sending (metal1 dev_xmit) and receiving (metal2 dev_recv) end, and
    /// how many were compared at each.
    pub held_up: [(usize, u64); 2],
    /// Median of (segment − capture) over all matched bytes (the systematic part).
    pub median_diff_ns: i64,
}

impl CaptureAgreement {
    pub fn held_up_fraction(&self) -> f64 {
        let held: usize = self.held_up.iter().map(|h| h.0).sum();
        held as f64 / self.all.matched.max(1) as f64
    }
}

/// `host`'s stamps at `layer` on its wan0, as (flow, byte offset, host ns).
fn wan_stamps(
    data: &SessionData<Vec<TaggedSample>>,
    host: &str,
    layer: Layer,
) -> Vec<(FlowKey, u64, i64)> {
    let wan0 = |o: &ObserverInfo| {
        o.interfaces
            .iter()
            .find(|i| i.name == "wan0")
            .map(|i| i.ifindex)
    };
    let observers: Vec<(u32, u32)> = data
        .observers
        .iter()
        .enumerate()
        .filter(|(_, o)| o.host == host)
        .filter_map(|(i, o)| Some((i as u32, wan0(o)?)))
        .collect();
    assert!(
        !observers.is_empty(),
        "no observer of {host} attached to wan0"
    );
    data.samples
        .iter()
        .filter(|t| t.sample.layer == layer)
        .filter(|t| observers.contains(&(t.observer, t.sample.ifindex)))
        .map(|t| {
            (
                FlowKey::of(&t.sample),
                t.sample.offset,
                t.sample.ts_ns as i64,
            )
        })
        .collect()
}

/// How the named segment's per-byte values agree with the captures, over all bytes and over the
/// bytes for which each capture stamp stands for the instant our hook beside it saw the packet
/// ([`groundtruth::held_up_between_stamps`]: tcpdump's tap runs right before our dev_xmit and a
/// few µs before our dev_recv; a timer interrupt or the hypervisor between them on this virtual
/// machine puts 20–200 µs between two stamps of one instant, on ~1 % of packets under load).
/// Prints the bytes outside the tolerance with their capture times and the session's clock fits,
/// so a failure shows whether the misses cluster in time (a fit) or not (stamping).
pub fn agreement(
    data: SessionData<Vec<TaggedSample>>,
    segment: &str,
    truth: &OneWayTimes,
    tolerance_ns: i64,
) -> CaptureAgreement {
    for f in &data.fits {
        eprintln!(
            "  fit {} from {} offset {:.1} µs drift {:.3} ppm bound {:.1} µs samples {} min delay {:.1} µs",
            f.domain,
            f.valid_from_host_ns,
            f.offset_ns / 1e3,
            f.drift_ppm,
            f.error_bound_ns / 1e3,
            f.samples,
            f.min_delay_ns as f64 / 1e3
        );
    }
    let sent = groundtruth::held_up_between_stamps(
        wan_stamps(&data, "metal1", Layer::DevXmit),
        truth,
        End::Sent,
        tolerance_ns,
    );
    let received = groundtruth::held_up_between_stamps(
        wan_stamps(&data, "metal2", Layer::DevRecv),
        truth,
        End::Received,
        tolerance_ns,
    );
    let held_up = |f: &FlowKey, off: u64| {
        let key = (*f, off as u32);
        sent.bytes.contains(&key) || received.bytes.contains(&key)
    };
    let values: Vec<(FlowKey, u64, i64)> = analysis::segment_values(data, |_, n| n == segment)
        .of(segment)
        .collect();
    let all = groundtruth::compare(values.iter().copied(), truth, tolerance_ns);
    let referenced = groundtruth::compare(
        values
            .iter()
            .copied()
            .filter(|(f, off, _)| !held_up(f, *off)),
        truth,
        tolerance_ns,
    );
    let pairs: Vec<(i64, i64, i64, bool)> = values
        .iter()
        .filter_map(|(f, off, v)| {
            truth
                .for_byte(f, *off as u32)
                .map(|w| (w.sent_ns, *v, w.one_way_ns(), held_up(f, *off)))
        })
        .collect();
    let start = pairs.iter().map(|p| p.0).min().unwrap_or(0);
    let mut misses: Vec<_> = pairs
        .iter()
        .filter(|(_, v, w, _)| (v - w).abs() > tolerance_ns)
        .collect();
    misses.sort_unstable();
    for (sent, v, w, held) in misses.iter().take(40) {
        eprintln!(
            "  miss at +{:.3} s: ours {:.1} µs, capture {:.1} µs, diff {:.1} µs{}",
            (sent - start) as f64 / 1e9,
            *v as f64 / 1e3,
            *w as f64 / 1e3,
            (v - w) as f64 / 1e3,
            if *held {
                " (held up beside a capture)"
            } else {
                ""
            }
        );
    }
    let mut diffs: Vec<i64> = pairs.iter().map(|(_, v, w, _)| v - w).collect();
    diffs.sort_unstable();
    CaptureAgreement {
        all,
        referenced,
        held_up: [
            (sent.bytes.len(), sent.compared),
            (received.bytes.len(), received.compared),
        ],
        median_diff_ns: diffs.get(diffs.len() / 2).copied().unwrap_or(0),
    }
}
