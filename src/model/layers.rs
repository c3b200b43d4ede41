//! Convolution and normalization layers built on `crate::ops`.

use super::params::{Init, ParamStore};
use crate::config::NormKind;
use crate::ops;
use candle_core::{Result, Tensor, Var};

/// A square-kernel convolution with "same"-style padding k/2.
pub struct Conv {
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub stride: usize,
    pub pad: usize,
}

/// Weight init of a conv: PyTorch's default or the paper's Gaussian.
#[derive(Debug, Clone, Copy)]
pub enum ConvInit {
    /// U(+-1/sqrt(fan_in)) for weight and bias (PyTorch's default; candle-nn's Kaiming diverged).
    Default,
    /// N(0, std^2) weights and a constant bias.
    Gaussian { std: f64, bias: f64 },
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        bias: bool,
        init: ConvInit,
    ) -> Result<Conv> {
        Conv::build(store, name, c_in, c_out, k, stride, bias, init, false)
    }

    /// A conv whose weights are fixed (detectron2's frozen stages): kept as buffers, which the
    /// optimizer never sees, and detached, so that no gradient flows into or through them. They
    /// draw the same initial values as a trainable conv would.
    #[allow(clippy::too_many_arguments)]
    pub fn new_frozen(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        init: ConvInit,
    ) -> Result<Conv> {
        Conv::build(store, name, c_in, c_out, k, stride, false, init, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        bias: bool,
        init: ConvInit,
        frozen: bool,
    ) -> Result<Conv> {
        let fan_in = (c_in * k * k) as f64;
        let (wi, bi) = match init {
            ConvInit::Default => {
                let b = 1.0 / fan_in.sqrt();
                (Init::Uniform(b), Init::Uniform(b))
            }
            ConvInit::Gaussian { std, bias } => (Init::Normal(std), Init::Const(bias)),
        };
        let shape = [c_out, c_in, k, k];
        let w = if frozen {
            store
                .frozen(&format!("{name}.weight"), &shape, wi)?
                .as_tensor()
                .detach()
        } else {
            store.param(&format!("{name}.weight"), &shape, wi)?
        };
        let b = if bias {
            Some(store.param(&format!("{name}.bias"), &[c_out], bi)?)
        } else {
            None
        };
        Ok(Conv {
            w,
            b,
            stride,
            pad: k / 2,
        })
    }

    /// `[N, C_in, H, W]` -> `[N, C_out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(x, &self.w, self.b.as_ref(), self.stride, self.pad)
    }

    /// `relu(self.forward(x))`, fused into one kernel on the CPU.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d_bias_relu(x, &self.w, self.b.as_ref(), self.stride, self.pad)
    }

    /// `norm(self.forward(x))`, then ReLU when `relu`; for GroupNorm one op on the CPU
    /// (`ops::conv2d_group_norm`).
    pub fn forward_norm(&self, norm: &Norm, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if let Norm::Group {
            groups,
            gamma,
            beta,
        } = norm
        {
            let after = ops::conv_norm::GroupNormAfter {
                groups: *groups,
                gamma,
                beta,
                eps: EPS,
                relu,
            };
            let geometry = (self.stride, self.pad);
            return ops::conv2d_group_norm(x, &self.w, self.b.as_ref(), geometry, &after);
        }
        let z = self.forward(x)?;
        if relu {
            norm.forward_relu(&z, train)
        } else {
            norm.forward(&z, train)
        }
    }
}

/// GroupNorm, BatchNorm or frozen BatchNorm with a per-channel affine transform.
pub enum Norm {
    Group {
        groups: usize,
        gamma: Tensor,
        beta: Tensor,
    },
    Batch {
        gamma: Tensor,
        beta: Tensor,
        running_mean: Var,
        running_var: Var,
    },
    /// detectron2's `FrozenBatchNorm2d`: `y = x * scale + shift` with
    /// `scale = weight / sqrt(running_var + eps)` and `shift = bias - running_mean * scale`, all
    /// four fixed buffers (detached: no gradient), the same in training and evaluation.
    Frozen {
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
    },
}

