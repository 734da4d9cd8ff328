//! An independent reading of another kernel's CLOCK_MONOTONIC over UDP, for checking time sync
//! against something that is not time sync: `lab-traffic clock-echo` answers each datagram with
//! its clock, and [`offset_to`] asks many times and keeps the narrowest round trip. The peer's
//! reading happened between our send and our receive, so (ours − peer's) at the midpoint is
//! known within ± half that round trip — the method's own bound. No eBPF, no XDP, no fit.
use anyhow::{Context, Result, bail};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC in nanoseconds, signed for offset arithmetic: what `bpf_ktime_get_ns()` and
/// the clock fits use.
pub fn monotonic_ns() -> i64 {
    latplan_common::clock::monotonic_ns() as i64
}

/// Answers every datagram on `listen` with its first 8 bytes (the asker's nonce) and this host's
/// CLOCK_MONOTONIC, until `duration` has passed. Returns the number of answers.
pub fn serve(listen: SocketAddr, duration: Duration) -> Result<u64> {
    let s = UdpSocket::bind(listen).with_context(|| format!("bind udp {listen}"))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let mut answered = 0;
    while start.elapsed() < duration {
        match s.recv_from(&mut buf) {
            Ok((n, from)) if n >= 8 => {
                let mut reply = [0u8; 16];
                reply[..8].copy_from_slice(&buf[..8]);
                reply[8..].copy_from_slice(&monotonic_ns().to_le_bytes());
                s.send_to(&reply, from).context("answer a clock request")?;
                answered += 1;
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("udp receive"),
        }
    }
    Ok(answered)
}

/// The best of several readings of a peer's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockReading {
    /// The peer's CLOCK_MONOTONIC when it answered.
    pub peer_ns: i64,
    /// Our clock minus the peer's, at the midpoint of the round trip.
    pub offset_ns: f64,
    /// Half the round trip: the reading's own error bound.
    pub half_window_ns: f64,
    /// Answers received (of `tries` asked).
    pub answers: usize,
}

/// Asks `peer` (a [`serve`]) `tries` times and keeps the reading with the narrowest round trip.
/// Late, duplicated or foreign answers are told apart by the nonce and ignored.
pub fn offset_to(peer: SocketAddr, tries: usize, timeout: Duration) -> Result<ClockReading> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind).context("bind a udp socket")?;
    s.connect(peer)
        .with_context(|| format!("udp connect {peer}"))?;
    s.set_read_timeout(Some(timeout))?;
    let mut best: Option<ClockReading> = None;
    let mut answers = 0;
    let mut buf = [0u8; 64];
    for nonce in 0..tries as u64 {
        let t1 = monotonic_ns();
        s.send(&nonce.to_le_bytes())
            .context("send a clock request")?;
        let answer = loop {
            match s.recv(&mut buf) {
                Ok(16) if buf[..8] == nonce.to_le_bytes() => break Some(monotonic_ns()),
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break None;
                }
                // An ICMP port unreachable from a peer not (yet) serving: try again.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break None,
                Err(e) => return Err(e).context("receive a clock answer"),
            }
        };
        let Some(t2) = answer else { continue };
        answers += 1;
        let peer_ns = i64::from_le_bytes(buf[8..16].try_into().unwrap());
        let half = (t2 - t1) as f64 / 2.0;
        if best.is_none_or(|b| half < b.half_window_ns) {
            best = Some(ClockReading {
                peer_ns,
                offset_ns: (t1 as f64 + t2 as f64) / 2.0 - peer_ns as f64,
                half_window_ns: half,
                answers: 0,
            });
        }
    }
    match best {
        Some(b) => Ok(ClockReading { answers, ..b }),
        None => bail!("no answer from the clock echo at {peer} to {tries} requests"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_clock_reads_as_zero_offset_within_the_window() {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = std::thread::spawn(move || serve(addr, Duration::from_secs(2)).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        let r = offset_to(addr, 200, Duration::from_millis(200)).unwrap();
        assert!(r.answers >= 150, "{r:?}");
        assert!(r.offset_ns.abs() <= r.half_window_ns, "{r:?}");
        assert!(
            r.half_window_ns < 1e6,
            "loopback round trip under 2 ms: {r:?}"
        );
        assert!(server.join().unwrap() >= r.answers as u64);
    }

    #[test]
    fn no_server_is_an_error_not_a_hang() {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let e = offset_to(addr, 3, Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
    }
}
