//! The detection pipeline end to end without a network: logits and deltas written from the training
//! targets (what a perfect model would predict) go through decoding, NMS, the map back to original
//! pixels and COCO evaluation. Every object the matcher gives a positive anchor must be found exactly,
//! so AP is the share of objects with a positive anchor (about 95% with the default anchors); a defect
//! anywhere in the pipeline (layout, decoding, rescaling, category ids) shows as a far lower AP.

use candle_core::Device;
use fl_lab::config::Config;
use fl_lab::data::Split;
use fl_lab::geometry::AnchorConfig;
use fl_lab::infer::model::detect_dataset_with;
use fl_lab::infer::InferConfig;
use fl_lab::train::targets::TargetBuilder;
use fl_lab::train::GtBoxes;

#[test]
fn targets_as_predictions_give_near_perfect_ap() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/cpu.toml");
    let cfg = Config::load(std::path::Path::new(path), &[]).unwrap();
    let ds = fl_lab::train::dataset_source::open_dataset(&cfg, Split::Val, true).unwrap();
    let k = ds.num_classes();
    let mut builder = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
    let dets = detect_dataset_with(
        &ds,
        &AnchorConfig::from(&cfg.anchors),
        &InferConfig::default(),
        16,
        &Device::Cpu,
        true,
        |batch, anchors| {
            let (_, _, h, w) = batch.images.dims4()?;
            let gt: Vec<GtBoxes> = batch
                .gt
                .iter()
                .map(|g| GtBoxes {
                    boxes: g.boxes.clone(),
                    classes: g.classes.clone(),
                })
                .collect();
            let tg = builder.build(&gt, h, w);
            let t = anchors.len();
            assert_eq!(tg.anchors_per_image, t);
            let mut logits = vec![-10.0f32; gt.len() * t * k];
            let mut deltas = vec![0.0f32; gt.len() * t * 4];
            for (j, &p) in tg.positives.iter().enumerate() {
                let p = p as usize;
                let label = tg.labels[p] as usize;
                logits[p * k + label - 1] = 4.0;
                deltas[4 * p..4 * p + 4].copy_from_slice(&tg.box_targets[4 * j..4 * j + 4]);
            }
            Ok((logits, deltas))
        },
    )
    .unwrap();
    let eval = fl_lab::eval::coco::evaluate(&ds.coco, &dets).unwrap();
    eprintln!("{}", eval.summary_lines().join("\n"));
    assert!(eval.stats[0] > 0.9, "AP {}", eval.stats[0]);
}
