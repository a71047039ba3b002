//! The read ceiling: the fastest of several ways to stream an array far larger than the caches,
//! split over the threads of the current rayon pool. A kernel that reads in a way the
//! calibration did not try can beat a single pattern (MHA's decode reads eight key streams per
//! thread and beat four), so the calibration tries every pattern of [`patterns`] and keeps the
//! best: streams per thread from 1 to 16, the widest vector loads the CPU has (and the
//! narrower ones), with and without software prefetch.

use std::time::Instant;

use crate::results::{ReadPattern, VectorLoads};

/// Floats in one 64-byte cache line: each stream advances a line per step.
const LINE: usize = 16;

/// The streams per thread tried.
const STREAMS: [usize; 5] = [1, 2, 4, 8, 16];

/// How far ahead of its loads a stream is prefetched, in floats (1 KiB: sixteen lines, far
/// enough to cover a memory latency at the bandwidth of one core).
const PREFETCH_AHEAD: usize = 256;

/// The patterns this CPU can run: every [`STREAMS`] count with every load width it has, each
/// with and without software prefetch (x86-64; elsewhere without only).
pub(super) fn patterns() -> Vec<ReadPattern> {
    let prefetch: &[bool] = if cfg!(target_arch = "x86_64") {
        &[false, true]
    } else {
        &[false]
    };
    let mut patterns = Vec::new();
    for loads in available_loads() {
        for streams_per_thread in STREAMS {
            for &prefetch in prefetch {
                patterns.push(ReadPattern {
                    streams_per_thread,
                    loads,
                    prefetch,
                });
            }
        }
    }
    patterns
}

/// The load widths this CPU runs, widest first; the portable loop always.
fn available_loads() -> Vec<VectorLoads> {
    let mut loads = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            loads.push(VectorLoads::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            loads.push(VectorLoads::Avx2);
        }
    }
    loads.push(VectorLoads::Portable);
    loads
}

/// The best read bandwidth, GB/s, of `patterns` over `stream`, and the pattern that reached it.
/// Each pattern reads the whole array `repeats + 1` times, the patterns taking turns so that a
/// noisy moment of a shared machine does not fall on one pattern only; the fastest pass counts.
///
/// # Panics
/// If `patterns` is empty.
pub(super) fn read_ceiling(
    stream: &[f32],
    patterns: &[ReadPattern],
    repeats: usize,
) -> (f64, ReadPattern) {
    let parts = thread_parts(stream, rayon::current_num_threads());
    let bytes: usize = parts.iter().map(|p| size_of_val(*p)).sum();
    let mut best = vec![f64::INFINITY; patterns.len()];
    for _ in 0..=repeats {
        for (pattern, best) in patterns.iter().zip(&mut best) {
            let start = Instant::now();
            let sums = rayon::broadcast(|ctx| sum_streams(parts[ctx.index()], *pattern));
            *best = best.min(start.elapsed().as_secs_f64());
            std::hint::black_box(sums);
        }
    }
    let (seconds, pattern) = best
        .iter()
        .zip(patterns)
        .min_by(|a, b| a.0.total_cmp(b.0))
        .expect("at least one read pattern");
    (bytes as f64 / seconds / 1e9, *pattern)
}

/// `stream` cut into one part per thread, each starting on a cache-line boundary and a whole
/// number of lines long, so that no load of a line straddles two (the allocator aligns a large
/// array to 16 bytes only). What is left over is not read, and not counted.
fn thread_parts(stream: &[f32], threads: usize) -> Vec<&[f32]> {
    let skip = stream.as_ptr().align_offset(LINE * size_of::<f32>());
    let aligned = &stream[skip.min(stream.len())..];
    let per = aligned.len() / threads / LINE * LINE;
    (0..threads)
        .map(|t| &aligned[t * per..(t + 1) * per])
        .collect()
}

