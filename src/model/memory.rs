//! The memory a config asks for, estimated from the config alone before anything is allocated, so
//! that an absurd setting (a billion classes, a hundred-million-channel FPN) is refused with the
//! figure instead of aborting on a failed allocation or running on without end.
//!
//! Parameters are counted exactly, layer by layer as `RetinaNet::new` builds them (a test compares
//! the count with the built model's). Activations are a rough upper estimate of what one training
//! step keeps: every conv output with its norm and ReLU outputs, their gradients in the backward
//! pass, and the loss's logits, probabilities and gradient.

use crate::config::{BlockKind, Config, NormKind, StemKind};
use anyhow::{bail, Result};

/// Bytes of one f32.
const F32: u64 = 4;

/// An estimate of the memory one training step of a config needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// Trainable parameters (exact).
    pub parameters: u64,
    /// Bytes of parameters, their gradients and the SGD momentum.
    pub parameter_bytes: u64,
    /// Bytes of the activations and activation gradients of one batch (rough upper estimate).
    pub activation_bytes: u64,
}

impl MemoryEstimate {
    pub fn total_bytes(&self) -> u64 {
        self.parameter_bytes.saturating_add(self.activation_bytes)
    }
}

/// Parameters of a conv with `ci` inputs, `co` outputs and a `k x k` kernel.
fn conv(ci: u64, co: u64, k: u64, bias: bool) -> u64 {
    ci.saturating_mul(co)
        .saturating_mul(k * k)
        .saturating_add(if bias { co } else { 0 })
}

/// Parameters of a norm layer (scale and shift).
fn norm(c: u64) -> u64 {
    c.saturating_mul(2)
}

/// Side of a feature map after `halvings` stride-2 layers (each maps n to ceil(n / 2)).
fn side(input: u64, halvings: usize) -> u64 {
    (0..halvings).fold(input, |n, _| n.div_ceil(2))
}

/// The input `(h, w)` the activations are estimated for: the square `data.input_size`, or with
/// the paper's resize a landscape image at `min_size` x `max_size` (2 x `min_size` without a
/// cap), padded to the batch's size divisibility.
pub fn input_dims(cfg: &Config) -> (u64, u64) {
    let d = &cfg.data;
    if d.min_size == 0 {
        return (d.input_size as u64, d.input_size as u64);
    }
    let div = cfg.size_divisibility() as u64;
    let long = if d.max_size > 0 {
        d.max_size
    } else {
        2 * d.min_size
    };
    (
        (d.min_size as u64).div_ceil(div) * div,
        (long as u64).div_ceil(div) * div,
    )
}

