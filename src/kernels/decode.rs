//! Decode: attention for one new query per sequence (`s_q == 1`), the tiled kernel's path
//! when every sequence has a single query row.
//!
//! Every query of a KV group sees every key the group holds, so there is no mask: the work is
//! a product of the group's packed queries `(group, qk_dim)` with the keys, a softmax along
//! the keys, and a product with the values. It is split into units of (sequence, KV head, key
//! chunk); each unit streams its keys and values once, in sub-blocks small enough to stay in
//! the core's caches between the score pass and the value pass, with an online softmax; the
//! chunks of a head are merged by log-sum-exp. Two shapes of work:
//! - a few rows (at most [`FEW_ROWS_MAX`], MHA and small GQA groups): memory-bound, each key
//!   dotted with every row along its width (`simd.rs`'s few-row scores, `narrow.rs` for the
//!   stored types) and each value row added to every row's accumulators (`narrow.rs`);
//! - more rows over wide keys (MLA absorbed's 576): compute-bound matrix products, run as
//!   register-blocked micro-kernels with the query rows in the vector lanes for the scores
//!   (no horizontal sums, and the softmax runs lane-wise) and value columns in the lanes for
//!   the weighted sum; a stored sub-block is widened into f32 first (each row once);
//! - more rows over narrow f32 keys (MQA, large GQA groups over heads of 128): the prefill
//!   micro-kernels of `microkernel.rs` (AVX-512F) in each unit. Elsewhere, and over stored
//!   types, such groups go back to the tiled kernel's block loop.
//!
//! Units run on rayon when the estimated work is worth a fork-join, sequentially otherwise
//! ([`SEQUENTIAL_NS`]); the buffers of the first two shapes are thread-local and reused, so
//! their steps allocate nothing after the first (the micro-kernels' state is a few small
//! buffers per unit).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, __m512};
use std::cell::RefCell;

use faer::MatRef;
use rayon::prelude::*;

use super::layout::{AttentionOperands, HeadLayout, KvHead};
use super::microkernel::ManyRows;
use super::narrow::{
    StoredRows, add_f32_values, f32_values_beat_faer, narrow_add_values, narrow_scores,
};
use super::simd::{
    FEW_ROWS_MAX, RowsRef, exp_shifted_sum, fast_exp, few_row_scores, max_keeping_nan, max_of,
};
use super::tiled::add_weighted_values;

/// Keys per sub-block on the few-row path: long, so that each pass streams a long run of
/// keys or values (at most eight rows of 16384 scores: 512 KiB, in L2), as long as the tiled kernel's
/// one block of a few rows.
const FEW_BLOCK: usize = 16384;
/// Bytes of f32 key rows per sub-block on the wide path: the sub-block's keys (and values)
/// stay in L2 between the score and value passes, its weights `(keys, rows)` in L1.
const WIDE_BLOCK_BYTES: usize = 64 << 10;
/// Fewest and most keys per sub-block on the wide path (a multiple of the score tile's 8).
const WIDE_BLOCK_MIN: usize = 32;
const WIDE_BLOCK: usize = 128;
/// Narrowest keys the wide path takes. Its tiles broadcast each key element to a vector of
/// query rows, which pays off over long key rows (MLA absorbed's 576: 0.48–0.65× the time of
/// the tiled kernel's blocked faer products); over 128-wide heads (MQA) those products
/// measured faster at contexts of 8192 and more (1.2–1.9×), and the prefill micro-kernels
/// faster still, so such groups run on those ([`Unit::many`]).
const WIDE_MIN_QK_DIM: usize = 256;
/// Keys per block of the many-row path: the tiled kernel's block, its scores `(256, rows)`
/// in L1 and L2 with the block's keys and values.
const MANY_BLOCK: usize = 256;
/// Fewest keys a chunk of its own is worth.
const MIN_CHUNK: usize = 256;
/// Chunks of a head's keys start on multiples of this (whole score tiles of 8 keys). Small,
/// so the chunks stay even: on multiples of `WIDE_BLOCK` (128), a 513-key cache (a decode at
/// context 512) split 384 + 129, and one thread did three quarters of the work.
const CHUNK_ALIGN: usize = 16;
/// Estimated sequential time (ns, at the rates below) below which the units run on the
/// calling thread: a fork-join wakes a sleeping worker, and a sub-split's partials must be
/// merged. Measured on the 2-core EPYC (caches evicted, 1 thread against 2 with the split
/// forced): MQA, 32 heads of 128 over one KV head, ran faster alone up to 128 keys (an
/// estimate of 26 µs) and faster split from 256 (52 µs); MHA's 32 heads crossed between 16 and
/// 64 keys (26 to 105 µs).
const SEQUENTIAL_NS: f64 = 40_000.0;
/// Bytes per nanosecond and f32 multiply-adds per nanosecond one core is assumed to reach,
/// for the work estimate only (a conservative order of magnitude, not this host's numbers).
const CORE_BYTES_PER_NS: f64 = 20.0;
const CORE_FMAS_PER_NS: f64 = 40.0;
/// Query rows are padded to a multiple of this in the wide path's lane-major buffers (the
/// widest vector, AVX-512's sixteen f32).
const ROW_PAD: usize = 16;

