//! Stride-1 convolution without an im2col matrix: a sum of shifted products over a zero-padded
//! copy of the image (the "implicit GEMM" of fast CPU libraries).
//!
//! The image is copied once into a zero-bordered plane `[C_in, Hp * Wp]` (`Hp = H + 2 pad`,
//! `Wp = W + 2 pad`). Output pixel `(oy, ox)` is computed at position `q = oy * Wp + ox` of a
//! "wide" output `[C_out, H_out * Wp]`; kernel tap `(ki, kj)` then reads the padded plane at
//! `q + ki * Wp + kj`, so each tap is one plain strided product with `k = C_in`, reading the plane
//! in place. The `Wp - W_out` columns past each output row are computed and thrown away (or, in
//! the backward products, carry a zero gradient). Compared with im2col this writes the image once
//! instead of `kh * kw` times, and the plane stays in L2 cache across the taps.

use super::{matmul_into, ConvGeom, Mat, MatMut};
use gemm::Parallelism;

/// Worth it when the thrown-away columns are a small share of the work: at `W_out >= 8` the
/// whole training step measured faster than with im2col (at 4 and 16, no faster).
pub(super) fn applies(g: &ConvGeom) -> bool {
    g.stride == 1 && (g.kh > 1 || g.kw > 1 || g.pad > 0) && g.w_out >= 8
}

/// Row width of the padded plane and of the wide output.
fn wp(g: &ConvGeom) -> usize {
    g.w + 2 * g.pad
}

/// Length of one padded channel plane: `Hp * Wp`, plus slack so the last tap's read of the
/// wide output's final row stays inside the plane.
pub(super) fn plane_len(g: &ConvGeom) -> usize {
    (g.h + 2 * g.pad) * wp(g) + g.kw - 1
}

/// Columns of the wide output: `H_out * Wp`.
pub(super) fn wide_len(g: &ConvGeom) -> usize {
    g.h_out * wp(g)
}

/// Offset of tap `(ki, kj)` in the padded plane.
fn tap_offset(g: &ConvGeom, t: usize) -> usize {
    (t / g.kw) * wp(g) + t % g.kw
}

/// `xpad [C_in, plane]` from one image `x [C_in, H, W]`, borders and slack zeroed.
fn pad_image(x: &[f32], g: &ConvGeom, xpad: &mut [f32]) {
    let (plane, wp, hw) = (plane_len(g), wp(g), g.h * g.w);
    for (xc, pc) in x.chunks_exact(hw).zip(xpad.chunks_exact_mut(plane)) {
        pc[..g.pad * wp + g.pad].fill(0.0);
        for (y, row) in xc.chunks_exact(g.w).enumerate() {
            let start = (y + g.pad) * wp + g.pad;
            pc[start..start + g.w].copy_from_slice(row);
            // The right border of this row and the left border of the next are adjacent.
            let next = (start + g.w + 2 * g.pad).min(plane);
            pc[start + g.w..next].fill(0.0);
        }
        let tail = (g.h + g.pad) * wp + g.pad;
        pc[tail.min(plane)..].fill(0.0);
    }
}

/// The weight of tap `t` as a `[C_out, C_in]` view into `w [C_out, C_in, kh, kw]`.
fn tap_weight(w: &[f32], g: &ConvGeom, t: usize) -> Mat {
    Mat {
        ptr: w[t..].as_ptr(),
        rs: g.k() as isize,
        cs: (g.kh * g.kw) as isize,
    }
}

/// Forward product of one image into the wide output `ywide [C_out, H_out * Wp]`. Scratch
/// `xpad` holds `C_in * plane_len` values.
pub(super) fn forward_image(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    xpad: &mut [f32],
    ywide: &mut [f32],
    par: Parallelism,
) {
    let (plane, wide) = (plane_len(g), wide_len(g));
    pad_image(x, g, xpad);
    for t in 0..g.kh * g.kw {
        let rhs = Mat {
            ptr: xpad[tap_offset(g, t)..].as_ptr(),
            rs: plane as isize,
            cs: 1,
        };
        let dst = MatMut::rm(ywide, wide);
        matmul_into(
            dst,
            (g.c_out, wide, g.c_in),
            tap_weight(w, g, t),
            rhs,
            t > 0,
            par,
        );
    }
}

