//! The KV-cache plan of `attnbench kv` as a person reads it: one table row per variant and
//! storage type, how each row's shape follows from the model's, and the weights beside the
//! budget. Sizes are binary and rounded ([`human_bytes`]); the plan's JSON has them exact.

use tabled::builder::Builder;
use tabled::settings::Style;

use crate::planner::{ContextBound, DtypeFigures, Plan, VariantPlan, WeightFigures, human_bytes};
use crate::presets::WindowLayers;

/// The plan as Markdown: a heading, the warnings, the table, the sliding window and the cap
/// on the largest context, the derivation of each row (and why a variant has none), the
/// weights in each storage type when the parameter count is known, and the preset's notes.
/// No trailing newline.
pub fn kv_plan_markdown(plan: &Plan) -> String {
    let mut out = format!(
        "KV cache of {} ({}, {} layers) at context {} × batch {}\n\n",
        plan.model, plan.variant, plan.n_layers, plan.context, plan.batch
    );
    for warning in &plan.warnings {
        out.push_str(&format!("Warning: {warning}\n\n"));
    }
    out.push_str(&format!("{}\n\n", table(plan)));
    out.push_str(&window(plan));
    out.push_str(&context_cap(plan));
    out.push_str(&derivations(plan));
    out.push_str(&weights(plan));
    if let Some(notes) = &plan.notes {
        out.push_str(&format!("\nNotes on {}: {notes}\n", plan.model));
    }
    out.trim_end().to_string()
}

/// What a sliding window does to the figures, when the model has one.
fn window(plan: &Plan) -> String {
    let Some(w) = &plan.window else {
        return String::new();
    };
    let which = match w.layers {
        WindowLayers::All => format!(
            "all {} layers cache at most {} tokens (rolling cache)",
            w.windowed_layers, w.tokens
        ),
        WindowLayers::Alternate => format!(
            "{} of {} layers (every other one, from the first) cache at most {} tokens, the other {} the whole context",
            w.windowed_layers, plan.n_layers, w.tokens, w.global_layers
        ),
    };
    format!(
        "Sliding window: {which}; at context {} each windowed layer holds {} tokens. \"Per token\" counts a token in every layer: the growth while the context is within {} tokens.\n\n",
        plan.context, w.windowed_layer_tokens, w.tokens
    )
}

/// Says where the largest context is the model's trained maximum rather than the budget's.
fn context_cap(plan: &Plan) -> String {
    let capped = plan.rows.iter().any(|row| {
        row.dtypes
            .iter()
            .any(|d| d.max_context_bound == Some(ContextBound::TrainedMaximum))
    });
    match (capped, plan.max_position_embeddings) {
        (true, Some(max)) => format!(
            "Max context is capped at the model's trained maximum of {max} positions where marked; the budget alone holds more (max_context_by_budget in --json).\n\n"
        ),
        _ => String::new(),
    }
}

/// One row per variant and storage type; the last two columns only with a budget.
fn table(plan: &Plan) -> String {
    let mut builder = Builder::default();
    builder.push_record(header(plan));
    for row in &plan.rows {
        for figures in &row.dtypes {
            builder.push_record(record(row, figures));
        }
    }
    builder.build().with(Style::markdown()).to_string()
}

fn header(plan: &Plan) -> Vec<String> {
    let mut header = vec![
        "variant".to_string(),
        "row".into(),
        "cached per token and layer".into(),
        "values".into(),
        "dtype".into(),
        "bytes/token/layer".into(),
        format!("per token, {} layers", plan.n_layers),
        format!("context {} × batch {}", plan.context, plan.batch),
    ];
    if plan.budget_bytes.is_some() {
        header.push(format!("max batch at context {}", plan.context));
        header.push(format!("max context at batch {}", plan.batch));
    }
    header
}

fn record(row: &VariantPlan, figures: &DtypeFigures) -> Vec<String> {
    let mut record = vec![
        row.variant.to_string(),
        if row.own { "own" } else { "hypothetical" }.into(),
        row.cache.to_string(),
        row.values_per_token_per_layer.to_string(),
        figures.dtype.to_string(),
        figures.bytes_per_token_per_layer.to_string(),
        human_bytes(figures.bytes_per_token),
        human_bytes(figures.cache_bytes),
    ];
    if let Some(batch) = figures.max_batch {
        record.push(batch.to_string());
        record.push(max_context(figures));
    }
    record
}

/// The largest context and what bounds it.
fn max_context(figures: &DtypeFigures) -> String {
    match (figures.max_context, figures.max_context_bound) {
        (Some(c), Some(ContextBound::TrainedMaximum)) => format!("{c} (trained maximum)"),
        (Some(c), _) => c.to_string(),
        (None, _) => "unbounded".into(),
    }
}

/// How each row's shape follows from the model's, then each variant left out and why.
fn derivations(plan: &Plan) -> String {
    let mut out = "How each row's shape follows from the model's:\n".to_string();
    for row in &plan.rows {
        out.push_str(&format!("- {}: {}\n", row.variant, row.derivation));
    }
    for omitted in &plan.omitted {
        out.push_str(&format!(
            "- {}: no row: {}\n",
            omitted.variant, omitted.reason
        ));
    }
    out
}

