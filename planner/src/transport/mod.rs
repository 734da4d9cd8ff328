//! How the manager runs things on hosts: four verbs (exec, put, get, close) over SSH, locally, or
//! inside a container through its parent (DESIGN.md §11).
//!
//! Only `exec` differs between transports; `put` and `get` are built on it (file bytes on stdin or
//! stdout of one command), so every transport writes files the same way: to a temporary name
//! next to the target, checked against its SHA-256, given its mode, then renamed into place.
mod container;
mod control_dir;
mod local;
mod persist;
mod pool;
pub mod shell;
mod ssh;

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

pub use container::ContainerTransport;
pub use control_dir::ControlDir;
pub use local::LocalTransport;
pub use pool::{ConnectOptions, Pool, connect_host};
pub use ssh::SshTransport;

/// A command for a host: a POSIX `sh` script, optionally fed bytes on stdin.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    pub script: String,
    pub stdin: Option<Vec<u8>>,
    /// Run as root through `sudo -n` when the login user is not root.
    pub become_root: bool,
    /// Overrides the host's command timeout.
    pub timeout: Option<Duration>,
}

impl Cmd {
    pub fn new(script: impl Into<String>) -> Self {
        Cmd {
            script: script.into(),
            ..Default::default()
        }
    }

    pub fn stdin(mut self, data: Vec<u8>) -> Self {
        self.stdin = Some(data);
        self
    }

    pub fn become_root(mut self, yes: bool) -> Self {
        self.become_root = yes;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

/// What a command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The host could not be reached (connection refused, timeout, host key, authentication).
    #[error("cannot reach {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("{host}: `{what}` took longer than {secs} s")]
    Timeout {
        host: String,
        what: String,
        secs: u64,
    },
    /// The connection broke or the command could not be started.
    #[error("{host}: failed to run `{what}`: {reason}")]
    Exec {
        host: String,
        what: String,
        reason: String,
    },
    /// The command ran and failed.
    #[error("{host}: `{what}` failed ({status}): {stderr}")]
    Failed {
        host: String,
        what: String,
        status: String,
        stderr: String,
    },
}

impl TransportError {
    /// Whether the host itself is gone (as opposed to one command failing on it).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, TransportError::Unreachable { .. })
    }
}

/// The four verbs. Implementations: [`SshTransport`], [`LocalTransport`], [`ContainerTransport`].
#[async_trait]
pub trait Transport: Send + Sync {
    /// The inventory name of the host this reaches.
    fn host(&self) -> &str;

    /// Whether the connection was kept open by an earlier latplan command and is reused.
    fn reused(&self) -> bool {
        false
    }

    /// Runs a script; a non-zero exit is returned in [`Output`], not as an error.
    async fn exec(&self, cmd: Cmd) -> Result<Output, TransportError>;

    /// Writes `data` to `dest` atomically with `mode`, creating the parent directory.
    async fn put(
        &self,
        data: &[u8],
        dest: &Path,
        mode: u32,
        become_root: bool,
    ) -> Result<(), TransportError> {
        let sha = shell::sha256_hex(data);
        self.put_checked(data, &sha, dest, mode, become_root).await
    }

    /// [`Transport::put`] with the SHA-256 of `data` already known (the host checks the copy
    /// against it), so a binary pushed to many hosts is hashed once, not once per host.
    async fn put_checked(
        &self,
        data: &[u8],
        sha256: &str,
        dest: &Path,
        mode: u32,
        become_root: bool,
    ) -> Result<(), TransportError> {
        let cmd = Cmd::new(shell::put_script(dest, mode, sha256))
            .stdin(data.to_vec())
            .become_root(become_root);
        let out = self.exec(cmd).await?;
        check(self.host(), &format!("put {}", dest.display()), out).map(|_| ())
    }

    /// Reads a whole file.
    async fn get(&self, path: &Path, become_root: bool) -> Result<Vec<u8>, TransportError> {
        let cmd = Cmd::new(format!("cat -- {}", shell::quote_path(path))).become_root(become_root);
        let out = self.exec(cmd).await?;
        check(self.host(), &format!("get {}", path.display()), out).map(|o| o.stdout)
    }

    /// Starts a script and returns at once with its pipes: `exec` for commands that stream.
    async fn spawn(&self, cmd: Cmd) -> Result<Spawned, TransportError>;

    /// Ends the connection (a no-op for local transports).
    async fn close(&self) -> Result<(), TransportError>;
}

/// A long-running command with its pipes open: how observers and reflectors run. Closing (or
/// dropping) `stdin` is how the manager tells it to stop; `exit` resolves when it has ended.
pub struct Spawned {
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// The exit code (`None` when killed by a signal).
    pub exit: BoxFuture<'static, Result<Option<i32>, TransportError>>,
}

/// Turns a non-zero exit into [`TransportError::Failed`].
pub fn check(host: &str, what: &str, out: Output) -> Result<Output, TransportError> {
    if out.success() {
        Ok(out)
    } else {
        Err(TransportError::Failed {
            host: host.to_string(),
            what: what.to_string(),
            status: out
                .status
                .map(|s| format!("exit {s}"))
                .unwrap_or_else(|| "killed".into()),
            stderr: out.stderr_str(),
        })
    }
}

/// First line of a script, for messages.
pub fn describe(script: &str) -> String {
    let line = script
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.len() > 60 {
        format!("{}…", &line[..line.floor_char_boundary(60)])
    } else {
        line.to_string()
    }
}
