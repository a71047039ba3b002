//! `attnbench run`, `validate` and `list` end to end: bad files refused before anything is
//! touched, results written, a killed sweep resumed without re-measuring.

use std::fs;
use std::path::{Path, PathBuf};
mod common;

use std::process::{Command, Output, Stdio};

use common::{TINY, assert_success, attnbench};
use std::time::{Duration, Instant};

use attnbench::config::{Dtype, WeightDtype};
use attnbench::cost::{core_cost, step_cost};
use attnbench::experiment::{Experiment, parse_experiment};
use attnbench::kernels::narrow_path;
use attnbench::results::{ResultsDir, ResultsFile, SampleStats, read_log};

/// A quick calibration shared by the tests.
fn machine() -> &'static str {
    common::quick_machine()
}

/// `attnbench run FILE --out DIR --machine M` plus `extra`.
fn run(file: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--machine",
        machine(),
    ];
    args.extend_from_slice(extra);
    attnbench(&args)
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("harness")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn results(dir: &Path) -> ResultsFile {
    serde_json::from_str(&fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

/// Every file under `dir` (the charts folder included), by relative path.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for path in fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()) {
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((name, fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_run_writes_json_csv_and_markdown_with_honest_memory() {
    let dir = scratch("run");
    let file = write(&dir, "tiny.toml", TINY);
    let out = dir.join("out");
    let result = run(&file, &out, &[]);
    assert_success(&result);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        stdout.contains("decode: latency"),
        "tables not printed: {stdout}"
    );
    let r = results(&out);
    // 5 layers (mla twice) × (2 prefill + 2 decode).
    assert_eq!(r.points.len(), 20);
    assert!(
        r.environment.cores >= 1
            && !r.environment.rustc.is_empty()
            && !r.environment.date.is_empty()
    );
    for p in &r.points {
        assert!(p.error.is_none(), "{}: {:?}", p.key, p.error);
        let measured = p.kv_cache_bytes.unwrap();
        assert!(measured >= p.kv_cache_bytes_analytic, "{}", p.key);
        assert_eq!(
            measured, p.kv_cache_bytes_analytic,
            "{}: this storage does not pad",
            p.key
        );
        assert!(p.step.median_ns.unwrap() > 0.0 && p.step.samples.unwrap() >= 3);
        assert!(
            p.step.min_ns.unwrap() <= p.step.median_ns.unwrap()
                && p.step.median_ns.unwrap() <= p.step.max_ns.unwrap()
        );
        assert!(
            p.peak_transient_bytes.unwrap() > 0,
            "{}: the counting allocator saw nothing",
            p.key
        );
        assert!(p.flops > 0 && p.bytes > 0);
        let (core, step) = (p.core.median_ns.unwrap(), p.step.median_ns.unwrap());
        assert!(core > 0.0 && p.core_share_pct.unwrap() > 0.0, "{}", p.key);
        assert!((p.core_share_pct.unwrap() - 100.0 * core / step).abs() < 1e-6);
        assert!(
            p.step.ideal_ns.unwrap() > 0.0 && p.step.roofline_pct.unwrap() > 0.0,
            "{}",
            p.key
        );
        assert!(p.core.roofline_pct.unwrap() > 0.0, "{}", p.key);
        // Every sample is kept, and the statistics recompute from them.
        for (summary, what) in [(&p.step, "step"), (&p.core, "core")] {
            assert_eq!(
                summary.samples_ns.len(),
                summary.samples.unwrap(),
                "{}: {what}",
                p.key
            );
            let stats = SampleStats::from_samples(&summary.samples_ns);
            assert_eq!(Some(stats.median_ns), summary.median_ns, "{}", p.key);
            assert_eq!(Some(stats.mad_ns), summary.mad_ns, "{}", p.key);
        }
    }
    assert!(r.machine.is_some());
    // They survive the log too: a resumed run keeps a logged point's samples.
    let logged = read_log(&out.join("points.jsonl")).unwrap();
    assert_eq!(logged, r.points);
    let csv = fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 21);
    assert!(csv.starts_with("key,variant,mla_path,mode,seq_len,context"));
    // The columns (the fields of a point in results.json too) are the published format's.
    let published = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/results/kv_heads/results.csv"
    ))
    .unwrap();
    assert_eq!(csv.lines().next(), published.lines().next());
    let md = fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| variant") && md.contains("against MHA"));
    // The read bandwidth and the matmul rate were probed before and after the points, on
    // every thread count.
    let environment = &r.environment;
    for (what, unit, probes) in [
        ("Read bandwidth", "GB/s", &environment.read_probe_gbps),
        ("Matmul rate", "GFLOP/s", &environment.matmul_probe_gflops),
    ] {
        let probes = probes.as_ref().expect("probed");
        assert_eq!(
            probes.keys().copied().collect::<Vec<_>>(),
            environment.threads
        );
        for probe in probes.values() {
            assert!(probe.start.is_finite() && probe.start > 0.0, "{probe:?}");
            assert!(probe.end.is_finite() && probe.end > 0.0, "{probe:?}");
        }
        let line = format!(
            "1 thread(s): {:.1} and {:.1} {unit}",
            probes[&1].start, probes[&1].end
        );
        let sentence = format!("{what} probed at the start and at the end");
        assert!(md.contains(&sentence) && md.contains(&line), "{md}");
    }
    // And before every point, each with its own table: the probe, then the step's and the
    // core's bandwidth (FLOP rate) as a share of it.
    for p in &r.points {
        for (probe, step, core) in [
            (p.read_probe_gbps, p.step.gbps, p.core.gbps),
            (p.matmul_probe_gflops, p.step.gflops, p.core.gflops),
        ] {
            let probe = probe.expect("probed before the point");
            assert!(probe.is_finite() && probe > 0.0, "{}: {probe}", p.key);
            let share = |rate: Option<f64>| format!("{:.0}%", 100.0 * rate.unwrap() / probe);
            let cell = format!("{probe:.1} ({} / {})", share(step), share(core));
            assert!(md.contains(&cell), "{}: no cell {cell} in {md}", p.key);
        }
    }
    assert!(md.contains("### decode: read bandwidth probed before the point"));
    assert!(md.contains("### prefill: matmul rate probed before the point"));
}

