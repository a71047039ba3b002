//! The decode path of the tiled kernel (one query row per sequence, `kernels/decode.rs`)
//! against the naive kernel at its edges: contexts around its sub-blocks (on the wide path 128
//! keys for narrow heads, 32 for MLA-wide rows of 512 and more; 8192 on the few-row path) and its chunk splits, odd head widths, every group size
//! from 1 to 32 (the few-row path up to 8, the lane-major tiles above for keys of 256 and
//! wider, padded to 16 rows),
//! f32 and stored caches, a batch whose sequences hold different numbers of keys, and
//! non-finite operands.

mod common;

use attnbench::Dtype;
use attnbench::Matrix;
use attnbench::config::Kernel;
use attnbench::kernels::{AttentionOperands, HeadLayout, KvHead, attention, decode_path};
use attnbench::kv_cache::KvCache;
use attnbench::weights::SeededRng;
use common::{assert_close_f32, on_threads, two_plane_cache};
use faer::MatRef;

/// One decode: `n_heads` queries of width `dk` over `n_kv` KV heads, values of width `dv`,
/// per sequence `contexts[b]` keys; keys and values as f32 matrices or a cache of `dtype`.
struct Case {
    heads: (usize, usize),
    dims: (usize, usize),
    contexts: Vec<usize>,
    dtype: Option<Dtype>,
}

/// Queries `(batch, n_heads · dk)` and per sequence keys `(s_k, n_kv · dk)`, values
/// `(s_k, n_kv · dv)`.
struct Inputs {
    q: Matrix,
    kv: Vec<(Matrix, Matrix)>,
}

impl Case {
    fn new(heads: (usize, usize), dims: (usize, usize), contexts: &[usize]) -> Self {
        Self {
            heads,
            dims,
            contexts: contexts.to_vec(),
            dtype: None,
        }
    }

    fn stored(self, dtype: Dtype) -> Self {
        Self {
            dtype: Some(dtype),
            ..self
        }
    }

    fn inputs(&self) -> Inputs {
        let ((h, kv), (dk, dv)) = (self.heads, self.dims);
        let mut rng = SeededRng::new(11, "decode");
        let q = rng.normal_matrix(self.contexts.len(), h * dk, 1.0);
        let kv = self
            .contexts
            .iter()
            .map(|&n| {
                (
                    rng.normal_matrix(n, kv * dk, 1.0),
                    rng.normal_matrix(n, kv * dv, 1.0),
                )
            })
            .collect();
        Inputs { q, kv }
    }

    /// The head-major output `(batch, n_heads, 1, dv)` of `kernel` on `threads` threads.
    fn attend(&self, inputs: &Inputs, kernel: Kernel, threads: usize) -> Vec<f32> {
        let ((h, n_kv), (dk, dv)) = (self.heads, self.dims);
        let caches: Vec<KvCache> = match self.dtype {
            None => Vec::new(),
            Some(dtype) => inputs
                .kv
                .iter()
                .map(|(k, v)| two_plane_cache(k, v, n_kv, (dk, dv), dtype))
                .collect(),
        };
        let seqs: Vec<AttentionOperands<'_>> = inputs
            .kv
            .iter()
            .enumerate()
            .map(|(b, (k, v))| {
                let (k, v) = match self.dtype {
                    None => (heads(k, n_kv, dk), heads(v, n_kv, dv)),
                    Some(_) => {
                        let seq = &caches[b].sequences()[0];
                        (seq.heads(0), seq.heads(1))
                    }
                };
                AttentionOperands {
                    q: MatRef::from_row_major_slice(
                        &inputs.q.data()[b * h * dk..][..h * dk],
                        1,
                        h * dk,
                    ),
                    k,
                    v,
                    first_query_position: self.contexts[b] - 1,
                }
            })
            .collect();
        let layout = HeadLayout {
            n_heads: h,
            n_kv_heads: n_kv,
            qk_dim: dk,
            v_dim: dv,
            scale: 1.0 / (dk as f32).sqrt(),
        };
        let mut out = vec![0.0; self.contexts.len() * h * dv];
        on_threads(threads, || attention(kernel, &seqs, &layout, &mut out));
        out
    }

    fn label(&self, threads: usize) -> String {
        format!(
            "h{:?} d{:?} ctx{:?} {:?} t{threads} on {}",
            self.heads,
            self.dims,
            self.contexts,
            self.dtype,
            decode_path()
        )
    }

    fn check(&self, threads: usize) {
        let inputs = self.inputs();
        let naive = self.attend(&inputs, Kernel::Naive, threads);
        let tiled = self.attend(&inputs, Kernel::Tiled, threads);
        assert_close_f32(&tiled, &naive, 1e-5, &self.label(threads));
    }
}

/// The `n_kv` heads of width `w` of an f32 matrix, as column views.
fn heads(m: &Matrix, n_kv: usize, w: usize) -> Vec<KvHead<'_>> {
    (0..n_kv)
        .map(|g| KvHead::F32(m.view().subcols(g * w, w)))
        .collect()
}