/// The code the wide decode micro-kernels run on this CPU: `"avx512f"`, `"avx2+fma"` or
/// `"portable"` (the few-row path runs on the code [`narrow_path`](super::narrow_path) names).
pub fn decode_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx512f() {
            return "avx512f";
        }
        if super::simd::has_avx2_fma() {
            return "avx2+fma";
        }
    }
    "portable"
}

/// Runs the attention of `seqs` when every sequence has one query row and its operands are
/// ones this path reads, writing `out` (`(batch, n_heads, 1, v_dim)`, head-major); returns
/// false (and leaves `out` alone) otherwise, for the tiled kernel's general path.
pub(super) fn decode_attention(
    seqs: &[AttentionOperands<'_>],
    layout: &HeadLayout,
    out: &mut [f32],
) -> bool {
    let group = layout.n_heads / layout.n_kv_heads;
    if seqs.is_empty()
        || !seqs
            .iter()
            .all(|s| s.q.nrows() == 1 && readable(s, group, layout.qk_dim))
    {
        return false;
    }
    let plan = Plan::new(seqs, layout);
    let unit_len = plan.unit_len();
    with_buffer(&ARENA, plan.units() * unit_len, |arena| {
        let run = |(index, partial): (usize, &mut [f32])| plan.run_unit(index, partial);
        if plan.parallel {
            arena.par_chunks_mut(unit_len).enumerate().for_each(run);
        } else {
            arena.chunks_mut(unit_len).enumerate().for_each(run);
        }
        plan.merge(arena, out);
    });
    true
}

/// Whether this path reads a sequence's operands: f32 heads whose rows are contiguous or
/// stored heads on the few-row path; any head on the wide path (which widens what is not
/// contiguous f32) when its keys are at least [`WIDE_MIN_QK_DIM`] wide.
fn readable(seq: &AttentionOperands<'_>, group: usize, qk_dim: usize) -> bool {
    if group > FEW_ROWS_MAX {
        return qk_dim >= WIDE_MIN_QK_DIM
            || (super::microkernel::available()
                && seq
                    .k
                    .iter()
                    .chain(&seq.v)
                    .all(|head| matches!(head, KvHead::F32(_))));
    }
    seq.k.iter().chain(&seq.v).all(|head| match head {
        KvHead::F32(m) => m.try_as_row_major().is_some(),
        KvHead::Stored(_) => true,
        KvHead::Split(..) => false,
    })
}

thread_local! {
    /// The partials of one call, on the calling thread.
    static ARENA: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A unit's working buffers (packed queries, scores, widened sub-blocks), per thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of the thread's buffer `key` (grown when short, never shrunk),
/// or on a fresh buffer when the thread's is in use (a rayon thread that runs another decode
/// while it waits inside one).
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// How one call is split: `chunks` key chunks per (sequence, KV head), `parallel` or not.
struct Plan<'a> {
    seqs: &'a [AttentionOperands<'a>],
    layout: &'a HeadLayout,
    group: usize,
    chunks: usize,
    parallel: bool,
}

