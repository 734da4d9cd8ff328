//! The observer's Redis Streams sink: ships encoded frames to the host's own stream
//! (`latplan:SESSION:HOST:records`) and keeps a heartbeat key alive.
//!
//! Two ways to use it:
//! - [`RedisStreamSink`] implements the observer's [`super::Sink`] trait (blocking writes, run
//!   inside the observer's `Writer` thread behind its bounded queue): `Writer::spawn(Box::new(
//!   RedisStreamSink::connect(cfg)?), capacity)`. It learns the run tag from the Hello frame.
//! - [`RedisSink`] is the same with its own bounded queue and thread, for callers without one.
//!
//! Self-contained: it needs `redis` (default features off, plus `tls-rustls` and
//! `tls-rustls-webpki-roots` for `rediss://`; a rustls crypto provider such as `ring`),
//! `serde`, `serde_json` and `latplan_common::wire`. latplan's collector tests compile this very
//! file as their synthetic observer's sink, so its behaviour is tested against a real Redis.
//!
//! Never blocks the caller: [`RedisSink::send`] hands the frame to a bounded queue drained by a
//! writer thread; when the queue is full (Redis down or slow) the frame is dropped and counted
//! (report [`SinkSnapshot::records_dropped`] in the observer's Stats). The writer thread sends in
//! pipelines, reconnects with backoff (the account may be missing for a moment after a Redis
//! restart until latplan re-creates it) and re-sends a pipeline whose outcome is unknown: the
//! collector stores records idempotently, so at-least-once is the right side to err on.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use latplan_common::wire::{Frame, HEADER_SIZE};
use serde::Deserialize;

use super::Sink;

/// Frames sent per pipeline round trip at most.
const PIPELINE_FRAMES: usize = 64;

/// What latplan hands the observer over stdin, as `{"redis": {...}}` on one line.
#[derive(Clone, Deserialize)]
pub struct RedisSinkConfig {
    pub url: String,
    pub username: String,
    pub password: String,
    pub stream_key: String,
    pub status_key: String,
    pub maxlen: u64,
    pub status_ttl_secs: u64,
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// The key latplan renews while the session runs (Redis-mode lease, docs/session.md).
    #[serde(default)]
    pub lease_key: Option<String>,
}

impl std::fmt::Debug for RedisSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSinkConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"***")
            .field("stream_key", &self.stream_key)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct StdinLine {
    redis: RedisSinkConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("malformed Redis settings on stdin: {0}")]
    Config(String),
    #[error("failed to connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        source: redis::RedisError,
    },
}

impl RedisSinkConfig {
    /// Parses the line latplan writes to the observer's stdin.
    pub fn from_stdin_line(line: &str) -> Result<RedisSinkConfig, SinkError> {
        let l: StdinLine =
            serde_json::from_str(line.trim()).map_err(|e| SinkError::Config(e.to_string()))?;
        if l.redis.maxlen == 0 || l.redis.stream_key.is_empty() {
            return Err(SinkError::Config(
                "maxlen and stream_key must be set".into(),
            ));
        }
        Ok(l.redis)
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        use redis::IntoConnectionInfo;
        let info = self.url.as_str().into_connection_info()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_username(&self.username)
            .set_password(&self.password);
        let info = info.set_redis_settings(settings);
        match &self.ca_pem {
            Some(ca) if self.url.starts_with("rediss://") => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.as_bytes().to_vec()),
                },
            ),
            _ => redis::Client::open(info),
        }
    }
}

/// Reads the lease key latplan renews (`RedisSinkConfig::lease_key`) on its own connection.
pub struct RedisLease {
    client: redis::Client,
    conn: Option<redis::Connection>,
    key: String,
}

impl RedisLease {
    pub fn new(cfg: &RedisSinkConfig) -> Result<Option<RedisLease>, SinkError> {
        let Some(key) = cfg.lease_key.clone() else {
            return Ok(None);
        };
        let client = cfg.client().map_err(|source| SinkError::Connect {
            url: cfg.url.clone(),
            source,
        })?;
        Ok(Some(RedisLease {
            client,
            conn: None,
            key,
        }))
    }

