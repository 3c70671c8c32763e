//! Splitting work across threads with a persistent pool, held as a value
//! by the CPU backend (models that run together share one).
//!
//! Decode runs a few hundred parallel regions per token (every matmul and
//! attention of every layer), so spawning threads per region or parking them
//! between regions costs more than the work. Workers instead spin on a
//! generation counter for a short while after each job and only then sleep
//! on a condition variable; the calling thread takes a share of every job.
//! A caller that finds the pool busy (another model's step, or a nested
//! call) runs its job on its own thread instead of waiting.

use std::cell::{Cell, UnsafeCell};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps
/// between regions of one forward pass, short enough not to burn a core
/// between requests.
const SPIN: Duration = Duration::from_micros(300);

/// Lowers the calling thread's scheduling priority (Linux: nice +10), so
/// that background work on it (compiling a grammar, following one) takes
/// the cores only when the compute threads leave them: on a machine with
/// as many compute threads as cores, work at normal priority beside them
/// slows every step down. Elsewhere it does nothing.
pub fn background_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its integer arguments; who = 0 is
        // the calling thread (Linux gives each thread its own nice value),
        // and raising one's own nice value needs no privilege. Failure is
        // harmless: the thread keeps its priority.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        }
    }
}

/// Physical cores: a second hardware thread of a core shares its execution
/// units and cache, so it adds sync cost but little speed to these kernels.
pub fn physical_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return logical;
        };
        let mut cores = std::collections::HashSet::new();
        let mut package = "";
        for line in info.lines() {
            let mut kv = line.splitn(2, ':').map(str::trim);
            match (kv.next(), kv.next()) {
                (Some("physical id"), Some(v)) => package = v,
                (Some("core id"), Some(v)) => {
                    cores.insert((package.to_string(), v.to_string()));
                }
                _ => {}
            }
        }
        // Containers may limit the CPUs below what /proc/cpuinfo lists.
        match cores.len() {
            0 => logical,
            n => n.min(logical),
        }
    })
}

/// A job as the workers see it: a borrowed closure whose lifetime the caller
/// guarantees by waiting for every worker before returning.
type Job = *const (dyn Fn(usize, usize) + Sync);

