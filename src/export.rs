//! Export cases (docs/design.md §4): one layer, its config, every weight, the inputs, the outputs and
//! the final cache, so that anyone can replay it in NumPy or PyTorch.
//!
//! A case of a narrow precision (docs/design.md §5) records `kv_dtype` and `weight_dtype`,
//! writes the weights as stored (the rounded values, as f32 numbers) and the cache as stored
//! (widened to f32; for int8 also the integer codes and their scales). An f32 case leaves
//! those fields out and is what it was before the stored types existed.

use std::ops::Range;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::{Dtype, Kernel, LayerSpec, Precision, WeightDtype};
use crate::error::Result;
use crate::kv_cache::SequenceCache;
use crate::tensor::Matrix;
use crate::variants::build_layer_with;
use crate::weights::input;

/// The `format` field of every case file.
pub const CASE_FORMAT: &str = "attnbench-case/1";

/// What to export: a layer, a prefill of `seq_len` tokens, then `decode_steps` decodes.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseRequest {
    /// The layer.
    pub spec: LayerSpec,
    /// How the layer stores its KV cache and its weights; f32 and f32 by default.
    pub precision: Precision,
    /// Tokens of the first (prefill) step; at least 1.
    pub seq_len: usize,
    /// Single-token decode steps after it.
    pub decode_steps: usize,
    /// Seed of the weights and inputs.
    pub seed: u64,
}

#[derive(Serialize)]
struct Tensor<'a> {
    shape: [usize; 2],
    data: &'a [f32],
}

fn tensor(m: &Matrix) -> Tensor<'_> {
    Tensor {
        shape: [m.rows(), m.cols()],
        data: m.data(),
    }
}

/// The config fields that apply to the variant, under their names in docs/design.md §4.
fn config_json(spec: &LayerSpec) -> Value {
    match spec {
        LayerSpec::Grouped { config, .. } => json!({
            "d_model": config.d_model,
            "n_heads": config.n_heads,
            "n_kv_heads": config.n_kv_heads,
            "head_dim": config.head_dim,
            "rope_theta": config.rope_theta,
        }),
        LayerSpec::Mla { config, .. } => json!({
            "d_model": config.d_model,
            "n_heads": config.n_heads,
            "rope_theta": config.rope_theta,
            "kv_lora_rank": config.kv_lora_rank,
            "q_lora_rank": config.q_lora_rank,
            "qk_nope_head_dim": config.qk_nope_head_dim,
            "qk_rope_head_dim": config.qk_rope_head_dim,
            "v_head_dim": config.v_head_dim,
            "rms_norm_eps": config.rms_norm_eps,
        }),
    }
}

/// Runs the case on batch 1 and returns it as a JSON value in the `attnbench-case/1` format.
pub fn export_case(request: &CaseRequest) -> Result<Value> {
    let spec = &request.spec;
    if request.seq_len == 0 {
        return Err(crate::Error::InvalidConfig {
            field: "seq_len",
            value: "0".into(),
            reason: "the prefill needs at least one token".into(),
        });
    }
    let layer = build_layer_with(spec, Kernel::default(), request.precision, request.seed)?;
    let d_model = spec.d_model();
    let mut cache = layer.new_cache(1, request.seq_len + request.decode_steps)?;

    let mut steps = Vec::new();
    let step_lengths = std::iter::once(("prefill", request.seq_len))
        .chain(std::iter::repeat_n(("decode", 1), request.decode_steps));
    for (index, (mode, len)) in step_lengths.enumerate() {
        let start = cache.sequences()[0].len();
        let x = input(request.seed, &format!("input/step{index}"), len, d_model);
        let mut y = Matrix::zeros(len, d_model);
        if mode == "prefill" {
            layer.prefill(&x, &mut cache, &mut y)?;
        } else {
            layer.decode(&x, &mut cache, &mut y)?;
        }
        steps.push(json!({
            "mode": mode,
            "positions": (start..start + len).collect::<Vec<_>>(),
            "input": tensor(&x),
            "output": tensor(&y),
        }));
    }

    let weights: Map<String, Value> = layer
        .weights()
        .into_iter()
        .map(|(name, w)| (name.to_string(), json!(tensor(&w.to_f32()))))
        .collect();

    let mut case = json!({
        "format": CASE_FORMAT,
        "variant": spec.variant().name(),
        "config": config_json(spec),
        "seed": request.seed,
        "weights": weights,
        "steps": steps,
        "cache": cache_json(&cache.sequences()[0], &cache_parts(spec)),
    });
    if let Some(path) = spec.mla_path() {
        case["mla_path"] = json!(path.name());
    }
    // Left out when f32, so that an f32 case is byte for byte what it was before.
    let Precision {
        kv_dtype,
        weight_dtype,
    } = request.precision;
    if kv_dtype != Dtype::F32 {
        case["kv_dtype"] = json!(kv_dtype.name());
    }
    if weight_dtype != WeightDtype::F32 {
        case["weight_dtype"] = json!(weight_dtype.name());
    }
    Ok(case)
}

