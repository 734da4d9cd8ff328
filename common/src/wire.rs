//! The framed, versioned record stream from an observer to the collector.
//!
//! The same bytes travel over an SSH channel (the observer's stdout) or as Redis stream entries
//! (one frame per entry). Layout of a frame, all integers little-endian:
//!
//! ```text
//! offset size field
//!      0    4 magic  b"LPLN"
//!      4    1 version (WIRE_VERSION)
//!      5    1 kind   (1 hello, 2 samples, 3 stats, 4 bye)
//!      6    2 reserved, zero
//!      8    4 payload length in bytes (at most MAX_PAYLOAD)
//!     12    4 CRC-32 (IEEE) of the payload
//!     16    … payload
//! ```
//!
//! Hello, stats and bye payloads are JSON objects (rare, and easy to extend); a samples payload is
//! binary: `first_record_seq: u64, count: u32, reserved: u32`, then `count` records of
//! [`SAMPLE_WIRE_SIZE`] bytes (see [`Sample`]). Record `i` of a batch has record sequence number
//! `first_record_seq + i`; sequence numbers start at 0 per observer run and never skip, so the
//! collector can detect gaps.
use crate::Layer;
use serde::{Deserialize, Serialize};
use std::io::{self, Read};

pub const MAGIC: [u8; 4] = *b"LPLN";
pub const WIRE_VERSION: u8 = 1;
pub const HEADER_SIZE: usize = 16;
/// Upper bound on one frame's payload; larger lengths mean corruption.
pub const MAX_PAYLOAD: usize = 8 << 20;
pub const SAMPLE_WIRE_SIZE: usize = 72;
const SAMPLES_PREFIX: usize = 16;

const KIND_HELLO: u8 = 1;
const KIND_SAMPLES: u8 = 2;
const KIND_STATS: u8 = 3;
const KIND_BYE: u8 = 4;

/// One sampled byte observed at one layer, as the observer ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Host clock (CLOCK_MONOTONIC of the observed kernel), nanoseconds.
    pub ts_ns: u64,
    /// Absolute sequence number of the sampled byte, unwrapped to 64 bits per flow.
    pub offset: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub len: u32,
    pub ifindex: u32,
    pub netns: u32,
    pub cpu: u16,
    pub layer: Layer,
    pub flags: u8,
}

/// Identifies the observer run a stream comes from; always the first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub host: String,
    pub session: String,
    pub observer_version: String,
    pub boot_id: String,
    /// Sampling period in bytes of sequence space (a power of two).
    pub sample_size: u64,
    /// Interfaces the observer attached to.
    pub interfaces: Vec<Interface>,
    /// Network namespaces (inode numbers) whose traffic this observer records.
    pub netns: Vec<u32>,
    /// Host clock when the observer started, nanoseconds.
    pub started_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub ifindex: u32,
    pub name: String,
    pub netns: u32,
    /// How the ingress program is attached: "xdp-native", "xdp-generic" or "tc".
    pub ingress_mode: String,
}

/// Periodic counters of an observer run; counters are cumulative since the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Stats {
    pub ts_ns: u64,
    pub layers: Vec<LayerStats>,
    /// Records written to the stream so far.
    pub records_sent: u64,
    /// Records dropped in user space because the outgoing buffer was full.
    pub records_dropped: u64,
    /// CPU used by the observer process since the previous stats frame, percent of one core.
    pub cpu_percent: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStats {
    pub layer: Layer,
    pub seen: u64,
    pub sampled: u64,
    pub ringbuf_full: u64,
    pub rate_limited: u64,
}

