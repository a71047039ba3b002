//! The default sweeps, small enough for `cargo bench` on 2 cores in a few minutes, and the
//! experiment named by `ATTNBENCH_EXPERIMENT`.

use criterion::{Criterion, criterion_group};

use super::bench_grid;

/// The layers every default sweep shares: d_model 1024, heads of 64, MLA latent 256 + 32.
pub const MODEL: &str = r#"
[model]
d_model = 1024
n_heads = 16
n_kv_heads = 4
head_dim = 64
kv_lora_rank = 256
qk_nope_head_dim = 64
qk_rope_head_dim = 32
v_head_dim = 64
"#;

/// The default groups: (name, `[sweep]` table).
const SWEEPS: [(&str, &str); 4] = [
    (
        "prefill_seq_len",
        r#"
variant = ["mha", "mqa", "gqa", "mla"]
mla_path = ["absorbed"]
mode = ["prefill"]
seq_len = [128, 512, 1024]
"#,
    ),
    (
        "decode_context",
        r#"
variant = ["mha", "mqa", "gqa", "mla"]
mode = ["decode"]
context = [512, 2048, 8192]
"#,
    ),
    (
        "decode_kv_heads",
        r#"
variant = ["gqa"]
mode = ["decode"]
n_heads = [32]
n_kv_heads = [32, 16, 8, 4, 2, 1]
context = [2048]
"#,
    ),
    (
        "decode_n_heads",
        r#"
variant = ["mha", "mqa", "gqa", "mla"]
mla_path = ["absorbed"]
mode = ["decode"]
n_heads = [8, 16, 32]
n_kv_heads = [4]
context = [2048]
"#,
    ),
];

/// The grid of the experiment file named by `ATTNBENCH_EXPERIMENT`, if set.
fn experiment_from_env(c: &mut Criterion) {
    let Ok(path) = std::env::var("ATTNBENCH_EXPERIMENT") else {
        return;
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("ATTNBENCH_EXPERIMENT={path}: {e}"));
    let name = std::path::Path::new(&path)
        .file_stem()
        .map_or("experiment".into(), |s| s.to_string_lossy().into_owned());
    bench_grid(c, &name, &path, &text);
}

/// The default sweeps, or only the experiment when `ATTNBENCH_EXPERIMENT` is set.
fn all(c: &mut Criterion) {
    if super::experiment_requested() {
        experiment_from_env(c);
    } else {
        for (name, sweep) in SWEEPS {
            bench_grid(
                c,
                name,
                &format!("benches: {name}"),
                &format!("{MODEL}\n[sweep]\n{sweep}"),
            );
        }
    }
}

criterion_group!(benches, all);
