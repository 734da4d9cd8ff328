use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use labtools::testlab::{self, ns_exec, ns_run};
use serde_json::Value;

fn latplan(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latplan"))
        .args(args)
        .env("LATPLAN_ARTIFACTS", testlab::artifacts_dir())
        .output()
        .expect("run latplan");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn require_observer() {
    // The lab's bus is SSH: check pushes the observer built without the Redis sink.
    let obs = testlab::artifacts_dir().join("observer-ssh");
    assert!(
        obs.is_file(),
        "{} is missing: build it with `ci/build-static` (check's attach tests run it)",
        obs.display()
    );
}

fn lab() -> String {
    testlab::lab_inventory().display().to_string()
}

/// Runs `latplan check --format json` on the lab and returns (exit code, hosts by name).
fn check_json() -> (i32, serde_json::Map<String, Value>, String) {
    check_json_of(&lab())
}

fn check_json_of(inventory: &str) -> (i32, serde_json::Map<String, Value>, String) {
    let started = Instant::now();
    let (code, out, err) = latplan(&["check", inventory, "--format", "json"]);
    eprintln!(
        "latplan check on the lab: {:.1} s (exit {code})",
        started.elapsed().as_secs_f64()
    );
    let j: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("check printed no JSON ({e}): {out}\n{err}"));
    let hosts = j["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap().to_string(), h.clone()))
        .collect();
    (code, hosts, out)
}

fn verdict<'a>(hosts: &'a serde_json::Map<String, Value>, host: &str, check: &str) -> &'a Value {
    &hosts[host]["checks"][check]
}