impl<'a> Plan<'a> {
    fn new(seqs: &'a [AttentionOperands<'a>], layout: &'a HeadLayout) -> Self {
        let group = layout.n_heads / layout.n_kv_heads;
        let heads = seqs.len() * layout.n_kv_heads;
        let threads = rayon::current_num_threads();
        let (mut fmas, mut bytes, mut longest) = (0.0f64, 0.0f64, 0usize);
        for seq in seqs {
            let keys = visible_keys(seq);
            longest = longest.max(keys);
            let width = (layout.qk_dim + layout.v_dim) as f64;
            fmas += (keys * layout.n_kv_heads) as f64 * width * group as f64;
            let row_bytes = seq.k.first().map_or(4.0, |k| element_bytes(*k));
            bytes += (keys * layout.n_kv_heads) as f64 * width * row_bytes;
        }
        let estimate_ns = (bytes / CORE_BYTES_PER_NS).max(fmas / CORE_FMAS_PER_NS);
        let parallel = threads > 1 && estimate_ns >= SEQUENTIAL_NS;
        // A unit for every thread when the heads alone are fewer, each at least MIN_CHUNK
        // keys. One per thread, not more: a worker that wakes late (tens of µs on the 2-core
        // EPYC) then finds a whole chunk left, where with two per thread the caller ran its
        // own and then waited on the worker's second. Measured there (caches warm, 2
        // threads): MQA's decode core at 2048 tokens took 190 µs against 205–218 with two
        // per thread, MLA absorbed's (16 heads) 397–403 against 450–461.
        let chunks = if parallel && heads < threads {
            threads.div_ceil(heads).min(longest / MIN_CHUNK).max(1)
        } else {
            1
        };
        Self {
            seqs,
            layout,
            group,
            chunks,
            parallel,
        }
    }

    fn units(&self) -> usize {
        self.seqs.len() * self.layout.n_kv_heads * self.chunks
    }

    /// Floats of one unit's partial: accumulators `(group, v_dim)`, then the rows' maxima,
    /// then their sums.
    fn unit_len(&self) -> usize {
        self.group * (self.layout.v_dim + 2)
    }

    /// Unit `index`: chunk `index mod chunks` of KV head `g` of sequence `b`, into `partial`.
    fn run_unit(&self, index: usize, partial: &mut [f32]) {
        let head = index / self.chunks;
        let (b, g) = (head / self.layout.n_kv_heads, head % self.layout.n_kv_heads);
        let seq = &self.seqs[b];
        let keys = visible_keys(seq);
        let per = keys.div_ceil(self.chunks).next_multiple_of(CHUNK_ALIGN);
        let start = (index % self.chunks * per).min(keys);
        let end = (start + per).min(keys);
        let unit = Unit {
            seq,
            layout: self.layout,
            g,
            rows: self.group,
        };
        let (acc, stats) = partial.split_at_mut(self.group * self.layout.v_dim);
        let (max, sum) = stats.split_at_mut(self.group);
        acc.fill(0.0);
        max.fill(f32::NEG_INFINITY);
        sum.fill(0.0);
        let state = State { acc, max, sum };
        if self.group <= FEW_ROWS_MAX {
            unit.few(state, (start, end));
        } else if self.layout.qk_dim >= WIDE_MIN_QK_DIM {
            unit.wide(state, (start, end));
        } else {
            unit.many(state, (start, end));
        }
    }

    /// Merges each head's chunks by log-sum-exp and normalises, into `out`:
    /// `o = Σ e^(m_s − M) acc_s / Σ e^(m_s − M) l_s`. A chunk that saw a non-finite score has
    /// a NaN maximum and sum, so its weight and the total are NaN and the row comes out NaN.
    fn merge(&self, arena: &[f32], out: &mut [f32]) {
        let (dv, rows, unit_len) = (self.layout.v_dim, self.group, self.unit_len());
        let heads = arena.chunks(unit_len * self.chunks);
        for (partials, dst) in heads.zip(out.chunks_mut(rows * dv)) {
            for r in 0..rows {
                let stat = |p: &[f32], k: usize| p[rows * dv + k * rows + r];
                let top = partials
                    .chunks(unit_len)
                    .map(|p| stat(p, 0))
                    .fold(f32::NEG_INFINITY, f32::max);
                let row = &mut dst[r * dv..][..dv];
                let mut total = 0.0f32;
                for (s, p) in partials.chunks(unit_len).enumerate() {
                    let m = stat(p, 0);
                    let w = if m == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (m - top).exp()
                    };
                    total += w * stat(p, 1);
                    let acc = &p[r * dv..][..dv];
                    if s == 0 {
                        row.iter_mut().zip(acc).for_each(|(d, a)| *d = w * a);
                    } else {
                        row.iter_mut().zip(acc).for_each(|(d, a)| *d += w * a);
                    }
                }
                let inv = 1.0 / total;
                row.iter_mut().for_each(|d| *d *= inv);
            }
        }
    }
}

/// Keys the sequence's query sees: up to its position.
fn visible_keys(seq: &AttentionOperands<'_>) -> usize {
    (seq.first_query_position + 1).min(seq.k.first().map_or(0, |k| k.nrows()))
}

/// Bytes a stored element takes (for the work estimate).
fn element_bytes(head: KvHead<'_>) -> f64 {
    match head {
        KvHead::F32(_) => 4.0,
        KvHead::Stored(StoredRows::Int8 { .. }) | KvHead::Split(..) => 1.0,
        KvHead::Stored(_) => 2.0,
    }
}

/// The running online softmax of a unit: accumulators `(rows, v_dim)` row-major, the rows'
/// maxima and sums.
struct State<'s> {
    acc: &'s mut [f32],
    max: &'s mut [f32],
    sum: &'s mut [f32],
}

