//! The lab's traffic generator: TCP bulk transfer whose write size, pacing and receiver read rate
//! are set on purpose (a slow reader fills the receive queue, a fast writer fills the send buffer),
//! and a UDP flood of small datagrams. Each run ends with a JSON report on stdout.
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::queuelog::{self, QueueLogger};
use crate::txstamp::{self, TxStamper};

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
    /// Where to write the send buffer's log (see [`crate::queuelog`]), if anywhere.
    pub queue_log: Option<std::path::PathBuf>,
    /// Where to write the kernel's transmit stamps of every write (see [`crate::txstamp`]).
    pub tx_stamps: Option<std::path::PathBuf>,
    /// Size the first write so that every write's last byte has a sequence number that is a
    /// multiple of this (a power of two dividing `write_size`): with the observer's sample size,
    /// the byte the kernel stamps is one the observer samples.
    pub align_writes: Option<u64>,
}

/// Connects, trying again within `timeout` while the listener is not up yet (refused) or an
/// attempt timed out: on a lab link with loss set, a SYN and its retransmission can both be lost.
fn connect_retrying(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e)
                if start.elapsed() < timeout
                    && matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut) =>
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
    let handed = Arc::new(AtomicU64::new(0));
    let logger = QueueLogger::start_if(o.queue_log.as_deref(), || {
        queuelog::send_buffer(&s, handed.clone())
    })?;
    let base = if o.tx_stamps.is_some() || o.align_writes.is_some() {
        txstamp::write_seq(&s)?
    } else {
        0
    };
    let stamper = o
        .tx_stamps
        .as_deref()
        .map(|p| TxStamper::start(&s, base, p))
        .transpose()?;
    let first_write = match o.align_writes {
        Some(n) => aligned_first_write(base, n, o.write_size as u64)?,
        None => o.write_size,
    };
    let buf = vec![0x5au8; o.write_size.max(1)];
    let start = Instant::now();
    let pacer = Pacer {
        start,
        rate: o.rate,
    };
    let (mut sent, mut writes) = (0u64, 0u64);
    loop {
        let size = if writes == 0 { first_write } else { buf.len() };
        let want = match o.bytes {
            Some(total) if sent >= total => break,
            Some(total) => (total - sent).min(size as u64) as usize,
            None => size,
        };
        if o.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        pacer.wait(sent);
        // Handed over when the call starts: that is when the observer's sock_send stamps.
        handed.store(sent + want as u64, Relaxed);
        s.write_all(&buf[..want]).context("write to receiver")?;
        sent += want as u64;
        writes += 1;
    }
    if let Some(l) = logger {
        l.stop()?;
    }
    if let Some(t) = stamper {
        t.stop()?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver to close, so the report covers delivery, not just buffering.
    let mut sink = [0u8; 64];
    while s.read(&mut sink).context("wait for receiver to close")? > 0 {}
    Ok(Report::new("tcp-send", sent, writes, 0, start.elapsed()))
}

/// The first write's size that puts every write's last byte on a multiple of `n` in sequence
/// space, the stream's first byte being `base`: 1 to `n` bytes.
fn aligned_first_write(base: u32, n: u64, write_size: u64) -> Result<usize> {
    if !n.is_power_of_two() || n > 1 << 31 || !write_size.is_multiple_of(n) {
        bail!("--align-writes {n} must be a power of two that divides --write-size {write_size}");
    }
    // Last byte at base + w - 1 ≡ 0 (mod n).
    let w = (1u32.wrapping_sub(base) as u64) % n;
    Ok(if w == 0 { n } else { w } as usize)
}

pub struct RecvOpts {
    pub listen: SocketAddr,
    pub read_size: usize,
    /// Reads at most this many bytes/s, leaving the rest queued in the socket.
    pub read_rate: Option<u64>,
    pub rcvbuf: Option<u64>,
    /// Where to write the receive queue's log (see [`crate::queuelog`]), if anywhere.
    pub queue_log: Option<std::path::PathBuf>,
    /// Every read takes exactly `read_size` bytes in one call (`MSG_WAITALL`), as applications
    /// reading fixed-size records do: read boundaries then line up in sequence space.
    pub read_exact: bool,
}

/// One `recv(MSG_WAITALL)`: the whole buffer in one call, unless the peer closes first.
fn recv_all(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its length while the call runs.
        let n = unsafe {
            libc::recv(
                s.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_WAITALL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Accepts one connection and reads it to the end.
pub fn tcp_recv(o: &RecvOpts) -> Result<Report> {
    let l = TcpListener::bind(o.listen).with_context(|| format!("listen on {}", o.listen))?;
    // Set on the listener so the accepted socket starts with it (window scaling is negotiated early).
    set_buf(&l, libc::SO_RCVBUF, o.rcvbuf)?;
    let (mut s, _) = l.accept().context("accept")?;
    let read = Arc::new(AtomicU64::new(0));
    let logger = QueueLogger::start_if(o.queue_log.as_deref(), || {
        queuelog::receive_queue(&s, read.clone())
    })?;
    let mut buf = vec![0u8; o.read_size.max(1)];
    let start = Instant::now();
    let pacer = Pacer {
        start,
        rate: o.read_rate,
    };
    let (mut got, mut reads) = (0u64, 0u64);
    loop {
        pacer.wait(got);
        let n = if o.read_exact {
            recv_all(&s, &mut buf).context("read from sender")?
        } else {
            s.read(&mut buf).context("read from sender")?
        };
        if n == 0 {
            break;
        }
        got += n as u64;
        reads += 1;
        read.store(got, Relaxed);
    }
    if let Some(l) = logger {
        l.stop()?;
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
    fn the_aligned_first_write_ends_every_write_on_a_multiple() {
        for base in [0u32, 1, 5000, 8191, 8192, u32::MAX - 3] {
            let first = aligned_first_write(base, 8192, 98304).unwrap() as u32;
            assert!((1..=8192).contains(&first));
            for k in 0..3u32 {
                let last = base.wrapping_add(first + k * 98304).wrapping_sub(1);
                assert_eq!(last % 8192, 0, "base {base}, write {k}");
            }
        }
        assert!(aligned_first_write(0, 8192, 100_000).is_err());
        assert!(aligned_first_write(0, 3000, 9000).is_err());
    }

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
                read_exact: true,
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
            queue_log: None,
            tx_stamps: None,
            align_writes: None,
        })
        .unwrap();
        let got = recv.join().unwrap();
        assert_eq!(sent.bytes, 200_000);
        assert_eq!(got.bytes, 200_000);
        // 200 kB at 1 MB/s cannot finish in much less than 0.2 s.
        assert!(sent.secs >= 0.18, "pacing ignored: {}", sent.secs);
    }
}
