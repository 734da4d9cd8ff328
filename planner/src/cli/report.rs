//! `latplan report [SESSION] --store URL [--format table|json|csv|html] [-o FILE]`: analyses a
//! stored session and renders the latency breakdown.
//!
//! Loading is the only I/O: session metadata first, then samples streamed page by page from the
//! store's reader into the (pure) analysis, so a large session is never held twice in memory.
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::{Command, Global, Outcome, print_out};
use crate::analysis::{self, HostInfo, HostKind, ObserverInfo, SessionData, TaggedSample};
use crate::report::{self, Format, TableOptions};
use crate::store::{HostRow, RunId, SampleCursor, SessionRow, Store, StoredSample};
use latplan_common::clock::ClockFit;
use latplan_common::wire::Interface;

/// Samples fetched per store query.
const PAGE: usize = 50_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Session name; default: the store's most recent session.
    pub session: Option<String>,
    /// Store URL: sqlite:///path/to/file.db or mysql://user@host/db (password from the environment).
    #[arg(long)]
    pub store: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the report to FILE instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Table format: a breakdown for every flow, not only per host pair.
    #[arg(long)]
    pub per_flow: bool,
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        run(self)?;
        Ok(Outcome::Success)
    }
}

/// Runs the subcommand: load, analyse, render, write.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    let shown = crate::store::redact(&args.store);
    let store = rt
        .block_on(Store::open(&args.store))
        .with_context(|| format!("failed to open the store {shown}"))?;
    let a = analyse_stored(&rt, &store, args.session.as_deref())?;
    rt.block_on(store.close());
    let styled = args.output.is_none() && std::io::stdout().is_terminal();
    let text = report::render(
        &a,
        args.format,
        TableOptions {
            per_flow: args.per_flow,
            styled,
        },
    )?;
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("failed to write the report to {}", path.display())),
        None => print_out(text.trim_end_matches('\n')),
    }
}

/// Loads a stored session and analyses it, streaming its samples.
pub fn analyse_stored(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    session: Option<&str>,
) -> anyhow::Result<analysis::Analysis> {
    let meta = rt.block_on(load_session(store, session))?;
    let error = RefCell::new(None);
    let cursor = rt
        .block_on(store.samples(meta.session.id, PAGE))
        .context("failed to read samples")?;
    let samples = StoreSamples {
        rt,
        cursor,
        page: Vec::new().into_iter(),
        runs: &meta.run_index,
        error: &error,
    };
    let mut a = analysis::analyse(SessionData {
        session: meta.session.name.clone(),
        hosts: meta.hosts.clone(),
        observers: meta.observers.clone(),
        fits: meta.fits.clone(),
        samples,
    });
    if let Some(e) = error.into_inner() {
        return Err(e).context(format!(
            "failed to read the samples of session {}",
            meta.session.name
        ));
    }
    a.warnings.extend(meta.warnings);
    Ok(a)
}

/// A stored session's metadata, in the analysis' terms.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub session: SessionRow,
    pub hosts: Vec<HostInfo>,
    /// One per observer run, in run order.
    pub observers: Vec<ObserverInfo>,
    pub fits: Vec<ClockFit>,
    /// Run id → index into `observers`.
    pub run_index: HashMap<RunId, u32>,
    pub warnings: Vec<String>,
}

