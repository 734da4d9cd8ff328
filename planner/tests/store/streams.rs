//! The default bus: observers' byte streams (their stdout over SSH) into the store.
use std::time::Duration;

use planner::collector::synthetic::SyntheticObserver;
use planner::collector::{Collector, CollectorConfig};
use tokio::io::AsyncWriteExt;

use super::*;

/// Four observers stream concurrently through pipes into an SQLite file: counts match.
#[tokio::test]
async fn byte_streams_into_sqlite_store_every_record() {
    let _g = SERVICES.read().await;
    let (store, dir) = sqlite_store("streams").await;
    let s = store.open_session("sqlite-streams").await.unwrap();
    let c = Arc::new(Collector::start(
        store.clone(),
        s,
        CollectorConfig::default(),
    ));
    let mut tasks = Vec::new();
    for h in 0..4 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let host = format!("metal{h}");
            let mut obs = SyntheticObserver::new("sqlite-streams", &host, 100 + h);
            let bytes = obs.stream(200, 250);
            // A pipe with a small buffer, written in odd-sized pieces, like an SSH channel.
            let (mut w, r) = tokio::io::duplex(4096);
            let writer = tokio::spawn(async move {
                for piece in bytes.chunks(1000 + 17 * h as usize) {
                    w.write_all(piece).await.unwrap();
                }
            });
            let sum = c.collect_stream(&host, r).await.unwrap();
            writer.await.unwrap();
            assert!(sum.saw_bye && sum.decode_errors == 0, "{sum:?}");
            (host, obs.next_seq)
        }));
    }
    let mut generated = Vec::new();
    for t in tasks {
        generated.push(t.await.unwrap());
    }
    let c = Arc::into_inner(c).unwrap();
    let rep = c.finish().await.unwrap();
    assert!(rep.gaps.is_empty(), "{:?}", rep.gaps);
    assert_eq!(store.count_samples(s).await.unwrap(), 4 * 200 * 250);
    for (host, n) in generated {
        assert_eq!(assert_accounted(&store, s, &host, n).await, (n, 0));
        assert_eq!(rep.counters.hosts[&host].records, n);
    }
    assert_eq!(store.hosts(s).await.unwrap().len(), 4);
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// The same into MariaDB, with a stream that is cut mid-frame and resumed on a new channel:
/// the cut frame is reported as a stream error and its records as a gap with its exact place.
#[tokio::test]
async fn a_cut_stream_resumed_later_reports_exactly_what_was_lost() {
    let _g = SERVICES.read().await;
    let store = mariadb_store("latplan_test_cut").await;
    let s = store.open_session("cut").await.unwrap();
    let c = Collector::start(
        store.clone(),
        s,
        CollectorConfig {
            flush_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let mut obs = SyntheticObserver::new("cut", "vm1", 7);
    let mut first = Vec::new();
    obs.hello().encode_into(&mut first);
    for _ in 0..10 {
        obs.samples(100).encode_into(&mut first);
    }
    let cut = obs.samples(100).encode(); // records 1000..1100: half of it is sent, then the link dies
    first.extend_from_slice(&cut[..cut.len() / 2]);
    let lost_while_down = obs.samples(300); // 1100..1400 produced while no channel was up
    drop(lost_while_down);
    let mut second = Vec::new();
    obs.hello().encode_into(&mut second); // the observer re-announces itself on the new channel
    for _ in 0..5 {
        obs.samples(100).encode_into(&mut second);
    }
    obs.stats(1, 0).encode_into(&mut second);
    obs.bye().encode_into(&mut second);
    let a = c.collect_stream("vm1", &first[..]).await.unwrap();
    assert!(!a.saw_bye && a.decode_errors == 1, "{a:?}");
    let b = c.collect_stream("vm1", &second[..]).await.unwrap();
    assert!(b.saw_bye, "{b:?}");
    let rep = c.finish().await.unwrap();
    let gaps: Vec<_> = rep
        .gaps
        .iter()
        .map(|g| (g.host.as_str(), g.from_seq, g.to_seq))
        .collect();
    assert_eq!(gaps, vec![("vm1", 1000, 1400)]);
    assert_eq!(
        assert_accounted(&store, s, "vm1", obs.next_seq).await,
        (1500, 400)
    );
    let errors = store.stream_errors(s).await.unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].error.contains("truncated"), "{errors:?}");
    store.close().await;
}
