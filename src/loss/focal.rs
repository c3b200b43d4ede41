//! The alpha-balanced sigmoid focal loss (paper eq. 5), alpha-balanced cross entropy (eq. 3, the
//! focal loss at gamma = 0), and FL* (appendix A), per binary sample and over `[M, K]` logits.
//!
//! Per logit `x` with target `t` in {0, 1}: `x_t = x` if `t = 1` else `-x`, `p_t = sigmoid(x_t)`,
//! `alpha_t = alpha` if `t = 1` else `1 - alpha` (1 when alpha is `None`), and
//!
//! - `FL  = alpha_t (1 - p_t)^gamma (-log p_t)`,
//!   `dFL/dx_t = -alpha_t (1 - p_t)^gamma (gamma p_t (-log p_t) + 1 - p_t)` (eq. 10 with alpha),
//! - `FL* = alpha_t (-log sigmoid(gamma x_t + beta)) / gamma`, `dFL*/dx_t = alpha_t (p*_t - 1)` (eq. 11).
//!
//! The tensor losses sum over all non-ignored anchors x K classes; an anchor with label `c` in
//! `1..=K` has target 1 for class `c - 1` only, label 0 has no positive class, label -1 is ignored
//! (zero value and zero gradient): the encoding `geometry::anchor_labels` makes. Normalization (by the number of positives) is the caller's.

use super::fused;
use super::split::LossSplit;
use super::stable::{Real, StdMath, Transcendental};
pub use super::terms::{
    fl_star_terms, focal_terms, gamma_kind, GAMMA_GENERAL, GAMMA_ONE, GAMMA_TWO, GAMMA_ZERO,
};
use candle_core::{DType, Device, Tensor};

/// Invalid loss hyper-parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LossParamError {
    #[error("focal loss gamma must be a finite number >= 0, got {0}")]
    Gamma(f32),
    #[error("focal loss alpha must be a number in [0, 1], got {0}")]
    Alpha(f32),
    #[error("FL* gamma must be a finite number > 0, got {0}")]
    StarGamma(f32),
    #[error("FL* beta must be a finite number, got {0}")]
    StarBeta(f32),
    #[error("smooth L1 beta must be a finite number >= 0, got {0}")]
    SmoothL1Beta(f32),
}

/// Focal loss hyper-parameters; `alpha = None` means no alpha weighting (alpha_t = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FocalParams {
    pub gamma: f32,
    pub alpha: Option<f32>,
}

impl FocalParams {
    /// Validates `gamma >= 0` (finite) and `alpha` in `[0, 1]`.
    pub fn new(gamma: f32, alpha: Option<f32>) -> Result<Self, LossParamError> {
        let p = Self { gamma, alpha };
        p.validate()?;
        Ok(p)
    }

    /// The paper's default: gamma = 2, alpha = 0.25.
    pub fn paper() -> Self {
        Self {
            gamma: 2.0,
            alpha: Some(0.25),
        }
    }

    pub fn validate(&self) -> Result<(), LossParamError> {
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(LossParamError::Gamma(self.gamma));
        }
        if let Some(a) = self.alpha {
            if !(0.0..=1.0).contains(&a) {
                return Err(LossParamError::Alpha(a));
            }
        }
        Ok(())
    }
}

/// FL* hyper-parameters (appendix A); `alpha` as for [`FocalParams`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlStarParams {
    pub gamma: f32,
    pub beta: f32,
    pub alpha: Option<f32>,
}

impl FlStarParams {
    /// Validates `gamma > 0`, finite `beta`, `alpha` in `[0, 1]`.
    pub fn new(gamma: f32, beta: f32, alpha: Option<f32>) -> Result<Self, LossParamError> {
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(LossParamError::StarGamma(gamma));
        }
        if !beta.is_finite() {
            return Err(LossParamError::StarBeta(beta));
        }
        FocalParams::new(0.0, alpha)?;
        Ok(Self { gamma, beta, alpha })
    }
}

