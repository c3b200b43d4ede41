//! The shifted products of `shifted` as one AVX-512 kernel instead of one `gemm` call per tap.
//!
//! A shifted convolution sums `kh * kw` products `Y += W_t · X[·, q + off_t]`, each `k = C_in`
//! deep. On the 16x16 maps that carry most of the model's arithmetic (the P3 heads), `gemm`
//! packs both operands and reloads the output tile on every tap, and reached ~40% of the sgemm
//! peak there. This kernel keeps an output tile of `MR` rows by `NV` vectors in registers through
//! all taps and channels and reads the padded planes in place: the weights are rearranged once per
//! call into the order the kernel broadcasts them (`pack`), and nothing else is copied.

/// Output rows per register tile.
pub(super) const MR: usize = 4;
/// 16-float vectors per register tile row.
const NV: usize = 4;
const NR: usize = 16 * NV;

thread_local! {
    /// Set by tests on the calling thread to run the `gemm` products instead (the choice is made
    /// once per convolution call, on the thread that calls it).
    static GEMM_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether convolutions called from this thread use the kernel.
pub(super) fn enabled() -> bool {
    available() && !GEMM_ONLY.with(|c| c.get())
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

/// Length of a packed operand for `m` output rows, `taps` taps and depth `k`.
pub(super) fn packed_len(m: usize, taps: usize, k: usize) -> usize {
    m.div_ceil(MR) * taps * k * MR
}

/// Packs `a(row, t, kk)` (the weight of output row `row`, tap `t`, input row `kk`) as
/// `[row block][tap][kk][MR]`, rows past `m` zero.
pub(super) fn pack(
    m: usize,
    taps: usize,
    k: usize,
    a: impl Fn(usize, usize, usize) -> f32,
    dst: &mut [f32],
) {
    for (blk, bd) in dst[..packed_len(m, taps, k)]
        .chunks_exact_mut(taps * k * MR)
        .enumerate()
    {
        for (t, td) in bd.chunks_exact_mut(k * MR).enumerate() {
            for (kk, kd) in td.chunks_exact_mut(MR).enumerate() {
                for (i, v) in kd.iter_mut().enumerate() {
                    let row = blk * MR + i;
                    *v = if row < m { a(row, t, kk) } else { 0.0 };
                }
            }
        }
    }
}

/// `out[r * ldo + q] = Σ_t Σ_kk a(r, t, kk) · b[kk * ldb + offs[t] + q]` for rows `r < m` and
/// columns `q < n`, with `a` packed by `pack(m, offs.len(), k, ..)`.
///
/// Panics unless every read and write lies inside `b` and `out`.
pub(super) fn shifted_sum(
    a: &[f32],
    b: &[f32],
    ldb: usize,
    offs: &[usize],
    out: &mut [f32],
    ldo: usize,
    (m, k, n): (usize, usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let taps = offs.len();
    assert!(
        a.len() >= packed_len(m, taps, k),
        "packed operand too short"
    );
    let max_off = offs.iter().copied().max().unwrap_or(0);
    assert!(
        k == 0 || (k - 1) * ldb + max_off + n <= b.len(),
        "shifted operand too short"
    );
    assert!((m - 1) * ldo + n <= out.len(), "output too short");
    assert!(available(), "shifted_sum needs AVX-512");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (checked above) and every access is in bounds (checked
    // above: loads and stores past column `n` are masked off).
    unsafe {
        avx512::shifted_sum(a, b, ldb, offs, out, ldo, (m, k, n))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR, NV};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn shifted_sum(
        a: &[f32],
        b: &[f32],
        ldb: usize,
        offs: &[usize],
        out: &mut [f32],
        ldo: usize,
        (m, k, n): (usize, usize, usize),
    ) {
        let taps = offs.len();
        let (ap, bp, op) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let mut q0 = 0;
        while q0 < n {
            let cols = (n - q0).min(NR);
            let mut masks = [0 as __mmask16; NV];
            for (v, mk) in masks.iter_mut().enumerate() {
                let c = cols.saturating_sub(16 * v).min(16);
                *mk = ((1u32 << c) - 1) as __mmask16;
            }
            for blk in 0..m.div_ceil(MR) {
                let mut acc = [[_mm512_setzero_ps(); NV]; MR];
                let mut apk = ap.add(blk * taps * k * MR);
                for &off in offs {
                    let mut bq = bp.add(off + q0);
                    for _ in 0..k {
                        let mut bv = [_mm512_setzero_ps(); NV];
                        for v in 0..NV {
                            bv[v] = _mm512_maskz_loadu_ps(masks[v], bq.add(16 * v));
                        }
                        for (i, row) in acc.iter_mut().enumerate() {
                            let av = _mm512_set1_ps(*apk.add(i));
                            for v in 0..NV {
                                row[v] = _mm512_fmadd_ps(av, bv[v], row[v]);
                            }
                        }
                        apk = apk.add(MR);
                        bq = bq.add(ldb);
                    }
                }
                let rows = (m - blk * MR).min(MR);
                for (i, row) in acc.iter().enumerate().take(rows) {
                    let dst = op.add((blk * MR + i) * ldo + q0);
                    for v in 0..NV {
                        _mm512_mask_storeu_ps(dst.add(16 * v), masks[v], row[v]);
                    }
                }
            }
            q0 += NR;
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
        for &(m, k, n, ldb, ref offs) in &[
            (8usize, 4usize, 48usize, 60usize, vec![0usize, 1, 5]),
            (13, 7, 50, 70, vec![3, 0, 11, 2]),
            (1, 1, 1, 1, vec![0]),
            (
                20,
                9,
                97,
                120,
                (0..9).map(|t| (t / 3) * 10 + t % 3).collect(),
            ),
        ] {
            let taps = offs.len();
            let val = |i: usize, s: u64| ((i as u64 * 2654435761 + s) % 1000) as f32 / 500.0 - 1.0;
            let w: Vec<f32> = (0..m * taps * k).map(|i| val(i, 7)).collect();
            let a_of = |r: usize, t: usize, kk: usize| w[(r * taps + t) * k + kk];
            let blen = (k - 1) * ldb + offs.iter().max().unwrap() + n;
            let b: Vec<f32> = (0..blen).map(|i| val(i, 3)).collect();
            let mut packed = vec![0.0; packed_len(m, taps, k)];
            pack(m, taps, k, a_of, &mut packed);
            let ldo = n + 3;
            let mut out = vec![f32::NAN; (m - 1) * ldo + n];
            shifted_sum(&packed, &b, ldb, offs, &mut out, ldo, (m, k, n));
            for r in 0..m {
                for q in 0..n {
                    let mut s = 0f64;
                    for (t, off) in offs.iter().enumerate() {
                        for kk in 0..k {
                            s += a_of(r, t, kk) as f64 * b[kk * ldb + off + q] as f64;
                        }
                    }
                    let got = out[r * ldo + q] as f64;
                    assert!(
                        (got - s).abs() <= 1e-5 * (1.0 + s.abs()),
                        "m{m} k{k} n{n} r{r} q{q}: {got} vs {s}"
                    );
                }
            }
        }
    }
}
