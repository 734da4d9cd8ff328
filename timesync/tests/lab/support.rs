//! Running reflectors and the prober on the lab.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labtools::testlab::{LabLock, artifacts_dir, take_lab, workspace_root};
use timesync::output::{FitLine, Line, Ready, parse_line};

/// The lab, up and ours for the test.
pub fn lab() -> LabLock {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "timesync lab tests need root"
    );
    take_lab()
}

pub fn bin() -> PathBuf {
    let b = artifacts_dir().join("timesync");
    assert!(
        b.exists(),
        "{} missing: build it with `cargo build --release --target x86_64-unknown-linux-musl -p timesync`",
        b.display()
    );
    b
}

/// A session token of our own, so that nothing else's probes are answered.
pub fn token() -> String {
    format!(
        "{:x}",
        monotonic_ns() ^ (std::process::id() as u64) << 40 | 1
    )
}

pub fn monotonic_ns() -> u64 {
    timesync::ebpf::monotonic_ns()
}

/// A reflector in a lab namespace, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Reflector {
    child: Child,
    pub ready: Ready,
}

impl Reflector {
    pub fn start(netns: &str, iface: &str, token: &str, extra: &[&str]) -> Reflector {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(bin())
            .args(["reflect", "--interface", iface, "--token", token])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start the reflector in {netns}: {e}"));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let n = out
            .read_line(&mut line)
            .expect("read the reflector's ready line");
        if n == 0 {
            let o = child.wait_with_output().unwrap();
            panic!(
                "reflector in {netns} exited: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let ready = match parse_line(line.trim()) {
            Ok(Line::Ready(r)) => r,
            other => {
                panic!("unexpected first line from the reflector in {netns}: {other:?} ({line})")
            }
        };
        Reflector { child, ready }
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid (`ip netns exec` execs the reflector in place).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished prober run's lines.
pub struct Run {
    pub lines: Vec<Line>,
    pub start_ns: u64,
}

impl Run {
    pub fn fits(&self, domain: &str) -> Vec<&FitLine> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Fit(f) if f.fit.domain == domain => Some(f),
                _ => None,
            })
            .collect()
    }

    /// Seconds from the start of probing to this fit.
    pub fn age_s(&self, f: &FitLine) -> f64 {
        f.emitted_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }

    /// Seconds from the start of probing to the domain's (first) error line.
    pub fn error_at_s(&self, domain: &str) -> f64 {
        self.lines
            .iter()
            .find_map(|l| match l {
                Line::Error(e) if e.domain == domain => {
                    Some(e.emitted_ns.saturating_sub(self.start_ns) as f64 / 1e9)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no error line for {domain}"))
    }
}

/// Runs `timesync probe` in the root namespace (the manager) for `secs` and parses its output.
pub fn probe(token: &str, targets: &[&str], secs: f64, extra: &[&str]) -> Run {
    Prober::start(token, targets, secs, extra).finish()
}

/// A `timesync probe` running in the root namespace (the manager) for a fixed time.
pub struct Prober(Child);

impl Prober {
    pub fn start(token: &str, targets: &[&str], secs: f64, extra: &[&str]) -> Prober {
        let mut cmd = Command::new(bin());
        cmd.args(["probe", "--token", token, "--duration", &secs.to_string()]);
        for t in targets {
            cmd.args(["--target", t]);
        }
        let child = cmd
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run timesync probe");
        Prober(child)
    }

    /// Waits for the prober's end and parses its output.
    pub fn finish(self) -> Run {
        let o = self.0.wait_with_output().expect("wait for timesync probe");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "timesync probe failed: {}\n{stdout}",
            String::from_utf8_lossy(&o.stderr)
        );
        let lines: Vec<Line> = stdout
            .lines()
            .map(|l| parse_line(l).unwrap_or_else(|e| panic!("bad output line {l:?}: {e}")))
            .collect();
        let start_ns = match lines.first() {
            Some(Line::Start(s)) => s.start_ns,
            other => panic!("the prober's first line is no start line: {other:?}"),
        };
        assert!(
            matches!(lines.last(), Some(Line::End(_))),
            "the prober did not end cleanly"
        );
        Run { lines, start_ns }
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Loss on a lab relay, set back to none when dropped.
pub struct RelayLoss(&'static str);

fn ci_lab(args: &[&str]) {
    let o = Command::new(workspace_root().join("ci/lab"))
        .args(args)
        .output()
        .expect("run ci/lab");
    assert!(
        o.status.success(),
        "ci/lab {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl RelayLoss {
    pub fn set(relay: &'static str, rate: &str) -> RelayLoss {
        ci_lab(&["loss", relay, rate]);
        RelayLoss(relay)
    }
}

impl Drop for RelayLoss {
    fn drop(&mut self) {
        ci_lab(&["loss", self.0, "0%"]);
    }
}
