//! The KV cache: one per sequence of a batch, allocated to its capacity, with a length cursor.
//!
//! A sequence's cache is a set of planes: K and V for the grouped variants (one head per KV
//! head), the latent `[c_kv | k_rope]` for MLA (one head). A plane is stored head-major,
//! `(heads, capacity, head_width)`: each head's keys are one contiguous run of memory, which
//! the tiled kernel streams at full bandwidth at decode (a token-major layout would make it
//! jump `heads · head_width` values between consecutive keys of a head, defeating the
//! hardware prefetcher). Memory is reserved once, up front; appending past capacity is an
//! error, never a reallocation inside a step.
//!
//! A cache stores its planes in one [`Dtype`] (docs/design.md §5): f32, bf16, f16, or int8
//! codes with f32 scales, `(heads, capacity, scales_per_row)`, one per (token, head) row (two
//! for MLA's latent, `c_kv` and `k_rope` each with its own, [`PlaneSpec::scale_split`]).
//! Rows are rounded once, when appended, and never again; the kernels read them as stored
//! ([`SequenceCache::head`]) and widen them as they go.

use faer::MatRef;

use crate::config::Dtype;
use crate::error::{Error, Result};
use crate::kernels::{
    KvHead, RowsRef, StoredRows, bf16, f16, quantize_int8, round_to_bf16, round_to_f16,
};

/// What a plane is called and how it is divided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneSpec {
    /// Name, e.g. `k`, `v`, `latent`.
    pub name: &'static str,
    /// Heads (KV heads for K and V; 1 for MLA's latent).
    pub heads: usize,
    /// Values per token and head.
    pub head_width: usize,
    /// Where an int8 row's scales split: `None`, one scale per (token, head) row; `Some(c)`,
    /// one for columns `0..c` and one for `c..head_width` (MLA's `[c_kv | k_rope]`, §5).
    /// Other types ignore it.
    pub scale_split: Option<usize>,
}

impl PlaneSpec {
    /// Values per token over all heads.
    pub fn width(&self) -> usize {
        self.heads * self.head_width
    }

    /// int8 scales per (token, head) row: 1, or 2 when the row's scales split.
    pub fn scales_per_row(&self) -> usize {
        if self.scale_split.is_some() { 2 } else { 1 }
    }

    /// The column ranges of a row that each take one int8 scale, `(start, width)`.
    fn scale_parts(&self) -> Vec<(usize, usize)> {
        match self.scale_split {
            None => vec![(0, self.head_width)],
            Some(c) => vec![(0, c), (c, self.head_width - c)],
        }
    }

    /// Bytes one token takes in this plane stored as `dtype`, int8's scales included: the
    /// plane's share of [`LayerSpec::kv_bytes_per_token`](crate::LayerSpec::kv_bytes_per_token),
    /// by the same [`Dtype::row_bytes`]. `None` on overflow.
    pub fn bytes_per_token(&self, dtype: Dtype) -> Option<u64> {
        self.scale_parts()
            .iter()
            .try_fold(0u64, |sum, &(_, w)| {
                sum.checked_add(dtype.row_bytes(w as u64)?)
            })?
            .checked_mul(self.heads as u64)
    }
}

/// A plane's memory in its stored type: `(heads, capacity, head_width)` values, and for int8
/// `(heads, capacity, scales_per_row)` scales.
#[derive(Clone, Debug)]
enum PlaneData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    Int8 { codes: Vec<i8>, scales: Vec<f32> },
}

/// `n` copies of `zero`, reserved exactly and written (so resident), or an allocation error.
fn reserved<T: Copy>(n: usize, zero: T) -> Result<Vec<T>> {
    let mut data = Vec::new();
    data.try_reserve_exact(n).map_err(|_| Error::Allocation {
        bytes: n.saturating_mul(size_of::<T>()),
    })?;
    data.resize(n, zero);
    Ok(data)
}

fn bytes_of<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// One cached tensor of a sequence: `(heads, capacity, head_width)` in its stored type, rows
/// `0..len` of each head filled.
#[derive(Clone, Debug)]
pub struct CachePlane {
    spec: PlaneSpec,
    data: PlaneData,
}

impl CachePlane {
    fn new(spec: PlaneSpec, dtype: Dtype, capacity: usize) -> Result<Self> {
        let slots = capacity
            .checked_mul(spec.heads)
            .ok_or(Error::Allocation { bytes: usize::MAX })?;
        let values = slots
            .checked_mul(spec.head_width)
            .ok_or(Error::Allocation { bytes: usize::MAX })?;
        let data = match dtype {
            Dtype::F32 => PlaneData::F32(reserved(values, 0.0)?),
            Dtype::Bf16 => PlaneData::Bf16(reserved(values, bf16::ZERO)?),
            Dtype::F16 => PlaneData::F16(reserved(values, f16::ZERO)?),
            Dtype::Int8 => PlaneData::Int8 {
                codes: reserved(values, 0)?,
                scales: reserved(slots * spec.scales_per_row(), 0.0)?,
            },
        };
        Ok(Self { spec, data })
    }