/// One (sequence, KV head): its `rows` packed query rows are the group's heads.
struct Unit<'a> {
    seq: &'a AttentionOperands<'a>,
    layout: &'a HeadLayout,
    g: usize,
    rows: usize,
}

impl Unit<'_> {
    /// The group's query rows packed row-major, `(rows, qk_dim)`, into `packed`: one copy
    /// when the query is contiguous (the group's heads are adjacent in it), element by
    /// element otherwise.
    fn pack_queries(&self, packed: &mut [f32]) {
        let d = self.layout.qk_dim;
        let first = self.g * self.rows * d;
        if let Some(q) = self.seq.q.try_as_row_major() {
            return packed.copy_from_slice(&q.row(0).as_slice()[first..][..packed.len()]);
        }
        for (h, row) in packed.chunks_exact_mut(d).enumerate() {
            for (c, x) in row.iter_mut().enumerate() {
                *x = self.query(h, c);
            }
        }
    }

    /// Query row of local head `h`, element `c`.
    #[inline]
    fn query(&self, h: usize, c: usize) -> f32 {
        self.seq.q[(0, (self.g * self.rows + h) * self.layout.qk_dim + c)]
    }

    /// The few-row path over keys `start..end`: per sub-block, scores `(rows, nb)` by the
    /// few-row kernels, the row-wise online softmax, the weighted sum by `narrow.rs`'s value
    /// kernels (stored types, and f32 where [`f32_values_beat_faer`]; else faer's product).
    /// The softmax is compiled for AVX2 and FMA when the CPU has them (the scratch is taken here, so that
    /// the feature-enabled function runs no closure compiled for the baseline).
    fn few(&self, state: State<'_>, range: (usize, usize)) {
        let len = self.rows * (self.layout.qk_dim + FEW_BLOCK);
        with_buffer(&SCRATCH, len, |scratch| {
            #[cfg(target_arch = "x86_64")]
            if super::simd::has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { self.few_avx2(state, range, scratch) };
            }
            self.few_blocks(state, range, scratch);
        });
    }

    /// [`Self::few_blocks`] compiled for AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn few_avx2(&self, state: State<'_>, range: (usize, usize), scratch: &mut [f32]) {
        self.few_blocks(state, range, scratch);
    }

    #[inline(always)]
    fn few_blocks(&self, state: State<'_>, (start, end): (usize, usize), scratch: &mut [f32]) {
        let (d, rows) = (self.layout.qk_dim, self.rows);
        let (k, v) = (self.seq.k[self.g], self.seq.v[self.g]);
        let scale = self.layout.scale;
        {
            let (q, scores) = scratch.split_at_mut(rows * d);
            self.pack_queries(q);
            let State { acc, max, sum } = state;
            for j0 in (start..end).step_by(FEW_BLOCK) {
                let nb = FEW_BLOCK.min(end - j0);
                let block = &mut scores[..rows * nb];
                match k.subrows(j0, nb) {
                    KvHead::F32(m) => {
                        let m = m.try_as_row_major().expect("checked by `readable`");
                        few_row_scores(m, q, rows, scale, block);
                    }
                    KvHead::Stored(s) => narrow_scores(s, q, rows, scale, block),
                    KvHead::Split(..) => unreachable!("checked by `readable`"),
                }
                softmax_rows(block, nb, max, sum, acc);
                match v.subrows(j0, nb) {
                    KvHead::F32(m) if f32_values_beat_faer(rows, m.ncols()) => {
                        let m = m.try_as_row_major().expect("checked by `readable`");
                        add_f32_values(m, block, rows, acc);
                    }
                    KvHead::F32(m) => add_weighted_values(acc, block, m, rows),
                    KvHead::Stored(s) => narrow_add_values(s, block, rows, acc),
                    KvHead::Split(..) => unreachable!("checked by `readable`"),
                }
            }
        }
    }

    /// Many rows over narrow f32 keys (MQA and GQA groups above eight over heads under
    /// [`WIDE_MIN_QK_DIM`] wide) over keys `start..end`: the prefill micro-kernels
    /// (`microkernel.rs`, AVX-512F, checked by `readable`) over blocks of [`MANY_BLOCK`]
    /// keys, with no mask (every key is visible to the one query). Run as a unit of this
    /// path, a short context splits over the threads like any other: through the tiled
    /// kernel's key ranges MQA's decode core at 512 tokens took as long on 2 threads as on 1.
    fn many(&self, state: State<'_>, (start, end): (usize, usize)) {
        let (d, rows) = (self.layout.qk_dim, self.rows);
        let (KvHead::F32(k), KvHead::F32(v)) = (self.seq.k[self.g], self.seq.v[self.g]) else {
            unreachable!("checked by `readable`")
        };
        let State { acc, max, sum } = state;
        with_buffer(&SCRATCH, rows * d, |packed| {
            self.pack_queries(packed);
            let position = self.seq.first_query_position;
            let dims = (d, self.layout.v_dim);
            let mut many = ManyRows::new(packed, rows, dims, self.layout.scale, |_| position)
                .expect("checked by `readable`")
                .streaming();
            for j0 in (start..end).step_by(MANY_BLOCK) {
                let nb = MANY_BLOCK.min(end - j0);
                let after = MANY_BLOCK.min(end - j0 - nb);
                if after > 0 {
                    many.prefetch_next(k.subrows(j0 + nb, after), v.subrows(j0 + nb, after));
                }
                many.block(k.subrows(j0, nb), v.subrows(j0, nb), j0, acc, true);
            }
            many.stats_into(max, sum);
        });
    }

    /// The wide path over keys `start..end`, on the widest vectors the CPU runs. The
    /// scratch is taken here: the feature-enabled functions must not run their loops in a
    /// closure, which would be compiled for the baseline.
    fn wide(&self, state: State<'_>, range: (usize, usize)) {
        let (dk, dv) = (self.layout.qk_dim, self.layout.v_dim);
        let rp = self.rows.next_multiple_of(ROW_PAD);
        let nb = wide_block(dk);
        let len = dk * rp + nb * rp + 4 * rp + nb * (dk + dv);
        with_buffer(&SCRATCH, len, |scratch| {
            #[cfg(target_arch = "x86_64")]
            {
                if super::simd::has_avx512f() {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
                    return unsafe { self.wide_avx512(state, range, scratch) };
                }
                if super::simd::has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    return unsafe { self.wide_avx2(state, range, scratch) };
                }
            }
            self.wide_lanes::<[f32; 4], 4, false>(state, range, scratch);
        });
    }

    /// [`Self::wide_lanes`] compiled for AVX-512F, sixteen lanes. A real function carries
    /// the target features into the inlined micro-kernels.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn wide_avx512(&self, state: State<'_>, range: (usize, usize), scratch: &mut [f32]) {
        self.wide_lanes::<__m512, 16, true>(state, range, scratch);
    }

    /// [`Self::wide_lanes`] compiled for AVX2 and FMA, eight lanes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn wide_avx2(&self, state: State<'_>, range: (usize, usize), scratch: &mut [f32]) {
        self.wide_lanes::<__m256, 8, true>(state, range, scratch);
    }

    /// The wide path with `L`-lane tiles (`FUSED`: multiply-adds are single instructions).
    /// Per sub-block: the scores transposed, `(nb, rows_padded)`, by [`scores_t`]; the
    /// lane-wise online softmax; `acc += Pᵀ · V` by [`add_weighted`].
    #[inline(always)]
    fn wide_lanes<V: Vector, const L: usize, const FUSED: bool>(
        &self,
        state: State<'_>,
        (start, end): (usize, usize),
        scratch: &mut [f32],
    ) {
        let (dk, dv, rows) = (self.layout.qk_dim, self.layout.v_dim, self.rows);
        let rp = rows.next_multiple_of(ROW_PAD);
        let (k, v) = (self.seq.k[self.g], self.seq.v[self.g]);
        let widen_k = contiguous(k).is_none();
        let widen_v = contiguous(v).is_none();
        {
            let (qt, rest) = scratch.split_at_mut(dk * rp);
            let block = wide_block(dk);
            let (st, rest) = rest.split_at_mut(block * rp);
            let (lane_stats, rest) = rest.split_at_mut(4 * rp);
            let (k_buf, v_buf) = rest.split_at_mut(block * dk);
            // Queries transposed, `(dk, rp)`, the padding rows 0.
            for c in 0..dk {
                let row = &mut qt[c * rp..][..rp];
                for (h, x) in row.iter_mut().enumerate() {
                    *x = if h < rows { self.query(h, c) } else { 0.0 };
                }
            }
            let State { acc, max, sum } = state;
            let (m, rest) = lane_stats.split_at_mut(rp);
            let (l, scratch_lanes) = rest.split_at_mut(rp);
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            for j0 in (start..end).step_by(block) {
                let nb = block.min(end - j0);
                let keys = rows_of(k.subrows(j0, nb), widen_k, k_buf);
                let st = &mut st[..nb * rp];
                scores_t::<V, L>(keys, qt, rp, st);
                let softmax = LaneSoftmax { m, l, rp, rows };
                softmax.step(st, self.layout.scale, scratch_lanes, acc, dv);
                let values = rows_of(v.subrows(j0, nb), widen_v, v_buf);
                add_weighted::<V, L, FUSED>(st, rp, values, rows, acc);
            }
            max.copy_from_slice(&m[..rows]);
            sum.copy_from_slice(&l[..rows]);
        }
    }
}

