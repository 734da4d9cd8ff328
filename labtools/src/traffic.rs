//! The lab's traffic generator: TCP bulk transfer whose write size, pacing and receiver read rate
//! are set on purpose (a slow reader fills the receive queue, a fast writer fills the send buffer),
//! and a UDP flood of small datagrams. Each run ends with a JSON report on stdout.
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub bytes: u64,
    /// Writes, reads or datagrams.
    pub ops: u64,
    pub errors: u64,
    pub secs: f64,
    pub bytes_per_sec: f64,
    pub ops_per_sec: f64,
}

impl Report {
    fn new(mode: &'static str, bytes: u64, ops: u64, errors: u64, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Report {
            mode,
            bytes,
            ops,
            errors,
            secs,
            bytes_per_sec: bytes as f64 / secs,
            ops_per_sec: ops as f64 / secs,
        }
    }
}

/// Keeps a byte count at or under `rate` bytes/s since `start` by sleeping.
struct Pacer {
    start: Instant,
    rate: Option<u64>,
}

impl Pacer {
    fn wait(&self, done: u64) {
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let target = Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(ahead) = target.checked_sub(self.start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
}

fn set_buf(fd: &impl AsRawFd, opt: libc::c_int, bytes: Option<u64>) -> Result<()> {
    if let Some(b) = bytes {
        let v = b as libc::c_int;
        // SAFETY: int option value living across the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &v as *const _ as *const libc::c_void,
                4,
            )
        };
        if rc != 0 {
            bail!(
                "setsockopt buffer size: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

pub struct SendOpts {
    pub connect: SocketAddr,
    pub write_size: usize,
    /// Stop after this many bytes...
    pub bytes: Option<u64>,
    /// ...or after this long (whichever comes first; at least one is needed).
    pub duration: Option<Duration>,
    /// Pacing in bytes/s.
    pub rate: Option<u64>,
    pub sndbuf: Option<u64>,
    pub nodelay: bool,
    /// How long to keep retrying while the receiver is not listening yet.
    pub connect_timeout: Duration,
}

fn connect_retrying(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e)
                if start.elapsed() < timeout
                    && matches!(e.kind(), ErrorKind::ConnectionRefused) =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(e).with_context(|| format!("connect to {addr}")),
        }
    }
}

pub fn tcp_send(o: &SendOpts) -> Result<Report> {
    if o.bytes.is_none() && o.duration.is_none() {
        bail!("tcp-send needs --bytes or --duration");
    }
    let mut s = connect_retrying(o.connect, o.connect_timeout)?;
    set_buf(&s, libc::SO_SNDBUF, o.sndbuf)?;
    s.set_nodelay(o.nodelay)?;
    let buf = vec![0x5au8; o.write_size.max(1)];
    let start = Instant::now();
    let pacer = Pacer {
        start,
        rate: o.rate,
    };
    let (mut sent, mut writes) = (0u64, 0u64);
    loop {
        let want = match o.bytes {
            Some(total) if sent >= total => break,
            Some(total) => (total - sent).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if o.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        pacer.wait(sent);
        s.write_all(&buf[..want]).context("write to receiver")?;
        sent += want as u64;
        writes += 1;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver to close, so the report covers delivery, not just buffering.
    let mut sink = [0u8; 64];
    while s.read(&mut sink).context("wait for receiver to close")? > 0 {}
    Ok(Report::new("tcp-send", sent, writes, 0, start.elapsed()))
}

pub struct RecvOpts {
    pub listen: SocketAddr,
    pub read_size: usize,
    /// Reads at most this many bytes/s, leaving the rest queued in the socket.
    pub read_rate: Option<u64>,
    pub rcvbuf: Option<u64>,
    /// Where to write the receive queue's log (see [`QueueLog`]), if anywhere.
    pub queue_log: Option<std::path::PathBuf>,
}

/// One line of a receiver's queue log: the bytes waiting in its receive queue (`FIONREAD`),
/// averaged over time, and the bytes the reader took out, in one interval.
///
/// By Little's law the mean time a byte waits in the queue over a stretch of intervals is the
/// mean queue length divided by the rate bytes leave it: `Σ queued_mean·secs / Σ read_bytes`.
/// The kernel counts the queue itself, so this is a ground truth for the receive-queue wait that
/// shares nothing with the observer's stamps.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct QueueLog {
    /// End of the interval, seconds since the Unix epoch (CLOCK_REALTIME).
    pub t: f64,
    pub secs: f64,
    pub queued_mean: f64,
    pub read_bytes: u64,
}

/// How often the queue is sampled, and how many samples make one log line.
const QUEUE_SAMPLE: Duration = Duration::from_millis(1);
const QUEUE_SAMPLES_PER_LINE: u32 = 100;

/// Samples `s`'s receive queue every millisecond until `done`, writing a [`QueueLog`] line per
/// 100 samples to `path`. `read` is the reader's running byte count.
fn log_queue(
    s: TcpStream,
    path: std::path::PathBuf,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?,
    );
    let (mut sum, mut n) = (0f64, 0u32);
    let (mut t0, mut read0) = (Instant::now(), read.load(Relaxed));
    while !done.load(Relaxed) {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; `s` keeps the descriptor open.
        if unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut queued) } != 0 {
            break;
        }
        sum += queued as f64;
        n += 1;
        if n == QUEUE_SAMPLES_PER_LINE {
            let r = read.load(Relaxed);
            let line = QueueLog {
                t: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs_f64(),
                secs: t0.elapsed().as_secs_f64(),
                queued_mean: sum / n as f64,
                read_bytes: r - read0,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
            out.flush()?;
            (sum, n, t0, read0) = (0.0, 0, Instant::now(), r);
        }
        std::thread::sleep(QUEUE_SAMPLE);
    }
    Ok(())
}

