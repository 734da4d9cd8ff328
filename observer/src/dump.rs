//! `observer dump`: decodes a recorded stream for people (text) and scripts (JSON lines).
use anyhow::{Context, Result};
use latplan_common::wire::{Frame, FrameReader};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr};

pub fn dump(input: Box<dyn Read>, json: bool, out: &mut dyn Write) -> Result<()> {
    let mut r = FrameReader::new(input);
    let mut bad = 0u64;
    loop {
        match r.next_frame() {
            Ok(None) => break,
            Ok(Some(f)) => write_frame(&f, json, out)?,
            Err(e) => {
                bad += 1;
                eprintln!("dump: skipping a bad frame: {e}");
            }
        }
    }
    out.flush()?;
    if bad > 0 {
        anyhow::bail!(
            "{bad} bad frame(s) in the stream ({} bytes skipped)",
            r.skipped_bytes
        );
    }
    Ok(())
}

fn addr(a: &[u8; 16]) -> String {
    let v6 = Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4).to_string(),
        None => v6.to_string(),
    }
}

fn write_frame(f: &Frame, json: bool, out: &mut dyn Write) -> Result<()> {
    if json {
        let v = match f {
            Frame::Hello(h) => serde_json::json!({"hello": h}),
            Frame::Stats(s) => serde_json::json!({"stats": s}),
            Frame::Bye(b) => serde_json::json!({"bye": b}),
            Frame::Samples { first_seq, samples } => {
                for (i, s) in samples.iter().enumerate() {
                    let mut v = serde_json::to_value(s)?;
                    v["record_seq"] = (first_seq + i as u64).into();
                    v["saddr"] = addr(&s.saddr).into();
                    v["daddr"] = addr(&s.daddr).into();
                    writeln!(out, "{}", serde_json::json!({ "sample": v }))
                        .context("failed to write output")?;
                }
                return Ok(());
            }
        };
        writeln!(out, "{v}").context("failed to write output")?;
        return Ok(());
    }
    match f {
        Frame::Hello(h) => writeln!(
            out,
            "hello host={} session={} sample_size={} interfaces={:?} netns={:?}",
            h.host,
            h.session,
            h.sample_size,
            h.interfaces
                .iter()
                .map(|i| format!("{}:{}", i.name, i.ingress_mode))
                .collect::<Vec<_>>(),
            h.netns
        )?,
        Frame::Stats(s) => {
            write!(
                out,
                "stats ts={} sent={} dropped={} cpu={:.1}%",
                s.ts_ns, s.records_sent, s.records_dropped, s.cpu_percent
            )?;
            for l in &s.layers {
                if l.seen > 0 {
                    write!(
                        out,
                        " {}:seen={},sampled={},full={},ratelim={}",
                        l.layer.name(),
                        l.seen,
                        l.sampled,
                        l.ringbuf_full,
                        l.rate_limited
                    )?;
                }
            }
            writeln!(out)?;
        }
        Frame::Bye(b) => writeln!(out, "bye records={} reason={}", b.records_total, b.reason)?,
        Frame::Samples { first_seq, samples } => {
            for (i, s) in samples.iter().enumerate() {
                writeln!(
                    out,
                    "#{} {} {} {}:{} -> {}:{} off={} len={} if={} netns={} cpu={} flags={}",
                    first_seq + i as u64,
                    s.ts_ns,
                    s.layer.name(),
                    addr(&s.saddr),
                    s.sport,
                    addr(&s.daddr),
                    s.dport,
                    s.offset,
                    s.len,
                    s.ifindex,
                    s.netns,
                    s.cpu,
                    s.flags
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use latplan_common::Layer;
    use latplan_common::wire::{Bye, Sample};

    #[test]
    fn samples_dump_as_text_and_json_lines() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[10, 78, 0, 1]);
        let s = Sample {
            ts_ns: 5,
            offset: 1 << 32,
            saddr: a,
            daddr: a,
            sport: 1,
            dport: 5201,
            len: 1448,
            ifindex: 3,
            netns: 9,
            cpu: 0,
            layer: Layer::DevSend,
            flags: 0,
        };
        let mut stream = Vec::new();
        Frame::Samples {
            first_seq: 7,
            samples: vec![s],
        }
        .encode_into(&mut stream);
        Frame::Bye(Bye {
            records_total: 8,
            reason: "signal".into(),
        })
        .encode_into(&mut stream);
        let mut text = Vec::new();
        dump(
            Box::new(std::io::Cursor::new(stream.clone())),
            false,
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("#7 5 dev_send 10.78.0.1:1 -> 10.78.0.1:5201"),
            "{text}"
        );
        let mut js = Vec::new();
        dump(Box::new(std::io::Cursor::new(stream)), true, &mut js).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8(js).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["sample"]["record_seq"], 7);
        assert_eq!(first["sample"]["layer"], "dev_send");
    }

    #[test]
    fn garbage_is_reported_not_panicked() {
        let mut out = Vec::new();
        assert!(
            dump(
                Box::new(std::io::Cursor::new(b"LPLN\x01garbage".to_vec())),
                false,
                &mut out
            )
            .is_err()
        );
    }
}
