//! Helpers shared by the observer's and timesync's kernel programs.
#![cfg_attr(target_arch = "bpf", no_std)]

/// The one clock every latplan kernel program stamps with (CLOCK_MONOTONIC), so that a timesync
/// fit maps observer timestamps straight onto the manager's timeline.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn clock_ns() -> u64 {
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}
