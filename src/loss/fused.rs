//! The fused CPU kernels behind the tensor losses: one parallel pass over `[M, K]` logits that
//! returns the summed loss and writes the analytic gradient, wrapped as a candle `CustomOp2`.
//!
//! Why fused: composing the loss from candle ops costs a dozen passes and as many `[M, K]`
//! temporaries (10-15x torchvision's time at 8 x 100,000 logits). Here the forward pass computes
//! the gradient as well and keeps it in the op, so `backward` only wraps (or scales) it; a second
//! `backward` over the same graph recomputes it.
//!
//! Vectorization: anchors are processed in runs of non-ignored rows; each run is first evaluated
//! as if every logit were background (a branch-free loop over contiguous memory using
//! [`FastMath`], compiled for AVX2+FMA when the CPU has them), then the single positive logit of
//! each foreground anchor is corrected in scalar code.

use super::split::{group_of, LossSplit, EASY_NEGATIVE, HARD_NEGATIVE, POSITIVE};
use super::stable::{FastMath, Real, Transcendental};
use super::terms::{fl_star_terms, focal_terms, GAMMA_GENERAL, GAMMA_ONE, GAMMA_TWO, GAMMA_ZERO};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Anchors per parallel task: ~20k logits at K = 10, enough to amortize scheduling.
const ROWS_PER_TASK: usize = 2048;
/// Logits per f32 partial sum before it is added to the f64 total (bounds rounding growth).
const SUM_BLOCK: usize = 256;
/// Lanes of the vectorized loop (AVX2 = 8 f32).
const LANES: usize = 8;

/// Which element loss a fused pass evaluates; parameters already validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Focal {
        gamma: f32,
        alpha: Option<f32>,
    },
    FlStar {
        gamma: f32,
        beta: f32,
        alpha: Option<f32>,
    },
}

/// One binary element loss: `(value, d value / dx)` for a logit whose target is `positive`.
pub(crate) trait ElemLoss: Sync {
    fn eval<F: Real, M: Transcendental<F>>(&self, x: F, positive: bool) -> (F, F);
}

struct Focal<const G: u8> {
    gamma: f32,
    a_pos: f32,
    a_neg: f32,
}

impl<const G: u8> ElemLoss for Focal<G> {
    #[inline(always)]
    fn eval<F: Real, M: Transcendental<F>>(&self, x: F, positive: bool) -> (F, F) {
        let gamma = F::from_f64(self.gamma as f64);
        if positive {
            focal_terms::<F, M, G>(x, gamma, F::from_f64(self.a_pos as f64))
        } else {
            let (v, d) = focal_terms::<F, M, G>(-x, gamma, F::from_f64(self.a_neg as f64));
            (v, -d)
        }
    }
}

struct FlStar {
    gamma: f32,
    beta: f32,
    a_pos: f32,
    a_neg: f32,
}

impl ElemLoss for FlStar {
    #[inline(always)]
    fn eval<F: Real, M: Transcendental<F>>(&self, x: F, positive: bool) -> (F, F) {
        let (gamma, beta) = (
            F::from_f64(self.gamma as f64),
            F::from_f64(self.beta as f64),
        );
        if positive {
            fl_star_terms::<F, M>(x, gamma, beta, F::from_f64(self.a_pos as f64))
        } else {
            let (v, d) = fl_star_terms::<F, M>(-x, gamma, beta, F::from_f64(self.a_neg as f64));
            (v, -d)
        }
    }
}

fn alphas(alpha: Option<f32>) -> (f32, f32) {
    match alpha {
        None => (1.0, 1.0),
        Some(a) => (a, 1.0 - a),
    }
}

