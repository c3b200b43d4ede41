//! 3x3 stride-1 "same" convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016; interpolation points 0, ±1, ±2).
//!
//! The output is cut into 4x4 tiles; tile `t` reads a 6x6 patch `d` of the zero-padded input.
//! With `V = Bᵀ d B` (the input transform), `U = G g Gᵀ` (the weight transform) and `Y = Aᵀ M A`
//! (the output transform), the tile is `Y = Aᵀ (Σ_ci U ⊙ V) A`: for each of the 36 positions `k`
//! of the 6x6 transformed tile, one matrix product `M_k [T, C_out] = V_k [T, C_in] · U_kᵀ` over all
//! tiles `T`. That is 36 multiply-adds per 4x4 outputs and input channel where the direct sum
//! needs 144, so the products do 1/4 of the convolution's arithmetic (F(2x2, 3x3), which this
//! replaced, did 4/9); the transforms are small fixed sums.
//!
//! Every step is linear, so the backward pass is the same steps' adjoints in reverse order: `dM =
//! A dY Aᵀ` per tile, `dU_k = dM_kᵀ · V_k` (summed over tiles) and `dV_k = dM_k · U_k` (36 products
//! each), then `dW = Gᵀ dU G` and `dX` the sum of `B dV Bᵀ` over the overlapping patches. The
//! gradients are exact for the transformed computation, which equals the convolution up to float
//! rounding (larger than F(2x2, 3x3)'s: the transforms scale by up to 5 and 1/24; the kernel tests
//! hold it to 1e-4 of the largest value, as every other scheme).
//!
//! The transformed tiles are stored channels last, so that the tile transforms run on whole
//! AVX-512 vectors of 16 channels (`simd`); the images are turned channels last (and back) a few
//! rows at a time by strided gathers, in strips that stay in L1. The scheme runs on CPUs with
//! AVX-512, for input channels in multiples of 16 (output channels are padded to whole vectors).
//! Images are processed in blocks of about `BLOCK_TILES` tiles, so that one block's transformed
//! input and output (`16 x C x T` values each) stay in the core's L2 cache.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{matmul, matmul_into, ConvGeom, Mat, MatMut};
use gemm::Parallelism;

/// Calls one of `simd`'s functions, which only run where `applies` found AVX-512.
macro_rules! simd_call {
    ($f:ident($($arg:expr),* $(,)?)) => {{
        debug_assert!(simd::available());
        // SAFETY: `applies` chose this scheme only on a CPU with AVX-512F. (Off x86-64 the
        // functions are safe stubs, hence the allowance.)
        #[allow(unused_unsafe)]
        unsafe {
            simd::$f($($arg),*)
        }
    }};
}

/// Output rows and columns of a tile.
const TILE: usize = 4;

/// Input rows and columns a tile reads (and of its transform): the tile and the filter's reach.
const PATCH: usize = TILE + 2;

/// Positions of a transformed tile.
const POSITIONS: usize = PATCH * PATCH;

/// Tiles per block of images (at least one image per block): four 16x16 maps or sixteen 8x8 ones.
/// Against 32 and 128 the training step ran 2% and 1% faster on one thread (`bench/ab.sh`; with
/// F(2x2, 3x3)'s 16 positions 64 had also beaten 128 and 256 by 1-3%).
const BLOCK_TILES: usize = 64;

