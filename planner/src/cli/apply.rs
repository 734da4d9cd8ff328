//! `latplan apply INVENTORY [--duration D] [--check]`: a measurement session end to end.
//!
//! Facts → diff → push what differs → store and session recorded → reflectors and prober →
//! observers started on every host together while the clocks sync (SSH bus; before, on Redis) →
//! the session's clock started once every domain is synced and every observer attached →
//! live progress → at the end of `--duration` (or Ctrl-C) observers stopped and their last
//! records flushed → fits stored → the report → a recap per host. `--check` stops after the diff.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::join_all;
use tokio::sync::{Semaphore, watch};

use super::interrupt::Interrupts;
use super::inventory::load;
use super::{Command, ConnectArgs, Global, Outcome, print_out};
use crate::collector::{Collector, CollectorConfig};
use crate::executor::clocks::{
    Prober, Reflector, manager_source_for, start_reflector, stop_reflectors,
};
use crate::executor::converge::converge;
use crate::executor::observe::{self, ObserverEnd};
use crate::executor::observe_redis::{self, RedisObservers};
use crate::executor::{Outcome as HostOutcome, Recap};
use crate::inventory::{Host, Inventory, Kind};
use crate::session::state::{Resume, SessionDir};
use crate::session::{self, Layout, ReflectArgs};
use crate::store::{HostRecord, Store};
use crate::tasks::artifacts::{Artifact, Artifacts};
use crate::transport::{Pool, Transport};
use probing::Probing;

mod attach;
mod detach;
mod probing;
pub(super) mod resume;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory directory (hosts.yaml, group_vars/, host_vars/) or file.
    inventory: PathBuf,
    /// How long to measure (e.g. 30s, 5m). Ctrl-C ends the session early, cleanly.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after the diff: show what would change, change nothing.
    #[arg(long)]
    check: bool,
    /// Store URL, overriding the inventory's `session.store`.
    #[arg(long)]
    store: Option<String>,
    /// Bus URL, overriding the inventory's `session.bus`: `ssh`, or `redis://HOST:PORT` /
    /// `rediss://…` as the observers reach it (password as for `session.bus`).
    #[arg(long)]
    bus: Option<String>,
    /// Name of the session (default: a fresh time-stamped name).
    #[arg(long)]
    session: Option<String>,
    /// Abort when more than this percentage of hosts fail before the session starts.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    max_fail_percent: u8,
    /// How long to wait for every clock domain to be synced within its bound.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    sync_timeout: Duration,
    /// How long to wait for every observer to report its programs attached before the
    /// session's clock starts (SSH bus); a host still loading then is failed.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    attach_timeout: Duration,
    /// Start everything, leave a background `latplan` that renews the leases and collects, and
    /// return (Redis bus only). `latplan status` shows it, `latplan stop` ends it with the report.
    #[arg(long, conflicts_with = "check")]
    detach: bool,
    /// Internal: this process is the background collector of a detached session.
    #[arg(long, hide = true, requires = "session")]
    detached_child: bool,
    /// Also write the HTML report to this file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    #[command(flatten)]
    connect: ConnectArgs,
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        let mut inv = load(&self.inventory)?;
        if let Some(bus) = &self.bus {
            if bus != "ssh" && !bus.starts_with("redis://") && !bus.starts_with("rediss://") {
                bail!("--bus {bus}: use ssh, redis://HOST:PORT or rediss://HOST:PORT");
            }
            let authority = bus.split("://").nth(1).unwrap_or("").split('/').next();
            if authority.is_some_and(|a| a.rsplit_once('@').is_some_and(|(u, _)| u.contains(':'))) {
                bail!(
                    "--bus holds a password: give it in {} or session.bus_secret_file instead",
                    crate::inventory::BUS_PASSWORD_ENV
                );
            }
            inv.session.bus = bus.clone();
        }
        if self.detach {
            return detach::start(&inv, self.session.clone());
        }
        if self.detached_child {
            return detach::run_child(self, inv);
        }
        self.run_with(inv)
    }
}

