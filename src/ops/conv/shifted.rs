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

use super::amx;
use super::direct::{self, Depth};
use super::{matmul_into, ConvGeom, Mat, MatMut};
use gemm::Parallelism;

/// Worth it when the thrown-away columns are a small share of the work (at `W_out >= 8` the
/// whole training step measured faster than with im2col; at 4 and 16, no faster) and each tap's
/// product is deep enough (`k = C_in`) to amortize a `gemm` call: not for an RGB stem. With bf16
/// products on AMX tiles the maps under 8 wide take it too: next to the tiles' multiply rate the
/// thrown-away columns cost little, and the im2col products would stay f32 (the stem stays on
/// im2col: its 3 channels padded to a tile's 32 ran 1.5x slower). A 1x1 stride-1 unpadded
/// convolution needs neither scheme.
pub(super) fn applies(g: &ConvGeom) -> bool {
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
    !pointwise && g.c_in >= 8 && (g.w_out >= 8 || amx::enabled())
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

/// The phase `(ki % s) * s + kj % s` that tap `t = ki * kw + kj` reads, and its shift inside
/// the phase plane.
fn tap_phase_shift(g: &ConvGeom, t: usize) -> (usize, usize) {
    let (ki, kj, s) = (t / g.kw, t % g.kw, g.stride);
    ((ki % s) * s + kj % s, (ki / s) * wq(g) + kj / s)
}

/// Where tap `t` starts reading: the offset of its phase's channel-0 plane plus its shift.
fn tap_offset(g: &ConvGeom, t: usize) -> usize {
    let (phase, shift) = tap_phase_shift(g, t);
    phase * g.c_in * plane_len(g) + shift
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
                gather_strided(src, s, &mut row[c_lo..c_hi]);
            }
        }
    }
}

/// `dst[i] = src[i * s]` for every `i < dst.len()`. Stride 2 (every strided layer of the model)
/// runs over pairs, which the compiler turns into vector shuffles; `step_by` stayed one value at
/// a time and made the stride-2 padding a third of the kernel time of `c2a`.
fn gather_strided(src: &[f32], s: usize, dst: &mut [f32]) {
    let Some(last) = dst.len().checked_sub(1) else {
        return;
    };
    let src = &src[..last * s + 1];
    match s {
        1 => dst.copy_from_slice(src),
        2 => {
            for (d, pair) in dst[..last].iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
            dst[last] = src[last * 2];
        }
        _ => {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[i * s];
            }
        }
    }
}

