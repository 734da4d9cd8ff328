//! A TCP bulk flow between two lab hosts with observers on both (issue 4, "Shown by tests").
use crate::support::*;
use latplan_common::Layer;

const PORT: u16 = 5301;

#[test]
fn every_layer_records_sampled_bytes_and_they_match_across_hosts_in_path_order() {
    let _lock = labtools::testlab::take_lab();
    let args = [
        "--interfaces",
        "wan0",
        "--ports",
        "5301",
        "--size",
        "65536",
        "--stats-interval",
        "1",
    ];
    let snd = Observer::start(METAL1, &args);
    let rcv = Observer::start(METAL2, &args);
    let addr = format!("{METAL2_WAN}:{PORT}");
    let server = tcp_recv(METAL2, &addr, &[]);
    tcp_send(METAL1, &addr, &["--bytes", "200M"]);
    wait_ok(server, "tcp-recv");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let snd = snd.stop();
    let rcv = rcv.stop();

    // 200 MB at one point per 64 KiB: about 3050 points per layer.
    for l in SEND_PATH {
        let n = snd.count(l, PORT);
        assert!(n >= 3000, "sender {} recorded {n} samples", l.name());
    }
    for l in RECV_PATH {
        let n = rcv.count(l, PORT);
        assert!(n >= 3000, "receiver {} recorded {n} samples", l.name());
    }
    for s in snd
        .stats
        .last()
        .unwrap()
        .layers
        .iter()
        .chain(&rcv.stats.last().unwrap().layers)
    {
        assert_eq!(
            s.ringbuf_full,
            0,
            "{} lost records to a full ring buffer",
            s.layer.name()
        );
    }

    // ≥ 99% of the bytes sampled leaving the sender are sampled arriving at the receiver.
    let sf = snd.first_seen(PORT);
    let rf = rcv.first_seen(PORT);
    let sent: Vec<u32> = sf
        .keys()
        .filter(|(l, _)| *l == Layer::DevSend)
        .map(|k| k.1)
        .collect();
    let found = sent
        .iter()
        .filter(|s| rf.contains_key(&(Layer::DevRecv, **s)))
        .count();
    assert!(
        found * 100 >= sent.len() * 99,
        "{found} of {} dev_send samples found at the receiver's dev_recv",
        sent.len()
    );

    // Along each host's path a sampled byte's timestamps never go backwards.
    for (rec, path, who) in [(&sf, &SEND_PATH, "sender"), (&rf, &RECV_PATH, "receiver")] {
        let mut checked = 0;
        for ((l, seq), first) in rec.iter() {
            if *l != path[0] {
                continue;
            }
            let mut prev = (path[0], first.ts_ns);
            for &next in &path[1..] {
                if let Some(s) = rec.get(&(next, *seq)) {
                    assert!(
                        s.ts_ns >= prev.1,
                        "{who}: byte {seq} seen at {} ({}) before {} ({})",
                        next.name(),
                        s.ts_ns,
                        prev.0.name(),
                        prev.1
                    );
                    prev = (next, s.ts_ns);
                }
            }
            checked += 1;
        }
        assert!(checked >= 3000, "{who}: only {checked} bytes checked");
    }
}