/// Reads everything but the samples of a session (by name, or the latest).
pub async fn load_session(store: &Store, name: Option<&str>) -> anyhow::Result<StoredSession> {
    let session = match name {
        Some(n) => store
            .session_by_name(n)
            .await?
            .with_context(|| format!("the store has no session named {n}"))?,
        None => match store.sessions().await?.pop() {
            Some(s) => s,
            None => bail!("the store has no sessions yet"),
        },
    };
    let id = session.id;
    let host_rows = store.hosts(id).await.context("failed to read hosts")?;
    let runs = store
        .runs(id)
        .await
        .context("failed to read observer runs")?;
    let interfaces = store
        .interfaces(id)
        .await
        .context("failed to read interfaces")?;
    let fits = store
        .clock_fits(id)
        .await
        .context("failed to read clock fits")?;
    let stats = store
        .observer_stats(id)
        .await
        .context("failed to read observer stats")?;
    let gaps = store.gaps(id).await.context("failed to read stream gaps")?;

    let hosts: Vec<HostInfo> = host_rows.iter().map(host_info).collect();
    let mut warnings = Vec::new();
    let mut observers = Vec::new();
    let mut run_index = HashMap::new();
    for r in &runs {
        let ifaces: Vec<Interface> = interfaces
            .iter()
            .filter(|i| i.run_id == r.id)
            .map(|i| Interface {
                ifindex: i.ifindex,
                name: i.name.clone(),
                netns: i.netns,
                ingress_mode: i.ingress_mode.clone(),
            })
            .collect();
        let netns_hosts =
            container_namespaces(&r.host, &r.netns, &ifaces, &host_rows, &mut warnings);
        run_index.insert(r.id, observers.len() as u32);
        observers.push(ObserverInfo {
            host: r.host.clone(),
            sample_size: r.sample_size,
            interfaces: ifaces,
            netns_hosts,
            // Stats are cumulative per run: the last frame has the totals.
            stats: stats
                .iter()
                .rev()
                .find(|s| s.run_id == r.id)
                .map(|s| s.stats.clone()),
            gap_records: gaps
                .iter()
                .filter(|g| g.run_id == r.id)
                .map(|g| g.missing())
                .sum(),
        });
    }
    Ok(StoredSession {
        session,
        hosts,
        observers,
        fits,
        run_index,
        warnings,
    })
}

fn host_info(h: &HostRow) -> HostInfo {
    let r = &h.host;
    HostInfo {
        name: r.name.clone(),
        kind: match r.kind.as_str() {
            "vm" => HostKind::Vm,
            "container" => HostKind::Container,
            // Hosts first seen in a stream ("unknown") run their own kernel as far as we know.
            _ => HostKind::Metal,
        },
        parent: r.parent.clone(),
        clock_domain: r.clock_domain.clone().unwrap_or_default(),
        host_interface: None,
        addresses: r
            .address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .into_iter()
            .collect(),
    }
}

/// Which container each foreign network namespace of an observer run belongs to.
///
/// The run's own namespace is the one most of its interfaces live in; each other namespace it
/// recorded is a container's. With one container child the mapping is certain; with several the
/// store does not say which is which, so those samples stay with the observer's host (warned).
fn container_namespaces(
    host: &str,
    netns: &[u32],
    ifaces: &[Interface],
    hosts: &[HostRow],
    warnings: &mut Vec<String>,
) -> Vec<(u32, String)> {
    let containers: Vec<&str> = hosts
        .iter()
        .filter(|h| h.host.kind == "container" && h.host.parent.as_deref() == Some(host))
        .map(|h| h.host.name.as_str())
        .collect();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for i in ifaces {
        *counts.entry(i.netns).or_default() += 1;
    }
    let Some(own) = counts
        .iter()
        .max_by_key(|(ns, n)| (**n, std::cmp::Reverse(**ns)))
        .map(|(ns, _)| *ns)
    else {
        return Vec::new();
    };
    let mut foreign: Vec<u32> = netns
        .iter()
        .chain(ifaces.iter().map(|i| &i.netns))
        .copied()
        .filter(|&ns| ns != own)
        .collect();
    foreign.sort_unstable();
    foreign.dedup();
    match (containers.as_slice(), foreign.as_slice()) {
        (_, []) => Vec::new(),
        ([one], [ns]) => vec![(*ns, one.to_string())],
        _ => {
            warnings.push(format!(
                "observer on {host} recorded {} other network namespace(s) for {} container(s): their samples are attributed to {host}",
                foreign.len(),
                containers.len()
            ));
            Vec::new()
        }
    }
}

/// The store's samples as an iterator for the analysis; a read error ends the stream and is kept
/// for the caller to report.
struct StoreSamples<'a> {
    rt: &'a tokio::runtime::Runtime,
    cursor: SampleCursor<'a>,
    page: std::vec::IntoIter<StoredSample>,
    runs: &'a HashMap<RunId, u32>,
    error: &'a RefCell<Option<anyhow::Error>>,
}

