//! Anchor-to-ground-truth matching (paper §4, "Anchors").
//!
//! Each anchor gets at most one ground-truth box. With IoU computed between every anchor and every
//! ground-truth box, an anchor whose best IoU is `>= pos_iou` (0.5) is matched to that box (the first one on a
//! tie), one whose best IoU is `< neg_iou` (0.4) is background, and one in between is ignored by the loss.
//!
//! ## Low-quality matches
//! A ground-truth box that no anchor covers at 0.5 would get no positive anchor at all. The implementations
//! add back the anchors with the highest IoU for each ground-truth box ("including ties"), each matched to
//! *its own* best box (which may be another one; detectron2's comment says this follows Detectron and has no
//! significant impact). The paper does not mention the rule; [`LowQualityMatches`] selects it:
//! - `None`: no such rule (the paper's text, read literally);
//! - `Detectron` (default): the rule as Detectron's `roi_data/retinanet.py` applies it. The background label
//!   is written after the low-quality positives there, so a best anchor is kept only if its IoU is at least
//!   `neg_iou`: in effect the rule promotes ignored anchors to positives;
//! - `Any`: detectron2's and torchvision's `allow_low_quality_matches`, for any IoU above 0. (detectron2
//!   would also mark every anchor when a box overlaps no anchor at all, best IoU 0; that degenerate case gives
//!   no match here.)

use rayon::prelude::*;

use super::boxes::{area, Box4};
use super::GeometryError;

/// What the matcher assigns one anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Best IoU below `neg_iou`: a negative.
    Background,
    /// Best IoU in the band `[neg_iou, pos_iou)`: no loss.
    Ignore,
    /// Matched to ground-truth box `j` (0-based): a positive.
    Gt(u32),
}

/// The loss's label of an anchor that takes no loss (the one integer encoding of anchors, made by
/// [`anchor_labels`]: this, [`BACKGROUND_LABEL`], or the matched box's class + 1).
pub const IGNORE_LABEL: i32 = -1;
/// The loss's label of a negative anchor.
pub const BACKGROUND_LABEL: i32 = 0;

/// Which low-quality matches to add back (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LowQualityMatches {
    None,
    #[default]
    Detectron,
    Any,
}

impl std::str::FromStr for LowQualityMatches {
    type Err = GeometryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "detectron" => Ok(Self::Detectron),
            "any" => Ok(Self::Any),
            _ => Err(GeometryError::field(
                "low_quality",
                s,
                "expected one of none, detectron, any",
            )),
        }
    }
}

/// IoU thresholds and the low-quality rule. `Default` is the paper's 0.5 / 0.4 with Detectron's rule.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Matcher {
    pub pos_iou: f32,
    pub neg_iou: f32,
    pub low_quality: LowQualityMatches,
}

impl Default for Matcher {
    fn default() -> Self {
        Self {
            pos_iou: 0.5,
            neg_iou: 0.4,
            low_quality: LowQualityMatches::Detectron,
        }
    }
}

/// Ground-truth boxes as columns, so the inner loop over boxes vectorises.
struct GtColumns {
    x1: Vec<f32>,
    y1: Vec<f32>,
    x2: Vec<f32>,
    y2: Vec<f32>,
    area: Vec<f32>,
}

impl GtColumns {
    fn new(gt: &[Box4]) -> Self {
        Self {
            x1: gt.iter().map(|b| b[0]).collect(),
            y1: gt.iter().map(|b| b[1]).collect(),
            x2: gt.iter().map(|b| b[2]).collect(),
            y2: gt.iter().map(|b| b[3]).collect(),
            area: gt.iter().map(area).collect(),
        }
    }

    /// IoU of `a` with every ground-truth box into `out` (len = number of boxes). Same arithmetic as
    /// `boxes::iou`, so the values are bit-identical to it.
    #[inline]
    fn ious(&self, a: &Box4, out: &mut [f32]) {
        let area_a = area(a);
        let n = out.len();
        let (x1, y1, x2, y2, ar) = (
            &self.x1[..n],
            &self.y1[..n],
            &self.x2[..n],
            &self.y2[..n],
            &self.area[..n],
        );
        for (j, o) in out.iter_mut().enumerate() {
            let w = (a[2].min(x2[j]) - a[0].max(x1[j])).max(0.0);
            let h = (a[3].min(y2[j]) - a[1].max(y1[j])).max(0.0);
            let inter = w * h;
            let union = area_a + ar[j] - inter;
            *o = if area_a > 0.0 && ar[j] > 0.0 && union > 0.0 {
                inter / union
            } else {
                0.0
            };
        }
    }
}

