//! Storage and collection throughput (BENCHMARKS.md, "Storage and collection").
//!
//! `cargo bench -p planner --bench store -- [sqlite|mariadb|e2e|all] [--records N] [--mysql-writers 1|2]
//! [--read-count N] [--batch-records N] [--encoding rows|json] [--json-rows N]`: the others
//! override the store's, the Redis source's and the collector's defaults, to compare settings in
//! one build (`--encoding`: how MariaDB sample inserts carry their rows, see store/bulk.rs).
//!
//! - `sqlite`, `mariadb`: 4 synthetic observers' byte streams (pre-encoded, 1000 records a frame)
//!   through the collector into the store; rows/s from the first byte read until the last batch
//!   committed. Also the store alone (`Store::write_batch` of 50,000-row batches).
//! - `e2e`: 8 synthetic observers, each shipping through the observer's Redis sink
//!   (observer/src/sink/redis.rs) from its own thread as fast as it can, Redis Streams, the
//!   consumer-group source and the collector into MariaDB; records/s from the first send until
//!   every record is committed and acknowledged; zero loss is checked, not assumed.
//!
//! Needs MariaDB (root over the unix socket) and Redis at 127.0.0.1:6379, as ci/setup starts them.
mod sink;
use sink::redis as observer_sink;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use planner::collector::redis::{RedisBus, RedisSource, SourceOptions};
use planner::collector::synthetic::SyntheticObserver;
use planner::collector::{Collector, CollectorConfig};
use planner::store::{SampleEncoding, Secret, Store, WriteBatch};

const PER_FRAME: usize = 1000;

/// Settings a run may override (unset: the code's defaults).
#[derive(Debug, Default, Clone, Copy)]
struct Tuning {
    mysql_writers: Option<usize>,
    read_count: Option<usize>,
    batch_records: Option<usize>,
    encoding: Option<SampleEncoding>,
    json_rows: Option<usize>,
}

impl Tuning {
    fn collector(&self) -> CollectorConfig {
        let mut c = CollectorConfig::default();
        if let Some(n) = self.batch_records {
            c.batch_records = n;
        }
        c
    }

    fn source(&self) -> SourceOptions {
        let mut o = SourceOptions::default();
        if let Some(n) = self.read_count {
            o.read_count = n;
        }
        o
    }

    fn store(&self, s: Store) -> Store {
        let s = match self.mysql_writers {
            Some(n) => s.with_mysql_writers(n),
            None => s,
        };
        match (self.encoding, self.json_rows) {
            (None, None) => s,
            (e, rows) => s.with_sample_encoding(e.unwrap_or(SampleEncoding::Json), rows),
        }
    }
}

fn mariadb_url(db: &str) -> (String, Secret) {
    let pw = format!("bench{:x}", std::process::id());
    let mut sql = format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};");
    for host in ["127.0.0.1", "localhost"] {
        sql.push_str(&format!(
            "CREATE USER IF NOT EXISTS '{db}'@'{host}' IDENTIFIED BY '{pw}'; ALTER USER '{db}'@'{host}' IDENTIFIED BY '{pw}'; \
             GRANT ALL ON {db}.* TO '{db}'@'{host}';"
        ));
    }
    let out = Command::new("mariadb")
        .args(["-uroot", "-e", &sql])
        .output()
        .expect("run the mariadb client");
    assert!(
        out.status.success(),
        "cannot set up the bench database as root over the unix socket (is MariaDB running? ci/setup starts it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (format!("mysql://{db}@127.0.0.1:3306/{db}"), Secret::new(pw))
}

async fn open(kind: &str) -> Store {
    match kind {
        "sqlite" => {
            let dir = std::env::temp_dir().join("latplan-bench-store");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Store::open(&format!("sqlite://{}/bench.db", dir.display()))
                .await
                .unwrap()
        }
        _ => {
            let (url, pw) = mariadb_url("latplan_bench");
            Store::open_with(url.parse().unwrap(), Some(pw))
                .await
                .unwrap()
        }
    }
}

