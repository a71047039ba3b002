//! A point's record as it is on disk: the flat `attnbench-results/1` row, the step's fields
//! unprefixed, the core's prefixed `core_` (and without min and max), then which of them ran
//! above the calibrated ceiling, then every sample's time. Field names and order are the format (JSON keys; the row's are also the CSV
//! columns); the meaning of each is documented on [`PointResult`] and [`Summary`].
//! [`PointResult`] converts through [`PointWire`] (`#[serde(from, into)]`), so the nested
//! record writes exactly these fields.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::point::{DEFAULT_IMPLEMENTATION, PointResult};
use super::summary::Summary;
use crate::config::{Dtype, Kernel, MlaPath, Mode, Variant, WeightDtype};

/// A point in `results.json` and the log: the flat row, the flag of a point above its
/// ceiling, then the samples. The flag and the samples are left out when there are none (a
/// file from before they were kept reads with no samples, and writes back as it was unless a
/// point is above its ceiling).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct PointWire {
    #[serde(flatten)]
    row: PointRow,
    /// Which of `step` and `core` ran above 100% of the calibrated ceiling, left out when
    /// neither did. Derived from the roofline percentages on writing, so that it cannot
    /// disagree with them, and not read back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    above_ceiling: Vec<String>,
    /// Every timed sample of the step, ns, in the order taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    samples_ns: Vec<f64>,
    /// Every timed sample of the core, ns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    core_samples_ns: Vec<f64>,
    /// The run of a merged set that measured the point ([`PointResult::run`]), left out
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<usize>,
    /// The bandwidth probed before the point ([`PointResult::read_probe_gbps`]), left out
    /// when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_probe_gbps: Option<f64>,
    /// The matmul rate probed before the point ([`PointResult::matmul_probe_gflops`]), left
    /// out when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    matmul_probe_gflops: Option<f64>,
}

/// The flat row: every field but the samples, also the CSV's record. A missing `Option` field
/// reads as `None`, as it always has.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct PointRow {
    key: String,
    variant: Variant,
    mla_path: Option<MlaPath>,
    mode: Mode,
    seq_len: usize,
    context: usize,
    batch: usize,
    d_model: usize,
    n_heads: usize,
    n_kv_heads: Option<usize>,
    head_dim: Option<usize>,
    kv_lora_rank: Option<usize>,
    q_lora_rank: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    threads: usize,
    kernel: Kernel,
    // The stored types and the accuracy came after the format: see `LateField`.
    #[serde(default, skip_serializing_if = "LateField::left_out")]
    kv_dtype: LateField<Dtype>,
    #[serde(default, skip_serializing_if = "LateField::left_out")]
    weight_dtype: LateField<WeightDtype>,
    #[serde(default, skip_serializing_if = "LateField::left_out")]
    max_rel_err: LateField<Option<f64>>,
    #[serde(default, skip_serializing_if = "LateField::left_out")]
    implementation: LateField<Implementation>,
    median_ns: Option<f64>,
    mad_ns: Option<f64>,
    min_ns: Option<f64>,
    max_ns: Option<f64>,
    samples: Option<usize>,
    tokens_per_s: Option<f64>,
    flops: u64,
    projection_flops: u64,
    attention_flops: u64,
    bytes: u64,
    gflops: Option<f64>,
    gbps: Option<f64>,
    ideal_ns: Option<f64>,
    roofline_pct: Option<f64>,
    // The core has no min and max on disk.
    core_median_ns: Option<f64>,
    core_mad_ns: Option<f64>,
    core_samples: Option<usize>,
    core_share_pct: Option<f64>,
    core_bytes: u64,
    core_gflops: Option<f64>,
    core_gbps: Option<f64>,
    core_ideal_ns: Option<f64>,
    core_roofline_pct: Option<f64>,
    core_peak_transient_bytes: Option<u64>,
    kv_cache_bytes: Option<u64>,
    kv_cache_bytes_analytic: u64,
    kv_cache_padding_bytes: Option<u64>,
    kv_bytes_per_token: usize,
    peak_transient_bytes: Option<u64>,
    params: usize,
    error: Option<String>,
}

