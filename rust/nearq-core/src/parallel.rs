//! Process-local thread pools, one per thread count, that survive `fork`.
//!
//! nearq never runs work on rayon's global pool: after `fork` a child process inherits the
//! pool's bookkeeping but none of its threads, so the first parallel call would wait forever.
//! Pools are created on demand and remembered with the id of the process that created them;
//! a process that finds pools from another pid (a forked child) forgets them (their threads
//! do not exist there, so they are leaked rather than dropped) and starts fresh ones.

use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

struct Pools {
    pid: u32,
    map: HashMap<usize, Arc<ThreadPool>>,
}

fn pools() -> &'static Mutex<Pools> {
    static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
    POOLS.get_or_init(|| {
        Mutex::new(Pools {
            pid: std::process::id(),
            map: HashMap::new(),
        })
    })
}

static DEFAULT_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the thread count used when a call passes `threads = None` (0 restores "all cores").
pub fn set_num_threads(n: usize) {
    DEFAULT_THREADS.store(n, Ordering::Relaxed);
}

/// The thread count used when a call passes `threads = None`.
pub fn num_threads() -> usize {
    match DEFAULT_THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

fn pool(threads: usize) -> Arc<ThreadPool> {
    let mut p = pools().lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if p.pid != pid {
        for (_, stale) in p.map.drain() {
            std::mem::forget(stale);
        }
        p.pid = pid;
    }
    p.map
        .entry(threads)
        .or_insert_with(|| {
            Arc::new(
                ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("nearq-{i}"))
                    .build()
                    .expect("cannot start worker threads"),
            )
        })
        .clone()
}

/// Runs `f` on a pool of `threads` workers (the default count when `None`); rayon parallel
/// iterators inside `f` use that pool.
pub fn with_threads<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    let t = threads.filter(|&t| t > 0).unwrap_or_else(num_threads);
    pool(t).install(f)
}

/// Runs `run(query, ids, dists)` for every query's `k` output slots (`ids` and `dists` hold
/// `k` entries per query): inline for a single query or `threads == Some(1)` (no pool hop),
/// otherwise in parallel on [`with_threads`]'s pool.
pub fn for_each_query<F>(
    ids: &mut [i64],
    dists: &mut [f32],
    k: usize,
    threads: Option<usize>,
    run: F,
) where
    F: Fn(usize, &mut [i64], &mut [f32]) + Sync,
{
    if ids.len() <= k || threads == Some(1) {
        for (qi, (oi, od)) in ids.chunks_mut(k).zip(dists.chunks_mut(k)).enumerate() {
            run(qi, oi, od);
        }
    } else {
        with_threads(threads, || {
            ids.par_chunks_mut(k)
                .zip(dists.par_chunks_mut(k))
                .enumerate()
                .for_each(|(qi, (oi, od))| run(qi, oi, od));
        });
    }
}