/// Runs `$body` with `$l` bound to the monomorphized element loss of `$kind`.
macro_rules! with_loss {
    ($kind:expr, $l:ident => $body:expr) => {
        match $kind {
            Kind::Focal { gamma, alpha } => {
                let (a_pos, a_neg) = alphas(alpha);
                match super::terms::gamma_kind(gamma as f64) {
                    GAMMA_ZERO => {
                        let $l = &Focal::<GAMMA_ZERO> {
                            gamma,
                            a_pos,
                            a_neg,
                        };
                        $body
                    }
                    GAMMA_ONE => {
                        let $l = &Focal::<GAMMA_ONE> {
                            gamma,
                            a_pos,
                            a_neg,
                        };
                        $body
                    }
                    GAMMA_TWO => {
                        let $l = &Focal::<GAMMA_TWO> {
                            gamma,
                            a_pos,
                            a_neg,
                        };
                        $body
                    }
                    _ => {
                        let $l = &Focal::<GAMMA_GENERAL> {
                            gamma,
                            a_pos,
                            a_neg,
                        };
                        $body
                    }
                }
            }
            Kind::FlStar { gamma, beta, alpha } => {
                let (a_pos, a_neg) = alphas(alpha);
                let $l = &FlStar {
                    gamma,
                    beta,
                    a_pos,
                    a_neg,
                };
                $body
            }
        }
    };
}

impl Kind {
    /// Summed loss over `x [M, K]` with `labels [M]` (already checked), writing `d loss / dx`
    /// into `grad` (same length as `x`), and how loss and gradient split over the sample groups.
    pub(crate) fn value_grad(
        &self,
        x: &[f32],
        labels: &[i64],
        k: usize,
        grad: &mut [f32],
    ) -> (f64, LossSplit) {
        with_loss!(*self, l => value_grad_impl(l, x, labels, k, grad))
    }

    /// Per-anchor loss summed over classes (0 for ignored anchors).
    pub(crate) fn per_anchor(&self, x: &[f32], labels: &[i64], k: usize) -> Vec<f32> {
        with_loss!(*self, l => per_anchor_impl(l, x, labels, k))
    }
}

/// Checks `labels` has `m` entries in `-1..=k`.
pub(crate) fn check_labels(labels: &[i64], m: usize, k: usize) -> candle_core::Result<()> {
    if labels.len() != m {
        candle_core::bail!(
            "loss: {} labels for {m} anchors (logits [{m}, {k}])",
            labels.len()
        );
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l < -1 || l > k as i64)
    {
        candle_core::bail!("loss: label {l} of anchor {i} is outside -1..={k} (-1 ignore, 0 background, 1..={k} class)");
    }
    Ok(())
}

fn value_grad_impl<L: ElemLoss>(
    l: &L,
    x: &[f32],
    labels: &[i64],
    k: usize,
    grad: &mut [f32],
) -> (f64, LossSplit) {
    if k == 0 || labels.is_empty() {
        return (0.0, LossSplit::default());
    }
    let chunk = ROWS_PER_TASK * k;
    // Partial sums are collected in chunk order and added sequentially so the result does not
    // depend on how rayon splits the work.
    let partial: Vec<(f64, LossSplit)> = x
        .par_chunks(chunk)
        .zip(labels.par_chunks(ROWS_PER_TASK))
        .zip(grad.par_chunks_mut(chunk))
        .map(|((xc, lc), gc)| chunk_pass(l, xc, lc, k, gc))
        .collect();
    let mut split = LossSplit::default();
    for (_, s) in &partial {
        split.add(s);
    }
    (partial.iter().map(|(t, _)| t).sum(), split)
}

fn chunk_pass<L: ElemLoss>(
    l: &L,
    x: &[f32],
    labels: &[i64],
    k: usize,
    g: &mut [f32],
) -> (f64, LossSplit) {
    let rows = labels.len();
    let mut total = 0.0f64;
    let mut split = LossSplit::default();
    let mut r = 0;
    while r < rows {
        if labels[r] < 0 {
            g[r * k..(r + 1) * k].fill(0.0);
            r += 1;
            continue;
        }
        let start = r;
        while r < rows && labels[r] >= 0 {
            r += 1;
        }
        let (xs, gs) = (&x[start * k..r * k], &mut g[start * k..r * k]);
        let bg = background_pass(l, xs, gs);
        total += bg.loss;
        split.loss[HARD_NEGATIVE] += bg.hard_loss;
        split.loss[EASY_NEGATIVE] += bg.loss - bg.hard_loss;
        split.grad[HARD_NEGATIVE] += bg.hard_grad;
        split.grad[EASY_NEGATIVE] += bg.grad - bg.hard_grad;
        for (row, &label) in labels.iter().enumerate().take(r).skip(start) {
            if label > 0 {
                let i = row * k + (label as usize - 1);
                let (v_bg, d_bg) = l.eval::<f32, FastMath>(x[i], false);
                let (v, d) = l.eval::<f32, FastMath>(x[i], true);
                total += v as f64 - v_bg as f64;
                g[i] = d;
                // The background pass counted this sample as a negative: move it to the positives.
                let was = group_of(false, x[i]);
                split.loss[was] -= v_bg as f64;
                split.grad[was] -= d_bg.abs() as f64;
                split.loss[POSITIVE] += v as f64;
                split.grad[POSITIVE] += d.abs() as f64;
            }
        }
    }
    (total, split)
}

