//! GPTQ (Frantar et al. 2022): round a weight matrix one input column at a time and spread each
//! column's rounding error over the columns not yet rounded, weighted by the inverse Hessian of
//! the layer's output error, H = E[x xᵀ] over its calibration inputs.
//!
//! The grid every value is rounded to is fixed before rounding starts (the format's scales and
//! zero-points, chosen by the calibrator on the original weights, "static groups"), so columns
//! can be visited in any order: GPTQ's act-order, largest Hessian diagonal first. Errors are
//! pushed inside a block of [`BLOCK`] columns one column at a time and to the rest of the matrix
//! with one matrix product per block (lazy batch updates). Rows are independent given the
//! factor; they are processed in fixed chunks of [`ROWS`], in parallel, so results do not
//! depend on the thread count.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

/// Fraction of the Hessian's mean diagonal added to its diagonal (GPTQ's default dampening):
/// enough to make a rank-deficient H (fewer tokens than inputs) invertible.
const DAMP: f64 = 0.01;
/// Times the dampening is multiplied by 10 when H still is not positive definite.
const DAMP_RETRIES: usize = 4;
/// Columns rounded before their errors reach the rest of the matrix in one product.
const BLOCK: usize = 128;
/// Rows per task: fixed, so every row's arithmetic is the same whatever the thread count.
const ROWS: usize = 64;

/// E[x xᵀ] of a layer's inputs over the calibration tokens (symmetric, `dim` x `dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    dim: usize,
    tokens: u64,
    values: Vec<f32>,
}

impl Hessian {
    /// A Hessian from its row-major values, checked for shape and finiteness.
    pub fn new(dim: usize, tokens: u64, values: Vec<f32>) -> Result<Self, String> {
        if values.len() != dim * dim {
            return Err(format!("{} values for a {dim}x{dim} Hessian", values.len()));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err("Hessian contains NaN or Inf".into());
        }
        Ok(Hessian {
            dim,
            tokens,
            values,
        })
    }

    /// Inputs per token.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens it was accumulated over.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Row-major values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The Hessian of the input divided by `s` channel-wise, `diag(1/s) H diag(1/s)`: what a
    /// weight whose columns were multiplied by `s` (an input transform) is rounded against.
    pub fn scaled(&self, s: &[f32]) -> Hessian {
        let n = self.dim;
        Hessian {
            dim: n,
            tokens: self.tokens,
            values: self
                .values
                .iter()
                .enumerate()
                .map(|(k, v)| v / (s[k / n] * s[k % n]))
                .collect(),
        }
    }
}

/// Sums x xᵀ over token rows: each batch's product in f32 (a sum over one batch's tokens),
/// the batches in f64, in the order they arrive. Holds `dim`² f64.
#[derive(Debug, Clone)]
pub struct HessianSum {
    dim: usize,
    tokens: u64,
    sum: Vec<f64>,
}

impl HessianSum {
    /// An empty sum over inputs of `dim` values.
    pub fn new(dim: usize) -> Self {
        HessianSum {
            dim,
            tokens: 0,
            sum: vec![0.0; dim * dim],
        }
    }

    /// Adds the token rows of `x` (`[tokens, dim]`, row-major). The product is computed in
    /// fixed blocks of [`ROWS`] output rows in parallel, so it does not depend on the thread
    /// count.
    pub fn add(&mut self, x: &[f32]) {
        let n = self.dim;
        let t = x.len() / n;
        if t == 0 {
            return;
        }
        let x = MatRef::from_row_major_slice(&x[..t * n], t, n);
        self.sum
            .par_chunks_mut(ROWS * n)
            .enumerate()
            .for_each(|(b, sum)| {
                let (first, rows) = (b * ROWS, sum.len() / n);
                let mut batch = vec![0f32; rows * n];
                let g = MatMut::from_row_major_slice_mut(&mut batch, rows, n);
                let lhs = x.subcols(first, rows).transpose();
                matmul(g, Accum::Replace, lhs, x, 1.0f32, Par::Seq);
                for (s, &v) in sum.iter_mut().zip(&batch) {
                    *s += f64::from(v);
                }
            });
        self.tokens += t as u64;
    }

    /// The mean over the tokens added, exactly symmetric (the two halves' sums, computed in
    /// different blocks, are averaged), so the upper triangle holds it all.
    pub fn finish(self) -> Hessian {
        let (n, t) = (self.dim, self.tokens.max(1) as f64);
        let values = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                ((self.sum[i * n + j] + self.sum[j * n + i]) / (2.0 * t)) as f32
            })
            .collect();
        Hessian {
            dim: n,
            tokens: self.tokens,
            values,
        }
    }
}

