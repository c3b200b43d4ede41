//! Convolution on the CPU in f32 through im2col and the `gemm` crate, with its own backward.
//!
//! candle's CPU backward computes the input gradient with a direct-loop `conv_transpose2d` at
//! ~18 GFLOP/s, which made convolution backward most of a training step. Here every pass is one
//! matrix product per image: forward `Y_n = W · col(X_n)`, weight gradient `dW += dY_n · col(X_n)ᵀ`,
//! input gradient `dX_n = col⁻¹(Wᵀ · dY_n)` (col2im). Images are split into one contiguous chunk per
//! rayon thread and each product runs single-threaded inside its chunk: `gemm` only splits products
//! far larger than one image's, so leaving parallelism to it would keep one core idle. The im2col
//! buffer, the masked output gradient and the partial weight gradient live in per-thread scratch
//! that is reused from call to call, so steady-state training allocates only the outputs. Two
//! schemes replace the im2col product where they pay: `shifted` (no im2col matrix, on maps 8
//! wide and more) and `grouped` (one product over several images, on maps under 8x8). On CPUs with
//! AVX-512, `direct` runs the shifted scheme's forward products, the weight gradient of stride-1
//! convolutions and the input gradient of stride-1 "same" ones as one register-tiled kernel
//! instead of a `gemm` call per tap.
//!
//! Shapes: `x [N, C_in, H, W]`, `w [C_out, C_in, kh, kw]`, `b [C_out]`, `y [N, C_out, H_out, W_out]`,
//! all contiguous NCHW.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor,
    TensorId,
};
use gemm::Parallelism;
use rayon::prelude::*;
use shared_weights::{prepared, Prepared};

mod amx;
mod direct;
mod grouped;
mod shared_weights;
mod shifted;
mod winograd;

pub use amx::{hold_products, ProductsGuard};
pub use direct::set_switched_off as use_gemm_for_shifted_convs;
pub use shared_weights::within_pass as share_weight_preparations;
pub use winograd::set_switched_off as skip_winograd_convs;

/// The geometry of one convolution; everything else is derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub h_out: usize,
    pub w_out: usize,
}

impl ConvGeom {
    /// `x_dims = [N, C_in, H, W]`, `w_dims = [C_out, C_in, kh, kw]`.
    pub fn new(x_dims: &[usize], w_dims: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c_in, h, w], &[c_out, wc_in, kh, kw]) = (x_dims, w_dims) else {
            bail!("conv2d: expected 4-d input and weight, got {x_dims:?} and {w_dims:?}")
        };
        if wc_in != c_in {
            bail!("conv2d: input has {c_in} channels but the weight expects {wc_in}");
        }
        if stride == 0 {
            bail!("conv2d: stride must be at least 1");
        }
        if kh == 0 || kw == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv2d: kernel {kh}x{kw} does not fit input {h}x{w} with padding {pad}");
        }
        Ok(Self {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad,
            h_out: (h + 2 * pad - kh) / stride + 1,
            w_out: (w + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the im2col matrix: `C_in * kh * kw`.
    pub fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output pixels per image: `H_out * W_out`.
    pub fn p(&self) -> usize {
        self.h_out * self.w_out
    }

    /// Values per input image: `C_in * H * W`.
    pub fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Values per output image: `C_out * H_out * W_out`.
    pub fn out_len(&self) -> usize {
        self.c_out * self.p()
    }

    /// A 1x1 stride-1 unpadded convolution reads the image itself as its im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    pub fn out_dims(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c_out, self.h_out, self.w_out)
    }

    /// Multiply-adds of one forward pass (each backward product costs the same).
    pub fn macs(&self) -> usize {
        self.n * self.c_out * self.k() * self.p()
    }
}

/// Where each im2col entry comes from: for kernel tap `(ki, kj)` and output pixel `q`, the offset
/// of its input pixel inside one channel plane, or `PADDING` (out of range of any plane) where it
/// falls in the zero padding. Built once per convolution call and shared by every image and
/// channel, so the copy is one tight gather; per-row copies cost more than the data on the small
/// maps of the upper pyramid levels, where rows are 1-4 pixels long.
struct TapTable {
    offsets: Vec<u32>,
}

const PADDING: u32 = u32::MAX;

impl TapTable {
    fn new(g: &ConvGeom) -> Self {
        let mut offsets = Vec::with_capacity(g.kh * g.kw * g.p());
        let inside = |i: usize, pad: usize, len: usize| i.checked_sub(pad).filter(|&v| v < len);
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                for oy in 0..g.h_out {
                    let iy = inside(oy * g.stride + ki, g.pad, g.h);
                    for ox in 0..g.w_out {
                        let ix = inside(ox * g.stride + kj, g.pad, g.w);
                        offsets.push(match (iy, ix) {
                            (Some(iy), Some(ix)) => (iy * g.w + ix) as u32,
                            _ => PADDING,
                        });
                    }
                }
            }
        }
        Self { offsets }
    }

    /// `col [K, P]` from one image `x [C_in, H, W]`, row `r` at `col[r * ld..]`; padding becomes
    /// zeros.
    fn im2col(&self, x: &[f32], g: &ConvGeom, col: &mut [f32], ld: usize) {
        let (p, hw) = (g.p(), g.h * g.w);
        for r in 0..g.k() {
            let (c, tap) = (r / (g.kh * g.kw), r % (g.kh * g.kw));
            let xc = &x[c * hw..(c + 1) * hw];
            let row = &mut col[r * ld..r * ld + p];
            for (o, &off) in row.iter_mut().zip(&self.offsets[tap * p..(tap + 1) * p]) {
                *o = xc.get(off as usize).copied().unwrap_or(0.0);
            }
        }
    }

    /// Scatter-adds `col [K, P]` (row `r` at `col[r * ld..]`) back into one image
    /// `dx [C_in, H, W]` (which the caller zeroed).
    fn col2im(&self, col: &[f32], g: &ConvGeom, dx: &mut [f32], ld: usize) {
        let (p, hw) = (g.p(), g.h * g.w);
        for r in 0..g.k() {
            let (c, tap) = (r / (g.kh * g.kw), r % (g.kh * g.kw));
            let dxc = &mut dx[c * hw..(c + 1) * hw];
            let row = &col[r * ld..r * ld + p];
            for (v, &off) in row.iter().zip(&self.offsets[tap * p..(tap + 1) * p]) {
                if let Some(d) = dxc.get_mut(off as usize) {
                    *d += *v;
                }
            }
        }
    }
}

