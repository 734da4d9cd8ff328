//! The two ways a MariaDB sample insert can carry its rows (`SampleEncoding`): every bound
//! value, or one bound JSON array unpacked by `JSON_TABLE`. Both must store exactly the same
//! column values, extremes included, and stay idempotent.
use latplan_common::wire::{Frame, Sample};
use planner::store::{RunId, SampleEncoding, WriteBatch};

use super::*;

const DB: &str = "latplan_test_encoding";

/// Samples whose fields take their extreme values in turn, plus ordinary ones.
fn extreme_samples(obs: &mut SyntheticObserver, n: usize) -> Vec<Sample> {
    let Frame::Samples { samples, .. } = obs.samples(n) else {
        unreachable!("samples() makes a samples frame")
    };
    samples
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            match i % 6 {
                0 => {
                    s.ts_ns = 0;
                    s.offset = 0;
                    s.len = 0;
                    s.ifindex = 0;
                    s.netns = 0;
                    s.cpu = 0;
                    s.flags = 0;
                }
                1 => {
                    s.ts_ns = u64::MAX;
                    s.offset = u64::MAX - 1;
                    s.len = u32::MAX;
                    s.ifindex = u32::MAX;
                    s.netns = u32::MAX;
                    s.cpu = u16::MAX;
                    s.flags = u8::MAX;
                }
                2 => {
                    s.ts_ns = i64::MAX as u64;
                    s.offset = i64::MAX as u64 + 1;
                    s.len = i32::MAX as u32;
                    s.ifindex = i32::MAX as u32 + 1;
                    s.netns = u32::MAX - 1;
                }
                _ => {}
            }
            s
        })
        .collect()
}

fn batch(session: SessionId, run: RunId, first_seq: u64, samples: &[Sample]) -> WriteBatch {
    let mut b = WriteBatch::new(session);
    b.samples = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (run, first_seq.wrapping_add(i as u64), *s))
        .collect();
    b
}

/// A run's stored sample rows as the server prints them, in sequence order, without the run id.
fn stored_rows(run: RunId) -> Vec<String> {
    let sql = format!(
        "SELECT record_seq, ts_ns, flow_id, byte_offset, len, layer, ifindex, netns, cpu, flags \
         FROM {DB}.samples WHERE run_id = {run} ORDER BY record_seq"
    );
    run_cmd(Command::new("mariadb").args(["-uroot", "-N", "-e", &sql]))
        .lines()
        .map(str::to_string)
        .collect()
}

fn run_cmd(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the mariadb client");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn register(store: &Store, session: SessionId, obs: &SyntheticObserver) -> RunId {
    let Frame::Hello(h) = obs.hello() else {
        unreachable!("hello() makes a hello frame")
    };
    store.register_run(session, &h, false).await.unwrap().1
}

/// The same rows written once per encoding (into two runs) are stored identically; statements
/// smaller than a batch, a batch split over two connections and sequence numbers above
/// `i64::MAX` included.
#[tokio::test]
async fn json_rows_store_exactly_what_bound_rows_store() {
    let _g = SERVICES.read().await;
    let store = mariadb_store(DB).await;
    let s = store.open_session("encoding").await.unwrap();
    let mut a = SyntheticObserver::new("encoding", "bound", 1);
    let b = SyntheticObserver::new("encoding", "json", 2);
    let (run_a, run_b) = (register(&store, s, &a).await, register(&store, s, &b).await);
    let samples = extreme_samples(&mut a, 6000);

    let bound = store
        .clone()
        .with_sample_encoding(SampleEncoding::BoundRows, None);
    let json = store
        .clone()
        .with_sample_encoding(SampleEncoding::Json, Some(700));
    // 6,000 rows: split over two connections, each part in several JSON statements.
    for (st, run) in [(&bound, run_a), (&json, run_b)] {
        let out = st.write_batch(&batch(s, run, 0, &samples)).await.unwrap();
        assert_eq!((out.inserted, out.duplicates), (6000, 0));
        assert_eq!(out.per_run[&run], (6000, 0));
        // Sequence numbers whose `as i64` is negative.
        let top = batch(s, run, u64::MAX - 9, &samples[..10]);
        assert_eq!(st.write_batch(&top).await.unwrap().inserted, 10);
    }
    let (rows_a, rows_b) = (stored_rows(run_a), stored_rows(run_b));
    assert_eq!(rows_a.len(), 6010);
    assert_eq!(rows_a, rows_b, "the encodings stored different values");
    // The extremes went where the per-value path puts them: u64 as its signed 64-bit twin,
    // u32 above i32::MAX clipped by the INT column (INSERT IGNORE).
    let first_max = rows_a
        .iter()
        .find(|r| r.split('\t').nth(1) == Some("-1"))
        .expect("the u64::MAX timestamp stored as -1");
    let f: Vec<&str> = first_max.split('\t').collect();
    assert_eq!(f[3], ((u64::MAX - 1) as i64).to_string());
    assert_eq!(
        f[4..],
        [
            "2147483647",
            f[5],
            "2147483647",
            "4294967295",
            "65535",
            "255"
        ]
    );
    assert!(rows_a[0].starts_with("-10\t"), "{}", rows_a[0]);

    // Idempotent: the whole batch again stores nothing; a half-new batch stores its new half.
    let again = json
        .write_batch(&batch(s, run_b, 0, &samples))
        .await
        .unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 6000));
    let half = json
        .write_batch(&batch(s, run_b, 3000, &samples))
        .await
        .unwrap();
    assert_eq!((half.inserted, half.duplicates), (3000, 3000));
    assert_eq!(store.count_samples(s).await.unwrap(), 6010 + 6010 + 3000);
    store.close().await;
}