/// Accepts one connection and reads it to the end.
pub fn tcp_recv(o: &RecvOpts) -> Result<Report> {
    let l = TcpListener::bind(o.listen).with_context(|| format!("listen on {}", o.listen))?;
    // Set on the listener so the accepted socket starts with it (window scaling is negotiated early).
    set_buf(&l, libc::SO_RCVBUF, o.rcvbuf)?;
    let (mut s, _) = l.accept().context("accept")?;
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let logger = match &o.queue_log {
        Some(path) => {
            let (s, path, read, done) = (s.try_clone()?, path.clone(), read.clone(), done.clone());
            Some(std::thread::spawn(move || log_queue(s, path, read, done)))
        }
        None => None,
    };
    let mut buf = vec![0u8; o.read_size.max(1)];
    let start = Instant::now();
    let pacer = Pacer {
        start,
        rate: o.read_rate,
    };
    let (mut got, mut reads) = (0u64, 0u64);
    loop {
        pacer.wait(got);
        let n = s.read(&mut buf).context("read from sender")?;
        if n == 0 {
            break;
        }
        got += n as u64;
        reads += 1;
        read.store(got, std::sync::atomic::Ordering::Relaxed);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(l) = logger {
        l.join()
            .map_err(|_| anyhow::anyhow!("the queue logger panicked"))??;
    }
    Ok(Report::new("tcp-recv", got, reads, 0, start.elapsed()))
}

/// Sends `size`-byte datagrams as fast as possible (or at `pps`) for `duration`.
pub fn udp_flood(
    connect: SocketAddr,
    size: usize,
    duration: Duration,
    pps: Option<u64>,
) -> Result<Report> {
    let bind: SocketAddr = if connect.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let s = UdpSocket::bind(bind)?;
    s.connect(connect)
        .with_context(|| format!("connect udp to {connect}"))?;
    let buf = vec![0xa5u8; size];
    let start = Instant::now();
    let pacer = Pacer { start, rate: pps };
    let (mut sent, mut errors) = (0u64, 0u64);
    while start.elapsed() < duration {
        pacer.wait(sent);
        match s.send(&buf) {
            Ok(_) => sent += 1,
            // ENOBUFS / ECONNREFUSED (no listener) are part of flooding, not failures of the tool.
            Err(_) => errors += 1,
        }
    }
    Ok(Report::new(
        "udp-flood",
        sent * size as u64,
        sent,
        errors,
        start.elapsed(),
    ))
}

/// Counts datagrams arriving on `listen` until `duration` has passed since the first one
/// (or since start if none come).
pub fn udp_sink(listen: SocketAddr, duration: Duration) -> Result<Report> {
    let s = UdpSocket::bind(listen).with_context(|| format!("bind udp {listen}"))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 65536];
    let mut start = Instant::now();
    let (mut first, mut pkts, mut bytes) = (true, 0u64, 0u64);
    while start.elapsed() < duration {
        match s.recv(&mut buf) {
            Ok(n) => {
                if first {
                    start = Instant::now();
                    first = false;
                }
                pkts += 1;
                bytes += n as u64;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("udp receive"),
        }
    }
    Ok(Report::new("udp-sink", bytes, pkts, 0, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_over_loopback_moves_every_byte_with_pacing() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let recv = std::thread::spawn(move || {
            tcp_recv(&RecvOpts {
                listen: addr,
                read_size: 1000,
                read_rate: None,
                rcvbuf: None,
                queue_log: None,
            })
            .unwrap()
        });
        let sent = tcp_send(&SendOpts {
            connect: addr,
            write_size: 4096,
            bytes: Some(200_000),
            duration: None,
            rate: Some(1_000_000),
            sndbuf: None,
            nodelay: false,
            connect_timeout: Duration::from_secs(5),
        })
        .unwrap();
        let got = recv.join().unwrap();
        assert_eq!(sent.bytes, 200_000);
        assert_eq!(got.bytes, 200_000);
        // 200 kB at 1 MB/s cannot finish in much less than 0.2 s.
        assert!(sent.secs >= 0.18, "pacing ignored: {}", sent.secs);
    }

    /// A reader slower than its writer: the log shows bytes waiting, and by Little's law their
    /// mean wait is near what the queue must hold at that read rate.
    #[test]
    fn a_slow_reader_logs_its_queue() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("queue.jsonl");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let path = log.clone();
        let recv = std::thread::spawn(move || {
            tcp_recv(&RecvOpts {
                listen: addr,
                read_size: 4096,
                read_rate: Some(2_000_000),
                rcvbuf: Some(64 * 1024),
                queue_log: Some(path),
            })
            .unwrap()
        });
        tcp_send(&SendOpts {
            connect: addr,
            write_size: 4096,
            bytes: Some(1_500_000),
            duration: None,
            rate: None,
            sndbuf: None,
            nodelay: false,
            connect_timeout: Duration::from_secs(5),
        })
        .unwrap();
        recv.join().unwrap();
        let lines: Vec<QueueLog> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // 1.5 MB at 2 MB/s: ~0.75 s, a line per ~0.1 s.
        assert!(lines.len() >= 4, "{} lines", lines.len());
        let read: u64 = lines.iter().map(|l| l.read_bytes).sum();
        assert!(read > 1_000_000 && read <= 1_500_000, "read {read}");
        let queued = lines.iter().map(|l| l.queued_mean).fold(0.0, f64::max);
        assert!(queued > 16_384.0, "the queue never filled: {queued}");
    }
}
