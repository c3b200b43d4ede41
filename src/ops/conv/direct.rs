//! The shifted products of `shifted` as one AVX-512 kernel instead of one `gemm` call per tap.
//!
//! A shifted convolution sums `kh * kw` products `Y += W_t · X[·, q + off_t]`, each `k = C_in`
//! deep. `gemm` packs both operands and reloads the output tile on every tap; this kernel keeps an
//! output tile of `MR` rows by `NV` vectors in registers through all taps and channels, reads the
//! padded planes in place and broadcasts the weights straight from the weight tensor, so nothing
//! is copied. (Packing the weights first cost more than it saved: a 128-channel layer's weights
//! are repacked on every call, and on 8x8 maps a call holds little arithmetic.) The same kernel
//! computes the weight gradient with the output gradient as the broadcast operand and the padded
//! image, transposed, as the shifted one (`shifted::weight_grad_image_direct`).

use std::sync::atomic::{AtomicBool, Ordering};

/// Register tiles (output rows x 16-float vectors), 20-24 accumulators each; each call picks the
/// one whose column blocks waste the fewest lanes on its width (the first on a tie). (4, 5) is for
/// the 8x8 maps: their 80-column wide rows fill it exactly, where 48-column blocks waste a sixth.
const TILES: [(usize, usize); 4] = [(8, 3), (6, 4), (12, 2), (4, 5)];

thread_local! {
    /// Set by tests on the calling thread to run the `gemm` products instead (the choice is made
    /// once per convolution call, on the thread that calls it).
    static GEMM_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static SWITCHED_OFF: AtomicBool = AtomicBool::new(false);

/// Switches the kernel off (or back on) process-wide, for benchmarks against the `gemm` products.
pub fn set_switched_off(off: bool) {
    SWITCHED_OFF.store(off, Ordering::Relaxed);
}

/// Depth of one pass over a column block when the depth is channels (`Depth::Channels`): with
/// 128 channels a pass's slice of the planes and its rows of weights no longer fit in L1
/// together, and in blocks of 64 the 128-channel layers' forward and input-gradient products ran
/// 5-12% faster (`bench conv --threads 1`, Intel Xeon). The weight gradient's depth (pixels) ran
/// 3-5% slower in blocks, so it takes its whole depth in one pass.
const CHANNEL_BLOCK: usize = 64;

/// What the depth `k` of a `shifted_sum` runs over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Depth {
    /// Input or output channels (forward, input gradient): summed in blocks of `CHANNEL_BLOCK`.
    Channels,
    /// Pixels (weight gradient): summed in one pass.
    Pixels,
}

impl Depth {
    /// Depth summed per pass over a column block.
    fn block(self, k: usize) -> usize {
        match self {
            // A last block of under half a block would cost more passes than it saves.
            Depth::Channels if k > CHANNEL_BLOCK * 3 / 2 => CHANNEL_BLOCK,
            _ => k,
        }
    }
}

/// Whether convolutions called from this thread use the kernel.
pub(super) fn enabled() -> bool {
    available() && !SWITCHED_OFF.load(Ordering::Relaxed) && !GEMM_ONLY.with(|c| c.get())
}

/// Runs `f` with the kernel switched off on this thread.
#[cfg(test)]
pub(super) fn with_gemm_only<R>(f: impl FnOnce() -> R) -> R {
    GEMM_ONLY.with(|c| c.set(true));
    let r = f();
    GEMM_ONLY.with(|c| c.set(false));
    r
}

/// Whether the running CPU has the kernel's instructions.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The broadcast operand as the kernel reads it, in place: the weight of output row `r`, tap `t`
/// and input row `kk` is `data[r * rs + kk * ks + taps[t]]`. The forward pass and the input
/// gradient read the `[C_out, C_in, kh, kw]` weights with different strides and tap order; the
/// weight gradient reads the output gradient here, one tap at a time.
pub(super) struct Weights<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub ks: usize,
    pub taps: &'a [usize],
}

/// Where `shifted_sum` writes: rows `ld` apart; with `accumulate` it adds to what is there.
pub(super) struct Dst<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
    pub accumulate: bool,
}