/// A run on a machine whose bandwidth and matmul rate are far from its calibration's says so
/// on stderr, naming both figures of each, and still writes its results (the probes are in
/// them).
#[test]
fn a_run_warns_when_the_probed_ceilings_stray_from_the_calibration() {
    use attnbench::results::{read_machine, write_machine};
    let dir = scratch("drift");
    let mut machine = read_machine(Path::new(machine())).unwrap();
    // No machine reads at a petabyte per second or multiplies at a petaflop: every probe
    // is far below these.
    for gbps in machine.read_gbps.values_mut() {
        *gbps = 1e6;
    }
    for gflops in machine.matmul_gflops.values_mut() {
        *gflops = 1e6;
    }
    let inflated = dir.join("machine.json");
    write_machine(&inflated, &machine).unwrap();
    let file = write(&dir, "tiny.toml", TINY);
    let out = dir.join("out");
    let result = attnbench(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--machine",
        inflated.to_str().unwrap(),
        "--quiet",
    ]);
    assert_success(&result);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("warning: on 1 thread(s) this machine read at")
            && stderr.contains("0% of the 1000000.0 GB/s its calibration"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: on 1 thread(s) this machine computed at")
            && stderr.contains("0% of the 1000000.0 GFLOP/s its calibration"),
        "{stderr}"
    );
    let environment = results(&out).environment;
    assert!(environment.read_probe_gbps.is_some() && environment.matmul_probe_gflops.is_some());
}

/// TINY at every stored type: GQA and both MLA paths (grouped K/V rows and MLA's latent),
/// both modes, one length each, every kv_dtype with every weight_dtype: 48 points.
fn tiny_at_every_stored_type() -> String {
    TINY.replace(
        "variant = [\"mha\", \"mqa\", \"gqa\", \"mla\"]",
        "variant = [\"gqa\", \"mla\"]",
    )
    .replace("seq_len = [4, 9]", "seq_len = [9]")
    .replace("context = [16, 33]", "context = [33]")
    .replace(
        "threads = [1]",
        "threads = [1]\nkv_dtype = [\"f32\", \"bf16\", \"f16\", \"int8\"]\nweight_dtype = [\"f32\", \"bf16\"]",
    )
}

