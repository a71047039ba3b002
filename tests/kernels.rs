//! The tiled (flash-style) kernel against the naive one on the same operands: block edges,
//! group sizes, causal offsets, long contexts split across threads.

mod common;

use attnbench::Dtype;
use attnbench::Matrix;
use attnbench::config::Kernel;
use attnbench::kernels::{AttentionOperands, HeadLayout, KvHead, attention, fast_exp};
use attnbench::kv_cache::{KvCache, PlaneSpec};
use attnbench::weights::SeededRng;
use common::assert_close_f32;
use faer::MatRef;

struct Case {
    batch: usize,
    n_heads: usize,
    n_kv_heads: usize,
    qk_dim: usize,
    v_dim: usize,
    s_q: usize,
    context: usize,
    /// Where the kernels read the keys and values: the f32 matrices, or a cache of them.
    storage: Storage,
}

/// How a case hands its keys and values to the kernels.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Storage {
    /// Views of the f32 matrices.
    Matrices,
    /// A K and a V plane of a cache stored in the type.
    Cache(Dtype),
    /// One latent plane (the keys, `n_kv_heads == 1`) stored in the type, int8 rows with one
    /// scale for the first `v_dim` columns and one for the rest; the values are its first
    /// `v_dim` columns (MLA absorbed).
    Latent(Dtype),
}

/// A case's operands, owned: queries `(batch · s_q, n_heads · qk_dim)` and per sequence keys
/// `(s_k, n_kv_heads · qk_dim)` and values `(s_k, n_kv_heads · v_dim)`, `s_k = context + s_q`.
struct Inputs {
    q: Matrix,
    kv: Vec<(Matrix, Matrix)>,
}

impl Case {
    fn new(
        batch: usize,
        (n_heads, n_kv_heads): (usize, usize),
        (qk_dim, v_dim): (usize, usize),
        (s_q, context): (usize, usize),
    ) -> Self {
        Self {
            batch,
            n_heads,
            n_kv_heads,
            qk_dim,
            v_dim,
            s_q,
            context,
            storage: Storage::Matrices,
        }
    }

    /// The same case reading its keys and values from `storage`.
    fn stored(self, storage: Storage) -> Self {
        Self { storage, ..self }
    }

    /// Per sequence, a cache holding the keys and values of `inputs` as `self.storage` says.
    fn caches(&self, inputs: &Inputs) -> Vec<KvCache> {
        let plane = |name, heads, head_width, scale_split| PlaneSpec {
            name,
            heads,
            head_width,
            scale_split,
        };
        inputs
            .kv
            .iter()
            .map(|(k, v)| {
                let (specs, dtype, rows) = match self.storage {
                    Storage::Cache(dtype) => (
                        vec![
                            plane("k", self.n_kv_heads, self.qk_dim, None),
                            plane("v", self.n_kv_heads, self.v_dim, None),
                        ],
                        dtype,
                        vec![k.data(), v.data()],
                    ),
                    _ => {
                        let Storage::Latent(dtype) = self.storage else {
                            unreachable!("f32 matrices need no cache")
                        };
                        let split = Some(self.v_dim);
                        (
                            vec![plane("latent", 1, self.qk_dim, split)],
                            dtype,
                            vec![k.data()],
                        )
                    }
                };
                let mut cache = KvCache::new(1, self.s_k(), &specs, dtype).unwrap();
                cache.sequences_mut()[0]
                    .append(0, self.s_k(), &rows)
                    .unwrap();
                cache
            })
            .collect()
    }

    fn s_k(&self) -> usize {
        self.context + self.s_q
    }

    fn inputs(&self) -> Inputs {
        let mut rng = SeededRng::new(7, "kernels");
        let q = rng.normal_matrix(self.batch * self.s_q, self.n_heads * self.qk_dim, 1.0);
        let kv = (0..self.batch)
            .map(|_| {
                (
                    rng.normal_matrix(self.s_k(), self.n_kv_heads * self.qk_dim, 1.0),
                    rng.normal_matrix(self.s_k(), self.n_kv_heads * self.v_dim, 1.0),
                )
            })
            .collect();
        Inputs { q, kv }
    }

