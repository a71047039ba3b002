//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod reference;

use attnbench::config::{DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA};
use attnbench::{GroupedConfig, LayerSpec, Matrix, MlaConfig, MlaPath, Variant};

/// Asserts `actual` is within `tol` of `expected`, relative to the largest expected magnitude,
/// and prints the worst element when it is not.
pub fn assert_close(actual: &[f32], expected: &[f64], tol: f64, label: &str) {
    assert_eq!(actual.len(), expected.len(), "{label}: lengths differ");
    let scale = expected
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-30);
    let (worst, diff) = actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| (f64::from(a) - e).abs())
        .enumerate()
        .fold(
            (0, 0.0f64),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        );
    assert!(
        actual.iter().all(|v| v.is_finite()),
        "{label}: non-finite output"
    );
    assert!(
        diff / scale <= tol,
        "{label}: relative error {:.3e} > {tol:.1e} at element {worst} (actual {}, expected {}, scale {scale:.3e})",
        diff / scale,
        actual[worst],
        expected[worst]
    );
}

/// `assert_close` for two f32 buffers.
pub fn assert_close_f32(actual: &[f32], expected: &[f32], tol: f64, label: &str) {
    let expected: Vec<f64> = expected.iter().map(|&v| f64::from(v)).collect();
    assert_close(actual, &expected, tol, label);
}

/// A grouped-variant spec.
pub fn grouped(
    variant: Variant,
    d_model: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> LayerSpec {
    LayerSpec::Grouped {
        variant,
        config: GroupedConfig {
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta: DEFAULT_ROPE_THETA,
        },
    }
}

/// An MLA spec: `(d_model, n_heads, kv_lora_rank, q_lora_rank, nope, rope, v)`.
pub fn mla(
    dims: (usize, usize, usize, Option<usize>, usize, usize, usize),
    path: MlaPath,
) -> LayerSpec {
    let (
        d_model,
        n_heads,
        kv_lora_rank,
        q_lora_rank,
        qk_nope_head_dim,
        qk_rope_head_dim,
        v_head_dim,
    ) = dims;
    LayerSpec::Mla {
        config: MlaConfig {
            d_model,
            n_heads,
            kv_lora_rank,
            q_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
            rope_theta: DEFAULT_ROPE_THETA,
            rms_norm_eps: DEFAULT_RMS_NORM_EPS,
        },
        path,
    }
}

/// A small spec of every variant (and both MLA paths, with and without query compression),
/// with odd sizes: head_dim ≠ d_model / n_heads, an odd nope width.
pub fn small_specs() -> Vec<LayerSpec> {
    vec![
        grouped(Variant::Mha, 24, 3, 3, 10),
        grouped(Variant::Gqa, 32, 4, 2, 8),
        grouped(Variant::Mqa, 32, 4, 1, 8),
        mla((24, 3, 12, None, 5, 6, 7), MlaPath::Naive),
        mla((24, 3, 12, None, 5, 6, 7), MlaPath::Absorbed),
        mla((32, 4, 16, Some(10), 8, 4, 6), MlaPath::Naive),
        mla((32, 4, 16, Some(10), 8, 4, 6), MlaPath::Absorbed),
    ]
}

/// Rows `start..start + n` of `m` as one matrix.
pub fn rows(m: &Matrix, start: usize, n: usize) -> Matrix {
    Matrix::from_vec(
        n,
        m.cols(),
        m.data()[start * m.cols()..(start + n) * m.cols()].to_vec(),
    )
    .unwrap()
}

/// Stacks matrices with the same number of columns.
pub fn stack(parts: &[&Matrix]) -> Matrix {
    let cols = parts[0].cols();
    let data: Vec<f32> = parts
        .iter()
        .flat_map(|m| m.data().iter().copied())
        .collect();
    Matrix::from_vec(data.len() / cols, cols, data).unwrap()
}

/// A fresh, empty directory `group/name` in the tests' scratch space.
pub fn scratch(group: &str, name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the `attnbench` binary with `args`.
pub fn attnbench(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args(args)
        .output()
        .unwrap()
}

/// Asserts a command succeeded, showing its stderr when it did not.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A quick calibration (`attnbench calibrate --quick`), made once per test binary: a full one
/// takes seconds per run.
pub fn quick_machine() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "machine-{}",
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("machine.json");
        let out = attnbench(&[
            "calibrate",
            "--quick",
            "--threads",
            "1,2",
            "--out",
            path.to_str().unwrap(),
        ]);
        assert_success(&out);
        path.to_string_lossy().into_owned()
    })
}

/// A tiny experiment: every variant, both modes, a few milliseconds per point.
pub const TINY: &str = r#"
name = "tiny"
description = "test"
[model]
d_model = 32
n_heads = 4
n_kv_heads = 2
head_dim = 8
kv_lora_rank = 16
qk_nope_head_dim = 8
qk_rope_head_dim = 4
v_head_dim = 8
[sweep]
variant = ["mha", "mqa", "gqa", "mla"]
mode = ["prefill", "decode"]
seq_len = [4, 9]
context = [16, 33]
threads = [1]
[measure]
warmup_iters = 1
min_samples = 3
max_samples = 5
time_budget_ms = 5
flush_caches = false
"#;

/// Whether `python3` with NumPy is here for a test that needs it. Where it is missing the test
/// should say so and pass (this prints the notice; the caller returns), unless
/// `ATTNBENCH_REQUIRE_NUMPY` is set (CI sets it, after installing NumPy), where this fails.
pub fn numpy_or_skip() -> bool {
    let available = std::process::Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("ATTNBENCH_REQUIRE_NUMPY").is_none(),
            "ATTNBENCH_REQUIRE_NUMPY is set but python3 with numpy is not available"
        );
        eprintln!("SKIPPED: python3 with numpy not found; `pip install numpy` to run this test");
    }
    available
}

/// A one-sequence cache of two planes, `k` `(keys, n_kv · dk)` and `v` `(keys, n_kv · dv)`,
/// stored in `dtype` (rounded on append as the layers' caches are).
pub fn two_plane_cache(
    k: &attnbench::Matrix,
    v: &attnbench::Matrix,
    n_kv: usize,
    (dk, dv): (usize, usize),
    dtype: attnbench::Dtype,
) -> attnbench::KvCache {
    let plane = |name, head_width| attnbench::kv_cache::PlaneSpec {
        name,
        heads: n_kv,
        head_width,
        scale_split: None,
    };
    let specs = [plane("k", dk), plane("v", dv)];
    let mut cache = attnbench::KvCache::new(1, k.rows(), &specs, dtype).unwrap();
    cache.sequences_mut()[0]
        .append(0, k.rows(), &[k.data(), v.data()])
        .unwrap();
    cache
}

/// `f` run on a rayon pool of `threads` threads.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}