    /// The plane's name and width.
    pub fn spec(&self) -> PlaneSpec {
        self.spec
    }

    /// The type it stores.
    pub fn dtype(&self) -> Dtype {
        match self.data {
            PlaneData::F32(_) => Dtype::F32,
            PlaneData::Bf16(_) => Dtype::Bf16,
            PlaneData::F16(_) => Dtype::F16,
            PlaneData::Int8 { .. } => Dtype::Int8,
        }
    }

    /// Bytes really allocated (`Vec::capacity`), scales included.
    fn allocated_bytes(&self) -> usize {
        match &self.data {
            PlaneData::F32(v) => bytes_of(v),
            PlaneData::Bf16(v) => bytes_of(v),
            PlaneData::F16(v) => bytes_of(v),
            PlaneData::Int8 { codes, scales } => bytes_of(codes) + bytes_of(scales),
        }
    }

    /// Stores `row` (one head's `head_width` values) at `slot = head · capacity + token`,
    /// rounded once (§5).
    fn store(&mut self, slot: usize, row: &[f32]) {
        let hw = self.spec.head_width;
        let at = slot * hw;
        match &mut self.data {
            PlaneData::F32(v) => v[at..at + hw].copy_from_slice(row),
            PlaneData::Bf16(v) => round_to_bf16(row, &mut v[at..at + hw]),
            PlaneData::F16(v) => round_to_f16(row, &mut v[at..at + hw]),
            PlaneData::Int8 { codes, scales } => {
                let per_row = self.spec.scales_per_row();
                for (i, (start, w)) in self.spec.scale_parts().into_iter().enumerate() {
                    scales[slot * per_row + i] =
                        quantize_int8(&row[start..start + w], &mut codes[at + start..][..w]);
                }
            }
        }
    }

    /// Rows `0..len` of head `head` as the kernels read them.
    fn head(&self, head: usize, capacity: usize, len: usize) -> KvHead<'_> {
        let hw = self.spec.head_width;
        let range = head * capacity * hw..(head * capacity + len) * hw;
        match &self.data {
            PlaneData::F32(v) => KvHead::F32(MatRef::from_row_major_slice(&v[range], len, hw)),
            PlaneData::Bf16(v) => KvHead::Stored(StoredRows::Bf16(rows(&v[range], len, hw))),
            PlaneData::F16(v) => KvHead::Stored(StoredRows::F16(rows(&v[range], len, hw))),
            PlaneData::Int8 { codes, scales } => {
                let per_row = self.spec.scales_per_row();
                let first = head * capacity * per_row;
                let scales = &scales[first..first + len * per_row];
                let scales = MatRef::from_row_major_slice(scales, len, per_row);
                let codes = rows(&codes[range], len, hw);
                let part = |i: usize, (start, w): (usize, usize)| StoredRows::Int8 {
                    codes: codes.subcols(start, w),
                    scales: scales.col(i),
                };
                match self.spec.scale_parts()[..] {
                    [a, b] => KvHead::Split(part(0, a), part(1, b)),
                    [whole, ..] => KvHead::Stored(part(0, whole)),
                    [] => unreachable!("a row has one or two scales"),
                }
            }
        }
    }

    /// Head `head`'s filled scales, `(len, scales_per_row)` row-major; `None` unless int8.
    fn head_scales(&self, head: usize, capacity: usize, len: usize) -> Option<&[f32]> {
        let PlaneData::Int8 { scales, .. } = &self.data else {
            return None;
        };
        let per_row = self.spec.scales_per_row();
        let first = head * capacity * per_row;
        Some(&scales[first..first + len * per_row])
    }

    /// Head `head`'s filled codes, `(len, head_width)` row-major; `None` unless int8.
    fn head_codes(&self, head: usize, capacity: usize, len: usize) -> Option<&[i8]> {
        let PlaneData::Int8 { codes, .. } = &self.data else {
            return None;
        };
        let hw = self.spec.head_width;
        Some(&codes[head * capacity * hw..(head * capacity + len) * hw])
    }
}

/// `(len, hw)` row-major `data` as contiguous rows.
fn rows<T>(data: &[T], len: usize, hw: usize) -> RowsRef<'_, T> {
    MatRef::from_row_major_slice(data, len, hw)
        .try_as_row_major()
        .expect("a row-major matrix has contiguous rows")
}