// ---------------------------------------------------------------------------------------------
// Per binary sample.

fn alpha_t<F: Real>(positive: bool, alpha: Option<F>) -> F {
    match alpha {
        None => F::ONE,
        Some(a) if positive => a,
        Some(a) => F::ONE - a,
    }
}

/// `(value, d value / dx)` of the focal loss of one logit `x` (f32 or f64).
pub fn focal_elem_value_grad<F: Real>(x: F, positive: bool, gamma: F, alpha: Option<F>) -> (F, F)
where
    StdMath: Transcendental<F>,
{
    let a = alpha_t(positive, alpha);
    let x_t = if positive { x } else { -x };
    let (v, d) = match gamma_kind(gamma.to_f64()) {
        GAMMA_ZERO => focal_terms::<F, StdMath, GAMMA_ZERO>(x_t, gamma, a),
        GAMMA_ONE => focal_terms::<F, StdMath, GAMMA_ONE>(x_t, gamma, a),
        GAMMA_TWO => focal_terms::<F, StdMath, GAMMA_TWO>(x_t, gamma, a),
        _ => focal_terms::<F, StdMath, GAMMA_GENERAL>(x_t, gamma, a),
    };
    (v, if positive { d } else { -d })
}

/// Focal loss `-alpha_t (1-p_t)^gamma log p_t` of one logit `x` whose target is `positive`.
pub fn focal_elem(x: f64, positive: bool, gamma: f64, alpha: Option<f64>) -> f64 {
    focal_elem_value_grad(x, positive, gamma, alpha).0
}

/// `d focal_elem / dx`.
pub fn focal_elem_grad(x: f64, positive: bool, gamma: f64, alpha: Option<f64>) -> f64 {
    focal_elem_value_grad(x, positive, gamma, alpha).1
}

/// Alpha-balanced cross entropy `-alpha_t log p_t` of one logit: the focal loss at gamma = 0.
pub fn ce_elem(x: f64, positive: bool, alpha: Option<f64>) -> f64 {
    focal_elem(x, positive, 0.0, alpha)
}

/// `d ce_elem / dx`.
pub fn ce_elem_grad(x: f64, positive: bool, alpha: Option<f64>) -> f64 {
    focal_elem_grad(x, positive, 0.0, alpha)
}

/// `(value, d value / dx)` of FL* of one logit `x` (f32 or f64); `gamma > 0`.
pub fn fl_star_elem_value_grad<F: Real>(
    x: F,
    positive: bool,
    gamma: F,
    beta: F,
    alpha: Option<F>,
) -> (F, F)
where
    StdMath: Transcendental<F>,
{
    let a = alpha_t(positive, alpha);
    let x_t = if positive { x } else { -x };
    let (v, d) = fl_star_terms::<F, StdMath>(x_t, gamma, beta, a);
    (v, if positive { d } else { -d })
}

/// FL* `-log(sigmoid(gamma x_t + beta)) / gamma` of one logit (no alpha); `gamma > 0`.
pub fn fl_star_elem(x: f64, positive: bool, gamma: f64, beta: f64) -> f64 {
    fl_star_elem_value_grad(x, positive, gamma, beta, None).0
}

/// `d fl_star_elem / dx`.
pub fn fl_star_elem_grad(x: f64, positive: bool, gamma: f64, beta: f64) -> f64 {
    fl_star_elem_value_grad(x, positive, gamma, beta, None).1
}

// ---------------------------------------------------------------------------------------------
// Over tensors: logits [M, K] f32, labels [M] i64 (-1 ignore, 0 background, 1..=K class + 1).

/// The element loss of the fused kernels for these focal parameters.
pub(crate) fn focal_kernel(p: &FocalParams) -> fused::Kind {
    fused::Kind::Focal {
        gamma: p.gamma,
        alpha: p.alpha,
    }
}

