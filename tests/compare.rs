//! `attnbench compare` end to end: two real runs of a tiny experiment compare without a gate
//! failure, and synthetic edits of a results file give the verdicts, lists and exit codes the
//! docs/compare.md promises. Real timings are never asserted to agree: that is for published runs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{assert_success, attnbench, quick_machine as machine};
use serde_json::Value;

/// Decode only, two variants, two contexts: four points of a few milliseconds.
const TINY: &str = r#"
name = "tiny-compare"
[model]
d_model = 32
n_heads = 4
n_kv_heads = 2
head_dim = 8
[sweep]
variant = ["mha", "gqa"]
mode = ["decode"]
context = [16, 33]
threads = [1]
[measure]
warmup_iters = 1
min_samples = 5
max_samples = 20
time_budget_ms = 5
flush_caches = false
"#;

const SLOWED: &str = "gqa/decode/ctx33_h4_kv2_b1_t1";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compare")
}

/// Runs the tiny experiment twice (once per test binary): the directories `a` and `b`.
fn two_runs() -> &'static (PathBuf, PathBuf) {
    static RUNS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let _ = fs::remove_dir_all(dir());
        fs::create_dir_all(dir()).unwrap();
        let file = dir().join("tiny.toml");
        fs::write(&file, TINY).unwrap();
        let run = |name: &str| {
            let out = dir().join(name);
            assert_success(&attnbench(&[
                "run",
                file.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--machine",
                machine(),
                "--quiet",
            ]));
            out
        };
        (run("a"), run("b"))
    })
}

/// A's results.json, edited by `edit` and written as `name`.
fn edited(name: &str, edit: impl FnOnce(&mut Vec<Value>)) -> PathBuf {
    let (a, _) = two_runs();
    let mut results: Value =
        serde_json::from_str(&fs::read_to_string(a.join("results.json")).unwrap()).unwrap();
    edit(results["points"].as_array_mut().unwrap());
    let path = dir().join(name);
    fs::write(&path, serde_json::to_string(&results).unwrap()).unwrap();
    path
}

fn point<'a>(points: &'a mut [Value], key: &str) -> &'a mut Value {
    points.iter_mut().find(|p| p["key"] == key).unwrap()
}

fn compare(a: &Path, b: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["compare", a.to_str().unwrap(), b.to_str().unwrap()];
    args.extend_from_slice(extra);
    attnbench(&args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The table row of `key`.
fn row<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("| {key}")))
        .unwrap_or_else(|| panic!("no row for {key} in:\n{text}"))
}

#[test]
fn two_runs_of_one_experiment_compare_point_by_point() {
    let (a, b) = two_runs();
    let out = compare(a, b, &[]);
    assert_success(&out);
    let text = stdout(&out);
    for key in [
        "mha/decode/ctx16_h4_kv4_b1_t1",
        "gqa/decode/ctx16_h4_kv2_b1_t1",
        SLOWED,
    ] {
        row(&text, key);
    }
    assert!(text.contains("step: 4 points:"), "{text}");
    assert!(
        text.contains("0 failed, 0 only in A, 0 only in B"),
        "{text}"
    );
    // A results.json is accepted as well as its directory.
    assert_success(&compare(&a.join("results.json"), b, &[]));
}