/// Sums of a background pass: the loss (the value the training loss adds, in the same order as
/// always), and for the split, the hard negatives' loss and the gradient magnitudes.
#[derive(Default)]
struct BackgroundSums {
    loss: f64,
    hard_loss: f64,
    grad: f64,
    hard_grad: f64,
}

/// Every logit taken as background: `sum(value)`, `g = d value / dx`.
fn background_pass<L: ElemLoss>(l: &L, x: &[f32], g: &mut [f32]) -> BackgroundSums {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::util::wide::has_avx2() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { background_pass_avx2(l, x, g) };
        }
    }
    background_pass_generic(l, x, g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn background_pass_avx2<L: ElemLoss>(l: &L, x: &[f32], g: &mut [f32]) -> BackgroundSums {
    background_pass_generic(l, x, g)
}

#[inline(always)]
fn background_pass_generic<L: ElemLoss>(l: &L, x: &[f32], g: &mut [f32]) -> BackgroundSums {
    let mut sums = BackgroundSums::default();
    let lanes_sum = |a: &[f32; LANES]| a.iter().map(|&v| v as f64).sum::<f64>();
    for (xb, gb) in x.chunks(SUM_BLOCK).zip(g.chunks_mut(SUM_BLOCK)) {
        let mut acc = [0.0f32; LANES];
        // The split's sums, branch-free: `hard` is 1 for a logit >= 0 (p_t <= 0.5), else 0.
        let (mut hard_acc, mut grad_acc, mut hard_grad_acc) =
            ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
        let mut xl = xb.chunks_exact(LANES);
        let mut gl = gb.chunks_exact_mut(LANES);
        for (xv, gv) in (&mut xl).zip(&mut gl) {
            for j in 0..LANES {
                let (v, d) = l.eval::<f32, FastMath>(xv[j], false);
                let hard = if xv[j] >= 0.0 { 1.0f32 } else { 0.0 };
                acc[j] += v;
                hard_acc[j] += hard * v;
                grad_acc[j] += d.abs();
                hard_grad_acc[j] += hard * d.abs();
                gv[j] = d;
            }
        }
        for (xv, gv) in xl.remainder().iter().zip(gl.into_remainder()) {
            let (v, d) = l.eval::<f32, FastMath>(*xv, false);
            let hard = if *xv >= 0.0 { 1.0f32 } else { 0.0 };
            acc[0] += v;
            hard_acc[0] += hard * v;
            grad_acc[0] += d.abs();
            hard_grad_acc[0] += hard * d.abs();
            *gv = d;
        }
        sums.loss += lanes_sum(&acc);
        sums.hard_loss += lanes_sum(&hard_acc);
        sums.grad += lanes_sum(&grad_acc);
        sums.hard_grad += lanes_sum(&hard_grad_acc);
    }
    sums
}

fn per_anchor_impl<L: ElemLoss>(l: &L, x: &[f32], labels: &[i64], k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; labels.len()];
    if k == 0 {
        return out;
    }
    out.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(ci, oc)| {
            for (j, o) in oc.iter_mut().enumerate() {
                let r = ci * ROWS_PER_TASK + j;
                let label = labels[r];
                if label < 0 {
                    continue;
                }
                let row = &x[r * k..(r + 1) * k];
                let sum: f64 = row
                    .iter()
                    .enumerate()
                    .map(|(c, &v)| l.eval::<f32, FastMath>(v, label == c as i64 + 1).0 as f64)
                    .sum();
                *o = sum as f32;
            }
        });
    out
}

