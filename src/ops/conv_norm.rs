//! A convolution followed by group norm (then ReLU) as one op on the CPU in f32: every conv of the
//! GroupNorm backbone and heads. As two ops, the gradient of the convolution's output passed
//! through candle's gradient store (a zero tensor, then an add: four passes over the convolution's
//! output per layer) on its way from the norm's backward to the convolution's; here it goes
//! straight from one to the other. The convolution's output, which the norm's backward reads, is
//! kept in the op between the passes as candle keeps an op's output.
//!
//! The op's third input packs the per-channel parameters `[bias (when present), gamma, beta]`
//! (candle's custom ops take at most three tensors); its gradient comes back packed the same way.

use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor, TensorId};
use std::sync::Mutex;

use super::conv::{self, cpu_f32, with_f32, ConvGeom, Needs};
use super::group_norm::{self, Stats};

/// The packed parameters, one slice each: `(bias, gamma, beta)`.
type Params<'a> = (Option<&'a [f32]>, &'a [f32], &'a [f32]);

pub struct ConvNormOp {
    stride: usize,
    pad: usize,
    groups: usize,
    eps: f64,
    relu: bool,
    /// Whether the packed parameters start with the convolution's bias.
    bias: bool,
    /// The weight tensor's id (`conv::forward_of`).
    weights: TensorId,
    /// The convolution's output and the norm's statistics of it, from the forward pass.
    saved: Mutex<Option<(Vec<f32>, Stats)>>,
}

impl ConvNormOp {
    /// `(bias, gamma, beta)` from the packed parameters of `c` channels.
    fn split<'a>(&self, p: &'a [f32], c: usize) -> Result<Params<'a>> {
        let parts = if self.bias { 3 } else { 2 };
        if p.len() != parts * c {
            bail!("conv + group norm: {} parameters for {c} channels", p.len());
        }
        let (b, affine) = p.split_at(if self.bias { c } else { 0 });
        let (gamma, beta) = affine.split_at(c);
        Ok((self.bias.then_some(b), gamma, beta))
    }

    /// The convolution's output and the norm's output and statistics.
    fn run(
        &self,
        x: &[f32],
        w: &[f32],
        p: &[f32],
        g: &ConvGeom,
    ) -> Result<(Vec<f32>, Vec<f32>, Stats)> {
        let (b, gamma, beta) = self.split(p, g.c_out)?;
        let z = conv::forward_of(x, (w, Some(self.weights)), b, g, false)?;
        let (n, c, h, wd) = g.out_dims();
        let (y, stats) = group_norm::forward(
            &z,
            &[n, c, h, wd],
            self.groups,
            gamma,
            beta,
            self.eps,
            self.relu,
        )?;
        Ok((z, y, stats))
    }
}