/// The last frame of a run that ended cleanly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    pub records_total: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello(Hello),
    Samples {
        first_seq: u64,
        samples: Vec<Sample>,
    },
    Stats(Stats),
    Bye(Bye),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {0:02x?} (not a latplan record stream, or out of sync)")]
    BadMagic([u8; 4]),
    #[error("unsupported wire version {0} (this build reads version {WIRE_VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("frame checksum mismatch (corrupted payload)")]
    Checksum,
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("malformed samples payload: {0}")]
    Samples(String),
    #[error("malformed JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    #[error("failed to read the record stream: {0}")]
    Io(#[from] io::Error),
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_SIZE]);
        let kind = match self {
            Frame::Hello(h) => json_into(out, h, KIND_HELLO),
            Frame::Stats(s) => json_into(out, s, KIND_STATS),
            Frame::Bye(b) => json_into(out, b, KIND_BYE),
            Frame::Samples { first_seq, samples } => {
                out.extend_from_slice(&first_seq.to_le_bytes());
                out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                for s in samples {
                    encode_sample(s, out);
                }
                KIND_SAMPLES
            }
        };
        let payload_len = out.len() - start - HEADER_SIZE;
        let crc = crc32fast::hash(&out[start + HEADER_SIZE..]);
        let h = &mut out[start..start + HEADER_SIZE];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = WIRE_VERSION;
        h[5] = kind;
        h[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
        h[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decodes one frame from the start of `buf`; returns it and the bytes consumed.
    /// `Err(Truncated)` means more bytes are needed.
    pub fn decode(buf: &[u8]) -> Result<(Frame, usize), WireError> {
        let header = parse_header(buf)?;
        let total = HEADER_SIZE + header.len;
        if buf.len() < total {
            return Err(WireError::Truncated {
                need: total,
                have: buf.len(),
            });
        }
        let payload = &buf[HEADER_SIZE..total];
        if crc32fast::hash(payload) != header.crc {
            return Err(WireError::Checksum);
        }
        Ok((decode_payload(header.kind, payload)?, total))
    }
}

struct Header {
    kind: u8,
    len: usize,
    crc: u32,
}

fn parse_header(buf: &[u8]) -> Result<Header, WireError> {
    if buf.len() < HEADER_SIZE {
        return Err(WireError::Truncated {
            need: HEADER_SIZE,
            have: buf.len(),
        });
    }
    let magic: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if buf[4] != WIRE_VERSION {
        return Err(WireError::Version(buf[4]));
    }
    let kind = buf[5];
    if !(KIND_HELLO..=KIND_BYE).contains(&kind) {
        return Err(WireError::Kind(kind));
    }
    let len = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge(len));
    }
    let crc = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes"));
    Ok(Header { kind, len, crc })
}

