//! The real static observer with its Redis sink: settings on stdin, daemonized, lease key,
//! records through Redis into the collector. Root (eBPF) and Redis at 127.0.0.1:6379.
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use planner::collector::redis::{DEFAULT_MAXLEN, RedisBus, RedisSource};
use planner::collector::{Collector, CollectorConfig};
use planner::store::Store;

use super::{require_redis, wait_until};

/// Bulk TCP over loopback in this (the root) namespace, which is the one the observer records.
fn loopback_traffic(bytes: usize) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while s.read(&mut buf).unwrap() > 0 {}
    });
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let chunk = vec![7u8; 1 << 16];
    for _ in 0..bytes / chunk.len() {
        s.write_all(&chunk).unwrap();
    }
    drop(s);
    rx.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_observer_streams_through_redis_and_stops_on_its_lease_key() {
    require_redis();
    let dir = tempfile::tempdir().unwrap();
    let session = format!("obsredis{}", std::process::id());
    let host = "loop";
    let hosts = vec![host.to_string()];
    let bus = Arc::new(
        RedisBus::connect_with("redis://127.0.0.1:6379", None, None)
            .await
            .unwrap(),
    );
    let cfg = bus.provision(&session, host, DEFAULT_MAXLEN).await.unwrap();
    bus.renew_leases(&session, &hosts).await.unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let sid = store.open_session(&session).await.unwrap();
    let collector = Collector::start(store.clone(), sid, CollectorConfig::default());
    let mut src = RedisSource::start(&collector, bus.clone(), &session, &hosts, "t")
        .await
        .unwrap();

    let (log, pid_file) = (
        dir.path().join("observer.log"),
        dir.path().join("observer.pid"),
    );
    let observer = labtools::testlab::artifacts_dir().join("observer");
    let mut child = Command::new(&observer)
        .args([
            "run",
            "--sink",
            "redis",
            "--session",
            &session,
            "--host",
            host,
        ])
        .args([
            "--size",
            "4096",
            "--lease",
            "15",
            "--stats-interval",
            "1",
            "--daemon",
        ])
        .arg("--log")
        .arg(&log)
        .arg("--pid-file")
        .arg(&pid_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", observer.display()));
    // The credentials go over stdin only.
    let line = cfg.to_stdin_line();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the daemon did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&cfg.password),
        "the password is not in argv"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );

    // Traffic while latplan renews the lease.
    let renew = {
        let (bus, s, h) = (bus.clone(), session.clone(), hosts.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = bus.renew_leases(&s, &h).await;
            }
        })
    };
    tokio::task::spawn_blocking(|| loopback_traffic(64 << 20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        bus.status(&session, host).await.unwrap().is_some(),
        "the observer keeps its heartbeat key alive"
    );
    renew.abort();

    // The end: the lease key says stop; the observer flushes, says goodbye and exits.
    bus.stop_leases(&session, &hosts).await.unwrap();
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    wait_until(
        Duration::from_secs(15),
        "the observer exits after stop",
        || !alive(),
    );
    let t = Instant::now();
    while bus.backlog(&session, &hosts).await.unwrap() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the collector caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    src.stop_reading().await.unwrap();
    let report = collector.finish().await.unwrap();
    src.finish().await.unwrap();

    let runs = store.runs(sid).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let total = runs[0]
        .bye_records_total
        .expect("the observer said goodbye");
    assert_eq!(runs[0].bye_reason.as_deref(), Some("stopped by latplan"));
    assert!(total > 100, "loopback traffic was sampled: {total}");
    assert_eq!(store.count_samples(sid).await.unwrap(), total);
    assert!(report.gaps.is_empty(), "{:?}", report.gaps);
    assert_eq!(report.counters.duplicates, 0);
    bus.revoke(&session, host).await.unwrap();
    bus.delete_keys(&session, host).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("detached (stopped by latplan)"), "{text}");
}

#[test]
fn a_daemon_with_wrong_credentials_fails_at_start_with_the_reason() {
    require_redis();
    let dir = tempfile::tempdir().unwrap();
    let observer = labtools::testlab::artifacts_dir().join("observer");
    let mut child = Command::new(&observer)
        .args(["run", "--sink", "redis", "--session", "x", "--daemon"])
        .arg("--log")
        .arg(dir.path().join("log"))
        .arg("--pid-file")
        .arg(dir.path().join("pid"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = r#"{"redis":{"url":"redis://127.0.0.1:6379","username":"latplan-nobody","password":"wrong","stream_key":"latplan:x:h:records","status_key":"latplan:x:h:status","maxlen":10,"status_ttl_secs":10,"lease_key":"latplan:x:h:lease"}}"#;
    writeln!(child.stdin.take().unwrap(), "{line}").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed to connect to Redis"), "{err}");
    assert!(!err.contains("wrong\""), "no password in messages: {err}");
}
