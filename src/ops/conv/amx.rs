//! The shifted products in bf16 on Intel's AMX tiles, accumulated in f32: the opt-in
//! `model.conv_products = "bf16"` setting (PyTorch's CPU autocast computes convolutions the same
//! way).
//!
//! An AMX tile multiply (`tdpbf16ps`) adds the product of a 16 x 32 bf16 tile and a 32 x 16 one
//! to a 16 x 16 f32 tile: 16,384 flops per instruction, about 16 times what the AVX-512 f32
//! kernel of `direct` does per cycle. Each operand is rounded once to bf16 (8 significant bits;
//! the products and their sums stay f32), so the results differ from the f32 kernels by about
//! 2^-9 of the operands' magnitudes; training's AP is measured against the f32 runs' seed spread.
//!
//! Both operands are packed as pairs of bf16 along the depth (one `u32` per pair), the layout the
//! instruction reads: the first operand's rows hold a row's depth (`tile_sum`'s `A`), the second's
//! rows hold pairs of depth rows side by side (`B`). For the forward pass and the input gradient
//! the first operand is the activations (or output gradient) channels last, one row per position,
//! so that a tap's shift moves a tile by whole rows and every tile row starts on a cache line; the
//! weights are the second. For the weight gradient the output gradient is the first operand (depth
//! along its pixels) and the padded image the second, packed by pairs of positions once for even
//! and once for odd shifts.
//!
//! Rows, columns and depth are computed in whole tiles: the packed operands are zero past the
//! depth, and the output rows and columns past the valid ones are computed and not stored (each
//! output row reads only its own row of the first operand).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use super::direct::Dst;

/// Rows and columns of an output tile, rows of an operand tile, pairs of depth per tile.
const T: usize = 16;
/// Depth of one tile multiply: 16 pairs.
const KT: usize = 32;

static ON: AtomicBool = AtomicBool::new(false);

/// The setting in force and how many holders share it.
static HELD: Mutex<(bool, usize)> = Mutex::new((false, 0));

/// The products' setting held for a piece of work (a training run, an evaluation); the last
/// holder to drop it turns bf16 products off again.
#[must_use = "the setting lasts while the guard lives"]
pub struct ProductsGuard(());

/// Holds bf16 (or f32) products process-wide while the guard lives. Fails where bf16 is asked
/// and the CPU (or Linux) gives no AMX, or where work running at the same time in this process
/// holds the other setting: the choice is process-wide, so runs that differ in it cannot share
/// a process.
pub fn hold_products(bf16: bool) -> Result<ProductsGuard, String> {
    if bf16 && !available() {
        return Err("bf16 products need a CPU with AMX-BF16 (Intel Xeon since Sapphire Rapids) and Linux 5.16 or later; this one has none".into());
    }
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if held.1 > 0 && held.0 != bf16 {
        let names = |b: bool| if b { "bf16" } else { "f32" };
        return Err(format!(
            "{} products asked while runs with {} products are in progress in this process; run them one after the other",
            names(bf16),
            names(held.0)
        ));
    }
    *held = (bf16, held.1 + 1);
    ON.store(bf16, Ordering::Relaxed);
    Ok(ProductsGuard(()))
}

