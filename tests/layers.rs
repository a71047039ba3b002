//! Every variant against the plain f64 reference, and against each other where the maths says
//! they must agree.

mod common;

use attnbench::weights::input;
use attnbench::{
    AttentionLayer, Error, Kernel, LayerSpec, Matrix, MlaPath, Variant, build_layer,
    build_layer_with_kernel,
};
use common::reference::layer_rows as reference_rows;
use common::{assert_close, assert_close_f32, grouped, mla, reference, rows, small_specs, stack};

const TOL: f64 = 1e-4;

fn prefill(layer: &dyn AttentionLayer, x: &Matrix, cache: &mut attnbench::KvCache) -> Matrix {
    let mut y = Matrix::zeros(x.rows(), x.cols());
    layer.prefill(x, cache, &mut y).unwrap();
    y
}

#[test]
fn every_variant_matches_the_reference_at_odd_shapes() {
    for spec in small_specs() {
        let layer = build_layer(&spec, 7).unwrap();
        for seq_len in [1, 2, 17] {
            let x = input(3, "x", seq_len, spec.d_model());
            let mut cache = layer.new_cache(1, seq_len).unwrap();
            let y = prefill(layer.as_ref(), &x, &mut cache);
            let expected = reference_rows(&spec, layer.as_ref(), &x);
            assert_close(
                y.data(),
                &expected,
                TOL,
                &format!("{} seq_len {seq_len}", spec.label()),
            );
        }
    }
}

#[test]
fn block_edge_lengths_match_the_reference() {
    for spec in [
        grouped(Variant::Gqa, 16, 4, 2, 8),
        mla((16, 2, 8, Some(6), 4, 4, 4), MlaPath::Absorbed),
    ] {
        let layer = build_layer(&spec, 1).unwrap();
        for seq_len in [15, 16, 33] {
            let x = input(5, "x", seq_len, spec.d_model());
            let mut cache = layer.new_cache(1, seq_len).unwrap();
            let y = prefill(layer.as_ref(), &x, &mut cache);
            assert_close(
                y.data(),
                &reference_rows(&spec, layer.as_ref(), &x),
                TOL,
                &spec.label(),
            );
        }
    }
}

#[test]
fn a_cache_that_already_holds_tokens_continues_the_positions() {
    for spec in small_specs() {
        let layer = build_layer(&spec, 11).unwrap();
        let x = input(4, "x", 17, spec.d_model());
        let mut cache = layer.new_cache(1, 17).unwrap();
        prefill(layer.as_ref(), &rows(&x, 0, 5), &mut cache);
        let y = prefill(layer.as_ref(), &rows(&x, 5, 12), &mut cache);
        let expected = reference_rows(&spec, layer.as_ref(), &x);
        assert_close(
            y.data(),
            &expected[5 * spec.d_model()..],
            TOL,
            &spec.label(),
        );
    }
}

#[test]
fn batch_of_three_matches_the_reference_per_sequence() {
    for spec in small_specs() {
        let layer = build_layer(&spec, 2).unwrap();
        let seqs: Vec<Matrix> = (0..3)
            .map(|b| input(9, &format!("seq{b}"), 17, spec.d_model()))
            .collect();
        let x = stack(&seqs.iter().collect::<Vec<_>>());
        let mut cache = layer.new_cache(3, 17).unwrap();
        let y = prefill(layer.as_ref(), &x, &mut cache);
        for (b, seq) in seqs.iter().enumerate() {
            let expected = reference_rows(&spec, layer.as_ref(), seq);
            assert_close(
                rows(&y, b * 17, 17).data(),
                &expected,
                TOL,
                &format!("{} batch row {b}", spec.label()),
            );
        }
    }
}

