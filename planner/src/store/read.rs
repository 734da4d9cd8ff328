//! Reads, for the analysis and the report: everything about one session.
use latplan_common::Layer;
use latplan_common::clock::ClockFit;
use latplan_common::wire::{LayerStats, Sample, Stats};
use sqlx::Row;

use super::model::*;
use super::{Result, Store, StoreError, on_pool, q};

const SAMPLE_SELECT: &str = "SELECT s.run_id, r.host_id, s.record_seq, s.ts_ns, s.flow_id, s.byte_offset, s.len, s.layer, \
     s.ifindex, s.netns, s.cpu, s.flags, f.saddr, f.daddr, f.sport, f.dport \
     FROM samples s JOIN runs r ON r.id = s.run_id JOIN flows f ON f.session_id = r.session_id AND f.flow_id = s.flow_id ";

fn addr(v: Vec<u8>) -> Result<[u8; 16]> {
    v.try_into().map_err(|v: Vec<u8>| {
        StoreError::Invalid(format!("stored address has {} bytes, not 16", v.len()))
    })
}

fn sample_from_row<R: Row>(row: &R) -> Result<StoredSample>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let g = |i: usize| row.try_get::<i64, _>(i).map_err(q("decode a sample row"));
    let layer_n = g(7)?;
    let layer = Layer::from_u8(layer_n as u8)
        .ok_or_else(|| StoreError::Invalid(format!("stored sample has unknown layer {layer_n}")))?;
    let sample = Sample {
        ts_ns: g(3)? as u64,
        offset: g(5)? as u64,
        saddr: addr(row.try_get(12).map_err(q("decode a sample row"))?)?,
        daddr: addr(row.try_get(13).map_err(q("decode a sample row"))?)?,
        sport: g(14)? as u16,
        dport: g(15)? as u16,
        len: g(6)? as u32,
        ifindex: g(8)? as u32,
        netns: g(9)? as u32,
        cpu: g(10)? as u16,
        layer,
        flags: g(11)? as u8,
    };
    Ok(StoredSample {
        run_id: g(0)?,
        host_id: g(1)?,
        record_seq: g(2)? as u64,
        flow_id: g(4)?,
        sample,
    })
}

/// Pages through a session's samples in (run, record sequence) order without holding them all
/// in memory; optionally only one flow's. Each page is one indexed range query.
pub struct SampleCursor<'s> {
    store: &'s Store,
    runs: Vec<RunId>,
    run_idx: usize,
    after_seq: Option<u64>,
    flow: Option<FlowId>,
    page: usize,
}

impl SampleCursor<'_> {
    /// The next page (at most `page` samples); `None` when done.
    pub async fn next_page(&mut self) -> Result<Option<Vec<StoredSample>>> {
        while let Some(&run) = self.runs.get(self.run_idx) {
            let after = self.after_seq.map(|s| s as i64).unwrap_or(-1);
            let flow_clause = if self.flow.is_some() {
                "AND s.flow_id = ? "
            } else {
                ""
            };
            let sql = format!(
                "{SAMPLE_SELECT} WHERE s.run_id = ? AND s.record_seq > ? {flow_clause}ORDER BY s.record_seq LIMIT ?"
            );
            let rows: Vec<StoredSample> = on_pool!(self.store, p => {
                let mut qry = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run).bind(after);
                if let Some(f) = self.flow {
                    qry = qry.bind(f);
                }
                let rows = qry.bind(self.page as i64).fetch_all(p).await.map_err(q("read samples"))?;
                rows.iter().map(sample_from_row).collect::<Result<Vec<_>>>()?
            });
            match rows.last() {
                Some(last) => {
                    self.after_seq = Some(last.record_seq);
                    return Ok(Some(rows));
                }
                None => {
                    self.run_idx += 1;
                    self.after_seq = None;
                }
            }
        }
        Ok(None)
    }
}

