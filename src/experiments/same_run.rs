//! Runs that need no training because a finished run already is them, step for step.
//!
//! "OHEM 1:3" takes at most a quarter of its batch (`loss.ohem_batch` per image) as positives and
//! three negatives per positive. Where an image's positives that survive NMS stay under that
//! quarter, every larger batch selects the same anchors (`loss::ohem::Selection`). A training
//! run records whether that ever failed to hold (`Summary::ohem_positive_quota_filled`); when it
//! never did, a run whose configuration differs from it only by a larger `loss.ohem_batch`
//! would select the same anchors at every step of the same seed's data, initialization and
//! schedule, and end with the same weights. Its record is then that run's, marked `same_as`
//! (Table 1d's three 1:3 variants on the built-in benchmark, whose images have 22 positive anchors
//! on average, stay under the smallest batch's quota of 32).

use super::runner::{read_record, RunRecord};
use crate::config::{Config, LossKind};
use crate::train::trainer::Summary;
use anyhow::Result;
use std::path::Path;

/// Whether a run of `cfg` is a run of `other` when `other`'s positive quota never fills: both
/// OHEM with a positive fraction, equal but for `other`'s smaller `loss.ohem_batch`.
pub fn could_repeat(cfg: &Config, other: &Config) -> Result<bool> {
    if !ohem_with_ratio(cfg)
        || !ohem_with_ratio(other)
        || other.loss.ohem_batch >= cfg.loss.ohem_batch
    {
        return Ok(false);
    }
    let mut same = other.clone();
    same.loss.ohem_batch = cfg.loss.ohem_batch;
    Ok(same.hash()? == cfg.hash()?)
}

/// OHEM with a positive fraction ("OHEM 1:3"): the only runs that can repeat another.
fn ohem_with_ratio(c: &Config) -> bool {
    c.loss.kind == LossKind::Ohem && c.loss.ohem_ratio > 0
}

/// The record of a finished run beside `run_dir` (in the same `runs` folder) that a run of `cfg`
/// would repeat step for step, marked `same_as` its folder, with no training time of its own;
/// `None` where there is none, or where `run_dir` holds a checkpoint of its own.
pub fn finished_twin(cfg: &Config, run_dir: &Path) -> Result<Option<RunRecord>> {
    let Some(runs) = run_dir.parent() else {
        return Ok(None);
    };
    if !ohem_with_ratio(cfg) || run_dir.join("checkpoint.json").exists() || !runs.is_dir() {
        return Ok(None);
    }
    let mut dirs: Vec<_> = std::fs::read_dir(runs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| d.as_path() != run_dir && d.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        // Unreadable or unrelated folders are simply not twins.
        let summary = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Summary>(&t).ok());
        let Some(summary) = summary else { continue };
        if !summary.finished
            || summary.diverged
            || summary.ohem_positive_quota_filled != Some(false)
        {
            continue;
        }
        let text = std::fs::read_to_string(dir.join("config.toml")).ok();
        let Some(twin_cfg) = text.and_then(|t| Config::from_toml_str(&t, &[]).ok()) else {
            continue;
        };
        if !could_repeat(cfg, &twin_cfg)? {
            continue;
        }
        let Some(mut record) = read_record(&dir)? else {
            continue;
        };
        record.same_as = Some(summary.config_hash);
        record.wall_seconds = 0.0;
        return Ok(Some(record));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ohem(batch: usize, ratio: usize) -> Config {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/tiny.toml");
        let set = [
            "loss.kind=\"ohem\"".to_string(),
            format!("loss.ohem_batch={batch}"),
            format!("loss.ohem_ratio={ratio}"),
        ];
        Config::load(Path::new(path), &set).unwrap()
    }

    #[test]
    fn only_a_larger_batch_of_the_same_one_to_three_run_repeats_it() {
        assert!(could_repeat(&ohem(256, 3), &ohem(128, 3)).unwrap());
        assert!(!could_repeat(&ohem(128, 3), &ohem(256, 3)).unwrap());
        assert!(!could_repeat(&ohem(128, 3), &ohem(128, 3)).unwrap());
        // Without the ratio the batch size decides the selection.
        assert!(!could_repeat(&ohem(256, 0), &ohem(128, 0)).unwrap());
        let mut other_seed = ohem(128, 3);
        other_seed.seed += 1;
        assert!(!could_repeat(&ohem(256, 3), &other_seed).unwrap());
        let mut focal = ohem(256, 3);
        focal.loss.kind = LossKind::Focal;
        assert!(!could_repeat(&focal, &ohem(128, 3)).unwrap());
    }
}
