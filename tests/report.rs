//! `attnbench report`: the tables and charts of a results directory regenerate from its
//! `results.json` byte for byte, those committed in `results/` included, and a bad directory
//! is refused without touching a file.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use attnbench::config::{Dtype, Variant, WeightDtype};
use attnbench::report::{accuracy_bound, chart_plan, markdown, render, write_rendered};
use attnbench::results::{ResultsDir, ResultsFile, ResultsFolder};
use common::{assert_success, attnbench, quick_machine};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("report")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` (relative path → bytes), `results.json` and the log left out.
fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if name != "results.json" && name != "points.jsonl" {
                    files.insert(name, fs::read(&path).unwrap());
                }
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

fn assert_same_files(expected: &BTreeMap<String, Vec<u8>>, actual: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "not the same files"
    );
    for (name, bytes) in expected {
        assert!(actual[name] == *bytes, "{name} differs");
    }
}

/// A tiny experiment with data for every chart: both modes at two lengths, GQA over three KV
/// counts, both MLA paths.
const TINY: &str = r#"
name = "tiny"
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
variant = ["gqa", "mla"]
n_kv_heads = [4, 2, 1]
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

#[test]
fn report_rewrites_what_the_run_wrote_byte_for_byte() {
    let dir = scratch("identity");
    let file = dir.join("tiny.toml");
    fs::write(&file, TINY).unwrap();
    let run_dir = dir.join("run");
    assert_success(&attnbench(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        run_dir.to_str().unwrap(),
        "--machine",
        quick_machine(),
        "--quiet",
    ]));
    let written = outputs(&run_dir);
    let charts: Vec<&str> = written
        .keys()
        .filter_map(|k| k.strip_prefix("charts/"))
        .collect();
    assert_eq!(
        charts,
        [
            "decode_latency.svg",
            "kv_cache.svg",
            "kv_heads.svg",
            "mla_paths.svg",
            "prefill_latency.svg",
            "roofline_decode.svg",
            "roofline_prefill.svg"
        ]
    );
    let md = String::from_utf8_lossy(&written["results.md"]).into_owned();
    assert!(md.contains("![decode latency against context](charts/decode_latency.svg)"));
    for svg in charts {
        let text = String::from_utf8_lossy(&written[&format!("charts/{svg}")]).into_owned();
        assert!(text.starts_with("<svg") && text.contains("</svg>"), "{svg}");
        assert!(text.contains("tiny: "), "{svg}: no title");
    }
    let svg = String::from_utf8_lossy(&written["charts/decode_latency.svg"]).into_owned();
    for label in ["gqa kv4", "gqa kv1", "mla-naive", "mla-absorbed", "context"] {
        assert!(svg.contains(label), "decode_latency.svg: no `{label}`");
    }

    // Only the JSON, elsewhere: report writes the same bytes.
    let copy = dir.join("copy");
    fs::create_dir_all(&copy).unwrap();
    fs::copy(run_dir.join("results.json"), copy.join("results.json")).unwrap();
    assert_success(&attnbench(&["report", copy.to_str().unwrap()]));
    assert_same_files(&written, &outputs(&copy));

    // Over the run's own directory, with a stale chart: the same files, the stale one gone.
    fs::write(run_dir.join("charts/old.svg"), "<svg/>").unwrap();
    assert_success(&attnbench(&["report", run_dir.to_str().unwrap()]));
    assert_same_files(&written, &outputs(&run_dir));
}

/// The results directories committed to the repository (by git; local runs such as
/// `results/smoke/` are ignored), or every one on disk outside a git checkout.
fn committed_results() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = std::process::Command::new("git")
        .args(["ls-files", "--", "results/*/results.json"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let mut names: Vec<String> = match listed {
        Some(text) if !text.trim().is_empty() => text
            .lines()
            .filter_map(|l| l.split('/').nth(1).map(str::to_string))
            .collect(),
        _ => fs::read_dir(root.join("results"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("results.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    };
    names.sort();
    names
}

#[test]
fn committed_tables_charts_and_index_regenerate_from_their_json() {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    let names = committed_results();
    assert!(!names.is_empty(), "no committed results found");
    let copy = scratch("committed").join("results");
    for name in &names {
        fs::create_dir_all(copy.join(name)).unwrap();
        fs::copy(
            results.join(name).join("results.json"),
            copy.join(name).join("results.json"),
        )
        .unwrap();
    }
    fs::copy(results.join("machine.json"), copy.join("machine.json")).unwrap();
    assert_success(&attnbench(&["report", copy.to_str().unwrap()]));
    for name in &names {
        let generated = outputs(&copy.join(name));
        let committed = outputs(&results.join(name));
        assert_eq!(
            committed.keys().collect::<Vec<_>>(),
            generated.keys().collect::<Vec<_>>(),
            "results/{name}: not the files `attnbench report results/` writes"
        );
        for (file, bytes) in &generated {
            assert!(
                committed[file] == *bytes,
                "results/{name}/{file} is not what `attnbench report results/` writes from its \
                 results.json (edited by hand, or the report code changed without regenerating)"
            );
        }
    }
    assert!(
        fs::read(results.join("README.md")).unwrap() == fs::read(copy.join("README.md")).unwrap(),
        "results/README.md is not what `attnbench report results/` writes"
    );
}

/// `text` without the `above_ceiling` lists that begin with `start` (through their `]`).
fn without_ceiling_flags(text: &str, start: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(start) {
        out.push_str(&rest[..at]);
        let end = at + rest[at..].find(']').unwrap() + 1;
        rest = &rest[end..];
    }
    out + rest
}

/// `written` is `committed` written back: the same bytes, or, for a file from before points
/// above their ceiling were flagged, the same once the flags (one per such point) are taken
/// out.
fn assert_written_back(written: &str, committed: &str, flagged: usize, start: &str, what: &str) {
    if written == committed {
        return;
    }
    assert!(
        !committed.contains("above_ceiling"),
        "{what} does not write back as it was"
    );
    assert_eq!(
        written.matches("above_ceiling").count(),
        flagged,
        "{what}: not one flag per point above its ceiling"
    );
    assert!(
        without_ceiling_flags(written, start) == committed,
        "{what} does not write back as it was, but for its flags"
    );
}

#[test]
fn committed_results_files_read_and_write_back_byte_for_byte() {
    // The nested record (step and core summaries) reads the flat `attnbench-results/1` rows
    // and writes them back unchanged: same fields, same order, same nulls, same numbers. A
    // file from before the `above_ceiling` flag gains it, derived from its percentages.
    let results = ResultsFolder::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    let copy = scratch("round_trip");
    for name in committed_results() {
        let committed = results.dir(&name);
        let written = ResultsDir::new(copy.join(&name));
        let read = committed.read_results().unwrap();
        written.write_results(&read).unwrap();
        let flagged = read
            .points
            .iter()
            .filter(|p| !p.above_ceiling().is_empty())
            .count();
        assert_written_back(
            &fs::read_to_string(written.json()).unwrap(),
            &fs::read_to_string(committed.json()).unwrap(),
            flagged,
            ",\n      \"above_ceiling\": [",
            &format!("results/{name}/results.json"),
        );
        // The log, read from a copy (reading may cut a torn last line off the file). A peer's
        // set (tools/peers/pytorch_core.py) has none: it never resumes.
        if !committed.log().exists() {
            assert!(
                read.points.iter().all(|p| !p.is_attnbench()),
                "results/{name} has no points.jsonl"
            );
            continue;
        }
        fs::copy(committed.log(), written.log()).unwrap();
        let lines: Vec<String> = written
            .read_log()
            .unwrap()
            .iter()
            .map(|p| serde_json::to_string(p).unwrap() + "\n")
            .collect();
        // A log written since runs record their grid opens with it: the points follow.
        let log = fs::read_to_string(committed.log()).unwrap();
        let points = match log.split_once('\n') {
            Some((first, rest)) if first.starts_with("{\"grid_hash\"") => rest,
            _ => log.as_str(),
        };
        assert_written_back(
            &lines.concat(),
            points,
            flagged,
            ",\"above_ceiling\":[",
            &format!("results/{name}/points.jsonl"),
        );
    }
}

#[test]
fn a_point_above_its_ceiling_is_flagged_in_the_json_and_the_tables() {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/kv_heads");
    let mut set = ResultsDir::new(&results).read_results().unwrap();
    // The table of the phases in turn divides by the calibration, not by the ideals set here:
    // without one it is left out, and the flags counted below are the roofline's.
    set.machine = None;
    // Every point well under its ceiling, then one step at 105% and one core at exactly 100%.
    for p in &mut set.points {
        p.step.set_ideal(p.step.median_ns.map(|m| 0.5 * m));
        p.core.set_ideal(p.core.median_ns.map(|m| 0.5 * m));
    }
    let decode = set
        .points
        .iter()
        .position(|p| p.mode == attnbench::config::Mode::Decode && p.core.median_ns.is_some())
        .unwrap();
    let p = &mut set.points[decode];
    p.step.set_ideal(Some(1.05 * p.step.median_ns.unwrap()));
    p.core.set_ideal(Some(p.core.median_ns.unwrap()));
    assert_eq!(set.points[decode].above_ceiling(), ["step"]);

    let dir = ResultsDir::new(scratch("above_ceiling"));
    dir.write_results(&set).unwrap();
    let json = fs::read_to_string(dir.json()).unwrap();
    assert_eq!(json.matches("\"above_ceiling\"").count(), 1, "{json}");
    assert!(json.contains("\"above_ceiling\": [\n        \"step\"\n      ]"));
    assert_eq!(dir.read_results().unwrap(), set, "the flag reads back");

    let md = attnbench::report::markdown(&set);
    assert!(md.contains("105.0% ⚠ / 100%"), "{md}");
    assert_eq!(md.matches('⚠').count(), 2, "the cell and the note: {md}");
    assert!(md.contains(
        "⚠ above the calibrated ceiling: calibrate again (`attnbench calibrate`, on a quiet machine)"
    ));
    assert!(md.contains("FLOPs count matmul multiply-adds only"));

    // Nothing above: no flag, no note; what the figures count is said all the same.
    let p = &mut set.points[decode];
    p.step.set_ideal(Some(p.step.median_ns.unwrap()));
    let md = attnbench::report::markdown(&set);
    assert!(!md.contains('⚠'), "{md}");
    assert!(md.contains("attention over the causally visible (query, key) pairs only"));
}

/// Runs `report` on `dir`, expecting a refusal that names `needles`, and that nothing under
/// `watched` changes.
fn assert_refused(dir: &Path, watched: &Path, needles: &[&str]) {
    let before = outputs(watched);
    let out = attnbench(&["report", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: accepted", dir.display());
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert_same_files(&before, &outputs(watched));
}

#[test]
fn bad_directories_are_refused_naming_the_file_and_touch_nothing() {
    let dir = scratch("bad");
    let good_json = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("results/kv_heads/results.json"),
    )
    .unwrap();
    let one = dir.join("one");
    fs::create_dir_all(&one).unwrap();
    fs::write(one.join("results.md"), "by hand").unwrap();

    let missing = dir.join("nowhere");
    assert_refused(&missing, &dir, &["nowhere/results.json", "No such file"]);

    assert_refused(&one, &dir, &["one: no results.json"]);

    fs::write(
        one.join("results.json"),
        "{\"format\": \"attnbench-results/1\",\n  \"points\": [}",
    )
    .unwrap();
    assert_refused(
        &one,
        &dir,
        &["one/results.json:2:", "not an attnbench results file"],
    );

    fs::write(
        one.join("results.json"),
        good_json.replace("attnbench-results/1", "attnbench-results/9"),
    )
    .unwrap();
    assert_refused(
        &one,
        &dir,
        &[
            "one/results.json",
            "attnbench-results/9",
            "attnbench-results/1",
        ],
    );

    // A folder of results directories: one bad directory, and the good one is not written.
    let two = dir.join("two");
    fs::create_dir_all(&two).unwrap();
    fs::write(two.join("results.json"), &good_json).unwrap();
    fs::write(two.join("results.md"), "by hand").unwrap();
    assert_refused(&dir, &dir, &["one/results.json", "attnbench-results/9"]);

    let empty = scratch("empty");
    assert_refused(&empty, &empty, &["no results.json"]);
}

#[test]
fn every_sample_round_trips_and_a_file_without_samples_still_loads() {
    let dir = scratch("samples");
    let file = dir.join("tiny.toml");
    fs::write(&file, TINY.replace("seq_len = [4, 9]", "seq_len = [4]")).unwrap();
    let run_dir = ResultsDir::new(dir.join("run"));
    assert_success(&attnbench(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        run_dir.path().to_str().unwrap(),
        "--machine",
        quick_machine(),
        "--quiet",
    ]));
    let results = run_dir.read_results().unwrap();
    for p in &results.points {
        assert!(!p.step.samples_ns.is_empty() && !p.core.samples_ns.is_empty());
    }
    let again = ResultsDir::new(dir.join("again"));
    again.write_results(&results).unwrap();
    assert_eq!(again.read_results().unwrap(), results);
    assert!(
        fs::read(again.json()).unwrap() == fs::read(run_dir.json()).unwrap(),
        "not written back byte for byte"
    );
    // The CSV has no column for them.
    let csv = fs::read_to_string(run_dir.path().join("results.csv")).unwrap();
    assert!(
        !csv.contains("samples_ns"),
        "{}",
        csv.lines().next().unwrap()
    );

    // A file from before samples were kept: the same without them, and it loads.
    let mut json: serde_json::Value =
        serde_json::from_slice(&fs::read(run_dir.json()).unwrap()).unwrap();
    for point in json["points"].as_array_mut().unwrap() {
        let point = point.as_object_mut().unwrap();
        assert!(point.remove("samples_ns").is_some() && point.remove("core_samples_ns").is_some());
    }
    let old = ResultsDir::new(dir.join("old"));
    fs::create_dir_all(old.path()).unwrap();
    fs::write(old.json(), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let loaded = old.read_results().unwrap();
    for (p, q) in loaded.points.iter().zip(&results.points) {
        assert!(p.step.samples_ns.is_empty() && p.core.samples_ns.is_empty());
        assert_eq!(p.step.median_ns, q.step.median_ns);
        assert_eq!(p.core.median_ns, q.core.median_ns);
    }
    assert_success(&attnbench(&["report", old.path().to_str().unwrap()]));
}

/// Runs `report` on `dir`, expecting a refusal that names `file` and gives the operating
/// system's reason exactly once (an error that shows its cause and also returns it as its
/// source gets it printed twice by the command line's `{:#}`).
fn assert_reason_once(dir: &Path, file: &str) {
    let out = attnbench(&["report", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "{}: accepted", dir.display());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{file}: ")), "{stderr}");
    assert_eq!(stderr.matches("(os error").count(), 1, "{stderr}");
}

#[test]
fn a_file_system_error_prints_the_reason_once() {
    let dir = scratch("os_error");
    // Reading: no such directory.
    let missing = dir.join("nonexistent");
    assert_reason_once(&missing, "nonexistent/results.json");
    // Writing: a file stands where the charts folder goes.
    let blocked = dir.join("blocked");
    fs::create_dir_all(&blocked).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("results/kv_heads/results.json"),
        blocked.join("results.json"),
    )
    .unwrap();
    fs::write(blocked.join("charts"), "not a folder").unwrap();
    assert_reason_once(&blocked, "blocked/charts/decode_latency.svg");
}

#[test]
fn a_point_without_a_field_the_tables_show_is_refused_unless_it_failed() {
    let dir = scratch("incomplete");
    let good: serde_json::Value = serde_json::from_slice(
        &fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("results/kv_heads/results.json"))
            .unwrap(),
    )
    .unwrap();
    let index = good["points"]
        .as_array()
        .unwrap()
        .iter()
        .position(|p| p["error"].is_null())
        .unwrap();
    let key = good["points"][index]["key"].as_str().unwrap().to_string();
    let one = dir.join("one");
    fs::create_dir_all(&one).unwrap();
    let write = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut json = good.clone();
        edit(json["points"][index].as_object_mut().unwrap());
        fs::write(one.join("results.json"), json.to_string()).unwrap();
    };
    // The step's summary and the cost fields the tables and charts show (the file has a
    // calibration, so the roofline's too), missing or null.
    for field in [
        "median_ns",
        "mad_ns",
        "min_ns",
        "max_ns",
        "samples",
        "core_median_ns",
        "core_mad_ns",
        "core_samples",
        "core_share_pct",
        "kv_cache_bytes",
        "roofline_pct",
        "core_roofline_pct",
    ] {
        let message = format!("one/results.json: point `{key}` has no `{field}` and no `error`");
        write(&|p| {
            p.remove(field).unwrap();
        });
        assert_refused(&one, &dir, &[&message]);
        write(&|p| {
            p.insert(field.into(), serde_json::Value::Null);
        });
        assert_refused(&one, &dir, &[&message]);
    }
    // A failed point shows `error` instead.
    write(&|p| {
        p.remove("median_ns").unwrap();
        p.insert("error".into(), "cannot allocate".into());
    });
    assert_success(&attnbench(&["report", one.to_str().unwrap()]));
}

