//! Experiment files (`variants/*.toml`): a base layer (a preset of a real model, or explicit
//! fields) and sweep axes, read into private wire structs and turned, with every check, into a
//! grid of points. Nothing runs until the whole file has passed.

mod error;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

pub use crate::presets::{PRESETS_TOML, Preset, preset, presets};
pub use error::ExperimentError;

use crate::config::{
    BYTES_PER_GIB, GibError, Kernel, LayerSpec, MlaPath, Mode, ModelField, Variant, gib_to_bytes,
};
use crate::error::Error;
use crate::presets::{MissingField, ModelFields, preset_names};
use error::{at_span, key_at, line_column};
use wire::{ExperimentWire, ModelWire};

/// Most threads a point may ask for.
pub const MAX_THREADS: usize = 1024;

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
}

impl Point {
    /// The length the tables sweep: `seq_len` for prefill, `context` for decode.
    pub fn length(&self) -> usize {
        match self.mode {
            Mode::Prefill => self.seq_len,
            Mode::Decode => self.context,
        }
    }

    /// The point's parameters without variant and mode, e.g. `ctx4096_h32_kv8_b1_t2`.
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

/// Checks an experiment given as text; `file` names it in errors, `default_name` is used when
/// the file has no `name`.
pub fn parse_experiment(
    text: &str,
    file: &str,
    default_name: &str,
    memory_limit_default: u64,
) -> Result<Experiment, ExperimentError> {
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

    fn build(
        &self,
        wire: ExperimentWire,
        default_name: &str,
        memory_limit_default: u64,
    ) -> Result<Experiment, ExperimentError> {
        let base = self.base(&wire.model)?;
        let model_span = wire.model.span();
        let sweep = wire.sweep.get_ref();
        let sweep_span = wire.sweep.span();

        let variants = unique(&sweep.variant).map_err(|v| {
            self.error(
                sweep.variant.span(),
                "sweep.variant",
                format!("must list each variant once and at least one ({v})"),
            )
        })?;
        let modes = unique(&sweep.mode).map_err(|v| {
            self.error(
                sweep.mode.span(),
                "sweep.mode",
                format!("must list each mode once and at least one ({v})"),
            )
        })?;
        let mla_paths = match &sweep.mla_path {
            Some(paths) => unique(paths).map_err(|v| {
                self.error(
                    paths.span(),
                    "sweep.mla_path",
                    format!("must list each path once and at least one ({v})"),
                )
            })?,
            None => MlaPath::ALL.to_vec(),
        };
        let seq_lens = if modes.contains(&Mode::Prefill) {
            self.axis(&sweep.seq_len, "sweep.seq_len", None)
                .map_err(|e| self.locate_missing(e, &sweep_span))?
        } else {
            Vec::new()
        };
        let cache_lens = self.axis_from(&sweep.cache_len, "sweep.cache_len", Some(vec![0]), 0)?;
        let contexts = if modes.contains(&Mode::Decode) {
            self.axis(&sweep.context, "sweep.context", None)
                .map_err(|e| self.locate_missing(e, &sweep_span))?
        } else {
            Vec::new()
        };
        let base_heads = base.fields.n_heads.map(|h| vec![h]);
        let n_heads = self
            .axis(&sweep.n_heads, "sweep.n_heads", base_heads)
            .map_err(|e| self.locate_missing(e, &model_span))?;
        let n_kv_list = match (&sweep.n_kv_heads, base.fields.n_kv_heads) {
            (Some(_), _) => Some(self.axis(&sweep.n_kv_heads, "sweep.n_kv_heads", None)?),
            (None, Some(b)) => Some(vec![b]),
            (None, None) => None,
        };
        let batches = self.axis(&sweep.batch, "sweep.batch", Some(vec![1]))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self.axis(&sweep.threads, "sweep.threads", Some(vec![cores]))?;
        if let (Some(list), Some(&t)) = (&sweep.threads, threads.iter().find(|&&t| t > MAX_THREADS))
        {
            return Err(self.error(
                list.span(),
                "sweep.threads",
                format!("{t} is more than {MAX_THREADS}"),
            ));
        }

        let kernels = match &sweep.kernel {
            Some(list) => unique(list).map_err(|v| {
                self.error(
                    list.span(),
                    "sweep.kernel",
                    format!("must list each kernel once and at least one ({v})"),
                )
            })?,
            None => vec![Kernel::default()],
        };
        let measure = self.measure(&wire.measure, memory_limit_default)?;
        // Layer specs: variant × path × n_heads × n_kv_heads, each checked.
        let mut specs: Vec<LayerSpec> = Vec::new();
        let mut skipped = Vec::new();
        let swept_heads = n_heads.len() > 1;
        for &variant in &variants {
            for &heads in &n_heads {
                let mut fields = base.fields.clone();
                fields.n_heads = Some(heads);
                let candidates: Vec<(LayerSpec, String)> = match variant {
                    Variant::Mla => {
                        let config = fields.mla().map_err(|m| self.missing(m, &model_span))?;
                        mla_paths
                            .iter()
                            .map(|&path| {
                                (
                                    LayerSpec::Mla {
                                        config: config.clone(),
                                        path,
                                    },
                                    format!("mla-{path} n_heads={heads}"),
                                )
                            })
                            .collect()
                    }
                    _ => {
                        // MHA and MQA have their own n_kv_heads; GQA takes each listed.
                        let kv_values: Vec<Option<usize>> = match (variant, &n_kv_list) {
                            (Variant::Mha, _) => vec![Some(heads)],
                            (Variant::Mqa, _) => vec![Some(1)],
                            (_, Some(list)) => list.iter().map(|&n| Some(n)).collect(),
                            (_, None) => vec![None],
                        };
                        kv_values
                            .into_iter()
                            .map(|n_kv_heads| {
                                fields.n_kv_heads = n_kv_heads;
                                let config = fields
                                    .grouped(variant)
                                    .map_err(|m| self.missing(m, &model_span))?;
                                let what = format!(
                                    "{variant} n_heads={heads} n_kv_heads={}",
                                    config.n_kv_heads
                                );
                                Ok((LayerSpec::Grouped { variant, config }, what))
                            })
                            .collect::<Result<_, ExperimentError>>()?
                    }
                };
                for (spec, what) in candidates {
                    if let Err(Error::InvalidConfig {
                        field,
                        value,
                        reason,
                    }) = spec.validate()
                    {
                        let swept = match field.parse() {
                            Ok(ModelField::NKvHeads) => {
                                n_kv_list.as_ref().is_some_and(|l| l.len() > 1) || swept_heads
                            }
                            Ok(ModelField::NHeads) => swept_heads,
                            _ => false,
                        };
                        if !swept {
                            let (span, key) = self.field_location(field, &base, sweep, &model_span);
                            return Err(self.error(
                                span,
                                &key,
                                format!("`{field}` = {value}: {reason}"),
                            ));
                        }
                        skipped.push(Skipped {
                            what,
                            reason: format!("`{field}` = {value}: {reason}"),
                        });
                        continue;
                    }
                    if let LayerSpec::Grouped {
                        variant: Variant::Gqa,
                        config,
                    } = &spec
                    {
                        let twin = if config.n_kv_heads == config.n_heads {
                            Some(Variant::Mha)
                        } else if config.n_kv_heads == 1 {
                            Some(Variant::Mqa)
                        } else {
                            None
                        };
                        if let Some(twin) = twin.filter(|t| variants.contains(t)) {
                            skipped.push(Skipped {
                                what,
                                reason: format!("GQA with n_kv_heads = {} is {twin}, which this file measures as {twin}", config.n_kv_heads),
                            });
                            continue;
                        }
                    }
                    if !specs.contains(&spec) {
                        specs.push(spec);
                    }
                }
            }
        }
        for (variant, natural) in [(Variant::Mha, "n_heads"), (Variant::Mqa, "1")] {
            if variants.contains(&variant)
                && sweep
                    .n_kv_heads
                    .as_ref()
                    .is_some_and(|l| l.get_ref().len() > 1)
            {
                skipped.push(Skipped {
                    what: format!("{variant} at each sweep.n_kv_heads"),
                    reason: format!("{variant} has n_kv_heads = {natural} by definition; measured once per n_heads"),
                });
            }
        }
        if variants.contains(&Variant::Mla)
            && sweep
                .n_kv_heads
                .as_ref()
                .is_some_and(|l| l.get_ref().len() > 1)
        {
            skipped.push(Skipped {
                what: "mla at each sweep.n_kv_heads".into(),
                reason: "MLA caches one shared latent: n_kv_heads does not apply; measured once per n_heads".into(),
            });
        }

        let mut points = Vec::new();
        for spec in &specs {
            for &mode in &modes {
                let lengths: Vec<(usize, usize)> = match mode {
                    Mode::Prefill => seq_lens
                        .iter()
                        .flat_map(|&s| cache_lens.iter().map(move |&c| (s, c)))
                        .collect(),
                    Mode::Decode => contexts.iter().map(|&c| (1, c)).collect(),
                };
                for &(seq_len, context) in &lengths {
                    for &batch in &batches {
                        for &t in &threads {
                            for &kernel in &kernels {
                                points.push(Point {
                                    spec: spec.clone(),
                                    mode,
                                    seq_len,
                                    context,
                                    batch,
                                    threads: t,
                                    kernel,
                                });
                            }
                        }
                    }
                }
            }
        }
        if points.is_empty() {
            let reasons: Vec<String> = skipped
                .iter()
                .map(|s| format!("{}: {}", s.what, s.reason))
                .collect();
            return Err(self.error(
                sweep_span,
                "sweep",
                format!("no point left to measure; skipped: {}", reasons.join("; ")),
            ));
        }
        for point in &points {
            let estimate = crate::variants::memory_estimate(
                &point.spec,
                point.batch,
                point.seq_len,
                point.context,
                point.threads,
            );
            if estimate.total() > measure.memory_limit_bytes {
                let key = match point.mode {
                    Mode::Prefill => "sweep.seq_len",
                    Mode::Decode => "sweep.context",
                };
                let span = match point.mode {
                    Mode::Prefill => sweep.seq_len.as_ref().map(|s| s.span()),
                    Mode::Decode => sweep.context.as_ref().map(|s| s.span()),
                }
                .unwrap_or(sweep_span.clone());
                return Err(self.error(
                    span,
                    key,
                    format!(
                        "point {} needs an estimated {} (weights {}, KV cache {}, transient {}), over the memory limit of {}; shrink the point or raise measure.memory_limit_gib",
                        point.key(),
                        gib(estimate.total()),
                        gib(estimate.weights_bytes),
                        gib(estimate.cache_bytes),
                        gib(estimate.transient_bytes),
                        gib(measure.memory_limit_bytes)
                    ),
                ));
            }
        }

        let name = match &wire.name {
            Some(n) if n.get_ref().trim().is_empty() || n.get_ref().contains(['/', '\\']) => {
                return Err(self.error(
                    n.span(),
                    "name",
                    "must be a non-empty name without slashes (it names the results directory)"
                        .into(),
                ));
            }
            Some(n) => n.get_ref().clone(),
            None => default_name.to_string(),
        };
        Ok(Experiment {
            name,
            description: wire.description.unwrap_or_default(),
            file: self.file.to_string(),
            seed: wire.seed.unwrap_or(0),
            measure,
            points,
            skipped,
        })
    }

    /// Where a field of the layer came from, for an error: its sweep list, its `[model]` key
    /// or the preset; else the `[model]` table.
    fn field_location(
        &self,
        field: &str,
        base: &Base,
        sweep: &wire::SweepWire,
        model_span: &Range<usize>,
    ) -> (Range<usize>, String) {
        let unlocated = (model_span.clone(), format!("model.{field}"));
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
fn unique<T: Copy + PartialEq + std::fmt::Debug>(list: &Spanned<Vec<T>>) -> Result<Vec<T>, String> {
    let values = list.get_ref();
    if values.is_empty() {
        return Err("the list is empty".into());
    }
    let mut out: Vec<T> = Vec::new();
    for &v in values {
        if out.contains(&v) {
            return Err(format!("{v:?} is listed twice"));
        }
        out.push(v);
    }
    Ok(out)
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / BYTES_PER_GIB as f64)
}