#[test]
fn batch_rows_are_independent_even_at_different_cache_lengths() {
    for spec in small_specs() {
        let layer = build_layer(&spec, 5).unwrap();
        let d = spec.d_model();
        let history: Vec<Matrix> = (0..3).map(|b| input(1, &format!("h{b}"), 6, d)).collect();
        let token: Vec<Matrix> = (0..3).map(|b| input(1, &format!("t{b}"), 1, d)).collect();

        // Batched: sequence b keeps 6 - 2b tokens of its history, then all decode together.
        let mut cache = layer.new_cache(3, 7).unwrap();
        prefill(
            layer.as_ref(),
            &stack(&history.iter().collect::<Vec<_>>()),
            &mut cache,
        );
        for (b, seq) in cache.sequences_mut().iter_mut().enumerate() {
            seq.truncate(6 - 2 * b);
        }
        let mut y = Matrix::zeros(3, d);
        layer
            .decode(
                &stack(&token.iter().collect::<Vec<_>>()),
                &mut cache,
                &mut y,
            )
            .unwrap();

        for b in 0..3 {
            let alone = layer.new_cache(1, 7).unwrap();
            let mut alone = alone;
            prefill(layer.as_ref(), &rows(&history[b], 0, 6 - 2 * b), &mut alone);
            let mut y_alone = Matrix::zeros(1, d);
            layer.decode(&token[b], &mut alone, &mut y_alone).unwrap();
            assert_close_f32(
                y.row(b),
                y_alone.data(),
                1e-5,
                &format!("{} sequence {b}", spec.label()),
            );
        }
    }
}

#[test]
fn prefill_then_decodes_equals_one_longer_prefill() {
    for spec in small_specs() {
        let layer = build_layer(&spec, 3).unwrap();
        let (s, k) = (9, 4);
        let x = input(6, "x", s + k, spec.d_model());
        let mut whole_cache = layer.new_cache(1, s + k).unwrap();
        let whole = prefill(layer.as_ref(), &x, &mut whole_cache);

        let mut cache = layer.new_cache(1, s + k).unwrap();
        let mut parts = vec![prefill(layer.as_ref(), &rows(&x, 0, s), &mut cache)];
        for t in s..s + k {
            let mut y = Matrix::zeros(1, spec.d_model());
            layer.decode(&rows(&x, t, 1), &mut cache, &mut y).unwrap();
            parts.push(y);
        }
        let stepped = stack(&parts.iter().collect::<Vec<_>>());
        assert_close_f32(stepped.data(), whole.data(), 1e-5, &spec.label());
        let (a, b) = (&cache.sequences()[0], &whole_cache.sequences()[0]);
        for p in 0..a.planes().len() {
            assert_close_f32(
                &a.token_rows(p),
                &b.token_rows(p),
                1e-5,
                &format!("{} cache", spec.label()),
            );
        }
    }
}

fn same_output(a: &LayerSpec, b: &LayerSpec, tol: f64) {
    let (la, lb) = (build_layer(a, 21).unwrap(), build_layer(b, 21).unwrap());
    let x = input(8, "x", 13, a.d_model());
    let ya = prefill(la.as_ref(), &x, &mut la.new_cache(1, 13).unwrap());
    let yb = prefill(lb.as_ref(), &x, &mut lb.new_cache(1, 13).unwrap());
    assert_close_f32(
        ya.data(),
        yb.data(),
        tol,
        &format!("{} vs {}", a.label(), b.label()),
    );
}

#[test]
fn gqa_with_all_kv_heads_is_mha_and_with_one_is_mqa() {
    same_output(
        &grouped(Variant::Gqa, 32, 4, 4, 8),
        &grouped(Variant::Mha, 32, 4, 4, 8),
        1e-6,
    );
    same_output(
        &grouped(Variant::Gqa, 32, 4, 1, 8),
        &grouped(Variant::Mqa, 32, 4, 1, 8),
        1e-6,
    );
}

#[test]
fn mla_absorbed_equals_mla_naive() {
    for (dims, lens) in [
        ((24, 3, 12, None, 5, 6, 7), [1, 17]),
        ((32, 4, 16, Some(10), 8, 4, 6), [2, 33]),
    ] {
        same_output(
            &mla(dims, MlaPath::Naive),
            &mla(dims, MlaPath::Absorbed),
            1e-5,
        );
        // And over a cache that grows by decode steps.
        let naive = build_layer(&mla(dims, MlaPath::Naive), 4).unwrap();
        let absorbed = build_layer(&mla(dims, MlaPath::Absorbed), 4).unwrap();
        for len in lens {
            let x = input(2, "x", len + 1, dims.0);
            let mut outputs = Vec::new();
            for layer in [&naive, &absorbed] {
                let mut cache = layer.new_cache(1, len + 1).unwrap();
                prefill(layer.as_ref(), &rows(&x, 0, len), &mut cache);
                let mut y = Matrix::zeros(1, dims.0);
                layer.decode(&rows(&x, len, 1), &mut cache, &mut y).unwrap();
                outputs.push(y);
            }
            assert_close_f32(outputs[0].data(), outputs[1].data(), 1e-5, "mla decode");
        }
    }
}

