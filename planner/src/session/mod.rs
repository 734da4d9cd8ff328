//! What a measurement session puts on each host, decided from the inventory alone (no I/O):
//! where files go, the observer's configuration, the clock domains and who answers for each.
//! The one exception, [`state`], keeps detached sessions' local files.
use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::json;

pub mod state;

use crate::inventory::{DEFAULT_INSTALL_DIR, Host, Inventory, Kind};
use crate::transport::shell::{quote, quote_path};

/// Seconds without a heartbeat after which an observer detaches and exits (DESIGN.md §10).
pub const OBSERVER_LEASE_SECONDS: u64 = 15;
/// How often the manager renews the lease.
pub const HEARTBEAT_SECONDS: u64 = 2;

/// What every reflector of a session is started with.
#[derive(Debug, Clone, Copy)]
pub struct ReflectArgs<'a> {
    /// The session's probe token.
    pub token: &'a str,
    pub port: u16,
    /// `timesync reflect --mode` (the inventory's `Sampling::reflector_mode`).
    pub mode: &'a str,
}

/// Where our files live on one host. Everything is under `install_dir`, so teardown removes one
/// directory; nothing is written elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub install_dir: PathBuf,
}

impl Layout {
    pub fn of(host: &Host) -> Layout {
        Layout {
            install_dir: host
                .install_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_DIR)),
        }
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.install_dir.join("bin").join(name)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.install_dir.join("run")
    }

    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.pid"))
    }

    pub fn observer_config(&self) -> PathBuf {
        self.run_dir().join("observer.json")
    }

    /// Runs the observer in the foreground of the SSH channel: records on stdout, heartbeats on
    /// stdin. The PID file lets teardown find it after a crash of the manager.
    pub fn observer_command(&self, session: &str) -> String {
        format!(
            "mkdir -p {run} && echo $$ > {pid} && exec {bin} run --config {cfg} --session {session}",
            session = quote(session),
            run = quote_path(&self.run_dir()),
            pid = quote_path(&self.pid_file("observer")),
            bin = quote_path(&self.bin("observer")),
            cfg = quote_path(&self.observer_config()),
        )
    }

    /// Redis mode: the observer reads its Redis settings line on stdin, attaches, then leaves the
    /// channel (a daemon with its own session, PID file and 0600 log under `run/`); it lives on
    /// the lease key latplan renews. Prints the daemon's PID; exits 1 with the log's tail if the
    /// start failed.
    pub fn observer_daemon_command(&self, session: &str) -> String {
        format!(
            "mkdir -p {run} && exec {bin} run --config {cfg} --session {session} --daemon --log {log} --pid-file {pid}",
            session = quote(session),
            run = quote_path(&self.run_dir()),
            pid = quote_path(&self.pid_file("observer")),
            bin = quote_path(&self.bin("observer")),
            cfg = quote_path(&self.observer_config()),
            log = quote_path(&self.run_dir().join("observer.log")),
        )
    }

    /// Runs the reflector while the manager holds this command's stdin open: end of input (the
    /// session ended, or the manager is gone and SSH closed the channel) stops it. Its XDP link is
    /// owned by the process, so a killed reflector leaves nothing attached. It answers on the
    /// interface the host routes `manager` (the manager's address toward it) through, found in the
    /// same command: one round trip per reflector.
    pub fn reflector_command(&self, manager: &str, r: &ReflectArgs) -> String {
        format!(
            "mkdir -p {run}\n\
             r=$(ip -o route get {manager} 2>&1) || r=\"$r (exit $?)\"\n\
             case \"$r\" in *' dev '*) ;; *) echo \"no route back to the manager ({manager}): $r\" >&2; exit 1;; esac\n\
             iface=${{r#* dev }}; iface=${{iface%% *}}\n\
             {bin} reflect --interface \"$iface\" --token {token} --port {port} --mode {mode} </dev/null &\n\
             p=$!\n\
             echo $p > {pid}\n\
             cat >/dev/null\n\
             kill $p 2>/dev/null\n\
             wait $p\n\
             rm -f {pid}",
            run = quote_path(&self.run_dir()),
            bin = quote_path(&self.bin("timesync")),
            manager = quote(manager),
            token = quote(r.token),
            port = r.port,
            mode = quote(r.mode),
            pid = quote_path(&self.pid_file("timesync")),
        )
    }

    /// Stops what we run, detaches what we attached, and removes every file we put on the host.
    /// Safe to run twice and after a crash: each step tolerates what is already gone.
    pub fn teardown_command(&self) -> String {
        format!(
            "{running}d={dir}\n\
             removed=''\n\
             for n in observer timesync; do\n\
             \x20 f=\"$d/run/$n.pid\"\n\
             \x20 if [ -f \"$f\" ]; then p=$(cat \"$f\"); if running \"$p\"; then kill \"$p\"; removed=\"$removed process:$n($p)\"; fi; fi\n\
             done\n\
             for n in observer timesync; do\n\
             \x20 f=\"$d/run/$n.pid\"\n\
             \x20 [ -f \"$f\" ] || continue\n\
             \x20 p=$(cat \"$f\"); i=0\n\
             \x20 while running \"$p\" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
             \x20 kill -9 \"$p\" 2>/dev/null || true\n\
             done\n\
             if [ -x \"$d/bin/observer\" ]; then \"$d/bin/observer\" cleanup >&2 || true; fi\n\
             if [ -e \"$d\" ]; then rm -rf -- \"$d\"; removed=\"$removed dir:$d\"; fi\n\
             echo \"removed:$removed\"",
            dir = quote_path(&self.install_dir),
            running = crate::transport::shell::RUNNING_FN,
        )
    }
}

