//! Sharding a grid (`attnbench run --shard`) and merging the pieces (`attnbench merge`): the
//! split is disjoint, covering and balanced by cost; a grid run whole and as three merged
//! shards gives the same points and tables; merge refuses what is not one experiment and
//! writes nothing; `--shard auto` reads Slurm's and Kubernetes' variables; the scheduler
//! examples are well formed.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use attnbench::experiment::{Experiment, Shard, estimated_cost_ns, parse_experiment, split};
use attnbench::report::{IndexEntry, chart_plan, index};
use attnbench::results::{PointResult, ReadError, ResultsFile, read_results};
use common::{TINY, assert_success, attnbench, quick_machine};
use proptest::prelude::*;

fn scratch(name: &str) -> PathBuf {
    common::scratch("shard", name)
}

/// Environment variables, name and value.
type Vars<'a> = &'a [(&'a str, &'a str)];

/// `attnbench run FILE --out OUT --quiet --machine M` plus `extra`, with `env` set and every
/// scheduler variable of the test's own environment removed.
fn run(file: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_attnbench"));
    command.args([
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    command
        .args(["--quiet", "--machine", quick_machine()])
        .args(extra);
    for var in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_STEP",
        "JOB_COMPLETION_INDEX",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn merge(out: &Path, pieces: &[&Path], extra: &[&str]) -> Output {
    let mut args = vec!["merge", out.to_str().unwrap()];
    args.extend(pieces.iter().map(|p| p.to_str().unwrap()));
    args.extend_from_slice(extra);
    args.push("--quiet");
    attnbench(&args)
}

fn results(dir: &Path) -> ResultsFile {
    read_results(&dir.join("results.json")).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The grid run whole, as three shards, and the shards merged: made once for every test.
struct Runs {
    file: PathBuf,
    whole: PathBuf,
    shards: Vec<PathBuf>,
    merged: PathBuf,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = scratch("runs");
        let file = dir.join("tiny.toml");
        fs::write(&file, TINY).unwrap();
        let whole = dir.join("whole");
        assert_success(&run(&file, &whole, &[], &[]));
        let shards: Vec<PathBuf> = (1..=3).map(|k| dir.join(format!("shard{k}"))).collect();
        for (k, out) in shards.iter().enumerate() {
            assert_success(&run(&file, out, &["--shard", &format!("{}/3", k + 1)], &[]));
        }
        let merged = dir.join("merged");
        // In another order than the shards': the merge must not depend on it.
        let order = [&shards[2], &shards[0], &shards[1]].map(|p| p.as_path());
        let out = merge(&merged, &order, &[]);
        assert_success(&out);
        assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
        Runs {
            file,
            whole,
            shards,
            merged,
        }
    })
}

/// A point with what timing decides cleared: the samples, their statistics and rates, and
/// the heap measured around them.
fn untimed(p: &PointResult) -> PointResult {
    let mut p = p.clone();
    p.step = Default::default();
    p.core = Default::default();
    p.tokens_per_s = None;
    p.core_share_pct = None;
    p.peak_transient_bytes = None;
    p.core_peak_transient_bytes = None;
    p.run = None;
    p.read_probe_gbps = None;
    p.matmul_probe_gflops = None;
    p
}

/// The tables from the first section on, every number replaced by `#` and every run of
/// spaces or dashes by one (a column's padding follows its widest figure): what the tables
/// say apart from the figures measured (and the header's dates and runs).
fn tables_without_numbers(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("results.md")).unwrap();
    let tables = &text[text.find("\n## ").expect("a section")..];
    let mut out = String::new();
    let mut in_number = false;
    for c in tables.chars() {
        let digit = c.is_ascii_digit() || (in_number && c == '.');
        let padding = (c == ' ' || c == '-') && out.ends_with(c);
        if digit && !in_number {
            out.push('#');
        } else if !digit && !padding {
            out.push(c);
        }
        in_number = digit;
    }
    out
}

#[test]
fn a_grid_run_whole_and_as_three_merged_shards_gives_the_same_points_and_tables() {
    let runs = runs();
    let (whole, merged) = (results(&runs.whole), results(&runs.merged));
    let pieces: Vec<ResultsFile> = runs.shards.iter().map(|d| results(d)).collect();
    // The shards are disjoint, cover the grid, and record the whole grid's hash.
    let mut keys = BTreeSet::new();
    for (k, piece) in pieces.iter().enumerate() {
        let record = piece.experiment.shard.as_ref().unwrap();
        assert_eq!(record.shard, Shard::new(k + 1, 3).unwrap());
        assert_eq!(record.grid_points, 20);
        assert_eq!(record.positions.len(), piece.points.len());
        assert_eq!(piece.experiment.grid_hash, whole.experiment.grid_hash);
        let md = fs::read_to_string(runs.shards[k].join("results.md")).unwrap();
        let says = format!("Shard {}/3 of the grid", k + 1);
        assert!(md.contains(&says), "{md}");
        for p in &piece.points {
            assert!(keys.insert(p.key.clone()), "{} in two shards", p.key);
        }
    }
    let whole_keys: BTreeSet<String> = whole.points.iter().map(|p| p.key.clone()).collect();
    assert_eq!(keys, whole_keys);
    // The merge: every point in grid order, each naming the run (shard) that measured it.
    assert_eq!(merged.experiment.grid_hash, whole.experiment.grid_hash);
    assert_eq!(merged.experiment.points_planned, 20);
    assert_eq!(merged.experiment.shard, None);
    let shards: Vec<_> = merged.runs.iter().map(|r| r.shard.unwrap()).collect();
    assert_eq!(
        shards,
        (1..=3)
            .map(|k| Shard::new(k, 3).unwrap())
            .collect::<Vec<_>>()
    );
    assert_eq!(merged.points.len(), whole.points.len());
    for (a, b) in whole.points.iter().zip(&merged.points) {
        assert_eq!(untimed(a), untimed(b));
        let run = &merged.runs[b.run.unwrap()];
        let shard = &pieces[run.shard.unwrap().index - 1];
        assert!(shard.points.iter().any(|p| p
            == &PointResult {
                run: None,
                ..b.clone()
            }));
    }
    // The same tables, charts and CSV columns, apart from the figures timed.
    assert_eq!(
        tables_without_numbers(&runs.whole),
        tables_without_numbers(&runs.merged)
    );
    let header = |d: &Path| {
        let csv = fs::read_to_string(d.join("results.csv")).unwrap();
        csv.lines().next().unwrap().to_string()
    };
    assert_eq!(header(&runs.whole), header(&runs.merged));
    let charts = |d: &Path| -> BTreeSet<_> {
        fs::read_dir(d.join("charts"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    assert_eq!(charts(&runs.whole), charts(&runs.merged));
    let md = fs::read_to_string(runs.merged.join("results.md")).unwrap();
    assert!(
        md.contains("Merged by `attnbench merge` from 3 runs: shard 1/3"),
        "{md}"
    );
    assert!(!md.contains("machine 2"), "one machine, one group: {md}");
}

/// Copies a results directory's `results.json` into a fresh directory, edited by `edit`.
fn edited_copy(from: &Path, to: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = scratch(to);
    let text = fs::read_to_string(from.join("results.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut json);
    fs::write(dir.join("results.json"), json.to_string()).unwrap();
    dir
}

/// Asserts that a merge into a fresh directory failed naming `needles`, and wrote nothing.
fn assert_refused(name: &str, pieces: &[&Path], extra: &[&str], needles: &[&str]) {
    let out_dir = scratch(&format!("refused-{name}")).join("out");
    let out = merge(&out_dir, pieces, extra);
    assert!(!out.status.success(), "{name}: merged");
    let message = stderr(&out);
    for needle in needles {
        assert!(
            message.contains(needle),
            "{name}: `{needle}` not in {message}"
        );
    }
    assert!(
        !out_dir.exists(),
        "{name}: a refused merge wrote {out_dir:?}"
    );
}

#[test]
fn merge_refuses_other_experiments_revisions_and_overlaps_writing_nothing() {
    let runs = runs();
    let [a, b, c] = [0, 1, 2].map(|i| runs.shards[i].as_path());
    // Another experiment: the same file with one more context, so another grid.
    let other_dir = scratch("other");
    let other_file = other_dir.join("tiny.toml");
    fs::write(
        &other_file,
        TINY.replace("context = [16, 33]", "context = [16, 33, 40]")
            .replace(
                "variant = [\"mha\", \"mqa\", \"gqa\", \"mla\"]",
                "variant = [\"mqa\"]",
            ),
    )
    .unwrap();
    let other = other_dir.join("shard");
    assert_success(&run(&other_file, &other, &["--shard", "2/3"], &[]));
    let hash = results(&other).experiment.grid_hash.unwrap();
    assert_refused(
        "different",
        &[a, &other, c],
        &[],
        &["is not the same experiment", &hash, "shard"],
    );
    // The same shard twice, and a shard beside the whole run, overlap.
    assert_refused("twice", &[a, b, a], &[], &["is in both", "pieces overlap"]);
    assert_refused("whole", &[&runs.whole, b], &[], &["is in both"]);
    // Another revision of attnbench.
    let rebuilt = edited_copy(b, "rebuilt", |j| {
        j["environment"]["git_revision"] = "0123456789abcdef".into();
    });
    assert_refused(
        "revision",
        &[a, &rebuilt, c],
        &[],
        &["0123456789abcdef", "same revision"],
    );
    // A file from before grids were recorded.
    let old = edited_copy(b, "old", |j| {
        j["experiment"].as_object_mut().unwrap().remove("grid_hash");
    });
    assert_refused("old", &[a, &old], &[], &["records no grid_hash"]);
    // A missing shard is an error only when asked.
    assert_refused(
        "complete",
        &[a, c],
        &["--complete"],
        &["shard(s) 2/3 not given"],
    );
}

#[test]
fn merge_writes_what_exists_and_warns_of_the_missing_points() {
    let runs = runs();
    let out_dir = scratch("partial").join("out");
    let out = merge(&out_dir, &[&runs.shards[0], &runs.shards[2]], &[]);
    assert_success(&out);
    let held = results(&runs.shards[0]).points.len() + results(&runs.shards[2]).points.len();
    let missing = 20 - held;
    let warning = stderr(&out);
    assert!(
        warning.contains(&format!("warning: {missing} of 20 grid points missing")),
        "{warning}"
    );
    assert!(warning.contains("shard(s) 2/3 not given"), "{warning}");
    let merged = results(&out_dir);
    assert_eq!(merged.points.len(), held);
    let md = fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(md.contains(&format!("{missing} of the grid's 20 points are missing")));
    // An incomplete merge cannot be a piece: where its points sit is no longer recorded.
    assert_refused(
        "incomplete",
        &[&out_dir, &runs.shards[1]],
        &[],
        &["incomplete merge"],
    );
    // Over existing results only with --force.
    let again = merge(&out_dir, &[&runs.shards[1]], &[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"));
}

#[test]
fn a_set_from_several_machines_is_grouped_by_machine_in_its_tables() {
    let runs = runs();
    let elsewhere = edited_copy(&runs.shards[1], "elsewhere", |j| {
        j["environment"]["cpu_model"] = "Other CPU".into();
    });
    let out_dir = scratch("machines").join("out");
    assert_success(&merge(
        &out_dir,
        &[&runs.shards[0], &elsewhere, &runs.shards[2]],
        &[],
    ));
    let merged = results(&out_dir);
    let groups = merged.machine_groups();
    assert_eq!(groups.len(), 2);
    for (env, points) in &groups {
        for p in points {
            assert_eq!(merged.environment_of(p).cpu_model, env.cpu_model);
        }
    }
    let other = &groups
        .iter()
        .find(|(e, _)| e.cpu_model == "Other CPU")
        .unwrap()
        .1;
    assert_eq!(other.len(), results(&runs.shards[1]).points.len());
    let md = fs::read_to_string(out_dir.join("results.md")).unwrap();
    for needle in [
        "on 2 machines (listed below)",
        "The runs span 2 machines",
        "- machine 2: Other CPU",
        "## decode on machine 1",
        "### prefill on machine 2: latency",
    ] {
        assert!(md.contains(needle), "`{needle}` not in {md}");
    }
    // The index names the machines' count, not the first machine.
    let charts = chart_plan(&merged);
    let entry = IndexEntry {
        name: "tiny",
        results: &merged,
        charts: &charts,
    };
    let listing = index(&[entry], None);
    assert!(listing.contains("| 2 machines |"), "{listing}");
    // A report regenerates the same tables from the merged JSON alone.
    assert_success(&attnbench(&["report", out_dir.to_str().unwrap()]));
    assert_eq!(fs::read_to_string(out_dir.join("results.md")).unwrap(), md);
    // A point naming a run the file does not list is refused on reading.
    let bad = edited_copy(&out_dir, "badrun", |j| j["points"][0]["run"] = 7.into());
    match read_results(&bad.join("results.json")) {
        Err(ReadError::UnknownRun {
            run: 7, runs: 3, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn shard_auto_reads_slurm_and_kubernetes_and_refuses_bad_values() {
    let runs = runs();
    let dir = scratch("auto");
    let shard_of = |out: &Path| results(out).experiment.shard.unwrap();
    let expected = results(&runs.shards[1]).experiment.shard.unwrap();
    // Slurm: --array=4-6, task 5 is shard 2 of 3.
    let slurm = dir.join("slurm");
    let vars = [
        ("SLURM_ARRAY_TASK_ID", "5"),
        ("SLURM_ARRAY_TASK_MIN", "4"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ];
    assert_success(&run(&runs.file, &slurm, &["--shard", "auto"], &vars));
    assert_eq!(shard_of(&slurm), expected);
    // Kubernetes: completion index 1 (0-based) of 3.
    let k8s = dir.join("k8s");
    let vars = [("JOB_COMPLETION_INDEX", "1")];
    assert_success(&run(&runs.file, &k8s, &["--shard", "auto/3"], &vars));
    assert_eq!(shard_of(&k8s), expected);
    // A shard resumes: nothing left to measure.
    let again = run(&runs.file, &k8s, &["--shard", "2/3", "--resume"], &[]);
    assert_success(&again);
    assert!(stderr(&again).contains(&format!("({} resumed", expected.positions.len())));
    // Another shard into it is refused, naming both.
    let other = run(&runs.file, &k8s, &["--shard", "1/3", "--resume"], &[]);
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("holds shard 2/3, not shard 1/3"),
        "{}",
        stderr(&other)
    );

    let refused = dir.join("refused");
    let cases: [(&str, Vars, &[&str]); 7] = [
        ("0/3", &[], &["--shard", "0/3", "1 to 3"]),
        ("4/3", &[], &["--shard", "4/3", "1 to 3"]),
        ("x/y", &[], &["--shard", "x/y", "`x` is not a whole number"]),
        (
            "auto",
            &[],
            &["--shard auto", "neither SLURM_ARRAY_TASK_ID"],
        ),
        (
            "auto",
            &[("JOB_COMPLETION_INDEX", "1")],
            &["JOB_COMPLETION_INDEX=1", "auto/N"],
        ),
        (
            "auto/3",
            &[("JOB_COMPLETION_INDEX", "3")],
            &["JOB_COMPLETION_INDEX=3", "1 to 3"],
        ),
        (
            "auto",
            &[
                ("SLURM_ARRAY_TASK_ID", "2"),
                ("SLURM_ARRAY_TASK_MIN", "x"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
            &["SLURM_ARRAY_TASK_MIN=\"x\" is not a whole number"],
        ),
    ];
    for (value, env, needles) in cases {
        let out = run(&runs.file, &refused, &["--shard", value], env);
        assert!(!out.status.success(), "--shard {value} {env:?} ran");
        let message = stderr(&out);
        for needle in needles {
            assert!(message.contains(needle), "`{needle}` not in {message}");
        }
        assert!(!refused.exists(), "--shard {value} touched the output");
    }
}

/// An experiment whose points' costs differ by orders of magnitude: `contexts` decode
/// lengths and `seq_lens` prefill lengths over two variants and two thread counts.
fn grid(contexts: &[usize], seq_lens: &[usize]) -> Experiment {
    let list = |v: &[usize]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut modes = Vec::new();
    let mut lengths = String::new();
    if !seq_lens.is_empty() {
        modes.push("\"prefill\"");
        lengths.push_str(&format!("seq_len = [{}]\n", list(seq_lens)));
    }
    if !contexts.is_empty() {
        modes.push("\"decode\"");
        lengths.push_str(&format!("context = [{}]\n", list(contexts)));
    }
    let text = format!(
        "[model]\nd_model = 256\nn_heads = 8\nn_kv_heads = 2\nhead_dim = 32\n[sweep]\n\
         variant = [\"gqa\", \"mha\"]\nmode = [{}]\n{lengths}threads = [1, 2]\n",
        modes.join(", "),
    );
    parse_experiment(&text, "g.toml", "g", 1 << 40).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// For any grid and shard count: the shards are disjoint and cover the grid, the split
    /// is the same when computed again, and no shard's estimated cost exceeds the ideal share
    /// by more than the largest point's.
    #[test]
    fn shards_are_disjoint_covering_and_balanced_by_cost(
        contexts in prop::collection::btree_set(1usize..32_768, 0..6),
        seq_lens in prop::collection::btree_set(1usize..2_048, 0..4),
        count in 1usize..9,
    ) {
        let contexts: Vec<usize> = contexts.into_iter().collect();
        let seq_lens: Vec<usize> = seq_lens.into_iter().collect();
        prop_assume!(!contexts.is_empty() || !seq_lens.is_empty());
        let experiment = grid(&contexts, &seq_lens);
        let (points, measure) = (&experiment.points, &experiment.measure);
        let shards = split(points, measure, count);
        prop_assert_eq!(shards.len(), count);
        prop_assert_eq!(&shards, &split(points, measure, count));
        let mut seen = vec![false; points.len()];
        for shard in &shards {
            for &i in shard {
                prop_assert!(!seen[i], "point {} in two shards", i);
                seen[i] = true;
            }
        }
        prop_assert!(seen.iter().all(|&s| s), "a point in no shard");
        let cost: Vec<f64> = points.iter().map(|p| estimated_cost_ns(p, measure)).collect();
        let total: f64 = cost.iter().sum();
        let largest = cost.iter().copied().fold(0.0, f64::max);
        for (k, shard) in shards.iter().enumerate() {
            let load: f64 = shard.iter().map(|&i| cost[i]).sum();
            prop_assert!(
                load <= total / count as f64 + largest + 1e-6 * total,
                "shard {} of {}: {} > {} / {} + {}", k + 1, count, load, total, count, largest
            );
        }
    }
}

#[test]
fn long_points_are_spread_over_the_shards_not_counted() {
    // Four 32K-context points among twelve short ones: by count, a contiguous split would
    // put the long points together; by cost, each of four shards gets one.
    let experiment = grid(&[16, 32, 64, 128, 256, 512, 32_768], &[]);
    let measure = &experiment.measure;
    let long: BTreeSet<usize> = (experiment.points.iter().enumerate())
        .filter(|(_, p)| p.context == 32_768)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(long.len(), 4);
    for shard in split(&experiment.points, measure, 4) {
        assert_eq!(
            shard.iter().filter(|i| long.contains(i)).count(),
            1,
            "{shard:?}"
        );
    }
    // The split follows the grid, not the order the file lists its lengths in.
    let reordered = grid(&[32_768, 512, 256, 128, 64, 32, 16], &[]);
    let keys = |e: &Experiment, shards: Vec<Vec<usize>>| -> Vec<BTreeSet<String>> {
        shards
            .into_iter()
            .map(|s| s.into_iter().map(|i| e.points[i].key()).collect())
            .collect()
    };
    assert_eq!(
        keys(&experiment, split(&experiment.points, measure, 4)),
        keys(&reordered, split(&reordered.points, &reordered.measure, 4))
    );
}

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

#[test]
fn the_slurm_and_parallel_scripts_pass_bash_n_and_shard() {
    for (script, shard) in [
        ("slurm/attnbench-array.sbatch", "--shard auto"),
        ("parallel/run-shards.sh", "--shard \"{}/$n\""),
    ] {
        let path = example(script);
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(out.status.success(), "{script}: {}", stderr(&out));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(shard), "{script} does not pass {shard}");
        assert!(text.contains("--resume"), "{script}");
    }
    let sbatch = fs::read_to_string(example("slurm/attnbench-array.sbatch")).unwrap();
    assert!(sbatch.starts_with("#!/bin/bash\n"));
    assert!(sbatch.lines().any(|l| l.starts_with("#SBATCH --array=")));
}

#[test]
fn the_kubernetes_manifest_is_an_indexed_job_whose_shard_count_is_its_completions() {
    use yaml_rust2::YamlLoader;
    let text = fs::read_to_string(example("kubernetes/attnbench-job.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert_eq!(job["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(job["kind"].as_str(), Some("Job"));
    assert!(job["metadata"]["name"].as_str().is_some());
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let completions = spec["completions"].as_i64().unwrap();
    let parallelism = spec["parallelism"].as_i64().unwrap();
    assert!(completions >= 1 && (1..=completions).contains(&parallelism));
    let pod = &spec["template"]["spec"];
    // A Job's pods may not restart in place (Always is refused).
    assert!(matches!(
        pod["restartPolicy"].as_str(),
        Some("Never" | "OnFailure")
    ));
    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert!(container["name"].as_str().is_some() && container["image"].as_str().is_some());
    let command: Vec<&str> = container["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(command[..2], ["attnbench", "run"]);
    let at = command.iter().position(|&a| a == "--shard").unwrap();
    assert_eq!(command[at + 1], format!("auto/{completions}"));
    assert!(command.contains(&"--resume"));
}

#[test]
fn a_shard_of_more_shards_than_points_runs_nothing_and_merges() {
    // Two points, three shards: one shard is empty, and still a piece.
    let dir = scratch("empty");
    let file = dir.join("two.toml");
    fs::write(
        &file,
        TINY.replace(
            "variant = [\"mha\", \"mqa\", \"gqa\", \"mla\"]",
            "variant = [\"mqa\"]",
        )
        .replace("mode = [\"prefill\", \"decode\"]", "mode = [\"decode\"]"),
    )
    .unwrap();
    let pieces: Vec<PathBuf> = (1..=3).map(|k| dir.join(format!("s{k}"))).collect();
    for (k, out) in pieces.iter().enumerate() {
        assert_success(&run(&file, out, &["--shard", &format!("{}/3", k + 1)], &[]));
    }
    let sizes: Vec<usize> = pieces.iter().map(|p| results(p).points.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 2);
    assert!(sizes.contains(&0), "{sizes:?}");
    let refs: Vec<&Path> = pieces.iter().map(|p| p.as_path()).collect();
    let out = merge(&dir.join("merged"), &refs, &[]);
    assert_success(&out);
    assert_eq!(results(&dir.join("merged")).points.len(), 2);
}