thread_local! {
    /// Set by tests on the calling thread to run the other schemes instead.
    static OFF_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static SWITCHED_OFF: AtomicBool = AtomicBool::new(false);

/// Switches the scheme off (or back on) process-wide, for benchmarks against the direct kernel.
pub fn set_switched_off(off: bool) {
    SWITCHED_OFF.store(off, Ordering::Relaxed);
}

/// Runs `f` with the scheme switched off on this thread.
#[cfg(test)]
pub(super) fn without<R>(f: impl FnOnce() -> R) -> R {
    OFF_HERE.with(|c| c.set(true));
    let r = f();
    OFF_HERE.with(|c| c.set(false));
    r
}

/// 3x3, stride 1, padding 1, on maps at least `MIN_SIDE` wide and high, with input channels that
/// fill the transforms' 16-lane vectors and at least 16 output channels (padded to a multiple of
/// 16 in the transformed output: the class and box predictors' 72 and 36), on CPUs with AVX-512.
pub(super) fn applies(g: &ConvGeom) -> bool {
    const MIN_SIDE: usize = 8;
    let shape = g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1;
    let size = g.h_out >= MIN_SIDE && g.w_out >= MIN_SIDE;
    let lanes = g.c_in.is_multiple_of(simd::LANES) && g.c_out >= simd::LANES;
    shape
        && size
        && lanes
        && simd::available()
        && !SWITCHED_OFF.load(Ordering::Relaxed)
        // bf16 products run the direct sums: with AMX's cheap multiplies the transforms would
        // cost more than the products they save.
        && !super::amx::enabled()
        && !OFF_HERE.with(|c| c.get())
}

/// Tile rows and columns of one image (a last tile may reach past the map's side).
fn tiles(g: &ConvGeom) -> (usize, usize) {
    (g.h_out.div_ceil(TILE), g.w_out.div_ceil(TILE))
}

/// Distance between the 36 position planes of a block's transformed input or output of `len`
/// values each. The transforms write all 36 planes at once; planes a multiple of 4 KiB apart map
/// to the same L1 cache sets and evict each other, so each is padded by one cache line.
fn plane_stride(len: usize) -> usize {
    len.next_multiple_of(16) + 16
}

/// Output channels of the transformed output and weights: `C_out` rounded up to whole vectors
/// (the extra channels' weights are zero, and their outputs are dropped).
fn out_lanes(g: &ConvGeom) -> usize {
    g.c_out.next_multiple_of(simd::LANES)
}

/// Images per block.
fn block_images(g: &ConvGeom) -> usize {
    let (th, tw) = tiles(g);
    (BLOCK_TILES / (th * tw)).max(1)
}

/// Images per rayon task: at least `per` (the even split over the threads), and enough for
/// `MIN_TASK_TILES` tiles where the batch has them: tasks of two 8x8 maps ran slower than one task
/// over all of a thread's images, while four split a batch of 8 over two threads profitably
/// (`fl-lab bench conv`, 2 threads: the 8x8 layers 1.2-1.6x faster per call than with all eight
/// in one task). The training step's parts run on one thread each, so this only matters where one
/// call is split over threads.
pub(super) fn task_images(g: &ConvGeom, per: usize) -> usize {
    // Four 8x8 maps.
    const MIN_TASK_TILES: usize = 16;
    let (th, tw) = tiles(g);
    per.max(MIN_TASK_TILES.div_ceil(th * tw).min(g.n))
}

/// Lengths of the two per-thread scratch buffers: the transformed input (later its gradient) and
/// the transformed output (or its gradient) of one block of `per` images at most.
pub(super) fn scratch_lens(g: &ConvGeom, per: usize) -> [usize; 2] {
    let (th, tw) = tiles(g);
    let t = th * tw * block_images(g).min(per.max(1));
    [
        POSITIONS * plane_stride(g.c_in * t),
        POSITIONS * plane_stride(out_lanes(g) * t),
    ]
}

/// Values of one position's plane of the transformed weights `[out_lanes, C_in]`, and the distance
/// between the planes (padded as `plane_stride` pads: the planes are written and read all at once,
/// and unpadded ones of 64 x 64 weights are 16 KiB apart).
fn weight_plane(g: &ConvGeom) -> (usize, usize) {
    let len = out_lanes(g) * g.c_in;
    (len, plane_stride(len))
}

/// Length of the transformed weights `[36, out_lanes, C_in]` (also of the weight gradient's
/// transformed partial sums), planes `weight_plane` apart.
pub(super) fn transformed_weight_len(g: &ConvGeom) -> usize {
    POSITIONS * weight_plane(g).1
}

// The 1-D transforms of the filters and their adjoints (transposes), on scalars: the reference
// that `simd`'s vector versions are tested against.

/// The rows of `G` (6x3): `G g` is the filter's values at the interpolation points 0, 1, -1, 2,
/// -2 and its leading coefficient, each scaled by the Lagrange denominators.
#[cfg(test)]
const G: [[f32; 3]; PATCH] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `G v` for a 3-tap filter.
#[cfg(test)]
fn g_fwd(v: [f32; 3]) -> [f32; PATCH] {
    G.map(|row| row.iter().zip(&v).map(|(a, b)| a * b).sum())
}

/// `Gᵀ v`.
#[cfg(test)]
fn g_adj(v: [f32; PATCH]) -> [f32; 3] {
    std::array::from_fn(|j| G.iter().zip(&v).map(|(row, x)| row[j] * x).sum())
}

/// Filters per call of the vector weight transforms: one lane each.
const FILTER_BLOCK: usize = simd::LANES;

/// `U = G g Gᵀ` of every filter: `[36, out_lanes, C_in]`, position `(i, j)` at `6 j + i`, the
/// planes `weight_plane` apart; the padded output channels' weights are zero. (Written without a
/// zero fill first: for the heads' layers, called four times per step each, the fill cost as much
/// as the transform.)
pub(super) fn transform_weights(w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let stride = weight_plane(g).1;
    let len = transformed_weight_len(g);
    // Plane positions `o * C_in + i` that hold a filter; C_in is a multiple of FILTER_BLOCK, so
    // a block holds filters or padding, never both.
    let filters = g.c_out * g.c_in;
    let mut u = Vec::with_capacity(len);
    let spare = &mut u.spare_capacity_mut()[..len];
    // Blocks past the filters are the padded output channels' and the padding between planes.
    for p0 in (0..stride).step_by(FILTER_BLOCK) {
        let out = &mut spare[p0..];
        if p0 < filters {
            let f = &w[9 * p0..9 * (p0 + FILTER_BLOCK)];
            simd_call!(weight_block(f, out, stride));
        } else {
            for k in 0..POSITIONS {
                out[k * stride..][..FILTER_BLOCK].fill(MaybeUninit::new(0.0));
            }
        }
    }
    // SAFETY: the blocks above wrote `FILTER_BLOCK` values at `k * stride + p0` for every
    // position `k` and every block start `p0 < stride` (both multiples of FILTER_BLOCK): all
    // `len = POSITIONS * stride` values.
    unsafe { u.set_len(len) };
    u
}

/// The weight gradient `dW = Gᵀ dU G` from the transformed one `dU [36, out_lanes, C_in]`.
pub(super) fn weights_from_transformed(du: &[f32], g: &ConvGeom) -> Vec<f32> {
    let stride = weight_plane(g).1;
    let mut dw = vec![0f32; g.c_out * g.c_in * 9];
    for (b, filters) in dw.chunks_exact_mut(9 * FILTER_BLOCK).enumerate() {
        simd_call!(weight_grad_block(&du[b * FILTER_BLOCK..], stride, filters));
    }
    dw
}

/// The per-tile transforms on 16-channel AVX-512 vectors. A tile's values of one position are
/// `C` consecutive floats (channels last); `t` counts tiles within the block.
mod simd {
    #[cfg(target_arch = "x86_64")]
    use super::{PATCH, TILE};
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;
    #[cfg(target_arch = "x86_64")]
    use std::mem::MaybeUninit;

    /// Channels per vector.
    pub const LANES: usize = 16;

    /// Whether the CPU has the instructions (the scheme is not used without them).
    pub fn available() -> bool {
        super::super::direct::available()
    }

    /// Where the tile transforms read and write: `C` channels per tile, the planes `stride`
    /// apart, the strip's rows `row` values apart (pixels of `C` channels).
    #[derive(Clone, Copy)]
    pub struct Layout {
        pub c: usize,
        pub stride: usize,
        pub row: usize,
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) mod ops {
        use super::*;
        pub type V = __m512;

        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn ld(s: &[f32]) -> V {
            let s = &s[..LANES];
            // SAFETY: `s` holds 16 floats (checked by the slicing above).
            unsafe { _mm512_loadu_ps(s.as_ptr()) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn st(s: &mut [f32], v: V) {
            let s = &mut s[..LANES];
            // SAFETY: `s` holds 16 floats (checked by the slicing above).
            unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        fn add(a: V, b: V) -> V {
            _mm512_add_ps(a, b)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        fn sub(a: V, b: V) -> V {
            _mm512_sub_ps(a, b)
        }

        /// `k a + c`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn mul_add(k: f32, a: V, c: V) -> V {
            _mm512_fmadd_ps(_mm512_set1_ps(k), a, c)
        }

        /// `k a`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn scale(k: f32, a: V) -> V {
            _mm512_mul_ps(_mm512_set1_ps(k), a)
        }

        /// `Bᵀ d`, with `Bᵀ` (rows)
        /// `[4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
        /// 0 4 0 -5 0 1]`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn bt_fwd([d0, d1, d2, d3, d4, d5]: [V; 6]) -> [V; 6] {
            let (t1, t2) = (mul_add(-4.0, d2, d4), mul_add(-4.0, d1, d3));
            let (t3, t4) = (sub(d4, d2), scale(2.0, sub(d3, d1)));
            [
                mul_add(4.0, d0, mul_add(-5.0, d2, d4)),
                add(t1, t2),
                sub(t1, t2),
                add(t3, t4),
                sub(t3, t4),
                mul_add(4.0, d1, mul_add(-5.0, d3, d5)),
            ]
        }

        /// `B v`, the adjoint of `bt_fwd`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn bt_adj([v0, v1, v2, v3, v4, v5]: [V; 6]) -> [V; 6] {
            let (a, s) = (sub(v1, v2), add(v1, v2));
            let (b, t) = (sub(v3, v4), add(v3, v4));
            [
                scale(4.0, v0),
                mul_add(-2.0, b, scale(4.0, sub(v5, a))),
                sub(mul_add(-5.0, v0, scale(-4.0, s)), t),
                mul_add(-5.0, v5, mul_add(2.0, b, a)),
                add(add(v0, s), t),
                v5,
            ]
        }

        /// `Aᵀ m`, with `Aᵀ` (rows) `[1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn at_fwd([m0, m1, m2, m3, m4, m5]: [V; 6]) -> [V; 4] {
            let (s12, d12) = (add(m1, m2), sub(m1, m2));
            let (s34, d34) = (add(m3, m4), sub(m3, m4));
            [
                add(add(m0, s12), s34),
                mul_add(2.0, d34, d12),
                mul_add(4.0, s34, s12),
                add(mul_add(8.0, d34, d12), m5),
            ]
        }

        /// `A y`, the adjoint of `at_fwd`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn at_adj([y0, y1, y2, y3]: [V; 4]) -> [V; 6] {
            let (e, o) = (add(y0, y2), add(y1, y3));
            let (e2, o2) = (mul_add(4.0, y2, y0), mul_add(8.0, y3, scale(2.0, y1)));
            [y0, add(e, o), sub(e, o), add(e2, o2), sub(e2, o2), y3]
        }

        /// The positions `(0..6, j)` of one tile's 16 channels at `at` in the planes.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn column(planes: &[f32], l: Layout, at: usize, j: usize) -> [V; PATCH] {
            std::array::from_fn(|i| ld(&planes[(PATCH * j + i) * l.stride + at..]))
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn put_column(planes: &mut [f32], l: Layout, at: usize, j: usize, col: [V; PATCH]) {
            for (i, x) in col.into_iter().enumerate() {
                st(&mut planes[(PATCH * j + i) * l.stride + at..], x);
            }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        pub fn add_to(s: &mut [f32], v: V) {
            let sum = add(ld(s), v);
            st(s, sum);
        }
    }

    /// `k * stride` in lane `k`: the element offsets of a strided gather or scatter.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lane_offsets(stride: usize) -> __m512i {
        _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride as i32),
        )
    }

    /// Lane `k < n` of `src[k * stride]`, the other lanes zero: one strided gather.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gather(src: &[f32], stride: usize, n: usize) -> ops::V {
        assert!(n <= LANES && (n == 0 || (n - 1) * stride < src.len()));
        let offsets = lane_offsets(stride);
        let mask = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: the lanes under `mask` read `src[k * stride]`, `k < n`, inside `src` (asserted).
        unsafe { _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, src.as_ptr()) }
    }

    /// `src[k * stride] = v[k]` for the 16 lanes: one strided scatter.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn scatter(dst: &mut [f32], stride: usize, v: ops::V) {
        assert!((LANES - 1) * stride < dst.len());
        let offsets = lane_offsets(stride);
        // SAFETY: lane `k` writes `dst[k * stride]`, `k < 16`, inside `dst` (asserted).
        unsafe { _mm512_i32scatter_ps::<4>(dst.as_mut_ptr(), offsets, v) }
    }

    /// `G v` for 3-tap filters, one per lane (the scalar `g_fwd`).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn g_fwd([g0, g1, g2]: [ops::V; 3]) -> [ops::V; PATCH] {
        use ops::{mul_add, scale};
        let s = _mm512_add_ps(g0, g2);
        let p = mul_add(1.0 / 24.0, g0, scale(1.0 / 6.0, g2));
        let q = scale(1.0 / 12.0, g1);
        [
            scale(0.25, g0),
            scale(-1.0 / 6.0, _mm512_add_ps(s, g1)),
            scale(-1.0 / 6.0, _mm512_sub_ps(s, g1)),
            _mm512_add_ps(p, q),
            _mm512_sub_ps(p, q),
            g2,
        ]
    }

    /// `Gᵀ v`, one filter per lane (the scalar `g_adj`).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn g_adj([v0, v1, v2, v3, v4, v5]: [ops::V; PATCH]) -> [ops::V; 3] {
        use ops::{mul_add, scale};
        let (a, b) = (_mm512_add_ps(v1, v2), _mm512_sub_ps(v1, v2));
        let (c, d) = (_mm512_add_ps(v3, v4), _mm512_sub_ps(v3, v4));
        [
            mul_add(0.25, v0, mul_add(-1.0 / 6.0, a, scale(1.0 / 24.0, c))),
            mul_add(-1.0 / 6.0, b, scale(1.0 / 12.0, d)),
            mul_add(1.0 / 6.0, _mm512_sub_ps(c, a), v5),
        ]
    }

    /// `U = G g Gᵀ` of 16 consecutive 3x3 filters `f [16, 9]`, one per lane: position `(i, j)`
    /// of filter `p` into `u[(6 j + i) * stride + p]`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn weight_block(f: &[f32], u: &mut [MaybeUninit<f32>], stride: usize) {
        let tap = |t: usize| gather(&f[t..], 9, LANES);
        // Columns first (G applied to each column of the filter), then rows.
        let cols: [[ops::V; PATCH]; 3] =
            std::array::from_fn(|j| g_fwd([tap(j), tap(3 + j), tap(6 + j)]));
        for i in 0..PATCH {
            let row = g_fwd([cols[0][i], cols[1][i], cols[2][i]]);
            for (j, v) in row.into_iter().enumerate() {
                let s = &mut u[(PATCH * j + i) * stride..][..LANES];
                // SAFETY: `s` holds 16 floats (checked by the slicing above); writing
                // initializes them.
                unsafe { _mm512_storeu_ps(s.as_mut_ptr().cast(), v) }
            }
        }
    }

    /// `dW = Gᵀ dU G` of 16 consecutive filters, one per lane, from `du[(6 j + i) * stride + p]`
    /// into `dw [16, 9]`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn weight_grad_block(du: &[f32], stride: usize, dw: &mut [f32]) {
        let at = |i: usize, j: usize| ops::ld(&du[(PATCH * j + i) * stride..]);
        // Rows first (Gᵀ over j), then columns (Gᵀ over i).
        let rows: [[ops::V; 3]; PATCH] =
            std::array::from_fn(|i| g_adj(std::array::from_fn(|j| at(i, j))));
        for b in 0..3 {
            let col = g_adj(std::array::from_fn(|i| rows[i][b]));
            for (a, v) in col.into_iter().enumerate() {
                scatter(&mut dw[3 * a + b..], 9, v);
            }
        }
    }

    /// One image row of `n_ch` channel planes (`img[ch * hw + at + x]`, `x < w`) channels last
    /// into `row [w, c]`. With `live` (a fused ReLU's output, laid out as `img`) the values
    /// where it is not positive are zero; with `sums` each channel's values are added to it.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn row_to_channels_last(
        (img, live): (&[f32], Option<&[f32]>),
        (at, hw, n_ch, w): (usize, usize, usize, usize),
        row: &mut [f32],
        c: usize,
        mut sums: Option<&mut [f32]>,
    ) {
        let zero = _mm512_setzero_ps();
        for x in 0..w {
            for c0 in (0..n_ch).step_by(LANES) {
                let n = LANES.min(n_ch - c0);
                let from = c0 * hw + at + x;
                let mut v = gather(&img[from..], hw, n);
                if let Some(l) = live {
                    let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(gather(&l[from..], hw, n), zero);
                    v = _mm512_maskz_mov_ps(keep, v);
                }
                ops::st(&mut row[x * c + c0..], v);
                if let Some(s) = sums.as_deref_mut() {
                    let sum = _mm512_add_ps(ops::ld(&s[c0..]), v);
                    ops::st(&mut s[c0..], sum);
                }
            }
        }
    }

    /// The reverse: `row [w, c]` (channels last) into the first `n_ch` channel planes at
    /// `img[ch * hw + at + x]`, plus `bias[ch]` and clamped at zero when `relu`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn row_to_planes(
        (row, c): (&[f32], usize),
        img: &mut [f32],
        (at, hw, n_ch, w): (usize, usize, usize, usize),
        bias: Option<&[f32]>,
        relu: bool,
    ) {
        for ch in 0..n_ch {
            let shift = _mm512_set1_ps(bias.map_or(0.0, |b| b[ch]));
            for x0 in (0..w).step_by(LANES) {
                let n = LANES.min(w - x0);
                let mut v = _mm512_add_ps(gather(&row[x0 * c + ch..], c, n), shift);
                if relu {
                    v = _mm512_max_ps(v, _mm512_setzero_ps());
                }
                let dst = &mut img[ch * hw + at + x0..][..n];
                // SAFETY: the lanes under the mask write `dst[k]`, `k < n = dst.len()`.
                unsafe {
                    _mm512_mask_storeu_ps(dst.as_mut_ptr(), ((1u32 << n) - 1) as __mmask16, v)
                }
            }
        }
    }

    /// Calls `f(base, at)` for every 16-channel block of the tiles `t0..t0 + tw` of a tile row:
    /// `base` is the block's offset in its strip at the tile's first pixel, `at` in the planes.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn each_block(l: Layout, tw: usize, t0: usize, mut f: impl FnMut(usize, usize)) {
        for tx in 0..tw {
            for cb in (0..l.c).step_by(LANES) {
                f(TILE * tx * l.c + cb, (t0 + tx) * l.c + cb);
            }
        }
    }

    /// The first `N` pixels of strip row `r` from `base`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pixels<const N: usize>(strip: &[f32], l: Layout, base: usize, r: usize) -> [ops::V; N] {
        std::array::from_fn(|q| ops::ld(&strip[base + r * l.row + q * l.c..]))
    }

    /// Rows of a small matrix of vectors as its columns.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn transpose<const R: usize, const C: usize>(a: [[ops::V; C]; R]) -> [[ops::V; R]; C] {
        std::array::from_fn(|j| std::array::from_fn(|i| a[i][j]))
    }

    /// `V = Bᵀ d B` of the `tw` tiles of one tile row, from its six padded rows (`strip`,
    /// channels last), into the planes `v` at tiles `t0..t0 + tw`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn input_row(strip: &[f32], l: Layout, tw: usize, v: &mut [f32], t0: usize) {
        use ops::*;
        each_block(l, tw, t0, |base, at| {
            let across: [[V; PATCH]; PATCH] =
                std::array::from_fn(|r| bt_fwd(pixels(strip, l, base, r)));
            for (j, col) in transpose(across).into_iter().enumerate() {
                put_column(v, l, at, j, bt_fwd(col));
            }
        });
    }

    /// `B dV Bᵀ` of the tiles `t0..t0 + tw` of `dv`, added into their patches of the six padded
    /// rows `strip` (channels last).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn input_grad_row(dv: &[f32], l: Layout, tw: usize, t0: usize, strip: &mut [f32]) {
        use ops::*;
        each_block(l, tw, t0, |base, at| {
            let down: [[V; PATCH]; PATCH] = std::array::from_fn(|j| bt_adj(column(dv, l, at, j)));
            for (r, row) in transpose(down).into_iter().enumerate() {
                for (q, x) in bt_adj(row).into_iter().enumerate() {
                    add_to(&mut strip[base + r * l.row + q * l.c..], x);
                }
            }
        });
    }

    /// `Y = Aᵀ M A` of the tiles `t0..t0 + tw` of `m` into the tile row's four output rows
    /// (`strip`, channels last).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn output_row(m: &[f32], l: Layout, tw: usize, t0: usize, strip: &mut [f32]) {
        use ops::*;
        each_block(l, tw, t0, |base, at| {
            let down: [[V; TILE]; PATCH] = std::array::from_fn(|j| at_fwd(column(m, l, at, j)));
            for (dr, row) in transpose(down).into_iter().enumerate() {
                for (dc, x) in at_fwd(row).into_iter().enumerate() {
                    st(&mut strip[base + dr * l.row + dc * l.c..], x);
                }
            }
        });
    }

    /// `dM = A dY Aᵀ` of the tile row's four output-gradient rows (`strip`, channels last) into
    /// the planes `dm` at tiles `t0..t0 + tw`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub fn output_grad_row(strip: &[f32], l: Layout, tw: usize, dm: &mut [f32], t0: usize) {
        use ops::*;
        each_block(l, tw, t0, |base, at| {
            let across: [[V; PATCH]; TILE] =
                std::array::from_fn(|dr| at_adj(pixels(strip, l, base, dr)));
            for (j, col) in transpose(across).into_iter().enumerate() {
                put_column(dm, l, at, j, at_adj(col));
            }
        });
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn row_to_channels_last(
        _: (&[f32], Option<&[f32]>),
        _: (usize, usize, usize, usize),
        _: &mut [f32],
        _: usize,
        _: Option<&mut [f32]>,
    ) {
        unreachable!("Winograd convolutions need AVX-512")
    }
    #[cfg(not(target_arch = "x86_64"))]
    pub fn row_to_planes(
        _: (&[f32], usize),
        _: &mut [f32],
        _: (usize, usize, usize, usize),
        _: Option<&[f32]>,
        _: bool,
    ) {
        unreachable!("Winograd convolutions need AVX-512")
    }
    #[cfg(not(target_arch = "x86_64"))]
    pub fn input_row(_: &[f32], _: Layout, _: usize, _: &mut [f32], _: usize) {
        unreachable!("Winograd convolutions need AVX-512")
    }
    #[cfg(not(target_arch = "x86_64"))]
    pub fn input_grad_row(_: &[f32], _: Layout, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("Winograd convolutions need AVX-512")
    }
    #[cfg(not(target_arch = "x86_64"))]
    pub fn output_row(_: &[f32], _: Layout, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("Winograd convolutions need AVX-512")
    }
    #[cfg(not(target_arch = "x86_64"))]
    pub fn output_grad_row(_: &[f32], _: Layout, _: usize, _: &mut [f32], _: usize) {
        unreachable!("Winograd convolutions need AVX-512")
    }
    #[cfg(not(target_arch = "x86_64"))]
    pub fn weight_block(_: &[f32], _: &mut [std::mem::MaybeUninit<f32>], _: usize) {
        unreachable!("Winograd convolutions need AVX-512")
    }
    #[cfg(not(target_arch = "x86_64"))]
    pub fn weight_grad_block(_: &[f32], _: usize, _: &mut [f32]) {
        unreachable!("Winograd convolutions need AVX-512")
    }
}

