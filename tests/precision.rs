//! Every variant with its KV cache stored in each type (docs/design.md §5): against the f64
//! reference that reads back the stored K and V (MLA: the latent) as §5 says, against each
//! other where the maths says they agree, and the cache's bytes against the formula.

mod common;

use attnbench::kernels::INT8_NON_FINITE;
use attnbench::kv_cache::{KvCache, PlaneSpec};
use attnbench::weights::input;
use attnbench::{
    AttentionLayer, Dtype, Kernel, LayerSpec, Matrix, MlaPath, Precision, Variant, build_layer_with,
};
use common::{assert_close, assert_close_f32, grouped, mla, reference, rows, small_specs, stack};

/// Only the order of the f32 sums differs from the reference: the stored values are the same.
const TOL: f64 = 1e-5;

const DTYPES: [Dtype; 4] = [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::Int8];

fn precision(kv_dtype: Dtype) -> Precision {
    Precision {
        kv_dtype,
        ..Precision::default()
    }
}

fn layer(spec: &LayerSpec, kernel: Kernel, kv_dtype: Dtype, seed: u64) -> Box<dyn AttentionLayer> {
    build_layer_with(spec, kernel, precision(kv_dtype), seed).unwrap()
}

/// A prefill of `s` rows of `x`, then one decode per further row: the outputs stacked, and
/// the cache.
fn prefill_then_decodes(layer: &dyn AttentionLayer, x: &Matrix, s: usize) -> (Matrix, KvCache) {
    let d = layer.d_model();
    let mut cache = layer.new_cache(1, x.rows()).unwrap();
    let mut first = Matrix::zeros(s, d);
    layer
        .prefill(&rows(x, 0, s), &mut cache, &mut first)
        .unwrap();
    let mut parts = vec![first];
    for t in s..x.rows() {
        let mut y = Matrix::zeros(1, d);
        layer.decode(&rows(x, t, 1), &mut cache, &mut y).unwrap();
        parts.push(y);
    }
    (stack(&parts.iter().collect::<Vec<_>>()), cache)
}

fn reference_stored(
    spec: &LayerSpec,
    layer: &dyn AttentionLayer,
    x: &Matrix,
    dtype: Dtype,
) -> Vec<f64> {
    let wide = reference::widened(&layer.weights());
    let weights = reference::borrowed(&wide);
    let out = match spec {
        LayerSpec::Grouped { config, .. } => reference::grouped_stored(config, &weights, x, dtype),
        LayerSpec::Mla { config, .. } => reference::mla_stored(config, &weights, x, dtype),
    };
    out.into_iter().flatten().collect()
}

#[test]
fn every_variant_and_kv_dtype_matches_the_stored_reference_over_a_prefill_and_two_decodes() {
    for spec in small_specs() {
        for kernel in [Kernel::Tiled, Kernel::Naive] {
            for dtype in DTYPES {
                let layer = layer(&spec, kernel, dtype, 7);
                let x = input(3, "x", 11, spec.d_model());
                let (y, _) = prefill_then_decodes(layer.as_ref(), &x, 9);
                let expected = reference_stored(&spec, layer.as_ref(), &x, dtype);
                let label = format!("{} {kernel:?} {dtype}", spec.label());
                assert_close(y.data(), &expected, TOL, &label);
            }
        }
    }
}

/// The stored reference differs from the f32 one by about the type's rounding: the test
/// above could not pass with the cache left in f32.
#[test]
fn the_stored_reference_is_not_the_f32_one() {
    let spec = grouped(Variant::Gqa, 32, 4, 2, 8);
    let layer = layer(&spec, Kernel::Tiled, Dtype::F32, 7);
    let x = input(3, "x", 11, spec.d_model());
    let exact = reference_stored(&spec, layer.as_ref(), &x, Dtype::F32);
    let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for dtype in [Dtype::Bf16, Dtype::F16, Dtype::Int8] {
        let stored = reference_stored(&spec, layer.as_ref(), &x, dtype);
        let worst = stored
            .iter()
            .zip(&exact)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst / scale > 10.0 * TOL, "{dtype}: {}", worst / scale);
    }
}

#[test]
fn prefill_then_decodes_equals_one_longer_prefill_in_every_kv_dtype() {
    for spec in small_specs() {
        for dtype in DTYPES {
            let layer = layer(&spec, Kernel::Tiled, dtype, 3);
            let x = input(6, "x", 13, spec.d_model());
            let (stepped, cache) = prefill_then_decodes(layer.as_ref(), &x, 9);
            let (whole, whole_cache) = prefill_then_decodes(layer.as_ref(), &x, 13);
            let label = format!("{} {dtype}", spec.label());
            assert_close_f32(stepped.data(), whole.data(), TOL, &label);
            let (a, b) = (&cache.sequences()[0], &whole_cache.sequences()[0]);
            for p in 0..a.planes().len() {
                assert_eq!(a.token_rows(p), b.token_rows(p), "{label}: cache");
                assert_eq!(a.int8_token_rows(p), b.int8_token_rows(p), "{label}: codes");
            }
        }
    }
}

