//! Live counters of a collection, for the progress display and `status`: cheap to update from the
//! writer, cheap to snapshot from anywhere.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use latplan_common::wire::Stats;

/// Per-host figures (summed over the host's observer runs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostCounters {
    /// Records stored (first delivery only).
    pub records: u64,
    /// Records delivered again and ignored.
    pub duplicates: u64,
    /// Records known to be missing so far (holes below the highest received sequence number).
    pub missing: u64,
    /// Sampled bytes the kernel could not emit (ring buffer full), per layer, as last reported.
    pub ringbuf_full: BTreeMap<&'static str, u64>,
    /// Records the observer dropped in user space (outgoing buffer full), as last reported.
    pub observer_dropped: u64,
    /// Frames that could not be decoded.
    pub decode_errors: u64,
    /// The observer's CPU use in its last stats frame, percent of one core.
    pub cpu_percent: f64,
    /// Goodbye frames received: observer runs that ended and flushed (Redis mode waits on it).
    pub byes: u64,
}

impl HostCounters {
    /// Everything the observer side reported as lost.
    pub fn drops(&self) -> u64 {
        self.ringbuf_full.values().sum::<u64>() + self.observer_dropped
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    records: AtomicU64,
    duplicates: AtomicU64,
    missing: AtomicU64,
    decode_errors: AtomicU64,
    store_retries: AtomicU64,
    batches: AtomicU64,
    store_busy_ns: AtomicU64,
    hosts: Mutex<BTreeMap<String, HostState>>,
}

#[derive(Debug, Default)]
struct HostState {
    counters: HostCounters,
    /// Latest drop figures per run (cumulative within a run, so runs are summed, frames not).
    run_drops: BTreeMap<i64, (BTreeMap<&'static str, u64>, u64)>,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub records: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub decode_errors: u64,
    /// Times a batch write failed transiently and was retried.
    pub store_retries: u64,
    pub batches: u64,
    /// Time the writer spent storing batches (retries included): near the elapsed time, the
    /// store is what bounds the collection.
    pub store_busy: std::time::Duration,
    pub hosts: BTreeMap<String, HostCounters>,
}

impl Snapshot {
    /// Records stored per second between `earlier` and this snapshot.
    pub fn records_per_sec_since(&self, earlier: &Snapshot) -> f64 {
        let dt = self.at.duration_since(earlier.at).as_secs_f64();
        if dt <= 0.0 {
            0.0
        } else {
            (self.records - earlier.records) as f64 / dt
        }
    }

    /// Drops reported by observers, summed over hosts.
    pub fn drops(&self) -> u64 {
        self.hosts.values().map(HostCounters::drops).sum()
    }
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            records: self.records.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            missing: self.missing.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            store_retries: self.store_retries.load(Relaxed),
            batches: self.batches.load(Relaxed),
            store_busy: std::time::Duration::from_nanos(self.store_busy_ns.load(Relaxed)),
            hosts: self
                .hosts
                .lock()
                .expect("counters lock")
                .iter()
                .map(|(k, v)| (k.clone(), v.counters.clone()))
                .collect(),
        }
    }

    fn host<T>(&self, host: &str, f: impl FnOnce(&mut HostState) -> T) -> T {
        let mut hosts = self.hosts.lock().expect("counters lock");
        f(hosts.entry(host.to_string()).or_default())
    }

    pub(crate) fn stored(&self, host: &str, new: u64, duplicate: u64) {
        self.records.fetch_add(new, Relaxed);
        self.duplicates.fetch_add(duplicate, Relaxed);
        self.host(host, |h| {
            h.counters.records += new;
            h.counters.duplicates += duplicate;
        });
    }

    /// Sets a host's live missing count (`delta` is the change in the sum over its runs).
    pub(crate) fn missing_changed(&self, host: &str, before: u64, after: u64) {
        if after >= before {
            self.missing.fetch_add(after - before, Relaxed);
        } else {
            self.missing.fetch_sub(before - after, Relaxed);
        }
        self.host(host, |h| {
            h.counters.missing = h.counters.missing + after - before
        });
    }

    pub(crate) fn bye(&self, host: &str) {
        self.host(host, |h| h.counters.byes += 1);
    }

    pub(crate) fn decode_error(&self, host: &str) {
        self.decode_errors.fetch_add(1, Relaxed);
        self.host(host, |h| h.counters.decode_errors += 1);
    }

    pub(crate) fn store_retry(&self) {
        self.store_retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn batch_committed(&self, took: std::time::Duration) {
        self.store_busy_ns
            .fetch_add(took.as_nanos() as u64, Relaxed);
        self.batches.fetch_add(1, Relaxed);
    }

    pub(crate) fn observer_stats(&self, host: &str, run: i64, s: &Stats) {
        self.host(host, |h| {
            let per_layer: BTreeMap<&'static str, u64> = s
                .layers
                .iter()
                .map(|l| (l.layer.name(), l.ringbuf_full))
                .collect();
            h.run_drops.insert(run, (per_layer, s.records_dropped));
            let mut sum: BTreeMap<&'static str, u64> = BTreeMap::new();
            for (layers, _) in h.run_drops.values() {
                for (l, n) in layers {
                    *sum.entry(l).or_default() += n;
                }
            }
            h.counters.ringbuf_full = sum;
            h.counters.observer_dropped = h.run_drops.values().map(|r| r.1).sum();
            h.counters.cpu_percent = s.cpu_percent;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latplan_common::Layer;
    use latplan_common::wire::LayerStats;

    #[test]
    fn drops_are_latest_per_run_and_summed_over_runs() {
        let c = Counters::default();
        let st = |full, dropped| Stats {
            layers: vec![LayerStats {
                layer: Layer::DevRecv,
                seen: 0,
                sampled: 0,
                ringbuf_full: full,
                rate_limited: 0,
            }],
            records_dropped: dropped,
            ..Default::default()
        };
        c.observer_stats("h", 1, &st(5, 1));
        c.observer_stats("h", 1, &st(8, 2)); // cumulative: replaces, not adds
        c.observer_stats("h", 2, &st(1, 0)); // a restarted observer counts from zero
        let s = c.snapshot();
        assert_eq!(s.hosts["h"].ringbuf_full["dev_recv"], 9);
        assert_eq!(s.hosts["h"].observer_dropped, 2);
        assert_eq!(s.drops(), 11);
        c.stored("h", 10, 2);
        c.missing_changed("h", 0, 4);
        c.missing_changed("h", 4, 1);
        let s = c.snapshot();
        assert_eq!(
            (s.records, s.duplicates, s.missing, s.hosts["h"].missing),
            (10, 2, 1, 1)
        );
    }
}
