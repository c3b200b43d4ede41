//! Axis-aligned boxes `[x1, y1, x2, y2]` in continuous coordinates (no "+1"), and their IoU.

use rayon::prelude::*;

/// A box `[x1, y1, x2, y2]`, continuous coordinates: width = x2 - x1.
pub type Box4 = [f32; 4];

/// Area of a box; a box with x2 < x1 or y2 < y1 has area 0.
#[inline]
pub fn area(b: &Box4) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// Intersection area of two boxes (0 when they do not overlap).
#[inline]
pub fn intersection(a: &Box4, b: &Box4) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

/// IoU given precomputed areas: the hot loops compute each area once.
#[inline]
pub fn iou_with_areas(a: &Box4, area_a: f32, b: &Box4, area_b: f32) -> f32 {
    let inter = intersection(a, b);
    let union = area_a + area_b - inter;
    // An empty box overlaps nothing. Testing the areas also gives a box with a NaN coordinate (area 0)
    // IoU 0, where min/max, which skip NaN, would otherwise make up an intersection.
    if area_a > 0.0 && area_b > 0.0 && union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Intersection over union; 0 when either box is empty (or has a NaN coordinate).
#[inline]
pub fn iou(a: &Box4, b: &Box4) -> f32 {
    iou_with_areas(a, area(a), b, area(b))
}

/// IoU of every pair: row-major `[a.len() x b.len()]`, entry `i * b.len() + j` = iou(a[i], b[j]).
pub fn iou_matrix(a: &[Box4], b: &[Box4]) -> Vec<f32> {
    let n = b.len();
    let mut out = vec![0.0f32; a.len() * n];
    if n == 0 {
        return out;
    }
    let areas_b: Vec<f32> = b.iter().map(area).collect();
    let fill_rows = |(rows, boxes): (&mut [f32], &[Box4])| {
        for (row, bx) in rows.chunks_mut(n).zip(boxes) {
            let area_a = area(bx);
            for ((o, bb), &ab) in row.iter_mut().zip(b).zip(&areas_b) {
                *o = iou_with_areas(bx, area_a, bb, ab);
            }
        }
    };
    // Blocks of rows big enough that a task outweighs rayon's overhead.
    let rows = (4096 / n).max(1);
    out.par_chunks_mut(rows * n)
        .zip(a.par_chunks(rows))
        .for_each(fill_rows);
    out
}

/// `[x, y, w, h]` (COCO) to `[x1, y1, x2, y2]`.
#[inline]
pub fn xywh_to_xyxy(b: [f32; 4]) -> Box4 {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

/// `[x1, y1, x2, y2]` to `[x, y, w, h]` (COCO).
#[inline]
pub fn xyxy_to_xywh(b: &Box4) -> [f32; 4] {
    [b[0], b[1], b[2] - b[0], b[3] - b[1]]
}

/// Clamp a box to the image `[0, width] x [0, height]` (continuous coordinates, so the right edge is
/// `width`, not `width - 1` as in Detectron).
#[inline]
pub fn clip(b: &Box4, height: f32, width: f32) -> Box4 {
    [
        b[0].clamp(0.0, width),
        b[1].clamp(0.0, height),
        b[2].clamp(0.0, width),
        b[3].clamp(0.0, height),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random boxes in a 100x100 image, a few degenerate (zero width or height) and some identical.
    pub(crate) fn random_boxes(rng: &mut ChaCha8Rng, n: usize) -> Vec<Box4> {
        let mut v: Vec<Box4> = (0..n)
            .map(|_| {
                let x1 = rng.gen_range(0.0..90.0f32);
                let y1 = rng.gen_range(0.0..90.0f32);
                let w = if rng.gen_bool(0.05) {
                    0.0
                } else {
                    rng.gen_range(0.5..40.0f32)
                };
                let h = rng.gen_range(0.5..40.0f32);
                [x1, y1, x1 + w, y1 + h]
            })
            .collect();
        for i in (3..n).step_by(7) {
            v[i] = v[i - 3];
        }
        v
    }

    /// IoU in f64, written out from the definition without the f32 helpers: the reference.
    fn iou_reference(a: &Box4, b: &Box4) -> f64 {
        let (a, b) = (a.map(f64::from), b.map(f64::from));
        let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        let inter = ix * iy;
        let u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
        if u > 0.0 {
            inter / u
        } else {
            0.0
        }
    }

    #[test]
    fn iou_matches_f64_reference_on_random_boxes() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let a = random_boxes(&mut rng, 200);
        let b = random_boxes(&mut rng, 150);
        for x in &a {
            for y in &b {
                let r = iou_reference(x, y);
                assert!((f64::from(iou(x, y)) - r).abs() < 1e-5, "{x:?} {y:?}");
                assert_eq!(iou(x, y), iou(y, x));
            }
        }
    }

    #[test]
    fn iou_closed_forms() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[10.0, 0.0, 20.0, 10.0]), 0.0); // touching edges
        assert_eq!(iou(&a, &[5.0, 0.0, 15.0, 10.0]), 50.0 / 150.0);
        assert_eq!(iou(&a, &[2.0, 2.0, 4.0, 4.0]), 4.0 / 100.0);
        assert_eq!(iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
        assert_eq!(area(&[5.0, 5.0, 3.0, 9.0]), 0.0);
        assert_eq!(iou(&[f32::NAN, 0.0, 5.0, 5.0], &a), 0.0);
        assert_eq!(iou(&a, &[0.0, 0.0, 10.0, f32::NAN]), 0.0);
    }

    #[test]
    fn iou_matrix_shape_and_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // Large enough to take the parallel path, and small cases for the sequential one.
        for (na, nb) in [(0, 3), (3, 0), (5, 7), (700, 120)] {
            let a = random_boxes(&mut rng, na);
            let b = random_boxes(&mut rng, nb);
            let m = iou_matrix(&a, &b);
            assert_eq!(m.len(), na * nb);
            for i in 0..na {
                for j in 0..nb {
                    assert_eq!(m[i * nb + j], iou(&a[i], &b[j]));
                }
            }
        }
    }

    #[test]
    fn conversions_and_clip() {
        let b = [1.5, 2.0, 4.0, 8.0];
        assert_eq!(xywh_to_xyxy(xyxy_to_xywh(&b)), b);
        assert_eq!(xyxy_to_xywh(&b), [1.5, 2.0, 2.5, 6.0]);
        assert_eq!(
            clip(&[-3.0, -1.0, 120.0, 50.0], 40.0, 100.0),
            [0.0, 0.0, 100.0, 40.0]
        );
        assert_eq!(clip(&b, 40.0, 100.0), b);
    }
}
