//! Independent ground truth from packet captures at the two ends of a link.
//!
//! Capture with nanosecond timestamps on both ends, e.g. in the lab
//! `ip netns exec lp-metal1 tcpdump -i wan0 --nano -w a.pcap tcp port 5201` and the same in
//! lp-metal2 (add `-j adapter_unsynced` where the NIC stamps packets). [`read_capture`] turns
//! each file into TCP packets keyed by (flow, sequence number); [`one_way_times`] pairs the two
//! ends into per-packet one-way times; [`compare`] checks per-byte segment values (from
//! [`crate::analysis::segment_values`]) against them. Parsing takes any reader: no file I/O here.
use super::input::{FlowKey, raw_of};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("failed to read the capture: {0}")]
    Pcap(#[from] pcap_file::PcapError),
    #[error("failed to read the capture: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported capture link type {0:?} (expected Ethernet, raw IP or Linux cooked)")]
    LinkType(DataLink),
}

/// One TCP segment with payload, as a capture saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapturedPacket {
    pub flow: FlowKey,
    pub seq: u32,
    pub len: u32,
    /// Capture timestamp, nanoseconds since the epoch.
    pub t_ns: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub packets: Vec<CapturedPacket>,
    /// Frames that were not TCP segments with payload over IPv4/IPv6 (ACKs, other protocols).
    pub skipped: u64,
}

/// Reads a pcap stream (microsecond or nanosecond timestamps), whole or cut to a snap length.
pub fn read_capture(mut r: impl Read) -> Result<Capture, CaptureError> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes)?;
    // pcap-file refuses a record whose original length exceeds the file's snap length, which is
    // every cut record of a capture taken with `-s N`; the cut costs nothing here (payload
    // lengths come from the IP header), so the header's snap length is raised before parsing.
    if let Some(snaplen) = bytes.get_mut(16..20) {
        snaplen.fill(0xff);
    }
    let mut reader = PcapReader::new(&bytes[..])?;
    let link = reader.header().datalink;
    if !matches!(
        link,
        DataLink::ETHERNET
            | DataLink::RAW
            | DataLink::IPV4
            | DataLink::IPV6
            | DataLink::LINUX_SLL
            | DataLink::LINUX_SLL2
    ) {
        return Err(CaptureError::LinkType(link));
    }
    let mut cap = Capture::default();
    while let Some(p) = reader.next_packet() {
        let p = p?;
        let t_ns = p.timestamp.as_nanos() as i64;
        match l3(link, &p.data).and_then(tcp_segment) {
            Some((flow, seq, len)) if len > 0 => cap.packets.push(CapturedPacket {
                flow,
                seq,
                len,
                t_ns,
            }),
            _ => cap.skipped += 1,
        }
    }
    Ok(cap)
}

/// The IP packet inside a frame.
fn l3(link: DataLink, d: &[u8]) -> Option<&[u8]> {
    match link {
        DataLink::ETHERNET => {
            let mut off = 12;
            let mut ethertype = u16::from_be_bytes([*d.get(off)?, *d.get(off + 1)?]);
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                off += 4; // VLAN tags
                ethertype = u16::from_be_bytes([*d.get(off)?, *d.get(off + 1)?]);
            }
            d.get(off + 2..)
        }
        DataLink::LINUX_SLL => d.get(16..),
        DataLink::LINUX_SLL2 => d.get(20..),
        _ => Some(d),
    }
}

/// (flow, sequence number, payload length) of a TCP segment in an IP packet.
fn tcp_segment(ip: &[u8]) -> Option<(FlowKey, u32, u32)> {
    let version = ip.first()? >> 4;
    let (saddr, daddr, proto, l4, payload_end) = match version {
        4 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
            let s = Ipv4Addr::new(*ip.get(12)?, ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(*ip.get(16)?, ip[17], ip[18], ip[19]);
            (IpAddr::V4(s), IpAddr::V4(d), *ip.get(9)?, ihl, total)
        }
        6 => {
            let plen = u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]) as usize;
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            // Extension headers are not followed: latplan's flows carry none.
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                *ip.get(6)?,
                40,
                40 + plen,
            )
        }
        _ => return None,
    };
    if proto != 6 {
        return None;
    }
    let tcp = ip.get(l4..)?;
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let seq = u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?);
    let doff = (*tcp.get(12)? >> 4) as usize * 4;
    // The IP length, not the captured length: a snap length cut does not change the payload size.
    let len = payload_end.checked_sub(l4 + doff)? as u32;
    Some((
        FlowKey {
            saddr: raw_of(saddr),
            daddr: raw_of(daddr),
            sport,
            dport,
        },
        seq,
        len,
    ))
}