fn same_output(a: &LayerSpec, b: &LayerSpec, dtype: Dtype) {
    let la = layer(a, Kernel::Tiled, dtype, 21);
    let lb = layer(b, Kernel::Tiled, dtype, 21);
    let x = input(8, "x", 13, a.d_model());
    let (ya, _) = prefill_then_decodes(la.as_ref(), &x, 11);
    let (yb, _) = prefill_then_decodes(lb.as_ref(), &x, 11);
    let label = format!("{} vs {} {dtype}", a.label(), b.label());
    assert_close_f32(ya.data(), yb.data(), TOL, &label);
}

#[test]
fn gqa_is_mha_and_mqa_and_absorbed_mla_is_naive_in_every_kv_dtype() {
    for dtype in DTYPES {
        same_output(
            &grouped(Variant::Gqa, 32, 4, 4, 8),
            &grouped(Variant::Mha, 32, 4, 4, 8),
            dtype,
        );
        same_output(
            &grouped(Variant::Gqa, 32, 4, 1, 8),
            &grouped(Variant::Mqa, 32, 4, 1, 8),
            dtype,
        );
        for q_lora in [None, Some(10)] {
            same_output(
                &mla((32, 4, 16, q_lora, 8, 4, 6), MlaPath::Naive),
                &mla((32, 4, 16, q_lora, 8, 4, 6), MlaPath::Absorbed),
                dtype,
            );
        }
    }
}

#[test]
fn the_cache_allocates_exactly_its_stored_bytes_in_every_dtype() {
    for spec in small_specs() {
        for dtype in DTYPES {
            let layer = layer(&spec, Kernel::Tiled, dtype, 1);
            let info = layer.info();
            let per_token = spec.kv_bytes_per_token(dtype).unwrap() as usize;
            assert_eq!(info.precision.kv_dtype, dtype);
            assert_eq!(info.kv_bytes_per_token, per_token, "{}", spec.label());
            let cache = layer.new_cache(3, 50).unwrap();
            assert_eq!(cache.dtype(), dtype);
            let label = format!("{} {dtype}", spec.label());
            assert_eq!(cache.allocated_bytes(), 3 * 50 * per_token, "{label}");
            assert_eq!(cache.analytic_bytes(), 3 * 50 * per_token, "{label}");
            assert_eq!(cache.padding_bytes(), 0, "{label}");
        }
    }
    // §5's own numbers: int8 grouped 2·n_kv·(head_dim + 4), MLA d_c + d_rope + 8.
    let gqa = layer(
        &grouped(Variant::Gqa, 32, 4, 2, 8),
        Kernel::Tiled,
        Dtype::Int8,
        1,
    );
    assert_eq!(gqa.info().kv_bytes_per_token, 2 * 2 * (8 + 4));
    let latent = mla((24, 3, 12, None, 5, 6, 7), MlaPath::Absorbed);
    let latent = layer(&latent, Kernel::Tiled, Dtype::Int8, 1);
    assert_eq!(latent.info().kv_bytes_per_token, 12 + 6 + 8);
    assert_eq!(
        latent.new_cache(2, 5).unwrap().allocated_bytes(),
        2 * 5 * 26
    );
}

/// One plane of two heads of width 6 and one MLA-like plane whose int8 rows split at 4.
fn planes() -> [PlaneSpec; 2] {
    [
        PlaneSpec {
            name: "k",
            heads: 2,
            head_width: 6,
            scale_split: None,
        },
        PlaneSpec {
            name: "latent",
            heads: 1,
            head_width: 7,
            scale_split: Some(4),
        },
    ]
}

#[test]
fn fill_synthetic_stores_the_f32_values_rounded() {
    let mut exact = KvCache::new(2, 9, &planes(), Dtype::F32).unwrap();
    exact.fill_synthetic(8, 5).unwrap();
    for dtype in [Dtype::Bf16, Dtype::F16, Dtype::Int8] {
        let mut cache = KvCache::new(2, 9, &planes(), dtype).unwrap();
        cache.fill_synthetic(8, 5).unwrap();
        for (seq, exact) in cache.sequences().iter().zip(exact.sequences()) {
            assert_eq!(seq.len(), 8);
            for (p, spec) in planes().iter().enumerate() {
                // Appending the f32 values stores them exactly as filling did.
                let mut appended = KvCache::new(1, 9, &[*spec], dtype).unwrap();
                let values = exact.token_rows(p);
                appended.sequences_mut()[0]
                    .append(0, 8, &[&values])
                    .unwrap();
                let appended = &appended.sequences()[0];
                assert_eq!(seq.token_rows(p), appended.token_rows(0), "{dtype} {p}");
                assert_eq!(seq.int8_token_rows(p), appended.int8_token_rows(0));
                assert_ne!(seq.token_rows(p), values, "{dtype} {p}: not rounded");
                let mut per_row = values.clone();
                let widths: Vec<usize> = match spec.scale_split {
                    Some(c) => vec![c, spec.head_width - c],
                    None => vec![spec.head_width],
                };
                let mut at = 0;
                while at < per_row.len() {
                    for w in &widths {
                        let mut row: Vec<f64> =
                            per_row[at..at + w].iter().map(|&v| f64::from(v)).collect();
                        reference::stored(&mut row, dtype);
                        for (v, r) in per_row[at..at + w].iter_mut().zip(row) {
                            *v = r as f32;
                        }
                        at += w;
                    }
                }
                assert_eq!(seq.token_rows(p), per_row, "{dtype} {p}: §5 rounding");
            }
        }
    }
}

