//! One training step's forward and backward pass, split by images across threads on the CPU.
//!
//! On few cores a step over the whole batch on every thread leaves cores idle for a good part of
//! it: candle's elementwise ops, allocation and the autograd bookkeeping run on one thread between
//! the parallel kernels. Here each part of the batch runs its forward and backward pass on its own
//! thread pool, as data-parallel training does across devices, and the parts' gradients are summed.
//! This is exact up to float rounding: group norm normalizes within an image, and every part's loss
//! is its sum over anchors divided by the normalizer of the whole batch, so the parts' losses and
//! gradients add up to the batch's. BatchNorm's statistics span the batch, so a model with BatchNorm
//! is never split.

use super::objective::{self, Normalizer};
use super::targets::{GtBoxes, TargetBuilder, Targets};
use crate::config::{Config, NormKind};
use crate::loss::LossSplit;
use crate::model::RetinaNet;
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use std::time::{Duration, Instant};

/// What a step's forward and backward passes produced.
pub struct Pass {
    /// Normalized classification and box losses of the whole batch.
    pub loss_cls: f64,
    pub loss_box: f64,
    /// Foreground anchors in the batch.
    pub positives: usize,
    /// The classification loss and gradient split over positives, hard and easy negatives.
    pub split: LossSplit,
    /// Whether OHEM's positive quota bound in any image (`LossTerms::ohem_quota_full`).
    pub ohem_quota_full: bool,
    /// One gradient store per part; the batch's gradient is their sum.
    pub grads: Vec<GradStore>,
    /// Forward (targets, model, loss) and backward time of the slowest part.
    pub forward: Duration,
    pub backward: Duration,
}

/// Runs the forward and backward passes of a step, over the whole batch or in parts.
pub struct Stepper {
    /// One pool per part; empty: the whole batch on the caller's threads.
    pools: Vec<rayon::ThreadPool>,
}

impl Stepper {
    /// On the CPU, `min(threads, batch)` parts with the threads shared between them, where
    /// `threads` is the size of the current rayon pool; elsewhere, or with BatchNorm, one part.
    pub fn new(cfg: &Config, device: &Device) -> Result<Stepper> {
        let threads = rayon::current_num_threads();
        let parts = threads.min(cfg.schedule.batch_size);
        if !device.is_cpu() || cfg.model.norm == NormKind::Bn {
            return Stepper::with_parts(1, threads);
        }
        Stepper::with_parts(parts, (threads / parts.max(1)).max(1))
    }

    /// `parts` parts of `threads` threads each (one part: the caller's threads).
    pub fn with_parts(parts: usize, threads: usize) -> Result<Stepper> {
        if parts <= 1 {
            return Ok(Stepper { pools: Vec::new() });
        }
        let pools = (0..parts)
            .map(|_| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .context("cannot start the threads of a training step")
            })
            .collect::<Result<_>>()?;
        Ok(Stepper { pools })
    }

    /// Parts a batch is split into.
    pub fn parts(&self) -> usize {
        self.pools.len().max(1)
    }

    /// Targets, forward pass, loss and backward pass of one batch.
    pub fn forward_backward(
        &self,
        model: &RetinaNet,
        images: &Tensor,
        gt: &[GtBoxes],
        builder: &mut TargetBuilder,
        cfg: &Config,
        normalizer: &mut Normalizer,
    ) -> Result<Pass> {
        let t0 = Instant::now();
        let (n, _, h, w) = images.dims4()?;
        let targets = builder.build(gt, h, w);
        let norm = normalizer.next(targets.positives.len());
        let positives = targets.positives.len();
        let targets_time = t0.elapsed();
        let builder = &*builder;
        // The weights do not change until the optimizer's update, after this pass: their
        // preparations for the convolutions are made once and shared by the pyramid levels.
        let run = |images: Tensor, targets: Targets| -> Result<PartPass> {
            crate::ops::conv::share_weight_preparations(|| {
                let t0 = Instant::now();
                let out = model.forward(&images, true)?;
                let terms = objective::compute_normalized(&out, &targets, builder, cfg, norm)?;
                let loss_cls = scalar(&terms.cls)?;
                let loss_box = scalar(&terms.boxes)?;
                let t1 = Instant::now();
                let grads = terms.total.backward()?;
                Ok(PartPass {
                    loss_cls,
                    loss_box,
                    split: terms.split,
                    ohem_quota_full: terms.ohem_quota_full,
                    grads,
                    forward: t1 - t0,
                    backward: t1.elapsed(),
                })
            })
        };
        let parts: Vec<PartPass> = if self.pools.len() <= 1 {
            vec![run(images.clone(), targets)?]
        } else {
            let ranges = split(n, self.pools.len());
            std::thread::scope(|scope| {
                let handles: Vec<_> = ranges
                    .iter()
                    .zip(&self.pools)
                    .map(|(r, pool)| {
                        let part_images = images.narrow(0, r.start, r.len());
                        let part_targets = targets.images(r.clone());
                        scope.spawn(move || pool.install(|| run(part_images?, part_targets)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| anyhow::bail!("a training-step thread panicked"))
                    })
                    .collect::<Result<Vec<_>>>()
            })?
        };
        let mut split = LossSplit::default();
        for p in &parts {
            split.add(&p.split);
        }
        Ok(Pass {
            loss_cls: parts.iter().map(|p| p.loss_cls).sum(),
            loss_box: parts.iter().map(|p| p.loss_box).sum(),
            positives,
            split,
            ohem_quota_full: parts.iter().any(|p| p.ohem_quota_full),
            forward: targets_time + parts.iter().map(|p| p.forward).max().unwrap_or_default(),
            backward: parts.iter().map(|p| p.backward).max().unwrap_or_default(),
            grads: parts.into_iter().map(|p| p.grads).collect(),
        })
    }
}

