//! The lab as the accuracy tests use it: the lock, a clean slate, a scratch store and inventory,
//! traffic, relay settings, and real `latplan apply` + `latplan report` runs.
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use labtools::relay::Dir;
use labtools::testlab::{self, lab_inventory, ns_command, take_lab};
use labtools::{queuelog, txstamp};

use crate::capture::Captures;
use crate::report::Report;

pub const LATPLAN: &str = env!("CARGO_BIN_EXE_latplan");

/// Ports every session samples (the lab inventory's list is replaced by this one).
const PORTS: &str = "[5201, 5202, 5203]";

fn latplan(args: &[&str]) -> Output {
    testlab::run_latplan(LATPLAN, args)
}

pub fn text(o: &Output) -> String {
    testlab::output_text(o)
}

fn lab_traffic() -> String {
    let p = testlab::state_dir().join("lab/bin/lab-traffic");
    assert!(
        p.exists(),
        "{} is missing: ci/lab up installs it",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// One TCP flow between two lab namespaces, made by lab-traffic.
#[derive(Debug, Clone)]
pub struct Flow {
    pub from_netns: &'static str,
    pub to_netns: &'static str,
    /// Receiver's listening address, `ip:port`.
    pub to: &'static str,
    /// Extra `tcp-send` arguments (pacing, write size, buffers).
    pub send: &'static [&'static str],
    /// Extra `tcp-recv` arguments (read rate, receive buffer).
    pub recv: &'static [&'static str],
    /// Whether the sender logs the kernel's transmit stamps of its writes (`--tx-stamps`).
    pub stamp_tx: bool,
}

/// Running flows; killed when dropped (also when a test fails).
struct Traffic(testlab::Children);

impl Traffic {
    /// Starts the flows; each end logs its socket's queue to `queue_log(dir, flow, end)`.
    fn start(flows: &[Flow], dir: &Path) -> Traffic {
        let bin = lab_traffic();
        let mut t = Traffic(testlab::Children(Vec::new()));
        for f in flows {
            let log = queue_log(dir, f, End::Receiver);
            let mut argv = vec![bin.as_str(), "tcp-recv", "--listen", f.to];
            argv.extend_from_slice(&["--queue-log", log.to_str().unwrap()]);
            argv.extend_from_slice(f.recv);
            t.0.0.push(
                ns_command(f.to_netns, &argv)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a receiver"),
            );
        }
        for f in flows {
            // Longer than any session: the flow is killed when the session is over.
            let mut argv = vec![
                bin.as_str(),
                "tcp-send",
                "--connect",
                f.to,
                "--duration",
                "600s",
            ];
            let log = queue_log(dir, f, End::Sender);
            argv.extend_from_slice(&["--queue-log", log.to_str().unwrap()]);
            let stamps = tx_stamp_log(dir, f);
            if f.stamp_tx {
                argv.extend_from_slice(&["--tx-stamps", stamps.to_str().unwrap()]);
            }
            argv.extend_from_slice(f.send);
            t.0.0.push(
                // Killed at the end of the session: its complaint about that is noise.
                ns_command(f.from_netns, &argv)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a sender"),
            );
        }
        t
    }
}

/// Which end of a flow, and so which socket queue: the sender's send buffer or the receiver's
/// receive queue.
#[derive(Debug, Clone, Copy)]
pub enum End {
    Sender,
    Receiver,
}

fn queue_log(dir: &Path, f: &Flow, end: End) -> PathBuf {
    let to = f.to.replace([':', '.'], "_");
    dir.join(format!("queue-{end:?}-{to}.jsonl").to_lowercase())
}

fn tx_stamp_log(dir: &Path, f: &Flow) -> PathBuf {
    dir.join(format!("tx-stamps-{}.jsonl", f.to.replace([':', '.'], "_")))
}

/// What one session does: its flows, the sampling period, and whether the wan is captured.
pub struct SessionSpec<'a> {
    pub name: &'a str,
    pub flows: &'a [Flow],
    /// Bytes of sequence space per sample point (a power of two).
    pub sample_size: u64,
    pub duration: &'a str,
    pub capture_wan: bool,
    /// Declare vm1 in metal1's clock domain instead of its own (see the VM-hop test).
    pub vm1_on_metal1_clock: bool,
}

