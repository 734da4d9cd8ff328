//! What integration tests need to use the lab made by `ci/lab up` (docs/lab.md).
//!
//! Lab tests never skip: if the lab is not up they fail and say how to bring it up.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Where ci/ keeps the lab's keys, PIDs and per-host directories.
pub fn state_dir() -> PathBuf {
    std::env::var_os("LATPLAN_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/latplan-ci".into())
}

/// The workspace root (tests run with the crate as working directory).
/// The workspace root: the parent of the crate under test (`cargo test` sets CARGO_MANIFEST_DIR
/// for the test process), else of labtools as compiled. Read at run time first because a build
/// directory shared between checkouts may hold a labtools compiled in another one.
pub fn workspace_root() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Path::new(&dir)
        .parent()
        .expect("crates sit one level below the workspace root")
        .to_path_buf()
}

/// Where the static observer and timesync binaries are: `LATPLAN_ARTIFACTS`, else the musl
/// release dir of the build directory (`CARGO_TARGET_DIR` or the workspace's `target/`).
pub fn artifacts_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LATPLAN_ARTIFACTS") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("x86_64-unknown-linux-musl/release")
}

/// The committed lab inventory.
pub fn lab_inventory() -> PathBuf {
    workspace_root().join("inventory/lab")
}

/// A copy of the lab inventory whose `group_vars/all.yaml` sets `session.sampling` keys
/// (`sampling_yaml`: their lines, e.g. `xdp_mode: generic`); removed when dropped.
pub fn lab_inventory_with_sampling(sampling_yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary inventory directory");
    std::fs::copy(
        lab_inventory().join("hosts.yaml"),
        dir.path().join("hosts.yaml"),
    )
    .expect("copy the lab's hosts.yaml");
    std::fs::create_dir(dir.path().join("group_vars")).expect("create group_vars");
    std::fs::write(
        dir.path().join("group_vars/all.yaml"),
        format!("session:\n  sampling:\n    {sampling_yaml}\n"),
    )
    .expect("write group_vars/all.yaml");
    dir
}

/// The lab, up and ours for as long as the guard lives: the lock first, then the check. Checked
/// without the lock, the lab can look down only because another test has broken it on purpose
/// (a stopped sshd, a renamed link) and will put it back before it unlocks.
pub fn take_lab() -> LabLock {
    let lock = lock_lab();
    require_lab();
    lock
}

/// Panics with instructions unless the lab is up.
fn require_lab() {
    let status = Command::new(workspace_root().join("ci/lab"))
        .arg("status")
        .output();
    match status {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the lab is not up (ci/lab status: {}{}); run `ci/lab up` as root first",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("failed to run ci/lab status: {e}"),
    }
}

/// An exclusive lock over the whole lab, held for the life of the guard. Tests that change the lab
/// (delays, links, daemons) or measure on it take it, so test threads and binaries never overlap.
pub struct LabLock(#[allow(dead_code)] File);

pub fn lock_lab() -> LabLock {
    let dir = state_dir();
    std::fs::create_dir_all(&dir).expect("create lab state dir");
    let f = File::create(dir.join("test.lock")).expect("create lab lock file");
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock lab lock: {}", std::io::Error::last_os_error());
    LabLock(f)
}

/// A command that runs `argv` inside a lab namespace. `ip netns exec` gives the command a fresh /sys
/// without tracefs or bpffs (classic tracepoints would fail), so they are mounted first; the mounts
/// live in that command's private mount namespace and vanish with it.
pub fn ns_command(netns: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "sh", "-c", NS_PRELUDE, "lab-ns"])
        .args(argv);
    c
}

const NS_PRELUDE: &str = "mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null; \
     mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null; exec \"$@\"";

/// Runs a command inside a lab namespace and returns its output (does not check status).
pub fn ns_exec(netns: &str, argv: &[&str]) -> Output {
    ns_command(netns, argv)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {argv:?} in netns {netns}: {e}"))
}

/// Like [`ns_exec`] but panics with the command's stderr when it fails; returns stdout.
pub fn ns_run(netns: &str, argv: &[&str]) -> String {
    let o = ns_exec(netns, argv);
    assert!(
        o.status.success(),
        "{argv:?} in netns {netns} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Where `ci/lab up` keeps the lab's keys, PID files, relay sockets and host directories.
pub fn lab_dir() -> PathBuf {
    state_dir().join("lab")
}

/// Runs `ci/lab ARGS` (the caller holds [`lock_lab`], so ci/lab must not wait for it) and panics
/// with its output when it fails.
pub fn ci_lab(args: &[&str]) -> String {
    let o = Command::new(workspace_root().join("ci/lab"))
        .args(args)
        .env("LATPLAN_LAB_LOCKED", "1")
        .output()
        .unwrap_or_else(|e| panic!("failed to run ci/lab {args:?}: {e}"));
    assert!(
        o.status.success(),
        "ci/lab {args:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The control socket of a running relay: "wan", or a vm whose link has one (`lab: {relay: true}`).
pub fn relay_socket(name: &str) -> PathBuf {
    lab_dir().join("run").join(format!("relay-{name}.sock"))
}

/// Settings and counters of a running relay.
pub fn relay_status(name: &str) -> crate::relay::Status {
    crate::relay::ctl::request(&relay_socket(name), &crate::relay::Request::Get)
        .unwrap_or_else(|e| panic!("relay {name}: {e:#}"))
}

/// Sets delay (ns) and/or loss (0..1) of a relay's direction(s); see [`RelayRestore`] to undo.
pub fn relay_set(name: &str, dir: crate::relay::Dir, delay_ns: Option<u64>, loss: Option<f64>) {
    crate::relay::ctl::request(
        &relay_socket(name),
        &crate::relay::Request::Set {
            dir,
            delay_ns,
            loss,
        },
    )
    .unwrap_or_else(|e| panic!("relay {name}: {e:#}"));
}

/// Puts a relay's settings back as they were when it was made, when dropped (also on panic).
pub struct RelayRestore {
    name: String,
    before: crate::relay::Status,
}

impl RelayRestore {
    pub fn new(name: &str) -> Self {
        RelayRestore {
            name: name.to_string(),
            before: relay_status(name),
        }
    }
}

impl Drop for RelayRestore {
    fn drop(&mut self) {
        use crate::relay::{Dir, Request, ctl};
        for (dir, d) in [(Dir::A2b, &self.before.a2b), (Dir::B2a, &self.before.b2a)] {
            let req = Request::Set {
                dir,
                delay_ns: Some(d.delay_ns),
                loss: Some(d.loss),
            };
            if let Err(e) = ctl::request(&relay_socket(&self.name), &req) {
                eprintln!("could not restore relay {}: {e:#}", self.name);
            }
        }
    }
}

/// Runs the `latplan` binary under test (`env!("CARGO_BIN_EXE_latplan")` in the planner's tests)
/// with the test artifacts and no stdin, and returns its output.
pub fn run_latplan(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("LATPLAN_ARTIFACTS", artifacts_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run latplan")
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Processes a test started (traffic generators): killed and reaped when dropped.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
