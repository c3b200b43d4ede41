//! Detections back in original image coordinates, and COCO result records (the `results.json` format that
//! pycocotools' `COCO.loadRes` reads).

use std::path::Path;

use anyhow::Context;

use super::{Detection, InferError};
use crate::data::coco::CategoryMap;
use crate::geometry::xyxy_to_xywh;

/// Map detections from network-input coordinates back to the original image, in place.
///
/// The input is assumed to be `flip(resize(original, scale))`: the original resized by `scale`
/// (input size = original size x scale), then, if `hflip_width` is `Some(w)`, mirrored horizontally within
/// an input of width `w`. Boxes are unflipped, divided by `scale`, and clipped to the original
/// `original_h x original_w` (rounding the resized size can leave a fraction of a pixel outside).
pub fn rescale_detections(
    dets: &mut [Detection],
    scale: f32,
    hflip_width: Option<f32>,
    original_h: f32,
    original_w: f32,
) {
    for d in dets {
        let mut b = d.bbox;
        if let Some(w) = hflip_width {
            b = [w - b[2], b[1], w - b[0], b[3]];
        }
        let b = b.map(|v| v / scale);
        d.bbox = crate::geometry::clip(&b, original_h, original_w);
    }
}

/// One COCO detection result: `bbox` is `[x, y, width, height]` in original image pixels.
///
/// Stored as f32 so that JSON holds the shortest decimal that reads back as the same f32.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CocoResult {
    pub image_id: i64,
    pub category_id: i64,
    pub bbox: [f32; 4],
    pub score: f32,
}

/// COCO result records for one image's detections, with `category_id` given by a closure from the
/// contiguous class index. Fails on a class the closure does not know.
pub fn coco_results(
    image_id: i64,
    dets: &[Detection],
    category_id: impl Fn(usize) -> Option<i64>,
) -> Result<Vec<CocoResult>, InferError> {
    dets.iter()
        .map(|d| {
            let category_id =
                category_id(d.class).ok_or(InferError::UnknownClass { class: d.class })?;
            Ok(CocoResult {
                image_id,
                category_id,
                bbox: xyxy_to_xywh(&d.bbox),
                score: d.score,
            })
        })
        .collect()
}

/// [`coco_results`] with the dataset's category map.
pub fn coco_results_with_map(
    image_id: i64,
    dets: &[Detection],
    map: &CategoryMap,
) -> Result<Vec<CocoResult>, InferError> {
    coco_results(image_id, dets, |c| map.category_id(c))
}

/// Write results as a COCO results JSON array, atomically.
pub fn write_coco_results(path: &Path, results: &[CocoResult]) -> anyhow::Result<()> {
    let json = serde_json::to_vec(results).context("serialising COCO results")?;
    crate::util::write_atomic(path, &json)
        .with_context(|| format!("writing COCO results to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(b: [f32; 4], class: usize) -> Detection {
        Detection {
            bbox: b,
            score: 0.5,
            class,
        }
    }

    #[test]
    fn rescale_unflips_then_unscales_and_clips() {
        // Original 200 x 100 (w x h), resized by 1.5 to 300 x 150, flipped within width 300.
        let original = [20.0f32, 10.0, 60.0, 40.0];
        let resized = original.map(|v| v * 1.5); // [30, 15, 90, 60]
        let flipped = [
            300.0 - resized[2],
            resized[1],
            300.0 - resized[0],
            resized[3],
        ];
        let mut d = [det(flipped, 0), det([-3.0, 0.0, 310.0, 150.0], 1)];
        rescale_detections(&mut d, 1.5, Some(300.0), 100.0, 200.0);
        for (got, want) in d[0].bbox.iter().zip(original) {
            assert!((got - want).abs() < 1e-4, "{:?}", d[0].bbox);
        }
        assert_eq!(d[1].bbox, [0.0, 0.0, 200.0, 100.0]);
        let mut d = [det(resized, 0)];
        rescale_detections(&mut d, 1.5, None, 100.0, 200.0);
        assert_eq!(d[0].bbox, original);
    }

    #[test]
    fn coco_records_and_json() {
        let map = CategoryMap::new([1, 7, 90]);
        let dets = [det([1.0, 2.0, 4.0, 8.0], 2), det([0.0, 0.0, 1.0, 1.0], 0)];
        let r = coco_results_with_map(42, &dets, &map).unwrap();
        assert_eq!(
            r[0],
            CocoResult {
                image_id: 42,
                category_id: 90,
                bbox: [1.0, 2.0, 3.0, 6.0],
                score: 0.5
            }
        );
        assert_eq!(r[1].category_id, 1);
        let e = coco_results(1, &[det([0.0; 4], 3)], |c| map.category_id(c)).unwrap_err();
        assert_eq!(e, InferError::UnknownClass { class: 3 });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.json");
        write_coco_results(&p, &r).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(
            "[{\"image_id\":42,\"category_id\":90,\"bbox\":[1.0,2.0,3.0,6.0],\"score\":0.5}"
        ));
        let back: Vec<CocoResult> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