impl Iterator for StoreSamples<'_> {
    type Item = TaggedSample;

    fn next(&mut self) -> Option<TaggedSample> {
        loop {
            if let Some(s) = self.page.next() {
                // A run the metadata did not list maps past the end: the analysis counts it.
                let observer = self.runs.get(&s.run_id).copied().unwrap_or(u32::MAX);
                return Some(TaggedSample {
                    observer,
                    sample: s.sample,
                });
            }
            match self.rt.block_on(self.cursor.next_page()) {
                Ok(Some(page)) => self.page = page.into_iter(),
                Ok(None) => return None,
                Err(e) => {
                    *self.error.borrow_mut() = Some(e.into());
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::synth::Synth;
    use crate::store::{HostRecord, WriteBatch};
    use latplan_common::wire::Hello;

    /// Writes a synthetic session into a store the way the collector would.
    async fn store_synth(store: &Store, s: &Synth) -> i64 {
        let data = s.session();
        let id = store.open_session(&data.session).await.unwrap();
        for h in &data.hosts {
            let kind = match h.kind {
                HostKind::Metal => "metal",
                HostKind::Vm => "vm",
                HostKind::Container => "container",
            };
            let rec = HostRecord {
                name: h.name.clone(),
                kind: kind.into(),
                parent: h.parent.clone(),
                clock_domain: (!h.clock_domain.is_empty()).then(|| h.clock_domain.clone()),
                boot_id: None,
                address: h.addresses.first().map(|a| a.to_string()),
            };
            store.upsert_host(id, &rec).await.unwrap();
        }
        let mut runs = Vec::new();
        for (i, o) in data.observers.iter().enumerate() {
            let hello = Hello {
                host: o.host.clone(),
                session: data.session.clone(),
                observer_version: "test".into(),
                boot_id: format!("boot-{i}"),
                sample_size: o.sample_size,
                interfaces: o.interfaces.clone(),
                netns: o.netns_hosts.iter().map(|(ns, _)| *ns).collect(),
                started_ns: 1,
            };
            runs.push(store.register_run(id, &hello, false).await.unwrap().1);
        }
        store.insert_clock_fits(id, &data.fits).await.unwrap();
        let mut seq = vec![0u64; runs.len()];
        let mut batch = WriteBatch::new(id);
        for t in data.samples {
            let o = t.observer as usize;
            batch.samples.push((runs[o], seq[o], t.sample));
            seq[o] += 1;
        }
        store.write_batch(&batch).await.unwrap();
        id
    }

    #[test]
    fn a_stored_session_analyses_like_the_records_it_holds() {
        let dir = std::env::temp_dir().join(format!("latplan-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("store.db");
        let _ = std::fs::remove_file(&db);
        let url = format!("sqlite://{}", db.display());
        let mut s = Synth::containers_across_metals();
        s.bytes_per_flow = 300;
        s.flows = 2;
        s.jitter_ns = 10_000;
        s.retransmit_every = Some(30);
        s.loss_hop = 5;
        let rt = super::super::runtime().unwrap();
        let store = rt.block_on(Store::open(&url)).unwrap();
        rt.block_on(store_synth(&store, &s));
        let stored = analyse_stored(&rt, &store, None).unwrap();
        let direct = analysis::analyse(s.session());
        let j = |v: &analysis::Analysis| {
            serde_json::to_string(&(&v.flows, &v.pairs, &v.totals)).unwrap()
        };
        assert_eq!(j(&stored), j(&direct));
        assert!(stored.warnings.is_empty(), "{:?}", stored.warnings);
        assert_eq!(stored.flows[0].src_host, "ct1");
        assert!(analyse_stored(&rt, &store, Some("nope")).is_err());
        rt.block_on(store.close());
        // The command itself, every format into a file.
        for (format, marker) in [
            (Format::Table, "◀ dominant"),
            (Format::Json, "\"pairs\""),
            (Format::Csv, "scope,src_host"),
            (Format::Html, "<svg"),
        ] {
            let out = dir.join("report.out");
            run(Args {
                session: Some("synthetic".into()),
                store: url.clone(),
                format,
                output: Some(out.clone()),
                per_flow: true,
            })
            .unwrap();
            let text = std::fs::read_to_string(&out).unwrap();
            assert!(text.contains(marker), "{format:?} output lacks {marker}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
