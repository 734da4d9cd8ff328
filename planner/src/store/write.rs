//! Writes. Every insert is idempotent (`INSERT OR IGNORE` / `INSERT IGNORE` on a natural key) so
//! re-delivered input changes nothing; records go in as multi-row inserts, one transaction per batch.
use std::collections::HashMap;

use latplan_common::clock::ClockFit;
use latplan_common::wire::{Bye, Hello, Sample, Stats};
use sqlx::{AssertSqlSafe, QueryBuilder};

use super::model::*;
use super::{Backend, Result, SampleEncoding, Store, StoreError, bulk, now_unix_ms, on_pool, q};

/// Records and observer reports to store together, in one transaction.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub session_id: SessionId,
    /// (run, record sequence number, sample).
    pub samples: Vec<(RunId, u64, Sample)>,
    pub stats: Vec<(RunId, Stats)>,
    pub byes: Vec<(RunId, Bye)>,
}

impl WriteBatch {
    pub fn new(session_id: SessionId) -> WriteBatch {
        WriteBatch {
            session_id,
            ..Default::default()
        }
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.stats.is_empty() && self.byes.is_empty()
    }
    pub fn clear(&mut self) {
        self.samples.clear();
        self.stats.clear();
        self.byes.clear();
    }
}

/// What a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Sample rows newly stored.
    pub inserted: u64,
    /// Sample rows already present (re-delivered), left as they were.
    pub duplicates: u64,
    /// (inserted, duplicates) per run.
    pub per_run: HashMap<RunId, (u64, u64)>,
}

/// Inserts sample rows in multi-row statements inside transaction `$tx`; evaluates to
/// (rows inserted, per-run (inserted, duplicates)). Statements never mix runs, so each
/// statement's affected-row count says how many of that run's records were new.
///
/// `$json`: `Some((sql, rows per statement))` to send each statement's rows as one JSON
/// parameter ([`super::bulk`]), `None` to bind every value (`$sql`, `$chunk` rows per statement).
macro_rules! insert_sample_rows {
    ($tx:ident, $rows:expr, $sql:expr, $chunk:expr, $json:expr) => {{
        let rows: &[(RunId, u64, Sample)] = $rows;
        let json: Option<(&str, usize)> = $json;
        let chunk = json.map_or($chunk, |(_, n)| n);
        let mut inserted = 0u64;
        let mut per_run: HashMap<RunId, (u64, u64)> = HashMap::new();
        let mut i = 0;
        while i < rows.len() {
            let run = rows[i].0;
            let mut j = i + 1;
            while j < rows.len() && j - i < chunk && rows[j].0 == run {
                j += 1;
            }
            let c = &rows[i..j];
            let done = if let Some((sql, _)) = json {
                let mut rows_json = String::with_capacity(c.len() * 96);
                bulk::encode_rows(c.iter().map(|(_, seq, s)| (*seq, s)), &mut rows_json);
                sqlx::query(AssertSqlSafe(sql))
                    .bind(run)
                    .bind(rows_json)
                    .execute(&mut *$tx)
                    .await
            } else {
                let mut b = QueryBuilder::new($sql.as_str());
                b.push_values(c, |mut r, (run, seq, s)| {
                    r.push_bind(*run)
                        .push_bind(*seq as i64)
                        .push_bind(s.ts_ns as i64)
                        .push_bind(FlowKey::of(s).id())
                        .push_bind(s.offset as i64)
                        .push_bind(s.len as i64)
                        .push_bind(s.layer as u8 as i64)
                        .push_bind(s.ifindex as i64)
                        .push_bind(s.netns as i64)
                        .push_bind(s.cpu as i64)
                        .push_bind(s.flags as i64);
                });
                b.build().execute(&mut *$tx).await
            };
            let n = done.map_err(q("insert samples"))?.rows_affected();
            let e = per_run.entry(run).or_insert((0, 0));
            e.0 += n;
            e.1 += c.len() as u64 - n;
            inserted += n;
            i = j;
        }
        (inserted, per_run)
    }};
}

const SAMPLE_COLUMNS: &str =
    "(run_id, record_seq, ts_ns, flow_id, byte_offset, len, layer, ifindex, netns, cpu, flags)";

impl Store {
    /// Rows per multi-row INSERT: as many as the backend's bound-parameter limit allows
    /// (SQLite 32766, MySQL 65535; 11 columns each), with room to spare.
    fn sample_chunk(&self) -> usize {
        match self.backend() {
            Backend::Sqlite => 2500,
            Backend::MySql => 2500,
        }
    }

