//! The resolved grid a run measures, as the run records it: every point's whole configuration
//! and the experiment's settings that change what a point measures, written once as canonical
//! JSON, hashed, and compared with the grid an experiment file gives now, so that `--resume`
//! keeps only points measured as the file now asks.
//!
//! A point's identity is its whole [`Point`]: the layer (every field of its
//! [`LayerSpec`](crate::config::LayerSpec): shape, RoPE base, MLA widths, norm epsilon, path),
//! the mode, the lengths, the batch, the threads and the kernel; and, for the whole grid, the
//! seed of weights and inputs and the sampling settings (all of `measure` but the memory
//! limit). Its display key ([`Point::key`]) names it but leaves most of that out.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::experiment::{Experiment, MeasureSettings, Point};

/// The prefix of a [`Grid::hash`]: the algorithm, so that a reader can tell.
const HASH_PREFIX: &str = "fnv1a64:";

/// The settings of `measure` that change what a point measures, or how its statistics come
/// out: everything but the memory limit, which only decides whether a point may run (and
/// whose default, half of this machine's memory, would make the grid depend on the machine).
/// A resumed point must have been sampled as the others: `results.json` records one set of
/// settings for all of them.
#[derive(Clone, Debug, Serialize)]
struct Sampling {
    warmup_iters: usize,
    warmup_ms: u64,
    min_samples: usize,
    max_samples: usize,
    time_budget_ms: u64,
    flush_caches: bool,
}

impl From<&MeasureSettings> for Sampling {
    fn from(m: &MeasureSettings) -> Self {
        // No `..`: a new setting does not compile until it is sorted in or out here.
        let MeasureSettings {
            warmup_iters,
            warmup_ms,
            min_samples,
            max_samples,
            time_budget_ms,
            memory_limit_bytes: _,
            flush_caches,
        } = *m;
        Self {
            warmup_iters,
            warmup_ms,
            min_samples,
            max_samples,
            time_budget_ms,
            flush_caches,
        }
    }
}

/// A point as the grid records it: its display key (to name it in messages), then its whole
/// configuration.
#[derive(Serialize)]
struct GridPoint<'a> {
    key: String,
    #[serde(flatten)]
    point: &'a Point,
}

/// What is serialised and hashed.
#[derive(Serialize)]
struct GridRecord<'a> {
    seed: u64,
    measure: Sampling,
    points: Vec<GridPoint<'a>>,
}

/// The resolved grid of an experiment: its canonical JSON and the hash of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    json: String,
    hash: String,
}

impl Grid {
    /// The grid `experiment` resolves to.
    pub fn of(experiment: &Experiment) -> Self {
        let record = GridRecord {
            seed: experiment.seed,
            measure: Sampling::from(&experiment.measure),
            points: experiment
                .points
                .iter()
                .map(|point| GridPoint {
                    key: point.key(),
                    point,
                })
                .collect(),
        };
        // Structs serialise their fields in declaration order and numbers by fixed rules
        // (itoa, ryu), so the text is the same on every run and platform; a `Value`'s map
        // order would depend on serde_json's features.
        let json = serde_json::to_string(&record).expect("a grid serialises");
        let hash = format!("{HASH_PREFIX}{:016x}", fnv1a64(json.as_bytes()));
        Self { json, hash }
    }

    /// The hash of the canonical JSON, e.g. `fnv1a64:8d1c4c7a2b9e0f31`: what `results.json`
    /// records as the experiment's `grid_hash`.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The canonical JSON: `{"seed", "measure", "points": [{"key", ...the point}]}`.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The record of this grid that a log opens with.
    pub fn recorded(&self) -> RecordedGrid {
        RecordedGrid {
            grid_hash: self.hash.clone(),
            grid: serde_json::from_str(&self.json).expect("the grid's own JSON parses"),
        }
    }

