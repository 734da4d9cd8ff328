//! `ci/lab down` removes exactly what `ci/lab up` made: three down/up cycles leave the lab's
//! namespaces, root links, processes and mounts as they were.
//!
//! Only the lab's own names are compared (namespaces lp-*, root links lpbr0/lpm-*, processes run
//! from the lab's state directory, mounts under /run/netns): people on a shared machine create their
//! own namespaces meanwhile, which says nothing about the lab.
use labtools::testlab::{ci_lab, lab_dir, take_lab};
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The lab-related state of the machine, normalised: no interface indexes, MACs or namespace ids.
fn snapshot() -> Vec<String> {
    let mut s = Vec::new();
    for l in run("ip", &["netns", "list"]).lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        if name.starts_with("lp-") {
            s.push(format!("netns {name}"));
        }
    }
    for l in run("ip", &["-o", "link"]).lines() {
        // "12: lpm-metal1@if3: <FLAGS> mtu 1500 ... master lpbr0 state UP ... link/ether MAC ..."
        let mut parts = l.splitn(3, ": ");
        let (_, name, rest) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let name = name.split('@').next().unwrap_or(name);
        if name == "lpbr0" || name.starts_with("lpm-") {
            let rest = rest.split("link/").next().unwrap_or(rest).trim();
            s.push(format!("link {name} {rest}"));
        }
    }
    let lab = lab_dir().display().to_string();
    // The daemons up starts: relays run from the lab's bin/, sshds from its config. (ssh clients of
    // lab users also name lab files; they are not the lab's.) sshd's title counts connections: cut.
    let (relay_bin, sshd) = (
        format!("{lab}/bin/"),
        format!("sshd: /usr/sbin/sshd -f {lab}/"),
    );
    for l in run("ps", &["-eo", "args"]).lines() {
        if l.starts_with(&relay_bin) || l.starts_with(&sshd) {
            let l = l.split(" [listener]").next().unwrap_or(l);
            s.push(format!("proc {l}"));
        }
    }
    for l in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        let mp = f[4];
        if mp == "/run/netns" || mp.starts_with("/run/netns/lp-") || mp.starts_with(&lab) {
            let fstype = f.iter().skip_while(|x| **x != "-").nth(1).unwrap_or(&"?");
            s.push(format!("mount {mp} {fstype}"));
        }
    }
    s.sort();
    s
}

/// PIDs of the daemons up started, from their PID files.
fn daemon_pids() -> Vec<u32> {
    let lab = lab_dir();
    let mut files: Vec<_> = std::fs::read_dir(lab.join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    for e in std::fs::read_dir(lab.join("sshd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        files.push(e.path().join("sshd.pid"));
    }
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "pid"))
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .collect()
}

/// A lab daemon that inherited the lab lock's fd would hold the lock for its whole life.
fn assert_no_daemon_holds_the_lock() {
    let lock = labtools::testlab::state_dir().join("test.lock");
    let pids = daemon_pids();
    assert!(pids.len() >= 2, "no lab daemons found from their PID files");
    for pid in pids {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert_ne!(
                target,
                lock,
                "lab daemon {pid} has the lab lock open (fd {:?})",
                fd.file_name()
            );
        }
    }
}

fn lab_entries(s: &[String]) -> Vec<&String> {
    s.iter()
        .filter(|e| !e.starts_with("mount /run/netns "))
        .collect()
}

/// Brings the lab back up when the test ends, also on failure: later tests need it.
struct LeaveUp;

impl Drop for LeaveUp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(|| ci_lab(&["up"]));
        }
    }
}

#[test]
fn down_up_three_times_leaves_the_machine_as_before() {
    let _lock = take_lab();
    let _leave_up = LeaveUp;
    let up = snapshot();
    assert!(
        up.iter().any(|e| e == "netns lp-wan"),
        "lab is up but lp-wan is missing: {up:#?}"
    );
    ci_lab(&["down"]);
    let down = snapshot();
    assert!(lab_entries(&down).is_empty(), "ci/lab down left: {down:#?}");
    for cycle in 1..=3 {
        ci_lab(&["up"]);
        ci_lab(&["up"]); // a second up is a no-op
        assert_eq!(
            snapshot(),
            up,
            "cycle {cycle}: the lab after up differs from the lab before"
        );
        assert_no_daemon_holds_the_lock();
        ci_lab(&["status"]);
        ci_lab(&["down"]);
        ci_lab(&["down"]); // and so is a second down
        assert_eq!(
            snapshot(),
            down,
            "cycle {cycle}: the machine after down differs from before up"
        );
        assert!(
            !lab_dir().join("made").exists(),
            "cycle {cycle}: down left its record of what up made"
        );
    }
    // Leave the lab up for everyone else.
    ci_lab(&["up"]);
    assert_eq!(snapshot(), up);
}