/// `dst[i * s] = src[i]` for every `i < src.len()`, leaving the values between alone.
fn scatter_strided(src: &[f32], s: usize, dst: &mut [f32]) {
    let Some(last) = src.len().checked_sub(1) else {
        return;
    };
    let dst = &mut dst[..last * s + 1];
    match s {
        1 => dst.copy_from_slice(src),
        2 => {
            for (pair, v) in dst.chunks_exact_mut(2).zip(&src[..last]) {
                pair[0] = *v;
            }
            dst[last * 2] = src[last];
        }
        _ => {
            for (i, v) in src.iter().enumerate() {
                dst[i * s] = *v;
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

/// Where one image's wide output gradient (`H_out * Wq` values per channel) lives in the backward
/// scratch: channel `co` at `ld * co + lead`. The direct input gradient reads each channel after
/// `max_shift` zeros and followed by zeros to a whole phase plane, so with it the gradient is
/// written that way once and every product reads it in place; otherwise channels are packed.
#[derive(Clone, Copy, Debug)]
pub(super) struct GradLayout {
    pub ld: usize,
    pub lead: usize,
}

impl GradLayout {
    pub(super) fn new(g: &ConvGeom, lead_padded: bool) -> Self {
        if lead_padded {
            GradLayout {
                ld: lead_padded_len(g),
                lead: max_shift(g),
            }
        } else {
            GradLayout {
                ld: wide_len(g),
                lead: 0,
            }
        }
    }

    /// Values of one image's gradient in this layout.
    pub(super) fn len(&self, g: &ConvGeom) -> usize {
        g.c_out * self.ld
    }
}

/// The wide output gradient (laid out as `at` says, zeros around each channel) from one image's
/// output gradient `dy [C_out, H_out, W_out]`, with zeros in the thrown-away columns so they
/// contribute nothing. With `relu_out` (the forward output of a fused ReLU) the gradient is also
/// zeroed where the output was clamped.
pub(super) fn widen_gradient(
    dy: &[f32],
    relu_out: Option<&[f32]>,
    g: &ConvGeom,
    dyl: &mut [f32],
    at: GradLayout,
) {
    let (wq, wide, ol) = (wq(g), wide_len(g), g.h_out * g.w_out);
    let relu_out = relu_out.map(|r| r.chunks_exact(ol));
    let mut relu_out = relu_out.into_iter().flatten();
    for (block, dyc) in dyl.chunks_exact_mut(at.ld).zip(dy.chunks_exact(ol)) {
        block[..at.lead].fill(0.0);
        block[at.lead + wide..].fill(0.0);
        let rows = block[at.lead..at.lead + wide].chunks_exact_mut(wq);
        match relu_out.next() {
            Some(outc) => {
                for ((dst, src), out) in rows
                    .zip(dyc.chunks_exact(g.w_out))
                    .zip(outc.chunks_exact(g.w_out))
                {
                    for ((d, s), o) in dst.iter_mut().zip(src).zip(out) {
                        *d = if *o > 0.0 { *s } else { 0.0 };
                    }
                    dst[g.w_out..].fill(0.0);
                }
            }
            None => {
                for (dst, src) in rows.zip(dyc.chunks_exact(g.w_out)) {
                    dst[..g.w_out].copy_from_slice(src);
                    dst[g.w_out..].fill(0.0);
                }
            }
        }
    }
}

/// Weight gradient of one image, written (or added, with `accumulate`) into `dw [C_out, C_in,
/// kh, kw]`. Overwrites the scratch `xq`.
pub(super) fn weight_grad_image(
    x: &[f32],
    (dywide, ld): (&[f32], usize),
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
            Mat::rm(dywide, ld),
            rhs,
            accumulate,
            par,
        );
    }
}

/// Input gradient of one image into `dx [C_in, H, W]`. Scratch `dxq` holds `padded_len` values.
pub(super) fn input_grad_image(
    w: &[f32],
    (dywide, ld): (&[f32], usize),
    g: &ConvGeom,
    dxq: &mut [f32],
    dx: &mut [f32],
    par: Parallelism,
) {
    let (plane, wide) = (plane_len(g), wide_len(g));
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
            Mat::rm(dywide, ld),
            true,
            par,
        );
    }
    image_from_planes(dxq, g, dx);
}

