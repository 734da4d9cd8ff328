//! latplan's SSH ControlMasters end with it, on every path, and its control directory goes too.
//! Each run gets a private TMPDIR, so "an ssh naming latplan's control directory" is an ssh
//! naming anything under it, and nothing of other people's runs is looked at.
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use labtools::testlab;

use super::{Fresh, LATPLAN, text, wait_until};

/// Processes whose command line names a path under `tmp` (latplan's masters use `-S`/`-E` paths
/// in its control directory there).
pub fn naming(tmp: &Path) -> Vec<String> {
    let needle = tmp.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push(format!("{pid}: {}", cmd.trim()));
        }
    }
    found
}

/// latplan's control directories left under `tmp`.
pub fn control_dirs(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("latplan-ssh-"))
        .collect()
}

/// Nothing of latplan's SSH side is left under `tmp`.
pub fn assert_no_masters(tmp: &Path, when: &str) {
    assert_eq!(
        naming(tmp),
        Vec::<String>::new(),
        "{when}: ssh processes naming latplan's control directory remain"
    );
    assert_eq!(
        control_dirs(tmp),
        Vec::<String>::new(),
        "{when}: latplan's control directory remains in {}",
        tmp.display()
    );
}

/// `latplan ARGS` to the end, with `tmp` as its temporary directory.
pub fn latplan_in(tmp: &Path, args: &[&str]) -> Output {
    Command::new(LATPLAN)
        .args(args)
        .env("LATPLAN_ARTIFACTS", testlab::artifacts_dir())
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .output()
        .expect("run latplan")
}

#[test]
fn an_apply_stopped_by_sigterm_before_its_session_leaves_no_master_and_no_control_dir() {
    let f = Fresh::take();
    let tmp = tempfile::tempdir().unwrap();
    let mut apply = super::spawn_apply(&f.inv, "60s", &f.store, true, tmp.path());
    wait_until(
        Duration::from_secs(60),
        "latplan apply has started an ssh master",
        || !naming(tmp.path()).is_empty(),
    );
    // Connecting and pushing: no session runs yet, so the signal aborts the command.
    // SAFETY: signalling the child this test started and has not reaped.
    unsafe { libc::kill(apply.id() as libc::pid_t, libc::SIGTERM) };
    let t = Instant::now();
    while apply.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "latplan apply did not end within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = apply.wait_with_output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("interrupted by SIGTERM"), "{said}");
    assert_no_masters(tmp.path(), "after SIGTERM");

    let t = latplan_in(tmp.path(), &["teardown", &f.inv]);
    assert!(t.status.success(), "{}", text(&t));
    assert_no_masters(tmp.path(), "after teardown");
}

/// latplan on the lab with more `ssh` settings for every host (`control_persist`, …): the
/// inventory rewritten into a scratch directory, and a temporary and a state directory of its
/// own, so the masters it keeps are the processes naming `state`.
struct KeptLab {
    tmp: tempfile::TempDir,
    state: tempfile::TempDir,
    _inv_dir: tempfile::TempDir,
    inv: String,
}

impl KeptLab {
    fn new(lab_inv: &str, settings: &[(&str, u64)]) -> KeptLab {
        let hosts = std::fs::read_to_string(Path::new(lab_inv).join("hosts.yaml")).unwrap();
        let anchor = "      known_hosts_file: /var/lib/latplan-ci/lab/known_hosts\n";
        assert!(
            hosts.contains(anchor),
            "the lab inventory's ssh settings moved"
        );
        let mut added = anchor.to_string();
        for (key, value) in settings {
            added.push_str(&format!("      {key}: {value}\n"));
        }
        let inv_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            inv_dir.path().join("hosts.yaml"),
            hosts.replacen(anchor, &added, 1),
        )
        .unwrap();
        KeptLab {
            tmp: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            inv: inv_dir.path().to_str().unwrap().to_string(),
            _inv_dir: inv_dir,
        }
    }

    /// `latplan COMMAND INVENTORY`.
    fn run(&self, command: &str) -> Output {
        Command::new(LATPLAN)
            .args([command, self.inv.as_str()])
            .env("LATPLAN_ARTIFACTS", testlab::artifacts_dir())
            .env("TMPDIR", self.tmp.path())
            .env("LATPLAN_STATE_DIR", self.state.path())
            .stdin(Stdio::null())
            .output()
            .expect("run latplan")
    }

    /// PIDs of the masters kept in the state directory.
    fn masters(&self) -> Vec<String> {
        pids_naming(self.state.path())
    }
}

