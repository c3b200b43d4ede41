//! Per-image decoding of RetinaNet outputs into scored, class-labelled boxes.

use rayon::prelude::*;

use super::InferError;
use crate::geometry::nms::batched_nms;
use crate::geometry::{clip, Anchors, Box4, BoxCoder};

/// Inference settings. `Default` is the paper's (§4 "Inference"): score threshold 0.05, 1000 candidates
/// per level, class-wise NMS at 0.5, and 100 detections per image (COCO's limit; Detectron's
/// `DETECTIONS_PER_IM`).
///
/// Detectron uses threshold 0.0 on the coarsest level (`INFERENCE_TH` is skipped on P7); this applies one
/// threshold to every level, as detectron2 does.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferConfig {
    pub score_threshold: f32,
    pub topk_per_level: usize,
    pub nms_threshold: f32,
    pub max_detections: usize,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            score_threshold: 0.05,
            topk_per_level: 1000,
            nms_threshold: 0.5,
            max_detections: 100,
        }
    }
}

impl InferConfig {
    /// Check every field; the error names the field and value.
    pub fn validate(&self) -> Result<(), InferError> {
        let bad = |field, value: String, reason| {
            Err(InferError::InvalidField {
                field,
                value,
                reason,
            })
        };
        if !(self.score_threshold.is_finite() && (0.0..1.0).contains(&self.score_threshold)) {
            return bad(
                "score_threshold",
                format!("{:?}", self.score_threshold),
                "must be in [0, 1)",
            );
        }
        if self.topk_per_level == 0 {
            return bad("topk_per_level", "0".into(), "must be at least 1");
        }
        if !(self.nms_threshold.is_finite() && (0.0..=1.0).contains(&self.nms_threshold)) {
            return bad(
                "nms_threshold",
                format!("{:?}", self.nms_threshold),
                "must be in [0, 1]",
            );
        }
        if self.max_detections == 0 {
            return bad("max_detections", "0".into(), "must be at least 1");
        }
        Ok(())
    }
}

