//! Precision-recall curves of a COCO evaluation: a CSV of every curve and a two-panel PNG.

use crate::eval::coco::{CocoEval, NUM_IOU};
use crate::plot::{write_panels, LineChart, Series};
use anyhow::Result;
use std::path::Path;

/// IoU selections drawn and tabulated: (label, threshold indices).
fn selections() -> [(&'static str, std::ops::Range<usize>); 3] {
    [("0.50", 0..1), ("0.75", 5..6), ("0.50:0.95", 0..NUM_IOU)]
}

/// Writes `iou,category_id,category,recall,precision` rows: for each IoU selection (.50, .75, and
/// the mean over .50:.95), the curve averaged over categories (`category_id` empty, category
/// `all`) and each category's curve. Area all, 100 detections per image.
pub fn write_pr_curves_csv(path: &Path, ev: &CocoEval, names: &[String]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["iou", "category_id", "category", "recall", "precision"])?;
    for (label, ts) in selections() {
        let mut emit = |id: String, name: &str, curve: &[f64]| -> Result<()> {
            for (r, p) in curve.iter().enumerate() {
                w.write_record([
                    label.to_string(),
                    id.clone(),
                    name.to_string(),
                    format!("{:.2}", ev.recall_thresholds[r]),
                    p.to_string(),
                ])?;
            }
            Ok(())
        };
        if let Some(c) = ev.mean_pr_curve(ts.clone()) {
            emit(String::new(), "all", &c)?;
        }
        for (k, name) in names.iter().enumerate() {
            if let Some(c) = ev.category_pr_curve(k, ts.clone()) {
                emit(ev.category_ids[k].to_string(), name, &c)?;
            }
        }
    }
    crate::util::write_atomic(path, &w.into_inner()?)
}

/// Left panel: precision vs recall averaged over categories at IoU .50, .75 and .50:.95. Right
/// panel: per-category curves at IoU .50 for the (up to) ten categories with most ground truth.
pub fn write_pr_curves_png(
    path: &Path,
    ev: &CocoEval,
    names: &[String],
    title: &str,
) -> Result<()> {
    let recall = ev.recall_thresholds;
    let to_points =
        |c: &[f64]| -> Vec<(f64, f64)> { recall.iter().copied().zip(c.iter().copied()).collect() };
    let mut left = LineChart {
        title: "all categories (mean), area all, 100 dets".into(),
        x_label: "recall".into(),
        y_label: "precision".into(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.02)),
        series: Vec::new(),
    };
    for (label, ts) in selections() {
        if let Some(c) = ev.mean_pr_curve(ts) {
            left.series.push(Series {
                label: format!("IoU={label}"),
                points: to_points(&c),
                ..Default::default()
            });
        }
    }
    let mut ks: Vec<usize> = (0..ev.num_categories())
        .filter(|&k| ev.category_pr_curve(k, 0..1).is_some())
        .collect();
    let with_gt = ks.len();
    ks.sort_by_key(|&k| std::cmp::Reverse(ev.num_gt[k]));
    ks.truncate(10);
    ks.sort_unstable();
    let mut right = LineChart {
        title: if with_gt > ks.len() {
            format!(
                "per category, IoU=0.50 ({} of {with_gt} with most GT)",
                ks.len()
            )
        } else {
            "per category, IoU=0.50".into()
        },
        x_label: "recall".into(),
        y_label: "precision".into(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.02)),
        series: Vec::new(),
    };
    for k in ks {
        if let Some(c) = ev.category_pr_curve(k, 0..1) {
            right.series.push(Series {
                label: format!("{} ({})", names[k], ev.category_ids[k]),
                points: to_points(&c),
                ..Default::default()
            });
        }
    }
    write_panels(path, title, &[left, right], (2000, 800))
}
