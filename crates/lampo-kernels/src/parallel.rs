//! Splitting work across threads.
//!
//! Scoped threads per call: simple and correct. A persistent pool with cheaper
//! synchronisation is the job of the CPU speed work.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of threads kernels use (0 means one per available core).
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The number of threads kernels use.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Runs `f` over `0..n` split into contiguous ranges, one per thread, each a
/// multiple of `align` long (except the last). Runs inline when the work is
/// too small to be worth a thread.
pub fn for_each_range(
    n: usize,
    align: usize,
    min_per_thread: usize,
    f: impl Fn(Range<usize>) + Sync,
) {
    let threads = threads().min(n.div_ceil(min_per_thread.max(1))).max(1);
    if threads == 1 {
        f(0..n);
        return;
    }
    let align = align.max(1);
    let per = n.div_ceil(threads).div_ceil(align) * align;
    std::thread::scope(|s| {
        let f = &f;
        let mut start = per.min(n);
        while start < n {
            let end = (start + per).min(n);
            s.spawn(move || f(start..end));
            start = end;
        }
        f(0..per.min(n));
    });
}

/// Splits `out` into `chunk`-long pieces and runs `f(index, piece)` on each,
/// the pieces spread across threads in contiguous runs.
pub fn for_each_chunk_mut(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let pieces = out.len() / chunk.max(1);
    let threads = threads().min(pieces).max(1);
    if threads == 1 {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
        return;
    }
    let per = pieces.div_ceil(threads);
    std::thread::scope(|s| {
        let f = &f;
        for (t, run) in out.chunks_mut(per * chunk).enumerate() {
            s.spawn(move || {
                for (i, c) in run.chunks_mut(chunk).enumerate() {
                    f(t * per + i, c);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn ranges_cover_everything_once() {
        for n in [0usize, 1, 5, 64, 1000] {
            let seen = Mutex::new(vec![0u32; n]);
            for_each_range(n, 8, 1, |r| {
                let mut s = seen.lock().unwrap();
                for i in r {
                    s[i] += 1;
                }
            });
            assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1), "n={n}");
        }
    }
}
