//! lab-traffic moves bytes between lab hosts across the wan relay.
use labtools::testlab::{ns_command, ns_exec, relay_status, take_lab};
use serde_json::Value;
use std::process::Stdio;

const TRAFFIC: &str = env!("CARGO_BIN_EXE_lab-traffic");

fn report(out: &[u8]) -> Value {
    let s = String::from_utf8_lossy(out);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("lab-traffic report {s:?}: {e}"))
}

#[test]
fn tcp_bulk_from_ct1_reaches_vm2_across_the_wan() {
    let _lock = take_lab();
    let before = relay_status("wan");
    let recv = ns_command(
        "lp-vm2",
        &[
            TRAFFIC,
            "tcp-recv",
            "--listen",
            "10.77.2.2:5301",
            "--read-size",
            "16K",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start receiver in lp-vm2");
    let bytes = 20u64 << 20;
    let send = ns_exec(
        "lp-ct1",
        &[
            TRAFFIC,
            "tcp-send",
            "--connect",
            "10.77.2.2:5301",
            "--bytes",
            "20M",
            "--write-size",
            "32K",
        ],
    );
    let recv = recv.wait_with_output().expect("receiver");
    assert!(
        send.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(
        recv.status.success(),
        "receiver failed: {}",
        String::from_utf8_lossy(&recv.stderr)
    );
    assert_eq!(report(&send.stdout)["bytes"], bytes);
    assert_eq!(report(&recv.stdout)["bytes"], bytes);
    // The bytes went through the wan relay as MTU-sized frames (offloads are off on its links).
    let after = relay_status("wan");
    let frames = after.a2b.forwarded - before.a2b.forwarded;
    assert!(
        frames >= bytes / 1500,
        "only {frames} frames crossed the wan relay for {bytes} bytes"
    );
    assert_eq!(
        after.a2b.dropped_oversize, before.a2b.dropped_oversize,
        "the relay saw frames larger than 64 KiB"
    );
}

#[test]
fn paced_sender_and_slow_reader_take_as_long_as_asked() {
    let _lock = take_lab();
    let recv = ns_command(
        "lp-vm2",
        &[
            TRAFFIC,
            "tcp-recv",
            "--listen",
            "10.77.2.2:5302",
            "--read-rate",
            "4M",
            "--rcvbuf",
            "64K",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("start receiver in lp-vm2");
    // 1 MiB read at 4 MiB/s takes at least 0.25 s however fast the sender writes.
    let send = ns_exec(
        "lp-ct1",
        &[
            TRAFFIC,
            "tcp-send",
            "--connect",
            "10.77.2.2:5302",
            "--bytes",
            "1M",
        ],
    );
    let recv = recv.wait_with_output().expect("receiver");
    assert!(
        send.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    let r = report(&recv.stdout);
    assert_eq!(r["bytes"], 1u64 << 20);
    assert!(
        r["secs"].as_f64().unwrap() >= 0.24,
        "slow reader finished in {}",
        r["secs"]
    );
}

#[test]
fn udp_flood_reports_packets_per_second() {
    let _lock = take_lab();
    let sink = ns_command(
        "lp-vm2",
        &[
            TRAFFIC,
            "udp-sink",
            "--listen",
            "10.77.2.2:5303",
            "--duration",
            "2s",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("start sink in lp-vm2");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let flood = ns_exec(
        "lp-ct1",
        &[
            TRAFFIC,
            "udp-flood",
            "--connect",
            "10.77.2.2:5303",
            "--duration",
            "1s",
            "--size",
            "64",
        ],
    );
    assert!(
        flood.status.success(),
        "flood failed: {}",
        String::from_utf8_lossy(&flood.stderr)
    );
    let f = report(&flood.stdout);
    let s = report(&sink.wait_with_output().expect("sink").stdout);
    assert!(
        f["ops"].as_u64().unwrap() > 1000,
        "flood sent only {}",
        f["ops"]
    );
    assert!(f["ops_per_sec"].as_f64().unwrap() > 0.0);
    let got = s["ops"].as_u64().unwrap();
    assert!(
        got > 0 && got <= f["ops"].as_u64().unwrap(),
        "sink got {got} of {} datagrams",
        f["ops"]
    );
}
