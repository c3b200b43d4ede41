//! The same training steps on two devices, for `fl-lab bench device-check`: one model initialised
//! once (the seeded init, then `model.pretrained` if set), copied to both devices, trained on the same
//! random batch by the trainer's own step (targets, forward, loss, backward, SGD with the
//! schedule's lr), with the losses and step times of each device side by side.
//!
//! On one kind of device the two runs agree up to the order of float sums (the CPU splits a batch
//! over its threads); across CPU and CUDA, kernels differ, so the first step's loss agrees to about
//! 1e-5 relative and later steps drift as the updates compound.

use super::objective::Normalizer;
use super::schedule::lr_at;
use super::sources::RandomSource;
use super::step::Stepper;
use super::targets::TargetBuilder;
use super::trainer::{sgd_for, BatchSource};
use crate::config::Config;
use crate::model::RetinaNet;
use anyhow::{Context, Result};
use candle_core::Device;
use std::time::Instant;

/// One step on both devices.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepPair {
    pub iteration: usize,
    /// Classification + box loss on the first device and on the second.
    pub loss: [f64; 2],
    /// Milliseconds of the whole step (forward, backward, SGD) on each device.
    pub ms: [f64; 2],
}

impl StepPair {
    /// |loss_a - loss_b| / |loss_b| (0 when both are 0).
    pub fn relative_difference(&self) -> f64 {
        let [a, b] = self.loss;
        if a == b {
            0.0
        } else {
            (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
        }
    }
}

/// Trains `steps` steps of `cfg` on `devices[0]` and on `devices[1]` from the same weights and the
/// same batch (iteration 0's random batch at every step), and returns both losses and times of each.
pub fn compare(cfg: &Config, devices: [&Device; 2], steps: usize) -> Result<Vec<StepPair>> {
    cfg.validate()?;
    anyhow::ensure!(steps > 0, "steps must be at least 1");
    let cpu = Device::Cpu;
    let init = RetinaNet::new(cfg, &cpu)?;
    init.load_pretrained()?;
    let weights = init
        .store
        .all_tensors()
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>();
    let batch = RandomSource::for_config(cfg).batch(0, cfg.schedule.batch_size, &cpu)?;
    struct Run {
        device: Device,
        model: RetinaNet,
        sgd: super::sgd::Sgd,
        normalizer: Normalizer,
        targets: TargetBuilder,
        stepper: Stepper,
        images: candle_core::Tensor,
    }
    let mut runs = Vec::new();
    for d in devices {
        let model = RetinaNet::new(cfg, d)?;
        model
            .store
            .load_from(&weights)
            .with_context(|| format!("copying the initial weights to {d:?}"))?;
        runs.push(Run {
            device: d.clone(),
            sgd: sgd_for(&model, &cfg.schedule),
            model,
            normalizer: Normalizer::new(cfg.loss.normalizer, cfg.loss.ema_momentum),
            targets: TargetBuilder::new(&cfg.anchors, &cfg.matcher),
            stepper: Stepper::new(cfg, d)?,
            images: batch.images.to_device(d)?,
        });
    }
    let mut out = Vec::with_capacity(steps);
    for it in 0..steps {
        let lr = lr_at(&cfg.schedule, it);
        let mut loss = [0.0; 2];
        let mut ms = [0.0; 2];
        for (k, r) in runs.iter_mut().enumerate() {
            r.device.synchronize()?;
            let t0 = Instant::now();
            let pass = r.stepper.forward_backward(
                &r.model,
                &r.images,
                &batch.gt,
                &mut r.targets,
                cfg,
                &mut r.normalizer,
            )?;
            r.sgd.step_summed(&pass.grads, lr)?;
            r.device.synchronize()?;
            ms[k] = t0.elapsed().as_secs_f64() * 1e3;
            loss[k] = pass.loss_cls + pass.loss_box;
        }
        out.push(StepPair {
            iteration: it,
            loss,
            ms,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_against_cpu_agrees_step_by_step() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/tiny.toml");
        let sets = ["schedule.batch_size=2".to_string()];
        let cfg = Config::load(std::path::Path::new(path), &sets).unwrap();
        let cpu = Device::Cpu;
        let pairs = compare(&cfg, [&cpu, &cpu], 3).unwrap();
        assert_eq!(pairs.len(), 3);
        for p in &pairs {
            assert!(p.loss[0].is_finite() && p.loss[0] > 0.0, "{p:?}");
            assert!(p.relative_difference() <= 1e-6, "{p:?}");
        }
        // The steps train: the same batch's loss falls.
        assert!(pairs[2].loss[0] < pairs[0].loss[0], "{pairs:?}");
        // The measure itself: 1.0 against 1.001 is 1e-3 apart.
        let p = StepPair {
            iteration: 0,
            loss: [1.001, 1.0],
            ms: [0.0; 2],
        };
        assert!((p.relative_difference() - 1e-3).abs() < 1e-12);
    }
}
