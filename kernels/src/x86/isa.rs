//! The two vector widths the x86 kernels are instantiated at: 8 f32 lanes (AVX2 + FMA + F16C)
//! and 16 (AVX-512 F + BW on top of those). The kernels are written once against [`Isa`] as
//! `#[inline(always)]` generic code and entered through [`Isa::enter`], which carries the
//! target features, so each width compiles to its own instructions.

use std::arch::x86_64::*;

/// Work run with an ISA's target features. `run` must be `#[inline(always)]`: it is then
/// compiled inside the featured entry function, and so are the `#[inline(always)]` kernels it
/// calls (a closure would be left to the inliner's judgement, and a kernel not inlined calls
/// every intrinsic out of line, about 50 times slower).
pub(crate) trait Job {
    type Out;
    unsafe fn run(self) -> Self::Out;
}

/// One vector width: its f32 and i32 vector types and the operations the kernels use.
pub(crate) trait Isa: Copy + Send + Sync + 'static {
    /// Vector of `LANES` f32.
    type F: Copy;
    /// Vector of `LANES` i32.
    type I: Copy;
    /// f32 (and i32) lanes per vector.
    const LANES: usize;

    /// Runs `job` inside a function compiled with this width's target features.
    ///
    /// # Safety
    /// The CPU must support the features (checked by `crate::Backend::is_available`).
    unsafe fn enter<J: Job>(job: J) -> J::Out;

    unsafe fn zero() -> Self::F;
    unsafe fn splat(v: f32) -> Self::F;
    unsafe fn load(p: *const f32) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c` with one rounding.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// Sum of the lanes, in a fixed order.
    unsafe fn hsum(v: Self::F) -> f32;
    /// Lane `j` of the result is lane `idx[j]` of `v`.
    unsafe fn permute(v: Self::F, idx: Self::I) -> Self::F;
    /// `LANES` f16 values from `p`, widened.
    unsafe fn load_f16(p: *const u16) -> Self::F;
    /// `LANES` bytes from `p`, widened.
    unsafe fn load_u8(p: *const u8) -> Self::F;

    /// `4 * LANES` bytes from `p` (unaligned).
    unsafe fn load_i(p: *const u8) -> Self::I;
    unsafe fn splat_i(v: i32) -> Self::I;
    unsafe fn and_i(a: Self::I, b: Self::I) -> Self::I;
    /// Logical right shift of every lane by `n` (a constant after inlining).
    unsafe fn shr_i(a: Self::I, n: i32) -> Self::I;
    /// Signed lanes to f32.
    unsafe fn to_f32(a: Self::I) -> Self::F;
    /// 128-bit chunk `q` of the result is the 16 bytes at `p + q * step`.
    unsafe fn load_chunks(p: *const u8, step: usize) -> Self::I;
    /// Byte shuffle within each 128-bit chunk (`vpshufb`).
    unsafe fn shuffle_bytes(a: Self::I, ctrl: Self::I) -> Self::I;
}

/// AVX2 + FMA + F16C: eight lanes.
#[derive(Clone, Copy)]
pub(crate) struct V256;

/// AVX-512 F + BW (with AVX2, FMA, F16C): sixteen lanes.
#[derive(Clone, Copy)]
pub(crate) struct V512;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn enter_avx2<J: Job>(job: J) -> J::Out {
    job.run()
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn enter_avx512<J: Job>(job: J) -> J::Out {
    job.run()
}

/// Sum of the eight lanes, in a fixed order.
#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

impl Isa for V256 {
    type F = __m256;
    type I = __m256i;
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn enter<J: Job>(job: J) -> J::Out {
        enter_avx2(job)
    }
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        hsum256(v)
    }
    #[inline(always)]
    unsafe fn permute(v: __m256, idx: __m256i) -> __m256 {
        _mm256_permutevar8x32_ps(v, idx)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn load_i(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn splat_i(v: i32) -> __m256i {
        _mm256_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn and_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_and_si256(a, b)
    }
    #[inline(always)]
    unsafe fn shr_i(a: __m256i, n: i32) -> __m256i {
        _mm256_srl_epi32(a, _mm_cvtsi32_si128(n))
    }
    #[inline(always)]
    unsafe fn to_f32(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn load_chunks(p: *const u8, step: usize) -> __m256i {
        _mm256_loadu2_m128i(p.add(step) as *const __m128i, p as *const __m128i)
    }
    #[inline(always)]
    unsafe fn shuffle_bytes(a: __m256i, ctrl: __m256i) -> __m256i {
        _mm256_shuffle_epi8(a, ctrl)
    }
}

impl Isa for V512 {
    type F = __m512;
    type I = __m512i;
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn enter<J: Job>(job: J) -> J::Out {
        enter_avx512(job)
    }
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        // The two 256-bit halves first, then as AVX2 does: a fixed order.
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        hsum256(_mm256_add_ps(lo, hi))
    }
    #[inline(always)]
    unsafe fn permute(v: __m512, idx: __m512i) -> __m512 {
        _mm512_permutexvar_ps(idx, v)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn load_i(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p as *const __m512i)
    }
    #[inline(always)]
    unsafe fn splat_i(v: i32) -> __m512i {
        _mm512_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn and_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_and_si512(a, b)
    }
    #[inline(always)]
    unsafe fn shr_i(a: __m512i, n: i32) -> __m512i {
        _mm512_srl_epi32(a, _mm_cvtsi32_si128(n))
    }
    #[inline(always)]
    unsafe fn to_f32(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn load_chunks(p: *const u8, step: usize) -> __m512i {
        let lo = _mm256_loadu2_m128i(p.add(step) as *const __m128i, p as *const __m128i);
        let hi = _mm256_loadu2_m128i(
            p.add(3 * step) as *const __m128i,
            p.add(2 * step) as *const __m128i,
        );
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
    #[inline(always)]
    unsafe fn shuffle_bytes(a: __m512i, ctrl: __m512i) -> __m512i {
        _mm512_shuffle_epi8(a, ctrl)
    }
}
