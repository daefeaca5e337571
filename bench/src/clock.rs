//! One clock for every process of a run: `CLOCK_MONOTONIC`, which all processes on a machine
//! share, so a worker's receipt instant and the coordinator's COMMIT-return instant subtract.
//! (`std::time::Instant` reads the same clock on Linux but hides its value.)

use rustix::time::{ClockId, clock_gettime};

/// Nanoseconds on the machine's monotonic clock.
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    // Both fields are non-negative for CLOCK_MONOTONIC.
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