/// Estimates the memory of training `cfg` (whose sizes must already be valid).
pub fn estimate(cfg: &Config) -> Result<MemoryEstimate> {
    let m = &cfg.model;
    let a = &cfg.anchors;
    let (kind, depths) = m.resolved_blocks()?;
    let (stem_c, channels) = m.stage_channels()?;
    let (in_h, in_w) = input_dims(cfg);
    let pixels_at = |halvings: usize| side(in_h, halvings).saturating_mul(side(in_w, halvings));
    let batch = cfg.schedule.batch_size as u64;
    let c = m.fpn_channels as u64;
    let hw = m.head_width() as u64;
    let per_location = a.per_location() as u64;
    let k = m.num_classes as u64;

    let resnet = m.stem == StemKind::Resnet;
    // Trainable parameters only: frozen convs and frozen norms are buffers.
    let nrm = |c: u64, frozen: bool| {
        if frozen || m.norm == NormKind::FrozenBn {
            0
        } else {
            norm(c)
        }
    };
    let stem_k = if resnet { 7 } else { 3 };
    // Every conv output kept for the backward pass, with its norm and ReLU outputs (3 tensors).
    let mut params = if m.freeze_at >= 1 {
        0
    } else {
        conv(3, stem_c as u64, stem_k, false) + nrm(stem_c as u64, false)
    };
    let mut floats_per_image = 3 * (stem_c as u64).saturating_mul(pixels_at(1));
    if resnet {
        floats_per_image = floats_per_image.saturating_add((stem_c as u64) * pixels_at(2));
    }
    let mut c_in = stem_c as u64;
    for (s, (&depth, &c_out)) in depths.iter().zip(channels.iter()).enumerate() {
        let c_out = c_out as u64;
        let pixels = pixels_at(s + 2);
        let frozen = m.freeze_at >= s + 2;
        let nrm = |c: u64| nrm(c, frozen);
        for b in 0..depth {
            let block_in = if b == 0 { c_in } else { c_out };
            let stride = if b == 0 && !(resnet && s == 0) { 2 } else { 1 };
            let (block, tensors) = match kind {
                BlockKind::Basic => (
                    conv(block_in, c_out, 3, false) + conv(c_out, c_out, 3, false) + 2 * nrm(c_out),
                    6 * c_out,
                ),
                BlockKind::Bottleneck => {
                    let mid = (c_out / 4).max(1);
                    (
                        conv(block_in, mid, 1, false)
                            + conv(mid, mid, 3, false)
                            + conv(mid, c_out, 1, false)
                            + 2 * nrm(mid)
                            + nrm(c_out),
                        6 * mid + 3 * c_out,
                    )
                }
            };
            // A projection shortcut where the block strides or changes the width.
            let shortcut = if stride != 1 || block_in != c_out {
                conv(block_in, c_out, 1, false) + nrm(c_out)
            } else {
                0
            };
            let (block, shortcut) = if frozen { (0, 0) } else { (block, shortcut) };
            params = params.saturating_add(block).saturating_add(shortcut);
            floats_per_image = floats_per_image
                .saturating_add(tensors.saturating_add(2 * c_out).saturating_mul(pixels));
        }
        c_in = c_out;
    }
    // FPN: lateral 1x1 and output 3x3 convs on C_min..C5, P6 from C5, P7 from P6.
    for l in a.min_level..=5 {
        params = params
            .saturating_add(conv(channels[l - 2] as u64, c, 1, true))
            .saturating_add(conv(c, c, 3, true));
    }
    if a.max_level >= 6 {
        params = params.saturating_add(conv(channels[3] as u64, c, 3, true));
    }
    if a.max_level >= 7 {
        params = params.saturating_add(conv(c, c, 3, true));
    }
    // Heads: shared across levels; their activations are per level.
    let subnet = |outputs: u64| {
        let mut p = 0u64;
        let mut ci = c;
        for _ in 0..m.head_convs {
            p = p.saturating_add(conv(ci, hw, 3, true));
            if m.head_gn {
                p = p.saturating_add(norm(hw));
            }
            ci = hw;
        }
        p.saturating_add(conv(ci, outputs, 3, true))
    };
    let cls_outputs = per_location.saturating_mul(k);
    params = params
        .saturating_add(subnet(cls_outputs))
        .saturating_add(subnet(per_location * 4));
    let head_convs = m.head_convs as u64;
    let mut anchors_per_image = 0u64;
    for l in a.min_level..=a.max_level {
        let pixels = pixels_at(l);
        anchors_per_image = anchors_per_image.saturating_add(pixels.saturating_mul(per_location));
        let per_pixel = c
            .saturating_mul(3)
            .saturating_add(head_convs.saturating_mul(hw).saturating_mul(6))
            .saturating_add(cls_outputs)
            .saturating_add(per_location * 4);
        floats_per_image = floats_per_image.saturating_add(per_pixel.saturating_mul(pixels));
    }
    // Activations and their gradients; the loss keeps logits, probabilities and their gradient.
    let loss_floats = anchors_per_image.saturating_mul(k).saturating_mul(3);
    let activation_floats = batch.saturating_mul(
        floats_per_image
            .saturating_mul(2)
            .saturating_add(loss_floats),
    );
    let buffers = if m.norm == NormKind::Bn { 1 } else { 0 };
    Ok(MemoryEstimate {
        parameters: params,
        parameter_bytes: params.saturating_mul(F32 * (3 + buffers)),
        activation_bytes: activation_floats.saturating_mul(F32),
    })
}

