//! The collector: frames from observers (their stdout over SSH, or Redis Streams) into the store.
//!
//! Sources (one task per SSH stream, one Redis reader) decode frames and send them over a bounded
//! queue to a single writer task, which batches records, writes a batch in one transaction,
//! retries while the database is unreachable, and only then acknowledges Redis entries. A full
//! queue makes sources wait: an SSH stream stops being read (the observer then buffers and, if it
//! must, drops and counts), a Redis reader stops reading (entries wait in Redis). Nothing is
//! dropped on this side.
//!
//! Record sequence numbers are tracked per observer run: gaps are logged and counted as they
//! appear, and [`Collector::finish`] runs the store's gap scan, which is the authoritative list.
mod counters;
pub mod redis;
mod seq;
mod stream;
pub mod synthetic;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use latplan_common::wire::{Frame, WireError};
use tokio::io::AsyncRead;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::store::{GapRow, SessionId, Store, StoreError};

pub use counters::{Counters, HostCounters, Snapshot};
pub use seq::{Arrival, SeqTracker};
pub use stream::AsyncFrameReader;

/// Tuning of a collection.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Flush a batch once it holds this many records.
    pub batch_records: usize,
    /// Flush at least this often while records arrive.
    pub flush_interval: Duration,
    /// Frames queued between sources and the writer before sources wait.
    pub queue_frames: usize,
    /// Longest wait between retries of a failed store write.
    pub max_retry_backoff: Duration,
    /// Give up (and fail the collection) when the store has been failing this long.
    pub give_up_after: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            batch_records: 50_000,
            flush_interval: Duration::from_millis(250),
            queue_frames: 256,
            max_retry_backoff: Duration::from_secs(2),
            give_up_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("failed to store collected records: {0}")]
    Store(#[from] StoreError),
    #[error("failed to read the record stream of host {host}: {source}")]
    Read {
        host: String,
        source: std::io::Error,
    },
    #[error("the collector's writer has stopped (see its error from finish())")]
    WriterGone,
    #[error("the collector's writer task failed: {0}")]
    Join(String),
    #[error("redis: {0}")]
    Redis(String),
}

/// Identifies an observer run within a host's stream: the Hello's boot id and start time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunTag {
    pub boot_id: Arc<str>,
    pub started_ns: u64,
}

impl RunTag {
    /// The tag as one string (`BOOT_ID/STARTED_NS`), as carried in Redis entries.
    pub fn encode(&self) -> String {
        format!("{}/{}", self.boot_id, self.started_ns)
    }
    pub fn decode(s: &str) -> Option<RunTag> {
        let (b, n) = s.rsplit_once('/')?;
        Some(RunTag {
            boot_id: b.into(),
            started_ns: n.parse().ok()?,
        })
    }
}

/// A Redis stream entry to acknowledge once what it carried is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub stream: Arc<str>,
    pub id: String,
}

pub(crate) enum Msg {
    Frame {
        host: Arc<str>,
        run: Option<RunTag>,
        frame: Frame,
        ack: Option<Ack>,
    },
    StreamError {
        host: Arc<str>,
        error: String,
        skipped_bytes: u64,
        ack: Option<Ack>,
    },
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// How one byte stream ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSummary {
    pub frames: u64,
    pub records: u64,
    pub decode_errors: u64,
    pub skipped_bytes: u64,
    /// The observer said goodbye (a clean end); false means the stream was cut.
    pub saw_bye: bool,
}

/// The outcome of a collection.
#[derive(Debug, Clone)]
pub struct CollectionReport {
    pub session_id: SessionId,
    pub counters: Snapshot,
    /// Missing record ranges, from the store's gap scan.
    pub gaps: Vec<GapRow>,
}

impl CollectionReport {
    pub fn missing_records(&self) -> u64 {
        self.gaps.iter().map(GapRow::missing).sum()
    }

    /// What happened to the records beyond those stored: duplicates, gaps, drops, bad frames.
    pub fn losses(&self) -> String {
        let c = &self.counters;
        format!(
            "{} duplicates ignored; {} missing in {} gap(s), {} dropped by observers, {} undecodable frames",
            c.duplicates,
            self.missing_records(),
            self.gaps.len(),
            c.drops(),
            c.decode_errors
        )
    }
}

/// A running collection into one session of a store.
pub struct Collector {
    store: Store,
    session_id: SessionId,
    tx: Option<mpsc::Sender<Msg>>,
    counters: Arc<Counters>,
    writer: JoinHandle<Result<(), CollectError>>,
    acks: Mutex<Option<mpsc::UnboundedReceiver<Vec<Ack>>>>,
}