/// What GPTQ needs from a Hessian, computed once and shared by every format of every weight
/// with that input: the column order (largest diagonal first) and the upper Cholesky factor
/// of the dampened inverse Hessian in that order.
#[derive(Debug, Clone)]
pub struct Factor {
    dim: usize,
    order: Vec<usize>,
    upper: Vec<f32>,
}

impl Factor {
    /// The factor of `h`. Inputs that were always zero (a zero diagonal) get a unit diagonal:
    /// their weights are rounded to nearest and pass no error on.
    pub fn new(h: &Hessian) -> Result<Factor, String> {
        let n = h.dim;
        let diag = |i: usize| f64::from(h.values[i * n + i]);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| diag(b).total_cmp(&diag(a)).then(a.cmp(&b)));
        let mean = (0..n).map(diag).sum::<f64>() / n.max(1) as f64;
        let mut damp = DAMP * mean.max(f64::MIN_POSITIVE);
        for _ in 0..=DAMP_RETRIES {
            let a = Mat::<f64>::from_fn(n, n, |i, j| {
                let (ci, cj) = (order[i], order[j]);
                if diag(ci) == 0.0 || diag(cj) == 0.0 {
                    return if i == j { 1.0 } else { 0.0 };
                }
                let v = f64::from(h.values[ci * n + cj]);
                if i == j {
                    v + damp
                } else {
                    v
                }
            });
            let Ok(llt) = a.llt(Side::Lower) else {
                damp *= 10.0;
                continue;
            };
            let Ok(inverse) = llt.inverse().llt(Side::Lower) else {
                damp *= 10.0;
                continue;
            };
            let lower = inverse.L();
            let upper = (0..n * n)
                .map(|k| {
                    let (i, j) = (k / n, k % n);
                    if j >= i {
                        lower[(j, i)] as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            return Ok(Factor {
                dim: n,
                order,
                upper,
            });
        }
        Err(format!(
            "the {n}x{n} input Hessian is not positive definite even with {damp:e} added to its diagonal"
        ))
    }

    /// Input columns.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rounds row-major `w` `[rows, cols]` column by column (in the factor's order) with
    /// `grid(row, col, x)`, the value the format stores for `x` at that position, pushing each
    /// column's error onto the columns not yet rounded. Returns the rounded values.
    pub fn round<G>(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        grid: &G,
    ) -> Result<Vec<f32>, String>
    where
        G: Fn(usize, usize, f32) -> f32 + Sync,
    {
        if cols != self.dim || w.len() != rows * cols {
            return Err(format!(
                "GPTQ of a {rows}x{cols} matrix ({} values) with a Hessian of {} inputs",
                w.len(),
                self.dim
            ));
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err("weights contain NaN or Inf".into());
        }
        let mut out = vec![0f32; w.len()];
        out.par_chunks_mut(ROWS * cols)
            .zip(w.par_chunks(ROWS * cols))
            .enumerate()
            .for_each(|(chunk, (out, w))| self.round_rows(w, chunk * ROWS, out, grid));
        Ok(out)
    }

    /// [`Self::round`] of the rows `w` (`first` is the first one's index), into `out`.
    fn round_rows<G>(&self, w: &[f32], first: usize, out: &mut [f32], grid: &G)
    where
        G: Fn(usize, usize, f32) -> f32,
    {
        let n = self.dim;
        let m = w.len() / n;
        // Column-major in processing order: column k of the work is `t[k * m..(k + 1) * m]`.
        let mut t = vec![0f32; n * m];
        for (r, row) in w.chunks_exact(n).enumerate() {
            for (k, &c) in self.order.iter().enumerate() {
                t[k * m + r] = row[c];
            }
        }
        let u = &self.upper;
        let mut err = vec![0f32; BLOCK * m];
        for i1 in (0..n).step_by(BLOCK) {
            let i2 = (i1 + BLOCK).min(n);
            let b = i2 - i1;
            for j in 0..b {
                let k = i1 + j;
                let c = self.order[k];
                let d = u[k * n + k];
                let (done, rest) = t.split_at_mut((k + 1) * m);
                let col = &mut done[k * m..];
                let e = &mut err[j * m..(j + 1) * m];
                for (r, (x, e)) in col.iter_mut().zip(e.iter_mut()).enumerate() {
                    let q = grid(first + r, c, *x);
                    *e = (*x - q) / d;
                    *x = q;
                }
                for (j2, next) in rest[..(b - j - 1) * m].chunks_exact_mut(m).enumerate() {
                    let h = u[k * n + k + 1 + j2];
                    for (x, e) in next.iter_mut().zip(e.iter()) {
                        *x -= h * *e;
                    }
                }
            }
            if i2 < n {
                // t[i2.., :] -= U[i1..i2, i2..]ᵀ · err
                let dst = MatMut::from_row_major_slice_mut(&mut t[i2 * m..], n - i2, m);
                let lhs = MatRef::from_row_major_slice_with_stride(&u[i1 * n + i2..], b, n - i2, n);
                let rhs = MatRef::from_row_major_slice(&err[..b * m], b, m);
                matmul(dst, Accum::Add, lhs.transpose(), rhs, -1.0f32, Par::Seq);
            }
        }
        for (r, row) in out.chunks_exact_mut(n).enumerate() {
            for (k, &c) in self.order.iter().enumerate() {
                row[c] = t[k * m + r];
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic pseudo-random stream in [-1, 1).
    pub(crate) fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Correlated inputs: a few shared factors plus noise, and some outlier channels.
    pub(crate) fn inputs(tokens: usize, dim: usize) -> Vec<f32> {
        let f = noise(1, tokens * 4);
        let e = noise(2, tokens * dim);
        let mix = noise(3, 4 * dim);
        let mut x = vec![0f32; tokens * dim];
        for t in 0..tokens {
            for i in 0..dim {
                let shared: f32 = (0..4).map(|k| f[t * 4 + k] * mix[k * dim + i]).sum();
                let scale = if i % 17 == 0 { 8.0 } else { 1.0 };
                x[t * dim + i] = scale * (shared + 0.3 * e[t * dim + i]);
            }
        }
        x
    }

    pub(crate) fn hessian(x: &[f32], dim: usize) -> Hessian {
        let mut s = HessianSum::new(dim);
        for batch in x.chunks(dim * 37) {
            s.add(batch);
        }
        s.finish()
    }

    /// Σ over tokens and rows of ((w - q) x)², the layer output's squared error.
    pub(crate) fn output_error(w: &[f32], q: &[f32], x: &[f32], rows: usize, dim: usize) -> f64 {
        let mut total = 0f64;
        for xt in x.chunks_exact(dim) {
            for r in 0..rows {
                let d: f64 = (0..dim)
                    .map(|i| f64::from(w[r * dim + i] - q[r * dim + i]) * f64::from(xt[i]))
                    .sum();
                total += d * d;
            }
        }
        total
    }

    #[test]
    fn hessian_sum_is_the_mean_outer_product() {
        let (t, n) = (50, 7);
        let x = noise(9, t * n);
        let h = hessian(&x, n);
        assert_eq!(h.tokens(), t as u64);
        for i in 0..n {
            for j in 0..n {
                let exact: f64 = (0..t)
                    .map(|k| f64::from(x[k * n + i]) * f64::from(x[k * n + j]))
                    .sum::<f64>()
                    / t as f64;
                let got = f64::from(h.values()[i * n + j]);
                assert!(
                    (got - exact).abs() <= 1e-5 * exact.abs() + 1e-7,
                    "({i},{j}): {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn factor_is_the_cholesky_factor_of_the_dampened_inverse() {
        let n = 24;
        let h = hessian(&inputs(200, n), n);
        let f = Factor::new(&h).unwrap();
        // Uᵀ U (processing order) times the dampened H (same order) is the identity.
        let mean = (0..n)
            .map(|i| f64::from(h.values()[i * n + i]))
            .sum::<f64>()
            / n as f64;
        let hp = |i: usize, j: usize| {
            f64::from(h.values()[f.order[i] * n + f.order[j]])
                + if i == j { DAMP * mean } else { 0.0 }
        };
        let u = |i: usize, j: usize| f64::from(f.upper[i * n + j]);
        for i in 0..n {
            for j in 0..n {
                let prod: f64 = (0..n)
                    .map(|k| (0..n).map(|l| u(l, i) * u(l, k)).sum::<f64>() * hp(k, j))
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((prod - want).abs() < 1e-3, "({i},{j}): {prod}");
            }
        }
        assert!(f
            .order
            .windows(2)
            .all(|p| { h.values()[p[0] * n + p[0]] >= h.values()[p[1] * n + p[1]] }));
    }

    #[test]
    fn gptq_lowers_the_output_error_of_rounding_to_nearest() {
        let (rows, n, tokens) = (70, 160, 400);
        let x = inputs(tokens, n);
        let h = hessian(&x, n);
        let f = Factor::new(&h).unwrap();
        let w = noise(5, rows * n);
        // A coarse uniform grid (3 bits over [-1, 1]).
        let step = 2.0 / 7.0;
        let grid = |_: usize, _: usize, v: f32| (v / step).round().clamp(-4.0, 3.0) * step;
        let nearest: Vec<f32> = w.iter().map(|&v| grid(0, 0, v)).collect();
        let q = f.round(&w, rows, n, &grid).unwrap();
        assert!(
            q.iter().all(|&v| grid(0, 0, v) == v),
            "values stay on the grid"
        );
        let (e_rtn, e_gptq) = (
            output_error(&w, &nearest, &x, rows, n),
            output_error(&w, &q, &x, rows, n),
        );
        assert!(e_gptq < 0.6 * e_rtn, "gptq {e_gptq} vs nearest {e_rtn}");
    }

    /// A weight whose columns were multiplied by `s` (its input divided by `s`) is rounded
    /// against `H.scaled(s)`: exactly the Hessian of the divided inputs, and the rounding that
    /// lowers the real output error, where the unscaled Hessian makes it worse than nearest.
    #[test]
    fn a_rescaled_weight_is_rounded_against_the_scaled_hessian() {
        let (rows, n, tokens) = (40, 64, 300);
        let x = inputs(tokens, n);
        let s: Vec<f32> = (0..n)
            .map(|i| if i % 17 == 0 { 6.0 } else { 0.5 })
            .collect();
        let divided: Vec<f32> = x.iter().enumerate().map(|(k, v)| v / s[k % n]).collect();
        let h = hessian(&x, n);
        let direct = hessian(&divided, n);
        for (a, b) in h.scaled(&s).values().iter().zip(direct.values()) {
            assert!((a - b).abs() <= 1e-5 * b.abs() + 1e-7, "{a} vs {b}");
        }
        let w: Vec<f32> = noise(6, rows * n)
            .iter()
            .enumerate()
            .map(|(k, v)| v * s[k % n])
            .collect();
        let step = 0.4;
        let grid = |_: usize, _: usize, v: f32| (v / step).round().clamp(-8.0, 7.0) * step;
        let nearest: Vec<f32> = w.iter().map(|&v| grid(0, 0, v)).collect();
        let error = |q: &[f32]| output_error(&w, q, &divided, rows, n);
        let scaled = Factor::new(&h.scaled(&s))
            .unwrap()
            .round(&w, rows, n, &grid)
            .unwrap();
        let unscaled = Factor::new(&h).unwrap().round(&w, rows, n, &grid).unwrap();
        let (e_rtn, e_scaled, e_unscaled) = (error(&nearest), error(&scaled), error(&unscaled));
        assert!(
            e_scaled < 0.7 * e_rtn,
            "scaled {e_scaled} vs nearest {e_rtn}"
        );
        assert!(
            e_unscaled > e_rtn,
            "unscaled {e_unscaled} vs nearest {e_rtn}"
        );
    }

    #[test]
    fn dead_inputs_are_rounded_to_nearest_and_results_do_not_depend_on_threads() {
        let (rows, n, tokens) = (130, 40, 90);
        let mut x = inputs(tokens, n);
        for t in 0..tokens {
            x[t * n + 3] = 0.0;
        }
        let f = Factor::new(&hessian(&x, n)).unwrap();
        let w = noise(8, rows * n);
        let grid = |_: usize, _: usize, v: f32| (v * 4.0).round() / 4.0;
        let q = f.round(&w, rows, n, &grid).unwrap();
        for r in 0..rows {
            assert_eq!(q[r * n + 3], grid(0, 0, w[r * n + 3]));
        }
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| f.round(&w, rows, n, &grid).unwrap());
        assert_eq!(
            q.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let f = Factor::new(&hessian(&inputs(30, 8), 8)).unwrap();
        let g = |_: usize, _: usize, v: f32| v;
        assert!(f.round(&[0.0; 12], 2, 6, &g).is_err());
        assert!(f.round(&[f32::NAN; 16], 2, 8, &g).is_err());
        assert!(Hessian::new(2, 1, vec![1.0; 3]).is_err());
        assert!(Hessian::new(1, 1, vec![f32::INFINITY]).is_err());
    }
}
