//! Observers: one per kernel host, started together, each streaming record frames over its SSH
//! channel into the collector while the manager renews its lease on the same channel's stdin.
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::collector::{Collector, StreamSummary};
use crate::session::{HEARTBEAT_SECONDS, Layout};
use crate::transport::{Cmd, Spawned, Transport};

/// How one observer's run ended.
#[derive(Debug)]
pub struct ObserverEnd {
    pub host: String,
    pub summary: Option<StreamSummary>,
    /// Why the stream could not be read, when it could not.
    pub error: Option<String>,
    pub exit: Option<i32>,
    /// The tail of the observer's stderr (its notices and errors).
    pub stderr: String,
    /// The stream ended before the manager asked it to stop.
    pub ended_early: bool,
}

impl ObserverEnd {
    /// A clean run: the observer said goodbye and exited 0.
    pub fn is_clean(&self) -> bool {
        self.error.is_none()
            && self.exit == Some(0)
            && self.summary.as_ref().is_some_and(|s| s.saw_bye)
    }

    pub fn describe_failure(&self) -> String {
        let mut why = Vec::new();
        if self.ended_early {
            why.push("observer stream ended during the session".to_string());
        }
        if let Some(e) = &self.error {
            why.push(e.clone());
        }
        match self.exit {
            Some(0) => {}
            Some(c) => why.push(format!("observer exited with {c}")),
            None => why.push("observer killed or connection lost".into()),
        }
        if !self.summary.as_ref().is_some_and(|s| s.saw_bye) {
            why.push("no goodbye frame: the last records may be missing (see gaps)".into());
        }
        if !self.stderr.trim().is_empty() {
            why.push(format!(
                "stderr: {}",
                super::clocks::last_lines(&self.stderr, 3)
            ));
        }
        why.join("; ")
    }
}

/// Starts the observer on a host and returns the task that collects its stream. The task ends
/// when the observer does: after `stop` turns true (stdin is closed, the observer flushes, says
/// goodbye and exits), or earlier if the host or observer fails.
pub async fn start(
    t: &dyn Transport,
    layout: &Layout,
    session: &str,
    become_root: bool,
    collector: Arc<Collector>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<ObserverEnd>> {
    let cmd = Cmd::new(layout.observer_command(session)).become_root(become_root);
    let Spawned {
        mut stdin,
        stdout,
        mut stderr,
        exit,
    } = t.spawn(cmd).await?;
    let host = t.host().to_string();
    let mut stop_hb = stop.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(HEARTBEAT_SECONDS));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if stdin.write_all(b"\n").await.is_err() || stdin.flush().await.is_err() {
                        return;
                    }
                }
                r = stop_hb.changed() => {
                    if r.is_err() || *stop_hb.borrow() {
                        // End of input is the observer's signal to detach, flush and exit.
                        let _ = stdin.shutdown().await;
                        return;
                    }
                }
            }
        }
    });
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    Ok(tokio::spawn(async move {
        let collected = collector.collect_stream(&host, stdout).await;
        let ended_early = !*stop.borrow();
        heartbeat.abort();
        let code = tokio::time::timeout(Duration::from_secs(10), exit).await;
        let stderr = tokio::time::timeout(Duration::from_secs(2), stderr_task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (summary, error) = match collected {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let exit = match code {
            Ok(Ok(c)) => c,
            _ => None,
        };
        ObserverEnd {
            host,
            summary,
            error,
            exit,
            stderr,
            ended_early,
        }
    }))
}