impl From<PointWire> for PointResult {
    fn from(wire: PointWire) -> Self {
        let PointWire {
            row: w,
            above_ceiling: _,
            samples_ns,
            core_samples_ns,
            run,
            read_probe_gbps,
            matmul_probe_gflops,
        } = wire;
        let step = Summary {
            median_ns: w.median_ns,
            mad_ns: w.mad_ns,
            min_ns: w.min_ns,
            max_ns: w.max_ns,
            samples: w.samples,
            gflops: w.gflops,
            gbps: w.gbps,
            ideal_ns: w.ideal_ns,
            roofline_pct: w.roofline_pct,
            samples_ns,
        };
        let core = Summary {
            median_ns: w.core_median_ns,
            mad_ns: w.core_mad_ns,
            min_ns: None,
            max_ns: None,
            samples: w.core_samples,
            gflops: w.core_gflops,
            gbps: w.core_gbps,
            ideal_ns: w.core_ideal_ns,
            roofline_pct: w.core_roofline_pct,
            samples_ns: core_samples_ns,
        };
        Self {
            key: w.key,
            variant: w.variant,
            mla_path: w.mla_path,
            mode: w.mode,
            seq_len: w.seq_len,
            context: w.context,
            batch: w.batch,
            d_model: w.d_model,
            n_heads: w.n_heads,
            n_kv_heads: w.n_kv_heads,
            head_dim: w.head_dim,
            kv_lora_rank: w.kv_lora_rank,
            q_lora_rank: w.q_lora_rank,
            qk_nope_head_dim: w.qk_nope_head_dim,
            qk_rope_head_dim: w.qk_rope_head_dim,
            v_head_dim: w.v_head_dim,
            threads: w.threads,
            kernel: w.kernel,
            kv_dtype: w.kv_dtype.value,
            weight_dtype: w.weight_dtype.value,
            max_rel_err: w.max_rel_err.value,
            implementation: w.implementation.value.0,
            step,
            tokens_per_s: w.tokens_per_s,
            flops: w.flops,
            projection_flops: w.projection_flops,
            attention_flops: w.attention_flops,
            bytes: w.bytes,
            core,
            core_share_pct: w.core_share_pct,
            core_bytes: w.core_bytes,
            core_peak_transient_bytes: w.core_peak_transient_bytes,
            kv_cache_bytes: w.kv_cache_bytes,
            kv_cache_bytes_analytic: w.kv_cache_bytes_analytic,
            kv_cache_padding_bytes: w.kv_cache_padding_bytes,
            kv_bytes_per_token: w.kv_bytes_per_token,
            peak_transient_bytes: w.peak_transient_bytes,
            params: w.params,
            error: w.error,
            run,
            read_probe_gbps,
            matmul_probe_gflops,
        }
    }
}

impl From<PointResult> for PointWire {
    fn from(p: PointResult) -> Self {
        Self {
            row: PointRow::from(&p),
            above_ceiling: p.above_ceiling().into_iter().map(String::from).collect(),
            samples_ns: p.step.samples_ns,
            core_samples_ns: p.core.samples_ns,
            run: p.run,
            read_probe_gbps: p.read_probe_gbps,
            matmul_probe_gflops: p.matmul_probe_gflops,
        }
    }
}

impl PointRow {
    /// The row as `results.csv` writes it: every column on every row, the fields that came
    /// after the format too; `implementation` only in a file that has the column
    /// ([`PointResult::csv_record`]).
    pub(super) fn csv(p: &PointResult, implementation_column: bool) -> Self {
        let mut row = Self::from(p);
        row.kv_dtype.always = true;
        row.weight_dtype.always = true;
        row.max_rel_err.always = true;
        row.implementation.always = implementation_column;
        row
    }
}