/// Anchors per parallel task: large enough that a task outweighs rayon's overhead.
const CHUNK: usize = 1024;

impl Matcher {
    /// Check the thresholds: finite, in [0, 1], `neg_iou <= pos_iou`.
    pub fn validate(&self) -> Result<(), GeometryError> {
        if !(self.pos_iou.is_finite() && (0.0..=1.0).contains(&self.pos_iou)) {
            return Err(GeometryError::field(
                "pos_iou",
                self.pos_iou,
                "must be in [0, 1]",
            ));
        }
        if !(self.neg_iou.is_finite() && (0.0..=1.0).contains(&self.neg_iou)) {
            return Err(GeometryError::field(
                "neg_iou",
                self.neg_iou,
                "must be in [0, 1]",
            ));
        }
        if self.neg_iou > self.pos_iou {
            return Err(GeometryError::field(
                "neg_iou",
                self.neg_iou,
                "must not exceed pos_iou",
            ));
        }
        Ok(())
    }

    /// Match anchors `[A]` to ground-truth boxes `[G]`. With no ground truth every anchor is
    /// background (an image without objects still trains the classifier on negatives).
    pub fn assign(&self, anchors: &[Box4], gt: &[Box4]) -> Vec<Match> {
        if gt.is_empty() {
            return vec![Match::Background; anchors.len()];
        }
        let g = gt.len();
        let cols = GtColumns::new(gt);

        // Pass 1: each anchor's best IoU and box, and each box's best IoU over all anchors.
        let mut best = vec![(0.0f32, 0u32); anchors.len()];
        let gt_best = best
            .par_chunks_mut(CHUNK)
            .zip(anchors.par_chunks(CHUNK))
            .map(|(best, anchors)| {
                let mut row = vec![0.0f32; g];
                let mut gt_best = vec![0.0f32; g];
                for (slot, a) in best.iter_mut().zip(anchors) {
                    cols.ious(a, &mut row);
                    let mut arg = 0;
                    for j in 1..g {
                        // Strictly greater keeps the first box on ties (numpy/torch argmax).
                        if row[j] > row[arg] {
                            arg = j;
                        }
                    }
                    *slot = (row[arg], arg as u32);
                    for (m, &v) in gt_best.iter_mut().zip(&row) {
                        *m = m.max(v);
                    }
                }
                gt_best
            })
            .reduce(
                || vec![0.0f32; g],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x = x.max(y);
                    }
                    a
                },
            );

        let mut matches: Vec<Match> = best
            .iter()
            .map(|&(v, j)| {
                if v >= self.pos_iou {
                    Match::Gt(j)
                } else if v < self.neg_iou {
                    Match::Background
                } else {
                    Match::Ignore
                }
            })
            .collect();

        let floor = match self.low_quality {
            LowQualityMatches::None => return matches,
            LowQualityMatches::Detectron => self.neg_iou,
            LowQualityMatches::Any => 0.0,
        };
        // Pass 2: an anchor that attains some box's best IoU (ties included) becomes positive, matched to its
        // own best box. Recomputing the IoUs is cheaper than storing the A x G matrix.
        if gt_best.iter().all(|&m| m <= 0.0 || m < floor) {
            return matches;
        }
        matches
            .par_chunks_mut(CHUNK)
            .zip(anchors.par_chunks(CHUNK).zip(best.par_chunks(CHUNK)))
            .for_each(|(matches, (anchors, best))| {
                let mut row = vec![0.0f32; g];
                for ((m, a), &(v, j)) in matches.iter_mut().zip(anchors).zip(best) {
                    if matches!(m, Match::Gt(_)) || v <= 0.0 || v < floor {
                        continue;
                    }
                    cols.ious(a, &mut row);
                    if row.iter().zip(&gt_best).any(|(&x, &b)| x > 0.0 && x == b) {
                        *m = Match::Gt(j);
                    }
                }
            });
        matches
    }
}

/// Loss labels from matches `[A]` and the matched boxes' classes (0-based, `[G]`):
/// [`IGNORE_LABEL`], [`BACKGROUND_LABEL`], or `class + 1` for a positive (the label convention of
/// `loss`).
///
/// Panics if a match indexes past `gt_classes`: `matches` must come from `assign` on the same boxes.
pub fn anchor_labels(matches: &[Match], gt_classes: &[usize]) -> Vec<i32> {
    matches
        .iter()
        .map(|&m| match m {
            Match::Background => BACKGROUND_LABEL,
            Match::Ignore => IGNORE_LABEL,
            Match::Gt(j) => gt_classes[j as usize] as i32 + 1,
        })
        .collect()
}

