//! Signed latency distributions and time series.
//!
//! HdrHistogram records unsigned values, and latencies here are signed (a cross-host segment can
//! come out negative within the clock sync error). So a distribution keeps two histograms, one
//! for the magnitudes of negative values and one for the rest, and answers quantiles over their
//! union. Minimum, maximum and mean are kept exactly beside them.
use hdrhistogram::Histogram;
use serde::Serialize;

/// Three significant digits: a reported percentile is within 0.1% of the true value.
const SIGFIG: u8 = 3;

#[derive(Debug, Clone)]
pub struct SignedHist {
    pos: Histogram<u32>,
    neg: Histogram<u32>,
    n: u64,
    sum: i128,
    min: i64,
    max: i64,
}

impl Default for SignedHist {
    fn default() -> Self {
        SignedHist {
            pos: Histogram::new(SIGFIG).expect("3 significant digits is a valid precision"),
            neg: Histogram::new(SIGFIG).expect("3 significant digits is a valid precision"),
            n: 0,
            sum: 0,
            min: i64::MAX,
            max: i64::MIN,
        }
    }
}

impl SignedHist {
    pub fn record(&mut self, v: i64) {
        // Auto-resizing histograms accept any u64, so recording cannot fail.
        if v < 0 {
            let _ = self.neg.record(v.unsigned_abs());
        } else {
            let _ = self.pos.record(v as u64);
        }
        self.n += 1;
        self.sum += v as i128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn add(&mut self, other: &SignedHist) {
        let _ = self.pos.add(&other.pos);
        let _ = self.neg.add(&other.neg);
        self.n += other.n;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The value of rank ⌈q·n⌉ (1-based), within HdrHistogram's precision, clamped to the exact
    /// minimum and maximum (so a constant delay reads back exactly).
    pub fn quantile(&self, q: f64) -> Option<i64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let neg_n = self.neg.len();
        let v = if rank <= neg_n {
            // The most negative value has the largest magnitude: rank r among negatives is the
            // (neg_n − r + 1)-th smallest magnitude.
            -(at_rank(&self.neg, neg_n - rank + 1) as i64)
        } else {
            at_rank(&self.pos, rank - neg_n) as i64
        };
        Some(v.clamp(self.min, self.max))
    }

    pub fn min(&self) -> Option<i64> {
        (self.n > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<i64> {
        (self.n > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum as f64 / self.n as f64)
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.n,
            min_ns: self.min(),
            p50_ns: self.quantile(0.5),
            p90_ns: self.quantile(0.9),
            p99_ns: self.quantile(0.99),
            max_ns: self.max(),
            mean_ns: self.mean(),
        }
    }

    /// Points of the empirical CDF, at most `points` of them, for plotting.
    pub fn cdf(&self, points: usize) -> Vec<(i64, f64)> {
        if self.n == 0 || points == 0 {
            return Vec::new();
        }
        (1..=points)
            .map(|i| {
                let q = i as f64 / points as f64;
                (self.quantile(q).unwrap_or(0), q)
            })
            .collect()
    }
}

/// The value at 1-based rank `k` of one unsigned histogram.
fn at_rank(h: &Histogram<u32>, k: u64) -> u64 {
    // (k − ½)/n keeps ⌈q·n⌉ at k despite floating-point rounding.
    h.value_at_quantile((k as f64 - 0.5) / h.len() as f64)
}

/// A distribution in numbers, nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Summary {
    pub count: u64,
    pub min_ns: Option<i64>,
    pub p50_ns: Option<i64>,
    pub p90_ns: Option<i64>,
    pub p99_ns: Option<i64>,
    pub max_ns: Option<i64>,
    pub mean_ns: Option<f64>,
}

/// One time bin of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Bin {
    pub count: u64,
    pub sum_ns: f64,
    pub min_ns: i64,
    pub max_ns: i64,
}

/// Values over time in fixed-width bins from `start_ns` (manager timeline).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub start_ns: i64,
    pub bin_ns: i64,
    pub bins: Vec<Bin>,
}

impl Series {
    pub fn new(start_ns: i64, end_ns: i64, nbins: usize) -> Series {
        let span = (end_ns - start_ns).max(1);
        let bin_ns = (span / nbins as i64 + 1).max(1);
        Series {
            start_ns,
            bin_ns,
            bins: vec![Bin::default(); nbins],
        }
    }

    pub fn bin_of(&self, t: i64) -> usize {
        (((t - self.start_ns).max(0) / self.bin_ns) as usize).min(self.bins.len().saturating_sub(1))
    }

    pub fn record(&mut self, t: i64, v: i64) {
        if self.bins.is_empty() {
            return;
        }
        let i = self.bin_of(t);
        let b = &mut self.bins[i];
        if b.count == 0 {
            b.min_ns = v;
            b.max_ns = v;
        } else {
            b.min_ns = b.min_ns.min(v);
            b.max_ns = b.max_ns.max(v);
        }
        b.count += 1;
        b.sum_ns += v as f64;
    }

    /// (bin start relative to `origin`, mean) for the non-empty bins.
    pub fn means(&self, origin: i64) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.bins
            .iter()
            .enumerate()
            .filter(|(_, b)| b.count > 0)
            .map(move |(i, b)| {
                (
                    self.start_ns + i as i64 * self.bin_ns - origin,
                    b.sum_ns / b.count as f64,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_values_read_back_exactly() {
        let mut h = SignedHist::default();
        for _ in 0..1000 {
            h.record(3_000_123);
        }
        let s = h.summary();
        assert_eq!(
            (s.p50_ns, s.p99_ns, s.max_ns, s.min_ns),
            (
                Some(3_000_123),
                Some(3_000_123),
                Some(3_000_123),
                Some(3_000_123)
            )
        );
    }

    #[test]
    fn quantiles_span_negative_and_positive_values() {
        let mut h = SignedHist::default();
        for v in -50..50 {
            h.record(v * 1000);
        }
        assert_eq!(h.quantile(0.0), Some(-50_000));
        assert_eq!(h.quantile(0.01), Some(-50_000));
        let near = |q: f64, v: f64| {
            let x = h.quantile(q).unwrap() as f64;
            assert!((x - v).abs() <= v.abs() * 1e-3, "q{q}: {x} vs {v}");
        };
        near(0.02, -49_000.0);
        near(0.5, -1000.0);
        assert_eq!(h.quantile(0.51), Some(0));
        assert_eq!(h.quantile(1.0), Some(49_000));
        assert_eq!(h.mean(), Some(-500.0));
    }

    #[test]
    fn percentiles_stay_within_a_tenth_of_a_percent() {
        let mut h = SignedHist::default();
        for v in 1..=100_000i64 {
            h.record(v * 37);
        }
        let p90 = h.quantile(0.9).unwrap() as f64;
        assert!((p90 / (90_000.0 * 37.0) - 1.0).abs() < 1e-3, "{p90}");
    }

    #[test]
    fn series_bins_by_time() {
        let mut s = Series::new(1000, 2000, 10);
        s.record(1000, 5);
        s.record(1050, 7);
        s.record(5000, 1);
        let m: Vec<_> = s.means(1000).collect();
        assert_eq!(m[0], (0, 6.0));
        assert_eq!(m.last().unwrap().1, 1.0);
    }
}
