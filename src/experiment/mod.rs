//! Experiment files (`variants/*.toml`): a base layer (a preset of a real model, or explicit
//! fields) and sweep axes, read into private wire structs and turned, with every check, into a
//! grid of points. Nothing runs until the whole file has passed.

mod error;
mod shard;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

pub use crate::presets::{PRESETS_TOML, Preset, preset, presets};
pub use error::ExperimentError;
pub use shard::{
    Shard, ShardError, ShardSpec, env as shard_env, estimated_cost_ns, shard_from_env, split,
};

use crate::config::{
    Dtype, GibError, Kernel, LayerSpec, MlaPath, Mode, ModelField, Precision, Variant, WeightDtype,
    gib_to_bytes, human_bytes,
};
use crate::cost::{MemoryEstimate, checked_core_cost, checked_step_cost, memory_estimate};
use crate::error::Error;
use crate::presets::{MissingField, ModelFields, preset_names};
use error::{at_span, key_at, line_column};
use wire::{ExperimentWire, ModelWire};

/// Most threads a point may ask for.
pub const MAX_THREADS: usize = 1024;

/// Longest experiment name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may name an experiment, and so its results directory: 1 to
/// [`MAX_NAME_LEN`] ASCII letters, digits, `.`, `_` and `-`, the first a letter or digit. No
/// path separator, and never `.`, `..` or a hidden name, so `results/<name>/` stays a fresh
/// folder inside `results/`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.len() <= MAX_NAME_LEN
}

/// One measurement: a layer, a mode, the lengths, the batch and the thread count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// The layer.
    pub spec: LayerSpec,
    /// Prefill or decode.
    pub mode: Mode,
    /// New tokens per sequence: `seq_len` for prefill, 1 for decode.
    pub seq_len: usize,
    /// Tokens already in each sequence's cache: `context` for decode, `cache_len` for prefill.
    pub context: usize,
    /// Sequences.
    pub batch: usize,
    /// Size of the rayon pool the point runs in.
    pub threads: usize,
    /// The attention-core kernel.
    pub kernel: Kernel,
    /// How the cache and the weights are stored; left out of the grid's JSON (and so of its
    /// hash) when f32, so a grid from before the stored types hashes as it did.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Point {
    /// The length the tables sweep: `seq_len` for prefill, `context` for decode.
    pub fn length(&self) -> usize {
        match self.mode {
            Mode::Prefill => self.seq_len,
            Mode::Decode => self.context,
        }
    }

    /// The point's parameters without variant and mode, e.g. `ctx4096_h32_kv8_b1_t2`; a kernel
    /// other than tiled adds `_naive`, a stored type other than f32 `_kvbf16` (cache) or
    /// `_wbf16` (weights).
    pub fn parameters(&self) -> String {
        let mut s = match self.mode {
            Mode::Prefill if self.context > 0 => format!("s{}_cache{}", self.seq_len, self.context),
            Mode::Prefill => format!("s{}", self.seq_len),
            Mode::Decode => format!("ctx{}", self.context),
        };
        s.push_str(&format!("_h{}", self.spec.n_heads()));
        if let LayerSpec::Grouped { config, .. } = &self.spec {
            s.push_str(&format!("_kv{}", config.n_kv_heads));
        }
        s.push_str(&format!("_b{}_t{}", self.batch, self.threads));
        if self.kernel != Kernel::default() {
            s.push_str(&format!("_{}", self.kernel));
        }
        // Only the stored types that are not f32, so that an f32 point keeps its key.
        let Precision {
            kv_dtype,
            weight_dtype,
        } = self.precision;
        if kv_dtype != Dtype::F32 {
            s.push_str(&format!("_kv{kv_dtype}"));
        }
        if weight_dtype != WeightDtype::F32 {
            s.push_str(&format!("_w{weight_dtype}"));
        }
        s
    }

    /// A key unique within an experiment, e.g. `gqa/decode/ctx4096_h32_kv8_b1_t2`; it names
    /// the point in logs, on resume and in criterion.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.spec.label(), self.mode, self.parameters())
    }
}

/// A combination of the grid that is not measured, and why.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Skipped {
    /// What was left out, e.g. `gqa n_heads=32 n_kv_heads=5`.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// How each point is sampled.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct MeasureSettings {
    /// Most warm-up steps.
    pub warmup_iters: usize,
    /// Most warm-up time.
    pub warmup_ms: u64,
    /// Fewest timed samples.
    pub min_samples: usize,
    /// Most timed samples.
    pub max_samples: usize,
    /// Sampling stops once this much time has passed and `min_samples` are taken.
    pub time_budget_ms: u64,
    /// Points whose estimated memory exceeds this are refused before anything runs.
    pub memory_limit_bytes: u64,
    /// Evict the CPU caches before every timed sample (see `harness::CacheFlusher`). Results
    /// written before this setting existed were measured without, hence the serde default.
    #[serde(default)]
    pub flush_caches: bool,
}

