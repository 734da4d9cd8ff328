//! Collector behaviour with an in-memory SQLite store and synthetic observers.
use std::time::Duration;

use latplan_common::wire::{Frame, HEADER_SIZE};

use super::synthetic::SyntheticObserver;
use super::*;

async fn setup(config: CollectorConfig) -> Collector {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let s = store.open_session("s").await.unwrap();
    Collector::start(store, s, config)
}

fn small_batches() -> CollectorConfig {
    CollectorConfig {
        batch_records: 700,
        flush_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_stream_is_stored_completely_in_batches() {
    let c = setup(small_batches()).await;
    let mut obs = SyntheticObserver::new("s", "metal1", 1);
    let bytes = obs.stream(50, 100);
    let sum = c.collect_stream("metal1", &bytes[..]).await.unwrap();
    assert_eq!(
        (sum.records, sum.decode_errors, sum.saw_bye),
        (5000, 0, true)
    );
    c.flush().await.unwrap();
    let snap = c.counters().snapshot();
    assert_eq!((snap.records, snap.duplicates, snap.missing), (5000, 0, 0));
    assert!(snap.batches > 1, "{} batches", snap.batches);
    let store = c.store().clone();
    let s = c.session_id();
    let rep = c.finish().await.unwrap();
    assert!(rep.gaps.is_empty(), "{:?}", rep.gaps);
    assert_eq!(store.count_samples(s).await.unwrap(), 5000);
    let runs = store.runs(s).await.unwrap();
    assert_eq!(runs[0].bye_records_total, Some(5000));
    assert_eq!(store.observer_stats(s).await.unwrap().len(), 5);
    // The stored records are the ones sent.
    let mut cur = store.samples(s, 2000).await.unwrap();
    while let Some(page) = cur.next_page().await.unwrap() {
        for r in page {
            assert_eq!(r.sample, obs.sample(r.record_seq));
        }
    }
}

#[tokio::test]
async fn redelivered_records_are_stored_once_and_counted_as_duplicates() {
    let c = setup(small_batches()).await;
    let mut obs = SyntheticObserver::new("s", "h", 1);
    let bytes = obs.stream(10, 100);
    c.collect_stream("h", &bytes[..]).await.unwrap();
    c.collect_stream("h", &bytes[..]).await.unwrap();
    c.flush().await.unwrap();
    let snap = c.counters().snapshot();
    assert_eq!((snap.records, snap.duplicates), (1000, 1000));
    assert_eq!(snap.hosts["h"].duplicates, 1000);
    let rep = c.finish().await.unwrap();
    assert_eq!(rep.missing_records(), 0);
}

#[tokio::test]
async fn a_lost_frame_is_a_gap_with_count_and_place() {
    let c = setup(small_batches()).await;
    let mut obs = SyntheticObserver::new("s", "h", 1);
    let mut bytes = Vec::new();
    obs.hello().encode_into(&mut bytes);
    obs.samples(100).encode_into(&mut bytes);
    let _lost = obs.samples(50); // never sent
    obs.samples(100).encode_into(&mut bytes);
    let _lost_tail = obs.samples(30);
    obs.stats(1, 7).encode_into(&mut bytes); // reports 280 sent and 7 kernel drops
    c.collect_stream("h", &bytes[..]).await.unwrap();
    c.flush().await.unwrap();
    let snap = c.counters().snapshot();
    assert_eq!((snap.records, snap.missing), (200, 50));
    assert_eq!(snap.hosts["h"].ringbuf_full["dev_recv"], 7);
    let rep = c.finish().await.unwrap();
    let g: Vec<_> = rep
        .gaps
        .iter()
        .map(|g| (g.host.as_str(), g.from_seq, g.to_seq, g.kind.as_str()))
        .collect();
    assert_eq!(g, vec![("h", 100, 150, "missing"), ("h", 250, 280, "tail")]);
    assert_eq!(rep.missing_records(), 80);
}

#[tokio::test]
async fn corrupt_and_truncated_input_is_reported_and_the_stream_continues() {
    let c = setup(small_batches()).await;
    let mut obs = SyntheticObserver::new("s", "h", 1);
    let mut bytes = Vec::new();
    obs.hello().encode_into(&mut bytes);
    let at = bytes.len();
    obs.samples(10).encode_into(&mut bytes);
    bytes[at + HEADER_SIZE + 20] ^= 1; // checksum error: these 10 records are lost
    bytes.extend_from_slice(b"garbage between frames");
    obs.samples(10).encode_into(&mut bytes);
    let mut tail = obs.samples(10).encode();
    tail.truncate(tail.len() / 2); // the stream is cut mid-frame
    bytes.extend_from_slice(&tail);
    let sum = c.collect_stream("h", &bytes[..]).await.unwrap();
    assert_eq!(sum.records, 10);
    assert!(sum.decode_errors >= 2, "{sum:?}");
    let store = c.store().clone();
    let s = c.session_id();
    let rep = c.finish().await.unwrap();
    assert_eq!(rep.counters.records, 10);
    assert_eq!(
        rep.gaps
            .iter()
            .map(|g| (g.from_seq, g.to_seq))
            .collect::<Vec<_>>(),
        vec![(0, 10)]
    );
    let errs = store.stream_errors(s).await.unwrap();
    assert!(
        errs.iter().any(|e| e.error.contains("checksum")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.error.contains("truncated")),
        "{errs:?}"
    );
}

#[tokio::test]
async fn records_before_hello_are_reported_not_stored() {
    let c = setup(small_batches()).await;
    let mut obs = SyntheticObserver::new("s", "h", 1);
    let bytes = obs.samples(5).encode();
    c.collect_stream("h", &bytes[..]).await.unwrap();
    let store = c.store().clone();
    let s = c.session_id();
    let rep = c.finish().await.unwrap();
    assert_eq!((rep.counters.records, rep.counters.decode_errors), (0, 1));
    assert!(
        store.stream_errors(s).await.unwrap()[0]
            .error
            .contains("5 records")
    );
}

#[tokio::test]
async fn an_observer_restart_is_a_new_run_not_a_duplicate() {
    let c = setup(small_batches()).await;
    let mut a = SyntheticObserver::new("s", "h", 1);
    let mut b = SyntheticObserver::new("s", "h", 2); // same host, restarted: seq starts at 0 again
    let (x, y) = (a.stream(3, 10), b.stream(3, 10));
    c.collect_stream("h", &x[..]).await.unwrap();
    c.collect_stream("h", &y[..]).await.unwrap();
    let rep = c.finish().await.unwrap();
    assert_eq!((rep.counters.records, rep.counters.duplicates), (60, 0));
}

#[tokio::test]
async fn fuzzed_streams_never_panic_and_keep_what_decodes() {
    let c = setup(small_batches()).await;
    let mut obs = SyntheticObserver::new("s", "h", 1);
    let clean = obs.stream(20, 5);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let mut bytes = clean.clone();
        for _ in 0..(1 + round % 5) {
            let i = (rnd() as usize) % bytes.len();
            match rnd() % 3 {
                0 => bytes[i] ^= rnd() as u8 | 1,
                1 => {
                    bytes.truncate(i.max(1));
                }
                _ => bytes
                    .splice(i..i, (0..(rnd() % 40)).map(|_| rnd() as u8))
                    .for_each(drop),
            }
        }
        let sum = c.collect_stream("h", &bytes[..]).await.unwrap();
        assert!(sum.records <= 100);
    }
    let rep = c.finish().await.unwrap();
    assert!(rep.counters.records <= 100);
    assert!(rep.counters.decode_errors > 0);
}

#[tokio::test]
async fn a_stalled_writer_makes_the_reader_wait_not_drop() {
    // A queue of one frame: the reader must wait for the writer, and everything still arrives.
    let c = setup(CollectorConfig {
        queue_frames: 1,
        batch_records: 50,
        ..small_batches()
    })
    .await;
    let mut obs = SyntheticObserver::new("s", "h", 1);
    let bytes = obs.stream(200, 10);
    c.collect_stream("h", &bytes[..]).await.unwrap();
    let rep = c.finish().await.unwrap();
    assert_eq!((rep.counters.records, rep.missing_records()), (2000, 0));
}

#[test]
fn run_tags_round_trip() {
    let t = RunTag {
        boot_id: "a/b-c".into(),
        started_ns: 42,
    };
    assert_eq!(RunTag::decode(&t.encode()), Some(t));
    assert_eq!(RunTag::decode("nope"), None);
    let _ = Frame::Bye(latplan_common::wire::Bye {
        records_total: 0,
        reason: String::new(),
    });
}
