//! The user's steps (steps.yaml) in a real session: a traffic generator started by `apply` inside
//! a container (through its parent), measured by the session, stopped at its end, and killed by
//! teardown when the manager died before it could stop it.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{
    Fresh, assert_clean, install_dir, lab_traffic, latplan, our_programs, spawn_apply, text,
};
use labtools::testlab::lab_inventory;

/// A marker no other test uses: the sender's `--duration` names it in its command line.
const SEND_SECONDS: &str = "3613s";

/// An inventory directory: the lab's hosts plus a steps.yaml that starts the traffic.
fn inventory_with_steps() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        lab_inventory().join("hosts.yaml"),
        d.path().join("hosts.yaml"),
    )
    .unwrap();
    let bin = lab_traffic();
    std::fs::write(
        d.path().join("steps.yaml"),
        format!(
            "- hosts: vm2\n  steps:\n    - start:\n        name: recv\n        \
             command: \"{bin} tcp-recv --listen {{{{ host.address }}}}:5201\"\n\
             - hosts: ct1\n  steps:\n    - start:\n        name: send\n        \
             command: \"{bin} tcp-send --connect {{{{ hostvars.vm2.address }}}}:5201 --duration {SEND_SECONDS} --rate 10M --connect-timeout 30s\"\n",
            bin = bin.display()
        ),
    )
    .unwrap();
    d
}

/// PIDs of the step processes (the sender, by its unique duration; the receiver it talks to).
fn step_pids() -> Vec<u32> {
    let o = Command::new("pgrep")
        .args([
            "-f",
            &format!(
                "lab-traffic tcp-(send .*--duration {SEND_SECONDS}|recv --listen 10.77.2.2:5201)"
            ),
        ])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn pid_file(host_dir: &str, stem: &str) -> PathBuf {
    install_dir(host_dir)
        .join("run/steps")
        .join(format!("{stem}.pid"))
}

/// Waits (at most 60 s) for a step's PID file to name a live process; returns the PID.
fn wait_for_step(file: &Path, apply: &mut std::process::Child) -> u32 {
    let t = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            return pid;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} did not appear within 60 s",
            file.display()
        );
        assert!(
            apply.try_wait().unwrap().is_none(),
            "apply ended before the step started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn netns_of(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino()
}

fn wait_gone(when: &str) {
    let t = Instant::now();
    while !step_pids().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{when}: step processes left: {:?}",
            step_pids()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_step_starts_traffic_in_a_container_the_report_shows_it_and_teardown_kills_it() {
    let f = Fresh::take();
    let inv_dir = inventory_with_steps();
    let inv = inv_dir.path().to_str().unwrap();
    assert!(
        step_pids().is_empty(),
        "step processes before the test: {:?}",
        step_pids()
    );

    // The plan shows the steps, each on its host.
    let plan = latplan(&["plan", inv, "--offline"]);
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(text(&plan).contains("send on ct1: "), "{}", text(&plan));
    assert!(text(&plan).contains("recv on vm2: "), "{}", text(&plan));

    // A whole session: the sender runs inside ct1's namespace, the report has its flow.
    let tmp = tempfile::tempdir().unwrap();
    let mut apply = spawn_apply(inv, "10s", &f.store, true, tmp.path());
    let send = wait_for_step(&pid_file("metal1", "ct1.send"), &mut apply);
    let ct1_ns = std::fs::metadata("/run/netns/lp-ct1").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    assert_eq!(
        Some(netns_of(send)),
        ct1_ns.ok(),
        "the sender runs inside the container"
    );
    let out = apply.wait_with_output().unwrap();
    let report = text(&out);
    assert!(out.status.success(), "apply failed: {report}");
    assert!(
        report.contains("e2e ct1→vm2"),
        "the report lacks the step's flow: {report}"
    );
    assert!(report.contains("ct1: start `send`: started: "), "{report}");
    wait_gone("after the session");
    let t = latplan(&["teardown", inv]);
    assert!(t.status.success(), "{}", text(&t));
    assert_clean("after teardown");

    // The manager dies mid-session: its steps go on running until teardown kills them.
    let tmp = tempfile::tempdir().unwrap();
    let mut apply = spawn_apply(inv, "120s", &f.store, false, tmp.path());
    wait_for_step(&pid_file("metal1", "ct1.send"), &mut apply);
    wait_for_step(&pid_file("vm2", "vm2.recv"), &mut apply);
    apply.kill().unwrap();
    apply.wait().unwrap();
    assert!(
        !step_pids().is_empty(),
        "steps run on after the manager died"
    );
    // With the killed latplan's TMPDIR: this teardown also ends the masters it left.
    let t = super::masters::latplan_in(tmp.path(), &["teardown", inv]);
    assert!(t.status.success(), "{}", text(&t));
    // At least one of the pair is still running (the pair ends together once one side goes: the
    // receiver reads one connection to its end), and teardown must be seen stopping it.
    assert!(
        text(&t).contains("step:ct1.send(") || text(&t).contains("step:vm2.recv("),
        "teardown says it stopped the step: {}",
        text(&t)
    );
    wait_gone("after teardown");
    // Teardown killed live observers (the lease had not run out): the kernel frees the programs
    // of a process that ended asynchronously, so give it a bounded moment.
    let t = Instant::now();
    while !our_programs().is_empty() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_clean("after teardown of a killed session");
}