/// Pixels of a padded strip row: the tiles' columns and the two their last patch reaches past.
fn strip_width(g: &ConvGeom) -> usize {
    TILE * tiles(g).1 + PATCH - TILE
}

/// Padded rows `r0 + from..r0 + 6` of one image `[C, H, W]`, channels last, into rows `from..6` of
/// `strip [6, strip_width, C]` (padded pixel `(r, q)` is image pixel `(r - 1, q - 1)`), 16 channels
/// of one pixel per gather.
fn padded_rows(img: &[f32], g: &ConvGeom, r0: usize, from: usize, strip: &mut [f32]) {
    let c = g.c_in;
    let pw = strip_width(g);
    let hw = g.h * g.w;
    for (dr, row) in strip.chunks_exact_mut(pw * c).enumerate().skip(from) {
        row.fill(0.0);
        let Some(y) = (r0 + dr).checked_sub(1).filter(|y| *y < g.h) else {
            continue;
        };
        let row = &mut row[c..(g.w + 1) * c];
        let dims = (y * g.w, hw, c, g.w);
        simd_call!(row_to_channels_last((img, None), dims, row, c, None));
    }
}

/// `V = Bᵀ d B` of every tile of the images `x` (a block) into the position planes `v`.
fn transform_input(x: &[f32], g: &ConvGeom, v: &mut [f32], stride: usize, strip: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (c, pw) = (g.c_in, strip_width(g));
    let strip = &mut strip[..PATCH * pw * c];
    let l = simd::Layout {
        c,
        stride,
        row: pw * c,
    };
    for (b, img) in x.chunks_exact(g.in_len()).enumerate() {
        for ty in 0..th {
            if ty == 0 {
                padded_rows(img, g, 0, 0, strip);
            } else {
                // Padded rows 4 ty and 4 ty + 1 were the last tile row's bottom two.
                strip.copy_within(TILE * pw * c.., 0);
                padded_rows(img, g, TILE * ty, PATCH - TILE, strip);
            }
            simd_call!(input_row(strip, l, tw, v, (b * th + ty) * tw));
        }
    }
}

