//! Clock alignment for a session (DESIGN.md §8): a reflector per clock domain, the manager's
//! prober, the gate that holds the session until every domain is synced, and the fits it keeps
//! producing while the session runs.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use latplan_common::clock::ClockFit;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::session::{Domain, Layout, ReflectArgs};
use crate::transport::{Cmd, Spawned, Transport};

/// A reflector running on a domain's host; dropping `stdin` stops it.
pub struct Reflector {
    pub domain: String,
    spawned: Spawned,
}

impl Reflector {
    /// Ends the reflector (closing its stdin) and waits for it, at most `limit`.
    pub async fn stop(self, limit: Duration) {
        let Spawned { stdin, exit, .. } = self.spawned;
        drop(stdin);
        let _ = tokio::time::timeout(limit, exit).await;
    }
}

/// Stops reflectors, all at once.
pub async fn stop_reflectors(reflectors: Vec<Reflector>) {
    futures::future::join_all(
        reflectors
            .into_iter()
            .map(|r| r.stop(Duration::from_secs(5))),
    )
    .await;
}

/// The address the manager uses towards `addr` (its source address on that route).
pub async fn manager_source_for(addr: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-o", "route", "get", addr])
        .output()
        .await
        .context("failed to run `ip route get` on the manager")?;
    let text = String::from_utf8_lossy(&out.stdout);
    word_after(&text, "src")
        .with_context(|| format!("the manager has no route to {addr}: {}", text.trim()))
}

fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next().map(str::to_string);
        }
    }
    None
}

/// Starts the reflector of one domain and waits for its `ready` line. `manager` is the
/// manager's address toward the domain ([`manager_source_for`]).
pub async fn start_reflector(
    t: &dyn Transport,
    domain: &Domain,
    manager: &str,
    layout: &Layout,
    args: &ReflectArgs<'_>,
    become_root: bool,
) -> anyhow::Result<Reflector> {
    let cmd = Cmd::new(layout.reflector_command(manager, args)).become_root(become_root);
    let mut spawned = t.spawn(cmd).await?;
    let mut lines = BufReader::new(&mut spawned.stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(l) = lines.next_line().await? {
            if l.contains("\"ready\"") {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    if !matches!(ready, Ok(Ok(true))) {
        let mut err = String::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            spawned.stderr.read_to_string(&mut err),
        )
        .await;
        bail!(
            "{}: the timesync reflector did not start: {}",
            t.host(),
            last_lines(&err, 5)
        );
    }
    Ok(Reflector {
        domain: domain.name.clone(),
        spawned,
    })
}

/// The last `n` non-empty lines of a process's stderr, for error messages.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let s = lines[lines.len().saturating_sub(n)..].join(" | ");
    if s.is_empty() {
        "(no output)".into()
    } else {
        s
    }
}

/// Latest state of each domain, as the prober reports it.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// The newest fit per domain.
    pub latest: BTreeMap<String, ClockFit>,
    /// Every fit, in arrival order (stored at the end of the session).
    pub fits: Vec<ClockFit>,
    /// Domains the prober reports unreachable, with its words.
    pub errors: BTreeMap<String, String>,
}

/// The manager's prober: a local `timesync probe` process and the task reading its JSON lines.
pub struct Prober {
    child: Child,
    pub state: Arc<Mutex<SyncState>>,
    changed: watch::Receiver<u64>,
    reader: tokio::task::JoinHandle<String>,
}

impl Prober {
    pub fn start(
        timesync: &Path,
        targets: &[(String, String)],
        token: &str,
        rate_hz: u32,
        port: u16,
    ) -> anyhow::Result<Prober> {
        let mut cmd = Command::new(timesync);
        cmd.arg("probe")
            .args(["--token", token])
            .args(["--rate", &rate_hz.to_string()])
            .args(["--port", &port.to_string()]);
        for (domain, addr) in targets {
            cmd.arg("--target").arg(format!("{domain}={addr}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("failed to start {} probe", timesync.display()))?;
        let stdout = child.stdout.take().context("prober stdout")?;
        let stderr = child.stderr.take().context("prober stderr")?;
        let state = Arc::new(Mutex::new(SyncState::default()));
        let (tx, changed) = watch::channel(0u64);
        let st = state.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut n = 0u64;
            while let Ok(Some(l)) = lines.next_line().await {
                if apply_line(&st, &l) {
                    n += 1;
                    let _ = tx.send(n);
                }
            }
            let mut err = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut err).await;
            err
        });
        Ok(Prober {
            child,
            state,
            changed,
            reader,
        })
    }

