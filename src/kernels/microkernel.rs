//! Prefill's online softmax on AVX-512: the tiled kernel's many-row block loop (a packed block
//! of more than eight query rows) with its two products on register-blocked micro-kernels and
//! its softmax vectorised across query rows.
//!
//! Why not faer here: each block's products are small (128 rows × 256 keys × 128 wide), so
//! faer's packing of both operands and its dispatch take a share of every call; and a score
//! block laid out row by row leaves the softmax with horizontal reductions per query row.
//! Instead the queries are transposed once per task, `qt: (d, rows)`, and the scores of a
//! block come out transposed, `(keys, rows)`: sixteen query rows per vector, so the scores
//! product broadcasts key elements straight from the keys (no packing), the row maxima and
//! sums are vertical operations, the causal mask is one integer comparison per vector, and
//! the weighted sum `acc += P · V` broadcasts each weight against value rows read in place.
//! All f32 (docs/design.md §5): stored keys and values arrive widened by the caller.
//!
//! On a CPU without AVX-512F (checked at run time) [`ManyRows::new`] returns `None` and the
//! tiled kernel keeps its faer path.

use faer::MatRef;

/// The state of the online softmax of one packed block of query rows over the blocks of keys
/// it is given, and the buffers it reuses from block to block.
pub(super) struct ManyRows {
    rows: usize,
    /// `rows` rounded up to whole vectors of sixteen lanes.
    padded: usize,
    /// Distance between the rows of `qt` and of `weights`: `padded` and one vector more. At
    /// `padded` alone (128 rows: 512 bytes) every row starts in the same few L1 sets, and a
    /// pass down a column of `qt` or `weights` evicts itself: the micro-kernels ran at about
    /// half the FMA peak on a Xeon (12-way 48 KiB L1) until the rows were staggered.
    stride: usize,
    d: usize,
    dv: usize,
    scale: f32,
    /// Queries transposed, `(d, padded)` with row stride `stride`: column `r` is packed row
    /// `r`, zero past `rows`.
    qt: Vec<f32>,
    /// Per padded row, the last key position it sees, as i32 lanes; −1 for padding.
    last: Vec<i32>,
    /// The lowest last position over the real rows: a block ending at or before it is
    /// visible to every row and needs no mask.
    all_see: usize,
    /// One block's scores, then its weights, `(nb, padded)` with row stride `stride`.
    weights: Vec<f32>,
    /// Per padded row: running maximum, running sum, and the last block's rescale factor.
    max: Vec<f32>,
    sum: Vec<f32>,
    rescale: Vec<f32>,
    /// Keys and values of a block whose rows are not contiguous, copied.
    k_buf: Vec<f32>,
    v_buf: Vec<f32>,
    /// Whether the score pass prefetches the keys and values ahead of its tiles: for keys
    /// streamed once from memory (decode), not for blocks that prefill's query tiles reread
    /// from cache, where the extra instructions only cost.
    fetch_ahead: bool,
    /// The block after the next one `block` is given, for its score pass to prefetch.
    next: Option<NextRows>,
}

/// Where the rows of a block of keys and values start, for prefetching only: never read
/// through. Prefetching the block after the current one into L2, spread over the current
/// block's score tiles, gives memory a whole block's compute to deliver it in, where one
/// tile ahead gives it less than a microsecond.
#[derive(Clone, Copy)]
struct NextRows {
    k: *const f32,
    k_stride: usize,
    v: *const f32,
    v_stride: usize,
    rows: usize,
}

/// Lanes of one AVX-512 f32 vector.
const LANES: usize = 16;

/// Which keys of a block its rows see, for a block the causal mask cuts: row `r` sees the
/// block's keys up to position `last[r]`, so a set of rows sees a prefix of them, up to its
/// latest row's position. The micro-kernels compute a tile of rows over that prefix only:
/// a query tile on the diagonal (all of MHA's 128-token prefill, one 128 × 128 block) spent
/// half its products on keys no row of a tile could see.
#[derive(Clone, Copy)]
struct Causal<'a> {
    /// Per padded row, the last key position it sees (−1 for padding).
    last: &'a [i32],
    /// Position of the first key of the keys in question.
    first: usize,
}