impl From<&PointResult> for PointRow {
    fn from(p: &PointResult) -> Self {
        let (step, core) = (&p.step, &p.core);
        Self {
            key: p.key.clone(),
            variant: p.variant,
            mla_path: p.mla_path,
            mode: p.mode,
            seq_len: p.seq_len,
            context: p.context,
            batch: p.batch,
            d_model: p.d_model,
            n_heads: p.n_heads,
            n_kv_heads: p.n_kv_heads,
            head_dim: p.head_dim,
            kv_lora_rank: p.kv_lora_rank,
            q_lora_rank: p.q_lora_rank,
            qk_nope_head_dim: p.qk_nope_head_dim,
            qk_rope_head_dim: p.qk_rope_head_dim,
            v_head_dim: p.v_head_dim,
            threads: p.threads,
            kernel: p.kernel,
            kv_dtype: LateField::new(p.kv_dtype),
            weight_dtype: LateField::new(p.weight_dtype),
            max_rel_err: LateField::new(p.max_rel_err),
            implementation: LateField::new(Implementation(p.implementation.clone())),
            median_ns: step.median_ns,
            mad_ns: step.mad_ns,
            min_ns: step.min_ns,
            max_ns: step.max_ns,
            samples: step.samples,
            tokens_per_s: p.tokens_per_s,
            flops: p.flops,
            projection_flops: p.projection_flops,
            attention_flops: p.attention_flops,
            bytes: p.bytes,
            gflops: step.gflops,
            gbps: step.gbps,
            ideal_ns: step.ideal_ns,
            roofline_pct: step.roofline_pct,
            core_median_ns: core.median_ns,
            core_mad_ns: core.mad_ns,
            core_samples: core.samples,
            core_share_pct: p.core_share_pct,
            core_bytes: p.core_bytes,
            core_gflops: core.gflops,
            core_gbps: core.gbps,
            core_ideal_ns: core.ideal_ns,
            core_roofline_pct: core.roofline_pct,
            core_peak_transient_bytes: p.core_peak_transient_bytes,
            kv_cache_bytes: p.kv_cache_bytes,
            kv_cache_bytes_analytic: p.kv_cache_bytes_analytic,
            kv_cache_padding_bytes: p.kv_cache_padding_bytes,
            kv_bytes_per_token: p.kv_bytes_per_token,
            peak_transient_bytes: p.peak_transient_bytes,
            params: p.params,
            error: p.error.clone(),
        }
    }
}

/// The name of what measured a point, [`DEFAULT_IMPLEMENTATION`] by default: a late field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
struct Implementation(String);

impl Default for Implementation {
    fn default() -> Self {
        Self(DEFAULT_IMPLEMENTATION.to_string())
    }
}

/// A field added to the format after files were written without it. The JSON leaves it out
/// at its default (f32; `None`, not measured), so that such a file reads as before and writes
/// back byte for byte; the CSV, every row of which must have the same columns, writes it
/// always (`always`, set by [`PointRow::csv`]). It reads and writes as its value.
#[derive(Clone, Debug, Default)]
struct LateField<T> {
    value: T,
    always: bool,
}

impl<T: Default + PartialEq> LateField<T> {
    fn new(value: T) -> Self {
        Self {
            value,
            always: false,
        }
    }

    fn left_out(&self) -> bool {
        !self.always && self.value == T::default()
    }
}