    /// Waits until every domain has a fit whose error bound is within `bound_ns`, or `limit`
    /// passes. Returns the domains not synced, with why.
    pub async fn wait_synced(
        &self,
        domains: &[String],
        bound_ns: f64,
        limit: Duration,
    ) -> BTreeMap<String, String> {
        let deadline = tokio::time::Instant::now() + limit;
        // A receiver of its own: the wait may run beside others reading the state (apply
        // overlaps it with the observers' start). The channel closes when the prober's output
        // ends, i.e. when it has exited.
        let mut changed = self.changed.clone();
        loop {
            let pending = self.unsynced(domains, bound_ns);
            if pending.is_empty() {
                return pending;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.unsynced(domains, bound_ns),
            }
        }
    }

    fn unsynced(&self, domains: &[String], bound_ns: f64) -> BTreeMap<String, String> {
        let st = self.state.lock().expect("sync state");
        domains
            .iter()
            .filter_map(|d| {
                let why = match (st.latest.get(d), st.errors.get(d)) {
                    (Some(f), _) if f.error_bound_ns <= bound_ns => return None,
                    (_, Some(e)) => e.clone(),
                    (Some(f), None) => format!(
                        "error bound {:.1} µs is above the {:.1} µs required",
                        f.error_bound_ns / 1e3,
                        bound_ns / 1e3
                    ),
                    (None, None) => "no fit yet".to_string(),
                };
                Some((d.clone(), why))
            })
            .collect()
    }

    /// Asks the prober to end (SIGTERM, so it prints its last line) without waiting: when the
    /// reflectors stop it has no more exchanges to fit. [`Prober::stop`] collects what it found.
    pub fn request_stop(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling a child process we started and have not reaped yet (a zombie
            // keeps its PID until `stop` waits for it, so the signal cannot reach another process).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Stops the prober (SIGTERM, so it prints its last line) and returns what it found.
    pub async fn stop(mut self) -> (SyncState, String) {
        self.request_stop();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.start_kill();
        let err = tokio::time::timeout(Duration::from_secs(5), self.reader)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let st = self.state.lock().expect("sync state").clone();
        (st, err)
    }
}

/// Folds one JSON line of the prober into the state; true when it changed something.
fn apply_line(state: &Mutex<SyncState>, line: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return false;
    };
    let mut st = state.lock().expect("sync state");
    match v.get("type").and_then(|t| t.as_str()) {
        Some("fit") => match serde_json::from_value::<ClockFit>(v) {
            Ok(f) => {
                st.errors.remove(&f.domain);
                st.latest.insert(f.domain.clone(), f.clone());
                st.fits.push(f);
                true
            }
            Err(_) => false,
        },
        Some("error") => {
            let d = v["domain"].as_str().unwrap_or_default().to_string();
            let e = v["error"].as_str().unwrap_or("unreachable").to_string();
            st.errors.insert(d, e);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_words_are_found() {
        let l = "10.77.0.11 dev lpbr0 src 10.77.0.1 uid 0 \\    cache";
        assert_eq!(word_after(l, "src").as_deref(), Some("10.77.0.1"));
        assert_eq!(word_after(l, "dev").as_deref(), Some("lpbr0"));
        assert_eq!(word_after("unreachable", "dev"), None);
    }

    #[test]
    fn prober_lines_update_the_state() {
        let st = Mutex::new(SyncState::default());
        assert!(apply_line(
            &st,
            r#"{"type":"error","domain":"vm1","address":"10.77.1.2","error":"no reply for 3 s","status":{}}"#
        ));
        let fit = serde_json::json!({"type":"fit","domain":"vm1","valid_from_host_ns":1,"ref_host_ns":1,
            "offset_ns":12.5,"drift_ppm":0.1,"error_bound_ns":800.0,"samples":40,"min_delay_ns":30000,
            "emitted_ns":5,"detail":{},"status":{}});
        assert!(apply_line(&st, &fit.to_string()));
        assert!(!apply_line(&st, "not json"));
        let s = st.lock().unwrap();
        assert_eq!(s.latest["vm1"].offset_ns, 12.5);
        assert!(s.errors.is_empty(), "a fit clears the domain's error");
        assert_eq!(s.fits.len(), 1);
    }

    #[test]
    fn last_lines_of_stderr() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 2), "(no output)");
    }
}