/// The valid output rows of a wide output (`W_out` values each), channel by channel.
pub(super) fn valid_rows<'a>(ywide: &'a [f32], g: &ConvGeom) -> impl Iterator<Item = &'a [f32]> {
    let (wp, w_out) = (wp(g), g.w_out);
    ywide
        .chunks_exact(wide_len(g))
        .flat_map(move |c| c.chunks_exact(wp).map(move |r| &r[..w_out]))
}

/// `dywide [C_out, H_out * Wp]` from one image's output gradient `dy [C_out, H_out, W_out]`,
/// with zeros in the thrown-away columns so they contribute nothing. With `relu_out` (the
/// forward output of a fused ReLU) the gradient is also zeroed where the output was clamped.
pub(super) fn widen_gradient(
    dy: &[f32],
    relu_out: Option<&[f32]>,
    g: &ConvGeom,
    dywide: &mut [f32],
) {
    let wp = wp(g);
    let rows = dy.chunks_exact(g.w_out).zip(dywide.chunks_exact_mut(wp));
    match relu_out {
        Some(r) => {
            for ((src, dst), out) in rows.zip(r.chunks_exact(g.w_out)) {
                for ((d, s), o) in dst.iter_mut().zip(src).zip(out) {
                    *d = if *o > 0.0 { *s } else { 0.0 };
                }
                dst[g.w_out..].fill(0.0);
            }
        }
        None => {
            for (src, dst) in rows {
                dst[..g.w_out].copy_from_slice(src);
                dst[g.w_out..].fill(0.0);
            }
        }
    }
}

/// Weight gradient of one image, written (or added, with `accumulate`) into `dw [C_out, C_in,
/// kh, kw]`. Leaves the padded image in `xpad`.
pub(super) fn weight_grad_image(
    x: &[f32],
    dywide: &[f32],
    g: &ConvGeom,
    xpad: &mut [f32],
    dw: &mut [f32],
    accumulate: bool,
    par: Parallelism,
) {
    let (plane, wide) = (plane_len(g), wide_len(g));
    pad_image(x, g, xpad);
    let taps = g.kh * g.kw;
    for t in 0..taps {
        // dW_t [C_out, C_in] = dY [C_out, wide] · shifted(xpad)ᵀ [wide, C_in]
        let rhs = Mat {
            ptr: xpad[tap_offset(g, t)..].as_ptr(),
            rs: 1,
            cs: plane as isize,
        };
        let dst = MatMut {
            ptr: dw[t..].as_mut_ptr(),
            len: dw.len() - t,
            rs: g.k() as isize,
            cs: taps as isize,
        };
        matmul_into(
            dst,
            (g.c_out, g.c_in, wide),
            Mat::rm(dywide, wide),
            rhs,
            accumulate,
            par,
        );
    }
}

/// Input gradient of one image into `dx [C_in, H, W]`. Scratch `dxpad` holds `C_in * plane_len`.
pub(super) fn input_grad_image(
    w: &[f32],
    dywide: &[f32],
    g: &ConvGeom,
    dxpad: &mut [f32],
    dx: &mut [f32],
    par: Parallelism,
) {
    let (plane, wide, wp) = (plane_len(g), wide_len(g), wp(g));
    dxpad.fill(0.0);
    let taps = g.kh * g.kw;
    for t in 0..taps {
        // shifted(dXpad) [C_in, wide] += W_tᵀ [C_in, C_out] · dY [C_out, wide]
        let off = tap_offset(g, t);
        let lhs = Mat {
            ptr: w[t..].as_ptr(),
            rs: taps as isize,
            cs: g.k() as isize,
        };
        let dst = MatMut {
            ptr: dxpad[off..].as_mut_ptr(),
            len: dxpad.len() - off,
            rs: plane as isize,
            cs: 1,
        };
        matmul_into(
            dst,
            (g.c_in, wide, g.c_out),
            lhs,
            Mat::rm(dywide, wide),
            true,
            par,
        );
    }
    let hw = g.h * g.w;
    for (dc, pc) in dx.chunks_exact_mut(hw).zip(dxpad.chunks_exact(plane)) {
        for (y, row) in dc.chunks_exact_mut(g.w).enumerate() {
            let start = (y + g.pad) * wp + g.pad;
            row.copy_from_slice(&pc[start..start + g.w]);
        }
    }
}
