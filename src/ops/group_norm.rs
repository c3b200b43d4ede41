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

/// Values summed in f32 lanes before the partial sum moves to f64: long enough to vectorize,
/// short enough that f32 rounding stays near 1e-6 relative.
const BLOCK: usize = 256;
const LANES: usize = 8;

/// `Σ f(a_i, b_i, ...)` over equally long inputs (each term a pair of sums), in `LANES`
/// independent f32 accumulators per `BLOCK`, totalled in f64.
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
        t0 += a0.iter().map(|&v| v as f64).sum::<f64>();
        t1 += a1.iter().map(|&v| v as f64).sum::<f64>();
    }
    (t0, t1)
}

/// Mean and 1/sqrt(var + eps) of one block (biased variance, as the composed reference), in one
/// pass over the values shifted by an estimate of their mean (that of the first `SHIFT_FROM`): the
/// shift keeps a large mean from cancelling the variance away, as a second pass over centred
/// values would, without reading the block twice.
fn stats(block: &[f32], eps: f64) -> (f64, f64) {
    let m = block.len() as f64;
    let head = &block[..block.len().min(SHIFT_FROM)];
    let shift = (head.iter().map(|&v| v as f64).sum::<f64>() / head.len().max(1) as f64) as f32;
    let (dev, sq) = lane_sums([block], |[v]| {
        let d = v - shift;
        (d, d * d)
    });
    let mean = shift as f64 + dev / m;
    let var = (sq - dev * dev / m) / m;
    (mean, 1.0 / (var.max(0.0) + eps).sqrt())
}

/// Values whose mean is the shift of `stats`.
const SHIFT_FROM: usize = 64;

fn check(x_dims: &[usize], groups: usize, gamma: &[f32], beta: &[f32]) -> Result<(usize, usize)> {
    let &[_, c, h, w] = x_dims else {
        bail!("group_norm: expected a 4-d input, got {x_dims:?}")
    };
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
    let (cg, hw) = check(x_dims, groups, gamma, beta)?;
    let mut y = vec![0f32; x.len()];
    if y.is_empty() {
        return Ok((y, Vec::new()));
    }
    let stats = y
        .par_chunks_mut(cg * hw)
        .zip(x.par_chunks(cg * hw))
        .enumerate()
        .map(|(ng, (yb, xb))| {
            let (mean, rstd) = stats(xb, eps);
            let c0 = (ng % groups) * cg;
            for (j, (yc, xc)) in yb.chunks_mut(hw).zip(xb.chunks(hw)).enumerate() {
                // y = x * scale + shift, folded per channel.
                let scale = rstd * gamma[c0 + j] as f64;
                let shift = beta[c0 + j] as f64 - mean * scale;
                let (scale, shift) = (scale as f32, shift as f32);
                if relu {
                    for (o, &v) in yc.iter_mut().zip(xc) {
                        *o = (v * scale + shift).max(0.0);
                    }
                } else {
                    for (o, &v) in yc.iter_mut().zip(xc) {
                        *o = v * scale + shift;
                    }
                }
            }
            (mean, rstd)
        })
        .collect();
    Ok((y, stats))
}

