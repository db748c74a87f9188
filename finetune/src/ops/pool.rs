//! Splitting a decode step's work over candle's own worker threads.
//!
//! candle's quantized products run on its barrier pool, whose workers spin briefly between
//! calls. Work handed to another pool (rayon's) meanwhile competes with a spinning worker for
//! one of the two cores, so the decode step's own parallel loops use the same pool.

use std::sync::Mutex;

/// Runs `f(start, part)` over `out` cut into parts of `chunk` items, on candle's pool: the
/// parts go to whichever thread is free, and each part is written by one thread only. With a
/// single part `f` runs here.
pub fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    if out.len() <= chunk {
        f(0, out);
        return;
    }
    let parts: Vec<Mutex<&mut [T]>> = out.chunks_mut(chunk).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(parts.len(), |range| {
        for i in range {
            // Uncontended: each part's index comes out of the pool's cursor once.
            let mut part = parts[i].lock().unwrap_or_else(|e| e.into_inner());
            f(i * chunk, &mut part);
        }
    });
}

/// Threads in candle's pool, the calling one included.
pub fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}
