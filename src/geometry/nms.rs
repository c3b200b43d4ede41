//! Greedy non-maximum suppression.
//!
//! Boxes are visited by descending score; a box is kept unless an already kept box overlaps it with IoU
//! strictly greater than the threshold (torchvision's `nms`, Detectron's `py_nms` keeping `ovr <= thresh`).
//! Equal scores are visited in index order, so the result is deterministic. Boxes with a NaN score are never
//! kept.

use std::cmp::Ordering;

use super::boxes::{area, iou_with_areas, Box4};

/// Indices of the boxes with a non-NaN score, by descending score, ties by ascending index.
pub fn score_order(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).filter(|&i| !scores[i].is_nan()).collect();
    order.sort_unstable_by(|&a, &b| desc_then_index(scores, a, b));
    order
}

#[inline]
pub(crate) fn desc_then_index(scores: &[f32], a: usize, b: usize) -> Ordering {
    scores[b].total_cmp(&scores[a]).then(a.cmp(&b))
}

/// Greedy NMS over `order` (visiting order); appends the kept indices to `keep`, in that order.
fn greedy(
    boxes: &[Box4],
    areas: &[f32],
    order: &[usize],
    iou_threshold: f32,
    keep: &mut Vec<usize>,
) {
    let start = keep.len();
    // A spatial index pays off once the kept list outgrows a few cache lines of boxes.
    if order.len() <= 64 {
        for &i in order {
            let b = &boxes[i];
            let suppressed = keep[start..]
                .iter()
                .any(|&k| iou_with_areas(&boxes[k], areas[k], b, areas[i]) > iou_threshold);
            if !suppressed {
                keep.push(i);
            }
        }
        return;
    }
    let mut kept = KeptIndex::new(boxes, areas, iou_threshold, order);
    for &i in order {
        if !kept.suppresses(i) {
            kept.insert(i);
            keep.push(i);
        }
    }
}

/// Bins of box size, `floor(log2(sqrt(area)))`, clamped to this range (a 64-bit mask of occupied bins).
const MIN_BIN: i32 = -24;
const NUM_BINS: i32 = 64;

/// The kept boxes of one size bin, gridded by centre over the centres of that bin's candidates.
struct BinGrid {
    origin: [f64; 2],
    cell: f64,
    dims: [usize; 2],
    /// Entries carry the box and its area, so a scan reads one contiguous run of memory.
    cells: Vec<Vec<(Box4, f32)>>,
    members: Vec<u32>,
    /// Kept boxes whose centre is not finite: checked by every query of the bin.
    unplaced: Vec<u32>,
    /// Largest width and height of the kept boxes.
    max_wh: [f64; 2],
}

impl BinGrid {
    /// A grid over centres in `[lo, hi]` with cells of about `cell`, coarsened until it has at most
    /// `4 n + 64` cells for `n` expected boxes.
    fn new(lo: [f64; 2], hi: [f64; 2], mut cell: f64, n: usize) -> Self {
        let dims_for = |cell: f64| {
            [0, 1].map(|a| (((hi[a] - lo[a]) / cell).floor().max(0.0) as usize).saturating_add(1))
        };
        let mut dims = dims_for(cell);
        while dims[0].saturating_mul(dims[1]) > 4 * n + 64 {
            cell *= 2.0;
            dims = dims_for(cell);
        }
        Self {
            origin: lo,
            cell,
            dims,
            cells: vec![Vec::new(); dims[0] * dims[1]],
            members: Vec::new(),
            unplaced: Vec::new(),
            max_wh: [0.0; 2],
        }
    }

    /// The cell of centre coordinate `c` on axis `a`, clamped to the grid.
    fn place(&self, a: usize, c: f64) -> usize {
        let v = ((c - self.origin[a]) / self.cell).floor();
        v.clamp(0.0, (self.dims[a] - 1) as f64) as usize
    }

    /// Cell range covering `[c - r, c + r]` on axis `a`, clamped to the grid: a centre outside the grid is
    /// stored in the edge cell, so a window beyond the edge still visits that cell.
    fn span(&self, a: usize, c: f64, r: f64) -> (usize, usize) {
        (self.place(a, c - r), self.place(a, c + r))
    }
}

