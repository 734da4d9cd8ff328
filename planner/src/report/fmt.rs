//! Human-readable numbers shared by the table and the HTML report.

/// A signed duration in the unit that suits it: "850 ns", "12.3 µs", "3.001 ms", "1.20 s".
pub fn dur(ns: i64) -> String {
    let a = ns.unsigned_abs() as f64;
    let sign = if ns < 0 { "-" } else { "" };
    if a < 1e3 {
        format!("{sign}{a:.0} ns")
    } else if a < 1e6 {
        format!("{sign}{:.1} µs", a / 1e3)
    } else if a < 1e9 {
        format!("{sign}{:.3} ms", a / 1e6)
    } else {
        format!("{sign}{:.2} s", a / 1e9)
    }
}

pub fn opt_dur(ns: Option<i64>) -> String {
    ns.map_or_else(|| "–".to_string(), dur)
}

/// Bytes per second as bits per second with an SI prefix.
pub fn rate(bps: Option<f64>) -> String {
    let Some(b) = bps else { return "–".into() };
    let bits = b * 8.0;
    let (v, unit) = if bits >= 1e9 {
        (bits / 1e9, "Gbit/s")
    } else if bits >= 1e6 {
        (bits / 1e6, "Mbit/s")
    } else if bits >= 1e3 {
        (bits / 1e3, "kbit/s")
    } else {
        (bits, "bit/s")
    };
    format!("{v:.2} {unit}")
}

/// "±3.0 µs", or "–" within one clock domain (no sync error applies).
pub fn bound(ns: f64) -> String {
    if ns <= 0.0 {
        "–".into()
    } else {
        format!("±{}", dur(ns.round() as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_their_unit_and_keep_their_sign() {
        assert_eq!(dur(850), "850 ns");
        assert_eq!(dur(-12_345), "-12.3 µs");
        assert_eq!(dur(3_000_500), "3.001 ms");
        assert_eq!(dur(1_200_000_000), "1.20 s");
        assert_eq!(rate(Some(65_536_000.0)), "524.29 Mbit/s");
        assert_eq!(bound(0.0), "–");
        assert_eq!(bound(10_000.0), "±10.0 µs");
    }
}