/// The gather table of a convolution that goes through an im2col matrix: not on the
/// shifted-plane path, and not pointwise unless its images are grouped (`group > 1`).
fn image_table(g: &ConvGeom, group: usize) -> Option<TapTable> {
    (group > 1 || !g.is_pointwise() && !shifted::applies(g)).then(|| TapTable::new(g))
}

/// The im2col matrix of one image (written into `col`), or the image itself for a pointwise
/// convolution (which has no table).
fn image_cols<'a>(
    table: Option<&TapTable>,
    xn: &'a [f32],
    g: &ConvGeom,
    col: &'a mut [f32],
) -> &'a [f32] {
    match table {
        Some(t) => {
            t.im2col(xn, g, col, g.p());
            col
        }
        None => xn,
    }
}

/// Adds the sum of each `cols`-long row of `m` to `acc` (one entry per row), in f64.
fn add_row_sums(acc: &mut [f64], (m, ld): (&[f32], usize), cols: usize) {
    for (a, row) in acc.iter_mut().zip(m.chunks(ld).map(|r| &r[..cols])) {
        // Eight independent partial sums, so that the compiler can keep them in one vector.
        let mut lanes = [0f64; 8];
        let mut chunks = row.chunks_exact(8);
        for chunk in &mut chunks {
            for (l, &v) in lanes.iter_mut().zip(chunk) {
                *l += v as f64;
            }
        }
        let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
        *a += lanes.iter().sum::<f64>() + tail;
    }
}

/// A read-only matrix view for `gemm`: element `(i, j)` is at `ptr[i*rs + j*cs]`, inside `len`
/// values (checked against the product's extents before `gemm` reads).
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    len: usize,
    rs: usize,
    cs: usize,
}

impl Mat {
    /// The view of `s` with row stride `rs` and column stride `cs`.
    fn strided(s: &[f32], rs: usize, cs: usize) -> Self {
        Self {
            ptr: s.as_ptr(),
            len: s.len(),
            rs,
            cs,
        }
    }

    /// Row-major `[rows, cols]`.
    fn rm(s: &[f32], cols: usize) -> Self {
        Self::strided(s, cols, 1)
    }

    /// The transpose of a row-major matrix with `cols` columns.
    fn tr(s: &[f32], cols: usize) -> Self {
        Self::strided(s, 1, cols)
    }
}

/// A writable matrix view: element `(i, j)` is at `ptr[i*rs + j*cs]`, inside `len` values.
struct MatMut {
    ptr: *mut f32,
    len: usize,
    rs: usize,
    cs: usize,
}

impl MatMut {
    /// The view of `s` with row stride `rs` and column stride `cs`.
    fn strided(s: &mut [f32], rs: usize, cs: usize) -> Self {
        Self {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            rs,
            cs,
        }
    }

    /// Row-major `[rows, cols]`.
    fn rm(s: &mut [f32], cols: usize) -> Self {
        Self::strided(s, cols, 1)
    }
}

/// Whether a `[rows, cols]` view with strides `(rs, cs)` stays inside `len` values.
fn fits(len: usize, (rows, cols): (usize, usize), (rs, cs): (usize, usize)) -> bool {
    let last = (rows - 1)
        .checked_mul(rs)
        .zip((cols - 1).checked_mul(cs))
        .and_then(|(a, b)| a.checked_add(b));
    last.is_some_and(|l| l < len)
}

/// `dst [m, n] = lhs [m, k] · rhs [k, n]`, added to `dst` when `accumulate`.
fn matmul_into(
    dst: MatMut,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        fits(dst.len, (m, n), (dst.rs, dst.cs))
            && (k == 0
                || fits(lhs.len, (m, k), (lhs.rs, lhs.cs))
                    && fits(rhs.len, (k, n), (rhs.rs, rhs.cs))),
        "gemm view outside its slice: {m}x{n}x{k}"
    );
    let s = |v: usize| v as isize;
    // SAFETY: each view's last element lies inside the slice it was made from (checked above),
    // those slices outlive this call, and `dst` views an exclusively borrowed slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            s(dst.cs),
            s(dst.rs),
            accumulate,
            lhs.ptr,
            s(lhs.cs),
            s(lhs.rs),
            rhs.ptr,
            s(rhs.cs),
            s(rhs.rs),
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `dst [m, n] (row-major) = lhs [m, k] · rhs [k, n]`, added to `dst` when `accumulate`.
fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: Parallelism,
) {
    matmul_into(MatMut::rm(dst, n), (m, n, k), lhs, rhs, accumulate, par)
}

thread_local! {
    /// Per-thread scratch: [im2col matrix or padded image, masked or widened output gradient].
    static SCRATCH: RefCell<[Vec<f32>; 2]> = RefCell::new(Default::default());
}

/// Runs `f` with this thread's scratch buffers grown to the given lengths. The contents are
/// stale; callers overwrite before reading.
fn with_scratch<R>(lens: [usize; 2], f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    // Taken out of the cell rather than borrowed, so a re-entrant call (rayon may run another
    // task on this thread while one waits) allocates instead of panicking.
    let mut bufs = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    for (b, &len) in bufs.iter_mut().zip(&lens) {
        if b.len() < len {
            b.resize(len, 0.0);
        }
    }
    let [a, b] = &mut bufs;
    let r = f(&mut a[..lens[0]], &mut b[..lens[1]]);
    SCRATCH.with(|s| *s.borrow_mut() = bufs);
    r
}

/// Images per rayon task and the parallelism left to `gemm` inside each task.
fn plan(n: usize) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    if n >= threads {
        (n.div_ceil(threads), Parallelism::None)
    } else {
        // Fewer images than threads (batch 1): one task, and gemm may split its products.
        (n.max(1), Parallelism::Rayon(threads))
    }
}

/// Forward pass: `y = conv(x, w) + b`, then ReLU when `relu`. Returns `y [N, C_out, H_out, W_out]`.
pub fn forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Result<Vec<f32>> {
    forward_of(x, (w, None), b, g, relu)
}

