//! Plain reference implementations for the tests: loops straight from docs/design.md §1, f64
//! accumulation, no cache, no faer. Slow on purpose; only small shapes go through here. Kept
//! under tests/ so that it is not part of the library's public API.

use attnbench::kernels::{
    bf16, dequantize_int8, f16, quantize_int8, round_to_bf16, round_to_f16, widen_bf16, widen_f16,
};
use attnbench::{Dtype, GroupedConfig, Matrix, MlaConfig};

/// Rows of f64 values, one per token.
pub type Rows = Vec<Vec<f64>>;

/// The weight called `name` in a layer's `weights()` list.
///
/// # Panics
/// If there is none (a test asked for a weight the layer does not have).
pub fn weight<'a>(weights: &[(&'static str, &'a Matrix)], name: &str) -> &'a Matrix {
    weights
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| *w)
        .unwrap_or_else(|| panic!("no weight named {name}"))
}

/// `x · w` for one row `x: (d_in)`, `w: (d_in, d_out)`.
fn row_times(x: &[f64], w: &Matrix) -> Vec<f64> {
    let mut y = vec![0.0; w.cols()];
    for (i, &xi) in x.iter().enumerate() {
        for (yj, &wij) in y.iter_mut().zip(w.row(i)) {
            *yj += xi * f64::from(wij);
        }
    }
    y
}

fn rows_times(x: &Rows, w: &Matrix) -> Rows {
    x.iter().map(|r| row_times(r, w)).collect()
}

fn to_rows(x: &Matrix) -> Rows {
    (0..x.rows())
        .map(|r| x.row(r).iter().map(|&v| f64::from(v)).collect())
        .collect()
}

/// Rotate-half RoPE of `v` at position `p`.
fn rope(v: &mut [f64], p: usize, theta: f64) {
    let half = v.len() / 2;
    for i in 0..half {
        let angle = p as f64 * theta.powf(-2.0 * i as f64 / v.len() as f64);
        let (a, b) = (v[i], v[i + half]);
        v[i] = a * angle.cos() - b * angle.sin();
        v[i + half] = b * angle.cos() + a * angle.sin();
    }
}

fn rms_norm(v: &mut [f64], scale: &Matrix, eps: f64) {
    let mean_sq = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for (a, &g) in v.iter_mut().zip(scale.data()) {
        *a *= inv * f64::from(g);
    }
}