/// A finished session: its report, and the wan captures if asked for.
pub struct Session {
    pub name: String,
    pub report: Report,
    pub captures: Option<Captures>,
    dir: PathBuf,
}

impl Session {
    /// The report's observed span of its flows from `src` to `dst` (manager timeline, ns).
    fn flow_span(&self, src: &str, dst: &str) -> (i64, i64) {
        let flows: Vec<_> = self
            .report
            .flows
            .iter()
            .filter(|x| x.src_host == src && x.dst_host == dst)
            .collect();
        assert!(!flows.is_empty(), "the report has no flow {src}→{dst}");
        let from = flows.iter().map(|x| x.start_ns).min().unwrap();
        let to = flows.iter().map(|x| x.end_ns).max().unwrap();
        (from, to)
    }

    /// The sender's writes' qdisc waits by the kernel's own transmit stamps (SND − SCHED,
    /// lab-traffic `--tx-stamps`), by the sequence number of each write's last byte, while the
    /// report's flows from `src` to `dst` were observed, sorted by wait; and how many writes
    /// were left out as ambiguous or unpaired.
    pub fn qdisc_waits(&self, f: &Flow, src: &str, dst: &str) -> (Vec<(u32, i64)>, usize) {
        assert!(f.stamp_tx, "the flow to {} was not stamped", f.to);
        let (from, to) = self.flow_span(src, dst);
        let path = tx_stamp_log(&self.dir, f);
        let stamps = txstamp::read(&path).unwrap_or_else(|e| panic!("{e:#}"));
        txstamp::qdisc_waits(&stamps, from, to)
    }

    /// One end's own account of its socket's queue while the report's flows from `src` to `dst`
    /// were observed (lab-traffic `--queue-log`): the bytes' mean wait by Little's law, in ns,
    /// and how many bytes left the queue. The report's flow bounds are on the manager's
    /// timeline, CLOCK_MONOTONIC, which every lab namespace shares with lab-traffic.
    pub fn queue_wait(&self, f: &Flow, end: End, src: &str, dst: &str) -> (f64, u64) {
        let (from, to) = self.flow_span(src, dst);
        let path = queue_log(&self.dir, f, end);
        let lines = queuelog::read(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let (wait, left) = queuelog::mean_wait_ns(&lines, from as u64, to as u64);
        assert!(
            left > 0,
            "{}: no bytes left the queue during the session",
            path.display()
        );
        (wait, left)
    }
}

/// The test's hold on the lab: the lab lock, nothing of ours left on the hosts, a scratch
/// directory with the store, and the relays put back as they were when dropped.
pub struct Lab {
    pub store: String,
    pub dir: tempfile::TempDir,
    _relays: Vec<testlab::RelayRestore>,
    _lock: testlab::LabLock,
}

impl Lab {
    pub fn take() -> Lab {
        let lock = take_lab();
        let inv = lab_inventory();
        let t = latplan(&["teardown", inv.to_str().unwrap()]);
        assert!(t.status.success(), "initial teardown: {}", text(&t));
        let dir = tempfile::tempdir().expect("scratch dir");
        let store = format!("sqlite://{}", dir.path().join("store.db").display());
        let relays = ["wan", "vm1"]
            .into_iter()
            .map(testlab::RelayRestore::new)
            .collect();
        let lab = Lab {
            store,
            dir,
            _relays: relays,
            _lock: lock,
        };
        lab.relay("wan", Dir::Both, 0);
        lab.relay("vm1", Dir::Both, 0);
        lab
    }

    /// Puts a token bucket of `rate` (tc syntax, e.g. `40mbit`) on a lab interface as its root
    /// qdisc, so what the interface sends waits in a real qdisc; taken off when the returned
    /// guard is dropped. The lab's interfaces have none of their own (noqueue).
    pub fn rate_limit(&self, netns: &'static str, dev: &'static str, rate: &str) -> RateLimit {
        let shown = text(&testlab::ns_exec(
            netns,
            &["tc", "qdisc", "show", "dev", dev],
        ));
        assert!(
            shown.contains("noqueue"),
            "{netns} {dev} already has a qdisc, which this test would replace: {shown}"
        );
        let guard = RateLimit { netns, dev };
        let set = testlab::ns_exec(
            netns,
            &[
                "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "16k",
                "limit", "1m",
            ],
        );
        assert!(set.status.success(), "tbf on {netns} {dev}: {}", text(&set));
        guard
    }

