//! The one clock every timestamp in the load generator uses: `CLOCK_MONOTONIC` in microseconds.
//!
//! Devices stamp frames with it (`sent_us`), the sink stamps arrivals and downlinks with it
//! (`sink_us`), and devices stamp downlink arrivals with it. `CLOCK_MONOTONIC` is one clock for
//! the whole host (not per process), so worker processes, the sink and the devices agree, and it
//! never jumps with NTP or wall-clock changes. Values fit a JS number exactly (< 2^53), so the
//! decoders can carry them through `parseInt`.

/// Microseconds on the host's monotonic clock.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_microsecond_scaled() {
        let a = now_us();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = now_us();
        assert!(b >= a + 5_000, "a={a} b={b}");
        assert!(b < (1u64 << 53));
    }
}