/// Causal attention of one head: `q: (n, d)`, `k: (n, d)`, `v: (n, dv)`, token `i` at
/// position `i`; returns `(n, dv)`.
fn causal_head(q: &Rows, k: &Rows, v: &Rows, scale: f64) -> Rows {
    q.iter()
        .enumerate()
        .map(|(i, qi)| {
            let scores: Vec<f64> = (0..=i)
                .map(|j| qi.iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut o = vec![0.0; v[0].len()];
            for (j, w) in weights.iter().enumerate() {
                for (oc, vc) in o.iter_mut().zip(&v[j]) {
                    *oc += w / total * vc;
                }
            }
            o
        })
        .collect()
}

/// Columns `start..start + width` of every row.
fn cols(x: &Rows, start: usize, width: usize) -> Rows {
    x.iter().map(|r| r[start..start + width].to_vec()).collect()
}

/// MHA/GQA/MQA over a whole sequence `x: (n, d_model)` at positions `0..n`; returns
/// `(n, d_model)`. `weights` holds `w_q`, `w_k`, `w_v`, `w_o`.
pub fn grouped(config: &GroupedConfig, weights: &[(&'static str, &Matrix)], x: &Matrix) -> Rows {
    grouped_stored(config, weights, x, Dtype::F32)
}

/// [`grouped`] with the cache stored as `kv_dtype`: every post-RoPE K row and every V row of
/// each KV head read back as [`stored`] gives it (f32: kept as computed, in f64).
pub fn grouped_stored(
    config: &GroupedConfig,
    weights: &[(&'static str, &Matrix)],
    x: &Matrix,
    kv_dtype: Dtype,
) -> Rows {
    let hd = config.head_dim;
    let x = to_rows(x);
    let mut q = rows_times(&x, weight(weights, "w_q"));
    let mut k = rows_times(&x, weight(weights, "w_k"));
    let mut v = rows_times(&x, weight(weights, "w_v"));
    for (p, (qr, kr)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
        qr.chunks_mut(hd)
            .for_each(|h| rope(h, p, config.rope_theta));
        kr.chunks_mut(hd)
            .for_each(|h| rope(h, p, config.rope_theta));
    }
    for row in k.iter_mut().chain(v.iter_mut()) {
        row.chunks_mut(hd).for_each(|h| stored(h, kv_dtype));
    }
    let group = config.n_heads / config.n_kv_heads;
    let mut concat = vec![Vec::new(); x.len()];
    for h in 0..config.n_heads {
        let g = h / group;
        let o = causal_head(
            &cols(&q, h * hd, hd),
            &cols(&k, g * hd, hd),
            &cols(&v, g * hd, hd),
            1.0 / (hd as f64).sqrt(),
        );
        concat.iter_mut().zip(o).for_each(|(c, o)| c.extend(o));
    }
    rows_times(&concat, weight(weights, "w_o"))
}

/// MLA by its definition (per-head keys and values expanded from the latent) over a whole
/// sequence `x: (n, d_model)` at positions `0..n`; returns `(n, d_model)`.
pub fn mla(config: &MlaConfig, weights: &[(&'static str, &Matrix)], x: &Matrix) -> Rows {
    mla_stored(config, weights, x, Dtype::F32)
}

/// [`mla`] with the latent cache stored as `kv_dtype`: each token's `c_kv` (after RMSNorm) and
/// `k_rope` (after RoPE) read back as [`stored`] gives them, each a row of its own (int8: a
/// scale each), before the expansion.
pub fn mla_stored(
    config: &MlaConfig,
    weights: &[(&'static str, &Matrix)],
    x: &Matrix,
    kv_dtype: Dtype,
) -> Rows {
    let (nope, rope_dim, d_c) = (
        config.qk_nope_head_dim,
        config.qk_rope_head_dim,
        config.kv_lora_rank,
    );
    let qk = nope + rope_dim;
    let x = to_rows(x);
    let mut q = match config.q_lora_rank {
        None => rows_times(&x, weight(weights, "w_q")),
        Some(_) => {
            let mut c_q = rows_times(&x, weight(weights, "w_dq"));
            c_q.iter_mut()
                .for_each(|r| rms_norm(r, weight(weights, "q_norm"), config.rms_norm_eps));
            rows_times(&c_q, weight(weights, "w_uq"))
        }
    };
    let mut kv = rows_times(&x, weight(weights, "w_dkv"));
    for (p, (qr, kvr)) in q.iter_mut().zip(kv.iter_mut()).enumerate() {
        qr.chunks_mut(qk)
            .for_each(|h| rope(&mut h[nope..], p, config.rope_theta));
        rms_norm(
            &mut kvr[..d_c],
            weight(weights, "kv_norm"),
            config.rms_norm_eps,
        );
        rope(&mut kvr[d_c..], p, config.rope_theta);
        let (c_kv, k_rope) = kvr.split_at_mut(d_c);
        stored(c_kv, kv_dtype);
        stored(k_rope, kv_dtype);
    }
    let c_kv = cols(&kv, 0, d_c);
    let k_rope = cols(&kv, d_c, rope_dim);
    let k_nope = rows_times(&c_kv, weight(weights, "w_uk"));
    let v = rows_times(&c_kv, weight(weights, "w_uv"));
    let mut concat = vec![Vec::new(); x.len()];
    for h in 0..config.n_heads {
        let keys: Rows = cols(&k_nope, h * nope, nope)
            .into_iter()
            .zip(&k_rope)
            .map(|(mut kn, kr)| {
                kn.extend(kr);
                kn
            })
            .collect();
        let o = causal_head(
            &cols(&q, h * qk, qk),
            &keys,
            &cols(&v, h * config.v_head_dim, config.v_head_dim),
            1.0 / (qk as f64).sqrt(),
        );
        concat.iter_mut().zip(o).for_each(|(c, o)| c.extend(o));
    }
    rows_times(&concat, weight(weights, "w_o"))
}

/// A layer's `weights()` widened to f32, exactly: the values it stores (bf16 weights read back
/// as the rounded values), which is what the references compute with. Borrow the result with
/// [`borrowed`] for [`grouped`], [`mla`] and [`weight`].
pub fn widened(
    weights: &[(&'static str, &attnbench::kernels::Weight)],
) -> Vec<(&'static str, Matrix)> {
    weights
        .iter()
        .map(|(name, w)| (*name, w.to_f32()))
        .collect()
}

/// `(name, &matrix)` pairs of an owned list, the form the references take.
pub fn borrowed<'a>(weights: &'a [(&'static str, Matrix)]) -> Vec<(&'static str, &'a Matrix)> {
    weights.iter().map(|(name, w)| (*name, w)).collect()
}

/// The reference output `(n, d_model)`, flattened, of `layer` (of shape `spec`) over a whole
/// sequence `x` at positions `0..n`, computed with the layer's weights as stored (widened).
pub fn layer_rows(
    spec: &attnbench::LayerSpec,
    layer: &dyn attnbench::AttentionLayer,
    x: &Matrix,
) -> Vec<f64> {
    let wide = widened(&layer.weights());
    let weights = borrowed(&wide);
    let out = match spec {
        attnbench::LayerSpec::Grouped { config, .. } => grouped(config, &weights, x),
        attnbench::LayerSpec::Mla { config, .. } => mla(config, &weights, x),
    };
    out.into_iter().flatten().collect()
}

/// Replaces one cache row (one token of one KV head, or MLA's `c_kv` or `k_rope` of one token)
/// with what a cache stored as `dtype` reads back (docs/design.md §5): the value as the f32 the
/// layer computes, rounded to bf16 or f16, or quantised to int8 with one scale for the row,
/// then widened. f32 keeps the f64 values (the reference of the f32 layer).
pub fn stored(row: &mut [f64], dtype: Dtype) {
    if dtype == Dtype::F32 {
        return;
    }
    let f32s: Vec<f32> = row.iter().map(|&v| v as f32).collect();
    let mut read = vec![0.0f32; row.len()];
    match dtype {
        Dtype::Bf16 => {
            let mut narrow = vec![bf16::ZERO; row.len()];
            round_to_bf16(&f32s, &mut narrow);
            widen_bf16(&narrow, &mut read);
        }
        Dtype::F16 => {
            let mut narrow = vec![f16::ZERO; row.len()];
            round_to_f16(&f32s, &mut narrow);
            widen_f16(&narrow, &mut read);
        }
        _ => {
            let mut codes = vec![0i8; row.len()];
            let scale = quantize_int8(&f32s, &mut codes);
            dequantize_int8(&codes, scale, &mut read);
        }
    }
    row.iter_mut()
        .zip(read)
        .for_each(|(v, r)| *v = f64::from(r));
}
