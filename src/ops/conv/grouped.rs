//! Convolution on small maps (the upper pyramid levels, 7x7 per image and less) as one product
//! over several images: their im2col matrices side by side, `[K, G * P]`. A per-image product
//! there is 1-49 columns wide, and `gemm`'s fixed cost per call and its packing of the weight
//! outweigh the arithmetic (6-40 GFLOP/s per image on 1x1 to 4x4 maps, against 60-90 on 16x16).
//! The grouped product's output `[C_out, G * P]` is copied back to `G` images of `[C_out, P]`,
//! which costs little on maps this small.

use super::{add_row_sums, matmul, BackwardInputs, ConvGeom, GradTargets, Mat, Needs, TapTable};
use gemm::Parallelism;

/// Output pixels per image below which images are grouped.
const SMALL_MAP: usize = 64;
/// Columns of one grouped product at most: wide enough for gemm's kernels, small enough that
/// the grouped im2col matrix stays in cache.
const MAX_COLS: usize = 256;

/// Images per product for convolution `g` when a task handles `per` images; 1 means per-image
/// products (the maps are large enough, or the shifted scheme applies).
pub(super) fn group_len(g: &ConvGeom, per: usize) -> usize {
    if super::shifted::applies(g) || g.p() >= SMALL_MAP {
        1
    } else {
        per.min(MAX_COLS / g.p()).max(1)
    }
}

/// Scratch lengths for groups of `group` images: [grouped im2col matrix, grouped output or
/// output gradient].
pub(super) fn scratch_lens(g: &ConvGeom, group: usize) -> [usize; 2] {
    [g.k() * group * g.p(), g.c_out * group * g.p()]
}

/// The grouped im2col matrix `[K, G * P]` of the images `xs` (consecutive `[C_in, H, W]`).
fn group_cols(t: &TapTable, xs: &[f32], g: &ConvGeom, col: &mut [f32]) -> usize {
    let p = g.p();
    let cols = xs.len() / g.in_len() * p;
    for (i, xn) in xs.chunks_exact(g.in_len()).enumerate() {
        t.im2col(xn, g, &mut col[i * p..], cols);
    }
    cols
}

/// Forward pass of the images `xs` into their outputs `ys`, with `finish(value, channel)`
/// (bias, ReLU) applied on the way out.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_group(
    t: &TapTable,
    xs: &[f32],
    w: &[f32],
    g: &ConvGeom,
    col: &mut [f32],
    out: &mut [f32],
    ys: &mut [f32],
    par: Parallelism,
    finish: impl Fn(f32, usize) -> f32,
) {
    let (k, p) = (g.k(), g.p());
    let cols = group_cols(t, xs, g, col);
    let out = &mut out[..g.c_out * cols];
    matmul(
        out,
        (g.c_out, cols, k),
        Mat::rm(w, k),
        Mat::rm(&col[..k * cols], cols),
        false,
        par,
    );
    for (i, yn) in ys.chunks_exact_mut(g.out_len()).enumerate() {
        for (co, row) in yn.chunks_exact_mut(p).enumerate() {
            let src = &out[co * cols + i * p..][..p];
            row.iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = finish(s, co));
        }
    }
}

/// Backward pass of the images `xs` given their output gradients `dys` (masked where the fused
/// ReLU's outputs `relu_outs` were clamped).
pub(super) fn backward_group(
    t: &TapTable,
    BackwardInputs {
        x: xs,
        w,
        dy: dys,
        relu_out: relu_outs,
    }: BackwardInputs,
    g: &ConvGeom,
    needs: Needs,
    (col, dyg): (&mut [f32], &mut [f32]),
    out: GradTargets,
    par: Parallelism,
) {
    let (k, p) = (g.k(), g.p());
    let cols = xs.len() / g.in_len() * p;
    let dyg = &mut dyg[..g.c_out * cols];
    for (i, dyn_) in dys.chunks_exact(g.out_len()).enumerate() {
        let rn = relu_outs.map(|r| &r[i * g.out_len()..(i + 1) * g.out_len()]);
        for co in 0..g.c_out {
            let src = &dyn_[co * p..(co + 1) * p];
            let dst = &mut dyg[co * cols + i * p..][..p];
            match rn {
                Some(rn) => {
                    let kept = &rn[co * p..(co + 1) * p];
                    for ((d, &s), &o) in dst.iter_mut().zip(src).zip(kept) {
                        *d = if o > 0.0 { s } else { 0.0 };
                    }
                }
                None => dst.copy_from_slice(src),
            }
        }
    }
    if needs.bias {
        add_row_sums(out.db, (dyg, cols), cols);
    }
    if needs.weight {
        group_cols(t, xs, g, col);
        matmul(
            out.dw,
            (g.c_out, k, cols),
            Mat::rm(dyg, cols),
            Mat::tr(&col[..k * cols], cols),
            !out.first,
            par,
        );
    }
    if let Some(dx) = out.dx {
        // The im2col matrix is no longer needed: its buffer holds the grouped dcol.
        let dcol = &mut col[..k * cols];
        matmul(
            dcol,
            (k, cols, g.c_out),
            Mat::tr(w, k),
            Mat::rm(dyg, cols),
            false,
            par,
        );
        for (i, dxn) in dx.chunks_exact_mut(g.in_len()).enumerate() {
            t.col2im(&dcol[i * p..], g, dxn, cols);
        }
    }
}
