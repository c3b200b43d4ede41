//! With the prior init every class logit equals b = -log((1 - pi) / pi), so p = pi everywhere and
//! the initial focal loss has a closed form given the anchor counts.

mod common;

use candle_core::{Device, Tensor};
use fl_lab::model::RetinaNet;
use fl_lab::train::objective::{compute, Normalizer};
use fl_lab::train::targets::TargetBuilder;

#[test]
fn initial_focal_loss_matches_closed_form() {
    let cfg = common::tiny(&[]);
    let model = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
    // Zero the class predictor's N(0, 0.01) weights so the logits are exactly the prior bias.
    let vars = model.store.named_vars();
    let (_, w) = vars
        .iter()
        .find(|(n, _)| n == "head.cls.pred.weight")
        .unwrap();
    w.set(&Tensor::zeros(w.shape(), w.dtype(), &Device::Cpu).unwrap())
        .unwrap();
    let batch = common::two_boxes();
    let out = model.forward(&batch.images, true).unwrap();
    // 64x64 input, P3-P7: (8^2 + 4^2 + 2^2 + 1 + 1) locations x 9 anchors.
    assert_eq!(out.cls.dims(), &[1, 774, 2]);

    let mut tb = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
    let targets = tb.build(&batch.gt, 64, 64);
    let pos = targets.labels.iter().filter(|&&l| l > 0).count();
    let neg = targets.labels.iter().filter(|&&l| l == 0).count();
    let ign = targets.labels.iter().filter(|&&l| l < 0).count();
    assert_eq!(pos + neg + ign, 774);
    assert!(pos >= 2, "each box has at least one positive anchor");
    assert_eq!(pos, targets.positives.len());

    let mut norm = Normalizer::new(cfg.loss.normalizer, cfg.loss.ema_momentum);
    let terms = compute(&out, &targets, &tb, &cfg, &mut norm).unwrap();
    let got = terms.cls.to_scalar::<f32>().unwrap() as f64;

    let (pi, alpha, gamma) = (0.01f64, 0.25f64, 2.0f64);
    let k = 2.0;
    // A background (anchor, class) pair: (1 - alpha) p^gamma (-log(1 - p)).
    let neg_term = (1.0 - alpha) * pi.powf(gamma) * -(1.0 - pi).ln();
    // The true class of a positive anchor: alpha (1 - p)^gamma (-log p).
    let pos_term = alpha * (1.0 - pi).powf(gamma) * -pi.ln();
    let negatives = neg as f64 * k + pos as f64 * (k - 1.0);
    let want = (negatives * neg_term + pos as f64 * pos_term) / pos as f64;
    assert!(
        (got - want).abs() < 1e-5 * want,
        "initial classification loss {got}, closed form {want} ({pos} positives, {neg} negatives)"
    );
}