#[test]
fn check_is_all_green_on_a_healthy_lab() {
    let _lock = testlab::take_lab();
    require_observer();
    let (code, hosts, out) = check_json();
    let failing: Vec<_> = hosts.values().filter(|h| h["ok"] != true).collect();
    assert!(failing.is_empty(), "hosts failing on a healthy lab: {out}");
    assert_eq!(code, 0);
    assert_eq!(hosts.len(), 6);
    for h in ["metal1", "metal2", "vm1", "vm2"] {
        for c in [
            "reachable",
            "arch",
            "kernel",
            "btf",
            "sudo",
            "disk",
            "clock",
            "interfaces",
            "foreign",
            "bpf",
            "xdp",
            "tc",
            "hooks",
        ] {
            assert_eq!(
                verdict(&hosts, h, c)["status"],
                "pass",
                "{h} {c}: {}",
                verdict(&hosts, h, c)
            );
        }
    }
    // Every lab interface is virtual (veth, tap): the observer's dev_recv goes to TC ingress
    // there, and check says so instead of which XDP mode would have loaded.
    for h in ["metal1", "metal2", "vm1", "vm2"] {
        assert_eq!(verdict(&hosts, h, "xdp")["detail"], "tc", "{h}: {out}");
    }
    assert_eq!(verdict(&hosts, "ct2", "reachable")["detail"], "via vm2");

    // plan: facts say the observer was pushed by check, so its upload is ok, nothing else runs.
    let (code, out, err) = latplan(&["plan", &lab()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok       upload          observer"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
}

/// What the broken-lab test changed, undone on drop (also when an assertion fails).
struct Breakage {
    sshd_stopped: Option<(String, PathBuf)>,
    renamed: Option<(String, String, String)>,
    xdp: Option<(String, String)>,
}

impl Drop for Breakage {
    fn drop(&mut self) {
        if let Some((ns, iface)) = self.xdp.take() {
            ns_exec(
                &ns,
                &["ip", "link", "set", "dev", &iface, "xdpgeneric", "off"],
            );
        }
        if let Some((ns, gone, name)) = self.renamed.take() {
            ns_exec(&ns, &["ip", "link", "set", "dev", &gone, "name", &name]);
            ns_exec(&ns, &["ip", "link", "set", "dev", &name, "up"]);
        }
        if let Some((ns, dir)) = self.sshd_stopped.take() {
            start_sshd(&ns, &dir);
        }
    }
}

/// Starts a lab sshd the way ci/lab does: in the host's namespace, in a private mount namespace
/// that hides root's ~/.bashrc and has tracefs and bpffs.
fn start_sshd(ns: &str, dir: &Path) {
    let lab = testlab::state_dir().join("lab");
    let script = r#"set -e
if [ -e /root/.bashrc ]; then mount --bind "$1" /root/.bashrc; fi
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
exec /usr/sbin/sshd -f "$2" -E "$3""#;
    let log = lab.join("log").join(format!(
        "sshd-{}.log",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(lab.join("empty_bashrc"))
        .arg(dir.join("sshd_config"))
        .arg(log)
        .status()
        .expect("start sshd");
    assert!(st.success(), "restarting sshd in {ns} failed");
}

fn stop_sshd(dir: &Path) {
    let pid = std::fs::read_to_string(dir.join("sshd.pid")).expect("lab sshd pid file");
    let pid: i32 = pid.trim().parse().expect("pid");
    // SAFETY: signalling the lab's sshd listener by its recorded pid.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "kill sshd {pid}"
    );
    for _ in 0..500 {
        if exited(pid) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("sshd {pid} did not exit within 10 s of SIGTERM");
}

/// Whether `pid` has exited: no such process, or a zombie. The lab's sshd daemonised, so its
/// parent is init, which reaps it when it gets to it; `kill(pid, 0)` succeeds on a zombie, and
/// on a loaded machine the reaping alone once outlasted a 2 s wait.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// A tiny XDP program (XDP_PASS) named `foreign_xdp`, built from LLVM IR with llc: someone
/// else's program, as far as latplan is concerned.
fn foreign_xdp_object(dir: &Path) -> PathBuf {
    let ir = dir.join("foreign.ll");
    std::fs::write(
        &ir,
        "@_license = global [4 x i8] c\"GPL\\00\", section \"license\", align 1\n\
         define i32 @foreign_xdp(i8* %ctx) section \"xdp\" {\n  ret i32 2\n}\n",
    )
    .unwrap();
    let obj = dir.join("foreign.o");
    let st = Command::new("llc")
        .args(["-march=bpf", "-filetype=obj", "-o"])
        .arg(&obj)
        .arg(&ir)
        .status()
        .expect("llc (Debian package llvm) is needed to build the foreign XDP test program");
    assert!(st.success(), "llc failed");
    obj
}

/// Attaches the program of `foreign_xdp_object` to vm1's eth0; returns (namespace, interface)
/// for `Breakage::xdp`.
fn attach_foreign_xdp(obj: &Path) -> (String, String) {
    let (ns, iface) = ("lp-vm1", "eth0");
    let obj = obj.to_str().unwrap();
    ns_run(
        ns,
        &[
            "ip",
            "link",
            "set",
            "dev",
            iface,
            "xdpgeneric",
            "obj",
            obj,
            "sec",
            "xdp",
        ],
    );
    (ns.into(), iface.into())
}

#[test]
fn check_names_each_broken_host_and_still_reports_the_healthy_ones() {
    let _lock = testlab::take_lab();
    require_observer();
    let tmp = tempfile::tempdir().unwrap();
    let obj = foreign_xdp_object(tmp.path());
    let mut b = Breakage {
        sshd_stopped: None,
        renamed: None,
        xdp: None,
    };

    // 1. metal2's sshd stopped.
    let sshd_dir = testlab::state_dir().join("lab/sshd/metal2");
    stop_sshd(&sshd_dir);
    b.sshd_stopped = Some(("lp-metal2".into(), sshd_dir));
    // 2. metal1's veth-ct1 (ct1's host side, named in metal1's interfaces) gone.
    ns_run(
        "lp-metal1",
        &["ip", "link", "set", "dev", "veth-ct1", "down"],
    );
    ns_run(
        "lp-metal1",
        &["ip", "link", "set", "dev", "veth-ct1", "name", "lpgone0"],
    );
    b.renamed = Some(("lp-metal1".into(), "lpgone0".into(), "veth-ct1".into()));
    // 3. someone else's XDP program on vm1's eth0.
    b.xdp = Some(attach_foreign_xdp(&obj));

    let (code, hosts, out) = check_json();
    assert_eq!(code, 1, "a failing host makes the exit code 1: {out}");

    let v = verdict(&hosts, "metal2", "reachable");
    assert_eq!(v["status"], "fail", "{out}");
    assert!(
        v["reason"].as_str().unwrap().contains("Connection refused"),
        "{v}"
    );
    assert!(v["fix"].as_str().unwrap().contains("sshd"), "{v}");

    let v = verdict(&hosts, "metal1", "interfaces");
    assert_eq!(v["status"], "fail", "{out}");
    assert!(v["reason"].as_str().unwrap().contains("veth-ct1"), "{v}");
    let v = verdict(&hosts, "ct1", "interfaces");
    assert_eq!(v["status"], "fail", "{out}");
    assert!(v["reason"].as_str().unwrap().contains("veth-ct1"), "{v}");

    // Someone else's XDP program on vm1's eth0, a veth: the observer's dev_recv attaches at TC
    // ingress on a virtual device anyway, so the program coexists with it.
    let v = verdict(&hosts, "vm1", "foreign");
    assert_eq!(v["status"], "pass", "{out}");
    assert_eq!(v["detail"], "1 (coexisting)", "{v}");
    assert_eq!(verdict(&hosts, "vm1", "xdp")["detail"], "tc", "{out}");

    // The healthy ones are still checked and pass.
    for h in ["vm1", "vm2", "ct2"] {
        assert_eq!(hosts[h]["ok"], true, "{h} is healthy: {out}");
    }
    assert_eq!(verdict(&hosts, "vm2", "xdp")["status"], "pass");
    // metal1 itself is reachable and otherwise fine.
    assert_eq!(verdict(&hosts, "metal1", "reachable")["status"], "pass");

    drop(b);
    // Restored: the foreign program is gone and the interface is back.
    let link = ns_run("lp-vm1", &["ip", "-j", "-d", "link", "show", "dev", "eth0"]);
    assert!(!link.contains("foreign_xdp"), "{link}");
    ns_run("lp-metal1", &["ip", "link", "show", "dev", "veth-ct1"]);
    let (code, out, err) = latplan(&[
        "check",
        &lab(),
        "--limit",
        "metal2,metal1,ct1,vm1",
        "--format",
        "json",
    ]);
    assert_eq!(
        code, 0,
        "the lab is healthy again after the test: {out}{err}"
    );
}

#[test]
fn a_session_without_dev_recv_leaves_its_hook_unjudged() {
    let _lock = testlab::take_lab();
    require_observer();
    // The lab inventory, recording every layer but dev_recv.
    let inv = testlab::lab_inventory_with_sampling(
        "layers: [sock_send, tcp_send, ip_send, dev_send, dev_xmit, ip_recv, tcp_recv, \
         sock_queue, sock_recv]",
    );
    let (code, hosts, out) = check_json_of(inv.path().to_str().unwrap());
    assert_eq!(code, 0, "{out}");
    for h in ["metal1", "metal2", "vm1", "vm2"] {
        let v = verdict(&hosts, h, "xdp");
        assert_eq!(v["status"], "skip", "{h}: {v}");
        assert_eq!(v["detail"], "unused", "{h}: {v}");
        assert!(
            v["reason"].as_str().unwrap().contains("dev_recv"),
            "{h}: {v}"
        );
        let v = verdict(&hosts, h, "hooks");
        assert_eq!(v["status"], "pass", "{h}: {v}");
        // The nine layers asked for, less dev_send, which is judged per interface as `tc`.
        assert_eq!(v["detail"], "8/8", "{h}: {v}");
        assert_eq!(verdict(&hosts, h, "tc")["status"], "pass", "{h}");
    }
}

#[test]
fn check_reports_dev_recv_in_the_sessions_xdp_mode_and_skips_native_xdp_when_not_wanted() {
    let _lock = testlab::take_lab();
    require_observer();
    let inv = testlab::lab_inventory_with_sampling("xdp_mode: generic");
    let (code, hosts, out) = check_json_of(inv.path().to_str().unwrap());
    assert_eq!(code, 0, "{out}");
    for h in ["metal1", "metal2", "vm1", "vm2"] {
        let v = verdict(&hosts, h, "xdp");
        assert_eq!(v["status"], "pass", "{h}: {v}");
        assert_eq!(v["detail"], "generic", "{h}: {v}");
    }
    // The probe did not try native XDP (it would on these veths with auto): ask it directly.
    let probe = ns_run(
        "lp-metal1",
        &[
            testlab::artifacts_dir()
                .join("observer-ssh")
                .to_str()
                .unwrap(),
            "probe",
            "--xdp-mode",
            "generic",
            "--interfaces",
            "mgmt0",
        ],
    );
    let p: Value = serde_json::from_str(&probe).unwrap();
    let native = &p["interfaces"]["mgmt0"]["xdp_native"];
    assert!(
        native["error"].as_str().unwrap().contains("not tried"),
        "{native}"
    );
    assert_eq!(p["interfaces"]["mgmt0"]["dev_recv"]["hook"], "xdp-generic");
}
