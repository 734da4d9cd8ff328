//! `latplan apply` with the Redis bus into MariaDB, on the lab: observers' own counts (their
//! goodbye) equal the rows in the store, and the session's Redis accounts and keys are gone after.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use planner::store::{Secret, Store};

use super::{Fresh, LATPLAN, Traffic, text, wait_until};
use labtools::testlab;

/// A private redis-server the lab namespaces can reach (the shared one listens on loopback
/// only), on the manager's lab address, with a password for latplan's (default) account; the
/// observers get accounts of their own. Stopped when dropped.
pub struct LabRedis {
    child: Child,
    pub url: String,
    port: u16,
    pub password: String,
}

impl LabRedis {
    pub fn start(port: u16) -> LabRedis {
        let password = format!("lab{:x}", std::process::id());
        let child = Command::new("redis-server")
            .args(["--bind", "10.77.0.1", "--port", &port.to_string()])
            .args(["--requirepass", &password])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (ci/setup installs it)");
        let r = LabRedis {
            child,
            url: format!("redis://10.77.0.1:{port}"),
            port,
            password,
        };
        wait_until(Duration::from_secs(10), "the lab Redis answers", || {
            r.cli(&["ping"]).contains("PONG")
        });
        r
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let o = Command::new("redis-cli")
            .args(["-h", "10.77.0.1", "-p", &self.port.to_string()])
            .args(["-a", &self.password, "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Keys and accounts of ours left in Redis.
    pub fn leftovers(&self) -> String {
        let keys = self.cli(&["--scan", "--pattern", "latplan:*"]);
        let users = self.cli(&["acl", "users"]);
        let users: Vec<&str> = users
            .lines()
            .filter(|u| u.starts_with("latplan-"))
            .collect();
        format!("{}{}", keys.trim(), users.join(" "))
    }
}

impl Drop for LabRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh MariaDB database and user (root over the unix socket); the URL and password.
pub fn mariadb(name: &str) -> (String, String) {
    let pw = format!("pw{:x}", std::process::id());
    let mut sql = format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};");
    for host in ["127.0.0.1", "localhost"] {
        sql.push_str(&format!(
            "CREATE USER IF NOT EXISTS '{name}'@'{host}' IDENTIFIED BY '{pw}'; \
             ALTER USER '{name}'@'{host}' IDENTIFIED BY '{pw}'; GRANT ALL ON {name}.* TO '{name}'@'{host}';"
        ));
    }
    let o = Command::new("mariadb")
        .args(["-uroot", "-e", &sql])
        .output()
        .expect("mariadb client (ci/setup installs it)");
    assert!(
        o.status.success(),
        "MariaDB is needed (ci/setup starts it): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (format!("mysql://{name}@127.0.0.1:3306/{name}"), pw)
}

/// The stored session: (sum of the observers' goodbye totals, sample rows, gaps, runs without a
/// goodbye).
pub fn stored_counts(url: &str, pw: &str, session: &str) -> (u64, u64, usize, usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open_with(url.parse().unwrap(), Some(Secret::new(pw.to_string())))
            .await
            .unwrap();
        let s = store
            .session_by_name(session)
            .await
            .unwrap()
            .expect("the session is stored");
        let runs = store.runs(s.id).await.unwrap();
        let byes: u64 = runs.iter().filter_map(|r| r.bye_records_total).sum();
        let without = runs
            .iter()
            .filter(|r| r.bye_records_total.is_none())
            .count();
        let rows = store.count_samples(s.id).await.unwrap();
        let gaps = store.gaps(s.id).await.unwrap().len();
        (byes, rows, gaps, without)
    })
}

/// Every observer run said goodbye, the store holds exactly the records they said they sent,
/// no gap, and the session's Redis accounts and keys are gone. `out`: latplan's output, shown
/// when not.
fn assert_every_record_stored(db: &str, pw: &str, session: &str, redis: &LabRedis, out: &str) {
    let (byes, rows, gaps, without) = stored_counts(db, pw, session);
    assert_eq!(without, 0, "every observer run said goodbye: {out}");
    assert!(byes > 0, "records were sampled: {out}");
    assert_eq!(
        rows, byes,
        "rows in the store = records the observers sent: {out}"
    );
    assert_eq!(gaps, 0, "{out}");
    assert_eq!(
        redis.leftovers(),
        "",
        "the session's accounts and keys are gone"
    );
}

#[test]
fn apply_over_redis_into_mariadb_stores_every_record_the_observers_sent() {
    let f = Fresh::take();
    let redis = LabRedis::start(16391);
    let (db, pw) = mariadb("lp_redis_apply");
    let _traffic = Traffic::start(30, "20M");
    let run = Command::new(LATPLAN)
        .args(["apply", &f.inv, "--duration", "10s", "--session", "redis-1"])
        .args(["--store", &db, "--bus", &redis.url])
        .env("LATPLAN_ARTIFACTS", testlab::artifacts_dir())
        .env("LATPLAN_DB_PASSWORD", &pw)
        .env("LATPLAN_BUS_PASSWORD", &redis.password)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = text(&run);
    assert!(run.status.success(), "apply over Redis failed: {out}");
    assert!(out.contains("failed=0 unreachable=0"), "{out}");
    assert!(out.contains("e2e ct1→vm2"), "the report is printed: {out}");
    assert_every_record_stored(&db, &pw, "redis-1", &redis, &out);
    // The Redis bus needs the observer with its Redis sink.
    super::assert_installed_observer_is("observer");
    let t = super::latplan(&["teardown", &f.inv]);
    assert!(t.status.success(), "{}", text(&t));
    super::assert_clean("after teardown");
}

/// `latplan apply INV --detach` of session `name` into `store` over the lab Redis, which must
/// succeed; `latplan` runs latplan with the test's environment.
fn apply_detached(
    latplan: &dyn Fn(&[&str]) -> std::process::Output,
    inv: &str,
    name: &str,
    store: &str,
    redis: &LabRedis,
) -> std::process::Output {
    let up = latplan(&[
        "apply",
        inv,
        "--detach",
        "--session",
        name,
        "--store",
        store,
        "--bus",
        &redis.url,
    ]);
    assert!(up.status.success(), "apply --detach: {}", text(&up));
    up
}

#[test]
fn a_detached_session_shows_its_rates_and_stop_prints_the_report_then_teardown_cleans() {
    let f = Fresh::take();
    let redis = LabRedis::start(16392);
    let state = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", db.path().join("s.db").display());
    let latplan = |args: &[&str]| {
        Command::new(LATPLAN)
            .args(args)
            .env("LATPLAN_ARTIFACTS", testlab::artifacts_dir())
            .env("LATPLAN_STATE_DIR", state.path())
            .env("LATPLAN_BUS_PASSWORD", &redis.password)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let _traffic = Traffic::start(90, "10M");
    let up = apply_detached(&latplan, &f.inv, "det-1", &store, &redis);
    assert!(
        text(&up).contains("running in the background"),
        "{}",
        text(&up)
    );

    // The foreground is gone; the background collector reports live rates per host.
    let mut last = String::new();
    wait_until(
        Duration::from_secs(60),
        "status shows records flowing",
        || {
            let o = latplan(&["status", "det-1", "--format", "json"]);
            last = text(&o);
            let v: serde_json::Value = match serde_json::from_slice(&o.stdout) {
                Ok(v) => v,
                Err(_) => return false,
            };
            let s = &v[0]["status"];
            v[0]["state"] == "running"
                && s["records_per_sec"].as_f64().unwrap_or(0.0) > 0.0
                && s["hosts"].as_object().is_some_and(|h| h.len() == 4)
        },
    );
    let table = text(&latplan(&["status"]));
    assert!(
        table.contains("det-1") && table.contains("running"),
        "{table}"
    );
    assert!(
        table.contains("metal1") && table.contains("vm2"),
        "{table}\n{last}"
    );

    let stop = latplan(&["stop", "det-1"]);
    let out = text(&stop);
    assert!(stop.status.success(), "stop: {out}");
    assert!(out.contains("e2e ct1→vm2"), "stop prints the report: {out}");
    assert!(out.contains("failed=0 unreachable=0"), "{out}");
    let v: serde_json::Value =
        serde_json::from_slice(&latplan(&["status", "det-1", "--format", "json"]).stdout).unwrap();
    assert_eq!(v[0]["state"], "completed", "{v}");
    assert_eq!(
        redis.leftovers(),
        "",
        "the session's accounts and keys are gone"
    );

    let t = super::latplan(&["teardown", &f.inv]);
    assert!(t.status.success(), "{}", text(&t));
    super::assert_clean("after teardown of a detached session");
}

/// The background collector of a detached session is killed (-9) mid-session: `status` shows it
/// dead, and `latplan stop` finishes the session itself, claiming what the dead collector had
/// read and not acknowledged: every record the observers said they sent is stored, once, the
/// report is printed, and the session's Redis accounts and keys are gone.
#[test]
fn stop_finishes_a_detached_session_whose_collector_was_killed() {
    let f = Fresh::take();
    let redis = LabRedis::start(16393);
    let (db, pw) = mariadb("lp_detach_killed");
    let state = tempfile::tempdir().unwrap();
    let latplan = |args: &[&str]| {
        Command::new(LATPLAN)
            .args(args)
            .env("LATPLAN_ARTIFACTS", testlab::artifacts_dir())
            .env("LATPLAN_STATE_DIR", state.path())
            .env("LATPLAN_DB_PASSWORD", &pw)
            .env("LATPLAN_BUS_PASSWORD", &redis.password)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let status = || -> serde_json::Value {
        let o = latplan(&["status", "det-kill", "--format", "json"]);
        serde_json::from_slice(&o.stdout).unwrap_or_default()
    };
    let _traffic = Traffic::start(90, "10M");
    apply_detached(&latplan, &f.inv, "det-kill", &db, &redis);
    let mut last = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(60),
        "status shows records flowing",
        || {
            last = status();
            last[0]["state"] == "running"
                && last[0]["status"]["records_per_sec"].as_f64().unwrap_or(0.0) > 0.0
        },
    );
    // One more status period: the collector stores the clock fits on each.
    std::thread::sleep(Duration::from_secs(6));
    let pid = last[0]["pid"]
        .as_i64()
        .expect("status names the collector's pid") as i32;
    // SAFETY: plain syscall; the PID is the session's background latplan, as status says.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
    wait_until(
        Duration::from_secs(10),
        "status shows the collector dead",
        || {
            last = status();
            last[0]["state"]
                .as_str()
                .is_some_and(|s| s.starts_with("dead"))
        },
    );

    let stop = latplan(&["stop"]);
    let out = text(&stop);
    assert!(stop.status.success(), "stop: {out}");
    assert!(out.contains("collecting the rest from Redis"), "{out}");
    assert!(out.contains("e2e ct1→vm2"), "stop prints the report: {out}");
    assert!(out.contains("failed=0 unreachable=0"), "{out}");
    assert_eq!(status()[0]["state"], "completed");
    assert_every_record_stored(&db, &pw, "det-kill", &redis, &out);

    let t = super::latplan(&["teardown", &f.inv]);
    assert!(t.status.success(), "{}", text(&t));
    super::assert_clean("after teardown of a detached session whose collector was killed");
}
