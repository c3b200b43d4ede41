//! `model.pretrained`: ImageNet ResNet weights under torchvision's names load into every supported
//! depth, and a file that does not fit is refused with every wrong tensor named.
//!
//! The state dicts are written here, from torchvision's ResNet definition (`torchvision/models/
//! resnet.py`: layer widths 64-512, expansion 4 for bottlenecks, a downsample where a block strides
//! or changes width, `fc`, BatchNorm's `num_batches_tracked`), with deterministic values; no Python.

mod common;

use candle_core::{DType, Device, Tensor};
use fl_lab::config::Config;
use fl_lab::model::RetinaNet;
use std::collections::HashMap;
use std::path::Path;

/// Names and shapes of torchvision's `resnet{depth}().state_dict()`.
fn torchvision_resnet(depth: usize) -> Vec<(String, Vec<usize>)> {
    let (bottleneck, layers) = match depth {
        18 => (false, [2, 2, 2, 2]),
        34 => (false, [3, 4, 6, 3]),
        50 => (true, [3, 4, 6, 3]),
        _ => unreachable!(),
    };
    let expansion = if bottleneck { 4 } else { 1 };
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let bn = |out: &mut Vec<(String, Vec<usize>)>, name: &str, c: usize| {
        for t in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{name}.{t}"), vec![c]));
        }
        out.push((format!("{name}.num_batches_tracked"), vec![]));
    };
    out.push(("conv1.weight".into(), vec![64, 3, 7, 7]));
    bn(&mut out, "bn1", 64);
    let mut inplanes = 64;
    for (i, (&blocks, planes)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
        let stride = if i == 0 { 1 } else { 2 };
        for b in 0..blocks {
            let p = format!("layer{}.{b}", i + 1);
            if bottleneck {
                out.push((format!("{p}.conv1.weight"), vec![planes, inplanes, 1, 1]));
                bn(&mut out, &format!("{p}.bn1"), planes);
                out.push((format!("{p}.conv2.weight"), vec![planes, planes, 3, 3]));
                bn(&mut out, &format!("{p}.bn2"), planes);
                out.push((format!("{p}.conv3.weight"), vec![planes * 4, planes, 1, 1]));
                bn(&mut out, &format!("{p}.bn3"), planes * 4);
            } else {
                out.push((format!("{p}.conv1.weight"), vec![planes, inplanes, 3, 3]));
                bn(&mut out, &format!("{p}.bn1"), planes);
                out.push((format!("{p}.conv2.weight"), vec![planes, planes, 3, 3]));
                bn(&mut out, &format!("{p}.bn2"), planes);
            }
            if b == 0 && (stride != 1 || inplanes != planes * expansion) {
                let c = planes * expansion;
                out.push((format!("{p}.downsample.0.weight"), vec![c, inplanes, 1, 1]));
                bn(&mut out, &format!("{p}.downsample.1"), c);
            }
            inplanes = planes * expansion;
        }
    }
    out.push(("fc.weight".into(), vec![1000, 512 * expansion]));
    out.push(("fc.bias".into(), vec![1000]));
    out
}

/// Deterministic values: tensor `k` holds `0.01 * ((i * 7 + k * 13) % 101 - 50) / 50 + offset`,
/// with variances kept positive.
fn values(k: usize, name: &str, shape: &[usize]) -> Tensor {
    let dev = &Device::Cpu;
    if name.ends_with("num_batches_tracked") {
        return Tensor::new(1234i64, dev).unwrap();
    }
    let n: usize = shape.iter().product();
    let offset = if name.ends_with("running_var") {
        1.0
    } else {
        0.0
    };
    let v: Vec<f32> = (0..n)
        .map(|i| 0.01 * (((i * 7 + k * 13) % 101) as f32 - 50.0) / 50.0 + offset)
        .collect();
    Tensor::from_vec(v, shape, dev).unwrap()
}

fn state_dict(depth: usize) -> HashMap<String, Tensor> {
    torchvision_resnet(depth)
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let t = values(k, &name, &shape);
            (name, t)
        })
        .collect()
}

fn save(dir: &Path, file: &str, tensors: &HashMap<String, Tensor>) -> String {
    let path = dir.join(file);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path.to_str().unwrap().to_string()
}

/// A ResNet backbone with a minimal FPN and head, loading `pretrained`.
fn config(backbone: &str, pretrained: &str) -> Config {
    let sets = [
        format!("model.backbone={backbone}"),
        "model.width=1.0".into(),
        "model.stem=resnet".into(),
        "model.norm=frozen_bn".into(),
        "model.freeze_at=2".into(),
        format!("model.pretrained=\"{pretrained}\""),
        "model.fpn_channels=8".into(),
        "model.head_convs=1".into(),
        "model.num_classes=2".into(),
    ];
    Config::from_toml_str("", &sets).unwrap()
}