impl Args {
    fn run_with(self, inv: Inventory) -> anyhow::Result<Outcome> {
        let dir = Artifacts::locate(self.connect.artifacts.as_deref());
        let artifacts = dir.for_session(&inv.session.bus)?;
        let store_url = self
            .store
            .clone()
            .unwrap_or_else(|| inv.session.store.clone());
        let session = self
            .session
            .clone()
            .unwrap_or_else(session::new_session_name);
        let (opts, control_dir) = self.connect.options()?;
        let mut recap = Recap::new(inv.order.iter().cloned());
        let (args, inv, artifacts, opts) = (&self, &inv, &artifacts, &opts);
        let (store_url, session, recap_now) = (&store_url, &session, &mut recap);
        let ran = super::block_on_hosts(|interrupts| async move {
            let recap = recap_now;
            let pool = connect(inv, opts, recap).await;
            // The prober attaches its hooks while facts and pushes run (apply/probing.rs).
            let probing = if args.check || pool.connected.is_empty() {
                None
            } else {
                let connected: Vec<String> = pool.connected.keys().cloned().collect();
                Some(Probing::start(inv, artifacts, &connected)?)
            };
            let facts = converge_all(inv, &pool, artifacts, args.check, opts.forks, recap).await;
            if args.check {
                pool.close().await;
                return Ok(false);
            }
            enforce_fail_limit(recap, inv, args.max_fail_percent)?;
            let Some(probing) = probing else {
                bail!("no host is left to measure: none could be connected");
            };
            let hosts = Hosts {
                inv,
                pool: &pool,
                facts: &facts,
                interrupts: &interrupts,
            };
            let r = run_session(args, hosts, probing, artifacts, store_url, session, recap).await;
            pool.close().await;
            r.map(|()| true)
        });
        // Every master ends here, on every path: a lost host's included.
        control_dir.close();
        let ran = match ran {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}", recap.render());
                return Err(e);
            }
        };
        if ran {
            eprintln!(
                "session {session} stored in {}",
                crate::store::redact(store_url)
            );
            report(store_url, session, self.html.as_ref())?;
        }
        print_out(&recap.render())?;
        Ok(if recap.failed_hosts().is_empty() {
            Outcome::Success
        } else {
            Outcome::Failed
        })
    }
}

/// Connects to every kernel host; containers are marked as covered by their parent.
async fn connect(
    inv: &Inventory,
    opts: &crate::transport::ConnectOptions,
    recap: &mut Recap,
) -> Pool {
    let kernels = session::kernel_host_names(inv);
    eprintln!("connecting to {} host(s)…", kernels.len());
    let started = std::time::Instant::now();
    let pool = Pool::connect(inv, &kernels, opts, &|_h: &str| {}).await;
    let reused = match pool.reused() {
        0 => String::new(),
        n => format!(" ({n} over a connection kept from an earlier command)"),
    };
    eprintln!(
        "connected to {} of {} host(s) in {:.1} s{reused}",
        pool.connected.len(),
        kernels.len(),
        started.elapsed().as_secs_f64()
    );
    for (h, e) in &pool.failed {
        recap.set(h, HostOutcome::Unreachable(e.to_string()));
    }
    for c in inv.hosts().filter(|h| h.kind == Kind::Container) {
        let parent = c.parent.clone().unwrap_or_default();
        match recap.get(&parent) {
            Some(o) if o.is_failure() => recap.set(
                &c.name,
                HostOutcome::Failed(format!("its parent {parent} failed")),
            ),
            _ => recap.set(
                &c.name,
                HostOutcome::Skipped(format!("observed by {parent}'s observer")),
            ),
        }
    }
    pool
}