/// One detected object, in the coordinates of the network input (see `rescale_detections`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    pub bbox: Box4,
    pub score: f32,
    /// Contiguous 0-based class index (the loss label minus 1).
    pub class: usize,
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Order candidates by descending score, then ascending index: a total order, so top-k is deterministic.
#[inline]
fn by_score(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The `k` best (score, index) pairs of one level's logits `[count * K]` with sigmoid score strictly above
/// `threshold`, best first, into `out` (cleared first).
pub(crate) fn level_topk(logits: &[f32], threshold: f32, k: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    // Filter in logit space, so only survivors pay for exp(); the margin keeps values whose rounded sigmoid
    // sits right at the threshold, and the exact test on the sigmoid decides.
    let cut = if threshold <= 0.0 {
        f32::NEG_INFINITY
    } else {
        let t = (threshold / (1.0 - threshold)).ln();
        t - 1e-3 * (1.0 + t.abs())
    };
    for (i, &x) in logits.iter().enumerate() {
        if x > cut {
            let p = sigmoid(x);
            if p > threshold {
                out.push((p, i as u32));
            }
        }
    }
    if out.len() > k {
        if k == 0 {
            out.clear();
            return;
        }
        out.select_nth_unstable_by(k - 1, by_score);
        out.truncate(k);
    }
    out.sort_unstable_by(by_score);
}

/// Detections of one image.
///
/// - `logits`: `[total_anchors * K]`, flattened in (level, y, x, anchor, class) order;
/// - `deltas`: `[total_anchors * 4]`, in (level, y, x, anchor) order;
/// - `anchors`: those the model's outputs were laid out for;
/// - `image_h`, `image_w`: the size of the (unpadded) network input, for clipping.
///
/// Returns at most `max_detections` detections by descending score; equal scores keep the order of their
/// (anchor, class) index. Panics if the slice lengths disagree with `anchors` and `num_classes` (a
/// programming error, not bad input).
#[allow(clippy::too_many_arguments)]
pub fn detect_image(
    logits: &[f32],
    deltas: &[f32],
    anchors: &Anchors,
    num_classes: usize,
    coder: &BoxCoder,
    cfg: &InferConfig,
    image_h: f32,
    image_w: f32,
) -> Vec<Detection> {
    let k = num_classes;
    assert_eq!(
        logits.len(),
        anchors.len() * k,
        "detect_image: logits length != anchors x classes"
    );
    assert_eq!(
        deltas.len(),
        anchors.len() * 4,
        "detect_image: deltas length != anchors x 4"
    );
    let mut boxes: Vec<Box4> = Vec::new();
    let mut scores: Vec<f32> = Vec::new();
    let mut classes: Vec<usize> = Vec::new();
    let mut cand = Vec::new();
    for level in &anchors.levels {
        let range = level.offset * k..(level.offset + level.count) * k;
        level_topk(
            &logits[range],
            cfg.score_threshold,
            cfg.topk_per_level,
            &mut cand,
        );
        for &(score, i) in &cand {
            let a = level.offset + i as usize / k;
            let d = &deltas[4 * a..4 * a + 4];
            let b = coder.decode(&anchors.boxes[a], &[d[0], d[1], d[2], d[3]]);
            boxes.push(clip(&b, image_h, image_w));
            scores.push(score);
            classes.push(i as usize % k);
        }
    }
    let mut keep = batched_nms(&boxes, &scores, &classes, cfg.nms_threshold);
    keep.truncate(cfg.max_detections);
    keep.into_iter()
        .map(|i| Detection {
            bbox: boxes[i],
            score: scores[i],
            class: classes[i],
        })
        .collect()
}

/// [`detect_image`] for a batch of `N` images in parallel: `logits` `[N, total_anchors, K]`, `deltas`
/// `[N, total_anchors, 4]`, `image_sizes` `[N]` of (height, width).
pub fn detect_batch(
    logits: &[f32],
    deltas: &[f32],
    anchors: &Anchors,
    num_classes: usize,
    coder: &BoxCoder,
    cfg: &InferConfig,
    image_sizes: &[(f32, f32)],
) -> Vec<Vec<Detection>> {
    let per_logits = anchors.len() * num_classes;
    let per_deltas = anchors.len() * 4;
    let n = image_sizes.len();
    assert_eq!(
        logits.len(),
        n * per_logits,
        "detect_batch: logits length != N x anchors x classes"
    );
    assert_eq!(
        deltas.len(),
        n * per_deltas,
        "detect_batch: deltas length != N x anchors x 4"
    );
    image_sizes
        .par_iter()
        .enumerate()
        .map(|(i, &(h, w))| {
            detect_image(
                &logits[i * per_logits..(i + 1) * per_logits],
                &deltas[i * per_deltas..(i + 1) * per_deltas],
                anchors,
                num_classes,
                coder,
                cfg,
                h,
                w,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{iou, AnchorConfig};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Logits on a coarse grid (many ties), a few around the 0.05 threshold's logit, and some saturated.
    fn random_logits(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        let t = (0.05f32 / 0.95).ln();
        (0..n)
            .map(|_| match rng.gen_range(0..10) {
                0 => t + rng.gen_range(-1e-6..1e-6f32),
                1 => rng.gen_range(-20..20) as f32 * 0.5,
                2 => 1e4,
                _ => rng.gen_range(-8.0..2.0f32),
            })
            .collect()
    }

    fn brute_topk(logits: &[f32], thr: f32, k: usize) -> Vec<(f32, u32)> {
        let mut all: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (1.0 / (1.0 + (-x).exp()), i as u32))
            .filter(|&(p, _)| p > thr)
            .collect();
        all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        all.truncate(k);
        all
    }

    #[test]
    fn level_topk_equals_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = vec![];
        for n in [0, 1, 50, 5000] {
            let logits = random_logits(&mut rng, n);
            for thr in [0.0, 0.05, 0.5, 0.99] {
                for k in [0, 1, 7, 100, 10_000] {
                    level_topk(&logits, thr, k, &mut out);
                    assert_eq!(out, brute_topk(&logits, thr, k), "n={n} thr={thr} k={k}");
                }
            }
        }
    }

    /// The whole pipeline written out directly: full sort per level, decode, clip, textbook class-wise NMS.
    #[allow(clippy::too_many_arguments)]
    fn brute_detect(
        logits: &[f32],
        deltas: &[f32],
        anchors: &Anchors,
        k: usize,
        coder: &BoxCoder,
        cfg: &InferConfig,
        h: f32,
        w: f32,
    ) -> Vec<Detection> {
        let mut c = vec![];
        for l in &anchors.levels {
            let lg = &logits[l.offset * k..(l.offset + l.count) * k];
            for (p, i) in brute_topk(lg, cfg.score_threshold, cfg.topk_per_level) {
                let a = l.offset + i as usize / k;
                let d = [
                    deltas[4 * a],
                    deltas[4 * a + 1],
                    deltas[4 * a + 2],
                    deltas[4 * a + 3],
                ];
                let b = clip(&coder.decode(&anchors.boxes[a], &d), h, w);
                c.push(Detection {
                    bbox: b,
                    score: p,
                    class: i as usize % k,
                });
            }
        }
        // Stable sort: equal scores keep their (level, index) order.
        let mut order: Vec<usize> = (0..c.len()).collect();
        order.sort_by(|&a, &b| c[b].score.partial_cmp(&c[a].score).unwrap());
        let mut keep: Vec<Detection> = vec![];
        for i in order {
            let d = c[i];
            if keep
                .iter()
                .all(|e| e.class != d.class || iou(&e.bbox, &d.bbox) <= cfg.nms_threshold)
            {
                keep.push(d);
            }
        }
        keep.truncate(cfg.max_detections);
        keep
    }

    #[test]
    fn detect_image_matches_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let anchors = AnchorConfig::default().generate(128, 96);
        let k = 3;
        let coder = BoxCoder::default();
        for cfg in [
            InferConfig::default(),
            InferConfig {
                topk_per_level: 20,
                max_detections: 15,
                ..Default::default()
            },
            InferConfig {
                score_threshold: 0.3,
                nms_threshold: 0.3,
                ..Default::default()
            },
        ] {
            let logits = random_logits(&mut rng, anchors.len() * k);
            let deltas: Vec<f32> = (0..anchors.len() * 4)
                .map(|_| rng.gen_range(-0.5..0.5f32))
                .collect();
            let got = detect_image(&logits, &deltas, &anchors, k, &coder, &cfg, 128.0, 96.0);
            let want = brute_detect(&logits, &deltas, &anchors, k, &coder, &cfg, 128.0, 96.0);
            assert_eq!(got, want, "{cfg:?}");
            assert!(got.len() <= cfg.max_detections);
            for d in &got {
                assert!(d.score > cfg.score_threshold);
                assert!(
                    d.bbox[0] >= 0.0 && d.bbox[2] <= 96.0 && d.bbox[1] >= 0.0 && d.bbox[3] <= 128.0
                );
            }
        }
    }

    #[test]
    fn constructed_nms_is_class_wise_and_capped() {
        // One location on a single level with 9 anchors; all deltas 0, so anchors are the boxes.
        let cfg_a = AnchorConfig {
            min_level: 5,
            max_level: 5,
            ..Default::default()
        };
        let anchors = cfg_a.generate(32, 32);
        assert_eq!(anchors.len(), 9);
        let k = 2;
        let mut logits = vec![-10.0f32; 9 * k];
        // Anchor 4 (square, 2^(1/3) scale) class 0 and class 1, anchor 1 (square, base scale) class 0:
        // clipped to the image, anchors 1 and 4 overlap at IoU 80^2 / 96.6^2 = 0.69.
        logits[4 * k] = 3.0;
        logits[4 * k + 1] = 2.0;
        logits[k] = 1.0;
        let deltas = vec![0.0f32; 9 * 4];
        let coder = BoxCoder::default();
        let cfg = InferConfig::default();
        let dets = detect_image(&logits, &deltas, &anchors, k, &coder, &cfg, 1000.0, 1000.0);
        let got: Vec<(usize, usize)> = dets
            .iter()
            .map(|d| {
                let i = anchors
                    .boxes
                    .iter()
                    .position(|b| clip(b, 1000.0, 1000.0) == d.bbox);
                (i.unwrap(), d.class)
            })
            .collect();
        // Class 1 survives beside class 0 on the same box; anchor 1's class 0 is suppressed.
        assert_eq!(got, vec![(4, 0), (4, 1)]);
        let capped = detect_image(
            &logits,
            &deltas,
            &anchors,
            k,
            &coder,
            &InferConfig {
                max_detections: 1,
                ..Default::default()
            },
            1000.0,
            1000.0,
        );
        assert_eq!(capped.len(), 1);
        assert_eq!(capped[0].class, 0);
        // Nothing above the threshold: no detections.
        let none = detect_image(
            &[-10.0; 18],
            &deltas,
            &anchors,
            k,
            &coder,
            &cfg,
            1000.0,
            1000.0,
        );
        assert!(none.is_empty());
    }

    #[test]
    fn decoding_inverts_the_coder() {
        // Deltas encoded from known boxes decode back to them in the detections.
        let cfg_a = AnchorConfig {
            min_level: 4,
            max_level: 4,
            ..Default::default()
        };
        let anchors = cfg_a.generate(64, 64);
        let coder = BoxCoder::default();
        let gt = [[10.0, 12.0, 40.0, 50.0], [30.0, 5.0, 60.0, 20.0]];
        let mut logits = vec![-20.0f32; anchors.len()];
        let mut deltas = vec![0.0f32; anchors.len() * 4];
        for (j, (g, a)) in gt.iter().zip([5usize, 70]).enumerate() {
            logits[a] = 2.0 - j as f32;
            deltas[4 * a..4 * a + 4].copy_from_slice(&coder.encode(&anchors.boxes[a], g));
        }
        let dets = detect_image(
            &logits,
            &deltas,
            &anchors,
            1,
            &coder,
            &InferConfig::default(),
            64.0,
            64.0,
        );
        assert_eq!(dets.len(), 2);
        for (d, g) in dets.iter().zip(&gt) {
            for c in 0..4 {
                assert!((d.bbox[c] - g[c]).abs() < 1e-3, "{:?} {g:?}", d.bbox);
            }
        }
    }

    #[test]
    fn batch_equals_per_image_and_config_validation() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let anchors = AnchorConfig::default().generate(64, 64);
        let k = 2;
        let logits = random_logits(&mut rng, 3 * anchors.len() * k);
        let deltas: Vec<f32> = (0..3 * anchors.len() * 4)
            .map(|_| rng.gen_range(-0.5..0.5f32))
            .collect();
        let (coder, cfg) = (BoxCoder::default(), InferConfig::default());
        let sizes = [(64.0, 64.0), (60.0, 50.0), (64.0, 40.0)];
        let batch = detect_batch(&logits, &deltas, &anchors, k, &coder, &cfg, &sizes);
        for (i, &(h, w)) in sizes.iter().enumerate() {
            let (nl, nd) = (anchors.len() * k, anchors.len() * 4);
            let one = detect_image(
                &logits[i * nl..(i + 1) * nl],
                &deltas[i * nd..(i + 1) * nd],
                &anchors,
                k,
                &coder,
                &cfg,
                h,
                w,
            );
            assert_eq!(batch[i], one);
        }
        assert!(cfg.validate().is_ok());
        let e = InferConfig {
            score_threshold: f32::NAN,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("score_threshold = NaN"));
        let e = InferConfig {
            max_detections: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("max_detections = 0"));
        let c: InferConfig = toml::from_str("max_detections = 300").unwrap();
        assert_eq!((c.max_detections, c.topk_per_level), (300, 1000));
    }
}