/// The store alone: 50,000-row batches through `write_batch`.
async fn store_only(kind: &str, records: u64, t: Tuning) -> f64 {
    let store = t.store(open(kind).await);
    let s = store.open_session("bench-store-only").await.unwrap();
    let mut obs = SyntheticObserver::new("bench", "h", 1);
    let (_, run) = store
        .register_run(
            s,
            &match obs.hello() {
                latplan_common::wire::Frame::Hello(h) => h,
                _ => unreachable!(),
            },
            false,
        )
        .await
        .unwrap();
    let batches: Vec<WriteBatch> = (0..records / 50_000)
        .map(|_| {
            let mut b = WriteBatch::new(s);
            if let latplan_common::wire::Frame::Samples { first_seq, samples } = obs.samples(50_000)
            {
                b.samples = samples
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| (run, first_seq + i as u64, x))
                    .collect();
            }
            b
        })
        .collect();
    let t = Instant::now();
    for b in &batches {
        store.write_batch(b).await.unwrap();
    }
    let rate = (batches.len() * 50_000) as f64 / t.elapsed().as_secs_f64();
    assert_eq!(
        store.count_samples(s).await.unwrap(),
        (batches.len() * 50_000) as u64
    );
    store.close().await;
    rate
}

/// Byte streams through the collector.
async fn collector(kind: &str, records: u64, t: Tuning) -> f64 {
    let store = t.store(open(kind).await);
    let s = store.open_session("bench-collector").await.unwrap();
    let streams: Vec<(String, Vec<u8>)> = (0..4)
        .map(|h| {
            let host = format!("h{h}");
            let mut obs = SyntheticObserver::new("bench", &host, 1 + h as u64);
            let bytes = obs.stream((records / 4) as usize / PER_FRAME, PER_FRAME);
            (host, bytes)
        })
        .collect();
    let c = Arc::new(Collector::start(store.clone(), s, t.collector()));
    let t = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(host, bytes)| {
            let c = c.clone();
            tokio::spawn(async move { c.collect_stream(&host, &bytes[..]).await.unwrap() })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    c.flush().await.unwrap();
    let elapsed = t.elapsed();
    let c = Arc::into_inner(c).unwrap();
    let rep = c.finish().await.unwrap();
    let stored = store.count_samples(s).await.unwrap();
    assert!(
        rep.gaps.is_empty() && stored == rep.counters.records,
        "bench lost records: {:?}",
        rep.gaps
    );
    store.close().await;
    stored as f64 / elapsed.as_secs_f64()
}

/// 8 observers through their Redis sinks into MariaDB.
async fn end_to_end(records: u64, t: Tuning) -> f64 {
    let store = t.store(open("mariadb").await);
    let session = "bench-e2e";
    let s = store.open_session(session).await.unwrap();
    let bus = Arc::new(
        RedisBus::connect_with("redis://127.0.0.1:6379", None, None)
            .await
            .expect("Redis at 127.0.0.1:6379 (ci/setup)"),
    );
    let hosts: Vec<String> = (1..=8).map(|i| format!("obs{i}")).collect();
    let per_host = records / 8;
    let frames = (per_host as usize) / PER_FRAME;
    let mut lines = Vec::new();
    for h in &hosts {
        bus.delete_keys(session, h).await.unwrap();
        lines.push(
            bus.provision(session, h, 1_000_000)
                .await
                .unwrap()
                .to_stdin_line(),
        );
    }
    let c = Collector::start(store.clone(), s, t.collector());
    let counters = c.counters();
    let mut src = RedisSource::start_with(&c, bus.clone(), session, &hosts, "bench", t.source())
        .await
        .unwrap();
    let t = Instant::now();
    let observers: Vec<_> = hosts
        .iter()
        .zip(lines)
        .enumerate()
        .map(|(i, (h, line))| {
            let mut obs = SyntheticObserver::new(session, h, 1 + i as u64);
            std::thread::spawn(move || {
                let cfg = observer_sink::RedisSinkConfig::from_stdin_line(&line).unwrap();
                let sink =
                    observer_sink::RedisSink::start(cfg, &obs.boot_id, obs.started_ns, frames + 64)
                        .unwrap();
                sink.send(&obs.hello());
                for f in 0..frames {
                    sink.send(&obs.samples(PER_FRAME));
                    if f % 50 == 49 {
                        sink.send(&obs.stats(f as u64, 0));
                    }
                }
                sink.send_wait(&obs.bye(), Duration::from_secs(30));
                sink.close(Duration::from_secs(120))
            })
        })
        .collect();
    let total = (frames * PER_FRAME * 8) as u64;
    while counters.snapshot().records < total {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "end to end stalled at {:?}",
            counters.snapshot().records
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t.elapsed();
    let sinks: Vec<_> = tokio::task::spawn_blocking(move || {
        observers
            .into_iter()
            .map(|o| o.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for _ in 0..600 {
        if bus.backlog(session, &hosts).await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    src.stop_reading().await.unwrap();
    let rep = c.finish().await.unwrap();
    src.finish().await.unwrap();
    let dropped: u64 = sinks.iter().map(|s| s.records_dropped).sum();
    let stored = store.count_samples(s).await.unwrap();
    println!(
        "e2e: {stored} stored of {total} sent, {dropped} dropped by sinks, {} gaps, {} duplicates; \
         the writer spent {:.2} s of {:.2} s storing {} batches",
        rep.gaps.len(),
        rep.counters.duplicates,
        rep.counters.store_busy.as_secs_f64(),
        elapsed.as_secs_f64(),
        rep.counters.batches
    );
    assert!(
        dropped == 0 && stored == total && rep.gaps.is_empty(),
        "end to end lost records"
    );
    for h in &hosts {
        bus.revoke(session, h).await.unwrap();
        bus.delete_keys(session, h).await.unwrap();
    }
    store.close().await;
    total as f64 / elapsed.as_secs_f64()
}

/// The 1-, 5- and 15-minute load averages: the machine is shared, so every result says how busy
/// it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<u64>().is_err())
        .cloned()
        .unwrap_or_else(|| "all".into());
    let records: Option<u64> = args
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let flag = |name: &str| -> Option<usize> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
    };
    let tuning = Tuning {
        mysql_writers: flag("--mysql-writers"),
        read_count: flag("--read-count"),
        batch_records: flag("--batch-records"),
        encoding: args
            .iter()
            .position(|a| a == "--encoding")
            .and_then(|i| args.get(i + 1))
            .map(|e| match e.as_str() {
                "rows" => SampleEncoding::BoundRows,
                "json" => SampleEncoding::Json,
                other => panic!("--encoding takes rows or json, not {other}"),
            }),
        json_rows: flag("--json-rows"),
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "machine: {cores} cores; release build; records per frame {PER_FRAME}; {tuning:?}; load average {}",
        load_average()
    );
    if mode == "sqlite" || mode == "all" {
        let n = records.unwrap_or(2_000_000);
        println!(
            "sqlite store only   : {:>10.0} rows/s ({n} rows)",
            store_only("sqlite", n, tuning).await
        );
        println!(
            "sqlite via collector: {:>10.0} rows/s ({n} rows, 4 streams)",
            collector("sqlite", n, tuning).await
        );
    }
    if mode == "mariadb" || mode == "all" {
        let n = records.unwrap_or(1_000_000);
        println!(
            "mariadb store only   : {:>10.0} rows/s ({n} rows)",
            store_only("mariadb", n, tuning).await
        );
        println!(
            "mariadb via collector: {:>10.0} rows/s ({n} rows, 4 streams)",
            collector("mariadb", n, tuning).await
        );
    }
    if mode == "e2e" || mode == "all" {
        let n = records.unwrap_or(1_000_000);
        println!(
            "end to end, 8 observers -> redis -> mariadb: {:>10.0} records/s ({n} records, zero loss checked)",
            end_to_end(n, tuning).await
        );
    }
    println!("load average at the end {}", load_average());
}