/// The norms' epsilon: PyTorch's BatchNorm/GroupNorm default and detectron2's
/// `FrozenBatchNorm2d(eps=1e-5)`.
pub const EPS: f64 = 1e-5;
/// PyTorch's BatchNorm momentum for the running statistics.
const BN_MOMENTUM: f64 = 0.1;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Norm {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        kind: NormKind,
        channels: usize,
        gn_groups: usize,
    ) -> Result<Norm> {
        let affine = |store: &mut ParamStore| -> Result<(Tensor, Tensor)> {
            Ok((
                store.norm_param(&format!("{name}.weight"), &[channels], Init::Const(1.0))?,
                store.norm_param(&format!("{name}.bias"), &[channels], Init::Const(0.0))?,
            ))
        };
        Ok(match kind {
            // Narrow layers of small models cannot always be split into `gn_groups` groups.
            NormKind::Gn => {
                let (gamma, beta) = affine(store)?;
                Norm::Group {
                    groups: gcd(gn_groups, channels).max(1),
                    gamma,
                    beta,
                }
            }
            NormKind::Bn => {
                let (gamma, beta) = affine(store)?;
                Norm::Batch {
                    gamma,
                    beta,
                    running_mean: store.buffer(
                        &format!("{name}.running_mean"),
                        &[channels],
                        0.0,
                    )?,
                    running_var: store.buffer(&format!("{name}.running_var"), &[channels], 1.0)?,
                }
            }
            NormKind::FrozenBn => {
                // All four are buffers (the optimizer never sees them), detached (no gradient).
                let mut fixed = |suffix: &str, value: f64| -> Result<Tensor> {
                    let init = Init::Const(value);
                    let var = store.frozen(&format!("{name}.{suffix}"), &[channels], init)?;
                    Ok(var.as_tensor().detach())
                };
                Norm::Frozen {
                    weight: fixed("weight", 1.0)?,
                    bias: fixed("bias", 0.0)?,
                    running_mean: fixed("running_mean", 0.0)?,
                    running_var: fixed("running_var", 1.0)?,
                }
            }
        })
    }

    /// `relu(self.forward(x, train))`, fused into one kernel for GroupNorm.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Group {
                groups,
                gamma,
                beta,
            } => ops::group_norm_relu(x, *groups, gamma, beta, EPS),
            Norm::Batch { .. } | Norm::Frozen { .. } => ops::relu(&self.forward(x, train)?),
        }
    }

    /// `[N, C, H, W]` -> same. BatchNorm uses batch statistics (and updates its running ones) when
    /// `train`, running statistics otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Group {
                groups,
                gamma,
                beta,
            } => ops::group_norm(x, *groups, gamma, beta, EPS),
            Norm::Batch {
                gamma,
                beta,
                running_mean,
                running_var,
            } => {
                let (n, c, h, w) = x.dims4()?;
                let (mean, var) = if train {
                    let mean = x.mean_keepdim((0, 2, 3))?;
                    let centered = x.broadcast_sub(&mean)?;
                    let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
                    let count = (n * h * w) as f64;
                    let unbiased = if count > 1.0 {
                        count / (count - 1.0)
                    } else {
                        1.0
                    };
                    let rm = ((running_mean.as_tensor() * (1.0 - BN_MOMENTUM))?
                        + (mean.detach().flatten_all()? * BN_MOMENTUM)?)?;
                    let rv = ((running_var.as_tensor() * (1.0 - BN_MOMENTUM))?
                        + (var.detach().flatten_all()? * (BN_MOMENTUM * unbiased))?)?;
                    running_mean.set(&rm)?;
                    running_var.set(&rv)?;
                    (mean, var)
                } else {
                    (
                        running_mean.as_tensor().reshape((1, c, 1, 1))?,
                        running_var.as_tensor().reshape((1, c, 1, 1))?,
                    )
                };
                x.broadcast_sub(&mean)?
                    .broadcast_div(&(var + EPS)?.sqrt()?)?
                    .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
                    .broadcast_add(&beta.reshape((1, c, 1, 1))?)
            }
            Norm::Frozen {
                weight,
                bias,
                running_mean,
                running_var,
            } => {
                let (scale, shift) = frozen_scale_shift(weight, bias, running_mean, running_var)?;
                let c = scale.elem_count();
                x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
                    .broadcast_add(&shift.reshape((1, c, 1, 1))?)
            }
        }
    }
}