/// The config's matcher section as the matcher takes it (the one place they are converted).
impl From<&crate::config::MatcherConfig> for Matcher {
    fn from(m: &crate::config::MatcherConfig) -> Self {
        use crate::config::LowQualityKind;
        Matcher {
            pos_iou: m.pos_iou as f32,
            neg_iou: m.neg_iou as f32,
            low_quality: match m.low_quality {
                LowQualityKind::None => LowQualityMatches::None,
                LowQualityKind::Detectron => LowQualityMatches::Detectron,
                LowQualityKind::Any => LowQualityMatches::Any,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Match::*;
    use super::*;
    use crate::geometry::boxes::{iou, tests::random_boxes};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn m(rule: LowQualityMatches) -> Matcher {
        Matcher {
            low_quality: rule,
            ..Default::default()
        }
    }

    /// A box of width `w` starting at x = 0 and an anchor [0, 0, 10, 10]: IoU = w / 10 for w <= 10.
    fn strip(w: f32) -> Box4 {
        [0.0, 0.0, w, 10.0]
    }

    const ALL: [LowQualityMatches; 3] = [
        LowQualityMatches::None,
        LowQualityMatches::Detectron,
        LowQualityMatches::Any,
    ];

    #[test]
    fn no_ground_truth_is_all_background() {
        let anchors = [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 9.0, 9.0]];
        for rule in ALL {
            assert_eq!(m(rule).assign(&anchors, &[]), vec![Background; 2]);
        }
        assert!(m(LowQualityMatches::Any)
            .assign(&[], &[[0.0, 0.0, 1.0, 1.0]])
            .is_empty());
    }

    #[test]
    fn thresholds_and_ignore_band() {
        // Anchors of widths 6, 4.5, 3 and 0.5 against one GT of width 10: IoUs 0.6, 0.45, 0.3, 0.05.
        // Another GT far away so the low-quality rules do not fire on these anchors.
        let gt = [strip(10.0), [100.0, 100.0, 110.0, 110.0]];
        let anchors = [
            strip(6.0),
            strip(4.5),
            strip(3.0),
            strip(0.5),
            [100.0, 100.0, 110.0, 110.0],
        ];
        for rule in ALL {
            let got = m(rule).assign(&anchors, &gt);
            assert_eq!(
                got,
                vec![Gt(0), Ignore, Background, Background, Gt(1)],
                "{rule:?}"
            );
        }
        // Exactly at the thresholds: 0.5 is positive, 0.4 is ignored (IoU >= 0.4 is not background).
        let got = m(LowQualityMatches::None)
            .assign(&[strip(5.0), strip(4.0), strip(10.0)], &[strip(10.0)]);
        assert_eq!(got, vec![Gt(0), Ignore, Gt(0)]);
    }

    #[test]
    fn gt_whose_best_iou_is_045() {
        // The GT's best anchor has IoU 0.45 (in the ignore band), the other 0.3.
        let gt = [strip(10.0)];
        let anchors = [strip(4.5), strip(3.0)];
        assert_eq!(
            m(LowQualityMatches::None).assign(&anchors, &gt),
            vec![Ignore, Background]
        );
        assert_eq!(
            m(LowQualityMatches::Detectron).assign(&anchors, &gt),
            vec![Gt(0), Background]
        );
        assert_eq!(
            m(LowQualityMatches::Any).assign(&anchors, &gt),
            vec![Gt(0), Background]
        );
    }

    #[test]
    fn gt_whose_best_iou_is_03() {
        let gt = [strip(10.0)];
        let anchors = [strip(3.0), strip(2.0)];
        assert_eq!(
            m(LowQualityMatches::None).assign(&anchors, &gt),
            vec![Background; 2]
        );
        // Detectron writes background after the low-quality positives: 0.3 < 0.4 stays background.
        assert_eq!(
            m(LowQualityMatches::Detectron).assign(&anchors, &gt),
            vec![Background; 2]
        );
        assert_eq!(
            m(LowQualityMatches::Any).assign(&anchors, &gt),
            vec![Gt(0), Background]
        );
    }

    #[test]
    fn low_quality_ties_and_own_best_box() {
        // Two anchors tie for GT 0's best IoU 0.45: both promoted.
        let gt = [strip(10.0)];
        let anchors = [strip(4.5), strip(4.5), strip(1.0)];
        assert_eq!(
            m(LowQualityMatches::Any).assign(&anchors, &gt),
            vec![Gt(0), Gt(0), Background]
        );
        // Anchor 0 is GT 1's best (IoU 0.3) and its own best box is GT 0 (IoU 0.45), whose best anchor is
        // anchor 1 (IoU 0.9). A promoted anchor is matched to its own best box, as in Detectron and detectron2.
        let gt = [[0.0, 0.0, 10.0, 10.0], [-10.5, 0.0, 4.5, 10.0]];
        let a = [[0.0, 0.0, 4.5, 10.0], [1.0, 0.0, 10.0, 10.0]];
        assert!(
            (iou(&a[0], &gt[1]) - 0.3).abs() < 1e-6
                && (iou(&a[1], &gt[1]) - 35.0 / 205.0).abs() < 1e-6
        );
        assert_eq!(
            m(LowQualityMatches::Any).assign(&a, &gt),
            vec![Gt(0), Gt(0)]
        );
        assert_eq!(
            m(LowQualityMatches::Detectron).assign(&a, &gt),
            vec![Gt(0), Gt(0)]
        );
        assert_eq!(
            m(LowQualityMatches::None).assign(&a, &gt),
            vec![Ignore, Gt(0)]
        );
        // Box whose best IoU is 0 with every anchor: no match under any rule.
        let gt = [[50.0, 50.0, 60.0, 60.0]];
        let anchors = [strip(5.0), strip(3.0)];
        for rule in ALL {
            assert_eq!(m(rule).assign(&anchors, &gt), vec![Background; 2]);
        }
    }

    /// Brute force: the rules written out on the full IoU matrix, in Detectron's order of operations.
    fn reference(mt: &Matcher, anchors: &[Box4], gt: &[Box4]) -> Vec<Match> {
        if gt.is_empty() {
            return vec![Background; anchors.len()];
        }
        let iou_m: Vec<Vec<f32>> = anchors
            .iter()
            .map(|a| gt.iter().map(|g| iou(a, g)).collect())
            .collect();
        let argmax = |r: &Vec<f32>| (0..r.len()).fold(0, |b, j| if r[j] > r[b] { j } else { b });
        let mut out = vec![Ignore; anchors.len()];
        let gt_max: Vec<f32> = (0..gt.len())
            .map(|j| iou_m.iter().map(|r| r[j]).fold(0.0, f32::max))
            .collect();
        if mt.low_quality != LowQualityMatches::None {
            for (i, r) in iou_m.iter().enumerate() {
                if (0..gt.len()).any(|j| r[j] == gt_max[j] && gt_max[j] > 0.0) {
                    out[i] = Gt(argmax(r) as u32);
                }
            }
        }
        for (i, r) in iou_m.iter().enumerate() {
            let best = r[argmax(r)];
            if best >= mt.pos_iou {
                out[i] = Gt(argmax(r) as u32);
            }
        }
        for (i, r) in iou_m.iter().enumerate() {
            let best = r[argmax(r)];
            if best < mt.neg_iou
                && (mt.low_quality != LowQualityMatches::Any || !matches!(out[i], Gt(_)))
            {
                out[i] = Background;
            }
        }
        out
    }

    #[test]
    fn random_cases_match_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [1usize, 5, 40] {
            let gt = random_boxes(&mut rng, n);
            // Enough anchors for several parallel chunks.
            let anchors = random_boxes(&mut rng, 3000);
            for rule in ALL {
                let mt = m(rule);
                assert_eq!(
                    mt.assign(&anchors, &gt),
                    reference(&mt, &anchors, &gt),
                    "{rule:?} n={n}"
                );
            }
        }
    }

    #[test]
    fn labels_and_validation() {
        assert_eq!(
            anchor_labels(&[Gt(1), Background, Ignore, Gt(0)], &[4, 0]),
            vec![1, 0, -1, 5]
        );
        assert!(Matcher::default().validate().is_ok());
        let e = Matcher {
            neg_iou: 0.6,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("neg_iou = 0.6"), "{e}");
        let e = Matcher {
            pos_iou: f32::NAN,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("pos_iou = NaN"), "{e}");
        assert_eq!(
            "any".parse::<LowQualityMatches>().unwrap(),
            LowQualityMatches::Any
        );
        assert!("some"
            .parse::<LowQualityMatches>()
            .unwrap_err()
            .to_string()
            .contains("some"));
        let mt: Matcher = toml::from_str("low_quality = \"none\"").unwrap();
        assert_eq!(mt.low_quality, LowQualityMatches::None);
        assert_eq!(mt.pos_iou, 0.5);
    }
}