/// The trimmed cells of a Markdown table row.
fn cells(row: &str) -> Vec<&str> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// `text` is well-formed SVG: one `<svg>` root holding every element, each tag closed in
/// order (plotters writes no comments, CDATA or unescaped `<` in text).
fn assert_svg(text: &str, what: &str) {
    assert!(
        text.trim_start().starts_with("<svg"),
        "{what}: no <svg> root"
    );
    assert!(
        text.trim_end().ends_with("</svg>"),
        "{what}: root not closed"
    );
    let mut open: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        let end = at
            + rest[at..]
                .find('>')
                .unwrap_or_else(|| panic!("{what}: unclosed <"));
        let tag = &rest[at + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(closing) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop(),
                Some(closing),
                "{what}: </{closing}> closes the wrong tag"
            );
        } else {
            open.push(tag.split_whitespace().next().unwrap_or(tag));
        }
        if open.is_empty() {
            assert!(rest.trim().is_empty(), "{what}: content after the root");
        }
    }
    assert!(open.is_empty(), "{what}: {open:?} left open");
}

/// The stored types of the synthetic set: every KV-cache type with f32 weights, and bf16
/// with bf16 weights; the factors a decode step's time and the cache's bytes take from f32.
const STORED: [(Dtype, WeightDtype, f64, f64); 5] = [
    (Dtype::F32, WeightDtype::F32, 1.0, 1.0),
    (Dtype::Bf16, WeightDtype::F32, 0.55, 0.5),
    (Dtype::F16, WeightDtype::F32, 0.6, 0.5),
    (Dtype::Int8, WeightDtype::F32, 0.35, 0.26),
    (Dtype::Bf16, WeightDtype::Bf16, 0.5, 0.5),
];

