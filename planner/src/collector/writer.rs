//! The writer task: the one owner of batching, run registration, sequence tracking and acks.
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use latplan_common::wire::{Frame, Hello};
use tokio::sync::mpsc;

use super::{Ack, CollectError, CollectorConfig, Counters, Msg, RunTag, SeqTracker};
use crate::store::{RunId, SessionId, Store, StoreError, WriteBatch};

struct RunState {
    id: RunId,
    seq: SeqTracker,
}

pub(super) struct Writer {
    store: Store,
    session: SessionId,
    config: CollectorConfig,
    counters: Arc<Counters>,
    ack_tx: mpsc::UnboundedSender<Vec<Ack>>,
    runs: HashMap<(Arc<str>, RunTag), RunState>,
    batch: WriteBatch,
    /// Host of each run in the batch, for per-host counters after commit.
    run_hosts: HashMap<RunId, Arc<str>>,
    acks: Vec<Ack>,
    first_pending: Option<Instant>,
}

impl Writer {
    pub(super) fn new(
        store: Store,
        session: SessionId,
        config: CollectorConfig,
        counters: Arc<Counters>,
        ack_tx: mpsc::UnboundedSender<Vec<Ack>>,
    ) -> Writer {
        Writer {
            store,
            session,
            config,
            counters,
            ack_tx,
            runs: HashMap::new(),
            batch: WriteBatch::new(session),
            run_hosts: HashMap::new(),
            acks: Vec::new(),
            first_pending: None,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<(), CollectError> {
        let mut tick = tokio::time::interval(self.config.flush_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m).await?,
                    None => break,
                },
                _ = tick.tick() => {
                    if self.first_pending.is_some_and(|t| t.elapsed() >= self.config.flush_interval) {
                        self.flush().await?;
                    }
                }
            }
            if self.batch.samples.len() >= self.config.batch_records {
                self.flush().await?;
            }
        }
        self.flush().await
    }

    async fn handle(&mut self, m: Msg) -> Result<(), CollectError> {
        match m {
            Msg::Flush(done) => {
                self.flush().await?;
                let _ = done.send(());
            }
            Msg::StreamError {
                host,
                error,
                skipped_bytes,
                ack,
            } => {
                tracing::warn!(host = %host, skipped_bytes, "undecodable record stream input: {error}");
                self.counters.decode_error(&host);
                let (store, session) = (&self.store, self.session);
                let (h, e) = (host.clone(), error.clone());
                self.retry("record a stream error", || {
                    store.record_stream_error(session, &h, &e, skipped_bytes)
                })
                .await?;
                self.pending(ack);
            }
            Msg::Frame {
                host,
                run,
                frame,
                ack,
            } => {
                self.frame(host, run, frame).await?;
                self.pending(ack);
            }
        }
        Ok(())
    }

    fn pending(&mut self, ack: Option<Ack>) {
        if let Some(a) = ack {
            self.acks.push(a);
        }
        self.first_pending.get_or_insert_with(Instant::now);
    }

    async fn frame(
        &mut self,
        host: Arc<str>,
        run: Option<RunTag>,
        frame: Frame,
    ) -> Result<(), CollectError> {
        if let Frame::Hello(h) = &frame {
            let tag = RunTag {
                boot_id: h.boot_id.as_str().into(),
                started_ns: h.started_ns,
            };
            self.register(&host, tag, h, false).await?;
            return Ok(());
        }
        let Some(tag) = run else {
            let error = "records arrived before the stream's hello frame; they cannot be attributed to a run".to_string();
            let n = match &frame {
                Frame::Samples { samples, .. } => samples.len(),
                _ => 0,
            };
            tracing::warn!(host = %host, records = n, "{error}");
            self.counters.decode_error(&host);
            let (store, session) = (&self.store, self.session);
            let e = format!("{error} ({n} records)");
            return self
                .retry("record a stream error", || {
                    store.record_stream_error(session, &host, &e, 0)
                })
                .await;
        };
        let run_id = self.run_id(&host, tag.clone()).await?;
        match frame {
            Frame::Samples { first_seq, samples } => {
                let st = self
                    .runs
                    .get_mut(&(host.clone(), tag))
                    .expect("run registered above");
                let before = st.seq.missing();
                let a = st.seq.add(first_seq, samples.len() as u64);
                if let Some((from, to)) = a.opened_gap {
                    tracing::warn!(host = %host, run = run_id, from, to, missing = to - from, "records missing from the stream");
                }
                self.counters
                    .missing_changed(&host, before, st.seq.missing());
                self.batch.samples.extend(
                    samples
                        .into_iter()
                        .enumerate()
                        .map(|(i, s)| (run_id, first_seq + i as u64, s)),
                );
                self.run_hosts.insert(run_id, host);
            }
            Frame::Stats(s) => {
                self.counters.observer_stats(&host, run_id, &s);
                self.batch.stats.push((run_id, s));
            }
            Frame::Bye(b) => {
                self.counters.bye(&host);
                self.batch.byes.push((run_id, b));
            }
            Frame::Hello(_) => unreachable!("handled above"),
        }
        Ok(())
    }

    /// The run a frame belongs to. Normally its Hello registered it; after a collector restart
    /// (the Hello was acknowledged long ago) it is found in the store; if the Hello never arrived
    /// (lost with a Redis restart) a run is registered from the tag alone.
    async fn run_id(&mut self, host: &Arc<str>, tag: RunTag) -> Result<RunId, CollectError> {
        if let Some(r) = self.runs.get(&(host.clone(), tag.clone())) {
            return Ok(r.id);
        }
        let placeholder = Hello {
            host: host.to_string(),
            session: String::new(),
            observer_version: "unknown (hello not received)".into(),
            boot_id: tag.boot_id.to_string(),
            sample_size: 0,
            interfaces: vec![],
            netns: vec![],
            started_ns: tag.started_ns,
        };
        self.register(host, tag, &placeholder, true).await
    }

    async fn register(
        &mut self,
        host: &Arc<str>,
        tag: RunTag,
        hello: &Hello,
        placeholder: bool,
    ) -> Result<RunId, CollectError> {
        let (store, session) = (&self.store, self.session);
        let (_, id) = self
            .retry("register an observer run", || {
                store.register_run(session, hello, placeholder)
            })
            .await?;
        self.runs
            .entry((host.clone(), tag))
            .or_insert_with(|| RunState {
                id,
                seq: SeqTracker::default(),
            });
        Ok(id)
    }

    async fn flush(&mut self) -> Result<(), CollectError> {
        self.first_pending = None;
        if !self.batch.is_empty() {
            let started = Instant::now();
            let (store, batch) = (&self.store, &self.batch);
            let out = self
                .retry("store a batch", || store.write_batch(batch))
                .await?;
            for (run, (new, dup)) in &out.per_run {
                if let Some(h) = self.run_hosts.get(run) {
                    self.counters.stored(h, *new, *dup);
                }
            }
            self.counters.batch_committed(started.elapsed());
            self.batch.clear();
            self.run_hosts.clear();
        }
        if !self.acks.is_empty() {
            // The receiver is gone only when no Redis source runs; then there is nothing to ack.
            let _ = self.ack_tx.send(std::mem::take(&mut self.acks));
        }
        Ok(())
    }

    /// Runs a store operation, retrying transient failures (database down, lock timeouts) with
    /// capped exponential backoff until `give_up_after`. Inserts are idempotent, so a retry after
    /// a commit whose reply was lost stores nothing twice.
    async fn retry<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, CollectError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let start = Instant::now();
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && start.elapsed() < self.config.give_up_after => {
                    tracing::warn!(
                        retry_in_ms = delay.as_millis() as u64,
                        "failed to {what}, will retry: {e}"
                    );
                    self.counters.store_retry();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.config.max_retry_backoff);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
