//! Measuring how fast this machine reads memory, the bound of decode at batch 1.

use std::time::Instant;

use crate::parallel::ThreadPool;

/// Best read bandwidth in bytes per second over `passes` sums of a buffer of
/// `bytes` (much larger than the caches), read by `threads` threads of `pool`.
pub fn read_bandwidth(pool: &ThreadPool, bytes: usize, passes: usize, threads: usize) -> f64 {
    let words = (bytes / 8).max(1 << 16);
    // Written, not zeroed: untouched zero pages all map one physical page.
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        pool.run_on_threads(threads, |i, n| {
            let per = words.div_ceil(n);
            let part = &buf[(i * per).min(words)..((i + 1) * per).min(words)];
            std::hint::black_box(sum(part));
        });
        let secs = start.elapsed().as_secs_f64();
        best = best.max((words * 8) as f64 / secs);
    }
    best
}

/// Eight independent sums, so loads, not the add chain, set the pace.
fn sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_word() {
        let v: Vec<u64> = (1..=1001).collect();
        assert_eq!(super::sum(&v), 1001 * 1002 / 2);
    }
}
