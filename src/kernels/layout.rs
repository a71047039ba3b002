//! The operand and head-layout types every attention kernel takes, and the gather from the
//! kernels' head-major output to the row-major layout the output projection reads.

use faer::MatRef;

use super::narrow::StoredRows;

/// The keys or values of one KV head as a kernel reads them: `(s_k, width)`, rows contiguous.
#[derive(Clone, Copy, Debug)]
pub enum KvHead<'a> {
    /// f32 rows, any strides (a cache stored in f32, or keys a layer built itself).
    F32(MatRef<'a, f32>),
    /// Rows stored in bf16, f16 or int8 (one scale per row), read widened (docs/design.md §5).
    Stored(StoredRows<'a>),
    /// A row of two stored parts side by side, columns `0..a` from the first and `a..` from
    /// the second, each with its own scales: MLA's int8 latent `[c_kv | k_rope]`, whose two
    /// parts have a scale each. Both parts have the same rows.
    Split(StoredRows<'a>, StoredRows<'a>),
}

impl<'a> KvHead<'a> {
    /// Rows (tokens), `s_k`.
    pub fn nrows(&self) -> usize {
        match self {
            KvHead::F32(m) => m.nrows(),
            KvHead::Stored(rows) | KvHead::Split(rows, _) => rows.nrows(),
        }
    }

    /// Values per row.
    pub fn ncols(&self) -> usize {
        match self {
            KvHead::F32(m) => m.ncols(),
            KvHead::Stored(rows) => rows.ncols(),
            KvHead::Split(a, b) => a.ncols() + b.ncols(),
        }
    }

    /// Rows `start..start + n`.
    ///
    /// # Panics
    /// If the range is not within the rows.
    #[track_caller]
    pub fn subrows(self, start: usize, n: usize) -> Self {
        match self {
            KvHead::F32(m) => KvHead::F32(m.subrows(start, n)),
            KvHead::Stored(rows) => KvHead::Stored(rows.subrows(start, n)),
            KvHead::Split(a, b) => KvHead::Split(a.subrows(start, n), b.subrows(start, n)),
        }
    }

    /// Columns `start..start + n` (of a split row: of the parts they fall in, a part alone
    /// when they fall in one).
    ///
    /// # Panics
    /// If the range is not within the columns.
    #[track_caller]
    pub fn subcols(self, start: usize, n: usize) -> Self {
        match self {
            KvHead::F32(m) => KvHead::F32(m.subcols(start, n)),
            KvHead::Stored(rows) => KvHead::Stored(rows.subcols(start, n)),
            KvHead::Split(a, b) => {
                let split = a.ncols();
                assert!(start + n <= split + b.ncols(), "columns out of range");
                if start + n <= split {
                    KvHead::Stored(a.subcols(start, n))
                } else if start >= split {
                    KvHead::Stored(b.subcols(start - split, n))
                } else {
                    KvHead::Split(
                        a.subcols(start, split - start),
                        b.subcols(0, start + n - split),
                    )
                }
            }
        }
    }

    /// The rows as f32 values (the stored values widened), into `dst`, row-major
    /// `(s_k, width)`.
    ///
    /// # Panics
    /// If `dst` is not `s_k · width` long.
    #[track_caller]
    pub fn widen_into(&self, dst: &mut [f32]) {
        let (n, d) = (self.nrows(), self.ncols());
        assert_eq!(dst.len(), n * d, "widened head length");
        match self {
            KvHead::F32(m) => {
                for (j, out) in dst.chunks_exact_mut(d.max(1)).take(n).enumerate() {
                    for (c, o) in out.iter_mut().enumerate() {
                        *o = m[(j, c)];
                    }
                }
            }
            KvHead::Stored(rows) => rows.widen_into(dst, d),
            KvHead::Split(a, b) => {
                let split = a.ncols();
                a.widen_into(dst, d);
                if n > 0 {
                    b.widen_into(&mut dst[split..], d);
                }
            }
        }
    }

    /// The rows as f32: an f32 head as it is, a stored one widened into `scratch` (replacing
    /// what it held) and viewed row-major `(s_k, width)`.
    pub fn to_f32<'b>(self, scratch: &'b mut Vec<f32>) -> MatRef<'b, f32>
    where
        'a: 'b,
    {
        match self {
            KvHead::F32(m) => m,
            stored => {
                *scratch = stored.widened();
                MatRef::from_row_major_slice(scratch, stored.nrows(), stored.ncols())
            }
        }
    }

    /// True when every value reads back finite.
    pub fn is_all_finite(&self) -> bool {
        match self {
            KvHead::F32(m) => m.is_all_finite(),
            stored => stored.widened().iter().all(|v| v.is_finite()),
        }
    }

    /// The rows as an owned f32 `(s_k, width)` row-major buffer.
    pub fn widened(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.nrows() * self.ncols()];
        self.widen_into(&mut out);
        out
    }
}

/// How query heads map onto key/value heads, and the widths of each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadLayout {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: usize,
    /// Width of one query (and key) head.
    pub qk_dim: usize,
    /// Width of one value head (MLA absorbed: `kv_lora_rank`).
    pub v_dim: usize,
    /// Multiplier of the scores, usually `1 / sqrt(qk_dim)`; MLA absorbed keeps the scale of
    /// the unabsorbed head width.
    pub scale: f32,
}

