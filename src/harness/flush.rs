//! Evicting the CPU caches before a timed sample, so that a step reads its weights and KV cache
//! from memory as it would inside a deep model (where every other layer's weights and cache
//! pass through the caches between two steps of this one), not from a last-level cache that a
//! single layer, timed again and again, fits in.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::sysinfo::{FALLBACK_LLC_BYTES, largest_cache_bytes};

/// Bytes between two reads of the eviction buffer: one per cache line is enough to load it.
const LINE_BYTES: usize = 64;
/// Largest eviction buffer.
const MAX_BUFFER_BYTES: usize = 2 << 30;

/// A buffer twice the size of the largest CPU cache (at least 64 MiB, at most 2 GiB),
/// allocated once per process.
pub struct CacheFlusher {
    buffer: Vec<u8>,
}

impl CacheFlusher {
    /// The process's flusher, allocated (and touched, so its pages exist) on first use.
    pub fn shared() -> &'static CacheFlusher {
        static FLUSHER: OnceLock<CacheFlusher> = OnceLock::new();
        FLUSHER.get_or_init(|| {
            let llc = largest_cache_bytes().unwrap_or(FALLBACK_LLC_BYTES);
            let bytes = (2 * usize::try_from(llc).unwrap_or(usize::MAX / 2))
                .clamp(64 << 20, MAX_BUFFER_BYTES);
            // Distinct non-zero contents: pages of zeros could all map one shared zero page.
            let buffer = (0..bytes).map(|i| (i / LINE_BYTES) as u8 | 1).collect();
            CacheFlusher { buffer }
        })
    }

    /// Reads one byte of every cache line of the buffer, split over the threads of the current
    /// rayon pool so that each core's private caches are evicted too.
    pub fn flush(&self) {
        let per_thread = self.buffer.len().div_ceil(rayon::current_num_threads());
        let sum: u64 = self
            .buffer
            .par_chunks(per_thread.next_multiple_of(LINE_BYTES))
            .map(|chunk| {
                chunk
                    .iter()
                    .step_by(LINE_BYTES)
                    .map(|&b| u64::from(b))
                    .sum::<u64>()
            })
            .sum();
        std::hint::black_box(sum);
    }
}