/// The sum of `part`, read as `pattern` says: cut into `streams_per_thread` pieces of whole
/// lines read side by side, the few values left over summed after.
fn sum_streams(part: &[f32], pattern: ReadPattern) -> f32 {
    let streams = pattern.streams_per_thread;
    let per = part.len() / streams / LINE * LINE;
    let (body, rest) = part.split_at(streams * per);
    let rest: f32 = rest.iter().sum();
    // One instance per (streams, prefetch) pair, so that the loop over the streams unrolls and
    // the accumulators stay in registers.
    macro_rules! dispatch {
        ($kernel:ident) => {
            match (streams, pattern.prefetch) {
                (1, false) => $kernel::<1, false>(body, per),
                (1, true) => $kernel::<1, true>(body, per),
                (2, false) => $kernel::<2, false>(body, per),
                (2, true) => $kernel::<2, true>(body, per),
                (4, false) => $kernel::<4, false>(body, per),
                (4, true) => $kernel::<4, true>(body, per),
                (8, false) => $kernel::<8, false>(body, per),
                (8, true) => $kernel::<8, true>(body, per),
                (16, false) => $kernel::<16, false>(body, per),
                (16, true) => $kernel::<16, true>(body, per),
                _ => unreachable!("streams per thread are one of {STREAMS:?}"),
            }
        };
    }
    let sum = match pattern.loads {
        VectorLoads::Portable => dispatch!(sum_portable),
        #[cfg(target_arch = "x86_64")]
        VectorLoads::Avx2 => {
            use x86::sum_avx2;
            assert!(std::arch::is_x86_feature_detected!("avx2"), "no AVX2");
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { dispatch!(sum_avx2) }
        }
        #[cfg(target_arch = "x86_64")]
        VectorLoads::Avx512 => {
            use x86::sum_avx512;
            assert!(std::arch::is_x86_feature_detected!("avx512f"), "no AVX-512");
            // SAFETY: the CPU has AVX-512F, checked just above.
            unsafe { dispatch!(sum_avx512) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("{} loads are never offered here", pattern.loads),
    };
    sum + rest
}

/// The sum of `S` streams of `per` floats each (`per` a multiple of [`LINE`]), stream `s` being
/// `body[s · per..(s + 1) · per]`, read one line of each in turn, in the crate's portable code:
/// sixteen lanes per accumulator let the compiler vectorise with the target's widest vectors.
#[inline(always)]
fn sum_portable<const S: usize, const PREFETCH: bool>(body: &[f32], per: usize) -> f32 {
    let streams: [&[f32]; S] = std::array::from_fn(|s| &body[s * per..(s + 1) * per]);
    let mut acc = [[0.0f32; LINE]; 4];
    for i in (0..per).step_by(LINE) {
        for (s, stream) in streams.iter().enumerate() {
            if PREFETCH {
                prefetch(stream.as_ptr().wrapping_add(i + PREFETCH_AHEAD));
            }
            for (a, v) in acc[s % 4].iter_mut().zip(&stream[i..i + LINE]) {
                *a += v;
            }
        }
    }
    acc.iter().flatten().sum()
}

/// Asks for the line at `p` to be brought into the caches. Only an address is computed (with
/// wrapping arithmetic: it may lie past the end of the array), never dereferenced.
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing the program sees, for
    // any address. SSE, which it needs, is in the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The same loop with explicit 256- and 512-bit loads, compiled for the features they need and
/// called only after a run-time check.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{LINE, PREFETCH_AHEAD, prefetch};

    /// [`sum_portable`](super::sum_portable) with two 256-bit loads per line.
    ///
    /// # Safety
    /// The CPU must have AVX2; `body` must hold `S · per` floats.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_avx2<const S: usize, const PREFETCH: bool>(
        body: &[f32],
        per: usize,
    ) -> f32 {
        assert!(body.len() >= S * per && per.is_multiple_of(LINE));
        let base = body.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..per).step_by(LINE) {
            for s in 0..S {
                let line = base.wrapping_add(s * per + i);
                if PREFETCH {
                    prefetch(line.wrapping_add(PREFETCH_AHEAD));
                }
                // SAFETY: `s · per + i + LINE ≤ S · per ≤ body.len()` (asserted above), so the
                // sixteen floats of the line are in `body`; the loads need no alignment.
                let (lo, hi) = unsafe { (_mm256_loadu_ps(line), _mm256_loadu_ps(line.add(8))) };
                acc[(2 * s) % 4] = _mm256_add_ps(acc[(2 * s) % 4], lo);
                acc[(2 * s + 1) % 4] = _mm256_add_ps(acc[(2 * s + 1) % 4], hi);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }

    /// [`sum_portable`](super::sum_portable) with one 512-bit load per line.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `body` must hold `S · per` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_avx512<const S: usize, const PREFETCH: bool>(
        body: &[f32],
        per: usize,
    ) -> f32 {
        assert!(body.len() >= S * per && per.is_multiple_of(LINE));
        let base = body.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 4];
        for i in (0..per).step_by(LINE) {
            for s in 0..S {
                let line = base.wrapping_add(s * per + i);
                if PREFETCH {
                    prefetch(line.wrapping_add(PREFETCH_AHEAD));
                }
                // SAFETY: as in `sum_avx2`, the line's sixteen floats are in `body`.
                let v = unsafe { _mm512_loadu_ps(line) };
                acc[s % 4] = _mm512_add_ps(acc[s % 4], v);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_sums_every_value_once() {
        for len in [0, 1, 15, 16, 17, 255, 256, 257, 1000, 4099, 70_001] {
            // Small integers: every partial sum is exact in f32, whatever the order.
            let part: Vec<f32> = (0..len).map(|i| (i % 5) as f32).collect();
            let exact: f32 = part.iter().sum();
            for pattern in patterns() {
                assert_eq!(sum_streams(&part, pattern), exact, "len {len}, {pattern}");
            }
        }
    }

    #[test]
    fn thread_parts_are_whole_lines_on_line_boundaries() {
        let stream = vec![1.0f32; 10_007];
        let unaligned = &stream[1..];
        for threads in [1, 2, 3, 7] {
            let parts = thread_parts(unaligned, threads);
            assert_eq!(parts.len(), threads);
            for part in &parts {
                assert_eq!(part.len() % LINE, 0);
                assert_eq!(part.as_ptr() as usize % (LINE * size_of::<f32>()), 0);
            }
            // At most a line's worth is skipped to align, and less than a line per thread cut.
            let read: usize = parts.iter().map(|p| p.len()).sum();
            assert!(read + (threads + 1) * LINE >= unaligned.len(), "{threads}");
        }
    }

    #[test]
    fn the_patterns_cover_one_to_sixteen_streams_and_the_portable_loop() {
        let patterns = patterns();
        for streams in STREAMS {
            assert!(patterns.iter().any(|p| p.streams_per_thread == streams
                && p.loads == VectorLoads::Portable
                && !p.prefetch));
        }
    }
}