/// Facts, diff and push on every connected host, at most `forks` at once. Returns the facts.
async fn converge_all(
    inv: &Inventory,
    pool: &Pool,
    artifacts: &[Artifact],
    check_only: bool,
    forks: usize,
    recap: &mut Recap,
) -> BTreeMap<String, crate::facts::Facts> {
    let sem = Arc::new(Semaphore::new(forks.max(1)));
    let jobs = pool
        .connected
        .iter()
        .filter(|(h, _)| inv.hosts[*h].has_own_kernel())
        .map(|(name, t)| {
            let sem = sem.clone();
            let host = &inv.hosts[name];
            async move {
                let _p = sem.acquire().await.expect("never closed");
                (
                    name.clone(),
                    converge(t.as_ref(), inv, host, artifacts, check_only).await,
                )
            }
        });
    let started = std::time::Instant::now();
    let results = join_all(jobs).await;
    let what = if check_only {
        "facts"
    } else {
        "facts and pushes"
    };
    eprintln!(
        "{what} on {} host(s) in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    let mut facts = BTreeMap::new();
    for (name, r) in results {
        match r {
            Ok((f, changed)) => {
                let verb = if check_only {
                    "would change"
                } else {
                    "changed"
                };
                for p in &changed {
                    eprintln!("{name}: {verb} {}", p.display());
                }
                if changed.is_empty() {
                    eprintln!("{name}: ok (nothing to push)");
                    recap.set(&name, HostOutcome::Ok);
                } else {
                    let what = changed.iter().map(|p| p.display().to_string()).collect();
                    recap.set(&name, HostOutcome::Changed(what));
                }
                facts.insert(name, f);
            }
            Err(e) => recap.set(&name, HostOutcome::Failed(format!("{e:#}"))),
        }
    }
    facts
}

fn enforce_fail_limit(recap: &Recap, inv: &Inventory, max_percent: u8) -> anyhow::Result<()> {
    let kernels = inv.kernel_hosts().count().max(1);
    let failed = recap
        .failed_hosts()
        .into_iter()
        .filter(|h| inv.hosts[*h].has_own_kernel())
        .count();
    if failed * 100 > kernels * usize::from(max_percent) {
        bail!(
            "{failed} of {kernels} host(s) failed before the session started, above --max-fail-percent {max_percent}"
        );
    }
    if failed == kernels {
        bail!("no host is left to measure");
    }
    Ok(())
}

/// The hosts as connect and converge left them, and the signals that end the session.
#[derive(Clone, Copy)]
struct Hosts<'a> {
    inv: &'a Inventory,
    pool: &'a Pool,
    facts: &'a BTreeMap<String, crate::facts::Facts>,
    interrupts: &'a Interrupts,
}