    /// What differs between `recorded` (the grid a directory was run with) and this one, in
    /// words naming the first difference and how many points differ, e.g. ``point 3
    /// `gqa/decode/ctx4096_h32_kv8_b1_t2` had d_model 512, the file now gives 1024 (points
    /// changed: 8, new: 0, gone: 0)``; `None` when they are the same grid.
    pub fn change_since(&self, recorded: &RecordedGrid) -> Option<String> {
        let now = self.recorded();
        if recorded.grid_hash == now.grid_hash && recorded.grid == now.grid {
            return None;
        }
        Some(
            describe_change(&recorded.grid, &now.grid).unwrap_or_else(|| {
                format!(
                    "its grid_hash is {}, the file's {}",
                    recorded.grid_hash, now.grid_hash
                )
            }),
        )
    }
}

/// A grid as a log records it, on its first line: the hash and the canonical JSON of
/// [`Grid`], parsed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedGrid {
    /// [`Grid::hash`].
    pub grid_hash: String,
    /// [`Grid::json`], parsed.
    pub grid: Value,
}

/// The 64-bit FNV-1a hash of `bytes`: fixed by its definition (offset basis and prime below),
/// so the same bytes hash the same on every platform and with every build.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The first difference between two grid records, in words: the seed, else a sampling
/// setting, else the first point of the file whose configuration changed (matched by key),
/// else the first point new to the grid, else the first one no longer in it; then how many
/// points changed, are new and are gone. `None` when none is found.
fn describe_change(was: &Value, now: &Value) -> Option<String> {
    if was["seed"] != now["seed"] {
        return Some(format!(
            "seed was {}, the file now gives {}",
            show(&was["seed"]),
            show(&now["seed"])
        ));
    }
    if let Some((field, a, b)) = first_difference(&was["measure"], &now["measure"]) {
        return Some(format!(
            "measure.{field} was {}, the file now gives {}",
            show(a),
            show(b)
        ));
    }
    let empty = Vec::new();
    let was = was["points"].as_array().unwrap_or(&empty);
    let now = now["points"].as_array().unwrap_or(&empty);
    let key = |p: &Value| show(&p["key"]);
    let recorded: HashMap<String, &Value> = was.iter().map(|p| (key(p), p)).collect();
    let current: HashSet<String> = now.iter().map(key).collect();
    let mut changed = Vec::new();
    let mut new = Vec::new();
    for (i, point) in now.iter().enumerate() {
        let name = format!("point {} `{}`", i + 1, key(point));
        match recorded.get(&key(point)) {
            None => new.push(format!("{name} is new")),
            Some(&old) if old != point => changed.push(match first_difference(old, point) {
                Some((field, a, b)) => format!(
                    "{name} had {field} {}, the file now gives {}",
                    show(a),
                    show(b)
                ),
                None => format!("{name} differs"),
            }),
            Some(_) => {}
        }
    }
    let gone: Vec<String> = was
        .iter()
        .map(key)
        .filter(|k| !current.contains(k))
        .map(|k| format!("`{k}` is no longer in it"))
        .collect();
    let first = changed.first().or(new.first()).or(gone.first());
    let Some(first) = first else {
        return (was != now).then(|| "the same points, in another order".to_string());
    };
    Some(format!(
        "{first} (points changed: {}, new: {}, gone: {})",
        changed.len(),
        new.len(),
        gone.len()
    ))
}

/// The first leaf where two objects differ, by its own key (`d_model`, not
/// `spec.Grouped.config.d_model`: a point's leaf names are unique), with both values (`Null`
/// for a missing one). `None` when they do not differ or are not objects.
fn first_difference<'v>(a: &'v Value, b: &'v Value) -> Option<(&'v str, &'v Value, &'v Value)> {
    let (Value::Object(x), Value::Object(y)) = (a, b) else {
        return None;
    };
    let keys = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k)));
    for key in keys {
        let (u, v) = (
            x.get(key).unwrap_or(&Value::Null),
            y.get(key).unwrap_or(&Value::Null),
        );
        if u != v {
            return Some(first_difference(u, v).unwrap_or((key, u, v)));
        }
    }
    None
}

/// A value as a message shows it: strings without quotes, `none` for null.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::parse_experiment;

    const FILE: &str = r#"
