//! The real executor of a sweep job: train the configuration in its run directory (resuming from a
//! checkpoint if one exists), then detect on the validation split and evaluate with the COCO evaluator.

use super::runner::{Executor, Job, RunRecord};
use crate::data::Split;
use crate::infer::InferConfig;
use anyhow::{Context, Result};
use std::path::Path;

/// Trains with `crate::train` and evaluates with `crate::eval`.
pub struct TrainAndEvaluate;

impl Executor for TrainAndEvaluate {
    fn execute(&self, job: &Job, run_dir: &Path, quiet: bool) -> Result<RunRecord> {
        let cfg = &job.config;
        let device = crate::device::parse_device(&cfg.device)?;
        let mut source = crate::train::dataset_source::open(cfg, Split::Train, quiet)?;
        let opts = crate::train::TrainOptions {
            run_dir: run_dir.to_path_buf(),
            resume: run_dir.join("checkpoint.json").exists(),
            quiet,
            stop_after: None,
            snapshots: Vec::new(),
        };
        let summary = crate::train::train(cfg, &mut source, &device, &opts)?;
        let positives_per_image =
            positives_per_image(&run_dir.join("metrics.csv"), cfg.schedule.batch_size);
        let mut record = RunRecord {
            ap: 0.0,
            ap50: 0.0,
            ap75: 0.0,
            aps: 0.0,
            apm: 0.0,
            apl: 0.0,
            final_loss_cls: summary.final_loss_cls,
            final_loss_box: summary.final_loss_box,
            positives_per_image,
            iterations: summary.iterations,
            wall_seconds: summary.seconds,
            diverged: summary.diverged,
            device: summary.device.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: crate::util::git_revision(),
        };
        if summary.diverged {
            return Ok(record);
        }
        let model = crate::model::RetinaNet::load(&run_dir.join("model.safetensors"), &device)
            .with_context(|| format!("cannot load the trained model of {}", run_dir.display()))?;
        let val = crate::train::dataset_source::open_dataset(cfg, Split::Val, quiet)?;
        let dets =
            crate::infer::model::detect_dataset(&model, &val, &InferConfig::default(), 16, quiet)?;
        crate::eval::results::save_results(&run_dir.join("detections.json"), &dets)?;
        let ev = crate::eval::coco::evaluate(&val.coco, &dets)?;
        let s = &ev.stats;
        record.ap = s[0];
        record.ap50 = s[1];
        record.ap75 = s[2];
        record.aps = s[3];
        record.apm = s[4];
        record.apl = s[5];
        crate::util::write_atomic(
            &run_dir.join("eval.txt"),
            ev.summary_lines().join("\n").as_bytes(),
        )?;
        Ok(record)
    }
}

/// Mean positive anchors per image over the run's logged iterations.
fn positives_per_image(metrics: &Path, batch_size: usize) -> f64 {
    let Ok(rows) = crate::train::trainer::read_metrics(metrics) else {
        return f64::NAN;
    };
    if rows.is_empty() || batch_size == 0 {
        return f64::NAN;
    }
    rows.iter().map(|r| r.positives as f64).sum::<f64>() / rows.len() as f64 / batch_size as f64
}