/// One cached tensor of a case file: columns `columns` of the token-major rows of plane
/// `plane`, and, when the plane is int8, columns `scales` of its token-major scales.
struct CachePart {
    name: &'static str,
    plane: usize,
    columns: Range<usize>,
    scales: Range<usize>,
}

/// The cached tensors of docs/design.md §4 (`k` and `v`; MLA: `c_kv` and `k_rope`, the two
/// parts of the latent row, each with its own int8 scale, §5).
fn cache_parts(spec: &LayerSpec) -> Vec<CachePart> {
    let part = |name, plane, columns, scales| CachePart {
        name,
        plane,
        columns,
        scales,
    };
    match spec {
        LayerSpec::Grouped { config, .. } => {
            let (width, heads) = (config.n_kv_heads * config.head_dim, config.n_kv_heads);
            vec![
                part("k", 0, 0..width, 0..heads),
                part("v", 1, 0..width, 0..heads),
            ]
        }
        LayerSpec::Mla { config, .. } => {
            let rank = config.kv_lora_rank;
            vec![
                part("c_kv", 0, 0..rank, 0..1),
                part("k_rope", 0, rank..rank + config.qk_rope_head_dim, 1..2),
            ]
        }
    }
}

/// The cache of `seq` as stored: each part's values widened to f32, and for an int8 cache
/// `NAME_codes` (the integers, `(len, width)`) and `NAME_scales` (`(len, scales)`).
fn cache_json(seq: &SequenceCache, parts: &[CachePart]) -> Value {
    let mut out = Map::new();
    for part in parts {
        let spec = seq.planes()[part.plane].spec();
        let values = seq.token_rows(part.plane);
        out.insert(
            part.name.into(),
            columns(&values, spec.width(), &part.columns),
        );
        if let Some((codes, scales)) = seq.int8_token_rows(part.plane) {
            let scale_width = spec.heads * spec.scales_per_row();
            let name = part.name;
            out.insert(
                format!("{name}_codes"),
                columns(&codes, spec.width(), &part.columns),
            );
            out.insert(
                format!("{name}_scales"),
                columns(&scales, scale_width, &part.scales),
            );
        }
    }
    Value::Object(out)
}

