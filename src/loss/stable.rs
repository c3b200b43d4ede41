//! Numerically stable per-logit building blocks, generic over `f32`/`f64` and over the source of
//! `exp`/`log1p`, so that the scalar references, the loss curves and the fused tensor kernels all
//! evaluate one and the same formula.
//!
//! Everything is written from a logit `x` through `e = exp(-|x|)` (in `(0, 1]`, never overflows)
//! and `l = log1p(e)`:
//! `softplus(x) = max(x, 0) + l`, `sigmoid(x) = 1/(1+e)` or `e/(1+e)` by the sign of `x`.
//! Powers of `1 - p_t` are taken as `exp(-gamma * softplus(x_t))`, never with `powf`, so that
//! neither the value nor the analytic gradient is NaN for `gamma < 1` when `p_t` rounds to 1.

use std::ops::{Add, Div, Mul, Neg, Sub};

/// The floating-point operations the loss formulas need.
pub trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn abs(self) -> Self;
    /// `max` that compiles to a branch-free select.
    #[inline(always)]
    fn max0(self) -> Self {
        if self > Self::ZERO {
            self
        } else {
            Self::ZERO
        }
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
}

/// Where `exp` and `log1p` come from. The formulas only ever need `exp` of a non-positive number
/// and `log1p` of a number in `[0, 1]`, which lets [`FastMath`] skip all range handling.
pub trait Transcendental<F: Real> {
    /// `exp(v)` for `v <= 0`.
    fn exp_nonpos(v: F) -> F;
    /// `log(1 + u)` for `u` in `[0, 1]`.
    fn ln_1p_unit(u: F) -> F;
}

/// The standard library's correctly rounded-ish `exp`/`ln_1p` (references, curves, analysis).
#[derive(Debug, Clone, Copy)]
pub struct StdMath;

impl Transcendental<f64> for StdMath {
    #[inline(always)]
    fn exp_nonpos(v: f64) -> f64 {
        v.exp()
    }
    #[inline(always)]
    fn ln_1p_unit(u: f64) -> f64 {
        u.ln_1p()
    }
}

impl Transcendental<f32> for StdMath {
    #[inline(always)]
    fn exp_nonpos(v: f32) -> f32 {
        v.exp()
    }
    #[inline(always)]
    fn ln_1p_unit(u: f32) -> f32 {
        u.ln_1p()
    }
}

/// Branch-free polynomial `exp`/`log1p` in `f32` (a few ulp), written so that the compiler
/// vectorizes loops over them; the libm calls cannot be vectorized and dominate a loss pass
/// over 10^6 logits otherwise.
#[derive(Debug, Clone, Copy)]
pub struct FastMath;

