//! Store behaviour on an in-memory SQLite database.
use latplan_common::Layer;
use latplan_common::clock::ClockFit;
use latplan_common::wire::{Bye, Hello, Interface, LayerStats, Sample, Stats};

use super::*;

pub(crate) fn sample(i: u64, flow: u16) -> Sample {
    Sample {
        ts_ns: 1_000_000 + i,
        offset: (1 << 33) + i * 4096,
        saddr: [10; 16],
        daddr: [20; 16],
        sport: 40000 + flow,
        dport: 5201,
        len: 1448,
        ifindex: 3,
        netns: 4026531840,
        cpu: 1,
        layer: Layer::TcpSend,
        flags: 0,
    }
}

pub(crate) fn hello(host: &str, started_ns: u64) -> Hello {
    Hello {
        host: host.into(),
        session: "s".into(),
        observer_version: "0.1.0".into(),
        boot_id: "boot-a".into(),
        sample_size: 4096,
        interfaces: vec![Interface {
            ifindex: 3,
            name: "eth0".into(),
            netns: 1,
            ingress_mode: "tc".into(),
        }],
        netns: vec![1],
        started_ns,
    }
}

async fn mem() -> Store {
    Store::open("sqlite::memory:").await.unwrap()
}

#[tokio::test]
async fn sessions_hosts_and_runs_are_idempotent() {
    let st = mem().await;
    let s = st.open_session("s1").await.unwrap();
    assert_eq!(st.open_session("s1").await.unwrap(), s);
    let h = HostRecord {
        name: "metal1".into(),
        kind: "metal".into(),
        clock_domain: Some("d1".into()),
        ..Default::default()
    };
    let hid = st.upsert_host(s, &h).await.unwrap();
    let (hid2, run) = st
        .register_run(s, &hello("metal1", 5), false)
        .await
        .unwrap();
    assert_eq!(hid, hid2);
    assert_eq!(
        st.register_run(s, &hello("metal1", 5), false)
            .await
            .unwrap()
            .1,
        run
    );
    // An observer restart is a new run of the same host.
    let (_, run2) = st
        .register_run(s, &hello("metal1", 9), false)
        .await
        .unwrap();
    assert_ne!(run, run2);
    // A host first seen in a stream is created as unknown.
    let (vm, _) = st.register_run(s, &hello("vm1", 1), false).await.unwrap();
    let hosts = st.hosts(s).await.unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].host.kind, "metal");
    assert_eq!(hosts[0].host.boot_id.as_deref(), Some("boot-a"));
    assert_eq!(
        hosts.iter().find(|h| h.id == vm).unwrap().host.kind,
        "unknown"
    );
    assert_eq!(st.runs(s).await.unwrap().len(), 3);
    assert_eq!(st.interfaces(s).await.unwrap().len(), 3);
    // Apply re-registering the host later keeps the boot id the stream reported.
    st.upsert_host(s, &h).await.unwrap();
    assert_eq!(
        st.hosts(s).await.unwrap()[0].host.boot_id.as_deref(),
        Some("boot-a")
    );
}