    /// The lease key's value: `Ok(None)` when it is gone (expired or deleted), `Err` when Redis
    /// cannot be asked right now.
    pub fn read(&mut self) -> redis::RedisResult<Option<String>> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.client)?);
        }
        let r = redis::cmd("GET")
            .arg(&self.key)
            .query::<Option<String>>(self.conn.as_mut().expect("connected above"));
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// Builds one pipeline: an `XADD` per frame (trimmed to about `maxlen`), and the heartbeat.
fn pipeline<'a>(
    cfg: &RedisSinkConfig,
    run_tag: &str,
    frames: impl Iterator<Item = &'a [u8]>,
    status: Option<String>,
) -> redis::Pipeline {
    let mut p = redis::pipe();
    for f in frames {
        p.cmd("XADD")
            .arg(&cfg.stream_key)
            .arg("MAXLEN")
            .arg("~")
            .arg(cfg.maxlen)
            .arg("*")
            .arg("run")
            .arg(run_tag)
            .arg("f")
            .arg(f)
            .ignore();
    }
    if let Some(st) = status {
        p.cmd("SET")
            .arg(&cfg.status_key)
            .arg(st)
            .arg("EX")
            .arg(cfg.status_ttl_secs.max(1))
            .ignore();
    }
    p
}

/// Records in an encoded samples frame (0 for other kinds or malformed bytes).
fn records_in(frame: &[u8]) -> u64 {
    if frame.len() >= HEADER_SIZE + 16 && frame[5] == 2 {
        u32::from_le_bytes(
            frame[HEADER_SIZE + 8..HEADER_SIZE + 12]
                .try_into()
                .expect("4 bytes"),
        ) as u64
    } else {
        0
    }
}

/// The blocking sink for the observer's writer thread ([`super::Sink`]).
///
/// `write_frame` collects frames; `flush` (and every 64 frames) sends them in one pipeline with
/// the heartbeat. A failed send is retried on a new connection with backoff for up to
/// `retry_for`, so a Redis restart or a short link cut costs nothing but queue space (the
/// observer's bounded queue drops and counts meanwhile); after that the error ends the writer.
pub struct RedisStreamSink {
    cfg: RedisSinkConfig,
    client: redis::Client,
    conn: Option<redis::Connection>,
    run_tag: Option<String>,
    pending: Vec<Vec<u8>>,
    frames_sent: u64,
    records_sent: u64,
    reconnects: u64,
    last_beat: Option<Instant>,
    /// How long one batch is retried before `flush` gives up with the error.
    pub retry_for: Duration,
}

impl RedisStreamSink {
    /// Connects once (failing fast on a wrong address or credentials).
    pub fn connect(cfg: RedisSinkConfig) -> Result<RedisStreamSink, SinkError> {
        let connect_err = |source| SinkError::Connect {
            url: cfg.url.clone(),
            source,
        };
        let client = cfg.client().map_err(connect_err)?;
        let conn = open(&client).map_err(connect_err)?;
        Ok(RedisStreamSink {
            cfg,
            client,
            conn: Some(conn),
            run_tag: None,
            pending: Vec::new(),
            frames_sent: 0,
            records_sent: 0,
            reconnects: 0,
            last_beat: None,
            retry_for: Duration::from_secs(60),
        })
    }

    fn try_send(&mut self) -> redis::RedisResult<()> {
        if self.conn.is_none() {
            self.reconnects += 1;
            self.conn = Some(open(&self.client)?);
        }
        let beat_every = Duration::from_secs((self.cfg.status_ttl_secs / 3).max(1));
        let beat = self.last_beat.is_none_or(|t| t.elapsed() >= beat_every);
        let status = beat.then(|| {
            serde_json::json!({
                "unix_ms": now_ms(),
                "state": "running",
                "frames_sent": self.frames_sent,
                "records_sent": self.records_sent,
                "reconnects": self.reconnects,
            })
            .to_string()
        });
        let tag = self.run_tag.as_deref().unwrap_or("unknown/0");
        let p = pipeline(
            &self.cfg,
            tag,
            self.pending.iter().map(|f| f.as_slice()),
            status,
        );
        p.query::<()>(self.conn.as_mut().expect("connected above"))?;
        if beat {
            self.last_beat = Some(Instant::now());
        }
        Ok(())
    }
}

