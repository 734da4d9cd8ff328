//! Where the encoded frames go: stdout (the SSH channel), or a Redis stream (`sink/redis.rs`, one
//! frame per stream entry; feature `redis-sink`, on by default).
//!
//! The sampler never blocks on a sink: frames go through a bounded queue to a writer thread, and
//! a full queue drops the samples frame (counted, and visible as a record sequence gap).
use anyhow::{Context, Result};
use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

#[cfg(feature = "redis-sink")]
pub mod redis;

pub trait Sink: Send {
    /// Writes one complete encoded frame (`latplan_common::wire::Frame::encode`).
    fn write_frame(&mut self, frame: &[u8]) -> Result<()>;
    /// Pushes buffered frames out (called when the queue runs empty).
    fn flush(&mut self) -> Result<()>;
}

pub struct StdoutSink {
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl StdoutSink {
    pub fn new() -> Self {
        StdoutSink {
            out: std::io::BufWriter::with_capacity(1 << 20, std::io::stdout()),
        }
    }
}

impl Sink for StdoutSink {
    fn write_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.out
            .write_all(frame)
            .context("failed to write to stdout")
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush().context("failed to flush stdout")
    }
}

/// A bounded queue in front of a sink, drained by its own thread.
pub struct Writer {
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Writer {
    pub fn spawn(mut sink: Box<dyn Sink>, capacity: usize) -> Writer {
        let (tx, rx): (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) = sync_channel(capacity);
        let thread = std::thread::Builder::new()
            .name("lp-writer".into())
            .spawn(move || {
                while let Ok(f) = rx.recv() {
                    sink.write_frame(&f)?;
                    while let Ok(f) = rx.try_recv() {
                        sink.write_frame(&f)?;
                    }
                    sink.flush()?;
                }
                sink.flush()
            })
            .expect("spawn writer thread");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues a frame that must not be lost (hello, stats, bye): waits for room.
    pub fn send_blocking(&self, frame: Vec<u8>) -> Result<()> {
        self.tx
            .as_ref()
            .expect("writer open")
            .send(frame)
            .map_err(|_| anyhow::anyhow!("the output writer has stopped"))
    }

    /// Queues a frame if there is room; `Ok(false)` when the queue is full (caller counts a drop).
    pub fn try_send(&self, frame: Vec<u8>) -> Result<bool> {
        match self.tx.as_ref().expect("writer open").try_send(frame) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(_)) => Ok(false),
            Err(TrySendError::Disconnected(_)) => {
                Err(anyhow::anyhow!("the output writer has stopped"))
            }
        }
    }

    /// Whether the writer thread has ended (its sink failed, e.g. stdout closed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Closes the queue and waits for everything queued to be written.
    pub fn finish(mut self) -> Result<()> {
        drop(self.tx.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow::anyhow!("the output writer panicked")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Slow(Arc<Mutex<Vec<u8>>>, Arc<Mutex<()>>);
    impl Sink for Slow {
        fn write_frame(&mut self, f: &[u8]) -> Result<()> {
            let _gate = self.1.lock().unwrap();
            self.0.lock().unwrap().extend_from_slice(f);
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_makes_try_send_report_full_instead_of_blocking() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let w = Writer::spawn(Box::new(Slow(out.clone(), gate.clone())), 2);
        let mut accepted = 0;
        for _ in 0..10 {
            if w.try_send(vec![1]).unwrap() {
                accepted += 1;
            }
        }
        // One frame in the stuck write, two in the queue at most.
        assert!(accepted <= 3, "{accepted}");
        drop(held);
        w.finish().unwrap();
        assert_eq!(out.lock().unwrap().len(), accepted);
    }
}