/// The weights per storage type and their share of the budget; without a parameter count,
/// that they are not counted (said only when there is a budget they would take from).
fn weights(plan: &Plan) -> String {
    let budget = plan.budget_bytes.map(human_bytes);
    let Some(params) = plan.params else {
        return budget.map_or(String::new(), |budget| {
            format!(
                "\nWeights not counted (parameter count unknown; give --params N): the whole budget of {budget} goes to the cache.\n"
            )
        });
    };
    let within = budget.map_or(String::new(), |b| format!(" in a budget of {b}"));
    let mut out = format!(
        "\nWeights: {params} params (the model's own count, used for every row){within}:\n"
    );
    for figures in &plan.weights {
        out.push_str(&format!(
            "- {}: {}{}\n",
            figures.dtype,
            human_bytes(figures.weights_bytes),
            budget_share(figures)
        ));
    }
    out
}

fn budget_share(figures: &WeightFigures) -> String {
    match figures.budget_share_pct {
        Some(pct) if pct >= 100.0 => format!(", {pct:.1}% of the budget: no cache fits"),
        Some(pct) => format!(", {pct:.1}% of the budget"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{Alternatives, Dtype, ModelShape, PlanRequest, plan};
    use crate::presets::preset;

    fn llama(budget_gib: Option<f64>, params: Option<u64>) -> String {
        markdown_of("llama-3-8b", 8192, budget_gib, params)
    }

    fn markdown_of(
        name: &str,
        context: usize,
        budget_gib: Option<f64>,
        params: Option<u64>,
    ) -> String {
        markdown_in(name, context, budget_gib, params, Dtype::Bf16)
    }

    fn markdown_in(
        name: &str,
        context: usize,
        budget_gib: Option<f64>,
        params: Option<u64>,
        dtype: Dtype,
    ) -> String {
        let mut model = ModelShape::from_preset(&preset(name).unwrap()).unwrap();
        model.params = params;
        let plan = plan(&PlanRequest {
            model,
            alternatives: Alternatives::default(),
            context,
            batch: 1,
            dtypes: vec![dtype],
            budget_gib,
        })
        .unwrap();
        kv_plan_markdown(&plan)
    }

    fn columns(text: &str) -> usize {
        let header = text.lines().find(|l| l.starts_with("| variant")).unwrap();
        header.matches('|').count() - 1
    }

    #[test]
    fn budget_columns_and_weight_lines_follow_the_plan() {
        let plain = llama(None, None);
        assert_eq!(columns(&plain), 8, "{plain}");
        assert!(!plain.contains("Weights"), "{plain}");

        let uncounted = llama(Some(24.0), None);
        assert_eq!(columns(&uncounted), 10, "{uncounted}");
        assert!(uncounted.contains("Weights not counted"), "{uncounted}");

        let counted = llama(Some(24.0), Some(8_030_261_248));
        assert!(
            counted.contains("- bf16: 15317 MiB (14.96 GiB), 62.3% of the budget"),
            "{counted}"
        );
        assert!(!counted.ends_with('\n'), "{counted}");
    }

    /// int8 rows show their bytes with the scales counted, and no caveat that they are not.
    #[test]
    fn int8_rows_count_their_scales_and_say_nothing_else() {
        let int8 = markdown_in("llama-3-8b", 8192, None, None, Dtype::Int8);
        // GQA-8: 2 · 8 · (128 + 4) bytes per token and layer.
        let gqa = int8.lines().find(|l| l.starts_with("| gqa")).unwrap();
        let cells: Vec<&str> = gqa.split('|').map(str::trim).collect();
        assert_eq!(cells[4..7], ["2048", "int8", "2112"], "{int8}");
        assert!(!int8.contains("not counted"), "{int8}");
        let deepseek = markdown_in("deepseek-v3", 8192, None, None, Dtype::Int8);
        assert!(deepseek.contains("| int8  | 584 "), "{deepseek}");
    }

    #[test]
    fn windows_warnings_caps_and_notes_are_shown() {
        let mistral = markdown_of("mistral-7b-v0.1", 32768, Some(24.0), None);
        assert!(
            mistral.contains("Sliding window: all 32 layers cache at most 4096 tokens"),
            "{mistral}"
        );
        assert!(mistral.contains("| 512.0 MiB "), "{mistral}");
        assert!(mistral.contains("32768 (trained maximum)"), "{mistral}");
        assert!(
            mistral.contains("capped at the model's trained maximum of 32768"),
            "{mistral}"
        );

        let gemma = markdown_of("gemma-2-9b", 32768, None, None);
        assert!(
            gemma.contains("Warning: context 32768 exceeds gemma-2-9b's trained maximum of 8192"),
            "{gemma}"
        );
        assert!(
            gemma.contains("21 of 42 layers (every other one"),
            "{gemma}"
        );
        assert!(gemma.contains("6048 MiB (5.91 GiB)"), "{gemma}");

        let bert = markdown_of("bert-base-uncased", 512, None, None);
        assert!(
            bert.contains("Notes on bert-base-uncased: bidirectional encoder"),
            "{bert}"
        );
        assert!(
            !bert.contains("Sliding window") && !bert.contains("Warning"),
            "{bert}"
        );
    }
}