impl Collector {
    /// Starts the writer for session `session_id` (from [`Store::open_session`]).
    pub fn start(store: Store, session_id: SessionId, config: CollectorConfig) -> Collector {
        let (tx, rx) = mpsc::channel(config.queue_frames.max(1));
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let w = writer::Writer::new(store.clone(), session_id, config, counters.clone(), ack_tx);
        let writer = tokio::spawn(w.run(rx));
        Collector {
            store,
            session_id,
            tx: Some(tx),
            counters,
            writer,
            acks: Mutex::new(Some(ack_rx)),
        }
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Live counters (records, duplicates, missing, drops, per host); snapshot them for display.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub(crate) fn sender(&self) -> Result<mpsc::Sender<Msg>, CollectError> {
        self.tx.clone().ok_or(CollectError::WriterGone)
    }

    pub(crate) async fn take_acks(&self) -> Option<mpsc::UnboundedReceiver<Vec<Ack>>> {
        self.acks.lock().await.take()
    }

    /// Reads the frame stream of `host` (e.g. its observer's stdout over SSH) until it ends.
    ///
    /// `host` is the inventory name of the host the stream comes from; it is authoritative (a
    /// Hello naming another host is noted as a stream error and the records are kept under `host`).
    /// Undecodable bytes are noted and skipped; the stream continues. Returns when the stream
    /// ends (cleanly or cut); the records are then queued, not necessarily committed (see [`Self::flush`]).
    pub async fn collect_stream<R: AsyncRead + Unpin>(
        &self,
        host: &str,
        reader: R,
    ) -> Result<StreamSummary, CollectError> {
        let tx = self.sender()?;
        let host: Arc<str> = host.into();
        let mut rd = AsyncFrameReader::new(reader);
        let mut run: Option<RunTag> = None;
        let mut sum = StreamSummary::default();
        loop {
            let skipped_before = rd.skipped_bytes;
            match rd.next_frame().await {
                Ok(Some(frame)) => {
                    sum.frames += 1;
                    match &frame {
                        Frame::Hello(h) => {
                            if *h.host != *host {
                                let error = format!(
                                    "hello names host {:?} on the stream of {host:?}; kept as {host:?}",
                                    h.host
                                );
                                send(
                                    &tx,
                                    Msg::StreamError {
                                        host: host.clone(),
                                        error,
                                        skipped_bytes: 0,
                                        ack: None,
                                    },
                                )
                                .await?;
                            }
                            run = Some(RunTag {
                                boot_id: h.boot_id.as_str().into(),
                                started_ns: h.started_ns,
                            });
                        }
                        Frame::Samples { samples, .. } => sum.records += samples.len() as u64,
                        Frame::Bye(_) => sum.saw_bye = true,
                        Frame::Stats(_) => {}
                    }
                    send(
                        &tx,
                        Msg::Frame {
                            host: host.clone(),
                            run: run.clone(),
                            frame,
                            ack: None,
                        },
                    )
                    .await?;
                }
                Ok(None) => break,
                Err(WireError::Io(e)) => {
                    let error = format!("stream read failed: {e}");
                    send(
                        &tx,
                        Msg::StreamError {
                            host: host.clone(),
                            error,
                            skipped_bytes: 0,
                            ack: None,
                        },
                    )
                    .await?;
                    return Err(CollectError::Read {
                        host: host.to_string(),
                        source: e,
                    });
                }
                Err(e) => {
                    sum.decode_errors += 1;
                    let skipped = rd.skipped_bytes - skipped_before;
                    send(
                        &tx,
                        Msg::StreamError {
                            host: host.clone(),
                            error: e.to_string(),
                            skipped_bytes: skipped,
                            ack: None,
                        },
                    )
                    .await?;
                }
            }
        }
        sum.skipped_bytes = rd.skipped_bytes;
        Ok(sum)
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), CollectError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        send(&self.sender()?, Msg::Flush(tx)).await?;
        rx.await.map_err(|_| CollectError::WriterGone)
    }

    /// Ends the collection: commits what is queued, scans the store for gaps, and reports.
    /// Stop every source first (SSH streams end with their observers; [`redis::RedisSource::stop`]).
    pub async fn finish(mut self) -> Result<CollectionReport, CollectError> {
        self.tx = None;
        self.writer
            .await
            .map_err(|e| CollectError::Join(e.to_string()))??;
        let gaps = self.store.scan_gaps(self.session_id).await?;
        Ok(CollectionReport {
            session_id: self.session_id,
            counters: self.counters.snapshot(),
            gaps,
        })
    }
}

async fn send(tx: &mpsc::Sender<Msg>, m: Msg) -> Result<(), CollectError> {
    tx.send(m).await.map_err(|_| CollectError::WriterGone)
}

#[cfg(test)]
mod tests;
