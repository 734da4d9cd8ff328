//! The private directory of one latplan process's ControlMaster sockets, and the end of every
//! master started in it.
//!
//! `ssh -M -f` daemonizes its master into a session of its own, so nothing ties its life to ours:
//! a master whose host was lost mid-session (a channel close the host never answers), or one
//! left when latplan stops on an error or a signal, would stay. The directory is made fresh by
//! this process (0700, random name) and every master is started with `-S` and `-E` paths inside
//! it, so an `ssh` process whose command line names it is one we started: ending those by PID
//! ends ours and nobody else's.
//!
//! SIGKILL gives latplan no chance to do that. The directory's name carries the PID of the
//! latplan that made it (`latplan-ssh-PID-*`), so the next latplan sweeps what a killed one left:
//! a directory of ours whose maker is no longer running has its masters ended and is removed.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a master gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Owns the directory; [`ControlDir::close`] (or dropping it) ends the masters and removes it.
#[derive(Debug)]
pub struct ControlDir {
    dir: Option<tempfile::TempDir>,
}

impl ControlDir {
    /// A fresh `latplan-ssh-PID-*` directory in the temporary directory (`$TMPDIR`, else
    /// /tmp), after sweeping those whose latplan is gone.
    pub fn create() -> anyhow::Result<Self> {
        Self::create_in(&std::env::temp_dir())
    }

    /// [`ControlDir::create`] in `tmp`.
    pub fn create_in(tmp: &Path) -> anyhow::Result<Self> {
        sweep(tmp);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir_in(tmp)
            .context("failed to create a directory for SSH control sockets")?;
        Ok(ControlDir { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(tempfile::TempDir::path)
            .expect("present until closed")
    }

    /// Ends every ssh process started in this directory that is still running (SIGTERM, then
    /// SIGKILL after [`TERM_GRACE`]) and removes the directory. Returns the PIDs it signalled.
    pub fn close(mut self) -> Vec<u32> {
        self.end_all()
    }

    fn end_all(&mut self) -> Vec<u32> {
        let Some(dir) = self.dir.take() else {
            return Vec::new();
        };
        let pids = processes_naming(dir.path());
        end(dir.path(), &pids);
        // A master gone is a master whose sockets are gone too; the rest is ours to remove.
        let _ = dir.close();
        pids
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        self.end_all();
    }
}

const PREFIX: &str = "latplan-ssh-";

/// Ends the masters of, and removes, every `latplan-ssh-PID-*` directory in `tmp` that is ours
/// (owner: our user) and whose latplan (PID) is no longer running. Best effort: a directory it
/// cannot judge is left alone.
pub fn sweep(tmp: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return Vec::new();
    };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mut swept = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(maker) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == euid);
        if !ours || Path::new(&format!("/proc/{maker}")).exists() {
            continue;
        }
        let dir = e.path();
        end(&dir, &processes_naming(&dir));
        if std::fs::remove_dir_all(&dir).is_ok() {
            swept.push(dir);
        }
    }
    swept
}

/// `ssh` processes of our user whose command line names a path inside `dir`.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && names(pid, dir))
        .collect()
}

/// Whether `pid` is an `ssh` of our user with an argument inside `dir`. A zombie has an empty
/// command line: it has ended and needs nothing more from us.
fn names(pid: u32, dir: &Path) -> bool {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !std::fs::metadata(&proc_dir).is_ok_and(|m| m.uid() == euid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let mut args = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| Path::new(OsStr::from_bytes(a)));
    let is_ssh = args
        .next()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "ssh");
    is_ssh && args.any(|a| a.starts_with(dir))
}

/// SIGTERM to each, SIGKILL to those still running (and still naming `dir`: a PID reused by
/// someone else's process is never signalled) after the grace period.
fn end(dir: &Path, pids: &[u32]) {
    for &pid in pids {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + TERM_GRACE;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| names(p, dir)).collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for pid in left {
                signal(pid, libc::SIGKILL);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) on a PID just checked to be an ssh we started (its command line names our
    // private directory); a process that has exited meanwhile makes it fail with ESRCH, harmless.
    unsafe { libc::kill(pid, sig) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    /// A long-running process that looks like one of our masters: argv[0] `ssh`, an argument
    /// inside `dir`.
    fn fake_master(arg: &Path) -> std::process::Child {
        std::fs::write(arg, b"").unwrap();
        Command::new("tail")
            .arg0("ssh")
            .arg("-f")
            .arg(arg)
            .stdout(Stdio::null())
            .spawn()
            .expect("start tail")
    }

    #[test]
    fn close_ends_the_masters_named_in_the_directory_and_removes_it() {
        // A private temporary directory: the sweep never sees other people's.
        let tmp = tempfile::tempdir().unwrap();
        let cd = ControlDir::create_in(tmp.path()).unwrap();
        let path = cd.path().to_path_buf();
        assert!(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("latplan-ssh-")
        );
        let mut ours = fake_master(&path.join("log"));
        let elsewhere = tempfile::tempdir().unwrap();
        let mut theirs = fake_master(&elsewhere.path().join("log"));
        // tail has exec'd once its command line shows up under /proc.
        let t = Instant::now();
        while processes_naming(&path) != [ours.id()] {
            assert!(t.elapsed() < Duration::from_secs(10), "tail never started");
            std::thread::sleep(Duration::from_millis(20));
        }

        let ended = cd.close();
        assert_eq!(ended, [ours.id()]);
        let status = ours.wait().unwrap();
        assert!(!status.success(), "our fake master was ended: {status:?}");
        assert!(!path.exists(), "{} is left", path.display());
        assert!(
            theirs.try_wait().unwrap().is_none(),
            "a process naming another directory is never touched"
        );
        let _ = theirs.kill();
        let _ = theirs.wait();
    }

    #[test]
    fn a_directory_left_by_a_latplan_that_is_gone_is_swept() {
        let tmp = tempfile::tempdir().unwrap();
        // A PID that is not running: a child we started and reaped.
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let left = tmp.path().join(format!("{PREFIX}{}-abc", gone.id()));
        std::fs::create_dir(&left).unwrap();
        let mut master = fake_master(&left.join("log"));
        // Ours, running: never swept.
        let live = tmp
            .path()
            .join(format!("{PREFIX}{}-def", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        let mut live_master = fake_master(&live.join("log"));
        let t = Instant::now();
        while processes_naming(&left).is_empty() || processes_naming(&live).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "tail never started");
            std::thread::sleep(Duration::from_millis(20));
        }

        assert_eq!(sweep(tmp.path()), std::slice::from_ref(&left));
        assert!(!master.wait().unwrap().success());
        assert!(!left.exists());
        assert!(live.exists());
        assert!(live_master.try_wait().unwrap().is_none());
        let _ = live_master.kill();
        let _ = live_master.wait();
    }

    #[test]
    fn dropping_it_ends_the_masters_too() {
        let tmp = tempfile::tempdir().unwrap();
        let cd = ControlDir::create_in(tmp.path()).unwrap();
        let path = cd.path().to_path_buf();
        let mut ours = fake_master(&path.join("master"));
        let t = Instant::now();
        while processes_naming(&path).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "tail never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(cd);
        assert!(!ours.wait().unwrap().success());
        assert!(!path.exists());
    }
}