/// Keys per sub-block on the wide path for keys of width `dk`: [`WIDE_BLOCK_BYTES`] of them,
/// a multiple of 8 from [`WIDE_BLOCK_MIN`] to [`WIDE_BLOCK`] (MLA's 576-wide latent: 32; 128-wide
/// heads: 128).
fn wide_block(dk: usize) -> usize {
    (WIDE_BLOCK_BYTES / (4 * dk.max(1))).clamp(WIDE_BLOCK_MIN, WIDE_BLOCK) / 8 * 8
}

/// An f32 head's rows as contiguous rows, if they are.
fn contiguous(head: KvHead<'_>) -> Option<RowsRef<'_, f32>> {
    match head {
        KvHead::F32(m) => m.try_as_row_major(),
        _ => None,
    }
}

/// A sub-block's rows as contiguous f32 rows: the head itself, or widened into `buf` when
/// `widen` (stored, or f32 with strided columns).
#[inline(always)]
fn rows_of<'b>(block: KvHead<'b>, widen: bool, buf: &'b mut [f32]) -> RowsRef<'b, f32> {
    if !widen && let Some(rows) = contiguous(block) {
        return rows;
    }
    let (n, d) = (block.nrows(), block.ncols());
    block.widen_into(&mut buf[..n * d]);
    MatRef::from_row_major_slice(&buf[..n * d], n, d)
        .try_as_row_major()
        .expect("a row-major slice")
}

/// The row-wise online softmax step of the few-row path: `block` `(rows, nb)` holds a
/// sub-block's scores; each row's become its weights, and its maximum, sum and accumulators
/// `acc` `(rows, v_dim)` are rescaled.
#[inline(always)]
fn softmax_rows(block: &mut [f32], nb: usize, max: &mut [f32], sum: &mut [f32], acc: &mut [f32]) {
    let dv = acc.len() / max.len();
    for (r, row) in block.chunks_exact_mut(nb).enumerate() {
        let new_max = max_keeping_nan(max[r], max_of(row));
        let rescale = if max[r] == f32::NEG_INFINITY {
            0.0
        } else {
            (max[r] - new_max).exp()
        };
        let block_sum = exp_shifted_sum(row, new_max);
        sum[r] = sum[r] * rescale + block_sum;
        max[r] = new_max;
        if rescale != 1.0 {
            acc[r * dv..][..dv].iter_mut().for_each(|a| *a *= rescale);
        }
    }
}

/// The lane-wise online softmax of the wide path: row `r`'s maximum and sum in lane `r` of
/// `m` and `l` (`rp` lanes, the first `rows` real).
struct LaneSoftmax<'s> {
    m: &'s mut [f32],
    l: &'s mut [f32],
    rp: usize,
    rows: usize,
}