/// PIDs of the processes whose command line names a path under `dir`.
fn pids_naming(dir: &Path) -> Vec<String> {
    let mut pids: Vec<String> = naming(dir)
        .into_iter()
        .map(|p| p.split(':').next().unwrap().to_string())
        .collect();
    pids.sort();
    pids
}

#[test]
fn kept_masters_serve_the_next_command_and_end_on_their_own_once_idle() {
    let f = Fresh::take();
    let idle = 4;
    let lab = KeptLab::new(&f.inv, &[("control_persist", idle)]);

    let check = lab.run("check");
    assert!(check.status.success(), "{}", text(&check));
    let kept = lab.masters();
    // metal1, metal2, vm1, vm2: the containers are reached through their parents.
    assert_eq!(kept.len(), 4, "one master kept per kernel host: {kept:?}");
    assert_no_masters(lab.tmp.path(), "after check with kept masters");

    let t0 = Instant::now();
    let teardown = lab.run("teardown");
    let took = t0.elapsed();
    assert!(teardown.status.success(), "{}", text(&teardown));
    assert_eq!(
        lab.masters(),
        kept,
        "teardown ran over the kept masters, starting none of its own"
    );
    eprintln!("teardown over kept masters: {:.2} s", took.as_secs_f64());

    // Idle for `idle` s, ssh ends each master itself and removes its socket.
    wait_until(
        Duration::from_secs(idle + 20),
        "the kept masters end once idle",
        || lab.masters().is_empty(),
    );
    let sockets: Vec<_> = std::fs::read_dir(lab.state.path().join("ssh"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|d| d.path().join("master"))
        .filter(|s| s.exists())
        .collect();
    assert!(sockets.is_empty(), "sockets left: {sockets:?}");
}

/// The sshd processes serving connections in the lab host `netns` (not its listener).
fn sshd_sessions(netns: &str) -> Vec<libc::pid_t> {
    let pids = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
        .filter(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.starts_with("sshd: ") && !cmd.contains("[listener]")
        })
        .collect()
}

/// Processes stopped with SIGSTOP, continued when dropped (a failed assertion included).
struct Frozen(Vec<libc::pid_t>);

impl Frozen {
    fn stop(pids: Vec<libc::pid_t>) -> Frozen {
        for &p in &pids {
            // SAFETY: kill(2) on the lab's own sshd session processes, found just before.
            unsafe { libc::kill(p, libc::SIGSTOP) };
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: as in stop.
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
    }
}

#[test]
fn a_kept_master_whose_host_stopped_answering_is_replaced_by_a_fresh_connection() {
    let f = Fresh::take();
    let (idle, answer_within) = (6, 3);
    let lab = KeptLab::new(
        &f.inv,
        &[
            ("control_persist", idle),
            ("connect_timeout", answer_within),
        ],
    );
    let first = lab.run("check");
    assert!(first.status.success(), "{}", text(&first));
    let kept = lab.masters();
    assert_eq!(kept.len(), 4, "{kept:?}");

    // metal1's side of its kept connection stops answering, its TCP connection still open: the
    // master itself still answers its alive check, as it would for a host that went away.
    let sessions = sshd_sessions("lp-metal1");
    assert!(
        !sessions.is_empty(),
        "no sshd session serves the kept master in lp-metal1"
    );
    let frozen = Frozen::stop(sessions);
    let t0 = Instant::now();
    let second = lab.run("check");
    let took = t0.elapsed();
    drop(frozen);
    assert!(second.status.success(), "{}", text(&second));
    // One command refused within connect_timeout, then a fresh connection; never the host's
    // command timeout (120 s).
    assert!(
        took < Duration::from_secs(answer_within + 10),
        "check took {took:?} with metal1's kept master unanswered"
    );
    let now = lab.masters();
    let reused = kept.iter().filter(|p| now.contains(p)).count();
    let fresh = now.iter().filter(|p| !kept.contains(p)).count();
    assert!(
        reused >= 3 && fresh == 1,
        "the other three masters reused and one fresh for metal1: kept {kept:?}, now {now:?}"
    );
    eprintln!(
        "check with metal1's kept master unanswered: {:.1} s",
        took.as_secs_f64()
    );
    wait_until(
        Duration::from_secs(idle + 30),
        "every master, the abandoned one too, ends once idle",
        || lab.masters().is_empty(),
    );
}