impl Transcendental<f32> for FastMath {
    #[inline(always)]
    fn exp_nonpos(v: f32) -> f32 {
        // Below -87 the result would be subnormal; 2^-126 (~1e-38) stands in for it, an absolute
        // error that no loss sum can see. Written so that NaN passes through (a diverged model
        // must produce a NaN loss, not a finite one).
        let v = if v < -87.0 { -87.0 } else { v };
        // Round v/ln2 to an integer with the 1.5*2^23 trick: the integer lands in the low mantissa bits.
        const MAGIC: f32 = 12_582_912.0;
        let t = v * std::f32::consts::LOG2_E + MAGIC;
        let n = t - MAGIC;
        let r = v - n * 0.693_145_75 - n * 1.428_606_8e-6;
        // Taylor series of degree 7 on |r| <= ln2/2: truncation error below 1e-8 relative.
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0
                        + r * (1.0 / 24.0
                            + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
        let bits = (t.to_bits() as i32).wrapping_sub(0x4B40_0000 - 127) << 23;
        p * f32::from_bits(bits as u32)
    }

    #[inline(always)]
    fn ln_1p_unit(u: f32) -> f32 {
        // log1p(u) = 2 atanh(z), z = u/(2+u) in [0, 1/3]: relative accuracy is kept for tiny u.
        let z = u / (2.0 + u);
        let w = z * z;
        let s = 1.0
            + w * (1.0 / 3.0
                + w * (1.0 / 5.0
                    + w * (1.0 / 7.0 + w * (1.0 / 9.0 + w * (1.0 / 11.0 + w * (1.0 / 13.0))))));
        2.0 * z * s
    }
}

/// The shared pieces of one logit: `e = exp(-|x|)` and `l = log1p(e)`.
#[derive(Debug, Clone, Copy)]
pub struct LogitParts<F> {
    pub x: F,
    pub e: F,
    pub l: F,
}

impl<F: Real> LogitParts<F> {
    #[inline(always)]
    pub fn new<M: Transcendental<F>>(x: F) -> Self {
        let e = M::exp_nonpos(-x.abs());
        Self {
            x,
            e,
            l: M::ln_1p_unit(e),
        }
    }
    /// `softplus(x) = log(1 + exp(x)) = -log(sigmoid(-x))`.
    #[inline(always)]
    pub fn softplus(&self) -> F {
        self.x.max0() + self.l
    }
    /// `softplus(-x) = -log(sigmoid(x))`.
    #[inline(always)]
    pub fn softplus_neg(&self) -> F {
        (-self.x).max0() + self.l
    }
    /// `(sigmoid(x), sigmoid(-x))`, both with full relative accuracy.
    #[inline(always)]
    pub fn sigmoids(&self) -> (F, F) {
        let r = F::ONE / (F::ONE + self.e);
        let small = self.e * r;
        if self.x >= F::ZERO {
            (r, small)
        } else {
            (small, r)
        }
    }
}

/// `log(1 + exp(x))`, stable for any finite `x`.
pub fn softplus<F: Real>(x: F) -> F
where
    StdMath: Transcendental<F>,
{
    LogitParts::<F>::new::<StdMath>(x).softplus()
}

/// `log(sigmoid(x)) = -softplus(-x)`, stable for any finite `x`.
pub fn log_sigmoid<F: Real>(x: F) -> F
where
    StdMath: Transcendental<F>,
{
    -LogitParts::<F>::new::<StdMath>(x).softplus_neg()
}

/// `1 / (1 + exp(-x))` without overflow.
pub fn sigmoid<F: Real>(x: F) -> F
where
    StdMath: Transcendental<F>,
{
    LogitParts::<F>::new::<StdMath>(x).sigmoids().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_matches_naive_in_safe_range_and_is_finite_outside() {
        for i in -200..=200 {
            let x = i as f64 * 0.1;
            let naive = (1.0 + x.exp()).ln();
            assert!(
                (softplus(x) - naive).abs() < 1e-12 * naive.max(1.0),
                "x={x}"
            );
            assert!((log_sigmoid(x) + (1.0 + (-x).exp()).ln()).abs() < 1e-12 * naive.max(1.0));
            assert!((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-15);
        }
        assert_eq!(softplus(1e4_f64), 1e4);
        assert!(softplus(-1e4_f64) >= 0.0 && softplus(-1e4_f64) < 1e-300);
        assert_eq!(log_sigmoid(-1e4_f32), -1e4);
        assert!(sigmoid(-1e4_f32) >= 0.0 && sigmoid(1e4_f32) == 1.0);
    }

    #[test]
    fn fast_math_is_within_a_few_ulp_of_std() {
        let mut worst_exp = 0.0f64;
        let mut worst_log = 0.0f64;
        for i in 0..=200_000 {
            let v = -(i as f64) * 86.0 / 200_000.0;
            let fast = FastMath::exp_nonpos(v as f32) as f64;
            let exact = (v as f32 as f64).exp();
            worst_exp = worst_exp.max((fast - exact).abs() / exact);
            let u = i as f64 / 200_000.0;
            let fast = FastMath::ln_1p_unit(u as f32) as f64;
            let exact = (u as f32 as f64).ln_1p();
            if exact > 0.0 {
                worst_log = worst_log.max((fast - exact).abs() / exact);
            }
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(worst_log < 5e-7, "log1p relative error {worst_log}");
        // Tiny arguments keep their relative accuracy, and the clamp stays finite and positive.
        let tiny = 1e-30_f32;
        assert!(((FastMath::ln_1p_unit(tiny) - tiny) / tiny).abs() < 1e-6);
        let floor = FastMath::exp_nonpos(-1e4);
        assert!(floor > 0.0 && floor < 1e-37);
    }
}