/// Contexts at the wide path's sub-block edges (1; 127, 128, 129 keys for narrow heads; 31,
/// 32, 33 for rows of 520) and around the
/// chunk splits of long contexts (256-key rounding), at every group size from 1 to 32,
/// on 1 and 2 threads, at head widths that are not multiples of any lane count.
#[test]
fn decode_equals_naive_at_block_edges_and_every_group_size() {
    for group in [1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32] {
        for (dk, dv) in [(13, 7), (40, 33), (72, 64)] {
            for context in [1, 31, 65, 127, 128, 129] {
                let case = Case::new((group, 1), (dk, dv), &[context]);
                for threads in [1, 2] {
                    case.check(threads);
                }
            }
        }
        for context in [31, 32, 33, 97] {
            Case::new((group, 1), (520, 17), &[context]).check(2);
        }
    }
    for group in [1, 4, 9, 16, 32] {
        for context in [511, 512, 513, 1023, 1024, 1025, 2049] {
            Case::new((2 * group, 2), (40, 33), &[context]).check(2);
            Case::new((group, 1), (24, 16), &[context]).check(4);
            Case::new((group, 1), (260, 16), &[context]).check(4);
        }
    }
}

/// Sequences of one batch holding different numbers of keys: each chunk split is over its own
/// sequence's keys, and a chunk may be empty.
#[test]
fn decode_equals_naive_over_sequences_of_different_lengths() {
    for group in [1, 6, 16, 32] {
        for dk in [24, 257] {
            let case = Case::new((2 * group, 2), (dk, 20), &[1, 700, 33, 3000]);
            for threads in [1, 2, 4] {
                case.check(threads);
            }
        }
    }
}

/// The few-row path's long sub-blocks: contexts around its 8192 keys, one KV head so the keys
/// are also split across threads.
#[test]
fn decode_equals_naive_around_the_few_row_sub_block() {
    for context in [8191, 8192, 8193] {
        for group in [1, 8, 16] {
            Case::new((group, 1), (16, 8), &[context]).check(2);
        }
    }
}

/// The few-row path's f32 value pass, which runs the stored types' value kernels
/// (`narrow.rs`, blocks of 32 KiB of rows: 64 rows of 128, 60 of 136), at contexts around
/// their block boundaries, at value widths with and without a tail of columns past a vector,
/// every few-row group size. A group of one over values wider than one pass of the kernels
/// (32 columns on AVX2) runs faer's product instead, so on such a CPU groups of one reach the
/// kernels at width 9 and faer at 128 and 136.
#[test]
fn decode_equals_naive_around_the_f32_value_blocks() {
    for group in 1..=8 {
        for dv in [128, 136, 9] {
            for context in [59, 60, 61, 63, 64, 65, 129] {
                Case::new((2 * group, 2), (16, dv), &[context]).check(1);
            }
        }
    }
}

/// Stored caches through the same paths: bf16, f16 and int8 at group sizes of both paths, at
/// the sub-block edges and split.
#[test]
fn decode_equals_naive_on_stored_caches() {
    for dtype in [Dtype::Bf16, Dtype::F16, Dtype::Int8] {
        for group in [1, 3, 8, 9, 16, 32] {
            for context in [1, 31, 33, 1100] {
                let case = Case::new((2 * group, 2), (20, 17), &[context, 40]).stored(dtype);
                case.check(2);
                // Keys wide enough for the wide path's tiles (groups above 8).
                let wide = Case::new((group, 1), (264, 17), &[context]).stored(dtype);
                wide.check(2);
            }
        }
    }
}

/// A NaN or an infinity in a key poisons every row of its group (all see every key at decode)
/// and nothing else; a NaN in a value its column of those rows; a NaN query its own row. On
/// both paths, in the first and a later sub-block and chunk.
#[test]
fn non_finite_operands_reach_exactly_their_outputs_at_decode() {
    for (group, dk) in [(2, 19), (16, 19), (16, 259)] {
        let case = Case::new((2 * group, 2), (dk, 9), &[1500]);
        let (dk, dv) = case.dims;
        for (operand, bad) in [
            (0, f32::NAN),
            (1, f32::NAN),
            (1, f32::INFINITY),
            (1, f32::NEG_INFINITY),
            (2, f32::NAN),
        ] {
            for row in [0, 40, 1300] {
                let mut inputs = case.inputs();
                let (k, v) = &mut inputs.kv[0];
                match operand {
                    0 => inputs.q.row_mut(0)[(2 * group - 1) * dk + 3] = bad,
                    1 => k.row_mut(row)[dk + 5] = bad,
                    _ => v.row_mut(row)[dv + 4] = bad,
                }
                for kernel in [Kernel::Naive, Kernel::Tiled] {
                    let out = case.attend(&inputs, kernel, 2);
                    for (i, x) in out.iter().enumerate() {
                        let (h, c) = (i / dv, i % dv);
                        let reached = match operand {
                            0 => h == 2 * group - 1,
                            1 => h >= group,
                            _ => h >= group && c == 4,
                        };
                        let label = format!("{kernel:?} operand {operand} {bad} row {row}");
                        assert_eq!(x.is_nan(), reached, "{label}: output {i} is {x}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_decode_path_is_named() {
    assert!(["avx512f", "avx2+fma", "portable"].contains(&decode_path()));
}