impl<'a> Causal<'a> {
    /// Of the `nb` keys from [`Self::first`], how many some row of `rows` sees.
    fn seen(&self, rows: std::ops::Range<usize>, nb: usize) -> usize {
        let latest = self.last[rows].iter().copied().max().unwrap_or(-1);
        usize::try_from(i64::from(latest) + 1 - self.first as i64)
            .unwrap_or(0)
            .min(nb)
    }

    /// The same rows over the keys from `offset` keys later.
    fn after(self, offset: usize) -> Causal<'a> {
        Causal {
            first: self.first + offset,
            ..self
        }
    }
}

impl ManyRows {
    /// The state before any key, for `rows` packed query rows `packed` (row-major
    /// `(rows, d)`), values `dv` wide, scores multiplied by `scale`, row `r` seeing keys up to
    /// position `last_seen(r)`. `None` when the CPU has no AVX-512F: the caller then runs its
    /// portable path.
    pub(super) fn new(
        packed: &[f32],
        rows: usize,
        (d, dv): (usize, usize),
        scale: f32,
        last_seen: impl Fn(usize) -> usize,
    ) -> Option<Self> {
        if !available() || rows == 0 {
            return None;
        }
        debug_assert_eq!(packed.len(), rows * d);
        let padded = rows.next_multiple_of(LANES);
        let stride = padded + LANES;
        let mut qt = vec![0.0f32; d * stride];
        // Column by column of `qt` (its rows are long), reading `packed` with a stride: the
        // writes stay sequential.
        for (c, column) in qt.chunks_exact_mut(stride).enumerate() {
            for (r, x) in column[..rows].iter_mut().enumerate() {
                *x = packed[r * d + c];
            }
        }
        let clamp = |p: usize| i32::try_from(p).unwrap_or(i32::MAX);
        let last: Vec<i32> = (0..padded)
            .map(|r| if r < rows { clamp(last_seen(r)) } else { -1 })
            .collect();
        let all_see = (0..rows).map(&last_seen).min().unwrap_or(0);
        Some(Self {
            rows,
            padded,
            stride,
            d,
            dv,
            scale,
            qt,
            last,
            all_see,
            weights: Vec::new(),
            max: vec![f32::NEG_INFINITY; padded],
            sum: vec![0.0; padded],
            rescale: vec![0.0; padded],
            k_buf: Vec::new(),
            v_buf: Vec::new(),
            fetch_ahead: false,
            next: None,
        })
    }

    /// The same state, prefetching each block's keys and values ahead of its score pass: for
    /// a cache read once, from memory.
    pub(super) fn streaming(self) -> Self {
        Self {
            fetch_ahead: true,
            ..self
        }
    }

    /// Names the keys `k: (n, d)` and values `v: (n, dv)` of the block after the one the next
    /// [`ManyRows::block`] is given, for that call's score pass to prefetch into L2 (streaming
    /// states only; rows that are not contiguous are not prefetched).
    pub(super) fn prefetch_next(&mut self, k: MatRef<'_, f32>, v: MatRef<'_, f32>) {
        self.next = match (k.try_as_row_major(), v.try_as_row_major()) {
            (Some(k), Some(v)) if self.fetch_ahead && k.nrows() == v.nrows() => Some(NextRows {
                k: k.as_ptr(),
                k_stride: k.row_stride() as usize,
                v: v.as_ptr(),
                v_stride: v.row_stride() as usize,
                rows: k.nrows(),
            }),
            _ => None,
        };
    }