/// The images' input gradient `dx [n, C_in, H, W]` from `dv` (the position planes): each tile's
/// `B dV Bᵀ` added into its patch of the padded rows, which are copied out (transposed back to
/// channel planes) once no later tile row adds to them.
fn input_grad_from_transformed(
    dv: &[f32],
    g: &ConvGeom,
    stride: usize,
    strip: &mut [f32],
    dx: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let (c, pw) = (g.c_in, strip_width(g));
    let strip = &mut strip[..PATCH * pw * c];
    let l = simd::Layout {
        c,
        stride,
        row: pw * c,
    };
    let carried = (PATCH - TILE) * pw * c;
    for (b, img) in dx.chunks_exact_mut(g.in_len()).enumerate() {
        strip.fill(0.0);
        for ty in 0..th {
            simd_call!(input_grad_row(dv, l, tw, (b * th + ty) * tw, strip));
            // Padded rows 4 ty to 4 ty + 3 are complete; rows 4 and 5 carry over as the next
            // tile row's 0 and 1.
            finished_rows(strip, g, TILE * ty, img);
            strip.copy_within(TILE * pw * c.., 0);
            strip[carried..].fill(0.0);
        }
        // The last two padded rows (zero rows past the map are skipped).
        finished_rows(strip, g, TILE * th, img);
    }
}

