//! Online hard example mining (OHEM) selection for the paper's Table 1d baseline.
//!
//! The paper (§5.1): "each example is scored by its loss, non-maximum suppression (nms) is then applied, and a
//! minibatch is constructed with the highest-loss examples"; for "OHEM 1:3", "after applying nms to all
//! examples, the minibatch is constructed to enforce a 1:3 ratio between positives and negatives" (SSD's hard
//! negative mining). [`select`] does this for one image:
//!
//! 1. drop ignored anchors (label `-1`);
//! 2. order the rest by descending loss (ties by anchor index; a NaN loss counts as +infinity, so a diverging
//!    model is not hidden by the selection);
//! 3. greedy NMS in that order at `nms_threshold` (a box is dropped if a kept, higher-loss box overlaps it with
//!    IoU strictly above the threshold; 1.0 turns NMS off);
//! 4. take the `batch_size` highest-loss survivors; with `positive_fraction = Some(f)` take at most
//!    `floor(f * B)` positives and at most `floor(n_pos * (1 - f) / f)` negatives (3 per positive for
//!    `f = 0.25`), never more than `B` in all.
//!
//! Returns the selected anchor indices by descending loss. Anchors not returned get no loss: OHEM "completely
//! discards easy examples".
//!
//! ## Choices the paper leaves open (docs/paper.md §6, [unspecified])
//! - **Batch size per image.** `batch_size` here is per image. The paper's "batch size" (128/256/512) may count
//!   anchors per image or per minibatch; §4.1 speaks of "a small set of anchors (e.g., 256) for each
//!   minibatch", the RPN convention, which Faster R-CNN applies per image. A per-minibatch budget B over N
//!   images is `batch_size = B / N` here.
//! - **Which boxes NMS runs on.** The caller passes them. fl-lab's training passes the **anchors**: they are
//!   OHEM's RoIs (Shrivastava et al. run NMS on the RoIs whose losses they rank), and they do not depend on
//!   how well the box branch has learned yet. Passing the decoded predicted boxes is the alternative, and
//!   both give the same selection at `nms_threshold = 1.0`.
//! - **The scoring loss.** The caller passes one loss per anchor. fl-lab scores an anchor by the loss it would
//!   train with: the binary cross entropy summed over the K classes (the paper presumes plain CE for OHEM),
//!   plus the box loss for positives, as OHEM scores an RoI by its classification plus regression loss. The
//!   selected anchors are then trained with that loss, divided by the training normaliser as every loss is:
//!   the minibatch's positive anchors counted before selection (or their moving average, `loss.normalizer`).
//! - **The 1:3 ratio when positives are short.** SSD enforces the ratio: with `n_pos` positives it keeps at
//!   most `3 n_pos` negatives, so an image without positives selects nothing. [`select`] does the same.
//!   [`select_with`] and [`RatioMode::FillWithNegatives`] offer Fast R-CNN's sampler instead (at most 25%
//!   positives, negatives fill the rest of the batch).

use crate::geometry::boxes::area;
use crate::geometry::nms::KeptIndex;
use crate::geometry::Box4;

/// OHEM settings (Table 1d: batch size 128/256/512, NMS 0.5/0.7, and `Some(0.25)` for "OHEM 1:3"),
/// made from `loss.ohem_*` of the config, whose defaults are the one description of the settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OhemConfig {
    /// Examples selected per image.
    pub batch_size: usize,
    /// IoU above which a lower-loss example is suppressed by a higher-loss one.
    pub nms_threshold: f32,
    /// `Some(f)`: at most a fraction `f` of the batch are positives (SSD's 1:3 is `0.25`).
    pub positive_fraction: Option<f32>,
}