#[tokio::test]
async fn batches_are_stored_once_and_read_back_in_order() {
    let st = mem().await;
    let s = st.open_session("s").await.unwrap();
    let (hid, run) = st.register_run(s, &hello("h", 1), false).await.unwrap();
    let mut b = WriteBatch::new(s);
    // More than one SQL chunk, three flows.
    b.samples = (0..6000)
        .map(|i| (run, i, sample(i, (i % 3) as u16)))
        .collect();
    let o = st.write_batch(&b).await.unwrap();
    assert_eq!(
        (o.inserted, o.duplicates, o.per_run[&run]),
        (6000, 0, (6000, 0))
    );
    // The same batch again, overlapping a new one: only the new records count.
    b.samples
        .extend((6000..6100).map(|i| (run, i, sample(i, 0))));
    let o = st.write_batch(&b).await.unwrap();
    assert_eq!(
        (o.inserted, o.duplicates, o.per_run[&run]),
        (100, 6000, (100, 6000))
    );
    assert_eq!(st.count_samples(s).await.unwrap(), 6100);
    assert_eq!(st.flows(s).await.unwrap().len(), 3);

    let mut cur = st.samples(s, 1000).await.unwrap();
    let mut seen = 0u64;
    while let Some(page) = cur.next_page().await.unwrap() {
        for r in page {
            assert_eq!(r.record_seq, seen);
            assert_eq!(r.host_id, hid);
            assert_eq!(
                r.sample,
                sample(seen, if seen < 6000 { (seen % 3) as u16 } else { 0 })
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 6100);
    let flow = FlowKey::of(&sample(1, 1)).id();
    let mut cur = st.flow_samples(s, flow, 500).await.unwrap();
    let mut n = 0;
    while let Some(page) = cur.next_page().await.unwrap() {
        assert!(page.iter().all(|r| r.flow_id == flow));
        n += page.len();
    }
    assert_eq!(n, 2000);
}

#[tokio::test]
async fn gaps_are_found_inside_at_the_head_and_at_the_tail() {
    let st = mem().await;
    let s = st.open_session("s").await.unwrap();
    let (_, run) = st.register_run(s, &hello("h", 1), false).await.unwrap();
    let mut b = WriteBatch::new(s);
    let present = (5..10).chain(20..30).chain(31..40);
    b.samples = present.map(|i| (run, i, sample(i, 0))).collect();
    b.stats.push((
        run,
        Stats {
            ts_ns: 1,
            records_sent: 45,
            ..Default::default()
        },
    ));
    st.write_batch(&b).await.unwrap();
    let gaps = st.scan_gaps(s).await.unwrap();
    let ranges: Vec<_> = gaps
        .iter()
        .map(|g| (g.from_seq, g.to_seq, g.kind.as_str()))
        .collect();
    assert_eq!(
        ranges,
        vec![
            (0, 5, "missing"),
            (10, 20, "missing"),
            (30, 31, "missing"),
            (40, 45, "tail")
        ]
    );
    // The bye's total wins over stats; scanning again replaces the earlier result.
    let mut b = WriteBatch::new(s);
    b.byes.push((
        run,
        Bye {
            records_total: 50,
            reason: "done".into(),
        },
    ));
    st.write_batch(&b).await.unwrap();
    st.scan_gaps(s).await.unwrap();
    let gaps = st.gaps(s).await.unwrap();
    assert_eq!(gaps.len(), 4);
    assert_eq!((gaps[3].from_seq, gaps[3].to_seq), (40, 50));
    assert_eq!(
        gaps.iter().map(GapRow::missing).sum::<u64>(),
        5 + 10 + 1 + 10
    );
}

#[tokio::test]
async fn stats_fits_errors_and_segments_round_trip() {
    let st = mem().await;
    let s = st.open_session("s").await.unwrap();
    let (_, run) = st.register_run(s, &hello("h", 1), false).await.unwrap();
    let stats = Stats {
        ts_ns: 77,
        layers: vec![LayerStats {
            layer: Layer::DevRecv,
            seen: 10,
            sampled: 5,
            ringbuf_full: 2,
            rate_limited: 1,
        }],
        records_sent: 5,
        records_dropped: 3,
        cpu_percent: 1.5,
    };
    let mut b = WriteBatch::new(s);
    b.stats.push((run, stats.clone()));
    st.write_batch(&b).await.unwrap();
    st.write_batch(&b).await.unwrap();
    let got = st.observer_stats(s).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].stats, stats);

    let fit = ClockFit {
        offset_ns: 12.5,
        drift_ppm: -3.0,
        error_bound_ns: 800.0,
        samples: 40,
        ..ClockFit::identity("d1")
    };
    st.insert_clock_fits(s, &[fit.clone(), fit.clone()])
        .await
        .unwrap();
    assert_eq!(st.clock_fits(s).await.unwrap(), vec![fit]);

    st.record_stream_error(s, "h", "bad frame magic", 12)
        .await
        .unwrap();
    assert_eq!(st.stream_errors(s).await.unwrap()[0].skipped_bytes, 12);

    let seg = SegmentRow {
        flow_id: Some(7),
        segment: "h:sock_send→h:tcp_send".into(),
        kind: SegmentRowKind::Summary,
        stat: Some("p99".into()),
        t_ns: None,
        byte_offset: None,
        value: 1234.0,
        flagged: true,
    };
    st.insert_segments(s, std::slice::from_ref(&seg))
        .await
        .unwrap();
    assert_eq!(st.segments(s).await.unwrap(), vec![seg]);
    st.clear_segments(s).await.unwrap();
    assert!(st.segments(s).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_file_database_is_created_and_reopened() {
    let dir = std::env::temp_dir().join(format!("latplan-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/t.db", dir.display());
    let st = Store::open(&url).await.unwrap();
    let s = st.open_session("s").await.unwrap();
    st.close().await;
    let st = Store::open(&url).await.unwrap();
    assert_eq!(st.session_by_name("s").await.unwrap().unwrap().id, s);
    st.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flow_ids_are_stable_and_non_negative() {
    let k = FlowKey::of(&sample(0, 0));
    assert_eq!(k.id(), FlowKey::of(&sample(99, 0)).id());
    assert_ne!(k.id(), FlowKey::of(&sample(0, 1)).id());
    assert!(k.id() >= 0);
}
