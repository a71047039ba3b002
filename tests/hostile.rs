//! Hostile input, one test per defect a hostile review found: each is refused before anything
//! runs, with an error naming where it is (file:line:column and key, or the flag), or handled
//! without harm.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use attnbench::cost::memory_estimate;
use attnbench::experiment::{Experiment, ExperimentError, parse_experiment};
use common::{assert_success, attnbench};

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    common::scratch("hostile", name)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn parse(text: &str) -> Result<Experiment, ExperimentError> {
    parse_experiment(text, "f.toml", "f", u64::MAX / 2)
}

/// The 1-based line and column where `needle` starts in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).unwrap();
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (
        text[..at].matches('\n').count() + 1,
        text[line_start..at].chars().count() + 1,
    )
}

/// A small grouped layer decoding at `context`.
fn decode_at(context: &str) -> String {
    format!(
        "[model]\nd_model = 64\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 16\n[sweep]\nvariant = [\"gqa\"]\nmode = [\"decode\"]\ncontext = [{context}]\nthreads = [1]\n"
    )
}

#[test]
fn a_context_whose_sizes_overflow_is_refused_at_its_key() {
    let text = decode_at("4611686018427387903");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sweep.context"), "{e}");
    assert_eq!(e.location, Some(position(&text, "[4611")), "{e}");
    assert!(e.message.contains("2^64"), "{e}");
    // `validate` refuses it too, and `run` never starts.
    let dir = scratch("overflow");
    let file = write(&dir, "overflow.toml", &text);
    let out = attnbench(&["validate", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "validate accepted: {stderr}");
    let (line, column) = position(&text, "[4611");
    let at = format!("overflow.toml:{line}:{column}: key `sweep.context`");
    assert!(stderr.contains(&at), "{stderr}");
}

#[test]
fn an_overflow_blames_the_list_that_makes_it() {
    // A batch so large that any context overflows: the batch is to blame.
    let text = decode_at("8").replace(
        "threads = [1]",
        "threads = [1]\nbatch = [4611686018427387903]",
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sweep.batch"), "{e}");
    assert_eq!(e.location, Some(position(&text, "[4611")), "{e}");
}

#[test]
fn a_point_whose_activations_do_not_fit_is_refused_before_it_runs() {
    // 2 heads of 2 values over a residual stream of 2^20: the weights are small, but the
    // step's input and output alone are 2048 × 2^20 × 4 bytes = 8 GiB each.
    let text = "[model]\nd_model = 1048576\nn_heads = 2\nn_kv_heads = 2\nhead_dim = 2\n[sweep]\nvariant = [\"mha\"]\nmode = [\"prefill\"]\nseq_len = [2048]\nthreads = [1]\n[measure]\nmemory_limit_gib = 1.0\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("sweep.seq_len"), "{e}");
    assert!(
        e.message.contains("activations 16384 MiB (16.00 GiB)"),
        "{e}"
    );
    assert!(
        e.message.contains("over the memory limit of 1024 MiB"),
        "{e}"
    );
}

/// A tiny experiment over every variant and MLA path, both modes, both kernels, one and two
/// threads, one and three sequences, prefill with and without a cached prefix.
const MEMORY_SHAPES: &str = r#"
name = "memory"
[model]
d_model = 48
n_heads = 4
n_kv_heads = 2
head_dim = 8
kv_lora_rank = 16
q_lora_rank = 12
qk_nope_head_dim = 6
qk_rope_head_dim = 4
v_head_dim = 6
[sweep]
variant = ["mha", "mqa", "gqa", "mla"]
mode = ["prefill", "decode"]
seq_len = [1, 33]
cache_len = [0, 40]
context = [1, 600]
batch = [1, 3]
threads = [1, 2]
kernel = ["tiled", "naive"]
[measure]
warmup_iters = 1
warmup_ms = 5
min_samples = 1
max_samples = 1
time_budget_ms = 1
flush_caches = false
"#;

/// Runs `text` (named `name`) and checks, point by point, that the memory estimate bounds
/// the measured peaks of the step and of the core; returns the (layer, mode) pairs covered.
fn assert_estimates_bound_peaks(
    name: &str,
    text: &str,
) -> std::collections::BTreeSet<(String, attnbench::config::Mode)> {
    let dir = scratch(name);
    let file = write(&dir, &format!("{name}.toml"), text);
    let out_dir = dir.join("out");
    let out = attnbench(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--machine",
        common::quick_machine(),
        "--quiet",
    ]);
    assert_success(&out);
    let experiment = parse(text).unwrap();
    let results: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    let rows = results["points"].as_array().unwrap();
    assert_eq!(rows.len(), experiment.points.len());
    let mut labels = std::collections::BTreeSet::new();
    for (point, row) in experiment.points.iter().zip(rows) {
        assert_eq!(row["key"], point.key());
        assert!(row["error"].is_null(), "{row}");
        let e = memory_estimate(
            &point.spec,
            point.kernel,
            point.precision,
            point.batch,
            point.seq_len,
            point.context,
            point.threads,
        )
        .unwrap();
        // A thread's first large matmul allocates faer's packing buffers: a fresh pool's
        // threads may do so in the measured step.
        let bound = e.transient_bytes + e.matmul_workspace_bytes;
        for field in ["peak_transient_bytes", "core_peak_transient_bytes"] {
            let measured = row[field].as_u64().unwrap();
            assert!(
                measured <= bound,
                "{}: {field} {measured} above the estimate {bound} ({e:?})",
                point.key()
            );
        }
        labels.insert((point.spec.label(), point.mode));
    }
    labels
}

#[test]
fn the_memory_estimate_bounds_the_measured_peak_of_every_variant_and_mode() {
    let labels = assert_estimates_bound_peaks("memory", MEMORY_SHAPES);
    assert_eq!(labels.len(), 5 * 2, "{labels:?}");
}

#[test]
fn the_memory_estimate_bounds_the_measured_peak_at_every_stored_type() {
    // Fewer lengths, batches and threads, every kv_dtype with every weight_dtype.
    let text = MEMORY_SHAPES
        .replace("seq_len = [1, 33]", "seq_len = [33]")
        .replace("cache_len = [0, 40]", "cache_len = [40]")
        .replace("context = [1, 600]", "context = [600]")
        .replace("batch = [1, 3]", "batch = [3]")
        .replace(
            "threads = [1, 2]",
            "threads = [2]\nkv_dtype = [\"f32\", \"bf16\", \"f16\", \"int8\"]\nweight_dtype = [\"f32\", \"bf16\"]",
        );
    assert_eq!(parse(&text).unwrap().points.len(), 5 * 2 * 2 * 8);
    let labels = assert_estimates_bound_peaks("memory_dtypes", &text);
    assert_eq!(labels.len(), 5 * 2, "{labels:?}");
}

#[test]
fn a_stored_type_that_does_not_exist_is_refused_at_its_value_with_the_valid_ones() {
    let dir = scratch("dtypes");
    // (the line added to [sweep], the bad value, what the error must say)
    let cases = [
        (
            "kv_dtype = [\"bf16\", \"fp4\"]",
            "\"fp4\"",
            "key `sweep.kv_dtype`: unknown variant `fp4`, expected one of `f32`, `f16`, `bf16`, `int8`",
        ),
        (
            "weight_dtype = [\"int8\"]",
            "\"int8\"",
            "key `sweep.weight_dtype`: unknown variant `int8`, expected `f32` or `bf16`",
        ),
    ];
    for (line, bad, message) in cases {
        let text = decode_at("8").replace("threads = [1]", &format!("threads = [1]\n{line}"));
        let file = write(&dir, "dtype.toml", &text);
        let (at_line, column) = position(&text, bad);
        let stderr = refusal("validate", file.to_str().unwrap());
        let expected = format!("dtype.toml:{at_line}:{column}: {message}");
        assert!(stderr.contains(&expected), "`{expected}` not in {stderr}");
    }
}

#[test]
fn experiment_names_outside_the_safe_set_are_refused_at_the_key() {
    let base = decode_at("8");
    for bad in [
        ".",
        "..",
        "../x",
        "a/b",
        "a\\\\b",
        "",
        " ",
        ".hidden",
        "-flag",
        "a b",
        "é",
        &"a".repeat(65),
    ] {
        let text = format!("name = \"{bad}\"\n{base}");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("name"), "{bad:?}: {e}");
        assert_eq!(e.location, Some((1, 8)), "{bad:?}: {e}");
        assert!(
            e.message.contains("not a valid experiment name"),
            "{bad:?}: {e}"
        );
    }
    for good in ["smoke", "kv_heads", "llama3-8b.v2", "A1", &"a".repeat(64)] {
        let text = format!("name = \"{good}\"\n{base}");
        assert_eq!(parse(&text).unwrap().name, good);
    }
    // The default name, the file's stem, passes the same rule.
    let e = parse_experiment(&base, "x y.toml", "x y", u64::MAX / 2).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("name"), "{e}");
    assert!(e.message.contains("\"x y\" (the file's name"), "{e}");
    assert_eq!(
        parse_experiment(&base, "ok.toml", "ok", u64::MAX / 2)
            .unwrap()
            .name,
        "ok"
    );
}