/// The strip's first four rows (padded rows `r0..r0 + 4`, channels last) into the image's channel
/// planes `img [C, H, W]`, where they are image rows.
fn finished_rows(strip: &[f32], g: &ConvGeom, r0: usize, img: &mut [f32]) {
    let c = g.c_in;
    let pw = strip_width(g);
    let hw = g.h * g.w;
    for dr in 0..TILE {
        let Some(y) = (r0 + dr).checked_sub(1).filter(|y| *y < g.h) else {
            continue;
        };
        let row = &strip[dr * pw * c + c..][..g.w * c];
        let dims = (y * g.w, hw, c, g.w);
        simd_call!(row_to_planes((row, c), img, dims, None, false));
    }
}

/// Values of a strip: six padded rows, channels last, for the widest channel count.
fn strip_len(g: &ConvGeom) -> usize {
    PATCH * strip_width(g) * g.c_in.max(out_lanes(g))
}

/// Forward pass of one rayon task's images `x` into `y`, with `u` the transformed weights, then
/// the bias and ReLU. Scratch: `v` and `m` as `scratch_lens` sizes them.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_task(
    x: &[f32],
    u: &[f32],
    g: &ConvGeom,
    y: &mut [f32],
    (v, m): (&mut [f32], &mut [f32]),
    par: Parallelism,
    bias: Option<&[f32]>,
    relu: bool,
) {
    let (th, tw) = tiles(g);
    let per_block = block_images(g);
    let mut strip = vec![0f32; strip_len(g)];
    let blocks = x
        .chunks(per_block * g.in_len())
        .zip(y.chunks_mut(per_block * g.out_len()));
    for (xb, yb) in blocks {
        let t_len = xb.len() / g.in_len() * th * tw;
        let cp = out_lanes(g);
        let (cv, cm) = (g.c_in * t_len, cp * t_len);
        let (cu, su) = weight_plane(g);
        let (sv, sm) = (plane_stride(cv), plane_stride(cm));
        transform_input(xb, g, v, sv, &mut strip);
        for k in 0..POSITIONS {
            // M_k [T, out_lanes] = V_k [T, C_in] · U_kᵀ.
            let dims = (t_len, cp, g.c_in);
            let (uk, vk) = (&u[k * su..][..cu], &v[k * sv..][..cv]);
            let mk = &mut m[k * sm..][..cm];
            matmul(
                mk,
                dims,
                Mat::rm(vk, g.c_in),
                Mat::tr(uk, g.c_in),
                false,
                par,
            );
        }
        transform_output(m, g, sm, yb, &mut strip, bias, relu);
    }
}

