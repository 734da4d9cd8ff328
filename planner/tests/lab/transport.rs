use std::time::{Duration, Instant};

use labtools::testlab;
use planner::inventory::load;
use planner::transport::{Cmd, SshTransport, Transport, TransportError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn one_connection_runs_many_commands_and_moves_files_atomically() {
    let _lock = testlab::take_lab();
    let inv = load(&testlab::lab_inventory()).unwrap();
    let host = &inv.hosts["vm1"];
    let ctl = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let t0 = Instant::now();
        let t = SshTransport::connect(host, false, ctl.path()).await.unwrap_or_else(|e| panic!("{e}"));
        let connect = t0.elapsed();

        let n = 50;
        let t1 = Instant::now();
        for i in 0..n {
            let out = t.exec(Cmd::new(format!("echo {i}"))).await.unwrap();
            assert_eq!(out.stdout_str().trim(), i.to_string());
        }
        let per_cmd = t1.elapsed() / n;

        let dir = host.install_dir.clone().unwrap().join("transport-test");
        let dest = dir.join("blob");
        let data: Vec<u8> = (0..1_600_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        let t2 = Instant::now();
        t.put(&data, &dest, 0o640, false).await.unwrap();
        let put = t2.elapsed();
        assert_eq!(t.get(&dest, false).await.unwrap(), data);
        let mode = t.exec(Cmd::new(format!("stat -c %a {}", dest.display()))).await.unwrap();
        assert_eq!(mode.stdout_str().trim(), "640");
        let left = t.exec(Cmd::new(format!("ls -A {}", dir.display()))).await.unwrap();
        assert_eq!(left.stdout_str().trim(), "blob", "no temporary file is left");

        // A failing command is an exit status, not a transport error; a slow one times out.
        let out = t.exec(Cmd::new("echo no >&2; exit 7")).await.unwrap();
        assert_eq!((out.status, out.stderr_str().as_str()), (Some(7), "no"));
        let e = t.exec(Cmd::new("sleep 5").timeout(Duration::from_millis(300))).await.unwrap_err();
        assert!(matches!(e, TransportError::Timeout { .. }), "{e}");

        t.exec(Cmd::new(format!("rm -rf {}", dir.display()))).await.unwrap();
        t.close().await.unwrap();
        eprintln!(
            "ssh to vm1: connect {:.0} ms, {n} commands on the one connection {:.1} ms each, put 1.6 MB {:.0} ms",
            connect.as_secs_f64() * 1e3,
            per_cmd.as_secs_f64() * 1e3,
            put.as_secs_f64() * 1e3
        );
    });
}

#[test]
fn unknown_host_keys_are_refused_unless_accepted() {
    let _lock = testlab::take_lab();
    let mut inv = load(&testlab::lab_inventory()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let host = inv.hosts.get_mut("metal1").unwrap();
    host.ssh.as_mut().unwrap().known_hosts_file = Some(empty.clone());
    let host = host.clone();
    runtime().block_on(async {
        let e = SshTransport::connect(&host, false, tmp.path())
            .await
            .err()
            .expect("an unknown host key must be refused");
        assert!(e.is_unreachable(), "{e}");
        assert!(
            e.to_string().contains("Host key verification failed"),
            "{e}"
        );
        let t = SshTransport::connect(&host, true, tmp.path())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        t.close().await.unwrap();
    });
    // Entries may be hashed (HashKnownHosts): ask ssh-keygen.
    let found = std::process::Command::new("ssh-keygen")
        .args(["-F", "10.77.0.11", "-f"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "the accepted key was added to {}",
        empty.display()
    );
}