/// Sum of the alpha-balanced sigmoid focal loss over non-ignored anchors x K classes; a scalar
/// (shape `[]`) f32 tensor with gradient with respect to `logits`.
///
/// On CPU this is one fused, parallel pass that also produces the analytic gradient (kept for
/// `backward`); on other devices it is composed from stable candle ops
/// ([`sigmoid_focal_loss_composed`]).
pub fn sigmoid_focal_loss(
    logits: &Tensor,
    labels: &Tensor,
    p: &FocalParams,
) -> candle_core::Result<Tensor> {
    Ok(sigmoid_focal_loss_split(logits, labels, p)?.0)
}

/// [`sigmoid_focal_loss`] with how its loss and gradient split over positives, hard and easy
/// negatives (nearly free on CPU, where the fused pass sums them as it goes).
pub fn sigmoid_focal_loss_split(
    logits: &Tensor,
    labels: &Tensor,
    p: &FocalParams,
) -> candle_core::Result<(Tensor, LossSplit)> {
    p.validate().map_err(candle_core::Error::wrap)?;
    fused_or_composed(logits, labels, focal_kernel(p), || {
        sigmoid_focal_loss_composed(logits, labels, p)
    })
}

/// The fused kernel `kind` on CPU; elsewhere `composed`, with the split taken from a host copy.
fn fused_or_composed(
    logits: &Tensor,
    labels: &Tensor,
    kind: fused::Kind,
    composed: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(Tensor, LossSplit)> {
    if logits.device().is_cpu() {
        fused::apply_with_split(logits, labels, kind)
    } else {
        let split = fused::host_split(logits, labels, kind)?;
        Ok((composed()?, split))
    }
}

/// Sum of alpha-balanced cross entropy: exactly [`sigmoid_focal_loss`] with gamma = 0.
pub fn alpha_balanced_ce(
    logits: &Tensor,
    labels: &Tensor,
    alpha: Option<f32>,
) -> candle_core::Result<Tensor> {
    sigmoid_focal_loss(logits, labels, &FocalParams { gamma: 0.0, alpha })
}

/// Sum of FL* (gamma > 0, any beta, no alpha) over non-ignored anchors x K classes. Fused on CPU
/// like [`sigmoid_focal_loss`]; composed from stable candle ops elsewhere.
pub fn fl_star_loss(
    logits: &Tensor,
    labels: &Tensor,
    gamma: f32,
    beta: f32,
) -> candle_core::Result<Tensor> {
    fl_star_loss_with(
        logits,
        labels,
        &FlStarParams::new(gamma, beta, None).map_err(candle_core::Error::wrap)?,
    )
}

/// [`fl_star_loss`] with alpha weighting (the paper's Table 3 used alpha = 0.25 throughout).
pub fn fl_star_loss_with(
    logits: &Tensor,
    labels: &Tensor,
    p: &FlStarParams,
) -> candle_core::Result<Tensor> {
    Ok(fl_star_loss_split(logits, labels, p)?.0)
}

/// [`fl_star_loss_with`] with the split of [`sigmoid_focal_loss_split`].
pub fn fl_star_loss_split(
    logits: &Tensor,
    labels: &Tensor,
    p: &FlStarParams,
) -> candle_core::Result<(Tensor, LossSplit)> {
    FlStarParams::new(p.gamma, p.beta, p.alpha).map_err(candle_core::Error::wrap)?;
    let kind = fused::Kind::FlStar {
        gamma: p.gamma,
        beta: p.beta,
        alpha: p.alpha,
    };
    fused_or_composed(logits, labels, kind, || {
        fl_star_loss_composed(logits, labels, p)
    })
}

/// Per-anchor focal loss summed over the K classes (0 for ignored anchors), without gradient,
/// for scoring examples in OHEM. `logits [M, K]`, `labels [M]` -> `M` values.
pub fn per_anchor_loss(
    logits: &Tensor,
    labels: &Tensor,
    p: &FocalParams,
) -> candle_core::Result<Vec<f32>> {
    p.validate().map_err(candle_core::Error::wrap)?;
    let (m, k) = logits.dims2()?;
    let x = logits
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let lab = labels
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    fused::check_labels(&lab, m, k)?;
    Ok(focal_kernel(p).per_anchor(&x, &lab, k))
}

/// One-hot targets `[M, K]` and the non-ignored mask `[M, 1]`, both f32.
fn targets_and_mask(labels: &Tensor, m: usize, k: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let device: &Device = labels.device();
    let labels = labels.to_dtype(DType::I64)?.reshape((m, 1))?;
    let classes = Tensor::arange(1i64, k as i64 + 1, device)?.reshape((1, k))?;
    let targets = labels.broadcast_eq(&classes)?.to_dtype(DType::F32)?;
    let valid = labels.ge(0i64)?.to_dtype(DType::F32)?;
    Ok((targets, valid))
}

/// `(x_t, alpha_t)` for the composed versions: `x_t = x (2t - 1)`, `alpha_t` as a tensor or 1.
fn composed_common(
    logits: &Tensor,
    labels: &Tensor,
    alpha: Option<f32>,
) -> candle_core::Result<(Tensor, Option<Tensor>, Tensor)> {
    let (m, k) = logits.dims2()?;
    let (t, valid) = targets_and_mask(labels, m, k)?;
    let x_t = logits.to_dtype(DType::F32)?.mul(&t.affine(2.0, -1.0)?)?;
    let alpha_t = match alpha {
        None => None,
        Some(a) => Some(t.affine(2.0 * a as f64 - 1.0, 1.0 - a as f64)?),
    };
    Ok((x_t, alpha_t, valid))
}

/// `(softplus(x), softplus(-x))` from stable candle ops: `max(+-x, 0) + log(1 + exp(-|x|))`.
fn composed_softplus_pair(x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let l = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((x.relu()?.add(&l)?, x.neg()?.relu()?.add(&l)?))
}

/// [`sigmoid_focal_loss`] composed from stable candle ops (log space, no `powf`); differentiable
/// by candle's autograd on any device. The reference the fused kernel is tested against.
pub fn sigmoid_focal_loss_composed(
    logits: &Tensor,
    labels: &Tensor,
    p: &FocalParams,
) -> candle_core::Result<Tensor> {
    p.validate().map_err(candle_core::Error::wrap)?;
    let (x_t, alpha_t, valid) = composed_common(logits, labels, p.alpha)?;
    let (sp, nlp) = composed_softplus_pair(&x_t)?;
    let mut loss = nlp;
    if p.gamma != 0.0 {
        loss = loss.mul(&sp.affine(-(p.gamma as f64), 0.0)?.exp()?)?;
    }
    if let Some(a) = alpha_t {
        loss = loss.mul(&a)?;
    }
    loss.broadcast_mul(&valid)?.sum_all()
}

/// [`fl_star_loss_with`] composed from stable candle ops (see [`sigmoid_focal_loss_composed`]).
pub fn fl_star_loss_composed(
    logits: &Tensor,
    labels: &Tensor,
    p: &FlStarParams,
) -> candle_core::Result<Tensor> {
    FlStarParams::new(p.gamma, p.beta, p.alpha).map_err(candle_core::Error::wrap)?;
    let (x_t, alpha_t, valid) = composed_common(logits, labels, p.alpha)?;
    let z = x_t.affine(p.gamma as f64, p.beta as f64)?;
    let (_, nlp) = composed_softplus_pair(&z)?;
    let mut loss = nlp.affine(1.0 / p.gamma as f64, 0.0)?;
    if let Some(a) = alpha_t {
        loss = loss.mul(&a)?;
    }
    loss.broadcast_mul(&valid)?.sum_all()
}

#[cfg(test)]
#[path = "focal_tests.rs"]
mod tests;
