//! Exported cases replay in an independent NumPy implementation of docs/design.md §1
//! (`tests/replay_case.py`) to a relative error below 1e-4, those with a narrow KV cache or
//! weights (docs/design.md §5) with the replay's own rounding, checked value by value against
//! the stored cache (and int8 codes and scales) the case exports.
//!
//! Needs `python3` with NumPy. Where they are missing the test says so and passes, unless
//! `ATTNBENCH_REQUIRE_NUMPY=1` (CI sets it, after installing NumPy), where it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn exported_cases_replay_in_numpy() {
    if !common::numpy_or_skip() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("numpy_replay");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = cases();
    let mut files = Vec::new();
    for (name, args) in &cases {
        let path = dir.join(format!("{name}.json"));
        let status = Command::new(env!("CARGO_BIN_EXE_attnbench"))
            .arg("export")
            .args(args)
            .args(["--seed", "3", "--out"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "export {name} failed");
        files.push(path);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/replay_case.py");
    let output = Command::new("python3")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "NumPy replay disagrees:\n{report}");
    let mut lines = report.lines();
    assert!(lines.next().unwrap().starts_with("self-test: "), "{report}");
    // One line per case, saying which types it replayed: a narrow case read as f32 would
    // not check its stored values.
    let lines: Vec<&str> = lines.collect();
    assert_eq!(lines.len(), cases.len(), "{report}");
    for ((name, args), line) in cases.iter().zip(lines) {
        let flag = |f: &str| {
            args.iter()
                .position(|a| *a == f)
                .map_or("f32", |i| args[i + 1])
        };
        let (kv, weights) = (flag("--kv-dtype"), flag("--weight-dtype"));
        assert!(
            line.contains(&format!("kv {kv}, weights {weights}")),
            "{name}: {line}"
        );
        assert_eq!(
            line.contains("stored values as rounded"),
            kv != "f32",
            "{name}: {line}"
        );
    }
}

/// Every variant and MLA path in f32, then a grouped layer and both MLA paths with each
/// narrow KV cache, and with bf16 weights (f32 and bf16 caches): a prefill of 8 tokens, then
/// 2 decodes (the export's defaults).
fn cases() -> Vec<(String, Vec<&'static str>)> {
    let f32_cases: [(&str, &[&str]); 7] = [
        (
            "mha",
            &["--variant", "mha", "--n-heads", "4", "--seq-len", "7"],
        ),
        (
            "mqa",
            &["--variant", "mqa", "--n-heads", "4", "--head-dim", "8"],
        ),
        ("gqa2", GQA2),
        ("mla_naive_q", MLA_NAIVE_Q),
        (
            "mla_absorbed_q",
            &[
                "--variant",
                "mla",
                "--mla-path",
                "absorbed",
                "--q-lora-rank",
                "24",
                "--decode-steps",
                "3",
            ],
        ),
        (
            "mla_naive",
            &[
                "--variant",
                "mla",
                "--mla-path",
                "naive",
                "--qk-nope-head-dim",
                "6",
            ],
        ),
        (
            "mla_absorbed",
            &[
                "--variant",
                "mla",
                "--mla-path",
                "absorbed",
                "--seq-len",
                "1",
            ],
        ),
    ];
    let mut cases: Vec<(String, Vec<&str>)> = f32_cases
        .iter()
        .map(|(name, args)| (name.to_string(), args.to_vec()))
        .collect();
    for (name, args) in [
        ("gqa2", GQA2),
        ("mla_naive_q", MLA_NAIVE_Q),
        ("mla_absorbed", MLA_ABSORBED),
    ] {
        for kv in ["bf16", "f16", "int8"] {
            cases.push((
                format!("{name}_kv_{kv}"),
                [args, &["--kv-dtype", kv]].concat(),
            ));
        }
        // bf16 weights, alone and with the bf16 cache deployments pair them with.
        for kv in ["f32", "bf16"] {
            cases.push((
                format!("{name}_w_bf16_kv_{kv}"),
                [args, &["--weight-dtype", "bf16", "--kv-dtype", kv]].concat(),
            ));
        }
    }
    cases
}

const GQA2: &[&str] = &[
    "--variant",
    "gqa",
    "--n-heads",
    "4",
    "--n-kv-heads",
    "2",
    "--d-model",
    "40",
    "--head-dim",
    "12",
];

const MLA_NAIVE_Q: &[&str] = &[
    "--variant",
    "mla",
    "--mla-path",
    "naive",
    "--q-lora-rank",
    "24",
];

const MLA_ABSORBED: &[&str] = &["--variant", "mla", "--mla-path", "absorbed"];
