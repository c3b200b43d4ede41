//! ImageNet weights for the backbone from a torchvision or timm ResNet-18/34/50 state dict saved as
//! safetensors (`model.pretrained`).
//!
//! Both libraries name a ResNet's tensors the same way, and the backbone with `model.stem =
//! "resnet"` has the same layers in the same shapes, so the mapping is by name alone:
//!
//! | torchvision / timm                         | fl-lab                                        |
//! |--------------------------------------------|-----------------------------------------------|
//! | `conv1.weight`                             | `backbone.stem.conv.weight`                   |
//! | `bn1.{weight,bias,running_mean,running_var}` | `backbone.stem.norm.*`                      |
//! | `layer{s}.{b}.conv{i}.weight`              | `backbone.stage{s+1}.block{b}.conv{i}.weight` |
//! | `layer{s}.{b}.bn{i}.*`                     | `backbone.stage{s+1}.block{b}.norm{i}.*`      |
//! | `layer{s}.{b}.downsample.0.weight`         | `backbone.stage{s+1}.block{b}.shortcut.weight` |
//! | `layer{s}.{b}.downsample.1.*`              | `backbone.stage{s+1}.block{b}.shortcut_norm.*` |
//!
//! The classifier (`fc.weight`, `fc.bias`) and BatchNorm's step counters (`*.num_batches_tracked`)
//! are ignored on purpose. Every other difference (a tensor the backbone needs that the file lacks,
//! one the file has that maps to nothing, one of another shape) is collected and reported together,
//! so that one run names everything wrong with a file.

use super::params::{finite_f32, read_safetensors, ParamStore};
use anyhow::{bail, Context, Result};
use candle_core::Var;
use std::path::Path;

/// The torchvision/timm name of an fl-lab backbone tensor, or None for a name outside the backbone.
pub fn torchvision_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("backbone.")?;
    if let Some(t) = rest.strip_prefix("stem.conv.") {
        return Some(format!("conv1.{t}"));
    }
    if let Some(t) = rest.strip_prefix("stem.norm.") {
        return Some(format!("bn1.{t}"));
    }
    // stage{S}.block{b}.{layer}.{tensor}
    let mut parts = rest.splitn(4, '.');
    let stage: usize = parts.next()?.strip_prefix("stage")?.parse().ok()?;
    let block: usize = parts.next()?.strip_prefix("block")?.parse().ok()?;
    let layer = parts.next()?;
    let tensor = parts.next()?;
    if !(2..=5).contains(&stage) {
        return None;
    }
    let layer = if let Some(i) = layer.strip_prefix("conv") {
        format!("conv{i}")
    } else if let Some(i) = layer.strip_prefix("norm") {
        format!("bn{i}")
    } else if layer == "shortcut" {
        "downsample.0".to_string()
    } else if layer == "shortcut_norm" {
        "downsample.1".to_string()
    } else {
        return None;
    };
    Some(format!("layer{}.{block}.{layer}.{tensor}", stage - 1))
}

/// What a torchvision-named state dict holds, from its names: the blocks per stage and the block
/// type (a `conv3` means bottlenecks), with the torchvision model of that layout if there is one.
fn describe<'a>(names: impl Iterator<Item = &'a String>) -> Option<String> {
    let mut blocks = [0usize; 4];
    let mut bottleneck = false;
    for n in names {
        let mut parts = n.split('.');
        let Some(layer) = parts.next().and_then(|l| l.strip_prefix("layer")) else {
            continue;
        };
        let (Ok(l), Some(Ok(b))) = (
            layer.parse::<usize>(),
            parts.next().map(str::parse::<usize>),
        ) else {
            continue;
        };
        if (1..=4).contains(&l) {
            blocks[l - 1] = blocks[l - 1].max(b + 1);
        }
        bottleneck |= parts.next() == Some("conv3");
    }
    if blocks.contains(&0) {
        return None;
    }
    let name = match (bottleneck, blocks) {
        (false, [2, 2, 2, 2]) => " (torchvision's resnet18)",
        (false, [3, 4, 6, 3]) => " (torchvision's resnet34)",
        (true, [3, 4, 6, 3]) => " (torchvision's resnet50)",
        (true, [3, 4, 23, 3]) => " (torchvision's resnet101, not supported)",
        (true, [3, 8, 36, 3]) => " (torchvision's resnet152, not supported)",
        _ => "",
    };
    let kind = if bottleneck { "bottleneck" } else { "basic" };
    Some(format!("{kind} blocks, {blocks:?} per stage{name}"))
}

/// Tensors of a ResNet state dict that have no place in a detection backbone.
fn ignored(name: &str) -> bool {
    name.starts_with("fc.") || name.ends_with(".num_batches_tracked")
}