/// Gathers head-major `(heads, len, hw)` runs (`head(h)` is head `h`'s `(len, hw)`) into
/// token-major `(len, heads · hw)`.
fn gather_token_major<T: Copy + Default>(
    heads: usize,
    len: usize,
    hw: usize,
    head: impl Fn(usize) -> Vec<T>,
) -> Vec<T> {
    let width = heads * hw;
    let mut rows = vec![T::default(); len * width];
    for h in 0..heads {
        let values = head(h);
        for (t, row) in values.chunks_exact(hw.max(1)).take(len).enumerate() {
            rows[t * width + h * hw..][..hw].copy_from_slice(row);
        }
    }
    rows
}

/// The cache of one sequence.
#[derive(Clone, Debug)]
pub struct SequenceCache {
    len: usize,
    capacity: usize,
    planes: Vec<CachePlane>,
}

impl SequenceCache {
    /// An empty cache for `capacity` tokens with the given planes stored as `dtype`, all
    /// memory reserved and written (so that it is really resident, not merely promised by
    /// the OS).
    pub fn new(capacity: usize, specs: &[PlaneSpec], dtype: Dtype) -> Result<Self> {
        let planes = specs
            .iter()
            .map(|&spec| CachePlane::new(spec, dtype, capacity))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            len: 0,
            capacity,
            planes,
        })
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The planes, in the order the layer declared them.
    pub fn planes(&self) -> &[CachePlane] {
        &self.planes
    }

    /// Head `head` of plane `index`, `(len, head_width)`, rows contiguous, as stored: f32
    /// rows for an f32 plane, otherwise the stored rows the kernels widen as they read
    /// (int8 with its scales; MLA's int8 latent as its two scaled parts).
    pub fn head(&self, index: usize, head: usize) -> KvHead<'_> {
        self.planes[index].head(head, self.capacity, self.len)
    }

    /// Every head of plane `index`, in order.
    pub fn heads(&self, index: usize) -> Vec<KvHead<'_>> {
        (0..self.planes[index].spec.heads)
            .map(|h| self.head(index, h))
            .collect()
    }

    /// The filled tokens of plane `index` gathered token-major, `(len, width)` row-major:
    /// token `t`'s heads side by side (the layout of the projections and of export files),
    /// the values as stored, widened to f32.
    pub fn token_rows(&self, index: usize) -> Vec<f32> {
        let spec = self.planes[index].spec;
        gather_token_major(spec.heads, self.len, spec.head_width, |h| {
            self.head(index, h).widened()
        })
    }

    /// For an int8 plane `index`, its filled tokens token-major: the codes `(len, width)`
    /// row-major, and the scales `(len, heads · scales_per_row)` row-major (token `t`'s
    /// heads side by side, each head's scales in column order). `None` for another type.
    pub fn int8_token_rows(&self, index: usize) -> Option<(Vec<i8>, Vec<f32>)> {
        let plane = &self.planes[index];
        let (spec, cap, len) = (plane.spec, self.capacity, self.len);
        plane.head_codes(0, cap, len)?;
        let codes = gather_token_major(spec.heads, len, spec.head_width, |h| {
            plane.head_codes(h, cap, len).unwrap_or_default().to_vec()
        });
        let scales = gather_token_major(spec.heads, len, spec.scales_per_row(), |h| {
            plane.head_scales(h, cap, len).unwrap_or_default().to_vec()
        });
        Some((codes, scales))
    }

    /// Checks that `n_tokens` more fit.
    pub fn check_room(&self, sequence: usize, n_tokens: usize) -> Result<()> {
        if self.len + n_tokens > self.capacity {
            return Err(Error::CacheFull {
                sequence,
                len: self.len,
                capacity: self.capacity,
                requested: n_tokens,
            });
        }
        Ok(())
    }

    /// Appends `n_tokens` rows to every plane; `rows[p]` is `(n_tokens, width_p)` row-major,
    /// f32, rounded to the plane's type here, once (docs/design.md §5).
    pub fn append(&mut self, sequence: usize, n_tokens: usize, rows: &[&[f32]]) -> Result<()> {
        self.check_room(sequence, n_tokens)?;
        if rows.len() != self.planes.len() {
            return Err(Error::Shape {
                what: "cache append",
                expected: format!("{} planes", self.planes.len()),
                actual: format!("{} planes", rows.len()),
            });
        }
        for (plane, new) in self.planes.iter().zip(rows) {
            let width = plane.spec.width();
            if new.len() != n_tokens * width {
                return Err(Error::Shape {
                    what: "cache append rows",
                    expected: format!("({n_tokens}, {width})"),
                    actual: format!("{} values", new.len()),
                });
            }
        }
        for (plane, new) in self.planes.iter_mut().zip(rows) {
            let (hw, width) = (plane.spec.head_width, plane.spec.width());
            for h in 0..plane.spec.heads {
                for t in 0..n_tokens {
                    let slot = h * self.capacity + self.len + t;
                    plane.store(slot, &new[t * width + h * hw..][..hw]);
                }
            }
        }
        self.len += n_tokens;
        Ok(())
    }

    /// Forgets every token after the first `len` (a harness rolls a decode step back this
    /// way). Does nothing when `len` is not shorter than what is held.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes really allocated for this sequence's planes (`Vec::capacity`), int8 scales
    /// included.
    pub fn allocated_bytes(&self) -> usize {
        self.planes.iter().map(CachePlane::allocated_bytes).sum()
    }
}