impl MeasureSettings {
    /// Warm-up time bound.
    pub fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }

    /// Sampling time bound.
    pub fn time_budget(&self) -> Duration {
        Duration::from_millis(self.time_budget_ms)
    }
}

/// A checked experiment: its grid and what was skipped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    /// Name; the default output directory is `results/<name>/`.
    pub name: String,
    /// What the experiment asks, from the file.
    pub description: String,
    /// The file it was read from.
    pub file: String,
    /// Seed of the weights and inputs.
    pub seed: u64,
    /// Sampling settings.
    pub measure: MeasureSettings,
    /// The points to measure, in order.
    pub points: Vec<Point>,
    /// Combinations left out, with the reason.
    pub skipped: Vec<Skipped>,
}

/// Reads and checks an experiment file. `memory_limit_default` applies when the file does not
/// set `measure.memory_limit_gib`.
pub fn load_experiment(
    path: &Path,
    memory_limit_default: u64,
) -> Result<Experiment, ExperimentError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ExperimentError {
        file: file.clone(),
        location: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_experiment(&text, &file, &stem, memory_limit_default)
}

/// The experiment files in `dir`, sorted: its `*.toml` files except `presets.toml`, which
/// holds presets, not an experiment. Entries that cannot be read are left out.
///
/// # Errors
/// When `dir` cannot be listed.
pub fn experiment_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && p.file_name().is_some_and(|n| n != "presets.toml")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Checks an experiment given as text; `file` names it in errors, `default_name` is used when
/// the file has no `name`.
pub fn parse_experiment(
    text: &str,
    file: &str,
    default_name: &str,
    memory_limit_default: u64,
) -> Result<Experiment, ExperimentError> {
    // A byte-order mark is no part of the TOML: columns and table names count from after it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let wire: ExperimentWire = toml::from_str(text).map_err(|e| {
        let span = e.span();
        ExperimentError {
            file: file.to_string(),
            location: span.as_ref().map(|s| line_column(text, s.start)),
            key: span.and_then(|s| key_at(text, s.start)),
            message: e.message().trim().to_string(),
        }
    })?;
    Builder { text, file }.build(wire, default_name, memory_limit_default)
}

struct Builder<'a> {
    text: &'a str,
    file: &'a str,
}

/// Where a field of the base layer was written: a span of the file (a `[model]` key, or the
/// preset's name) and the key to name in errors.
#[derive(Clone, Debug)]
struct Source {
    span: Range<usize>,
    key: String,
}

/// The base layer's fields after the preset and the overrides, and where each came from.
struct Base {
    fields: ModelFields,
    sources: BTreeMap<ModelField, Source>,
}

/// The sweep lists after their checks and defaults.
struct Axes {
    variants: Vec<Variant>,
    modes: Vec<Mode>,
    mla_paths: Vec<MlaPath>,
    seq_lens: Vec<usize>,
    cache_lens: Vec<usize>,
    contexts: Vec<usize>,
    n_heads: Vec<usize>,
    /// `None`: neither the sweep nor the base layer gives one (GQA then cannot be built).
    n_kv_heads: Option<Vec<usize>>,
    batches: Vec<usize>,
    threads: Vec<usize>,
    kernels: Vec<Kernel>,
    /// Each `kv_dtype` with each `weight_dtype`, in that order.
    precisions: Vec<Precision>,
}

