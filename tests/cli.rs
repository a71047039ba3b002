//! The binary's contract: bad input gives a clear error and a non-zero exit, never a panic.

mod common;

use common::{assert_success, attnbench};

fn assert_refused(args: &[&str], needles: &[&str]) {
    let out = attnbench(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in: {stderr}"
        );
    }
}

#[test]
fn export_refuses_impossible_configs_naming_field_and_value() {
    assert_refused(
        &[
            "export",
            "--variant",
            "gqa",
            "--n-heads",
            "32",
            "--n-kv-heads",
            "5",
        ],
        &["--n-kv-heads 5: must divide n_heads = 32"],
    );
    assert_refused(
        &["export", "--variant", "mha", "--head-dim", "7"],
        &["--head-dim 7:", "even"],
    );
    assert_refused(
        &["export", "--variant", "mla", "--q-lora-rank", "0"],
        &["--q-lora-rank 0:"],
    );
    assert_refused(
        &["export", "--variant", "mqa", "--seq-len", "0"],
        &["--seq-len 0:"],
    );
    assert_refused(&["export", "--variant", "gqa"], &["--n-kv-heads"]);
    assert_refused(&["export", "--variant", "xla"], &["xla"]);
}

#[test]
fn export_writes_a_case_with_the_documented_fields() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_export");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("case.json");
    let out = attnbench(&[
        "export",
        "--variant",
        "mla",
        "--mla-path",
        "naive",
        "--seq-len",
        "3",
        "--decode-steps",
        "2",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert_success(&out);
    let case: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(case["format"], "attnbench-case/1");
    assert_eq!(case["variant"], "mla");
    assert_eq!(case["mla_path"], "naive");
    assert!(case["config"]["q_lora_rank"].is_null());
    assert!(
        case["config"].get("n_kv_heads").is_none(),
        "MLA has no n_kv_heads field"
    );
    let steps = case["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["mode"], "prefill");
    assert_eq!(steps[2]["positions"], serde_json::json!([4]));
    assert_eq!(case["cache"]["c_kv"]["shape"], serde_json::json!([5, 32]));
    assert_eq!(case["cache"]["k_rope"]["shape"], serde_json::json!([5, 8]));
    for name in ["w_q", "w_dkv", "kv_norm", "w_uk", "w_uv", "w_o"] {
        assert!(case["weights"].get(name).is_some(), "missing weight {name}");
    }
    assert_eq!(
        case["weights"]["kv_norm"]["shape"],
        serde_json::json!([1, 32])
    );
}

/// The line of the table whose variant is `variant`, with `dtype`.
fn table_row<'a>(stdout: &'a str, variant: &str, dtype: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells.get(1) == Some(&variant) && cells.get(5) == Some(&dtype)
        })
        .unwrap_or_else(|| panic!("no {variant} {dtype} row in:\n{stdout}"))
}

