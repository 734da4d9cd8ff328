//! `latplan apply` and `latplan teardown` on the lab (issue: a measurement session end to end).
//! Needs root and the lab (`ci/lab up`); fails with the reason otherwise.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use labtools::testlab::{self, lab_inventory, ns_command, take_lab};

mod clocks;
mod layers;
mod masters;
mod redis_apply;
mod redis_observer;
mod steps;

const LATPLAN: &str = env!("CARGO_BIN_EXE_latplan");
const HOSTS: [&str; 4] = ["metal1", "metal2", "vm1", "vm2"];

pub fn latplan(args: &[&str]) -> Output {
    testlab::run_latplan(LATPLAN, args)
}

pub fn text(o: &Output) -> String {
    testlab::output_text(o)
}

fn install_dir(host: &str) -> PathBuf {
    testlab::state_dir().join("lab/hosts").join(host)
}

/// Every lab kernel host's `bin/observer` is the artifact `file` (observer or observer-ssh).
fn assert_installed_observer_is(file: &str) {
    let want = std::fs::read(testlab::artifacts_dir().join(file)).unwrap();
    for h in ["metal1", "metal2", "vm1", "vm2"] {
        let got = std::fs::read(install_dir(h).join("bin/observer")).unwrap();
        assert!(got == want, "{h}: bin/observer is not the artifact {file}");
    }
}

fn lab_traffic() -> PathBuf {
    let p = testlab::state_dir().join("lab/bin/lab-traffic");
    assert!(
        p.exists(),
        "{} is missing: ci/lab up installs it",
        p.display()
    );
    p
}

/// Names of the eBPF programs of ours loaded in the kernel.
fn our_programs() -> Vec<String> {
    let o = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "name").nth(1))
        .filter(|n| n.starts_with("lp_"))
        .map(str::to_string)
        .collect()
}