struct PartPass {
    loss_cls: f64,
    loss_box: f64,
    split: LossSplit,
    ohem_quota_full: bool,
    grads: GradStore,
    forward: Duration,
    backward: Duration,
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// `n` images in `parts` contiguous ranges whose sizes differ by at most one.
fn split(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            start += len;
            start - len..start
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::train::sources::RandomSource;
    use crate::train::trainer::BatchSource;

    /// The tiny model with a batch of `n` random images.
    fn setup(n: usize) -> (Config, RetinaNet, crate::train::TrainBatch) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/tiny.toml");
        let cfg = Config::load(std::path::Path::new(path), &[]).unwrap();
        let model = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
        let mut data = RandomSource {
            seed: 3,
            size: cfg.data.input_size,
            num_classes: cfg.model.num_classes,
        };
        let batch = data.batch(0, n, &Device::Cpu).unwrap();
        (cfg, model, batch)
    }

    /// The convolutions' weight preparations are shared inside a pass only (keyed by tensor id,
    /// while SGD rewrites the weights in place under the same ids): a pass after an in-place
    /// update gives exactly what a model holding the updated values in new tensors gives.
    #[test]
    fn a_pass_after_weights_change_in_place_uses_the_new_weights() {
        let (cfg, model, batch) = setup(2);
        let pass = |model: &RetinaNet| {
            let mut builder = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
            let mut norm = Normalizer::new(cfg.loss.normalizer, cfg.loss.ema_momentum);
            let stepper = Stepper::with_parts(1, 1).unwrap();
            let p = stepper
                .forward_backward(
                    model,
                    &batch.images,
                    &batch.gt,
                    &mut builder,
                    &cfg,
                    &mut norm,
                )
                .unwrap();
            let grads: Vec<Vec<f32>> = model
                .store
                .named_vars()
                .iter()
                .filter_map(|(_, v)| p.grads[0].get(v.as_tensor()))
                .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            (p.loss_cls, p.loss_box, grads)
        };
        let before = pass(&model);
        let fresh = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
        for ((name, var), (fresh_name, fresh_var)) in model
            .store
            .named_vars()
            .iter()
            .zip(fresh.store.named_vars())
        {
            assert_eq!(name, &fresh_name);
            let changed = ((var.as_tensor() * 0.9).unwrap() + 0.01).unwrap();
            var.set(&changed).unwrap();
            fresh_var.set(&changed).unwrap();
        }
        let (after, want) = (pass(&model), pass(&fresh));
        assert_ne!(after.0, before.0, "the update changes the loss");
        assert_eq!((after.0, after.1), (want.0, want.1));
        assert!(after.2.len() > 10 && after.2 == want.2, "gradients differ");
    }

    #[test]
    fn parts_give_the_loss_and_gradient_of_the_whole_batch() {
        let (cfg, model, batch) = setup(5);
        let pass = |parts: usize| {
            let mut builder = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
            let mut norm = Normalizer::new(cfg.loss.normalizer, cfg.loss.ema_momentum);
            Stepper::with_parts(parts, 1)
                .unwrap()
                .forward_backward(
                    &model,
                    &batch.images,
                    &batch.gt,
                    &mut builder,
                    &cfg,
                    &mut norm,
                )
                .unwrap()
        };
        let whole = pass(1);
        assert!(whole.positives > 0);
        for parts in [2, 3] {
            let split = pass(parts);
            let mut compared = 0;
            assert_eq!(split.grads.len(), parts);
            assert_eq!(split.positives, whole.positives);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
            assert!(close(split.loss_cls, whole.loss_cls), "{parts} parts");
            assert!(close(split.loss_box, whole.loss_box), "{parts} parts");
            for (name, var) in model.store.named_vars() {
                let g = |store: &GradStore| -> Option<Vec<f32>> {
                    let t = store.get(var.as_tensor())?;
                    Some(t.flatten_all().unwrap().to_vec1().unwrap())
                };
                let Some(want) = g(&whole.grads[0]) else {
                    continue;
                };
                let mut sum = vec![0f32; want.len()];
                for store in &split.grads {
                    for (s, v) in sum.iter_mut().zip(g(store).unwrap_or_default()) {
                        *s += v;
                    }
                }
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let worst = sum
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst <= 1e-4 * scale,
                    "{name}: {worst} of {scale} ({parts} parts)"
                );
                compared += 1;
            }
            assert!(compared > 10, "only {compared} parameters had gradients");
        }
    }

    #[test]
    fn batch_norm_models_and_gpus_are_not_split() {
        let (mut cfg, _, _) = setup(1);
        cfg.schedule.batch_size = 8;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let parts =
            |cfg: &Config| pool.install(|| Stepper::new(cfg, &Device::Cpu).unwrap().parts());
        assert_eq!(parts(&cfg), 2);
        cfg.model.norm = NormKind::Bn;
        assert_eq!(parts(&cfg), 1);
    }

    #[test]
    fn split_covers_the_batch_in_near_equal_ranges() {
        assert_eq!(split(8, 2), vec![0..4, 4..8]);
        assert_eq!(split(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(split(2, 4), vec![0..1, 1..2]);
    }
}
