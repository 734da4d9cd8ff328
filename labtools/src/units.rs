//! Parsing of the human-written quantities the lab tools take: durations ("3ms"), sizes ("64K"),
//! rates ("10M" per second) and loss rates ("10%").
use anyhow::{Context, Result, bail};

/// Splits "2.5ms" into (2.5, "ms").
fn split_number(s: &str) -> Result<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let v: f64 = num
        .parse()
        .with_context(|| format!("invalid number in {s:?}"))?;
    if !v.is_finite() || v < 0.0 {
        bail!("{s:?} must be a non-negative number");
    }
    Ok((v, unit.trim()))
}

/// Parses a duration into nanoseconds: "3ms", "2.5ms", "100us", "1500ns", "2s"; a bare "0" is zero.
pub fn parse_duration_ns(s: &str) -> Result<u64> {
    let (v, unit) = split_number(s)?;
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "" if v == 0.0 => 0.0,
        "" => bail!("duration {s:?} needs a unit (ns, us, ms, s)"),
        other => bail!("unknown duration unit {other:?} in {s:?}"),
    };
    Ok((v * scale).round() as u64)
}

/// Parses a byte count: "1500", "64K", "10M", "1G" (binary multiples; a trailing "B" or "iB" is allowed).
pub fn parse_size(s: &str) -> Result<u64> {
    let (v, unit) = split_number(s)?;
    let unit = unit.trim_end_matches("iB").trim_end_matches('B');
    let scale: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1024.0,
        "m" | "M" => 1024.0 * 1024.0,
        "g" | "G" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown size unit {other:?} in {s:?}"),
    };
    Ok((v * scale).round() as u64)
}

/// Parses a loss rate as a fraction in [0, 1]: "10%" or "0.1".
pub fn parse_fraction(s: &str) -> Result<f64> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => {
            p.trim()
                .parse::<f64>()
                .with_context(|| format!("invalid percentage {s:?}"))?
                / 100.0
        }
        None => s
            .parse::<f64>()
            .with_context(|| format!("invalid fraction {s:?}"))?,
    };
    if !(0.0..=1.0).contains(&v) {
        bail!("loss rate {s:?} must be within 0..100% (or 0..1)");
    }
    Ok(v)
}

/// Formats nanoseconds the way [`parse_duration_ns`] reads them back.
pub fn format_duration_ns(ns: u64) -> String {
    if ns == 0 {
        "0ms".into()
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("3ms").unwrap(), 3_000_000);
        assert_eq!(parse_duration_ns("2.5ms").unwrap(), 2_500_000);
        assert_eq!(parse_duration_ns("100us").unwrap(), 100_000);
        assert_eq!(parse_duration_ns("1500ns").unwrap(), 1_500);
        assert_eq!(parse_duration_ns("2s").unwrap(), 2_000_000_000);
        assert_eq!(parse_duration_ns("0").unwrap(), 0);
        assert!(parse_duration_ns("3").is_err());
        assert!(parse_duration_ns("3h").is_err());
        assert!(parse_duration_ns("-1ms").is_err());
        for ns in [0, 3_000_000, 250_000, 1_234] {
            assert_eq!(parse_duration_ns(&format_duration_ns(ns)).unwrap(), ns);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1500").unwrap(), 1500);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2KB").unwrap(), 2048);
        assert!(parse_size("1T").is_err());
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("10%").unwrap(), 0.1);
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        assert_eq!(parse_fraction("0%").unwrap(), 0.0);
        assert!(parse_fraction("150%").is_err());
        assert!(parse_fraction("x").is_err());
    }
}
