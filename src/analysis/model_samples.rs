//! Binary samples of a trained RetinaNet for the loss CDF: every non-ignored (anchor, class) sigmoid
//! output on the validation images, with its target under the training rule (matcher IoU >= 0.5
//! positive, < 0.4 negative, in between ignored; crowd boxes are not targets).
//!
//! A positive sample is the output of a positive anchor for its own class; every other class of that
//! anchor, and every class of a negative anchor, is a negative sample, exactly as the per-class sigmoid
//! focal loss counts them during training.

use super::samples::SampleSets;
use crate::data::loader::Dataset;
use crate::model::RetinaNet;
use crate::train::targets::{GtBoxes, TargetBuilder};
use anyhow::Result;
use rand::Rng;

/// Streams the samples of `model` on `ds` into reservoirs of the given capacities.
pub fn model_samples<R: Rng>(
    model: &RetinaNet,
    ds: &Dataset,
    max_pos: usize,
    max_neg: usize,
    batch_size: usize,
    quiet: bool,
    rng: &mut R,
) -> Result<SampleSets> {
    let cfg = model.config();
    let mut targets = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
    let k = ds.num_classes();
    let mut sets = SampleSets::new(max_pos, max_neg);
    let bar = crate::util::progress::bar(ds.len() as u64, "images", quiet);
    let indices: Vec<usize> = (0..ds.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = ds.batch(chunk, &vec![false; chunk.len()], model.device())?;
        let (_, _, h, w) = batch.images.dims4()?;
        let gt: Vec<GtBoxes> = batch.gt.iter().map(GtBoxes::from).collect();
        let t = targets.build(&gt, h, w);
        let logits: Vec<f32> = model
            .forward(&batch.images, false)?
            .cls
            .flatten_all()?
            .to_vec1()?;
        for (anchor, &label) in t.labels.iter().enumerate() {
            if label < 0 {
                continue;
            }
            for c in 0..k {
                let positive = label == c as i64 + 1;
                sets.push_logit(logits[anchor * k + c], positive, rng);
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(sets)
}
