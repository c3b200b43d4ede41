//! The real executor of a sweep job: train the configuration in its run directory (resuming from a
//! checkpoint if one exists), then detect on the validation split and evaluate with the COCO evaluator.

use super::runner::{Executor, Job, RunRecord};
use crate::config::Config;
use crate::data::Split;
use crate::eval::coco::CocoEval;
use crate::infer::InferConfig;
use crate::model::RetinaNet;
use anyhow::{Context, Result};
use std::path::Path;

/// Trains with `crate::train` and evaluates with `crate::eval`.
pub struct TrainAndEvaluate;

impl Executor for TrainAndEvaluate {
    /// Opens (generating the built-in benchmark if it is missing) every dataset the jobs train and
    /// evaluate on, once, before runs side by side would all try to.
    fn prepare(&self, jobs: &[&Job], quiet: bool) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for job in jobs {
            if seen.insert(job.config.data.source.clone()) {
                for split in [Split::Train, Split::Val] {
                    crate::train::dataset_source::open_dataset(&job.config, split, quiet)?;
                }
            }
        }
        Ok(())
    }

    fn execute(&self, job: &Job, run_dir: &Path, quiet: bool) -> Result<RunRecord> {
        let cfg = &job.config;
        if let Some(record) = super::same_run::finished_twin(cfg, run_dir)? {
            return Ok(record);
        }
        let (mut record, model) = train_job(cfg, run_dir, quiet)?;
        let Some(model) = model else {
            return Ok(record);
        };
        let val = crate::train::dataset_source::open_dataset(cfg, Split::Val, quiet)?;
        // Evaluated as trained: with the products the model was trained with.
        let _products = crate::model::hold_conv_products(cfg)?;
        let dets =
            crate::infer::model::detect_dataset(&model, &val, &InferConfig::default(), 16, quiet)?;
        crate::eval::results::save_results(&run_dir.join("detections.json"), &dets)?;
        let ev = crate::eval::coco::evaluate(&val.coco, &dets)?;
        record_eval(&mut record, &ev, run_dir)?;
        Ok(record)
    }
}

/// Trains `cfg` in `run_dir` (resuming from its checkpoint if one exists) and returns the run's
/// record with zero APs, and the trained model unless the run diverged.
pub fn train_job(
    cfg: &Config,
    run_dir: &Path,
    quiet: bool,
) -> Result<(RunRecord, Option<RetinaNet>)> {
    let device = crate::device::parse_device(&cfg.device)?;
    let mut source = crate::train::dataset_source::open(cfg, Split::Train, quiet)?;
    let opts = crate::train::TrainOptions {
        run_dir: run_dir.to_path_buf(),
        resume: run_dir.join("checkpoint.json").exists(),
        quiet,
        ..Default::default()
    };
    let summary = crate::train::train(cfg, &mut source, &device, &opts)?;
    let record = RunRecord {
        ap: 0.0,
        ap50: 0.0,
        ap75: 0.0,
        aps: 0.0,
        apm: 0.0,
        apl: 0.0,
        final_loss_cls: summary.final_loss_cls,
        final_loss_box: summary.final_loss_box,
        positives_per_image: positives_per_image(
            &run_dir.join("metrics.csv"),
            cfg.schedule.batch_size,
        ),
        iterations: summary.iterations,
        wall_seconds: summary.seconds,
        diverged: summary.diverged,
        device: summary.device.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: crate::util::git_revision(),
        threads: Some(rayon::current_num_threads()),
        same_as: None,
    };
    if summary.diverged {
        return Ok((record, None));
    }
    let model = RetinaNet::load(&run_dir.join("model.safetensors"), &device)
        .with_context(|| format!("cannot load the trained model of {}", run_dir.display()))?;
    Ok((record, Some(model)))
}

/// Copies the six AP numbers of `ev` into `record` and writes its 12-line summary to `eval.txt`.
pub fn record_eval(record: &mut RunRecord, ev: &CocoEval, run_dir: &Path) -> Result<()> {
    let s = &ev.stats;
    (record.ap, record.ap50, record.ap75) = (s[0], s[1], s[2]);
    (record.aps, record.apm, record.apl) = (s[3], s[4], s[5]);
    crate::util::write_atomic(
        &run_dir.join("eval.txt"),
        ev.summary_lines().join("\n").as_bytes(),
    )
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