#[test]
fn kv_prints_the_issues_two_figures() {
    let out = attnbench(&[
        "kv",
        "--preset",
        "llama-3-8b",
        "--context",
        "8192",
        "--batch",
        "1",
        "--dtype",
        "bf16",
    ]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let gqa = table_row(&stdout, "gqa", "bf16");
    assert!(gqa.contains("| own "), "{gqa}");
    assert!(gqa.contains("1024 MiB (1.00 GiB)"), "{gqa}");
    assert!(stdout.contains("hypothetical"), "{stdout}");

    let out = attnbench(&[
        "kv",
        "--preset",
        "deepseek-v3",
        "--context",
        "32768",
        "--dtype",
        "f16",
    ]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mla = table_row(&stdout, "mla", "f16");
    assert!(mla.contains("| own "), "{mla}");
    assert!(mla.contains("2196 MiB"), "{mla}");
}

#[test]
fn kv_json_has_exact_bytes_and_the_documented_fields() {
    let out = attnbench(&[
        "kv",
        "--preset",
        "llama-3-8b",
        "--context",
        "8192",
        "--budget-gib",
        "24",
        "--json",
    ]);
    assert_success(&out);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["format"], "attnbench-kv-plan/2");
    assert_eq!(plan["model"], "llama-3-8b");
    assert_eq!(plan["variant"], "gqa");
    assert_eq!(plan["n_layers"], 32);
    assert_eq!(plan["params"], 8_030_261_248u64);
    assert_eq!(plan["budget_bytes"], 24u64 << 30);
    assert_eq!(plan["weights"].as_array().unwrap().len(), 4);
    let rows = plan["rows"].as_array().unwrap();
    let variants: Vec<&str> = rows
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(variants, ["mha", "gqa", "mqa", "mla"]);
    let gqa = &rows[1];
    assert_eq!(gqa["own"], true);
    assert_eq!(gqa["cache"]["kind"], "heads");
    assert_eq!(gqa["cache"]["n_kv_heads"], 8);
    assert_eq!(gqa["values_per_token_per_layer"], 2048);
    let dtypes = gqa["dtypes"].as_array().unwrap();
    let names: Vec<&str> = dtypes
        .iter()
        .map(|d| d["dtype"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["f32", "f16", "bf16", "int8"]);
    let bf16 = &dtypes[2];
    assert_eq!(bf16["bytes_per_token_per_layer"], 4096);
    assert_eq!(bf16["bytes_per_token"], 131072);
    assert_eq!(bf16["cache_bytes"], 1u64 << 30);
    assert_eq!(bf16["max_batch"], 9);
    assert_eq!(bf16["max_context"], 8192);
    assert_eq!(bf16["max_context_bound"], "trained_maximum");
    assert!(bf16["max_context_by_budget"].as_u64().unwrap() > 8192);
    assert_eq!(rows[3]["own"], false);
    assert_eq!(rows[3]["cache"]["kind"], "latent");
    assert!(
        rows[3]["derivation"]
            .as_str()
            .unwrap()
            .contains("4 · head_dim")
    );
}

#[test]
fn kv_takes_an_explicit_shape() {
    let out = attnbench(&[
        "kv",
        "--variant",
        "gqa",
        "--n-heads",
        "32",
        "--n-kv-heads",
        "8",
        "--head-dim",
        "128",
        "--n-layers",
        "32",
        "--context",
        "8192",
        "--dtype",
        "bf16",
        "--json",
    ]);
    assert_success(&out);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["model"], "custom");
    assert!(plan["params"].is_null());
    assert_eq!(plan["rows"][1]["dtypes"][0]["cache_bytes"], 1u64 << 30);
}

#[test]
fn kv_refuses_bad_input_naming_the_flag_and_value() {
    let base = ["kv", "--preset", "llama-3-8b"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(extra).copied().collect()
    };
    assert_refused(
        &["kv", "--preset", "llama-4", "--context", "8"],
        &["--preset llama-4", "unknown preset", "llama-3-8b"],
    );
    assert_refused(&with(&["--context", "0"]), &["--context 0", "at least 1"]);
    assert_refused(&with(&["--context", "-5"]), &["-5", "--context"]);
    assert_refused(
        &with(&["--context", "8", "--batch", "0"]),
        &["--batch 0", "at least 1"],
    );
    assert_refused(
        &with(&["--context", "8", "--budget-gib", "4", "--dtype", "f32,bf16"]),
        &["--budget-gib 4", "weights"],
    );
    assert_refused(
        &with(&["--context", "8", "--budget-gib", "0"]),
        &["--budget-gib 0", "positive"],
    );
    assert_refused(
        &with(&["--context", "8", "--n-kv-heads", "5"]),
        &["--n-kv-heads 5", "must divide n_heads = 32"],
    );
    assert_refused(
        &with(&["--context", "8", "--gqa-kv-heads", "4"]),
        &["--gqa-kv-heads 4", "GQA itself"],
    );
    assert_refused(
        &with(&["--context", "8", "--v-head-dim", "64"]),
        &["--v-head-dim", "MLA model"],
    );
    assert_refused(&with(&["--context", "8", "--dtype", "fp8"]), &["fp8"]);
    assert_refused(
        &[
            "kv",
            "--variant",
            "gqa",
            "--n-heads",
            "32",
            "--head-dim",
            "128",
            "--context",
            "8",
        ],
        &["--n-layers"],
    );
    assert_refused(&["kv", "--context", "8"], &["--variant"]);
    assert_refused(
        &[
            "kv",
            "--preset",
            "llama-3-8b",
            "--variant",
            "mha",
            "--context",
            "8",
        ],
        &["--variant"],
    );
}

#[test]
fn memory_limit_and_calibration_threads_are_refused_naming_the_flag() {
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/variants/smoke.toml");
    assert_refused(
        &["validate", smoke, "--memory-limit-gib", "0"],
        &["--memory-limit-gib 0 is not a positive number"],
    );
    assert_refused(
        &["validate", smoke, "--memory-limit-gib", "1e30"],
        &["--memory-limit-gib", "must be below 2^64 bytes"],
    );
    let out =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_refused_machine.json");
    for (threads, bad) in [("0", "0"), ("1,2000", "2000")] {
        assert_refused(
            &[
                "calibrate",
                "--threads",
                threads,
                "--out",
                out.to_str().unwrap(),
            ],
            &[&format!("--threads {bad}: must be between 1 and 1024")],
        );
    }
    assert!(
        !out.exists(),
        "a refused calibration wrote {}",
        out.display()
    );
}
