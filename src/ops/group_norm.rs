//! Group normalization on the CPU in f32: one kernel for the forward pass and one for the backward
//! pass, instead of candle's nine composed ops each way (each a full pass over the activations and
//! an allocation). Statistics are accumulated in f64; the backward recomputes them from `x`
//! rather than keeping them alive between the passes.
//!
//! A following ReLU can be fused in (`relu`): it is applied as the output is written, and its
//! backward folds into the norm's, so the activation is not traversed twice more each way.
//!
//! Shapes: `x [N, C, H, W]` contiguous, `gamma`, `beta` `[C]`. In NCHW each (image, group) is one
//! contiguous block of `C/groups * H * W` values, which is the unit of parallel work.

use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{cpu_f32, with_f32};
use std::mem::MaybeUninit;

/// Values summed in f32 lanes before the partial sum moves to f64: long enough to vectorize,
/// short enough that f32 rounding stays near 1e-6 relative.
const BLOCK: usize = 256;
/// Independent f32 accumulators per block: one AVX2 vector.
const LANES: usize = 8;

/// `Σ f(a_i, b_i, ...)` over equally long inputs (each term a pair of sums), in `LANES`
/// independent f32 accumulators per `BLOCK` (element `i` of a block into lane `i % LANES`, a
/// tail past the last whole group of lanes into lane 0), totalled in f64 lane by lane. `avx2`
/// computes the same sums in the same order.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // one index into K parallel inputs
fn lane_sums<const K: usize>(
    inputs: [&[f32]; K],
    f: impl Fn([f32; K]) -> (f32, f32),
) -> (f64, f64) {
    let len = inputs[0].len();
    debug_assert!(inputs.iter().all(|v| v.len() == len));
    let (mut t0, mut t1) = (0f64, 0f64);
    for start in (0..len).step_by(BLOCK) {
        let end = (start + BLOCK).min(len);
        let blocks: [&[f32]; K] = std::array::from_fn(|k| &inputs[k][start..end]);
        let chunks: [&[[f32; LANES]]; K] = std::array::from_fn(|k| blocks[k].as_chunks().0);
        let (mut a0, mut a1) = ([0f32; LANES], [0f32; LANES]);
        for c in 0..chunks[0].len() {
            let lanes: [&[f32; LANES]; K] = std::array::from_fn(|k| &chunks[k][c]);
            for l in 0..LANES {
                let (u, v) = f(std::array::from_fn(|k| lanes[k][l]));
                a0[l] += u;
                a1[l] += v;
            }
        }
        for i in chunks[0].len() * LANES..end - start {
            let (u, v) = f(std::array::from_fn(|k| blocks[k][i]));
            a0[0] += u;
            a1[0] += v;
        }
        (t0, t1) = (t0 + total(&a0), t1 + total(&a1));
    }
    (t0, t1)
}

/// A block's lanes summed in f64, lane 0 first.
fn total(lanes: &[f32; LANES]) -> f64 {
    lanes.iter().map(|&v| v as f64).sum()
}

/// The output gradient `d` of the value `v` through a fused ReLU: with `mask = Some((scale,
/// shift))`, `d` where the forward output `v * scale + shift` was positive, else +0.0, by the bit
/// mask that the vector path uses too (as a branch it was compiled to one per vector lane).
#[inline(always)]
fn masked(d: f32, v: f32, mask: Option<(f32, f32)>) -> f32 {
    match mask {
        Some((scale, shift)) => {
            let keep = v * scale + shift > 0.0;
            f32::from_bits(d.to_bits() & (keep as u32).wrapping_neg())
        }
        None => d,
    }
}

/// One value's terms of the statistics' sums: `(v - shift, (v - shift)²)`.
#[inline(always)]
fn shifted_terms(v: f32, shift: f32) -> (f32, f32) {
    let d = v - shift;
    (d, d * d)
}

/// One value's terms of the gradient sums: `(d, d * (v - mean))` with `d` masked.
#[inline(always)]
fn grad_terms(v: f32, d: f32, mean: f32, mask: Option<(f32, f32)>) -> (f32, f32) {
    let d = masked(d, v, mask);
    (d, d * (v - mean))
}