/// The boxes kept so far by a greedy NMS, indexed so that "does a kept box overlap box `i` with IoU above
/// `t`?" looks only at boxes that could. Exact: it computes the same IoUs a scan of the whole kept list
/// would, and skips only boxes that provably cannot exceed `t`.
///
/// Two facts prune. IoU <= min(area) / max(area), so IoU > t > 0 needs the sizes within a factor of
/// `1/sqrt(t)`: only a few size bins either side of the query's. And IoU > t needs the intersection width
/// above `t * max(w_q, w_k)` (the intersection is at most `inter_w * h_q` and exceeds `t * w_q * h_q`, and
/// the same for box k), while `inter_w <= (w_q + w_k) / 2 - |dx|` for centre distance `dx`; so
/// `|dx| < (w_q + w_k) / 2 - t max(w_q, w_k) <= max(w_q (1 - t), (w_q + W) / 2 - t max(w_q, W))` with `W`
/// the widest box of the bin (for t >= 0.5: the other centre lies within `w_q (1 - t)`). Each bin grids
/// its boxes by centre, and a query visits the centre cells within that distance. The bounds are applied
/// with `t` lowered by 1e-3 and centres in f64, so f32 rounding of the IoU cannot defeat them.
pub(crate) struct KeptIndex<'a> {
    boxes: &'a [Box4],
    areas: &'a [f32],
    threshold: f32,
    /// The threshold used in the pruning bounds: slightly lower, to absorb rounding.
    loose: f64,
    /// Size bins either side of a query's own bin that can hold a suppressor.
    bin_reach: i32,
    occupied: u64,
    grids: Vec<Option<BinGrid>>,
    any_kept: bool,
}

impl<'a> KeptIndex<'a> {
    /// An empty index for boxes drawn from `candidates` (indices into `boxes`; others may be inserted too,
    /// only less efficiently).
    pub(crate) fn new(
        boxes: &'a [Box4],
        areas: &'a [f32],
        threshold: f32,
        candidates: &[usize],
    ) -> Self {
        let loose = (f64::from(threshold) - 1e-3).max(0.0);
        let bin_reach = if loose > 0.0 {
            // |bin(a) - bin(b)| <= floor(0.5 log2(1 / t)) + 1, plus one bin of slack.
            ((0.5 * (1.0 / loose).log2()).floor() as i32 + 2).min(NUM_BINS)
        } else {
            NUM_BINS
        };
        let n = NUM_BINS as usize;
        // Centre extent and count of the candidates in each bin.
        let mut ext = vec![([f64::INFINITY; 2], [f64::NEG_INFINITY; 2], 0usize); n];
        for &i in candidates {
            if areas[i].partial_cmp(&0.0) != Some(Ordering::Greater) {
                continue;
            }
            let (cx, cy) = Self::centre(&boxes[i]);
            if cx.is_finite() && cy.is_finite() {
                let e = &mut ext[Self::bin(areas[i]) as usize];
                e.0 = [e.0[0].min(cx), e.0[1].min(cy)];
                e.1 = [e.1[0].max(cx), e.1[1].max(cy)];
                e.2 += 1;
            }
        }
        let grids = ext
            .iter()
            .enumerate()
            .map(|(bin, &(lo, hi, count))| {
                (count > 0).then(|| BinGrid::new(lo, hi, Self::cell_size(bin as i32), count))
            })
            .collect();
        Self {
            boxes,
            areas,
            threshold,
            loose,
            bin_reach,
            occupied: 0,
            grids,
            any_kept: false,
        }
    }

    fn bin(area: f32) -> i32 {
        ((0.5 * area.log2()).floor() as i32).clamp(MIN_BIN, MIN_BIN + NUM_BINS - 1) - MIN_BIN
    }

    /// Centre-grid cell size of a bin: the side of its smallest square box.
    fn cell_size(bin: i32) -> f64 {
        2f64.powi(bin + MIN_BIN)
    }

    fn centre(b: &Box4) -> (f64, f64) {
        (
            0.5 * (f64::from(b[0]) + f64::from(b[2])),
            0.5 * (f64::from(b[1]) + f64::from(b[3])),
        )
    }