/// `out[r * ld + q] (+)= Σ_t Σ_kk w(r, t, kk) · b[kk * ldb + offs[t] + q]` for rows `r < m` and
/// columns `q < n`; `w.taps` and `offs` have one entry per tap; `depth` says what `kk` runs over.
///
/// Panics unless every read and write lies inside `w.data`, `b` and `out.data`.
pub(super) fn shifted_sum(
    w: &Weights,
    b: &[f32],
    ldb: usize,
    offs: &[usize],
    out: Dst,
    (m, k, n): (usize, usize, usize),
    depth: Depth,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert_eq!(w.taps.len(), offs.len(), "one weight offset per tap");
    assert!((m - 1) * out.ld + n <= out.data.len(), "output too short");
    if k == 0 || offs.is_empty() {
        if !out.accumulate {
            for row in out.data.chunks_mut(out.ld).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let w_last = (m - 1) * w.rs + (k - 1) * w.ks + w.taps.iter().max().unwrap_or(&0);
    assert!(w_last < w.data.len(), "weights too short");
    let max_off = offs.iter().copied().max().unwrap_or(0);
    assert!(
        (k - 1) * ldb + max_off + n <= b.len(),
        "shifted operand too short"
    );
    assert!(available(), "shifted_sum needs AVX-512");
    let lanes = |nv: usize| n.div_ceil(16 * nv) * 16 * nv;
    let &(mr, nv) = TILES
        .iter()
        .min_by_key(|&&(_, nv)| lanes(nv))
        .expect("tiles");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present and every access is in bounds (both checked above: a tile's
    // rows past `m - 1` reread row `m - 1` and are not stored; loads and stores past column `n`
    // are masked off).
    unsafe {
        let args = (w, b, ldb, offs, out, (m, k, n), depth.block(k));
        match (mr, nv) {
            (8, 3) => avx512::shifted_sum::<8, 3>(args),
            (6, 4) => avx512::shifted_sum::<6, 4>(args),
            (4, 5) => avx512::shifted_sum::<4, 5>(args),
            _ => avx512::shifted_sum::<12, 2>(args),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (mr, nv);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Dst, Weights};
    use std::arch::x86_64::*;

    type Args<'a, 'b> = (
        &'a Weights<'a>,
        &'a [f32],
        usize,
        &'a [usize],
        Dst<'b>,
        (usize, usize, usize),
        usize,
    );

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn shifted_sum<const MR: usize, const NV: usize>(
        (w, b, ldb, offs, out, (m, k, n), kc): Args,
    ) {
        let (wp, bp, op) = (w.data.as_ptr(), b.as_ptr(), out.data.as_mut_ptr());
        let mut q0 = 0;
        while q0 < n {
            let cols = (n - q0).min(16 * NV);
            let mut masks = [0 as __mmask16; NV];
            for (v, mk) in masks.iter_mut().enumerate() {
                let c = cols.saturating_sub(16 * v).min(16);
                *mk = ((1u32 << c) - 1) as __mmask16;
            }
            for k0 in (0..k).step_by(kc) {
                let klen = kc.min(k - k0);
                let add = out.accumulate || k0 > 0;
                for r0 in (0..m).step_by(MR) {
                    let rows: [*const f32; MR] =
                        std::array::from_fn(|i| wp.add((r0 + i).min(m - 1) * w.rs));
                    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
                    for (&wt, &off) in w.taps.iter().zip(offs) {
                        let mut bq = bp.add(off + q0 + k0 * ldb);
                        let mut wk = wt + k0 * w.ks;
                        for _ in 0..klen {
                            let mut bv = [_mm512_setzero_ps(); NV];
                            for v in 0..NV {
                                bv[v] = _mm512_maskz_loadu_ps(masks[v], bq.add(16 * v));
                            }
                            for (row, &rp) in acc.iter_mut().zip(&rows) {
                                let av = _mm512_set1_ps(*rp.add(wk));
                                for v in 0..NV {
                                    row[v] = _mm512_fmadd_ps(av, bv[v], row[v]);
                                }
                            }
                            wk += w.ks;
                            bq = bq.add(ldb);
                        }
                    }
                    for (i, row) in acc.iter().enumerate().take(m - r0) {
                        let dst = op.add((r0 + i) * out.ld + q0);
                        for v in 0..NV {
                            let mut val = row[v];
                            if add {
                                let old = _mm512_maskz_loadu_ps(masks[v], dst.add(16 * v));
                                val = _mm512_add_ps(val, old);
                            }
                            _mm512_mask_storeu_ps(dst.add(16 * v), masks[v], val);
                        }
                    }
                }
            }
            q0 += 16 * NV;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel against the sum written out, over tails in every dimension.
    #[test]
    fn matches_the_plain_sum() {
        if !available() {
            return;
        }
        let cases = [
            // Widths 48, 64, 32 and 80 pick each register tile; the others leave tails.
            (8usize, 4usize, 48usize, 60usize, vec![0usize, 1, 5]),
            (11, 5, 80, 90, vec![0, 1, 10, 11]),
            (13, 7, 64, 70, vec![3, 0, 11, 2]),
            (25, 3, 32, 40, vec![1, 0]),
            (13, 7, 50, 70, vec![3, 0, 11, 2]),
            (1, 1, 1, 1, vec![0]),
            (
                20,
                9,
                97,
                120,
                (0..9).map(|t| (t / 3) * 10 + t % 3).collect(),
            ),
            // Deeper than one channel block: summed in blocks of 64, 64 and 22.
            (9, 150, 40, 45, vec![0, 2]),
        ];
        for (&(m, k, n, ldb, ref offs), depth) in cases
            .iter()
            .flat_map(|c| [(c, Depth::Channels), (c, Depth::Pixels)])
        {
            let taps = offs.len();
            let val = |i: usize, s: u64| ((i as u64 * 2654435761 + s) % 1000) as f32 / 500.0 - 1.0;
            let w: Vec<f32> = (0..m * taps * k).map(|i| val(i, 7)).collect();
            // Rows of taps of depth: w(r, t, kk) = w[(r * taps + t) * k + kk].
            let tap_starts: Vec<usize> = (0..taps).map(|t| t * k).collect();
            let weights = Weights {
                data: &w,
                rs: taps * k,
                ks: 1,
                taps: &tap_starts,
            };
            let a_of = |r: usize, t: usize, kk: usize| w[(r * taps + t) * k + kk];
            let blen = (k - 1) * ldb + offs.iter().max().unwrap() + n;
            let b: Vec<f32> = (0..blen).map(|i| val(i, 3)).collect();
            let ldo = n + 3;
            let start: Vec<f32> = (0..(m - 1) * ldo + n).map(|i| val(i, 5)).collect();
            let mut out = vec![f32::NAN; start.len()];
            let dst = Dst {
                data: &mut out,
                ld: ldo,
                accumulate: false,
            };
            shifted_sum(&weights, &b, ldb, offs, dst, (m, k, n), depth);
            let mut added = start.clone();
            let dst = Dst {
                data: &mut added,
                ld: ldo,
                accumulate: true,
            };
            shifted_sum(&weights, &b, ldb, offs, dst, (m, k, n), depth);
            for r in 0..m {
                for q in 0..n {
                    let mut s = 0f64;
                    for (t, off) in offs.iter().enumerate() {
                        for kk in 0..k {
                            s += a_of(r, t, kk) as f64 * b[kk * ldb + off + q] as f64;
                        }
                    }
                    let i = r * ldo + q;
                    let (got, sum) = (out[i] as f64, added[i] as f64);
                    let s_added = s + start[i] as f64;
                    assert!(
                        (got - s).abs() <= 1e-5 * (1.0 + s.abs()),
                        "m{m} k{k} n{n} r{r} q{q}: {got} vs {s}"
                    );
                    assert!(
                        (sum - s_added).abs() <= 1e-5 * (1.0 + s_added.abs()),
                        "accumulated, m{m} k{k} n{n} r{r} q{q}: {sum} vs {s_added}"
                    );
                }
            }
        }
    }
}