/// `Y = Aᵀ M A` of every tile, plus the bias and ReLU, written into the images `y [n, C_out,
/// H_out, W_out]` through `strip` (one tile row's four output rows, channels last).
fn transform_output(
    m: &[f32],
    g: &ConvGeom,
    stride: usize,
    y: &mut [f32],
    strip: &mut [f32],
    bias: Option<&[f32]>,
    relu: bool,
) {
    let (th, tw) = tiles(g);
    let c = out_lanes(g);
    let (hw, sw) = (g.h_out * g.w_out, TILE * tw);
    let strip = &mut strip[..TILE * sw * c];
    let l = simd::Layout {
        c,
        stride,
        row: sw * c,
    };
    for (b, img) in y.chunks_exact_mut(g.out_len()).enumerate() {
        for ty in 0..th {
            simd_call!(output_row(m, l, tw, (b * th + ty) * tw, strip));
            // The strip into the channel planes, row by row, with the bias and ReLU.
            for dr in 0..TILE.min(g.h_out - TILE * ty) {
                let row = &strip[dr * sw * c..(dr + 1) * sw * c];
                let oy = TILE * ty + dr;
                let dims = (oy * g.w_out, hw, g.c_out, g.w_out);
                simd_call!(row_to_planes((row, c), img, dims, bias, relu));
            }
        }
    }
}

/// Where one task's backward pass writes: its partial transformed weight gradient `du [36, C_out,
/// C_in]` (overwritten, not added to), its partial bias gradient (added to), and its images' input
/// gradients.
pub(super) struct TaskGrads<'a> {
    pub du: Option<&'a mut [f32]>,
    pub db: Option<&'a mut [f64]>,
    pub dx: Option<&'a mut [f32]>,
}

