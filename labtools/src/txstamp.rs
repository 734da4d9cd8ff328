//! The kernel's own transmit timestamps of a TCP sender's writes (`SO_TIMESTAMPING`): a
//! ground truth for the observer's qdisc segment that shares nothing with it.
//!
//! For the last byte of every write the kernel records when the segment carrying it entered
//! the device layer (`SCM_TSTAMP_SCHED`, in `__dev_queue_xmit()` before the qdisc, beside the
//! observer's dev_send) and when the driver was handed it (`SCM_TSTAMP_SND`, the driver's
//! `skb_tx_timestamp()`, beside dev_xmit). Their difference is that segment's wait in the
//! qdisc. Stamps come back on the socket's error queue keyed by the byte's offset in the
//! stream (`SOF_TIMESTAMPING_OPT_ID`); with the stream's first sequence number (read in TCP
//! repair mode, [`write_seq`]) that is the byte's sequence number, the key the observer's
//! samples carry too. A thread drains the queue and writes one JSON line per stamp.
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;

/// `ee_info` of a timestamp on the error queue (linux/errqueue.h).
const SCM_TSTAMP_SND: u32 = 0;
const SCM_TSTAMP_SCHED: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Entered the device layer, before the qdisc.
    Sched,
    /// Handed to the driver, after the qdisc.
    Snd,
}

/// One stamp: which write (the offset of its last byte since the stamps were enabled, and that
/// byte's TCP sequence number), which point, and when, on CLOCK_MONOTONIC (converted from the
/// kernel's CLOCK_REALTIME stamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub key: u32,
    pub seq: u32,
    pub kind: Kind,
    pub t_ns: i64,
}

/// The sequence number the socket's next written byte will get (`tcp_sock.write_seq`), read
/// in TCP repair mode: the one interface that shows it. Leaving repair mode without a window
/// probe (`TCP_REPAIR_OFF_NO_WP`) leaves the connection as it was. Needs CAP_NET_ADMIN.
pub fn write_seq(s: &TcpStream) -> Result<u32> {
    const TCP_SEND_QUEUE: libc::c_int = 2;
    const TCP_REPAIR_ON: libc::c_int = 1;
    const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
    let fd = s.as_raw_fd();
    let set = |opt: libc::c_int, v: libc::c_int, what: &str| -> Result<()> {
        // SAFETY: an int option value living across the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                opt,
                &v as *const _ as *const libc::c_void,
                std::mem::size_of_val(&v) as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!("setsockopt {what}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(
        libc::TCP_REPAIR,
        TCP_REPAIR_ON,
        "TCP_REPAIR (needs CAP_NET_ADMIN)",
    )?;
    let read = (|| -> Result<u32> {
        set(libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
        let mut v: u32 = 0;
        let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
        // SAFETY: a u32 to fill and its length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUEUE_SEQ,
                &mut v as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            bail!(
                "getsockopt TCP_QUEUE_SEQ: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(v)
    })();
    set(libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP, "TCP_REPAIR off")?;
    read
}

/// Asks the kernel for SCHED and SND software stamps of the last byte of every later write.
/// Call it before the first write, so keys count from the stream's first byte.
pub fn enable(s: &TcpStream) -> Result<()> {
    let flags = libc::SOF_TIMESTAMPING_TX_SCHED
        | libc::SOF_TIMESTAMPING_TX_SOFTWARE
        | libc::SOF_TIMESTAMPING_SOFTWARE
        | libc::SOF_TIMESTAMPING_OPT_ID
        | libc::SOF_TIMESTAMPING_OPT_TSONLY;
    // SAFETY: an int option value living across the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            &flags as *const _ as *const libc::c_void,
            std::mem::size_of_val(&flags) as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "setsockopt SO_TIMESTAMPING: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now, to put the kernel's realtime stamps on the monotonic
/// timeline the observer and the other lab logs use.
fn realtime_minus_monotonic() -> i64 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    now(libc::CLOCK_REALTIME) - latplan_common::clock::monotonic_ns() as i64
}

/// Reads every stamp waiting on the socket's error queue, without blocking. `base` is the
/// stream's sequence number at key 0.
pub fn drain(fd: RawFd, real_minus_mono: i64, base: u32, out: &mut Vec<Stamp>) -> Result<()> {
    loop {
        let mut control = [0u64; 64];
        let mut data = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: every buffer msg points to lives across the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(()),
                Some(libc::EINTR) => continue,
                _ => Err(e).context("recvmsg MSG_ERRQUEUE"),
            };
        }
        if let Some(s) = parse(&msg, real_minus_mono, base) {
            out.push(s);
        }
    }
}

/// The stamp in one error-queue message: an `SCM_TIMESTAMPING` (software stamp in `ts[0]`) and
/// a `sock_extended_err` of origin TIMESTAMPING (which point, which byte).
fn parse(msg: &libc::msghdr, real_minus_mono: i64, base: u32) -> Option<Stamp> {
    let (mut t_ns, mut err) = (None, None);
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            let data = libc::CMSG_DATA(c);
            if level == libc::SOL_SOCKET && ty == libc::SCM_TIMESTAMPING {
                let ts = std::ptr::read_unaligned(data as *const libc::timespec);
                t_ns = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec - real_minus_mono);
            } else if (level == libc::SOL_IP && ty == libc::IP_RECVERR)
                || (level == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR)
            {
                err = Some(std::ptr::read_unaligned(
                    data as *const libc::sock_extended_err,
                ));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    let err = err.filter(|e| e.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING)?;
    let kind = match err.ee_info {
        SCM_TSTAMP_SCHED => Kind::Sched,
        SCM_TSTAMP_SND => Kind::Snd,
        _ => return None,
    };
    Some(Stamp {
        key: err.ee_data,
        seq: base.wrapping_add(err.ee_data),
        kind,
        t_ns: t_ns?,
    })
}

/// A thread draining a socket's stamps into a JSON-lines file until stopped.
pub struct TxStamper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64>>,
}