    pub(crate) fn insert(&mut self, i: usize) {
        self.any_kept = true;
        let area = self.areas[i];
        if area.partial_cmp(&0.0) != Some(Ordering::Greater) {
            // Zero-area (or NaN) boxes have IoU 0 with everything: they never suppress at t >= 0.
            return;
        }
        let b = &self.boxes[i];
        let bin = Self::bin(area);
        self.occupied |= 1 << bin;
        let (cx, cy) = Self::centre(b);
        let g = self.grids[bin as usize].get_or_insert_with(|| {
            // A box from outside the candidates: a one-cell grid, correct if slow.
            BinGrid::new([cx, cy], [cx, cy], Self::cell_size(bin), 1)
        });
        g.members.push(i as u32);
        g.max_wh = [
            g.max_wh[0].max(f64::from(b[2] - b[0])),
            g.max_wh[1].max(f64::from(b[3] - b[1])),
        ];
        if cx.is_finite() && cy.is_finite() {
            // A centre outside the candidates' extent goes to the nearest edge cell; queries clamp alike.
            let x = g.place(0, cx);
            let y = g.place(1, cy);
            g.cells[y * g.dims[0] + x].push((*b, area));
        } else {
            g.unplaced.push(i as u32);
        }
    }

    #[inline]
    fn hit(&self, k: u32, b: &Box4, area: f32) -> bool {
        let k = k as usize;
        iou_with_areas(&self.boxes[k], self.areas[k], b, area) > self.threshold
    }

    /// Half-extent of the centre window on one axis for query size `q` against a bin whose largest size is
    /// `w_max`.
    fn reach(&self, q: f64, w_max: f64) -> f64 {
        let t = self.loose;
        let r = (q * (1.0 - t)).max(0.5 * (q + w_max) - t * q.max(w_max));
        r + 1e-6 * (q + w_max)
    }