    /// One block of the online softmax: keys `k: (nb, d)` and values `v: (nb, dv)` at
    /// positions `j0..j0 + nb`; `acc` the unnormalised output rows, row-major `(rows, dv)`,
    /// rescaled and added to. `hidden_finite` says the values of keys hidden from some row
    /// are all finite: otherwise each row adds its visible keys only, so that `0 · NaN`
    /// never reaches a row that cannot see the NaN.
    pub(super) fn block(
        &mut self,
        k: MatRef<'_, f32>,
        v: MatRef<'_, f32>,
        j0: usize,
        acc: &mut [f32],
        hidden_finite: bool,
    ) {
        let nb = k.nrows();
        debug_assert_eq!((k.ncols(), v.ncols(), v.nrows()), (self.d, self.dv, nb));
        debug_assert_eq!(acc.len(), self.rows * self.dv);
        if nb == 0 {
            return;
        }
        // Taken out of the state while the views borrow them, put back below.
        let (mut k_buf, mut v_buf) = (
            std::mem::take(&mut self.k_buf),
            std::mem::take(&mut self.v_buf),
        );
        let k = rows_of(k, &mut k_buf);
        let v = rows_of(v, &mut v_buf);
        if self.weights.len() < nb * self.stride {
            self.weights.resize(nb * self.stride, 0.0);
        }
        let masked = j0 + nb - 1 > self.all_see;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` returned `Some`, so the CPU has AVX-512F; the shapes are the state's.
        unsafe {
            let rows = (self.padded, self.stride);
            let ahead = self.fetch_ahead.then_some((v, self.next.take()));
            let causal = masked.then_some(Causal {
                last: &self.last,
                first: j0,
            });
            avx512::scores(
                k,
                ahead,
                &self.qt,
                rows,
                self.scale,
                causal,
                &mut self.weights,
            );
            avx512::softmax(self, nb, j0, masked);
        }
        for (r, row) in acc.chunks_exact_mut(self.dv.max(1)).enumerate() {
            let f = self.rescale[r];
            if f != 1.0 {
                row.iter_mut().for_each(|a| *a *= f);
            }
        }
        if hidden_finite || !masked {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            unsafe {
                let causal = masked.then_some(Causal {
                    last: &self.last,
                    first: j0,
                });
                avx512::add_values(&self.weights, self.stride, self.rows, causal, v, acc)
            };
        } else {
            self.add_visible_values(v, j0, acc);
        }
        self.k_buf = k_buf;
        self.v_buf = v_buf;
    }

    /// `acc += P · V` row by row over the keys each row sees only (a failing run's path:
    /// a non-finite value hides among keys some row cannot see).
    fn add_visible_values(&self, v: super::simd::RowsRef<'_, f32>, j0: usize, acc: &mut [f32]) {
        let nb = v.nrows();
        for (r, row) in acc.chunks_exact_mut(self.dv.max(1)).enumerate() {
            let seen = usize::try_from(i64::from(self.last[r]) + 1 - j0 as i64).unwrap_or(0);
            for j in 0..seen.min(nb) {
                let w = self.weights[j * self.stride + r];
                row.iter_mut()
                    .zip(v.row(j).as_slice())
                    .for_each(|(a, x)| *a += w * x);
            }
        }
    }

    /// The running maxima and sums of the real rows, into `max` and `sum` (`rows` each).
    pub(super) fn stats_into(&self, max: &mut [f32], sum: &mut [f32]) {
        max.copy_from_slice(&self.max[..self.rows]);
        sum.copy_from_slice(&self.sum[..self.rows]);
    }
}

/// The code prefill's many-row block loop (more than 8 packed query rows) runs on this CPU:
/// `"avx512f"` (the micro-kernels here) or `"faer"` (faer's products per block, everywhere
/// else).
pub fn prefill_path() -> &'static str {
    if available() { "avx512f" } else { "faer" }
}

/// True when the CPU runs the AVX-512 micro-kernels.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `m` with contiguous rows, packed one after the other: itself when it is, else copied into
/// `buf`. Why copy rows that are contiguous but far apart (one head's columns of a cache
/// plane: 16 KiB apart with 32 KV heads of 128): the micro-kernels pass over a block many
/// times, and rows on different pages cost a TLB entry each on every pass.
fn rows_of<'a>(m: MatRef<'a, f32>, buf: &'a mut Vec<f32>) -> super::simd::RowsRef<'a, f32> {
    let (n, w) = (m.nrows(), m.ncols());
    if let Some(rows) = m.try_as_row_major() {
        return rows;
    }
    buf.clear();
    match m.try_as_row_major() {
        Some(rows) => (0..n).for_each(|j| buf.extend_from_slice(rows.row(j).as_slice())),
        None => buf.extend((0..n).flat_map(|j| (0..w).map(move |c| m[(j, c)]))),
    }
    MatRef::from_row_major_slice(&buf[..], n, w)
        .try_as_row_major()
        .expect("a row-major slice has contiguous rows")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::simd::RowsRef;
    use super::{Causal, LANES, ManyRows, NextRows};

    /// Most vectors of query rows one score tile holds (64 rows).
    const SCORE_VECTORS: usize = 4;

    /// `out[j · stride + r] = scale · k_j · qt[.., r]` for every key `j` of `k` and padded
    /// row `r < padded`: tiles of `MR` keys by up to 64 rows, one accumulator per key and
    /// vector. With `fetch` (the block's values, `(nb, dv)`, and maybe the next block's
    /// rows), the first pass over the keys prefetches the next tile's keys, this tile's
    /// values and a share of the next block (see [`Ahead`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `qt` is `(d, padded)` with row stride `stride ≥ padded`,
    /// `padded` a multiple of 16; `out` holds `nb` rows of stride `stride`. With `causal`, a
    /// tile's rows get the scores of the keys some row of the tile sees only; the others are
    /// left as they were (the softmax masks them).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores(
        k: RowsRef<'_, f32>,
        fetch: Option<(RowsRef<'_, f32>, Option<NextRows>)>,
        qt: &[f32],
        (padded, stride): (usize, usize),
        scale: f32,
        causal: Option<Causal<'_>>,
        out: &mut [f32],
    ) {
        let (nb, d) = (k.nrows(), k.ncols());
        assert!(stride >= padded && qt.len() >= d * stride && out.len() >= nb * stride);
        let ahead = fetch.map(|(v, next)| {
            assert_eq!(v.nrows(), nb);
            Ahead {
                k_bytes: d * 4,
                v: v.as_ptr(),
                v_stride: v.row_stride() as usize,
                v_bytes: v.ncols() * 4,
                next,
            }
        });
        let k_stride = k.row_stride() as usize;
        let k = k.as_ptr();
        for r0 in (0..padded).step_by(LANES * SCORE_VECTORS) {
            let vectors = ((padded - r0) / LANES).min(SCORE_VECTORS);
            let nb = causal.map_or(nb, |c| c.seen(r0..r0 + LANES * vectors, nb));
            if nb == 0 {
                continue;
            }
            let geometry = Geometry {
                k_stride,
                stride,
                d,
                scale,
                // The first pass over the keys fetches them: later passes find them cached.
                ahead: ahead.as_ref().filter(|_| r0 == 0),
            };
            // SAFETY: rows r0..r0 + 16 · vectors are within `padded`; the caller's contract.
            unsafe {
                let (q, o) = (qt.as_ptr().add(r0), out.as_mut_ptr().add(r0));
                match vectors {
                    4 => score_keys::<6, 4>(&geometry, k, nb, q, o),
                    3 => score_keys::<8, 3>(&geometry, k, nb, q, o),
                    2 => score_keys::<12, 2>(&geometry, k, nb, q, o),
                    _ => score_keys::<12, 1>(&geometry, k, nb, q, o),
                }
            }
        }
    }

    /// Strides and sizes of a score product.
    struct Geometry<'a> {
        k_stride: usize,
        /// Row stride of the transposed queries and of the scores.
        stride: usize,
        d: usize,
        scale: f32,
        /// What to fetch ahead of the tiles, on the pass that first reads the keys.
        ahead: Option<&'a Ahead>,
    }

    /// The rows a score pass asks the memory for before it needs them: the next tile's keys
    /// into L1 and the current tile's values into L2, for the value pass that follows. Why:
    /// a tile reads its keys column by column, twelve rows at a time, and a fresh 4 KiB page
    /// every eight keys, where the hardware's prefetchers stop; with the caches evicted, MQA's
    /// decode core waited on memory for about as long as it computed.
    struct Ahead {
        k_bytes: usize,
        v: *const f32,
        v_stride: usize,
        v_bytes: usize,
        /// The next block, into L2, an equal share of its rows at each tile.
        next: Option<NextRows>,
    }

    /// Prefetches the cache lines of `n` rows from `p`, `stride` floats apart, `bytes` long.
    ///
    /// # Safety
    /// The rows are within one allocation (a prefetch never faults, but the pointer
    /// arithmetic must stay in bounds).
    #[inline(always)]
    unsafe fn prefetch_rows<const HINT: i32>(p: *const f32, n: usize, stride: usize, bytes: usize) {
        for j in 0..n {
            // SAFETY: row j is within the allocation; the caller's contract.
            let row = p.wrapping_add(j * stride).cast::<i8>();
            for off in (0..bytes).step_by(64) {
                // SAFETY: as above, `off` within the row.
                unsafe { _mm_prefetch::<HINT>(row.wrapping_add(off)) };
            }
        }
    }

    /// All `nb` keys against `NV` vectors of rows: tiles of `MR` keys, then the leftover
    /// keys in one smaller tile.
    ///
    /// # Safety
    /// As [`scores`], with `q` and `out` at the first row of the vectors.
    #[target_feature(enable = "avx512f")]
    unsafe fn score_keys<const MR: usize, const NV: usize>(
        g: &Geometry,
        k: *const f32,
        nb: usize,
        q: *const f32,
        out: *mut f32,
    ) {
        let whole = nb - nb % MR;
        let tiles = (whole / MR).max(1);
        // SAFETY (all): keys j..j + MR exist; the caller's contract.
        unsafe {
            for j in (0..whole).step_by(MR) {
                if let Some(a) = g.ahead {
                    // One tile ahead: measured on the Xeon, two and four tiles did no better.
                    let (ks, vs) = (g.k_stride, a.v_stride);
                    prefetch_rows::<_MM_HINT_T0>(k.wrapping_add((j + MR) * ks), MR, ks, a.k_bytes);
                    prefetch_rows::<_MM_HINT_T1>(a.v.wrapping_add(j * vs), MR, vs, a.v_bytes);
                    if let Some(n) = a.next {
                        let share = n.rows.div_ceil(tiles);
                        let first = (j / MR * share).min(n.rows);
                        let count = share.min(n.rows - first);
                        let (nk, nv) = (
                            n.k.wrapping_add(first * n.k_stride),
                            n.v.wrapping_add(first * n.v_stride),
                        );
                        prefetch_rows::<_MM_HINT_T1>(nk, count, n.k_stride, a.k_bytes);
                        prefetch_rows::<_MM_HINT_T1>(nv, count, n.v_stride, a.v_bytes);
                    }
                }
                score_tile::<MR, NV>(g, k.add(j * g.k_stride), q, out.add(j * g.stride));
            }
            let (k, out) = (k.add(whole * g.k_stride), out.add(whole * g.stride));
            match nb - whole {
                0 => {}
                1 => score_tile::<1, NV>(g, k, q, out),
                2 => score_tile::<2, NV>(g, k, q, out),
                3 => score_tile::<3, NV>(g, k, q, out),
                4 => score_tile::<4, NV>(g, k, q, out),
                5 => score_tile::<5, NV>(g, k, q, out),
                6 => score_tile::<6, NV>(g, k, q, out),
                7 => score_tile::<7, NV>(g, k, q, out),
                _ => {
                    score_tile::<8, NV>(g, k, q, out);
                    let left = nb - whole - 8;
                    for j in 0..left {
                        let at = 8 + j;
                        score_tile::<1, NV>(g, k.add(at * g.k_stride), q, out.add(at * g.stride));
                    }
                }
            }
        }
    }

    /// One tile: `MR` keys by `NV` vectors of rows, `MR · NV` accumulators over the whole
    /// head width, each step one load per vector and one broadcast per key.
    ///
    /// # Safety
    /// As [`score_keys`], for `MR` keys.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn score_tile<const MR: usize, const NV: usize>(
        g: &Geometry,
        k: *const f32,
        q: *const f32,
        out: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        // SAFETY (all): column c < d of MR key rows and of NV vectors of qt; the caller's
        // contract.
        unsafe {
            for c in 0..g.d {
                let qc = q.add(c * g.stride);
                let mut qv = [_mm512_setzero_ps(); NV];
                for (n, v) in qv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(qc.add(LANES * n));
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    let kb = _mm512_set1_ps(*k.add(m * g.k_stride + c));
                    for (a, v) in row.iter_mut().zip(&qv) {
                        *a = _mm512_fmadd_ps(kb, *v, *a);
                    }
                }
            }
            let s = _mm512_set1_ps(g.scale);
            for (m, row) in acc.iter().enumerate() {
                for (n, a) in row.iter().enumerate() {
                    _mm512_storeu_ps(out.add(m * g.stride + LANES * n), _mm512_mul_ps(*a, s));
                }
            }
        }
    }

    /// The softmax step of one block of `nb` keys from `j0` over the state's score block,
    /// sixteen rows per vector: masks the keys a row cannot see (when `masked`), takes the
    /// block maxima (NaN for a row that sees a non-finite score: `s · 0` summed beside),
    /// turns the scores into weights `e^(s − new max)` (0 where masked) and updates the
    /// maxima, the sums and the rows' rescale factors (0 while a row has seen nothing).
    ///
    /// # Safety
    /// The CPU has AVX-512F; the state's weights hold `nb` rows of scores.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax(state: &mut ManyRows, nb: usize, j0: usize, masked: bool) {
        let (padded, stride) = (state.padded, state.stride);
        let w = state.weights.as_mut_ptr();
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let zero = _mm512_setzero_ps();
        for v in (0..padded).step_by(LANES) {
            // SAFETY (all): lanes v..v + 16 of rows j < nb are within the weights, and of the
            // per-row vectors; the caller's contract.
            unsafe {
                let last = _mm512_loadu_si512(state.last.as_ptr().add(v).cast());
                // Keys past every lane's last are masked in all sixteen: their weights are 0,
                // with no score read (the score pass left them as they were).
                let seen = if masked {
                    let causal = Causal {
                        last: &state.last,
                        first: j0,
                    };
                    causal.seen(v..v + LANES, nb)
                } else {
                    nb
                };
                let sees = |j: usize| {
                    let pos = i32::try_from(j0 + j).unwrap_or(i32::MAX);
                    _mm512_cmple_epi32_mask(_mm512_set1_epi32(pos), last)
                };
                let (mut top, mut poison) = (neg_inf, zero);
                for j in 0..seen {
                    let at = w.add(j * stride + v);
                    let mut s = _mm512_loadu_ps(at);
                    if masked {
                        let k = sees(j);
                        s = _mm512_mask_mov_ps(neg_inf, k, s);
                        _mm512_storeu_ps(at, s);
                        poison = _mm512_mask_add_ps(poison, k, poison, _mm512_mul_ps(s, zero));
                    } else {
                        poison = _mm512_add_ps(poison, _mm512_mul_ps(s, zero));
                    }
                    top = _mm512_max_ps(top, s);
                }
                let old = _mm512_loadu_ps(state.max.as_ptr().add(v));
                // `max(top, old)` is `old` when `old` is NaN (a row poisoned before).
                let new = _mm512_add_ps(_mm512_max_ps(top, old), poison);
                let unseen = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(old, neg_inf);
                let rescale = _mm512_mask_mov_ps(exp(_mm512_sub_ps(old, new)), unseen, zero);
                let mut total = zero;
                for j in 0..seen {
                    let at = w.add(j * stride + v);
                    let mut p = exp(_mm512_sub_ps(_mm512_loadu_ps(at), new));
                    if masked {
                        p = _mm512_maskz_mov_ps(sees(j), p);
                    }
                    _mm512_storeu_ps(at, p);
                    total = _mm512_add_ps(total, p);
                }
                for j in seen..nb {
                    _mm512_storeu_ps(w.add(j * stride + v), zero);
                }
                let sum = _mm512_loadu_ps(state.sum.as_ptr().add(v));
                _mm512_storeu_ps(
                    state.sum.as_mut_ptr().add(v),
                    _mm512_fmadd_ps(sum, rescale, total),
                );
                _mm512_storeu_ps(state.max.as_mut_ptr().add(v), new);
                _mm512_storeu_ps(state.rescale.as_mut_ptr().add(v), rescale);
            }
        }
    }

    /// [`fast_exp`](super::super::simd::fast_exp) on sixteen lanes: the same clamp at −87
    /// (NaN passes through), reduction by ln 2 in two parts and degree-6 polynomial; `2^n`
    /// applied by `vscalefps`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp(x: __m512) -> __m512 {
        let floor = _mm512_set1_ps(-87.0);
        let x = _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, floor), floor);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// `acc[r] += Σ_j weights[j · stride + r] · v_j` for the `rows` real rows: keys in
    /// chunks of [`VALUE_KEYS`], and over each chunk tiles of `MR` rows by up to 64 value
    /// columns, the last vector of a row masked to its width. With `causal`, a tile of rows
    /// adds the keys some row of the tile sees only (the others' weights are 0).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `weights` holds `nb` rows of stride `stride`, `acc` is
    /// `(rows, dv)`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_values(
        weights: &[f32],
        stride: usize,
        rows: usize,
        causal: Option<Causal<'_>>,
        v: RowsRef<'_, f32>,
        acc: &mut [f32],
    ) {
        let (nb, dv) = (v.nrows(), v.ncols());
        assert!(weights.len() >= nb * stride && acc.len() >= rows * dv);
        let v_stride = v.row_stride() as usize;
        let (v, w, acc) = (v.as_ptr(), weights.as_ptr(), acc.as_mut_ptr());
        for j0 in (0..nb).step_by(VALUE_KEYS) {
            let g = &Values {
                stride,
                v_stride,
                nb: (nb - j0).min(VALUE_KEYS),
                dv,
                causal: causal.map(|c| c.after(j0)),
            };
            // SAFETY: keys j0.. exist; the caller's contract.
            let (v, w) = unsafe { (v.add(j0 * v_stride), w.add(j0 * stride)) };
            // SAFETY: the caller's contract, for the chunk's keys.
            unsafe { add_chunk(g, rows, w, v, acc) };
        }
    }

    /// Keys per chunk of [`add_values`]: every tile of rows passes over the chunk's values
    /// (64 columns of 64 keys: 16 KiB) while they stay in L1, instead of over the whole
    /// block's, which spill to L2 between tiles.
    const VALUE_KEYS: usize = 64;

    /// [`add_values`] over one chunk of `g.nb` keys.
    ///
    /// # Safety
    /// As [`add_values`], with `w` and `v` at the chunk's first key.
    #[target_feature(enable = "avx512f")]
    unsafe fn add_chunk(g: &Values, rows: usize, w: *const f32, v: *const f32, acc: *mut f32) {
        let dv = g.dv;
        for c0 in (0..dv).step_by(LANES * 4) {
            let width = (dv - c0).min(LANES * 4);
            let vectors = width.div_ceil(LANES);
            let tail = width - LANES * (vectors - 1);
            let mask: __mmask16 = if tail == LANES {
                !0
            } else {
                (1u16 << tail) - 1
            };
            // SAFETY: columns c0..c0 + width are within dv; the caller's contract.
            unsafe {
                let (v, acc) = (v.add(c0), acc.add(c0));
                match vectors {
                    4 => value_rows::<6, 4>(g, rows, w, v, acc, mask),
                    3 => value_rows::<8, 3>(g, rows, w, v, acc, mask),
                    2 => value_rows::<12, 2>(g, rows, w, v, acc, mask),
                    _ => value_rows::<12, 1>(g, rows, w, v, acc, mask),
                }
            }
        }
    }

    /// Strides and sizes of a weighted sum.
    struct Values<'a> {
        /// Row stride of the weights.
        stride: usize,
        v_stride: usize,
        nb: usize,
        dv: usize,
        /// The rows' causal mask over the chunk's keys.
        causal: Option<Causal<'a>>,
    }

    impl Values<'_> {
        /// Keys of the chunk some row of `rows` sees.
        fn seen(&self, rows: std::ops::Range<usize>) -> usize {
            self.causal.map_or(self.nb, |c| c.seen(rows, self.nb))
        }
    }

    /// All rows against `NV` vectors of value columns: tiles of `MR` rows, then the leftover
    /// rows in one smaller tile.
    ///
    /// # Safety
    /// As [`add_values`], with `v` and `acc` at the first column of the vectors.
    #[target_feature(enable = "avx512f")]
    unsafe fn value_rows<const MR: usize, const NV: usize>(
        g: &Values,
        rows: usize,
        w: *const f32,
        v: *const f32,
        acc: *mut f32,
        mask: __mmask16,
    ) {
        let whole = rows - rows % MR;
        // SAFETY (all): rows r..r + MR exist; the caller's contract.
        unsafe {
            for r in (0..whole).step_by(MR) {
                let nb = g.seen(r..r + MR);
                value_tile::<MR, NV>(g, nb, w.add(r), v, acc.add(r * g.dv), mask);
            }
            let (w, acc) = (w.add(whole), acc.add(whole * g.dv));
            let nb = g.seen(whole..rows);
            match rows - whole {
                0 => {}
                1 => value_tile::<1, NV>(g, nb, w, v, acc, mask),
                2 => value_tile::<2, NV>(g, nb, w, v, acc, mask),
                3 => value_tile::<3, NV>(g, nb, w, v, acc, mask),
                4 => value_tile::<4, NV>(g, nb, w, v, acc, mask),
                5 => value_tile::<5, NV>(g, nb, w, v, acc, mask),
                6 => value_tile::<6, NV>(g, nb, w, v, acc, mask),
                7 => value_tile::<7, NV>(g, nb, w, v, acc, mask),
                left => {
                    value_tile::<8, NV>(g, nb, w, v, acc, mask);
                    for r in 8..left {
                        let (w, acc) = (w.add(r), acc.add(r * g.dv));
                        value_tile::<1, NV>(g, nb, w, v, acc, mask);
                    }
                }
            }
        }
    }

    /// One tile: `MR` rows by `NV` vectors of value columns held in registers over the
    /// chunk's first `nb` keys, each step one load per vector and one broadcast per row.
    ///
    /// # Safety
    /// As [`value_rows`], for `MR` rows, `nb ≤ g.nb`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn value_tile<const MR: usize, const NV: usize>(
        g: &Values,
        nb: usize,
        w: *const f32,
        v: *const f32,
        acc: *mut f32,
        mask: __mmask16,
    ) {
        if nb == 0 {
            return;
        }
        let full: __mmask16 = !0;
        let lane_mask = |n: usize| if n + 1 == NV { mask } else { full };
        let mut o = [[_mm512_setzero_ps(); NV]; MR];
        // SAFETY (all): rows of acc and v within their shapes, lanes past the width masked;
        // the caller's contract.
        unsafe {
            for (m, row) in o.iter_mut().enumerate() {
                for (n, x) in row.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_ps(lane_mask(n), acc.add(m * g.dv + LANES * n));
                }
            }
            for j in 0..nb {
                let vj = v.add(j * g.v_stride);
                let mut vv = [_mm512_setzero_ps(); NV];
                for (n, x) in vv.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_ps(lane_mask(n), vj.add(LANES * n));
                }
                let wj = w.add(j * g.stride);
                for (m, row) in o.iter_mut().enumerate() {
                    let p = _mm512_set1_ps(*wj.add(m));
                    for (x, y) in row.iter_mut().zip(&vv) {
                        *x = _mm512_fmadd_ps(p, *y, *x);
                    }
                }
            }
            for (m, row) in o.iter().enumerate() {
                for (n, x) in row.iter().enumerate() {
                    _mm512_mask_storeu_ps(acc.add(m * g.dv + LANES * n), lane_mask(n), *x);
                }
            }
        }
    }
}
