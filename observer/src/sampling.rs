//! Consistent sampling arithmetic (DESIGN.md §7), the user-space twin of `emit_range` in the
//! kernel programs: which bytes of a TCP range are sample points. Kept here so it can be tested
//! and documented; the eBPF code must compute the same (the BPF_PROG_TEST_RUN tests check it).

/// The sampling size actually used: a power of two. Returns the size and, when `requested` was
/// not one, a notice saying what it was rounded to (down, so sampling never gets sparser).
pub fn round_size(requested: u64) -> (u64, Option<String>) {
    let req = requested.clamp(1, 1 << 32);
    let size = if req.is_power_of_two() {
        req
    } else {
        1u64 << (63 - req.leading_zeros())
    };
    let notice = (size != requested).then(|| {
        format!("sampling size {requested} is not a power of two in [1, 2^32]; using {size}")
    });
    (size, notice)
}

/// `seq & mask == 0` marks a sample point.
pub fn mask_for(size: u64) -> u32 {
    (size - 1) as u32
}

/// The sample points (32-bit sequence numbers) in `[seq, seq + len)`, in order, modulo 2^32.
pub fn points(seq: u32, len: u32, mask: u32) -> impl Iterator<Item = u32> {
    let step = mask as u64 + 1;
    let first = (seq as u64 + mask as u64) & !(mask as u64);
    let start = first - seq as u64;
    (start..len as u64)
        .step_by(step as usize)
        .map(move |off| seq.wrapping_add(off as u32))
}

/// The level of a sample point: trailing zero bits of its index `seq >> log2(size)`. Points of
/// level ≥ l are a subset of points of level ≥ l-1, which is what keeps rate limiting consistent
/// across layers (docs/observer.md, "Rate limit").
pub fn level(seq: u32, mask: u32) -> u32 {
    let shift = 32 - mask.leading_zeros();
    let index = if shift >= 32 { 0 } else { seq >> shift };
    if index == 0 {
        32
    } else {
        index.trailing_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_down_to_powers_of_two_with_a_notice() {
        assert_eq!(round_size(65536), (65536, None));
        let (s, n) = round_size(72400);
        assert_eq!(s, 65536);
        assert!(n.unwrap().contains("72400"));
        assert_eq!(round_size(0).0, 1);
        assert_eq!(round_size(1 << 40).0, 1 << 32);
    }

    #[test]
    fn points_are_multiples_of_the_size_inside_the_range() {
        let mask = mask_for(4096);
        assert_eq!(points(0, 1, mask).collect::<Vec<_>>(), vec![0]);
        assert_eq!(points(1, 4095, mask).count(), 0);
        assert_eq!(points(1, 4096, mask).collect::<Vec<_>>(), vec![4096]);
        assert_eq!(
            points(4000, 10000, mask).collect::<Vec<_>>(),
            vec![4096, 8192, 12288]
        );
    }

    #[test]
    fn points_wrap_around_sequence_space() {
        let mask = mask_for(1 << 16);
        let v: Vec<u32> = points(u32::MAX - 100, 200, mask).collect();
        assert_eq!(v, vec![0]);
        let v: Vec<u32> = points(u32::MAX - (1 << 16), 1 << 17, mask).collect();
        assert_eq!(v, vec![u32::MAX - (1 << 16) + 1, 0]);
    }

    #[test]
    fn split_ranges_sample_the_same_points_as_the_whole() {
        // A write of 100 kB cut into segments of 1448 bytes samples the same bytes as the write.
        let mask = mask_for(8192);
        let base = u32::MAX - 50_000;
        let whole: Vec<u32> = points(base, 100_000, mask).collect();
        let mut parts = Vec::new();
        let mut off = 0;
        while off < 100_000 {
            let len = 1448.min(100_000 - off);
            parts.extend(points(base.wrapping_add(off), len, mask));
            off += len;
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn levels_nest() {
        let mask = mask_for(1024);
        assert_eq!(level(1024, mask), 0);
        assert_eq!(level(2048, mask), 1);
        assert_eq!(level(3 * 2048, mask), 1);
        assert_eq!(level(0, mask), 32);
        // Every point of level >= 2 has level >= 1.
        for i in 0..1000u32 {
            let s = i * 1024;
            if level(s, mask) >= 2 {
                assert!(level(s, mask) >= 1);
            }
        }
    }
}
