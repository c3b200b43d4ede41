//! Geometry and inference kernels at the paper's 600 px scale (67,995 anchors).
//!
//! `cargo bench --bench geometry`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fl_lab::geometry::{batched_nms, iou_matrix, nms, AnchorConfig, Box4, BoxCoder, Matcher};
use fl_lab::infer::{detect_image, InferConfig};
use fl_lab::loss::ohem::{select, OhemConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_boxes(rng: &mut ChaCha8Rng, n: usize, extent: f32) -> Vec<Box4> {
    (0..n)
        .map(|_| {
            let (x, y) = (
                rng.gen_range(0.0..extent * 0.9),
                rng.gen_range(0.0..extent * 0.9),
            );
            let (w, h) = (
                rng.gen_range(8.0..extent * 0.4),
                rng.gen_range(8.0..extent * 0.4),
            );
            [x, y, (x + w).min(extent), (y + h).min(extent)]
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let cfg = AnchorConfig::default();
    c.bench_function("anchors_generate_600", |b| {
        b.iter(|| cfg.generate(black_box(600), 600))
    });
    let anchors = cfg.generate(600, 600);
    let gt = random_boxes(&mut rng, 20, 600.0);

    c.bench_function("iou_matrix_68k_x_20", |b| {
        b.iter(|| iou_matrix(black_box(&anchors.boxes), &gt))
    });
    let matcher = Matcher::default();
    c.bench_function("matcher_assign_68k_x_20", |b| {
        b.iter(|| matcher.assign(black_box(&anchors.boxes), &gt))
    });

    let boxes = random_boxes(&mut rng, 5000, 600.0);
    let scores: Vec<f32> = (0..5000).map(|_| rng.gen()).collect();
    let classes: Vec<usize> = (0..5000).map(|_| rng.gen_range(0..80)).collect();
    c.bench_function("nms_5000", |b| {
        b.iter(|| nms(black_box(&boxes), &scores, 0.5))
    });
    c.bench_function("batched_nms_5000_80_classes", |b| {
        b.iter(|| batched_nms(black_box(&boxes), &scores, &classes, 0.5))
    });

    // A plausible trained-model output: most logits near the prior (-4.6), a tail above the threshold.
    let k = 80;
    let logits: Vec<f32> = (0..anchors.len() * k)
        .map(|_| {
            if rng.gen_bool(0.002) {
                rng.gen_range(-3.0..4.0)
            } else {
                rng.gen_range(-9.0..-3.5)
            }
        })
        .collect();
    let deltas: Vec<f32> = (0..anchors.len() * 4)
        .map(|_| rng.gen_range(-0.3..0.3))
        .collect();
    let (coder, icfg) = (BoxCoder::default(), InferConfig::default());
    c.bench_function("detect_image_600_k80", |b| {
        b.iter(|| {
            detect_image(
                black_box(&logits),
                &deltas,
                &anchors,
                k,
                &coder,
                &icfg,
                600.0,
                600.0,
            )
        })
    });

    let labels = matcher.assign(&anchors.boxes, &gt);
    let labels = fl_lab::geometry::anchor_labels(&labels, &vec![0; gt.len()]);
    let losses: Vec<f32> = (0..anchors.len()).map(|_| rng.gen::<f32>()).collect();
    for (name, ocfg) in [
        (
            "ohem_select_68k_b128_nms05",
            OhemConfig {
                batch_size: 128,
                nms_threshold: 0.5,
                positive_fraction: None,
            },
        ),
        (
            "ohem_select_68k_b512_nms05_1to3",
            OhemConfig {
                batch_size: 512,
                nms_threshold: 0.5,
                positive_fraction: Some(0.25),
            },
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| select(black_box(&losses), &anchors.boxes, &labels, &ocfg))
        });
    }
}

criterion_group!(geometry, benches);
criterion_main!(geometry);