/// `forward` with the weights' tensor id, under which their preparation (Winograd transform, bf16
/// packing) is shared by the calls of one pass (`share_weight_preparations`).
pub(crate) fn forward_of(
    x: &[f32],
    (w, w_id): (&[f32], Option<TensorId>),
    b: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Result<Vec<f32>> {
    check_lens(x, w, b, g)?;
    let (k, p) = (g.k(), g.p());
    let mut y = vec![0f32; g.n * g.out_len()];
    if y.is_empty() {
        return Ok(y);
    }
    let (per, par) = plan(g.n);
    let bias_act = |v: f32, co: usize| {
        let v = v + b.map_or(0.0, |b| b[co]);
        if relu {
            v.max(0.0)
        } else {
            v
        }
    };
    if winograd::applies(g) {
        let per = winograd::task_images(g, per);
        let u = prepared(w_id, Prepared::Winograd, || {
            winograd::transform_weights(w, g)
        });
        let lens = winograd::scratch_lens(g, per);
        y.par_chunks_mut(per * g.out_len())
            .enumerate()
            .for_each(|(t, ys)| {
                let x0 = t * per * g.in_len();
                let xs = &x[x0..x0 + ys.len() / g.out_len() * g.in_len()];
                with_scratch(lens, |v, m| {
                    winograd::forward_task(xs, &u, g, ys, (v, m), par, b, relu)
                })
            });
        return Ok(y);
    }
    let group = grouped::group_len(g, per);
    let table = image_table(g, group);
    // Chosen here, on the calling thread, once: the tasks may run on other threads, where a
    // test's per-thread bf16 switch (`amx::with_bf16`) is off.
    let use_shifted = shifted::applies(g);
    let direct = use_shifted && direct::enabled();
    let bf16 = (use_shifted && amx::enabled()).then(|| {
        prepared(w_id, Prepared::Bf16Forward, || {
            shifted::forward_weights_bf16(w, g)
        })
    });
    let lens = if use_shifted {
        [shifted::padded_len(g), g.c_out * shifted::wide_len(g)]
    } else if group > 1 {
        grouped::scratch_lens(g, group)
    } else if g.is_pointwise() {
        [0; 2]
    } else {
        [k * p, 0]
    };
    y.par_chunks_mut(per * g.out_len())
        .enumerate()
        .for_each(|(t, ys)| {
            with_scratch(lens, |col, wide| {
                if group > 1 {
                    let t0 = t * per * g.in_len();
                    let xs = &x[t0..t0 + ys.len() / g.out_len() * g.in_len()];
                    let table = table.as_ref().expect("grouped convolutions have a table");
                    let groups = xs.chunks(group * g.in_len());
                    for (xg, yg) in groups.zip(ys.chunks_mut(group * g.out_len())) {
                        grouped::forward_group(table, xg, w, g, col, wide, yg, par, bias_act);
                    }
                    return;
                }
                for (i, yn) in ys.chunks_mut(g.out_len()).enumerate() {
                    let img = t * per + i;
                    let xn = &x[img * g.in_len()..(img + 1) * g.in_len()];
                    if use_shifted {
                        if let Some(w) = &bf16 {
                            shifted::forward_image_bf16(xn, w, g, col, wide);
                        } else if direct {
                            shifted::forward_image_direct(xn, w, g, col, wide);
                        } else {
                            shifted::forward_image(xn, w, g, col, wide, par);
                        }
                        // Bias and ReLU while copying out the valid columns.
                        let rows = yn.chunks_exact_mut(g.w_out);
                        for (r, (dst, src)) in rows.zip(shifted::valid_rows(wide, g)).enumerate() {
                            let co = r / g.h_out;
                            dst.iter_mut()
                                .zip(src)
                                .for_each(|(d, s)| *d = bias_act(*s, co));
                        }
                        continue;
                    }
                    let cols = image_cols(table.as_ref(), xn, g, col);
                    matmul(
                        yn,
                        (g.c_out, p, k),
                        Mat::rm(w, k),
                        Mat::rm(cols, p),
                        false,
                        par,
                    );
                    // Bias and ReLU while this image's output is still in cache.
                    if relu || b.is_some() {
                        for (co, row) in yn.chunks_mut(p).enumerate() {
                            row.iter_mut().for_each(|v| *v = bias_act(*v, co));
                        }
                    }
                }
            })
        });
    Ok(y)
}

fn check_lens(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &ConvGeom) -> Result<()> {
    if x.len() != g.n * g.in_len() || w.len() != g.c_out * g.k() {
        bail!("conv2d: buffer sizes do not match geometry {g:?}");
    }
    if b.is_some_and(|b| b.len() != g.c_out) {
        bail!("conv2d: bias must have {} elements", g.c_out);
    }
    Ok(())
}

/// Which gradients to compute.
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    pub input: bool,
    pub weight: bool,
    pub bias: bool,
}

/// Gradients of one convolution; the fields not asked for are empty.
#[derive(Debug, Default)]
pub struct Grads {
    /// `[N, C_in, H, W]`
    pub input: Vec<f32>,
    /// `[C_out, C_in, kh, kw]`
    pub weight: Vec<f32>,
    /// `[C_out]`
    pub bias: Vec<f32>,
}

impl Grads {
    /// The input and weight gradients as tensors shaped like `x` and `w`, where `needs` asked for
    /// them (taken out of `self`).
    pub fn take_tensors(
        &mut self,
        needs: Needs,
        x: &Tensor,
        w: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = Device::Cpu;
        let dx = needs
            .input
            .then(|| Tensor::from_vec(std::mem::take(&mut self.input), x.shape(), &dev))
            .transpose()?;
        let dw = needs
            .weight
            .then(|| Tensor::from_vec(std::mem::take(&mut self.weight), w.shape(), &dev))
            .transpose()?;
        Ok((dx, dw))
    }
}

/// Where the backward pass of one image (or one group of images) writes: the task's partial weight
/// and bias gradients (the weight's overwritten rather than added to when `first`) and the images'
/// input gradients.
pub(super) struct GradTargets<'a> {
    pub dw: &'a mut [f32],
    pub first: bool,
    pub db: &'a mut [f64],
    pub dx: Option<&'a mut [f32]>,
}

