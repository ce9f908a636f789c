//! Self-contained SVG charts (no plotting dependency): plain text anyone can open in a browser.

use std::fmt::Write as _;

/// Series colours (colour-blind-safe Okabe-Ito palette), reused cyclically.
const PALETTE: [&str; 7] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
];

/// A grouped bar chart: one group per category, one bar per series, on a log10 y axis
/// (values span orders of magnitude; non-positive or missing values draw no bar).
pub struct BarChart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Label of the y axis.
    pub y_label: &'a str,
    /// Category labels along the x axis.
    pub categories: &'a [String],
    /// `(series name, one value per category)`.
    pub series: &'a [(String, Vec<Option<f64>>)],
}

impl BarChart<'_> {
    /// Renders the chart as an SVG document.
    pub fn render(&self) -> String {
        let bar = 6.0;
        let group = bar * self.series.len().max(1) as f64 + 4.0;
        let (left, right, top, bottom) = (70.0, 20.0, 50.0, 150.0);
        let plot_h = 360.0;
        let width = left + right + group * self.categories.len().max(1) as f64;
        let height = top + plot_h + bottom;

        let positive = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .copied()
            .filter(|v| *v > 0.0 && v.is_finite());
        let (lo, hi) = positive.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (lo_exp, hi_exp) = if lo.is_finite() {
            (
                lo.log10().floor(),
                hi.log10().ceil().max(lo.log10().floor() + 1.0),
            )
        } else {
            (0.0, 1.0)
        };
        let y = |v: f64| top + plot_h * (hi_exp - v.log10()) / (hi_exp - lo_exp);

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="15">{}</text>"#,
            escape(self.title)
        );
        // Decade grid lines and labels.
        let mut e = lo_exp;
        while e <= hi_exp {
            let yy = y(10f64.powf(e));
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">1e{e}</text>"##,
                width - right,
                left - 4.0,
                yy + 4.0
            );
            e += 1.0;
        }
        let _ = writeln!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + plot_h / 2.0,
            escape(self.y_label)
        );
        for (c, label) in self.categories.iter().enumerate() {
            let x0 = left + group * c as f64 + 2.0;
            for (k, (name, values)) in self.series.iter().enumerate() {
                let Some(v) = values.get(c).copied().flatten() else {
                    continue;
                };
                if !(v > 0.0 && v.is_finite()) {
                    continue;
                }
                let top_y = y(v);
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.1}" y="{top_y:.1}" width="{bar}" height="{:.1}" fill="{}"><title>{} {}: {v:.3e}</title></rect>"#,
                    x0 + bar * k as f64,
                    top + plot_h - top_y,
                    PALETTE[k % PALETTE.len()],
                    escape(label),
                    escape(name)
                );
            }
            let _ = writeln!(
                s,
                r#"<text transform="translate({:.1} {:.1}) rotate(-60)" text-anchor="end" font-size="9">{}</text>"#,
                x0 + group / 2.0,
                top + plot_h + 8.0,
                escape(label)
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{left}" x2="{left}" y1="{top}" y2="{:.1}" stroke="black"/>"#,
            top + plot_h
        );
        for (k, (name, _)) in self.series.iter().enumerate() {
            let x = left + 10.0 + 150.0 * k as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="30" width="10" height="10" fill="{}"/><text x="{:.1}" y="39">{}</text>"#,
                PALETTE[k % PALETTE.len()],
                x + 14.0,
                escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Escapes text for XML content and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_by_decade_and_skip_missing_values() {
        let categories = vec!["a<b".to_string(), "c".to_string()];
        let series = vec![
            ("int8".to_string(), vec![Some(1e-4), None]),
            ("int2".to_string(), vec![Some(1e-2), Some(0.0)]),
        ];
        let svg = BarChart {
            title: "t",
            y_label: "loss",
            categories: &categories,
            series: &series,
        }
        .render();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<title>").count(),
            2,
            "one bar per positive value"
        );
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        // Decades 1e-4..1e-2 span the plot: the 1e-2 bar is full height (360 px), 1e-4 empty.
        assert!(svg.contains(r##"height="360.0" fill="#E69F00""##));
        assert!(svg.contains(r##"height="0.0" fill="#0072B2""##));
    }
}