    pub(crate) fn suppresses(&self, i: usize) -> bool {
        if !self.any_kept || self.threshold.is_nan() {
            return false;
        }
        if self.threshold < 0.0 {
            // Every IoU (>= 0) exceeds a negative threshold.
            return true;
        }
        let (b, area) = (&self.boxes[i], self.areas[i]);
        if area.partial_cmp(&0.0) != Some(Ordering::Greater) {
            return false;
        }
        let own = Self::bin(area);
        let (cx, cy) = Self::centre(b);
        let (wq, hq) = (f64::from(b[2] - b[0]), f64::from(b[3] - b[1]));
        let lo = (own - self.bin_reach).max(0);
        let hi = (own + self.bin_reach).min(NUM_BINS - 1);
        for bin in lo..=hi {
            if self.occupied & (1 << bin) == 0 {
                continue;
            }
            let Some(g) = &self.grids[bin as usize] else {
                continue;
            };
            if g.unplaced.iter().any(|&k| self.hit(k, b, area)) {
                return true;
            }
            let (rx, ry) = (self.reach(wq, g.max_wh[0]), self.reach(hq, g.max_wh[1]));
            if !(cx.is_finite() && cy.is_finite() && rx.is_finite() && ry.is_finite()) {
                if g.members.iter().any(|&k| self.hit(k, b, area)) {
                    return true;
                }
                continue;
            }
            let ((x0, x1), (y0, y1)) = (g.span(0, cx, rx), g.span(1, cy, ry));
            if (x1 - x0 + 1) * (y1 - y0 + 1) > g.members.len() {
                if g.members.iter().any(|&k| self.hit(k, b, area)) {
                    return true;
                }
                continue;
            }
            for y in y0..=y1 {
                for cell in &g.cells[y * g.dims[0] + x0..=y * g.dims[0] + x1] {
                    if cell
                        .iter()
                        .any(|(k, ka)| iou_with_areas(k, *ka, b, area) > self.threshold)
                    {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// Class-agnostic NMS. `boxes` `[N]`, `scores` `[N]`; returns kept indices by descending score.
pub fn nms(boxes: &[Box4], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    assert_eq!(
        boxes.len(),
        scores.len(),
        "nms: boxes and scores differ in length"
    );
    let areas: Vec<f32> = boxes.iter().map(area).collect();
    let order = score_order(scores);
    let mut keep = Vec::new();
    greedy(boxes, &areas, &order, iou_threshold, &mut keep);
    keep
}

/// Class-wise NMS: boxes of different classes never suppress each other. `boxes`, `scores`, `classes` are
/// `[N]`; returns kept indices of all classes merged by descending score (ties by index).
///
/// Runs the greedy pass per class rather than offsetting coordinates by class (torchvision's trick), so
/// IoUs are exactly those of `nms`.
pub fn batched_nms(
    boxes: &[Box4],
    scores: &[f32],
    classes: &[usize],
    iou_threshold: f32,
) -> Vec<usize> {
    assert!(
        boxes.len() == scores.len() && boxes.len() == classes.len(),
        "batched_nms: boxes, scores and classes differ in length"
    );
    let areas: Vec<f32> = boxes.iter().map(area).collect();
    let mut order = score_order(scores);
    // Stable: within each class the score order survives.
    order.sort_by_key(|&i| classes[i]);
    let mut keep = Vec::new();
    for group in order.chunk_by(|&a, &b| classes[a] == classes[b]) {
        greedy(boxes, &areas, group, iou_threshold, &mut keep);
    }
    keep.sort_unstable_by(|&a, &b| desc_then_index(scores, a, b));
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::boxes::{iou, tests::random_boxes};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The textbook loop: take the best remaining box (lowest index on ties), drop everything overlapping it.
    fn reference(boxes: &[Box4], scores: &[f32], thr: f32) -> Vec<usize> {
        let mut alive: Vec<usize> = (0..boxes.len()).filter(|&i| !scores[i].is_nan()).collect();
        let mut keep = vec![];
        while !alive.is_empty() {
            let mut best = alive[0];
            for &i in &alive {
                if scores[i] > scores[best] || (scores[i] == scores[best] && i < best) {
                    best = i;
                }
            }
            keep.push(best);
            alive.retain(|&i| i != best && iou(&boxes[i], &boxes[best]) <= thr);
        }
        keep
    }

    fn reference_batched(
        boxes: &[Box4],
        scores: &[f32],
        classes: &[usize],
        thr: f32,
    ) -> Vec<usize> {
        let mut keep = vec![];
        for c in 0..=classes.iter().copied().max().unwrap_or(0) {
            let idx: Vec<usize> = (0..boxes.len()).filter(|&i| classes[i] == c).collect();
            let b: Vec<Box4> = idx.iter().map(|&i| boxes[i]).collect();
            let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
            keep.extend(reference(&b, &s, thr).into_iter().map(|k| idx[k]));
        }
        keep.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
        keep
    }

    /// Scores on a coarse grid so that many tie.
    fn random_scores(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(0..20) as f32 / 20.0).collect()
    }

    #[test]
    fn nms_matches_brute_force_with_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for n in [0, 1, 2, 10, 100, 400, 3000] {
            let boxes = random_boxes(&mut rng, n);
            let scores = random_scores(&mut rng, n);
            for thr in [-0.1, 0.0, 0.05, 0.3, 0.5, 0.7, 1.0] {
                assert_eq!(
                    nms(&boxes, &scores, thr),
                    reference(&boxes, &scores, thr),
                    "n={n} thr={thr}"
                );
            }
        }
    }

    #[test]
    fn nms_matches_brute_force_across_scales_and_far_boxes() {
        // Sizes spanning six orders of magnitude, clustered so that many overlap, and a few boxes far out or
        // huge: the index's size bins, its ungridded lists and its full-scan fallback all come into play.
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        let mut boxes = vec![];
        for c in 0..150 {
            // Clusters of ten jittered boxes, so that IoUs spread over (0, 1).
            let side = 10f32.powf(rng.gen_range(-2.0..3.7f32));
            let far = if c % 37 == 0 { 1e7 } else { 1.0 };
            let (cx, cy) = (
                rng.gen_range(-3.0..3.0f32) * side * far,
                rng.gen_range(-3.0..3.0f32) * side,
            );
            for _ in 0..10 {
                let s = side * rng.gen_range(0.7..1.4f32);
                let aspect = 2f32.powf(rng.gen_range(-1.5..1.5f32));
                let (w, h) = (s * aspect.sqrt(), s / aspect.sqrt());
                let x = cx + rng.gen_range(-0.3..0.3f32) * side;
                let y = cy + rng.gen_range(-0.3..0.3f32) * side;
                boxes.push([x - w / 2.0, y - h / 2.0, x + w / 2.0, y + h / 2.0]);
            }
        }
        boxes[10] = [-1e6, -1e6, 1e6, 1e6];
        boxes[11] = [0.0, 0.0, 0.0, 5.0];
        let scores = random_scores(&mut rng, boxes.len());
        for thr in [0.0, 0.01, 0.1, 0.5, 0.9] {
            let kept = nms(&boxes, &scores, thr);
            assert_eq!(kept, reference(&boxes, &scores, thr), "thr={thr}");
            // The case is only a test if boxes were suppressed.
            assert!(
                thr > 0.5 || kept.len() < boxes.len() * 9 / 10,
                "thr={thr}: kept {}",
                kept.len()
            );
        }
    }

    #[test]
    fn kept_index_agrees_with_a_linear_scan_for_boxes_outside_its_candidates() {
        // The index is sized from a subset; boxes from elsewhere (other bins, outside the extent, NaN)
        // must still be found.
        let mut rng = ChaCha8Rng::seed_from_u64(25);
        let mut boxes = random_boxes(&mut rng, 600);
        boxes.extend(
            random_boxes(&mut rng, 200)
                .iter()
                .map(|b| b.map(|v| v * 7.0 - 300.0)),
        );
        boxes.push([f32::NAN, 0.0, 5.0, 5.0]);
        boxes.push([0.0, 0.0, f32::INFINITY, 5.0]);
        let areas: Vec<f32> = boxes.iter().map(area).collect();
        let candidates: Vec<usize> = (0..300).collect();
        for thr in [0.0, 0.2, 0.5] {
            let mut index = KeptIndex::new(&boxes, &areas, thr, &candidates);
            let mut kept: Vec<usize> = vec![];
            for i in (0..boxes.len()).rev() {
                let linear = kept.iter().any(|&k| iou(&boxes[k], &boxes[i]) > thr);
                assert_eq!(index.suppresses(i), linear, "thr={thr} box {i}");
                if !linear {
                    index.insert(i);
                    kept.push(i);
                }
            }
        }
    }

    #[test]
    fn nms_matches_brute_force_on_anchor_grids() {
        // Anchors are the densest, most regular case (many equal IoUs at the threshold's edge).
        let mut rng = ChaCha8Rng::seed_from_u64(24);
        let boxes = crate::geometry::AnchorConfig::default()
            .generate(160, 128)
            .boxes;
        let scores = random_scores(&mut rng, boxes.len());
        for thr in [0.3, 0.5, 0.6, 0.7] {
            assert_eq!(
                nms(&boxes, &scores, thr),
                reference(&boxes, &scores, thr),
                "thr={thr}"
            );
        }
    }

    #[test]
    fn batched_matches_brute_force_with_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        for n in [0, 1, 10, 300, 2000] {
            let boxes = random_boxes(&mut rng, n);
            let scores = random_scores(&mut rng, n);
            let classes: Vec<usize> = (0..n).map(|_| rng.gen_range(0..4)).collect();
            for thr in [0.3, 0.5] {
                let got = batched_nms(&boxes, &scores, &classes, thr);
                assert_eq!(
                    got,
                    reference_batched(&boxes, &scores, &classes, thr),
                    "n={n}"
                );
            }
        }
    }

    #[test]
    fn constructed_cases() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
            [0.0, 0.0, 10.0, 10.0],
        ];
        // Box 1 overlaps box 0 at IoU 90/110 = 0.818; box 3 duplicates box 0 with the same score.
        let scores = [0.9, 0.95, 0.5, 0.9];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.85), vec![1, 0, 2]);
        // Same class only: box 1 in another class no longer suppresses box 0.
        assert_eq!(
            batched_nms(&boxes, &scores, &[0, 1, 0, 0], 0.5),
            vec![1, 0, 2]
        );
        // NaN scores are dropped.
        assert_eq!(nms(&boxes, &[f32::NAN, 0.1, 0.2, 0.3], 0.5), vec![3, 2]);
    }
}
