//! The executor of an imbalance run: train on the tuning part of the training split (resuming from a
//! checkpoint if one exists), then evaluate on the held-out images (for choosing lr and alpha, saved
//! as `holdout.json`) and on the validation split (reported, in the run record).

use super::ladder::RungData;
use crate::data::loader::{Dataset, LoaderConfig};
use crate::experiments::runner::{Executor, Job, RunRecord};
use crate::infer::InferConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// AP on the held-out training images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HoldoutRecord {
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
}

impl HoldoutRecord {
    /// A run known only from a table row, which keeps the held-out AP alone.
    pub fn ap_only(ap: f64) -> Self {
        HoldoutRecord {
            ap,
            ap50: f64::NAN,
            ap75: f64::NAN,
        }
    }
}

pub const HOLDOUT_FILE: &str = "holdout.json";

/// Reads a finished run's held-out AP.
pub fn read_holdout(run_dir: &Path) -> Result<Option<HoldoutRecord>> {
    let path = run_dir.join(HOLDOUT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{} is not a held-out record", path.display())
    })?))
}

/// Knows each rung's held-out and validation files, by the training file a job's config names.
pub struct TrainTuneEvaluate {
    pub rungs: HashMap<String, RungData>,
}

impl Executor for TrainTuneEvaluate {
    fn execute(&self, job: &Job, run_dir: &Path, quiet: bool) -> Result<RunRecord> {
        let cfg = &job.config;
        let rung = self.rungs.get(&cfg.data.source).with_context(|| {
            format!(
                "data.source = '{}' is not a rung of this ladder (do not override data.source)",
                cfg.data.source
            )
        })?;
        let (mut record, model) = crate::experiments::executor::train_job(cfg, run_dir, quiet)?;
        let mut holdout = HoldoutRecord {
            ap: 0.0,
            ap50: 0.0,
            ap75: 0.0,
        };
        if let Some(model) = model {
            let evaluate = |json: &Path| -> Result<crate::eval::coco::CocoEval> {
                let src = crate::data::resolve(Some(json), None, crate::data::Split::Val, quiet)?;
                let ds = Dataset::open(
                    &src,
                    LoaderConfig {
                        input_size: cfg.data.input_size,
                        shorter_side: crate::data::loader::ShorterSide::from_config(cfg),
                        hflip: false,
                        ..Default::default()
                    },
                )?;
                let dets = crate::infer::model::detect_dataset(
                    &model,
                    &ds,
                    &InferConfig::default(),
                    16,
                    quiet,
                )?;
                Ok(crate::eval::coco::evaluate(&ds.coco, &dets)?)
            };
            let h = evaluate(&rung.holdout)?.stats;
            holdout = HoldoutRecord {
                ap: h[0],
                ap50: h[1],
                ap75: h[2],
            };
            let ev = evaluate(&rung.val)?;
            crate::experiments::executor::record_eval(&mut record, &ev, run_dir)?;
        }
        // Written before the runner writes result.json, so a finished run always has both.
        crate::util::write_atomic(
            &run_dir.join(HOLDOUT_FILE),
            &serde_json::to_vec_pretty(&holdout)?,
        )?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use crate::experiments::runner::{read_record, RunRecord};

    #[test]
    fn a_diverged_record_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let r = RunRecord {
            ap: 0.0,
            ap50: 0.0,
            ap75: 0.0,
            aps: 0.0,
            apm: 0.0,
            apl: 0.0,
            final_loss_cls: f64::NAN,
            final_loss_box: f64::NAN,
            positives_per_image: 3.0,
            iterations: 4,
            wall_seconds: 1.0,
            diverged: true,
            device: "cpu".into(),
            version: "t".into(),
            git_revision: "t".into(),
            threads: None,
            same_as: None,
        };
        std::fs::write(
            dir.path().join("result.json"),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
        let back = read_record(dir.path()).unwrap().unwrap();
        assert!(back.final_loss_cls.is_nan() && back.final_loss_box.is_nan());
        assert!(back.diverged);
        assert_eq!(back.positives_per_image, 3.0);
    }
}
