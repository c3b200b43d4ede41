//! A tiny RetinaNet overfits one image: the loss goes to near zero and the top-scoring anchor of
//! each ground-truth class decodes to that object's box.

mod common;

use candle_core::Device;
use fl_lab::geometry::{iou, BoxCoder};
use fl_lab::train::targets::TargetBuilder;
use fl_lab::train::{train, FixedSource, TrainOptions};

#[test]
fn tiny_model_overfits_one_image_and_finds_its_boxes() {
    let cfg = common::tiny(&["schedule.iterations=300", "schedule.steps=[250]"]);
    let batch = common::two_boxes();
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        run_dir: dir.path().join("overfit"),
        quiet: true,
        ..Default::default()
    };
    let summary = train(&cfg, &mut FixedSource(batch.clone()), &Device::Cpu, &opts).unwrap();
    assert!(summary.finished && !summary.diverged);
    let rows = fl_lab::train::trainer::read_metrics(&opts.run_dir.join("metrics.csv")).unwrap();
    let first = &rows[0];
    let last = rows.last().unwrap();
    assert!(
        last.loss_cls < 0.05 * first.loss_cls && last.loss_cls < 0.05,
        "classification loss {} -> {}",
        first.loss_cls,
        last.loss_cls
    );
    assert!(
        last.loss_box < 0.02,
        "box loss {} -> {}",
        first.loss_box,
        last.loss_box
    );

    let model =
        fl_lab::model::RetinaNet::load(&opts.run_dir.join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let out = model.forward(&batch.images, false).unwrap();
    let cls: Vec<Vec<f32>> = out.cls.get(0).unwrap().to_vec2().unwrap();
    let deltas: Vec<Vec<f32>> = out.boxes.get(0).unwrap().to_vec2().unwrap();
    let mut tb = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
    let anchors = tb.anchors(64, 64).boxes.clone();
    let coder = BoxCoder::default();
    for (gt, &c) in batch.gt[0].boxes.iter().zip(&batch.gt[0].classes) {
        let (best, logit) = cls
            .iter()
            .enumerate()
            .map(|(a, row)| (a, row[c]))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        let d = [
            deltas[best][0],
            deltas[best][1],
            deltas[best][2],
            deltas[best][3],
        ];
        let b = coder.decode(&anchors[best], &d);
        let score = 1.0 / (1.0 + (-logit).exp());
        assert!(score > 0.5, "class {c}: best score {score}");
        assert!(iou(&b, gt) > 0.8, "class {c}: {b:?} vs {gt:?}");
    }
}