/// results/llama3_8b (five variants, decode at 1K to 32K, prefill) in every type of
/// [`STORED`], keys suffixed as the harness suffixes them, a `max_rel_err` on each point:
/// within its bound but for int8 MQA at decode 1024. MHA's narrow types lack context 32768,
/// so the charts against `kv_dtype` are drawn at 16384, the longest every variant has.
fn stored_types_set() -> ResultsFile {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/llama3_8b");
    let mut set = ResultsDir::new(&results).read_results().unwrap();
    let f32_points = std::mem::take(&mut set.points);
    for (kv, w, time, bytes) in STORED {
        for p in &f32_points {
            let narrow = kv != Dtype::F32 || w != WeightDtype::F32;
            if narrow && p.variant == Variant::Mha && p.context == 32768 {
                continue;
            }
            let mut q = p.clone();
            q.kv_dtype = kv;
            q.weight_dtype = w;
            if narrow {
                q.key = format!("{}_kv{kv}_w{w}", p.key);
            }
            // The probes were of the f32 run's moments, not of these made-up points.
            q.read_probe_gbps = None;
            q.matmul_probe_gflops = None;
            q.step.median_ns = p.step.median_ns.map(|m| m * time);
            q.step.mad_ns = p.step.mad_ns.map(|m| m * time);
            q.kv_cache_bytes = p.kv_cache_bytes.map(|b| (b as f64 * bytes) as u64);
            let above = kv == Dtype::Int8 && p.variant == Variant::Mqa && p.context == 1024;
            q.max_rel_err = Some(match (above, accuracy_bound(kv, w)) {
                (true, Some(bound)) => 1.5 * bound,
                (false, Some(bound)) => 0.25 * bound,
                (_, None) => 0.0,
            });
            set.points.push(q);
        }
    }
    set
}

