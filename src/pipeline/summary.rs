//! The terminal summary of a compress run: what was chosen and why, every seed beside the
//! result on held-out tokens, and what the limits cost.

use super::output::CompressReport;
use super::policy::{self, Export};
use crate::eval::Comparison;
use crate::report::{human_bytes, Table};
use crate::search::Constraints;
use std::collections::BTreeMap;

/// The limits as the options that set them (`--max-bpw 4.5, --max-kld 0.05`).
pub fn describe(c: &Constraints) -> String {
    let mut parts = Vec::new();
    if let Some(v) = c.max_bpw {
        parts.push(format!("--max-bpw {v}"));
    }
    if let Some(v) = c.max_size {
        parts.push(format!("--max-size {} MB", v as f64 / 1e6));
    }
    if let Some(v) = c.max_latency_ms {
        parts.push(format!("--max-latency-ms {v}"));
    }
    if let Some(v) = c.max_energy_mj {
        parts.push(format!("--max-energy-mj {v}"));
    }
    if let Some(v) = c.max_loss {
        parts.push(format!("--max-kld {v}"));
    }
    parts.join(", ")
}

/// The terminal summary: what was chosen and why, seeds side by side on held-out tokens.
pub fn summary(r: &CompressReport) -> String {
    let metric_of = |c: &Comparison| match c {
        Comparison::Lm(l) => format!("{:.4e} (ppl {:.3})", l.mean_kld, l.ppl),
        Comparison::Embedding(e) => {
            format!("{:.4e} (min cos {:.5})", 1.0 - e.mean_cosine, e.min_cosine)
        }
    };
    let mut s = format!(
        "target {} ({}); limits: {}\ncalibrated on {}; held-out text {}\n\n",
        r.target,
        r.device,
        describe(&r.constraints),
        r.calibration_text,
        r.evaluation_text
    );
    let mut t = Table::new(vec![
        "genome".into(),
        "bpw".into(),
        "size".into(),
        format!("calibration {}", r.metric),
        format!("held-out {}", r.metric),
    ]);
    for h in &r.held_out {
        t.row(vec![
            h.origin.clone(),
            format!("{:.3}", h.bits_per_weight),
            human_bytes(h.bytes),
            format!("{:.4e}", h.calibration_loss),
            metric_of(&h.held_out),
        ]);
    }
    s += &t.render(2);
    if !r.validation.is_empty() {
        s += &format!(
            "\nchosen by {} on further calibration tokens among the genomes within {:.0}% of the \
             lowest search loss: {}\n",
            r.metric,
            (policy::VALIDATION_SLACK - 1.0) * 100.0,
            r.validation
                .iter()
                .map(|v| format!("{} {:.4e}", v.origin, v.validation_loss))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // When the limits cost much accuracy, say what the accuracy would cost in size.
    let chosen = r
        .held_out
        .last()
        .map_or(f64::INFINITY, |h| h.held_out.loss());
    if let Some(best) = r
        .held_out
        .iter()
        .filter(|h| h.bytes > r.selected.bytes)
        .min_by(|a, b| a.held_out.loss().total_cmp(&b.held_out.loss()))
        .filter(|b| b.held_out.loss() * 4.0 < chosen)
    {
        s += &format!(
            "\nthe limits cost accuracy: {} at {:.2} bpw measured a held-out {} of {:.3e}, {:.0}x \
             lower than the selection's; raise --max-bpw or --max-size to trade size for it\n",
            best.origin,
            best.bits_per_weight,
            r.metric,
            best.held_out.loss(),
            chosen / best.held_out.loss()
        );
    }
    // Formats chosen, counted.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for g in &r.genome.tensors {
        *counts.entry(g.gene.format.to_string()).or_default() += 1;
    }
    let acts: BTreeMap<String, usize> =
        r.genome
            .activations
            .iter()
            .fold(BTreeMap::new(), |mut m, a| {
                *m.entry(a.to_string()).or_default() += 1;
                m
            });
    s += &format!(
        "\nselected: {} — {:.3} bpw, {} of tensors ({} quantized: {}; layer activations: {})\n",
        r.origin,
        r.selected.bits_per_weight,
        human_bytes(r.selected.bytes),
        r.genome.tensors.len(),
        counts
            .iter()
            .map(|(f, n)| format!("{n} x {f}"))
            .collect::<Vec<_>>()
            .join(", "),
        acts.iter()
            .map(|(a, n)| format!("{n} x {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let shipped = if r.exports.contains(&Export::Qpipe) {
        ""
    } else {
        " (removed: --export leaves qpipe out)"
    };
    s += &format!(
        "packed checkpoint: model.qpipe.safetensors{shipped}, {:.2} MB ({:.1}x smaller than the \
         input's {:.2} MB); held-out {} on the packed weights: {}\n",
        r.size.file_bytes as f64 / 1e6,
        r.size.compression,
        r.size.input_bytes as f64 / 1e6,
        r.metric,
        metric_of(&r.packed)
    );
    if let Some(g) = &r.gguf {
        s += &format!(
            "model.gguf for llama.cpp: {} ({} tensors)\n",
            human_bytes(g.bytes),
            g.tensors
        );
    }
    if let Some(o) = &r.onnx {
        let widened = match o.widened.len() {
            0 => String::new(),
            n => format!("; {n} weights stored in a wider ONNX integer type (see qpipe.json)"),
        };
        s += &format!(
            "model.onnx (opset 21, QDQ) for {}'s toolchain: {}{widened}\n",
            r.target,
            human_bytes(o.file_bytes)
        );
        if let Some(e) = &o.encodings {
            s += &encodings(e);
        }
    }
    s += &format!(
        "estimated on {}: {:.3} ms, {:.3} mJ per {} (cost model, not measured)\n",
        r.target,
        r.selected.latency_ms,
        r.selected.energy_mj,
        if matches!(r.packed, Comparison::Lm(_)) {
            "decode step"
        } else {
            "sequence"
        }
    );
    s
}

/// One line on an encodings file: what it covers, and what it leaves to the graph.
pub fn encodings(e: &crate::export::onnx::encodings::Written) -> String {
    let omitted = match e.omitted.len() {
        0 => String::new(),
        n => format!(
            "; {n} left to the graph's QDQ nodes ({}: {})",
            e.omitted[0].name, e.omitted[0].reason
        ),
    };
    format!(
        "{}: AIMET encodings 1.0.0 for {} weights and {} inputs{omitted}\n",
        e.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        e.params,
        e.activations
    )
}