    /// The head-major output `(batch, n_heads, s_q, v_dim)` of `kernel` on `threads` threads.
    fn attend(&self, inputs: &Inputs, kernel: Kernel, threads: usize) -> Vec<f32> {
        let q = &inputs.q;
        let caches = match self.storage {
            Storage::Matrices => Vec::new(),
            _ => self.caches(inputs),
        };
        let kv: Vec<(Vec<KvHead<'_>>, Vec<KvHead<'_>>)> = match self.storage {
            Storage::Matrices => inputs
                .kv
                .iter()
                .map(|(k, v)| {
                    (
                        (0..self.n_kv_heads)
                            .map(|g| KvHead::F32(k.view().subcols(g * self.qk_dim, self.qk_dim)))
                            .collect(),
                        (0..self.n_kv_heads)
                            .map(|g| KvHead::F32(v.view().subcols(g * self.v_dim, self.v_dim)))
                            .collect(),
                    )
                })
                .collect(),
            Storage::Cache(_) => caches
                .iter()
                .map(|c| (c.sequences()[0].heads(0), c.sequences()[0].heads(1)))
                .collect(),
            Storage::Latent(_) => caches
                .iter()
                .map(|c| {
                    let latent = c.sequences()[0].head(0, 0);
                    (vec![latent], vec![latent.subcols(0, self.v_dim)])
                })
                .collect(),
        };
        let operands: Vec<AttentionOperands<'_>> = kv
            .into_iter()
            .enumerate()
            .map(|(b, (k, v))| AttentionOperands {
                q: MatRef::from_row_major_slice(
                    &q.data()[b * self.s_q * q.cols()..(b + 1) * self.s_q * q.cols()],
                    self.s_q,
                    q.cols(),
                ),
                k,
                v,
                first_query_position: self.context,
            })
            .collect();
        let layout = HeadLayout {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            qk_dim: self.qk_dim,
            v_dim: self.v_dim,
            scale: 1.0 / (self.qk_dim as f32).sqrt(),
        };
        let mut out = vec![0.0; self.batch * self.n_heads * self.s_q * self.v_dim];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| attention(kernel, &operands, &layout, &mut out));
        out
    }

    fn label(&self, threads: usize) -> String {
        format!(
            "b{} h{} kv{} d{}/{} s_q{} ctx{} t{threads} {:?}",
            self.batch,
            self.n_heads,
            self.n_kv_heads,
            self.qk_dim,
            self.v_dim,
            self.s_q,
            self.context,
            self.storage
        )
    }
}

fn run(case: &Case, threads: usize) {
    let inputs = case.inputs();
    let naive = case.attend(&inputs, Kernel::Naive, threads);
    let tiled = case.attend(&inputs, Kernel::Tiled, threads);
    assert_close_f32(&tiled, &naive, 1e-5, &case.label(threads));
}

#[test]
fn tiled_equals_naive_at_block_edges_and_group_sizes() {
    for (n_heads, n_kv_heads) in [(4, 4), (4, 2), (4, 1), (6, 3), (32, 1)] {
        for (s_q, context) in [
            (1, 0),
            (1, 15),
            (17, 0),
            (16, 5),
            (65, 0),
            (3, 255),
            (1, 256),
            (1, 257),
            (129, 130),
        ] {
            let case = Case::new(2, (n_heads, n_kv_heads), (8, 6), (s_q, context));
            for threads in [1, 2] {
                run(&case, threads);
            }
        }
    }
}

/// Causal prefill at a real head width (128: the micro-kernels' widest tiles, 64 rows of
/// scores and 6 rows of values at a time), where a tile of rows computes only the keys some
/// row of it sees: query tiles on the diagonal, after cached tokens or not, MHA and groups
/// whose rows repeat the same positions head after head.
#[test]
fn tiled_equals_naive_where_tiles_skip_the_keys_none_of_their_rows_see() {
    for (n_heads, n_kv_heads) in [(2, 2), (6, 2), (4, 1)] {
        for (s_q, context) in [(128, 0), (200, 0), (70, 37), (129, 300)] {
            let case = Case::new(1, (n_heads, n_kv_heads), (128, 128), (s_q, context));
            run(&case, 2);
        }
    }
}

