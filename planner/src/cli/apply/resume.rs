//! `latplan stop` of a detached session whose background collector died (killed, crashed): this
//! process takes its place. It reads every host's stream as a new consumer, claiming what the
//! dead collector had read and not acknowledged; ends the observers still alive through their
//! lease keys; waits for every goodbye and until Redis holds nothing unstored; then finishes as
//! the collector would have: gap scan, session `completed`, report, recap, final status, and
//! the session's Redis accounts and keys deleted. The clock fits are in the store already (the
//! collector stores them as they come); the reflectors and the prober died with the collector.
use std::time::Duration;

use anyhow::Context;

use super::super::inventory::load;
use super::super::{Outcome, print_out};
use crate::collector::{CollectionReport, Collector, CollectorConfig};
use crate::executor::observe_redis::{self, RedisObservers};
use crate::executor::{Outcome as HostOutcome, Recap};
use crate::session::state::{Resume, SessionDir};
use crate::store::Store;

/// Longest wait for the observers' goodbyes and the last entries (as at the end of `apply`).
const GOODBYE_LIMIT: Duration = Duration::from_secs(30);

/// Finishes session `d`, whose collector is gone without having finished.
pub fn finish_dead(d: &SessionDir, limit: Duration) -> anyhow::Result<Outcome> {
    let res = d.read_resume().with_context(|| {
        format!(
            "the collector of session {} died before its observers ran: nothing to collect (its log: {})",
            d.name(),
            d.log().display()
        )
    })?;
    let inv = load(&res.inventory)?;
    // This process is the session's collector now: `status` shows it alive and stopping, and a
    // second `stop` waits for it instead of taking over too.
    d.set_pid(std::process::id())?;
    let mut st = d.read_status().unwrap_or_default();
    st.session = d.name().to_string();
    st.state = "stopping".into();
    d.write_status(&st)?;
    eprintln!(
        "the collector of session {} is gone; collecting the rest from Redis…",
        d.name()
    );
    let mut recap = res.recap.clone();
    for (h, hs) in &st.hosts {
        if hs.state == "lost" {
            recap.set(
                h,
                HostOutcome::Failed("the observer's heartbeat expired: host lost or observer ended (see install_dir/run/observer.log)".into()),
            );
        }
    }
    let rt = super::super::runtime()?;
    let done = rt.block_on(collect_rest(
        &res,
        &inv,
        d.name(),
        limit.min(GOODBYE_LIMIT),
        &mut recap,
    ));
    let collected = match done {
        Ok(c) => c,
        Err(e) => {
            st.state = "failed".into();
            st.error = Some(format!("{e:#}"));
            d.write_status(&st)?;
            return Err(e);
        }
    };
    st.state = "completed".into();
    st.records_per_sec = 0.0;
    st.records = collected.stored;
    st.missing = collected.report.missing_records();
    for (h, hs) in st.hosts.iter_mut() {
        if let Some(c) = collected.report.counters.hosts.get(h) {
            hs.records += c.records;
        }
        hs.records_per_sec = 0.0;
        hs.state = match recap.get(h) {
            Some(o) if o.is_failure() => "failed".into(),
            _ => "ok".into(),
        };
    }
    d.write_status(&st)?;
    eprintln!(
        "session {} stored in {}",
        d.name(),
        crate::store::redact(&res.store)
    );
    super::report(&res.store, d.name(), res.html.as_ref())?;
    print_out(&recap.render())?;
    Ok(if recap.failed_hosts().is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

struct Collected {
    report: CollectionReport,
    /// Records of the session in the store, the dead collector's included.
    stored: u64,
}

async fn collect_rest(
    res: &Resume,
    inv: &crate::inventory::Inventory,
    session: &str,
    limit: Duration,
    recap: &mut Recap,
) -> anyhow::Result<Collected> {
    let store = Store::open(&res.store).await.with_context(|| {
        format!(
            "failed to open the store {}",
            crate::store::redact(&res.store)
        )
    })?;
    let session_id = store
        .session_by_name(session)
        .await?
        .with_context(|| format!("session {session} is not in the store"))?
        .id;
    // Goodbyes the dead collector stored already will not come again.
    let said_bye: Vec<String> = store
        .runs(session_id)
        .await?
        .into_iter()
        .filter(|r| r.bye_records_total.is_some())
        .map(|r| r.host)
        .collect();
    let collector = Collector::start(store.clone(), session_id, CollectorConfig::default());
    let bus = observe_redis::connect_bus(&res.bus, inv.session.bus_password()?).await?;
    let mut obs =
        RedisObservers::resume(bus, &collector, session, res.hosts.clone(), said_bye).await?;
    for h in obs.stop(&collector.counters(), limit).await {
        recap.set(
            &h,
            HostOutcome::Failed(
                "no goodbye from the observer: the last records may be missing (see gaps)".into(),
            ),
        );
    }
    let report = collector.finish().await?;
    obs.finish().await?;
    store.end_session(session_id, "completed").await?;
    let stored = store.count_samples(session_id).await?;
    store.close().await;
    eprintln!(
        "collected {} more records, {stored} in the session; {}",
        report.counters.records,
        report.losses()
    );
    Ok(Collected { report, stored })
}
