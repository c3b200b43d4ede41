//! Convolution without an im2col matrix: a sum of shifted products over a zero-padded copy of
//! the image (the "implicit GEMM" of fast CPU libraries), for stride 1 and, through a polyphase
//! split, for larger strides.
//!
//! The image is copied once into zero-bordered planes. With stride `s` the padded image (`Hp =
//! H + 2 pad`, `Wp = W + 2 pad`) is split into `s * s` phases, phase `(a, b)` holding the pixels
//! at rows `a, a + s, ...` and columns `b, b + s, ...`: planes of `Hq x Wq` (`Wq = ceil(Wp / s)`).
//! Output pixel `(oy, ox)` is computed at position `q = oy * Wq + ox` of a "wide" output
//! `[C_out, H_out * Wq]`; kernel tap `(ki, kj)` then reads phase `(ki % s, kj % s)` at
//! `q + (ki / s) * Wq + kj / s`, so each tap is one plain strided product with `k = C_in`,
//! reading the planes in place. The `Wq - W_out` columns past each output row are computed and
//! thrown away (or, in the backward products, carry a zero gradient). Compared with im2col this
//! writes the image once instead of `kh * kw` times, and the planes stay in cache across taps.

use super::{direct, matmul_into, ConvGeom, Mat, MatMut};
use gemm::Parallelism;

/// Worth it when the thrown-away columns are a small share of the work (at `W_out >= 8` the
/// whole training step measured faster than with im2col; at 4 and 16, no faster) and each tap's
/// product is deep enough (`k = C_in`) to amortize a `gemm` call: not for an RGB stem. A 1x1
/// stride-1 unpadded convolution needs neither scheme.
pub(super) fn applies(g: &ConvGeom) -> bool {
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
    !pointwise && g.w_out >= 8 && g.c_in >= 8
}

/// Row width of a phase plane and of the wide output.
fn wq(g: &ConvGeom) -> usize {
    (g.w + 2 * g.pad).div_ceil(g.stride)
}

fn hq(g: &ConvGeom) -> usize {
    (g.h + 2 * g.pad).div_ceil(g.stride)
}

/// Length of one phase plane of one channel: `Hq * Wq`, plus slack so the last tap's read of
/// the wide output's final row stays inside the plane.
fn plane_len(g: &ConvGeom) -> usize {
    hq(g) * wq(g) + (g.kw - 1) / g.stride
}

/// Values of the padded, phase-split image: `[s * s phases, C_in, plane]`.
pub(super) fn padded_len(g: &ConvGeom) -> usize {
    g.stride * g.stride * g.c_in * plane_len(g)
}

/// Columns of the wide output: `H_out * Wq`.
pub(super) fn wide_len(g: &ConvGeom) -> usize {
    g.h_out * wq(g)
}

/// Whether some kernel tap reads phase `(a, b)`.
fn phase_used(g: &ConvGeom, a: usize, b: usize) -> bool {
    a < g.kh && b < g.kw
}

/// Where tap `t = ki * kw + kj` starts reading: the offset of its phase's channel-0 plane plus
/// its shift inside the plane.
fn tap_offset(g: &ConvGeom, t: usize) -> usize {
    let (ki, kj, s) = (t / g.kw, t % g.kw, g.stride);
    let phase = (ki % s) * s + kj % s;
    phase * g.c_in * plane_len(g) + (ki / s) * wq(g) + kj / s
}

/// Half-open range of phase columns `c` whose image column `c * s + b - pad` lies in `[0, w)`.
fn inside(w: usize, n: usize, s: usize, b: usize, pad: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(b).div_ceil(s).min(n);
    let hi = if w + pad <= b {
        0
    } else {
        ((w + pad - b - 1) / s + 1).min(n)
    };
    (lo, hi.max(lo))
}