    /// Creates the session `name`, or returns the existing one (re-running apply is safe).
    pub async fn open_session(&self, name: &str) -> Result<SessionId> {
        let ins = format!(
            "{} INTO sessions (name, started_unix_ms, status) VALUES (?, ?, 'running')",
            self.insert_ignore()
        );
        on_pool!(self, p => sqlx::query(AssertSqlSafe(ins)).bind(name).bind(now_unix_ms()).execute(p).await.map(|_| ()))
            .map_err(q("create the session"))?;
        on_pool!(self, p => sqlx::query_scalar("SELECT id FROM sessions WHERE name = ?").bind(name).fetch_one(p).await)
            .map_err(q("look up the session"))
    }

    /// Marks a session ended with `status` (`completed`, `interrupted`, `failed`, …).
    pub async fn end_session(&self, session: SessionId, status: &str) -> Result<()> {
        on_pool!(self, p => sqlx::query("UPDATE sessions SET ended_unix_ms = ?, status = ? WHERE id = ?")
            .bind(now_unix_ms()).bind(status).bind(session).execute(p).await.map(|_| ()))
        .map_err(q("end the session"))?;
        Ok(())
    }

    /// Registers or updates a host of a session (inventory facts win over stream facts).
    pub async fn upsert_host(&self, session: SessionId, h: &HostRecord) -> Result<HostId> {
        let ins = format!(
            "{} INTO hosts (session_id, name, kind, parent, clock_domain, boot_id, address) VALUES (?, ?, ?, ?, ?, ?, ?)",
            self.insert_ignore()
        );
        let upd = "UPDATE hosts SET kind = ?, parent = ?, clock_domain = ?, boot_id = COALESCE(?, boot_id), \
                   address = ? WHERE session_id = ? AND name = ?";
        on_pool!(self, p => {
            let mut tx = p.begin().await.map_err(q("begin a transaction"))?;
            sqlx::query(AssertSqlSafe(ins)).bind(session).bind(&h.name).bind(&h.kind).bind(&h.parent)
                .bind(&h.clock_domain).bind(&h.boot_id).bind(&h.address).execute(&mut *tx).await.map_err(q("insert a host"))?;
            sqlx::query(upd).bind(&h.kind).bind(&h.parent).bind(&h.clock_domain).bind(&h.boot_id).bind(&h.address)
                .bind(session).bind(&h.name).execute(&mut *tx).await.map_err(q("update a host"))?;
            let id: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE session_id = ? AND name = ?")
                .bind(session).bind(&h.name).fetch_one(&mut *tx).await.map_err(q("look up a host"))?;
            tx.commit().await.map_err(q("commit a host"))?;
            Ok(id)
        })
    }

    /// Registers the observer run a Hello frame announces (idempotent on host, boot id and start
    /// time), creating the host as `unknown` kind if apply did not register it, and its interfaces.
    ///
    /// `placeholder` marks a Hello reconstructed from a run tag (the real one was lost): it
    /// creates the run if missing but never overwrites what a real Hello stored.
    pub async fn register_run(
        &self,
        session: SessionId,
        hello: &Hello,
        placeholder: bool,
    ) -> Result<(HostId, RunId)> {
        let ins_host = format!(
            "{} INTO hosts (session_id, name, kind, boot_id) VALUES (?, ?, 'unknown', ?)",
            self.insert_ignore()
        );
        let ins_run = format!(
            "{} INTO runs (session_id, host_id, boot_id, started_ns, observer_version, sample_size, netns, first_seen_unix_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            self.insert_ignore()
        );
        let ins_if = format!(
            "{} INTO interfaces (run_id, host_id, ifindex, netns, name, ingress_mode) VALUES (?, ?, ?, ?, ?, ?)",
            self.insert_ignore()
        );
        let netns = serde_json::to_string(&hello.netns).expect("a list of numbers serializes");
        on_pool!(self, p => {
            let mut tx = p.begin().await.map_err(q("begin a transaction"))?;
            sqlx::query(AssertSqlSafe(ins_host)).bind(session).bind(&hello.host).bind(&hello.boot_id)
                .execute(&mut *tx).await.map_err(q("insert a host"))?;
            sqlx::query("UPDATE hosts SET boot_id = ? WHERE session_id = ? AND name = ?")
                .bind(&hello.boot_id).bind(session).bind(&hello.host).execute(&mut *tx).await.map_err(q("update a host"))?;
            let host_id: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE session_id = ? AND name = ?")
                .bind(session).bind(&hello.host).fetch_one(&mut *tx).await.map_err(q("look up a host"))?;
            sqlx::query(AssertSqlSafe(ins_run)).bind(session).bind(host_id).bind(&hello.boot_id).bind(hello.started_ns as i64)
                .bind(&hello.observer_version).bind(hello.sample_size as i64).bind(&netns).bind(now_unix_ms())
                .execute(&mut *tx).await.map_err(q("insert an observer run"))?;
            let run_id: i64 = sqlx::query_scalar("SELECT id FROM runs WHERE host_id = ? AND boot_id = ? AND started_ns = ?")
                .bind(host_id).bind(&hello.boot_id).bind(hello.started_ns as i64).fetch_one(&mut *tx).await
                .map_err(q("look up an observer run"))?;
            if !placeholder {
                // A run first registered from a placeholder gets the real facts when its Hello shows up.
                sqlx::query("UPDATE runs SET observer_version = ?, sample_size = ?, netns = ? WHERE id = ?")
                    .bind(&hello.observer_version).bind(hello.sample_size as i64).bind(&netns).bind(run_id)
                    .execute(&mut *tx).await.map_err(q("update an observer run"))?;
            }
            for i in &hello.interfaces {
                sqlx::query(AssertSqlSafe(ins_if.as_str())).bind(run_id).bind(host_id).bind(i.ifindex as i64).bind(i.netns as i64)
                    .bind(&i.name).bind(&i.ingress_mode).execute(&mut *tx).await.map_err(q("insert an interface"))?;
            }
            tx.commit().await.map_err(q("commit an observer run"))?;
            Ok((host_id, run_id))
        })
    }

