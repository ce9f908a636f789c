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

        let mut s = header(width, height, left, self.title);
        decade_grid(&mut s, (lo_exp, hi_exp), left, width - right, y);
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

/// A scatter plot on a linear x and log10 y axis, each point coloured by a third value
/// (blue = lowest, red = highest), optionally with one point ringed.
pub struct Scatter<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Label of the x axis.
    pub x_label: &'a str,
    /// Label of the y axis (log scale).
    pub y_label: &'a str,
    /// Label of the colour scale.
    pub colour_label: &'a str,
    /// `(x, y, colour value, tooltip)`; points with y <= 0 are drawn on the bottom edge.
    pub points: &'a [(f64, f64, f64, String)],
    /// Index of a point to ring (the selected one).
    pub highlight: Option<usize>,
}

impl Scatter<'_> {
    /// Renders the plot as an SVG document.
    pub fn render(&self) -> String {
        let (left, right, top, bottom) = (80.0, 150.0, 50.0, 60.0);
        let (w, h) = (640.0, 400.0);
        let finite = |v: f64| v.is_finite();
        let range = |vals: Vec<f64>| {
            let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if lo.is_finite() {
                (lo, if hi > lo { hi } else { lo + 1.0 })
            } else {
                (0.0, 1.0)
            }
        };
        let (x0, x1) = range(
            self.points
                .iter()
                .map(|p| p.0)
                .filter(|v| finite(*v))
                .collect(),
        );
        let (y0, y1) = range(
            self.points
                .iter()
                .map(|p| p.1)
                .filter(|v| *v > 0.0 && finite(*v))
                .map(f64::log10)
                .collect(),
        );
        let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
        let (c0, c1) = range(
            self.points
                .iter()
                .map(|p| p.2)
                .filter(|v| finite(*v))
                .collect(),
        );
        let px = |x: f64| left + w * (x - x0) / (x1 - x0);
        let py = |y: f64| {
            let l = if y > 0.0 { y.log10().clamp(y0, y1) } else { y0 };
            top + h * (y1 - l) / (y1 - y0)
        };
        let colour = |c: f64| {
            let t = if c.is_finite() {
                ((c - c0) / (c1 - c0)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            format!(
                "rgb({:.0},{:.0},{:.0})",
                40.0 + 200.0 * t,
                80.0,
                220.0 - 200.0 * t
            )
        };
        let mut s = header(left + w + right, top + h + bottom, left, self.title);
        decade_grid(&mut s, (y0, y1), left, left + w, py);
        for k in 0..=4 {
            let x = x0 + (x1 - x0) * k as f64 / 4.0;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x:.2}</text>"#,
                px(x),
                top + h + 16.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            left + w / 2.0,
            top + h + 40.0,
            escape(self.x_label),
            top + h / 2.0,
            escape(self.y_label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="black"/>"#
        );
        for (i, (x, y, c, tip)) in self.points.iter().enumerate() {
            if !x.is_finite() {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"><title>{}</title></circle>"#,
                px(*x),
                py(*y),
                colour(*c),
                escape(tip)
            );
            if self.highlight == Some(i) {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="8" fill="none" stroke="black" stroke-width="2"/>"#,
                    px(*x),
                    py(*y)
                );
            }
        }
        let lx = left + w + 20.0;
        let _ = writeln!(
            s,
            r#"<text x="{lx}" y="{top}">{}</text><rect x="{lx}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{c0:.3}</text><rect x="{lx}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{c1:.3}</text>"#,
            escape(self.colour_label),
            top + 10.0,
            colour(c0),
            lx + 16.0,
            top + 20.0,
            top + 30.0,
            colour(c1),
            lx + 16.0,
            top + 40.0
        );
        s.push_str("</svg>\n");
        s
    }
}

/// The SVG opening tag, a white background and the title.
fn header(width: f64, height: f64, left: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="15">{}</text>"#,
        escape(title)
    );
    s
}

/// Grid lines and labels at every decade from 10^lo to 10^hi, spanning x from `x0` to `x1`;
/// `y` maps a value to its pixel row.
fn decade_grid(s: &mut String, (lo, hi): (f64, f64), x0: f64, x1: f64, y: impl Fn(f64) -> f64) {
    let mut e = lo;
    while e <= hi {
        let yy = y(10f64.powf(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" x2="{x1:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">1e{e}</text>"##,
            x0 - 4.0,
            yy + 4.0
        );
        e += 1.0;
    }
}

/// Escapes text for XML content and attributes.
/// `text` with XML's special characters escaped (SVG and JUnit XML).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            // Kept as written inside attribute values, which parsers would normalise to spaces.
            '\t' | '\n' | '\r' => out.push_str(&format!("&#{};", c as u32)),
            // XML 1.0 has no way to write other control characters (not even as references).
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_places_points_on_the_log_axis_and_rings_the_highlight() {
        let points = vec![
            (2.0, 1e-3, 5.0, "a".to_string()),
            (4.0, 1e-1, 10.0, "b&c".to_string()),
        ];
        let svg = Scatter {
            title: "front",
            x_label: "bpw",
            y_label: "KL",
            colour_label: "ms",
            points: &points,
            highlight: Some(1),
        }
        .render();
        // x 2..4 spans 80..720 px; y decades 1e-3..1e-1 span 450..50 px.
        assert!(
            svg.contains(r#"<circle cx="80.0" cy="450.0" r="4" fill="rgb(40,80,220)">"#),
            "{svg}"
        );
        assert!(svg.contains(r#"<circle cx="720.0" cy="50.0" r="4" fill="rgb(240,80,20)">"#));
        assert!(svg.contains(r#"r="8""#) && svg.contains("b&amp;c"));
    }

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