impl LaneSoftmax<'_> {
    /// `st` `(nb, rp)` holds unscaled scores; they become the weights `e^(scale·s − m)`, and
    /// the maxima, sums and accumulators `acc` `(rows, dv)` are rescaled. A non-finite score
    /// makes its lane's maximum NaN (as [`max_of`] does), so the row comes out NaN.
    #[inline(always)]
    fn step(self, st: &mut [f32], scale: f32, lanes: &mut [f32], acc: &mut [f32], dv: usize) {
        let rp = self.rp;
        let (block_max, rest) = lanes.split_at_mut(rp);
        let (poison, _) = rest.split_at_mut(rp);
        block_max.fill(f32::NEG_INFINITY);
        poison.fill(0.0);
        for row in st.chunks_exact_mut(rp) {
            for ((s, bm), p) in row.iter_mut().zip(&mut *block_max).zip(&mut *poison) {
                *s *= scale;
                *bm = if *s > *bm { *s } else { *bm };
                *p += *s * 0.0;
            }
        }
        // block_max becomes the new maximum, poison the rescale factor of the old state.
        for (((bm, p), m), l) in block_max
            .iter_mut()
            .zip(&mut *poison)
            .zip(&*self.m)
            .zip(&mut *self.l)
        {
            let new_max = max_keeping_nan(*m, *bm + *p);
            *p = if *m == f32::NEG_INFINITY {
                0.0
            } else {
                fast_exp(*m - new_max)
            };
            *bm = new_max;
            *l *= *p;
        }
        for row in st.chunks_exact_mut(rp) {
            for ((s, m), l) in row.iter_mut().zip(&*block_max).zip(&mut *self.l) {
                *s = fast_exp(*s - *m);
                *l += *s;
            }
        }
        for (r, &f) in poison.iter().enumerate().take(self.rows) {
            if f != 1.0 {
                acc[r * dv..][..dv].iter_mut().for_each(|a| *a *= f);
            }
        }
        self.m.copy_from_slice(block_max);
    }
}