/// Runs [`tiny_at_every_stored_type`] into a fresh `name` directory: the grid and the results
/// directory.
fn run_every_stored_type(name: &str) -> (Experiment, PathBuf) {
    let dir = scratch(name);
    let text = tiny_at_every_stored_type();
    let file = write(&dir, "dtypes.toml", &text);
    let out = dir.join("out");
    assert_success(&run(&file, &out, &["--quiet"]));
    let experiment = parse_experiment(&text, "dtypes.toml", "dtypes", u64::MAX / 2).unwrap();
    assert_eq!(experiment.points.len(), 3 * 2 * 8);
    (experiment, out)
}

#[test]
fn a_run_at_every_stored_type_records_the_types_their_bytes_and_accuracy() {
    let (experiment, out) = run_every_stored_type("dtypes");
    let r = results(&out);
    assert_eq!(r.points.len(), experiment.points.len());
    assert_eq!(r.environment.narrow_path.as_deref(), Some(narrow_path()));
    for (point, p) in experiment.points.iter().zip(&r.points) {
        let precision = point.precision;
        assert_eq!(p.key, point.key());
        assert!(p.error.is_none(), "{}: {:?}", p.key, p.error);
        assert_eq!(
            (p.kv_dtype, p.weight_dtype),
            (precision.kv_dtype, precision.weight_dtype)
        );
        // Bytes at the stored widths, from the one formula.
        let per_token = point.spec.kv_bytes_per_token(precision.kv_dtype).unwrap();
        assert_eq!(p.kv_bytes_per_token as u64, per_token, "{}", p.key);
        let tokens = (p.context + p.seq_len) as u64;
        assert_eq!(p.kv_cache_bytes_analytic, tokens * per_token, "{}", p.key);
        let (b, s, c) = (point.batch, point.seq_len, point.context);
        assert_eq!(p.bytes, step_cost(&point.spec, precision, b, s, c).bytes);
        assert_eq!(
            p.core_bytes,
            core_cost(&point.spec, precision, b, s, c).bytes
        );
        // Measured for every point: set to 0 for f32, which is its own reference.
        let err = p.max_rel_err.unwrap();
        assert!(err.is_finite() && err >= 0.0, "{}: {err}", p.key);
        if precision.is_f32() {
            assert_eq!(err, 0.0, "{}", p.key);
        }
    }
    // The JSON names a type only where it is not f32.
    let json = fs::read_to_string(out.join("results.json")).unwrap();
    let narrow_kv = r.points.iter().filter(|p| p.kv_dtype != Dtype::F32).count();
    assert_eq!(json.matches("\"kv_dtype\"").count(), narrow_kv);
    let bf16_weights = r
        .points
        .iter()
        .filter(|p| p.weight_dtype == WeightDtype::Bf16)
        .count();
    assert_eq!(json.matches("\"weight_dtype\"").count(), bf16_weights);
    assert_eq!(json.matches("\"max_rel_err\"").count(), r.points.len());
    // The CSV names them on every row.
    let csv = fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let at = header.iter().position(|&c| c == "kv_dtype").unwrap();
    assert_eq!(
        header[at - 1..at + 3],
        ["kernel", "kv_dtype", "weight_dtype", "max_rel_err"]
    );
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    for (row, p) in reader.records().map(Result::unwrap).zip(&r.points) {
        assert_eq!(row.len(), header.len(), "{}", p.key);
        assert_eq!(&row[at], p.kv_dtype.name());
        assert_eq!(&row[at + 1], p.weight_dtype.name());
    }
}