#[test]
fn a_forced_run_named_dot_dot_touches_nothing_outside_results() {
    // `results/..` is the working directory: its charts and results must survive.
    let dir = scratch("dot_dot");
    fs::create_dir_all(dir.join("charts")).unwrap();
    fs::write(dir.join("results.json"), "{}").unwrap();
    write(
        &dir,
        "bad.toml",
        &format!("name = \"..\"\n{}", decode_at("8")),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args([
            "run",
            "bad.toml",
            "--force",
            "--machine",
            common::quick_machine(),
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("bad.toml:1:8: key `name`"), "{stderr}");
    assert_eq!(fs::read_to_string(dir.join("results.json")).unwrap(), "{}");
    assert!(dir.join("charts").exists());
}

/// Runs `attnbench COMMAND ARGS`, expecting a refusal: exit 1, no panic, no abort. Its stderr.
fn refusal(command: &str, args: &str) -> String {
    let mut argv = vec![command];
    argv.extend(args.split_whitespace());
    let out = attnbench(&argv);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{command} {args}: {stderr}");
    assert!(!stderr.contains("panicked"), "{command} {args}: {stderr}");
    stderr
}

fn kv_refusal(args: &str) -> String {
    refusal("kv", args)
}

#[test]
fn kv_names_the_flags_the_user_typed_and_never_wraps() {
    let shape = "--n-layers 2 --context 10";
    let e = kv_refusal(&format!(
        "--variant mha --n-heads 1048576 --head-dim 1048576 {shape}"
    ));
    assert!(
        e.contains("--n-heads 1048576 × --head-dim 1048576 = 1099511627776:"),
        "{e}"
    );
    assert!(!e.contains("--d-model"), "{e}");
    let e = kv_refusal(&format!(
        "--variant gqa --n-kv-heads 8 --n-heads 4294967296 --head-dim 4294967296 {shape}"
    ));
    assert!(
        e.contains("--n-heads 4294967296 × --head-dim 4294967296 (past 2^64)"),
        "{e}"
    );
    assert!(!e.contains("--d-model"), "{e}");
    let e = kv_refusal(&format!(
        "--variant mla --n-heads 4294967296 --v-head-dim 4294967296 --kv-lora-rank 8 --qk-rope-head-dim 8 --qk-nope-head-dim 8 {shape}"
    ));
    assert!(e.contains("× --v-head-dim 4294967296 (past 2^64)"), "{e}");
    let e = kv_refusal(&format!("--variant mha --n-heads 0 --head-dim 8 {shape}"));
    assert!(e.contains("--n-heads 0: must be at least 1"), "{e}");
    // A parameter count whose bytes pass 2^64 is refused, not saturated.
    let e = kv_refusal("--preset llama-3-8b --context 10 --params 18446744073709551615");
    assert!(e.contains("--params 18446744073709551615:"), "{e}");
}

#[test]
fn a_byte_order_mark_and_non_ascii_text_keep_keys_and_columns() {
    // After a byte-order mark, the table name and the column are those an editor shows.
    let text = "\u{feff}[model]\nd_model = \"big\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("model.d_model"), "{e}");
    assert_eq!(e.location, Some((2, 11)), "{e}");
    let text = format!("\u{feff}name = \"bad name\"\n{}", decode_at("8"));
    assert_eq!(parse(&text).unwrap_err().location, Some((1, 8)));
    // Columns count characters, not bytes: three two-byte letters before the fault.
    let text = format!("description = \"ééé\" seed = 1\n{}", decode_at("8"));
    let e = parse(&text).unwrap_err();
    assert_eq!(e.location, Some(position(&text, "seed =")), "{e}");
    assert_eq!(e.location, Some((1, 21)), "{e}");
}

#[test]
fn a_tiny_memory_limit_is_printed_in_units_that_show_it() {
    let text = format!("{}[measure]\nmemory_limit_gib = 1e-9\n", decode_at("8"));
    let e = parse(&text).unwrap_err();
    assert!(e.message.contains("over the memory limit of 1 B;"), "{e}");
    assert!(!e.message.contains("0.00 GiB"), "{e}");
}

#[test]
fn stale_temporary_files_of_dead_writers_are_removed() {
    use attnbench::fsutil::write_atomic;
    let dir = scratch("stale");
    // A process that has ended: its id names no running process.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let live = std::process::id();
    let stale = write(&dir, &format!(".results.json.attnbench-tmp-{dead}"), "half");
    let legacy = write(&dir, &format!(".results.json.tmp-{dead}"), "half");
    // Process 1 always runs.
    let running = write(&dir, ".results.json.attnbench-tmp-1", "x");
    let other = write(&dir, &format!(".results.md.attnbench-tmp-{dead}"), "x");
    let unrelated = write(&dir, &format!("notes.tmp-{dead}"), "x");
    write_atomic(&dir.join("results.json"), b"{}").unwrap();
    assert_eq!(fs::read_to_string(dir.join("results.json")).unwrap(), "{}");
    assert!(!stale.exists() && !legacy.exists());
    // Another file's temporaries wait for its own write; nothing else is touched.
    assert!(running.exists() && other.exists() && unrelated.exists());
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with(&format!("tmp-{live}"))),
        "{names:?}"
    );
}

fn export_refusal(args: &str) -> String {
    refusal("export", args)
}

#[test]
fn export_refuses_cases_too_large_to_build_naming_the_flags() {
    // Weights of 64 × 2^40 values each aborted the process allocating them.
    let e = export_refusal("--variant mha --n-heads 1048576 --head-dim 1048576");
    assert!(e.contains("over half this machine's memory"), "{e}");
    // seq_len + decode_steps wrapped (a panic in debug builds).
    let e = export_refusal("--variant mha --seq-len 18446744073709551615");
    assert!(
        e.contains("--seq-len 18446744073709551615 + --decode-steps 2 pass 2^64 tokens"),
        "{e}"
    );
    // A value out of range names its flag, not the field.
    let e = export_refusal("--variant mla --kv-lora-rank 1048577");
    assert!(
        e.contains("--kv-lora-rank 1048577: must be at most 1048576"),
        "{e}"
    );
}
