//! GEMV/GEMM against "dequantize, then matmul in f64", and SIMD against scalar.

use super::*;
use crate::matrix::Zeros;
use crate::pack::{pack, packed_len, SUPPORTED_BITS};
use half::f16;
use proptest::prelude::*;

/// Deterministic xorshift generator for fixtures.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 11) % n
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// An owned random quantized matrix.
struct Fixture {
    bits: u32,
    rows: usize,
    cols: usize,
    gs: usize,
    packed: Vec<u8>,
    scales: Vec<u16>,
    zeros: Option<Vec<u8>>,
}

impl Fixture {
    fn new(bits: u32, rows: usize, cols: usize, gs: usize, per_group: bool, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let ng = cols.div_ceil(gs);
        let rb = packed_len(cols, bits);
        let mut packed = vec![0u8; rows * rb];
        let mut codes = vec![0u8; cols];
        for r in 0..rows {
            for c in codes.iter_mut() {
                *c = rng.below(1 << bits) as u8;
            }
            pack(&codes, bits, &mut packed[r * rb..(r + 1) * rb]).unwrap();
        }
        let scales = (0..rows * ng)
            .map(|_| f16::from_f32(0.001 + 0.1 * rng.unit()).to_bits())
            .collect();
        let zeros = per_group.then(|| (0..rows * ng).map(|_| rng.below(1 << bits) as u8).collect());
        Fixture {
            bits,
            rows,
            cols,
            gs,
            packed,
            scales,
            zeros,
        }
    }

    fn view(&self) -> PackedMatrix<'_> {
        let zeros = match &self.zeros {
            Some(z) => Zeros::PerGroup(z),
            None => Zeros::Constant(1 << (self.bits - 1)),
        };
        PackedMatrix::new(
            self.bits,
            self.rows,
            self.cols,
            self.gs,
            &self.packed,
            &self.scales,
            zeros,
        )
        .unwrap()
    }
}

fn random_x(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0xABCD);
    (0..n).map(|_| 2.0 * rng.unit() - 1.0).collect()
}

/// Reference `y = X W^T` in f64 from the dequantized matrix, with the tolerance of each
/// output: `1e-5 * sum |w x|` plus `1e-6 * sum |s z x|` (the zero-point identity subtracts
/// `s z sum x` and so inherits that term's rounding).
fn reference(w: &PackedMatrix, x: &[f32], batch: usize) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (w.rows(), w.cols());
    let mut wd = vec![0f32; rows * cols];
    w.try_dequantize(&mut wd).unwrap();
    let mut y = vec![0f64; batch * rows];
    let mut tol = vec![0f64; batch * rows];
    for b in 0..batch {
        for r in 0..rows {
            let (mut s, mut a, mut zt) = (0f64, 0f64, 0f64);
            for c in 0..cols {
                let p = wd[r * cols + c] as f64 * x[b * cols + c] as f64;
                s += p;
                a += p.abs();
                let g = c / w.group_size();
                let z = w.zeros().get(r, g, w.n_groups()) as f64;
                zt += (w.scale(r, g) as f64 * z * x[b * cols + c] as f64).abs();
            }
            y[b * rows + r] = s;
            tol[b * rows + r] = 1e-5 * a + 1e-6 * zt;
        }
    }
    (y, tol)
}

fn backends() -> Vec<Backend> {
    [Backend::Scalar, Backend::Avx2, Backend::Avx512]
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: &[f64], what: &str) {
    for (i, ((&g, &w), &t)) in got.iter().zip(want).zip(tol).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= t,
            "{what}: output {i}: got {g}, want {w}, err {err:e} > tol {t:e}"
        );
    }
}

/// Group sizes to test for `cols`: the standard ones plus per-channel.
fn group_sizes(cols: usize) -> Vec<usize> {
    vec![32, 64, 128, 256, cols.max(1)]
}

const SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 7),
    (2, 31),
    (5, 32),
    (7, 64),
    (3, 100),
    (5, 257),
    (17, 96),
    (4, 520),
];

fn check_gemv(f: &Fixture, seed: u64) {
    let w = f.view();
    let x = random_x(f.cols, seed);
    let (want, tol) = reference(&w, &x, 1);
    let mut ys = Vec::new();
    for be in backends() {
        let mut y = vec![f32::NAN; f.rows];
        gemv_with(be, &w, &x, &mut y).unwrap();
        let what = format!(
            "gemv {} bits {} {}x{} gs {} per_group {}",
            be.name(),
            f.bits,
            f.rows,
            f.cols,
            f.gs,
            f.zeros.is_some()
        );
        assert_close(&y, &want, &tol, &what);
        ys.push(y);
    }
    // SIMD == scalar within the same tolerance (each is within it of the reference).
    let twice: Vec<f64> = tol.iter().map(|t| 2.0 * t).collect();
    let scalar: Vec<f64> = ys[0].iter().map(|&v| v as f64).collect();
    for (be, y) in backends().into_iter().zip(&ys).skip(1) {
        assert_close(y, &scalar, &twice, &format!("gemv {} vs scalar", be.name()));
    }
}