async fn run_session(
    args: &Args,
    hosts: Hosts<'_>,
    probing: Probing,
    artifacts: &[Artifact],
    store_url: &str,
    session: &str,
    recap: &mut Recap,
) -> anyhow::Result<()> {
    let Hosts {
        inv,
        pool,
        facts,
        interrupts,
    } = hosts;
    let store = Store::open(store_url).await.with_context(|| {
        format!(
            "failed to open the store {}",
            crate::store::redact(store_url)
        )
    })?;
    let session_id = store.open_session(session).await?;
    for h in inv.hosts() {
        let kernel = kernel_of(inv, h);
        let rec = HostRecord {
            name: h.name.clone(),
            kind: h.kind.as_str().to_string(),
            parent: h.parent.clone(),
            clock_domain: Some(h.clock_domain.clone()),
            boot_id: facts.get(&kernel.name).map(|f| f.boot_id.clone()),
            address: h
                .address
                .clone()
                .or_else(|| h.addresses.first().map(|a| a.to_string())),
        };
        store.upsert_host(session_id, &rec).await?;
    }

    // The clock gate: the session's clock starts once every domain's reflector runs and its fit
    // is within the bound. It needs only the reflectors and the prober, so on the SSH bus it
    // runs while the observers start and load their programs (one after the other, reflectors
    // + sync and the observers' load took 1.5–2.7 s and 1.1–4.6 s on 8–32 hosts). The prober
    // has been probing every domain since the hosts were connected (apply/probing.rs).
    let live: Vec<String> = recap
        .healthy()
        .filter(|h| facts.contains_key(*h))
        .map(str::to_string)
        .collect();
    let domains = session::domains(inv, &live);
    let Probing { prober, token, .. } = probing.towards(inv, artifacts, &domains).await?;
    let port = inv.session.timesync.port;
    let bound_ns = inv.session.timesync.sync_bound_us as f64 * 1e3;
    // The manager's address toward each domain, looked up before the gate runs, so that the
    // gate's first step is asking the hosts for their reflectors.
    let managers = join_all(domains.iter().map(|d| manager_source_for(&d.address))).await;
    let clock_gate = async {
        let mut reflectors: Vec<Reflector> = Vec::new();
        let t0 = Instant::now();
        eprintln!("starting {} timesync reflector(s)…", domains.len());
        let starts = domains.iter().zip(&managers).map(|(d, manager)| {
            let host = &inv.hosts[&d.reflector];
            let t = pool.connected[&d.reflector].clone();
            let token = token.clone();
            async move {
                let manager = manager.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                start_reflector(
                    t.as_ref(),
                    d,
                    manager,
                    &Layout::of(host),
                    &ReflectArgs {
                        token: &token,
                        port,
                        mode: inv.session.sampling.reflector_mode(),
                    },
                    host.become_root,
                )
                .await
            }
        });
        let mut failed = Vec::new();
        for (d, r) in domains.iter().zip(join_all(starts).await) {
            match r {
                Ok(r) => reflectors.push(r),
                Err(e) => failed.push((d.clone(), format!("{e:#}"))),
            }
        }
        let names: Vec<String> = reflectors.iter().map(|r| r.domain.clone()).collect();
        eprintln!(
            "{} timesync reflector(s) answering in {:.1} s",
            names.len(),
            t0.elapsed().as_secs_f64()
        );
        let unsynced = prober
            .wait_synced(&names, bound_ns, args.sync_timeout)
            .await;
        eprintln!(
            "clocks synced in {:.1} s ({} domain(s){})",
            t0.elapsed().as_secs_f64(),
            names.len() - unsynced.len(),
            if unsynced.is_empty() {
                String::new()
            } else {
                format!(", {} failed", unsynced.len())
            }
        );
        failed.extend(unsynced.into_iter().map(|(d, why)| {
            let dom = domains.iter().find(|x| x.name == d).expect("known domain");
            (dom.clone(), format!("clock domain {d} not synced: {why}"))
        }));
        (reflectors, failed)
    };

    let collector = Arc::new(Collector::start(
        store.clone(),
        session_id,
        CollectorConfig::default(),
    ));
    // On the SSH bus the observers start on every host together with the gate, and the
    // reflectors stop with them; the Redis bus's daemons start once it has passed, and its
    // reflectors stop after its observers.
    let mut reflectors = Vec::new();
    let clock_gate = if inv.session.bus == "ssh" {
        Some(clock_gate)
    } else {
        let (started, failed) = clock_gate.await;
        reflectors = started;
        for (dom, why) in failed {
            fail_domain(recap, &dom, &why);
        }
        None
    };
    let observed: Vec<String> = recap
        .healthy()
        .filter(|h| facts.contains_key(*h))
        .map(str::to_string)
        .collect();
    let ctx = Observing {
        args,
        inv,
        pool,
        store_url,
        session,
        observed: &observed,
        collector: &collector,
        prober: &prober,
        interrupts,
    };
    let (interrupted, redis) = {
        let gate = clock_gate; // ends its borrow of the prober here, in both arms
        match gate {
            Some(gate) => (observe_over_ssh(ctx, gate, recap).await?, None),
            None => {
                let (i, r) = observe_over_redis(ctx, recap).await?;
                (i, Some(r))
            }
        }
    };
    // `latplan stop` is how a detached session ends normally.
    let interrupted = interrupted && !args.detached_child;
    let clocks_stop = Instant::now();
    let ((sync, prober_err), ()) = tokio::join!(prober.stop(), stop_reflectors(reflectors));
    if !prober_err.trim().is_empty() {
        eprintln!(
            "timesync prober: {}",
            crate::executor::clocks::last_lines(&prober_err, 3)
        );
    }
    store.insert_clock_fits(session_id, &sync.fits).await?;
    eprintln!(
        "timesync stopped in {:.1} s",
        clocks_stop.elapsed().as_secs_f64()
    );
    let collector =
        Arc::try_unwrap(collector).map_err(|_| anyhow::anyhow!("collector still shared"))?;
    let collected = collector.finish().await?;
    if let Some(r) = redis {
        r.finish().await?;
    }
    let status = if interrupted {
        "interrupted"
    } else {
        "completed"
    };
    store.end_session(session_id, status).await?;
    store.close().await;
    eprintln!(
        "collected {} records; {}",
        collected.counters.records,
        collected.losses()
    );
    Ok(())
}

/// What both observer phases work with: the session's context, borrowed from `run`.
#[derive(Clone, Copy)]
struct Observing<'a> {
    args: &'a Args,
    inv: &'a Inventory,
    pool: &'a Pool,
    store_url: &'a str,
    session: &'a str,
    observed: &'a [String],
    collector: &'a Arc<Collector>,
    prober: &'a Prober,
    interrupts: &'a Interrupts,
}

