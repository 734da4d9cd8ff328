//! The step scripts run for real with the local `sh` (no lab needed): a background process and
//! everything it forks is stopped, `creates` skips, a command that dies at once is reported.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;
use crate::transport::LocalTransport;

fn sh(script: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh")
}

/// Processes whose command line contains `marker` (zombies have none, so they do not count).
fn running(marker: &str) -> usize {
    let o = Command::new("pgrep").args(["-f", marker]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().count()
}

/// Waits (at most 5 s) until no process carries `marker`.
fn wait_gone(marker: &str, what: &str) {
    let t = Instant::now();
    while running(marker) > 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_background_process_and_its_children_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("latplan-step-test-{}", std::process::id());
    // A pipeline that forks: the group, not one PID, must go.
    let cmd = format!("sh -c 'sleep 300; : {marker}-a' & exec sh -c 'sleep 301; : {marker}-b'");
    let o = sh(&start_script(dir.path(), "h1.load", &cmd));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("started: "));
    assert!(dir.path().join("h1.load.pid").is_file());
    let again = sh(&start_script(dir.path(), "h1.load", &cmd));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already running"),
        "a second start finds it running"
    );
    assert!(running(&marker) >= 2, "both processes run");

    let stop = sh(&stop_script(dir.path()));
    assert!(stop.status.success());
    let said = String::from_utf8_lossy(&stop.stdout);
    assert!(said.contains("removed: step:h1.load("), "{said}");
    wait_gone(&marker, "step processes survived the stop");
    assert!(!dir.path().join("h1.load.pid").exists(), "PID file removed");
    let twice = sh(&stop_script(dir.path()));
    assert_eq!(String::from_utf8_lossy(&twice.stdout).trim(), "removed:");
}

#[test]
fn a_process_that_ends_at_once_fails_with_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let o = sh(&start_script(
        dir.path(),
        "h1.bad",
        "echo no such thing >&2; exit 3",
    ));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("exit 3") && err.contains("no such thing"),
        "{err}"
    );
    assert!(!dir.path().join("h1.bad.pid").exists());
}

#[test]
fn stop_ignores_pid_files_that_name_no_process_group() {
    let dir = tempfile::tempdir().unwrap();
    for (n, p) in [
        ("a", ""),
        ("b", "1"),
        ("c", "-1"),
        ("d", "x1"),
        ("e", "999999999"),
    ] {
        std::fs::write(dir.path().join(format!("h.{n}.pid")), p).unwrap();
    }
    let o = sh(&stop_script(dir.path()));
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "removed:");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let missing = sh(&stop_script(&dir.path().join("none")));
    assert!(missing.status.success());
}

#[test]
fn run_skips_when_creates_exists() {
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made");
    let cmd = format!("echo once >> {}", made.display());
    assert!(sh(&run_script(&cmd, Some(&made))).status.success());
    let o = sh(&run_script(&cmd, Some(&made)));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("skipped:"));
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "once\n");
    assert!(!sh(&run_script("exit 4", None)).status.success());
}

/// A local host (connection: local) runs the steps of a steps.yaml end to end: order across
/// plays, `creates`, a failure that stops that host's later steps, stop at the end.
#[test]
fn steps_run_in_order_on_a_local_host() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let install = d.join("install");
    let out = d.join("out");
    std::fs::write(
        d.join("hosts.yaml"),
        format!(
            "all:\n  hosts:\n    m1: {{connection: local, install_dir: {}, interfaces: [lo]}}\n",
            install.display()
        ),
    )
    .unwrap();
    let marker = format!("latplan-steps-local-{}", std::process::id());
    std::fs::write(
        d.join("steps.yaml"),
        format!(
            "- hosts: m1\n  steps:\n    - run: {{name: first, command: 'echo 1 >> {o}', creates: {o}.never}}\n\
             - hosts: all\n  steps:\n    - start: {{name: bg, command: 'sleep 300 # {marker}'}}\n\
             \x20   - run: {{name: second, command: 'echo {{{{ host.name }}}} >> {o}'}}\n\
             \x20   - run: {{name: skipped, command: 'echo no >> {o}', creates: {o}}}\n\
             \x20   - run: {{name: fails, command: 'exit 7'}}\n\
             \x20   - run: {{name: after, command: 'echo after >> {o}'}}\n",
            o = out.display()
        ),
    )
    .unwrap();
    let inv = crate::inventory::load(d).unwrap_or_else(|e| panic!("{e}"));
    let t: Arc<dyn Transport> = Arc::new(LocalTransport::new("m1", Duration::from_secs(30)));
    let connected = BTreeMap::from([("m1".to_string(), t.clone())]);
    let live = BTreeSet::from(["m1".to_string()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(run_steps(&inv, &connected, &live));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "1\nm1\n");
    assert!(
        outcome.failed["m1"].contains("fails"),
        "{:?}",
        outcome.failed
    );
    assert!(
        outcome.failed["m1"].contains("steps.yaml:"),
        "names the file and line"
    );
    assert_eq!(outcome.started_on, BTreeSet::from(["m1".to_string()]));
    assert_eq!(running(&marker), 1);
    rt.block_on(stop_started(&inv, &connected, &outcome.started_on));
    wait_gone(&marker, "the background step survived");
    assert!(Path::new(&install).join("run/steps/m1.bg.log").exists());
}