#[test]
fn a_set_of_stored_types_shows_them_in_tables_accuracy_and_charts() {
    let set = stored_types_set();
    let md = markdown(&set);
    assert!(md.contains("KV cache stored in f32, bf16, f16, int8, weights in f32, bf16"));
    // Every table has the types beside the variant, and the types of one variant sit
    // together: GQA's five rows follow each other, f32 first, bf16 weights last.
    let headers: Vec<Vec<&str>> = md
        .split("## Accuracy")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| variant "))
        .map(cells)
        .collect();
    assert_eq!(
        headers.len(),
        11,
        "five tables per mode, and decode's with the phases in turn"
    );
    assert!(
        headers
            .iter()
            .all(|h| h[..3] == ["variant", "kv", "weights"])
    );
    let decode_latency = md
        .split("### decode: latency")
        .nth(1)
        .unwrap()
        .split("###")
        .next()
        .unwrap();
    let gqa: Vec<(&str, &str)> = decode_latency
        .lines()
        .filter(|l| l.starts_with("| gqa "))
        .map(|l| {
            let cells = cells(l);
            (cells[1], cells[2])
        })
        .collect();
    assert_eq!(
        gqa,
        [
            ("f32", "f32"),
            ("bf16", "f32"),
            ("f16", "f32"),
            ("int8", "f32"),
            ("bf16", "bf16")
        ]
    );
    let rows: Vec<&str> = decode_latency
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(2)
        .collect();
    let first_gqa = rows.iter().position(|l| l.starts_with("| gqa ")).unwrap();
    assert!(
        rows[first_gqa..first_gqa + 5]
            .iter()
            .all(|l| l.starts_with("| gqa "))
    );
    // The speed-up is over MHA of the same types: bf16 GQA against bf16 MHA, not f32 MHA.
    let against = md.split("### decode: against MHA").nth(1).unwrap();
    let bf16_mha = against
        .lines()
        .find(|l| l.starts_with("| mha ") && l.contains("| bf16 | f32 "))
        .unwrap();
    assert!(bf16_mha.contains("1.00× / 1.000"), "{bf16_mha}");
    // The roofline's note says how bytes count.
    assert!(
        md.contains("Bytes, each tensor at its stored width"),
        "{md}"
    );
    assert!(!md.contains("Bytes, all f32,"));

    // The accuracy table: a row per point, the bound per type, the one above it flagged.
    let accuracy = md.split("## Accuracy").nth(1).unwrap();
    let rows: Vec<Vec<&str>> = accuracy
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(cells)
        .collect();
    assert_eq!(
        rows[0],
        [
            "variant",
            "mode",
            "length",
            "kv",
            "weights",
            "max_rel_err",
            "bound"
        ]
    );
    // Every point but MHA's four missing at 32768, each type of one variant and length
    // together, f32 first.
    assert_eq!(rows.len() - 1, 35 * 5 - 4, "the header and a row per point");
    let mqa_1024: Vec<&[&str]> = rows
        .iter()
        .filter(|r| r[..3] == ["mqa", "decode", "1024"])
        .map(|r| &r[3..])
        .collect();
    assert_eq!(
        mqa_1024,
        [
            ["f32", "f32", "0.0e0", "—"],
            ["bf16", "f32", "5.0e-3", "2e-2"],
            ["f16", "f32", "5.0e-4", "2e-3"],
            ["int8", "f32", "4.5e-2 ✗", "3e-2"],
            ["bf16", "bf16", "5.0e-3", "2e-2"],
        ]
    );
    let at = rows
        .iter()
        .position(|r| r[..3] == ["mqa", "decode", "1024"])
        .unwrap();
    assert!(
        rows[at..at + 5]
            .iter()
            .all(|r| r[..3] == ["mqa", "decode", "1024"])
    );
    assert_eq!(accuracy.matches('✗').count(), 2, "the cell and the note");
    assert!(accuracy.contains("✗ above its bound: 1 point(s)"));

    // Both charts against kv_dtype, at the longest context every variant has.
    let dir = ResultsDir::new(scratch("stored_types"));
    let files = render(&set).unwrap();
    write_rendered(&dir, &files).unwrap();

    // The CSV: every row has every column; the f32 rows say f32, their error is 0.
    let csv_text = fs::read_to_string(dir.path().join("results.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (kv, w, err) = (
        column("kv_dtype"),
        column("weight_dtype"),
        column("max_rel_err"),
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), set.points.len());
    for (row, p) in rows.iter().zip(&set.points) {
        assert_eq!(row.len(), header.len());
        assert_eq!(
            (&row[kv], &row[w]),
            (p.kv_dtype.name(), p.weight_dtype.name())
        );
        assert_eq!(row[err].parse::<f64>().ok(), p.max_rel_err);
    }
    for (file, title) in [
        (
            "decode_latency_by_kv_dtype.svg",
            "decode latency against kv_dtype at context 16384 (f32 weights)",
        ),
        (
            "kv_cache_by_kv_dtype.svg",
            "KV-cache memory against kv_dtype at context 16384 (f32 weights)",
        ),
    ] {
        assert!(md.contains(&format!("![{title}](charts/{file})")), "{md}");
        let svg = fs::read_to_string(dir.charts().join(file)).unwrap();
        assert_svg(&svg, file);
        for needle in [
            "f32",
            "bf16",
            "f16",
            "int8",
            "kv_dtype",
            "gqa",
            "mla-absorbed",
            title,
        ] {
            assert!(svg.contains(needle), "{file}: no `{needle}`");
        }
        assert!(
            !svg.contains("kv=bf16"),
            "{file}: a line per variant, not per type"
        );
    }
    // The charts per variant name the types, so no two series share a label.
    let latency = fs::read_to_string(dir.charts().join("decode_latency.svg")).unwrap();
    assert_svg(&latency, "decode_latency.svg");
    for needle in [
        "gqa kv8 kv=f32 w=f32",
        "gqa kv8 kv=int8 w=f32",
        "mqa kv=bf16 w=bf16",
    ] {
        assert!(
            latency.contains(needle),
            "decode_latency.svg: no `{needle}`"
        );
    }
}

