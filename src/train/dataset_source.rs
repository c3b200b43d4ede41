//! Training batches from a COCO dataset (`crate::data::loader`), as a pure function of
//! (seed, iteration): epoch e is a permutation and a set of flips drawn from a generator seeded by
//! (seed, e), and iteration i takes batch i mod (images / batch size) of epoch i div that. The last
//! partial batch of an epoch is dropped, as detectron2's training sampler does.

use super::targets::GtBoxes;
use super::trainer::{BatchSource, TrainBatch};
use crate::config::Config;
use crate::data::loader::{Dataset, LoaderConfig};
use crate::data::Split;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Opens one split of the dataset a config names (`data.source`: "builtin" or a COCO path) and
/// checks it has the number of classes the model predicts.
pub fn open_dataset(cfg: &Config, split: Split, quiet: bool) -> Result<Dataset> {
    let source = match cfg.data.source.as_str() {
        "builtin" => crate::data::resolve(None, None, split, quiet)?,
        path => {
            let images = (!cfg.data.images.is_empty()).then(|| Path::new(&cfg.data.images));
            crate::data::resolve(Some(Path::new(path)), images, split, quiet)
                .with_context(|| format!("data.source = '{path}'"))?
        }
    };
    let loader = LoaderConfig {
        input_size: cfg.data.input_size,
        shorter_side: crate::data::loader::ShorterSide::from_config(cfg),
        hflip: cfg.data.flip && split == Split::Train,
        ..Default::default()
    };
    let ds = Dataset::open(&source, loader)?;
    if ds.num_classes() != cfg.model.num_classes {
        bail!(
            "model.num_classes = {} but the dataset {} has {} categories; pass --set model.num_classes={}",
            cfg.model.num_classes,
            source.json.display(),
            ds.num_classes(),
            ds.num_classes()
        );
    }
    Ok(ds)
}

/// The training batches of a config: [`open_dataset`] wrapped in a seeded [`DatasetSource`].
pub fn open(cfg: &Config, split: Split, quiet: bool) -> Result<DatasetSource> {
    let ds = open_dataset(cfg, split, quiet)?;
    DatasetSource::new(ds, cfg.data.max_images, cfg.seed, cfg.data.flip)
}

pub struct DatasetSource {
    ds: Dataset,
    /// Images in use (the first `n` of the dataset).
    n: usize,
    seed: u64,
    flip: bool,
    plan: Option<(usize, Vec<usize>, Vec<bool>)>,
}

impl DatasetSource {
    /// Uses the first `max_images` images (0: all).
    pub fn new(ds: Dataset, max_images: usize, seed: u64, flip: bool) -> Result<DatasetSource> {
        let n = if max_images == 0 {
            ds.len()
        } else {
            max_images.min(ds.len())
        };
        if n == 0 {
            bail!("the training set has no images");
        }
        Ok(DatasetSource {
            ds,
            n,
            seed,
            flip,
            plan: None,
        })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.ds
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn plan(&mut self, epoch: usize) -> &(usize, Vec<usize>, Vec<bool>) {
        if self.plan.as_ref().map(|p| p.0) != Some(epoch) {
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(epoch as u64),
            );
            let mut order: Vec<usize> = (0..self.n).collect();
            order.shuffle(&mut rng);
            let flips = (0..self.n)
                .map(|_| self.flip && rng.gen_bool(0.5))
                .collect();
            self.plan = Some((epoch, order, flips));
        }
        self.plan.as_ref().expect("plan was just set")
    }
}

impl BatchSource for DatasetSource {
    fn batch(
        &mut self,
        iteration: usize,
        batch_size: usize,
        device: &Device,
    ) -> Result<TrainBatch> {
        if batch_size > self.n {
            bail!(
                "schedule.batch_size = {batch_size} exceeds the {} training images",
                self.n
            );
        }
        let per_epoch = self.n / batch_size;
        let (epoch, b) = (iteration / per_epoch, iteration % per_epoch);
        let (_, order, flips) = self.plan(epoch);
        let lo = b * batch_size;
        let idx = order[lo..lo + batch_size].to_vec();
        let fl = flips[lo..lo + batch_size].to_vec();
        let batch = self.ds.batch(&idx, &fl, device)?;
        Ok(TrainBatch {
            images: batch.images,
            gt: batch
                .gt
                .into_iter()
                .map(|g| GtBoxes {
                    boxes: g.boxes,
                    classes: g.classes,
                })
                .collect(),
        })
    }
}