    /// Sets a relay's one-way delay (no loss) in one or both directions.
    pub fn relay(&self, name: &str, dir: Dir, delay_ns: u64) {
        testlab::relay_set(name, dir, Some(delay_ns), Some(0.0));
    }

    /// The lab inventory with another sampling period and the test's ports; optionally vm1 in
    /// metal1's clock domain (true in the lab: every namespace runs on the same kernel).
    fn inventory(&self, sample_size: u64, vm1_on_metal1_clock: bool) -> PathBuf {
        assert!(sample_size.is_power_of_two());
        let src = std::fs::read_to_string(lab_inventory().join("hosts.yaml"))
            .expect("read the lab inventory");
        let (size, ports) = ("size: 65536", "ports: [5201]");
        assert!(
            src.contains(size) && src.contains(ports),
            "inventory/lab/hosts.yaml no longer has `{size}` and `{ports}`: update this test"
        );
        let mut text = src
            .replace(size, &format!("size: {sample_size}"))
            .replace(ports, &format!("ports: {PORTS}"));
        if vm1_on_metal1_clock {
            let domain = "clock_domain: vm1";
            assert!(
                text.contains(domain),
                "inventory/lab/hosts.yaml no longer has `{domain}`: update this test"
            );
            text = text.replace(domain, "clock_domain: metal1");
        }
        let d = self.dir.path().join(format!(
            "inventory-{sample_size}-{}",
            if vm1_on_metal1_clock { "vm1m1" } else { "std" }
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hosts.yaml"), text).unwrap();
        d
    }

    /// Runs a real session: traffic (and captures) first, then `latplan apply` for the duration,
    /// then `latplan report --format json`.
    pub fn session(&self, spec: &SessionSpec) -> Session {
        let inv = self.inventory(spec.sample_size, spec.vm1_on_metal1_clock);
        let captures = spec
            .capture_wan
            .then(|| Captures::start(self.dir.path(), spec.name));
        let traffic_dir = self.dir.path().join(format!("traffic-{}", spec.name));
        std::fs::create_dir_all(&traffic_dir).expect("traffic log directory");
        let traffic = Traffic::start(spec.flows, &traffic_dir);
        // The flows connect and settle (slow start, buffers) before the measurement.
        std::thread::sleep(Duration::from_secs(1));
        let run = latplan(&[
            "apply",
            inv.to_str().unwrap(),
            "--duration",
            spec.duration,
            "--store",
            &self.store,
            "--session",
            spec.name,
        ]);
        drop(traffic);
        let captures = captures.map(Captures::stop);
        assert!(
            run.status.success(),
            "apply of session {} failed: {}",
            spec.name,
            text(&run)
        );
        Session {
            name: spec.name.to_string(),
            report: self.report(spec.name),
            captures,
            dir: traffic_dir,
        }
    }

    fn report(&self, session: &str) -> Report {
        let o = latplan(&[
            "report",
            session,
            "--store",
            &self.store,
            "--format",
            "json",
        ]);
        assert!(o.status.success(), "report {session}: {}", text(&o));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("report {session} is not the JSON expected: {e}"))
    }
}

/// A token bucket on a lab interface, taken off when dropped (also when a test fails).
pub struct RateLimit {
    netns: &'static str,
    dev: &'static str,
}

impl Drop for RateLimit {
    fn drop(&mut self) {
        let del = testlab::ns_exec(self.netns, &["tc", "qdisc", "del", "dev", self.dev, "root"]);
        if !del.status.success() {
            eprintln!(
                "could not take the tbf off {} {}: {}",
                self.netns,
                self.dev,
                text(&del)
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failed run keeps its store and captures for a look afterwards.
        if std::thread::panicking() || std::env::var_os("LATPLAN_KEEP_SCRATCH").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("scratch kept: {}", self.dir.path().display());
        }
        let inv = lab_inventory();
        let t = latplan(&["teardown", inv.to_str().unwrap()]);
        if !t.status.success() {
            eprintln!("teardown after the accuracy test failed: {}", text(&t));
        }
    }
}