/// SSH bus: each observer in the foreground of its channel, records on its stdout. Returns
/// whether the session was interrupted; every observer has ended when it returns.
///
/// `clock_gate` runs while they start and load: the session's clock starts once both are done;
/// the observers of hosts in a domain it fails are stopped and those hosts failed.
async fn observe_over_ssh(
    ctx: Observing<'_>,
    clock_gate: impl std::future::Future<Output = (Vec<Reflector>, Vec<(session::Domain, String)>)>,
    recap: &mut Recap,
) -> anyhow::Result<bool> {
    let Observing {
        args,
        inv,
        pool,
        session,
        observed,
        collector,
        prober,
        interrupts,
        ..
    } = ctx;
    let starts = observed.iter().map(|name| {
        let host = &inv.hosts[name];
        let t: Arc<dyn Transport> = pool.connected[name].clone();
        let c = collector.clone();
        // A switch per observer: one that never attaches is stopped on its own.
        let (stop, stop_rx) = watch::channel(false);
        async move {
            let r = observe::start(
                t.as_ref(),
                &Layout::of(host),
                session,
                host.become_root,
                c,
                stop_rx,
            )
            .await;
            (stop, r)
        }
    });
    let attaching = async {
        let mut started = Vec::new();
        for (name, (stop, r)) in observed.iter().zip(join_all(starts).await) {
            match r {
                Ok(s) => started.push((name.clone(), stop, s)),
                Err(e) => recap.set(
                    name,
                    HostOutcome::Failed(format!("failed to start the observer: {e:#}")),
                ),
            }
        }
        attach::wait_for_attach(started, args.attach_timeout, recap).await
    };
    // The gate first: its reflectors are asked for before the observers, whose program loads
    // take the hosts' CPU for longer; the reflectors' half second of probes then overlaps them.
    let ((reflectors, failed_domains), attached) = tokio::join!(clock_gate, attaching);
    let attach::Attached {
        running: observers,
        given_up,
    } = attach::give_up_on_failed_domains(attached, &failed_domains, |dom, why| {
        fail_domain(recap, dom, why)
    });
    if observers.is_empty() {
        attach::release(given_up, Duration::from_secs(10)).await;
        bail!("no observer could be started");
    }
    let mut stops = Vec::new();
    let mut running = Vec::new();
    for o in observers {
        stops.push(o.stop);
        running.push((o.host, o.task));
    }
    announce(session, running.len(), args.duration);
    // The user's steps (steps.yaml) start once observers are attached (executor/steps.rs).
    let user = start_user_steps(inv, pool, running.iter().map(|(n, _)| n.clone()), recap).await;
    let interrupted = watch_session(
        args.duration,
        interrupts,
        collector,
        prober,
        &mut running,
        recap,
    )
    .await;
    crate::executor::steps::stop_started(inv, &pool.connected, &user.started_on).await;
    let stopping = Instant::now();
    eprintln!("stopping {} observer(s)…", running.len());
    for stop in &stops {
        let _ = stop.send(true);
    }
    prober.request_stop();
    // The reflectors (and the prober, above) stop beside them: the last fits (each valid a
    // second past its newest exchange, docs/timesync.md) cover what the observers record while
    // they detach.
    let (ends, (), ()) = tokio::join!(
        join_all(running.into_iter().map(|(_, h)| h)),
        attach::release(given_up, Duration::from_secs(10)),
        stop_reflectors(reflectors),
    );
    eprintln!(
        "observers detached and flushed in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    for end in ends.into_iter().flatten() {
        note_observer_end(recap, &end);
    }
    Ok(interrupted)
}