/// The passes of a block over memory: on AVX2 vectors where the CPU has them (the crate is built
/// for baseline x86-64, where these loops ran 4 lanes wide with a branch per lane for the ReLU
/// mask), else as plain loops. Both give the same bits: the same operations in the same order,
/// no fused multiply-adds.
mod pass {
    use crate::util::wide::has_avx2 as wide;
    use std::mem::MaybeUninit;

    /// `(Σ (v - shift), Σ (v - shift)²)`.
    pub fn shifted_sums(x: &[f32], shift: f32) -> (f64, f64) {
        #[cfg(target_arch = "x86_64")]
        if wide() {
            // SAFETY: the CPU has AVX2.
            return unsafe { super::avx2::shifted_sums(x, shift) };
        }
        plain::shifted_sums(x, shift)
    }

    /// `y = x * scale + shift`, then `max(y, 0)` when `relu`.
    pub fn affine(x: &[f32], y: &mut [MaybeUninit<f32>], scale_shift: (f32, f32), relu: bool) {
        assert_eq!(x.len(), y.len(), "group norm pass: lengths");
        #[cfg(target_arch = "x86_64")]
        if wide() {
            // SAFETY: the CPU has AVX2; the lengths match.
            return unsafe { super::avx2::affine(x, y, scale_shift, relu) };
        }
        plain::affine(x, y, scale_shift, relu)
    }

    /// `(Σ d, Σ d * (v - mean))` over `v` in `x` and `d` in `dy`, where `d` counts only where
    /// `v * scale + shift > 0` when `mask` is `Some((scale, shift))` (a fused ReLU).
    pub fn grad_sums(x: &[f32], dy: &[f32], mean: f32, mask: Option<(f32, f32)>) -> (f64, f64) {
        assert_eq!(x.len(), dy.len(), "group norm pass: lengths");
        #[cfg(target_arch = "x86_64")]
        if wide() {
            // SAFETY: the CPU has AVX2; the lengths match.
            return unsafe { super::avx2::grad_sums(x, dy, mean, mask) };
        }
        plain::grad_sums(x, dy, mean, mask)
    }

