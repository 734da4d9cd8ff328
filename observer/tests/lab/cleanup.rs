//! Nothing of ours outlives a killed observer; `observer cleanup` removes a leftover that does.
use crate::support::*;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};

/// IDs of the eBPF programs a process holds, from its fds' fdinfo (program and link fds both
/// carry `prog_id:`).
fn programs_of(pid: i32) -> HashSet<u64> {
    let mut ids = HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("prog_id:") {
                ids.insert(v.trim().parse().unwrap());
            }
        }
    }
    ids
}

fn all_programs() -> HashSet<u64> {
    let o = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

fn links() -> Vec<serde_json::Value> {
    let o = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_gone(ids: &HashSet<u64>) -> HashSet<u64> {
    // Programs are freed after an RCU grace period once the last reference is gone.
    for _ in 0..50 {
        let left: HashSet<u64> = all_programs().intersection(ids).copied().collect();
        if left.is_empty() {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    all_programs().intersection(ids).copied().collect()
}

fn kill9(o: &mut Observer) {
    // SAFETY: our own child.
    unsafe { libc::kill(o.pid(), libc::SIGKILL) };
    o.child.wait().unwrap();
}

#[test]
fn a_killed_observer_leaves_nothing_attached() {
    let _lock = labtools::testlab::take_lab();
    let mut obs = Observer::start(METAL1, &["--interfaces", "wan0,mgmt0"]);
    let ours = programs_of(obs.pid());
    assert!(
        ours.len() >= 10,
        "the observer holds its programs: {ours:?}"
    );
    kill9(&mut obs);
    assert!(wait_gone(&ours).is_empty(), "programs left after kill -9");
    let net = labtools::testlab::ns_run(METAL1, &["bpftool", "net", "show"]);
    assert!(
        !net.contains("lp_"),
        "interfaces still have our programs: {net}"
    );
    assert!(
        links()
            .iter()
            .all(|l| !ours.contains(&l["prog_id"].as_u64().unwrap_or(0)))
    );
}

/// A private mount namespace with bpffs, so the pinned leftover never touches the host's mounts.
struct BpffsNs(Child);
impl BpffsNs {
    fn new() -> BpffsNs {
        let c = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t bpf bpf /sys/fs/bpf && exec sleep 600",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare");
        std::thread::sleep(std::time::Duration::from_millis(300));
        BpffsNs(c)
    }
    fn run(&self, argv: &[&str]) -> std::process::Output {
        let pid = self.0.id().to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "--"])
            .args(argv)
            .output()
            .unwrap()
    }
}
impl Drop for BpffsNs {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[test]
fn cleanup_removes_a_pinned_leftover_and_is_idempotent() {
    let _lock = labtools::testlab::take_lab();
    let ns = BpffsNs::new();
    let mut obs = Observer::start(METAL1, &["--interfaces", "wan0", "--layers", "dev_recv"]);
    let ours = programs_of(obs.pid());
    let link = links()
        .into_iter()
        .find(|l| ours.contains(&l["prog_id"].as_u64().unwrap_or(0)))
        .expect("the observer's XDP link");
    let id = link["id"].as_u64().unwrap().to_string();
    let o = ns.run(&[
        "bpftool",
        "link",
        "pin",
        "id",
        &id,
        "/sys/fs/bpf/lp_leftover",
    ]);
    assert!(
        o.status.success(),
        "pin: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    kill9(&mut obs);
    assert!(
        links()
            .iter()
            .any(|l| l["id"].as_u64().unwrap().to_string() == id),
        "the pin keeps the link"
    );

    // A live observer's XDP attachment is not a leftover: cleanup must leave it alone.
    let live = Observer::start(
        METAL1,
        &[
            "--interfaces",
            "mgmt0",
            "--layers",
            "dev_recv",
            "--xdp-mode",
            "generic",
        ],
    );
    let live_progs = programs_of(live.pid());
    assert!(!live_progs.is_empty(), "the live observer loaded programs");

    let bin = observer_bin();
    let o = ns.run(&[bin.to_str().unwrap(), "cleanup", "--json"]);
    assert!(
        o.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["unpinned"],
        serde_json::json!(["/sys/fs/bpf/lp_leftover"])
    );
    assert_eq!(r["errors"], serde_json::json!([]), "cleanup errors");
    assert_eq!(
        r["xdp_detached"],
        serde_json::json!([]),
        "a live attachment was detached"
    );
    assert_eq!(
        programs_of(live.pid()),
        live_progs,
        "the live observer kept its programs"
    );
    drop(live);
    assert!(
        wait_gone(&ours).is_empty(),
        "the leftover's program is gone"
    );
    assert!(
        links()
            .iter()
            .all(|l| l["id"].as_u64().unwrap().to_string() != id)
    );

    let o = ns.run(&[bin.to_str().unwrap(), "cleanup", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["unpinned"],
        serde_json::json!([]),
        "second run finds nothing"
    );
}
