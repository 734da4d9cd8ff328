//! SSH through the `openssh` crate: one ControlMaster connection per host, commands over its
//! native multiplexing client (~3 ms per command on an open connection, TOOLCHAIN.md), so every
//! step of a run reuses the one key exchange.
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;

use super::persist;
use super::shell::{quote, with_become};
use super::{Cmd, Output, Spawned, Transport, TransportError, describe};
use crate::inventory::{Host, SshSettings};

pub struct SshTransport {
    host: String,
    session: Mutex<Option<Arc<Session>>>,
    command_timeout: Duration,
    /// The master is kept for later commands (`ssh.control_persist`): closing leaves it.
    kept: bool,
    /// The master was kept by an earlier command and is reused here.
    reused: bool,
}

/// `~/x` → `$HOME/x`; ssh itself would expand it, but we pass paths as arguments.
fn expand(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

impl SshTransport {
    /// Opens the master connection. Host keys are checked strictly unless `accept_new` (or the
    /// host's `accept_new_host_keys`) allows adding unknown ones; a changed key always fails.
    pub async fn connect(
        host: &Host,
        accept_new: bool,
        control_dir: &Path,
    ) -> Result<Self, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            host: host.name.clone(),
            reason,
        };
        let ssh: &SshSettings = host
            .ssh
            .as_ref()
            .ok_or_else(|| unreachable("no SSH settings (container or local host)".into()))?;
        let dest = ssh
            .config_alias
            .clone()
            .or_else(|| host.address.clone())
            .ok_or_else(|| unreachable("no address and no config_alias".into()))?;
        let mut b = SessionBuilder::default();
        if let Some(u) = &ssh.user {
            b.user(u.clone());
        }
        if let Some(p) = ssh.port {
            b.port(p);
        }
        if let Some(k) = &ssh.identity_file {
            b.keyfile(expand(k));
        }
        if let Some(k) = &ssh.known_hosts_file {
            b.user_known_hosts_file(expand(k));
        }
        if let Some(c) = &ssh.config_file {
            b.config_file(expand(c));
        }
        let check = if accept_new || ssh.accept_new_host_keys {
            KnownHosts::Add
        } else {
            KnownHosts::Strict
        };
        b.known_hosts_check(check);
        let timeout = Duration::from_secs(ssh.connect_timeout);
        b.connect_timeout(timeout);
        b.server_alive_interval(Duration::from_secs(15));
        let kept = NonZeroUsize::new(usize::try_from(ssh.control_persist).unwrap_or(usize::MAX));
        if let Some(idle) = kept {
            let dir = persist::master_dir(&crate::session::state::root(), &dest, ssh)
                .map_err(unreachable)?;
            if let Some(session) = persist::reuse(&dir, timeout).await {
                return Ok(Self::over(host, ssh, session, true, true));
            }
            // ssh ends the master itself once it has been idle that long (persist.rs).
            b.control_directory(&dir);
            b.control_persist(openssh::ControlPersist::IdleFor(idle));
        } else {
            b.control_directory(control_dir);
            // No persistence of its own: `ssh -f` daemonizes the master, so its end is ours to
            // make (ControlDir ends every master in `control_dir` on every way out of latplan).
            b.control_persist(openssh::ControlPersist::ClosedAfterInitialConnection);
        }
        // ssh's own ConnectTimeout covers TCP; this covers a stalled key exchange or auth too.
        let session = match tokio::time::timeout(
            timeout + Duration::from_secs(5),
            b.connect_mux(&dest),
        )
        .await
        {
            Err(_) => {
                return Err(unreachable(format!(
                    "connecting to {dest} took longer than {} s",
                    timeout.as_secs() + 5
                )));
            }
            Ok(Err(e)) => return Err(unreachable(connect_reason(&e))),
            Ok(Ok(s)) => s,
        };
        let session = if kept.is_some() {
            // A resumed session never ends its master when dropped: the master is left to
            // ControlPersist, for the commands after this one.
            let (ctl, log) = session.detach();
            Session::resume_mux(ctl, log)
        } else {
            session
        };
        Ok(Self::over(host, ssh, session, kept.is_some(), false))
    }

    fn over(host: &Host, ssh: &SshSettings, session: Session, kept: bool, reused: bool) -> Self {
        SshTransport {
            host: host.name.clone(),
            session: Mutex::new(Some(Arc::new(session))),
            command_timeout: Duration::from_secs(ssh.command_timeout),
            kept,
            reused,
        }
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.session.lock().expect("ssh session lock").clone()
    }
}

/// ssh's own words (from the master's log) are the most useful reason: "Connection refused",
/// "Host key verification failed.", "Permission denied (publickey)".
fn connect_reason(e: &openssh::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    let text = parts.join(": ");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[async_trait]
impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn exec(&self, cmd: Cmd) -> Result<Output, TransportError> {
        let what = describe(&cmd.script);
        let err = |reason: String| TransportError::Exec {
            host: self.host.clone(),
            what: what.clone(),
            reason,
        };
        let session = self
            .session()
            .ok_or_else(|| err("the connection is closed".into()))?;
        let script = with_become(&cmd.script, cmd.become_root);
        // The remote login shell may be anything; the script is POSIX sh.
        let mut c = Session::to_raw_command(session, format!("sh -c {}", quote(&script)));
        c.stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let limit = cmd.timeout.unwrap_or(self.command_timeout);
        let run = async {
            let mut child = c.spawn().await.map_err(|e| err(connect_reason(&e)))?;
            let stdin = child.stdin().take();
            let feed = async {
                if let (Some(mut si), Some(data)) = (stdin, cmd.stdin.as_deref()) {
                    // A command that exits without reading all input is reported by its status.
                    let _ = si.write_all(data).await;
                    let _ = si.shutdown().await;
                }
            };
            let (_, out) = tokio::join!(feed, child.wait_with_output());
            let out = out.map_err(|e| err(connect_reason(&e)))?;
            Ok(Output {
                status: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                host: self.host.clone(),
                what,
                secs: limit.as_secs(),
            }),
        }
    }

    async fn spawn(&self, cmd: Cmd) -> Result<Spawned, TransportError> {
        let what = describe(&cmd.script);
        let host = self.host.clone();
        let err = move |reason: String| TransportError::Exec {
            host: host.clone(),
            what: what.clone(),
            reason,
        };
        let session = self
            .session()
            .ok_or_else(|| err("the connection is closed".into()))?;
        let script = with_become(&cmd.script, cmd.become_root);
        let mut c = Session::to_raw_command(session, format!("sh -c {}", quote(&script)));
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().await.map_err(|e| err(connect_reason(&e)))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            child.stdin().take(),
            child.stdout().take(),
            child.stderr().take(),
        ) else {
            return Err(err("the command's pipes were not opened".into()));
        };
        let exit = Box::pin(async move {
            child
                .wait()
                .await
                .map(|s| s.code())
                .map_err(|e| err(connect_reason(&e)))
        });
        Ok(Spawned {
            stdin: Box::pin(stdin),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            exit,
        })
    }

    fn reused(&self) -> bool {
        self.reused
    }

    async fn close(&self) -> Result<(), TransportError> {
        let taken = self.session.lock().expect("ssh session lock").take();
        if self.kept {
            // Dropping a resumed session leaves its master running, as intended.
            return Ok(());
        }
        if let Some(s) = taken
            && let Ok(s) = Arc::try_unwrap(s)
        {
            s.close().await.map_err(|e| TransportError::Exec {
                host: self.host.clone(),
                what: "close".into(),
                reason: connect_reason(&e),
            })?;
        }
        Ok(())
    }
}
