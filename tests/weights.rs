//! Projection weights stored in bf16 (docs/design.md §5): the products against f64 loops over
//! the rounded weights, and every layer with bf16 weights against the f64 reference run with
//! those rounded weights.

mod common;

use attnbench::config::{Dtype, Precision, WeightDtype};
use attnbench::kernels::{
    WEIGHT_ROW_BLOCK, Weight, bf16, matmul_weight, matmul_weight_transposed, project, round_to_bf16,
};
use attnbench::weights::{input, projection_weight};
use attnbench::{AttentionLayer, Kernel, LayerSpec, Matrix, MlaPath, Variant, build_layer_with};
use common::{assert_close, grouped, mla, reference, rows, small_specs, stack};
use faer::Par;

const BF16_WEIGHTS: Precision = Precision {
    kv_dtype: Dtype::F32,
    weight_dtype: WeightDtype::Bf16,
};

/// Runs `f` on a rayon pool of `threads` threads (the few-row path splits its columns only
/// when the pool has more than one).
fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// `(d_in, d_out)` random weights rounded to bf16.
fn bf16_weight(seed: u64, d_in: usize, d_out: usize) -> Weight {
    Weight::new(projection_weight(seed, "w", d_in, d_out), WeightDtype::Bf16)
}

/// Asserts each `got[r, c]` is within f32 summation error of `want[r][c]`: relative to the sum
/// of the magnitudes of its terms, `terms · 2^-24` with room to spare.
fn assert_products(got: &Matrix, want: &[(f64, f64)], terms: usize, label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    let tol = 4.0 * (terms.max(1) as f64) * f64::from(f32::EPSILON);
    for (i, (g, (value, magnitude))) in got.data().iter().zip(want).enumerate() {
        let err = (f64::from(*g) - value).abs();
        assert!(
            err <= tol * magnitude,
            "{label} at {i}: {g} vs {value} (terms' magnitude {magnitude})"
        );
    }
}

/// `x · w` (or `x · wᵀ`) in f64 over the stored values: each output with the sum of its terms'
/// magnitudes, row-major.
fn f64_product(x: &Matrix, w: &Matrix, transposed: bool) -> Vec<(f64, f64)> {
    let (depth, n) = if transposed {
        (w.cols(), w.rows())
    } else {
        (w.rows(), w.cols())
    };
    assert_eq!(x.cols(), depth);
    let mut out = Vec::new();
    for r in 0..x.rows() {
        for c in 0..n {
            let terms = (0..depth).map(|k| {
                let w = if transposed { w.row(c)[k] } else { w.row(k)[c] };
                f64::from(x.row(r)[k]) * f64::from(w)
            });
            out.push(terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs())));
        }
    }
    out
}

#[test]
fn few_row_bf16_products_equal_f64_loops_over_the_rounded_weights() {
    for threads in [1, 2] {
        on_threads(threads, || {
            for d_in in [1, 3, 64] {
                for d_out in [1, 7, 8, 9, 33, 4100] {
                    let w = bf16_weight(d_in as u64 * 7919 + d_out as u64, d_in, d_out);
                    let wide = w.to_f32();
                    for t in 1..=8 {
                        let label =
                            format!("{threads} threads, x ({t}, {d_in}) · W ({d_in}, {d_out})");
                        let x = input(t as u64, "x", t, d_in);
                        let got = project(x.view(), &w);
                        assert_products(&got, &f64_product(&x, &wide, false), d_in, &label);

                        // x · Wᵀ: the absorb's product, W's rows as the output columns.
                        let x = input(t as u64, "xt", t, d_out);
                        let mut got = Matrix::zeros(t, d_in);
                        let par = attnbench::kernels::matmul_threads();
                        matmul_weight_transposed(got.view_mut(), x.view(), w.view(), par);
                        let want = f64_product(&x, &wide, true);
                        assert_products(&got, &want, d_out, &format!("{label}, transposed"));
                    }
                }
            }
        });
    }
}

/// The products read the rounded weights, not some other copy: at this size bf16's rounding
/// (relative 2^-9 per weight) moves the outputs far beyond the f32 summation error.
#[test]
fn bf16_products_differ_from_the_unrounded_master() {
    let master = projection_weight(3, "w", 64, 33);
    let w = Weight::new(master.clone(), WeightDtype::Bf16);
    for t in [1, 20] {
        let x = input(1, "x", t, 64);
        let (rounded, unrounded) = (project(x.view(), &w), project(x.view(), &master));
        let worst = rounded
            .data()
            .iter()
            .zip(unrounded.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst > 1e-4,
            "t {t}: bf16 product equals the f32 one ({worst})"
        );
    }
}