#[test]
fn stored_types_lose_what_the_issue_allows_and_measure_their_analytic_bytes() {
    // Issue 11's accuracy targets, per stored type; a point storing two narrow types may lose
    // both.
    let kv_bound = |dtype| match dtype {
        Dtype::F32 => 0.0,
        Dtype::Bf16 => 2e-2,
        Dtype::F16 => 2e-3,
        Dtype::Int8 => 3e-2,
    };
    let weight_bound = |dtype| match dtype {
        WeightDtype::F32 => 0.0,
        WeightDtype::Bf16 => 2e-2,
    };
    let (experiment, out) = run_every_stored_type("dtypes_accuracy");
    let r = results(&out);
    for (point, p) in experiment.points.iter().zip(&r.points) {
        assert!(p.error.is_none(), "{}: {:?}", p.key, p.error);
        assert_eq!(
            p.kv_cache_bytes,
            Some(p.kv_cache_bytes_analytic),
            "{}",
            p.key
        );
        let err = p.max_rel_err.unwrap();
        let bound = kv_bound(p.kv_dtype) + weight_bound(p.weight_dtype);
        if point.precision.is_f32() {
            assert_eq!(err, 0.0, "{}", p.key);
        } else {
            assert!(
                err > 0.0 && err <= bound,
                "{}: max_rel_err {err:e}, bound {bound:e}",
                p.key
            );
        }
    }
}