#[test]
fn huge_scores_stay_finite_and_correct() {
    // Inputs scaled by 100 give scores in the thousands: exp overflows f32 above 88.7, so a
    // softmax without the max shift returns inf/NaN here.
    let spec = grouped(Variant::Mha, 32, 2, 2, 16);
    let layer = build_layer(&spec, 1).unwrap();
    let mut x = input(1, "x", 9, spec.d_model());
    x.data_mut().iter_mut().for_each(|v| *v *= 100.0);
    let wide = reference::widened(&layer.weights());
    let weights = reference::borrowed(&wide);
    let (w_q, w_k) = (
        reference::weight(&weights, "w_q"),
        reference::weight(&weights, "w_k"),
    );
    let project = |row: &[f32], w: &Matrix| -> Vec<f64> {
        (0..w.cols())
            .map(|c| {
                row.iter()
                    .enumerate()
                    .map(|(i, &a)| f64::from(a) * f64::from(w.row(i)[c]))
                    .sum()
            })
            .collect()
    };
    let largest_score = (0..9)
        .flat_map(|i| (0..=i).map(move |j| (i, j)))
        .map(|(i, j)| {
            let (q, k) = (project(x.row(i), w_q), project(x.row(j), w_k));
            q[..16]
                .iter()
                .zip(&k[..16])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                .abs()
                / 4.0
        })
        .fold(0.0f64, f64::max);
    assert!(largest_score > 1e3, "scores reach only {largest_score}");
    let mut cache = layer.new_cache(1, 9).unwrap();
    let y = prefill(layer.as_ref(), &x, &mut cache);
    assert_close(
        y.data(),
        &reference_rows(&spec, layer.as_ref(), &x),
        1e-3,
        &spec.label(),
    );
}

#[test]
fn softmax_of_scores_near_ten_thousand() {
    let mut row = [1.0e4f32, 1.0e4 - 1.0, 1.0e4 - 2.0, -1.0e4];
    attnbench::kernels::softmax_in_place(&mut row);
    let e: Vec<f64> = [0.0f64, -1.0, -2.0, -2.0e4]
        .iter()
        .map(|v| v.exp())
        .collect();
    let total: f64 = e.iter().sum();
    let expected: Vec<f64> = e.iter().map(|v| v / total).collect();
    assert_close(&row, &expected, 1e-6, "softmax");
}

#[test]
fn cache_bytes_from_the_allocation_equal_the_formula() {
    for spec in small_specs() {
        let layer = build_layer(&spec, 0).unwrap();
        let cache = layer.new_cache(3, 50).unwrap();
        let info = layer.info();
        assert_eq!(
            cache.allocated_bytes(),
            3 * 50 * info.kv_bytes_per_token,
            "{}",
            spec.label()
        );
        assert_eq!(cache.allocated_bytes(), cache.analytic_bytes());
        assert_eq!(cache.padding_bytes(), 0);
    }
}

#[test]
fn mla_caches_576_values_per_token_whatever_the_head_count() {
    for n_heads in [1, 16, 128] {
        let spec = mla((64, n_heads, 512, None, 8, 64, 8), MlaPath::Absorbed);
        let layer = build_layer(&spec, 0).unwrap();
        let cache = layer.new_cache(1, 10).unwrap();
        assert_eq!(layer.info().kv_values_per_token, 576);
        assert_eq!(cache.allocated_bytes(), 10 * 576 * 4, "n_heads {n_heads}");
    }
}

#[test]
fn mqa_caches_two_head_widths_per_token() {
    for head_dim in [8, 64, 128] {
        let layer = build_layer(&grouped(Variant::Mqa, 64, 8, 1, head_dim), 0).unwrap();
        let cache = layer.new_cache(2, 5).unwrap();
        assert_eq!(layer.info().kv_values_per_token, 2 * head_dim);
        assert_eq!(cache.allocated_bytes(), 2 * 5 * 2 * head_dim * 4);
    }
}

