//! Dataset statistics that need no model: objects per image and box sizes (in input pixels, as the
//! detector sees them), and instances per class.

use super::loader::GtImage;

/// Box-size bins, by `sqrt(w * h)` in input pixels: the octaves that pyramid levels P3..P7 cover.
pub const SIZE_EDGES: [f32; 8] = [0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, f32::INFINITY];

/// Aspect-ratio bins, by width / height: the ranges nearest the usual anchor shapes 1:2, 1:1 and
/// 2:1 (split at their geometric means, 1:1.41 and 1.41:1), and beyond 1:3 and 3:1.
pub const ASPECT_EDGES: [f32; 6] = [
    0.0,
    1.0 / 3.0,
    std::f32::consts::FRAC_1_SQRT_2,
    std::f32::consts::SQRT_2,
    3.0,
    f32::INFINITY,
];

#[derive(Debug, Clone, PartialEq)]
pub struct BoxStats {
    pub images: usize,
    pub objects: usize,
    pub crowd: usize,
    /// `per_image[k]` = number of images with k objects (non-crowd).
    pub per_image: Vec<usize>,
    /// Boxes per size bin ([`SIZE_EDGES`]).
    pub size_bins: Vec<usize>,
    /// Boxes per aspect-ratio bin ([`ASPECT_EDGES`]); a box with neither width nor height in none.
    pub aspect_bins: Vec<usize>,
    /// Objects per class index.
    pub per_class: Vec<usize>,
    pub min_side: f32,
    pub max_side: f32,
}

impl BoxStats {
    pub fn mean_per_image(&self) -> f64 {
        self.objects as f64 / self.images.max(1) as f64
    }
}

pub fn box_stats<'a>(gts: impl IntoIterator<Item = &'a GtImage>, num_classes: usize) -> BoxStats {
    let mut s = BoxStats {
        images: 0,
        objects: 0,
        crowd: 0,
        per_image: Vec::new(),
        size_bins: vec![0; SIZE_EDGES.len() - 1],
        aspect_bins: vec![0; ASPECT_EDGES.len() - 1],
        per_class: vec![0; num_classes],
        min_side: f32::INFINITY,
        max_side: 0.0,
    };
    for g in gts {
        s.images += 1;
        s.objects += g.boxes.len();
        s.crowd += g.crowd_boxes.len();
        if s.per_image.len() <= g.boxes.len() {
            s.per_image.resize(g.boxes.len() + 1, 0);
        }
        s.per_image[g.boxes.len()] += 1;
        for (b, &c) in g.boxes.iter().zip(&g.classes) {
            let side = ((b[2] - b[0]) * (b[3] - b[1])).max(0.0).sqrt();
            s.min_side = s.min_side.min(side);
            s.max_side = s.max_side.max(side);
            if let Some(k) = bin_of(&SIZE_EDGES, side) {
                s.size_bins[k] += 1;
            }
            if let Some(k) = bin_of(&ASPECT_EDGES, (b[2] - b[0]) / (b[3] - b[1])) {
                s.aspect_bins[k] += 1;
            }
            if let Some(n) = s.per_class.get_mut(c) {
                *n += 1;
            }
        }
    }
    s
}

/// The bin `[edges[k], edges[k + 1])` holding `v`, the last bin holding infinity too (none for
/// NaN).
fn bin_of(edges: &[f32], v: f32) -> Option<usize> {
    edges
        .windows(2)
        .position(|w| v >= w[0] && (v < w[1] || w[1] == f32::INFINITY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(boxes: Vec<[f32; 4]>, classes: Vec<usize>) -> GtImage {
        GtImage {
            image_id: 1,
            boxes,
            classes,
            crowd_boxes: vec![[0.0, 0.0, 1.0, 1.0]],
            crowd_classes: vec![0],
            scale: 1.0,
            orig_size: (100, 100),
            resized_size: (100, 100),
            flipped: false,
        }
    }

    #[test]
    fn aspect_bins_follow_the_nearest_anchor_shape() {
        let g = [gt(
            vec![
                [0.0, 0.0, 10.0, 20.0], // 1:2
                [0.0, 0.0, 10.0, 14.0], // 1:1.4, nearer 1:1
                [0.0, 0.0, 15.0, 10.0], // 1.5:1, nearer 2:1
                [0.0, 0.0, 40.0, 10.0], // 4:1
                [0.0, 0.0, 5.0, 0.0],   // no height: beyond 3:1
                [3.0, 3.0, 3.0, 3.0],   // neither: in no bin
            ],
            vec![0; 6],
        )];
        assert_eq!(box_stats(&g, 1).aspect_bins, vec![0, 1, 1, 1, 2]);
    }

    #[test]
    fn counts_by_hand() {
        let g = [
            gt(
                vec![[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 10.0, 40.0]],
                vec![0, 1],
            ),
            gt(vec![], vec![]),
            gt(vec![[0.0, 0.0, 100.0, 100.0]], vec![1]),
        ];
        let s = box_stats(&g, 3);
        assert_eq!((s.images, s.objects, s.crowd), (3, 3, 3));
        assert_eq!(s.per_image, vec![1, 1, 1]);
        // sides 4, 20, 100
        assert_eq!(s.size_bins, vec![1, 0, 1, 0, 1, 0, 0]);
        // aspects 1, 1/4, 1
        assert_eq!(s.aspect_bins, vec![1, 0, 2, 0, 0]);
        assert_eq!(s.per_class, vec![1, 2, 0]);
        assert_eq!((s.min_side, s.max_side), (4.0, 100.0));
        assert!((s.mean_per_image() - 1.0).abs() < 1e-12);
    }
}
