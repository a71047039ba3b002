//! The presets carry verified shapes; the layers built from them must cache exactly the
//! verified number of values per token and layer, read from the real allocation.

use attnbench::config::{DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA};
use attnbench::experiment::presets;
use attnbench::{GroupedConfig, LayerSpec, MlaConfig, MlaPath, Variant, build_layer};

#[test]
fn every_preset_caches_its_verified_values_per_token() {
    let all = presets();
    assert!(all.len() >= 8);
    for p in all {
        // d_model does not enter the cache; a small one keeps the weights small.
        let d_model = 64;
        let spec = match p.variant {
            Variant::Mla => LayerSpec::Mla {
                config: MlaConfig {
                    d_model,
                    n_heads: p.n_heads,
                    kv_lora_rank: p.kv_lora_rank.unwrap(),
                    q_lora_rank: None,
                    qk_nope_head_dim: p.qk_nope_head_dim.unwrap(),
                    qk_rope_head_dim: p.qk_rope_head_dim.unwrap(),
                    v_head_dim: p.v_head_dim.unwrap(),
                    rope_theta: DEFAULT_ROPE_THETA,
                    rms_norm_eps: DEFAULT_RMS_NORM_EPS,
                },
                path: MlaPath::Absorbed,
            },
            variant => LayerSpec::Grouped {
                variant,
                config: GroupedConfig {
                    d_model,
                    n_heads: p.n_heads,
                    n_kv_heads: p.n_kv_heads,
                    head_dim: p.head_dim,
                    rope_theta: DEFAULT_ROPE_THETA,
                },
            },
        };
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