impl Sink for RedisStreamSink {
    fn write_frame(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        if frame.len() > 5 && frame[5] == 1 {
            // The Hello names the run every later entry is tagged with.
            if let Ok((Frame::Hello(h), _)) = Frame::decode(frame) {
                self.run_tag = Some(format!("{}/{}", h.boot_id, h.started_ns));
            }
        }
        if self.run_tag.is_none() {
            anyhow::bail!(
                "the first frame on a Redis stream must be the hello (it names the observer run)"
            );
        }
        self.pending.push(frame.to_vec());
        if self.pending.len() >= PIPELINE_FRAMES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_send() {
                Ok(()) => {
                    self.frames_sent += self.pending.len() as u64;
                    self.records_sent += self.pending.iter().map(|f| records_in(f)).sum::<u64>();
                    self.pending.clear();
                    return Ok(());
                }
                Err(e) if start.elapsed() < self.retry_for => {
                    let _ = e;
                    self.conn = None;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    anyhow::bail!(
                        "failed to write to Redis stream {} for {:?}: {e}",
                        self.cfg.stream_key,
                        self.retry_for
                    )
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    records_sent: AtomicU64,
    frames_dropped: AtomicU64,
    records_dropped: AtomicU64,
    reconnects: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

/// Counters of the sink since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkSnapshot {
    pub frames_sent: u64,
    pub records_sent: u64,
    /// Frames dropped because the queue was full (or left unsent at close).
    pub frames_dropped: u64,
    pub records_dropped: u64,
    pub reconnects: u64,
}

impl RedisSink {
    /// The last error the writer thread met (for the observer's log and status), if any.
    pub fn last_error(&self) -> Option<String> {
        self.counters.last_error.lock().ok()?.clone()
    }
}

struct Item {
    bytes: Vec<u8>,
    records: u64,
}

pub struct RedisSink {
    tx: Option<SyncSender<Item>>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
    closing: Arc<AtomicU64>,
}

impl RedisSink {
    /// Connects (failing fast on a wrong address or credentials) and starts the writer thread.
    /// `boot_id` and `started_ns` are the run's, as in its Hello; `queue_frames` bounds memory.
    pub fn start(
        cfg: RedisSinkConfig,
        boot_id: &str,
        started_ns: u64,
        queue_frames: usize,
    ) -> Result<RedisSink, SinkError> {
        let connect_err = |source| SinkError::Connect {
            url: cfg.url.clone(),
            source,
        };
        let client = cfg.client().map_err(connect_err)?;
        let conn = open(&client).map_err(connect_err)?;
        let (tx, rx) = sync_channel(queue_frames.max(1));
        let counters = Arc::new(Counters::default());
        let closing = Arc::new(AtomicU64::new(0));
        let w = Worker {
            cfg,
            client,
            conn: Some(conn),
            run_tag: format!("{boot_id}/{started_ns}"),
            counters: counters.clone(),
            closing: closing.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("redis-sink".into())
            .spawn(move || w.run(rx))
            .expect("spawning a thread works");
        Ok(RedisSink {
            tx: Some(tx),
            counters,
            thread: Some(thread),
            closing,
        })
    }

    /// Queues a frame; `false` if it was dropped (queue full), which is counted.
    pub fn send(&self, frame: &Frame) -> bool {
        let records = match frame {
            Frame::Samples { samples, .. } => samples.len() as u64,
            _ => 0,
        };
        self.send_encoded(frame.encode(), records)
    }

    /// Queues a frame, waiting up to `timeout` for room: for the few frames that must not be
    /// lost to a momentary full queue (the final stats and bye at shutdown). Never use it on the
    /// path that drains the kernel's ring buffer.
    pub fn send_wait(&self, frame: &Frame, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else { return false };
        let records = match frame {
            Frame::Samples { samples, .. } => samples.len() as u64,
            _ => 0,
        };
        let deadline = Instant::now() + timeout;
        let mut item = Item {
            bytes: frame.encode(),
            records,
        };
        loop {
            match tx.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Full(i)) if Instant::now() < deadline => {
                    item = i;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.counters.frames_dropped.fetch_add(1, Relaxed);
                    self.counters.records_dropped.fetch_add(records, Relaxed);
                    return false;
                }
            }
        }
    }

    /// Queues an already encoded frame holding `records` records.
    pub fn send_encoded(&self, bytes: Vec<u8>, records: u64) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(Item { bytes, records }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.frames_dropped.fetch_add(1, Relaxed);
                self.counters.records_dropped.fetch_add(records, Relaxed);
                false
            }
        }
    }