    /// Stores clock fits of a session (idempotent on domain and validity start).
    pub async fn insert_clock_fits(&self, session: SessionId, fits: &[ClockFit]) -> Result<()> {
        if fits.is_empty() {
            return Ok(());
        }
        let head = format!(
            "{} INTO clock_fits (session_id, domain, valid_from_host_ns, ref_host_ns, offset_ns, drift_ppm, \
             error_bound_ns, samples, min_delay_ns) ",
            self.insert_ignore()
        );
        on_pool!(self, p => {
            let mut tx = p.begin().await.map_err(q("begin a transaction"))?;
            for chunk in fits.chunks(500) {
                let mut b = QueryBuilder::new(head.as_str());
                b.push_values(chunk, |mut r, f| {
                    r.push_bind(session).push_bind(&f.domain).push_bind(f.valid_from_host_ns as i64).push_bind(f.ref_host_ns as i64)
                        .push_bind(f.offset_ns).push_bind(f.drift_ppm).push_bind(f.error_bound_ns).push_bind(f.samples as i64)
                        .push_bind(f.min_delay_ns as i64);
                });
                b.build().execute(&mut *tx).await.map_err(q("insert clock fits"))?;
            }
            tx.commit().await.map_err(q("commit clock fits"))
        })
    }

    /// Stores a batch of records, the flows they belong to, stats and byes in one transaction.
    pub async fn write_batch(&self, batch: &WriteBatch) -> Result<WriteOutcome> {
        let mut flows: HashMap<FlowId, FlowKey> = HashMap::new();
        for (_, _, s) in &batch.samples {
            let k = FlowKey::of(s);
            flows.entry(k.id()).or_insert(k);
        }
        let flows: Vec<(FlowId, FlowKey)> = flows.into_iter().collect();
        let ins_flows = format!(
            "{} INTO flows (session_id, flow_id, saddr, daddr, sport, dport) ",
            self.insert_ignore()
        );
        let ins_samples = format!("{} INTO samples {SAMPLE_COLUMNS} ", self.insert_ignore());
        let ins_stats = format!(
            "{} INTO observer_stats (run_id, ts_ns, records_sent, records_dropped, cpu_percent) VALUES (?, ?, ?, ?, ?)",
            self.insert_ignore()
        );
        let ins_layers = format!(
            "{} INTO layer_stats (run_id, ts_ns, layer, seen, sampled, ringbuf_full, rate_limited) ",
            self.insert_ignore()
        );
        let session = batch.session_id;
        let chunk = self.sample_chunk();
        let json_sql = (self.backend() == Backend::MySql
            && self.mysql_samples == SampleEncoding::Json)
            .then(|| bulk::insert_sql(self.insert_ignore()));
        let json = json_sql.as_deref().map(|sql| (sql, self.mysql_json_rows));
        // MySQL/MariaDB spends its time per connection on one core: large batches are split
        // across two connections in parallel. Each part is its own transaction; the batch counts
        // as stored (and is acknowledged) only when all parts committed, and a retry after a
        // partial failure re-inserts the committed part as ignored duplicates.
        let split = if self.backend() == Backend::MySql
            && self.mysql_writers > 1
            && batch.samples.len() >= 2 * chunk
        {
            batch.samples.len() / 2
        } else {
            batch.samples.len()
        };
        let (head, tail) = batch.samples.split_at(split);
        let ((i1, r1), (i2, r2)) = on_pool!(self, p => {
            let main = async {
                let mut tx = p.begin().await.map_err(q("begin a transaction"))?;
                for c in flows.chunks(1000) {
                    let mut b = QueryBuilder::new(ins_flows.as_str());
                    b.push_values(c, |mut r, (id, k)| {
                        r.push_bind(session).push_bind(*id).push_bind(&k.saddr[..]).push_bind(&k.daddr[..])
                            .push_bind(k.sport as i64).push_bind(k.dport as i64);
                    });
                    b.build().execute(&mut *tx).await.map_err(q("insert flows"))?;
                }
                let out = insert_sample_rows!(tx, head, ins_samples, chunk, json);
                for (run, st) in &batch.stats {
                    sqlx::query(AssertSqlSafe(ins_stats.as_str())).bind(*run).bind(st.ts_ns as i64).bind(st.records_sent as i64)
                        .bind(st.records_dropped as i64).bind(st.cpu_percent).execute(&mut *tx).await.map_err(q("insert observer stats"))?;
                    if !st.layers.is_empty() {
                        let mut b = QueryBuilder::new(ins_layers.as_str());
                        b.push_values(&st.layers, |mut r, l| {
                            r.push_bind(*run).push_bind(st.ts_ns as i64).push_bind(l.layer as u8 as i64).push_bind(l.seen as i64)
                                .push_bind(l.sampled as i64).push_bind(l.ringbuf_full as i64).push_bind(l.rate_limited as i64);
                        });
                        b.build().execute(&mut *tx).await.map_err(q("insert layer stats"))?;
                    }
                }
                for (run, bye) in &batch.byes {
                    sqlx::query("UPDATE runs SET bye_records_total = ?, bye_reason = ? WHERE id = ?")
                        .bind(bye.records_total as i64).bind(&bye.reason).bind(*run).execute(&mut *tx).await
                        .map_err(q("record an observer's bye"))?;
                }
                tx.commit().await.map_err(q("commit a batch"))?;
                Ok::<_, StoreError>(out)
            };
            let extra = async {
                if tail.is_empty() {
                    return Ok::<_, StoreError>((0, HashMap::new()));
                }
                let mut tx = p.begin().await.map_err(q("begin a transaction"))?;
                let out = insert_sample_rows!(tx, tail, ins_samples, chunk, json);
                tx.commit().await.map_err(q("commit a batch"))?;
                Ok(out)
            };
            tokio::try_join!(main, extra)?
        });
        let inserted = i1 + i2;
        let mut per_run = r1;
        for (run, (n, d)) in r2 {
            let e = per_run.entry(run).or_insert((0, 0));
            e.0 += n;
            e.1 += d;
        }
        Ok(WriteOutcome {
            inserted,
            duplicates: batch.samples.len() as u64 - inserted,
            per_run,
        })
    }

