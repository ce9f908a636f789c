//! Input-channel rescaling before quantization: AWQ (Lin et al. 2023) and SmoothQuant (Xiao et
//! al. 2022).
//!
//! A matmul `y = x Wᵀ` computes the same with `x` divided and `W`'s columns multiplied by a
//! per-channel `s`: `y = (x / s)(W diag(s))ᵀ`. The division is folded into whatever produced
//! `x` (a norm's weight, the rows of a previous matmul), so the deployed model pays nothing for
//! it, while the quantizers see different numbers: AWQ enlarges the columns whose inputs matter
//! most, so their rounding error shrinks relative to them; SmoothQuant moves activation outliers
//! into the weights, so a per-tensor activation quantizer stops spending its range on a few
//! channels. The model side (which inputs fold where) is `crate::model::Fold`.

use std::fmt;
use std::str::FromStr;

/// Smallest scale a channel gets (a dead input channel would otherwise zero its column).
const MIN_SCALE: f64 = 1e-4;

/// How a matmul's input channels are rescaled before its weight is quantized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transform {
    /// No rescaling.
    #[default]
    None,
    /// AWQ: `s = rms(x)^alpha` (alpha in hundredths).
    Awq(u8),
    /// SmoothQuant: `s = max|x|^alpha / max|W|^(1-alpha)` per channel (alpha in hundredths).
    Smooth(u8),
}

impl Transform {
    /// No rescaling (the default, left out of files).
    pub fn is_none(&self) -> bool {
        *self == Transform::None
    }

    /// Per input channel, the scale `s` for inputs whose channels have mean square `mean_sq`
    /// and absolute maximum `abs_max`, read by weights whose columns have absolute maximum
    /// `weight_abs_max` (over every weight sharing the input); `None` for [`Transform::None`].
    ///
    /// The scales are centred, `max(s) min(s) = 1`: a common factor changes no quantizer with
    /// a scale per tensor, row or group, but uncentred scales push the producer's divided rows
    /// (and their F16 scales) toward F16's subnormals.
    pub fn scales(
        &self,
        mean_sq: &[f32],
        abs_max: &[f32],
        weight_abs_max: &[f32],
    ) -> Option<Vec<f32>> {
        let s: Vec<f64> = match *self {
            Transform::None => return None,
            Transform::Awq(a) => {
                let alpha = f64::from(a) / 100.0;
                mean_sq
                    .iter()
                    .map(|&m| f64::from(m).sqrt().max(MIN_SCALE).powf(alpha))
                    .collect()
            }
            Transform::Smooth(a) => {
                let alpha = f64::from(a) / 100.0;
                abs_max
                    .iter()
                    .zip(weight_abs_max)
                    .map(|(&x, &w)| {
                        let (x, w) = (f64::from(x), f64::from(w));
                        if x > 0.0 && w > 0.0 {
                            (x.powf(alpha) / w.powf(1.0 - alpha)).max(MIN_SCALE)
                        } else {
                            f64::NAN // set to the centre below
                        }
                    })
                    .collect()
            }
        };
        let (lo, hi) = s
            .iter()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let centre = if hi > 0.0 { (lo * hi).sqrt() } else { 1.0 };
        Some(
            s.iter()
                .map(|v| {
                    if v.is_finite() {
                        (v / centre) as f32
                    } else {
                        1.0
                    }
                })
                .collect(),
        )
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpha = |a: u8| {
            let s = format!("{:.2}", f64::from(a) / 100.0);
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        };
        match *self {
            Transform::None => f.write_str("none"),
            Transform::Awq(a) => write!(f, "awq{}", alpha(a)),
            Transform::Smooth(a) => write!(f, "smooth{}", alpha(a)),
        }
    }
}

impl FromStr for Transform {
    type Err = String;