#[test]
fn int8_token_rows_give_the_codes_and_scales_token_major() {
    let mut cache = KvCache::new(1, 4, &planes(), Dtype::Int8).unwrap();
    cache.fill_synthetic(3, 9).unwrap();
    let seq = &cache.sequences()[0];
    for (p, spec) in planes().iter().enumerate() {
        let (codes, scales) = seq.int8_token_rows(p).unwrap();
        let per_token = spec.heads * spec.scales_per_row();
        assert_eq!(codes.len(), 3 * spec.width());
        assert_eq!(scales.len(), 3 * per_token);
        let read = seq.token_rows(p);
        for t in 0..3 {
            for h in 0..spec.heads {
                let at = t * spec.width() + h * spec.head_width;
                for c in 0..spec.head_width {
                    let part = usize::from(spec.scale_split.is_some_and(|s| c >= s));
                    let scale = scales[t * per_token + h * spec.scales_per_row() + part];
                    let want = f32::from(codes[at + c]) * scale;
                    assert_eq!(read[at + c], want, "plane {p} token {t} head {h} col {c}");
                }
            }
        }
    }
    let mut f32_cache = KvCache::new(1, 4, &planes(), Dtype::F32).unwrap();
    f32_cache.fill_synthetic(3, 9).unwrap();
    assert_eq!(f32_cache.sequences()[0].int8_token_rows(0), None);
}

#[test]
fn an_int8_row_of_zeros_reads_back_zeros_and_a_nan_stays_where_it_was() {
    let spec = planes()[1];
    let mut cache = KvCache::new(1, 3, &[spec], Dtype::Int8).unwrap();
    let mut rows = vec![0.0f32; 3 * 7];
    // Token 1: a NaN in c_kv; token 2: values in both parts.
    rows[7..14].copy_from_slice(&[1.0, f32::NAN, -2.0, 0.5, 3.0, -1.0, 0.25]);
    rows[14..21].copy_from_slice(&[0.1, 0.2, 0.3, 0.4, 8.0, 0.0, -8.0]);
    cache.sequences_mut()[0].append(0, 3, &[&rows]).unwrap();
    let seq = &cache.sequences()[0];
    let read = seq.token_rows(0);
    let (codes, scales) = seq.int8_token_rows(0).unwrap();
    assert_eq!(&read[..7], &[0.0; 7]);
    assert_eq!(&scales[..2], &[0.0, 0.0]);
    assert_eq!(codes[8], INT8_NON_FINITE);
    assert!(read[8].is_nan());
    assert!(
        read.iter()
            .enumerate()
            .all(|(i, v)| i == 8 || v.is_finite())
    );
    // The NaN leaves the rest of its row its scale: c_kv's finite maximum is 2.
    assert_eq!(scales[2], 2.0 / 127.0);
    assert_eq!((codes[7], codes[9]), (64, -127));
    // The rope part has its own scale.
    assert_eq!(scales[3], 3.0 / 127.0);
    assert_eq!(scales[5], 8.0 / 127.0);
}

/// The attention core alone reads the stored cache: the tiled and naive kernels agree on it,
/// and over a rounded cache the output moves from the f32 cache's by about the rounding.
#[test]
fn the_core_runs_on_stored_caches() {
    for spec in small_specs() {
        let core = |kernel, dtype| {
            let layer = layer(&spec, kernel, dtype, 4);
            let mut cache = layer.new_cache(2, 40).unwrap();
            cache.fill_synthetic(39, 6).unwrap();
            cache.truncate(38);
            let inputs = layer.core_inputs(&cache, 1, 8);
            let mut out = vec![0.0f32; inputs.out_len];
            layer.run_core(&inputs, &cache, &mut out);
            out
        };
        let exact = core(Kernel::Tiled, Dtype::F32);
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::Int8] {
            let label = format!("{} {dtype}", spec.label());
            let tiled = core(Kernel::Tiled, dtype);
            assert_close_f32(&tiled, &core(Kernel::Naive, dtype), TOL, &label);
            assert_close_f32(&tiled, &exact, 0.1, &label);
            assert_ne!(tiled, exact, "{label}: the cache was not rounded");
        }
    }
}