/// `st[j · rp + r] = keys[j] · qt[.., r]`: the scores of a sub-block of keys `(nb, dk)`
/// against the transposed queries `qt` `(dk, rp)`, transposed `(nb, rp)`. Tiles of eight keys
/// by two vectors of rows (one when `rp` is one vector), each key element broadcast.
#[inline(always)]
fn scores_t<V: Vector, const L: usize>(
    keys: RowsRef<'_, f32>,
    qt: &[f32],
    rp: usize,
    st: &mut [f32],
) {
    let n = keys.nrows();
    let mut j = 0;
    while j + 8 <= n {
        score_tiles::<V, L, 8>(keys, j, qt, rp, st);
        j += 8;
    }
    while j < n {
        score_tiles::<V, L, 1>(keys, j, qt, rp, st);
        j += 1;
    }
}

/// Keys `j0..j0 + J` against every row, two vectors of rows at a time, then one.
#[inline(always)]
fn score_tiles<V: Vector, const L: usize, const J: usize>(
    keys: RowsRef<'_, f32>,
    j0: usize,
    qt: &[f32],
    rp: usize,
    st: &mut [f32],
) {
    let key_rows: [&[f32]; J] = std::array::from_fn(|jj| keys.row(j0 + jj).as_slice());
    let mut r0 = 0;
    while r0 + 2 * L <= rp {
        score_tile::<V, L, J, 2>(key_rows, j0, r0, qt, rp, st);
        r0 += 2 * L;
    }
    while r0 < rp {
        score_tile::<V, L, J, 1>(key_rows, j0, r0, qt, rp, st);
        r0 += L;
    }
}

/// One tile: `J` keys by `W` vectors of `L` rows from `r0`, `J · W` accumulators, on
/// explicit vectors (left to itself, the compiler vectorises along the keys with gathers).
#[expect(
    clippy::needless_range_loop,
    reason = "indices walk several register arrays in lockstep"
)]
#[inline(always)]
fn score_tile<V: Vector, const L: usize, const J: usize, const W: usize>(
    key_rows: [&[f32]; J],
    j0: usize,
    r0: usize,
    qt: &[f32],
    rp: usize,
    st: &mut [f32],
) {
    let d = key_rows[0].len();
    assert!(key_rows.iter().all(|k| k.len() == d) && qt.len() >= d * rp);
    assert!(r0 + W * L <= rp && st.len() >= (j0 + J) * rp);
    // SAFETY: c < d, the length of every key row and of `qt`'s rows (asserted above); the
    // tile's lanes are within `rp` and its keys within `st`; the caller runs on the features
    // `V` needs.
    unsafe {
        let mut acc = [[V::zero(); W]; J];
        for c in 0..d {
            let q = qt.as_ptr().add(c * rp + r0);
            let mut qv = [V::zero(); W];
            for w in 0..W {
                qv[w] = V::load(q.add(w * L));
            }
            for jj in 0..J {
                let x = V::splat(*key_rows[jj].get_unchecked(c));
                for w in 0..W {
                    acc[jj][w] = x.mul_add(qv[w], acc[jj][w]);
                }
            }
        }
        for jj in 0..J {
            let dst = st.as_mut_ptr().add((j0 + jj) * rp + r0);
            for w in 0..W {
                acc[jj][w].store(dst.add(w * L));
            }
        }
    }
}

/// `acc[r][..] += Σ_j st[j · rp + r] · values[j][..]` for the first `rows` rows: tiles of
/// four rows by four vectors of value columns, each weight broadcast, then one row, then one
/// vector, then the last columns one by one.
#[inline(always)]
fn add_weighted<V: Vector, const L: usize, const FUSED: bool>(
    st: &[f32],
    rp: usize,
    values: RowsRef<'_, f32>,
    rows: usize,
    acc: &mut [f32],
) {
    let dv = values.ncols();
    let (wide, whole) = (dv - dv % (4 * L), dv - dv % L);
    let mut r0 = 0;
    while r0 < rows {
        let four = r0 + 4 <= rows;
        let mut c0 = 0;
        while c0 < wide {
            if four {
                value_tile::<V, L, 4, 4>(st, rp, values, r0, c0, acc);
            } else {
                value_tile::<V, L, 1, 4>(st, rp, values, r0, c0, acc);
            }
            c0 += 4 * L;
        }
        while c0 < whole {
            if four {
                value_tile::<V, L, 4, 1>(st, rp, values, r0, c0, acc);
            } else {
                value_tile::<V, L, 1, 1>(st, rp, values, r0, c0, acc);
            }
            c0 += L;
        }
        let tile_rows = if four { 4 } else { 1 };
        for r in r0..r0 + tile_rows {
            for (j, w) in st.chunks_exact(rp).map(|row| row[r]).enumerate() {
                let value = &values.row(j).as_slice()[whole..];
                let dst = &mut acc[r * dv + whole..][..dv - whole];
                for (a, x) in dst.iter_mut().zip(value) {
                    *a = fma::<FUSED>(w, *x, *a);
                }
            }
        }
        r0 += tile_rows;
    }
}

