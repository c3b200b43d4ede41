//! The compute kernels the model is built from. Every layer calls these functions, never candle's
//! conv or norm directly. On the CPU in f32 they run this crate's kernels (`conv`, `group_norm`:
//! candle custom ops with their own backward); anywhere else (CUDA, other dtypes) they run candle's
//! kernels (`reference`), so the CUDA path is unchanged.
//!
//! Shapes: activations are NCHW `[N, C, H, W]`, conv weights `[C_out, C_in, kh, kw]`.

pub mod conv;
pub mod group_norm;
pub mod reference;
#[cfg(test)]
mod testing;

use candle_core::{DType, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

static CANDLE_KERNELS_ONLY: AtomicBool = AtomicBool::new(false);

/// Makes every layer run candle's kernels (`reference`) even where the fast CPU kernels apply:
/// for side-by-side checks and benchmarks of the two, process-wide.
pub fn use_candle_kernels_only(on: bool) {
    CANDLE_KERNELS_ONLY.store(on, Ordering::Relaxed);
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
    if fast_path(&[x, w]) && b.is_none_or(|b| fast_path(&[b])) {
        conv::conv2d_cpu(x, w, b, stride, padding, true)
    } else {
        reference::conv2d(x, w, b, stride, padding)?.relu()
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
    if fast_path(&[x, gamma, beta]) {
        group_norm::group_norm_cpu(x, groups, gamma, beta, eps)
    } else {
        reference::group_norm(x, groups, gamma, beta, eps)
    }
}

/// Rectified linear unit.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.relu()
}