name = "g"
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
mode = ["decode"]
context = [16, 33]
threads = [1]
[measure]
min_samples = 3
max_samples = 5
flush_caches = false
"#;

    fn grid(text: &str) -> Grid {
        Grid::of(&parse_experiment(text, "g.toml", "g", u64::MAX).unwrap())
    }

    #[test]
    fn fnv1a64_is_the_published_function() {
        // Test vectors of the FNV reference (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_hash_is_fixed_for_a_fixed_grid() {
        // Pinned: the same file must hash the same on every run, platform and build, or every
        // log written before would refuse to resume. A change that must change it (a new
        // field of a point) changes this value on purpose.
        assert_eq!(grid(FILE).hash(), "fnv1a64:498daf780954239a");
        assert_eq!(grid(FILE), grid(FILE));
        // The memory limit decides only whether a point may run: not part of the grid.
        let limited = parse_experiment(FILE, "g.toml", "g", 1 << 40).unwrap();
        assert_eq!(Grid::of(&limited), grid(FILE));
        // Naming the default stored types asks for the same grid.
        let f32 = FILE.replace(
            "threads = [1]",
            "threads = [1]\nkv_dtype = [\"f32\"]\nweight_dtype = [\"f32\"]",
        );
        assert_eq!(grid(&f32), grid(FILE));
    }

    #[test]
    fn a_stored_type_changes_the_hash_and_is_named_as_the_change() {
        let before = grid(FILE).recorded();
        for (axis, value) in [
            ("kv_dtype", "bf16"),
            ("kv_dtype", "int8"),
            ("weight_dtype", "bf16"),
        ] {
            let text = FILE.replace(
                "threads = [1]",
                &format!("threads = [1]\n{axis} = [\"{value}\"]"),
            );
            let now = grid(&text);
            assert_ne!(now.hash(), grid(FILE).hash(), "{axis} {value}");
            // The key changes with the type, so the points are new, not changed.
            let change = now.change_since(&before).unwrap();
            assert!(
                change.contains("(points changed: 0, new: 6, gone: 6)"),
                "{change}"
            );
        }
    }

    #[test]
    fn a_change_is_named_by_the_point_and_the_field() {
        let before = grid(FILE).recorded();
        assert_eq!(grid(FILE).change_since(&before), None);
        let gqa = "point 1 `gqa/decode/ctx16_h4_kv2_b1_t1` had";
        let naive = "`mla-naive/decode/ctx16_h4_b1_t1`";
        let all = "(points changed: 6, new: 0, gone: 0)";
        // (edit of the file, the change named)
        let cases = [
            (
                "d_model = 32",
                "d_model = 64",
                format!("{gqa} d_model 32, the file now gives 64 {all}"),
            ),
            // Fields the display key leaves out.
            (
                "[model]",
                "[model]\nrope_theta = 5e5",
                format!("{gqa} rope_theta 10000.0, the file now gives 500000.0 {all}"),
            ),
            (
                "v_head_dim = 8",
                "v_head_dim = 16",
                format!(
                    "point 3 {naive} had v_head_dim 8, the file now gives 16 \
                     (points changed: 4, new: 0, gone: 0)"
                ),
            ),
            (
                "[model]",
                "seed = 7\n[model]",
                "seed was 0, the file now gives 7".into(),
            ),
            (
                "flush_caches = false",
                "flush_caches = true",
                "measure.flush_caches was false, the file now gives true".into(),
            ),
            (
                "context = [16, 33]",
                "context = [16, 33, 65]",
                "point 3 `gqa/decode/ctx65_h4_kv2_b1_t1` is new \
                 (points changed: 0, new: 3, gone: 0)"
                    .into(),
            ),
            (
                "mode = [\"decode\"]",
                "mode = [\"decode\"]\nmla_path = [\"absorbed\"]",
                format!("{naive} is no longer in it (points changed: 0, new: 0, gone: 2)"),
            ),
            (
                "context = [16, 33]",
                "context = [33, 16]",
                "the same points, in another order".into(),
            ),
        ];
        for (from, to, expected) in cases {
            assert!(FILE.contains(from), "{from}");
            let now = grid(&FILE.replace(from, to));
            assert_eq!(now.change_since(&before).unwrap(), expected, "{to}");
        }
    }
}