fn check_gemm(f: &Fixture, batch: usize, seed: u64) {
    let w = f.view();
    let x = random_x(batch * f.cols, seed);
    let (want, tol) = reference(&w, &x, batch);
    for be in backends() {
        let mut y = vec![f32::NAN; batch * f.rows];
        gemm_with(be, &w, &x, batch, &mut y).unwrap();
        let what = format!(
            "gemm {} bits {} {}x{} gs {} batch {batch} per_group {}",
            be.name(),
            f.bits,
            f.rows,
            f.cols,
            f.gs,
            f.zeros.is_some()
        );
        assert_close(&y, &want, &tol, &what);
    }
}

#[test]
fn backend_detection() {
    assert!(Backend::Scalar.is_available());
    assert!(Backend::detect().is_available());
    assert_eq!(Backend::Scalar.name(), "scalar");
    assert_eq!(Backend::Avx2.name(), "avx2");
    assert_eq!(Backend::Avx512.name(), "avx512");
    // The widest available backend is the default; AVX-512 implies AVX2.
    assert_eq!(Backend::detect(), *backends().last().unwrap());
    if Backend::Avx512.is_available() {
        assert!(Backend::Avx2.is_available());
    }
    let w = PackedMatrix::new(4, 1, 2, 2, &[0], &[0], Zeros::Constant(8)).unwrap();
    for be in [Backend::Avx2, Backend::Avx512] {
        if !be.is_available() {
            assert_eq!(
                gemv_with(be, &w, &[0.0; 2], &mut [0.0]),
                Err(KernelError::BackendUnavailable(be.name()))
            );
        }
    }
    // Records which paths the other tests exercised.
    eprintln!("backends under test: {:?}", backends());
}

#[test]
fn covered_cols_rounds_rows_up_to_whole_blocks() {
    for bits in SUPPORTED_BITS {
        for cols in [1, 31, 384, 576, 640, 4096] {
            let covered = covered_cols(bits, 32.min(cols), cols);
            // A block is at most 256 codes (2-bit codes at AVX-512 width).
            assert!(covered >= cols && covered < cols + 256, "{bits} {cols}");
        }
    }
    // INT2 g32, INT4 g32, INT8 per channel, INT3 g64 at 384 and 576 columns.
    let got = [(2, 32, 384), (4, 32, 576), (8, 576, 576), (3, 64, 576)]
        .map(|(bits, group, cols)| covered_cols(bits, group, cols));
    let want = match Backend::detect() {
        // Blocks of 256, 128, 64 and 64 codes.
        Backend::Avx512 => [512, 640, 576, 576],
        // Blocks of 128, 64, 32 and 32 codes.
        Backend::Avx2 => [384, 576, 576, 576],
        Backend::Scalar => [384, 576, 576, 576],
    };
    assert_eq!(got, want);
}

#[test]
fn gemv_all_formats_match_reference() {
    let mut seed = 1;
    for bits in SUPPORTED_BITS {
        for (rows, cols) in SHAPES {
            for gs in group_sizes(cols) {
                for per_group in [false, true] {
                    seed += 1;
                    check_gemv(&Fixture::new(bits, rows, cols, gs, per_group, seed), seed);
                }
            }
        }
    }
}

#[test]
fn gemm_all_formats_match_reference() {
    let mut seed = 1000;
    for bits in SUPPORTED_BITS {
        for (rows, cols) in [(3, 7), (5, 100), (7, 257), (9, 64)] {
            for gs in group_sizes(cols) {
                for per_group in [false, true] {
                    seed += 1;
                    let f = Fixture::new(bits, rows, cols, gs, per_group, seed);
                    for batch in 1..=7 {
                        check_gemm(&f, batch, seed + batch as u64);
                    }
                }
            }
        }
    }
}

#[test]
fn odd_group_sizes_match_reference() {
    // Group sizes of no standard format: 8 and 16 nest in the 2/4-bit blocks (several groups
    // per block), the others do not and take the portable fallback.
    let mut seed = 5000;
    for bits in SUPPORTED_BITS {
        for gs in [1, 5, 8, 16, 48, 100] {
            for per_group in [false, true] {
                seed += 1;
                let f = Fixture::new(bits, 5, 203, gs, per_group, seed);
                check_gemv(&f, seed);
                check_gemm(&f, 3, seed);
            }
        }
    }
}

#[test]
fn larger_matrix_and_batch() {
    for (bits, gs, pg) in [
        (4, 32, true),
        (8, 768, false),
        (2, 32, true),
        (3, 128, true),
    ] {
        let f = Fixture::new(bits, 33, 768, gs, pg, 77 + bits as u64);
        check_gemv(&f, 5);
        check_gemm(&f, 16, 6);
    }
}

#[test]
fn deterministic_across_thread_counts() {
    let f = Fixture::new(4, 301, 1000, 32, true, 9);
    let w = f.view();
    let x = random_x(1000, 3);
    let xb = random_x(5 * 1000, 4);
    let run = |threads: usize, be: Backend| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut y = vec![0f32; 301];
            gemv_with(be, &w, &x, &mut y).unwrap();
            let mut yb = vec![0f32; 5 * 301];
            gemm_with(be, &w, &xb, 5, &mut yb).unwrap();
            let bits: Vec<u32> = y.iter().chain(&yb).map(|v| v.to_bits()).collect();
            bits
        })
    };
    for be in backends() {
        assert_eq!(run(1, be), run(2, be), "{}", be.name());
        assert_eq!(run(2, be), run(3, be), "{}", be.name());
    }
}