    /// Notes undecodable input on a host's stream (what was wrong, bytes skipped).
    pub async fn record_stream_error(
        &self,
        session: SessionId,
        host: &str,
        error: &str,
        skipped_bytes: u64,
    ) -> Result<()> {
        on_pool!(self, p => sqlx::query("INSERT INTO stream_errors (session_id, host, at_unix_ms, error, skipped_bytes) VALUES (?, ?, ?, ?, ?)")
            .bind(session).bind(host).bind(now_unix_ms()).bind(error).bind(skipped_bytes as i64).execute(p).await.map(|_| ()))
        .map_err(q("record a stream error"))?;
        Ok(())
    }

    /// Scans every run of a session for missing record ranges and stores them in `gaps`,
    /// replacing an earlier scan. A run's expected total is its bye's count, else the highest
    /// `records_sent` it reported; records past the last stored one up to that are a `tail` gap.
    /// Call at the end of collection (and any time for a progress view: it is idempotent).
    pub async fn scan_gaps(&self, session: SessionId) -> Result<Vec<GapRow>> {
        let runs = self.runs(session).await?;
        let mut all = Vec::new();
        for run in runs {
            let gaps = self.scan_run_gaps(&run).await?;
            let ins = "INSERT INTO gaps (run_id, from_seq, to_seq, kind, noted_unix_ms) VALUES (?, ?, ?, ?, ?)";
            let now = now_unix_ms();
            on_pool!(self, p => {
                let mut tx = p.begin().await.map_err(q("begin a transaction"))?;
                sqlx::query("DELETE FROM gaps WHERE run_id = ?").bind(run.id).execute(&mut *tx).await.map_err(q("clear gaps"))?;
                for g in &gaps {
                    sqlx::query(ins).bind(g.run_id).bind(g.from_seq as i64).bind(g.to_seq as i64).bind(&g.kind).bind(now)
                        .execute(&mut *tx).await.map_err(q("insert a gap"))?;
                }
                tx.commit().await.map_err(q("commit gaps"))?;
            });
            all.extend(gaps);
        }
        Ok(all)
    }

