//! A session on a real QEMU guest (issue: real virtual machines in the lab; docs/lab.md, "Real
//! guests"). The test holds the lab lock, brings the guest lab (`inventory/lab-guest`) up itself and
//! takes it down at the end, whatever happens. Needs root, qemu-system-x86 and the guest assets
//! (ci/setup installs and builds them; `ci/lab up` builds missing assets itself).
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use labtools::clockecho;
use labtools::testlab::{self, lock_lab, ns_command, workspace_root};

const LATPLAN: &str = env!("CARGO_BIN_EXE_latplan");
const GUEST: &str = "gvm1";
const GUEST_ADDR: &str = "10.86.1.2";
const METAL: &str = "gmetal1";
const METAL_NS: &str = "lpg-metal1";
/// The metal's end of the guest's link (the tap).
const METAL_TAP_ADDR: &str = "10.86.1.1";

fn inventory() -> PathBuf {
    workspace_root().join("inventory/lab-guest")
}

fn guest_lab_dir() -> PathBuf {
    testlab::state_dir().join("lab-guest")
}

fn text(o: &Output) -> String {
    testlab::output_text(o)
}

fn latplan(args: &[&str]) -> Output {
    testlab::run_latplan(LATPLAN, args)
}

fn ci_lab(args: &[&str]) -> Output {
    Command::new(workspace_root().join("ci/lab"))
        .args(args)
        .env("LATPLAN_LAB_LOCKED", "1")
        .env("LATPLAN_BIN", LATPLAN)
        .stdin(Stdio::null())
        .output()
        .expect("run ci/lab")
}

/// The guest lab for the life of the value: up on creation, down on drop (even when the test fails).
struct GuestLab;

impl GuestLab {
    fn up() -> GuestLab {
        let inv = inventory();
        let inv = inv.to_str().unwrap();
        // A guest lab left by an interrupted run is replaced, not reused.
        let _ = ci_lab(&["down", inv]);
        let o = ci_lab(&["up", inv]);
        let lab = GuestLab;
        assert!(o.status.success(), "ci/lab up {inv} failed: {}", text(&o));
        lab
    }
}

impl Drop for GuestLab {
    fn drop(&mut self) {
        let _ = ci_lab(&["down", inventory().to_str().unwrap()]);
    }
}

/// One multiplexed OpenSSH connection to the guest, so each command costs a round trip, not a key
/// exchange (which takes a tcg guest hundreds of milliseconds).
struct GuestSsh {
    control: PathBuf,
    _dir: tempfile::TempDir,
}

impl GuestSsh {
    fn connect() -> GuestSsh {
        let dir = tempfile::tempdir().unwrap();
        let s = GuestSsh {
            control: dir.path().join("mux"),
            _dir: dir,
        };
        let o = s.run_output("true");
        assert!(o.status.success(), "ssh to the guest: {}", text(&o));
        s
    }