/// The products write exactly their view of a wider output (MLA writes one head's columns)
/// and read exactly their view of a wider weight (one head's column block).
#[test]
fn bf16_products_stay_within_their_views() {
    let w = bf16_weight(11, 40, 30);
    let wide = w.to_f32();
    let block = Matrix::from_vec(
        40,
        10,
        (0..40).flat_map(|r| wide.row(r)[12..22].to_vec()).collect(),
    )
    .unwrap();
    for t in [2, 12] {
        let x = input(5, "x", t, 40);
        let mut out = Matrix::from_vec(t, 16, vec![f32::NAN; t * 16]).unwrap();
        let view = w.view().subcols(12, 10);
        matmul_weight(out.view_mut().subcols_mut(3, 10), x.view(), view, Par::Seq);
        let mut got = Matrix::zeros(t, 10);
        for r in 0..t {
            assert!(out.row(r)[..3].iter().all(|v| v.is_nan()), "t {t}: before");
            assert!(out.row(r)[13..].iter().all(|v| v.is_nan()), "t {t}: after");
            got.row_mut(r).copy_from_slice(&out.row(r)[3..13]);
        }
        assert_products(&got, &f64_product(&x, &block, false), 40, &format!("t {t}"));
    }
}

/// The prefill path (more than eight rows) widens `WEIGHT_ROW_BLOCK` weight rows at a time and
/// accumulates: the same as one f32 matmul over the widened weight, up to summation order, at
/// depths on both sides of a block and of two.
#[test]
fn the_block_path_equals_the_widened_matmul() {
    let b = WEIGHT_ROW_BLOCK;
    for threads in [1, 2] {
        on_threads(threads, || {
            for d_in in [1, b - 1, b, b + 1, 2 * b + 1] {
                for (t, d_out) in [(9, 1), (17, 33), (40, 100)] {
                    let w = bf16_weight(d_in as u64, d_in, d_out);
                    let x = input(2, "x", t, d_in);
                    let got = project(x.view(), &w);
                    let want = project(x.view(), &w.to_f32());
                    let want: Vec<f64> = want.data().iter().map(|v| f64::from(*v)).collect();
                    let label = format!("{threads} threads, x ({t}, {d_in}) · W ({d_in}, {d_out})");
                    assert_close(got.data(), &want, 1e-5, &label);
                }
            }
        });
    }
}

#[test]
fn an_empty_depth_gives_zeros_and_no_columns_no_panic() {
    let w = bf16_weight(1, 0, 5);
    for t in [1, 3, 9] {
        let x = Matrix::zeros(t, 0);
        let mut out = Matrix::from_vec(t, 5, vec![f32::NAN; t * 5]).unwrap();
        attnbench::kernels::project_to(&mut out, x.view(), &w);
        assert!(
            out.data().iter().all(|v| *v == 0.0),
            "t {t}: {:?}",
            out.data()
        );
        // No output columns: nothing to compute, nothing to panic on.
        let empty = project(input(1, "x", t, 4).view(), &bf16_weight(1, 4, 0));
        assert_eq!(empty.shape(), (t, 0));
    }
}

/// The specs the layers are checked at: the small ones, and two whose projections are deeper
/// than a weight block (GQA's `w_o` reads 264 rows, MLA's `W_uk`/`W_uv` 260).
fn specs() -> Vec<LayerSpec> {
    let mut specs = small_specs();
    specs.push(grouped(Variant::Gqa, 40, 4, 2, 66));
    for path in [MlaPath::Naive, MlaPath::Absorbed] {
        specs.push(mla((40, 2, 260, Some(12), 8, 4, 6), path));
    }
    specs
}

/// Each sequence's outputs, `(prefill + steps, d_model)`, from a prefill of `prefill` tokens
/// per sequence then `steps` decode steps, for sequences `xs` (one input matrix each).
fn run(layer: &dyn AttentionLayer, xs: &[Matrix], prefill: usize, steps: usize) -> Vec<Matrix> {
    let (batch, d) = (xs.len(), layer.d_model());
    let mut cache = layer.new_cache(batch, prefill + steps).unwrap();
    let mut outs: Vec<Vec<Matrix>> = vec![Vec::new(); batch];
    let parts: Vec<Matrix> = xs.iter().map(|x| rows(x, 0, prefill)).collect();
    let x = stack(&parts.iter().collect::<Vec<_>>());
    let mut y = Matrix::zeros(batch * prefill, d);
    layer.prefill(&x, &mut cache, &mut y).unwrap();
    for (b, out) in outs.iter_mut().enumerate() {
        out.push(rows(&y, b * prefill, prefill));
    }
    for s in 0..steps {
        let parts: Vec<Matrix> = xs.iter().map(|x| rows(x, prefill + s, 1)).collect();
        let x = stack(&parts.iter().collect::<Vec<_>>());
        let mut y = Matrix::zeros(batch, d);
        layer.decode(&x, &mut cache, &mut y).unwrap();
        for (b, out) in outs.iter_mut().enumerate() {
            out.push(rows(&y, b, 1));
        }
    }
    outs.iter()
        .map(|parts| stack(&parts.iter().collect::<Vec<_>>()))
        .collect()
}

