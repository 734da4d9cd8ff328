//! Collection and storage against real services: MariaDB at 127.0.0.1:3306 (administered as root
//! over the unix socket) and Redis at 127.0.0.1:6379, as `ci/setup` starts them. A test fails with
//! a clear reason when a service is missing.
//!
//! Observers are synthetic (`planner::collector::synthetic`); in Redis mode they ship through the
//! observer's own sink code (observer/src/sink/redis.rs, compiled into this binary).
//! Some tests stop and restart Redis or MariaDB (by the PID files ci/setup writes, with the same
//! start commands); they hold the services lock exclusively, every other test holds it shared.
mod sink;
use sink::redis as observer_sink;

mod encoding;
mod faults;
mod redis_bus;
mod streams;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use planner::collector::redis::{ObserverRedisConfig, RedisBus};
use planner::collector::synthetic::SyntheticObserver;
use planner::store::{Secret, SessionId, Store, StoreUrl};
use tokio::sync::RwLock;

/// Held shared by ordinary tests, exclusively by tests that restart a service.
pub static SERVICES: RwLock<()> = RwLock::const_new(());

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn state_dir() -> PathBuf {
    std::env::var_os("LATPLAN_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/latplan-ci".into())
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn redis_up() -> bool {
    run(Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", "6379", "ping"]))
        .is_ok_and(|o| o.contains("PONG"))
}

pub fn mariadb_up() -> bool {
    run(Command::new("mariadb-admin").args(["ping"])).is_ok()
}

pub fn require_redis() {
    assert!(
        redis_up(),
        "Redis is not answering at 127.0.0.1:6379: run ci/setup (it starts redis-server)"
    );
}

pub fn require_mariadb() {
    assert!(
        mariadb_up(),
        "MariaDB is not answering on /run/mysqld/mysqld.sock / 127.0.0.1:3306: run ci/setup (it starts mariadbd)"
    );
}

/// A fresh database `name` with its own user and a random password; returns the store URL and password.
pub fn mariadb_database(name: &str) -> (StoreUrl, Secret) {
    require_mariadb();
    let pw = format!(
        "pw{:x}{:x}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ 0x5eed
    );
    // One user per database: tests run in parallel and each sets its user's password.
    let user = name;
    let mut sql = format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};");
    for host in ["127.0.0.1", "localhost"] {
        sql.push_str(&format!(
            "CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{pw}'; \
             ALTER USER '{user}'@'{host}' IDENTIFIED BY '{pw}'; GRANT ALL ON {name}.* TO '{user}'@'{host}';"
        ));
    }
    run(Command::new("mariadb").args(["-uroot", "-e", &sql]))
        .expect("create the test database as root over the unix socket");
    (
        format!("mysql://{user}@127.0.0.1:3306/{name}")
            .parse()
            .unwrap(),
        Secret::new(pw),
    )
}

pub async fn mariadb_store(name: &str) -> Store {
    let (url, pw) = mariadb_database(name);
    Store::open_with(url, Some(pw))
        .await
        .expect("open the MariaDB store")
}

pub async fn sqlite_store(name: &str) -> (Store, PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("latplan-store-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/store.db", dir.display());
    (Store::open(&url).await.unwrap(), dir)
}

fn read_pid(file: &str) -> Option<i32> {
    std::fs::read_to_string(state_dir().join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn terminate(pidfile: &str) {
    let pid = read_pid(pidfile)
        .unwrap_or_else(|| panic!("no PID in {}", state_dir().join(pidfile).display()));
    run(Command::new("kill").args(["-TERM", &pid.to_string()])).unwrap();
    let t = Instant::now();
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "process {pid} ({pidfile}) did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops Redis (its data goes: ci/setup runs it without persistence) and starts it again as
/// ci/setup does.
pub fn restart_redis() {
    terminate("redis.pid");
    let st = state_dir();
    run(Command::new("redis-server").args([
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--pidfile",
        &st.join("redis.pid").to_string_lossy(),
        "--logfile",
        &st.join("redis.log").to_string_lossy(),
    ]))
    .unwrap();
    wait_for(redis_up, "redis to come back");
}

pub fn stop_mariadb() {
    terminate("mariadb.pid");
}

pub fn start_mariadb() {
    let pidfile = state_dir().join("mariadb.pid");
    std::fs::create_dir_all("/run/mysqld").unwrap();
    run(Command::new("chown").args(["mysql:mysql", "/run/mysqld"])).unwrap();
    run(Command::new("start-stop-daemon").args([
        "--start",
        "--oknodo",
        "--background",
        "--make-pidfile",
        "--pidfile",
        &pidfile.to_string_lossy(),
        "--exec",
        "/usr/sbin/mariadbd",
        "--",
        "--user=mysql",
        "--bind-address=127.0.0.1",
        "--port=3306",
    ]))
    .unwrap();
    wait_for(mariadb_up, "mariadb to come back");
}

fn wait_for(f: fn() -> bool, what: &str) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub async fn redis_bus() -> Arc<RedisBus> {
    require_redis();
    Arc::new(
        RedisBus::connect_with(REDIS_URL, None, None)
            .await
            .expect("connect to Redis"),
    )
}

/// A synthetic observer shipping through the real observer sink from a thread, paced.
pub struct ObserverThread {
    pub handle: std::thread::JoinHandle<(u64, observer_sink::SinkSnapshot)>,
}

/// Runs a synthetic observer: `frames` frames of `per_frame` records, one every `pace`,
/// stats every 10 frames, then a bye; returns (records generated, sink counters).
pub fn spawn_observer(
    cfg: &ObserverRedisConfig,
    obs: SyntheticObserver,
    frames: usize,
    per_frame: usize,
    pace: Duration,
) -> ObserverThread {
    spawn_observer_queue(cfg, obs, frames, per_frame, pace, 4096)
}

/// [`spawn_observer`] with a sink queue of `queue` frames.
pub fn spawn_observer_queue(
    cfg: &ObserverRedisConfig,
    mut obs: SyntheticObserver,
    frames: usize,
    per_frame: usize,
    pace: Duration,
    queue: usize,
) -> ObserverThread {
    let line = cfg.to_stdin_line();
    let handle = std::thread::spawn(move || {
        let sink_cfg = observer_sink::RedisSinkConfig::from_stdin_line(&line)
            .expect("the sink reads latplan's stdin line");
        let sink = observer_sink::RedisSink::start(sink_cfg, &obs.boot_id, obs.started_ns, queue)
            .expect("start the sink");
        sink.send(&obs.hello());
        for i in 0..frames {
            sink.send(&obs.samples(per_frame));
            if i % 10 == 9 {
                sink.send(&obs.stats(i as u64, 0));
            }
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
        // The final report includes what the sink dropped, so the collector can name it.
        obs.records_dropped = sink.snapshot().records_dropped;
        sink.send_wait(&obs.stats(u64::MAX / 2, 0), Duration::from_secs(10));
        sink.send_wait(&obs.bye(), Duration::from_secs(10));
        let last_error = sink.last_error();
        let snap = sink.close(Duration::from_secs(20));
        eprintln!("{}: sink {snap:?}, last error {last_error:?}", obs.host);
        (obs.next_seq, snap)
    });
    ObserverThread { handle }
}

/// Waits until the collector group has read and acknowledged everything in the hosts' streams.
pub async fn wait_drained(bus: &RedisBus, session: &str, hosts: &[String], timeout: Duration) {
    let t = Instant::now();
    loop {
        match bus.backlog(session, hosts).await {
            Ok(0) => return,
            Ok(n) => assert!(
                t.elapsed() < timeout,
                "collector still has {n} entries to go after {timeout:?}"
            ),
            Err(e) => assert!(
                t.elapsed() < timeout,
                "backlog unreadable after {timeout:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the store's account of a run against what the observer generated: every record
/// stored once or inside a reported gap, no reported gap covering a stored record.
pub async fn assert_accounted(
    store: &Store,
    session: SessionId,
    host: &str,
    generated: u64,
) -> (u64, u64) {
    let runs: Vec<_> = store
        .runs(session)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.host == host)
        .collect();
    assert_eq!(runs.len(), 1, "one run for {host}");
    let run = runs[0].id;
    let mut seqs = Vec::new();
    let mut cur = store.samples(session, 50_000).await.unwrap();
    while let Some(page) = cur.next_page().await.unwrap() {
        seqs.extend(
            page.into_iter()
                .filter(|s| s.run_id == run)
                .map(|s| s.record_seq),
        );
    }
    let stored = seqs.len() as u64;
    let gaps: Vec<_> = store
        .gaps(session)
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.run_id == run)
        .collect();
    let missing: u64 = gaps.iter().map(|g| g.missing()).sum();
    assert_eq!(
        stored + missing,
        generated,
        "{host}: {stored} stored + {missing} reported missing != {generated} generated; gaps {gaps:?}"
    );
    for g in &gaps {
        assert!(
            !seqs.iter().any(|s| (g.from_seq..g.to_seq).contains(s)),
            "gap {g:?} covers a stored record"
        );
    }
    (stored, missing)
}
