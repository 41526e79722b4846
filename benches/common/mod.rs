//! What the framework-loading benchmarks share.

use std::time::Instant;

/// Runs timed by [`median_seconds`].
pub const RUNS: usize = 5;

/// Median seconds of `RUNS` runs of `f`, after a warm-up run.
pub fn median_seconds<T>(mut f: impl FnMut() -> T) -> f64 {
    std::hint::black_box(f());
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}