fn json_into<T: Serialize>(out: &mut Vec<u8>, value: &T, kind: u8) -> u8 {
    serde_json::to_writer(&mut *out, value).expect("wire JSON types always serialize");
    kind
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame, WireError> {
    Ok(match kind {
        KIND_HELLO => Frame::Hello(serde_json::from_slice(payload)?),
        KIND_STATS => Frame::Stats(serde_json::from_slice(payload)?),
        KIND_BYE => Frame::Bye(serde_json::from_slice(payload)?),
        KIND_SAMPLES => decode_samples(payload)?,
        other => return Err(WireError::Kind(other)),
    })
}

fn decode_samples(p: &[u8]) -> Result<Frame, WireError> {
    if p.len() < SAMPLES_PREFIX {
        return Err(WireError::Samples(format!(
            "{} bytes is shorter than the batch prefix",
            p.len()
        )));
    }
    let first_seq = u64::from_le_bytes(p[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(p[8..12].try_into().expect("4 bytes")) as usize;
    let body = &p[SAMPLES_PREFIX..];
    if body.len() != count * SAMPLE_WIRE_SIZE {
        return Err(WireError::Samples(format!(
            "batch says {count} records but carries {} bytes (expected {})",
            body.len(),
            count * SAMPLE_WIRE_SIZE
        )));
    }
    let samples = body
        .chunks_exact(SAMPLE_WIRE_SIZE)
        .map(decode_sample)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Frame::Samples { first_seq, samples })
}

fn encode_sample(s: &Sample, out: &mut Vec<u8>) {
    out.extend_from_slice(&s.ts_ns.to_le_bytes());
    out.extend_from_slice(&s.offset.to_le_bytes());
    out.extend_from_slice(&s.saddr);
    out.extend_from_slice(&s.daddr);
    out.extend_from_slice(&s.sport.to_le_bytes());
    out.extend_from_slice(&s.dport.to_le_bytes());
    out.extend_from_slice(&s.len.to_le_bytes());
    out.extend_from_slice(&s.ifindex.to_le_bytes());
    out.extend_from_slice(&s.netns.to_le_bytes());
    out.extend_from_slice(&s.cpu.to_le_bytes());
    out.push(s.layer as u8);
    out.push(s.flags);
    out.extend_from_slice(&[0u8; 4]);
}

fn decode_sample(b: &[u8]) -> Result<Sample, WireError> {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let layer = Layer::from_u8(b[66])
        .ok_or_else(|| WireError::Samples(format!("unknown layer {}", b[66])))?;
    Ok(Sample {
        ts_ns: u64_at(0),
        offset: u64_at(8),
        saddr: b[16..32].try_into().expect("16 bytes"),
        daddr: b[32..48].try_into().expect("16 bytes"),
        sport: u16_at(48),
        dport: u16_at(50),
        len: u32_at(52),
        ifindex: u32_at(56),
        netns: u32_at(60),
        cpu: u16_at(64),
        layer,
        flags: b[67],
    })
}

/// Reads frames from a byte stream (an SSH channel, a file).
///
/// On a corrupted frame it reports the error once and then resynchronises on the next magic, so
/// one bad frame does not end the stream; the collector sees the gap in record sequence numbers.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    /// Bytes skipped while resynchronising after corruption.
    pub skipped_bytes: u64,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::with_capacity(1 << 16),
            start: 0,
            eof: false,
            skipped_bytes: 0,
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream. After an `Err` other than `Io`, the
    /// reader has skipped past the bad bytes and the next call continues with the following frame.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            let avail = &self.buf[self.start..];
            match Frame::decode(avail) {
                Ok((frame, used)) => {
                    self.start += used;
                    return Ok(Some(frame));
                }
                Err(WireError::Truncated { .. }) if !self.eof => self.fill()?,
                Err(WireError::Truncated { need, have }) => {
                    if have == 0 {
                        return Ok(None);
                    }
                    self.skipped_bytes += have as u64;
                    self.start = self.buf.len();
                    return Err(WireError::Truncated { need, have });
                }
                Err(e) => {
                    self.resync();
                    return Err(e);
                }
            }
        }
    }

    fn fill(&mut self) -> Result<(), WireError> {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + (1 << 16), 0);
        let n = loop {
            match self.inner.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e.into());
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Skips at least one byte, then up to the next occurrence of the magic.
    fn resync(&mut self) {
        let from = self.start + 1;
        let next = self.buf[from.min(self.buf.len())..]
            .windows(MAGIC.len())
            .position(|w| w == MAGIC)
            .map(|p| from + p)
            .unwrap_or(
                self.buf
                    .len()
                    .saturating_sub(MAGIC.len() - 1)
                    .max(from.min(self.buf.len())),
            );
        self.skipped_bytes += (next - self.start) as u64;
        self.start = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> Sample {
        Sample {
            ts_ns: 1_000 + i,
            offset: (1 << 33) + i * 4096,
            saddr: [1; 16],
            daddr: [2; 16],
            sport: 40000,
            dport: 5201,
            len: 1448,
            ifindex: 7,
            netns: 4026531840,
            cpu: 1,
            layer: Layer::DevRecv,
            flags: 1,
        }
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                host: "metal1".into(),
                session: "s1".into(),
                observer_version: "0.1.0".into(),
                boot_id: "b".into(),
                sample_size: 4096,
                interfaces: vec![Interface {
                    ifindex: 7,
                    name: "eth0".into(),
                    netns: 1,
                    ingress_mode: "xdp-native".into(),
                }],
                netns: vec![1],
                started_ns: 5,
            }),
            Frame::Samples {
                first_seq: 10,
                samples: (0..3).map(sample).collect(),
            },
            Frame::Stats(Stats {
                ts_ns: 9,
                records_sent: 3,
                ..Default::default()
            }),
            Frame::Bye(Bye {
                records_total: 3,
                reason: "sigterm".into(),
            }),
        ]
    }

    #[test]
    fn frames_round_trip() {
        for f in frames() {
            let bytes = f.encode();
            let (back, used) = Frame::decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
        }
    }

    #[test]
    fn sample_batch_has_documented_size() {
        let f = Frame::Samples {
            first_seq: 0,
            samples: (0..5).map(sample).collect(),
        };
        assert_eq!(
            f.encode().len(),
            HEADER_SIZE + SAMPLES_PREFIX + 5 * SAMPLE_WIRE_SIZE
        );
    }

    #[test]
    fn corruption_is_detected_and_reader_resyncs() {
        let mut stream = Vec::new();
        for f in frames() {
            f.encode_into(&mut stream);
        }
        let second = frames()[0].encode().len();
        stream[second + HEADER_SIZE + 3] ^= 0xff; // flip a payload byte of the samples frame
        let mut r = FrameReader::new(&stream[..]);
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Hello(_))));
        assert!(matches!(r.next_frame(), Err(WireError::Checksum)));
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Stats(_))));
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Bye(_))));
        assert!(r.next_frame().unwrap().is_none());
        assert!(r.skipped_bytes > 0);
    }

    #[test]
    fn truncated_stream_ends_with_an_error_not_a_panic() {
        let bytes = frames()[1].encode();
        for cut in 1..bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut]);
            assert!(r.next_frame().is_err(), "cut at {cut}");
            assert!(r.next_frame().unwrap().is_none());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: a xorshift stream of bytes, with magics sprinkled in.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for round in 0..200 {
            let mut data = Vec::new();
            for i in 0..(round * 7 % 300) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push(x as u8);
                if i % 50 == 0 {
                    data.extend_from_slice(&MAGIC);
                    data.push(WIRE_VERSION);
                }
            }
            let mut r = FrameReader::new(&data[..]);
            for _ in 0..1000 {
                match r.next_frame() {
                    Ok(None) => break,
                    _ => continue,
                }
            }
        }
    }
}
