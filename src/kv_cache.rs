//! The KV cache: one per sequence of a batch, allocated to its capacity, with a length cursor.
//!
//! A sequence's cache is a set of planes: K and V for the grouped variants (one head per KV
//! head), the latent `[c_kv | k_rope]` for MLA (one head). A plane is stored head-major,
//! `(heads, capacity, head_width)`: each head's keys are one contiguous run of memory, which
//! the tiled kernel streams at full bandwidth at decode (a token-major layout would make it
//! jump `heads · head_width` values between consecutive keys of a head, defeating the
//! hardware prefetcher). Memory is reserved once, up front; appending past capacity is an
//! error, never a reallocation inside a step.

use faer::MatRef;

use crate::error::{Error, Result};

/// What a plane is called and how it is divided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneSpec {
    /// Name, e.g. `k`, `v`, `latent`.
    pub name: &'static str,
    /// Heads (KV heads for K and V; 1 for MLA's latent).
    pub heads: usize,
    /// Values per token and head.
    pub head_width: usize,
}

impl PlaneSpec {
    /// Values per token over all heads.
    pub fn width(&self) -> usize {
        self.heads * self.head_width
    }
}

/// One cached tensor of a sequence: `(heads, capacity, head_width)`, rows `0..len` of each
/// head filled.
#[derive(Clone, Debug)]
pub struct CachePlane {
    spec: PlaneSpec,
    data: Vec<f32>,
}

impl CachePlane {
    /// The plane's name and width.
    pub fn spec(&self) -> PlaneSpec {
        self.spec
    }
}

/// The cache of one sequence.
#[derive(Clone, Debug)]
pub struct SequenceCache {
    len: usize,
    capacity: usize,
    planes: Vec<CachePlane>,
}

impl SequenceCache {
    /// An empty cache for `capacity` tokens with the given planes, all memory reserved and
    /// written (so that it is really resident, not merely promised by the OS).
    pub fn new(capacity: usize, specs: &[PlaneSpec]) -> Result<Self> {
        let planes = specs
            .iter()
            .map(|&spec| {
                let values = capacity
                    .checked_mul(spec.width())
                    .ok_or(Error::Allocation { bytes: usize::MAX })?;
                let mut data = Vec::new();
                data.try_reserve_exact(values)
                    .map_err(|_| Error::Allocation {
                        bytes: values.saturating_mul(size_of::<f32>()),
                    })?;
                data.resize(values, 0.0);
                Ok(CachePlane { spec, data })
            })
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

    /// Head `head` of plane `index`: `(len, head_width)`, contiguous.
    pub fn head(&self, index: usize, head: usize) -> MatRef<'_, f32> {
        let plane = &self.planes[index];
        let hw = plane.spec.head_width;
        let start = head * self.capacity * hw;
        MatRef::from_row_major_slice(&plane.data[start..start + self.len * hw], self.len, hw)
    }

    /// Every head of plane `index`, in order.
    pub fn heads(&self, index: usize) -> Vec<MatRef<'_, f32>> {
        (0..self.planes[index].spec.heads)
            .map(|h| self.head(index, h))
            .collect()
    }

    /// The filled tokens of plane `index` gathered token-major, `(len, width)` row-major:
    /// token `t`'s heads side by side (the layout of the projections and of export files).
    pub fn token_rows(&self, index: usize) -> Vec<f32> {
        let spec = self.planes[index].spec;
        let mut rows = vec![0.0f32; self.len * spec.width()];
        for h in 0..spec.heads {
            let head = self.head_slice(index, h);
            for (t, values) in head.chunks_exact(spec.head_width).enumerate() {
                rows[t * spec.width() + h * spec.head_width..][..spec.head_width]
                    .copy_from_slice(values);
            }
        }
        rows
    }

    fn head_slice(&self, index: usize, head: usize) -> &[f32] {
        let plane = &self.planes[index];
        let hw = plane.spec.head_width;
        let start = head * self.capacity * hw;
        &plane.data[start..start + self.len * hw]
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

    /// Appends `n_tokens` rows to every plane; `rows[p]` is `(n_tokens, width_p)` row-major.
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
                let head_start = (h * self.capacity + self.len) * hw;
                for t in 0..n_tokens {
                    plane.data[head_start + t * hw..][..hw]
                        .copy_from_slice(&new[t * width + h * hw..][..hw]);
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

    /// Bytes really allocated for this sequence's planes.
    pub fn allocated_bytes(&self) -> usize {
        self.planes
            .iter()
            .map(|p| p.data.capacity() * size_of::<f32>())
            .sum()
    }
}

/// The caches of a batch, one per sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    sequences: Vec<SequenceCache>,
}

impl KvCache {
    /// `batch` empty caches of `capacity` tokens each.
    pub fn new(batch: usize, capacity: usize, specs: &[PlaneSpec]) -> Result<Self> {
        let sequences = (0..batch)
            .map(|_| SequenceCache::new(capacity, specs))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { sequences })
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
        self.sequences
            .first()
            .map_or(0, |s| s.planes.iter().map(|p| p.spec.width()).sum())
    }

    /// Bytes really allocated, over all sequences (`Vec::capacity`, not a formula).
    pub fn allocated_bytes(&self) -> usize {
        self.sequences
            .iter()
            .map(SequenceCache::allocated_bytes)
            .sum()
    }

    /// Bytes the cache needs by formula: `batch · capacity · values_per_token · 4`.
    pub fn analytic_bytes(&self) -> usize {
        self.sequences
            .iter()
            .map(|s| s.capacity * self.values_per_token() * size_of::<f32>())
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
    /// normal values in every plane), the state a decode step at context `len` starts from.
    /// Writing the values directly instead of running a prefill of `len` tokens makes long
    /// contexts cheap to set up; a step's cost does not depend on the values it reads.
    pub fn fill_synthetic(&mut self, len: usize, seed: u64) -> Result<()> {
        for (b, seq) in self.sequences.iter_mut().enumerate() {
            seq.len = 0;
            seq.check_room(b, len)?;
            let capacity = seq.capacity;
            for plane in &mut seq.planes {
                let name = format!("cache/{b}/{}", plane.spec.name);
                let mut rng = crate::weights::SeededRng::new(seed, &name);
                let hw = plane.spec.head_width;
                for head in plane.data.chunks_exact_mut((capacity * hw).max(1)) {
                    for v in &mut head[..len * hw] {
                        *v = rng.next_normal() as f32;
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