impl Store {
    pub async fn session_by_name(&self, name: &str) -> Result<Option<SessionRow>> {
        let sql =
            "SELECT id, name, started_unix_ms, ended_unix_ms, status FROM sessions WHERE name = ?";
        let row: Option<(i64, String, i64, Option<i64>, String)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(name).fetch_optional(p).await)
                .map_err(q("read a session"))?;
        Ok(row.map(
            |(id, name, started_unix_ms, ended_unix_ms, status)| SessionRow {
                id,
                name,
                started_unix_ms,
                ended_unix_ms,
                status,
            },
        ))
    }

    pub async fn sessions(&self) -> Result<Vec<SessionRow>> {
        let sql =
            "SELECT id, name, started_unix_ms, ended_unix_ms, status FROM sessions ORDER BY id";
        let rows: Vec<(i64, String, i64, Option<i64>, String)> =
            on_pool!(self, p => sqlx::query_as(sql).fetch_all(p).await)
                .map_err(q("read sessions"))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, name, started_unix_ms, ended_unix_ms, status)| SessionRow {
                    id,
                    name,
                    started_unix_ms,
                    ended_unix_ms,
                    status,
                },
            )
            .collect())
    }

    pub async fn hosts(&self, session: SessionId) -> Result<Vec<HostRow>> {
        type R = (
            i64,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let sql = "SELECT id, name, kind, parent, clock_domain, boot_id, address FROM hosts WHERE session_id = ? ORDER BY id";
        let rows: Vec<R> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read hosts"))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, name, kind, parent, clock_domain, boot_id, address)| HostRow {
                    id,
                    session_id: session,
                    host: HostRecord {
                        name,
                        kind,
                        parent,
                        clock_domain,
                        boot_id,
                        address,
                    },
                },
            )
            .collect())
    }

    /// Observer runs of a session, by id (a host has more than one when its observer restarted).
    pub async fn runs(&self, session: SessionId) -> Result<Vec<RunRow>> {
        let sql = "SELECT r.id, r.host_id, h.name, r.boot_id, r.started_ns, r.observer_version, r.sample_size, r.netns, \
                   r.bye_records_total, r.bye_reason FROM runs r JOIN hosts h ON h.id = r.host_id WHERE r.session_id = ? ORDER BY r.id";
        type R = (
            i64,
            i64,
            String,
            String,
            i64,
            String,
            i64,
            String,
            Option<i64>,
            Option<String>,
        );
        let rows: Vec<R> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read observer runs"))?;
        rows.into_iter()
            .map(
                |(
                    id,
                    host_id,
                    host,
                    boot_id,
                    started_ns,
                    observer_version,
                    sample_size,
                    netns,
                    total,
                    reason,
                )| {
                    Ok(RunRow {
                        id,
                        session_id: session,
                        host_id,
                        host,
                        boot_id,
                        started_ns: started_ns as u64,
                        observer_version,
                        sample_size: sample_size as u64,
                        netns: serde_json::from_str(&netns).map_err(|e| {
                            StoreError::Invalid(format!("run {id} has a malformed netns list: {e}"))
                        })?,
                        bye_records_total: total.map(|t| t as u64),
                        bye_reason: reason,
                    })
                },
            )
            .collect()
    }

    pub async fn interfaces(&self, session: SessionId) -> Result<Vec<InterfaceRow>> {
        let sql = "SELECT i.run_id, i.host_id, i.ifindex, i.netns, i.name, i.ingress_mode FROM interfaces i \
                   JOIN runs r ON r.id = i.run_id WHERE r.session_id = ? ORDER BY i.run_id, i.ifindex";
        let rows: Vec<(i64, i64, i64, i64, String, String)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read interfaces"))?;
        Ok(rows
            .into_iter()
            .map(
                |(run_id, host_id, ifindex, netns, name, ingress_mode)| InterfaceRow {
                    run_id,
                    host_id,
                    ifindex: ifindex as u32,
                    netns: netns as u32,
                    name,
                    ingress_mode,
                },
            )
            .collect())
    }

    /// All clock fits of a session, by domain then validity (feed them to `DomainClock::new`).
    pub async fn clock_fits(&self, session: SessionId) -> Result<Vec<ClockFit>> {
        let sql = "SELECT domain, valid_from_host_ns, ref_host_ns, offset_ns, drift_ppm, error_bound_ns, samples, min_delay_ns \
                   FROM clock_fits WHERE session_id = ? ORDER BY domain, valid_from_host_ns";
        type R = (String, i64, i64, f64, f64, f64, i64, i64);
        let rows: Vec<R> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read clock fits"))?;
        Ok(rows
            .into_iter()
            .map(
                |(domain, from, r, offset_ns, drift_ppm, error_bound_ns, samples, min_delay)| {
                    ClockFit {
                        domain,
                        valid_from_host_ns: from as u64,
                        ref_host_ns: r as u64,
                        offset_ns,
                        drift_ppm,
                        error_bound_ns,
                        samples: samples as u32,
                        min_delay_ns: min_delay as u64,
                    }
                },
            )
            .collect())
    }

    pub async fn flows(&self, session: SessionId) -> Result<Vec<FlowRow>> {
        let sql = "SELECT flow_id, saddr, daddr, sport, dport FROM flows WHERE session_id = ? ORDER BY flow_id";
        type R = (i64, Vec<u8>, Vec<u8>, i64, i64);
        let rows: Vec<R> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read flows"))?;
        rows.into_iter()
            .map(|(flow_id, s, d, sport, dport)| {
                Ok(FlowRow {
                    flow_id,
                    key: FlowKey {
                        saddr: addr(s)?,
                        daddr: addr(d)?,
                        sport: sport as u16,
                        dport: dport as u16,
                    },
                })
            })
            .collect()
    }

    /// A cursor over all samples of a session, `page` at a time.
    pub async fn samples(&self, session: SessionId, page: usize) -> Result<SampleCursor<'_>> {
        self.cursor(session, None, page).await
    }

    /// A cursor over one flow's samples (all hosts, all layers).
    pub async fn flow_samples(
        &self,
        session: SessionId,
        flow: FlowId,
        page: usize,
    ) -> Result<SampleCursor<'_>> {
        self.cursor(session, Some(flow), page).await
    }

    async fn cursor(
        &self,
        session: SessionId,
        flow: Option<FlowId>,
        page: usize,
    ) -> Result<SampleCursor<'_>> {
        let runs = self
            .runs(session)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        Ok(SampleCursor {
            store: self,
            runs,
            run_idx: 0,
            after_seq: None,
            flow,
            page: page.max(1),
        })
    }

    /// Number of stored samples of a session.
    pub async fn count_samples(&self, session: SessionId) -> Result<u64> {
        let sql =
            "SELECT COUNT(*) FROM samples s JOIN runs r ON r.id = s.run_id WHERE r.session_id = ?";
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(sql).bind(session).fetch_one(p).await)
            .map_err(q("count samples"))?;
        Ok(n as u64)
    }

    /// Every stats frame of a session, per run in time order, with its per-layer counters.
    pub async fn observer_stats(&self, session: SessionId) -> Result<Vec<StatsRow>> {
        let sql = "SELECT o.run_id, r.host_id, o.ts_ns, o.records_sent, o.records_dropped, o.cpu_percent FROM observer_stats o \
                   JOIN runs r ON r.id = o.run_id WHERE r.session_id = ? ORDER BY o.run_id, o.ts_ns";
        let lsql = "SELECT l.run_id, l.ts_ns, l.layer, l.seen, l.sampled, l.ringbuf_full, l.rate_limited FROM layer_stats l \
                    JOIN runs r ON r.id = l.run_id WHERE r.session_id = ? ORDER BY l.run_id, l.ts_ns, l.layer";
        let rows: Vec<(i64, i64, i64, i64, i64, f64)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read observer stats"))?;
        let lrows: Vec<(i64, i64, i64, i64, i64, i64, i64)> =
            on_pool!(self, p => sqlx::query_as(lsql).bind(session).fetch_all(p).await)
                .map_err(q("read layer stats"))?;
        let mut layers: std::collections::HashMap<(i64, i64), Vec<LayerStats>> = Default::default();
        for (run, ts, layer, seen, sampled, full, limited) in lrows {
            let layer = Layer::from_u8(layer as u8).ok_or_else(|| {
                StoreError::Invalid(format!("stored layer stats have unknown layer {layer}"))
            })?;
            layers.entry((run, ts)).or_default().push(LayerStats {
                layer,
                seen: seen as u64,
                sampled: sampled as u64,
                ringbuf_full: full as u64,
                rate_limited: limited as u64,
            });
        }
        Ok(rows
            .into_iter()
            .map(|(run_id, host_id, ts, sent, dropped, cpu)| StatsRow {
                run_id,
                host_id,
                stats: Stats {
                    ts_ns: ts as u64,
                    layers: layers.remove(&(run_id, ts)).unwrap_or_default(),
                    records_sent: sent as u64,
                    records_dropped: dropped as u64,
                    cpu_percent: cpu,
                },
            })
            .collect())
    }

    /// The gaps found by the last [`Store::scan_gaps`].
    pub async fn gaps(&self, session: SessionId) -> Result<Vec<GapRow>> {
        let sql = "SELECT g.run_id, r.host_id, h.name, g.from_seq, g.to_seq, g.kind FROM gaps g JOIN runs r ON r.id = g.run_id \
                   JOIN hosts h ON h.id = r.host_id WHERE r.session_id = ? ORDER BY g.run_id, g.from_seq";
        let rows: Vec<(i64, i64, String, i64, i64, String)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read gaps"))?;
        Ok(rows
            .into_iter()
            .map(|(run_id, host_id, host, from, to, kind)| GapRow {
                run_id,
                host_id,
                host,
                from_seq: from as u64,
                to_seq: to as u64,
                kind,
            })
            .collect())
    }

    pub async fn stream_errors(&self, session: SessionId) -> Result<Vec<StreamErrorRow>> {
        let sql = "SELECT host, at_unix_ms, error, skipped_bytes FROM stream_errors WHERE session_id = ? ORDER BY id";
        let rows: Vec<(String, i64, String, i64)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read stream errors"))?;
        Ok(rows
            .into_iter()
            .map(|(host, at_unix_ms, error, skipped)| StreamErrorRow {
                host,
                at_unix_ms,
                error,
                skipped_bytes: skipped as u64,
            })
            .collect())
    }

    pub async fn segments(&self, session: SessionId) -> Result<Vec<SegmentRow>> {
        let sql = "SELECT flow_id, segment, row_kind, stat, t_ns, byte_offset, value, flagged FROM segments \
                   WHERE session_id = ? ORDER BY id";
        type R = (
            Option<i64>,
            String,
            String,
            Option<String>,
            Option<i64>,
            Option<i64>,
            f64,
            i64,
        );
        let rows: Vec<R> =
            on_pool!(self, p => sqlx::query_as(sql).bind(session).fetch_all(p).await)
                .map_err(q("read segments"))?;
        Ok(rows
            .into_iter()
            .map(
                |(flow_id, segment, kind, stat, t_ns, off, value, flagged)| SegmentRow {
                    flow_id,
                    segment,
                    kind: if kind == "summary" {
                        SegmentRowKind::Summary
                    } else {
                        SegmentRowKind::Sample
                    },
                    stat,
                    t_ns,
                    byte_offset: off.map(|o| o as u64),
                    value,
                    flagged: flagged != 0,
                },
            )
            .collect())
    }
}