/// Every point, in order: layer, mode, lengths (prefill: each seq_len at each cache_len;
/// decode: each context), batch, threads, kernel, kv_dtype, weight_dtype.
fn grid(specs: &[LayerSpec], axes: &Axes) -> Vec<Point> {
    let mut points = Vec::new();
    for spec in specs {
        for &mode in &axes.modes {
            let lengths: Vec<(usize, usize)> = match mode {
                Mode::Prefill => axes
                    .seq_lens
                    .iter()
                    .flat_map(|&s| axes.cache_lens.iter().map(move |&c| (s, c)))
                    .collect(),
                Mode::Decode => axes.contexts.iter().map(|&c| (1, c)).collect(),
            };
            for &(seq_len, context) in &lengths {
                for &batch in &axes.batches {
                    for &threads in &axes.threads {
                        for &kernel in &axes.kernels {
                            for &precision in &axes.precisions {
                                points.push(Point {
                                    spec: spec.clone(),
                                    mode,
                                    seq_len,
                                    context,
                                    batch,
                                    threads,
                                    kernel,
                                    precision,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    points
}

/// What a swept `n_kv_heads` list does not apply to, noted as skipped: MHA and MQA have
/// their own, MLA has none.
fn unswept_variants(
    variants: &[Variant],
    n_kv_heads: &Option<Spanned<Vec<usize>>>,
) -> Vec<Skipped> {
    if n_kv_heads.as_ref().is_none_or(|l| l.get_ref().len() <= 1) {
        return Vec::new();
    }
    let mut notes = Vec::new();
    for (variant, natural) in [(Variant::Mha, "n_heads"), (Variant::Mqa, "1")] {
        if variants.contains(&variant) {
            notes.push(Skipped {
                what: format!("{variant} at each sweep.n_kv_heads"),
                reason: format!(
                    "{variant} has n_kv_heads = {natural} by definition; measured once per n_heads"
                ),
            });
        }
    }
    if variants.contains(&Variant::Mla) {
        notes.push(Skipped {
            what: "mla at each sweep.n_kv_heads".into(),
            reason:
                "MLA caches one shared latent: n_kv_heads does not apply; measured once per n_heads"
                    .into(),
        });
    }
    notes
}

impl Builder<'_> {
    fn error(&self, span: Range<usize>, key: &str, message: String) -> ExperimentError {
        at_span(self.file, self.text, span, key, message)
    }

    fn base(&self, model: &Spanned<ModelWire>) -> Result<Base, ExperimentError> {
        let m = model.get_ref();
        let mut base = Base {
            fields: ModelFields::default(),
            sources: BTreeMap::new(),
        };
        if let Some(name) = &m.preset {
            let p = preset(name.get_ref()).ok_or_else(|| {
                self.error(
                    name.span(),
                    "model.preset",
                    format!(
                        "unknown preset `{}`; known: {}",
                        name.get_ref(),
                        preset_names()
                    ),
                )
            })?;
            base.fields = ModelFields::of_preset(&p);
            for field in ModelField::ALL
                .into_iter()
                .filter(|&f| base.fields.is_set(f))
            {
                let key = format!("model.preset ({} {field})", p.name);
                let span = name.span();
                base.sources.insert(field, Source { span, key });
            }
        }
        base.fields.overlay(&m.fields());
        for (field, span) in m.spans() {
            let key = format!("model.{field}");
            base.sources.insert(field, Source { span, key });
        }
        if base.fields.d_model.is_none() {
            return Err(self.error(
                model.span(),
                "model",
                "needs `preset` or `d_model` (and the other fields of the variants swept)".into(),
            ));
        }
        Ok(base)
    }

    /// The error for a field the layer needs and the file does not give.
    fn missing(
        &self,
        MissingField(field): MissingField,
        model_span: &Range<usize>,
    ) -> ExperimentError {
        let why = match field {
            ModelField::HeadDim => "the grouped variants need the width of a head",
            ModelField::NKvHeads => "GQA needs n_kv_heads (in [model] or as sweep.n_kv_heads)",
            _ => {
                "MLA needs it (DeepSeek-V2/V3 use kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128)"
            }
        };
        self.error(
            model_span.clone(),
            &format!("model.{field}"),
            format!("missing: {why}"),
        )
    }

    /// A sweep list: present and non-empty, no duplicates, each value at least 1.
    fn axis(
        &self,
        list: &Option<Spanned<Vec<usize>>>,
        key: &str,
        default: Option<Vec<usize>>,
    ) -> Result<Vec<usize>, ExperimentError> {
        self.axis_from(list, key, default, 1)
    }

    /// A sweep list: present (or `default`) and non-empty, no duplicates, each value at least
    /// `min`. A missing list without default is an error without location (the caller adds
    /// the table's).
    fn axis_from(
        &self,
        list: &Option<Spanned<Vec<usize>>>,
        key: &str,
        default: Option<Vec<usize>>,
        min: usize,
    ) -> Result<Vec<usize>, ExperimentError> {
        let Some(list) = list else {
            return default.ok_or_else(|| ExperimentError {
                file: self.file.to_string(),
                location: None,
                key: Some(key.to_string()),
                message: "missing: the modes swept need it".into(),
            });
        };
        let values = list.get_ref();
        if values.is_empty() {
            return Err(self.error(list.span(), key, "must list at least one value".into()));
        }
        let mut seen = BTreeSet::new();
        for &v in values {
            if v < min {
                return Err(self.error(
                    list.span(),
                    key,
                    format!("{v} is not a valid value: must be at least {min}"),
                ));
            }
            if !seen.insert(v) {
                return Err(self.error(list.span(), key, format!("lists {v} twice")));
            }
        }
        Ok(values.clone())
    }

    /// The file's steps in order, each refusing what it cannot take: the base layer, the sweep
    /// axes, the measurement settings, the layer specs, the grid, the memory check, the name.
    fn build(
        &self,
        wire: ExperimentWire,
        default_name: &str,
        memory_limit_default: u64,
    ) -> Result<Experiment, ExperimentError> {
        let base = self.base(&wire.model)?;
        let axes = self.axes(&wire, &base)?;
        let measure = self.measure(&wire.measure, memory_limit_default)?;
        let (specs, skipped) = self.layer_specs(&wire, &base, &axes)?;
        let points = grid(&specs, &axes);
        if points.is_empty() {
            let reasons: Vec<String> = skipped
                .iter()
                .map(|s| format!("{}: {}", s.what, s.reason))
                .collect();
            return Err(self.error(
                wire.sweep.span(),
                "sweep",
                format!("no point left to measure; skipped: {}", reasons.join("; ")),
            ));
        }
        self.check_memory(&points, &measure, &wire.sweep)?;
        Ok(Experiment {
            name: self.name(&wire.name, default_name)?,
            description: wire.description.unwrap_or_default(),
            file: self.file.to_string(),
            seed: wire.seed.unwrap_or(0),
            measure,
            points,
            skipped,
        })
    }

    /// Every sweep list, read and checked, with its default where it has one.
    fn axes(&self, wire: &ExperimentWire, base: &Base) -> Result<Axes, ExperimentError> {
        let sweep = wire.sweep.get_ref();
        let sweep_span = wire.sweep.span();
        let variants = self.distinct(&sweep.variant, "sweep.variant", "variant")?;
        let modes = self.distinct(&sweep.mode, "sweep.mode", "mode")?;
        let mla_paths = match &sweep.mla_path {
            Some(paths) => self.distinct(paths, "sweep.mla_path", "path")?,
            None => MlaPath::ALL.to_vec(),
        };
        // A length list is needed only by the mode that sweeps it.
        let lengths = |mode, list, key| {
            if modes.contains(&mode) {
                self.axis(list, key, None)
                    .map_err(|e| self.locate_missing(e, &sweep_span))
            } else {
                Ok(Vec::new())
            }
        };
        let seq_lens = lengths(Mode::Prefill, &sweep.seq_len, "sweep.seq_len")?;
        let cache_lens = self.axis_from(&sweep.cache_len, "sweep.cache_len", Some(vec![0]), 0)?;
        let contexts = lengths(Mode::Decode, &sweep.context, "sweep.context")?;
        let base_heads = base.fields.n_heads.map(|h| vec![h]);
        let n_heads = self
            .axis(&sweep.n_heads, "sweep.n_heads", base_heads)
            .map_err(|e| self.locate_missing(e, &wire.model.span()))?;
        let n_kv_heads = match (&sweep.n_kv_heads, base.fields.n_kv_heads) {
            (Some(_), _) => Some(self.axis(&sweep.n_kv_heads, "sweep.n_kv_heads", None)?),
            (None, Some(b)) => Some(vec![b]),
            (None, None) => None,
        };
        let batches = self.axis(&sweep.batch, "sweep.batch", Some(vec![1]))?;
        let threads = self.threads(&sweep.threads)?;
        let kernels = self.names(&sweep.kernel, "sweep.kernel", "kernel")?;
        let kv_dtypes = self.names(&sweep.kv_dtype, "sweep.kv_dtype", "kv_dtype")?;
        let weight_dtypes =
            self.names(&sweep.weight_dtype, "sweep.weight_dtype", "weight_dtype")?;
        let precisions = kv_dtypes
            .iter()
            .flat_map(|&kv_dtype| {
                weight_dtypes.iter().map(move |&weight_dtype| Precision {
                    kv_dtype,
                    weight_dtype,
                })
            })
            .collect();
        Ok(Axes {
            variants,
            modes,
            mla_paths,
            seq_lens,
            cache_lens,
            contexts,
            n_heads,
            n_kv_heads,
            batches,
            threads,
            kernels,
            precisions,
        })
    }

    /// An optional list of names, each once, at least one; `[default]` when absent.
    fn names<T: Copy + Default + PartialEq + std::fmt::Display>(
        &self,
        list: &Option<Spanned<Vec<T>>>,
        key: &str,
        what: &str,
    ) -> Result<Vec<T>, ExperimentError> {
        match list {
            Some(list) => self.distinct(list, key, what),
            None => Ok(vec![T::default()]),
        }
    }

    /// The values of a list of names, each once, at least one; `what` names one in the error.
    fn distinct<T: Copy + PartialEq + std::fmt::Display>(
        &self,
        list: &Spanned<Vec<T>>,
        key: &str,
        what: &str,
    ) -> Result<Vec<T>, ExperimentError> {
        unique(list).map_err(|v| {
            self.error(
                list.span(),
                key,
                format!("must list each {what} once and at least one ({v})"),
            )
        })
    }

    /// `sweep.threads`, all cores by default, none above [`MAX_THREADS`].
    fn threads(&self, list: &Option<Spanned<Vec<usize>>>) -> Result<Vec<usize>, ExperimentError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self.axis(list, "sweep.threads", Some(vec![cores]))?;
        if let (Some(list), Some(&t)) = (list, threads.iter().find(|&&t| t > MAX_THREADS)) {
            return Err(self.error(
                list.span(),
                "sweep.threads",
                format!("{t} is more than {MAX_THREADS}"),
            ));
        }
        Ok(threads)
    }

    /// The layers to measure, variant × path × n_heads × n_kv_heads, each checked, in that
    /// order and each once; and the combinations skipped, with the reason.
    fn layer_specs(
        &self,
        wire: &ExperimentWire,
        base: &Base,
        axes: &Axes,
    ) -> Result<(Vec<LayerSpec>, Vec<Skipped>), ExperimentError> {
        let mut specs: Vec<LayerSpec> = Vec::new();
        let mut skipped = Vec::new();
        for &variant in &axes.variants {
            for &heads in &axes.n_heads {
                for (spec, what) in self.candidates(wire, base, axes, variant, heads)? {
                    match self.skip_reason(&spec, wire, base, axes)? {
                        Some(reason) => skipped.push(Skipped { what, reason }),
                        None if !specs.contains(&spec) => specs.push(spec),
                        None => {}
                    }
                }
            }
        }
        skipped.extend(unswept_variants(
            &axes.variants,
            &wire.sweep.get_ref().n_kv_heads,
        ));
        Ok((specs, skipped))
    }

    /// The layers of `variant` with `heads` query heads, unchecked, each with how a skip
    /// names it: MLA once per path, MHA and MQA at their own n_kv_heads, GQA at each listed.
    fn candidates(
        &self,
        wire: &ExperimentWire,
        base: &Base,
        axes: &Axes,
        variant: Variant,
        heads: usize,
    ) -> Result<Vec<(LayerSpec, String)>, ExperimentError> {
        let mut fields = base.fields.clone();
        fields.n_heads = Some(heads);
        let missing = |m| self.missing(m, &wire.model.span());
        if variant == Variant::Mla {
            let config = fields.mla().map_err(missing)?;
            return Ok(axes
                .mla_paths
                .iter()
                .map(|&path| {
                    let config = config.clone();
                    let what = format!("mla-{path} n_heads={heads}");
                    (LayerSpec::Mla { config, path }, what)
                })
                .collect());
        }
        let kv_values: Vec<Option<usize>> = match (variant, &axes.n_kv_heads) {
            (Variant::Mha, _) => vec![Some(heads)],
            (Variant::Mqa, _) => vec![Some(1)],
            (_, Some(list)) => list.iter().map(|&n| Some(n)).collect(),
            (_, None) => vec![None],
        };
        kv_values
            .into_iter()
            .map(|n_kv_heads| {
                fields.n_kv_heads = n_kv_heads;
                let config = fields.grouped(variant).map_err(missing)?;
                let what = format!("{variant} n_heads={heads} n_kv_heads={}", config.n_kv_heads);
                Ok((LayerSpec::Grouped { variant, config }, what))
            })
            .collect()
    }

    /// Why a candidate layer is skipped, `None` to measure it. An invalid shape is skipped
    /// only when a swept value made it (the sweep crosses every n_heads with every
    /// n_kv_heads); one the file fixed is an error at the value. A GQA layer that is MHA or
    /// MQA is skipped when the file measures that variant anyway.
    fn skip_reason(
        &self,
        spec: &LayerSpec,
        wire: &ExperimentWire,
        base: &Base,
        axes: &Axes,
    ) -> Result<Option<String>, ExperimentError> {
        if let Err(Error::InvalidConfig {
            field,
            value,
            reason,
        }) = spec.validate()
        {
            let swept_heads = axes.n_heads.len() > 1;
            let swept = match field.parse() {
                Ok(ModelField::NKvHeads) => {
                    axes.n_kv_heads.as_ref().is_some_and(|l| l.len() > 1) || swept_heads
                }
                Ok(ModelField::NHeads) => swept_heads,
                _ => false,
            };
            let message = format!("`{field}` = {value}: {reason}");
            if !swept {
                let (span, key) = self.field_location(field, base, wire);
                return Err(self.error(span, &key, message));
            }
            return Ok(Some(message));
        }
        let LayerSpec::Grouped {
            variant: Variant::Gqa,
            config,
        } = spec
        else {
            return Ok(None);
        };
        let twin = if config.n_kv_heads == config.n_heads {
            Some(Variant::Mha)
        } else if config.n_kv_heads == 1 {
            Some(Variant::Mqa)
        } else {
            None
        };
        Ok(twin.filter(|t| axes.variants.contains(t)).map(|twin| {
            format!(
                "GQA with n_kv_heads = {} is {twin}, which this file measures as {twin}",
                config.n_kv_heads
            )
        }))
    }

    /// Refuses the first point whose sizes overflow 64-bit arithmetic (at the sweep list that
    /// made it), then the first whose estimated memory is over the limit (at its length list).
    fn check_memory(
        &self,
        points: &[Point],
        measure: &MeasureSettings,
        sweep: &Spanned<wire::SweepWire>,
    ) -> Result<(), ExperimentError> {
        let list_span =
            |list: &Option<Spanned<Vec<usize>>>| list.as_ref().map_or(sweep.span(), |s| s.span());
        for point in points {
            let Some(estimate) = point_sizes(point) else {
                let (key, list) = self.overflow_axis(point, sweep.get_ref());
                return Err(self.error(
                    list_span(list),
                    key,
                    format!(
                        "point {} is too large to count: its FLOPs, bytes or memory pass 2^64; shrink {key}",
                        point.key()
                    ),
                ));
            };
            if estimate.total() <= measure.memory_limit_bytes {
                continue;
            }
            let (key, list) = match point.mode {
                Mode::Prefill => ("sweep.seq_len", &sweep.get_ref().seq_len),
                Mode::Decode => ("sweep.context", &sweep.get_ref().context),
            };
            // Only a point not in f32 holds an f32 reference for its accuracy check.
            let reference = match estimate.reference_bytes {
                0 => String::new(),
                bytes => format!(", f32 reference {}", human_bytes(bytes)),
            };
            return Err(self.error(
                list_span(list),
                key,
                format!(
                    "point {} needs an estimated {} (weights {}, KV cache {}, activations {}, transient {}, matmul workspace {}{reference}), over the memory limit of {}; shrink the point or raise measure.memory_limit_gib",
                    point.key(),
                    human_bytes(estimate.total()),
                    human_bytes(estimate.weights_bytes),
                    human_bytes(estimate.cache_bytes),
                    human_bytes(estimate.activations_bytes),
                    human_bytes(estimate.transient_bytes),
                    human_bytes(estimate.matmul_workspace_bytes),
                    human_bytes(measure.memory_limit_bytes)
                ),
            ));
        }
        Ok(())
    }

    /// The sweep list to blame for a point whose sizes overflow: the first of its lengths,
    /// batch and threads that, at its smallest, makes the point countable; else its mode's
    /// length list.
    fn overflow_axis<'w>(
        &self,
        point: &Point,
        sweep: &'w wire::SweepWire,
    ) -> (&'static str, &'w Option<Spanned<Vec<usize>>>) {
        type Shrink = fn(&mut Point);
        let lengths: &[(&str, Shrink)] = match point.mode {
            Mode::Decode => &[("sweep.context", |p| p.context = 0)],
            Mode::Prefill => &[
                ("sweep.cache_len", |p| p.context = 0),
                ("sweep.seq_len", |p| p.seq_len = 1),
            ],
        };
        let others: &[(&str, Shrink)] = &[
            ("sweep.batch", |p| p.batch = 1),
            ("sweep.threads", |p| p.threads = 1),
        ];
        let blamed = lengths.iter().chain(others).find_map(|&(key, shrink)| {
            let mut smaller = point.clone();
            shrink(&mut smaller);
            point_sizes(&smaller).map(|_| key)
        });
        let key = blamed.unwrap_or(match point.mode {
            Mode::Prefill => "sweep.seq_len",
            Mode::Decode => "sweep.context",
        });
        let list = match key {
            "sweep.context" => &sweep.context,
            "sweep.cache_len" => &sweep.cache_len,
            "sweep.seq_len" => &sweep.seq_len,
            "sweep.batch" => &sweep.batch,
            _ => &sweep.threads,
        };
        (key, list)
    }

    /// The file's `name`, else `default_name` (the file's stem); it names the results
    /// directory, so it must pass [`is_valid_name`]. A bad default is located at the top of
    /// the file, where a `name` would go.
    fn name(
        &self,
        name: &Option<Spanned<String>>,
        default_name: &str,
    ) -> Result<String, ExperimentError> {
        let (value, span, what) = match name {
            Some(n) => (n.get_ref().as_str(), n.span(), ""),
            None => (
                default_name,
                0..0,
                " (the file's name; set `name` to another)",
            ),
        };
        if !is_valid_name(value) {
            return Err(self.error(
                span,
                "name",
                format!(
                    "{value:?}{what} is not a valid experiment name: it names the results directory, so it takes 1 to {MAX_NAME_LEN} ASCII letters, digits, `.`, `_` and `-`, the first a letter or digit"
                ),
            ));
        }
        Ok(value.to_string())
    }

    /// Where a field of the layer came from, for an error: its sweep list, its `[model]` key
    /// or the preset; else the `[model]` table.
    fn field_location(
        &self,
        field: &str,
        base: &Base,
        wire: &ExperimentWire,
    ) -> (Range<usize>, String) {
        let sweep = wire.sweep.get_ref();
        let unlocated = (wire.model.span(), format!("model.{field}"));
        let Ok(field) = field.parse::<ModelField>() else {
            return unlocated;
        };
        let swept = match field {
            ModelField::NHeads => sweep.n_heads.as_ref(),
            ModelField::NKvHeads => sweep.n_kv_heads.as_ref(),
            _ => None,
        };
        if let Some(list) = swept {
            return (list.span(), format!("sweep.{field}"));
        }
        base.sources
            .get(&field)
            .map_or(unlocated, |s| (s.span.clone(), s.key.clone()))
    }

    /// Gives a "missing" error the location of the table it belongs in.
    fn locate_missing(&self, mut e: ExperimentError, span: &Range<usize>) -> ExperimentError {
        if e.location.is_none() {
            e.location = Some(line_column(self.text, span.start));
        }
        e
    }

    fn measure(
        &self,
        m: &wire::MeasureWire,
        memory_limit_default: u64,
    ) -> Result<MeasureSettings, ExperimentError> {
        let get = |v: &Option<Spanned<usize>>, default: usize| {
            v.as_ref().map_or(default, |s| *s.get_ref())
        };
        let get_ms =
            |v: &Option<Spanned<u64>>, default: u64| v.as_ref().map_or(default, |s| *s.get_ref());
        let mut settings = MeasureSettings {
            warmup_iters: get(&m.warmup_iters, 3),
            warmup_ms: get_ms(&m.warmup_ms, 500),
            min_samples: get(&m.min_samples, 5),
            max_samples: get(&m.max_samples, 200),
            time_budget_ms: get_ms(&m.time_budget_ms, 1000),
            memory_limit_bytes: memory_limit_default,
            flush_caches: m.flush_caches.as_ref().is_none_or(|s| *s.get_ref()),
        };
        if let Some(s) = &m.min_samples
            && settings.min_samples == 0
        {
            return Err(self.error(s.span(), "measure.min_samples", "must be at least 1".into()));
        }
        if settings.max_samples < settings.min_samples {
            let span = m
                .max_samples
                .as_ref()
                .or(m.min_samples.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            return Err(self.error(
                span,
                "measure.max_samples",
                format!(
                    "{} is below min_samples = {}",
                    settings.max_samples, settings.min_samples
                ),
            ));
        }
        if let Some(limit) = &m.memory_limit_gib {
            let gib = *limit.get_ref();
            settings.memory_limit_bytes = gib_to_bytes(gib).map_err(|e| {
                let message = match e {
                    GibError::NotPositive => format!("{gib} is not a positive number of GiB"),
                    GibError::TooLarge => format!("{gib} GiB {e}"),
                };
                self.error(limit.span(), "measure.memory_limit_gib", message)
            })?;
        }
        Ok(settings)
    }
}

/// The values of a list, refusing an empty list or a repeated value (returned as text).
fn unique<T: Copy + PartialEq + std::fmt::Display>(
    list: &Spanned<Vec<T>>,
) -> Result<Vec<T>, String> {
    let values = list.get_ref();
    if values.is_empty() {
        return Err("the list is empty".into());
    }
    let mut out: Vec<T> = Vec::new();
    for &v in values {
        if out.contains(&v) {
            return Err(format!("{v} is listed twice"));
        }
        out.push(v);
    }
    Ok(out)
}

/// The point's memory estimate, `None` when it, or the step's or the core's cost that the
/// results record, passes 2^64.
fn point_sizes(point: &Point) -> Option<MemoryEstimate> {
    let (spec, batch, s_q, context) = (&point.spec, point.batch, point.seq_len, point.context);
    let precision = point.precision;
    checked_step_cost(spec, precision, batch, s_q, context)?;
    checked_core_cost(spec, precision, batch, s_q, context)?;
    memory_estimate(
        spec,
        point.kernel,
        precision,
        batch,
        s_q,
        context,
        point.threads,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = "[model]\npreset = \"llama-3-8b\"\n[sweep]\nvariant = [\"gqa\"]\nmode = [\"decode\"]\ncontext = [16]\nthreads = [1]\n";

    fn error(text: &str) -> String {
        parse_experiment(text, "f.toml", "f", u64::MAX / 2)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn experiment_files_are_the_sorted_toml_files_but_the_presets() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("variants");
        let files = experiment_files(&dir).unwrap();
        let names: Vec<&str> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert!(names.contains(&"smoke.toml"), "{names:?}");
        assert!(!names.contains(&"presets.toml"), "{names:?}");
        assert!(names.is_sorted(), "{names:?}");
    }

    #[test]
    fn a_bad_value_from_the_preset_is_located_at_the_preset() {
        let text = LLAMA.replace("[sweep]", "n_heads = 12\n[sweep]");
        assert_eq!(
            error(&text),
            "f.toml:2:10: key `model.preset (llama-3-8b n_kv_heads)`: `n_kv_heads` = 8: must divide n_heads = 12"
        );
    }

    #[test]
    fn a_memory_limit_whose_bytes_overflow_is_refused() {
        let text = format!("{LLAMA}[measure]\nmemory_limit_gib = 1e30\n");
        assert_eq!(
            error(&text),
            "f.toml:9:20: key `measure.memory_limit_gib`: 1000000000000000000000000000000 GiB must be below 2^64 bytes (16 EiB)"
        );
        // A fraction of a GiB, and far above any point's estimate: the estimate counts faer's
        // workspace at three times the last-level cache (900 MiB on a Xeon with 300 MiB of L3),
        // so a small limit would refuse the point on some machines and not on others.
        let text = format!("{LLAMA}[measure]\nmemory_limit_gib = 2048.5\n");
        let experiment = parse_experiment(&text, "f.toml", "f", 1).unwrap();
        assert_eq!(experiment.measure.memory_limit_bytes, 4097 << 29);
    }

    #[test]
    fn a_file_without_the_keys_means_f32_and_keeps_its_keys() {
        let experiment = parse_experiment(LLAMA, "f.toml", "f", u64::MAX / 2).unwrap();
        assert_eq!(experiment.points.len(), 1);
        let point = &experiment.points[0];
        assert!(point.precision.is_f32());
        assert_eq!(point.key(), "gqa/decode/ctx16_h32_kv8_b1_t1");
    }

    #[test]
    fn the_stored_types_multiply_the_grid_and_name_their_points() {
        let text = format!(
            "{LLAMA}kv_dtype = [\"f32\", \"bf16\", \"f16\", \"int8\"]\nweight_dtype = [\"f32\", \"bf16\"]\n"
        );
        let experiment = parse_experiment(&text, "f.toml", "f", u64::MAX / 2).unwrap();
        let keys: Vec<String> = experiment.points.iter().map(Point::key).collect();
        let base = "gqa/decode/ctx16_h32_kv8_b1_t1";
        let expected: Vec<String> = [
            "",
            "_wbf16",
            "_kvbf16",
            "_kvbf16_wbf16",
            "_kvf16",
            "_kvf16_wbf16",
            "_kvint8",
            "_kvint8_wbf16",
        ]
        .iter()
        .map(|suffix| format!("{base}{suffix}"))
        .collect();
        assert_eq!(keys, expected);
        let precisions: Vec<Precision> = experiment.points.iter().map(|p| p.precision).collect();
        assert_eq!(
            precisions[3],
            Precision {
                kv_dtype: Dtype::Bf16,
                weight_dtype: WeightDtype::Bf16
            }
        );
        assert_eq!(precisions.iter().filter(|p| p.is_f32()).count(), 1);
        // One axis alone, the other at its default.
        let int8 = parse_experiment(
            &format!("{LLAMA}kv_dtype = [\"int8\"]\n"),
            "f.toml",
            "f",
            u64::MAX / 2,
        )
        .unwrap();
        assert_eq!(int8.points.len(), 1);
        assert_eq!(
            int8.points[0].precision,
            Precision {
                kv_dtype: Dtype::Int8,
                weight_dtype: WeightDtype::F32
            }
        );
    }

    #[test]
    fn a_bad_stored_type_is_refused_at_its_value_with_the_valid_ones() {
        assert_eq!(
            error(&format!("{LLAMA}kv_dtype = [\"f32\", \"fp4\"]\n")),
            "f.toml:8:20: key `sweep.kv_dtype`: unknown variant `fp4`, expected one of `f32`, `f16`, `bf16`, `int8`"
        );
        // int8 is a cache type only: weights are f32 or bf16.
        assert_eq!(
            error(&format!("{LLAMA}weight_dtype = [\"int8\"]\n")),
            "f.toml:8:17: key `sweep.weight_dtype`: unknown variant `int8`, expected `f32` or `bf16`"
        );
        assert_eq!(
            error(&format!("{LLAMA}kv_dtype = [\"bf16\", \"bf16\"]\n")),
            "f.toml:8:12: key `sweep.kv_dtype`: must list each kv_dtype once and at least one (bf16 is listed twice)"
        );
        assert_eq!(
            error(&format!("{LLAMA}weight_dtype = []\n")),
            "f.toml:8:16: key `sweep.weight_dtype`: must list each weight_dtype once and at least one (the list is empty)"
        );
    }
}