/// Gradients `(dx [N, C, H, W], dgamma [C], dbeta [C])` from the output gradient `dy`. With
/// `relu_out` (the forward output of a fused ReLU) `dy` counts only where that output is positive.
/// `saved` are the forward pass's statistics of `x`, recomputed when absent.
#[allow(clippy::too_many_arguments)] // the norm's inputs, its output and gradient, and settings
pub fn backward(
    x: &[f32],
    x_dims: &[usize],
    groups: usize,
    gamma: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    eps: f64,
    saved: Option<&[(f64, f64)]>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (cg, hw) = check(x_dims, groups, gamma, gamma)?;
    if dy.len() != x.len() || relu_out.is_some_and(|r| r.len() != x.len()) {
        bail!("group_norm backward: output gradient has the wrong size");
    }
    if saved.is_some_and(|s| s.len() * cg * hw != x.len()) {
        bail!("group_norm backward: saved statistics do not match the input");
    }
    let c = cg * groups;
    let n = x.len().checked_div(c * hw).unwrap_or(0);
    let mut dx = vec![0f32; x.len()];
    // Per (image, channel) sums of dy * xhat and dy, reduced over images afterwards.
    let mut dgamma_nc = vec![0f64; n * c];
    let mut dbeta_nc = vec![0f64; n * c];
    if !dx.is_empty() {
        dx.par_chunks_mut(cg * hw)
            .zip(dgamma_nc.par_chunks_mut(cg))
            .zip(dbeta_nc.par_chunks_mut(cg))
            .enumerate()
            .for_each(|(ng, ((dxb, dgb), dbb))| {
                let block = ng * cg * hw..(ng + 1) * cg * hw;
                let (xb, dyb) = (&x[block.clone()], &dy[block.clone()]);
                let rb = relu_out.map(|r| &r[block]);
                let (mean, rstd) = match saved {
                    Some(saved) => saved[ng],
                    None => stats(xb, eps),
                };
                let (mf, c0) = (mean as f32, (ng % groups) * cg);
                // With xhat = (x - mean) * rstd and g = dy * gamma:
                // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                for j in 0..cg {
                    let ch = j * hw..(j + 1) * hw;
                    let (xc, dc) = (&xb[ch.clone()], &dyb[ch.clone()]);
                    let (s_dy, s_dxc) = match rb {
                        Some(r) => lane_sums([xc, dc, &r[ch]], |[v, d, y]| {
                            let d = if y > 0.0 { d } else { 0.0 };
                            (d, d * (v - mf))
                        }),
                        None => lane_sums([xc, dc], |[v, d]| (d, d * (v - mf))),
                    };
                    let s_dyx = s_dxc * rstd;
                    dbb[j] = s_dy;
                    dgb[j] = s_dyx;
                    let gm = gamma[c0 + j] as f64;
                    sum_g += gm * s_dy;
                    sum_gx += gm * s_dyx;
                }
                let m = (cg * hw) as f64;
                let (mean_g, mean_gx) = (sum_g / m, sum_gx / m);
                for j in 0..cg {
                    // dx = a * dy + b * (x - mean) + c per channel.
                    let gm = gamma[c0 + j] as f64;
                    let a = (rstd * gm) as f32;
                    let b = (-rstd * rstd * mean_gx) as f32;
                    let c = (-rstd * mean_g) as f32;
                    let ch = j * hw..(j + 1) * hw;
                    let (xc, dc, out) = (&xb[ch.clone()], &dyb[ch.clone()], &mut dxb[ch.clone()]);
                    match rb {
                        Some(r) => {
                            for (((o, &v), &d), &y) in out.iter_mut().zip(xc).zip(dc).zip(&r[ch]) {
                                let d = if y > 0.0 { d } else { 0.0 };
                                *o = a * d + b * (v - mf) + c;
                            }
                        }
                        None => {
                            for ((o, &v), &d) in out.iter_mut().zip(xc).zip(dc) {
                                *o = a * d + b * (v - mf) + c;
                            }
                        }
                    }
                }
            });
    }
    let reduce = |nc: &[f64]| -> Vec<f32> {
        (0..c)
            .map(|ch| (0..n).map(|i| nc[i * c + ch]).sum::<f64>() as f32)
            .collect()
    };
    Ok((dx, reduce(&dgamma_nc), reduce(&dbeta_nc)))
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
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let saved = saved.as_deref();
        let (dx, dg, db) = with_f32(x, "group_norm input", |xv| {
            with_f32(gamma, "group_norm gamma", |gv| {
                with_f32(grad, "group_norm output gradient", |dy| {
                    let (groups, eps) = (self.groups, self.eps);
                    if self.relu {
                        with_f32(res, "group_norm output", |r| {
                            backward(xv, x.dims(), groups, gv, dy, Some(r), eps, saved)
                        })
                    } else {
                        backward(xv, x.dims(), groups, gv, dy, None, eps, saved)
                    }
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
        let bwd = |saved| backward(&x, &dims, 4, &gamma, &dy, Some(&y), 1e-5, saved).unwrap();
        assert_eq!(bwd(Some(&stats)), bwd(None));
        assert!(backward(&x, &dims, 4, &gamma, &dy, None, 1e-5, Some(&stats[1..])).is_err());
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
