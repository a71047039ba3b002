//! Property-based tests of what a hostile user controls: experiment files (the committed
//! `variants/*.toml` mutated, and random TOML), results files (the committed
//! `results/*/results.json` mutated byte by byte) and the command line (random argument
//! vectors for `kv`, `validate`, `compare` and `export`, parsed in-process by the binary's
//! own parser, and a smaller number run through the binary). Nothing may panic, and every
//! error must say where the fault is: file:line:column, or the flag.
//!
//! Proptest keeps no failure files (`failure_persistence: None`): a failure prints its case.

mod common;

// The binary's command line, compiled into this test so thousands of argument vectors parse
// in-process; only `Cli`'s parser is used here.
#[allow(dead_code, unused_imports)]
#[path = "../src/cli/mod.rs"]
mod cli;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use attnbench::cost::memory_estimate;
use attnbench::experiment::{experiment_files, is_valid_name, parse_experiment};
use attnbench::results::{ReadError, read_results};
use clap::Parser;
use clap::error::ErrorKind;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// `cases` cases from a fixed seed (every run tries the same cases, so a failure is
/// reproducible and the suite's time is steady), no failure files.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x4a77_e5c4),
        ..Config::default()
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// Experiment files

/// The committed experiment files' texts.
fn experiments() -> &'static [String] {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        experiment_files(&repo().join("variants"))
            .unwrap()
            .iter()
            .map(|f| fs::read_to_string(f).unwrap())
            .collect()
    })
}

/// Keys a file may hold, some misspelled or of the wrong table.
#[rustfmt::skip]
const KEYS: &[&str] = &[
    "name", "description", "seed", "preset", "d_model", "n_heads", "n_kv_heads", "head_dim",
    "rope_theta", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "v_head_dim", "rms_norm_eps", "variant", "mla_path", "mode", "seq_len", "cache_len",
    "context", "batch", "threads", "kernel", "warmup_iters", "warmup_ms", "min_samples",
    "max_samples", "time_budget_ms", "memory_limit_gib", "flush_caches", "kv_dtype",
    "weight_dtype", "contxt", "é", "\"a.b\"",
];

/// Values of every type, in range and far out of it.
#[rustfmt::skip]
const VALUES: &[&str] = &[
    "0", "1", "-1", "2", "7", "8", "64", "1048576", "1048577", "4294967296",
    "4611686018427387903", "9223372036854775807", "18446744073709551615",
    "18446744073709551616", "1e-9", "0.5", "1e300", "-0.0", "nan", "inf", "-inf", "true",
    "\"\"", "\".\"", "\"..\"", "\"../x\"", "\"llama-3-8b\"", "\"deepseek-v3\"", "\"mha\"",
    "\"mla\"", "\"decode\"", "\"prefill\"", "\"naive\"", "\"tiled\"", "\"é\"", "[]", "[0]",
    "[1]", "[1, 1]", "[1, 2]", "[4611686018427387903]", "[18446744073709551615]", "[-1]",
    "[\"mha\", \"mqa\", \"gqa\", \"mla\"]", "[\"prefill\", \"decode\"]", "[\"absorbed\"]",
    "[\"x\"]", "[[1]]", "{}", "{ a = 1 }", "1979-05-27", "\"bf16\"", "[\"int8\"]",
    "[\"f32\", \"bf16\"]", "[\"f16\", \"int8\", \"bf16\"]", "[\"fp4\"]", "[\"bf16\", \"bf16\"]",
];

/// One change to a text, its indices taken modulo what the text has.
#[derive(Clone, Debug)]
enum Edit {
    /// The value of line `line` (when it has `=`) becomes `VALUES[value]`.
    Value { line: usize, value: usize },
    /// The key of line `line` becomes `KEYS[key]`.
    Key { line: usize, key: usize },
    /// Line `line` is removed.
    Delete { line: usize },
    /// Line `line` appears twice.
    Duplicate { line: usize },
    /// `key = value` is inserted before line `line`.
    Add {
        line: usize,
        key: usize,
        value: usize,
    },
    /// The text ends after `per_mille`‰ of its bytes.
    Truncate { per_mille: usize },
    /// `bytes` (as lossy UTF-8) are inserted at `per_mille`‰ of the text.
    Insert { per_mille: usize, bytes: Vec<u8> },
}