    fn command(&self, script: &str) -> Command {
        let lab = guest_lab_dir();
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-i"])
            .arg(lab.join("id_ed25519"))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                lab.join("known_hosts").display()
            ))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=120"])
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()))
            .arg(format!("root@{GUEST_ADDR}"))
            .arg(script)
            .stdin(Stdio::null());
        c
    }

    /// Copies a local file to `remote` in the guest (executable).
    fn push(&self, local: &Path, remote: &str) {
        let o = self
            .command(&format!("cat > {remote} && chmod 755 {remote}"))
            .stdin(std::fs::File::open(local).expect("open the file to push"))
            .output()
            .expect("run ssh");
        assert!(
            o.status.success(),
            "push {} to the guest: {}",
            local.display(),
            text(&o)
        );
    }

    fn run_output(&self, script: &str) -> Output {
        self.command(script).output().expect("run ssh")
    }

    fn run(&self, script: &str) -> String {
        let o = self.run_output(script);
        assert!(o.status.success(), "{script:?} on the guest: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for GuestSsh {
    fn drop(&mut self) {
        let _ = Command::new("ssh")
            .args(["-o"])
            .arg(format!("ControlPath={}", self.control.display()))
            .args(["-O", "exit", "x"])
            .stderr(Stdio::null())
            .status();
    }
}

/// Where the guest's clock echo listens (`lab-traffic clock-echo`, started with the traffic).
const CLOCK_ECHO: &str = "10.86.1.2:5399";

/// The manager-minus-guest CLOCK_MONOTONIC difference, read independently of timesync: UDP
/// requests to the guest's clock echo, the narrowest of `tries` round trips kept
/// (labtools::clockecho). Returns (guest_ns, manager_minus_guest_ns, half_window_ns).
fn independent_offset(tries: usize) -> (i64, f64, f64) {
    let r = clockecho::offset_to(CLOCK_ECHO.parse().unwrap(), tries, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("read the guest's clock over UDP: {e:#}"));
    (r.peer_ns, r.offset_ns, r.half_window_ns)
}

/// Traffic both ways on the sampled port 5201, lab-traffic at both ends: the metal sends to the
/// guest and the guest to the metal (the static build from the artifacts directory is copied into
/// the guest's /tmp), paced so the tcg guest keeps up. The guest's processes end with the guest.
struct Traffic {
    _running: testlab::Children,
}

impl Traffic {
    fn start(ssh: &GuestSsh, seconds: u32) -> Traffic {
        let local = testlab::artifacts_dir().join("lab-traffic");
        assert!(
            local.exists(),
            "{} is missing: cargo build --release --target x86_64-unknown-linux-musl -p labtools",
            local.display()
        );
        ssh.push(&local, "/tmp/lab-traffic");
        let bin = guest_lab_dir().join("bin/lab-traffic");
        let bin = bin.to_str().unwrap();
        let listen = format!("{METAL_TAP_ADDR}:5201");
        let recv = ns_command(METAL_NS, &[bin, "tcp-recv", "--listen", &listen])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the metal's receiver");
        ssh.run(&format!(
            "setsid /tmp/lab-traffic clock-echo --listen {CLOCK_ECHO} --duration {seconds}s >/dev/null 2>/tmp/echo.err </dev/null & \
             setsid /tmp/lab-traffic tcp-recv --listen {GUEST_ADDR}:5201 >/dev/null 2>/tmp/recv.err </dev/null & \
             setsid /tmp/lab-traffic tcp-send --connect {listen} --duration {seconds}s --rate 256K \
               --connect-timeout 180s >/dev/null 2>/tmp/send.err </dev/null & echo started"
        ));
        let dur = format!("{seconds}s");
        let connect = format!("{GUEST_ADDR}:5201");
        let send = ns_command(
            METAL_NS,
            &[
                bin,
                "tcp-send",
                "--connect",
                &connect,
                "--duration",
                &dur,
                "--rate",
                "1M",
                "--connect-timeout",
                "180s",
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start the metal's sender");
        Traffic {
            _running: testlab::Children(vec![send, recv]),
        }
    }
}

/// Waits until both flows (metal → guest and guest → metal, port 5201) are established, as the
/// metal's sockets show: on a loaded machine a tcg guest can take many seconds to start a process.
fn wait_for_both_flows(limit: Duration) {
    let started = std::time::Instant::now();
    loop {
        let o = testlab::ns_exec(METAL_NS, &["ss", "-Htn", "state", "established"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let to_guest = text.contains(&format!("{GUEST_ADDR}:5201"));
        let from_guest = text.contains(&format!("{METAL_TAP_ADDR}:5201"));
        if to_guest && from_guest {
            // A moment for both senders to reach their pace before the session starts.
            std::thread::sleep(Duration::from_secs(2));
            return;
        }
        assert!(
            started.elapsed() < limit,
            "traffic between the metal and the guest did not start within {limit:?} \
             (metal → guest {to_guest}, guest → metal {from_guest}): {text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn sqlite(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let o = Command::new("sqlite3")
        .args(["-separator", "\t"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3 (ci/setup installs it)");
    assert!(o.status.success(), "sqlite3 {sql}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Live (non-zombie) processes whose command line contains `needle`.
fn live_processes(needle: &str) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if !zombie && cmd.contains(needle) {
            found.push(format!("{pid} {cmd}"));
        }
    }
    found
}

fn assert_guest_lab_gone() {
    assert!(
        live_processes("lab-guest").is_empty(),
        "processes of the guest lab remain: {:?}",
        live_processes("lab-guest")
    );
    let netns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !netns.lines().any(|l| l.starts_with("lpg-")),
        "guest lab namespaces remain: {netns}"
    );
    let links = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for name in ["lpgbr0", "lpgm-", "tap-gvm1"] {
        assert!(
            !links.contains(name),
            "link {name} remains in the root namespace: {links}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("lab-guest") && !mounts.contains("/run/netns/lpg-"),
        "mounts of the guest lab remain: {mounts}"
    );
    assert!(
        !guest_lab_dir().join("made").exists(),
        "the guest lab's record remains"
    );
}

#[test]
fn a_session_on_a_real_guest_syncs_its_clock_and_measures_the_vm_hop() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the guest lab needs root (namespaces, taps, eBPF)"
    );
    let _lock = lock_lab();
    let lab = GuestLab::up();
    let ssh = GuestSsh::connect();
    let inv = inventory();
    let inv = inv.to_str().unwrap();
    let db = tempfile::tempdir().unwrap();
    let db_path = db.path().join("s.db");
    let store = format!("sqlite://{}", db_path.display());

    // The guest runs its own kernel: another boot_id than the manager (and its metal).
    let guest_boot = ssh
        .run("cat /proc/sys/kernel/random/boot_id")
        .trim()
        .to_string();
    let our_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(
        guest_boot, our_boot,
        "the guest shares the manager's kernel"
    );

    let check = latplan(&["check", inv]);
    assert!(check.status.success(), "latplan check: {}", text(&check));

    // Long enough to outlast the wait below and the whole session; dropped (killed) after it.
    let traffic = Traffic::start(&ssh, 300);
    wait_for_both_flows(Duration::from_secs(180));
    let run = latplan(&[
        "apply",
        inv,
        "--duration",
        "12s",
        "--store",
        &store,
        "--session",
        "guest-1",
        "--sync-timeout",
        "60s",
    ]);
    // Read right after the session, while its last fit is fresh.
    let (guest_ns, indep, indep_half) = independent_offset(200);
    drop(traffic);
    let out = text(&run);
    eprintln!("{out}");
    assert!(run.status.success(), "apply failed: {out}");
    assert!(
        out.contains("failed=0 unreachable=0"),
        "every host ran cleanly: {out}"
    );

    // Clock domains: the store keeps each host's boot_id as its facts saw it.
    let hosts = sqlite(
        &db_path,
        "SELECT h.name, h.clock_domain, h.boot_id FROM hosts h JOIN sessions s ON s.id = h.session_id \
         WHERE s.name = 'guest-1' ORDER BY h.name",
    );
    let boot = |name: &str| {
        hosts
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} is not in the stored hosts: {hosts:?}"))[2]
            .clone()
    };
    assert_eq!(boot(GUEST), guest_boot, "the guest's stored boot_id");
    assert_eq!(
        boot(METAL),
        our_boot,
        "the metal shares the manager's kernel"
    );

    // The fit maps the guest's clock onto the manager's: its offset (manager − guest) at the time
    // of the independent reading must agree with it within the fit's bound plus that reading's own.
    let fits = sqlite(
        &db_path,
        "SELECT f.offset_ns, f.drift_ppm, f.ref_host_ns, f.error_bound_ns FROM clock_fits f \
         JOIN sessions s ON s.id = f.session_id WHERE s.name = 'guest-1' AND f.domain = 'gvm1' \
         ORDER BY f.valid_from_host_ns DESC LIMIT 1",
    );
    assert_eq!(fits.len(), 1, "no clock fit stored for gvm1");
    let f: Vec<f64> = fits[0].iter().map(|v| v.parse().unwrap()).collect();
    let (offset, drift_ppm, ref_ns, bound) = (f[0], f[1], f[2], f[3]);
    let fit_at_reading = offset + drift_ppm * 1e-6 * (guest_ns as f64 - ref_ns);
    let diff = fit_at_reading - indep;
    eprintln!(
        "guest clock: fit offset {fit_at_reading:.0} ns (bound {bound:.0} ns, drift {drift_ppm:.3} ppm), \
         independent {indep:.0} ns ± {indep_half:.0} ns, difference {diff:.0} ns"
    );
    assert!(
        diff.abs() <= bound + indep_half,
        "the fit's offset {fit_at_reading:.0} ns differs from the independent reading {indep:.0} ns by \
         {diff:.0} ns, more than the fit's bound {bound:.0} ns plus the reading's ±{indep_half:.0} ns"
    );

    // Every value across the clock boundary (host → guest and guest → host) is positive, and the
    // VM hop is its own segment in both directions.
    for seg in [
        "vhop gmetal1:tap-gvm1→gvm1:eth0",
        "vhop gvm1:eth0→gmetal1:tap-gvm1",
    ] {
        assert!(out.contains(seg), "the report lacks {seg:?}: {out}");
    }
    let csv = latplan(&["report", "--store", &store, "--format", "csv", "guest-1"]);
    assert!(csv.status.success(), "report: {}", text(&csv));
    let csv = String::from_utf8_lossy(&csv.stdout).into_owned();
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (scope, segment, from, to, count, min) = (
        col("scope"),
        col("segment"),
        col("from_host"),
        col("to_host"),
        col("count"),
        col("min_ns"),
    );
    let mut crossing = [0u64; 2];
    let (mut vhop_to_guest, mut vhop_from_guest) = (0, 0);
    // The sender's socket-buffer segment on each side: the guest's 6.12 kernel has no
    // tcp_sendmsg_locked tracepoint, so its observer stamps send calls at sys_enter; the
    // metal's kernel has it. Both stamps must give values.
    let mut sock_send = std::collections::BTreeMap::<String, u64>::new();
    for r in rows.map(|l| l.split(',').collect::<Vec<_>>()) {
        if r[segment].ends_with(":sock_send→tcp_send") {
            *sock_send.entry(r[segment].to_string()).or_default() +=
                r[count].parse::<u64>().unwrap();
        }
        if r[scope] != "pair" || r[from] == r[to] {
            continue;
        }
        let n: u64 = r[count].parse().unwrap();
        if n == 0 {
            continue;
        }
        let m: i64 = r[min].parse().unwrap();
        assert!(
            m > 0,
            "{}: its smallest one-way value is {m} ns",
            r[segment]
        );
        crossing[usize::from(r[from] == GUEST)] += n;
        if r[segment] == "vhop gmetal1:tap-gvm1→gvm1:eth0" {
            vhop_to_guest += n;
        }
        if r[segment] == "vhop gvm1:eth0→gmetal1:tap-gvm1" {
            vhop_from_guest += n;
        }
    }
    assert!(
        crossing[0] > 0 && crossing[1] > 0,
        "values across the clock boundary host→guest {} and guest→host {}: both directions need some",
        crossing[0],
        crossing[1]
    );
    // apply starts the session's clock once the guest's observer is attached (its verifier is
    // slow under tcg), so both directions of the hop have the whole session.
    assert!(
        vhop_to_guest > 0 && vhop_from_guest > 0,
        "the VM hop has values host→guest {vhop_to_guest} and guest→host {vhop_from_guest}: {csv}"
    );

    for host in [GUEST, "gmetal1"] {
        let seg = format!("{host}:sock_send→tcp_send");
        assert!(
            sock_send.get(&seg).is_some_and(|&n| n > 0),
            "no values for {seg} (sock_send stamps): {sock_send:?}"
        );
    }

    let t = latplan(&["teardown", inv]);
    assert!(t.status.success(), "teardown: {}", text(&t));
    assert!(
        ssh.run("ls /var/lib/latplan 2>/dev/null | wc -l").trim() == "0",
        "teardown left files in the guest"
    );
    drop(ssh);
    drop(lab);
    assert_guest_lab_gone();
}