/// Overwrites every backbone tensor of `store` (parameters and buffers) with the tensor of the
/// same torchvision name in the safetensors file `path`. Returns how many were loaded. Errors
/// name the file and every missing, unexpected or mis-shaped tensor, and change nothing.
pub fn load_resnet(store: &ParamStore, path: &Path, what: &str) -> Result<usize> {
    let tensors = read_safetensors(path, store.device())
        .with_context(|| format!("model.pretrained: cannot read {}", path.display()))?;
    let mut targets: Vec<(String, String, Var)> = store
        .named_vars()
        .into_iter()
        .chain(store.buffers.iter().map(|(k, v)| (k.clone(), v.clone())))
        .filter_map(|(name, var)| Some((torchvision_name(&name)?, name, var)))
        .collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (tv, _, var) in &targets {
        match tensors.get(tv) {
            None => missing.push(tv.clone()),
            Some(t) if t.dims() != var.dims() => misshaped.push(format!(
                "{tv} is {:?}, the backbone needs {:?}",
                t.dims(),
                var.dims()
            )),
            Some(_) => {}
        }
    }
    let expected: std::collections::HashSet<&str> =
        targets.iter().map(|(tv, _, _)| tv.as_str()).collect();
    let mut unexpected: Vec<&String> = tensors
        .keys()
        .filter(|k| !expected.contains(k.as_str()) && !ignored(k))
        .collect();
    unexpected.sort();
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
        let mut msg = format!(
            "model.pretrained: {} does not hold the weights of a torchvision/timm {what} \
             (names such as conv1.weight, layer1.0.bn1.running_var; fc.* and *.num_batches_tracked \
             are ignored)",
            path.display()
        );
        let list = |title: &str, items: Vec<String>, msg: &mut String| {
            if !items.is_empty() {
                msg.push_str(&format!(
                    "\n  {title} ({}): {}",
                    items.len(),
                    items.join("; ")
                ));
            }
        };
        list("missing", missing, &mut msg);
        list(
            "unexpected",
            unexpected.into_iter().cloned().collect(),
            &mut msg,
        );
        list("mis-shaped", misshaped, &mut msg);
        if let Some(seen) = describe(tensors.keys()) {
            msg.push_str(&format!("\n  the file looks like {seen}"));
        }
        bail!(msg);
    }
    // Convert (and check for NaN) before the first write, so a bad file leaves the model as it was.
    let values = targets
        .iter()
        .map(|(tv, _, _)| finite_f32(tv, &tensors[tv], store.device()))
        .collect::<candle_core::Result<Vec<_>>>()
        .with_context(|| format!("model.pretrained: {}", path.display()))?;
    for ((_, _, var), t) in targets.iter().zip(values) {
        var.set(&t)?;
    }
    Ok(targets.len())
}

/// A ResNet state dict under torchvision's names with random weights and non-trivial BatchNorm
/// statistics and affine parameters, for checks that need a weights file but no ImageNet training
/// (`fl-lab bench resnet-weights`). `backbone` is r18, r34 or r50; the same seed gives the same file.
pub fn synthetic_resnet(
    backbone: &str,
    seed: u64,
) -> Result<std::collections::BTreeMap<String, candle_core::Tensor>> {
    use super::params::Init;
    let cfg = crate::config::ModelConfig {
        backbone: backbone.to_string(),
        width: 1.0,
        stem: crate::config::StemKind::Resnet,
        norm: crate::config::NormKind::Bn,
        ..Default::default()
    };
    if !["r18", "r34", "r50"].contains(&backbone) {
        bail!("--backbone must be r18, r34 or r50, got '{backbone}'");
    }
    let device = candle_core::Device::Cpu;
    let mut store = ParamStore::new(seed, &device);
    super::backbone::Backbone::new(&mut store, &cfg)?;
    // Draw the norms' values from a second store's generator (same seed, its own sequence).
    let mut draw = ParamStore::new(seed ^ 0x5EED, &device);
    let mut out = std::collections::BTreeMap::new();
    for (name, t) in store.all_tensors() {
        let tv = torchvision_name(&name).context("a backbone tensor without a torchvision name")?;
        let dims = t.dims().to_vec();
        let value =
            |draw: &mut ParamStore, base: f64, spread: f64| -> Result<candle_core::Tensor> {
                let u = draw.param(&name, &dims, Init::Uniform(spread))?.detach();
                Ok((u + base)?)
            };
        let is_norm = name.contains("norm");
        let t = if name.ends_with("running_var") || (is_norm && name.ends_with(".weight")) {
            value(&mut draw, 1.0, 0.5)? // scales and variances in [0.5, 1.5]
        } else if is_norm {
            value(&mut draw, 0.0, 0.2)? // shifts and means in [-0.2, 0.2]
        } else {
            t // convs: the seeded init
        };
        out.insert(tv, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::torchvision_name;

    #[test]
    fn names_map_as_documented() {
        let cases = [
            ("backbone.stem.conv.weight", "conv1.weight"),
            ("backbone.stem.norm.running_var", "bn1.running_var"),
            (
                "backbone.stage2.block0.conv1.weight",
                "layer1.0.conv1.weight",
            ),
            ("backbone.stage5.block2.norm3.bias", "layer4.2.bn3.bias"),
            (
                "backbone.stage3.block0.shortcut.weight",
                "layer2.0.downsample.0.weight",
            ),
            (
                "backbone.stage4.block0.shortcut_norm.running_mean",
                "layer3.0.downsample.1.running_mean",
            ),
        ];
        for (ours, theirs) in cases {
            assert_eq!(torchvision_name(ours).as_deref(), Some(theirs), "{ours}");
        }
        for other in [
            "fpn.p6.weight",
            "head.cls.pred.bias",
            "backbone.stage6.block0.conv1.weight",
        ] {
            assert_eq!(torchvision_name(other), None, "{other}");
        }
    }
}