    pub fn snapshot(&self) -> SinkSnapshot {
        snapshot(&self.counters)
    }

    /// Sends what is queued (for at most `timeout`), then stops. Unsent frames count as dropped.
    pub fn close(mut self, timeout: Duration) -> SinkSnapshot {
        let deadline_ms = now_ms() + timeout.as_millis() as u64;
        self.closing.store(deadline_ms, Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        snapshot(&self.counters)
    }
}

impl Drop for RedisSink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.closing.store(now_ms(), Relaxed);
            self.tx = None;
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn snapshot(c: &Counters) -> SinkSnapshot {
    SinkSnapshot {
        frames_sent: c.frames_sent.load(Relaxed),
        records_sent: c.records_sent.load(Relaxed),
        frames_dropped: c.frames_dropped.load(Relaxed),
        records_dropped: c.records_dropped.load(Relaxed),
        reconnects: c.reconnects.load(Relaxed),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn open(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let c = client.get_connection_with_timeout(Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(c)
}

struct Worker {
    cfg: RedisSinkConfig,
    client: redis::Client,
    conn: Option<redis::Connection>,
    run_tag: String,
    counters: Arc<Counters>,
    /// 0 while running; the close deadline (unix ms) once closing.
    closing: Arc<AtomicU64>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Item>) {
        let beat_every = Duration::from_secs((self.cfg.status_ttl_secs / 3).max(1));
        let mut last_beat = Instant::now() - beat_every;
        let mut pending: Vec<Item> = Vec::new();
        let mut backoff = Duration::from_millis(50);
        let mut disconnected = false;
        loop {
            if pending.is_empty() && !disconnected {
                match rx.recv_timeout(beat_every) {
                    Ok(i) => pending.push(i),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => disconnected = true,
                }
            }
            while pending.len() < PIPELINE_FRAMES {
                match rx.try_recv() {
                    Ok(i) => pending.push(i),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            // Fewer than a full pipeline taken means the queue is empty right now.
            let drained = pending.len() < PIPELINE_FRAMES;
            let beat = last_beat.elapsed() >= beat_every || disconnected;
            if pending.is_empty() && !beat {
                continue;
            }
            match self.send(&pending, beat, disconnected) {
                Ok(()) => {
                    for i in pending.drain(..) {
                        self.counters.frames_sent.fetch_add(1, Relaxed);
                        self.counters.records_sent.fetch_add(i.records, Relaxed);
                    }
                    backoff = Duration::from_millis(50);
                    if beat {
                        last_beat = Instant::now();
                    }
                    if disconnected && drained {
                        return;
                    }
                }
                Err(e) => {
                    if let Ok(mut l) = self.counters.last_error.lock() {
                        *l = Some(e.to_string());
                    }
                    self.conn = None;
                    let deadline = self.closing.load(Relaxed);
                    if deadline != 0 && now_ms() >= deadline {
                        // Closing and out of time: what is left is lost, and said so.
                        for i in pending.drain(..).chain(rx.try_iter()) {
                            self.counters.frames_dropped.fetch_add(1, Relaxed);
                            self.counters.records_dropped.fetch_add(i.records, Relaxed);
                        }
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn send(&mut self, items: &[Item], beat: bool, closing: bool) -> redis::RedisResult<()> {
        if self.conn.is_none() {
            self.counters.reconnects.fetch_add(1, Relaxed);
            self.conn = Some(open(&self.client)?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let status = beat.then(|| {
            let c = &self.counters;
            serde_json::json!({
                "unix_ms": now_ms(),
                "state": if closing { "closing" } else { "running" },
                "frames_sent": c.frames_sent.load(Relaxed),
                "records_sent": c.records_sent.load(Relaxed),
                "frames_dropped": c.frames_dropped.load(Relaxed),
                "records_dropped": c.records_dropped.load(Relaxed),
            })
            .to_string()
        });
        let p = pipeline(
            &self.cfg,
            &self.run_tag,
            items.iter().map(|i| i.bytes.as_slice()),
            status,
        );
        p.query::<()>(conn)
    }
}