impl CustomOp3 for ConvNormOp {
    fn name(&self) -> &'static str {
        if self.relu {
            "fl-conv-group-norm-relu"
        } else {
            "fl-conv-group-norm"
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
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let x = cpu_f32(s1, l1, "conv + group norm input")?;
        let w = cpu_f32(s2, l2, "conv + group norm weight")?;
        let p = cpu_f32(s3, l3, "conv + group norm parameters")?;
        let (z, y, stats) = self.run(x, w, p, &g)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some((z, stats));
        Ok((CpuStorage::F32(y), Shape::from(g.out_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeom::new(x.dims(), w.dims(), self.stride, self.pad)?;
        let (n, c, h, wd) = g.out_dims();
        let needs = Needs {
            input: x.track_op(),
            weight: w.track_op(),
            bias: self.bias,
        };
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let (mut grads, dgamma, dbeta) = with_f32(x, "conv + group norm input", |xv| {
            with_f32(w, "conv + group norm weight", |wv| {
                with_f32(p, "conv + group norm parameters", |pv| {
                    // The forward pass keeps its normalizer input; recompute it when it did not run.
                    let (z, stats) = match &mut *saved {
                        Some(kept) => &*kept,
                        slot => {
                            let (z, _, stats) = self.run(xv, wv, pv, &g)?;
                            &*slot.insert((z, stats))
                        }
                    };
                    let (_, gamma, beta) = self.split(pv, c)?;
                    let dims = [n, c, h, wd];
                    let relu_beta = self.relu.then_some(beta);
                    let (dz, dgamma, dbeta) =
                        with_f32(grad, "conv + group norm output gradient", |dy| {
                            let (groups, eps, saved) = (self.groups, self.eps, Some(&stats[..]));
                            group_norm::backward(z, &dims, groups, gamma, relu_beta, dy, eps, saved)
                        })?;
                    let wv = (wv, Some(self.weights));
                    let grads = conv::backward_of(xv, wv, &dz, None, &g, needs)?;
                    Ok((grads, dgamma, dbeta))
                })
            })
        })?;
        let (dx, dw) = grads.take_tensors(needs, x, w)?;
        let mut dp = grads.bias;
        dp.extend(dgamma);
        dp.extend(dbeta);
        Ok((dx, dw, Some(Tensor::from_vec(dp, p.shape(), &Device::Cpu)?)))
    }
}

/// What follows the convolution: group norm over `groups` groups with `gamma`, `beta` and `eps`,
/// then ReLU when `relu`.
pub struct GroupNormAfter<'a> {
    pub groups: usize,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub eps: f64,
    pub relu: bool,
}

/// Fast-path `group_norm(conv2d(x, w, b))` (then ReLU) on CPU f32 tensors, with autograd through
/// `ConvNormOp`.
pub fn conv_group_norm_cpu(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    (stride, pad): (usize, usize),
    norm: &GroupNormAfter,
) -> Result<Tensor> {
    let affine = [norm.gamma, norm.beta];
    let params = match b {
        Some(b) => Tensor::cat(&[b, norm.gamma, norm.beta], 0)?,
        None => Tensor::cat(&affine, 0)?,
    };
    let w = w.contiguous()?;
    let op = ConvNormOp {
        stride,
        pad,
        groups: norm.groups,
        eps: norm.eps,
        relu: norm.relu,
        bias: b.is_some(),
        weights: w.id(),
        saved: Mutex::default(),
    };
    x.contiguous()?.apply_op3(&w, &params, op)
}

#[cfg(test)]
mod tests {
    //! The fused op against candle's own conv2d, group norm and ReLU composed through candle's
    //! autograd, in value and in the gradients of `sum(y * r)` for a random, never-zero `r`.
    use super::*;
    use crate::ops::reference;
    use crate::ops::testing::{assert_close, rand_tensor};
    use candle_core::Var;

    #[test]
    fn matches_the_composed_candle_ops() {
        let dev = Device::Cpu;
        #[rustfmt::skip]
        let cases = [
            // n, c_in, h, w, c_out, k, stride, pad, groups
            (2, 9, 10, 12, 8, 3, 1, 1, 4),   // shifted products
            (3, 16, 16, 16, 16, 3, 2, 1, 8), // strided
            (2, 3, 12, 12, 8, 3, 2, 1, 2),   // an RGB stem (im2col)
            (5, 8, 4, 4, 6, 3, 1, 1, 3),     // small maps (grouped)
            (2, 12, 9, 9, 10, 1, 2, 0, 5),   // a strided 1x1 shortcut
        ];
        for (i, &(n, c_in, h, w, c_out, k, stride, pad, groups)) in cases.iter().enumerate() {
            for (bias, relu, image) in [
                (true, true, false),
                (false, false, false),
                (false, true, true),
            ] {
                let seed = 100 * i as u64 + 10 * bias as u64 + relu as u64;
                let what = format!("case {i} bias {bias} relu {relu} image {image}");
                let xt = (rand_tensor(&[n, c_in, h, w], seed, &dev) - 0.3).unwrap();
                // An image batch carries no graph: no input gradient is computed or returned.
                let xv = Var::from_tensor(&xt).unwrap();
                let x = if image {
                    xt.clone()
                } else {
                    xv.as_tensor().clone()
                };
                let wv =
                    Var::from_tensor(&rand_tensor(&[c_out, c_in, k, k], seed + 1, &dev)).unwrap();
                let bv = Var::from_tensor(&rand_tensor(&[c_out], seed + 2, &dev)).unwrap();
                let gv = Var::from_tensor(&rand_tensor(&[c_out], seed + 3, &dev)).unwrap();
                let betav =
                    Var::from_tensor(&(rand_tensor(&[c_out], seed + 4, &dev) - 0.5).unwrap())
                        .unwrap();
                let b = bias.then(|| bv.as_tensor());
                let norm = GroupNormAfter {
                    groups,
                    gamma: gv.as_tensor(),
                    beta: betav.as_tensor(),
                    eps: 1e-5,
                    relu,
                };
                let ours =
                    conv_group_norm_cpu(&x, wv.as_tensor(), b, (stride, pad), &norm).unwrap();
                let z = reference::conv2d(&x, wv.as_tensor(), b, stride, pad).unwrap();
                let mut theirs =
                    reference::group_norm(&z, groups, gv.as_tensor(), betav.as_tensor(), 1e-5)
                        .unwrap();
                if relu {
                    theirs = theirs.relu().unwrap();
                }
                assert_close(&ours, &theirs, &format!("{what}: value"));
                let r = rand_tensor(ours.dims(), seed + 5, &dev);
                let g_ours = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g_theirs = (theirs * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let mut vars = vec![("weight", &wv), ("gamma", &gv), ("beta", &betav)];
                if bias {
                    vars.push(("bias", &bv));
                }
                if !image {
                    vars.push(("input", &xv));
                }
                for (name, v) in vars {
                    let (a, e) = (g_ours.get(v), g_theirs.get(v));
                    let (Some(a), Some(e)) = (a, e) else {
                        panic!("{what}: no {name} gradient");
                    };
                    assert_close(a, e, &format!("{what}: {name} gradient"));
                }
                if image {
                    assert!(
                        g_ours.get(&xv).is_none(),
                        "{what}: an input gradient for the image"
                    );
                }
            }
        }
    }
}
