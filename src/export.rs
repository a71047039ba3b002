//! Export cases (docs/design.md §4): one layer, its config, every weight, the inputs, the outputs and
//! the final cache, so that anyone can replay it in NumPy or PyTorch.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::LayerSpec;
use crate::error::Result;
use crate::kv_cache::SequenceCache;
use crate::tensor::Matrix;
use crate::variants::build_layer;
use crate::weights::input;

/// The `format` field of every case file.
pub const CASE_FORMAT: &str = "attnbench-case/1";

/// What to export: a layer, a prefill of `seq_len` tokens, then `decode_steps` decodes.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseRequest {
    /// The layer.
    pub spec: LayerSpec,
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
    let layer = build_layer(spec, request.seed)?;
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

    let seq = &cache.sequences()[0];
    let cache_json = match spec {
        LayerSpec::Grouped { config, .. } => {
            let width = config.n_kv_heads * config.head_dim;
            json!({
                "k": plane_json(seq, 0, 0, width),
                "v": plane_json(seq, 1, 0, width),
            })
        }
        LayerSpec::Mla { config, .. } => json!({
            "c_kv": plane_json(seq, 0, 0, config.kv_lora_rank),
            "k_rope": plane_json(seq, 0, config.kv_lora_rank, config.qk_rope_head_dim),
        }),
    };

    let mut case = json!({
        "format": CASE_FORMAT,
        "variant": spec.variant().name(),
        "config": config_json(spec),
        "seed": request.seed,
        "weights": weights,
        "steps": steps,
        "cache": cache_json,
    });
    if let Some(path) = spec.mla_path() {
        case["mla_path"] = json!(path.name());
    }
    Ok(case)
}

/// Columns `start..start + width` of plane `index` of `seq`, as a `{shape, data}` tensor of
/// `(len, width)`.
fn plane_json(seq: &SequenceCache, index: usize, start: usize, width: usize) -> Value {
    let row_width = seq.planes()[index].spec().width();
    let data: Vec<f32> = seq
        .token_rows(index)
        .chunks_exact(row_width)
        .flat_map(|r| r[start..start + width].iter().copied())
        .collect();
    json!({ "shape": [seq.len(), width], "data": data })
}