fn edit() -> impl Strategy<Value = Edit> {
    let index = 0..1000usize;
    prop_oneof![
        4 => (index.clone(), 0..VALUES.len()).prop_map(|(line, value)| Edit::Value { line, value }),
        2 => (index.clone(), 0..KEYS.len()).prop_map(|(line, key)| Edit::Key { line, key }),
        1 => index.clone().prop_map(|line| Edit::Delete { line }),
        1 => index.clone().prop_map(|line| Edit::Duplicate { line }),
        2 => (index.clone(), 0..KEYS.len(), 0..VALUES.len())
            .prop_map(|(line, key, value)| Edit::Add { line, key, value }),
        1 => index.clone().prop_map(|per_mille| Edit::Truncate { per_mille }),
        1 => (index, proptest::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(per_mille, bytes)| Edit::Insert { per_mille, bytes }),
    ]
}

/// The byte offset at `per_mille`‰ of `text`, moved back to a character boundary.
fn offset(text: &str, per_mille: usize) -> usize {
    let mut at = text.len() * per_mille / 1000;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len().max(1);
    match edit {
        Edit::Value { line, value } => {
            if let Some(l) = lines.get_mut(line % n)
                && let Some((key, _)) = l.split_once('=')
            {
                *l = format!("{key}= {}", VALUES[*value]);
            }
        }
        Edit::Key { line, key } => {
            if let Some(l) = lines.get_mut(line % n)
                && let Some((_, value)) = l.split_once('=')
            {
                *l = format!("{} ={value}", KEYS[*key]);
            }
        }
        Edit::Delete { line } if !lines.is_empty() => {
            lines.remove(line % n);
        }
        Edit::Duplicate { line } if !lines.is_empty() => {
            let l = lines[line % n].clone();
            lines.insert(line % n, l);
        }
        Edit::Add { line, key, value } => {
            lines.insert(line % n, format!("{} = {}", KEYS[*key], VALUES[*value]));
        }
        Edit::Truncate { per_mille } => return text[..offset(text, *per_mille)].to_string(),
        Edit::Insert { per_mille, bytes } => {
            let at = offset(text, *per_mille);
            return format!(
                "{}{}{}",
                &text[..at],
                String::from_utf8_lossy(bytes),
                &text[at..]
            );
        }
        _ => {}
    }
    lines.join("\n") + "\n"
}

/// A committed experiment with a few edits.
fn mutated_experiment() -> impl Strategy<Value = String> {
    (
        0..experiments().len(),
        proptest::collection::vec(edit(), 1..5),
    )
        .prop_map(|(file, edits)| {
            edits
                .iter()
                .fold(experiments()[file].clone(), |text, e| apply(&text, e))
        })
}

/// TOML from scratch: top-level keys, then tables of random keys and values.
fn random_experiment() -> impl Strategy<Value = String> {
    let line = (0..KEYS.len(), 0..VALUES.len())
        .prop_map(|(k, v)| format!("{} = {}\n", KEYS[k], VALUES[v]));
    let table = (
        prop::sample::select(vec!["model", "sweep", "measure", "other", "model.x"]),
        proptest::collection::vec(line.clone(), 0..8),
    )
        .prop_map(|(name, lines)| format!("[{name}]\n{}", lines.concat()));
    (
        proptest::collection::vec(line, 0..3),
        proptest::collection::vec(table, 0..4),
    )
        .prop_map(|(top, tables)| top.concat() + &tables.concat())
}

/// The memory limit the loader checks against: 12 GiB, as on a 24 GiB machine.
const LIMIT: u64 = 12 << 30;