    async fn scan_run_gaps(&self, run: &RunRow) -> Result<Vec<GapRow>> {
        // Inner holes: consecutive stored sequence numbers more than one apart.
        let holes = "SELECT record_seq, next_seq FROM (SELECT record_seq, LEAD(record_seq) OVER (ORDER BY record_seq) AS next_seq \
                     FROM samples WHERE run_id = ?) t WHERE next_seq > record_seq + 1 ORDER BY record_seq";
        let bounds = "SELECT MIN(record_seq), MAX(record_seq) FROM samples WHERE run_id = ?";
        let sent = "SELECT MAX(records_sent) FROM observer_stats WHERE run_id = ?";
        type Scan = (Vec<(i64, i64)>, (Option<i64>, Option<i64>), Option<i64>);
        let (pairs, (lo, hi), sent): Scan = on_pool!(self, p => {
            let pairs = sqlx::query_as(holes).bind(run.id).fetch_all(p).await.map_err(q("scan for gaps"))?;
            let b = sqlx::query_as(bounds).bind(run.id).fetch_one(p).await.map_err(q("scan for gaps"))?;
            let s = sqlx::query_scalar(sent).bind(run.id).fetch_one(p).await.map_err(q("scan for gaps"))?;
            (pairs, b, s)
        });
        let gap = |from: u64, to: u64, kind: &str| GapRow {
            run_id: run.id,
            host_id: run.host_id,
            host: run.host.clone(),
            from_seq: from,
            to_seq: to,
            kind: kind.to_string(),
        };
        let mut out = Vec::new();
        if let Some(lo) = lo
            && lo > 0
        {
            out.push(gap(0, lo as u64, "missing"));
        }
        out.extend(
            pairs
                .into_iter()
                .map(|(a, b)| gap(a as u64 + 1, b as u64, "missing")),
        );
        let expected = run.bye_records_total.or(sent.map(|s| s as u64));
        let stored_end = hi.map(|h| h as u64 + 1).unwrap_or(0);
        if let Some(exp) = expected
            && exp > stored_end
        {
            out.push(gap(stored_end, exp, "tail"));
        }
        Ok(out)
    }

    /// Stores analysis output for a session.
    pub async fn insert_segments(&self, session: SessionId, rows: &[SegmentRow]) -> Result<()> {
        let head = "INSERT INTO segments (session_id, flow_id, segment, row_kind, stat, t_ns, byte_offset, value, flagged) ";
        on_pool!(self, p => {
            let mut tx = p.begin().await.map_err(q("begin a transaction"))?;
            for c in rows.chunks(2000) {
                let mut b = QueryBuilder::new(head);
                b.push_values(c, |mut r, s| {
                    r.push_bind(session).push_bind(s.flow_id).push_bind(&s.segment).push_bind(s.kind.as_str()).push_bind(&s.stat)
                        .push_bind(s.t_ns).push_bind(s.byte_offset.map(|o| o as i64)).push_bind(s.value).push_bind(s.flagged as i64);
                });
                b.build().execute(&mut *tx).await.map_err(q("insert segments"))?;
            }
            tx.commit().await.map_err(q("commit segments"))
        })
    }

    /// Removes a session's analysis output (before re-running the analysis).
    pub async fn clear_segments(&self, session: SessionId) -> Result<()> {
        on_pool!(self, p => sqlx::query("DELETE FROM segments WHERE session_id = ?").bind(session).execute(p).await.map(|_| ()))
            .map_err(q("clear segments"))?;
        Ok(())
    }
}