#[test]
fn a_set_of_f32_shows_no_stored_types() {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/llama3_8b");
    let mut set = ResultsDir::new(&results).read_results().unwrap();
    // Measured accuracy alone does not call for the table: only types other than f32 do.
    for p in &mut set.points {
        p.max_rel_err = Some(0.0);
    }
    let md = markdown(&set);
    for absent in [
        "## Accuracy",
        "| kv ",
        "weights |",
        "kv=f32",
        "by_kv_dtype",
        "stored",
    ] {
        assert!(!md.contains(absent), "`{absent}` in an all-f32 set");
    }
    assert!(md.contains("Bytes, all f32,"));
    assert!(
        chart_plan(&set)
            .iter()
            .all(|c| !c.file.contains("kv_dtype"))
    );
    // One type other than f32, and a set with a single KV-cache type: the columns and the
    // accuracy table, but no chart against kv_dtype (it needs two types to compare).
    for p in &mut set.points {
        p.weight_dtype = WeightDtype::Bf16;
    }
    let md = markdown(&set);
    assert!(md.contains("## Accuracy"));
    assert!(
        md.lines()
            .any(|l| cells(l).starts_with(&["variant", "kv", "weights"]))
    );
    assert!(
        chart_plan(&set)
            .iter()
            .all(|c| !c.file.contains("kv_dtype"))
    );
}