    /// `dx = a * d + b * (v - mean) + c`, with `d` masked as in [`grad_sums`].
    pub fn grad(
        (x, dy, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
        abc: (f32, f32, f32),
        mean: f32,
        mask: Option<(f32, f32)>,
    ) {
        assert!(
            x.len() == dy.len() && x.len() == dx.len(),
            "group norm pass: lengths"
        );
        #[cfg(target_arch = "x86_64")]
        if wide() {
            // SAFETY: the CPU has AVX2; the lengths match.
            return unsafe { super::avx2::grad((x, dy, dx), abc, mean, mask) };
        }
        plain::grad((x, dy, dx), abc, mean, mask)
    }

    /// The passes as plain loops (the path without AVX2, and the reference for the vectors).
    pub(super) mod plain {
        use super::super::{grad_terms, lane_sums, masked, shifted_terms};
        use std::mem::MaybeUninit;

        pub fn shifted_sums(x: &[f32], shift: f32) -> (f64, f64) {
            lane_sums([x], |[v]| shifted_terms(v, shift))
        }

        pub fn affine(
            x: &[f32],
            y: &mut [MaybeUninit<f32>],
            (scale, shift): (f32, f32),
            relu: bool,
        ) {
            for (o, &v) in y.iter_mut().zip(x) {
                let t = v * scale + shift;
                o.write(if relu { t.max(0.0) } else { t });
            }
        }

        pub fn grad_sums(x: &[f32], dy: &[f32], mean: f32, mask: Option<(f32, f32)>) -> (f64, f64) {
            lane_sums([x, dy], |[v, d]| grad_terms(v, d, mean, mask))
        }

        pub fn grad(
            (x, dy, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
            (a, b, c): (f32, f32, f32),
            mean: f32,
            mask: Option<(f32, f32)>,
        ) {
            for ((o, &v), &d) in dx.iter_mut().zip(x).zip(dy) {
                let d = masked(d, v, mask);
                o.write(a * d + b * (v - mean) + c);
            }
        }
    }
}

/// [`pass`] on AVX2 vectors of `LANES` floats. Callers check the CPU and the lengths.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{grad_terms, shifted_terms, total, BLOCK, LANES};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// [`super::lane_sums`] with the lanes as one vector: `f` gives a vector of terms from a
    /// vector of each input, `tail` one term of the tail.
    #[inline(always)]
    unsafe fn lane_sums<const K: usize>(
        inputs: [&[f32]; K],
        f: impl Fn([__m256; K]) -> (__m256, __m256),
        tail: impl Fn([f32; K]) -> (f32, f32),
    ) -> (f64, f64) {
        let len = inputs[0].len();
        let (mut t0, mut t1) = (0f64, 0f64);
        for start in (0..len).step_by(BLOCK) {
            let end = (start + BLOCK).min(len);
            let whole = start + (end - start) / LANES * LANES;
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for i in (start..whole).step_by(LANES) {
                let (u, v) = f(std::array::from_fn(|k| {
                    _mm256_loadu_ps(inputs[k].as_ptr().add(i))
                }));
                a0 = _mm256_add_ps(a0, u);
                a1 = _mm256_add_ps(a1, v);
            }
            let (mut l0, mut l1) = ([0f32; LANES], [0f32; LANES]);
            _mm256_storeu_ps(l0.as_mut_ptr(), a0);
            _mm256_storeu_ps(l1.as_mut_ptr(), a1);
            #[allow(clippy::needless_range_loop)] // one index into K parallel inputs
            for i in whole..end {
                let (u, v) = tail(std::array::from_fn(|k| inputs[k][i]));
                l0[0] += u;
                l1[0] += v;
            }
            (t0, t1) = (t0 + total(&l0), t1 + total(&l1));
        }
        (t0, t1)
    }

    /// `v * scale + shift > 0` lane by lane, as an all-ones or all-zeros mask.
    #[inline(always)]
    unsafe fn positive(v: __m256, (scale, shift): (__m256, __m256)) -> __m256 {
        let t = _mm256_add_ps(_mm256_mul_ps(v, scale), shift);
        _mm256_cmp_ps::<_CMP_GT_OQ>(t, _mm256_setzero_ps())
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn shifted_sums(x: &[f32], shift: f32) -> (f64, f64) {
        let s = _mm256_set1_ps(shift);
        lane_sums(
            [x],
            |[v]| {
                let d = _mm256_sub_ps(v, s);
                (d, _mm256_mul_ps(d, d))
            },
            |[v]| shifted_terms(v, shift),
        )
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn affine(
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        (scale, shift): (f32, f32),
        relu: bool,
    ) {
        let (sv, hv, zero) = (
            _mm256_set1_ps(scale),
            _mm256_set1_ps(shift),
            _mm256_setzero_ps(),
        );
        let whole = x.len() / LANES * LANES;
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr() as *mut f32);
        for i in (0..whole).step_by(LANES) {
            let mut t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xp.add(i)), sv), hv);
            if relu {
                // NaN gives 0, as `f32::max` does.
                t = _mm256_max_ps(t, zero);
            }
            _mm256_storeu_ps(yp.add(i), t);
        }
        super::pass::plain::affine(&x[whole..], &mut y[whole..], (scale, shift), relu);
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn grad_sums(
        x: &[f32],
        dy: &[f32],
        mean: f32,
        mask: Option<(f32, f32)>,
    ) -> (f64, f64) {
        let m = _mm256_set1_ps(mean);
        let tail = |[v, d]: [f32; 2]| grad_terms(v, d, mean, mask);
        match mask {
            Some((scale, shift)) => {
                let affine = (_mm256_set1_ps(scale), _mm256_set1_ps(shift));
                let terms = |[v, d]: [__m256; 2]| {
                    let d = _mm256_and_ps(positive(v, affine), d);
                    (d, _mm256_mul_ps(d, _mm256_sub_ps(v, m)))
                };
                lane_sums([x, dy], terms, tail)
            }
            None => {
                let terms = |[v, d]: [__m256; 2]| (d, _mm256_mul_ps(d, _mm256_sub_ps(v, m)));
                lane_sums([x, dy], terms, tail)
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn grad(
        (x, dy, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
        (a, b, c): (f32, f32, f32),
        mean: f32,
        mask: Option<(f32, f32)>,
    ) {
        let (av, bv, cv, m) = (
            _mm256_set1_ps(a),
            _mm256_set1_ps(b),
            _mm256_set1_ps(c),
            _mm256_set1_ps(mean),
        );
        let affine = mask.map(|(s, h)| (_mm256_set1_ps(s), _mm256_set1_ps(h)));
        let whole = x.len() / LANES * LANES;
        let (xp, dp, op) = (x.as_ptr(), dy.as_ptr(), dx.as_mut_ptr() as *mut f32);
        for i in (0..whole).step_by(LANES) {
            let v = _mm256_loadu_ps(xp.add(i));
            let mut d = _mm256_loadu_ps(dp.add(i));
            if let Some(affine) = affine {
                d = _mm256_and_ps(positive(v, affine), d);
            }
            let t = _mm256_add_ps(_mm256_mul_ps(av, d), _mm256_mul_ps(bv, _mm256_sub_ps(v, m)));
            _mm256_storeu_ps(op.add(i), _mm256_add_ps(t, cv));
        }
        let rest = (&x[whole..], &dy[whole..], &mut dx[whole..]);
        super::pass::plain::grad(rest, (a, b, c), mean, mask);
    }
}

/// Mean and 1/sqrt(var + eps) of one block (biased variance, as the composed reference), in one
/// pass over the values shifted by an estimate of their mean (that of the first `SHIFT_FROM`): the
/// shift keeps a large mean from cancelling the variance away, as a second pass over centred
/// values would, without reading the block twice.
fn stats(block: &[f32], eps: f64) -> (f64, f64) {
    let m = block.len() as f64;
    let head = &block[..block.len().min(SHIFT_FROM)];
    let shift = (head.iter().map(|&v| v as f64).sum::<f64>() / head.len().max(1) as f64) as f32;
    let (dev, sq) = pass::shifted_sums(block, shift);
    let mean = shift as f64 + dev / m;
    let var = (sq - dev * dev / m) / m;
    (mean, 1.0 / (var.max(0.0) + eps).sqrt())
}

/// Values whose mean is the shift of `stats`.
const SHIFT_FROM: usize = 64;

/// `(channels per group, pixels per channel)` after checking the shapes against `x`'s length.
fn check(
    x: &[f32],
    x_dims: &[usize],
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
) -> Result<(usize, usize)> {
    let &[n, c, h, w] = x_dims else {
        bail!("group_norm: expected a 4-d input, got {x_dims:?}")
    };
    if n * c * h * w != x.len() {
        bail!(
            "group_norm: {} values for an input of shape {x_dims:?}",
            x.len()
        );
    }
    if groups == 0 || c % groups != 0 {
        bail!("group_norm: {c} channels are not divisible into {groups} groups");
    }
    if gamma.len() != c || beta.len() != c {
        bail!("group_norm: gamma and beta must have {c} elements");
    }
    Ok((c / groups, h * w))
}

/// Mean and 1/sqrt(var + eps) of each (image, group), in that order.
pub type Stats = Vec<(f64, f64)>;

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` per (image, group), then `max(y, 0)` when
/// `relu`; also returns the statistics, which the backward pass can reuse.
pub fn forward(
    x: &[f32],
    x_dims: &[usize],
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    relu: bool,
) -> Result<(Vec<f32>, Stats)> {
    let (cg, hw) = check(x, x_dims, groups, gamma, beta)?;
    let len = x.len();
    let mut y = Vec::with_capacity(len);
    if len == 0 {
        return Ok((y, Vec::new()));
    }
    // Written block by block below, so the output needs no zero fill first.
    let stats = y.spare_capacity_mut()[..len]
        .par_chunks_mut(cg * hw)
        .zip(x.par_chunks(cg * hw))
        .enumerate()
        .map(|(ng, (yb, xb))| {
            let ch = (ng % groups) * cg..(ng % groups + 1) * cg;
            let (gamma, beta) = (&gamma[ch.clone()], &beta[ch]);
            forward_block(xb, yb, (gamma, beta), hw, eps, relu)
        })
        .collect();
    // SAFETY: the blocks of `cg * hw` values cover all `len` (a multiple of it, by `check`),
    // and each block wrote every value of each of its `cg` channels.
    unsafe { y.set_len(len) };
    Ok((y, stats))
}

/// One (image, group) block of [`forward`]: `x` and `y` hold its channels of `hw` values, `gamma`
/// and `beta` its channels' parameters. Returns its statistics.
fn forward_block(
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    (gamma, beta): (&[f32], &[f32]),
    hw: usize,
    eps: f64,
    relu: bool,
) -> (f64, f64) {
    let (mean, rstd) = stats(x, eps);
    for (j, (yc, xc)) in y.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
        pass::affine(xc, yc, affine((mean, rstd), gamma[j], beta[j]), relu);
    }
    (mean, rstd)
}

/// The norm and its affine transform folded per channel: `y = x * scale + shift`. The backward
/// pass recomputes a fused ReLU's mask with the same arithmetic, so it matches the forward's.
fn affine((mean, rstd): (f64, f64), gamma: f32, beta: f32) -> (f32, f32) {
    let scale = rstd * gamma as f64;
    let shift = beta as f64 - mean * scale;
    (scale as f32, shift as f32)
}

/// Gradients `(dx [N, C, H, W], dgamma [C], dbeta [C])` from the output gradient `dy`. With
/// `relu_beta` (`Some(beta)`: a ReLU followed the norm) `dy` counts only where the forward output
/// was positive, a mask recomputed from `x`, the statistics, `gamma` and `beta` rather than read
/// from the output (one pass less over memory each way). `saved` are the forward pass's statistics
/// of `x`, recomputed when absent.
#[allow(clippy::too_many_arguments)] // the norm's input, parameters and gradient, and settings
pub fn backward(
    x: &[f32],
    x_dims: &[usize],
    groups: usize,
    gamma: &[f32],
    relu_beta: Option<&[f32]>,
    dy: &[f32],
    eps: f64,
    saved: Option<&[(f64, f64)]>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (cg, hw) = check(x, x_dims, groups, gamma, relu_beta.unwrap_or(gamma))?;
    if dy.len() != x.len() {
        bail!("group_norm backward: output gradient has the wrong size");
    }
    if saved.is_some_and(|s| s.len() * cg * hw != x.len()) {
        bail!("group_norm backward: saved statistics do not match the input");
    }
    let c = cg * groups;
    let len = x.len();
    let n = len.checked_div(c * hw).unwrap_or(0);
    let mut dx = Vec::with_capacity(len);
    // Per (image, channel) sums of dy * xhat and dy, reduced over images afterwards.
    let mut dgamma_nc = vec![0f64; n * c];
    let mut dbeta_nc = vec![0f64; n * c];
    if len > 0 {
        dx.spare_capacity_mut()[..len]
            .par_chunks_mut(cg * hw)
            .zip(dgamma_nc.par_chunks_mut(cg))
            .zip(dbeta_nc.par_chunks_mut(cg))
            .enumerate()
            .for_each(|(ng, ((dxb, dgb), dbb))| {
                let block = ng * cg * hw..(ng + 1) * cg * hw;
                let (xb, dyb) = (&x[block.clone()], &dy[block]);
                let stats = saved.map(|saved| saved[ng]);
                let ch = (ng % groups) * cg..(ng % groups + 1) * cg;
                let (gamma, beta) = (&gamma[ch.clone()], relu_beta.map(|b| &b[ch]));
                let sums = (dgb, dbb);
                backward_block((xb, dyb, dxb), (gamma, beta), sums, hw, eps, stats);
            });
        // SAFETY: the blocks of `cg * hw` values cover all `len` (a multiple of it, by `check`),
        // and each block wrote every value of each of its `cg` channels.
        unsafe { dx.set_len(len) };
    }
    let reduce = |nc: &[f64]| -> Vec<f32> {
        (0..c)
            .map(|ch| (0..n).map(|i| nc[i * c + ch]).sum::<f64>() as f32)
            .collect()
    };
    Ok((dx, reduce(&dgamma_nc), reduce(&dbeta_nc)))
}

/// One (image, group) block of [`backward`]: `x`, `dy` and `dx` hold its channels of `hw` values,
/// `gamma` (and `relu_beta`) its channels' parameters; writes `dx` and each channel's sums of
/// `dy * xhat` and `dy` into `dgamma` and `dbeta`.
fn backward_block(
    (x, dy, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
    (gamma, relu_beta): (&[f32], Option<&[f32]>),
    (dgamma, dbeta): (&mut [f64], &mut [f64]),
    hw: usize,
    eps: f64,
    saved: Option<(f64, f64)>,
) {
    let (mean, rstd) = saved.unwrap_or_else(|| stats(x, eps));
    let mf = mean as f32;
    // The fused ReLU's folded affine transform per channel: dy counts where
    // `x * scale + shift > 0`, as the forward pass computed it.
    let mask = |j: usize| relu_beta.map(|b| affine((mean, rstd), gamma[j], b[j]));
    // With xhat = (x - mean) * rstd and g = dy * gamma:
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    let (mut sum_g, mut sum_gx) = (0f64, 0f64);
    for (j, (xc, dc)) in x.chunks(hw).zip(dy.chunks(hw)).enumerate() {
        let (s_dy, s_dxc) = pass::grad_sums(xc, dc, mf, mask(j));
        let s_dyx = s_dxc * rstd;
        dbeta[j] = s_dy;
        dgamma[j] = s_dyx;
        let gm = gamma[j] as f64;
        sum_g += gm * s_dy;
        sum_gx += gm * s_dyx;
    }
    let m = x.len() as f64;
    let (mean_g, mean_gx) = (sum_g / m, sum_gx / m);
    let channels = x.chunks(hw).zip(dy.chunks(hw)).zip(dx.chunks_mut(hw));
    for (j, ((xc, dc), out)) in channels.enumerate() {
        // dx = a * dy + b * (x - mean) + c per channel.
        let gm = gamma[j] as f64;
        let a = (rstd * gm) as f32;
        let b = (-rstd * rstd * mean_gx) as f32;
        let c = (-rstd * mean_g) as f32;
        pass::grad((xc, dc, out), (a, b, c), mf, mask(j));
    }
}

/// The custom op over `(x, gamma, beta)`, optionally followed by ReLU. The graph keeps this very
/// instance for the backward pass, so the forward pass leaves its statistics here rather than
/// the backward pass reading the input twice more to recompute them.
#[derive(Debug)]
pub struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub relu: bool,
    saved: std::sync::Mutex<Option<Stats>>,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        if self.relu {
            "fl-group-norm-relu"
        } else {
            "fl-group-norm"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, "group_norm input")?;
        let gamma = cpu_f32(s2, l2, "group_norm gamma")?;
        let beta = cpu_f32(s3, l3, "group_norm beta")?;
        let (y, stats) = forward(x, l1.dims(), self.groups, gamma, beta, self.eps, self.relu)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let saved = saved.as_deref();
        let (dx, dg, db) = with_f32(x, "group_norm input", |xv| {
            with_f32(gamma, "group_norm gamma", |gv| {
                with_f32(beta, "group_norm beta", |bv| {
                    with_f32(grad, "group_norm output gradient", |dy| {
                        let relu_beta = self.relu.then_some(bv);
                        let (groups, eps) = (self.groups, self.eps);
                        backward(xv, x.dims(), groups, gv, relu_beta, dy, eps, saved)
                    })
                })
            })
        })?;
        let dev = Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &dev)?),
            Some(Tensor::from_vec(dg, gamma.shape(), &dev)?),
            Some(Tensor::from_vec(db, beta.shape(), &dev)?),
        ))
    }
}

/// Fast-path group norm (then ReLU when `relu`) on CPU f32 tensors, with autograd through
/// `GroupNormOp`.
pub fn group_norm_cpu(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        GroupNormOp {
            groups,
            eps,
            relu,
            saved: Default::default(),
        },
    )
}

#[cfg(test)]
mod tests {
    //! Checked against the composed candle group norm through candle's autograd, in value and in
    //! the gradients of `sum(y * r)` for a random, never-zero `r`.
    use super::*;
    use crate::ops::reference;
    use crate::ops::testing::{assert_close, rand_tensor};
    use candle_core::Var;

    #[test]
    fn matches_candle_over_many_shapes() {
        let dev = Device::Cpu;
        #[rustfmt::skip]
        let cases = [
            // n, c, h, w, groups
            (2, 6, 5, 7, 3), (1, 4, 3, 3, 1), (3, 12, 4, 5, 4), (2, 5, 6, 6, 5),
            (1, 32, 8, 8, 32), (4, 64, 4, 4, 32), (2, 9, 1, 1, 3), (1, 10, 7, 3, 2),
        ];
        for (i, &(n, c, h, w, groups)) in cases.iter().enumerate() {
            let seed = 10 * i as u64;
            // A non-zero mean per element exercises the centring.
            let x = (rand_tensor(&[n, c, h, w], seed, &dev) + 0.5).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let gamma = Var::from_tensor(&rand_tensor(&[c], seed + 1, &dev)).unwrap();
            let beta = Var::from_tensor(&rand_tensor(&[c], seed + 2, &dev)).unwrap();
            for relu in [false, true] {
                let what = format!("n{n} c{c} {h}x{w} groups {groups} relu {relu}");
                let ours = group_norm_cpu(&x, groups, &gamma, &beta, 1e-5, relu).unwrap();
                let mut theirs = reference::group_norm(&x, groups, &gamma, &beta, 1e-5).unwrap();
                if relu {
                    theirs = theirs.relu().unwrap();
                }
                assert_close(&ours, &theirs, &format!("{what}: value"));
                let r = rand_tensor(&[n, c, h, w], seed + 3, &dev);
                let g_ours = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g_theirs = (theirs * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for (name, v) in [("input", &x), ("gamma", &gamma), ("beta", &beta)] {
                    let a = g_ours.get(v).unwrap();
                    let e = g_theirs.get(v).unwrap();
                    assert_close(a, e, &format!("{what}: {name} gradient"));
                }
            }
        }
    }

    #[test]
    fn statistics_survive_a_large_mean() {
        // A block far from zero (mean 1000, std ~0.3) and one whose first values are not typical
        // of the rest, against the two-pass sums in f64.
        for block in [
            (0..4096)
                .map(|i| 1000.0 + ((i * 37 % 101) as f32 - 50.0) * 0.01)
                .collect::<Vec<f32>>(),
            (0..3000)
                .map(|i| if i < 64 { 5.0 } else { -3.0 + (i % 7) as f32 })
                .collect(),
        ] {
            let m = block.len() as f64;
            let mean = block.iter().map(|&v| v as f64).sum::<f64>() / m;
            let var = block
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / m;
            let (got_mean, got_rstd) = stats(&block, 1e-5);
            let rstd = 1.0 / (var + 1e-5).sqrt();
            assert!(
                (got_mean - mean).abs() <= 1e-6 * mean.abs(),
                "{got_mean} vs {mean}"
            );
            assert!(
                (got_rstd - rstd).abs() <= 1e-5 * rstd,
                "{got_rstd} vs {rstd}"
            );
        }
    }

    #[test]
    fn saved_statistics_give_the_recomputed_gradient_bit_for_bit() {
        let dims = [3, 8, 5, 7];
        let n: usize = dims.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.03)
            .collect();
        let dy: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.01)
            .collect();
        let (gamma, beta) = (vec![0.7f32; 8], vec![0.1f32; 8]);
        let (y, stats) = forward(&x, &dims, 4, &gamma, &beta, 1e-5, true).unwrap();
        assert_eq!(stats.len(), 3 * 4);
        let bwd = |saved| backward(&x, &dims, 4, &gamma, Some(&beta), &dy, 1e-5, saved).unwrap();
        assert_eq!(bwd(Some(&stats)), bwd(None));
        assert!(backward(&x, &dims, 4, &gamma, None, &dy, 1e-5, Some(&stats[1..])).is_err());
        // The fused ReLU's mask, recomputed from the input, is the forward output's: the
        // gradient equals, bit for bit, the plain norm's of the output gradient masked by it.
        let masked: Vec<f32> = dy
            .iter()
            .zip(&y)
            .map(|(&d, &v)| if v > 0.0 { d } else { 0.0 })
            .collect();
        let plain = backward(&x, &dims, 4, &gamma, None, &masked, 1e-5, Some(&stats)).unwrap();
        assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0));
        assert_eq!(bwd(Some(&stats)), plain);
    }

    /// The AVX2 passes against the plain loops, bit for bit: lengths with and without a tail past
    /// the last vector, within one block and over several, with and without the ReLU mask.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_passes_give_the_plain_loops_bits() {
        use std::mem::MaybeUninit;
        if !crate::util::wide::has_avx2() {
            return;
        }
        let val = |i: usize, s: usize| ((i * 2654435761 + s) % 1000) as f32 / 250.0 - 2.0;
        let written = |f: &dyn Fn(&mut [MaybeUninit<f32>]), n: usize| -> Vec<u32> {
            let mut out = vec![MaybeUninit::new(f32::NAN); n];
            f(&mut out);
            // SAFETY: initialized above (and overwritten by `f`).
            out.iter()
                .map(|v| unsafe { v.assume_init() }.to_bits())
                .collect()
        };
        for n in [1, 7, 8, 13, 256, 300, 1027] {
            let x: Vec<f32> = (0..n).map(|i| val(i, 1)).collect();
            let dy: Vec<f32> = (0..n).map(|i| val(i, 2) * 0.1).collect();
            let sums = |p: (f64, f64)| (p.0.to_bits(), p.1.to_bits());
            // SAFETY (all `avx2` calls): the CPU has AVX2 (checked above); lengths match.
            unsafe {
                let (shifted, plain_shifted) = (
                    sums(avx2::shifted_sums(&x, 0.3)),
                    sums(pass::plain::shifted_sums(&x, 0.3)),
                );
                assert_eq!(shifted, plain_shifted, "n {n}: shifted sums");
                for relu in [false, true] {
                    let ours = written(&|y| avx2::affine(&x, y, (0.7, -0.2), relu), n);
                    let plain = written(&|y| pass::plain::affine(&x, y, (0.7, -0.2), relu), n);
                    assert_eq!(ours, plain, "n {n} relu {relu}: affine");
                }
                for mask in [None, Some((0.7f32, -0.2f32))] {
                    let (got, want) = (
                        sums(avx2::grad_sums(&x, &dy, 0.1, mask)),
                        sums(pass::plain::grad_sums(&x, &dy, 0.1, mask)),
                    );
                    assert_eq!(got, want, "n {n} mask {mask:?}: gradient sums");
                    let abc = (0.9, -0.05, 0.01);
                    let ours = written(&|o| avx2::grad((&x, &dy, o), abc, 0.1, mask), n);
                    let plain = written(&|o| pass::plain::grad((&x, &dy, o), abc, 0.1, mask), n);
                    assert_eq!(ours, plain, "n {n} mask {mask:?}: gradient");
                }
            }
        }
    }

    #[test]
    fn indivisible_channels_are_an_error() {
        let dev = Device::Cpu;
        let x = rand_tensor(&[1, 6, 2, 2], 1, &dev);
        let g = rand_tensor(&[6], 2, &dev);
        assert!(group_norm_cpu(&x, 4, &g, &g, 1e-5, false).is_err());
        assert!(group_norm_cpu(&x, 0, &g, &g, 1e-5, true).is_err());
    }
}