impl TxStamper {
    /// Enables the stamps on `s` and starts draining them to `path`. Call it before the first
    /// write: keys count from the stream's first byte, whose sequence number is `base`
    /// ([`write_seq`] then).
    pub fn start(s: &TcpStream, base: u32, path: &Path) -> Result<TxStamper> {
        enable(s)?;
        let sock = s
            .try_clone()
            .context("clone the socket for its error queue")?;
        let file = std::fs::File::create(path)
            .with_context(|| format!("create the stamp log {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || -> Result<u64> {
            let offset = realtime_minus_monotonic();
            let mut w = BufWriter::new(file);
            let (mut batch, mut written) = (Vec::new(), 0u64);
            loop {
                // The last round drains what came in before the stop.
                let last = stopping.load(Relaxed);
                wait_for_error_queue(sock.as_raw_fd(), 20);
                drain(sock.as_raw_fd(), offset, base, &mut batch)?;
                for s in batch.drain(..) {
                    serde_json::to_writer(&mut w, &s)?;
                    w.write_all(b"\n")?;
                    written += 1;
                }
                w.flush()?;
                if last {
                    return Ok(written);
                }
            }
        });
        Ok(TxStamper { stop, thread })
    }

    /// Drains what is left and returns how many stamps were written.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the stamp thread panicked"))?
    }
}

/// Sleeps until the socket's error queue has something (POLLERR) or `ms` have passed.
fn wait_for_error_queue(fd: RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd. POLLERR is reported whatever `events` asks for; a closed peer
    // (POLLHUP) returns at once, so the timeout is also slept explicitly then.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n > 0 && p.revents & libc::POLLERR == 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms as u64));
    }
}