/// Our processes: anything running from a lab host's install dir.
fn our_processes() -> Vec<String> {
    let o = Command::new("pgrep")
        .args(["-af", "latplan-ci/lab/hosts/"])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A bulk TCP flow from the container on metal1 to the VM on metal2, across the wan relay.
pub struct Traffic {
    _running: testlab::Children,
}

impl Traffic {
    pub fn start(seconds: u32, rate: &str) -> Traffic {
        let bin = lab_traffic();
        let bin = bin.to_str().unwrap();
        let recv = ns_command("lp-vm2", &[bin, "tcp-recv", "--listen", "10.77.2.2:5201"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the receiver");
        std::thread::sleep(Duration::from_millis(300));
        let dur = format!("{seconds}s");
        let send = ns_command(
            "lp-ct1",
            &[
                bin,
                "tcp-send",
                "--connect",
                "10.77.2.2:5201",
                "--duration",
                &dur,
                "--rate",
                rate,
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start the sender");
        Traffic {
            _running: testlab::Children(vec![send, recv]),
        }
    }
}

pub fn assert_clean(when: &str) {
    assert!(
        our_programs().is_empty(),
        "{when}: programs of ours still loaded: {:?}",
        our_programs()
    );
    assert!(
        our_processes().is_empty(),
        "{when}: processes of ours still running: {:?}",
        our_processes()
    );
    for h in HOSTS {
        assert!(
            !install_dir(h).exists(),
            "{when}: {} still exists",
            install_dir(h).display()
        );
    }
}

/// A test's hold on the lab: the lab lock, nothing of ours on the hosts (teardown first), and a
/// fresh SQLite store for the session.
pub struct Fresh {
    _lab: testlab::LabLock,
    pub inv: String,
    store: String,
    _db: tempfile::TempDir,
}

impl Fresh {
    /// Takes the lab (lock), tears down what a previous run left, and makes a fresh store.
    pub fn take() -> Fresh {
        let lab = take_lab();
        let inv = lab_inventory().to_str().unwrap().to_string();
        let t = latplan(&["teardown", &inv]);
        assert!(t.status.success(), "initial teardown: {}", text(&t));
        let db = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", db.path().join("s.db").display());
        Fresh {
            _lab: lab,
            inv,
            store,
            _db: db,
        }
    }
}

#[test]
fn apply_measures_every_segment_then_teardown_leaves_nothing() {
    let f = Fresh::take();
    let (inv, store) = (f.inv.as_str(), f.store.as_str());
    assert_clean("before apply");
    let links_before = root_links();

    let _traffic = Traffic::start(30, "20M");
    let run = latplan(&[
        "apply",
        inv,
        "--duration",
        "12s",
        "--store",
        store,
        "--session",
        "it-1",
    ]);
    let out = text(&run);
    assert!(run.status.success(), "apply failed: {out}");
    for segment in [
        "e2e ct1→vm2",
        "ct1:sock_send→tcp_send",
        "ct1:tcp_send→ip_send",
        "vhop ct1:",
        "metal1:dev_send(wan0)→dev_xmit(wan0)",
        "net metal1:wan0→metal2:wan0",
        "vhop metal2:tap-vm2→vm2:eth0",
        "vm2:tcp_recv→sock_queue",
        "vm2:sock_queue→sock_recv",
    ] {
        assert!(out.contains(segment), "the report lacks {segment:?}: {out}");
    }
    assert!(
        out.contains("failed=0 unreachable=0"),
        "every host ran cleanly: {out}"
    );
    // A session on the SSH bus pushes the observer built without the Redis sink.
    assert_installed_observer_is("observer-ssh");
    // How long each phase took, for the user reading the output.
    for phase in [
        "connected to 4 of 4 host(s) in ",
        "facts and pushes on 4 host(s) in ",
    ] {
        assert!(out.contains(phase), "apply did not report {phase:?}: {out}");
    }

    // Converged hosts: a second apply changes nothing.
    let again = latplan(&["apply", inv, "--check"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("changed=0 failed=0 unreachable=0")
            && text(&again).contains("facts on 4 host(s) in "),
        "{}",
        text(&again)
    );

    let t1 = latplan(&["teardown", inv]);
    assert!(t1.status.success(), "{}", text(&t1));
    assert!(
        text(&t1).contains("changed=4"),
        "teardown removes each host's directory: {}",
        text(&t1)
    );
    assert_clean("after teardown");
    assert_eq!(
        root_links(),
        links_before,
        "links of the root namespace changed"
    );
    let t2 = latplan(&["teardown", inv]);
    assert!(t2.status.success(), "{}", text(&t2));
    assert!(
        text(&t2).contains("ok=4 changed=0"),
        "second teardown is a no-op: {}",
        text(&t2)
    );
}

#[test]
fn a_manager_killed_mid_session_leaves_observers_that_expire_and_teardown_cleans() {
    let f = Fresh::take();
    let (inv, store) = (f.inv.as_str(), f.store.as_str());
    let tmp = tempfile::tempdir().unwrap();
    let mut apply = spawn_apply(inv, "120s", store, false, tmp.path());
    wait_for_observer("metal1", &mut apply);
    std::thread::sleep(Duration::from_secs(2));
    apply.kill().unwrap(); // SIGKILL: no chance to clean up
    apply.wait().unwrap();
    let killed = Instant::now();
    // The lease is 15 s: every observer detaches and exits within it (plus a margin).
    while HOSTS
        .iter()
        .any(|h| pid_file_alive(&install_dir(h), "observer"))
    {
        assert!(
            killed.elapsed() < Duration::from_secs(25),
            "observers outlived their lease: {:?}",
            our_processes()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !masters::naming(tmp.path()).is_empty(),
        "a killed latplan cannot end its masters: the next one sweeps them"
    );
    let t = masters::latplan_in(tmp.path(), &["teardown", inv]);
    assert!(t.status.success(), "{}", text(&t));
    assert_clean("after teardown of a killed session");
    masters::assert_no_masters(tmp.path(), "after the next latplan");
}

/// Starts `latplan apply` in the background with `tmp` as its temporary directory (where its
/// SSH control directory goes); `capture` keeps its output for the test to read.
fn spawn_apply(inv: &str, duration: &str, store: &str, capture: bool, tmp: &Path) -> Child {
    let out = || {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    Command::new(LATPLAN)
        .args(["apply", inv, "--duration", duration, "--store", store])
        .env("LATPLAN_ARTIFACTS", testlab::artifacts_dir())
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("start latplan apply")
}

/// Waits until `host`'s observer runs (its PID file names a live process), at most 60 s.
fn wait_for_observer(host: &str, apply: &mut Child) {
    let started = Instant::now();
    while !pid_file_alive(&install_dir(host), "observer") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{host}'s observer did not start within 60 s"
        );
        assert!(
            apply.try_wait().unwrap().is_none(),
            "apply ended before {host}'s observer started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pid_file_alive(dir: &Path, name: &str) -> bool {
    std::fs::read_to_string(dir.join("run").join(format!("{name}.pid")))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn root_links() -> Vec<String> {
    let o = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_host_lost_mid_session_is_reported_and_the_others_finish() {
    let f = Fresh::take();
    let (inv, store) = (f.inv.as_str(), f.store.as_str());
    let _traffic = Traffic::start(40, "10M");
    let tmp = tempfile::tempdir().unwrap();
    let mut apply = spawn_apply(inv, "20s", store, true, tmp.path());
    wait_for_observer("vm1", &mut apply);
    std::thread::sleep(Duration::from_secs(3));
    // The host dies: everything running in its namespace (sshd, its sessions, the observer).
    let pids = Command::new("ip")
        .args(["netns", "pids", "lp-vm1"])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let out = apply.wait_with_output().unwrap();
    let report = text(&out);
    let left = (
        masters::naming(tmp.path()),
        masters::control_dirs(tmp.path()),
    );
    // Bring the lab's vm1 back before anything can fail, so later tests find it whole.
    testlab::ci_lab(&["up"]);
    assert_eq!(
        left,
        (Vec::new(), Vec::new()),
        "latplan ended every ssh master it started (the lost vm1's too) and removed its control directory"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed host makes the exit code 1: {report}"
    );
    let vm1 = report
        .lines()
        .find(|l| l.contains("│ vm1") && l.contains("failed"))
        .unwrap_or_else(|| panic!("vm1 is not reported failed: {report}"));
    assert!(
        vm1.contains("observer"),
        "the reason names the observer: {vm1}"
    );
    for h in ["metal1", "metal2", "vm2"] {
        assert!(
            !report
                .lines()
                .any(|l| l.contains(&format!("│ {h} ")) && l.contains("failed")),
            "{h} should have finished: {report}"
        );
    }
    assert!(
        report.contains("e2e ct1→vm2"),
        "the others' report is printed: {report}"
    );
    let t = latplan(&["teardown", inv]);
    assert!(t.status.success(), "{}", text(&t));
    assert_clean("after teardown");
}

/// Redis at 127.0.0.1:6379, as ci/setup starts it.
pub fn require_redis() {
    let ok = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
    assert!(
        ok,
        "Redis is not answering at 127.0.0.1:6379: run ci/setup (it starts redis-server)"
    );
}

/// Polls `cond` every 100 ms for at most `limit`; fails naming `what`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