/// The candle op: `(logits [M, K] f32, labels [M] i64) -> loss []`.
struct FusedLoss {
    kind: Kind,
    /// The gradient computed by the forward pass, taken by the first `bwd`.
    grad: Mutex<Option<Vec<f32>>>,
    keep_grad: bool,
    /// The forward pass's split of loss and gradient, read by [`apply_with_split`].
    split: Arc<Mutex<LossSplit>>,
}

impl FusedLoss {
    fn compute(
        &self,
        x: &[f32],
        labels: &[i64],
        m: usize,
        k: usize,
    ) -> candle_core::Result<(f64, Vec<f32>, LossSplit)> {
        check_labels(labels, m, k)?;
        let mut grad = vec![0.0f32; x.len()];
        let (total, split) = self.kind.value_grad(x, labels, k, &mut grad);
        Ok((total, grad, split))
    }
}

impl CustomOp2 for FusedLoss {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Focal { .. } => "fused-sigmoid-focal-loss",
            Kind::FlStar { .. } => "fused-fl-star-loss",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let x = match (s1, l1.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("{}: logits must be contiguous f32", self.name()),
        };
        let labels = match (s2, l2.contiguous_offsets()) {
            (CpuStorage::I64(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("{}: labels must be contiguous i64", self.name()),
        };
        let (total, grad, split) = self.compute(x, labels, m, k)?;
        *self
            .split
            .lock()
            .map_err(|_| candle_core::Error::Msg("loss split poisoned".into()))? = split;
        if self.keep_grad {
            *self
                .grad
                .lock()
                .map_err(|_| candle_core::Error::Msg("loss gradient cache poisoned".into()))? =
                Some(grad);
        }
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let cached = self
            .grad
            .lock()
            .map_err(|_| candle_core::Error::Msg("loss gradient cache poisoned".into()))?
            .take();
        let grad = match cached {
            Some(g) => g,
            None => {
                let (m, k) = logits.dims2()?;
                let x = logits.flatten_all()?.to_vec1::<f32>()?;
                let lab = labels.to_vec1::<i64>()?;
                self.compute(&x, &lab, m, k)?.1
            }
        };
        let grad = Tensor::from_vec(grad, logits.shape().clone(), logits.device())?;
        let scale = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let grad = if scale == 1.0 {
            grad
        } else {
            grad.affine(scale as f64, 0.0)?
        };
        Ok((Some(grad), None))
    }
}

/// Applies the fused loss to CPU tensors `logits [M, K]` (any float dtype, converted to f32) and
/// `labels [M]` (integer; -1 ignore, 0 background, 1..=K), returning the summed loss and how it
/// and its gradient split over positives, hard and easy negatives.
pub(crate) fn apply_with_split(
    logits: &Tensor,
    labels: &Tensor,
    kind: Kind,
) -> candle_core::Result<(Tensor, LossSplit)> {
    let (m, _k) = logits.dims2()?;
    let n = labels.dims1()?;
    if n != m {
        candle_core::bail!("loss: {n} labels for {m} anchors");
    }
    let logits = if logits.dtype() == DType::F32 {
        logits.contiguous()?
    } else {
        logits.to_dtype(DType::F32)?.contiguous()?
    };
    let labels = labels.to_dtype(DType::I64)?.contiguous()?;
    let track = logits.track_op();
    let split = Arc::new(Mutex::new(LossSplit::default()));
    let op = FusedLoss {
        kind,
        grad: Mutex::new(None),
        keep_grad: track,
        split: split.clone(),
    };
    let loss = if track {
        logits.apply_op2(&labels, op)?
    } else {
        logits.apply_op2_no_bwd(&labels, &op)?
    };
    let split = *split
        .lock()
        .map_err(|_| candle_core::Error::Msg("loss split poisoned".into()))?;
    Ok((loss, split))
}

/// The split of [`apply_with_split`] for logits on any device, computed on a host copy (for the
/// composed losses of other devices, whose kernels do not produce it).
pub(crate) fn host_split(
    logits: &Tensor,
    labels: &Tensor,
    kind: Kind,
) -> candle_core::Result<LossSplit> {
    let (m, k) = logits.dims2()?;
    let x = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let labels = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    check_labels(&labels, m, k)?;
    let mut grad = vec![0.0f32; x.len()];
    Ok(kind.value_grad(&x, &labels, k, &mut grad).1)
}