struct Shared {
    generation: AtomicU64,
    /// The current job and how many threads (the caller included) take part.
    job: UnsafeCell<(Option<Job>, usize)>,
    /// Workers that have not yet finished the current generation.
    pending: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller holding the pool's lock while
// no worker reads it (before the generation is bumped), and read by workers
// only after they observe the bump.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new((None, 0)),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("lampo-worker-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a kernel thread")
            })
            .collect();
        Pool { shared, workers }
    }

    fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    fn bump_and_wake(&self) {
        let s = &self.shared;
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
    }

    /// Runs `f(index, n)` on `n` threads, this one as index 0.
    fn run(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let s = &self.shared;
        // SAFETY: erasing the lifetime is sound because `Wait` below does not
        // let this function return (or unwind) before every worker is done.
        let job: Job = unsafe { std::mem::transmute(f) };
        // SAFETY: no worker reads `job` until the generation changes.
        unsafe { *s.job.get() = (Some(job), n) };
        s.pending.store(self.workers.len(), Ordering::SeqCst);
        self.bump_and_wake();

        struct Wait<'a>(&'a Shared);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let mut spins = 0u32;
                while self.0.pending.load(Ordering::Acquire) != 0 {
                    spins += 1;
                    if spins < 1 << 16 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        let wait = Wait(s);
        f(0, n);
        drop(wait);
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a kernel worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.bump_and_wake();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

thread_local! {
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

fn worker(s: &Shared, index: usize) {
    IN_WORKER.with(|w| w.set(true));
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.generation.load(Ordering::SeqCst) == seen {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the caller wrote the job before bumping the generation we saw,
        // and keeps it alive until `pending` reaches zero.
        let (job, n) = unsafe { *s.job.get() };
        if let Some(job) = job
            && index < n
        {
            // SAFETY: as above, the closure outlives this call.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(index, n))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// A pool of kernel threads: `threads() - 1` workers plus the caller.
pub struct ThreadPool {
    threads: usize,
    /// Started on first use.
    pool: Mutex<Option<Pool>>,
    /// Parallel regions started so far (for `lampo bench`'s per-token count).
    regions: AtomicU64,
}

impl ThreadPool {
    /// A pool of `threads` threads (0: one per physical core).
    pub fn new(threads: usize) -> ThreadPool {
        ThreadPool {
            threads: if threads == 0 {
                physical_cores()
            } else {
                threads
            },
            pool: Mutex::new(None),
            regions: AtomicU64::new(0),
        }
    }

    /// The number of threads jobs are split over.
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn regions_started(&self) -> u64 {
        self.regions.load(Ordering::Relaxed)
    }

    /// The started pool, unless another thread is using it.
    fn acquire(&self) -> Option<MutexGuard<'_, Option<Pool>>> {
        if IN_WORKER.with(|w| w.get()) {
            return None;
        }
        let mut guard = match self.pool.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Busy (another caller, or a nested call on this thread): run inline.
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if guard.is_none() {
            *guard = Some(Pool::new(self.threads));
        }
        Some(guard)
    }

    /// Mean cost in seconds of an empty parallel region over `threads`
    /// threads: through the pool, and by spawning scoped threads per region
    /// (what a spawn-per-op design pays).
    pub fn region_cost(&self, threads: usize, iterations: usize) -> (f64, f64) {
        let iterations = iterations.max(1);
        let sink = AtomicUsize::new(0);
        let start = Instant::now();
        for _ in 0..iterations {
            self.run_on_threads(threads, |i, _| {
                sink.fetch_add(i, Ordering::Relaxed);
            });
        }
        let pool = start.elapsed().as_secs_f64() / iterations as f64;
        let spawns = (iterations / 100).max(1);
        let start = Instant::now();
        for _ in 0..spawns {
            std::thread::scope(|s| {
                for i in 1..threads {
                    let sink = &sink;
                    s.spawn(move || sink.fetch_add(i, Ordering::Relaxed));
                }
                sink.fetch_add(0, Ordering::Relaxed);
            });
        }
        let spawn = start.elapsed().as_secs_f64() / spawns as f64;
        (pool, spawn)
    }

    /// Runs `f(index, n)` for `index` in `0..n` on up to `n` threads of the
    /// pool (`n` is capped at the pool size); returns when all are done.
    pub fn run_on_threads(&self, n: usize, f: impl Fn(usize, usize) + Sync) {
        let n = n.clamp(1, self.threads);
        if n == 1 {
            f(0, 1);
            return;
        }
        self.regions.fetch_add(1, Ordering::Relaxed);
        match self.acquire() {
            Some(guard) => {
                let pool = guard.as_ref().expect("pool was just started");
                pool.run(n.min(pool.threads()), &f);
            }
            None => f(0, 1),
        }
    }

    /// Runs `f` over `0..n` split into contiguous ranges, one per thread,
    /// each a multiple of `align` long (except the last). Runs inline when
    /// the work is too small to be worth a thread.
    pub fn for_each_range(
        &self,
        n: usize,
        align: usize,
        min_per_thread: usize,
        f: impl Fn(Range<usize>) + Sync,
    ) {
        let want = self.threads.min(n.div_ceil(min_per_thread.max(1))).max(1);
        let align = align.max(1);
        self.run_on_threads(want, |i, threads| {
            let per = n.div_ceil(threads).div_ceil(align) * align;
            let start = (i * per).min(n);
            let end = if i + 1 == threads {
                n
            } else {
                (start + per).min(n)
            };
            if start < end {
                f(start..end);
            }
        });
    }

    /// Splits `out` into `chunk`-long pieces and runs `f(index, piece)` on
    /// each, the pieces spread across threads in contiguous runs; the last
    /// piece may be shorter.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk = chunk.max(1);
        let pieces = out.len().div_ceil(chunk);
        let len = out.len();
        let ptr = SharedMut(out.as_mut_ptr());
        self.for_each_range(pieces, 1, 1, |range| {
            let ptr = &ptr;
            for i in range {
                // SAFETY: each piece index goes to exactly one thread.
                f(i, unsafe { ptr.piece(i, chunk, len) });
            }
        });
    }

    /// As [`ThreadPool::for_each_chunk_mut`], but piece `i` goes to thread
    /// `i % threads`: balanced when the cost of a piece grows with its index
    /// (causal attention, where later tokens see more keys).
    pub fn for_each_chunk_mut_interleaved<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk = chunk.max(1);
        let pieces = out.len().div_ceil(chunk);
        let len = out.len();
        let ptr = SharedMut(out.as_mut_ptr());
        self.run_on_threads(pieces, |t, threads| {
            let ptr = &ptr;
            for i in (t..pieces).step_by(threads) {
                // SAFETY: piece `i` goes to thread `i % threads` only.
                f(i, unsafe { ptr.piece(i, chunk, len) });
            }
        });
    }
}

/// Raw pointer to a buffer whose disjoint parts threads write.
struct SharedMut<T>(*mut T);
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Piece `i` of `chunk` values of the `len`-long buffer (the last one
    /// may be shorter).
    ///
    /// # Safety
    /// `i * chunk < len`, and no other live reference covers the piece.
    unsafe fn piece<'a>(&self, i: usize, chunk: usize, len: usize) -> &'a mut [T] {
        let end = ((i + 1) * chunk).min(len);
        // SAFETY: in bounds and exclusive, as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(i * chunk), end - i * chunk) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn ranges_cover_everything_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 5, 64, 1000] {
                let seen = Mutex::new(vec![0u32; n]);
                pool.for_each_range(n, 8, 1, |r| {
                    let mut s = seen.lock().unwrap();
                    for i in r {
                        s[i] += 1;
                    }
                });
                assert!(
                    seen.into_inner().unwrap().iter().all(|&c| c == 1),
                    "n={n} threads={threads}"
                );
            }
        }
    }

    #[test]
    fn chunks_are_disjoint_and_complete() {
        for interleaved in [false, true] {
            let mut v = vec![0usize; 1003];
            let f = |i: usize, piece: &mut [usize]| {
                for x in piece.iter_mut() {
                    *x += i + 1;
                }
            };
            let pool = ThreadPool::new(0);
            if interleaved {
                pool.for_each_chunk_mut_interleaved(&mut v, 10, f);
            } else {
                pool.for_each_chunk_mut(&mut v, 10, f);
            }
            for (j, x) in v.iter().enumerate() {
                assert_eq!(*x, j / 10 + 1, "at {j} (interleaved: {interleaved})");
            }
        }
    }

    /// Many short regions in a row, as a decode step runs them, and nested
    /// calls (which run inline) all complete.
    #[test]
    fn many_regions_and_nesting_complete() {
        let total = AtomicUsize::new(0);
        let pool = ThreadPool::new(0);
        for _ in 0..2000 {
            pool.for_each_range(64, 1, 1, |r| {
                pool.for_each_range(r.len(), 1, 1, |inner| {
                    total.fetch_add(inner.len(), Ordering::Relaxed);
                });
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 2000 * 64);
    }

    #[test]
    fn a_panicking_job_panics_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = std::panic::catch_unwind(|| {
            pool.run_on_threads(2, |i, n| {
                if i + 1 == n {
                    panic!("boom");
                }
            })
        });
        // The last index panics whether the pool ran the job or (when
        // another test holds it) this thread ran it alone.
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        pool.run_on_threads(2, |_, _| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2, "the pool runs both halves");
    }
}