/// The input gradient `dx [C_in, H, W]` from its padded phase planes `dxq` (only the planes'
/// image pixels are read): each image pixel lives in exactly one phase; pixels of phases no tap
/// reads get zero.
fn image_from_planes(dxq: &[f32], g: &ConvGeom, dx: &mut [f32]) {
    let (plane, wq, s, hw) = (plane_len(g), wq(g), g.stride, g.h * g.w);
    if s == 1 {
        for (dc, pc) in dx.chunks_exact_mut(hw).zip(dxq.chunks_exact(plane)) {
            for (y, row) in dc.chunks_exact_mut(g.w).enumerate() {
                let start = (y + g.pad) * wq + g.pad;
                row.copy_from_slice(&pc[start..start + g.w]);
            }
        }
        return;
    }
    // Image row `y` lies in phase row `a`; phase column `b` holds every `s`-th pixel of it.
    let columns: Vec<(usize, usize)> = (0..s).map(|b| inside(g.w, wq, s, b, g.pad)).collect();
    for (ci, dc) in dx.chunks_exact_mut(hw).enumerate() {
        for (y, row) in dc.chunks_exact_mut(g.w).enumerate() {
            let (a, r) = ((y + g.pad) % s, (y + g.pad) / s);
            for (b, &(c_lo, c_hi)) in columns.iter().enumerate() {
                if c_lo == c_hi {
                    continue;
                }
                let dst = &mut row[c_lo * s + b - g.pad..];
                if phase_used(g, a, b) {
                    let start = ((a * s + b) * g.c_in + ci) * plane + r * wq;
                    scatter_strided(&dxq[start + c_lo..start + c_hi], s, dst);
                } else {
                    dst.iter_mut()
                        .step_by(s)
                        .take(c_hi - c_lo)
                        .for_each(|o| *o = 0.0);
                }
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
    direct::shifted_sum(
        &weights,
        xq,
        plane_len(g),
        &offs,
        dst,
        dims,
        Depth::Channels,
    );
}

/// The largest in-plane shift of any tap.
fn max_shift(g: &ConvGeom) -> usize {
    ((g.kh - 1) / g.stride) * wq(g) + (g.kw - 1) / g.stride
}

/// Per-channel length of the lead-padded output gradient: `max_shift` zeros, the wide output
/// gradient, and zeros to the length of a whole phase plane after the lead.
fn lead_padded_len(g: &ConvGeom) -> usize {
    max_shift(g) + hq(g) * wq(g)
}

/// One phase plane of the input gradient: the plane rows that hold image pixels, and its taps
/// with where each reads the lead-padded output gradient.
struct PhaseReads {
    phase: usize,
    rows: (usize, usize),
    taps: Vec<usize>,
    offs: Vec<usize>,
}

/// The phases some tap reads and that hold image pixels.
fn input_grad_phases(g: &ConvGeom) -> Vec<PhaseReads> {
    let (s, lead, wq) = (g.stride, max_shift(g), wq(g));
    (0..s * s)
        .filter_map(|phase| {
            let rows = inside(g.h, hq(g), s, phase / s, g.pad);
            let taps: Vec<usize> = (0..g.kh * g.kw)
                .filter(|&t| tap_phase_shift(g, t).0 == phase)
                .collect();
            let offs = taps
                .iter()
                .map(|&t| lead - tap_phase_shift(g, t).1 + rows.0 * wq)
                .collect();
            (!taps.is_empty() && rows.0 < rows.1).then_some(PhaseReads {
                phase,
                rows,
                taps,
                offs,
            })
        })
        .collect()
}

/// Input gradient of one image through the direct kernel, any stride and padding. The forward
/// pass added `W_t · dY` read at `q + shift_t` of tap `t`'s phase plane, so the gradient of phase
/// plane position `q` is `Σ_t W_tᵀ · dY[q - shift_t]` over the taps of that phase: a shifted sum
/// over the wide output gradient `dyl`, laid out lead-padded (`GradLayout::new(g, true)`: zeros
/// in its thrown-away columns catch the reads that wrap to the previous row). Only the plane rows
/// that hold image pixels are computed. Scratch: `dxq` holds `padded_len` values.
pub(super) fn input_grad_image_direct(
    w: &[f32],
    dyl: &[f32],
    g: &ConvGeom,
    dxq: &mut [f32],
    dx: &mut [f32],
) {
    let (len, wq, plane) = (lead_padded_len(g), wq(g), plane_len(g));
    debug_assert_eq!(dyl.len(), g.c_out * len, "lead-padded gradient");
    let taps = g.kh * g.kw;
    for PhaseReads {
        phase,
        rows: (r_lo, r_hi),
        taps: phase_taps,
        offs,
    } in input_grad_phases(g)
    {
        // Output row `ci`, tap `t`, depth `co` reads `w[co, ci, t]`.
        let weights = direct::Weights {
            data: w,
            rs: taps,
            ks: g.k(),
            taps: &phase_taps,
        };
        let dst = direct::Dst {
            data: &mut dxq[phase * g.c_in * plane + r_lo * wq..],
            ld: plane,
            accumulate: false,
        };
        let dims = (g.c_in, g.c_out, (r_hi - r_lo) * wq);
        direct::shifted_sum(&weights, dyl, len, &offs, dst, dims, Depth::Channels);
    }
    image_from_planes(dxq, g, dx);
}

/// `xt [plane, C]` from `xq [C, plane]`.
fn transpose(xq: &[f32], c: usize, plane: usize, xt: &mut [f32]) {
    transpose_into(xq, (c, plane), plane, xt, c);
}

/// `dst[p * dst_ld + ch] = src[ch * src_ld + p]` for `ch < rows`, `p < cols`: 8 x 8 blocks
/// through AVX registers where the CPU has them, the edges (and every block elsewhere) one value
/// at a time.
fn transpose_into(
    src: &[f32],
    (rows, cols): (usize, usize),
    src_ld: usize,
    dst: &mut [f32],
    dst_ld: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        cols <= src_ld
            && rows <= dst_ld
            && src.len() >= (rows - 1) * src_ld + cols
            && dst.len() >= (cols - 1) * dst_ld + rows,
        "transpose: buffers too short"
    );
    let (mut r8, mut c8) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
        // SAFETY: AVX is present; the blocks read `src[ch * src_ld + p]` and write
        // `dst[p * dst_ld + ch]` for `ch < r8 <= rows`, `p < c8 <= cols`: inside both buffers
        // (asserted above).
        unsafe { avx::transpose_blocks(src, src_ld, dst, dst_ld, (r8, c8)) };
    }
    let scalar = |dst: &mut [f32], chs: std::ops::Range<usize>, ps: std::ops::Range<usize>| {
        for ch in chs {
            for p in ps.clone() {
                dst[p * dst_ld + ch] = src[ch * src_ld + p];
            }
        }
    };
    // The blocks cover rows `..r8` at columns `..c8`.
    scalar(dst, 0..r8, c8..cols);
    scalar(dst, r8..rows, 0..cols);
}

/// `xt [plane, C_in]` of a stride-1 convolution straight from the image `x [C_in, H, W]`: what
/// `pad_image` and `transpose` give, without writing and rereading the padded planes.
fn pad_transposed(x: &[f32], g: &ConvGeom, xt: &mut [f32]) {
    debug_assert_eq!(g.stride, 1, "one phase plane");
    let (c, wq, hw, pad) = (g.c_in, wq(g), g.h * g.w, g.pad);
    let xt = &mut xt[..plane_len(g) * c];
    // Zero rows above and below the image, and the slack.
    xt[..pad * wq * c].fill(0.0);
    xt[(pad + g.h) * wq * c..].fill(0.0);
    for y in 0..g.h {
        let row = &mut xt[(y + pad) * wq * c..(y + pad + 1) * wq * c];
        row[..pad * c].fill(0.0);
        row[(pad + g.w) * c..].fill(0.0);
        transpose_into(&x[y * g.w..], (c, g.w), hw, &mut row[pad * c..], c);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// The 8 x 8 blocks of `transpose_into` over rows `..r8` and columns `..c8` (multiples of 8).
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_blocks(
        src: &[f32],
        src_ld: usize,
        dst: &mut [f32],
        dst_ld: usize,
        (r8, c8): (usize, usize),
    ) {
        let (src, dst) = (src.as_ptr(), dst.as_mut_ptr());
        for r0 in (0..r8).step_by(8) {
            for p0 in (0..c8).step_by(8) {
                let r: [__m256; 8] =
                    std::array::from_fn(|i| _mm256_loadu_ps(src.add((r0 + i) * src_ld + p0)));
                // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped.
                let t: [__m256; 8] = std::array::from_fn(|i| {
                    let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                    if i % 2 == 0 {
                        _mm256_unpacklo_ps(a, b)
                    } else {
                        _mm256_unpackhi_ps(a, b)
                    }
                });
                let s: [__m256; 8] = std::array::from_fn(|i| {
                    let base = i / 4 * 4;
                    let (a, b) = (t[base + (i % 4) / 2], t[base + 2 + (i % 4) / 2]);
                    if i % 2 == 0 {
                        _mm256_shuffle_ps::<0x44>(a, b)
                    } else {
                        _mm256_shuffle_ps::<0xEE>(a, b)
                    }
                });
                for j in 0..8 {
                    let (a, b) = (s[j % 4], s[4 + j % 4]);
                    let v = if j < 4 {
                        _mm256_permute2f128_ps::<0x20>(a, b)
                    } else {
                        _mm256_permute2f128_ps::<0x31>(a, b)
                    };
                    _mm256_storeu_ps(dst.add((p0 + j) * dst_ld + r0), v);
                }
            }
        }
    }
}

/// The padded phase planes of one image, transposed: `xt [phase, plane, C_in]` (phases no tap
/// reads are left alone). Stride 1 writes them straight from the image; otherwise `xq` holds the
/// planes on the way.
fn transposed_planes(x: &[f32], g: &ConvGeom, (xq, xt): (&mut [f32], &mut [f32])) {
    let plane = plane_len(g);
    if g.stride == 1 {
        pad_transposed(x, g, xt);
    } else {
        pad_image(x, g, xq);
        let phases = xq
            .chunks_exact(g.c_in * plane)
            .zip(xt.chunks_exact_mut(g.c_in * plane));
        for (ph, (src, dst)) in phases.enumerate() {
            if phase_used(g, ph / g.stride, ph % g.stride) {
                transpose(src, g.c_in, plane, dst);
            }
        }
    }
}

/// Weight gradient of one image through the direct kernel, written (or added, with
/// `accumulate`) tap-major into `dwt [kh * kw, C_out, C_in]`: tap `t` is `dY · shifted(X)ᵀ`, a
/// product whose depth is the wide output's columns, read from the transposed phase planes so
/// that the kernel's vectors run along `C_in`. Scratch: `xq` and `xt` hold `padded_len` values.
pub(super) fn weight_grad_image_direct(
    x: &[f32],
    (dywide, ld): (&[f32], usize),
    g: &ConvGeom,
    (xq, xt): (&mut [f32], &mut [f32]),
    dwt: &mut [f32],
    accumulate: bool,
) {
    transposed_planes(x, g, (xq, xt));
    let (plane, wide) = (plane_len(g), wide_len(g));
    let weights = direct::Weights {
        data: dywide,
        rs: ld,
        ks: 1,
        taps: &[0],
    };
    let per_tap = g.c_out * g.c_in;
    for (t, dst) in dwt.chunks_exact_mut(per_tap).enumerate() {
        let (phase, shift) = tap_phase_shift(g, t);
        let offs = [(phase * plane + shift) * g.c_in];
        let dst = direct::Dst {
            data: dst,
            ld: g.c_in,
            accumulate,
        };
        let dims = (g.c_out, wide, g.c_in);
        direct::shifted_sum(&weights, xt, g.c_in, &offs, dst, dims, Depth::Pixels);
    }
}

/// The phase planes of one image `x` as the bf16 packers read them: for stride 1 the image
/// itself, read zero-padded (the padded copy would be one more pass over it); otherwise the
/// phases written to `xq` by `pad_image`.
fn image_planes<'a>(x: &'a [f32], g: &ConvGeom, xq: &'a mut [f32]) -> Vec<amx::Planes<'a>> {
    let plane = plane_len(g);
    if g.stride == 1 {
        return vec![amx::Planes::padded_image(
            x,
            g.c_in,
            (g.h, g.w),
            g.pad,
            plane,
        )];
    }
    pad_image(x, g, xq);
    amx::Planes::stored(xq, plane, (g.c_in, plane), g.stride * g.stride)
}

/// The weights `w [C_out, C_in, kh, kw]` packed for `forward_image_bf16` (depth `C_in`, columns
/// `C_out`, per tap); once per call, shared by every image.
pub(super) fn forward_weights_bf16(w: &[f32], g: &ConvGeom) -> amx::Packed {
    amx::pack_weights(w, (g.c_out, g.c_in, g.kh * g.kw), true)
}

/// The weights packed for `input_grad_image_bf16`: depth `C_out`, columns `C_in`, per tap.
pub(super) fn input_grad_weights_bf16(w: &[f32], g: &ConvGeom) -> amx::Packed {
    amx::pack_weights(w, (g.c_out, g.c_in, g.kh * g.kw), false)
}

/// `forward_image_direct` with bf16 products on AMX tiles: the padded phase planes channels last
/// (row = position), each tap a shift by whole rows; the wide output comes out transposed.
pub(super) fn forward_image_bf16(
    x: &[f32],
    w: &amx::Packed,
    g: &ConvGeom,
    xq: &mut [f32],
    ywide: &mut [f32],
) {
    let (plane, wide, taps) = (plane_len(g), wide_len(g), g.kh * g.kw);
    let planes = image_planes(x, g, xq);
    let offs: Vec<usize> = (0..taps)
        .map(|t| {
            let (phase, shift) = tap_phase_shift(g, t);
            phase * plane + shift
        })
        .collect();
    let rows = offs.iter().max().copied().unwrap_or(0) + amx::blocks(wide);
    let act = amx::pack_channels_last(&planes, g.c_in, rows);
    let depth = act.row();
    let reads: Vec<amx::Read> = offs
        .iter()
        .enumerate()
        .map(|(t, &off)| amx::Read {
            a: off * act.row(),
            b: t * depth * w.row(),
        })
        .collect();
    let dst = direct::Dst {
        data: ywide,
        ld: wide,
        accumulate: false,
    };
    amx::tile_sum((&act, w), &reads, depth, dst, (wide, g.c_out), true);
}

/// `input_grad_image_direct` with bf16 products on AMX tiles; `w` from `input_grad_weights_bf16`.
/// The lead-padded output gradient is turned channels last, and each phase plane's rows come out
/// transposed.
pub(super) fn input_grad_image_bf16(
    w: &amx::Packed,
    dyl: &[f32],
    g: &ConvGeom,
    dxq: &mut [f32],
    dx: &mut [f32],
) {
    let (len, wq, plane) = (lead_padded_len(g), wq(g), plane_len(g));
    debug_assert_eq!(dyl.len(), g.c_out * len, "lead-padded gradient");
    let phases = input_grad_phases(g);
    // Gradient rows any tile reads: the farthest offset plus a phase's rows in whole blocks.
    let rows = phases
        .iter()
        .flat_map(|p| {
            let span = amx::blocks((p.rows.1 - p.rows.0) * wq);
            p.offs.iter().map(move |&off| off + span)
        })
        .max()
        .unwrap_or(0);
    let act = amx::pack_channels_last(
        &amx::Planes::stored(dyl, len, (g.c_out, len), 1),
        g.c_out,
        rows,
    );
    let depth = act.row();
    for p in phases {
        let reads: Vec<amx::Read> = p
            .taps
            .iter()
            .zip(&p.offs)
            .map(|(&t, &off)| amx::Read {
                a: off * act.row(),
                b: t * depth * w.row(),
            })
            .collect();
        let (r_lo, r_hi) = p.rows;
        let dst = direct::Dst {
            data: &mut dxq[p.phase * g.c_in * plane + r_lo * wq..],
            ld: plane,
            accumulate: false,
        };
        let dims = ((r_hi - r_lo) * wq, g.c_in);
        amx::tile_sum((&act, w), &reads, depth, dst, dims, true);
    }
    image_from_planes(dxq, g, dx);
}

/// `weight_grad_image_direct` with bf16 products on AMX tiles: the wide output gradient as the
/// first operand (depth along its pixels), the padded phase planes as the second, packed by pairs
/// of positions once per parity; tap `t` reads the copy of its shift's parity.
pub(super) fn weight_grad_image_bf16(
    x: &[f32],
    (dywide, ld): (&[f32], usize),
    g: &ConvGeom,
    xq: &mut [f32],
    dwt: &mut [f32],
    accumulate: bool,
) {
    let (wide, taps) = (wide_len(g), g.kh * g.kw);
    let planes = image_planes(x, g, xq);
    let dy = amx::pack_rows(dywide, ld, g.c_out, wide);
    let depth = dy.row();
    let pairs = depth + max_shift(g) / 2 + 1;
    let copies = [0, 1].map(|parity| {
        let shifts = (0..taps).map(|t| tap_phase_shift(g, t).1);
        let used = shifts.clone().any(|sh| sh % 2 == parity);
        used.then(|| amx::pack_position_pairs(&planes, g.c_in, parity, pairs))
    });
    let per_tap = g.c_out * g.c_in;
    for (t, dst) in dwt.chunks_exact_mut(per_tap).enumerate() {
        let (phase, shift) = tap_phase_shift(g, t);
        let b = copies[shift % 2]
            .as_ref()
            .expect("packed for every used parity");
        let read = amx::Read {
            a: 0,
            b: (phase * pairs + shift / 2) * b.row(),
        };
        let dst = direct::Dst {
            data: dst,
            ld: g.c_in,
            accumulate,
        };
        amx::tile_sum((&dy, b), &[read], depth, dst, (g.c_out, g.c_in), false);
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
    fn strided_gather_and_scatter_match_the_plain_loops() {
        for s in 1..=3 {
            for n in 0..40 {
                let src: Vec<f32> = (0..n * s + 2).map(|i| i as f32 + 0.5).collect();
                let mut got = vec![f32::NAN; n];
                gather_strided(&src, s, &mut got);
                let want: Vec<f32> = (0..n).map(|i| src[i * s]).collect();
                assert_eq!(got, want, "gather s{s} n{n}");
                let mut spread = vec![-1.0; n * s + 2];
                scatter_strided(&want, s, &mut spread);
                let mut expect = vec![-1.0; n * s + 2];
                for (i, v) in want.iter().enumerate() {
                    expect[i * s] = *v;
                }
                assert_eq!(spread, expect, "scatter s{s} n{n}");
            }
        }
    }

    #[test]
    fn transpose_matches_the_plain_loop() {
        for (c, plane) in [(8, 8), (16, 40), (13, 21), (3, 5), (64, 102), (9, 17)] {
            let xq: Vec<f32> = (0..c * plane).map(|i| i as f32).collect();
            let mut xt = vec![f32::NAN; c * plane];
            transpose(&xq, c, plane, &mut xt);
            for ch in 0..c {
                for p in 0..plane {
                    assert_eq!(xt[p * c + ch], xq[ch * plane + p], "c{c} plane{plane}");
                }
            }
        }
    }

    #[test]
    fn pad_transposed_matches_padding_then_transposing() {
        // Widths and channel counts on and off the 8 x 8 blocks; paddings 0-2; 1x1 and 3x3 taps.
        for (c, h, w, k, pad) in [
            (8, 8, 8, 3, 1),
            (16, 5, 16, 3, 1),
            (13, 7, 9, 3, 1),
            (24, 4, 20, 3, 2),
            (9, 3, 8, 1, 0),
            (64, 8, 8, 3, 1),
        ] {
            let g = ConvGeom::new(&[1, c, h, w], &[4, c, k, k], 1, pad).unwrap();
            let x: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 0.25).collect();
            let mut xq = vec![f32::NAN; padded_len(&g)];
            pad_image(&x, &g, &mut xq);
            let mut want = vec![f32::NAN; padded_len(&g)];
            transpose(&xq, c, plane_len(&g), &mut want);
            let mut got = vec![f32::NAN; padded_len(&g)];
            pad_transposed(&x, &g, &mut got);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "c{c} h{h} w{w} k{k} pad{pad}");
        }
    }

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
