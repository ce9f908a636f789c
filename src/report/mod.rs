//! Human-readable output: number formatting, aligned terminal tables and SVG charts.

pub mod pareto;
pub mod svg;
pub mod table;

pub use table::Table;

/// Bytes as a short decimal string ("538.1 MB").
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A count as a short decimal string ("134.5M").
pub fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

/// A shape as "576x576".
pub fn shape(dims: &[usize]) -> String {
    if dims.is_empty() {
        return "scalar".into();
    }
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes_and_counts() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(538_060_800), "538.1 MB");
        assert_eq!(human_count(134_515_008), "134.5M");
        assert_eq!(human_count(42), "42");
        assert_eq!(shape(&[576, 1536]), "576x1536");
    }
}
