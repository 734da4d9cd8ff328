//! Redis mode: per-host ACL accounts, observers' sinks, consumer group into MariaDB.
use std::time::Duration;

use planner::collector::redis::{DEFAULT_MAXLEN, RedisSource, lease_key, status_key, stream_key};
use planner::collector::synthetic::SyntheticObserver;
use planner::collector::{Collector, CollectorConfig};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use super::*;

async fn observer_conn(cfg: &ObserverRedisConfig) -> redis::aio::MultiplexedConnection {
    let mut url = cfg.url.clone();
    url.insert_str(
        "redis://".len(),
        &format!("{}:{}@", cfg.username, cfg.password),
    );
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Three observers through their sinks and Redis into MariaDB: counts equal, nothing missing.
#[tokio::test]
async fn observers_through_redis_into_mariadb_store_every_record() {
    let _g = SERVICES.read().await;
    let bus = redis_bus().await;
    let store = mariadb_store("latplan_test_redis").await;
    let session = "redis-basic";
    let s = store.open_session(session).await.unwrap();
    let hosts: Vec<String> = (1..=3).map(|i| format!("metal{i}")).collect();
    let mut observers = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        bus.delete_keys(session, h).await.unwrap();
        let cfg = bus.provision(session, h, DEFAULT_MAXLEN).await.unwrap();
        observers.push((
            h.clone(),
            spawn_observer(
                &cfg,
                SyntheticObserver::new(session, h, i as u64 + 1),
                300,
                200,
                Duration::from_millis(2),
            ),
        ));
    }
    let c = Collector::start(store.clone(), s, CollectorConfig::default());
    let mut src = RedisSource::start(&c, bus.clone(), session, &hosts, "collector-1")
        .await
        .unwrap();
    let mut generated = Vec::new();
    for (h, o) in observers {
        let (n, sink) = tokio::task::spawn_blocking(move || o.handle.join().unwrap())
            .await
            .unwrap();
        assert_eq!(
            (sink.records_sent, sink.records_dropped),
            (n, 0),
            "{h}: {sink:?}"
        );
        generated.push((h, n));
    }
    // Heartbeats are there, with a TTL.
    let hb = bus
        .status(session, &hosts[0])
        .await
        .unwrap()
        .expect("a heartbeat");
    assert!(hb.contains("records_sent"), "{hb}");
    wait_drained(&bus, session, &hosts, Duration::from_secs(60)).await;
    src.stop_reading().await.unwrap();
    let rep = c.finish().await.unwrap();
    let summary = src.finish().await.unwrap();
    assert!(rep.gaps.is_empty(), "{:?}", rep.gaps);
    assert_eq!(summary.acked, summary.entries, "{summary:?}");
    for (h, n) in &generated {
        assert_eq!(assert_accounted(&store, s, h, *n).await, (*n, 0));
    }
    assert_eq!(store.count_samples(s).await.unwrap(), 3 * 300 * 200);
    for h in &hosts {
        bus.revoke(session, h).await.unwrap();
        bus.delete_keys(session, h).await.unwrap();
    }
    store.close().await;
}

/// An observer's account can append to its own stream and set its own status, and nothing else.
#[tokio::test]
async fn an_observer_account_is_confined_to_its_own_keys() {
    let _g = SERVICES.read().await;
    let bus = redis_bus().await;
    let session = "acl";
    let mine = bus.provision(session, "a", 1000).await.unwrap();
    let _other = bus.provision(session, "b", 1000).await.unwrap();
    let mut c = observer_conn(&mine).await;
    let ok: redis::RedisResult<String> = redis::cmd("XADD")
        .arg(stream_key(session, "a"))
        .arg("*")
        .arg("f")
        .arg("x")
        .query_async(&mut c)
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let ok: redis::RedisResult<()> = redis::cmd("SET")
        .arg(status_key(session, "a"))
        .arg("{}")
        .arg("EX")
        .arg(5)
        .query_async(&mut c)
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    // Its lease it may read (latplan renews it), never write.
    bus.renew_leases(session, &["a".to_string()]).await.unwrap();
    let lease: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(lease_key(session, "a"))
        .query_async(&mut c)
        .await;
    assert_eq!(lease.unwrap().as_deref(), Some("run"));
    let denied: [(&str, Vec<String>); 9] = [
        ("SET", vec![lease_key(session, "a"), "run".into()]),
        ("GET", vec![lease_key(session, "b")]),
        (
            "XADD",
            vec![stream_key(session, "b"), "*".into(), "f".into(), "x".into()],
        ),
        ("SET", vec![status_key(session, "b"), "x".into()]),
        (
            "XRANGE",
            vec![stream_key(session, "a"), "-".into(), "+".into()],
        ),
        ("DEL", vec![stream_key(session, "a")]),
        ("KEYS", vec!["*".into()]),
        ("ACL", vec!["LIST".into()]),
        ("FLUSHALL", vec![]),
    ];
    for (cmd, args) in denied {
        let r: redis::RedisResult<redis::Value> =
            redis::cmd(cmd).arg(&args).query_async(&mut c).await;
        let e = r.expect_err(&format!("{cmd} {args:?} must be refused"));
        assert!(
            e.to_string().contains("NOPERM") || e.code() == Some("NOPERM"),
            "{cmd}: {e}"
        );
    }
    // A wrong password is refused; after revoke the right one is too.
    let mut wrong = mine.clone();
    wrong.password = "nope".into();
    let url = format!(
        "redis://{}:{}@127.0.0.1:6379",
        wrong.username, wrong.password
    );
    assert!(
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_err()
    );
    bus.revoke(session, "a").await.unwrap();
    bus.revoke(session, "b").await.unwrap();
    let url = format!("redis://{}:{}@127.0.0.1:6379", mine.username, mine.password);
    assert!(
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_err()
    );
    bus.delete_keys(session, "a").await.unwrap();
    bus.delete_keys(session, "b").await.unwrap();
    // Names that would widen the key pattern never reach Redis.
    assert!(bus.provision(session, "*", 10).await.is_err());
    assert!(bus.provision("s:x", "h", 10).await.is_err());
}

