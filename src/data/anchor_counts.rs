//! Anchor counts of images as the classification loss sees them: positives, ignored, negatives
//! and the binary (anchor, class) samples, from the matcher's output. Used by `data stats` and by
//! `sweep-imbalance` to measure a dataset's imbalance.

use crate::geometry::{Box4, Match, Matcher};

/// Anchor counts of one image as the classification loss sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnchorCounts {
    pub objects: usize,
    pub positives: usize,
    pub ignored: usize,
    pub negatives: usize,
    /// Objects no anchor is matched to (they never produce a positive).
    pub unmatched_objects: usize,
    /// Binary (anchor, class) sigmoid samples with target 1: one per positive anchor.
    pub binary_positives: usize,
    /// Binary samples with target 0: K per negative anchor and K - 1 per positive anchor (ignored
    /// anchors contribute none).
    pub binary_negatives: usize,
}

impl AnchorCounts {
    /// Counts from the matcher's output `[A]` for an image with `objects` ground-truth boxes and
    /// `k` classes.
    pub fn from_matches(matches: &[Match], objects: usize, k: usize) -> Self {
        let mut c = AnchorCounts {
            objects,
            ..Default::default()
        };
        let mut hit = vec![false; objects];
        for &m in matches {
            match m {
                Match::Background => c.negatives += 1,
                Match::Ignore => c.ignored += 1,
                Match::Gt(j) => {
                    c.positives += 1;
                    if let Some(h) = hit.get_mut(j as usize) {
                        *h = true;
                    }
                }
            }
        }
        c.unmatched_objects = hit.iter().filter(|&&h| !h).count();
        c.binary_positives = c.positives;
        c.binary_negatives = c.negatives * k + c.positives * k.saturating_sub(1);
        c
    }

    pub fn add(&mut self, o: &AnchorCounts) {
        self.objects += o.objects;
        self.positives += o.positives;
        self.ignored += o.ignored;
        self.negatives += o.negatives;
        self.unmatched_objects += o.unmatched_objects;
        self.binary_positives += o.binary_positives;
        self.binary_negatives += o.binary_negatives;
    }
}

/// The anchor counts of a set of images under one anchor layout and matcher.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorStats {
    /// One per image, in the order given.
    pub per_image: Vec<AnchorCounts>,
    pub total: AnchorCounts,
}

impl AnchorStats {
    /// Matches every image's boxes (`images[i]`, in input pixels) to `anchors`, in parallel.
    pub fn measure(anchors: &[Box4], matcher: &Matcher, images: &[&[Box4]], k: usize) -> Self {
        use rayon::prelude::*;
        let per_image: Vec<AnchorCounts> = images
            .par_iter()
            .map(|boxes| {
                AnchorCounts::from_matches(&matcher.assign(anchors, boxes), boxes.len(), k)
            })
            .collect();
        let mut total = AnchorCounts::default();
        per_image.iter().for_each(|c| total.add(c));
        AnchorStats { per_image, total }
    }

    /// Mean of a count per image.
    pub fn per_image_mean(&self, count: usize) -> f64 {
        count as f64 / self.per_image.len().max(1) as f64
    }

    /// Negative anchors per positive, pooled over the images.
    pub fn neg_per_pos_anchors(&self) -> f64 {
        ratio(self.total.negatives, self.total.positives)
    }

    /// Negative binary (anchor, class) samples per positive one, pooled.
    pub fn neg_per_pos_binary(&self) -> f64 {
        ratio(self.total.binary_negatives, self.total.binary_positives)
    }

    /// The median over images with a positive of their negatives per positive anchor.
    pub fn median_neg_per_pos(&self) -> f64 {
        let mut r: Vec<f64> = self
            .per_image
            .iter()
            .filter(|c| c.positives > 0)
            .map(|c| ratio(c.negatives, c.positives))
            .collect();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(f64::INFINITY)
    }
}

/// `num / den`, infinite when `den` is 0.
pub fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        f64::INFINITY
    } else {
        num as f64 / den as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{AnchorConfig, Matcher};

    #[test]
    fn anchor_counts_by_hand() {
        // 7 anchors, 2 objects, K = 3: anchors 0 and 3 on object 0, object 1 unmatched.
        use Match::{Background as B, Gt, Ignore as I};
        let m = [Gt(0), B, I, Gt(0), B, B, I];
        let c = AnchorCounts::from_matches(&m, 2, 3);
        assert_eq!(
            c,
            AnchorCounts {
                objects: 2,
                positives: 2,
                ignored: 2,
                negatives: 3,
                unmatched_objects: 1,
                binary_positives: 2,
                binary_negatives: 3 * 3 + 2 * 2,
            }
        );
    }

    #[test]
    fn anchor_counts_on_a_constructed_image() {
        // One box equal to a P3 anchor, with the matcher's default thresholds: every anchor with IoU
        // >= 0.5 is positive, every one below 0.4 negative; count both by brute force.
        let cfg = AnchorConfig::default();
        let anchors = cfg.generate(128, 128);
        let gt = [anchors.boxes[4 * 9 + 4]];
        let m = Matcher::default().assign(&anchors.boxes, &gt);
        let c = AnchorCounts::from_matches(&m, 1, 5);
        let ious: Vec<f32> = anchors
            .boxes
            .iter()
            .map(|b| crate::geometry::iou(b, &gt[0]))
            .collect();
        let pos = ious.iter().filter(|&&v| v >= 0.5).count();
        let neg = ious.iter().filter(|&&v| v < 0.4).count();
        assert!(pos >= 1);
        assert_eq!((c.positives, c.negatives), (pos, neg));
        assert_eq!(c.ignored, anchors.len() - pos - neg);
        assert_eq!(c.binary_negatives, neg * 5 + pos * 4);
    }
}
