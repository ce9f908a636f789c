//! Least squares of the relative error with non-negative coefficients, as the fitted rates
//! need.

/// Least squares of the relative error: the non-negative `theta` minimising
/// `sum_i ((features_i . theta) / t_i - 1)^2`; features that would come out negative are
/// dropped (held at 0).
pub(super) fn fit_relative(features: &[Vec<f64>], t: &[f64]) -> Vec<f64> {
    let n = features.first().map_or(0, Vec::len);
    // A feature that is zero everywhere (no unpack term) is not fitted.
    let mut active: Vec<bool> = (0..n)
        .map(|j| features.iter().any(|f| f[j] != 0.0))
        .collect();
    loop {
        let idx: Vec<usize> = (0..n).filter(|&j| active[j]).collect();
        let k = idx.len();
        // Normal equations A^T A theta = A^T 1 with rows a_i = features_i / t_i.
        let mut m = vec![vec![0.0; k + 1]; k];
        for (f, &ti) in features.iter().zip(t) {
            for (r, &jr) in idx.iter().enumerate() {
                for (c, &jc) in idx.iter().enumerate() {
                    m[r][c] += f[jr] * f[jc] / (ti * ti);
                }
                m[r][k] += f[jr] / ti;
            }
        }
        let sol = solve(m);
        let mut theta = vec![0.0; n];
        for (v, &j) in sol.iter().zip(&idx) {
            theta[j] = *v;
        }
        match idx.iter().copied().find(|&j| theta[j] < 0.0) {
            Some(j) if k > 1 => active[j] = false,
            _ => return theta.iter().map(|v| v.max(0.0)).collect(),
        }
    }
}

/// Gaussian elimination with partial pivoting on an augmented k x (k+1) system.
fn solve(mut m: Vec<Vec<f64>>) -> Vec<f64> {
    let k = m.len();
    for col in 0..k {
        let pivot = (col..k)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .unwrap_or(col);
        if m[pivot][col].abs() < f64::MIN_POSITIVE {
            continue;
        }
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (v, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    (0..k)
        .map(|r| {
            if m[r][r].abs() < f64::MIN_POSITIVE {
                0.0
            } else {
                m[r][k] / m[r][r]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_fit_recovers_a_line_and_drops_negative_terms() {
        let feats: Vec<Vec<f64>> = [(1.0, 10.0), (1.0, 100.0), (1.0, 1000.0)]
            .iter()
            .map(|&(a, b)| vec![a, b])
            .collect();
        let t: Vec<f64> = feats.iter().map(|f| 3.0 + 0.5 * f[1]).collect();
        let theta = fit_relative(&feats, &t);
        assert!((theta[0] - 3.0).abs() < 1e-9 && (theta[1] - 0.5).abs() < 1e-12);
        // A decreasing series would need a negative slope: it is dropped, the rest refitted.
        let theta = fit_relative(&feats, &[3.0, 2.0, 1.0]);
        assert_eq!(theta[1], 0.0);
        assert!(theta[0] > 1.0 && theta[0] < 3.0);
    }
}