#[test]
fn long_decode_contexts_split_across_threads_merge_exactly() {
    // One sequence, one KV head: fewer tasks than threads, so the keys are split.
    for context in [1023, 2048, 3001] {
        for (n_heads, n_kv_heads) in [(8, 1), (4, 2), (1, 1)] {
            let case = Case::new(1, (n_heads, n_kv_heads), (16, 16), (1, context));
            for threads in [2, 4] {
                run(&case, threads);
            }
        }
    }
}

#[test]
fn few_packed_rows_at_odd_head_widths() {
    // Group sizes 1 to 8 at decode, and a 2-token step of a group of 3 (6 packed rows): every
    // row count of the few-row score kernel, at widths that are not multiples of its lanes.
    for (n_heads, n_kv_heads, s_q) in [
        (2, 2, 1),
        (4, 2, 1),
        (3, 1, 1),
        (8, 2, 1),
        (5, 1, 1),
        (6, 1, 1),
        (7, 1, 1),
        (8, 1, 1),
        (6, 2, 2),
    ] {
        for (qk_dim, v_dim) in [(13, 7), (67, 64)] {
            for context in [0, 9, 300] {
                let case = Case::new(2, (n_heads, n_kv_heads), (qk_dim, v_dim), (s_q, context));
                run(&case, 2);
            }
        }
    }
}

#[test]
fn absorbed_mla_shape_with_wide_keys_and_narrower_values() {
    let case = Case::new(1, (16, 1), (72, 64), (3, 700));
    run(&case, 2);
}

#[test]
fn fast_exp_is_accurate_over_the_softmax_range() {
    let mut worst = 0.0f64;
    let mut x = -90.0f32;
    while x <= 0.0 {
        let exact = f64::from(x).exp();
        let got = f64::from(fast_exp(x));
        if exact > 1e-30 {
            worst = worst.max(((got - exact) / exact).abs());
        }
        x += 0.0137;
    }
    assert!(worst < 1e-6, "relative error {worst:e}");
    assert_eq!(fast_exp(f32::NEG_INFINITY), fast_exp(-87.0));
    assert!(fast_exp(-87.0) < 1e-37);
    assert_eq!(fast_exp(0.0), 1.0);
}

/// Which operand a test poisons.
#[derive(Clone, Copy, Debug)]
enum Operand {
    Query,
    Key,
    Value,
}

/// One non-finite number put into a case's operands: in sequence `b`, at `(row, col)` of
/// query head `head` (row = query index) or of KV head `head`'s keys or values (row = key
/// position).
#[derive(Clone, Copy, Debug)]
struct Poison {
    operand: Operand,
    b: usize,
    head: usize,
    row: usize,
    col: usize,
    value: f32,
}

impl Poison {
    fn inject(&self, case: &Case, inputs: &mut Inputs) {
        let (k, v) = &mut inputs.kv[self.b];
        let (row, width) = match self.operand {
            Operand::Query => (inputs.q.row_mut(self.b * case.s_q + self.row), case.qk_dim),
            Operand::Key => (k.row_mut(self.row), case.qk_dim),
            Operand::Value => (v.row_mut(self.row), case.v_dim),
        };
        row[self.head * width + self.col] = self.value;
    }

    /// Whether output `(b, h, i, c)` depends on the poisoned number: a query reaches its own
    /// output row; a key the rows of its group's heads whose query sees it; a value the same
    /// rows, in its own column.
    fn reaches(&self, case: &Case, b: usize, h: usize, i: usize, c: usize) -> bool {
        let group = case.n_heads / case.n_kv_heads;
        let sees = h / group == self.head && case.context + i >= self.row;
        b == self.b
            && match self.operand {
                Operand::Query => h == self.head && i == self.row,
                Operand::Key => sees,
                Operand::Value => sees && c == self.col,
            }
    }
}