/// How one backward pass runs: the scheme its geometry takes and the scratch each task needs.
struct BackwardPlan {
    needs: Needs,
    /// Images per rayon task, and the parallelism left to `gemm` inside a task.
    per: usize,
    par: Parallelism,
    /// Images per grouped product (1: image by image).
    group: usize,
    /// The im2col gather table (none on the shifted and unmasked pointwise paths).
    table: Option<TapTable>,
    shifted: bool,
    /// The shifted scheme's input gradient through the direct kernel (needs the lead-padded
    /// output gradient beside the wide one).
    direct_dx: bool,
    /// The shifted scheme's weight gradient through the direct kernel (needs the transposed phase
    /// planes; sums tap-major partial gradients).
    direct_dw: bool,
    /// The direct kernels' products in bf16 on AMX tiles (`amx`).
    bf16: bool,
    /// With `bf16`, the weights packed for the input gradient (when it is needed).
    bf16_input_weights: Option<Arc<amx::Packed>>,
    /// The Winograd scheme, with the transformed weights (empty unless the input gradient is
    /// needed); its tasks sum transformed partial weight gradients.
    winograd: Option<Arc<Vec<f32>>>,
    /// Lengths of the two per-thread scratch buffers.
    lens: [usize; 2],
}

impl BackwardPlan {
    fn new(
        g: &ConvGeom,
        (w, w_id): (&[f32], Option<TensorId>),
        needs: Needs,
        masked: bool,
    ) -> Self {
        let (per, par) = plan(g.n);
        let winograd = winograd::applies(g).then(|| match needs.input {
            true => prepared(w_id, Prepared::Winograd, || {
                winograd::transform_weights(w, g)
            }),
            false => Arc::new(Vec::new()),
        });
        let per = match winograd {
            Some(_) => winograd::task_images(g, per),
            None => per,
        };
        let group = grouped::group_len(g, per);
        let shifted = shifted::applies(g) && winograd.is_none();
        let bf16 = shifted && amx::enabled();
        let bf16_input_weights = (bf16 && needs.input).then(|| {
            prepared(w_id, Prepared::Bf16InputGrad, || {
                shifted::input_grad_weights_bf16(w, g)
            })
        });
        // The bf16 products read the direct kernels' layouts.
        let direct_ok = direct::enabled() || bf16;
        let direct_dx = shifted && needs.input && direct_ok;
        let direct_dw = shifted && needs.weight && direct_ok;
        let lens = if winograd.is_some() {
            winograd::scratch_lens(g, per)
        } else if shifted {
            // The f32 direct weight gradient's transposed planes (bf16 packs its own operands).
            let xt_len = if direct_dw && !bf16 {
                shifted::padded_len(g)
            } else {
                0
            };
            let grad_len = shifted::GradLayout::new(g, direct_dx).len(g);
            [shifted::padded_len(g), grad_len + xt_len]
        } else if group > 1 {
            grouped::scratch_lens(g, group)
        } else {
            let col_len = if g.is_pointwise() { 0 } else { g.k() * g.p() };
            let mask_len = if masked { g.out_len() } else { 0 };
            [col_len, mask_len]
        };
        Self {
            needs,
            per,
            par,
            group,
            table: image_table(g, group),
            shifted,
            direct_dx,
            direct_dw,
            bf16,
            bf16_input_weights,
            winograd,
            lens,
        }
    }
}

/// One forward pass's tensors as the backward pass reads them.
#[derive(Clone, Copy)]
pub(super) struct BackwardInputs<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub dy: &'a [f32],
    /// The forward output of a fused ReLU: the gradient is masked where it was clamped.
    pub relu_out: Option<&'a [f32]>,
}

/// Backward pass in one sweep over the batch. `dy` is the gradient of the output; with `relu_out`
/// (the forward output of a fused ReLU) it is first masked where the output was clamped. Each
/// rayon task computes its images' input gradients and a partial weight and bias gradient; the
/// partials are summed at the end.
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    g: &ConvGeom,
    needs: Needs,
) -> Result<Grads> {
    backward_of(x, (w, None), dy, relu_out, g, needs)
}

/// `backward` with the weights' tensor id (as in `forward_of`).
pub(crate) fn backward_of(
    x: &[f32],
    (w, w_id): (&[f32], Option<TensorId>),
    dy: &[f32],
    relu_out: Option<&[f32]>,
    g: &ConvGeom,
    needs: Needs,
) -> Result<Grads> {
    check_lens(x, w, None, g)?;
    if dy.len() != g.n * g.out_len() || relu_out.is_some_and(|r| r.len() != dy.len()) {
        bail!("conv2d backward: output gradient does not match geometry {g:?}");
    }
    let mut grads = Grads::default();
    if g.n == 0 || !(needs.input || needs.weight || needs.bias) {
        return Ok(grads);
    }
    let plan = BackwardPlan::new(g, (w, w_id), needs, relu_out.is_some());
    let inputs = BackwardInputs { x, w, dy, relu_out };
    if needs.input {
        grads.input = vec![0f32; g.n * g.in_len()];
    }
    let tasks = g.n.div_ceil(plan.per);
    let dx_chunks: Vec<Option<&mut [f32]>> = if needs.input {
        grads
            .input
            .chunks_mut(plan.per * g.in_len())
            .map(Some)
            .collect()
    } else {
        (0..tasks).map(|_| None).collect()
    };
    let partials: Vec<(Vec<f32>, Vec<f64>)> = dx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(t, dxs)| {
            let imgs = (t * plan.per)..((t + 1) * plan.per).min(g.n);
            task_grads(&plan, inputs, g, imgs, dxs)
        })
        .collect();
    let (dws, dbs): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    if needs.weight {
        let dw = sum_partials(dws);
        grads.weight = if plan.direct_dw {
            shifted::from_tap_major(&dw, g)
        } else if plan.winograd.is_some() {
            winograd::weights_from_transformed(&dw, g)
        } else {
            dw
        };
    }
    if needs.bias {
        grads.bias = sum_partials(dbs).into_iter().map(|v| v as f32).collect();
    }
    Ok(grads)
}

