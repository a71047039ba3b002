//! The presets carry verified shapes; the layers built from them must cache exactly the
//! verified number of values per token and layer, read from the real allocation. Experiment
//! files, `kv` and `export` resolve a preset's shape through one resolver and agree.

use attnbench::experiment::{parse_experiment, preset, presets};
use attnbench::planner::ModelShape;
use attnbench::presets::ModelFields;
use attnbench::{LayerSpec, MlaPath, Variant, build_layer};

#[test]
fn every_preset_caches_its_verified_values_per_token() {
    let all = presets();
    assert!(all.len() >= 8);
    for p in all {
        let mut fields = ModelFields::of_preset(&p);
        // d_model and the query latent do not enter the cache; leaving them small keeps the
        // weights small.
        fields.d_model = Some(64);
        fields.q_lora_rank = None;
        let spec = fields.layer(p.variant, MlaPath::Absorbed).unwrap();
        let layer = build_layer(&spec, 0).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let cache = layer.new_cache(1, 3).unwrap();
        assert_eq!(
            cache.allocated_bytes(),
            3 * p.kv_values_per_token_per_layer * 4,
            "{}: the allocation disagrees with the verified KV width",
            p.name
        );
    }
}

#[test]
fn llama_3_8b_is_32_heads_of_128_over_8_kv_heads() {
    let p = attnbench::experiment::preset("llama-3-8b").unwrap();
    assert_eq!(
        (p.d_model, p.n_heads, p.n_kv_heads, p.head_dim, p.n_layers),
        (4096, 32, 8, 128, 32)
    );
    assert_eq!(p.rope_theta, Some(500000.0));
}

/// The layer an experiment file with `preset = NAME` measures for the preset's own variant.
fn experiment_layer(name: &str, variant: Variant) -> LayerSpec {
    let text = format!(
        "[model]\npreset = \"{name}\"\n[sweep]\nvariant = [\"{variant}\"]\nmla_path = [\"absorbed\"]\nmode = [\"decode\"]\ncontext = [1]\nthreads = [1]\n"
    );
    let experiment = parse_experiment(&text, "t.toml", "t", u64::MAX / 2).unwrap();
    assert_eq!(experiment.points.len(), 1, "{name}");
    experiment.points[0].spec.clone()
}

/// The layer `export` builds from flags that spell out the preset's fields (it has no
/// `--preset`; its shape flags take the same resolver).
fn export_layer(name: &str) -> LayerSpec {
    let p = preset(name).unwrap();
    let flags = ModelFields {
        n_layers: None,
        params: None,
        ..ModelFields::of_preset(&p)
    };
    flags.layer(p.variant, MlaPath::Absorbed).unwrap()
}

#[test]
fn experiment_kv_and_export_resolve_a_preset_to_the_same_layer() {
    for name in ["llama-3-8b", "falcon-7b", "gpt2-small", "deepseek-v3"] {
        let p = preset(name).unwrap();
        let from_experiment = experiment_layer(name, p.variant);
        let from_kv = ModelShape::resolve(Some(&p), p.variant, &ModelFields::default())
            .unwrap()
            .layer;
        let from_planner = ModelShape::from_preset(&p).unwrap().layer;
        assert_eq!(from_experiment, from_kv, "{name}");
        assert_eq!(from_kv, from_planner, "{name}");
        assert_eq!(from_kv, export_layer(name), "{name}");
    }
    // llama-3-8b's own numbers, so that agreeing is not agreeing on a wrong shape.
    let LayerSpec::Grouped { variant, config } = experiment_layer("llama-3-8b", Variant::Gqa)
    else {
        panic!("llama-3-8b is GQA")
    };
    assert_eq!(variant, Variant::Gqa);
    assert_eq!(
        (
            config.d_model,
            config.n_heads,
            config.n_kv_heads,
            config.head_dim
        ),
        (4096, 32, 8, 128)
    );
    assert_eq!(config.rope_theta, 500000.0);
}

/// Every window comes with the layers that keep it: Mistral 7B v0.1 windows every layer,
/// Gemma 2 every other one; Mixtral attends densely.
#[test]
fn every_sliding_window_names_its_layers() {
    use attnbench::presets::{SlidingWindow, WindowLayers};
    for p in presets() {
        assert_eq!(
            p.sliding_window.is_some(),
            p.sliding_window_layers.is_some(),
            "{}: sliding_window and sliding_window_layers go together",
            p.name
        );
        if p.window().is_some() {
            assert!(p.max_position_embeddings.is_some(), "{}", p.name);
        }
    }
    let window = |name: &str| preset(name).unwrap().window();
    let tokens = 4096;
    assert_eq!(
        window("mistral-7b-v0.1"),
        Some(SlidingWindow {
            tokens,
            layers: WindowLayers::All
        })
    );
    assert_eq!(
        window("gemma-2-9b"),
        Some(SlidingWindow {
            tokens,
            layers: WindowLayers::Alternate
        })
    );
    assert_eq!(window("mixtral-8x7b-v0.1"), None);
    assert_eq!(WindowLayers::Alternate.windowed(42), 21);
    assert_eq!(WindowLayers::Alternate.windowed(5), 3);
}