/// A session's name: sortable, unique enough to never collide between runs.
pub fn new_session_name() -> String {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let compact: String = stamp
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{compact}-{}", &random_hex(4))
}

/// The token reflectors answer to: probes of other sessions pass through untouched.
pub fn new_token() -> String {
    random_hex(16)
}

fn random_hex(digits: usize) -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if ok.is_err() {
        // Only uniqueness matters here, not secrecy: time and pid will do.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    hex::encode(b)[..digits].to_string()
}

/// The observer's configuration for one kernel host (docs/observer.md): its interfaces and those
/// of its containers' host-side ends, and the containers' namespaces, so that the one observer
/// per kernel covers them and observers sharing a kernel never count a packet twice.
///
/// The session's name is not in it (it is passed on the command line), so that the file, and
/// therefore a re-run of `apply` on converged hosts, stays unchanged.
pub fn observer_config(inv: &Inventory, host: &Host) -> serde_json::Value {
    let containers: Vec<&Host> = inv.containers_of(&host.name).collect();
    let interfaces = crate::facts::interfaces_for(host, &containers);
    let netns: Vec<String> = containers.iter().filter_map(|c| c.netns.clone()).collect();
    let s = &inv.session.sampling;
    json!({
        "host": host.name,
        "interfaces": interfaces,
        "containers": netns,
        "sampling": {
            "size": s.size,
            "ports": s.ports,
            "min_interval_us": s.interval_ns / 1000,
        },
        "layers": s.layers,
        "xdp_mode": s.xdp_mode,
        "lease_seconds": OBSERVER_LEASE_SECONDS,
        // Redis mode: the stream, heartbeat and lease keys and the account come on stdin.
        "sink": if inv.session.bus == "ssh" { "stdout" } else { "redis" },
    })
}

/// One clock: the hosts that share it, and the host whose reflector answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    /// The kernel host that runs the reflector (the first of the domain in inventory order).
    pub reflector: String,
    /// Where probes go: the reflector host's address.
    pub address: String,
    pub hosts: Vec<String>,
}

/// The clock domains of the kernel hosts in `names` (inventory order). Every domain is synced
/// with probes, even one that happens to share the manager's kernel: a fit is cheap, and it
/// verifies the assumption instead of trusting it.
pub fn domains(inv: &Inventory, names: &[String]) -> Vec<Domain> {
    let mut out: Vec<Domain> = Vec::new();
    for h in inv.kernel_hosts().filter(|h| names.contains(&h.name)) {
        match out.iter_mut().find(|d| d.name == h.clock_domain) {
            Some(d) => d.hosts.push(h.name.clone()),
            None => out.push(Domain {
                name: h.clock_domain.clone(),
                reflector: h.name.clone(),
                address: h.address.clone().unwrap_or_default(),
                hosts: vec![h.name.clone()],
            }),
        }
    }
    out
}

