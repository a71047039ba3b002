//! The KV-cache planner: the figures, its per-layer f32 figure against real cache
//! allocations, and budgets that are really the largest that fit.

use attnbench::experiment::{preset, presets};
use attnbench::kv_cache::{KvCache, PlaneSpec};
use attnbench::planner::{
    Alternatives, CacheShape, ContextBound, Dtype, ModelShape, Plan, PlanRequest, VariantPlan, plan,
};
use attnbench::presets::{SlidingWindow, WindowLayers};
use attnbench::{Error, Kernel, LayerSpec, Precision, Variant, WeightDtype, build_layer_with};

fn request(name: &str, context: usize, batch: usize, dtypes: &[Dtype]) -> PlanRequest {
    PlanRequest {
        model: ModelShape::from_preset(&preset(name).unwrap()).unwrap(),
        alternatives: Alternatives::default(),
        context,
        batch,
        dtypes: dtypes.to_vec(),
        budget_gib: None,
    }
}

fn row(plan: &Plan, variant: Variant) -> &VariantPlan {
    plan.rows.iter().find(|r| r.variant == variant).unwrap()
}

#[test]
fn llama_3_8b_at_8192_tokens_in_bf16_is_one_gib() {
    let plan = plan(&request("llama-3-8b", 8192, 1, &[Dtype::Bf16])).unwrap();
    let gqa = row(&plan, Variant::Gqa);
    assert!(gqa.own);
    let bf16 = &gqa.dtypes[0];
    assert_eq!(bf16.bytes_per_token_per_layer, 2 * 8 * 128 * 2);
    assert_eq!(bf16.bytes_per_token, 32 * 2 * 8 * 128 * 2);
    assert_eq!(bf16.cache_bytes, 32 * 2 * 8 * 128 * 2 * 8192);
    assert_eq!(bf16.cache_bytes, 1 << 30);
    // No window: every layer caches every token, and nothing to warn about at its maximum.
    assert_eq!(plan.window, None);
    assert_eq!(bf16.bytes_per_token_past_window, None);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

/// Mistral 7B v0.1's rolling cache holds 4096 tokens in each of its 32 layers: at 32768
/// tokens in bf16, 32 × 4096 × (2 · 8 · 128) × 2 bytes = 512 MiB, not 4 GiB.
#[test]
fn mistral_7b_v0_1_at_32768_tokens_in_bf16_holds_its_window_512_mib() {
    let mut req = request("mistral-7b-v0.1", 32768, 1, &[Dtype::Bf16]);
    req.budget_gib = Some(24.0);
    let plan = plan(&req).unwrap();
    let window = plan.window.as_ref().unwrap();
    assert_eq!((window.tokens, window.layers), (4096, WindowLayers::All));
    assert_eq!((window.windowed_layers, window.global_layers), (32, 0));
    assert_eq!(window.windowed_layer_tokens, 4096);
    let gqa = row(&plan, Variant::Gqa);
    let bf16 = &gqa.dtypes[0];
    assert_eq!(bf16.cache_bytes, 32 * 4096 * (2 * 8 * 128) * 2);
    assert_eq!(bf16.cache_bytes, 512 << 20);
    assert_eq!(bf16.bytes_per_token, 32 * 2 * 8 * 128 * 2);
    assert_eq!(bf16.bytes_per_token_past_window, Some(0));
    // The parameter count is unknown: the whole 24 GiB holds 48 caches of 512 MiB.
    assert_eq!(bf16.max_batch, Some(48));
    // The cache stops growing at 4096 tokens: only the trained maximum bounds the context.
    assert_eq!(bf16.max_context, Some(32768));
    assert_eq!(bf16.max_context_bound, Some(ContextBound::TrainedMaximum));
    assert_eq!(bf16.max_context_by_budget, None);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    // The hypothetical rows keep the window, and say so.
    let mha = row(&plan, Variant::Mha);
    assert_eq!(mha.dtypes[0].cache_bytes, 32 * 4096 * (2 * 32 * 128) * 2);
    for r in &plan.rows {
        let said = if r.own {
            "sliding window: all 32 layers cache at most 4096 tokens"
        } else {
            "keeps the model's sliding window: all 32 layers cache at most 4096 tokens"
        };
        assert!(r.derivation.ends_with(said), "{}", r.derivation);
    }
}

/// Gemma 2 9B: 21 local layers hold min(context, 4096) tokens and 21 global layers the whole
/// context, each token 2 · 8 · 256 values of 2 bytes.
#[test]
fn gemma_2_9b_alternates_local_and_global_layers() {
    for (context, bytes, shown) in [
        (8192, 21 * (4096 + 8192) * 8192, "2016 MiB (1.97 GiB)"),
        (32768, 21 * (4096 + 32768) * 8192, "6048 MiB (5.91 GiB)"),
    ] {
        let plan = plan(&request("gemma-2-9b", context, 1, &[Dtype::Bf16])).unwrap();
        let window = plan.window.as_ref().unwrap();
        assert_eq!(
            (window.tokens, window.layers),
            (4096, WindowLayers::Alternate)
        );
        assert_eq!((window.windowed_layers, window.global_layers), (21, 21));
        let bf16 = &row(&plan, Variant::Gqa).dtypes[0];
        assert_eq!(bf16.cache_bytes, bytes, "{context}");
        assert_eq!(attnbench::planner::human_bytes(bf16.cache_bytes), shown);
        assert_eq!(bf16.bytes_per_token_past_window, Some(21 * 8192));
    }
    assert_eq!(21u64 * (4096 + 8192) * 8192, 2_113_929_216);
    assert_eq!(21u64 * (4096 + 32768) * 8192, 6_341_787_648);
}

/// Past the window the budget's largest context grows by the global layers only, and is then
/// capped at Gemma 2's trained maximum of 8192.
#[test]
fn a_windowed_budget_counts_the_window_and_caps_at_the_maximum() {
    let mut req = request("gemma-2-9b", 8192, 2, &[Dtype::Bf16]);
    req.budget_gib = Some(24.0);
    let gemma = plan(&req).unwrap();
    let bf16 = &row(&gemma, Variant::Gqa).dtypes[0];
    let budget = 24u64 << 30;
    let held = |c: u64| 21 * c.min(4096) + 21 * c;
    let c = bf16.max_context_by_budget.unwrap();
    assert!(2 * held(c) * 8192 <= budget && 2 * held(c + 1) * 8192 > budget);
    assert_eq!(c, ((budget / (2 * 8192)) - 21 * 4096) / 21);
    assert_eq!(bf16.max_context, Some(8192));
    assert_eq!(bf16.max_context_bound, Some(ContextBound::TrainedMaximum));
    assert_eq!(bf16.max_batch, Some(budget / (held(8192) * 8192)));

    // A model whose every layer is windowed, with no known maximum: nothing bounds it.
    let mut model = ModelShape::from_preset(&preset("mistral-7b-v0.1").unwrap()).unwrap();
    model.max_position_embeddings = None;
    let mut req = request("mistral-7b-v0.1", 100_000, 1, &[Dtype::Bf16]);
    req.model = model;
    req.budget_gib = Some(1.0);
    let mistral = plan(&req).unwrap();
    let bf16 = &row(&mistral, Variant::Gqa).dtypes[0];
    assert_eq!(bf16.max_context, None);
    assert_eq!(bf16.max_context_bound, Some(ContextBound::Unbounded));
    assert_eq!(bf16.max_batch, Some(2));
    // The same window on a quarter of the budget: the window no longer fits.
    req.budget_gib = Some(0.25);
    let mistral = plan(&req).unwrap();
    let bf16 = &row(&mistral, Variant::Gqa).dtypes[0];
    assert_eq!(bf16.max_context, Some(2048));
    assert_eq!(bf16.max_context_bound, Some(ContextBound::Budget));
}

#[test]
fn a_context_beyond_the_trained_maximum_is_planned_with_a_warning() {
    let beyond = plan(&request("llama-2-70b", 32768, 1, &[Dtype::Bf16])).unwrap();
    assert_eq!(beyond.max_position_embeddings, Some(4096));
    assert_eq!(
        beyond.warnings,
        [
            "context 32768 exceeds llama-2-70b's trained maximum of 4096 positions (max_position_embeddings)"
        ]
    );
    assert_eq!(
        row(&beyond, Variant::Gqa).dtypes[0].cache_bytes,
        80 * 2048 * 2 * 32768
    );
    let at_maximum = plan(&request("llama-2-70b", 4096, 1, &[Dtype::Bf16])).unwrap();
    assert!(at_maximum.warnings.is_empty());
}

#[test]
fn a_presets_notes_are_in_the_plan() {
    let bert = plan(&request("bert-base-uncased", 512, 1, &[Dtype::Bf16])).unwrap();
    let json = serde_json::to_value(&bert).unwrap();
    let notes = bert.notes.unwrap();
    assert!(notes.contains("no autoregressive KV cache"), "{notes}");
    assert_eq!(json["notes"], notes.as_str());
    // A modified preset keeps them; a custom shape has none.
    let p = preset("bert-base-uncased").unwrap();
    let fewer = attnbench::presets::ModelFields {
        n_layers: Some(6),
        ..Default::default()
    };
    let modified = ModelShape::resolve(Some(&p), Variant::Mha, &fewer).unwrap();
    assert_eq!(modified.notes.as_deref(), Some(notes.as_str()));
}

#[test]
fn an_explicit_window_of_zero_tokens_is_refused() {
    let mut req = request("llama-3-8b", 8, 1, &[Dtype::Bf16]);
    req.model.window = Some(SlidingWindow {
        tokens: 0,
        layers: WindowLayers::All,
    });
    assert!(matches!(
        plan(&req),
        Err(Error::InvalidConfig {
            field: "sliding_window",
            ..
        })
    ));
}

#[test]
fn deepseek_v3_at_32768_tokens_in_f16_is_2196_mib() {
    let plan = plan(&request("deepseek-v3", 32768, 1, &[Dtype::F16])).unwrap();
    let mla = row(&plan, Variant::Mla);
    assert!(mla.own);
    assert_eq!(mla.values_per_token_per_layer, 576);
    assert_eq!(mla.dtypes[0].cache_bytes, 61 * 576 * 2 * 32768);
    assert_eq!(mla.dtypes[0].cache_bytes, 2196 << 20);
}

/// The planner's bytes per token and layer in each storage type, times the tokens of a cache,
/// equal the bytes a real cache of that row's shape allocates in that type (int8: codes and
/// scales): what `kv` prints is what the layers hold.
#[test]
fn per_layer_figure_equals_a_real_allocation_for_every_row_and_dtype() {
    let (batch, tokens) = (2, 3);
    let names = [
        "gpt2-small",
        "llama-3-8b",
        "falcon-7b",
        "gemma-2-9b",
        "deepseek-v2-lite",
        "kimi-k2",
    ];
    for name in names {
        let plan = plan(&request(name, tokens, batch, &Dtype::ALL)).unwrap();
        assert!(plan.rows.iter().filter(|r| r.own).count() == 1, "{name}");
        for r in &plan.rows {
            for figures in &r.dtypes {
                let label = format!("{name} {} {}", r.variant, figures.dtype);
                let allocated = allocated_bytes(r, figures.dtype, batch, tokens) as u64;
                assert_eq!(
                    figures.bytes_per_token_per_layer * (batch * tokens) as u64,
                    allocated,
                    "{label}"
                );
                assert_eq!(
                    figures.cache_bytes,
                    allocated * plan.n_layers as u64,
                    "{label}"
                );
            }
        }
    }
}

/// Bytes a real cache of `batch × tokens` for one layer of row `r`, stored as `dtype`,
/// allocates: the layer's own cache, or for keys and values of different widths the cache's
/// planes as a layer with such heads would declare them.
fn allocated_bytes(r: &VariantPlan, dtype: Dtype, batch: usize, tokens: usize) -> usize {
    if let Some(spec) = &r.layer {
        // Widths that do not enter the cache, made small to keep the weights small.
        let mut spec = spec.clone();
        match &mut spec {
            LayerSpec::Grouped { config, .. } => config.d_model = 64,
            LayerSpec::Mla { config, .. } => {
                config.d_model = 64;
                config.n_heads = 2;
                config.q_lora_rank = None;
                (config.qk_nope_head_dim, config.v_head_dim) = (8, 8);
            }
        }
        let precision = Precision {
            kv_dtype: dtype,
            weight_dtype: WeightDtype::F32,
        };
        let layer = build_layer_with(&spec, Kernel::default(), precision, 0).unwrap();
        assert_eq!(layer.info().variant, r.variant);
        return layer.new_cache(batch, tokens).unwrap().allocated_bytes();
    }
    let CacheShape::Heads {
        n_kv_heads,
        k_head_dim,
        v_head_dim,
    } = r.cache
    else {
        panic!("{}: a latent row without a layer", r.variant)
    };
    let plane = |name, head_width| PlaneSpec {
        name,
        heads: n_kv_heads,
        head_width,
        scale_split: None,
    };
    let planes = [plane("k", k_head_dim), plane("v", v_head_dim)];
    KvCache::new(batch, tokens, &planes, dtype)
        .unwrap()
        .allocated_bytes()
}

#[test]
fn own_rows_match_every_presets_verified_width() {
    for p in presets() {
        let plan = plan(&request(&p.name, 1, 1, &[Dtype::F32])).unwrap();
        let own: Vec<_> = plan.rows.iter().filter(|r| r.own).collect();
        assert_eq!(own.len(), 1, "{}", p.name);
        assert_eq!(own[0].variant, p.variant, "{}", p.name);
        assert_eq!(
            own[0].values_per_token_per_layer, p.kv_values_per_token_per_layer as u64,
            "{}",
            p.name
        );
    }
}

#[test]
fn hypothetical_rows_follow_the_documented_rules() {
    let plan = plan(&request("llama-3-8b", 1, 1, &[Dtype::F32])).unwrap();
    let values = |v| row(&plan, v).values_per_token_per_layer;
    assert_eq!(values(Variant::Mha), 2 * 32 * 128);
    assert_eq!(values(Variant::Gqa), 2 * 8 * 128);
    assert_eq!(values(Variant::Mqa), 2 * 128);
    assert_eq!(values(Variant::Mla), 4 * 128 + 128 / 2);

    // An MLA model: keys qk_nope + qk_rope wide, values v_head_dim, per KV head.
    let plan = attnbench::planner::plan(&request("deepseek-v3", 1, 1, &[Dtype::F32])).unwrap();
    let mha = row(&plan, Variant::Mha);
    assert_eq!(
        mha.cache,
        CacheShape::Heads {
            n_kv_heads: 128,
            k_head_dim: 192,
            v_head_dim: 128
        }
    );
    assert_eq!(mha.values_per_token_per_layer, 128 * (192 + 128));
    assert_eq!(row(&plan, Variant::Gqa).values_per_token_per_layer, 8 * 320);

    // 71 heads: no GQA between MHA and MQA.
    let plan = attnbench::planner::plan(&request("falcon-7b", 1, 1, &[Dtype::F32])).unwrap();
    assert!(plan.rows.iter().all(|r| r.variant != Variant::Gqa));
    assert_eq!(plan.omitted[0].variant, Variant::Gqa);

    // Explicit choices for the hypothetical rows.
    let mut req = request("llama-2-7b", 1, 1, &[Dtype::F32]);
    req.alternatives = Alternatives {
        gqa_kv_heads: Some(4),
        kv_lora_rank: Some(256),
        qk_rope_head_dim: Some(32),
    };
    let plan = attnbench::planner::plan(&req).unwrap();
    assert_eq!(
        row(&plan, Variant::Gqa).values_per_token_per_layer,
        2 * 4 * 128
    );
    assert_eq!(
        row(&plan, Variant::Mla).values_per_token_per_layer,
        256 + 32
    );
}

#[test]
fn largest_batch_and_context_fit_and_one_more_does_not() {
    for (name, budget_gib) in [
        ("llama-3-8b", 24.0),
        ("deepseek-v3", 1500.0),
        ("gpt2-small", 0.5),
    ] {
        let mut req = request(name, 4096, 3, &Dtype::ALL);
        req.budget_gib = Some(budget_gib);
        let plan = plan(&req).unwrap();
        let budget = plan.budget_bytes.unwrap();
        assert_eq!(budget, (budget_gib * (1u64 << 30) as f64) as u64);
        for r in &plan.rows {
            for d in &r.dtypes {
                let weights = plan
                    .weights
                    .iter()
                    .find(|w| w.dtype == d.dtype)
                    .map_or(0, |w| w.weights_bytes);
                let fits = |batch: u64, context: u64| {
                    weights as u128 + batch as u128 * context as u128 * d.bytes_per_token as u128
                        <= budget as u128
                };
                let (b, c) = (d.max_batch.unwrap(), d.max_context_by_budget.unwrap());
                let label = format!("{name} {} {}", r.variant, d.dtype);
                assert!(b == 0 || fits(b, 4096), "{label}: batch {b} does not fit");
                assert!(!fits(b + 1, 4096), "{label}: batch {} fits too", b + 1);
                assert!(c == 0 || fits(3, c), "{label}: context {c} does not fit");
                assert!(!fits(3, c + 1), "{label}: context {} fits too", c + 1);
                // The answer is the budget's, capped at the trained maximum.
                let maximum = plan.max_position_embeddings.unwrap() as u64;
                assert_eq!(d.max_context, Some(c.min(maximum)), "{label}");
                let bound = if c > maximum {
                    ContextBound::TrainedMaximum
                } else {
                    ContextBound::Budget
                };
                assert_eq!(d.max_context_bound, Some(bound), "{label}");
            }
        }
    }
}

#[test]
fn weights_take_their_share_of_the_budget() {
    let mut req = request("llama-3-8b", 8192, 1, &[Dtype::Bf16]);
    req.budget_gib = Some(24.0);
    let plan = plan(&req).unwrap();
    assert_eq!(plan.params, Some(8_030_261_248));
    let w = &plan.weights[0];
    assert_eq!(w.weights_bytes, 2 * 8_030_261_248);
    let share = w.budget_share_pct.unwrap();
    assert!((share - 100.0 * 16_060_522_496.0 / (24u64 << 30) as f64).abs() < 1e-9);
    // 24 GiB minus 14.96 GiB of weights holds nine 1 GiB caches.
    assert_eq!(row(&plan, Variant::Gqa).dtypes[0].max_batch, Some(9));
}

#[test]
fn bad_requests_are_errors_naming_the_field() {
    let field_of = |req: &PlanRequest| match plan(req) {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected an error, got {other:?}"),
    };
    let mut req = request("llama-3-8b", 0, 1, &Dtype::ALL);
    assert_eq!(field_of(&req), "context");
    req.context = 8;
    req.batch = 0;
    assert_eq!(field_of(&req), "batch");
    req.batch = 1;
    req.budget_gib = Some(-1.0);
    assert_eq!(field_of(&req), "budget_gib");
    // Smaller than the weights in every storage type asked for.
    req.budget_gib = Some(7.0);
    assert_eq!(field_of(&req), "budget_gib");
    req.budget_gib = None;
    req.alternatives.gqa_kv_heads = Some(4);
    assert_eq!(field_of(&req), "gqa_kv_heads");
    let mut req = request("llama-2-7b", 8, 1, &Dtype::ALL);
    req.alternatives.gqa_kv_heads = Some(5);
    assert_eq!(field_of(&req), "gqa_kv_heads");
    let mut req = request("llama-2-7b", usize::MAX, usize::MAX, &Dtype::ALL);
    assert!(matches!(plan(&req), Err(Error::InvalidConfig { .. })));
    req.dtypes.clear();
    req.context = 1;
    req.batch = 1;
    assert_eq!(field_of(&req), "dtype");
}

/// `kv`'s model: a preset's fields under the flags, named after the preset unless the flags
/// change it; an MHA or MQA preset's n_kv_heads follows an overridden n_heads.
#[test]
fn resolve_overlays_flags_on_the_preset_and_names_the_result() {
    use attnbench::planner::ModelError;
    use attnbench::presets::ModelFields;
    let llama = preset("llama-3-8b").unwrap();
    let same = ModelShape::resolve(Some(&llama), Variant::Gqa, &ModelFields::default()).unwrap();
    assert_eq!(same, ModelShape::from_preset(&llama).unwrap());
    let same_layers = ModelFields {
        n_layers: Some(32),
        ..ModelFields::default()
    };
    let unchanged = ModelShape::resolve(Some(&llama), Variant::Gqa, &same_layers).unwrap();
    assert_eq!(unchanged.name, "llama-3-8b");
    let wider = ModelFields {
        n_heads: Some(64),
        ..ModelFields::default()
    };
    let modified = ModelShape::resolve(Some(&llama), Variant::Gqa, &wider).unwrap();
    assert_eq!(modified.name, "llama-3-8b (modified)");
    assert_eq!(
        (
            modified.layer.n_heads(),
            modified.layer.kv_values_per_token()
        ),
        (64, 2 * 8 * 128)
    );

    let gpt2 = preset("gpt2-small").unwrap();
    let mha = ModelShape::resolve(Some(&gpt2), Variant::Mha, &wider).unwrap();
    assert_eq!(mha.layer.kv_values_per_token(), 2 * 64 * 64);

    let custom = ModelFields {
        n_layers: Some(2),
        n_heads: Some(4),
        head_dim: Some(8),
        ..ModelFields::default()
    };
    let model = ModelShape::resolve(None, Variant::Mqa, &custom).unwrap();
    assert_eq!((model.name.as_str(), model.layer.d_model()), ("custom", 32));
    use attnbench::config::ModelField;
    assert_eq!(
        ModelShape::resolve(None, Variant::Gqa, &custom),
        Err(ModelError::Missing(ModelField::NKvHeads))
    );
    assert_eq!(
        ModelShape::resolve(None, Variant::Mla, &custom),
        Err(ModelError::NotApplicable {
            field: ModelField::HeadDim,
            variant: Variant::Mla
        })
    );
}

/// int8 counts each stored row's f32 scale (docs/design.md §5): a grouped cache
/// `2·n_kv_heads·(head_dim + 4)` bytes per token and layer, an MLA cache
/// `kv_lora_rank + qk_rope_head_dim + 8`; the hypothetical grouped rows of an MLA model a
/// scale for each K and each V row of their unequal widths.
#[test]
fn int8_counts_one_f32_scale_per_stored_row() {
    let llama = plan(&request("llama-3-8b", 8192, 1, &[Dtype::Int8])).unwrap();
    let int8 = |plan: &Plan, v| row(plan, v).dtypes[0].clone();
    assert_eq!(
        int8(&llama, Variant::Gqa).bytes_per_token_per_layer,
        2 * 8 * (128 + 4)
    );
    assert_eq!(
        int8(&llama, Variant::Gqa).cache_bytes,
        32 * 2 * 8 * (128 + 4) * 8192
    );
    assert_eq!(
        int8(&llama, Variant::Mha).bytes_per_token_per_layer,
        2 * 32 * (128 + 4)
    );
    assert_eq!(
        int8(&llama, Variant::Mqa).bytes_per_token_per_layer,
        2 * (128 + 4)
    );
    assert_eq!(
        int8(&llama, Variant::Mla).bytes_per_token_per_layer,
        512 + 64 + 8
    );

    let deepseek = plan(&request("deepseek-v3", 32768, 1, &[Dtype::Int8])).unwrap();
    let mla = int8(&deepseek, Variant::Mla);
    assert_eq!(mla.bytes_per_token_per_layer, 512 + 64 + 8);
    assert_eq!(mla.bytes_per_token, 61 * (512 + 64 + 8));
    assert_eq!(mla.cache_bytes, 61 * (512 + 64 + 8) * 32768);
    // Keys of 192 and values of 128 per KV head, each row with its scale.
    assert_eq!(
        int8(&deepseek, Variant::Mha).bytes_per_token_per_layer,
        128 * ((192 + 4) + (128 + 4))
    );
    assert_eq!(
        int8(&deepseek, Variant::Gqa).bytes_per_token_per_layer,
        8 * ((192 + 4) + (128 + 4))
    );
    // The other types have no scales: bytes are values times the type's width.
    let f16 = plan(&request("deepseek-v3", 1, 1, &[Dtype::F16])).unwrap();
    assert_eq!(
        row(&f16, Variant::Mha).dtypes[0].bytes_per_token_per_layer,
        128 * (192 + 128) * 2
    );
}

/// For every preset and storage type, the own row's figures are the one formula
/// `LayerSpec::kv_bytes_per_token(dtype)`: per layer, over the layers, and at a context within
/// every preset's window, `batch · tokens · n_layers` times it.
#[test]
fn every_presets_bytes_are_the_layers_formula_in_every_dtype() {
    let (batch, tokens) = (3, 5);
    for p in presets() {
        let req = request(&p.name, tokens, batch, &Dtype::ALL);
        let spec = req.model.layer.clone();
        let n_layers = req.model.n_layers as u64;
        let plan = plan(&req).unwrap();
        let own = plan.rows.iter().find(|r| r.own).unwrap();
        assert_eq!(own.variant, spec.variant(), "{}", p.name);
        for (figures, dtype) in own.dtypes.iter().zip(Dtype::ALL) {
            let label = format!("{} {dtype}", p.name);
            assert_eq!(figures.dtype, dtype, "{label}");
            let per_layer = spec.kv_bytes_per_token(dtype).unwrap();
            assert_eq!(figures.bytes_per_token_per_layer, per_layer, "{label}");
            assert_eq!(figures.bytes_per_token, n_layers * per_layer, "{label}");
            assert_eq!(
                figures.cache_bytes,
                (batch * tokens) as u64 * n_layers * per_layer,
                "{label}"
            );
        }
    }
}