fn sum(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn torchvision_weights_load_into_every_depth() {
    let dir = tempfile::tempdir().unwrap();
    for (depth, backbone) in [(18, "r18"), (34, "r34"), (50, "r50")] {
        let sd = state_dict(depth);
        let path = save(dir.path(), &format!("resnet{depth}.safetensors"), &sd);
        let model = RetinaNet::new(&config(backbone, &path), &Device::Cpu).unwrap();
        model.load_pretrained().unwrap();
        let ours = model.store.all_tensors();
        // Every loaded tensor equals its source, named independently of the loader's mapping.
        let pairs = [
            ("backbone.stem.conv.weight", "conv1.weight"),
            ("backbone.stem.norm.running_var", "bn1.running_var"),
            (
                "backbone.stage2.block0.conv1.weight",
                "layer1.0.conv1.weight",
            ),
            ("backbone.stage2.block1.norm2.bias", "layer1.1.bn2.bias"),
            (
                "backbone.stage3.block0.shortcut.weight",
                "layer2.0.downsample.0.weight",
            ),
            (
                "backbone.stage4.block0.shortcut_norm.running_mean",
                "layer3.0.downsample.1.running_mean",
            ),
            (
                "backbone.stage5.block1.conv2.weight",
                "layer4.1.conv2.weight",
            ),
            ("backbone.stage5.block1.norm1.weight", "layer4.1.bn1.weight"),
        ];
        for (a, b) in pairs {
            let d = (&ours[a] - &sd[b]).unwrap().abs().unwrap();
            assert_eq!(sum(&d), 0.0, "resnet{depth}: {a} differs from {b}");
        }
        // And the backbone holds exactly the file's tensors (fc and the step counters aside).
        let kept: Vec<&String> = sd
            .keys()
            .filter(|k| !k.starts_with("fc.") && !k.ends_with("num_batches_tracked"))
            .collect();
        let backbone: Vec<&String> = ours.keys().filter(|k| k.starts_with("backbone.")).collect();
        assert_eq!(backbone.len(), kept.len(), "resnet{depth}");
        let total = |names: Vec<&String>, map: &std::collections::BTreeMap<String, Tensor>| {
            names.iter().map(|k| sum(&map[*k])).sum::<f64>()
        };
        let file: std::collections::BTreeMap<String, Tensor> =
            sd.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (a, b) = (total(backbone, &ours), total(kept, &file));
        assert!((a - b).abs() <= 1e-6 * b.abs(), "resnet{depth}: {a} vs {b}");
    }
}

#[test]
fn frozen_stages_and_frozen_bn_compute_what_batch_norm_computes_in_evaluation() {
    // The same file in a model with frozen BN and a frozen stem and first stage (their convs held
    // as detached buffers) and in one with trainable BatchNorm evaluated with its running statistics:
    // the backbone features must agree, in training mode for the frozen model too.
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "resnet18.safetensors", &state_dict(18));
    let frozen = RetinaNet::new(&config("r18", &path), &Device::Cpu).unwrap();
    let mut cfg = config("r18", &path);
    cfg.model.norm = fl_lab::config::NormKind::Bn;
    cfg.model.freeze_at = 0;
    let plain = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
    frozen.load_pretrained().unwrap();
    plain.load_pretrained().unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 67, 45), &Device::Cpu).unwrap();
    let a = frozen.backbone_features(&x, true).unwrap();
    let b = plain.backbone_features(&x, false).unwrap();
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_eq!(a.dims(), b.dims());
        let d = sum(&(a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap()
            .max_all()
            .unwrap());
        let scale = sum(&b.abs().unwrap().max_all().unwrap());
        assert!(d <= 1e-5 * scale, "C{}: {d} of {scale}", i + 2);
    }
    // Only the unfrozen stages' convs are trainable in the frozen model; no norm is.
    let trainable: Vec<String> = frozen
        .store
        .named_vars()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("backbone."))
        .collect();
    assert!(!trainable.is_empty());
    for k in &trainable {
        assert!(
            !k.contains("norm") && !k.contains("stem") && !k.contains("stage2"),
            "{k} is trainable"
        );
    }
}

#[test]
fn a_wrong_file_is_refused_naming_every_wrong_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = state_dict(18);
    sd.remove("layer2.1.bn2.running_var").unwrap();
    sd.insert(
        "layer5.0.conv1.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    sd.insert(
        "layer3.0.conv1.weight".into(),
        Tensor::zeros((256, 128, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let path = save(dir.path(), "bad.safetensors", &sd);
    let model = RetinaNet::new(&config("r18", &path), &Device::Cpu).unwrap();
    let before = sum(&model.store.all_tensors()["backbone.stem.conv.weight"]);
    let e = format!("{:#}", model.load_pretrained().unwrap_err());
    for want in [
        "bad.safetensors",
        "missing (1): layer2.1.bn2.running_var",
        "unexpected (1): layer5.0.conv1.weight",
        "mis-shaped (1): layer3.0.conv1.weight is [256, 128, 1, 1], the backbone needs [256, 128, 3, 3]",
    ] {
        assert!(e.contains(want), "no '{want}' in: {e}");
    }
    // Nothing was loaded.
    let after = sum(&model.store.all_tensors()["backbone.stem.conv.weight"]);
    assert_eq!(before, after);

    // A ResNet-18 file for a ResNet-34 backbone: the extra blocks are missing.
    let r18 = save(dir.path(), "resnet18.safetensors", &state_dict(18));
    let model = RetinaNet::new(&config("r34", &r18), &Device::Cpu).unwrap();
    let e = format!("{:#}", model.load_pretrained().unwrap_err());
    assert!(
        e.contains("layer1.2.conv1.weight") && e.contains("ResNet-34"),
        "{e}"
    );
    let seen = "the file looks like basic blocks, [2, 2, 2, 2] per stage (torchvision's resnet18)";
    assert!(e.contains(seen), "{e}");

    // From the command line: exit code 2 and the message.
    let out = common::fl_lab(&[
        "train",
        "--quiet",
        "--config",
        "experiments/tiny.toml",
        "--set",
        "data.source=random",
        "--set",
        "model.backbone=r18",
        "--set",
        "model.width=1.0",
        "--set",
        "model.stem=resnet",
        "--set",
        "model.norm=frozen_bn",
        "--set",
        &format!("model.pretrained=\"{path}\""),
        "--runs-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("layer2.1.bn2.running_var"), "{stderr}");
}
