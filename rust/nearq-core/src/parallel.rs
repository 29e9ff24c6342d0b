//! Thread pools: the global rayon pool for `threads = None`, cached pools for explicit counts.

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

fn pools() -> &'static Mutex<HashMap<usize, Arc<ThreadPool>>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Runs `f` on a pool of `threads` workers (all cores when `None`).
pub fn with_threads<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    match threads {
        None | Some(0) => f(),
        Some(t) if t == rayon::current_num_threads() => f(),
        Some(t) => {
            let pool = {
                let mut map = pools().lock().unwrap_or_else(|e| e.into_inner());
                map.entry(t)
                    .or_insert_with(|| {
                        Arc::new(
                            ThreadPoolBuilder::new()
                                .num_threads(t)
                                .build()
                                .expect("cannot start threads"),
                        )
                    })
                    .clone()
            };
            pool.install(f)
        }
    }
}
