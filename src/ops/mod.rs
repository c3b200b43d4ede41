//! The compute kernels the model is built from. Every layer calls these functions, never candle's
//! conv or norm directly. On the CPU in f32 they run this crate's kernels (`conv`, `group_norm`:
//! candle custom ops with their own backward); anywhere else (CUDA, other dtypes) they run candle's
//! kernels (`reference`), so the CUDA path is unchanged.
//!
//! Shapes: activations are NCHW `[N, C, H, W]`, conv weights `[C_out, C_in, kh, kw]`.

pub mod conv;
pub mod conv_norm;
pub mod group_norm;
pub mod reference;
pub mod relu;
#[cfg(test)]
mod testing;

use candle_core::{DType, Result, Tensor};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static CANDLE_KERNELS_ONLY: AtomicBool = AtomicBool::new(false);

/// Makes every layer run candle's kernels (`reference`) even where the fast CPU kernels apply:
/// for side-by-side checks and benchmarks of the two, process-wide.
pub fn use_candle_kernels_only(on: bool) {
    CANDLE_KERNELS_ONLY.store(on, Ordering::Relaxed);
}

static COUNTING: AtomicBool = AtomicBool::new(false);
static FORWARD_MACS: AtomicU64 = AtomicU64::new(0);
static INPUT_GRAD_MACS: AtomicU64 = AtomicU64::new(0);

/// Multiply-accumulates of the convolutions of one piece of work. A convolution's weight gradient
/// costs as many as its forward pass, and so does its input gradient when the input needs one (not
/// for the image the stem reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvWork {
    pub forward_macs: u64,
    pub input_grad_macs: u64,
}

impl ConvWork {
    /// Floating-point operations (2 per MAC) of forward, input and weight gradient together.
    pub fn training_flops(&self) -> u64 {
        2 * (2 * self.forward_macs + self.input_grad_macs)
    }
}

/// Runs `f` and returns the convolution work it did (process-wide: run nothing else meanwhile).
pub fn count_conv_work<R>(f: impl FnOnce() -> R) -> (R, ConvWork) {
    FORWARD_MACS.store(0, Ordering::Relaxed);
    INPUT_GRAD_MACS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let r = f();
    COUNTING.store(false, Ordering::Relaxed);
    let work = ConvWork {
        forward_macs: FORWARD_MACS.load(Ordering::Relaxed),
        input_grad_macs: INPUT_GRAD_MACS.load(Ordering::Relaxed),
    };
    (r, work)
}

fn count(x: &Tensor, w: &Tensor, stride: usize, padding: usize) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let (Ok((n, _, h, wd)), Ok((co, ci, kh, kw))) = (x.dims4(), w.dims4()) else {
        return;
    };
    let ho = (h + 2 * padding).saturating_sub(kh) / stride + 1;
    let wo = (wd + 2 * padding).saturating_sub(kw) / stride + 1;
    let macs = (n * co * ho * wo * ci * kh * kw) as u64;
    FORWARD_MACS.fetch_add(macs, Ordering::Relaxed);
    if x.track_op() {
        INPUT_GRAD_MACS.fetch_add(macs, Ordering::Relaxed);
    }
}

/// Whether the fast CPU kernels apply to these tensors.
fn fast_path(ts: &[&Tensor]) -> bool {
    !CANDLE_KERNELS_ONLY.load(Ordering::Relaxed)
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// 2-D convolution with square stride and zero padding, plus an optional bias `[C_out]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    count(x, w, stride, padding);
    if fast_path(&[x, w]) && b.is_none_or(|b| fast_path(&[b])) {
        conv::conv2d_cpu(x, w, b, stride, padding, false)
    } else {
        reference::conv2d(x, w, b, stride, padding)
    }
}

/// `relu(conv2d(x, w, b))` in one kernel on the CPU: the ReLU is applied while the output is still
/// in cache, and its backward is folded into the convolution's.
pub fn conv2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    count(x, w, stride, padding);
    if fast_path(&[x, w]) && b.is_none_or(|b| fast_path(&[b])) {
        conv::conv2d_cpu(x, w, b, stride, padding, true)
    } else {
        reference::conv2d(x, w, b, stride, padding)?.relu()
    }
}

/// `group_norm(conv2d(x, w, b))`, then ReLU when `norm.relu`: one op on the CPU (`conv_norm`),
/// whose backward hands the norm's input gradient straight to the convolution's.
pub fn conv2d_group_norm(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    (stride, padding): (usize, usize),
    norm: &conv_norm::GroupNormAfter,
) -> Result<Tensor> {
    count(x, w, stride, padding);
    if fast_path(&[x, w, norm.gamma, norm.beta]) && b.is_none_or(|b| fast_path(&[b])) {
        conv_norm::conv_group_norm_cpu(x, w, b, (stride, padding), norm)
    } else {
        let z = reference::conv2d(x, w, b, stride, padding)?;
        group_norm_then(&z, norm.groups, norm.gamma, norm.beta, norm.eps, norm.relu)
    }
}

/// Group normalization over `[N, C, H, W]` with `groups` groups and per-channel affine `gamma`, `beta` `[C]`.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    group_norm_then(x, groups, gamma, beta, eps, false)
}

/// `relu(group_norm(x))` in one kernel on the CPU, its backward folded into the norm's.
pub fn group_norm_relu(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    group_norm_then(x, groups, gamma, beta, eps, true)
}

fn group_norm_then(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    if fast_path(&[x, gamma, beta]) {
        return group_norm::group_norm_cpu(x, groups, gamma, beta, eps, relu);
    }
    let y = reference::group_norm(x, groups, gamma, beta, eps)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// Rectified linear unit.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if fast_path(&[x]) {
        relu::relu_cpu(x)
    } else {
        x.relu()
    }
}
