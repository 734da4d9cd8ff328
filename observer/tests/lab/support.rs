//! Running observers and traffic in lab hosts, and reading what the observers recorded.
use latplan_common::Layer;
use latplan_common::wire::{Frame, FrameReader, Sample, Stats};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const METAL1: &str = "lp-metal1";
pub const METAL2: &str = "lp-metal2";
pub const METAL2_WAN: &str = "10.78.0.2";

pub fn observer_bin() -> PathBuf {
    let p = labtools::testlab::artifacts_dir().join("observer");
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build --release --target x86_64-unknown-linux-musl -p observer`",
        p.display()
    );
    p
}

pub fn lab_traffic() -> PathBuf {
    let p = labtools::testlab::state_dir().join("lab/bin/lab-traffic");
    assert!(
        p.exists(),
        "{} missing: `ci/lab up` installs it",
        p.display()
    );
    p
}

/// `ci/lab ARGS`, for tests that hold the lab lock.
pub fn ci_lab(args: &[&str]) {
    let o = Command::new(labtools::testlab::workspace_root().join("ci/lab"))
        .args(args)
        .env("LATPLAN_LAB_LOCKED", "1")
        .output()
        .expect("run ci/lab");
    assert!(
        o.status.success(),
        "ci/lab {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A running observer inside a lab namespace, writing its stream and log to a temp dir.
pub struct Observer {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Observer {
    pub fn start(netns: &str, args: &[&str]) -> Observer {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::fs::File::create(dir.path().join("stream")).unwrap();
        let err = std::fs::File::create(dir.path().join("log")).unwrap();
        // `ip netns exec` execs the observer: the child's PID is the observer's.
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(observer_bin())
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn observer");
        let o = Observer { child, dir };
        o.wait_attached();
        o
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn wait_attached(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let log = self.log();
            if log.contains("observer: attached") {
                return;
            }
            assert!(
                !log.contains("observer: error"),
                "observer failed to start: {log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("observer did not attach within 60 s: {}", self.log());
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, wait, and decode the stream.
    pub fn stop(mut self) -> Recorded {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let st = self.child.wait().expect("wait observer");
        assert!(st.success(), "observer exited with {st}: {}", self.log());
        Recorded::read(&self)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: our own child.
            unsafe { libc::kill(self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

pub struct Recorded {
    pub samples: Vec<Sample>,
    pub stats: Vec<Stats>,
    pub bye: bool,
    pub log: String,
}

impl Recorded {
    fn read(o: &Observer) -> Recorded {
        let f = std::fs::File::open(o.dir.path().join("stream")).unwrap();
        let mut r = FrameReader::new(f);
        let mut rec = Recorded {
            samples: Vec::new(),
            stats: Vec::new(),
            bye: false,
            log: o.log(),
        };
        let mut next_seq = 0;
        while let Some(frame) = r.next_frame().expect("stream decodes") {
            match frame {
                Frame::Samples { first_seq, samples } => {
                    assert_eq!(
                        first_seq, next_seq,
                        "record sequence numbers are contiguous"
                    );
                    next_seq += samples.len() as u64;
                    rec.samples.extend(samples);
                }
                Frame::Stats(s) => rec.stats.push(s),
                Frame::Bye(_) => rec.bye = true,
                Frame::Hello(_) => {}
            }
        }
        rec
    }

    /// The last interface counters the observer logged, by interface name.
    pub fn interface_counters(&self) -> HashMap<String, serde_json::Value> {
        let line = self
            .log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("observer: interfaces "))
            .expect("observer logged interface counters");
        let v: Vec<serde_json::Value> = serde_json::from_str(line).unwrap();
        v.into_iter()
            .map(|x| (x["name"].as_str().unwrap().to_string(), x))
            .collect()
    }

    /// First record per (layer, 32-bit sequence number) of the flow with destination port `port`.
    pub fn first_seen(&self, port: u16) -> HashMap<(Layer, u32), &Sample> {
        let mut m: HashMap<(Layer, u32), &Sample> = HashMap::new();
        for s in self.samples.iter().filter(|s| s.dport == port) {
            let e = m.entry((s.layer, s.offset as u32)).or_insert(s);
            if s.ts_ns < e.ts_ns {
                *e = s;
            }
        }
        m
    }

    pub fn count(&self, layer: Layer, port: u16) -> usize {
        self.samples
            .iter()
            .filter(|s| s.layer == layer && s.dport == port)
            .count()
    }
}

/// A TCP receiver (lab-traffic tcp-recv) in `netns`, listening on `addr`.
pub fn tcp_recv(netns: &str, addr: &str, extra: &[&str]) -> Receiver {
    let c = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(lab_traffic())
        .args(["tcp-recv", "--listen", addr])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tcp-recv");
    std::thread::sleep(Duration::from_millis(300));
    Receiver(Some(c))
}

/// A running tcp-recv, killed when dropped unless [`wait_ok`] saw it finish: a test that fails
/// before its sender connects would otherwise leave it listening for ever, holding the test
/// run's output open (a pipeline reading that output then never ends).
pub struct Receiver(Option<Child>);

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a TCP sender (lab-traffic tcp-send) to completion.
pub fn tcp_send(netns: &str, addr: &str, extra: &[&str]) {
    let o = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(lab_traffic())
        .args(["tcp-send", "--connect", addr])
        .args(extra)
        .output()
        .expect("run tcp-send");
    assert!(
        o.status.success(),
        "tcp-send failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn wait_ok(mut r: Receiver, what: &str) {
    let st =
        r.0.take()
            .expect("not waited for yet")
            .wait()
            .expect("wait");
    assert!(st.success(), "{what} exited with {st}");
}

/// The median of a list of signed nanosecond values.
pub fn median(mut v: Vec<i64>) -> i64 {
    assert!(!v.is_empty(), "no values to take a median of");
    v.sort_unstable();
    v[v.len() / 2]
}

/// Median per-segment delay between consecutive layers, over sampled bytes seen at both.
pub fn segment_medians(
    rec: &Recorded,
    port: u16,
    path: &[Layer],
) -> Vec<(Layer, Layer, i64, usize)> {
    let first = rec.first_seen(port);
    let mut out = Vec::new();
    for w in path.windows(2) {
        let mut d = Vec::new();
        for ((l, seq), s) in &first {
            if *l == w[0]
                && let Some(n) = first.get(&(w[1], *seq))
            {
                d.push(n.ts_ns as i64 - s.ts_ns as i64);
            }
        }
        let n = d.len();
        out.push((w[0], w[1], if n > 0 { median(d) } else { 0 }, n));
    }
    out
}

pub const SEND_PATH: [Layer; 5] = [
    Layer::SockSend,
    Layer::TcpSend,
    Layer::IpSend,
    Layer::DevSend,
    Layer::DevXmit,
];
pub const RECV_PATH: [Layer; 5] = [
    Layer::DevRecv,
    Layer::IpRecv,
    Layer::TcpRecv,
    Layer::SockQueue,
    Layer::SockRecv,
];