#[test]
fn length_errors() {
    let f = Fixture::new(4, 3, 10, 32, false, 1);
    let w = f.view();
    for be in backends() {
        assert!(matches!(
            gemv_with(be, &w, &[0.0; 9], &mut [0.0; 3]),
            Err(KernelError::LengthMismatch { what: "x", .. })
        ));
        assert!(matches!(
            gemv_with(be, &w, &[0.0; 10], &mut [0.0; 4]),
            Err(KernelError::LengthMismatch { what: "y", .. })
        ));
        assert!(matches!(
            gemm_with(be, &w, &[0.0; 20], 3, &mut [0.0; 9]),
            Err(KernelError::LengthMismatch { what: "x", .. })
        ));
        assert!(matches!(
            gemm_with(be, &w, &[0.0; 30], 3, &mut [0.0; 8]),
            Err(KernelError::LengthMismatch { what: "y", .. })
        ));
        assert!(matches!(
            gemm_with(be, &w, &[], usize::MAX, &mut []),
            Err(KernelError::SizeOverflow(_))
        ));
        assert!(gemm_with(be, &w, &[], 0, &mut []).is_ok());
    }
}

#[test]
fn empty_shapes() {
    for be in backends() {
        let w = PackedMatrix::new(4, 0, 8, 32, &[], &[], Zeros::Constant(8)).unwrap();
        gemv_with(be, &w, &[1.0; 8], &mut []).unwrap();
        gemm_with(be, &w, &[1.0; 16], 2, &mut []).unwrap();
        let w = PackedMatrix::new(4, 3, 0, 32, &[], &[], Zeros::Constant(8)).unwrap();
        let mut y = [f32::NAN; 3];
        gemv_with(be, &w, &[], &mut y).unwrap();
        assert_eq!(y, [0.0; 3]);
        let mut y = [f32::NAN; 6];
        gemm_with(be, &w, &[], 2, &mut y).unwrap();
        assert_eq!(y, [0.0; 6]);
    }
}

#[test]
fn constant_zero_matches_explicit_per_group_zero() {
    // Symmetric storage (Constant) and the same zero written out per group agree exactly in
    // the dequantized values, and within rounding in the products.
    let f = Fixture::new(5, 6, 200, 64, false, 21);
    let z = vec![16u8; 6 * 4];
    let wc = f.view();
    let wp = PackedMatrix::new(5, 6, 200, 64, &f.packed, &f.scales, Zeros::PerGroup(&z)).unwrap();
    let (mut a, mut b) = (vec![0f32; 1200], vec![0f32; 1200]);
    wc.dequantize(&mut a);
    wp.dequantize(&mut b);
    assert_eq!(a, b);
    let x = random_x(200, 1);
    let (want, tol) = reference(&wp, &x, 1);
    let mut y = vec![0f32; 6];
    gemv(&wp, &x, &mut y).unwrap();
    assert_close(&y, &want, &tol, "per-group constant zeros");
}

#[test]
fn exact_cancellation_stays_within_zero_term_rounding() {
    // Every code equals its zero point, so the true product is exactly 0; the zero-point
    // identity computes s*q*x - s*z*x with different roundings, which is why the tolerance
    // has a (tiny) term in sum |s z x|.
    for bits in SUPPORTED_BITS {
        for cols in [1usize, 2, 3, 33] {
            let z = 1u8 << (bits - 1);
            let mut packed = vec![0u8; packed_len(cols, bits)];
            pack(&vec![z; cols], bits, &mut packed).unwrap();
            let scales = vec![f16::from_f32(0.37).to_bits(); 1];
            let w = PackedMatrix::new(bits, 1, cols, cols, &packed, &scales, Zeros::Constant(z))
                .unwrap();
            let x = random_x(cols, cols as u64);
            let (want, tol) = reference(&w, &x, 1);
            assert_eq!(want, [0.0]);
            for be in backends() {
                let mut y = [f32::NAN];
                gemv_with(be, &w, &x, &mut y).unwrap();
                assert_close(&y, &want, &tol, be.name());
                let mut y = [f32::NAN];
                gemm_with(be, &w, &x, 1, &mut y).unwrap();
                assert_eq!(y, [0.0], "gemm dequantizes exactly");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn prop_products_match_reference(
        bits_idx in 0usize..6,
        rows in 1usize..12,
        cols in 1usize..300,
        gs_idx in 0usize..6,
        per_group in any::<bool>(),
        batch in 1usize..6,
        seed in any::<u64>(),
    ) {
        let bits = SUPPORTED_BITS[bits_idx];
        let gs = [32, 64, 128, 256, cols, 40][gs_idx];
        let f = Fixture::new(bits, rows, cols, gs, per_group, seed);
        check_gemv(&f, seed);
        check_gemm(&f, batch, seed);
    }
}