#[test]
fn a_slowed_point_is_slower_and_fails_the_gate() {
    let (a, _) = two_runs();
    let slowed = edited("slowed.json", |points| {
        let p = point(points, SLOWED);
        for field in ["median_ns", "mad_ns", "core_median_ns", "core_mad_ns"] {
            p[field] = Value::from(p[field].as_f64().unwrap() * 3.0);
        }
    });
    let out = compare(a, &slowed, &["--fail-above-pct", "20"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    let slowed_row = row(&text, SLOWED);
    assert_eq!(
        slowed_row.matches("slower 3.00×").count(),
        2,
        "{slowed_row}"
    );
    assert_eq!(
        row(&text, "gqa/decode/ctx16_h4_kv2_b1_t1")
            .matches("within noise")
            .count(),
        2
    );
    assert!(text.contains("1 slower, 3 within noise"), "{text}");
    assert!(
        stderr(&out).contains(&format!(
            "regression: 1 point(s) slower by more than 20%: {SLOWED} (+200.0%)"
        )),
        "{}",
        stderr(&out)
    );
    // Without the gate, or with a gate above the change, the same comparison passes.
    assert_success(&compare(a, &slowed, &[]));
    assert_success(&compare(a, &slowed, &["--fail-above-pct", "250"]));
    // Reversed, it is a speed-up: never a regression.
    let out = compare(&slowed, a, &["--fail-above-pct", "20"]);
    assert_success(&out);
    assert!(row(&stdout(&out), SLOWED).contains("faster 3.00×"));

    let out = compare(a, &slowed, &["--fail-above-pct", "20", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["counts"]["slower"], 1);
    assert_eq!(json["regressions"], serde_json::json!([SLOWED]));
    let points = json["comparison"]["points"].as_array().unwrap();
    let p = points.iter().find(|p| p["key_a"] == SLOWED).unwrap();
    assert_eq!(p["step"]["verdict"], "slower");
    assert_eq!(p["core"]["verdict"], "slower");
}

#[test]
fn missing_and_failed_points_are_listed() {
    let (a, _) = two_runs();
    let b = edited("edited.json", |points| {
        let gone = points.remove(0);
        let mut added = gone.clone();
        added["key"] = "mha/decode/ctx99_h4_kv4_b1_t1".into();
        added["context"] = 99.into();
        points.push(added);
        point(points, SLOWED)["error"] = "cannot allocate".into();
    });
    // Without a gate they are listed and the exit status is 0.
    let out = compare(a, &b, &[]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.contains("only in A: mha/decode/ctx16_h4_kv4_b1_t1"),
        "{text}"
    );
    assert!(
        text.contains("only in B: mha/decode/ctx99_h4_kv4_b1_t1"),
        "{text}"
    );
    assert!(
        text.contains(&format!("failed: {SLOWED}: A: ok; B: cannot allocate")),
        "{text}"
    );
    assert!(
        text.contains("1 failed, 1 only in A, 1 only in B"),
        "{text}"
    );
    // A gate cannot vouch for a point that failed or went missing: exit 1, saying why. A
    // point only in B is new and does not fail it.
    let out = compare(a, &b, &["--fail-above-pct", "1000"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let why = stderr(&out);
    assert!(
        why.contains(&format!(
            "gate failed: 1 point(s) failed on either side: {SLOWED}"
        )),
        "{why}"
    );
    assert!(
        why.contains(
            "gate failed: 1 point(s) of A are missing from B: mha/decode/ctx16_h4_kv4_b1_t1"
        ),
        "{why}"
    );
    assert!(!why.contains("ctx99"), "{why}");
}

#[test]
fn a_gate_fails_when_nothing_was_compared() {
    let (a, _) = two_runs();
    let disjoint = edited("disjoint.json", |points| {
        for p in points {
            p["batch"] = 7.into();
        }
    });
    assert_success(&compare(a, &disjoint, &[]));
    let out = compare(a, &disjoint, &["--fail-above-pct", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gate failed: no point was compared (0 matched, 0 failed)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn out_of_range_settings_name_their_flag() {
    let (a, _) = two_runs();
    for (args, needle) in [
        (
            &["--noise-k", "-1"][..],
            "--noise-k -1: must be a finite number ≥ 0",
        ),
        (
            &["--min-change-pct", "-0.5"],
            "--min-change-pct -0.5: must be",
        ),
        (&["--fail-above-pct", "-5"], "--fail-above-pct -5: must be"),
        (&["--noise-k", "NaN"], "--noise-k NaN: must be"),
    ] {
        let out = compare(a, a, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn ignore_threads_matches_runs_with_different_thread_counts() {
    let (a, _) = two_runs();
    let b = edited("threads2.json", |points| {
        for p in points {
            let key = p["key"].as_str().unwrap().replace("_t1", "_t2");
            p["key"] = key.into();
            p["threads"] = 2.into();
        }
    });
    let text = stdout(&compare(a, &b, &[]));
    assert!(
        text.contains("0 within noise, 0 failed, 4 only in A, 4 only in B"),
        "{text}"
    );
    assert!(text.contains("No point matched"), "{text}");
    let out = compare(a, &b, &["--ignore", "threads"]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains("4 within noise"), "{text}");
    assert!(
        text.contains(&format!("{SLOWED} ↔ gqa/decode/ctx33_h4_kv2_b1_t2")),
        "{text}"
    );

    // A side holding both thread counts cannot be matched ignoring them.
    let both = edited("both.json", |points| {
        let mut extra = points[0].clone();
        extra["key"] = extra["key"].as_str().unwrap().replace("_t1", "_t2").into();
        extra["threads"] = 2.into();
        points.push(extra);
    });
    let out = compare(a, &both, &["--ignore", "threads"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("B has two points with the same configuration ignoring threads"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_exits_2_naming_the_file() {
    let (a, _) = two_runs();
    let missing = dir().join("nowhere");
    let corrupt = dir().join("corrupt.json");
    fs::write(&corrupt, "{ not json").unwrap();
    let other = edited("other-format.json", |_| {});
    let text = fs::read_to_string(&other)
        .unwrap()
        .replace("attnbench-results/1", "attnbench-case/1");
    fs::write(&other, text).unwrap();
    for (b, needle) in [
        (&missing, "nowhere"),
        (&corrupt, "not an attnbench results file"),
        (&other, "format `attnbench-case/1`"),
    ] {
        let out = compare(a, b, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "`{needle}` not in {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"));
    }
    for args in [
        &["--ignore", "batch"][..],
        &["--noise-k", "-1"],
        &["--min-change-pct", "NaN"],
        &["--fail-above-pct", "-5"],
    ] {
        let out = compare(a, a, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
}

/// The trimmed cells of a Markdown table row.
fn cells(row: &str) -> Vec<&str> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

#[test]
fn points_of_other_stored_types_never_pair_and_the_table_names_the_types() {
    let (a, _) = two_runs();
    // B: A with one point measured in bf16 instead, keyed as the harness keys it.
    let narrow_key = format!("{SLOWED}_kvbf16_wbf16");
    let b = edited("stored.json", |points| {
        let p = point(points, SLOWED);
        p["key"] = Value::from(narrow_key.as_str());
        p["kv_dtype"] = Value::from("bf16");
        p["weight_dtype"] = Value::from("bf16");
    });
    let out = compare(a, &b, &["--ignore", "threads,kernel"]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains(&format!("only in A: {SLOWED}\n")), "{text}");
    assert!(
        text.contains(&format!("only in B: {narrow_key}\n")),
        "{text}"
    );
    assert!(text.contains("step: 5 points: 0 faster"), "{text}");
    // Every pair is f32: the table is as it always was.
    assert_eq!(
        cells(text.lines().find(|l| l.starts_with("| point")).unwrap())[1],
        "A"
    );

    // The same point in bf16 on both sides pairs up, and the table names its types.
    let out = compare(&b, &b, &[]);
    assert_success(&out);
    let text = stdout(&out);
    let header = cells(text.lines().find(|l| l.starts_with("| point")).unwrap());
    assert_eq!(header[..4], ["point", "kv", "weights", "A"]);
    assert_eq!(cells(row(&text, &narrow_key))[1..3], ["bf16", "bf16"]);
    assert_eq!(
        cells(row(&text, "gqa/decode/ctx16_h4_kv2_b1_t1"))[1..3],
        ["f32", "f32"]
    );
    let out = compare(&b, &b, &["--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = json["comparison"]["points"].as_array().unwrap();
    let narrow = points
        .iter()
        .find(|p| p["key_a"] == narrow_key.as_str())
        .unwrap();
    assert_eq!(
        (&narrow["kv_dtype"], &narrow["weight_dtype"]),
        (&Value::from("bf16"), &Value::from("bf16"))
    );
    let f32_pair = points
        .iter()
        .find(|p| p["key_a"] != narrow_key.as_str())
        .unwrap();
    assert!(f32_pair.get("kv_dtype").is_none(), "{f32_pair}");
}