#[test]
fn parameter_counts_follow_the_shapes() {
    let layer = build_layer(&grouped(Variant::Gqa, 32, 4, 2, 8), 0).unwrap();
    assert_eq!(layer.info().params, 32 * 32 + 2 * 32 * 16 + 32 * 32);
    let layer = build_layer(&mla((32, 4, 16, Some(10), 8, 4, 6), MlaPath::Naive), 0).unwrap();
    let expected = 32 * 10 + 10 + 10 * 4 * 12 + 32 * 20 + 16 + 16 * 4 * 8 + 16 * 4 * 6 + 4 * 6 * 32;
    assert_eq!(layer.info().params, expected);
}

#[test]
fn the_same_seed_gives_the_same_weights_and_another_seed_does_not() {
    let spec = grouped(Variant::Gqa, 32, 4, 2, 8);
    let (a, b, c) = (
        build_layer(&spec, 5).unwrap(),
        build_layer(&spec, 5).unwrap(),
        build_layer(&spec, 6).unwrap(),
    );
    assert_eq!(a.weights()[0].1, b.weights()[0].1);
    assert_ne!(a.weights()[0].1, c.weights()[0].1);
    let w = a.weights()[0].1.to_f32();
    let variance = w.data().iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / w.len() as f64;
    assert!(
        (variance * 32.0 - 1.0).abs() < 0.2,
        "variance {variance} is not 1/d_in"
    );
}

#[test]
fn invalid_configs_are_typed_errors_naming_the_field() {
    let cases: Vec<(LayerSpec, &str)> = vec![
        (grouped(Variant::Gqa, 64, 32, 5, 8), "n_kv_heads"),
        (grouped(Variant::Mha, 64, 8, 4, 8), "n_kv_heads"),
        (grouped(Variant::Mqa, 64, 8, 2, 8), "n_kv_heads"),
        (grouped(Variant::Gqa, 64, 8, 2, 7), "head_dim"),
        (grouped(Variant::Gqa, 0, 8, 2, 8), "d_model"),
        (grouped(Variant::Gqa, 64, 0, 2, 8), "n_heads"),
        (
            mla((32, 4, 16, Some(0), 8, 4, 6), MlaPath::Naive),
            "q_lora_rank",
        ),
        (
            mla((32, 4, 16, None, 8, 5, 6), MlaPath::Naive),
            "qk_rope_head_dim",
        ),
        (
            mla((32, 4, 0, None, 8, 4, 6), MlaPath::Naive),
            "kv_lora_rank",
        ),
        (
            mla((32, 4, 16, None, 8, 4, 1 << 30), MlaPath::Naive),
            "v_head_dim",
        ),
    ];
    for (spec, field) in cases {
        match build_layer(&spec, 0) {
            Err(Error::InvalidConfig {
                field: f, value, ..
            }) => {
                assert_eq!(f, field, "{spec:?}");
                assert!(!value.is_empty());
            }
            Err(other) => panic!("{spec:?}: wrong error {other}"),
            Ok(_) => panic!("{spec:?}: accepted"),
        }
    }
}

#[test]
fn a_step_past_capacity_is_an_error_and_leaves_the_cache_intact() {
    for spec in small_specs() {
        let layer = build_layer(&spec, 0).unwrap();
        let mut cache = layer.new_cache(2, 4).unwrap();
        let x = input(0, "x", 6, spec.d_model());
        prefill(layer.as_ref(), &x, &mut cache);
        let before: Vec<Vec<f32>> = cache.sequences().iter().map(|s| s.token_rows(0)).collect();
        let mut y = Matrix::zeros(4, spec.d_model());
        let err = layer
            .prefill(&input(0, "more", 4, spec.d_model()), &mut cache, &mut y)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::CacheFull {
                    len: 3,
                    capacity: 4,
                    requested: 2,
                    ..
                }
            ),
            "{err}"
        );
        let after: Vec<Vec<f32>> = cache.sequences().iter().map(|s| s.token_rows(0)).collect();
        assert_eq!(before, after);
    }
}

