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

/// Greedy NMS over `order` (visiting order); returns the kept indices in that order.
fn greedy(
    boxes: &[Box4],
    areas: &[f32],
    order: &[usize],
    iou_threshold: f32,
    keep: &mut Vec<usize>,
) {
    let start = keep.len();
    for &i in order {
        let b = &boxes[i];
        let suppressed = keep[start..]
            .iter()
            .any(|&k| iou_with_areas(&boxes[k], areas[k], b, areas[i]) > iou_threshold);
        if !suppressed {
            keep.push(i);
        }
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
        for n in [0, 1, 2, 10, 100, 400] {
            let boxes = random_boxes(&mut rng, n);
            let scores = random_scores(&mut rng, n);
            for thr in [0.0, 0.3, 0.5, 0.7, 1.0] {
                assert_eq!(
                    nms(&boxes, &scores, thr),
                    reference(&boxes, &scores, thr),
                    "n={n} thr={thr}"
                );
            }
        }
    }

    #[test]
    fn batched_matches_brute_force_with_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        for n in [0, 1, 10, 300] {
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
