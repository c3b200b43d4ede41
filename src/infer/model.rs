//! Running a trained RetinaNet over a dataset: batches, forward pass, per-image detections mapped
//! back to original image coordinates, COCO result records.

use super::{coco_results_with_map, detect_image, InferConfig};
use crate::data::loader::{Batch, Dataset};
use crate::eval::results::Detection as CocoDetection;
use crate::geometry::coder::BoxCoder;
use crate::geometry::{AnchorConfig, Anchors};
use crate::model::RetinaNet;
use anyhow::{Context, Result};
use candle_core::Device;

/// Detections of `model` on every image of `ds` (no flip), as COCO results in original pixels.
///
/// Coordinates go through the same f32 shortest-decimal text a results file holds, so evaluating
/// these in memory gives exactly the numbers `fl-lab eval --dets` gives on the written file.
pub fn detect_dataset(
    model: &RetinaNet,
    ds: &Dataset,
    cfg: &InferConfig,
    batch_size: usize,
    quiet: bool,
) -> Result<Vec<CocoDetection>> {
    let anchor_cfg = crate::geometry::AnchorConfig::from(&model.config().anchors);
    detect_dataset_with(
        ds,
        &anchor_cfg,
        cfg,
        batch_size,
        model.device(),
        quiet,
        |batch, _| {
            let pred = model.forward(&batch.images, false)?;
            Ok((
                pred.cls.flatten_all()?.to_vec1()?,
                pred.boxes.flatten_all()?.to_vec1()?,
            ))
        },
    )
}

/// The pipeline of [`detect_dataset`] around any predictor: `predict` maps a batch and its anchors to
/// flat class logits `[N, T, K]` and box deltas `[N, T, 4]`.
pub fn detect_dataset_with<F>(
    ds: &Dataset,
    anchor_cfg: &AnchorConfig,
    cfg: &InferConfig,
    batch_size: usize,
    device: &Device,
    quiet: bool,
    mut predict: F,
) -> Result<Vec<CocoDetection>>
where
    F: FnMut(&Batch, &Anchors) -> Result<(Vec<f32>, Vec<f32>)>,
{
    cfg.validate()?;
    let coder = BoxCoder::default();
    let num_classes = ds.num_classes();
    let bar = crate::util::progress::bar(ds.len() as u64, "images", quiet);
    let mut out = Vec::new();
    let indices: Vec<usize> = (0..ds.len()).collect();
    let mut anchors_for: Option<((usize, usize), Anchors)> = None;
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = ds.batch(chunk, &vec![false; chunk.len()], device)?;
        let (_, _, h, w) = batch.images.dims4()?;
        if anchors_for.as_ref().map(|a| a.0) != Some((h, w)) {
            anchors_for = Some(((h, w), anchor_cfg.generate(h, w)));
        }
        let anchors = &anchors_for.as_ref().context("anchors")?.1;
        let (cls, deltas) = predict(&batch, anchors)?;
        let t = anchors.boxes.len();
        for (i, gt) in batch.gt.iter().enumerate() {
            let (rw, rh) = (gt.resized_size.0 as f32, gt.resized_size.1 as f32);
            let mut dets = detect_image(
                &cls[i * t * num_classes..(i + 1) * t * num_classes],
                &deltas[i * t * 4..(i + 1) * t * 4],
                anchors,
                num_classes,
                &coder,
                cfg,
                rh,
                rw,
            );
            for d in &mut dets {
                let b = gt.to_original(d.bbox);
                let (ow, oh) = (gt.orig_size.0 as f32, gt.orig_size.1 as f32);
                d.bbox = crate::geometry::clip(&b, oh, ow);
            }
            for r in coco_results_with_map(gt.image_id, &dets, &ds.categories)? {
                let text = |v: f32| format!("{v}").parse::<f64>().unwrap_or(v as f64);
                out.push(CocoDetection {
                    image_id: r.image_id,
                    category_id: r.category_id,
                    bbox: r.bbox.map(text),
                    score: text(r.score),
                });
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Detections of `model` on one image, in the image's own pixels: the image goes through the
/// loader's resize and normalisation ([`crate::data::loader::image_input`]), the model and
/// [`detect_image`], and the boxes are scaled back and clipped to the image.
pub fn detect_picture(
    model: &RetinaNet,
    img: &image::RgbImage,
    cfg: &InferConfig,
) -> Result<Vec<super::Detection>> {
    cfg.validate()?;
    let size = model.config().data.input_size;
    let resize = crate::data::loader::ShorterSide::from_config(model.config());
    let (input, (rw, rh)) = crate::data::loader::image_input(img, size, resize, model.device())?;
    let (_, _, ih, iw) = input.dims4()?;
    let anchors = crate::geometry::AnchorConfig::from(&model.config().anchors).generate(ih, iw);
    let pred = model.forward(&input, false)?;
    let cls: Vec<f32> = pred.cls.flatten_all()?.to_vec1()?;
    let deltas: Vec<f32> = pred.boxes.flatten_all()?.to_vec1()?;
    let mut dets = detect_image(
        &cls,
        &deltas,
        &anchors,
        model.config().model.num_classes,
        &BoxCoder::default(),
        cfg,
        rh as f32,
        rw as f32,
    );
    let (w, h) = (img.width() as f32, img.height() as f32);
    let (sx, sy) = (w / rw as f32, h / rh as f32);
    for d in &mut dets {
        let [x1, y1, x2, y2] = d.bbox;
        d.bbox = crate::geometry::clip(&[x1 * sx, y1 * sy, x2 * sx, y2 * sy], h, w);
    }
    Ok(dets)
}
