//! Observers: one per kernel host, started together, each streaming record frames over its SSH
//! channel into the collector while the manager renews its lease on the same channel's stdin.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{oneshot, watch};
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

/// What the observer prints on stderr once every program is attached (observer/src/run.rs,
/// docs/observer.md): until then it is loading (the verifier can take seconds of CPU).
pub const ATTACHED_NOTICE: &str = "observer: attached";

/// An observer started on a host.
pub struct Started {
    /// Collects the observer's stream; ends when the observer does (see [`start`]).
    pub task: JoinHandle<ObserverEnd>,
    /// Resolves once the observer has printed [`ATTACHED_NOTICE`]; closed (an error) when its
    /// stderr ended first: it failed to load or attach, or the host was lost.
    pub attached: oneshot::Receiver<()>,
    /// The observer's stderr so far, for a reason when it never attaches.
    pub stderr: Arc<Mutex<String>>,
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
) -> anyhow::Result<Started> {
    let cmd = Cmd::new(layout.observer_command(session)).become_root(become_root);
    let Spawned {
        mut stdin,
        stdout,
        stderr,
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
    let (attached_tx, attached) = oneshot::channel();
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let stderr_task = tokio::spawn(read_stderr(stderr, attached_tx, stderr_text.clone()));
    let stderr_all = stderr_text.clone();
    let task = tokio::spawn(async move {
        let collected = collector.collect_stream(&host, stdout).await;
        let ended_early = !*stop.borrow();
        heartbeat.abort();
        let code = tokio::time::timeout(Duration::from_secs(10), exit).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), stderr_task).await;
        let stderr = stderr_all.lock().expect("stderr text").clone();
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
    });
    Ok(Started {
        task,
        attached,
        stderr: stderr_text,
    })
}

/// Keeps the observer's stderr in `text`, and fires `attached` at its attached notice.
async fn read_stderr(
    stderr: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
    attached: oneshot::Sender<()>,
    text: Arc<Mutex<String>>,
) {
    let mut attached = Some(attached);
    let mut lines = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let l = String::from_utf8_lossy(&line);
        if l.starts_with(ATTACHED_NOTICE)
            && let Some(tx) = attached.take()
        {
            let _ = tx.send(());
        }
        text.lock().expect("stderr text").push_str(&l);
    }
}

/// How long each observer took to attach, or why it did not.
#[derive(Debug, Clone, PartialEq)]
pub enum Attach {
    Attached(Duration),
    /// Its stderr ended before the notice: it failed, or the host was lost.
    Ended,
    /// Still loading when the wait was over.
    TimedOut,
}

/// Waits until every observer has reported attached, at most `limit` in all. `on_attached`
/// sees each host as it attaches; `on_waiting` every `tick` the hosts still loading.
pub async fn wait_attached(
    pending: Vec<(String, oneshot::Receiver<()>)>,
    limit: Duration,
    tick: Duration,
    mut on_attached: impl FnMut(&str, Duration),
    mut on_waiting: impl FnMut(Duration, &[String]),
) -> Vec<(String, Attach)> {
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;
    let started = tokio::time::Instant::now();
    let mut loading: Vec<String> = pending.iter().map(|(h, _)| h.clone()).collect();
    let mut waits: FuturesUnordered<_> = pending
        .into_iter()
        .map(|(h, rx)| async move { (h, rx.await.is_ok()) })
        .collect();
    let mut done = Vec::new();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut ticks = tokio::time::interval_at(started + tick, tick);
    while !loading.is_empty() {
        tokio::select! {
            Some((h, ok)) = waits.next() => {
                loading.retain(|x| *x != h);
                let took = started.elapsed();
                if ok {
                    on_attached(&h, took);
                    done.push((h, Attach::Attached(took)));
                } else {
                    done.push((h, Attach::Ended));
                }
            }
            _ = ticks.tick() => on_waiting(started.elapsed(), &loading),
            _ = &mut deadline => break,
        }
    }
    done.extend(loading.into_iter().map(|h| (h, Attach::TimedOut)));
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_wait_ends_when_every_observer_attached_failed_or_ran_out_of_time() {
        let (a_tx, a_rx) = oneshot::channel();
        let (b_tx, b_rx) = oneshot::channel::<()>();
        let (_c_tx, c_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = a_tx.send(());
            drop(b_tx);
        });
        let mut seen = Vec::new();
        let mut waiting = Vec::new();
        let r = wait_attached(
            vec![("a".into(), a_rx), ("b".into(), b_rx), ("c".into(), c_rx)],
            Duration::from_millis(400),
            Duration::from_millis(150),
            |h, _| seen.push(h.to_string()),
            |_, hs| waiting.push(hs.to_vec()),
        )
        .await;
        assert_eq!(seen, ["a"]);
        let of = |h: &str| r.iter().find(|(x, _)| x == h).map(|(_, a)| a.clone());
        assert!(matches!(of("a"), Some(Attach::Attached(_))), "{r:?}");
        assert_eq!(of("b"), Some(Attach::Ended));
        assert_eq!(of("c"), Some(Attach::TimedOut));
        assert_eq!(r.len(), 3);
        assert!(
            waiting.iter().all(|w| w == &["c".to_string()]) && !waiting.is_empty(),
            "the hosts still loading are shown while waiting: {waiting:?}"
        );
    }

    #[tokio::test]
    async fn the_attached_notice_is_seen_and_stderr_kept() {
        let text = b"observer: notice: xdp generic\nobserver: attached 9 layer(s) on 1 interface(s)\nlater\n";
        let (tx, rx) = oneshot::channel();
        let kept = Arc::new(Mutex::new(String::new()));
        read_stderr(Box::pin(&text[..]), tx, kept.clone()).await;
        assert!(rx.await.is_ok());
        assert_eq!(*kept.lock().unwrap(), String::from_utf8_lossy(text));

        let (tx, rx) = oneshot::channel();
        read_stderr(Box::pin(&b"error: BTF missing\n"[..]), tx, kept.clone()).await;
        assert!(rx.await.is_err(), "no notice: the wait learns it ended");
    }
}