/// Redis bus: observers as daemons writing their own streams, on leases latplan renews
/// (executor::observe_redis). Returns whether the session was interrupted, and the bus side to
/// finish once the collector has.
async fn observe_over_redis(
    ctx: Observing<'_>,
    recap: &mut Recap,
) -> anyhow::Result<(bool, RedisObservers)> {
    let Observing {
        args,
        inv,
        pool,
        store_url,
        session,
        observed,
        collector,
        prober,
        interrupts,
    } = ctx;
    let bus = observe_redis::connect_bus(&inv.session.bus, inv.session.bus_password()?).await?;
    let targets = observed
        .iter()
        .map(|name| {
            let host = &inv.hosts[name];
            observe_redis::Target {
                name: name.clone(),
                transport: pool.connected[name].clone(),
                layout: Layout::of(host),
                become_root: host.become_root,
            }
        })
        .collect();
    let (mut obs, failed) = RedisObservers::start(bus, collector, session, targets).await?;
    for (h, why) in failed {
        recap.set(&h, HostOutcome::Failed(why));
    }
    if obs.hosts().is_empty() {
        bail!("no observer could be started");
    }
    announce(session, obs.hosts().len(), args.duration);
    let user = start_user_steps(inv, pool, obs.hosts().iter().cloned(), recap).await;
    let state_dir = args
        .detached_child
        .then(|| SessionDir::open(session))
        .transpose()?;
    if let Some(d) = &state_dir {
        // Should this process die, `latplan stop` finishes the session from what it notes here.
        let inventory = std::path::absolute(&args.inventory).with_context(|| {
            format!(
                "failed to resolve the inventory path {}",
                args.inventory.display()
            )
        })?;
        d.write_resume(&Resume {
            inventory,
            store: store_url.to_string(),
            bus: inv.session.bus.clone(),
            hosts: obs.hosts().to_vec(),
            recap: recap.clone(),
            html: args.html.clone(),
        })?;
    }
    let mut fits_saved = 0;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut last = collector.counters().snapshot();
    let mut lost: Vec<String> = Vec::new();
    if let Some(d) = &state_dir {
        detach::write_status(
            d,
            session,
            "running",
            obs.hosts(),
            &last,
            &last,
            prober,
            &lost,
        );
    }
    let end = session_end(args.duration, interrupts);
    tokio::pin!(end);
    let interrupted = loop {
        tokio::select! {
            i = &mut end => break i,
            _ = tick.tick() => {
                let now = collector.counters().snapshot();
                eprintln!("{}", progress_line(started.elapsed(), &now, &last, prober));
                if let Some(d) = &state_dir {
                    detach::write_status(d, session, "running", obs.hosts(), &now, &last, prober, &lost);
                }
                save_fits(collector, prober, &mut fits_saved).await;
                last = now;
                for h in obs.silent_hosts().await {
                    if !lost.contains(&h) {
                        let why = "the observer's heartbeat expired: host lost or observer ended (see install_dir/run/observer.log)";
                        eprintln!("{h}: {why}");
                        recap.set(&h, HostOutcome::Failed(why.into()));
                        lost.push(h);
                    }
                }
                if lost.len() == obs.hosts().len() {
                    eprintln!("every observer has ended; stopping the session early");
                    break false;
                }
            }
        }
    };
    crate::executor::steps::stop_started(inv, &pool.connected, &user.started_on).await;
    let counters = collector.counters();
    if let Some(d) = &state_dir {
        let now = counters.snapshot();
        detach::write_status(
            d,
            session,
            "stopping",
            obs.hosts(),
            &now,
            &last,
            prober,
            &lost,
        );
    }
    for h in obs.stop(&counters, Duration::from_secs(30)).await {
        if !lost.contains(&h) {
            recap.set(
                &h,
                HostOutcome::Failed(
                    "no goodbye from the observer: the last records may be missing (see gaps)"
                        .into(),
                ),
            );
        }
    }
    Ok((interrupted, obs))
}

/// Stores the fits the prober made since the last call. The session stores all of them at its
/// end anyway (idempotently); storing them as they come means a collector killed mid-session
/// leaves the clock alignment behind for `latplan stop` to finish the session with.
async fn save_fits(collector: &Collector, prober: &Prober, saved: &mut usize) {
    let new = {
        let sync = prober.state.lock().expect("sync state");
        sync.fits[(*saved).min(sync.fits.len())..].to_vec()
    };
    if new.is_empty() {
        return;
    }
    match collector
        .store()
        .insert_clock_fits(collector.session_id(), &new)
        .await
    {
        Ok(()) => *saved += new.len(),
        Err(e) => eprintln!("storing clock fits failed, will retry: {e}"),
    }
}

/// Runs the user's steps on the hosts whose observers are running; a host whose step fails is
/// failed in the recap (its observer keeps running; the others go on).
async fn start_user_steps(
    inv: &Inventory,
    pool: &Pool,
    live: impl Iterator<Item = String>,
    recap: &mut Recap,
) -> crate::executor::steps::StepsOutcome {
    let live = live.collect();
    let user = crate::executor::steps::run_steps(inv, &pool.connected, &live).await;
    for (h, why) in &user.failed {
        recap.set(h, HostOutcome::Failed(why.clone()));
    }
    user
}

fn announce(session: &str, observers: usize, duration: Duration) {
    eprintln!(
        "session {session}: {observers} observer(s) running for {}",
        humantime::format_duration(duration)
    );
}

