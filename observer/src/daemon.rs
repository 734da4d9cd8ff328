//! `observer run --daemon`: the observer leaves the SSH channel that started it (Redis mode, where
//! records and the lease go through Redis), with start-up errors still reported to the caller.
//!
//! The parent forks before any thread exists and waits on a pipe: the child, once attached,
//! writes "ok" and the parent prints the child's PID and exits 0; if the child dies first, the
//! parent exits 1 with the tail of the log. The child starts a new session (no SIGHUP when the
//! channel closes), reads /dev/null, writes stdout to /dev/null and stderr to the log (mode 0600:
//! it may name hosts and keys), and writes its PID file for teardown.
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The child's end of the readiness pipe.
pub struct Ready(File);

impl Ready {
    /// Tells the waiting parent that the observer is attached and running.
    pub fn ok(mut self) {
        let _ = self.0.write_all(b"ok\n");
    }
}

/// Forks; returns only in the child. Must be called before any thread is started.
pub fn daemonize(log: &Path, pid_file: &Path) -> Result<Ready> {
    let mut fds = [0i32; 2];
    // SAFETY: a valid array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!(
            "failed to create a pipe: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: single-threaded here (documented precondition); both halves only use
    // async-signal-safe calls until they exec nothing and carry on as ordinary Rust.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => bail!("failed to fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: fds[0] is ours and no longer used in the child.
            unsafe { libc::close(fds[0]) };
            // SAFETY: fds[1] is a valid fd owned by nothing else from here on.
            let ready = Ready(unsafe { File::from_raw_fd(fds[1]) });
            detach_stdio(log)?;
            if let Some(dir) = pid_file.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("failed to create {}", dir.display()))?;
            }
            let tmp = pid_file.with_extension("pid.tmp");
            std::fs::write(&tmp, format!("{}\n", std::process::id()))
                .and_then(|()| std::fs::rename(&tmp, pid_file))
                .with_context(|| format!("failed to write {}", pid_file.display()))?;
            Ok(ready)
        }
        child => {
            // SAFETY: fds[1] is ours; the parent only reads.
            unsafe { libc::close(fds[1]) };
            // SAFETY: fds[0] is a valid fd owned by nothing else.
            let mut r = unsafe { File::from_raw_fd(fds[0]) };
            let mut msg = String::new();
            let _ = r.read_to_string(&mut msg);
            if msg.starts_with("ok") {
                println!("{child}");
                std::process::exit(0);
            }
            // The pipe closes when the child drops it, before it logs why: wait for its exit.
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "observer: error: the daemon (pid {child}) ended during start-up; {}: {}",
                log.display(),
                tail.join(" | ")
            );
            std::process::exit(1);
        }
    }
}

fn detach_stdio(log: &Path) -> Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::setsid() } < 0 {
        bail!("setsid failed: {}", std::io::Error::last_os_error());
    }
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("failed to open /dev/null")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("failed to open the log {}", log.display()))?;
    for (from, to) in [(&null, 0), (&null, 1), (&out, 2)] {
        // SAFETY: both fds are valid.
        if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
            bail!("dup2 failed: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
