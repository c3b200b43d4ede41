//! Batch sources that need no dataset: a fixed batch (overfitting checks) and random images with
//! random boxes (timing the training step on any shape).

use super::targets::GtBoxes;
use super::trainer::{BatchSource, TrainBatch};
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Returns the same batch at every iteration.
pub struct FixedSource(pub TrainBatch);

impl BatchSource for FixedSource {
    fn batch(
        &mut self,
        _iteration: usize,
        _batch_size: usize,
        device: &Device,
    ) -> Result<TrainBatch> {
        Ok(TrainBatch {
            images: self.0.images.to_device(device)?,
            gt: self.0.gt.clone(),
        })
    }
}

/// Uniform noise images `[N, 3, S, S]` in [-2, 2] with 1-4 random boxes of random classes each,
/// a pure function of (seed, iteration). For timing: there is nothing to learn.
pub struct RandomSource {
    pub seed: u64,
    pub size: usize,
    pub num_classes: usize,
}

impl RandomSource {
    /// Random images of a config's input size: `data.input_size`, or with the paper's resize a
    /// square of `data.min_size` rounded up to the size divisibility (640 for 600 and P7).
    pub fn for_config(cfg: &crate::config::Config) -> RandomSource {
        let d = &cfg.data;
        let div = cfg.size_divisibility();
        let size = if d.min_size > 0 {
            d.min_size.div_ceil(div) * div
        } else {
            d.input_size
        };
        RandomSource {
            seed: cfg.seed,
            size,
            num_classes: cfg.model.num_classes,
        }
    }
}

impl BatchSource for RandomSource {
    fn batch(
        &mut self,
        iteration: usize,
        batch_size: usize,
        device: &Device,
    ) -> Result<TrainBatch> {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (iteration as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let s = self.size;
        let pixels: Vec<f32> = (0..batch_size * 3 * s * s)
            .map(|_| rng.gen_range(-2.0f32..2.0))
            .collect();
        let sf = s as f32;
        let gt = (0..batch_size)
            .map(|_| {
                let n = rng.gen_range(1..=4);
                let mut g = GtBoxes::default();
                for _ in 0..n {
                    let w = rng.gen_range(0.3..0.7) * sf;
                    let h = rng.gen_range(0.3..0.7) * sf;
                    let x = rng.gen_range(0.0..sf - w);
                    let y = rng.gen_range(0.0..sf - h);
                    g.boxes.push([x, y, x + w, y + h]);
                    g.classes.push(rng.gen_range(0..self.num_classes));
                }
                g
            })
            .collect();
        Ok(TrainBatch {
            images: Tensor::from_vec(pixels, (batch_size, 3, s, s), device)?,
            gt,
        })
    }
}
