//! Observers in Redis mode (docs/session.md, "Redis bus"): each observer runs as a daemon on its
//! host and writes its own stream; the SSH channel only starts it. Its per-session account is
//! created first and its credentials go down the channel's stdin; its lease is a key latplan
//! renews (so the observer outlives neither latplan nor the session, channel or not); the session
//! ends by setting that key to `stop`. The collector reads every stream with the consumer group.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;
use tokio::task::JoinHandle;

use crate::collector::redis::{DEFAULT_MAXLEN, REDIS_CA_ENV, RedisBus, RedisSource, SourceOptions};
use crate::collector::{Collector, Counters};
use crate::session::{HEARTBEAT_SECONDS, Layout};
use crate::store::Secret;
use crate::transport::{Cmd, Transport};

/// The consumer name of a session's collector: the same after a restart, so a restarted
/// collector re-reads what the dead one had read but not acknowledged.
pub const CONSUMER: &str = "latplan";

/// Connects latplan's own Redis account: the password from the inventory's way (environment or
/// a 0600 file, `session.bus_secret_file`), the CA of a private `rediss://` from [`REDIS_CA_ENV`].
pub async fn connect_bus(url: &str, password: Option<String>) -> anyhow::Result<Arc<RedisBus>> {
    let ca = match std::env::var_os(REDIS_CA_ENV) {
        Some(p) => Some(std::fs::read_to_string(&p).with_context(|| {
            format!("failed to read the Redis CA file {}", p.to_string_lossy())
        })?),
        None => None,
    };
    let bus = RedisBus::connect_with(url, password.map(Secret::new), ca)
        .await
        .with_context(|| {
            format!(
                "failed to connect to the Redis bus {}",
                crate::store::redact(url)
            )
        })?;
    Ok(Arc::new(bus))
}

/// One host to start an observer on.
pub struct Target {
    pub name: String,
    pub transport: Arc<dyn Transport>,
    pub layout: Layout,
    pub become_root: bool,
}

/// The running observers of a session and the collector's side of the bus.
pub struct RedisObservers {
    bus: Arc<RedisBus>,
    session: String,
    hosts: Vec<String>,
    source: Option<RedisSource>,
    renew: Option<JoinHandle<()>>,
    /// Hosts whose goodbye is already stored (taken over from a dead collector).
    said_bye: Vec<String>,
}

impl RedisObservers {
    /// Creates the accounts and leases, starts reading, then starts every observer together.
    /// Returns the hosts whose observer could not be started, with the reason.
    pub async fn start(
        bus: Arc<RedisBus>,
        collector: &Collector,
        session: &str,
        targets: Vec<Target>,
    ) -> anyhow::Result<(RedisObservers, Vec<(String, String)>)> {
        let mut lines = Vec::new();
        for t in &targets {
            let cfg = bus.provision(session, &t.name, DEFAULT_MAXLEN).await?;
            lines.push(cfg.to_stdin_line());
        }
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        bus.renew_leases(session, &names).await?;
        let source = RedisSource::start(collector, bus.clone(), session, &names, CONSUMER).await?;
        let renew = renew_task(bus.clone(), session.to_string(), names);
        let starts = targets.iter().zip(lines).map(|(t, line)| async move {
            let cmd = Cmd::new(t.layout.observer_daemon_command(session))
                .stdin(line.into_bytes())
                .become_root(t.become_root)
                .timeout(Duration::from_secs(90));
            let r = t.transport.exec(cmd).await;
            (t.name.clone(), r)
        });
        let mut hosts = Vec::new();
        let mut failed = Vec::new();
        for (name, r) in join_all(starts).await {
            match r {
                Ok(o) if o.success() => hosts.push(name),
                Ok(o) => failed.push((
                    name,
                    format!(
                        "failed to start the observer: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                )),
                Err(e) => failed.push((name, format!("failed to start the observer: {e}"))),
            }
        }
        let me = RedisObservers {
            bus,
            session: session.to_string(),
            hosts,
            source: Some(source),
            renew: Some(renew),
            said_bye: Vec::new(),
        };
        for (h, _) in &failed {
            let _ = me.bus.revoke(session, h).await;
        }
        Ok((me, failed))
    }

    /// Takes over the observers of a session whose collector died (`latplan stop` of a detached
    /// session): reads every host's stream as a consumer of its own, first claiming whatever the
    /// dead collector read and never acknowledged (idle or not: it is known to be dead). No
    /// lease is renewed; [`Self::stop`] ends the observers still alive. `said_bye`: hosts whose
    /// goodbye the dead collector already stored.
    pub async fn resume(
        bus: Arc<RedisBus>,
        collector: &Collector,
        session: &str,
        hosts: Vec<String>,
        said_bye: Vec<String>,
    ) -> anyhow::Result<RedisObservers> {
        let consumer = format!("{CONSUMER}-stop-{}", std::process::id());
        let options = SourceOptions {
            claim_idle: Duration::ZERO,
            ..SourceOptions::default()
        };
        let source =
            RedisSource::start_with(collector, bus.clone(), session, &hosts, &consumer, options)
                .await?;
        Ok(RedisObservers {
            bus,
            session: session.to_string(),
            hosts,
            source: Some(source),
            renew: None,
            said_bye,
        })
    }

    /// The hosts whose observer runs.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Hosts whose heartbeat key has expired: the observer ended, or its host is lost.
    pub async fn silent_hosts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for h in &self.hosts {
            if let Ok(None) = self.bus.status(&self.session, h).await {
                out.push(h.clone());
            }
        }
        out
    }

    /// Ends the observers' session: stops renewing, sets every lease to `stop`, waits (at most
    /// `limit`) for each goodbye and for the collector to have committed and acknowledged
    /// everything, then stops reading. Returns the hosts that did not say goodbye.
    pub async fn stop(&mut self, counters: &Counters, limit: Duration) -> Vec<String> {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        if let Err(e) = self.bus.stop_leases(&self.session, &self.hosts).await {
            // The observers' leases then run out on their own.
            eprintln!("redis bus: {e}; observers stop when their lease expires");
        }
        let deadline = Instant::now() + limit;
        let silent = loop {
            let snap = counters.snapshot();
            let missing: Vec<String> = self
                .hosts
                .iter()
                .filter(|h| !self.said_bye.contains(h))
                .filter(|h| snap.hosts.get(*h).is_none_or(|c| c.byes == 0))
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() >= deadline {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        while Instant::now() < deadline {
            match self.bus.backlog(&self.session, &self.hosts).await {
                Ok(0) => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if let Some(s) = self.source.as_mut()
            && let Err(e) = s.stop_reading().await
        {
            eprintln!("redis bus: {e}");
        }
        silent
    }

    /// After the collector finished: the last acknowledgements, then the accounts and keys go.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.source.take() {
            s.finish().await?;
        }
        for h in &self.hosts {
            self.bus.revoke(&self.session, h).await?;
            self.bus.delete_keys(&self.session, h).await?;
        }
        Ok(())
    }
}

impl Drop for RedisObservers {
    fn drop(&mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
    }
}

fn renew_task(bus: Arc<RedisBus>, session: String, hosts: Vec<String>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(HEARTBEAT_SECONDS));
        loop {
            tick.tick().await;
            if let Err(e) = bus.renew_leases(&session, &hosts).await {
                // Redis away for a moment: the observers' lease covers it.
                tracing::warn!("renewing the observers' leases failed: {e}");
            }
        }
    })
}