/// Kernel hosts in inventory order (metal and vm): the ones that run an observer.
pub fn kernel_host_names(inv: &Inventory) -> Vec<String> {
    inv.kernel_hosts()
        .filter(|h| h.kind != Kind::Container)
        .map(|h| h.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lab() -> Inventory {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/lab");
        crate::inventory::load(&dir).expect("the lab inventory loads")
    }

    #[test]
    fn observer_config_covers_containers_of_the_host() {
        let inv = lab();
        let c = observer_config(&inv, &inv.hosts["metal1"]);
        assert_eq!(c["containers"], json!(["lp-ct1"]));
        let ifaces = c["interfaces"].as_array().unwrap();
        assert!(ifaces.contains(&json!("veth-ct1")) && ifaces.contains(&json!("wan0")));
        assert_eq!(c["sampling"]["size"], json!(65536));
        assert_eq!(
            c["layers"],
            json!([]),
            "empty: the observer attaches every layer"
        );
        let vm2 = observer_config(&inv, &inv.hosts["vm2"]);
        assert_eq!(vm2["containers"], json!(["lp-ct2"]));
    }

    #[test]
    fn every_kernel_host_is_in_one_domain_with_a_reflector() {
        let inv = lab();
        let names = kernel_host_names(&inv);
        assert!(!names.contains(&"ct1".to_string()));
        let d = domains(&inv, &names);
        assert_eq!(
            d.len(),
            4,
            "the lab declares one domain per kernel host: {d:?}"
        );
        let m1 = d.iter().find(|d| d.name == "metal1").unwrap();
        assert_eq!(m1.reflector, "metal1");
        assert_eq!(m1.address, "10.77.0.11");
    }

    #[test]
    fn session_names_and_tokens_are_fresh() {
        let (a, b) = (new_session_name(), new_session_name());
        assert_ne!(a, b);
        assert!(a.starts_with("20") && a.len() > 16, "{a}");
        let t = new_token();
        assert_eq!(t.len(), 16);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
    }

    /// The reflector's command, run by `sh` with stand-ins for `ip` and the timesync binary:
    /// it answers on the interface of the route back to the manager, and names the route's
    /// failure when there is none.
    #[test]
    fn the_reflector_answers_on_the_interface_of_the_route_back() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout {
            install_dir: dir.path().join("inst x"),
        };
        // Written by a child process: a script this process held open for writing could be
        // inherited by another test's fork and then fail to execute (ETXTBSY).
        let write = |path: &Path, body: &str| {
            let mut c = std::process::Command::new("sh")
                .args([
                    "-c",
                    r#"mkdir -p "$(dirname "$1")" && cat > "$1" && chmod 755 "$1""#,
                ])
                .args(["sh", &path.to_string_lossy()])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), body.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        };
        let fake = dir.path().join("fakebin");
        write(
            &fake.join("ip"),
            "#!/bin/sh\ncase \"$*\" in *10.9.9.9*) echo 'RTNETLINK answers: Network is unreachable'; exit 2;; esac\n\
             echo \"$4 via 10.0.0.254 dev eth7 src 10.0.0.2 uid 0\"\n",
        );
        write(&l.bin("timesync"), "#!/bin/sh\necho \"$@\"\n");
        let start = |manager: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(l.reflector_command(
                    manager,
                    &ReflectArgs {
                        token: "ab12",
                        port: 31999,
                        mode: "generic",
                    },
                ))
                .env("PATH", format!("{}:/usr/bin:/bin", fake.display()))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        // Like the manager: the first line, then end of input stops it.
        let mut ok = start("10.0.0.1");
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(ok.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        drop(ok.stdin.take());
        assert!(ok.wait().unwrap().success());
        assert_eq!(
            first.trim(),
            "reflect --interface eth7 --token ab12 --port 31999 --mode generic"
        );
        let bad = start("10.9.9.9").wait_with_output().unwrap();
        assert!(!bad.status.success());
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(
            err.contains(
                "no route back to the manager (10.9.9.9): RTNETLINK answers: Network is unreachable"
            ),
            "{err}"
        );
    }

    #[test]
    fn scripts_quote_paths_and_keep_everything_under_install_dir() {
        let l = Layout {
            install_dir: "/var/lib/latplan x".into(),
        };
        assert!(
            l.observer_command("s")
                .contains("'/var/lib/latplan x/bin/observer' run")
        );
        let t = l.teardown_command();
        assert!(t.contains("\nd='/var/lib/latplan x'\n"));
        assert!(t.contains("rm -rf -- \"$d\""));
    }
}