impl<T: Serialize> Serialize for LateField<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LateField<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(|value| Self {
            value,
            always: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::parse_experiment;
    use crate::results::read_results;

    /// A GQA decode point at each stored type, with its accuracy set as a run sets it.
    fn points() -> Vec<PointResult> {
        let text = "[model]\nd_model = 32\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n[sweep]\nvariant = [\"gqa\"]\nmode = [\"decode\"]\ncontext = [16]\nthreads = [1]\nkv_dtype = [\"f32\", \"int8\"]\nweight_dtype = [\"f32\", \"bf16\"]\n";
        let experiment = parse_experiment(text, "f.toml", "f", u64::MAX).unwrap();
        experiment
            .points
            .iter()
            .map(|point| {
                let mut result = PointResult::unmeasured(point);
                result.max_rel_err = Some(if point.precision.is_f32() { 0.0 } else { 3e-3 });
                result
            })
            .collect()
    }

    #[test]
    fn an_old_results_file_reads_as_f32_and_writes_back_without_the_new_fields() {
        // Three points of results/kv_heads as measured on 2026-11-24, before the stored types.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/results-before-stored-types.json");
        let results = read_results(&path).unwrap();
        for p in &results.points {
            assert_eq!(
                (p.kv_dtype, p.weight_dtype, p.max_rel_err),
                (Dtype::F32, WeightDtype::F32, None),
                "{}",
                p.key
            );
            assert!(p.is_attnbench() && !p.is_core_only(), "{}", p.key);
            let json = serde_json::to_string(p).unwrap();
            for field in ["kv_dtype", "weight_dtype", "max_rel_err", "implementation"] {
                assert!(!json.contains(field), "{field} in {json}");
            }
        }
    }

    #[test]
    fn the_json_names_what_is_not_the_default_and_reads_it_back() {
        for p in points() {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(
                json.contains("\"kv_dtype\":\"int8\""),
                p.kv_dtype == Dtype::Int8,
                "{json}"
            );
            assert_eq!(
                json.contains("\"weight_dtype\":\"bf16\""),
                p.weight_dtype == WeightDtype::Bf16
            );
            assert!(!json.contains("\"kv_dtype\":\"f32\""), "{json}");
            assert!(json.contains("\"max_rel_err\":"), "{json}");
            let back: PointResult = serde_json::from_str(&json).unwrap();
            assert_eq!(back, p);
        }
    }

    #[test]
    fn a_peer_names_its_implementation_in_the_json_and_the_csv() {
        let mut peer = points().remove(0);
        peer.implementation = "pytorch-sdpa".into();
        let json = serde_json::to_string(&peer).unwrap();
        assert!(
            json.contains(r#""implementation":"pytorch-sdpa""#),
            "{json}"
        );
        let back: PointResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.implementation, "pytorch-sdpa");
        assert!(!back.is_attnbench());
        // A file with a peer has the column on every row, attnbench's own rows too.
        let own = points().remove(1);
        let mut writer = csv::Writer::from_writer(Vec::new());
        for p in [&peer, &own] {
            writer.serialize(p.csv_record(true)).unwrap();
        }
        let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let at = reader
            .headers()
            .unwrap()
            .iter()
            .position(|c| c == "implementation")
            .expect("an implementation column");
        let cells: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[at].to_string())
            .collect();
        assert_eq!(cells, ["pytorch-sdpa", "attnbench"]);
    }

    #[test]
    fn every_csv_row_has_every_column() {
        let mut points = points();
        points[1].max_rel_err = None;
        let mut writer = csv::Writer::from_writer(Vec::new());
        for p in &points {
            writer.serialize(p.csv_record(false)).unwrap();
        }
        let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let header = reader.headers().unwrap().clone();
        let columns: Vec<&str> = header.iter().collect();
        assert!(!columns.contains(&"implementation"), "{columns:?}");
        let at = columns.iter().position(|&c| c == "kernel").unwrap();
        assert_eq!(
            columns[at + 1..at + 4],
            ["kv_dtype", "weight_dtype", "max_rel_err"]
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 4);
        let cells: Vec<Vec<&str>> = rows
            .iter()
            .map(|r| {
                assert_eq!(r.len(), header.len(), "{r:?}");
                r.iter().skip(at + 1).take(3).collect()
            })
            .collect();
        assert_eq!(
            cells,
            [
                ["f32", "f32", "0.0"],
                ["f32", "bf16", ""],
                ["int8", "f32", "0.003"],
                ["int8", "bf16", "0.003"],
            ]
        );
    }
}