/// The caches of a batch, one per sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    sequences: Vec<SequenceCache>,
    specs: Vec<PlaneSpec>,
    dtype: Dtype,
}

impl KvCache {
    /// `batch` empty caches of `capacity` tokens each, their planes stored as `dtype`.
    pub fn new(batch: usize, capacity: usize, specs: &[PlaneSpec], dtype: Dtype) -> Result<Self> {
        let sequences = (0..batch)
            .map(|_| SequenceCache::new(capacity, specs, dtype))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            sequences,
            specs: specs.to_vec(),
            dtype,
        })
    }

    /// The type the planes store.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.sequences.len()
    }

    /// The sequences' caches.
    pub fn sequences(&self) -> &[SequenceCache] {
        &self.sequences
    }

    /// The sequences' caches, mutable.
    pub fn sequences_mut(&mut self) -> &mut [SequenceCache] {
        &mut self.sequences
    }

    /// Values per token over all planes.
    pub fn values_per_token(&self) -> usize {
        self.specs.iter().map(PlaneSpec::width).sum()
    }

    /// Bytes a token takes over all planes in the stored type, int8 scales included (the sum
    /// of [`PlaneSpec::bytes_per_token`]; for a layer's planes, its
    /// [`LayerSpec::kv_bytes_per_token`](crate::LayerSpec::kv_bytes_per_token)).
    pub fn bytes_per_token(&self) -> usize {
        self.specs
            .iter()
            .map(|p| p.bytes_per_token(self.dtype).unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add)
            .try_into()
            .unwrap_or(usize::MAX)
    }

    /// Bytes really allocated, over all sequences (`Vec::capacity`, not a formula).
    pub fn allocated_bytes(&self) -> usize {
        self.sequences
            .iter()
            .map(SequenceCache::allocated_bytes)
            .sum()
    }

    /// Bytes the cache needs by formula: `batch · capacity · bytes_per_token` (an allocated
    /// cache cannot overflow it: its planes were reserved).
    pub fn analytic_bytes(&self) -> usize {
        self.sequences
            .iter()
            .map(|s| s.capacity * self.bytes_per_token())
            .sum()
    }

    /// Bytes allocated beyond the formula (0 for this storage; reported, never hidden).
    pub fn padding_bytes(&self) -> usize {
        self.allocated_bytes().saturating_sub(self.analytic_bytes())
    }

    /// Checks that every sequence has room for `n_tokens` more, before a step changes anything.
    pub fn check_room(&self, n_tokens: usize) -> Result<()> {
        self.sequences
            .iter()
            .enumerate()
            .try_for_each(|(b, s)| s.check_room(b, n_tokens))
    }

    /// Makes every sequence hold `len` tokens of synthetic keys and values (seeded standard
    /// normal values in every plane, stored rounded to the cache's type), the state a decode
    /// step at context `len` starts from. The values drawn do not depend on the type, so an
    /// f32 cache filled with the same seed holds them unrounded. Writing the values directly
    /// instead of running a prefill of `len` tokens makes long contexts cheap to set up; a
    /// step's cost does not depend on the values it reads.
    pub fn fill_synthetic(&mut self, len: usize, seed: u64) -> Result<()> {
        for (b, seq) in self.sequences.iter_mut().enumerate() {
            seq.len = 0;
            seq.check_room(b, len)?;
            let capacity = seq.capacity;
            for plane in &mut seq.planes {
                let name = format!("cache/{b}/{}", plane.spec.name);
                let mut rng = crate::weights::SeededRng::new(seed, &name);
                let mut row = vec![0.0f32; plane.spec.head_width];
                // Head by head, token by token: the order the values have always been drawn.
                for h in 0..plane.spec.heads {
                    for t in 0..len {
                        row.iter_mut().for_each(|v| *v = rng.next_normal() as f32);
                        plane.store(h * capacity + t, &row);
                    }
                }
            }
            seq.len = len;
        }
        Ok(())
    }

    /// Rolls every sequence back to at most `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.sequences.iter_mut().for_each(|s| s.truncate(len));
    }
}