#[test]
fn phases_in_turn_bound_the_step_where_one_is_bound_by_arithmetic_and_the_other_by_memory() {
    use attnbench::config::Mode;
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/llama3_8b");
    let set = ResultsDir::new(&results).read_results().unwrap();
    // A calibration of round figures, so that which phase is bound by what is fixed here.
    let mut machine = set.machine.clone().unwrap();
    let (peak, bandwidth) = (200.0, 40.0);
    let threads = set.points[0].threads;
    machine.matmul_gflops.insert(threads, peak);
    machine.read_gbps.insert(threads, bandwidth);
    let decode = |label: &str| {
        let p = set
            .points
            .iter()
            .find(|p| p.mode == Mode::Decode && p.variant_label() == label && p.context == 32768);
        p.unwrap_or_else(|| panic!("{label} at 32768 in results/llama3_8b"))
    };
    let step_ideal = |p: &attnbench::results::PointResult| {
        machine.ideal_ns(p.flops, p.bytes, p.threads).unwrap()
    };
    for p in &set.points {
        let phases = machine.phases_ideal_ns(p).unwrap();
        assert!(phases >= step_ideal(p), "{}: {phases} ns", p.key);
    }

    // MLA absorbed at 32K: its core is bound by arithmetic, the rest by reading the weights;
    // in turn, their ideals add up, well above the step's.
    let p = decode("mla-absorbed");
    let rest_bytes = (p.bytes - p.kv_cache_bytes_analytic) as f64;
    assert!(p.attention_flops as f64 / peak > p.core_bytes as f64 / bandwidth);
    assert!(rest_bytes / bandwidth > p.projection_flops as f64 / peak);
    let expected = p.attention_flops as f64 / peak + rest_bytes / bandwidth;
    let phases = machine.phases_ideal_ns(p).unwrap();
    assert!(
        (phases - expected).abs() < 1e-9 * expected,
        "{phases} {expected}"
    );
    assert!(phases > 1.2 * step_ideal(p), "{phases} {}", step_ideal(p));
    // MHA at 32K: both read memory, so in turn they read what the step reads, and the queries
    // and head outputs the core passes on.
    let p = decode("mha");
    let reach = step_ideal(p) / machine.phases_ideal_ns(p).unwrap();
    assert!(reach > 0.999 && reach <= 1.0, "{reach}");
    // MLA naive's core reads the expanded keys and values, so the rest keeps the cache read.
    let p = decode("mla-naive");
    assert_eq!(p.rest_bytes(), p.bytes);

    // The table is in results.md where it says something, and only there.
    let md = markdown(&set);
    assert!(
        md.contains("### decode: roofline with the phases in turn"),
        "{md}"
    );
    assert!(
        !md.contains("### prefill: roofline with the phases in turn"),
        "{md}"
    );
    let mut mha = set.clone();
    mha.points.retain(|p| p.variant == Variant::Mha);
    assert!(!markdown(&mha).contains("phases in turn"));
}