/// Every layer with bf16 weights, prefill (two sequences of 5 tokens: 10 rows, the block path)
/// then decode (2 rows, the few-row path), against the reference over the rounded weights: only
/// the order of f32 sums differs, so the tolerance is the f32 layers'. The same layer in f32
/// lands measurably further away, so the rounded weights are what ran.
#[test]
fn every_layer_with_bf16_weights_matches_the_reference_over_its_rounded_weights() {
    let (prefill, steps) = (5, 3);
    for spec in specs() {
        let layer = build_layer_with(&spec, Kernel::default(), BF16_WEIGHTS, 7).unwrap();
        let f32_layer =
            build_layer_with(&spec, Kernel::default(), Precision::default(), 7).unwrap();
        let xs: Vec<Matrix> = (0..2)
            .map(|b| input(b, "x", prefill + steps, spec.d_model()))
            .collect();
        let (got, f32_got) = (
            run(layer.as_ref(), &xs, prefill, steps),
            run(f32_layer.as_ref(), &xs, prefill, steps),
        );
        for (b, x) in xs.iter().enumerate() {
            let want = reference::layer_rows(&spec, layer.as_ref(), x);
            let label = format!("{} sequence {b}", spec.label());
            assert_close(got[b].data(), &want, 1e-4, &label);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let f32_err = f32_got[b]
                .data()
                .iter()
                .zip(&want)
                .map(|(a, w)| (f64::from(*a) - w).abs())
                .fold(0.0f64, f64::max);
            assert!(
                f32_err / scale > 1e-3,
                "{label}: f32 weights give the same output"
            );
        }
    }
}

#[test]
fn mla_absorbed_equals_naive_with_bf16_weights() {
    for dims in [(24, 3, 12, None, 5, 6, 7), (40, 2, 260, Some(12), 8, 4, 6)] {
        let [naive, absorbed] = [MlaPath::Naive, MlaPath::Absorbed].map(|path| {
            build_layer_with(&mla(dims, path), Kernel::default(), BF16_WEIGHTS, 3).unwrap()
        });
        let xs: Vec<Matrix> = (0..3).map(|b| input(b, "x", 12, dims.0)).collect();
        let (a, b) = (
            run(naive.as_ref(), &xs, 10, 2),
            run(absorbed.as_ref(), &xs, 10, 2),
        );
        for (a, b) in a.iter().zip(&b) {
            let a: Vec<f64> = a.data().iter().map(|v| f64::from(*v)).collect();
            assert_close(b.data(), &a, 1e-4, &format!("{dims:?}"));
        }
    }
}

/// A bf16 layer's weights are the f32 layer's rounded once with `round_to_bf16`, bit for bit;
/// its norm scales are the f32 layer's, unrounded; it stores the projections in half the
/// bytes, and counts as many parameters as its shape says.
#[test]
fn bf16_weights_are_the_f32_weights_rounded() {
    for spec in specs() {
        let f32_layer =
            build_layer_with(&spec, Kernel::default(), Precision::default(), 9).unwrap();
        let layer = build_layer_with(&spec, Kernel::default(), BF16_WEIGHTS, 9).unwrap();
        let (masters, stored) = (f32_layer.weights(), layer.weights());
        assert_eq!(masters.len(), stored.len());
        for ((name, master), (stored_name, w)) in masters.iter().zip(&stored) {
            assert_eq!(name, stored_name);
            let label = format!("{} {name}", spec.label());
            let master = master.as_f32().expect("an f32 layer stores f32");
            if name.ends_with("_norm") {
                assert_eq!(w.as_f32(), Some(master), "{label}: a norm scale stays f32");
                continue;
            }
            assert_eq!(w.dtype(), WeightDtype::Bf16, "{label}");
            assert_eq!(w.stored_bytes(), master.len() * 2, "{label}");
            let mut rounded = vec![bf16::ZERO; master.len()];
            round_to_bf16(master.data(), &mut rounded);
            let widened = w.to_f32();
            let same_bits = widened
                .data()
                .iter()
                .zip(&rounded)
                .all(|(a, b)| a.to_bits() == u32::from(b.to_bits()) << 16);
            assert!(same_bits, "{label}: not the master rounded");
        }
        assert_eq!(layer.info().params, spec.param_count(), "{}", spec.label());
    }
}
