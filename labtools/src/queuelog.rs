//! Ground truth for the socket-buffer waits: lab-traffic's own account of how many bytes wait in
//! its socket, sampled every millisecond and written as one JSON line per 100 ms.
//!
//! By Little's law the mean time a byte waits in a queue over a stretch of intervals is the
//! queue's mean length divided by the rate bytes leave it: `Σ queued_mean·secs / Σ left_bytes`.
//! The queue lengths come from the kernel's own counters (`TCP_INFO`) and the program's own
//! calls, so the result shares nothing with the observer's stamps.
use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One line of a queue log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueLog {
    /// End of the interval, CLOCK_MONOTONIC nanoseconds: the clock latplan's kernel programs and
    /// its manager timeline use, shared by every namespace of one kernel (the lab).
    pub t_ns: u64,
    pub secs: f64,
    /// Bytes waiting, averaged over the interval's samples.
    pub queued_mean: f64,
    /// Bytes that left the queue in the interval (read by the application, or sent by TCP).
    pub left_bytes: u64,
}

/// The mean wait of the bytes that left the queue in `[from_ns, to_ns]` (CLOCK_MONOTONIC), in ns,
/// by Little's law, and how many bytes that was. Lines that straddle an edge are left out.
pub fn mean_wait_ns(lines: &[QueueLog], from_ns: u64, to_ns: u64) -> (f64, u64) {
    let (mut queued_secs, mut left) = (0.0, 0u64);
    let starts_ns = |l: &QueueLog| l.t_ns as f64 - l.secs * 1e9;
    for l in lines
        .iter()
        .filter(|l| starts_ns(l) >= from_ns as f64 && l.t_ns <= to_ns)
    {
        queued_secs += l.queued_mean * l.secs;
        left += l.left_bytes;
    }
    if left == 0 {
        return (f64::NAN, 0);
    }
    (queued_secs / left as f64 * 1e9, left)
}

/// Reads a queue log file.
pub fn read(path: &Path) -> Result<Vec<QueueLog>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// What a sample returns: the bytes waiting now, and the running total of bytes that left.
pub type Sampler = Box<dyn FnMut() -> Option<(u64, u64)> + Send>;

/// A receiver's queue, as the observer's `sock_queue→sock_recv` sees it: bytes TCP has received
/// in order (`TCP_INFO`'s bytes received: what advanced `rcv_nxt` and woke the reader) that no
/// read call has returned yet; `read` is the application's running count of returned bytes.
/// (`FIONREAD` would miss bytes already copied into a read call that has not returned, as a
/// `MSG_WAITALL` read does while it waits for the rest.)
pub fn receive_queue(s: &TcpStream, read: Arc<AtomicU64>) -> Result<Sampler> {
    let s = s.try_clone().context("a second handle on the socket")?;
    Ok(Box::new(move || {
        let info = tcp_info(&s)?;
        let read = read.load(Relaxed);
        Some((info.tcpi_bytes_received.saturating_sub(read), read))
    }))
}

