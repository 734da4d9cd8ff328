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