/// The loader's answer to `text`: a grid within the limit, or an error located in the file.
fn check_experiment(text: &str) -> Result<(), TestCaseError> {
    match parse_experiment(text, "f.toml", "f", LIMIT) {
        Ok(experiment) => {
            prop_assert!(is_valid_name(&experiment.name), "{}", experiment.name);
            prop_assert!(!experiment.points.is_empty());
            for p in &experiment.points {
                let e = memory_estimate(
                    &p.spec,
                    p.kernel,
                    p.precision,
                    p.batch,
                    p.seq_len,
                    p.context,
                    p.threads,
                );
                prop_assert!(e.is_some_and(|e| e.total() <= experiment.measure.memory_limit_bytes));
            }
        }
        Err(e) => {
            let shown = e.to_string();
            let (line, column) = e
                .location
                .ok_or_else(|| TestCaseError::fail(format!("unlocated: {shown}")))?;
            prop_assert!(
                (1..=text.lines().count() + 1).contains(&line) && column >= 1,
                "{shown}"
            );
            let prefix = format!("f.toml:{line}:{column}: ");
            prop_assert!(shown.starts_with(&prefix), "{shown}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(4000))]
    #[test]
    fn mutated_experiment_files_are_read_or_refused_at_a_location(text in mutated_experiment()) {
        check_experiment(&text)?;
    }
}

proptest! {
    #![proptest_config(config(2000))]
    #[test]
    fn random_toml_is_read_or_refused_at_a_location(text in random_experiment()) {
        check_experiment(&text)?;
    }
}

// ---------------------------------------------------------------------------------------
// Results files

/// The committed results files' bytes.
fn results_files() -> &'static [Vec<u8>] {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut files: Vec<PathBuf> = fs::read_dir(repo().join("results"))
            .unwrap()
            .map(|e| e.unwrap().path().join("results.json"))
            .filter(|p| p.exists())
            .collect();
        files.sort();
        files.iter().map(|f| fs::read(f).unwrap()).collect()
    })
}

/// JSON values of every type, to put where a value was.
#[rustfmt::skip]
const JSON_VALUES: &[&str] = &[
    "null", "-1", "0", "1e400", "-1e400", "18446744073709551616", "1.5", "true", "\"\"",
    "\"x\"", "[]", "{}", "\"attnbench-results/0\"", "NaN",
];

/// One change to a file's bytes, positions in ‰ of its length.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip {
        per_mille: usize,
        mask: u8,
    },
    Delete {
        per_mille: usize,
        len: usize,
    },
    Insert {
        per_mille: usize,
        bytes: Vec<u8>,
    },
    Truncate {
        per_mille: usize,
    },
    /// The value after the `n`-th `": "` becomes `JSON_VALUES[value]`.
    Value {
        n: usize,
        value: usize,
    },
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let at = 0..1000usize;
    prop_oneof![
        2 => (at.clone(), 1..=255u8).prop_map(|(per_mille, mask)| ByteEdit::Flip { per_mille, mask }),
        1 => (at.clone(), 1..64usize).prop_map(|(per_mille, len)| ByteEdit::Delete { per_mille, len }),
        1 => (at.clone(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(per_mille, bytes)| ByteEdit::Insert { per_mille, bytes }),
        1 => at.prop_map(|per_mille| ByteEdit::Truncate { per_mille }),
        4 => (0..2000usize, 0..JSON_VALUES.len()).prop_map(|(n, value)| ByteEdit::Value { n, value }),
    ]
}