/// The element-wise sum of the tasks' partial gradients.
fn sum_partials<T: Copy + std::ops::AddAssign>(parts: Vec<Vec<T>>) -> Vec<T> {
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_default();
    for part in parts {
        sum.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    sum
}

/// The gradients of the images `imgs` (one rayon task): their input gradients into `dxs` and the
/// task's partial weight and bias gradients, returned.
fn task_grads(
    plan: &BackwardPlan,
    inp: BackwardInputs,
    g: &ConvGeom,
    imgs: std::ops::Range<usize>,
    mut dxs: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f64>) {
    let needs = plan.needs;
    let (il, ol) = (g.in_len(), g.out_len());
    let dw_len = match &plan.winograd {
        Some(_) => winograd::transformed_weight_len(g),
        None => g.c_out * g.k(),
    };
    let mut dw = vec![0f32; if needs.weight { dw_len } else { 0 }];
    let mut db = vec![0f64; if needs.bias { g.c_out } else { 0 }];
    if let Some(u) = &plan.winograd {
        let out = winograd::TaskGrads {
            du: needs.weight.then_some(&mut dw[..]),
            db: needs.bias.then_some(&mut db[..]),
            dx: dxs,
        };
        let (x, dy) = (
            &inp.x[imgs.start * il..imgs.end * il],
            &inp.dy[imgs.start * ol..imgs.end * ol],
        );
        let relu_out = inp.relu_out.map(|r| &r[imgs.start * ol..imgs.end * ol]);
        with_scratch(plan.lens, |v, dm| {
            winograd::backward_task(x, u, dy, relu_out, g, (v, dm), plan.par, out)
        });
        return (dw, db);
    }
    with_scratch(plan.lens, |col, scratch| {
        // Images of one product: a group, or a single image.
        let step = plan.group.max(1);
        for (i, a) in imgs.clone().step_by(step).enumerate() {
            let b = (a + step).min(imgs.end);
            let out = GradTargets {
                dw: &mut dw,
                first: i == 0,
                db: &mut db,
                dx: dxs
                    .as_deref_mut()
                    .map(|d| &mut d[(a - imgs.start) * il..(b - imgs.start) * il]),
            };
            // These images' part of the batch.
            let part = BackwardInputs {
                x: &inp.x[a * il..b * il],
                w: inp.w,
                dy: &inp.dy[a * ol..b * ol],
                relu_out: inp.relu_out.map(|r| &r[a * ol..b * ol]),
            };
            let scratch = (&mut *col, &mut *scratch);
            match &plan.table {
                Some(table) if plan.group > 1 => {
                    grouped::backward_group(table, part, g, needs, scratch, out, plan.par)
                }
                _ if plan.shifted => shifted_image_grads(plan, part, g, scratch, out),
                _ => im2col_image_grads(plan, part, g, scratch, out),
            }
        }
    });
    (dw, db)
}

/// One image's gradients on the shifted-plane path. Scratch: `xq` holds the padded image (then
/// the padded input gradient); `grad` the wide output gradient, then the lead-padded one for the
/// direct input-gradient kernel, then the transposed phase planes for the direct weight one.
fn shifted_image_grads(
    plan: &BackwardPlan,
    BackwardInputs { x, w, dy, relu_out }: BackwardInputs,
    g: &ConvGeom,
    (xq, grad): (&mut [f32], &mut [f32]),
    out: GradTargets,
) {
    let at = shifted::GradLayout::new(g, plan.direct_dx);
    let (dyl, xt) = grad.split_at_mut(at.len(g));
    shifted::widen_gradient(dy, relu_out, g, dyl, at);
    let dyl = &*dyl;
    let wide = (&dyl[at.lead..], at.ld);
    if plan.needs.bias {
        add_row_sums(out.db, wide, shifted::wide_len(g));
    }
    let accumulate = !out.first;
    if plan.direct_dw && plan.bf16 {
        shifted::weight_grad_image_bf16(x, wide, g, xq, out.dw, accumulate);
    } else if plan.direct_dw {
        shifted::weight_grad_image_direct(x, wide, g, (&mut *xq, xt), out.dw, accumulate);
    } else if plan.needs.weight {
        shifted::weight_grad_image(x, wide, g, xq, out.dw, accumulate, plan.par);
    }
    match out.dx {
        Some(dx) if plan.direct_dx => match &plan.bf16_input_weights {
            Some(wp) => shifted::input_grad_image_bf16(wp, dyl, g, xq, dx),
            None => shifted::input_grad_image_direct(w, dyl, g, xq, dx),
        },
        Some(dx) => shifted::input_grad_image(w, wide, g, xq, dx, plan.par),
        None => {}
    }
}

/// One image's gradients through its im2col matrix (or the image itself when pointwise):
/// `db += Σ dY`, `dW += dY · colᵀ`, `dX = col⁻¹(Wᵀ · dY)`. Scratch: `col` holds the im2col matrix
/// (then `Wᵀ · dY`), `mask` the ReLU-masked output gradient.
fn im2col_image_grads(
    plan: &BackwardPlan,
    BackwardInputs { x, w, dy, relu_out }: BackwardInputs,
    g: &ConvGeom,
    (col, mask): (&mut [f32], &mut [f32]),
    out: GradTargets,
) {
    let (k, p) = (g.k(), g.p());
    let dy = match relu_out {
        Some(r) => {
            for ((m, d), o) in mask.iter_mut().zip(dy).zip(r) {
                *m = if *o > 0.0 { *d } else { 0.0 };
            }
            &*mask
        }
        None => dy,
    };
    if plan.needs.bias {
        add_row_sums(out.db, (dy, p), p);
    }
    if plan.needs.weight {
        let cols = image_cols(plan.table.as_ref(), x, g, col);
        let dims = (g.c_out, k, p);
        matmul(
            out.dw,
            dims,
            Mat::rm(dy, p),
            Mat::tr(cols, p),
            !out.first,
            plan.par,
        );
    }
    if let Some(dx) = out.dx {
        let (dims, wt, dy) = ((k, p, g.c_out), Mat::tr(w, k), Mat::rm(dy, p));
        match &plan.table {
            None => matmul(dx, dims, wt, dy, false, plan.par),
            Some(t) => {
                // The im2col matrix is no longer needed: its buffer holds dcol.
                matmul(col, dims, wt, dy, false, plan.par);
                t.col2im(col, g, dx, p);
            }
        }
    }
}

/// The contiguous f32 data of a CPU storage, or an error naming `what`.
pub(crate) fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: expected f32 storage")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (copying only if it is strided).
pub(crate) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(cpu_f32(c, l, what)?),
        _ => bail!("{what}: expected a CPU tensor"),
    }
}

/// The custom op: `(x, w)` or `(x, w, b)`, optionally followed by ReLU.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOp {
    pub stride: usize,
    pub pad: usize,
    pub relu: bool,
    /// The weight tensor's id (`forward_of`).
    pub weights: TensorId,
}

