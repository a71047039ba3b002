//! `attnbench list`: the presets of real models and the experiment files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use attnbench::experiment::{experiment_files, load_experiment};
use attnbench::presets::{Preset, presets};
use clap::Args;
use tabled::settings::Style;
use tabled::{Table, Tabled};

use super::{memory_limit, outln};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Directory of experiment files.
    #[arg(long, default_value = "variants")]
    dir: PathBuf,
}

#[derive(Tabled)]
struct PresetRow {
    name: String,
    variant: String,
    d_model: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    #[tabled(rename = "MLA d_c+rope")]
    mla_latent: String,
    layers: usize,
    #[tabled(rename = "KV values/token/layer")]
    kv_values: usize,
}

impl From<Preset> for PresetRow {
    fn from(p: Preset) -> Self {
        Self {
            variant: p.variant.to_string(),
            d_model: p.d_model,
            n_heads: p.n_heads,
            n_kv_heads: p.n_kv_heads,
            head_dim: p.head_dim,
            mla_latent: match (p.kv_lora_rank, p.qk_rope_head_dim) {
                (Some(c), Some(r)) => format!("{c}+{r}"),
                _ => String::new(),
            },
            layers: p.n_layers,
            kv_values: p.kv_values_per_token_per_layer,
            name: p.name,
        }
    }
}

#[derive(Tabled)]
struct ExperimentRow {
    file: String,
    points: String,
    description: String,
}

impl ExperimentRow {
    /// The file's row: its point count and the first line of its description, or `invalid`
    /// and why.
    fn of(path: &Path, memory_limit_bytes: u64) -> Self {
        let file = path.display().to_string();
        match load_experiment(path, memory_limit_bytes) {
            Ok(e) => Self {
                file,
                points: e.points.len().to_string(),
                description: e.description.lines().next().unwrap_or_default().to_string(),
            },
            Err(err) => Self {
                file,
                points: "invalid".into(),
                description: err.to_string(),
            },
        }
    }
}

pub fn run(args: &ListArgs) -> Result<()> {
    let dir = &args.dir;
    let presets: Vec<PresetRow> = presets().into_iter().map(PresetRow::from).collect();
    outln!("Presets (use as `preset = \"NAME\"` in an experiment's [model]):\n");
    outln!("{}\n", Table::new(presets).with(Style::markdown()));

    let files = experiment_files(dir)
        .with_context(|| format!("cannot list experiments in {}", dir.display()))?;
    let limit = memory_limit(None)?;
    let experiments: Vec<ExperimentRow> = files
        .iter()
        .map(|path| ExperimentRow::of(path, limit))
        .collect();
    outln!(
        "Experiments in {} (run with `attnbench run FILE`):\n",
        dir.display()
    );
    outln!("{}", Table::new(experiments).with(Style::markdown()));
    Ok(())
}