/// The phase planes `xq` from one image `x [C_in, H, W]`; borders and slack zeroed, unused
/// phases left alone.
fn pad_image(x: &[f32], g: &ConvGeom, xq: &mut [f32]) {
    let (s, plane, wq, hq, hw) = (g.stride, plane_len(g), wq(g), hq(g), g.h * g.w);
    let phases = xq.chunks_exact_mut(g.c_in * plane).enumerate();
    for (ph, planes) in phases.filter(|&(ph, _)| phase_used(g, ph / s, ph % s)) {
        let (a, b) = (ph / s, ph % s);
        let (c_lo, c_hi) = inside(g.w, wq, s, b, g.pad);
        let (r_lo, r_hi) = inside(g.h, hq, s, a, g.pad);
        for (xc, pc) in x.chunks_exact(hw).zip(planes.chunks_exact_mut(plane)) {
            pc[..r_lo * wq].fill(0.0);
            pc[r_hi * wq..].fill(0.0);
            for r in r_lo..r_hi {
                let row = &mut pc[r * wq..(r + 1) * wq];
                let y = r * s + a - g.pad;
                let first = c_lo * s + b - g.pad;
                let src = &xc[y * g.w + first..(y + 1) * g.w];
                row[..c_lo].fill(0.0);
                row[c_hi..].fill(0.0);
                if s == 1 {
                    row[c_lo..c_hi].copy_from_slice(&src[..c_hi - c_lo]);
                } else {
                    for (o, v) in row[c_lo..c_hi].iter_mut().zip(src.iter().step_by(s)) {
                        *o = *v;
                    }
                }
            }
        }
    }
}

/// The weight of tap `t` as a `[C_out, C_in]` view into `w [C_out, C_in, kh, kw]`.
fn tap_weight(w: &[f32], g: &ConvGeom, t: usize) -> Mat {
    Mat::strided(&w[t..], g.k(), g.kh * g.kw)
}

