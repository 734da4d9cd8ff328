//! Faults: Redis restarted, MariaDB stopped, the collector killed, an observer's link cut.
//! Afterwards every record is stored exactly once, or its loss is reported with count and place.
use std::time::Duration;

use planner::collector::redis::{
    DEFAULT_MAXLEN, RedisSource, RedisSourceSummary, SourceOptions, acl_user,
};
use planner::collector::synthetic::SyntheticObserver;
use planner::collector::{Collector, CollectorConfig};

use super::*;

struct Fleet {
    hosts: Vec<String>,
    observers: Vec<(String, ObserverThread)>,
}

async fn fleet(
    bus: &RedisBus,
    session: &str,
    n: usize,
    frames: usize,
    per_frame: usize,
    pace: Duration,
    queue: usize,
) -> Fleet {
    let hosts: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
    let mut observers = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        bus.delete_keys(session, h).await.unwrap();
        let cfg = bus.provision(session, h, DEFAULT_MAXLEN).await.unwrap();
        let obs = SyntheticObserver::new(session, h, 10 + i as u64);
        observers.push((
            h.clone(),
            spawn_observer_queue(&cfg, obs, frames, per_frame, pace, queue),
        ));
    }
    Fleet { hosts, observers }
}

impl Fleet {
    /// Waits for the observers off the runtime's thread, so the collector keeps running meanwhile.
    async fn join(self) -> Vec<(String, u64, observer_sink::SinkSnapshot)> {
        tokio::task::spawn_blocking(move || self.join_blocking())
            .await
            .unwrap()
    }

    fn join_blocking(self) -> Vec<(String, u64, observer_sink::SinkSnapshot)> {
        self.observers
            .into_iter()
            .map(|(h, o)| {
                let (n, s) = o.handle.join().unwrap();
                (h, n, s)
            })
            .collect()
    }
}

async fn cleanup(bus: &RedisBus, session: &str, hosts: &[String]) {
    for h in hosts {
        bus.revoke(session, h).await.unwrap();
        bus.delete_keys(session, h).await.unwrap();
    }
}

/// Redis restarts mid-stream, losing whatever it held: the collector re-creates the accounts and
/// groups, the observers reconnect, and what was lost shows up as gaps; the rest is stored once.
#[tokio::test]
async fn redis_restarted_mid_stream() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let _g = SERVICES.write().await;
    let bus = redis_bus().await;
    let (store, dir) = sqlite_store("redis-restart").await;
    let session = "redis-restart";
    let s = store.open_session(session).await.unwrap();
    let f = fleet(&bus, session, 3, 400, 100, Duration::from_millis(10), 4096).await;
    let hosts = f.hosts.clone();
    let c = Collector::start(store.clone(), s, CollectorConfig::default());
    let mut src = RedisSource::start(&c, bus.clone(), session, &hosts, "collector")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::spawn_blocking(restart_redis).await.unwrap();
    let results = f.join().await;
    wait_drained(&bus, session, &hosts, Duration::from_secs(60)).await;
    src.stop_reading().await.unwrap();
    let rep = c.finish().await.unwrap();
    src.finish().await.unwrap();
    let mut stored_total = 0;
    for (h, n, sink) in &results {
        eprintln!("{h}: generated {n}, sink {sink:?}");
        let (stored, missing) = assert_accounted(&store, s, h, *n).await;
        eprintln!("{h}: stored {stored}, reported missing {missing}");
        stored_total += stored;
    }
    assert!(stored_total > 0);
    assert_eq!(rep.counters.records, stored_total);
    cleanup(&bus, session, &hosts).await;
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// MariaDB is down for about ten seconds while observers keep sending through Redis: the
/// collector retries, entries wait unacknowledged in Redis, and in the end all are stored.
#[tokio::test]
async fn mariadb_stopped_for_ten_seconds() {
    let _g = SERVICES.write().await;
    let bus = redis_bus().await;
    let store = mariadb_store("latplan_test_outage").await;
    let session = "mariadb-outage";
    let s = store.open_session(session).await.unwrap();
    let f = fleet(&bus, session, 2, 700, 100, Duration::from_millis(20), 4096).await;
    let hosts = f.hosts.clone();
    let c = Collector::start(
        store.clone(),
        s,
        CollectorConfig {
            give_up_after: Duration::from_secs(120),
            ..Default::default()
        },
    );
    let counters = c.counters();
    let mut src = RedisSource::start(&c, bus.clone(), session, &hosts, "collector")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down_at = counters.snapshot().records;
    tokio::task::spawn_blocking(stop_mariadb).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = counters.snapshot();
    tokio::task::spawn_blocking(start_mariadb).await.unwrap();
    let results = f.join().await;
    wait_drained(&bus, session, &hosts, Duration::from_secs(120)).await;
    src.stop_reading().await.unwrap();
    let rep = c.finish().await.unwrap();
    src.finish().await.unwrap();
    assert!(
        during.store_retries > 0,
        "the outage was noticed: {during:?}"
    );
    assert!(
        during.records <= down_at + 200_000,
        "records kept being committed while MariaDB was down?"
    );
    assert!(rep.gaps.is_empty(), "{:?}", rep.gaps);
    for (h, n, sink) in &results {
        assert_eq!(sink.records_dropped, 0, "{h}: {sink:?}");
        assert_eq!(assert_accounted(&store, s, h, *n).await, (*n, 0));
    }
    cleanup(&bus, session, &hosts).await;
    store.close().await;
}