/// One sequence's operands. Query column blocks of width `qk_dim` are heads.
#[derive(Clone, Debug)]
pub struct AttentionOperands<'a> {
    /// Queries, `(s_q, n_heads · qk_dim)`, already rotated.
    pub q: MatRef<'a, f32>,
    /// Keys per KV head, each `(s_k, qk_dim)`, at positions `0..s_k`, in f32 or as stored.
    pub k: Vec<KvHead<'a>>,
    /// Values per KV head, each `(s_k, v_dim)`, in f32 or as stored.
    pub v: Vec<KvHead<'a>>,
    /// Absolute position of query row 0; query `i` sees keys `0..=first_query_position + i`.
    pub first_query_position: usize,
}

/// Gathers a head-major `(batch, n_heads, s_q, d)` buffer into the row-major concatenation
/// `(batch · s_q, n_heads · d)` that the output projection reads: row `b · s_q + i` holds
/// heads `0..n_heads` of token `i` of sequence `b`, side by side.
///
/// # Panics
/// If `heads` is not `batch · n_heads · s_q · d` long or `rows` is not as long as `heads`.
pub fn heads_to_rows(
    heads: &[f32],
    batch: usize,
    n_heads: usize,
    s_q: usize,
    d: usize,
    rows: &mut [f32],
) {
    assert_eq!(heads.len(), batch * n_heads * s_q * d, "head buffer length");
    assert_eq!(rows.len(), heads.len(), "row buffer length");
    for b in 0..batch {
        for h in 0..n_heads {
            for i in 0..s_q {
                let src = ((b * n_heads + h) * s_q + i) * d;
                let dst = (b * s_q + i) * n_heads * d + h * d;
                rows[dst..dst + d].copy_from_slice(&heads[src..src + d]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use faer::MatRef;

    use super::super::convert::{bf16, quantize_int8, round_to_bf16};
    use super::*;

    /// Three rows of width 7 quantised as two parts (columns 0..4 and 4..7), each with its
    /// own scale, as MLA's int8 latent; the codes, the scales `(3, 2)` and the values read back.
    fn split_rows() -> (Vec<i8>, Vec<f32>, Vec<f32>) {
        let values: Vec<f32> = (0..21)
            .map(|i| (i as f32 * 0.37).sin() * (1 + i % 5) as f32)
            .collect();
        let (mut codes, mut scales, mut read) = (vec![0i8; 21], vec![0.0f32; 6], vec![0.0; 21]);
        for t in 0..3 {
            for (p, (start, w)) in [(0, 4), (4, 3)].into_iter().enumerate() {
                let at = t * 7 + start;
                let scale = quantize_int8(&values[at..at + w], &mut codes[at..at + w]);
                scales[t * 2 + p] = scale;
                for c in 0..w {
                    read[at + c] = f32::from(codes[at + c]) * scale;
                }
            }
        }
        (codes, scales, read)
    }

    #[test]
    fn a_split_head_widens_and_slices_as_its_values_read_back() {
        let (codes, scales, read) = split_rows();
        let codes = MatRef::from_row_major_slice(&codes, 3, 7)
            .try_as_row_major()
            .unwrap();
        let scales = MatRef::from_row_major_slice(&scales, 3, 2);
        let part = |i: usize, start: usize, w: usize| StoredRows::Int8 {
            codes: codes.subcols(start, w),
            scales: scales.col(i),
        };
        let head = KvHead::Split(part(0, 0, 4), part(1, 4, 3));
        assert_eq!((head.nrows(), head.ncols()), (3, 7));
        assert_eq!(head.widened(), read);
        for (start, n) in [(0, 7), (0, 4), (1, 2), (4, 3), (5, 1), (2, 4), (3, 2)] {
            let want: Vec<f32> = read
                .chunks(7)
                .skip(1)
                .take(2)
                .flat_map(|r| r[start..start + n].to_vec())
                .collect();
            let got = head.subcols(start, n).subrows(1, 2).widened();
            assert_eq!(got, want, "columns {start}..{}", start + n);
        }
        assert!(matches!(head.subcols(0, 4), KvHead::Stored(_)));
        assert!(matches!(head.subcols(2, 4), KvHead::Split(..)));
    }

    #[test]
    fn an_f32_head_reads_as_itself_and_a_stored_one_widened() {
        let values: Vec<f32> = (0..12).map(|i| i as f32 / 3.0).collect();
        let f32_head = KvHead::F32(MatRef::from_row_major_slice(&values, 4, 3));
        let mut scratch = Vec::new();
        let view = f32_head.to_f32(&mut scratch);
        assert_eq!(view.as_ptr(), values.as_ptr(), "an f32 head is not copied");
        assert_eq!(view[(3, 2)], values[11]);
        let mut narrow = vec![bf16::ZERO; 12];
        round_to_bf16(&values, &mut narrow);
        let rows = MatRef::from_row_major_slice(&narrow, 4, 3)
            .try_as_row_major()
            .unwrap();
        let stored = KvHead::Stored(StoredRows::Bf16(rows));
        let view = stored.to_f32(&mut scratch);
        for j in 0..4 {
            for c in 0..3 {
                assert_eq!(view[(j, c)], narrow[j * 3 + c].to_f32());
            }
        }
        assert!(stored.is_all_finite());
    }
}