/// `dM = A dY Aᵀ` of every tile of the block's output gradient `dy` (masked where a fused ReLU's
/// output `relu_out` was clamped) into the position planes `dm`, adding each channel's gradient
/// sum to `db`. Each tile row's four gradient rows are first copied channels last into `strip`.
fn transform_output_grad(
    (dy, relu_out): (&[f32], Option<&[f32]>),
    g: &ConvGeom,
    dm: &mut [f32],
    stride: usize,
    strip: &mut [f32],
    db: Option<&mut [f64]>,
) {
    let (th, tw) = tiles(g);
    let (c, hw, ol) = (out_lanes(g), g.h_out * g.w_out, g.out_len());
    let sw = TILE * tw;
    let strip = &mut strip[..TILE * sw * c];
    let l = simd::Layout {
        c,
        stride,
        row: sw * c,
    };
    let mut total = vec![0f64; g.c_out];
    // One tile row's gradient sums per channel, in f32 (then added to `total`).
    let mut sums = vec![0f32; c];
    // Channels past C_out (and pixels past the map's side) stay zero.
    strip.fill(0.0);
    for (b, img) in dy.chunks_exact(ol).enumerate() {
        let live = relu_out.map(|r| &r[b * ol..(b + 1) * ol]);
        for ty in 0..th {
            if g.h_out - TILE * ty < TILE {
                // A last tile row reaching past the map: its missing rows are zero.
                strip.fill(0.0);
            }
            for dr in 0..TILE.min(g.h_out - TILE * ty) {
                let oy = TILE * ty + dr;
                let row = &mut strip[dr * sw * c..(dr + 1) * sw * c];
                let dims = (oy * g.w_out, hw, g.c_out, g.w_out);
                let sums = Some(&mut sums[..]);
                simd_call!(row_to_channels_last((img, live), dims, row, c, sums));
            }
            simd_call!(output_grad_row(strip, l, tw, dm, (b * th + ty) * tw));
            for (t, s) in total.iter_mut().zip(&mut sums) {
                *t += f64::from(std::mem::take(s));
            }
        }
    }
    if let Some(db) = db {
        db.iter_mut().zip(&total).for_each(|(d, t)| *d += t);
    }
}

