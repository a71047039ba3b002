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
        &["n_kv_heads", "5", "must divide n_heads = 32"],
    );
    assert_refused(
        &["export", "--variant", "mha", "--head-dim", "7"],
        &["head_dim", "7", "even"],
    );
    assert_refused(
        &["export", "--variant", "mla", "--q-lora-rank", "0"],
        &["q_lora_rank", "0"],
    );
    assert_refused(
        &["export", "--variant", "mqa", "--seq-len", "0"],
        &["seq_len", "0"],
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
