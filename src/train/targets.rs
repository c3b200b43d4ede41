//! Per-anchor training targets: labels from the matcher and box-regression targets from the coder.

use crate::config::{AnchorsConfig, MatcherConfig};
use crate::geometry::{anchor_labels, AnchorConfig, Anchors, BoxCoder, Match, Matcher};
use std::collections::HashMap;

/// Ground truth of one image in input pixels: xyxy boxes and 0-based classes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GtBoxes {
    pub boxes: Vec<[f32; 4]>,
    pub classes: Vec<usize>,
}

/// The training view of a loaded image's ground truth (its boxes and classes; crowd boxes are
/// already left out by the loader).
impl From<&crate::data::loader::GtImage> for GtBoxes {
    fn from(g: &crate::data::loader::GtImage) -> Self {
        GtBoxes {
            boxes: g.boxes.clone(),
            classes: g.classes.clone(),
        }
    }
}

/// Targets of a minibatch, flattened over (image, anchor) like the model outputs.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `[N * T]`: -1 ignore, 0 background, 1..=K foreground class + 1.
    pub labels: Vec<i64>,
    /// Flat indices (image * T + anchor) of the foreground anchors, ascending.
    pub positives: Vec<u32>,
    /// `[P * 4]` regression targets of the positives, in the order of `positives`.
    pub box_targets: Vec<f32>,
    /// Anchors per image, T.
    pub anchors_per_image: usize,
}

impl Targets {
    /// The targets of the images `range` of the batch, indexed as a batch of their own.
    pub fn images(&self, range: std::ops::Range<usize>) -> Targets {
        let t = self.anchors_per_image;
        let (lo, hi) = ((range.start * t) as u32, (range.end * t) as u32);
        let mut positives = Vec::new();
        let mut box_targets = Vec::new();
        for (j, &p) in self.positives.iter().enumerate() {
            if (lo..hi).contains(&p) {
                positives.push(p - lo);
                box_targets.extend_from_slice(&self.box_targets[4 * j..4 * j + 4]);
            }
        }
        Targets {
            labels: self.labels[range.start * t..range.end * t].to_vec(),
            positives,
            box_targets,
            anchors_per_image: t,
        }
    }
}

/// Builds targets, caching the anchors of each input size.
pub struct TargetBuilder {
    anchor_cfg: AnchorConfig,
    matcher: Matcher,
    coder: BoxCoder,
    cache: HashMap<(usize, usize), Anchors>,
}

impl TargetBuilder {
    pub fn new(anchors: &AnchorsConfig, matcher_cfg: &MatcherConfig) -> TargetBuilder {
        TargetBuilder {
            anchor_cfg: AnchorConfig::from(anchors),
            matcher: Matcher::from(matcher_cfg),
            coder: BoxCoder::default(),
            cache: HashMap::new(),
        }
    }

    /// The anchors of an `h x w` input, in (level, y, x, anchor) order.
    pub fn anchors(&mut self, h: usize, w: usize) -> &Anchors {
        let cfg = &self.anchor_cfg;
        self.cache
            .entry((h, w))
            .or_insert_with(|| cfg.generate(h, w))
    }

    /// The cached anchors with `count` boxes (those of the last built input size).
    pub fn anchors_for(&self, count: usize) -> anyhow::Result<&Anchors> {
        self.cache
            .values()
            .find(|a| a.len() == count)
            .ok_or_else(|| anyhow::anyhow!("no anchors of {count} boxes were generated"))
    }

    /// Targets for the images of one batch, all of input size `h x w`.
    pub fn build(&mut self, gt: &[GtBoxes], h: usize, w: usize) -> Targets {
        let matcher = self.matcher;
        let coder = self.coder;
        let anchors = self.anchors(h, w);
        let t = anchors.len();
        let mut labels = Vec::with_capacity(gt.len() * t);
        let mut positives = Vec::new();
        let mut box_targets = Vec::new();
        for (i, g) in gt.iter().enumerate() {
            let matches = matcher.assign(&anchors.boxes, &g.boxes);
            let l = anchor_labels(&matches, &g.classes);
            for (a, &m) in matches.iter().enumerate() {
                if let Match::Gt(j) = m {
                    positives.push((i * t + a) as u32);
                    box_targets.extend(coder.encode(&anchors.boxes[a], &g.boxes[j as usize]));
                }
            }
            labels.extend(l.iter().map(|&v| v as i64));
        }
        Targets {
            labels,
            positives,
            box_targets,
            anchors_per_image: t,
        }
    }
}
