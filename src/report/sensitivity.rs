//! The per-tensor sensitivity as a terminal table (most sensitive first) and as an SVG bar
//! chart (`sensitivity.svg`, one bar group per tensor in forward order).

use super::svg::BarChart;
use super::{shape, Table};
use crate::quant::Format;
use crate::sensitivity::Sensitivity;
use std::collections::BTreeMap;

/// Tensors as rows (most sensitive first: by the largest loss over formats), formats as columns.
pub fn table(result: &Sensitivity) -> String {
    let formats = formats_of(result);
    let mut rows = by_tensor(result);
    let worst = |v: &BTreeMap<Format, f64>| v.values().copied().fold(0.0, f64::max);
    rows.sort_by(|a, b| worst(&b.2).total_cmp(&worst(&a.2)));
    let mut header = vec!["tensor".to_string(), "shape".to_string()];
    header.extend(formats.iter().map(|(f, est)| label(*f, *est)));
    let mut t = Table::new(header);
    for (name, dims, losses) in rows {
        let mut cells = vec![name.to_string(), shape(&dims)];
        cells.extend(formats.iter().map(|(f, _)| {
            losses
                .get(f)
                .map_or("-".to_string(), |v| format!("{v:.3e}"))
        }));
        t.row(cells);
    }
    let spearman = result
        .spearman
        .map_or("n/a".to_string(), |r| format!("{r:.3}"));
    format!(
        "{} per tensor quantized alone ({} sequences x {} tokens, weights calibrated by {}), \
         most sensitive first; Spearman(proxy, {}) = {spearman}\n{}",
        result.metric.label(),
        result.sequences,
        result.seq_len,
        result.calibrator,
        result.metric.label(),
        t.render(2)
    )
}

/// The formats of the entries in order of appearance, with whether their losses are estimated.
fn formats_of(result: &Sensitivity) -> Vec<(Format, bool)> {
    let mut out: Vec<(Format, bool)> = Vec::new();
    for e in &result.entries {
        if !out.iter().any(|(f, _)| *f == e.format) {
            out.push((e.format, e.estimated));
        }
    }
    out
}

/// A format's column or legend name.
fn label(format: Format, estimated: bool) -> String {
    if estimated {
        format!("{format} (estimated)")
    } else {
        format.to_string()
    }
}

/// Per tensor in forward order: name, shape and loss per format.
fn by_tensor(result: &Sensitivity) -> Vec<(&str, Vec<usize>, BTreeMap<Format, f64>)> {
    let mut rows: Vec<(&str, Vec<usize>, BTreeMap<Format, f64>)> = Vec::new();
    for e in &result.entries {
        match rows.last_mut() {
            Some(row) if row.0 == e.tensor => {
                row.2.insert(e.format, e.loss);
            }
            _ => rows.push((&e.tensor, e.shape.to_vec(), [(e.format, e.loss)].into())),
        }
    }
    rows
}

/// One bar group per tensor in forward order, one bar per format.
pub fn chart(result: &Sensitivity) -> String {
    let rows = by_tensor(result);
    let categories: Vec<String> = rows.iter().map(|r| short_name(r.0)).collect();
    let series: Vec<(String, Vec<Option<f64>>)> = formats_of(result)
        .into_iter()
        .map(|(f, est)| {
            let values = rows.iter().map(|r| r.2.get(&f).copied()).collect();
            (label(f, est), values)
        })
        .collect();
    BarChart {
        title: &format!(
            "{} when one tensor is quantized ({} x {} tokens)",
            result.metric.label(),
            result.sequences,
            result.seq_len
        ),
        y_label: result.metric.label(),
        categories: &categories,
        series: &series,
    }
    .render()
}

/// `model.layers.3.self_attn.q_proj.weight` -> `3.q_proj`.
fn short_name(name: &str) -> String {
    let parts: Vec<&str> = name.trim_end_matches(".weight").split('.').collect();
    let layer = parts.iter().find(|p| p.parse::<usize>().is_ok());
    let last = parts.last().copied().unwrap_or(name);
    match layer {
        Some(l) => format!("{l}.{last}"),
        None => last.to_string(),
    }
}