#[test]
fn an_existing_results_directory_is_not_overwritten_without_being_told() {
    let dir = scratch("existing");
    let file = write(
        &dir,
        "tiny.toml",
        &TINY
            .replace("\"mla\"]", "]")
            .replace("[\"prefill\", \"decode\"]", "[\"decode\"]"),
    );
    let out = dir.join("out");
    assert!(run(&file, &out, &[]).status.success());
    let before = snapshot(&out);
    let again = run(&file, &out, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    assert_eq!(snapshot(&out), before);
    let forced = run(&file, &out, &["--force", "--quiet"]);
    assert!(forced.status.success());
}

#[test]
fn resume_refuses_a_directory_run_with_another_grid_naming_what_changed() {
    let dir = scratch("grid");
    let text = TINY
        .replace("\"mla\"]", "]")
        .replace("[\"prefill\", \"decode\"]", "[\"decode\"]");
    let file = write(&dir, "tiny.toml", &text);
    let out = dir.join("out");
    assert_success(&run(&file, &out, &["--quiet"]));
    // The grid is recorded: its hash in results.json, the grid itself on the log's first line.
    let hash = results(&out).experiment.grid_hash.unwrap();
    assert!(hash.starts_with("fnv1a64:"), "{hash}");
    let log = fs::read_to_string(out.join("points.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["grid_hash"], hash.as_str());
    assert_eq!(
        first["grid"]["points"][0]["spec"]["Grouped"]["config"]["d_model"],
        32
    );
    assert_eq!(read_log(&out.join("points.jsonl")).unwrap().len(), 6);

    // The same file resumes (nothing left to measure) to the same hash.
    let again = run(&file, &out, &["--resume", "--quiet"]);
    assert_success(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("(6 resumed"));
    assert_eq!(results(&out).experiment.grid_hash.unwrap(), hash);

    // A changed d_model leaves every display key as it was, but no point is the same.
    let before = snapshot(&out);
    let changed = write(
        &dir,
        "tiny.toml",
        &text.replace("d_model = 32", "d_model = 64"),
    );
    let refused = run(&changed, &out, &["--resume", "--quiet"]);
    assert!(!refused.status.success(), "resumed over another grid");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "{} was run with a different grid: point 1 `mha/decode/ctx16_h4_kv4_b1_t1` had \
             d_model 32, the file now gives 64 (points changed: 6, new: 0, gone: 0); rerun \
             with --force to start over",
            out.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        snapshot(&out),
        before,
        "a refused resume touched the directory"
    );
    // So does a setting of the whole grid.
    let cold = write(
        &dir,
        "tiny.toml",
        &text.replace("flush_caches = false", "flush_caches = true"),
    );
    let refused = run(&cold, &out, &["--resume", "--quiet"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("measure.flush_caches was false, the file now gives true"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A log from before grids were recorded cannot be checked: refused, not trusted.
    let points: Vec<&str> = log.lines().skip(1).collect();
    fs::write(out.join("points.jsonl"), points.join("\n") + "\n").unwrap();
    let old = run(&file, &out, &["--resume", "--quiet"]);
    assert!(!old.status.success(), "resumed over an unrecorded grid");
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("does not record the grid it was run with"),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    // Nor is a results.json from before, when the log is gone.
    fs::remove_file(out.join("points.jsonl")).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("results.json")).unwrap()).unwrap();
    json["experiment"]
        .as_object_mut()
        .unwrap()
        .remove("grid_hash");
    fs::write(out.join("results.json"), json.to_string()).unwrap();
    let old = run(&file, &out, &["--resume", "--quiet"]);
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("results.json does not record the grid"),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    // --force starts over, with the grid recorded again.
    assert_success(&run(&changed, &out, &["--force", "--quiet"]));
    assert_ne!(results(&out).experiment.grid_hash.unwrap(), hash);
}

#[test]
fn clearing_a_results_directory_deletes_only_what_the_tool_writes() {
    let dir = scratch("clear");
    let files = [
        "results.json",
        "points.jsonl",
        "results.csv",
        "results.md",
        "charts/decode_latency.svg",
        "notes.txt",
        "charts/photo.png",
    ];
    fs::create_dir_all(dir.join("charts")).unwrap();
    for name in files {
        fs::write(dir.join(name), "x").unwrap();
    }
    let results = ResultsDir::new(&dir);
    assert!(results.holds_results());
    results.clear().unwrap();
    let left: Vec<String> = snapshot(&dir).into_iter().map(|(name, _)| name).collect();
    assert_eq!(left, ["charts/photo.png", "notes.txt"]);
    assert!(!results.holds_results());

    // With nothing else in it, the charts folder goes too.
    fs::remove_file(dir.join("charts/photo.png")).unwrap();
    fs::write(dir.join("charts/kv_cache.svg"), "x").unwrap();
    results.clear().unwrap();
    assert!(!dir.join("charts").exists());
    assert!(dir.join("notes.txt").exists());
}

#[test]
fn bad_files_are_refused_with_a_clear_error_and_touch_nothing() {
    let dir = scratch("bad");
    let good = write(&dir, "good.toml", TINY);
    let out = dir.join("out");
    assert!(run(&good, &out, &["--quiet"]).status.success());
    let before = snapshot(&out);

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown_key",
            TINY.replace("d_model = 32", "d_model = 32\nhead_size = 8"),
            vec!["unknown field `head_size`", ":6:1", "model.head_size"],
        ),
        (
            "string_for_number",
            TINY.replace("d_model = 32", "d_model = \"big\""),
            vec!["model.d_model", ":5:11", "invalid type: string"],
        ),
        (
            "syntax",
            TINY.replace("n_heads = 4", "n_heads = = 4"),
            vec![":6:"],
        ),
        (
            "heads_32_kv_5",
            TINY.replace("n_heads = 4", "n_heads = 32")
                .replace("n_kv_heads = 2", "n_kv_heads = 5"),
            vec!["n_kv_heads", "5", "must divide n_heads = 32", ":7:"],
        ),
        (
            "zero_length",
            TINY.replace("seq_len = [4, 9]", "seq_len = [0, 9]"),
            vec!["sweep.seq_len", "0 is not a valid value"],
        ),
        (
            "hundred_gib",
            TINY.replace("context = [16, 33]", "context = [16, 2000000000]")
                .replace("d_model = 32", "d_model = 4096"),
            vec!["sweep.context", "GiB", "memory limit"],
        ),
        (
            "negative",
            TINY.replace("threads = [1]", "threads = [-1]"),
            vec!["sweep.threads"],
        ),
        (
            "gqa_without_kv",
            TINY.replace("n_kv_heads = 2\n", ""),
            vec!["n_kv_heads", "GQA"],
        ),
        (
            "mla_without_latent",
            TINY.replace("kv_lora_rank = 16\n", ""),
            vec!["model.kv_lora_rank", "MLA"],
        ),
        (
            "unknown_preset",
            TINY.replace("d_model = 32", "preset = \"llama-9\"\nd_model = 32"),
            vec!["unknown preset `llama-9`", "llama-3-8b"],
        ),
        (
            "unknown_variant",
            TINY.replace("\"mqa\", ", "\"mqa\", \"sparse\", "),
            vec!["sparse", "sweep.variant"],
        ),
    ];
    for (name, text, needles) in cases {
        let file = write(&dir, &format!("{name}.toml"), &text);
        for result in [
            attnbench(&["validate", file.to_str().unwrap()]),
            run(&file, &out, &["--force"]),
        ] {
            let stderr = String::from_utf8_lossy(&result.stderr);
            assert!(!result.status.success(), "{name}: accepted");
            assert!(!stderr.contains("panicked"), "{name}: panicked: {stderr}");
            assert!(
                stderr.contains(file.to_str().unwrap()),
                "{name}: the file is not named: {stderr}"
            );
            for needle in &needles {
                assert!(
                    stderr.contains(needle),
                    "{name}: `{needle}` not in: {stderr}"
                );
            }
            assert_eq!(snapshot(&out), before, "{name}: results changed");
        }
    }
}

#[test]
fn nonsense_combinations_are_listed_as_skipped_not_dropped() {
    let dir = scratch("skips");
    let text = TINY
        .replace(
            "threads = [1]",
            "threads = [1]\nn_heads = [4, 6]\nn_kv_heads = [4, 2, 1]",
        )
        .replace("mode = [\"prefill\", \"decode\"]", "mode = [\"decode\"]");
    let file = write(&dir, "skips.toml", &text);
    let out = attnbench(&["validate", file.to_str().unwrap()]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "skipped gqa n_heads=6 n_kv_heads=4: `n_kv_heads` = 4: must divide n_heads = 6"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("GQA with n_kv_heads = 4 is mha"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GQA with n_kv_heads = 1 is mqa"),
        "{stdout}"
    );
    assert!(stdout.contains("gqa/decode/ctx16_h6_kv2_b1_t1"), "{stdout}");
    assert!(!stdout.contains("gqa/decode/ctx16_h4_kv4"), "{stdout}");
}

#[test]
fn a_killed_sweep_resumes_without_remeasuring_finished_points() {
    let dir = scratch("resume");
    // Eight points of a few hundred milliseconds each, so the kill lands mid-sweep.
    let text = TINY
        .replace(
            "variant = [\"mha\", \"mqa\", \"gqa\", \"mla\"]",
            "variant = [\"mha\", \"mqa\", \"gqa\", \"mla\"]\nmla_path = [\"absorbed\"]",
        )
        .replace("mode = [\"prefill\", \"decode\"]", "mode = [\"decode\"]")
        .replace("time_budget_ms = 5", "time_budget_ms = 250")
        .replace("max_samples = 5", "max_samples = 100000");
    let file = write(&dir, "resume.toml", &text);
    let out = dir.join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--machine",
            machine(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = out.join("points.jsonl");
    let start = Instant::now();
    // The grid's line, then three points, each whole: a line counts once its newline is
    // written. (Counting `lines()` would count a line still being written, and the kill can
    // cut that write short, leaving two points.)
    let whole_lines = |text: String| text.bytes().filter(|&b| b == b'\n').count();
    while fs::read_to_string(&log).map_or(0, whole_lines) < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the sweep did not progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !out.join("results.json").exists(),
        "the run finished before the kill"
    );
    let before = read_log(&log).unwrap();
    assert!(
        before.len() >= 3 && before.len() < 8,
        "{} points finished",
        before.len()
    );

    let resumed = run(&file, &out, &["--resume", "--quiet"]);
    assert_success(&resumed);
    assert!(
        String::from_utf8_lossy(&resumed.stderr)
            .contains(&format!("resuming: {} of 8", before.len()))
    );
    let r = results(&out);
    assert_eq!(r.points.len(), 8);
    assert_eq!(r.experiment.points_resumed, before.len());
    for old in &before {
        let new = r.points.iter().find(|p| p.key == old.key).unwrap();
        assert_eq!(new, old, "{} was measured again", old.key);
    }
    // The log now holds each point exactly once.
    assert_eq!(read_log(&log).unwrap().len(), 8);
}

#[test]
fn list_shows_presets_and_experiments() {
    let out = attnbench(&[
        "list",
        "--dir",
        concat!(env!("CARGO_MANIFEST_DIR"), "/variants"),
    ]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "gpt2-small",
        "llama-2-7b",
        "llama-3-8b",
        "mistral-7b-v0.1",
        "falcon-7b",
        "qwen2.5-7b",
        "deepseek-v2-lite",
        "deepseek-v3",
        "smoke.toml",
    ] {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
    assert!(
        !stdout.contains("invalid"),
        "an experiment in variants/ does not validate:\n{stdout}"
    );
}

#[test]
fn caches_are_evicted_before_samples_unless_the_file_says_not() {
    use attnbench::experiment::parse_experiment;
    let parse = |text: &str| parse_experiment(text, "f.toml", "f", 1 << 40);
    let by_default = TINY.replace("flush_caches = false\n", "");
    assert!(parse(&by_default).unwrap().measure.flush_caches);
    assert!(!parse(TINY).unwrap().measure.flush_caches);
    let error = parse(&TINY.replace("flush_caches = false", "flush_caches = \"yes\""))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("measure.flush_caches") && error.contains("f.toml:24:"),
        "{error}"
    );
}

#[test]
fn a_run_that_evicts_the_caches_says_so_in_its_tables() {
    let dir = scratch("flush");
    let text = TINY
        .replace("flush_caches = false\n", "")
        .replace(
            r#"variant = ["mha", "mqa", "gqa", "mla"]"#,
            r#"variant = ["gqa"]"#,
        )
        .replace("seq_len = [4, 9]", "seq_len = [4]")
        .replace("context = [16, 33]", "context = [16]");
    let file = write(&dir, "flush.toml", &text);
    let out = dir.join("out");
    assert!(run(&file, &out, &["--quiet"]).status.success());
    assert!(results(&out).experiment.measure.flush_caches);
    let md = fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("evicted before every sample"), "{md}");
}

#[test]
fn a_calibration_is_reused_only_on_the_machine_it_was_measured_on() {
    use attnbench::results::{Environment, read_machine};
    use attnbench::roofline::{CalibrationEvent, Difference, Mismatch};
    let path = Path::new(machine());
    let saved = read_machine(path).unwrap();
    let here = Environment::capture(vec![1]);
    assert_eq!(saved.mismatch(&here, &[1, 2]), None, "just measured here");
    let stale = |edit: &dyn Fn(&mut Environment)| {
        let mut other = saved.clone();
        edit(&mut other.environment);
        other
            .mismatch(&here, &[1])
            .expect("reused on another machine")
    };
    let says = |why: &Mismatch| {
        CalibrationEvent::Stale { path, why }
            .to_string()
            .replace(machine(), "M")
    };

    // Another machine with the same CPU name and core count: its caches differ.
    let why = stale(&|e| {
        e.cache_bytes.as_mut().unwrap().insert("L3".into(), 1 << 40);
    });
    assert!(
        matches!(&why, Mismatch::OtherMachine(d) if matches!(d[..], [Difference::CacheSizes { .. }]))
    );
    assert!(
        says(&why).starts_with(
            "M was measured on another machine (cache sizes differ: L3 1048576 MiB there, "
        ) && says(&why).ends_with("here); calibrating again"),
        "{}",
        says(&why)
    );

    // Its features differ (a host without AVX-512, or a VM that hides it).
    let why = stale(&|e| e.cpu_features.as_mut().unwrap().push("amx".into()));
    assert_eq!(
        says(&why),
        "M was measured on another machine (CPU features differ: amx only there, none only here); calibrating again"
    );

    // Its memory differs.
    let why = stale(&|e| e.memory_bytes = Some(e.memory_bytes.unwrap_or(0) + 1));
    assert!(
        says(&why).contains("(memory sizes differ: "),
        "{}",
        says(&why)
    );

    // An older file that records neither features nor caches is not taken on trust.
    let why = stale(&|e| {
        e.cpu_features = None;
        e.cache_bytes = None;
    });
    assert_eq!(
        says(&why),
        "M does not record the CPU features and cache sizes of the machine it was measured on (an older file); calibrating again"
    );

    // The same machine, but an older calibration (one read pattern, one matmul size).
    let mut older = saved.clone();
    older.format = "attnbench-machine/1".into();
    assert_eq!(
        older.mismatch(&here, &[1]),
        Some(Mismatch::OtherFormat("attnbench-machine/1".into()))
    );

    // The same machine, but a thread count the file does not cover.
    assert_eq!(
        saved.mismatch(&here, &[3, 1, 3]),
        Some(Mismatch::MissingThreads(vec![3]))
    );
}

#[test]
fn an_older_calibration_file_still_reads() {
    // A format 1 file, as committed before CPU features, cache sizes and patterns were
    // recorded: it reads, and is not reused.
    use attnbench::results::{Environment, read_machine};
    use attnbench::roofline::Mismatch;
    let dir = scratch("old_machine");
    let path = dir.join("machine.json");
    fs::write(
        &path,
        r#"{
  "format": "attnbench-machine/1",
  "environment": {
    "cpu_model": "Intel(R) Xeon(R) Processor",
    "cores": 2,
    "threads": [1, 2],
    "memory_bytes": 25276510208,
    "os": "linux/x86_64",
    "rustc": "rustc 1.95.0 (59807616e 2026-04-14)",
    "crate_version": "0.1.0",
    "git_revision": "993537f98dabb5efbca9f149f08cd251d7598a68",
    "date": "2026-11-24T01:05:28Z",
    "command_line": "./target/release/attnbench calibrate"
  },
  "size": { "matmul_n": 2048, "read_bytes": 1073741824, "repeats": 5 },
  "matmul_gflops": { "1": 160.5, "2": 260.7 },
  "read_gbps": { "1": 14.2, "2": 27.9 }
}
"#,
    )
    .unwrap();
    let old = read_machine(&path).unwrap();
    assert_eq!(old.read_gbps[&2], 27.9);
    assert_eq!(old.environment.cache_bytes, None);
    let mut here = Environment::capture(vec![1]);
    here.cpu_model = old.environment.cpu_model.clone();
    here.cores = 2;
    here.memory_bytes = old.environment.memory_bytes;
    assert_eq!(
        old.mismatch(&here, &[1]),
        Some(Mismatch::Unrecorded(vec!["CPU features", "cache sizes"]))
    );
}