impl Conv2dOp {
    fn name_(&self) -> &'static str {
        if self.relu {
            "fl-conv2d-relu"
        } else {
            "fl-conv2d"
        }
    }

    fn fwd(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(xl.dims(), wl.dims(), self.stride, self.pad)?;
        let x = cpu_f32(xs, xl, "conv2d input")?;
        let w = cpu_f32(ws, wl, "conv2d weight")?;
        let b = b.map(|(s, l)| cpu_f32(s, l, "conv2d bias")).transpose()?;
        let y = forward_of(x, (w, Some(self.weights)), b, &g, self.relu)?;
        Ok((CpuStorage::F32(y), Shape::from(g.out_dims())))
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeom::new(x.dims(), w.dims(), self.stride, self.pad)?;
        // An input that carries no graph (the image batch) needs no gradient: skipping it saves
        // the whole col2im product, which candle's own conv backward always computes.
        let needs = Needs {
            input: x.track_op(),
            weight: w.track_op(),
            bias: b.is_some_and(|b| b.track_op()),
        };
        let mut grads = with_f32(x, "conv2d input", |xv| {
            with_f32(w, "conv2d weight", |wv| {
                with_f32(grad, "conv2d output gradient", |dy| {
                    let wv = (wv, Some(self.weights));
                    if self.relu {
                        with_f32(res, "conv2d output", |r| {
                            backward_of(xv, wv, dy, Some(r), &g, needs)
                        })
                    } else {
                        backward_of(xv, wv, dy, None, &g, needs)
                    }
                })
            })
        })?;
        let (dx, dw) = grads.take_tensors(needs, x, w)?;
        let db = needs
            .bias
            .then(|| Tensor::from_vec(grads.bias, g.c_out, &Device::Cpu))
            .transpose()?;
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        self.name_()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, None, res, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        self.name_()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, Some(b), res, grad)
    }
}