/// A packet seen at both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneWay {
    pub seq: u32,
    pub len: u32,
    pub sent_ns: i64,
    pub received_ns: i64,
}

impl OneWay {
    pub fn one_way_ns(&self) -> i64 {
        self.received_ns - self.sent_ns
    }
}

/// Per-packet one-way times by flow, sorted by sequence number.
#[derive(Debug, Clone, Default)]
pub struct OneWayTimes {
    pub flows: HashMap<FlowKey, Vec<OneWay>>,
    /// Sequence numbers seen more than once at either end (retransmissions): ambiguous, left out.
    pub ambiguous: u64,
    /// Packets sent and never seen at the receiving end.
    pub unmatched: u64,
}

/// Pairs the sending end's packets with the receiving end's by (flow, sequence number).
pub fn one_way_times(sender: &Capture, receiver: &Capture) -> OneWayTimes {
    let index = |c: &Capture| {
        let mut m: HashMap<(FlowKey, u32), (CapturedPacket, u32)> = HashMap::new();
        for p in &c.packets {
            m.entry((p.flow, p.seq))
                .and_modify(|e| e.1 += 1)
                .or_insert((*p, 1));
        }
        m
    };
    let (tx, rx) = (index(sender), index(receiver));
    let mut out = OneWayTimes::default();
    for (key, (p, n)) in &tx {
        match rx.get(key) {
            Some((q, m)) if *n == 1 && *m == 1 => {
                out.flows.entry(key.0).or_default().push(OneWay {
                    seq: p.seq,
                    len: p.len,
                    sent_ns: p.t_ns,
                    received_ns: q.t_ns,
                })
            }
            Some(_) => out.ambiguous += 1,
            None if *n > 1 => out.ambiguous += 1,
            None => out.unmatched += 1,
        }
    }
    for v in out.flows.values_mut() {
        v.sort_by_key(|w| w.seq);
    }
    out
}

impl OneWayTimes {
    /// The packet that carried the byte with sequence number `seq` (the low 32 bits of a sample's
    /// offset), handling sequence-number wrap-around.
    pub fn for_byte(&self, flow: &FlowKey, seq: u32) -> Option<&OneWay> {
        let v = self.flows.get(flow)?;
        let i = v.partition_point(|w| w.seq <= seq);
        let hit = |w: &&OneWay| seq.wrapping_sub(w.seq) < w.len;
        // The packet starting at or below `seq`, or one starting just below 2^32 that wraps over it.
        i.checked_sub(1)
            .map(|j| &v[j])
            .filter(hit)
            .or_else(|| v.last().filter(hit))
    }
}

/// How per-byte segment values agree with the captures.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Agreement {
    /// Values whose byte the captures saw at both ends.
    pub matched: u64,
    /// Values whose byte the captures did not pair (not captured, retransmitted, lost).
    pub unmatched: u64,
    pub within_tolerance: u64,
    pub max_abs_diff_ns: i64,
}

impl Agreement {
    pub fn fraction_within(&self) -> f64 {
        if self.matched == 0 {
            0.0
        } else {
            self.within_tolerance as f64 / self.matched as f64
        }
    }
}

/// Compares (flow, byte offset, value) triples with the captures' one-way times.
pub fn compare(
    values: impl IntoIterator<Item = (FlowKey, u64, i64)>,
    truth: &OneWayTimes,
    tolerance_ns: i64,
) -> Agreement {
    let mut a = Agreement::default();
    for (flow, offset, v) in values {
        match truth.for_byte(&flow, offset as u32) {
            Some(w) => {
                a.matched += 1;
                let d = (v - w.one_way_ns()).abs();
                a.max_abs_diff_ns = a.max_abs_diff_ns.max(d);
                if d <= tolerance_ns {
                    a.within_tolerance += 1;
                }
            }
            None => a.unmatched += 1,
        }
    }
    a
}