/// Runs both kernels on the clean and the poisoned operands: every output that depends on
/// the poison is NaN, every other one is finite and equals the clean run (to rounding: a
/// kernel may take an exact path for keys a query cannot see when their values are not
/// finite).
fn check_poison(case: &Case, poison: Poison, threads: usize) {
    let mut clean_inputs = case.inputs();
    if case.storage != Storage::Matrices {
        // The clean run holds 0 where the poison goes: an int8 row's scale is taken over its
        // finite values, so a NaN and a 0 leave the rest of the row the same codes and scale.
        Poison {
            value: 0.0,
            ..poison
        }
        .inject(case, &mut clean_inputs);
    }
    let mut poisoned = case.inputs();
    poison.inject(case, &mut poisoned);
    for kernel in [Kernel::Naive, Kernel::Tiled] {
        let label = format!("{kernel:?} {} {poison:?}", case.label(threads));
        let clean = case.attend(&clean_inputs, kernel, threads);
        let out = case.attend(&poisoned, kernel, threads);
        let (mut kept, mut kept_clean, mut reached) = (Vec::new(), Vec::new(), 0);
        for (index, (&got, &want)) in out.iter().zip(&clean).enumerate() {
            let c = index % case.v_dim;
            let i = index / case.v_dim % case.s_q;
            let h = index / (case.v_dim * case.s_q) % case.n_heads;
            let b = index / (case.v_dim * case.s_q * case.n_heads);
            if poison.reaches(case, b, h, i, c) {
                assert!(
                    got.is_nan(),
                    "{label}: output (b{b} h{h} i{i} c{c}) is {got}"
                );
                reached += 1;
            } else {
                kept.push(got);
                kept_clean.push(want);
            }
        }
        assert!(reached > 0, "{label}: the poison reaches no output");
        assert_close_f32(&kept, &kept_clean, 1e-5, &label);
    }
}

/// Shapes for the non-finite tests, each with its thread count: prefill (blocks of 256 keys,
/// several tiles, from scratch and after a context) for MHA, GQA and MQA; a short step of
/// few packed rows (the few-row scores, with keys some rows cannot see); decode at every
/// group size from 1 to 8 packed rows, short and long enough to split the keys across
/// threads; and an MLA-shaped core (keys wider than values), a 3-token step whose keys split
/// across threads and a decode step.
fn poison_cases() -> Vec<(Case, usize)> {
    let mut cases = Vec::new();
    for (n_heads, n_kv_heads) in [(4, 4), (4, 2), (4, 1)] {
        for context in [0, 300] {
            cases.push((
                Case::new(2, (n_heads, n_kv_heads), (8, 6), (40, context)),
                2,
            ));
        }
    }
    cases.push((Case::new(2, (6, 2), (13, 7), (2, 9)), 2));
    for group in 1..=8 {
        for context in [40, 2500] {
            cases.push((Case::new(1, (2 * group, 2), (67, 64), (1, context)), 4));
        }
    }
    cases.push((Case::new(1, (16, 1), (72, 64), (3, 2100)), 2));
    cases.push((Case::new(1, (16, 1), (72, 64), (1, 2100)), 2));
    cases
}

/// For every shape of [`poison_cases`], puts each of `values` at column `col` of the last
/// head of `operand` in the last sequence, at the middle query, or at two key positions: one
/// every query sees (in the first key block and the first split) and one at the causal edge
/// (seen by the later half of the queries only). Then checks what each reaches.
fn poison_every_case(operand: Operand, col: fn(&Case) -> usize, values: &[f32]) {
    let stored = [Dtype::Bf16, Dtype::F16, Dtype::Int8].into_iter();
    let storages = [Storage::Matrices]
        .into_iter()
        .chain(stored.map(Storage::Cache));
    for (case, threads) in storages.flat_map(|storage| {
        poison_cases()
            .into_iter()
            .map(move |(case, threads)| (case.stored(storage), threads))
    }) {
        let (heads, rows) = match operand {
            Operand::Query => (case.n_heads, vec![case.s_q / 2]),
            Operand::Key | Operand::Value => {
                (case.n_kv_heads, vec![3, case.context + case.s_q / 2])
            }
        };
        for row in rows {
            for &value in values {
                let poison = Poison {
                    operand,
                    b: case.batch - 1,
                    head: heads - 1,
                    row,
                    col: col(&case),
                    value,
                };
                check_poison(&case, poison, threads);
            }
        }
    }
}

#[test]
fn a_nan_query_makes_its_output_row_nan_and_nothing_else() {
    poison_every_case(Operand::Query, |case| case.qk_dim - 1, &[f32::NAN]);
}

#[test]
fn a_nan_key_makes_the_rows_that_see_it_nan_and_nothing_else() {
    poison_every_case(Operand::Key, |_| 0, &[f32::NAN]);
}

