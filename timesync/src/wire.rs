//! The probe's UDP payload, shared with the kernel programs (`observer-ebpf/src/bin/timesync.rs`
//! mirrors these offsets; the `BPF_PROG_TEST_RUN` tests hold the two together).
//!
//! All fields are big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"LPTS"` |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | kind: 1 probe, 2 reply |
//! | 6 | 2 | reserved, zero |
//! | 8 | 8 | session token |
//! | 16 | 8 | probe id (chosen by the prober) |
//! | 24 | 8 | t2: reflector receive stamp (its `clock_ns()`), zero in a probe |
//! | 32 | 8 | t3: reflector transmit stamp, zero in a probe |
//! | 40 | 8 | reserved, zero |
use anyhow::{Context, bail};

/// The UDP port reflectors answer on (probes go to it, replies come from it).
pub const DEFAULT_PORT: u16 = 31999;
pub const PAYLOAD_LEN: usize = 48;
pub const MAGIC: u32 = 0x4c50_5453;
pub const VERSION: u8 = 1;
pub const KIND_PROBE: u8 = 1;
pub const KIND_REPLY: u8 = 2;

/// Builds the payload of probe `id` for a session `token`.
pub fn encode_probe(token: u64, id: u64) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    p[4] = VERSION;
    p[5] = KIND_PROBE;
    p[8..16].copy_from_slice(&token.to_be_bytes());
    p[16..24].copy_from_slice(&id.to_be_bytes());
    p
}

/// A reflector's answer to one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub token: u64,
    pub id: u64,
    /// Reflector receive stamp (reflector clock).
    pub t2: u64,
    /// Reflector transmit stamp (reflector clock).
    pub t3: u64,
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Parses a reply; `None` for anything that is not a latplan reply (foreign traffic).
pub fn decode_reply(p: &[u8]) -> Option<Reply> {
    if p.len() != PAYLOAD_LEN
        || u32::from_be_bytes(p[0..4].try_into().ok()?) != MAGIC
        || p[4] != VERSION
        || p[5] != KIND_REPLY
    {
        return None;
    }
    Some(Reply {
        token: be64(&p[8..]),
        id: be64(&p[16..]),
        t2: be64(&p[24..]),
        t3: be64(&p[32..]),
    })
}

/// Parses a session token: 1 to 16 hex digits (an optional `0x` prefix allowed), not zero.
pub fn parse_token(s: &str) -> anyhow::Result<u64> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    if digits.is_empty() || digits.len() > 16 {
        bail!("token {s:?} must be 1 to 16 hex digits");
    }
    let v = u64::from_str_radix(digits, 16).with_context(|| format!("token {s:?} is not hex"))?;
    if v == 0 {
        bail!("token must not be zero");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_round_trips_and_probes_are_not_replies() {
        let mut p = encode_probe(0xabcd, 42);
        assert_eq!(decode_reply(&p), None);
        p[5] = KIND_REPLY;
        p[24..32].copy_from_slice(&7u64.to_be_bytes());
        p[32..40].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            decode_reply(&p),
            Some(Reply {
                token: 0xabcd,
                id: 42,
                t2: 7,
                t3: 9
            })
        );
        assert_eq!(decode_reply(&p[..40]), None);
        p[0] = 0;
        assert_eq!(decode_reply(&p), None);
    }

    #[test]
    fn tokens_are_hex() {
        assert_eq!(parse_token("0x1f").unwrap(), 0x1f);
        assert_eq!(
            parse_token("deadbeefcafef00d").unwrap(),
            0xdead_beef_cafe_f00d
        );
        assert!(parse_token("").is_err());
        assert!(parse_token("0").is_err());
        assert!(parse_token("xyz").is_err());
        assert!(parse_token("11112222333344445").is_err());
    }
}
