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
        let fan_in = (c_in * k * k) as f64;
        let (wi, bi) = match init {
            ConvInit::Default => {
                let b = 1.0 / fan_in.sqrt();
                (Init::Uniform(b), Init::Uniform(b))
            }
            ConvInit::Gaussian { std, bias } => (Init::Normal(std), Init::Const(bias)),
        };
        let w = store.param(&format!("{name}.weight"), &[c_out, c_in, k, k], wi)?;
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
}

/// GroupNorm or BatchNorm with a per-channel affine transform.
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
}

const EPS: f64 = 1e-5;
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
        let gamma = store.norm_param(&format!("{name}.weight"), &[channels], Init::Const(1.0))?;
        let beta = store.norm_param(&format!("{name}.bias"), &[channels], Init::Const(0.0))?;
        Ok(match kind {
            // Narrow layers of small models cannot always be split into `gn_groups` groups.
            NormKind::Gn => Norm::Group {
                groups: gcd(gn_groups, channels).max(1),
                gamma,
                beta,
            },
            NormKind::Bn => Norm::Batch {
                gamma,
                beta,
                running_mean: store.buffer(&format!("{name}.running_mean"), &[channels], 0.0)?,
                running_var: store.buffer(&format!("{name}.running_var"), &[channels], 1.0)?,
            },
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
            Norm::Batch { .. } => ops::relu(&self.forward(x, train)?),
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
        }
    }
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