/// Forward product of one image into the wide output `ywide [C_out, H_out * Wq]`. Scratch `xq`
/// holds `padded_len` values.
pub(super) fn forward_image(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    xq: &mut [f32],
    ywide: &mut [f32],
    par: Parallelism,
) {
    let (plane, wide) = (plane_len(g), wide_len(g));
    pad_image(x, g, xq);
    for t in 0..g.kh * g.kw {
        let rhs = Mat::strided(&xq[tap_offset(g, t)..], plane, 1);
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
    let (wq, w_out) = (wq(g), g.w_out);
    ywide
        .chunks_exact(wide_len(g))
        .flat_map(move |c| c.chunks_exact(wq).map(move |r| &r[..w_out]))
}

/// `dywide [C_out, H_out * Wq]` from one image's output gradient `dy [C_out, H_out, W_out]`,
/// with zeros in the thrown-away columns so they contribute nothing. With `relu_out` (the
/// forward output of a fused ReLU) the gradient is also zeroed where the output was clamped.
pub(super) fn widen_gradient(
    dy: &[f32],
    relu_out: Option<&[f32]>,
    g: &ConvGeom,
    dywide: &mut [f32],
) {
    let wq = wq(g);
    let rows = dy.chunks_exact(g.w_out).zip(dywide.chunks_exact_mut(wq));
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
/// kh, kw]`. Overwrites the scratch `xq`.
pub(super) fn weight_grad_image(
    x: &[f32],
    dywide: &[f32],
    g: &ConvGeom,
    xq: &mut [f32],
    dw: &mut [f32],
    accumulate: bool,
    par: Parallelism,
) {
    let (plane, wide) = (plane_len(g), wide_len(g));
    pad_image(x, g, xq);
    let taps = g.kh * g.kw;
    for t in 0..taps {
        // dW_t [C_out, C_in] = dY [C_out, wide] · shifted(xq)ᵀ [wide, C_in]
        let rhs = Mat::strided(&xq[tap_offset(g, t)..], 1, plane);
        let dst = MatMut::strided(&mut dw[t..], g.k(), taps);
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

/// Input gradient of one image into `dx [C_in, H, W]`. Scratch `dxq` holds `padded_len` values.
pub(super) fn input_grad_image(
    w: &[f32],
    dywide: &[f32],
    g: &ConvGeom,
    dxq: &mut [f32],
    dx: &mut [f32],
    par: Parallelism,
) {
    let (plane, wide, wq, s) = (plane_len(g), wide_len(g), wq(g), g.stride);
    dxq.fill(0.0);
    let taps = g.kh * g.kw;
    for t in 0..taps {
        // shifted(dXq) [C_in, wide] += W_tᵀ [C_in, C_out] · dY [C_out, wide]
        let off = tap_offset(g, t);
        let lhs = Mat::strided(&w[t..], taps, g.k());
        let dst = MatMut::strided(&mut dxq[off..], plane, 1);
        matmul_into(
            dst,
            (g.c_in, wide, g.c_out),
            lhs,
            Mat::rm(dywide, wide),
            true,
            par,
        );
    }
    // Each image pixel lives in exactly one phase; pixels of phases no tap reads get zero.
    let hw = g.h * g.w;
    if s == 1 {
        for (dc, pc) in dx.chunks_exact_mut(hw).zip(dxq.chunks_exact(plane)) {
            for (y, row) in dc.chunks_exact_mut(g.w).enumerate() {
                let start = (y + g.pad) * wq + g.pad;
                row.copy_from_slice(&pc[start..start + g.w]);
            }
        }
        return;
    }
    for (ci, dc) in dx.chunks_exact_mut(hw).enumerate() {
        for (y, row) in dc.chunks_exact_mut(g.w).enumerate() {
            let (a, r) = ((y + g.pad) % s, (y + g.pad) / s);
            for (xi, o) in row.iter_mut().enumerate() {
                let (b, c) = ((xi + g.pad) % s, (xi + g.pad) / s);
                *o = if phase_used(g, a, b) {
                    dxq[((a * s + b) * g.c_in + ci) * plane + r * wq + c]
                } else {
                    0.0
                };
            }
        }
    }
}

/// `forward_image` through the direct kernel.
pub(super) fn forward_image_direct(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    xq: &mut [f32],
    ywide: &mut [f32],
) {
    let (taps, wide) = (g.kh * g.kw, wide_len(g));
    pad_image(x, g, xq);
    let offs: Vec<usize> = (0..taps).map(|t| tap_offset(g, t)).collect();
    let tap_starts: Vec<usize> = (0..taps).collect();
    let weights = direct::Weights {
        data: w,
        rs: g.k(),
        ks: taps,
        taps: &tap_starts,
    };
    let dims = (g.c_out, g.c_in, wide);
    let dst = direct::Dst {
        data: ywide,
        ld: wide,
        accumulate: false,
    };
    direct::shifted_sum(&weights, xq, plane_len(g), &offs, dst, dims);
}

/// Whether the input gradient is itself a forward pass of this scheme: at stride 1 with "same"
/// padding (`2 pad + 1 = kh = kw`) the output gradient, zero-padded like the input, has the
/// input's planes, and `dX = conv(pad(dY), W flipped in space with C_in and C_out swapped)`.
pub(super) fn input_grad_is_forward(g: &ConvGeom) -> bool {
    g.stride == 1 && g.kh == g.kw && 2 * g.pad + 1 == g.kh
}

/// The convolution that computes the input gradient when `input_grad_is_forward`: from the
/// output gradient's `C_out` channels to `C_in`, on the same `H x W` map.
fn transposed(g: &ConvGeom) -> ConvGeom {
    ConvGeom {
        c_in: g.c_out,
        c_out: g.c_in,
        ..*g
    }
}

/// Scratch for the padded output gradient of one image.
pub(super) fn padded_grad_len(g: &ConvGeom) -> usize {
    padded_len(&transposed(g))
}

/// Input gradient of one image through the direct kernel, from the wide output gradient
/// `dywide` (zeros in its thrown-away columns): a forward pass of `transposed(g)` whose weight
/// for output row `ci`, tap `t` and input row `co` is `w[co, ci]` at the flipped tap `taps - 1 - t`.
/// Scratch: `dyq` holds `padded_grad_len` values, `dxwide` `C_in * wide_len` values.
pub(super) fn input_grad_image_direct(
    w: &[f32],
    dywide: &[f32],
    g: &ConvGeom,
    dyq: &mut [f32],
    dxwide: &mut [f32],
    dx: &mut [f32],
) {
    let gt = transposed(g);
    let (plane, wide, wq) = (plane_len(&gt), wide_len(&gt), wq(&gt));
    // A wide row's zero tail is the left and right padding of the padded plane, so the padded
    // plane is the wide gradient shifted by `pad` rows and columns with zeros before and after.
    let lead = g.pad * wq + g.pad;
    for (src, dst) in dywide
        .chunks_exact(wide_len(g))
        .zip(dyq.chunks_exact_mut(plane))
    {
        dst[..lead].fill(0.0);
        dst[lead..lead + src.len()].copy_from_slice(src);
        dst[lead + src.len()..].fill(0.0);
    }
    let taps = g.kh * g.kw;
    let offs: Vec<usize> = (0..taps).map(|t| tap_offset(&gt, t)).collect();
    let flipped: Vec<usize> = (0..taps).map(|t| taps - 1 - t).collect();
    let weights = direct::Weights {
        data: w,
        rs: taps,
        ks: g.k(),
        taps: &flipped,
    };
    let out = &mut dxwide[..gt.c_out * wide];
    let dims = (g.c_in, g.c_out, wide);
    let dst = direct::Dst {
        data: out,
        ld: wide,
        accumulate: false,
    };
    direct::shifted_sum(&weights, dyq, plane, &offs, dst, dims);
    for (dst, src) in dx.chunks_exact_mut(g.w).zip(valid_rows(out, &gt)) {
        dst.copy_from_slice(src);
    }
}

/// Whether the weight gradient runs through the direct kernel: at stride 1, where the padded image
/// is one plane per channel.
pub(super) fn weight_grad_direct_applies(g: &ConvGeom) -> bool {
    g.stride == 1
}

/// `xt [plane, C]` from `xq [C, plane]`, in tiles that stay in cache.
fn transpose(xq: &[f32], c: usize, plane: usize, xt: &mut [f32]) {
    const TILE: usize = 16;
    for c0 in (0..c).step_by(TILE) {
        let c1 = (c0 + TILE).min(c);
        for p0 in (0..plane).step_by(TILE) {
            let p1 = (p0 + TILE).min(plane);
            for ch in c0..c1 {
                let src = &xq[ch * plane + p0..ch * plane + p1];
                for (p, v) in (p0..p1).zip(src) {
                    xt[p * c + ch] = *v;
                }
            }
        }
    }
}

/// Weight gradient of one image through the direct kernel, written (or added, with
/// `accumulate`) tap-major into `dwt [kh * kw, C_out, C_in]`: tap `t` is `dY · shifted(X)ᵀ`, a
/// product whose depth is the wide output's columns, read from the transposed padded image so
/// that the kernel's vectors run along `C_in`. Scratch: `xq` and `xt` hold `padded_len` values.
pub(super) fn weight_grad_image_direct(
    x: &[f32],
    dywide: &[f32],
    g: &ConvGeom,
    (xq, xt): (&mut [f32], &mut [f32]),
    dwt: &mut [f32],
    accumulate: bool,
) {
    let (plane, wide) = (plane_len(g), wide_len(g));
    pad_image(x, g, xq);
    transpose(xq, g.c_in, plane, xt);
    let weights = direct::Weights {
        data: dywide,
        rs: wide,
        ks: 1,
        taps: &[0],
    };
    let per_tap = g.c_out * g.c_in;
    for (t, dst) in dwt.chunks_exact_mut(per_tap).enumerate() {
        let offs = [tap_offset(g, t) * g.c_in];
        let dst = direct::Dst {
            data: dst,
            ld: g.c_in,
            accumulate,
        };
        direct::shifted_sum(&weights, xt, g.c_in, &offs, dst, (g.c_out, wide, g.c_in));
    }
}

/// `dw [C_out, C_in, kh * kw]` from the tap-major `dwt [kh * kw, C_out, C_in]`.
pub(super) fn from_tap_major(dwt: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (taps, per_tap) = (g.kh * g.kw, g.c_out * g.c_in);
    let mut dw = vec![0.0; dwt.len()];
    for (oi, v) in dw.chunks_exact_mut(taps).enumerate() {
        for (t, d) in v.iter_mut().enumerate() {
            *d = dwt[t * per_tap + oi];
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_matches_brute_force() {
        for w in 1usize..9 {
            for s in 1usize..4 {
                for pad in 0usize..3 {
                    for b in 0..s {
                        let n = (w + 2 * pad).div_ceil(s);
                        let expect: Vec<usize> = (0..n)
                            .filter(|&c| (c * s + b).checked_sub(pad).is_some_and(|v| v < w))
                            .collect();
                        let (lo, hi) = inside(w, n, s, b, pad);
                        assert_eq!(
                            (lo..hi).collect::<Vec<_>>(),
                            expect,
                            "w{w} s{s} p{pad} b{b}"
                        );
                    }
                }
            }
        }
    }
}