/// The socket's `TCP_INFO`, `None` once it is gone.
fn tcp_info(s: &TcpStream) -> Option<libc::tcp_info> {
    // SAFETY: an all-zero tcp_info is valid; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// A sender's queue, as the observer's `sock_send→tcp_send` sees it: bytes the application has
/// handed to a send call (`handed`, the whole of the current call from its start) that TCP has
/// not transmitted yet (`TCP_INFO`: bytes sent less bytes retransmitted).
pub fn send_buffer(s: &TcpStream, handed: Arc<AtomicU64>) -> Result<Sampler> {
    let s = s.try_clone().context("a second handle on the socket")?;
    Ok(Box::new(move || {
        let info = tcp_info(&s)?;
        let sent = info.tcpi_bytes_sent.saturating_sub(info.tcpi_bytes_retrans);
        Some((handed.load(Relaxed).saturating_sub(sent), sent))
    }))
}

/// How often the queue is sampled, and how many samples make one log line.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);
const SAMPLES_PER_LINE: u32 = 100;

/// A thread sampling a queue into a log file until stopped.
pub struct QueueLogger {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Result<()>>,
}

impl QueueLogger {
    pub fn start(path: &Path, sample: Sampler) -> Result<QueueLogger> {
        let file =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let path = path.to_path_buf();
        let thread = std::thread::spawn(move || run(file, &path, sample, &stop));
        Ok(QueueLogger { done, thread })
    }

    /// [`QueueLogger::start`] when there is a `path` to log to.
    pub fn start_if(
        path: Option<&Path>,
        sampler: impl FnOnce() -> Result<Sampler>,
    ) -> Result<Option<QueueLogger>> {
        path.map(|p| QueueLogger::start(p, sampler()?)).transpose()
    }

    /// Stops sampling; the log ends with the last whole interval.
    pub fn stop(self) -> Result<()> {
        self.done.store(true, Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the queue logger panicked"))?
    }
}

fn run(file: std::fs::File, path: &Path, mut sample: Sampler, done: &AtomicBool) -> Result<()> {
    let mut out = std::io::BufWriter::new(file);
    let (mut sum, mut n) = (0f64, 0u32);
    let mut t0 = Instant::now();
    let mut left0 = None;
    while !done.load(Relaxed) {
        // The socket is gone (the peer closed it): nothing more to log.
        let Some((queued, left)) = sample() else {
            break;
        };
        let first = *left0.get_or_insert(left);
        sum += queued as f64;
        n += 1;
        if n == SAMPLES_PER_LINE {
            let line = QueueLog {
                t_ns: latplan_common::clock::monotonic_ns(),
                secs: t0.elapsed().as_secs_f64(),
                queued_mean: sum / n as f64,
                left_bytes: left.saturating_sub(first),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)
                .and_then(|()| out.flush())
                .with_context(|| format!("write {}", path.display()))?;
            (sum, n, t0, left0) = (0.0, 0, Instant::now(), Some(left));
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{RecvOpts, SendOpts, tcp_recv, tcp_send};
    use std::net::TcpListener;

    /// A reader slower than its writer over loopback, both logging: both queues fill, and by
    /// Little's law a byte waits at least as long as a full receive queue takes to drain.
    #[test]
    fn a_slow_reader_and_its_writer_log_their_queues() {
        let dir = tempfile::tempdir().unwrap();
        let (rlog, slog) = (dir.path().join("recv.jsonl"), dir.path().join("send.jsonl"));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let path = rlog.clone();
        let recv = std::thread::spawn(move || {
            tcp_recv(&RecvOpts {
                listen: addr,
                read_size: 4096,
                read_rate: Some(2_000_000),
                rcvbuf: Some(64 * 1024),
                queue_log: Some(path),
                read_exact: false,
            })
            .unwrap()
        });
        tcp_send(&SendOpts {
            connect: addr,
            write_size: 4096,
            bytes: Some(1_500_000),
            duration: None,
            rate: None,
            sndbuf: Some(64 * 1024),
            nodelay: false,
            connect_timeout: Duration::from_secs(5),
            queue_log: Some(slog.clone()),
            tx_stamps: None,
            align_writes: None,
        })
        .unwrap();
        recv.join().unwrap();
        for (what, path) in [("receiver", &rlog), ("sender", &slog)] {
            let lines = read(path).unwrap();
            // 1.5 MB at 2 MB/s: ~0.75 s, a line per ~0.1 s (the sender stops at its last write).
            assert!(lines.len() >= 3, "{what}: {} lines", lines.len());
            let left: u64 = lines.iter().map(|l| l.left_bytes).sum();
            assert!(
                left > 500_000 && left <= 1_500_000,
                "{what}: {left} bytes left"
            );
            let queued = lines.iter().map(|l| l.queued_mean).fold(0.0, f64::max);
            assert!(
                queued > 16_384.0,
                "{what}: the queue never filled: {queued}"
            );
            let (wait, _) = mean_wait_ns(&lines, 0, u64::MAX);
            // At 2 MB/s, 16 KiB or more queued is 8 ms or more of waiting.
            assert!(wait > 4e6 && wait < 1e9, "{what}: mean wait {wait} ns");
        }
    }

    #[test]
    fn little_leaves_out_lines_across_the_window_edges() {
        const S: u64 = 1_000_000_000;
        let line = |t_ns: u64, q: f64, left: u64| QueueLog {
            t_ns,
            secs: 0.1,
            queued_mean: q,
            left_bytes: left,
        };
        let lines = [
            line(10 * S + S / 10, 1e9, 1),
            line(10 * S + S / 5, 1000.0, 100),
            line(10 * S + 3 * S / 10, 3000.0, 100),
        ];
        // 0.1 s × (1000 + 3000) bytes over 200 bytes: 2 s; the first line starts before 10.05 s.
        let (w, left) = mean_wait_ns(&lines, 10 * S + S / 20, 10 * S + 3 * S / 10);
        assert_eq!(left, 200);
        assert!((w - 2e9).abs() < 1.0, "{w}");
        assert!(mean_wait_ns(&lines, 11 * S, 12 * S).0.is_nan());
    }
}
