//! Timing of training steps, part by part, for `fl-lab bench train`: the same forward, loss,
//! backward and SGD update as the trainer, on random images with random boxes (so data loading and
//! decoding are not timed).

use super::objective::Normalizer;
use super::sources::RandomSource;
use super::step::Stepper;
use super::targets::TargetBuilder;
use super::trainer::{sgd_for, BatchSource};
use crate::config::Config;
use crate::model::RetinaNet;
use crate::ops::{count_conv_work, ConvWork};
use anyhow::Result;
use candle_core::Device;
use std::time::Instant;

/// Median milliseconds of each part of a step over the timed steps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepTimes {
    /// Targets (anchor matching), model forward and the loss (of the slowest part when the batch
    /// is split across threads, see `train::step`).
    pub forward_ms: f64,
    /// Backpropagation through the loss and the model (of the slowest part).
    pub backward_ms: f64,
    /// The SGD update (momentum, weight decay).
    pub optimizer_ms: f64,
    /// Median of whole steps (not the sum of the part medians).
    pub total_ms: f64,
    pub steps: usize,
    /// Convolution work of one step.
    pub forward_macs: u64,
    pub input_grad_macs: u64,
    /// Convolution FLOPs of one training step (forward, input and weight gradients).
    pub step_gflop: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `warmup + steps` training steps of the model `cfg` describes and reports the median time of
/// each part over the last `steps`.
pub fn time_steps(cfg: &Config, device: &Device, steps: usize, warmup: usize) -> Result<StepTimes> {
    cfg.validate()?;
    anyhow::ensure!(steps > 0, "steps must be at least 1");
    let model = RetinaNet::new(cfg, device)?;
    let mut sgd = sgd_for(&model, &cfg.schedule);
    let mut normalizer = Normalizer::new(cfg.loss.normalizer, cfg.loss.ema_momentum);
    let mut targets = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
    let mut data = RandomSource::for_config(cfg);
    let lr = cfg.schedule.lr;
    let (mut fwd, mut bwd, mut opt, mut total) = (vec![], vec![], vec![], vec![]);
    let mut work = ConvWork::default();
    let stepper = Stepper::new(cfg, device)?;
    for i in 0..warmup + steps {
        let batch = data.batch(i, cfg.schedule.batch_size, device)?;
        device.synchronize()?;
        let t0 = Instant::now();
        let (pass, step_work) = count_conv_work(|| {
            stepper.forward_backward(
                &model,
                &batch.images,
                &batch.gt,
                &mut targets,
                cfg,
                &mut normalizer,
            )
        });
        let pass = pass?;
        device.synchronize()?;
        let t2 = Instant::now();
        sgd.step_summed(&pass.grads, lr)?;
        device.synchronize()?;
        let t3 = Instant::now();
        work = ConvWork {
            forward_macs: step_work.forward_macs,
            input_grad_macs: step_work.forward_macs.min(step_work.input_grad_macs),
        };
        if i >= warmup {
            fwd.push(pass.forward.as_secs_f64() * 1e3);
            bwd.push(pass.backward.as_secs_f64() * 1e3);
            opt.push((t3 - t2).as_secs_f64() * 1e3);
            total.push((t3 - t0).as_secs_f64() * 1e3);
        }
    }
    Ok(StepTimes {
        forward_ms: median(fwd),
        backward_ms: median(bwd),
        optimizer_ms: median(opt),
        total_ms: median(total),
        steps,
        forward_macs: work.forward_macs,
        input_grad_macs: work.input_grad_macs,
        step_gflop: work.training_flops() as f64 * 1e-9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_tiny_model_convolution_work_exactly() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/tiny.toml");
        let cfg = Config::load(std::path::Path::new(path), &[]).unwrap();
        let t = time_steps(&cfg, &Device::Cpu, 1, 0).unwrap();
        assert!(t.total_ms >= t.forward_ms && t.total_ms >= t.backward_ms);
        // The stem reads the image: its input needs no gradient, every other convolution's does.
        // tiny: r10 at width 1/8, stem 3 -> 8 channels, 3x3 stride 2 on a 64x64 image: 32x32 outputs.
        let stem_macs = (8 * 32 * 32 * 3 * 9) as u64;
        assert_eq!(t.forward_macs - t.input_grad_macs, stem_macs);
        assert_eq!(
            t.step_gflop,
            (2 * (2 * t.forward_macs + t.input_grad_macs)) as f64 * 1e-9
        );
    }
}