/// Invalid OHEM settings; the message names the field and its value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid ohem.{field} = {value}: {reason}")]
pub struct OhemConfigError {
    pub field: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl OhemConfig {
    pub fn validate(&self) -> Result<(), OhemConfigError> {
        if self.batch_size == 0 {
            return Err(OhemConfigError {
                field: "batch_size",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        if !(self.nms_threshold.is_finite() && (0.0..=1.0).contains(&self.nms_threshold)) {
            return Err(OhemConfigError {
                field: "nms_threshold",
                value: format!("{:?}", self.nms_threshold),
                reason: "must be in [0, 1] (1 turns NMS off)",
            });
        }
        if let Some(f) = self.positive_fraction {
            if !(f.is_finite() && f > 0.0 && f <= 1.0) {
                return Err(OhemConfigError {
                    field: "positive_fraction",
                    value: format!("{f:?}"),
                    reason: "must be in (0, 1] (0.25 is SSD's 1:3)",
                });
            }
        }
        Ok(())
    }
}

/// How `positive_fraction` builds the batch when positives are fewer than the fraction allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RatioMode {
    /// SSD: at most `(1 - f) / f` negatives per selected positive (3 for `f = 0.25`).
    #[default]
    Enforce,
    /// Fast R-CNN's sampler: at most `floor(f B)` positives, negatives fill the batch up to `B`.
    FillWithNegatives,
}

/// Select the OHEM minibatch of one image (see the module documentation). `losses`, `boxes`, `labels`
/// are `[A]` (labels: -1 ignore, 0 background, 1..=K foreground). Returns indices by descending loss.
pub fn select(losses: &[f32], boxes: &[Box4], labels: &[i32], cfg: &OhemConfig) -> Vec<usize> {
    select_with(losses, boxes, labels, cfg, RatioMode::Enforce)
}

/// [`select`] with an explicit [`RatioMode`] for `positive_fraction`.
pub fn select_with(
    losses: &[f32],
    boxes: &[Box4],
    labels: &[i32],
    cfg: &OhemConfig,
    mode: RatioMode,
) -> Vec<usize> {
    selection(losses, boxes, labels, cfg, mode).indices
}

/// One image's OHEM minibatch and whether its positive quota bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The selected anchors by descending loss.
    pub indices: Vec<usize>,
    /// With a `positive_fraction` (`floor(f * B)` positives at most): whether the positives that
    /// survive NMS reached that quota. Where they did not, the selection is the same for every
    /// larger batch size in [`RatioMode::Enforce`]: all surviving positives and three negatives
    /// per positive, which is less than the batch. Without a fraction: false.
    pub positive_quota_full: bool,
}

/// [`select_with`], also saying whether the positive quota bound ([`Selection`]).
pub fn selection(
    losses: &[f32],
    boxes: &[Box4],
    labels: &[i32],
    cfg: &OhemConfig,
    mode: RatioMode,
) -> Selection {
    assert!(
        losses.len() == boxes.len() && losses.len() == labels.len(),
        "ohem::select: losses, boxes and labels differ in length"
    );
    let b = cfg.batch_size;
    if b == 0 {
        return Selection {
            indices: Vec::new(),
            positive_quota_full: cfg.positive_fraction.is_some(),
        };
    }
    let key = |i: usize| {
        if losses[i].is_nan() {
            f32::INFINITY
        } else {
            losses[i]
        }
    };
    let mut order: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
    order.sort_unstable_by(|&x, &y| key(y).total_cmp(&key(x)).then(x.cmp(&y)));

    // Quotas: positives at most `pos_cap`; negatives at most `neg_cap(n_pos)`.
    let (pos_cap, ratio) = match cfg.positive_fraction {
        None => (b, None),
        Some(f) => (
            ((f64::from(f) * b as f64) + 1e-9).floor() as usize,
            Some(f64::from(f)),
        ),
    };
    let neg_cap = |n_pos: usize| -> usize {
        match (ratio, mode) {
            (None, _) => b - n_pos,
            (Some(_), RatioMode::FillWithNegatives) => b - n_pos,
            (Some(f), RatioMode::Enforce) => {
                let per = (1.0 - f) / f;
                ((n_pos as f64 * per + 1e-9).floor() as usize).min(b - n_pos)
            }
        }
    };

    let areas: Vec<f32> = if cfg.nms_threshold < 1.0 {
        boxes.iter().map(area).collect()
    } else {
        Vec::new()
    };
    let mut kept =
        (cfg.nms_threshold < 1.0).then(|| KeptIndex::new(boxes, &areas, cfg.nms_threshold, &order));
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    for &i in &order {
        let done = match ratio {
            // Without a ratio the batch is simply the first B survivors.
            None => pos.len() + neg.len() >= b,
            Some(_) => pos.len() >= pos_cap && neg.len() >= neg_cap(pos_cap),
        };
        if done {
            break;
        }
        if let Some(k) = kept.as_mut() {
            if k.suppresses(i) {
                continue;
            }
            // A survivor suppresses later examples whether or not the batch has room for it: the NMS is
            // over all examples, the batch is built afterwards.
            k.insert(i);
        }
        if labels[i] > 0 {
            pos.push(i);
        } else {
            neg.push(i);
        }
    }
    // The loop stops early only once the positives fill their quota; otherwise `pos` holds every
    // positive that survives NMS.
    let positive_quota_full = ratio.is_some() && pos.len() >= pos_cap;
    let n_pos = pos.len().min(pos_cap);
    let n_neg = neg.len().min(neg_cap(n_pos));
    let mut out: Vec<usize> = pos[..n_pos].iter().chain(&neg[..n_neg]).copied().collect();
    out.sort_unstable_by(|&x, &y| key(y).total_cmp(&key(x)).then(x.cmp(&y)));
    Selection {
        indices: out,
        positive_quota_full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{iou, nms};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn cfg(b: usize, nms: f32, f: Option<f32>) -> OhemConfig {
        OhemConfig {
            batch_size: b,
            nms_threshold: nms,
            positive_fraction: f,
        }
    }

    /// Boxes spaced 100 px apart: no overlaps.
    fn apart(n: usize) -> Vec<Box4> {
        (0..n)
            .map(|i| [100.0 * i as f32, 0.0, 100.0 * i as f32 + 10.0, 10.0])
            .collect()
    }

    #[test]
    fn highest_losses_without_nms_effect() {
        let losses = [0.1, 5.0, 0.3, 2.0, 2.0, 0.0];
        let labels = [0, 0, 1, 0, 0, 0];
        let got = select(&losses, &apart(6), &labels, &cfg(3, 0.5, None));
        // Tie between 3 and 4 broken by index.
        assert_eq!(got, vec![1, 3, 4]);
        assert_eq!(
            select(&losses, &apart(6), &labels, &cfg(100, 0.5, None)),
            vec![1, 3, 4, 2, 0, 5]
        );
    }

    #[test]
    fn nms_suppresses_overlapping_lower_loss_examples() {
        // 0 and 1 overlap at IoU 0.818; 2 overlaps 1 at IoU 0.818 but not 0 (0.667); 3 is apart.
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [2.0, 0.0, 12.0, 10.0],
            [50.0, 0.0, 60.0, 10.0],
        ];
        let losses = [3.0, 2.0, 1.0, 0.5];
        let labels = [0, 1, 0, 0];
        // 1 is suppressed by 0; then 2 (IoU 0.667 with 0) survives at 0.7 but not at 0.5.
        assert_eq!(
            select(&losses, &boxes, &labels, &cfg(3, 0.7, None)),
            vec![0, 2, 3]
        );
        assert_eq!(
            select(&losses, &boxes, &labels, &cfg(3, 0.5, None)),
            vec![0, 3]
        );
        // 1.0 turns NMS off.
        assert_eq!(
            select(&losses, &boxes, &labels, &cfg(3, 1.0, None)),
            vec![0, 1, 2]
        );
        // A suppressed example frees no room: the batch is not refilled past the suppressed one.
        assert_eq!(
            select(&losses, &boxes, &labels, &cfg(1, 0.5, None)),
            vec![0]
        );
    }

    #[test]
    fn ignored_anchors_are_never_selected() {
        let losses = [9.0, 8.0, 1.0, 0.5];
        // The ignored anchor 0 has the highest loss and overlaps anchor 1 completely: it must neither be
        // selected nor suppress anything.
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
            [50.0, 0.0, 60.0, 10.0],
            [90.0, 0.0, 99.0, 9.0],
        ];
        let labels = [-1, 0, 2, 0];
        for f in [None, Some(0.25), Some(0.5)] {
            let got = select(&losses, &boxes, &labels, &cfg(4, 0.5, f));
            assert!(!got.contains(&0), "{f:?}: {got:?}");
            assert!(f.is_some() || got == vec![1, 2, 3]);
        }
        assert!(select(&[1.0; 3], &apart(3), &[-1; 3], &cfg(8, 0.5, None)).is_empty());
    }

    #[test]
    fn one_to_three_ratio() {
        // 10 positives and 100 negatives, negatives harder than every positive, no overlaps.
        let n = 110;
        let labels: Vec<i32> = (0..n).map(|i| if i < 10 { 1 } else { 0 }).collect();
        let losses: Vec<f32> = (0..n)
            .map(|i| {
                if i < 10 {
                    1.0 - i as f32 * 0.01
                } else {
                    10.0 + i as f32
                }
            })
            .collect();
        let boxes = apart(n);
        // B = 16: at most 4 positives, 3 negatives each: 4 + 12.
        let got = select(&losses, &boxes, &labels, &cfg(16, 0.5, Some(0.25)));
        let p = got.iter().filter(|&&i| labels[i] > 0).count();
        assert_eq!((p, got.len() - p), (4, 12));
        // The positives are the 4 hardest positives, the negatives the 12 hardest negatives.
        assert!(got.iter().filter(|&&i| labels[i] > 0).all(|&i| i < 4));
        assert!(got
            .iter()
            .filter(|&&i| labels[i] == 0)
            .all(|&i| i >= n - 12));
        // B = 128: all 10 positives, and 30 negatives (enforced), or 118 (fill).
        let got = select(&losses, &boxes, &labels, &cfg(128, 0.5, Some(0.25)));
        assert_eq!(got.len(), 40);
        let got = select_with(
            &losses,
            &boxes,
            &labels,
            &cfg(128, 0.5, Some(0.25)),
            RatioMode::FillWithNegatives,
        );
        assert_eq!(got.len(), 110);
        let got = select_with(
            &losses,
            &boxes,
            &labels,
            &cfg(64, 0.5, Some(0.25)),
            RatioMode::FillWithNegatives,
        );
        assert_eq!(got.iter().filter(|&&i| labels[i] > 0).count(), 10);
        assert_eq!(got.len(), 64);
        // No positives: SSD's rule selects nothing.
        assert!(select(
            &losses[10..],
            &boxes[10..],
            &labels[10..],
            &cfg(16, 0.5, Some(0.25))
        )
        .is_empty());
        // Without a ratio the 16 hardest are all negatives.
        let got = select(&losses, &boxes, &labels, &cfg(16, 0.5, None));
        assert!(got.iter().all(|&i| labels[i] == 0));
    }

    /// Reference: full NMS with the library's tested `nms`, then the quotas on the survivors.
    fn reference(losses: &[f32], boxes: &[Box4], labels: &[i32], c: &OhemConfig) -> Vec<usize> {
        let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
        let b: Vec<Box4> = idx.iter().map(|&i| boxes[i]).collect();
        let s: Vec<f32> = idx.iter().map(|&i| losses[i]).collect();
        let survivors: Vec<usize> = nms(&b, &s, c.nms_threshold)
            .into_iter()
            .map(|k| idx[k])
            .collect();
        let pos: Vec<usize> = survivors
            .iter()
            .copied()
            .filter(|&i| labels[i] > 0)
            .collect();
        let neg: Vec<usize> = survivors
            .iter()
            .copied()
            .filter(|&i| labels[i] == 0)
            .collect();
        let mut out = match c.positive_fraction {
            None => survivors[..survivors.len().min(c.batch_size)].to_vec(),
            Some(f) => {
                let np = pos.len().min((f * c.batch_size as f32) as usize);
                let nn = neg
                    .len()
                    .min(c.batch_size - np)
                    .min((np as f32 * (1.0 - f) / f) as usize);
                pos[..np].iter().chain(&neg[..nn]).copied().collect()
            }
        };
        out.sort_by(|&x, &y| losses[y].partial_cmp(&losses[x]).unwrap().then(x.cmp(&y)));
        out
    }

    #[test]
    fn random_cases_match_full_nms_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let anchors = crate::geometry::AnchorConfig::default().generate(128, 128);
        let boxes = &anchors.boxes;
        for trial in 0..6 {
            let labels: Vec<i32> = (0..boxes.len())
                .map(|_| match rng.gen_range(0..100) {
                    0..=4 => rng.gen_range(1..4),
                    5..=9 => -1,
                    _ => 0,
                })
                .collect();
            let losses: Vec<f32> = (0..boxes.len())
                .map(|_| rng.gen_range(0..1000) as f32 / 100.0)
                .collect();
            for c in [
                cfg(128, 0.7, None),
                cfg(256, 0.5, None),
                cfg(128, 0.5, Some(0.25)),
                cfg(512, 0.5, Some(0.25)),
            ] {
                let got = select(&losses, boxes, &labels, &c);
                assert_eq!(
                    got,
                    reference(&losses, boxes, &labels, &c),
                    "trial {trial} {c:?}"
                );
                // Selected examples never overlap above the threshold.
                for (a, &i) in got.iter().enumerate() {
                    for &j in &got[a + 1..] {
                        assert!(iou(&boxes[i], &boxes[j]) <= c.nms_threshold);
                    }
                }
            }
        }
    }