/// An infinite key element gives scores of +∞ or −∞ (by the sign of the query's element):
/// softmax over a +∞ score is NaN in plain maths (`exp(∞ − ∞)`), and a −∞ score is taken as
/// the poison it is too, never a silent weight of 0.
#[test]
fn an_infinite_key_makes_the_rows_that_see_it_nan_and_nothing_else() {
    poison_every_case(Operand::Key, |_| 1, &[f32::INFINITY, f32::NEG_INFINITY]);
}

/// A NaN value reaches its column of the rows that see its key; the rows that cannot see it
/// (causally masked) are untouched: a weight of 0 times NaN must not leak into them.
#[test]
fn a_nan_value_makes_its_column_of_the_rows_that_see_it_nan_and_nothing_else() {
    poison_every_case(Operand::Value, |case| case.v_dim / 2, &[f32::NAN]);
}

#[test]
fn fast_exp_of_nan_is_nan() {
    assert!(fast_exp(f32::NAN).is_nan());
    assert!(fast_exp(-f32::NAN).is_nan());
}

const KV_DTYPES: [Dtype; 4] = [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::Int8];

/// Tiled against naive on keys and values read from a cache in every type, at the block
/// edges of the key blocks (1, 255, 256, 257 keys), for a decode, a short step and a block of
/// queries, every group size of the few-row paths and a wide group, at head widths that are
/// not multiples of the vector lanes.
#[test]
fn tiled_equals_naive_on_stored_caches_at_block_edges() {
    for dtype in KV_DTYPES {
        for s_k in [1, 255, 256, 257] {
            for s_q in [1, 9, 64].into_iter().filter(|&s_q| s_q <= s_k) {
                for (n_heads, n_kv_heads) in [(2, 2), (4, 2), (8, 2), (16, 2), (32, 1)] {
                    for width in [12, 20] {
                        let case =
                            Case::new(2, (n_heads, n_kv_heads), (width, width), (s_q, s_k - s_q));
                        run(&case.stored(Storage::Cache(dtype)), 2);
                    }
                }
            }
        }
    }
}

/// MLA absorbed's shape on a latent cache: keys the whole row, values its first columns; in
/// int8 two scales a row, so the decode scores are the sum of two narrow passes.
#[test]
fn tiled_equals_naive_on_stored_latent_caches() {
    for dtype in KV_DTYPES {
        for s_k in [1, 255, 256, 257] {
            for s_q in [1, 9, 64].into_iter().filter(|&s_q| s_q <= s_k) {
                for n_heads in [1, 4, 8, 32] {
                    let case = Case::new(2, (n_heads, 1), (20, 12), (s_q, s_k - s_q));
                    run(&case.stored(Storage::Latent(dtype)), 2);
                }
            }
        }
    }
}

/// Long stored contexts at decode, split across threads and merged.
#[test]
fn long_stored_decode_contexts_split_across_threads() {
    for dtype in KV_DTYPES {
        for storage in [Storage::Cache(dtype), Storage::Latent(dtype)] {
            for s_q in [1, 3] {
                let heads = if matches!(storage, Storage::Latent(_)) {
                    (16, 1)
                } else {
                    (8, 2)
                };
                let case = Case::new(1, heads, (72, 64), (s_q, 2100)).stored(storage);
                for threads in [2, 4] {
                    run(&case, threads);
                }
            }
        }
    }
}

/// A NaN or an infinity in a latent row, in `c_kv` or in `k_rope`, poisons exactly the rows
/// that see its key, whatever the type (int8 stores it as its −128, the rest of the row keeps
/// its part's scale).
#[test]
fn a_non_finite_latent_value_poisons_the_rows_that_see_its_key() {
    for dtype in KV_DTYPES {
        for (s_q, context) in [(1, 600), (3, 40), (20, 300)] {
            let case =
                Case::new(1, (8, 1), (20, 12), (s_q, context)).stored(Storage::Latent(dtype));
            for col in [3, 15] {
                for value in [f32::NAN, f32::INFINITY] {
                    for row in [2, context + s_q / 2] {
                        let poison = Poison {
                            operand: Operand::Key,
                            b: 0,
                            head: 0,
                            row,
                            col,
                            value,
                        };
                        check_poison(&case, poison, 2);
                    }
                }
            }
        }
    }
}