impl Drop for ProductsGuard {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.1 -= 1;
        if held.1 == 0 {
            *held = (false, 0);
            ON.store(false, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// Set by tests on the calling thread to run the bf16 products there only (the choice is
    /// made once per convolution call, on the thread that calls it).
    static ON_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the shifted products of convolutions called from this thread run in bf16 on AMX.
pub(super) fn enabled() -> bool {
    ON.load(Ordering::Relaxed) || ON_HERE.with(|c| c.get())
}

/// Runs `f` with bf16 products on this thread (where the CPU has AMX).
#[cfg(test)]
pub(super) fn with_bf16<R>(f: impl FnOnce() -> R) -> R {
    ON_HERE.with(|c| c.set(available()));
    let r = f();
    ON_HERE.with(|c| c.set(false));
    r
}

/// Whether the CPU has AMX with bf16 and the kernel lets this process use its tile data (asked
/// once, on the first call).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            tiles::request()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// Round to the nearest bf16, ties to even (NaN stays NaN). Written without branches so that
/// the packing loops vectorize.
#[inline(always)]
pub(super) fn bf16(v: f32) -> u16 {
    let u = v.to_bits();
    let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16;
    let nan = (u & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (u >> 16) | 0x40 } else { rounded }) as u16
}

/// The value of a bf16.
#[cfg(test)]
pub(super) fn f32_of(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Two values as one interleaved pair: `lo` first in memory.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16(lo) as u32 | (bf16(hi) as u32) << 16
}

/// Values (bf16 pairs) per tile row: 64 bytes, one cache line.
const ROW: usize = 16;

/// The most packing buffers a thread keeps for reuse.
const MAX_POOLED: usize = 64;

thread_local! {
    /// Buffers of dropped `Packed`s, reused: fresh ones cost page faults on every call.
    static POOL: RefCell<Vec<Vec<u32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs a packer of `avx512` on x86-64 (AMX's CPUs all have AVX-512F), of `plain` elsewhere.
macro_rules! vector_or_plain {
    ($f:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` checked AVX-512F (asserted here); the packers check their bounds.
        unsafe {
            assert!(available(), "the packers run where the tiles do");
            avx512::$f($($arg),*)
        }
        #[cfg(not(target_arch = "x86_64"))]
        plain::$f($($arg),*)
    }};
}

/// An operand packed as bf16 pairs (one `u32` each, the lower half first), rows `row` pairs
/// apart, starting on a 64-byte boundary: a tile row that straddles two cache lines costs the
/// tile load about twice (measured: ~800 against ~2,250 GFLOP/s on one core).
pub(super) struct Packed {
    buf: Vec<u32>,
    start: usize,
    len: usize,
    row: usize,
}

impl Packed {
    /// `rows` rows of `row` pairs (a multiple of 16) holding stale values: the packers write
    /// every value.
    fn stale(rows: usize, row: usize) -> Self {
        debug_assert_eq!(row % ROW, 0, "rows of whole cache lines");
        let len = rows * row;
        let need = len + ROW;
        // The smallest pooled buffer that is large enough: growing one would copy it.
        let mut buf = POOL
            .with(|p| {
                let mut p = p.borrow_mut();
                let fit = (0..p.len())
                    .filter(|&i| p[i].capacity() >= need)
                    .min_by_key(|&i| p[i].capacity());
                fit.map(|i| p.swap_remove(i))
            })
            .unwrap_or_else(|| Vec::with_capacity(need));
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let start = buf.as_ptr().align_offset(64).min(ROW);
        Self {
            buf,
            start,
            len,
            row,
        }
    }

    fn data(&self) -> &[u32] {
        &self.buf[self.start..self.start + self.len]
    }

    fn data_mut(&mut self) -> &mut [u32] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// The row stride in pairs.
    pub(super) fn row(&self) -> usize {
        self.row
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            p.push(std::mem::take(&mut self.buf));
            // A pass keeps every weight tensor's packing until it ends (`shared_weights`): room
            // for all of them, so that the next pass reuses their buffers instead of allocating
            // and zero-filling new ones (with 8 this cost what the sharing saved).
            if p.len() > MAX_POOLED {
                // Keep the larger ones.
                let smallest = (0..p.len()).min_by_key(|&i| p[i].capacity());
                smallest.map(|i| p.swap_remove(i));
            }
        });
    }
}

/// Rounds up to whole tile blocks (two tiles: 32).
pub(super) fn blocks(n: usize) -> usize {
    n.div_ceil(2 * T) * 2 * T
}

/// Convolution weights `w [C_out, C_in, taps]` as the second operand, per tap: with `by_input`
/// the depth runs over input channels and the columns over output channels (the forward pass),
/// otherwise the other way round (the input gradient). Tap `t`'s pair row `d` holds depth `2d` and
/// `2d + 1` side by side at each column; depth rounded up to 32, rows `blocks(columns)` wide,
/// zero padded.
pub(super) fn pack_weights(
    w: &[f32],
    (c_out, c_in, taps): (usize, usize, usize),
    by_input: bool,
) -> Packed {
    let (k, n) = if by_input {
        (c_in, c_out)
    } else {
        (c_out, c_in)
    };
    // Where depth `kk`, column `j` of tap `t` sits in `w`: `kk * depth + j * column + t`.
    let (depth, column) = if by_input {
        (taps, c_in * taps)
    } else {
        (c_in * taps, taps)
    };
    let kp2 = k.div_ceil(KT) * KT / 2;
    let mut p = Packed::stale(taps * kp2, blocks(n));
    let row = p.row;
    let w = &w[..c_out * c_in * taps];
    vector_or_plain!(weights(
        w,
        (k, n, taps),
        (depth, column),
        p.data_mut(),
        (kp2, row)
    ));
    p
}

/// One group of planes as the packers read them: channel `c`'s value at position `pos`, zero at
/// and past `positions`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Planes<'a> {
    src: &'a [f32],
    /// From one channel to the next in `src`.
    ld: usize,
    positions: usize,
    /// `Some((h, w, pad))`: each channel of `src` an `h x w` image, read as if zero-padded by
    /// `pad` on every side into rows `w + 2 pad` wide (position `pos` is padded row
    /// `pos / (w + 2 pad)`, column `pos % (w + 2 pad)`); `None`: `src[c * ld + pos]`.
    image: Option<(usize, usize, usize)>,
}

impl<'a> Planes<'a> {
    /// Stored planes `src[(g * channels + c) * ld + pos]`, one `Planes` per group `g < groups`
    /// (the phases of a strided convolution).
    pub(super) fn stored(
        src: &'a [f32],
        ld: usize,
        (channels, positions): (usize, usize),
        groups: usize,
    ) -> Vec<Self> {
        (0..groups)
            .map(|g| Planes {
                src: &src[g * channels * ld..][..(channels - 1) * ld + positions],
                ld,
                positions,
                image: None,
            })
            .collect()
    }

    /// The images `src [channels, h, w]` read zero-padded by `pad`, `positions` long: the planes
    /// of a stride-1 convolution without the padded copy.
    pub(super) fn padded_image(
        src: &'a [f32],
        channels: usize,
        (h, w): (usize, usize),
        pad: usize,
        positions: usize,
    ) -> Self {
        Planes {
            src: &src[..channels * h * w],
            ld: h * w,
            positions,
            image: Some((h, w, pad)),
        }
    }

    /// Whether `src` holds `channels` channels.
    fn holds(&self, channels: usize) -> bool {
        let span = match self.image {
            Some((h, w, _)) => h * w,
            None => self.positions,
        };
        channels == 0 || self.src.len() >= (channels - 1) * self.ld + span
    }

    /// Channel `c`'s value at `pos`.
    fn at(&self, c: usize, pos: usize) -> f32 {
        if pos >= self.positions {
            return 0.0;
        }
        match self.image {
            None => self.src[c * self.ld + pos],
            Some((h, w, pad)) => {
                let (r, q) = (pos / (w + 2 * pad), pos % (w + 2 * pad));
                let inside = (pad..pad + h).contains(&r) && (pad..pad + w).contains(&q);
                match inside {
                    true => self.src[c * self.ld + (r - pad) * w + q - pad],
                    false => 0.0,
                }
            }
        }
    }

    /// Positions `start..start + 16` as vector lanes: the mask of those with values in `src`,
    /// and the offset in channel 0 of the first of them. Their values are consecutive in `src`
    /// (an image's row ends where the next begins), so one expanding load reads them.
    fn lanes(&self, start: usize) -> (u16, usize) {
        let Some((h, w, pad)) = self.image else {
            let n = self.positions.saturating_sub(start).min(16);
            return (((1u32 << n) - 1) as u16, start);
        };
        let wq = w + 2 * pad;
        let (mut r, mut q) = (start / wq, start % wq);
        let (mut mask, mut first) = (0u16, None);
        for i in 0..16 {
            let inside = (pad..pad + h).contains(&r) && (pad..pad + w).contains(&q);
            if start + i < self.positions && inside {
                mask |= 1 << i;
                let at = (r - pad) * w + q - pad;
                let first = *first.get_or_insert(at);
                debug_assert_eq!(at, first + mask.count_ones() as usize - 1, "consecutive");
            }
            q += 1;
            if q == wq {
                (q, r) = (0, r + 1);
            }
        }
        (mask, first.unwrap_or(0))
    }
}

/// Groups of planes turned channels last as the first operand: row `g * positions + pos`
/// (positions of group `g`) holds the channel pairs `(2d, 2d + 1)`, rows `channels` rounded up to
/// 32 wide; `rows` rows in all, zero past the planes and channels. The groups are equally long.
pub(super) fn pack_channels_last(groups: &[Planes], channels: usize, rows: usize) -> Packed {
    let row = channels.div_ceil(KT) * KT / 2;
    let positions = groups.first().map_or(0, |p| p.positions);
    let mut p = Packed::stale(rows.max(groups.len() * positions), row);
    let dst = p.data_mut();
    for (gi, planes) in groups.iter().enumerate() {
        assert!(planes.positions == positions && planes.holds(channels));
        let dst = &mut dst[gi * positions * row..][..positions * row];
        vector_or_plain!(channels_last(planes, channels, dst, row));
    }
    dst[groups.len() * positions * row..].fill(0);
    p
}

/// Rows `src[r * ld + x]` (`r < rows`, `x < len`) as the first operand with the depth along
/// `x`: row `r` holds the pairs `(x, x + 1)` for even `x`, `len` rounded up to 32, `blocks(rows)`
/// rows (zero past `rows` and `len`).
pub(super) fn pack_rows(src: &[f32], ld: usize, rows: usize, len: usize) -> Packed {
    let row = len.div_ceil(KT) * KT / 2;
    let mut p = Packed::stale(blocks(rows), row);
    if rows > 0 {
        let src = &src[..(rows - 1) * ld + len];
        vector_or_plain!(rows(src, ld, (rows, len), p.data_mut(), row));
    }
    p.data_mut()[rows * row..].fill(0);
    p
}

/// Groups of planes as the second operand with the depth along positions, `pairs` pair rows per
/// group: pair row `g * pairs + j` holds the values at positions `2j + parity` and `2j + parity +
/// 1` of channel `c` at column `c`; rows `blocks(channels)` wide, zero past the positions and
/// channels.
pub(super) fn pack_position_pairs(
    groups: &[Planes],
    channels: usize,
    parity: usize,
    pairs: usize,
) -> Packed {
    let row = blocks(channels);
    let mut p = Packed::stale(groups.len() * pairs, row);
    let dst = p.data_mut();
    for (gi, planes) in groups.iter().enumerate() {
        assert!(planes.holds(channels));
        let dst = &mut dst[gi * pairs * row..][..pairs * row];
        vector_or_plain!(position_pairs(planes, channels, parity, dst, row));
    }
    p
}

/// One term of a `tile_sum`: the first operand read from pair `a` on, the second from `b` on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Read {
    pub a: usize,
    pub b: usize,
}

/// `C[i][j] = Σ_reads Σ_{d < depth} A[read.a + i * a.row + d] · B[read.b + d * b.row + j]`, each
/// term a dot product of two bf16 pairs accumulated in f32, for `i < m`, `j < n` (computed in
/// whole 32 x 32 blocks), written (or added, with `out.accumulate`) to `out[i * ld + j]`, or with
/// `transposed` to `out[j * ld + i]`. `depth` is in pairs, a multiple of 16.
pub(super) fn tile_sum(
    (a, b): (&Packed, &Packed),
    reads: &[Read],
    depth: usize,
    out: Dst,
    (m, n): (usize, usize),
    transposed: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(available(), "bf16 products need AMX");
    assert_eq!(depth % ROW, 0, "depth in whole tiles");
    let (mb, nb) = (blocks(m), blocks(n));
    let (ad, bd) = (a.data(), b.data());
    for r in reads {
        // Every tile read inside its operand (the tile loads below rely on it).
        assert!(
            r.a + (mb - 1) * a.row + depth <= ad.len(),
            "first operand too short"
        );
        assert!(
            depth == 0 || r.b + (depth - 1) * b.row + nb <= bd.len(),
            "second operand too short"
        );
        debug_assert!(r.a % ROW == 0 && r.b % ROW == 0, "reads on cache lines");
    }
    let last = if transposed {
        (n - 1) * out.ld + m
    } else {
        (m - 1) * out.ld + n
    };
    assert!(last <= out.data.len(), "output too short");
    OUT.with(|buf| {
        let buf = &mut buf.borrow_mut()[..];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AMX is present (`available`), and every tile read lies inside the operands
        // (asserted above); `buf` holds a 32 x 32 f32 block.
        unsafe {
            tiles::configure();
            for j0 in (0..n).step_by(2 * T) {
                for i0 in (0..m).step_by(2 * T) {
                    tiles::zero();
                    for r in reads {
                        let a0 = ad.as_ptr().add(r.a + i0 * a.row);
                        let b0 = bd.as_ptr().add(r.b + j0);
                        for kc in (0..depth).step_by(ROW) {
                            tiles::step(
                                (a0.add(kc), a0.add(T * a.row + kc), 4 * a.row),
                                (b0.add(kc * b.row), 4 * b.row),
                            );
                        }
                    }
                    tiles::store(buf.as_mut_ptr());
                    store_block(
                        buf,
                        &mut *out.data,
                        out.ld,
                        out.accumulate,
                        transposed,
                        (i0, j0),
                        (m, n),
                    );
                }
            }
            tiles::release();
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = buf;
    });
}

/// The valid part of a 32 x 32 block `buf[i][j]` at `(i0, j0)` into the output.
fn store_block(
    buf: &[f32],
    out: &mut [f32],
    ld: usize,
    accumulate: bool,
    transposed: bool,
    (i0, j0): (usize, usize),
    (m, n): (usize, usize),
) {
    let (rows, cols) = ((m - i0).min(2 * T), (n - j0).min(2 * T));
    let (at, last) = if transposed {
        (j0 * ld + i0, (j0 + cols - 1) * ld + i0 + rows)
    } else {
        (i0 * ld + j0, (i0 + rows - 1) * ld + j0 + cols)
    };
    assert!(
        last <= out.len() && buf.len() >= 4 * T * T,
        "block outside the output"
    );
    let out = &mut out[at..last];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F comes with AMX; the writes go to the block's `rows x cols` values only
    // (inside `out`, asserted above).
    unsafe {
        if transposed {
            avx512::store_transposed(buf, out, ld, accumulate, (rows, cols))
        } else {
            avx512::store(buf, out, ld, accumulate, (rows, cols))
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (out, accumulate);
}

thread_local! {
    /// A tile block's output on its way to the destination: 32 x 32 f32.
    static OUT: RefCell<Vec<f32>> = RefCell::new(vec![0.0; 4 * T * T]);
}

/// The packers value by value: the definitions the vector ones are tested against, and the
/// packers off x86-64.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
mod plain {
    use super::{pair, Planes};

    /// The value at `x` of a plane of `len` values, zero past it.
    fn at(plane: &[f32], len: usize, x: usize) -> f32 {
        if x < len {
            plane[x]
        } else {
            0.0
        }
    }

    /// `pack_weights`' rows: tap `t`'s pair row `d` at `(t * kp2 + d) * row`, zero past `k` and `n`.
    pub(super) fn weights(
        w: &[f32],
        (k, n, taps): (usize, usize, usize),
        (depth, column): (usize, usize),
        dst: &mut [u32],
        (kp2, row): (usize, usize),
    ) {
        let at = |kk: usize, j: usize, t: usize| {
            if kk < k && j < n {
                w[kk * depth + j * column + t]
            } else {
                0.0
            }
        };
        for t in 0..taps {
            for d in 0..kp2 {
                for (j, v) in dst[(t * kp2 + d) * row..][..row].iter_mut().enumerate() {
                    *v = pair(at(2 * d, j, t), at(2 * d + 1, j, t));
                }
            }
        }
    }

    /// `pack_rows`' rows `..rows` (every pair of each row).
    pub(super) fn rows(
        src: &[f32],
        ld: usize,
        (rows, len): (usize, usize),
        dst: &mut [u32],
        row: usize,
    ) {
        for r in 0..rows {
            let s = &src[r * ld..];
            for (d, v) in dst[r * row..(r + 1) * row].iter_mut().enumerate() {
                *v = pair(at(s, len, 2 * d), at(s, len, 2 * d + 1));
            }
        }
    }

    /// `pack_channels_last`'s rows of one group.
    pub(super) fn channels_last(planes: &Planes, channels: usize, dst: &mut [u32], row: usize) {
        let ch = |c: usize, pos: usize| match c < channels {
            true => planes.at(c, pos),
            false => 0.0,
        };
        for pos in 0..planes.positions {
            for (d, v) in dst[pos * row..(pos + 1) * row].iter_mut().enumerate() {
                *v = pair(ch(2 * d, pos), ch(2 * d + 1, pos));
            }
        }
    }

    /// `pack_position_pairs`' pair rows of one group (`dst.len() / row` of them).
    pub(super) fn position_pairs(
        planes: &Planes,
        channels: usize,
        parity: usize,
        dst: &mut [u32],
        row: usize,
    ) {
        for (j, r) in dst.chunks_exact_mut(row).enumerate() {
            for (c, v) in r.iter_mut().enumerate() {
                let q = 2 * j + parity;
                *v = match c < channels {
                    true => pair(planes.at(c, q), planes.at(c, q + 1)),
                    false => 0,
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Planes;
    use std::arch::x86_64::*;

    /// The 16 x 16 transpose of 16 rows of 16 values.
    #[inline(always)]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved, then pairs of pairs: `u[4k + j]` holds, in its 128-bit lane
        // `l`, column `4l + j` of rows `4k..4k + 4`.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (k, j) = (i / 4, i % 4);
            let (a, b) = (
                _mm512_castps_pd(t[4 * k + j / 2]),
                _mm512_castps_pd(t[4 * k + 2 + j / 2]),
            );
            _mm512_castpd_ps(if j % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            })
        });
        // Gather lane `l` of the four row groups: column `4l + j`.
        let mut out = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            let even_a = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
            let odd_a = _mm512_shuffle_f32x4::<0xDD>(u[j], u[4 + j]);
            let even_b = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
            let odd_b = _mm512_shuffle_f32x4::<0xDD>(u[8 + j], u[12 + j]);
            out[j] = _mm512_shuffle_f32x4::<0x88>(even_a, even_b);
            out[8 + j] = _mm512_shuffle_f32x4::<0xDD>(even_a, even_b);
            out[4 + j] = _mm512_shuffle_f32x4::<0x88>(odd_a, odd_b);
            out[12 + j] = _mm512_shuffle_f32x4::<0xDD>(odd_a, odd_b);
        }
        out
    }

    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// `d[..] (+)= v` in the lanes of `m`.
    #[inline(always)]
    unsafe fn put(d: *mut f32, m: __mmask16, v: __m512, accumulate: bool) {
        let v = if accumulate {
            _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, d))
        } else {
            v
        };
        _mm512_mask_storeu_ps(d, m, v);
    }

    /// `out[j * ld + i] (+)= buf[i * 32 + j]` for `i < rows`, `j < cols` of a 32 x 32 block.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store_transposed(
        buf: &[f32],
        out: &mut [f32],
        ld: usize,
        accumulate: bool,
        (rows, cols): (usize, usize),
    ) {
        let (b, o) = (buf.as_ptr(), out.as_mut_ptr());
        for ib in (0..rows).step_by(16) {
            let m = mask(rows - ib);
            for jb in (0..cols).step_by(16) {
                let r: [__m512; 16] =
                    std::array::from_fn(|i| _mm512_loadu_ps(b.add((ib + i) * 32 + jb)));
                let c = transpose16(r);
                for (j, v) in c.iter().enumerate().take(cols - jb) {
                    put(o.add((jb + j) * ld + ib), m, *v, accumulate);
                }
            }
        }
    }

    /// `out[i * ld + j] (+)= buf[i * 32 + j]` for `i < rows`, `j < cols` of a 32 x 32 block.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store(
        buf: &[f32],
        out: &mut [f32],
        ld: usize,
        accumulate: bool,
        (rows, cols): (usize, usize),
    ) {
        let (b, o) = (buf.as_ptr(), out.as_mut_ptr());
        for i in 0..rows {
            for jb in (0..cols).step_by(16) {
                let v = _mm512_loadu_ps(b.add(i * 32 + jb));
                put(o.add(i * ld + jb), mask(cols - jb), v, accumulate);
            }
        }
    }

    /// bf16 of 16 values, ties to even, NaN kept NaN, in the low halves.
    #[inline(always)]
    unsafe fn bf16x16(v: __m512) -> __m512i {
        let u = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
        let bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(u, bias));
        let abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fff_ffff));
        let nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
        let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(0x40));
        _mm512_mask_blend_epi32(nan, rounded, quiet)
    }

    /// 32 values from `p` on (zero past `count`) as 16 bf16 pairs, in order.
    #[inline(always)]
    unsafe fn pairs32(p: *const f32, count: usize) -> __m512i {
        let lo = _mm512_maskz_loadu_ps(mask(count), p);
        let hi = _mm512_maskz_loadu_ps(mask(count.saturating_sub(16)), p.wrapping_add(16));
        pairs_of(lo, hi)
    }

    /// The 32 values of `lo` then `hi` as 16 bf16 pairs, in order.
    #[inline(always)]
    unsafe fn pairs_of(lo: __m512, hi: __m512) -> __m512i {
        let lo = _mm512_cvtepi32_epi16(bf16x16(lo));
        let hi = _mm512_cvtepi32_epi16(bf16x16(hi));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }

    /// `plain::weights` on vectors: each 16 columns of a pair row gathered from the weights.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weights(
        w: &[f32],
        (k, n, taps): (usize, usize, usize),
        (depth, column): (usize, usize),
        dst: &mut [u32],
        (kp2, row): (usize, usize),
    ) {
        assert!(dst.len() >= taps * kp2 * row && row % 16 == 0);
        assert!(k == 0 || n == 0 || (k - 1) * depth + (n - 1) * column + taps <= w.len());
        assert!(w.len() <= i32::MAX as usize, "gather offsets are 32-bit");
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let step = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(column as i32));
        let d = dst.as_mut_ptr() as *mut f32;
        for t in 0..taps {
            for dd in 0..kp2 {
                for j0 in (0..row).step_by(16) {
                    let m = mask(n.saturating_sub(j0));
                    let gather = |kk: usize| {
                        if kk < k && m != 0 {
                            let base = (kk * depth + j0 * column + t) as i32;
                            let idx = _mm512_add_epi32(step, _mm512_set1_epi32(base));
                            let v = _mm512_mask_i32gather_ps::<4>(
                                _mm512_setzero_ps(),
                                m,
                                idx,
                                w.as_ptr(),
                            );
                            bf16x16(v)
                        } else {
                            _mm512_setzero_si512()
                        }
                    };
                    let (lo, hi) = (gather(2 * dd), gather(2 * dd + 1));
                    let v = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                    _mm512_storeu_ps(d.add((t * kp2 + dd) * row + j0), _mm512_castsi512_ps(v));
                }
            }
        }
    }

    /// `plain::rows` on vectors.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(
        src: &[f32],
        ld: usize,
        (rows, len): (usize, usize),
        dst: &mut [u32],
        row: usize,
    ) {
        assert!(src.len() >= (rows.max(1) - 1) * ld + len && dst.len() >= rows * row);
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        for r in 0..rows {
            for d0 in (0..row).step_by(16) {
                let left = len.saturating_sub(2 * d0);
                let v = pairs32(s.wrapping_add(r * ld + 2 * d0), left);
                _mm512_storeu_si512(d.add(r * row + d0) as *mut _, v);
            }
        }
    }

    /// 16 values from `p` on into the lanes of `m`: consecutive lanes, or with `expand` the lanes
    /// of `m` from consecutive values (`Planes::lanes`); zero in the other lanes.
    #[inline(always)]
    unsafe fn load16(p: *const f32, m: __mmask16, expand: bool) -> __m512 {
        if expand {
            _mm512_maskz_expandloadu_ps(m, p)
        } else {
            _mm512_maskz_loadu_ps(m, p)
        }
    }

    /// `plain::channels_last` on vectors.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn channels_last(
        planes: &Planes,
        channels: usize,
        dst: &mut [u32],
        row: usize,
    ) {
        let (positions, ld, expand) = (planes.positions, planes.ld, planes.image.is_some());
        assert!(planes.holds(channels) && dst.len() >= positions * row);
        let (s, d) = (planes.src.as_ptr(), dst.as_mut_ptr() as *mut f32);
        for p0 in (0..positions).step_by(16) {
            let (m, off) = planes.lanes(p0);
            for d0 in (0..row).step_by(16) {
                let r: [__m512; 16] = std::array::from_fn(|i| {
                    let load = |c: usize| {
                        if c < channels {
                            bf16x16(load16(s.wrapping_add(c * ld + off), m, expand))
                        } else {
                            _mm512_setzero_si512()
                        }
                    };
                    let (lo, hi) = (load(2 * (d0 + i)), load(2 * (d0 + i) + 1));
                    _mm512_castsi512_ps(_mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi)))
                });
                let c = transpose16(r);
                for (p, v) in c.iter().enumerate().take(positions - p0) {
                    _mm512_storeu_ps(d.add((p0 + p) * row + d0), *v);
                }
            }
        }
    }

    /// `plain::position_pairs` on vectors.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn position_pairs(
        planes: &Planes,
        channels: usize,
        parity: usize,
        dst: &mut [u32],
        row: usize,
    ) {
        assert!(planes.holds(channels) && row >= channels);
        let (ld, expand) = (planes.ld, planes.image.is_some());
        let pairs = dst.len() / row;
        let (s, d) = (planes.src.as_ptr(), dst.as_mut_ptr() as *mut f32);
        for j0 in (0..pairs).step_by(16) {
            let first = 2 * j0 + parity;
            let ((m_lo, lo), (m_hi, hi)) = (planes.lanes(first), planes.lanes(first + 16));
            for c0 in (0..row).step_by(16) {
                let r: [__m512; 16] = std::array::from_fn(|i| {
                    if c0 + i < channels {
                        let p = s.wrapping_add((c0 + i) * ld);
                        let lo = load16(p.wrapping_add(lo), m_lo, expand);
                        let hi = load16(p.wrapping_add(hi), m_hi, expand);
                        _mm512_castsi512_ps(pairs_of(lo, hi))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let c = transpose16(r);
                for (j, v) in c.iter().enumerate().take(pairs - j0) {
                    _mm512_storeu_ps(d.add((j0 + j) * row + c0), *v);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::asm;

    /// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`), after checking that the CPU has AVX-512F (the packers' vectors),
    /// AMX-TILE and AMX-BF16.
    #[cfg(target_os = "linux")]
    pub(super) fn request() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        if !std::arch::is_x86_feature_detected!("avx512f") || __cpuid(0).eax < 7 {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let (bf16, tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
        if !(bf16 && tile) {
            return false;
        }
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain system call that only changes which register state this process may
        // use; it clobbers rcx and r11 as every `syscall` does.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        ret == 0
    }

    /// Palette 1 with all eight tiles 16 rows of 64 bytes: output tiles 0-3 (16 x 16 f32), the
    /// broadcast operand's tiles 4-5 and the shifted operand's 6-7 (16 x 32 bf16 each).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// Loads the tile configuration on this thread.
    pub(super) unsafe fn configure() {
        let mut c = Config([0; 64]);
        c.0[0] = 1;
        for t in 0..8 {
            c.0[16 + 2 * t] = 64;
            c.0[48 + t] = 16;
        }
        asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly));
    }

    pub(super) unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    pub(super) unsafe fn zero() {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }

    /// One depth step of the 2 x 2 tile block: the broadcast operand's two row tiles at `a0`,
    /// `a1` (rows `sa` bytes apart) times the shifted operand's two column tiles at `b0` and 64
    /// bytes on (pair rows `sb` bytes apart).
    #[inline(always)]
    pub(super) unsafe fn step(
        (a0, a1, sa): (*const u32, *const u32, usize),
        (b0, sb): (*const u32, usize),
    ) {
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            sa = in(reg) sa,
            b0 = in(reg) b0,
            b1 = in(reg) b0.add(16),
            sb = in(reg) sb,
            options(nostack, readonly)
        );
    }

    /// Stores the 2 x 2 output tiles as one 32 x 32 f32 block at `dst`.
    pub(super) unsafe fn store(dst: *mut f32) {
        asm!(
            "tilestored [{d} + {s}*1], tmm0",
            "tilestored [{d1} + {s}*1], tmm1",
            "tilestored [{d2} + {s}*1], tmm2",
            "tilestored [{d3} + {s}*1], tmm3",
            d = in(reg) dst,
            d1 = in(reg) dst.add(16),
            d2 = in(reg) dst.add(16 * 32),
            d3 = in(reg) dst.add(16 * 32 + 16),
            s = in(reg) 128usize,
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(i: usize, seed: u64) -> f32 {
        ((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0 - 1.0
    }

    /// The packers against their definitions, value by value.
    #[test]
    fn packers_match_their_definitions() {
        if !available() {
            eprintln!("no AMX: skipped");
            return;
        }
        let r16 = |v: f32| f32_of(bf16(v));
        let half = |p: u32, hi: bool| f32_of(if hi { (p >> 16) as u16 } else { p as u16 });
        // Channels last: 2 groups of 37 channels (an odd last pair, a second 16-pair block) over
        // 21 positions, planes 25 apart.
        let (ch, pos, ld, groups) = (37usize, 21usize, 25usize, 2usize);
        let src: Vec<f32> = (0..groups * ch * ld).map(|i| val(i, 1)).collect();
        let p = pack_channels_last(&Planes::stored(&src, ld, (ch, pos), groups), ch, 50);
        assert_eq!(p.row(), 32);
        assert_eq!(p.data().len(), 50 * 32);
        assert_eq!(p.data().as_ptr() as usize % 64, 0, "aligned");
        for row in 0..50 {
            for c in 0..64 {
                let got = half(p.data()[row * 32 + c / 2], c % 2 == 1);
                let (gi, q) = (row / pos, row % pos);
                let want = if gi < groups && c < ch {
                    r16(src[(gi * ch + c) * ld + q])
                } else {
                    0.0
                };
                assert_eq!(got, want, "channels last: row {row} channel {c}");
            }
        }
        // Rows with the depth along them, odd length.
        let (rows, len, ld) = (5usize, 41usize, 44usize);
        let src: Vec<f32> = (0..rows * ld).map(|i| val(i, 2)).collect();
        let p = pack_rows(&src, ld, rows, len);
        assert_eq!(p.row(), 32);
        for r in 0..32 {
            for x in 0..64 {
                let got = half(p.data()[r * 32 + x / 2], x % 2 == 1);
                let want = if r < rows && x < len {
                    r16(src[r * ld + x])
                } else {
                    0.0
                };
                assert_eq!(got, want, "rows: row {r} x {x}");
            }
        }
        // An image read zero-padded: 35 channels of 5 x 7, padded by 2 into rows 11 wide, 9 rows
        // and a slack of 3 positions; channels last and position pairs.
        let (ch, h, w, pad) = (35usize, 5usize, 7usize, 2usize);
        let (wq, pos) = (w + 2 * pad, (h + 2 * pad) * (w + 2 * pad) + 3);
        let src: Vec<f32> = (0..ch * h * w).map(|i| val(i, 4)).collect();
        let padded = |c: usize, q: usize| {
            let (r, x) = (q / wq, q % wq);
            let inside = q < pos && (pad..pad + h).contains(&r) && (pad..pad + w).contains(&x);
            match c < ch && inside {
                true => r16(src[(c * h + r - pad) * w + x - pad]),
                false => 0.0,
            }
        };
        let image = [Planes::padded_image(&src, ch, (h, w), pad, pos)];
        let p = pack_channels_last(&image, ch, pos + 20);
        for q in 0..pos + 20 {
            for c in 0..64 {
                let got = half(p.data()[q * 32 + c / 2], c % 2 == 1);
                assert_eq!(
                    got,
                    padded(c, q),
                    "padded channels last: position {q} channel {c}"
                );
            }
        }
        for parity in [0, 1] {
            let pairs = pos / 2 + 5;
            let p = pack_position_pairs(&image, ch, parity, pairs);
            for j in 0..pairs {
                for c in 0..64 {
                    let v = p.data()[j * 64 + c];
                    for (e, hi) in [(0, false), (1, true)] {
                        let q = 2 * j + parity + e;
                        assert_eq!(
                            half(v, hi),
                            padded(c, q),
                            "padded pairs: {parity} j{j} c{c}"
                        );
                    }
                }
            }
        }
        // Position pairs, both parities, 2 groups.
        let (ch, pos, ld, groups, pairs) = (19usize, 13usize, 15usize, 2usize, 9usize);
        let src: Vec<f32> = (0..groups * ch * ld).map(|i| val(i, 3)).collect();
        for parity in [0, 1] {
            let planes = Planes::stored(&src, ld, (ch, pos), groups);
            let p = pack_position_pairs(&planes, ch, parity, pairs);
            assert_eq!(p.row(), 32);
            for gi in 0..groups {
                for j in 0..pairs {
                    for c in 0..32 {
                        let v = p.data()[(gi * pairs + j) * 32 + c];
                        for (e, hi) in [(0, false), (1, true)] {
                            let q = 2 * j + parity + e;
                            let want = if c < ch && q < pos {
                                r16(src[(gi * ch + c) * ld + q])
                            } else {
                                0.0
                            };
                            assert_eq!(half(v, hi), want, "pairs: parity {parity} g{gi} j{j} c{c}");
                        }
                    }
                }
            }
        }
        // Weights [C_out 20, C_in 35, 3 taps], both ways round: depth rounded to 64 or 32, rows
        // 32 or 64 wide.
        let (co, ci, taps) = (20usize, 35usize, 3usize);
        let w: Vec<f32> = (0..co * ci * taps).map(|i| val(i, 4)).collect();
        for by_input in [true, false] {
            let (k, n) = if by_input { (ci, co) } else { (co, ci) };
            let p = pack_weights(&w, (co, ci, taps), by_input);
            let (kp2, row) = (k.div_ceil(32) * 16, blocks(n));
            assert_eq!((p.row(), p.data().len()), (row, taps * kp2 * row));
            for t in 0..taps {
                for d in 0..kp2 {
                    for j in 0..row {
                        let v = p.data()[(t * kp2 + d) * row + j];
                        for (e, hi) in [(0, false), (1, true)] {
                            let kk = 2 * d + e;
                            let want = if kk < k && j < n {
                                let (o, i) = if by_input { (j, kk) } else { (kk, j) };
                                r16(w[(o * ci + i) * taps + t])
                            } else {
                                0.0
                            };
                            assert_eq!(
                                half(v, hi),
                                want,
                                "weights by_input {by_input}: t{t} kk{kk} j{j}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The vector packers write what the plain ones do, over tails in every dimension.
    #[test]
    fn vector_packers_match_the_plain_ones() {
        if !available() {
            return;
        }
        for (channels, positions, ld) in [
            (1usize, 1usize, 1usize),
            (37, 21, 25),
            (64, 326, 326),
            (3, 47, 50),
            (33, 16, 16),
        ] {
            let src: Vec<f32> = (0..channels * ld).map(|i| val(i, 8) * 3.0).collect();
            let src = &src[..(channels - 1) * ld + positions];
            // The planes as stored, and the first channels' values as images (h x w, padded by
            // `pad`, read as long as the stored planes): rows wider and narrower than a vector.
            let (h, w) = (positions % 7 + 1, positions % 23 + 1);
            let image_channels = src.len() / (h * w);
            let pad = positions % 3;
            let sources = [
                (
                    channels,
                    Planes::stored(src, ld, (channels, positions), 1)[0],
                ),
                (
                    image_channels,
                    Planes::padded_image(src, image_channels, (h, w), pad, positions),
                ),
            ];
            for (channels, planes) in sources.into_iter().filter(|&(c, _)| c > 0) {
                let what = format!("{channels} x {positions} {planes:?}");
                let row = channels.div_ceil(32) * 16;
                let (mut a, mut b) = (vec![7u32; positions * row], vec![9u32; positions * row]);
                unsafe { avx512::channels_last(&planes, channels, &mut a, row) };
                plain::channels_last(&planes, channels, &mut b, row);
                assert_eq!(a, b, "channels last {what}");
                let row = blocks(channels);
                for (parity, pairs) in [(0, positions / 2 + 3), (1, positions.div_ceil(2) + 17)] {
                    let (mut a, mut b) = (vec![7u32; pairs * row], vec![9u32; pairs * row]);
                    unsafe { avx512::position_pairs(&planes, channels, parity, &mut a, row) };
                    plain::position_pairs(&planes, channels, parity, &mut b, row);
                    assert_eq!(a, b, "position pairs parity {parity} {what}");
                }
            }
            // Weights [C_out = channels, C_in = positions % 40 + 1, 3 taps], both ways round.
            let (co, ci, taps) = (channels, positions % 40 + 1, 3);
            let w: Vec<f32> = (0..co * ci * taps).map(|i| val(i, 10)).collect();
            for (k, n, depth, column) in [(ci, co, taps, ci * taps), (co, ci, ci * taps, taps)] {
                let (kp2, row) = (k.div_ceil(32) * 16, blocks(n));
                let (mut a, mut b) = (vec![7u32; taps * kp2 * row], vec![9u32; taps * kp2 * row]);
                unsafe { avx512::weights(&w, (k, n, taps), (depth, column), &mut a, (kp2, row)) };
                plain::weights(&w, (k, n, taps), (depth, column), &mut b, (kp2, row));
                assert_eq!(a, b, "weights k {k} n {n}");
            }
            // Rows: `channels` rows of `positions` values.
            let row = positions.div_ceil(32) * 16;
            let (mut a, mut b) = (vec![7u32; channels * row], vec![9u32; channels * row]);
            unsafe { avx512::rows(src, ld, (channels, positions), &mut a, row) };
            plain::rows(src, ld, (channels, positions), &mut b, row);
            assert_eq!(a, b, "rows {channels} x {positions}");
        }
    }

    /// The tiles against the sum written out over the bf16-rounded operands, in f64: only the
    /// f32 accumulation differs. Straight and transposed output, written and added.
    #[test]
    fn tile_sums_match_the_plain_sum_of_rounded_operands() {
        if !available() {
            eprintln!("no AMX: skipped");
            return;
        }
        // (m, n, depth in pairs, reads as (row shift of A, row shift of B)).
        let cases = [
            (32usize, 32usize, 16usize, vec![(0usize, 0usize)]),
            (45, 20, 32, vec![(0, 0), (3, 16), (7, 1)]),
            (1, 1, 16, vec![(2, 5)]),
            (70, 90, 48, vec![(1, 0), (0, 48), (5, 96)]),
        ];
        for (m, n, depth, shifts) in cases {
            let (mb, nb) = (blocks(m), blocks(n));
            let a_rows = mb + shifts.iter().map(|s| s.0).max().unwrap();
            let b_rows = depth + shifts.iter().map(|s| s.1).max().unwrap();
            let a_src: Vec<f32> = (0..a_rows * 2 * depth).map(|i| val(i, 5)).collect();
            let a = pack_rows(&a_src, 2 * depth, a_rows, 2 * depth);
            let b_src: Vec<f32> = (0..b_rows * 2 * nb).map(|i| val(i, 6)).collect();
            // Second operand: pair row d holds rows 2d and 2d + 1 of `b_src` viewed [rows][nb]
            // side by side, built by the position packer over a transposed copy.
            let mut bt = vec![0f32; nb * 2 * b_rows];
            for d in 0..2 * b_rows {
                for j in 0..nb {
                    bt[j * 2 * b_rows + d] = b_src[d * nb + j];
                }
            }
            let planes = Planes::stored(&bt, 2 * b_rows, (nb, 2 * b_rows), 1);
            let b = pack_position_pairs(&planes, nb, 0, b_rows);
            assert_eq!(b.row(), nb);
            let reads: Vec<Read> = shifts
                .iter()
                .map(|&(sa, sb)| Read {
                    a: sa * a.row(),
                    b: sb * b.row(),
                })
                .collect();
            let r16 = |v: f32| f32_of(bf16(v)) as f64;
            for (transposed, accumulate) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let ld = if transposed { m + 3 } else { n + 3 };
                let len = if transposed {
                    (n - 1) * ld + m
                } else {
                    (m - 1) * ld + n
                };
                let start: Vec<f32> = (0..len).map(|i| val(i, 7)).collect();
                let mut out = if accumulate {
                    start.clone()
                } else {
                    vec![f32::NAN; len]
                };
                let dst = Dst {
                    data: &mut out,
                    ld,
                    accumulate,
                };
                tile_sum((&a, &b), &reads, depth, dst, (m, n), transposed);
                for i in 0..m {
                    for j in 0..n {
                        let (mut s, mut mag) = (0f64, 0f64);
                        for &(sa, sb) in &shifts {
                            for kk in 0..2 * depth {
                                let x = r16(a_src[(i + sa) * 2 * depth + kk]);
                                let y = r16(b_src[(2 * sb + kk) * nb + j]);
                                s += x * y;
                                mag += (x * y).abs();
                            }
                        }
                        let at = if transposed { j * ld + i } else { i * ld + j };
                        if accumulate {
                            s += start[at] as f64;
                        }
                        let got = out[at] as f64;
                        assert!(
                            (got - s).abs() <= 1e-6 * (1.0 + mag),
                            "m{m} n{n} i{i} j{j} transposed {transposed} accumulate {accumulate}: {got} vs {s}"
                        );
                    }
                }
                // Nothing outside the block's valid part is written.
                if !accumulate {
                    let written = out.iter().filter(|v| !v.is_nan()).count();
                    assert_eq!(written, m * n, "m{m} n{n} transposed {transposed}");
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(-2.5), 0xc020);
        assert!(f32_of(bf16(f32::NAN)).is_nan());
        assert_eq!(f32_of(bf16(f32::INFINITY)), f32::INFINITY);
        // The largest finite f32 rounds to infinity, as the round-to-nearest-even rule says.
        assert_eq!(f32_of(bf16(f32::MAX)), f32::INFINITY);
    }

    /// The vector rounding of the channels-last packer agrees with `bf16` on edge values.
    #[test]
    fn vector_rounding_matches_the_scalar_one() {
        if !available() {
            return;
        }
        let specials = [
            0.0f32,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::from_bits(0x3f80_8001),
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001),
        ];
        let src: Vec<f32> = specials
            .iter()
            .copied()
            .chain((0..20).map(|i| val(i, 9) * 1e3))
            .collect();
        let planes = Planes::stored(&src, src.len(), (1, src.len()), 1);
        let p = pack_channels_last(&planes, 1, src.len());
        for (i, v) in src.iter().enumerate() {
            let got = p.data()[i * p.row()] as u16;
            let want = bf16(*v);
            assert!(
                got == want || (f32_of(got).is_nan() && f32_of(want).is_nan()),
                "{v:e}: {got:#x} vs {want:#x}"
            );
        }
    }
}
