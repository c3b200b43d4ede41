//! The detection pipeline end to end without a network: logits and deltas written from the training
//! targets (what a perfect model would predict) go through decoding, NMS, the map back to original
//! pixels and COCO evaluation. Every object the matcher gives a positive anchor must be found exactly,
//! so AP is the share of objects with a positive anchor (about 95% with the default anchors); a defect
//! anywhere in the pipeline (layout, decoding, rescaling, category ids) shows as a far lower AP.

use candle_core::Device;
use fl_lab::config::Config;
use fl_lab::data::loader::Batch;
use fl_lab::data::Split;
use fl_lab::geometry::AnchorConfig;
use fl_lab::infer::model::detect_dataset_with;
use fl_lab::infer::InferConfig;
use fl_lab::train::targets::TargetBuilder;
use fl_lab::train::GtBoxes;

/// A batch's training targets as a perfect model's output: logit 4 for each positive anchor's class
/// (-10 everywhere else) and its box targets as deltas; with the ground truth they came from.
fn targets_as_predictions(
    builder: &mut TargetBuilder,
    batch: &Batch,
    anchors_per_image: usize,
    k: usize,
) -> (Vec<GtBoxes>, Vec<f32>, Vec<f32>) {
    let (_, _, h, w) = batch.images.dims4().unwrap();
    let gt: Vec<GtBoxes> = batch.gt.iter().map(GtBoxes::from).collect();
    let tg = builder.build(&gt, h, w);
    let t = anchors_per_image;
    assert_eq!(tg.anchors_per_image, t);
    let mut logits = vec![-10.0f32; gt.len() * t * k];
    let mut deltas = vec![0.0f32; gt.len() * t * 4];
    for (j, &p) in tg.positives.iter().enumerate() {
        let p = p as usize;
        let label = tg.labels[p] as usize;
        logits[p * k + label - 1] = 4.0;
        deltas[4 * p..4 * p + 4].copy_from_slice(&tg.box_targets[4 * j..4 * j + 4]);
    }
    (gt, logits, deltas)
}

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
            let (_, logits, deltas) = targets_as_predictions(&mut builder, batch, anchors.len(), k);
            Ok((logits, deltas))
        },
    )
    .unwrap();
    let eval = fl_lab::eval::coco::evaluate(&ds.coco, &dets).unwrap();
    eprintln!("{}", eval.summary_lines().join("\n"));
    assert!(eval.stats[0] > 0.9, "AP {}", eval.stats[0]);
}

/// The same pipeline with the paper's resize (shorter side `data.min_size`, longer side capped at
/// `data.max_size`, batches padded to multiples of 128) on images of different sizes and aspect
/// ratios, portrait and landscape in one batch: the map back to each image's own pixels must undo
/// each image's scale, so AP is again the share of objects with a positive anchor.
#[test]
fn targets_as_predictions_with_the_paper_resize() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let sizes = [
        (200u32, 120u32),
        (300, 100),
        (96, 180),
        (128, 250),
        (150, 150),
        (240, 160),
    ];
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let name = format!("{i}.png");
        image::RgbImage::from_pixel(w, h, image::Rgb([90, 90, 90]))
            .save(dir.path().join(&name))
            .unwrap();
        images.push(serde_json::json!({"id": i + 1, "file_name": name, "width": w, "height": h}));
        for _ in 0..3 {
            let bw = rng.gen_range(30.0..(w as f64 * 0.8));
            let bh = rng.gen_range(30.0..(h as f64 * 0.8));
            let x = rng.gen_range(0.0..w as f64 - bw);
            let y = rng.gen_range(0.0..h as f64 - bh);
            anns.push(serde_json::json!({
                "id": anns.len() + 1, "image_id": i + 1, "category_id": 1 + anns.len() % 2,
                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0
            }));
        }
    }
    let coco = serde_json::json!({
        "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    });
    let json = dir.path().join("val.json");
    std::fs::write(&json, coco.to_string()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/cpu.toml");
    let sets: Vec<String> = [
        format!("data.source=\"{}\"", json.display()),
        "model.num_classes=2".into(),
        "data.min_size=130".into(),
        "data.max_size=200".into(),
    ]
    .to_vec();
    let cfg = Config::load(std::path::Path::new(path), &sets).unwrap();
    let ds = fl_lab::train::dataset_source::open_dataset(&cfg, Split::Val, true).unwrap();
    let k = ds.num_classes();
    let mut builder = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
    let (mut objects, mut found) = (0usize, 0usize);
    let mut shapes = std::collections::BTreeSet::new();
    let dets = detect_dataset_with(
        &ds,
        &AnchorConfig::from(&cfg.anchors),
        &InferConfig::default(),
        2,
        &Device::Cpu,
        true,
        |batch, anchors| {
            let (_, _, h, w) = batch.images.dims4()?;
            assert!(h % 128 == 0 && w % 128 == 0, "{h}x{w}");
            shapes.insert((h, w));
            for g in &batch.gt {
                let (rw, rh) = g.resized_size;
                assert!(
                    rw.min(rh) == 130 || rw.max(rh) == 200,
                    "{:?}",
                    g.resized_size
                );
            }
            let (gt, logits, deltas) =
                targets_as_predictions(&mut builder, batch, anchors.len(), k);
            // Objects with at least one positive anchor (matched boxes, per image).
            let matcher = fl_lab::geometry::Matcher::from(&cfg.matcher);
            for g in &gt {
                let m = matcher.assign(&anchors.boxes, &g.boxes);
                let mut hit = vec![false; g.boxes.len()];
                for &i in &m {
                    if let fl_lab::geometry::Match::Gt(j) = i {
                        hit[j as usize] = true;
                    }
                }
                objects += g.boxes.len();
                found += hit.iter().filter(|&&b| b).count();
            }
            Ok((logits, deltas))
        },
    )
    .unwrap();
    let eval = fl_lab::eval::coco::evaluate(&ds.coco, &dets).unwrap();
    let share = found as f64 / objects as f64;
    eprintln!(
        "{}\nshare with a positive anchor {share}, batch shapes {shapes:?}",
        eval.summary_lines().join("\n")
    );
    // Landscape pairs, portrait pairs and a mixed pair: three padded sizes.
    let want = [(128, 256), (256, 128), (256, 256)];
    assert_eq!(shapes, want.into_iter().collect(), "{shapes:?}");
    assert!(share > 0.8, "{share}");
    assert!(
        (eval.stats[0] - share).abs() < 0.03,
        "AP {} vs share {share}",
        eval.stats[0]
    );
}