/// Runs a collector (consumer `consumer`) in a runtime of its own for 1.2 s, then tears the
/// runtime down without any shutdown: connections cut, nothing flushed, what it read and had not
/// committed left unacknowledged, as when the process is killed. Returns the records it had
/// committed by then.
async fn killed_collector(
    store: &Store,
    s: SessionId,
    session: &str,
    hosts: &[String],
    consumer: &'static str,
) -> u64 {
    let url = match store.url() {
        StoreUrl::SqliteFile(p) => format!("sqlite://{}", p.display()),
        other => panic!("unexpected store {other:?}"),
    };
    let (h2, sess) = (hosts.to_vec(), session.to_string());
    let crashed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let records = rt.block_on(async move {
            let store = Store::open(&url).await.unwrap();
            let bus = Arc::new(RedisBus::connect_with(REDIS_URL, None, None).await.unwrap());
            let c = Collector::start(
                store,
                s,
                CollectorConfig {
                    batch_records: 3000,
                    ..Default::default()
                },
            );
            let src = RedisSource::start(&c, bus, &sess, &h2, consumer)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let n = c.counters().snapshot().records;
            std::mem::forget(src);
            std::mem::forget(c);
            n
        });
        rt.shutdown_background();
        records
    });
    let committed = tokio::task::spawn_blocking(move || crashed.join().unwrap())
        .await
        .unwrap();
    assert!(
        committed > 0,
        "the first collector stored something before it died"
    );
    committed
}

/// Entries of the collector group that `consumer` read and has not acknowledged.
async fn pending_of(session: &str, hosts: &[String], consumer: &str) -> usize {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut n = 0;
    for h in hosts {
        let entries: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(planner::collector::redis::stream_key(session, h))
            .arg(planner::collector::redis::GROUP)
            .arg("-")
            .arg("+")
            .arg(1_000_000)
            .arg(consumer)
            .query_async(&mut c)
            .await
            .unwrap();
        n += entries.len();
    }
    n
}

/// A successor collector (consumer `consumer`) starts after a killed one and reads until the
/// fleet has finished: every record ends up stored exactly once, none in a gap. Returns what the
/// successor's source did.
#[expect(clippy::too_many_arguments, reason = "one scenario's inputs")]
async fn successor_stores_the_rest(
    bus: &Arc<RedisBus>,
    store: &Store,
    s: SessionId,
    session: &str,
    f: Fleet,
    committed_before_crash: u64,
    consumer: &str,
    options: SourceOptions,
) -> RedisSourceSummary {
    let hosts = f.hosts.clone();
    let c = Collector::start(store.clone(), s, CollectorConfig::default());
    let mut src = RedisSource::start_with(&c, bus.clone(), session, &hosts, consumer, options)
        .await
        .unwrap();
    let results = f.join().await;
    wait_drained(bus, session, &hosts, Duration::from_secs(60)).await;
    src.stop_reading().await.unwrap();
    let rep = c.finish().await.unwrap();
    let sum = src.finish().await.unwrap();
    eprintln!(
        "before the crash {committed_before_crash} records; the successor claimed {} entries, stored {} new records, {} duplicates",
        sum.claimed, rep.counters.records, rep.counters.duplicates
    );
    assert!(rep.gaps.is_empty(), "{:?}", rep.gaps);
    for (h, n, _) in &results {
        assert_eq!(assert_accounted(store, s, h, *n).await, (*n, 0));
    }
    assert_eq!(
        committed_before_crash + rep.counters.records,
        store.count_samples(s).await.unwrap()
    );
    sum
}

