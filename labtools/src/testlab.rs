//! What integration tests need to use the lab made by `ci/lab up` (docs/lab.md).
//!
//! Lab tests never skip: if the lab is not up they fail and say how to bring it up.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where ci/ keeps the lab's keys, PIDs and per-host directories.
pub fn state_dir() -> PathBuf {
    std::env::var_os("LATPLAN_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/latplan-ci".into())
}

/// The workspace root (tests run with the crate as working directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("labtools sits in the workspace")
        .to_path_buf()
}

/// Where the static observer and timesync binaries are (`LATPLAN_ARTIFACTS` or the musl release dir).
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("LATPLAN_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/x86_64-unknown-linux-musl/release"))
}

/// The committed lab inventory.
pub fn lab_inventory() -> PathBuf {
    workspace_root().join("inventory/lab")
}

/// Panics with instructions unless the lab is up.
pub fn require_lab() {
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

/// Runs a command inside a lab namespace and returns its output (does not check status).
pub fn ns_exec(netns: &str, argv: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
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