#[test]
fn a_calibration_records_the_patterns_that_reached_its_ceilings() {
    use attnbench::results::{MACHINE_FORMAT, VectorLoads, read_machine};
    let saved = read_machine(Path::new(machine())).unwrap();
    assert_eq!(saved.format, MACHINE_FORMAT);
    for t in [1, 2] {
        assert!(saved.matmul_gflops[&t] > 0.0 && saved.read_gbps[&t] > 0.0);
        let read = saved.read_pattern[&t];
        assert!((1..=16).contains(&read.streams_per_thread), "{read}");
        let matmul = saved.matmul_pattern[&t];
        assert!(matmul.m * matmul.k * matmul.n > 0, "{matmul}");
    }
    // The record says what won in words a reader can check against the kernels.
    let text = std::fs::read_to_string(machine()).unwrap();
    assert!(text.contains("\"read_pattern\"") && text.contains("\"streams_per_thread\""));
    assert!(text.contains("\"matmul_pattern\"") && text.contains("\"parallel\""));
    let loads = saved.read_pattern[&1].loads;
    assert!(matches!(
        loads,
        VectorLoads::Avx512 | VectorLoads::Avx2 | VectorLoads::Portable
    ));
}

#[test]
fn a_logged_point_without_its_timing_is_refused_naming_the_line() {
    let dir = scratch("incomplete_log");
    let committed = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/results/kv_heads/points.jsonl"
    ))
    .unwrap();
    let mut lines: Vec<serde_json::Value> = committed
        .lines()
        .take(2)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key = lines[1]["key"].as_str().unwrap().to_string();
    lines[1]
        .as_object_mut()
        .unwrap()
        .remove("median_ns")
        .unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let log = write(&dir, "points.jsonl", &text);
    let error = read_log(&log).unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "points.jsonl:2: not a point result: point `{key}` has no `median_ns` and no `error`"
        )),
        "{error}"
    );
}

#[test]
fn a_log_opens_with_its_grid_once_even_after_blank_lines() {
    use attnbench::experiment::parse_experiment;
    use attnbench::results::Grid;
    let dir = scratch("blank_log");
    let grid = Grid::of(&parse_experiment(TINY, "t.toml", "t", 1 << 40).unwrap());
    let results = ResultsDir::new(&dir);
    // What a kill during the grid's line leaves once the torn line is cut: no record.
    fs::write(results.log(), "\n \n").unwrap();
    drop(results.open_log(&grid).unwrap());
    drop(results.open_log(&grid).unwrap());
    let text = fs::read_to_string(results.log()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let logged = results.read_logged_run().unwrap();
    assert_eq!(logged.grid, Some(grid.recorded()));
    assert!(logged.points.is_empty());
}
