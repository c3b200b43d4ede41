//! Anchor counts of images as the classification loss sees them: positives, ignored, negatives
//! and the binary (anchor, class) samples, from the matcher's output. Used by `data stats` and by
//! `sweep-imbalance` to measure a dataset's imbalance.

use super::loader::{Dataset, GtImage};
use crate::geometry::{AnchorConfig, Anchors, Box4, Match, Matcher};
use std::collections::HashMap;

/// Anchor counts of one image as the classification loss sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnchorCounts {
    /// All anchors of the image's input.
    pub anchors: usize,
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
            anchors: matches.len(),
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
        self.anchors += o.anchors;
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
    /// Matches each image's boxes to its own anchors (`images[i] = (anchors, boxes)`, in input
    /// pixels), in parallel.
    pub fn measure_each(images: &[(&[Box4], &[Box4])], matcher: &Matcher, k: usize) -> Self {
        use rayon::prelude::*;
        let per_image: Vec<AnchorCounts> = images
            .par_iter()
            .map(|&(anchors, boxes)| {
                AnchorCounts::from_matches(&matcher.assign(anchors, boxes), boxes.len(), k)
            })
            .collect();
        let mut total = AnchorCounts::default();
        per_image.iter().for_each(|c| total.add(c));
        AnchorStats { per_image, total }
    }

    /// The anchor counts of the first `n` images of `ds` (unflipped), each image's boxes matched to
    /// the anchors of the input it trains in: the square `S x S`, or with the paper's resize a batch
    /// of that image alone (its own size padded to the divisor; in a batch with larger images it
    /// would have more anchors, all over padding and so negatives). Returns the images' ground truth
    /// too, in input pixels.
    pub fn measure_dataset(
        ds: &Dataset,
        n: usize,
        layout: &AnchorConfig,
        matcher: &Matcher,
        k: usize,
    ) -> (Vec<GtImage>, Self) {
        let gts: Vec<GtImage> = (0..n).map(|i| ds.ground_truth(i, false)).collect();
        let sizes: Vec<(usize, usize)> = (0..n).map(|i| ds.batch_size_hw(&[i])).collect();
        // Datasets hold few distinct sizes: one anchor layout each.
        let mut grids: HashMap<(usize, usize), Anchors> = HashMap::new();
        for &(h, w) in &sizes {
            grids.entry((h, w)).or_insert_with(|| layout.generate(h, w));
        }
        let pairs: Vec<(&[Box4], &[Box4])> = sizes
            .iter()
            .zip(&gts)
            .map(|(hw, gt)| (grids[hw].boxes.as_slice(), gt.boxes.as_slice()))
            .collect();
        let stats = Self::measure_each(&pairs, matcher, k);
        (gts, stats)
    }

    /// The fewest and the most anchors an image has.
    pub fn anchors_range(&self) -> (usize, usize) {
        let counts = self.per_image.iter().map(|c| c.anchors);
        (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0))
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

/// A COCO dataset whose anchor counts are worked out by hand (in the tests that use it).
#[cfg(test)]
pub(crate) mod fixture {
    use crate::data::coco::{CocoAnnotation, CocoCategory, CocoDataset, CocoImage};
    use std::path::{Path, PathBuf};

    /// Writes `train.json` into `dir` (and empty image files: only the annotations are read): image
    /// 1 is 96x96 with three boxes of class 1, image 2 is `(width, height)` without boxes; classes
    /// 1-3. Returns the JSON's path.
    pub fn three_boxes_and_an_empty_image(dir: &Path, second: (u32, u32)) -> PathBuf {
        let sizes = [("a.png", (96, 96)), ("b.png", second)];
        std::fs::create_dir_all(dir.join("images")).unwrap();
        for (f, _) in sizes {
            std::fs::write(dir.join("images").join(f), b"").unwrap();
        }
        let ann = |id, bbox: [f64; 4]| CocoAnnotation {
            id,
            image_id: 1,
            category_id: 1,
            bbox,
            area: bbox[2] * bbox[3],
            iscrowd: 0,
        };
        let coco = CocoDataset {
            info: None,
            images: sizes
                .iter()
                .enumerate()
                .map(|(i, &(f, (width, height)))| CocoImage {
                    id: i as i64 + 1,
                    file_name: f.to_string(),
                    width,
                    height,
                })
                .collect(),
            annotations: vec![
                // exactly anchor (x 0, y 0) of a 32 px grid: IoU 1, positive
                ann(1, [0.0, 0.0, 32.0, 32.0]),
                // column x 2, rows 0-1: IoU 1024 / 2048 = .5 with both anchors, two positives
                ann(2, [64.0, 0.0, 32.0, 64.0]),
                // row y 2, x 0..72: IoU 1024 / 2304 = .44 with anchors x 0 and x 1 (ignored), and
                // 256 / 3072 = .08 with anchor x 2 (negative)
                ann(3, [0.0, 64.0, 72.0, 32.0]),
            ],
            categories: (1..=3)
                .map(|id| CocoCategory {
                    id,
                    name: format!("c{id}"),
                    supercategory: None,
                })
                .collect(),
        };
        let json = dir.join("train.json");
        coco.save(&json).unwrap();
        json
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
                anchors: 7,
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

    /// The paper's resize, each image as a batch of its own: the fixture's 96x96 image, scaled 2x
    /// to 192x192, meets 64x64 anchors at stride 64 (P6 only) exactly as it meets 32x32 anchors at
    /// stride 32 unscaled, so its counts are the ladder test's hand count; the 96x48 image without
    /// boxes scales 4x to 384x192, a 3 x 6 grid of negatives.
    #[test]
    fn the_papers_resize_measures_each_image_at_its_own_size() {
        use crate::data::loader::{CachePolicy, LoaderConfig, ShorterSide};
        use crate::geometry::LowQualityMatches;
        let dir = tempfile::tempdir().unwrap();
        let json = fixture::three_boxes_and_an_empty_image(dir.path(), (96, 48));
        let src = crate::data::resolve(Some(&json), None, crate::data::Split::Train, true).unwrap();
        let loader = LoaderConfig {
            input_size: 96,
            shorter_side: Some(ShorterSide {
                min_size: 192,
                max_size: 0,
                divisor: 64,
            }),
            hflip: false,
            cache: CachePolicy::Never,
        };
        let ds = Dataset::open(&src, loader).unwrap();
        let layout = AnchorConfig {
            min_level: 6,
            max_level: 6,
            anchor_scale: 1.0,
            scales_per_octave: 1,
            aspect_ratios: vec![1.0],
        };
        let matcher = Matcher {
            low_quality: LowQualityMatches::None,
            ..Matcher::default()
        };
        let (gts, st) = AnchorStats::measure_dataset(&ds, 2, &layout, &matcher, 3);
        assert_eq!(gts[0].boxes[0], [0.0, 0.0, 64.0, 64.0]);
        let (a, b) = (st.per_image[0], st.per_image[1]);
        assert_eq!(
            (a.anchors, a.positives, a.ignored, a.negatives),
            (9, 3, 2, 4)
        );
        assert_eq!(
            (b.anchors, b.positives, b.ignored, b.negatives),
            (18, 0, 0, 18)
        );
        assert_eq!(st.anchors_range(), (9, 18));
        assert_eq!(st.total.anchors, 27);
    }
}