/// The per-channel `(scale, shift)` of a frozen BatchNorm, as detectron2's `FrozenBatchNorm2d`
/// computes them: `scale = weight * (running_var + eps)^-1/2`, `shift = bias - running_mean * scale`.
pub fn frozen_scale_shift(
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let scale = (weight / (running_var + EPS)?.sqrt()?)?;
    let shift = (bias - (running_mean * &scale)?)?;
    Ok((scale, shift))
}

/// ResNet's stem pooling: 3x3 max-pool, stride 2, padding 1, `[N, C, H, W]` ->
/// `[N, C, ceil(H/2), ceil(W/2)]` (PyTorch's `MaxPool2d(3, 2, 1)`).
///
/// candle 0.11's `max_pool2d` has no backward unless kernel == stride, so the pool is composed of
/// ops that have one: separable maxima (rows, then columns) of three shifted views, each view a
/// slice of the input reshaped into pairs. Out-of-image taps are -inf, as PyTorch pads.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let rows = max3_stride2(x, 2)?;
    max3_stride2(&rows, 3)
}

/// `y[i] = max(x[2i - 1], x[2i], x[2i + 1])` along `dim` (2 or 3) of a 4-d tensor, out-of-range
/// taps left out; `ceil(n / 2)` outputs.
fn max3_stride2(x: &Tensor, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let out = n.div_ceil(2);
    // Padded p[j] = x[j - 1] for j in 1..=n, -inf at 0 and beyond n, with length 2 * out + 2.
    let pad = |len: usize| -> Result<Tensor> {
        let mut shape = x.dims().to_vec();
        shape[dim] = len;
        Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())
    };
    let tail = 2 * out + 2 - (n + 1);
    let p = Tensor::cat(&[&pad(1)?, x, &pad(tail)?], dim)?;
    // Pairs: q[i, 0] = p[2i], q[i, 1] = p[2i + 1].
    let mut shape = x.dims().to_vec();
    shape[dim] = out + 1;
    shape.insert(dim + 1, 2);
    let q = p.reshape(shape)?;
    let even = q.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?;
    let odd = q.narrow(dim + 1, 1, 1)?.squeeze(dim + 1)?;
    // x[2i - 1] = p[2i], x[2i] = p[2i + 1], x[2i + 1] = p[2i + 2].
    let a = even.narrow(dim, 0, out)?;
    let b = odd.narrow(dim, 0, out)?;
    let c = even.narrow(dim, 1, out)?;
    a.maximum(&b)?.maximum(&c)
}