/// Memory this machine has available now (`MemAvailable` of `/proc/meminfo`), if known.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Refuses a config whose parameters alone would not fit in `available` bytes (for building a
/// model to evaluate or draw with).
pub fn check_parameters_fit(cfg: &Config, available: Option<u64>) -> Result<()> {
    let e = estimate(cfg)?;
    match available {
        Some(avail) if e.parameters.saturating_mul(F32) > avail => bail!(
            "this config's model has {} parameters ({:.1} GiB), more than the {:.1} GiB available; \
             lower model.num_classes ({}) or model.fpn_channels ({})",
            e.parameters,
            gib(e.parameters.saturating_mul(F32)),
            gib(avail),
            cfg.model.num_classes,
            cfg.model.fpn_channels
        ),
        _ => Ok(()),
    }
}

/// Refuses a config whose training step would not fit in `available` bytes, naming the figures
/// and the settings that drive them.
pub fn check_fits(cfg: &Config, available: Option<u64>) -> Result<MemoryEstimate> {
    let e = estimate(cfg)?;
    if let Some(avail) = available {
        if e.total_bytes() > avail {
            bail!(
                "this config needs about {:.1} GiB to train ({} parameters: {:.1} GiB with gradients \
                 and momentum; activations of a batch of {}: {:.1} GiB), more than the {:.1} GiB \
                 available; lower model.num_classes ({}), model.fpn_channels ({}), model.head_channels, \
                 data.input_size ({}) / data.max_size or schedule.batch_size",
                gib(e.total_bytes()),
                e.parameters,
                gib(e.parameter_bytes),
                cfg.schedule.batch_size,
                gib(e.activation_bytes),
                gib(avail),
                cfg.model.num_classes,
                cfg.model.fpn_channels,
                cfg.data.input_size,
            );
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> Config {
        let (text, _) = crate::experiments::spec::preset_text(name).unwrap();
        Config::from_toml_str(&text, &[]).unwrap()
    }

    #[test]
    fn parameters_are_counted_exactly() {
        let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/tiny.toml");
        let mut configs = vec![
            preset("smoke"),
            preset("cpu"),
            Config::load(std::path::Path::new(tiny), &[]).unwrap(),
        ];
        let mut bottleneck = preset("smoke");
        bottleneck.model.backbone = "r50".into();
        bottleneck.model.width = 0.125;
        bottleneck.anchors.max_level = 6;
        configs.push(bottleneck);
        let mut wide_head = preset("smoke");
        wide_head.model.head_channels = 24;
        wide_head.model.head_gn = false;
        configs.push(wide_head);
        for cfg in configs {
            let model = crate::model::RetinaNet::new(&cfg, &candle_core::Device::Cpu).unwrap();
            assert_eq!(
                estimate(&cfg).unwrap().parameters,
                model.store.num_params() as u64,
                "{}",
                cfg.to_toml().unwrap()
            );
        }
    }

    #[test]
    fn absurd_sizes_are_refused_with_the_figure() {
        let mut cfg = preset("smoke");
        cfg.model.num_classes = 1_000_000_000;
        let e = check_fits(&cfg, Some(24 << 30)).unwrap_err().to_string();
        assert!(
            e.contains("GiB") && e.contains("model.num_classes (1000000000)"),
            "{e}"
        );
        let mut cfg = preset("smoke");
        cfg.model.fpn_channels = 100_000_000;
        assert!(check_fits(&cfg, Some(24 << 30)).is_err());
        // the cpu preset trains in well under a GiB
        let e = check_fits(&preset("cpu"), Some(24 << 30)).unwrap();
        assert!(e.total_bytes() < 1 << 30, "{e:?}");
    }
}