fn apply_bytes(bytes: &mut Vec<u8>, edit: &ByteEdit) {
    let at = |per_mille: usize, len: usize| len * per_mille / 1000;
    match edit {
        ByteEdit::Flip { per_mille, mask } if !bytes.is_empty() => {
            let i = at(*per_mille, bytes.len() - 1);
            bytes[i] ^= mask;
        }
        ByteEdit::Delete { per_mille, len } => {
            let i = at(*per_mille, bytes.len());
            let end = (i + len).min(bytes.len());
            bytes.drain(i..end);
        }
        ByteEdit::Insert {
            per_mille,
            bytes: new,
        } => {
            let i = at(*per_mille, bytes.len());
            bytes.splice(i..i, new.iter().copied());
        }
        ByteEdit::Truncate { per_mille } => bytes.truncate(at(*per_mille, bytes.len())),
        ByteEdit::Value { n, value } => {
            let starts: Vec<usize> = bytes
                .windows(2)
                .enumerate()
                .filter(|(_, w)| w == b": ")
                .map(|(i, _)| i + 2)
                .collect();
            if starts.is_empty() {
                return;
            }
            let start = starts[n % starts.len()];
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b',' || b == b'\n')
                .map_or(bytes.len(), |p| start + p);
            bytes.splice(start..end, JSON_VALUES[*value].bytes());
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(1500))]
    #[test]
    fn mutated_results_files_are_read_or_refused_naming_the_file(
        file in 0..results_files().len(),
        edits in proptest::collection::vec(byte_edit(), 1..4),
    ) {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        let dir = DIR.get_or_init(|| common::scratch("fuzz", "results"));
        let mut bytes = results_files()[file].clone();
        for e in &edits {
            apply_bytes(&mut bytes, e);
        }
        let path = dir.join(format!("{:?}.json", std::thread::current().id()));
        fs::write(&path, &bytes).unwrap();
        if let Err(e) = read_results(&path) {
            let shown = e.to_string();
            prop_assert!(shown.starts_with(&path.display().to_string()), "{shown}");
            if let ReadError::BadJson { line, .. } = e {
                // serde_json's column is 0 at the very start of a line (an end of file
                // after a newline): the line is what locates it.
                let lines = bytes.split(|&b| b == b'\n').count();
                prop_assert!((1..=lines).contains(&line), "{shown}");
                prop_assert!(shown.contains(&format!(":{line}:")), "{shown}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The command line

/// Tokens an argument vector is drawn from: each subcommand's flags, a few that do not
/// exist, and values of every kind.
#[rustfmt::skip]
const FLAGS: &[&str] = &[
    "--preset", "--variant", "--n-layers", "--n-heads", "--n-kv-heads", "--head-dim",
    "--kv-lora-rank", "--qk-rope-head-dim", "--qk-nope-head-dim", "--v-head-dim",
    "--gqa-kv-heads", "--context", "--batch", "--dtype", "--budget-gib", "--params", "--json",
    "--mla-path", "--d-model", "--rope-theta", "--q-lora-rank", "--rms-norm-eps", "--seq-len",
    "--decode-steps", "--seed", "--out", "--ignore", "--noise-k", "--min-change-pct",
    "--fail-above-pct", "--memory-limit-gib", "--bogus", "-x", "--", "--help",
];
#[rustfmt::skip]
const ARG_VALUES: &[&str] = &[
    "0", "1", "2", "3", "8", "16", "-1", "-0.5", "1048577", "4294967296",
    "18446744073709551615", "18446744073709551616", "1e300", "NaN", "inf", "", " ", "x", "mha",
    "mqa", "gqa", "mla", "naive", "absorbed", "f32,bf16", "int8,int8", "threads",
    "threads,kernel", "batch", "llama-3-8b", "mistral-7b-v0.1", "deepseek-v3", "nope",
    "results/targets", "results/kv_heads/results.json", "variants/smoke.toml", "/nonexistent",
];

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => prop::sample::select(FLAGS).prop_map(str::to_string),
        1 => prop::sample::select(ARG_VALUES).prop_map(str::to_string),
        1 => (prop::sample::select(FLAGS), prop::sample::select(ARG_VALUES))
            .prop_map(|(f, v)| format!("{f}={v}")),
    ]
}

fn argv() -> impl Strategy<Value = Vec<String>> {
    (
        prop::sample::select(vec!["kv", "validate", "compare", "export"]),
        proptest::collection::vec(token(), 0..10),
    )
        .prop_map(|(command, rest)| {
            std::iter::once("attnbench".to_string())
                .chain(std::iter::once(command.to_string()))
                .chain(rest)
                .collect()
        })
}

proptest! {
    #![proptest_config(config(5000))]
    #[test]
    fn random_argument_vectors_parse_or_are_refused_naming_the_argument(args in argv()) {
        if let Err(e) = cli::Cli::try_parse_from(&args) {
            let quiet = [
                ErrorKind::DisplayHelp,
                ErrorKind::DisplayVersion,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            ];
            if !quiet.contains(&e.kind()) {
                let shown = e.to_string();
                // clap quotes what it refuses, a flag (`'--n-heads <N_HEADS>'`), a value or
                // an unexpected argument, or lists the missing ones (`--context <TOKENS>`).
                prop_assert!(shown.contains('\'') || shown.contains("--"), "{args:?}: {shown}");
            }
        }
    }
}

/// Runs the binary in the repository (so relative paths to results/ and variants/ resolve);
/// checks it neither panicked nor aborted, and that a refusal names a flag or a file.
fn run_binary(args: &[String]) -> Result<(), TestCaseError> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    prop_assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    let code = out.status.code();
    prop_assert!(
        matches!(code, Some(0..=2)),
        "{args:?}: exit {code:?}: {stderr}"
    );
    if code != Some(0) {
        prop_assert!(
            stderr.contains("--") || stderr.contains('\'') || stderr.contains(".json"),
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}

/// Hostile numbers for the cases run through the binary: small (fast) or refused on any
/// machine. Not 2^20 + 1, which `export` takes as a length it spends minutes on.
#[rustfmt::skip]
const RUN_VALUES: &[&str] = &[
    "0", "1", "2", "3", "4", "8", "16", "-1", "4294967296", "9223372036854775807",
    "18446744073709551615", "NaN", "1e300", "x",
];

/// `kv` plans in microseconds at any size: the largest dimensions and past them too.
#[rustfmt::skip]
const KV_VALUES: &[&str] = &[
    "0", "1", "2", "3", "8", "16", "-1", "1048576", "1048577", "4294967296",
    "18446744073709551615", "NaN", "1e300", "x",
];

/// Up to four `flag value` pairs.
fn flag_values(
    flags: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = Vec<String>> {
    let pair = (prop::sample::select(flags), prop::sample::select(values));
    proptest::collection::vec(pair, 0..5).prop_map(|pairs| {
        pairs
            .into_iter()
            .flat_map(|(f, v)| [f.to_string(), v.to_string()])
            .collect()
    })
}

proptest! {
    #![proptest_config(config(300))]
    #[test]
    fn kv_runs_or_refuses_naming_the_flag(
        model in prop::sample::select(vec!["--preset llama-3-8b", "--preset deepseek-v3", "--variant gqa", "--variant mla", "--variant mha"]),
        flags in flag_values(&["--n-layers", "--n-heads", "--n-kv-heads", "--head-dim", "--kv-lora-rank", "--qk-rope-head-dim", "--qk-nope-head-dim", "--v-head-dim", "--gqa-kv-heads", "--context", "--batch", "--budget-gib", "--params"], KV_VALUES),
    ) {
        let mut args: Vec<String> = ["kv", "--json", "--context", "8"].map(String::from).to_vec();
        args.extend(model.split(' ').map(String::from));
        args.extend(flags);
        run_binary(&args)?;
    }
}

proptest! {
    #![proptest_config(config(200))]
    #[test]
    fn export_runs_or_refuses_naming_the_flag(
        variant in prop::sample::select(vec!["mha", "mqa", "gqa", "mla"]),
        flags in flag_values(&["--d-model", "--n-heads", "--n-kv-heads", "--head-dim", "--kv-lora-rank", "--q-lora-rank", "--qk-nope-head-dim", "--qk-rope-head-dim", "--v-head-dim", "--seq-len", "--decode-steps", "--rope-theta", "--rms-norm-eps"], RUN_VALUES),
    ) {
        let mut args: Vec<String> = ["export", "--variant", variant].map(String::from).to_vec();
        args.extend(flags);
        run_binary(&args)?;
    }
}

proptest! {
    #![proptest_config(config(100))]
    #[test]
    fn compare_runs_or_refuses_naming_the_flag(
        flags in flag_values(&["--noise-k", "--min-change-pct", "--fail-above-pct"], RUN_VALUES),
        ignore in prop::sample::select(vec!["", "threads", "kernel,threads", "batch"]),
    ) {
        let mut args: Vec<String> =
            ["compare", "results/kv_heads", "results/kv_heads/results.json"].map(String::from).to_vec();
        if !ignore.is_empty() {
            args.extend(["--ignore".to_string(), ignore.to_string()]);
        }
        args.extend(flags);
        run_binary(&args)?;
    }
}