/// Backward pass of one rayon task's images: `x` and `dy` (masked where a fused ReLU's output
/// `relu_out` was clamped), `u` the transformed weights (needed for the input gradient).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_task(
    x: &[f32],
    u: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    g: &ConvGeom,
    (v, dm): (&mut [f32], &mut [f32]),
    par: Parallelism,
    mut out: TaskGrads,
) {
    let (th, tw) = tiles(g);
    let per_block = block_images(g);
    let (il, ol) = (g.in_len(), g.out_len());
    let n = x.len() / il;
    let mut strip = vec![0f32; strip_len(g)];
    for (bi, a) in (0..n).step_by(per_block).enumerate() {
        let b_end = (a + per_block).min(n);
        let t_len = (b_end - a) * th * tw;
        let cp = out_lanes(g);
        let (cv, cm) = (g.c_in * t_len, cp * t_len);
        let (cu, su) = weight_plane(g);
        let (sv, sm) = (plane_stride(cv), plane_stride(cm));
        let dyb = (
            &dy[a * ol..b_end * ol],
            relu_out.map(|r| &r[a * ol..b_end * ol]),
        );
        transform_output_grad(dyb, g, dm, sm, &mut strip, out.db.as_deref_mut());
        if let Some(du) = out.du.as_deref_mut() {
            transform_input(&x[a * il..b_end * il], g, v, sv, &mut strip);
            for k in 0..POSITIONS {
                // dU_k [out_lanes, C_in] += dM_kᵀ · V_k.
                let dims = (cp, g.c_in, t_len);
                let (dmk, vk) = (&dm[k * sm..][..cm], &v[k * sv..][..cv]);
                let duk = MatMut::rm(&mut du[k * su..][..cu], g.c_in);
                matmul_into(
                    duk,
                    dims,
                    Mat::tr(dmk, cp),
                    Mat::rm(vk, g.c_in),
                    bi > 0,
                    par,
                );
            }
        }
        if let Some(dx) = out.dx.as_deref_mut() {
            // dV_k [T, C_in] = dM_k · U_k, into the transformed input's buffer (no longer needed).
            for k in 0..POSITIONS {
                let dims = (t_len, g.c_in, cp);
                let (uk, dmk) = (&u[k * su..][..cu], &dm[k * sm..][..cm]);
                let dvk = &mut v[k * sv..][..cv];
                matmul(dvk, dims, Mat::rm(dmk, cp), Mat::rm(uk, g.c_in), false, par);
            }
            let dxb = &mut dx[a * il..b_end * il];
            input_grad_from_transformed(v, g, sv, &mut strip, dxb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Bᵀ` and `Aᵀ` of F(4x4, 3x3), as the vector transforms in `simd` apply them.
    const BT: [[f64; PATCH]; PATCH] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const AT: [[f64; PATCH]; TILE] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];

    /// `a b` of small f64 matrices given as rows.
    fn mul<const R: usize, const K: usize, const C: usize>(
        a: &[[f64; K]; R],
        b: &[[f64; C]; K],
    ) -> [[f64; C]; R] {
        std::array::from_fn(|i| std::array::from_fn(|j| (0..K).map(|k| a[i][k] * b[k][j]).sum()))
    }

    fn tr<const R: usize, const C: usize>(a: &[[f64; C]; R]) -> [[f64; R]; C] {
        std::array::from_fn(|j| std::array::from_fn(|i| a[i][j]))
    }

    /// The closed form the scheme rests on: `Aᵀ ((G g Gᵀ) ⊙ (Bᵀ d B)) A` is the 4x4 correlation of
    /// a 6x6 patch `d` with a 3x3 filter `g`, in f64 (to rounding).
    #[test]
    fn the_matrices_compute_the_correlation_of_a_tile() {
        // `G` in f64: the f32 constant's entries are n / 24 (n = 6, -4, 4, 1, 2, 24) to rounding.
        let gm: [[f64; 3]; PATCH] = G.map(|r| r.map(|x| (f64::from(x) * 24.0).round() / 24.0));
        let d: [[f64; PATCH]; PATCH] =
            std::array::from_fn(|i| std::array::from_fn(|j| ((i * 7 + j * 3) % 11) as f64 - 5.0));
        let f: [[f64; 3]; 3] =
            std::array::from_fn(|i| std::array::from_fn(|j| ((i * 5 + j) % 7) as f64 * 0.3 - 0.8));
        let u = mul(&mul(&gm, &f), &tr(&gm));
        let v = mul(&mul(&BT, &d), &tr(&BT));
        let m: [[f64; PATCH]; PATCH] =
            std::array::from_fn(|i| std::array::from_fn(|j| u[i][j] * v[i][j]));
        let y = mul(&mul(&AT, &m), &tr(&AT));
        for r in 0..TILE {
            for c in 0..TILE {
                let want: f64 = (0..9)
                    .map(|t| d[r + t / 3][c + t % 3] * f[t / 3][t % 3])
                    .sum();
                assert!(
                    (y[r][c] - want).abs() < 1e-9,
                    "({r}, {c}): {} vs {want}",
                    y[r][c]
                );
            }
        }
    }

    /// The vector 1-D transforms against the matrices: `bt_fwd` and `at_fwd` are `Bᵀ v` and `Aᵀ
    /// v`, `bt_adj` and `at_adj` their transposes, lane by lane.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_transforms_apply_the_matrices() {
        use simd::ops::{ld, st, V};
        if !simd::available() {
            return;
        }
        let val = |i: usize| ((i * 2654435761) % 1000) as f32 / 250.0 - 2.0;
        // Input `i`'s lanes: its values for 16 separate vectors.
        let lanes = |n: usize| -> Vec<[f32; 16]> {
            (0..n)
                .map(|i| std::array::from_fn(|l| val(16 * i + l)))
                .collect()
        };
        // SAFETY (both): AVX-512F is present (checked above).
        let load = |x: &[f32; 16]| -> V { unsafe { ld(x) } };
        let store = |v: V| -> [f32; 16] {
            let mut x = [0f32; 16];
            unsafe { st(&mut x, v) };
            x
        };
        fn check<const I: usize, const O: usize>(
            name: &str,
            m: &[[f64; I]; O],
            inputs: &[[f32; 16]],
            outputs: &[[f32; 16]],
        ) {
            for l in 0..16 {
                for (o, row) in m.iter().enumerate() {
                    let want: f64 = (0..I).map(|i| row[i] * inputs[i][l] as f64).sum();
                    let got = outputs[o][l] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{name} {o} {l}"
                    );
                }
            }
        }
        let x6 = lanes(PATCH);
        let x4 = lanes(TILE);
        let v6: [V; PATCH] = std::array::from_fn(|i| load(&x6[i]));
        let v4: [V; TILE] = std::array::from_fn(|i| load(&x4[i]));
        // SAFETY: AVX-512F is present (checked above).
        let (bf, ba, af, aa) = unsafe {
            (
                simd::ops::bt_fwd(v6),
                simd::ops::bt_adj(v6),
                simd::ops::at_fwd(v6),
                simd::ops::at_adj(v4),
            )
        };
        check("Bᵀ", &BT, &x6, &bf.map(store));
        check("B", &tr(&BT), &x6, &ba.map(store));
        check("Aᵀ", &AT, &x6, &af.map(store));
        check("A", &tr(&AT), &x4, &aa.map(store));
    }

    /// The vector weight transforms (16 filters per call, padded output channels) against the
    /// scalar 1-D transforms applied filter by filter.
    #[test]
    fn weight_transforms_match_the_scalar_ones() {
        if !simd::available() {
            return;
        }
        // 20 output channels: out_lanes 32, so 12 padded rows of zeros.
        let g = ConvGeom::new(&[1, 32, 8, 8], &[20, 32, 3, 3], 1, 1).unwrap();
        let val = |i: usize, s: usize| ((i * 2654435761 + s) % 1000) as f32 / 500.0 - 1.0;
        let w: Vec<f32> = (0..20 * 32 * 9).map(|i| val(i, 7)).collect();
        let (plane, stride) = weight_plane(&g);
        assert_eq!(plane, 32 * 32);
        let u = transform_weights(&w, &g);
        let du: Vec<f32> = (0..POSITIONS * stride).map(|i| val(i, 3)).collect();
        let dw = weights_from_transformed(&du, &g);
        assert_eq!((u.len(), dw.len()), (POSITIONS * stride, w.len()));
        for o in 0..32 {
            for ci in 0..32 {
                let p = o * 32 + ci;
                let (mut want_u, mut want_dw) = ([0f32; POSITIONS], [0f32; 9]);
                if o < 20 {
                    let f = &w[p * 9..][..9];
                    let cols: [[f32; PATCH]; 3] =
                        std::array::from_fn(|j| g_fwd([f[j], f[3 + j], f[6 + j]]));
                    for i in 0..PATCH {
                        let row = g_fwd([cols[0][i], cols[1][i], cols[2][i]]);
                        (0..PATCH).for_each(|j| want_u[PATCH * j + i] = row[j]);
                    }
                    let at = |i: usize, j: usize| du[(PATCH * j + i) * stride + p];
                    let rows: [[f32; 3]; PATCH] =
                        std::array::from_fn(|i| g_adj(std::array::from_fn(|j| at(i, j))));
                    for b in 0..3 {
                        let col = g_adj(std::array::from_fn(|i| rows[i][b]));
                        (0..3).for_each(|a| want_dw[3 * a + b] = col[a]);
                    }
                    let got = &dw[p * 9..][..9];
                    for (t, (x, y)) in got.iter().zip(&want_dw).enumerate() {
                        assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "dw {o} {ci} {t}");
                    }
                }
                for (k, want) in want_u.iter().enumerate() {
                    let got = u[k * stride + p];
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "u {o} {ci} {k}"
                    );
                }
            }
        }
    }
}