/// Columns `columns` of the rows of `row_width` values in `rows`, as a `{shape, data}` tensor
/// of `(rows, columns.len())`.
fn columns<T: Copy + Serialize>(rows: &[T], row_width: usize, columns: &Range<usize>) -> Value {
    let data: Vec<T> = rows
        .chunks_exact(row_width)
        .flat_map(|r| r[columns.clone()].iter().copied())
        .collect();
    json!({ "shape": [rows.len() / row_width, columns.len()], "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_ROPE_THETA, GroupedConfig, MlaConfig, MlaPath, Variant};

    fn export(spec: LayerSpec, kv_dtype: Dtype, weight_dtype: WeightDtype) -> Value {
        export_case(&CaseRequest {
            spec,
            precision: Precision {
                kv_dtype,
                weight_dtype,
            },
            seq_len: 3,
            decode_steps: 1,
            seed: 5,
        })
        .unwrap()
    }

    fn gqa() -> LayerSpec {
        LayerSpec::Grouped {
            variant: Variant::Gqa,
            config: GroupedConfig {
                d_model: 32,
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 8,
                rope_theta: DEFAULT_ROPE_THETA,
            },
        }
    }

    fn mla() -> LayerSpec {
        LayerSpec::Mla {
            config: MlaConfig {
                d_model: 32,
                n_heads: 2,
                kv_lora_rank: 16,
                q_lora_rank: None,
                qk_nope_head_dim: 8,
                qk_rope_head_dim: 4,
                v_head_dim: 8,
                rope_theta: DEFAULT_ROPE_THETA,
                rms_norm_eps: 1e-6,
            },
            path: MlaPath::Naive,
        }
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    fn floats(t: &Value) -> Vec<f32> {
        let data = t["data"].as_array().unwrap();
        data.iter().map(|x| x.as_f64().unwrap() as f32).collect()
    }

    fn shape(t: &Value) -> Vec<u64> {
        let shape = t["shape"].as_array().unwrap();
        shape.iter().map(|x| x.as_u64().unwrap()).collect()
    }

    /// Reads an int8 part back as `code · scale` in f32 and checks it equals the exported
    /// values, with `groups` scales per row, each the largest |value| of its group over 127.
    fn assert_int8_part(cache: &Value, name: &str, len: u64, width: u64, groups: u64) {
        let (codes, scales) = (
            &cache[format!("{name}_codes")],
            &cache[format!("{name}_scales")],
        );
        assert_eq!(shape(codes), [len, width], "{name}");
        assert_eq!(shape(scales), [len, groups], "{name}");
        let (values, codes, scales) = (floats(&cache[name]), floats(codes), floats(scales));
        let group = (width / groups) as usize;
        for (i, (&v, &q)) in values.iter().zip(&codes).enumerate() {
            assert!(q.abs() <= 127.0 && q == q.round(), "{name} code {q}");
            assert_eq!(v, q * scales[i / group], "{name}[{i}]");
        }
        // The largest code of every group is ±127: each group has its own scale.
        for (g, chunk) in codes.chunks(group).enumerate() {
            let largest = chunk.iter().fold(0.0f32, |m, q| m.max(q.abs()));
            assert_eq!(largest, 127.0, "{name} group {g}");
        }
    }

    #[test]
    fn an_f32_case_has_no_dtype_fields_and_no_codes() {
        for (spec, parts) in [(gqa(), ["k", "v"]), (mla(), ["c_kv", "k_rope"])] {
            let case = export(spec, Dtype::F32, WeightDtype::F32);
            assert!(case.get("kv_dtype").is_none() && case.get("weight_dtype").is_none());
            assert_eq!(keys(&case["cache"]), parts);
        }
    }

    #[test]
    fn an_int8_case_writes_codes_and_a_scale_per_row_and_head() {
        let case = export(gqa(), Dtype::Int8, WeightDtype::F32);
        assert_eq!(case["kv_dtype"], "int8");
        assert!(case.get("weight_dtype").is_none());
        let cache = &case["cache"];
        assert_eq!(
            keys(cache),
            ["k", "k_codes", "k_scales", "v", "v_codes", "v_scales"]
        );
        for name in ["k", "v"] {
            assert_int8_part(cache, name, 4, 16, 2);
        }
        let case = export(mla(), Dtype::Int8, WeightDtype::F32);
        let cache = &case["cache"];
        assert_int8_part(cache, "c_kv", 4, 16, 1);
        assert_int8_part(cache, "k_rope", 4, 4, 1);
        assert_ne!(
            floats(&cache["c_kv_scales"]),
            floats(&cache["k_rope_scales"])
        );
    }

    /// bf16 projections are written as their bf16 values; the RMSNorm scales stay f32 (the
    /// default ones, all 1, are bf16 values too, so only the names are checked for them).
    #[test]
    fn bf16_weights_are_written_as_stored() {
        let f32_case = export(mla(), Dtype::F32, WeightDtype::F32);
        let case = export(mla(), Dtype::F32, WeightDtype::Bf16);
        assert_eq!(case["weight_dtype"], "bf16");
        assert!(case.get("kv_dtype").is_none());
        assert_eq!(keys(&case["weights"]), keys(&f32_case["weights"]));
        for name in keys(&case["weights"])
            .into_iter()
            .filter(|n| n.starts_with("w_"))
        {
            let (stored, master) = (
                floats(&case["weights"][name]),
                floats(&f32_case["weights"][name]),
            );
            for (s, m) in stored.iter().zip(&master) {
                assert_eq!(s.to_bits() & 0xFFFF, 0, "{name}: {s} is not a bf16");
                assert!(
                    (s - m).abs() <= m.abs() / 256.0,
                    "{name}: {s} is not {m} rounded"
                );
            }
            assert_ne!(stored, master, "{name}");
        }
    }

    #[test]
    fn a_narrow_cache_is_written_as_stored() {
        for spec in [gqa(), mla()] {
            let case = export(spec, Dtype::Bf16, WeightDtype::F32);
            assert_eq!(case["kv_dtype"], "bf16");
            for name in keys(&case["cache"]) {
                for v in floats(&case["cache"][name]) {
                    assert_eq!(v.to_bits() & 0xFFFF, 0, "{name}: {v} is not a bf16");
                }
            }
        }
    }
}