/// Nearest-neighbour x2 upsampling `[N, C, H, W]` -> `[N, C, 2H, 2W]` by broadcasting.
///
/// candle 0.11's `upsample_nearest2d` backward overwrites the gradient already accumulated for its
/// input instead of adding to it; broadcast + reshape backpropagates by summation, correctly.
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .reshape((n, c, 2 * h, 2 * w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 97) as f32 - 48.0) / 16.0)
            .collect()
    }

    #[test]
    fn frozen_bn_is_the_closed_form_and_equals_batch_norm_in_evaluation() {
        // Two channels: y = (x - mean) / sqrt(var + 1e-5) * weight + bias, computed in f64.
        let (w, b, m, v) = (
            [1.5f32, -0.5],
            [0.25f32, 2.0],
            [0.3f32, -1.0],
            [4.0f32, 0.01],
        );
        let mut store = ParamStore::new(0, &Device::Cpu);
        let frozen = Norm::new(&mut store, "n", NormKind::FrozenBn, 2, 1).unwrap();
        let batch = Norm::new(&mut store, "b", NormKind::Bn, 2, 1).unwrap();
        // Only the BatchNorm's scale and shift are trainable.
        let trainable: Vec<String> = store.named_vars().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            trainable,
            vec!["b.bias".to_string(), "b.weight".to_string()]
        );
        // Set the values through the store's own tensors.
        let set = |key: &str, vals: [f32; 2]| {
            let target = store
                .buffers
                .get(key)
                .cloned()
                .or_else(|| {
                    store
                        .named_vars()
                        .into_iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v)
                })
                .unwrap();
            target.set(&t(&vals, &[2])).unwrap();
        };
        for prefix in ["n", "b"] {
            set(&format!("{prefix}.weight"), w);
            set(&format!("{prefix}.bias"), b);
            set(&format!("{prefix}.running_mean"), m);
            set(&format!("{prefix}.running_var"), v);
        }
        let x = values(2 * 2 * 3 * 3, 1);
        let xt = t(&x, &[2, 2, 3, 3]);
        let yf = frozen.forward(&xt, true).unwrap();
        let yb = batch.forward(&xt, false).unwrap();
        let yf: Vec<f32> = yf.flatten_all().unwrap().to_vec1().unwrap();
        let yb: Vec<f32> = yb.flatten_all().unwrap().to_vec1().unwrap();
        for (i, (&got, &bn)) in yf.iter().zip(&yb).enumerate() {
            let c = (i / 9) % 2;
            let want = (x[i] as f64 - m[c] as f64) / (v[c] as f64 + 1e-5).sqrt() * w[c] as f64
                + b[c] as f64;
            assert!(
                (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{i}: {got} vs {want}"
            );
            assert!(
                (got - bn).abs() <= 1e-5 * bn.abs().max(1.0),
                "{i}: {got} vs BN {bn}"
            );
        }
        // Training mode changes nothing, and no gradient reaches the frozen statistics.
        let xv = Var::from_tensor(&xt).unwrap();
        let y = frozen.forward_relu(xv.as_tensor(), true).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(xv.as_tensor()).is_some());
        for key in ["n.weight", "n.bias", "n.running_mean", "n.running_var"] {
            assert!(grads.get(store.buffers[key].as_tensor()).is_none(), "{key}");
        }
    }

    /// PyTorch's MaxPool2d(3, stride 2, padding 1), written out.
    fn pool_reference(x: &[f32], h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
        let mut out = Vec::new();
        for i in 0..oh {
            for j in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for di in 0..3 {
                    for dj in 0..3 {
                        let (y, xx) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                        if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                            m = m.max(x[y as usize * w + xx as usize]);
                        }
                    }
                }
                out.push(m);
            }
        }
        (out, oh, ow)
    }

    #[test]
    fn max_pool_matches_pytorch_and_routes_the_gradient_to_the_maxima() {
        for (h, w) in [(7, 10), (8, 5), (1, 1), (2, 3)] {
            let x = values(h * w, h + w);
            let xv = Var::from_tensor(&t(&x, &[1, 1, h, w])).unwrap();
            let y = max_pool_3x3_s2(xv.as_tensor()).unwrap();
            let (want, oh, ow) = pool_reference(&x, h, w);
            assert_eq!(y.dims(), &[1, 1, oh, ow]);
            let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "{h}x{w}");
            // d sum(y) / dx counts how many windows pick each input (values here have no ties
            // inside a window, so each window's gradient goes to its one maximum).
            let g = y.sum_all().unwrap().backward().unwrap();
            let gx: Vec<f32> = g
                .get(xv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut counts = vec![0f32; h * w];
            for i in 0..oh {
                for j in 0..ow {
                    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (y, xx) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                            if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                                let k = y as usize * w + xx as usize;
                                if x[k] > best {
                                    (best, at) = (x[k], k);
                                }
                            }
                        }
                    }
                    counts[at] += 1.0;
                }
            }
            assert_eq!(gx, counts, "{h}x{w}");
        }
    }
}
