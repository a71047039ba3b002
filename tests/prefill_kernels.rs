//! The tiled kernel's many-row path (prefill: a packed block of more than eight query rows,
//! on the AVX-512 micro-kernels where the CPU has them) against the naive kernel at its block
//! edges: query lengths 1, tile − 1, tile, tile + 1 for group sizes 1 to 32 (the tile is 128
//! packed rows), causal diagonals at the key-block edges (contexts around 256 keys), head
//! widths that are not multiples of the sixteen lanes, keys and values read from caches in
//! every stored type, and keys whose rows are not contiguous.

mod common;

use attnbench::Dtype;
use attnbench::Matrix;
use attnbench::config::Kernel;
use attnbench::kernels::{AttentionOperands, HeadLayout, KvHead, attention};
use attnbench::weights::SeededRng;
use common::{assert_close_f32, on_threads, two_plane_cache};
use faer::MatRef;

/// Packed rows the tiled kernel aims for per task (its `TARGET_ROWS`): a group of `g` heads
/// takes `128 / g` queries per tile.
const TILE_ROWS: usize = 128;

/// Where the keys and values come from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// Column blocks of row-major f32 matrices (rows contiguous, far apart).
    RowMajor,
    /// f32 keys held column-major (rows not contiguous), values row-major.
    ColumnMajorKeys,
    /// K and V planes of a cache stored in the type.
    Cache(Dtype),
}

/// One shape: query heads over KV heads, key and value widths, queries and the context before
/// them.
#[derive(Clone, Copy, Debug)]
struct Shape {
    heads: (usize, usize),
    widths: (usize, usize),
    s_q: usize,
    context: usize,
}

impl Shape {
    fn s_k(&self) -> usize {
        self.context + self.s_q
    }
}

/// The head-major output of `kernel` on `threads` threads for one sequence of `shape` with
/// keys and values from `source`.
fn attend(shape: Shape, source: Source, kernel: Kernel, threads: usize) -> Vec<f32> {
    let ((n_heads, n_kv), (dk, dv), s_k) = (shape.heads, shape.widths, shape.s_k());
    let mut rng = SeededRng::new(11, "prefill_kernels");
    let q: Matrix = rng.normal_matrix(shape.s_q, n_heads * dk, 1.0);
    let k: Matrix = rng.normal_matrix(s_k, n_kv * dk, 1.0);
    let v: Matrix = rng.normal_matrix(s_k, n_kv * dv, 1.0);
    // Column-major copies of each head's keys, for `Source::ColumnMajorKeys`.
    let k_cols: Vec<Vec<f32>> = (0..n_kv)
        .map(|g| {
            (0..dk)
                .flat_map(|c| (0..s_k).map(move |j| (j, c)))
                .map(|(j, c)| k.data()[j * n_kv * dk + g * dk + c])
                .collect()
        })
        .collect();
    let cache = match source {
        Source::Cache(dtype) => Some(two_plane_cache(&k, &v, n_kv, (dk, dv), dtype)),
        _ => None,
    };
    fn f32_heads(m: &Matrix, w: usize) -> Vec<KvHead<'_>> {
        (0..m.cols() / w)
            .map(|g| KvHead::F32(m.view().subcols(g * w, w)))
            .collect()
    }
    let (keys, values) = match (&cache, source) {
        (Some(c), _) => (c.sequences()[0].heads(0), c.sequences()[0].heads(1)),
        (None, Source::ColumnMajorKeys) => (
            k_cols
                .iter()
                .map(|data| KvHead::F32(MatRef::from_column_major_slice(data, s_k, dk)))
                .collect(),
            f32_heads(&v, dv),
        ),
        _ => (f32_heads(&k, dk), f32_heads(&v, dv)),
    };
    let operands = [AttentionOperands {
        q: q.view(),
        k: keys,
        v: values,
        first_query_position: shape.context,
    }];
    let layout = HeadLayout {
        n_heads,
        n_kv_heads: n_kv,
        qk_dim: dk,
        v_dim: dv,
        scale: 1.0 / (dk as f32).sqrt(),
    };
    let mut out = vec![f32::NAN; n_heads * shape.s_q * dv];
    on_threads(threads, || attention(kernel, &operands, &layout, &mut out));
    out
}

/// Tiled against naive, on 1 and 2 threads.
fn check(shape: Shape, source: Source) {
    let naive = attend(shape, source, Kernel::Naive, 1);
    for threads in [1, 2] {
        let tiled = attend(shape, source, Kernel::Tiled, threads);
        let label = format!("{shape:?} {source:?} t{threads}");
        assert_close_f32(&tiled, &naive, 1e-5, &label);
    }
}

/// Query lengths at the edges of a tile of `group` heads (1, tile − 1, tile, tile + 1), those
/// that pack more than eight rows.
fn tile_edges(group: usize) -> Vec<usize> {
    let tile = (TILE_ROWS / group).max(1);
    [1, tile - 1, tile, tile + 1]
        .into_iter()
        .filter(|&s| s >= 1 && group * s.min(tile) > 8)
        .collect()
}

#[test]
fn many_rows_equal_naive_at_tile_edges_for_every_group_size() {
    for group in [1, 2, 3, 4, 8, 16, 32, 64] {
        for s_q in tile_edges(group) {
            for context in [0, 5] {
                let shape = Shape {
                    heads: (2 * group, 2),
                    widths: (24, 16),
                    s_q,
                    context,
                };
                check(shape, Source::RowMajor);
            }
        }
    }
}

#[test]
fn many_rows_equal_naive_at_odd_head_widths() {
    for widths in [(65, 65), (127, 127), (127, 65), (1, 17), (33, 1)] {
        for (heads, s_q) in [((1, 1), 64), ((4, 1), 17), ((32, 2), 3)] {
            let shape = Shape {
                heads,
                widths,
                s_q,
                context: 40,
            };
            check(shape, Source::RowMajor);
        }
    }
}

/// Diagonal tiles: the last query of a tile at the first, last and one-past-last key of a
/// block of 256 keys, after contexts that put a tile's diagonal across a block edge.
#[test]
fn causal_masking_at_tile_diagonals_across_key_blocks() {
    for context in [0, 1, 192, 193, 255, 256, 257, 300] {
        for (heads, s_q) in [((2, 2), 130), ((8, 2), 33), ((32, 1), 5)] {
            let shape = Shape {
                heads,
                widths: (20, 20),
                s_q,
                context,
            };
            check(shape, Source::RowMajor);
        }
    }
}

#[test]
fn many_rows_equal_naive_on_stored_caches_and_strided_keys() {
    let stored = [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::Int8].map(Source::Cache);
    for source in stored.into_iter().chain([Source::ColumnMajorKeys]) {
        for (heads, widths, s_q, context) in [
            ((4, 4), (65, 33), 65, 0),
            ((8, 1), (32, 32), 16, 250),
            ((32, 8), (127, 127), 17, 7),
            ((32, 1), (16, 24), 2, 256),
        ] {
            let shape = Shape {
                heads,
                widths,
                s_q,
                context,
            };
            check(shape, source);
        }
    }
}