/// Reads a stamp log.
pub fn read(path: &Path) -> Result<Vec<Stamp>> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    std::io::BufReader::new(f)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let l = l.with_context(|| format!("read {}", path.display()))?;
            serde_json::from_str(&l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// Each write's qdisc wait (SND − SCHED, ns) by the sequence number of its last byte, for the
/// writes that entered the device layer in `[from_ns, to_ns]`, sorted by wait; and how many
/// writes were left out for having more than one stamp of a kind (a retransmitted segment is
/// stamped again) or only one of the two.
pub fn qdisc_waits(stamps: &[Stamp], from_ns: i64, to_ns: i64) -> (Vec<(u32, i64)>, usize) {
    #[derive(Default)]
    struct Write {
        seq: u32,
        sched: Vec<i64>,
        snd: Vec<i64>,
    }
    let mut by_key: HashMap<u32, Write> = HashMap::new();
    for s in stamps {
        let w = by_key.entry(s.key).or_default();
        w.seq = s.seq;
        match s.kind {
            Kind::Sched => w.sched.push(s.t_ns),
            Kind::Snd => w.snd.push(s.t_ns),
        }
    }
    let (mut waits, mut left_out) = (Vec::new(), 0);
    for w in by_key.values() {
        match (w.sched.as_slice(), w.snd.as_slice()) {
            ([sched], [snd]) if (from_ns..=to_ns).contains(sched) => {
                waits.push((w.seq, snd - sched))
            }
            ([sched], [_]) if !(from_ns..=to_ns).contains(sched) => {}
            _ => left_out += 1,
        }
    }
    waits.sort_unstable_by_key(|(_, wait)| *wait);
    (waits, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn stamp(key: u32, kind: Kind, t_ns: i64) -> Stamp {
        Stamp {
            key,
            seq: key,
            kind,
            t_ns,
        }
    }

    #[test]
    fn waits_pair_each_writes_two_stamps_inside_the_window() {
        let stamps = [
            stamp(99, Kind::Sched, 1_000),
            stamp(99, Kind::Snd, 1_500),
            stamp(199, Kind::Snd, 2_300),
            stamp(199, Kind::Sched, 2_000),
            // Retransmitted: stamped twice, ambiguous.
            stamp(299, Kind::Sched, 3_000),
            stamp(299, Kind::Snd, 3_100),
            stamp(299, Kind::Sched, 9_000),
            stamp(299, Kind::Snd, 9_100),
            // Its SND never came.
            stamp(399, Kind::Sched, 4_000),
            // Outside the window: neither kept nor counted.
            stamp(499, Kind::Sched, 50_000),
            stamp(499, Kind::Snd, 50_007),
        ];
        let (waits, left_out) = qdisc_waits(&stamps, 0, 10_000);
        assert_eq!(waits, vec![(199, 300), (99, 500)]);
        assert_eq!(left_out, 2);
    }

    #[test]
    fn a_writer_over_loopback_gets_both_stamps_of_every_write_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).unwrap();
            sink.len()
        });
        let mut s = TcpStream::connect(addr).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stamps.jsonl");
        let base = write_seq(&s).unwrap();
        let stamper = TxStamper::start(&s, base, &path).unwrap();
        let before = latplan_common::clock::monotonic_ns() as i64;
        for _ in 0..20 {
            s.write_all(&[7u8; 1000]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = latplan_common::clock::monotonic_ns() as i64;
        let written = stamper.stop().unwrap();
        // Repair mode left the connection as it was: it moved every byte, and the next byte's
        // sequence number is the first's plus the 20000 written.
        assert_eq!(write_seq(&s).unwrap(), base.wrapping_add(20_000));
        drop(s);
        assert_eq!(reader.join().unwrap(), 20_000);

        let stamps = read(&path).unwrap();
        assert_eq!(written as usize, stamps.len());
        // The key is the offset of each write's last byte; both points stamped each write.
        for kind in [Kind::Sched, Kind::Snd] {
            let keys: Vec<u32> = stamps
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.key)
                .collect();
            let want: Vec<u32> = (1..=20).map(|i| i * 1000 - 1).collect();
            assert_eq!(keys, want, "{kind:?} keys");
            let seqs: Vec<u32> = stamps
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.seq)
                .collect();
            let want: Vec<u32> = want.iter().map(|k| base.wrapping_add(*k)).collect();
            assert_eq!(seqs, want, "{kind:?} sequence numbers");
        }
        // On the monotonic timeline, inside the writes' time, and loopback has no qdisc: the
        // two stamps are apart only by the code between them (and, on a loaded virtual
        // machine, whatever takes the vCPU meanwhile: one run saw more than a millisecond).
        let (waits, left_out) = qdisc_waits(&stamps, before, after);
        assert_eq!((waits.len(), left_out), (20, 0));
        assert!(
            waits.iter().all(|(_, w)| (0..50_000_000).contains(w)),
            "{waits:?}"
        );
    }
}