/// Ends after `duration`, or earlier on Ctrl-C, SIGTERM (`latplan stop`) or SIGHUP: true when
/// early. A second signal, while observers stop, aborts the command (cli::interrupt).
async fn session_end(duration: Duration, interrupts: &Interrupts) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        sig = interrupts.session_end() => {
            if sig == "SIGINT" {
                eprintln!("interrupted: stopping observers and collecting what they have");
            } else {
                eprintln!("asked to stop ({sig}): stopping observers and collecting what they have");
            }
            true
        }
    }
}

/// Runs until the duration is over or Ctrl-C, printing progress every few seconds and noting
/// observers that end early (a lost host). True when interrupted.
async fn watch_session(
    duration: Duration,
    interrupts: &Interrupts,
    collector: &Collector,
    prober: &Prober,
    running: &mut Vec<(String, tokio::task::JoinHandle<ObserverEnd>)>,
    recap: &mut Recap,
) -> bool {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut last = collector.counters().snapshot();
    let end = session_end(duration, interrupts);
    tokio::pin!(end);
    loop {
        tokio::select! {
            i = &mut end => return i,
            _ = tick.tick() => {
                let now = collector.counters().snapshot();
                eprintln!("{}", progress_line(started.elapsed(), &now, &last, prober));
                last = now;
                let mut i = 0;
                while i < running.len() {
                    if running[i].1.is_finished() {
                        let (name, h) = running.remove(i);
                        match h.await {
                            Ok(end) => note_observer_end(recap, &end),
                            Err(e) => recap.set(&name, HostOutcome::Failed(format!("observer task failed: {e}"))),
                        }
                    } else {
                        i += 1;
                    }
                }
                if running.is_empty() {
                    eprintln!("every observer has ended; stopping the session early");
                    return false;
                }
            }
        }
    }
}

fn progress_line(
    elapsed: Duration,
    now: &crate::collector::Snapshot,
    last: &crate::collector::Snapshot,
    prober: &Prober,
) -> String {
    let mut parts = vec![format!(
        "[{:>4}s] {} records ({:.0}/s), {} dropped, {} missing",
        elapsed.as_secs(),
        now.records,
        now.records_per_sec_since(last),
        now.drops(),
        now.missing
    )];
    for (h, c) in &now.hosts {
        let before = last.hosts.get(h).map(|c| c.records).unwrap_or(0);
        let rate = (c.records - before.min(c.records)) as f64
            / now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        parts.push(format!("{h} {rate:.0}/s drops {}", c.drops()));
    }
    parts.push(format!("sync ±{:.1}µs", worst_sync_us(prober)));
    parts.join(" | ")
}

/// The worst error bound of the latest clock fits, µs.
fn worst_sync_us(prober: &Prober) -> f64 {
    let sync = prober.state.lock().expect("sync state");
    sync.latest
        .values()
        .map(|f| f.error_bound_ns)
        .fold(0.0, f64::max)
        / 1e3
}

fn note_observer_end(recap: &mut Recap, end: &ObserverEnd) {
    if !end.is_clean() {
        recap.set(&end.host, HostOutcome::Failed(end.describe_failure()));
        eprintln!("{}: {}", end.host, end.describe_failure());
    }
}

fn fail_domain(recap: &mut Recap, d: &session::Domain, why: &str) {
    eprintln!("{why}");
    for h in &d.hosts {
        recap.set(h, HostOutcome::Failed(why.to_string()));
    }
}

/// The kernel host whose observer covers `h` (itself, or a container's ancestor).
fn kernel_of<'a>(inv: &'a Inventory, h: &'a Host) -> &'a Host {
    let mut cur = h;
    while cur.kind == Kind::Container {
        cur = &inv.hosts[cur.parent.as_ref().expect("validated")];
    }
    cur
}

/// Prints the session's report (and writes the HTML one when asked).
fn report(store: &str, session: &str, html: Option<&PathBuf>) -> anyhow::Result<()> {
    use crate::report::Format;
    let args = |format, output| super::report::Args {
        session: Some(session.to_string()),
        store: store.to_string(),
        format,
        output,
        per_flow: false,
    };
    if let Some(path) = html {
        super::report::run(args(Format::Html, Some(path.clone())))?;
        eprintln!("HTML report written to {}", path.display());
    }
    super::report::run(args(Format::Table, None))
}