#[test]
fn wrong_shapes_are_errors() {
    let layer = build_layer(&grouped(Variant::Gqa, 32, 4, 2, 8), 0).unwrap();
    let mut cache = layer.new_cache(2, 8).unwrap();
    let mut y = Matrix::zeros(3, 32);
    // 3 rows cannot split into a batch of 2.
    assert!(matches!(
        layer.prefill(&Matrix::zeros(3, 32), &mut cache, &mut y),
        Err(Error::Shape { .. })
    ));
    // Wrong width.
    let mut y = Matrix::zeros(2, 16);
    assert!(matches!(
        layer.prefill(&Matrix::zeros(2, 16), &mut cache, &mut y),
        Err(Error::Shape { .. })
    ));
    // Decode takes exactly one row per sequence.
    let mut y = Matrix::zeros(4, 32);
    assert!(matches!(
        layer.decode(&Matrix::zeros(4, 32), &mut cache, &mut y),
        Err(Error::Shape { .. })
    ));
    assert_eq!(cache.sequences()[0].len(), 0);
}

#[test]
fn decode_checks_the_width_every_layer_reports() {
    for spec in small_specs() {
        let layer = build_layer(&spec, 0).unwrap();
        assert_eq!(layer.d_model(), spec.d_model(), "{}", spec.label());
        assert_eq!(
            layer.d_model(),
            layer.info().spec.d_model(),
            "{}",
            spec.label()
        );
        let mut cache = layer.new_cache(2, 4).unwrap();
        let narrow = spec.d_model() - 1;
        let mut y = Matrix::zeros(2, narrow);
        assert!(
            matches!(
                layer.decode(&Matrix::zeros(2, narrow), &mut cache, &mut y),
                Err(Error::Shape { .. })
            ),
            "{}",
            spec.label()
        );
        assert_eq!(cache.sequences()[0].len(), 0);
    }
}

#[test]
fn thin_constructors_build_the_variant_they_name() {
    use attnbench::variants::{gqa, mha, mqa};
    let m = mha::new(32, 4, 8, 1e4, 0).unwrap();
    assert_eq!((m.info().variant, m.config().n_kv_heads), (Variant::Mha, 4));
    let q = mqa::new(32, 4, 8, 1e4, 0).unwrap();
    assert_eq!((q.info().variant, q.config().n_kv_heads), (Variant::Mqa, 1));
    let g = gqa::new(32, 4, 2, 8, 1e4, 0).unwrap();
    assert_eq!((g.info().variant, g.config().n_kv_heads), (Variant::Gqa, 2));
    assert!(gqa::new(32, 4, 3, 8, 1e4, 0).is_err());
}

#[test]
fn every_variant_matches_the_reference_on_both_kernels() {
    for spec in small_specs() {
        for kernel in [Kernel::Naive, Kernel::Tiled] {
            let layer = build_layer_with_kernel(&spec, kernel, 7).unwrap();
            for (seq_len, prefix) in [(1, 0), (17, 0), (3, 40)] {
                let x = input(3, "x", prefix + seq_len, spec.d_model());
                let mut cache = layer.new_cache(1, prefix + seq_len).unwrap();
                if prefix > 0 {
                    prefill(layer.as_ref(), &rows(&x, 0, prefix), &mut cache);
                }
                let y = prefill(layer.as_ref(), &rows(&x, prefix, seq_len), &mut cache);
                let expected = reference_rows(&spec, layer.as_ref(), &x);
                let label = format!("{} {kernel} seq_len {seq_len} after {prefix}", spec.label());
                assert_close(y.data(), &expected[prefix * spec.d_model()..], TOL, &label);
            }
        }
    }
}

#[test]
fn the_attention_core_alone_agrees_across_kernels_on_the_layers_own_cache() {
    for spec in small_specs() {
        let (naive, tiled) = (
            build_layer_with_kernel(&spec, Kernel::Naive, 3).unwrap(),
            build_layer_with_kernel(&spec, Kernel::Tiled, 3).unwrap(),
        );
        let mut cache = tiled.new_cache(2, 12).unwrap();
        prefill(
            tiled.as_ref(),
            &input(1, "x", 24, spec.d_model()),
            &mut cache,
        );
        let inputs = tiled.core_inputs(&cache, 5, 9);
        assert_eq!(inputs.first_positions, vec![7, 7]);
        let (mut a, mut b) = (vec![0.0; inputs.out_len], vec![0.0; inputs.out_len]);
        naive.run_core(&inputs, &cache, &mut a);
        tiled.run_core(&inputs, &cache, &mut b);
        assert!(b.iter().any(|v| *v != 0.0));
        assert_close_f32(&b, &a, 1e-5, &spec.label());
    }
}