/// One tile: rows `r0..r0 + R` by `C` vectors of `L` columns from `c0`, on explicit
/// vectors (left to itself, the compiler vectorises the loop over keys with gathers).
#[expect(
    clippy::needless_range_loop,
    reason = "indices walk several register arrays in lockstep"
)]
#[inline(always)]
fn value_tile<V: Vector, const L: usize, const R: usize, const C: usize>(
    st: &[f32],
    rp: usize,
    values: RowsRef<'_, f32>,
    r0: usize,
    c0: usize,
    acc: &mut [f32],
) {
    let (n, dv) = (values.nrows(), values.ncols());
    assert!(c0 + C * L <= dv && r0 + R <= rp && st.len() >= n * rp);
    assert!(acc.len() >= (r0 + R) * dv);
    let (base, stride) = (values.as_ptr(), values.row_stride());
    let a = acc.as_mut_ptr();
    // SAFETY: every access is within the bounds asserted above (rows `r0..r0 + R` of `acc`,
    // columns `c0..c0 + C · L` of each of the `n` value rows, lanes `r0..r0 + R` of each of
    // the `n` weight rows); the caller runs on the features `V` needs.
    unsafe {
        let mut sums = [[V::zero(); C]; R];
        for rr in 0..R {
            for k in 0..C {
                sums[rr][k] = V::load(a.add((r0 + rr) * dv + c0 + k * L));
            }
        }
        for j in 0..n {
            let row = base.offset(j as isize * stride).add(c0);
            let mut v = [V::zero(); C];
            for k in 0..C {
                v[k] = V::load(row.add(k * L));
            }
            let w = st.as_ptr().add(j * rp + r0);
            for rr in 0..R {
                let p = V::splat(*w.add(rr));
                for k in 0..C {
                    sums[rr][k] = p.mul_add(v[k], sums[rr][k]);
                }
            }
        }
        for rr in 0..R {
            for k in 0..C {
                sums[rr][k].store(a.add((r0 + rr) * dv + c0 + k * L));
            }
        }
    }
}

/// A vector of f32 lanes for the explicit tiles; each implementation's functions enable
/// only the features they need, so that they inline into callers compiled for them.
trait Vector: Copy {
    /// All lanes 0.
    ///
    /// # Safety
    /// The CPU has the implementation's features.
    unsafe fn zero() -> Self;
    /// The lanes from `p`.
    ///
    /// # Safety
    /// As [`Vector::zero`]; the lanes are readable at `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// The lanes to `p`.
    ///
    /// # Safety
    /// As [`Vector::zero`]; the lanes are writable at `p`.
    unsafe fn store(self, p: *mut f32);
    /// `x` in every lane.
    ///
    /// # Safety
    /// As [`Vector::zero`].
    unsafe fn splat(x: f32) -> Self;
    /// `self · b + c`, lane by lane.
    ///
    /// # Safety
    /// As [`Vector::zero`].
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
}

/// Four lanes as plain f32 (the portable path; a multiply and an add).
impl Vector for [f32; 4] {
    #[inline(always)]
    unsafe fn zero() -> Self {
        [0.0; 4]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        unsafe { p.cast::<[f32; 4]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { p.cast::<[f32; 4]>().write_unaligned(self) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        [x; 4]
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        std::array::from_fn(|i| self[i] * b[i] + c[i])
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Vector;

    /// Eight lanes on AVX2 + FMA.
    impl Vector for __m256 {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn zero() -> Self {
            _mm256_setzero_ps()
        }
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { _mm256_storeu_ps(p, self) }
        }
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn splat(x: f32) -> Self {
            _mm256_set1_ps(x)
        }
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            _mm256_fmadd_ps(self, b, c)
        }
    }

    /// Sixteen lanes on AVX-512F.
    impl Vector for __m512 {
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's contract.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { _mm512_storeu_ps(p, self) }
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn splat(x: f32) -> Self {
            _mm512_set1_ps(x)
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            _mm512_fmadd_ps(self, b, c)
        }
    }
}

/// `a · b + c`, one instruction when `FUSED` (the caller is compiled with FMA), else a
/// multiply and an add (the baseline's `mul_add` is a library call).
#[inline(always)]
fn fma<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}