/// Garbage entries in a stream are reported, acknowledged (re-reading cannot fix them), and the
/// good entries around them are stored.
#[tokio::test]
async fn malformed_entries_are_reported_and_skipped() {
    let _g = SERVICES.read().await;
    let bus = redis_bus().await;
    let (store, dir) = sqlite_store("malformed").await;
    let session = "malformed";
    let host = "h1".to_string();
    bus.delete_keys(session, &host).await.unwrap();
    let cfg = bus.provision(session, &host, 1000).await.unwrap();
    let mut c = observer_conn(&cfg).await;
    let mut obs = SyntheticObserver::new(session, &host, 3);
    let tag = format!("{}/{}", obs.boot_id, obs.started_ns);
    let key = stream_key(session, &host);
    let entries: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![
            ("run", tag.clone().into_bytes()),
            ("f", obs.hello().encode()),
        ],
        vec![
            ("run", tag.clone().into_bytes()),
            ("f", obs.samples(10).encode()),
        ],
        vec![
            ("run", tag.clone().into_bytes()),
            ("f", b"not a frame at all".to_vec()),
        ],
        vec![
            ("run", tag.clone().into_bytes()),
            ("f", obs.samples(10).encode()[..40].to_vec()),
        ], // records 10..20 lost
        vec![("f", obs.samples(10).encode())], // no run tag: 20..30 lost
        vec![
            ("run", b"garbage".to_vec()),
            ("f", obs.samples(10).encode()),
        ], // 30..40 lost
        vec![
            ("run", tag.clone().into_bytes()),
            ("f", obs.samples(10).encode()),
        ],
        vec![("run", tag.clone().into_bytes()), ("f", obs.bye().encode())],
    ];
    for e in &entries {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key).arg("*");
        for (k, v) in e {
            cmd.arg(*k).arg(v.as_slice());
        }
        cmd.query_async::<String>(&mut c).await.unwrap();
    }
    let s = store.open_session(session).await.unwrap();
    let col = Collector::start(store.clone(), s, CollectorConfig::default());
    let mut src = RedisSource::start(&col, bus.clone(), session, std::slice::from_ref(&host), "c")
        .await
        .unwrap();
    wait_drained(
        &bus,
        session,
        std::slice::from_ref(&host),
        Duration::from_secs(30),
    )
    .await;
    src.stop_reading().await.unwrap();
    let rep = col.finish().await.unwrap();
    src.finish().await.unwrap();
    assert_eq!(rep.counters.records, 20);
    assert_eq!(
        rep.gaps
            .iter()
            .map(|g| (g.from_seq, g.to_seq))
            .collect::<Vec<_>>(),
        vec![(10, 40)]
    );
    assert_eq!(store.stream_errors(s).await.unwrap().len(), 4);
    bus.revoke(session, &host).await.unwrap();
    bus.delete_keys(session, &host).await.unwrap();
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// The blocking sink the observer's writer thread uses (its `Sink` trait): frames written and
/// flushed reach the store; a stream that does not start with the hello is refused.
#[tokio::test]
async fn the_observer_writer_sink_ships_its_frames() {
    use crate::sink::Sink;
    let _g = SERVICES.read().await;
    let bus = redis_bus().await;
    let (store, dir) = sqlite_store("writer-sink").await;
    let session = "writer-sink";
    let host = "m1".to_string();
    bus.delete_keys(session, &host).await.unwrap();
    let cfg = bus.provision(session, &host, DEFAULT_MAXLEN).await.unwrap();
    let line = cfg.to_stdin_line();
    let mut obs = SyntheticObserver::new(session, &host, 5);
    let generated = tokio::task::spawn_blocking(move || {
        let sink_cfg = observer_sink::RedisSinkConfig::from_stdin_line(&line).unwrap();
        let mut early = observer_sink::RedisStreamSink::connect(sink_cfg.clone()).unwrap();
        let e = early.write_frame(&obs.samples(1).encode()).unwrap_err();
        assert!(e.to_string().contains("hello"), "{e}");
        obs.next_seq = 0;
        let mut sink = observer_sink::RedisStreamSink::connect(sink_cfg).unwrap();
        sink.write_frame(&obs.hello().encode()).unwrap();
        for i in 0..150 {
            sink.write_frame(&obs.samples(100).encode()).unwrap();
            if i % 40 == 0 {
                sink.flush().unwrap();
            }
        }
        sink.write_frame(&obs.stats(1, 0).encode()).unwrap();
        sink.write_frame(&obs.bye().encode()).unwrap();
        sink.flush().unwrap();
        obs.next_seq
    })
    .await
    .unwrap();
    let s = store.open_session(session).await.unwrap();
    let c = Collector::start(store.clone(), s, CollectorConfig::default());
    let hosts = std::slice::from_ref(&host);
    let mut src = RedisSource::start(&c, bus.clone(), session, hosts, "c")
        .await
        .unwrap();
    wait_drained(&bus, session, hosts, Duration::from_secs(30)).await;
    src.stop_reading().await.unwrap();
    let rep = c.finish().await.unwrap();
    src.finish().await.unwrap();
    assert!(rep.gaps.is_empty(), "{:?}", rep.gaps);
    assert_eq!(
        assert_accounted(&store, s, &host, generated).await,
        (15_000, 0)
    );
    assert!(
        bus.status(session, &host).await.unwrap().is_some(),
        "the writer sink keeps a heartbeat"
    );
    bus.revoke(session, &host).await.unwrap();
    bus.delete_keys(session, &host).await.unwrap();
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// `rediss://`: a TLS-only Redis (started here on a spare port with a throw-away CA) carries the
/// whole path: provisioning, the observer's sink (CA handed over in the stdin line) and the source.
#[tokio::test]
async fn rediss_urls_use_tls_end_to_end() {
    let _g = SERVICES.read().await;
    let tls = TlsRedis::start(16390);
    let ca = std::fs::read_to_string(tls.dir.join("ca.pem")).unwrap();
    let url = "rediss://127.0.0.1:16390";
    let bus = Arc::new(
        RedisBus::connect_with(url, None, Some(ca))
            .await
            .expect("connect over TLS"),
    );
    // The same server without the CA (webpki roots only) is refused: the certificate is checked.
    assert!(RedisBus::connect_with(url, None, None).await.is_err());
    let (store, dir) = sqlite_store("tls").await;
    let session = "tls";
    let host = "m1".to_string();
    let cfg = bus.provision(session, &host, 1000).await.unwrap();
    assert!(cfg.ca_pem.is_some() && cfg.url == url, "{cfg:?}");
    let o = spawn_observer(
        &cfg,
        SyntheticObserver::new(session, &host, 1),
        40,
        100,
        Duration::ZERO,
    );
    let (n, sink) = tokio::task::spawn_blocking(move || o.handle.join().unwrap())
        .await
        .unwrap();
    assert_eq!(sink.records_dropped, 0, "{sink:?}");
    let s = store.open_session(session).await.unwrap();
    let c = Collector::start(store.clone(), s, CollectorConfig::default());
    let hosts = std::slice::from_ref(&host);
    let mut src = RedisSource::start(&c, bus.clone(), session, hosts, "c")
        .await
        .unwrap();
    wait_drained(&bus, session, hosts, Duration::from_secs(30)).await;
    src.stop_reading().await.unwrap();
    let rep = c.finish().await.unwrap();
    src.finish().await.unwrap();
    assert!(rep.gaps.is_empty(), "{:?}", rep.gaps);
    assert_eq!(assert_accounted(&store, s, &host, n).await, (4000, 0));
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A TLS-only redis-server of this test's own, stopped (by its PID file) when dropped.
struct TlsRedis {
    dir: PathBuf,
}

impl TlsRedis {
    fn start(port: u16) -> TlsRedis {
        require_redis();
        let dir = std::env::temp_dir().join(format!("latplan-tls-redis-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |script: &str| {
            let out = Command::new("sh")
                .arg("-ec")
                .arg(script)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=latplan-test-ca
            openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1
            printf 'subjectAltName=IP:127.0.0.1\\n' > ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext");
        sh(&format!(
            "redis-server --daemonize yes --port 0 --tls-port {port} --bind 127.0.0.1 --tls-cert-file server.pem \
             --tls-key-file server.key --tls-ca-cert-file ca.pem --tls-auth-clients no --save '' --appendonly no \
             --pidfile {0}/redis.pid --logfile {0}/redis.log",
            dir.display()
        ));
        let t = Instant::now();
        while !dir.join("redis.pid").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the TLS redis-server did not start; see {}/redis.log",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        TlsRedis { dir }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("redis.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
