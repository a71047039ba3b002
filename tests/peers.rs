//! The comparison with a peer implementation (docs/peers.md): `validate --json` gives the
//! attention core's shapes of `variants/peers.toml` and `variants/peers_mla.toml` as issue 12
//! names them, and the peer
//! script (`tools/peers/pytorch_core.py`, its NumPy backend, so PyTorch is not needed) writes a
//! results directory that `report` renders and `compare --ignore implementation --metric
//! core` pairs point by point with attnbench's run of the same file.
//!
//! The script needs `python3` with NumPy. Where they are missing the test says so and passes,
//! unless `ATTNBENCH_REQUIRE_NUMPY=1` (CI sets it, after installing NumPy), where it fails.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use attnbench::results::read_results;
use common::{assert_success, attnbench, quick_machine};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `attnbench validate FILE --json`, parsed.
fn grid(file: &Path) -> Value {
    let out = attnbench(&["validate", file.to_str().unwrap(), "--json"]);
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The distinct values of `field` over `points`, as JSON text.
fn distinct(points: &[&Value], field: &str) -> BTreeSet<String> {
    points.iter().map(|p| p[field].to_string()).collect()
}

#[test]
fn the_peers_grids_have_the_issues_core_shapes() {
    let grids: Vec<Value> = ["peers", "peers_mla"]
        .iter()
        .map(|name| {
            let grid = grid(&root().join(format!("variants/{name}.toml")));
            assert_eq!(grid["format"], "attnbench-grid/1");
            assert_eq!(grid["experiment"]["name"], *name);
            assert_eq!(grid["grid_hash"], grid["experiment"]["grid_hash"]);
            assert!(
                grid["grid_hash"].as_str().unwrap().starts_with("fnv1a64:"),
                "{}",
                grid["grid_hash"]
            );
            grid
        })
        .collect();
    let points: Vec<&Value> = grids
        .iter()
        .flat_map(|g| g["points"].as_array().unwrap())
        .collect();
    // The issue's 21 shapes at two thread counts, nothing else.
    assert_eq!(points.len(), 42);
    let threads: BTreeSet<u64> = points
        .iter()
        .map(|p| p["threads"].as_u64().unwrap())
        .collect();
    assert_eq!(threads, BTreeSet::from([1, 2]));
    // The same cache setting on every point, the one the file's comments promise.
    assert_eq!(
        distinct(&points, "flush_caches"),
        BTreeSet::from(["false".into()])
    );
    let core = |p: &Value, f: &str| p["core"][f].as_u64().unwrap() as usize;
    // Decode at 32 heads of 128 over 32 / 8 / 1 KV heads at 512, 2048, 8192: the single
    // query sees the whole cache.
    let mut decode = BTreeSet::new();
    let mut prefill = BTreeSet::new();
    let mut mla = BTreeSet::new();
    for p in &points {
        let (queries, keys) = (core(p, "queries"), core(p, "keys"));
        assert_eq!(p["core"]["causal"], true, "{}", p["key"]);
        assert_eq!(
            core(p, "first_query_position"),
            keys - queries,
            "{}",
            p["key"]
        );
        assert_eq!(p["record"]["key"], p["key"]);
        let (heads, kv) = (core(p, "n_heads"), core(p, "n_kv_heads"));
        let shape = (heads, kv, core(p, "qk_dim"), core(p, "v_dim"));
        let scale = p["core"]["scale"].as_f64().unwrap();
        match (p["variant"].as_str().unwrap(), p["mode"].as_str().unwrap()) {
            ("gqa", mode) => {
                assert_eq!((shape.2, shape.3), (128, 128), "{}", p["key"]);
                assert!((scale - 1.0 / 128f64.sqrt()).abs() < 1e-15);
                assert_eq!(p["core"]["values_in_keys"], false);
                if heads == 32 && mode == "decode" {
                    assert_eq!(
                        (queries, keys - 1),
                        (1, p["context"].as_u64().unwrap() as usize)
                    );
                    decode.insert((kv, keys - 1));
                } else if heads == 32 {
                    assert_eq!(keys, queries, "a prefill from an empty cache");
                    prefill.insert((kv, queries));
                }
            }
            ("mla-absorbed", "decode") if heads == 16 => {
                // 16 heads over one KV "head": the latent row, 512 + 64 for the keys, its
                // first 512 for the values; the scale of the unabsorbed head, 128 + 64.
                assert_eq!(shape, (16, 1, 576, 512), "{}", p["key"]);
                assert_eq!(p["core"]["values_in_keys"], true);
                assert!((scale - 1.0 / 192f64.sqrt()).abs() < 1e-15);
                mla.insert(keys - 1);
            }
            _ => panic!("{} is not one of the issue's shapes", p["key"]),
        }
    }
    let contexts = [512, 2048, 8192];
    let expected: BTreeSet<(usize, usize)> = [32, 8, 1]
        .into_iter()
        .flat_map(|kv| contexts.map(|c| (kv, c)))
        .collect();
    assert_eq!(decode, expected);
    let expected: BTreeSet<(usize, usize)> = [32, 8, 1]
        .into_iter()
        .flat_map(|kv| [128, 512, 2048].map(|s| (kv, s)))
        .collect();
    assert_eq!(prefill, expected);
    assert_eq!(mla, BTreeSet::from(contexts));
}

#[test]
fn validate_without_json_prints_what_it_always_has() {
    let file = root().join("variants/smoke.toml");
    let out = attnbench(&["validate", file.to_str().unwrap()]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .ends_with(": experiment `smoke`, 20 points, 0 skipped"),
        "{text}"
    );
    assert_eq!(
        lines.next().unwrap(),
        "  stored types: kv_dtype f32, weight_dtype f32"
    );
    assert!(!text.contains('{'), "{text}");
}

/// A prefill after cached tokens (the mask aligned to the bottom right), decode, GQA with a
/// group and MLA absorbed, at two thread counts: eighteen quick points.
const TINY: &str = r#"
name = "tiny-peers"
[model]
d_model = 32
n_heads = 4
head_dim = 8
kv_lora_rank = 16
qk_nope_head_dim = 8
qk_rope_head_dim = 4
v_head_dim = 8
[sweep]
variant = ["gqa", "mla"]
mla_path = ["absorbed"]
n_kv_heads = [2, 1]
mode = ["decode", "prefill"]
context = [40]
seq_len = [9]
cache_len = [0, 5]
threads = [1, 2]
[measure]
warmup_iters = 1
min_samples = 3
max_samples = 8
time_budget_ms = 5
"#;

/// `attnbench compare A B ARGS --json`, parsed, and its exit status.
fn compare(a: &Path, b: &Path, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all = vec!["compare", a.to_str().unwrap(), b.to_str().unwrap()];
    all.extend(args);
    all.push("--json");
    let out = attnbench(&all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_numpy_peer_writes_a_results_directory_that_reports_and_pairs_with_attnbench() {
    if !common::numpy_or_skip() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peers");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tiny.toml");
    fs::write(&file, TINY).unwrap();
    let (ours, peer) = (dir.join("attnbench"), dir.join("numpy"));
    assert_success(&attnbench(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        ours.to_str().unwrap(),
        "--machine",
        quick_machine(),
        "--quiet",
    ]));
    let script = root().join("tools/peers/pytorch_core.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&file)
        .args(["--backend", "numpy", "--out"])
        .arg(&peer)
        .args(["--machine", quick_machine(), "--attnbench"])
        .arg(env!("CARGO_BIN_EXE_attnbench"))
        .output()
        .unwrap();
    assert_success(&out);

    // It reads as a results file: every point measured, by the peer, as a core alone.
    let ours_set = read_results(&ours.join("results.json")).unwrap();
    let set = read_results(&peer.join("results.json")).unwrap();
    assert_eq!(set.experiment.grid_hash, ours_set.experiment.grid_hash);
    assert_eq!(set.points.len(), 18);
    assert_eq!(set.points.len(), ours_set.points.len());
    for (p, o) in set.points.iter().zip(&ours_set.points) {
        assert_eq!(p.key, o.key);
        assert_eq!(p.error, None, "{}", p.key);
        assert_eq!(p.implementation, "numpy-matmul");
        assert!(p.is_core_only() && !o.is_core_only(), "{}", p.key);
        assert_eq!((p.flops, p.bytes), (o.attention_flops, o.core_bytes));
        let samples = p.step.samples.unwrap();
        assert!((3..=8).contains(&samples), "{}: {samples} samples", p.key);
        assert_eq!(p.step.samples_ns.len(), samples);
        assert_eq!(p.core.median_ns, p.step.median_ns);
        assert!(
            p.core.roofline_pct.is_some_and(|pct| pct > 0.0),
            "{}",
            p.key
        );
        // The peer's K and V tensors hold what the cache holds, f32, without padding.
        assert_eq!(
            p.kv_cache_bytes,
            Some(o.kv_cache_bytes_analytic),
            "{}",
            p.key
        );
    }
    let env: Value =
        serde_json::from_str(&fs::read_to_string(peer.join("results.json")).unwrap()).unwrap();
    let env = &env["environment"];
    assert_eq!(env["implementation"], "numpy-matmul");
    assert!(env["implementation_versions"]["numpy"].is_string(), "{env}");
    assert_eq!(env["threads"], serde_json::json!([1, 2]));

    // `report` renders it, naming the implementation, with the column in its CSV.
    assert_success(&attnbench(&["report", peer.to_str().unwrap()]));
    let md = fs::read_to_string(peer.join("results.md")).unwrap();
    assert!(md.contains("numpy-matmul"), "{md}");
    let csv = fs::read_to_string(peer.join("results.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.split(',').any(|c| c == "implementation"), "{header}");
    assert_eq!(csv.matches(",numpy-matmul,").count(), 18);

    // Not paired without ignoring the implementation; the step is refused; the cores pair.
    let (code, json, _) = compare(&ours, &peer, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(json["comparison"]["points"].as_array().unwrap().len(), 0);
    let (code, _, err) = compare(&ours, &peer, &["--ignore", "implementation"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--metric core"), "{err}");
    let (code, json, err) = compare(
        &ours,
        &peer,
        &["--ignore", "implementation", "--metric", "core"],
    );
    assert_eq!(code, Some(0), "{err}");
    let c = &json["comparison"];
    assert_eq!(c["settings"]["metric"], "core");
    assert!(c["only_in_a"].as_array().unwrap().is_empty(), "{c}");
    assert!(c["only_in_b"].as_array().unwrap().is_empty(), "{c}");
    let pairs = c["points"].as_array().unwrap();
    assert_eq!(pairs.len(), 18);
    for (pair, o) in pairs.iter().zip(&ours_set.points) {
        assert_eq!(pair["key_a"], o.key.as_str());
        assert_eq!(pair["status"], "compared", "{pair}");
        assert!(pair["step"].is_null(), "a core is not a step: {pair}");
        let core = &pair["core"];
        assert_eq!(core["a"]["median_ns"], o.core.median_ns.unwrap());
        assert!(core["ratio"].as_f64().unwrap() > 0.0);
    }
    let counts = &json["counts"];
    let judged: u64 = ["faster", "slower", "within_noise"]
        .iter()
        .map(|k| counts[k].as_u64().unwrap())
        .sum();
    assert_eq!((judged, counts["failed"].as_u64()), (18, Some(0)));
}