/// Fast-path convolution on contiguous CPU f32 tensors, with autograd through `Conv2dOp`.
pub fn conv2d_cpu(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = Conv2dOp {
        stride,
        pad: padding,
        relu,
        weights: w.id(),
    };
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

#[cfg(test)]
mod tests {
    //! Every case is checked against candle's `conv2d` (+ broadcast bias, + ReLU) through candle's
    //! autograd, in value and in the gradients of `sum(y * r)` for a random, never-zero `r`.
    use super::*;
    use crate::ops::reference;
    use crate::ops::testing::{assert_close, rand_tensor};
    use candle_core::Var;

    struct Case {
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        relu: bool,
    }

    /// A table row of the tests: `(n, c_in, h, w, c_out, k, stride, pad)`.
    type Shape8 = (usize, usize, usize, usize, usize, usize, usize, usize);

    impl Case {
        fn new((n, c_in, h, w, c_out, k, stride, pad): Shape8, bias: bool, relu: bool) -> Self {
            Case {
                n,
                c_in,
                h,
                w,
                c_out,
                k,
                stride,
                pad,
                bias,
                relu,
            }
        }
    }

    fn check(c: &Case, seed: u64) {
        check_values(c, seed, &|t| t)
    }

    /// `check` with every random tensor passed through `values` first.
    fn check_values(c: &Case, seed: u64, values: &dyn Fn(Tensor) -> Tensor) {
        let dev = Device::Cpu;
        let rand = |dims: &[usize], seed: u64| values(rand_tensor(dims, seed, &dev));
        let x = Var::from_tensor(&rand(&[c.n, c.c_in, c.h, c.w], seed)).unwrap();
        let w = Var::from_tensor(&rand(&[c.c_out, c.c_in, c.k, c.k], seed + 1)).unwrap();
        let b = Var::from_tensor(&rand(&[c.c_out], seed + 2)).unwrap();
        let b_opt = c.bias.then_some(b.as_tensor());

        let ours = conv2d_cpu(&x, &w, b_opt, c.stride, c.pad, c.relu).unwrap();
        let mut theirs = reference::conv2d(&x, &w, b_opt, c.stride, c.pad).unwrap();
        if c.relu {
            theirs = theirs.relu().unwrap();
        }
        let what = format!(
            "n{} c{}->{} {}x{} k{} s{} p{} bias {} relu {}",
            c.n, c.c_in, c.c_out, c.h, c.w, c.k, c.stride, c.pad, c.bias, c.relu
        );
        assert_eq!(ours.dims(), theirs.dims(), "{what}: shape");
        assert_close(&ours, &theirs, &format!("{what}: value"));

        let r = rand(theirs.dims(), seed + 3);
        let g_ours = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = vec![("input", &x), ("weight", &w)];
        if c.bias {
            vars.push(("bias", &b));
        }
        let expected: Vec<Tensor> = match (theirs * &r).unwrap().sum_all().unwrap().backward() {
            Ok(g) => vars
                .iter()
                .map(|(_, v)| g.get(v).unwrap().clone())
                .collect(),
            // candle 0.11's conv2d backward applies the height's output padding to the width too,
            // so strided shapes whose H and W differ in parity fail there; use the direct sum.
            Err(_) => {
                let (dx, dw, db) = direct_grads(c, &x, &w, &b, &r);
                [dx, dw, db].into_iter().take(vars.len()).collect()
            }
        };
        // The direct f64 sums are a second, independent reference for every case.
        let (dx, dw, db) = direct_grads(c, &x, &w, &b, &r);
        let direct = [dx, dw, db];
        for (((name, v), e), d) in vars.into_iter().zip(&expected).zip(&direct) {
            let a = g_ours
                .get(v)
                .unwrap_or_else(|| panic!("{what}: no {name} gradient"));
            assert_close(a, e, &format!("{what}: {name} gradient"));
            assert_close(a, d, &format!("{what}: {name} gradient vs direct sums"));
        }
    }

    /// Gradients of `sum(r * act(conv(x, w) + b))` by the defining sums, in f64.
    fn direct_grads(
        c: &Case,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        r: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let v = |t: &Tensor| -> Vec<f64> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect()
        };
        let (xv, wv, bv, rv) = (v(x), v(w), v(b), v(r));
        let g = ConvGeom::new(x.dims(), w.dims(), c.stride, c.pad).unwrap();
        let (mut dx, mut dw, mut db) = (
            vec![0f64; xv.len()],
            vec![0f64; wv.len()],
            vec![0f64; bv.len()],
        );
        let taps = |n: usize, co: usize, oy: usize, ox: usize| {
            let mut out = Vec::new();
            for ci in 0..g.c_in {
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let iy = (oy * g.stride + ki) as isize - g.pad as isize;
                        let ix = (ox * g.stride + kj) as isize - g.pad as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                            let xi = ((n * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize;
                            let wi = ((co * g.c_in + ci) * g.kh + ki) * g.kw + kj;
                            out.push((xi, wi));
                        }
                    }
                }
            }
            out
        };
        for n in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..g.h_out {
                    for ox in 0..g.w_out {
                        let t = taps(n, co, oy, ox);
                        let mut y: f64 = t.iter().map(|&(xi, wi)| xv[xi] * wv[wi]).sum();
                        if c.bias {
                            y += bv[co];
                        }
                        let yi = ((n * g.c_out + co) * g.h_out + oy) * g.w_out + ox;
                        let dy = if c.relu && y <= 0.0 { 0.0 } else { rv[yi] };
                        db[co] += dy;
                        for (xi, wi) in t {
                            dx[xi] += dy * wv[wi];
                            dw[wi] += dy * xv[xi];
                        }
                    }
                }
            }
        }
        let t = |v: Vec<f64>, like: &Tensor| {
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            Tensor::from_vec(v, like.shape(), &Device::Cpu).unwrap()
        };
        (t(dx, x), t(dw, w), t(db, b))
    }

    #[test]
    fn matches_candle_over_many_shapes() {
        #[rustfmt::skip]
        let cases = [
            // n, c_in, h, w, c_out, k, stride, pad
            (2, 3, 9, 7, 5, 3, 1, 1), (1, 3, 9, 7, 5, 3, 1, 1), (3, 5, 11, 13, 7, 3, 2, 1),
            (2, 4, 8, 8, 6, 3, 2, 0), (1, 7, 5, 6, 3, 3, 1, 0), (2, 6, 7, 5, 9, 1, 1, 0),
            (1, 10, 4, 4, 3, 1, 2, 0), (3, 9, 6, 7, 4, 1, 1, 1), (2, 3, 3, 3, 2, 3, 2, 1),
            (1, 1, 1, 1, 1, 1, 1, 0), (2, 13, 10, 9, 11, 3, 2, 1), (5, 2, 6, 6, 3, 3, 1, 1),
            (2, 16, 16, 16, 16, 3, 1, 1), (1, 3, 33, 31, 8, 3, 2, 1), (4, 12, 5, 5, 10, 1, 2, 1),
            // For the shifted-product path (W_out >= 8, C_in >= 8), stride 1, 2 and 3.
            (1, 9, 9, 11, 7, 3, 1, 1), (3, 10, 10, 12, 5, 3, 1, 0), (2, 11, 8, 9, 4, 1, 1, 1),
            (2, 9, 12, 8, 13, 3, 1, 2), (1, 12, 7, 20, 3, 5, 1, 2), (3, 10, 1, 8, 9, 3, 1, 1),
            (2, 13, 16, 17, 6, 3, 2, 1), (1, 8, 19, 16, 4, 1, 2, 0), (2, 15, 15, 18, 5, 3, 2, 0),
            (1, 9, 9, 21, 7, 5, 2, 2), (2, 11, 17, 26, 4, 3, 3, 1), (3, 8, 16, 16, 9, 2, 2, 0),
            // The model's own widths, where the direct kernel picks its 6x64 and 12x32 tiles.
            (2, 64, 16, 16, 64, 3, 1, 1), (1, 32, 8, 12, 72, 3, 1, 1),
        ];
        for (i, &shape) in cases.iter().enumerate() {
            for (bias, relu) in [(true, false), (false, false), (true, true), (false, true)] {
                let case = Case::new(shape, bias, relu);
                let seed = 100 * i as u64 + 10 * bias as u64 + relu as u64;
                check(&case, seed);
                // The shifted products through `gemm` as well, where the direct kernel runs.
                direct::with_gemm_only(|| check(&case, seed));
            }
        }
    }

    #[test]
    fn winograd_matches_candle_and_the_direct_sums() {
        // 3x3 stride-1 "same" convolutions: odd sides (a last tile half outside the map), two
        // blocks of images in one task (one thread: 5 images of 8x8 tiles), the model's widths,
        // output channels padded to whole vectors (36, 72); each also through the other schemes.
        // Without AVX-512 the other schemes run both times.
        #[rustfmt::skip]
        let cases = [
            // n, c_in, h, w, c_out, k, stride, pad
            (2, 16, 17, 19, 32, 3, 1, 1), (5, 16, 16, 16, 16, 3, 1, 1), (1, 32, 18, 16, 48, 3, 1, 1),
            (2, 64, 16, 16, 64, 3, 1, 1), (2, 16, 9, 11, 36, 3, 1, 1), (1, 64, 8, 8, 72, 3, 1, 1),
        ];
        on_one_and_two_threads(|pool, _| {
            for (i, &shape) in cases.iter().enumerate() {
                let applies = winograd::applies(&geom(shape));
                assert_eq!(applies, direct::available(), "case {i}");
                for (bias, relu) in [(true, true), (false, false), (true, false)] {
                    let case = Case::new(shape, bias, relu);
                    let seed = 9000 + 10 * i as u64 + 2 * bias as u64 + relu as u64;
                    pool.install(|| check(&case, seed));
                    pool.install(|| winograd::without(|| check(&case, seed)));
                }
            }
        });
    }

    /// The bf16 products on inputs that are bf16 values already: each product is then exact and
    /// only the order of the f32 sums differs, so candle's convolution and the direct sums must
    /// agree as closely as with the f32 kernels. (Rounding itself is tested in `amx`.)
    #[test]
    fn bf16_products_on_bf16_values_match_candle_and_the_direct_sums() {
        if !amx::available() {
            eprintln!("no AMX: skipped");
            return;
        }
        let to_bf16 = |t: Tensor| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let v: Vec<f32> = v
                .into_iter()
                .map(|x| f32::from_bits((amx::bf16(x) as u32) << 16))
                .collect();
            Tensor::from_vec(v, t.shape(), t.device()).unwrap()
        };
        #[rustfmt::skip]
        let cases = [
            // n, c_in, h, w, c_out, k, stride, pad: the model's layers (Winograd's and the strided
            // ones), odd channels and sides, strides 2 and 3, a 5x5 kernel.
            (2, 64, 16, 16, 64, 3, 1, 1), (1, 64, 8, 8, 90, 3, 1, 1), (2, 32, 16, 16, 64, 3, 2, 1),
            (1, 64, 12, 10, 36, 3, 1, 1), (2, 13, 16, 17, 6, 3, 2, 1), (1, 9, 9, 21, 7, 5, 2, 2),
            (2, 11, 17, 26, 4, 3, 3, 1), (1, 9, 9, 11, 7, 3, 1, 1), (3, 10, 10, 12, 5, 3, 1, 0),
            (1, 40, 9, 33, 33, 3, 1, 1),
            // Maps under 8 wide, which take the shifted products only in bf16.
            (2, 64, 4, 4, 64, 3, 1, 1), (1, 9, 3, 3, 4, 3, 1, 1), (2, 16, 2, 2, 8, 3, 2, 1),
            (1, 64, 1, 1, 36, 3, 1, 1),
        ];
        on_one_and_two_threads(|pool, _| {
            for (i, &shape) in cases.iter().enumerate() {
                let applies = amx::with_bf16(|| shifted::applies(&geom(shape)));
                assert!(applies, "case {i} takes the shifted path");
                for (bias, relu) in [(true, true), (false, false)] {
                    let case = Case::new(shape, bias, relu);
                    let seed = 7000 + 10 * i as u64 + relu as u64;
                    pool.install(|| amx::with_bf16(|| check_values(&case, seed, &to_bf16)));
                }
            }
        });
    }

    /// With bf16 products on, inputs that are not bf16 values give results within bf16's
    /// rounding of the f32 ones, and not the f32 results themselves (the products did run in
    /// bf16): the output and all three gradients.
    #[test]
    fn bf16_products_stay_within_their_rounding() {
        if !amx::available() {
            return;
        }
        let dev = Device::Cpu;
        let x = Var::from_tensor(&rand_tensor(&[2, 64, 16, 16], 1, &dev)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[64, 64, 3, 3], 2, &dev)).unwrap();
        let r = rand_tensor(&[2, 64, 16, 16], 3, &dev);
        let run = || {
            let y = conv2d_cpu(&x, &w, None, 1, 1, false).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(&x).unwrap().clone();
            let dw = grads.get(&w).unwrap().clone();
            [y, dx, dw]
        };
        let f32_out = run();
        let bf16_out = amx::with_bf16(run);
        for ((name, a), b) in ["output", "input gradient", "weight gradient"]
            .iter()
            .zip(&bf16_out)
            .zip(&f32_out)
        {
            let max =
                |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
            let (diff, scale) = (max(&(a - b).unwrap()), max(b));
            // Each operand rounded by at most 2^-9 relative: a sum of hundreds of products moves
            // by well under 1% of the largest value, but it does move.
            assert!(diff > 0.0, "{name}: bf16 products gave the f32 results");
            assert!(
                diff < 1e-2 * scale,
                "{name}: {diff} against values up to {scale}"
            );
        }
    }

    /// Runs `f(pool, threads)` with a rayon pool of one thread, then of two.
    fn on_one_and_two_threads(f: impl Fn(&rayon::ThreadPool, usize)) {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            f(&pool, threads);
        }
    }

    fn geom((n, c_in, h, w, c_out, k, stride, pad): Shape8) -> ConvGeom {
        ConvGeom::new(&[n, c_in, h, w], &[c_out, c_in, k, k], stride, pad).unwrap()
    }

    #[test]
    fn small_maps_grouped_across_images_match_candle() {
        // Maps under 8x8 run as one product over several images (`grouped`); with one thread a
        // task holds the whole batch, with two about half. 7x7 maps (49 pixels) fit 5 images to a
        // group, so 7 images make a full group and a partial one.
        #[rustfmt::skip]
        let cases = [
            // n, c_in, h, w, c_out, k, stride, pad
            (5, 9, 4, 4, 7, 3, 1, 1), (7, 6, 7, 7, 5, 3, 1, 1), (4, 10, 1, 1, 6, 3, 1, 1),
            (6, 12, 2, 3, 9, 1, 1, 0), (5, 8, 4, 4, 11, 3, 2, 1), (3, 5, 3, 2, 4, 1, 2, 0),
        ];
        on_one_and_two_threads(|pool, threads| {
            for (i, &shape) in cases.iter().enumerate() {
                for (bias, relu) in [(true, true), (false, false)] {
                    let case = Case::new(shape, bias, relu);
                    let per = shape.0.div_ceil(threads);
                    assert!(grouped::group_len(&geom(shape), per) > 1, "case {i}");
                    pool.install(|| check(&case, 7000 + 10 * i as u64 + relu as u64));
                }
            }
        });
    }

    #[test]
    fn input_without_graph_gets_no_gradient_and_the_rest_is_unchanged() {
        let dev = Device::Cpu;
        let x = rand_tensor(&[2, 3, 8, 8], 1, &dev);
        let w = Var::from_tensor(&rand_tensor(&[4, 3, 3, 3], 2, &dev)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[4], 3, &dev)).unwrap();
        let ours = conv2d_cpu(&x, &w, Some(&b), 2, 1, true).unwrap();
        let theirs = reference::conv2d(&x, &w, Some(&b), 2, 1)
            .unwrap()
            .relu()
            .unwrap();
        let g_ours = ours.sum_all().unwrap().backward().unwrap();
        let g_theirs = theirs.sum_all().unwrap().backward().unwrap();
        assert!(g_ours.get(&x).is_none());
        assert_close(g_ours.get(&w).unwrap(), g_theirs.get(&w).unwrap(), "weight");
        assert_close(g_ours.get(&b).unwrap(), g_theirs.get(&b).unwrap(), "bias");
    }

    #[test]
    fn strided_input_is_accepted() {
        let dev = Device::Cpu;
        let x = rand_tensor(&[3, 2, 6, 5], 7, &dev).transpose(2, 3).unwrap();
        let w = rand_tensor(&[4, 2, 3, 3], 8, &dev);
        let ours = conv2d_cpu(&x, &w, None, 1, 1, false).unwrap();
        let theirs = reference::conv2d(&x.contiguous().unwrap(), &w, None, 1, 1).unwrap();
        assert_close(&ours, &theirs, "transposed input");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = rand_tensor(&[1, 3, 4, 4], 1, &dev);
        let w = rand_tensor(&[2, 4, 3, 3], 2, &dev);
        assert!(conv2d_cpu(&x, &w, None, 1, 1, false).is_err());
        let w = rand_tensor(&[2, 3, 7, 7], 2, &dev);
        assert!(conv2d_cpu(&x, &w, None, 1, 1, false).is_err());
    }
}
