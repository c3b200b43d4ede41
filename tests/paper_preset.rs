//! The `paper` preset (ResNet-50-FPN from ImageNet weights, frozen BN, stem and first stage frozen, the
//! paper's resize) trains on the CPU: two steps at a small input with a synthetic torchvision-named
//! ResNet-50 file. The frozen parts must come out of training exactly as loaded, the rest must move.

mod common;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

fn load(path: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn the_paper_model_trains_a_step_with_its_frozen_parts_fixed() {
    let dir = tempfile::tempdir().unwrap();
    common::write_two_box_dataset(dir.path());
    let weights = dir.path().join("resnet50.safetensors");
    let w = weights.to_str().unwrap();
    common::fl_lab_ok(&["bench", "resnet-weights", "--backbone", "r50", "--out", w]);
    let data = format!("data.source=\"{}\"", dir.path().display());
    let pretrained = format!("model.pretrained=\"{w}\"");
    let runs = dir.path().join("runs");
    common::fl_lab_ok(&[
        "train",
        "--quiet",
        "--config",
        "paper",
        "--set",
        &data,
        "--set",
        &pretrained,
        "--set",
        "model.num_classes=2",
        "--set",
        "data.min_size=64",
        "--set",
        "data.max_size=96",
        "--set",
        "schedule.batch_size=1",
        "--set",
        "schedule.iterations=2",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        "paper-smoke",
    ]);
    let run = runs.join("paper-smoke");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    for line in metrics.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let (cls, boxes): (f64, f64) = (cols[2].parse().unwrap(), cols[3].parse().unwrap());
        assert!(cls.is_finite() && cls > 0.0 && boxes.is_finite(), "{line}");
    }
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for want in [
        "min_size = 64",
        "norm = \"frozen_bn\"",
        "freeze_at = 2",
        "stem = \"resnet\"",
    ] {
        assert!(config.contains(want), "{want} not in {config}");
    }

    let file = load(&weights);
    let model = load(&run.join("model.safetensors"));
    // Frozen: the stem, the first stage (C2), and every BatchNorm of every stage.
    for (ours, theirs) in [
        ("backbone.stem.conv.weight", "conv1.weight"),
        (
            "backbone.stage2.block2.conv3.weight",
            "layer1.2.conv3.weight",
        ),
        (
            "backbone.stage2.block0.shortcut.weight",
            "layer1.0.downsample.0.weight",
        ),
        (
            "backbone.stage5.block2.norm3.running_var",
            "layer4.2.bn3.running_var",
        ),
        ("backbone.stage4.block0.norm1.weight", "layer3.0.bn1.weight"),
    ] {
        assert_eq!(
            max_abs_diff(&model[ours], &file[theirs]),
            0.0,
            "{ours} moved"
        );
    }
    // Trained: the later stages' convs start from the file and move.
    for (ours, theirs) in [
        (
            "backbone.stage3.block0.conv1.weight",
            "layer2.0.conv1.weight",
        ),
        (
            "backbone.stage5.block2.conv3.weight",
            "layer4.2.conv3.weight",
        ),
    ] {
        let d = max_abs_diff(&model[ours], &file[theirs]);
        assert!(d > 0.0 && d < 0.1, "{ours}: moved by {d}");
    }
}
