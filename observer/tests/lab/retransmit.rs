//! Retransmissions flagged: with loss on the wan, bytes TCP sends again carry the retransmit flag
//! on the send path (tcp_send/ip_send/dev_send, docs/observer.md), and only those.
use std::collections::BTreeMap;

use crate::support::*;
use latplan_common::Layer;
use latplan_common::kernel::SAMPLE_FLAG_RETRANSMIT;

const PORT: u16 = 5304;

/// Restores the wan relay's loss even when the test fails.
struct NoLoss;
impl Drop for NoLoss {
    fn drop(&mut self) {
        ci_lab(&["loss", "wan", "0%"]);
    }
}

/// The kernel's own count of retransmitted TCP segments in `netns` (/proc/net/snmp is per
/// namespace).
fn retrans_segs(netns: &str) -> u64 {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "cat", "/proc/net/snmp"])
        .output()
        .expect("read /proc/net/snmp");
    let text = String::from_utf8_lossy(&o.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .expect("RetransSegs in /proc/net/snmp");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Every sighting of each sample point at `layer`, in time order, as retransmit flags.
fn sightings(rec: &Recorded, layer: Layer) -> BTreeMap<u64, Vec<bool>> {
    let mut seen: BTreeMap<u64, Vec<(u64, bool)>> = BTreeMap::new();
    for s in rec
        .samples
        .iter()
        .filter(|s| s.layer == layer && s.dport == PORT)
    {
        let flagged = s.flags & SAMPLE_FLAG_RETRANSMIT != 0;
        seen.entry(s.offset).or_default().push((s.ts_ns, flagged));
    }
    seen.into_iter()
        .map(|(off, mut v)| {
            v.sort();
            (off, v.into_iter().map(|(_, f)| f).collect())
        })
        .collect()
}

#[test]
fn bytes_sent_again_after_loss_are_flagged_as_retransmissions() {
    let _lock = labtools::testlab::take_lab();
    ci_lab(&["loss", "wan", "3%"]);
    let _restore = NoLoss;
    let args = [
        "--interfaces",
        "wan0",
        "--ports",
        "5304",
        "--size",
        "4096",
        "--min-interval-us",
        "0",
        "--stats-interval",
        "1",
    ];
    let snd = Observer::start(METAL1, &args);
    let before = retrans_segs(METAL1);
    let addr = format!("{METAL2_WAN}:{PORT}");
    let server = tcp_recv(METAL2, &addr, &[]);
    tcp_send(METAL1, &addr, &["--duration", "3s"]);
    wait_ok(server, "tcp-recv");
    let retransmitted = retrans_segs(METAL1) - before;
    let snd = snd.stop();
    // Ground truth first: the loss did make TCP send segments again.
    assert!(
        retransmitted >= 20,
        "only {retransmitted} segments retransmitted"
    );
    for layer in [Layer::TcpSend, Layer::IpSend, Layer::DevSend] {
        let seen = sightings(&snd, layer);
        assert!(
            seen.len() >= 100,
            "{}: {} sample points",
            layer.name(),
            seen.len()
        );
        let mut resent = 0;
        for (off, flags) in &seen {
            // The first sending of a byte is never flagged; every later one is.
            assert!(
                !flags[0],
                "{}: byte {off} flagged on its first sending: {flags:?}",
                layer.name()
            );
            assert!(
                flags[1..].iter().all(|f| *f),
                "{}: byte {off} sent again unflagged: {flags:?}",
                layer.name()
            );
            resent += flags.len() - 1;
        }
        // The kernel counts retransmitted segments of one MSS (1448 payload bytes on the lab's
        // 1500-byte path with timestamps); one in every 4096 bytes is a sample point.
        let expected = retransmitted as f64 * 1448.0 / 4096.0;
        eprintln!(
            "{}: {} sample points, {resent} sendings again (expected {expected:.0} from the kernel's {retransmitted} segments retransmitted)",
            layer.name(),
            seen.len()
        );
        assert!(
            (0.85..1.15).contains(&(resent as f64 / expected)),
            "{}: {resent} sample points sent again, expected about {expected:.0}",
            layer.name()
        );
    }
}