    /// Where the positives that survive NMS stay under the quota of a batch size, every larger batch
    /// size selects the same anchors; where they reach it, the flag says so. Against the full-NMS
    /// reference's count of surviving positives.
    #[test]
    fn positive_quota_flag_says_when_a_larger_batch_would_differ() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let anchors = crate::geometry::AnchorConfig::default().generate(64, 64);
        let boxes = &anchors.boxes;
        let (mut full, mut under) = (0, 0);
        for trial in 0..40 {
            // From a few positives per image to many, so that both outcomes occur.
            let share = [1, 3, 10, 30][trial % 4];
            let labels: Vec<i32> = (0..boxes.len())
                .map(|_| i32::from(rng.gen_range(0..1000) < share))
                .collect();
            let losses: Vec<f32> = (0..boxes.len())
                .map(|_| rng.gen_range(0..1000) as f32 / 100.0)
                .collect();
            for nms_threshold in [0.5, 1.0] {
                let small = cfg(16, nms_threshold, Some(0.25));
                let got = selection(&losses, boxes, &labels, &small, RatioMode::Enforce);
                let everything = cfg(100_000, nms_threshold, Some(0.25));
                let survivors = reference(&losses, boxes, &labels, &everything)
                    .iter()
                    .filter(|&&i| labels[i] > 0)
                    .count();
                assert_eq!(got.positive_quota_full, survivors >= 4, "trial {trial}");
                let larger = select(&losses, boxes, &labels, &cfg(64, nms_threshold, Some(0.25)));
                if got.positive_quota_full {
                    full += 1;
                } else {
                    under += 1;
                    assert_eq!(got.indices, larger, "trial {trial}: quota not full");
                }
            }
            let no_ratio = selection(
                &losses,
                boxes,
                &labels,
                &cfg(16, 0.5, None),
                RatioMode::Enforce,
            );
            assert!(!no_ratio.positive_quota_full);
        }
        assert!(full > 0 && under > 0, "{full} full, {under} under");
    }

    #[test]
    fn validation_names_field() {
        assert!(cfg(128, 0.5, None).validate().is_ok());
        let e = cfg(0, 0.5, None).validate().unwrap_err().to_string();
        assert!(e.contains("batch_size = 0"), "{e}");
        let e = cfg(8, 1.5, None).validate().unwrap_err().to_string();
        assert!(e.contains("nms_threshold = 1.5"), "{e}");
        let e = cfg(8, 0.5, Some(0.0)).validate().unwrap_err().to_string();
        assert!(e.contains("positive_fraction = 0.0"), "{e}");
    }
}
