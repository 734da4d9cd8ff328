//! Clocks and precise sleeping for the release queues.
use std::io;

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds: what due times are kept in.
pub fn mono_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds: the clock of the kernel's SO_TIMESTAMPNS receive stamps.
pub fn real_ns() -> u64 {
    now(libc::CLOCK_REALTIME)
}

/// Sleeps until `due` (CLOCK_MONOTONIC ns): an absolute clock_nanosleep to `spin_ns` before it,
/// then a busy wait, because a timer wake-up alone is late by tens of microseconds on a busy machine.
pub fn sleep_until(due: u64, spin_ns: u64) {
    let wake = due.saturating_sub(spin_ns);
    while mono_ns() < wake {
        let ts = libc::timespec {
            tv_sec: (wake / 1_000_000_000) as _,
            tv_nsec: (wake % 1_000_000_000) as _,
        };
        // SAFETY: plain syscall on a timespec we own; EINTR just loops.
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
    }
    while mono_ns() < due {
        std::hint::spin_loop();
    }
}

/// Timer slack defaults to 50 µs for normal threads; the relay wants its wake-ups on time.
pub fn tighten_timer_slack() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Puts the calling thread under SCHED_FIFO so builds on the same cores do not delay frames.
pub fn make_realtime(priority: i32) -> io::Result<()> {
    // Zeroed first: musl's sched_param has more fields than glibc's.
    // SAFETY: sched_param is plain integers; all-zero is valid.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = priority;
    // SAFETY: pid 0 is the calling thread; param lives across the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_wakes_early() {
        for delay in [0u64, 10_000, 200_000, 1_000_000] {
            let due = mono_ns() + delay;
            sleep_until(due, 20_000);
            assert!(mono_ns() >= due);
        }
    }
}
