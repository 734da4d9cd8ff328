//! Live tracking of one observer run's record sequence numbers: which arrived, which were
//! already seen (duplicates), which are missing so far. The store's gap scan at the end is the
//! authoritative answer; this gives the progress display and the log the same answer as it happens.

/// Disjoint, sorted half-open ranges of sequence numbers received.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    ranges: Vec<(u64, u64)>,
    received: u64,
}

/// What adding a batch changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Records not seen before.
    pub new: u64,
    /// Records already seen (re-delivered).
    pub duplicate: u64,
    /// Records newly known to be missing: the batch started past the end of what had arrived.
    pub opened_gap: Option<(u64, u64)>,
}

impl SeqTracker {
    /// Notes records `[first, first + count)`.
    pub fn add(&mut self, first: u64, count: u64) -> Arrival {
        if count == 0 {
            return Arrival::default();
        }
        let (start, end) = (first, first.saturating_add(count));
        let old_end = self.end();
        let opened_gap = (start > old_end).then_some((old_end, start));
        // Ranges overlapping or touching [start, end) merge into one.
        let lo = self.ranges.partition_point(|r| r.1 < start);
        let hi = self.ranges.partition_point(|r| r.0 <= end);
        let overlap: u64 = self.ranges[lo..hi]
            .iter()
            .map(|r| r.1.min(end).saturating_sub(r.0.max(start)))
            .sum();
        let merged = self.ranges[lo..hi]
            .iter()
            .fold((start, end), |(a, b), r| (a.min(r.0), b.max(r.1)));
        self.ranges.splice(lo..hi, [merged]);
        let new = count - overlap;
        self.received += new;
        Arrival {
            new,
            duplicate: overlap,
            opened_gap,
        }
    }

    /// One past the highest sequence number received (0 if none).
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Records below [`Self::end`] not received (yet).
    pub fn missing(&self) -> u64 {
        self.end() - self.received
    }

    /// The missing ranges below [`Self::end`].
    pub fn holes(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut prev = 0;
        for r in &self.ranges {
            if r.0 > prev {
                out.push((prev, r.0));
            }
            prev = r.1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_arrival_keeps_one_range() {
        let mut t = SeqTracker::default();
        for i in 0..100 {
            assert_eq!(
                t.add(i * 10, 10),
                Arrival {
                    new: 10,
                    duplicate: 0,
                    opened_gap: None
                }
            );
        }
        assert_eq!((t.end(), t.received(), t.missing()), (1000, 1000, 0));
        assert_eq!(t.ranges.len(), 1);
    }

    #[test]
    fn gaps_open_and_late_records_fill_them() {
        let mut t = SeqTracker::default();
        t.add(0, 10);
        assert_eq!(t.add(20, 10).opened_gap, Some((10, 20)));
        assert_eq!(t.holes(), vec![(10, 20)]);
        assert_eq!(t.missing(), 10);
        // A late (re-read) batch fills part of the hole.
        let a = t.add(12, 3);
        assert_eq!((a.new, a.duplicate, a.opened_gap), (3, 0, None));
        assert_eq!(t.holes(), vec![(10, 12), (15, 20)]);
        assert_eq!(t.missing(), 7);
        // A stream that starts late has a hole at the head.
        let mut h = SeqTracker::default();
        assert_eq!(h.add(5, 1).opened_gap, Some((0, 5)));
    }

    #[test]
    fn duplicates_are_counted_not_stored_twice() {
        let mut t = SeqTracker::default();
        t.add(0, 10);
        t.add(20, 10);
        let a = t.add(5, 20); // 5..10 and 20..25 seen before
        assert_eq!((a.new, a.duplicate), (10, 10));
        assert_eq!((t.received(), t.missing(), t.holes()), (30, 0, vec![]));
        assert_eq!(t.add(0, 30).duplicate, 30);
        assert_eq!(t.add(7, 0), Arrival::default());
    }
}