    /// `none`, `awq` / `smooth` (alpha 0.5) or with alpha: `awq0.25`, `smooth0.8`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "none" {
            return Ok(Transform::None);
        }
        let (kind, rest): (fn(u8) -> Transform, &str) = if let Some(r) = s.strip_prefix("awq") {
            (Transform::Awq, r)
        } else if let Some(r) = s.strip_prefix("smooth") {
            (Transform::Smooth, r)
        } else {
            return Err(format!(
                "unknown transform '{s}' (none, awq, smooth, or with alpha: awq0.5, smooth0.8)"
            ));
        };
        if rest.is_empty() {
            return Ok(kind(50));
        }
        let alpha: f64 = rest
            .parse()
            .map_err(|_| format!("transform '{s}': alpha '{rest}' is not a number"))?;
        let hundredths = (alpha * 100.0).round();
        if !(0.0..=100.0).contains(&hundredths) || (hundredths / 100.0 - alpha).abs() > 1e-9 {
            return Err(format!(
                "transform '{s}': alpha must lie in [0, 1] in steps of 0.01"
            ));
        }
        Ok(kind(hundredths as u8))
    }
}

/// How a weight is rescaled before it is quantized: its columns multiplied (it reads a
/// rescaled input) and its rows divided (it produces one).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rescale<'a> {
    /// Per column, the factor.
    pub columns: Option<&'a [f32]>,
    /// Per row, the divisor.
    pub rows: Option<&'a [f32]>,
}

impl Rescale<'_> {
    /// No rescaling.
    pub const NONE: Rescale<'static> = Rescale {
        columns: None,
        rows: None,
    };

    /// Whether it changes nothing.
    pub fn is_none(&self) -> bool {
        self.columns.is_none() && self.rows.is_none()
    }

    /// `values` (row-major, `cols` per row) rescaled in place.
    pub fn apply(&self, values: &mut [f32], cols: usize) {
        for (i, row) in values.chunks_exact_mut(cols.max(1)).enumerate() {
            if let Some(s) = self.columns {
                row.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
            }
            if let Some(d) = self.rows {
                let d = d[i];
                row.iter_mut().for_each(|v| *v /= d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_refused() {
        for t in [
            Transform::None,
            Transform::Awq(50),
            Transform::Awq(25),
            Transform::Smooth(85),
            Transform::Smooth(100),
            Transform::Smooth(0),
        ] {
            assert_eq!(t.to_string().parse::<Transform>().unwrap(), t, "{t}");
        }
        assert_eq!(
            "smooth".parse::<Transform>().unwrap(),
            Transform::Smooth(50)
        );
        assert_eq!(Transform::Awq(50).to_string(), "awq0.5");
        for bad in ["awq1.5", "smooth0.123", "awqx", "gptq"] {
            assert!(bad.parse::<Transform>().is_err(), "{bad}");
        }
    }

    /// SmoothQuant at alpha 0.5 equalises the channel ranges of input and weight (up to the
    /// common factor the centring takes out): max|x/s| / max|W s| is the same for every
    /// channel; a channel never seen keeps scale 1; both are centred (max·min = 1).
    #[test]
    fn smooth_balances_ranges_and_awq_is_centred() {
        let (x, w) = ([100.0f32, 1.0, 4.0, 0.0], [0.5f32, 2.0, 1.0, 1.0]);
        let s = Transform::Smooth(50).scales(&[0.0; 4], &x, &w).unwrap();
        let ratio = |j: usize| (x[j] / s[j]) / (w[j] * s[j]);
        for j in 1..3 {
            assert!((ratio(j) - ratio(0)).abs() < 1e-4 * ratio(0), "{j}");
        }
        assert_eq!(s[3], 1.0);
        let (lo, hi) = s[..3]
            .iter()
            .fold((f32::MAX, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
        assert!((lo * hi - 1.0).abs() < 1e-5);
        let a = Transform::Awq(50)
            .scales(&[16.0, 1.0, 0.0], &x, &w)
            .unwrap();
        let (lo, hi) = a
            .iter()
            .fold((f32::MAX, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
        assert!((lo * hi - 1.0).abs() < 1e-5);
        assert!(a[0] > a[1] && a[1] > a[2], "{a:?}");
        assert!(Transform::None.scales(&[1.0], &[1.0], &[1.0]).is_none());
    }

    #[test]
    fn rescale_multiplies_columns_and_divides_rows() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        let r = Rescale {
            columns: Some(&[2.0, 10.0]),
            rows: Some(&[1.0, 2.0]),
        };
        r.apply(&mut v, 2);
        assert_eq!(v, [2.0, 20.0, 3.0, 20.0]);
    }
}