/// The collector dies abruptly (its runtime torn down mid-batch, connections cut, nothing
/// flushed) and a new one starts with the same consumer name: it re-reads the unacknowledged
/// entries and the store ends up with every record exactly once.
#[tokio::test]
async fn collector_killed_and_restarted() {
    let _g = SERVICES.read().await;
    let bus = redis_bus().await;
    let (store, dir) = sqlite_store("collector-kill").await;
    let session = "collector-kill";
    let s = store.open_session(session).await.unwrap();
    let f = fleet(&bus, session, 3, 300, 100, Duration::from_millis(8), 4096).await;
    let hosts = f.hosts.clone();
    let before = killed_collector(&store, s, session, &hosts, "collector").await;
    let options = SourceOptions::default();
    successor_stores_the_rest(&bus, &store, s, session, f, before, "collector", options).await;
    cleanup(&bus, session, &hosts).await;
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// The collector dies abruptly and a collector with another consumer name takes over: once the
/// dead one's unacknowledged entries have been idle for `claim_idle` it claims them
/// (`XAUTOCLAIM`) and stores them, so every record is stored exactly once and nothing stays
/// pending under the dead consumer.
#[tokio::test]
async fn another_collector_claims_what_a_killed_one_left_unacknowledged() {
    let _g = SERVICES.read().await;
    let bus = redis_bus().await;
    let (store, dir) = sqlite_store("collector-claim").await;
    let session = "collector-claim";
    let s = store.open_session(session).await.unwrap();
    let f = fleet(&bus, session, 3, 300, 100, Duration::from_millis(8), 4096).await;
    let hosts = f.hosts.clone();
    let before = killed_collector(&store, s, session, &hosts, "dead").await;
    let left = pending_of(session, &hosts, "dead").await;
    assert!(
        left > 0,
        "the killed collector left entries unacknowledged (else this test shows nothing)"
    );
    let options = SourceOptions {
        claim_idle: Duration::from_secs(2),
        claim_every: Duration::from_millis(500),
        ..SourceOptions::default()
    };
    let sum =
        successor_stores_the_rest(&bus, &store, s, session, f, before, "successor", options).await;
    assert!(
        sum.claimed >= left as u64,
        "the successor claimed the {left} entries the dead collector left ({sum:?})"
    );
    assert_eq!(pending_of(session, &hosts, "dead").await, 0);
    cleanup(&bus, session, &hosts).await;
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// An observer's link is cut for three seconds (its account disabled, its connections killed)
/// while it keeps producing into a small queue: it drops and counts, says so in its stats, and
/// the store's gaps are exactly the records it dropped.
#[tokio::test]
async fn an_observer_link_cut_for_a_while_is_reported_exactly() {
    let _g = SERVICES.read().await;
    let bus = redis_bus().await;
    let (store, dir) = sqlite_store("link-cut").await;
    let session = "link-cut";
    let s = store.open_session(session).await.unwrap();
    let f = fleet(&bus, session, 1, 1200, 50, Duration::from_millis(5), 32).await;
    let hosts = f.hosts.clone();
    let c = Collector::start(store.clone(), s, CollectorConfig::default());
    let mut src = RedisSource::start(&c, bus.clone(), session, &hosts, "collector")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut admin = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let user = acl_user(session, &hosts[0]);
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("off")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(&user)
        .query_async::<redis::Value>(&mut admin)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let results = f.join().await;
    wait_drained(&bus, session, &hosts, Duration::from_secs(60)).await;
    src.stop_reading().await.unwrap();
    let rep = c.finish().await.unwrap();
    src.finish().await.unwrap();
    let (h, n, sink) = &results[0];
    eprintln!(
        "{h}: generated {n}, sink {sink:?}, collector {:?}",
        rep.counters
    );
    assert!(
        sink.records_dropped > 0,
        "the cut made the observer drop: {sink:?}"
    );
    let (_, missing) = assert_accounted(&store, s, h, *n).await;
    assert_eq!(missing, sink.records_dropped, "gaps {:?}", rep.gaps);
    assert!(
        rep.gaps
            .iter()
            .all(|g| g.kind == "missing" && g.from_seq > 0 && g.to_seq < *n),
        "{:?}",
        rep.gaps
    );
    assert_eq!(rep.counters.hosts[h].observer_dropped, sink.records_dropped);
    cleanup(&bus, session, &hosts).await;
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}