/// Which end of a [`OneWay`] a host's own stamps are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Sent,
    Received,
}

/// Bytes whose capture stamp does not stand for the instant the host's own hook saw the packet.
///
/// The capture's tap and the hook next to it stamp the same packet a few instructions apart, in
/// two clocks of one kernel (realtime and monotonic) whose difference is constant over a session.
/// Per byte, `host − capture` is that constant plus the time between the two stamps; a byte
/// farther than `tolerance_ns` from the median was held up between them (an interrupt, the
/// hypervisor, the capture waking its reader), so the capture is no reference for it at that
/// tolerance — whichever stamp is "right", the two measure different instants.
#[derive(Debug, Clone, Default)]
pub struct HeldUp {
    /// Bytes compared (the host stamped them and the captures paired their packet).
    pub compared: u64,
    /// (flow, low 32 bits of the offset) of the bytes held up between the two stamps.
    pub bytes: std::collections::HashSet<(FlowKey, u32)>,
}

/// Compares a host's stamps at the hook beside the capture, `(flow, byte offset, host ns)`, with
/// the capture's stamp of the packet that carried the byte at `end`.
pub fn held_up_between_stamps(
    stamps: impl IntoIterator<Item = (FlowKey, u64, i64)>,
    truth: &OneWayTimes,
    end: End,
    tolerance_ns: i64,
) -> HeldUp {
    let gaps: Vec<(FlowKey, u32, i64)> = stamps
        .into_iter()
        .filter_map(|(flow, offset, host_ns)| {
            let w = truth.for_byte(&flow, offset as u32)?;
            let captured = match end {
                End::Sent => w.sent_ns,
                End::Received => w.received_ns,
            };
            Some((flow, offset as u32, host_ns - captured))
        })
        .collect();
    let mut sorted: Vec<i64> = gaps.iter().map(|g| g.2).collect();
    sorted.sort_unstable();
    let Some(&median) = sorted.get(sorted.len() / 2) else {
        return HeldUp::default();
    };
    HeldUp {
        compared: gaps.len() as u64,
        bytes: gaps
            .into_iter()
            .filter(|g| (g.2 - median).abs() > tolerance_ns)
            .map(|g| (g.0, g.1))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::TsResolution;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use std::time::Duration;

    #[test]
    fn bytes_held_up_between_the_capture_and_the_hook_are_found_whatever_the_clock_offset() {
        let f = flow();
        let mut truth = OneWayTimes::default();
        truth.flows.insert(
            f,
            (0..10u32)
                .map(|i| OneWay {
                    seq: i * 1000,
                    len: 1000,
                    sent_ns: 1_000_000 * i as i64,
                    received_ns: 1_000_000 * i as i64 + 50_000,
                })
                .collect(),
        );
        // The host's clock is 7 s behind the capture's; byte 3500 (packet 3) waited 30 µs
        // between the two stamps at the receiver, byte 8000 (packet 8) 15 µs.
        let stamps = (0..10u64).map(|i| {
            let extra = match i {
                3 => 30_000,
                8 => 15_000,
                _ => (i as i64 % 3) * 1_000,
            };
            (
                f,
                i * 1000 + 500,
                1_000_000 * i as i64 + 50_000 - 7_000_000_000 + extra,
            )
        });
        let held = held_up_between_stamps(stamps, &truth, End::Received, 20_000);
        assert_eq!(held.compared, 10);
        assert_eq!(held.bytes.into_iter().collect::<Vec<_>>(), vec![(f, 3500)]);
        // Bytes the captures did not pair are not compared.
        let none = held_up_between_stamps([(f, 99_999, 0)], &truth, End::Sent, 20_000);
        assert_eq!((none.compared, none.bytes.len()), (0, 0));
    }

    fn frame(seq: u32, payload: usize, v6: bool) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        let tcp_len = 20 + payload;
        if v6 {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            ip.extend_from_slice(&[6, 64]);
            ip.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
            ip.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
            f.extend(ip);
        } else {
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 10, 78, 0, 1, 10, 78, 0, 2]);
            f.extend(ip);
        }
        let mut tcp = vec![0x9c, 0x40, 0x14, 0x51]; // 40000 → 5201
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend(tcp);
        f.extend(std::iter::repeat_n(0xabu8, payload));
        f
    }

    fn pcap(packets: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let header = PcapHeader {
            ts_resolution: TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        for (t, data) in packets {
            w.write_packet(&PcapPacket::new(
                Duration::from_nanos(*t),
                data.len() as u32,
                data,
            ))
            .unwrap();
        }
        w.into_writer()
    }

    fn flow() -> FlowKey {
        FlowKey {
            saddr: raw_of("10.78.0.1".parse().unwrap()),
            daddr: raw_of("10.78.0.2".parse().unwrap()),
            sport: 40000,
            dport: 5201,
        }
    }

    #[test]
    fn captures_at_both_ends_give_per_packet_one_way_times() {
        let base = 1_700_000_000_000_000_000u64;
        let seqs = [u32::MAX - 999, 500, 1948, 3396];
        let tx: Vec<_> = seqs
            .iter()
            .enumerate()
            .map(|(i, &s)| (base + i as u64 * 1000, frame(s, 1448, false)))
            .collect();
        let mut rx: Vec<_> = seqs
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                (
                    base + i as u64 * 1000 + 3_000_000 + i as u64,
                    frame(s, 1448, false),
                )
            })
            .collect();
        // A pure ACK at the receiver, and the last packet retransmitted (ambiguous).
        rx.push((base + 10, frame(0, 0, false)));
        let mut tx2 = tx.clone();
        tx2.push((base + 9_000_000, frame(3396, 1448, false)));
        let a = read_capture(&pcap(&tx2)[..]).unwrap();
        let b = read_capture(&pcap(&rx)[..]).unwrap();
        assert_eq!((a.packets.len(), b.packets.len(), b.skipped), (5, 4, 1));
        assert_eq!(a.packets[0].t_ns, base as i64);
        let w = one_way_times(&a, &b);
        assert_eq!(
            (w.flows[&flow()].len(), w.ambiguous, w.unmatched),
            (3, 1, 0)
        );
        // A byte in the middle of the second packet, and one past the wrap of the first.
        assert_eq!(
            w.for_byte(&flow(), 500 + 700).unwrap().one_way_ns(),
            3_000_001
        );
        assert_eq!(w.for_byte(&flow(), 5).unwrap().one_way_ns(), 3_000_000);
        assert!(w.for_byte(&flow(), 3396 + 10).is_none());
        let g = compare(
            [
                (flow(), (1u64 << 32) + 1200, 3_000_011),
                (flow(), 1948, 3_000_040),
                (flow(), 9_999_999, 1),
            ],
            &w,
            20_000 / 1000,
        );
        assert_eq!(
            (
                g.matched,
                g.within_tolerance,
                g.unmatched,
                g.max_abs_diff_ns
            ),
            (2, 1, 1, 38)
        );
        assert_eq!(g.fraction_within(), 0.5);
    }

    #[test]
    fn ipv6_and_bad_captures() {
        let cap = read_capture(&pcap(&[(1, frame(7, 100, true))])[..]).unwrap();
        assert_eq!(cap.packets.len(), 1);
        assert_eq!(
            (
                cap.packets[0].seq,
                cap.packets[0].len,
                cap.packets[0].flow.dport
            ),
            (7, 100, 5201)
        );
        assert!(read_capture(&b"not a pcap file at all"[..]).is_err());
    }

    /// What `tcpdump -s 96` writes: a snap length of 96 and records cut to it.
    fn cut_pcap(packets: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [0xa1b2_3c4du32, 0x0004_0002, 0, 0, 96, 1] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (t, data) in packets {
            let cut = &data[..data.len().min(96)];
            for v in [
                (*t / 1_000_000_000) as u32,
                (*t % 1_000_000_000) as u32,
                cut.len() as u32,
                data.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(cut);
        }
        out
    }

    #[test]
    fn a_capture_cut_to_a_snap_length_keeps_the_payload_lengths() {
        let cap = read_capture(
            &cut_pcap(&[(5, frame(1000, 1448, false)), (9, frame(2448, 20, true))])[..],
        )
        .unwrap();
        let got: Vec<_> = cap.packets.iter().map(|p| (p.seq, p.len, p.t_ns)).collect();
        assert_eq!(got, [(1000, 1448, 5), (2448, 20, 9)]);
    }
}
