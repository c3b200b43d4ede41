//! `sweep-imbalance`: FL against alpha-balanced CE over a ladder of generated datasets of growing
//! foreground:background imbalance, each loss at its own best learning rate (and CE at its best
//! alpha), chosen on images held out of the training split. Runs go through the shared sweep runner
//! (resumable, shardable); `select` turns finished runs into per-rung differences and a crossover.
//!
//! The ladder spec (`experiments/sweep-imbalance.toml`) lists the rungs (generator settings), the
//! grids, and the number of images per rung for each training preset.

pub mod executor;
pub mod ladder;
pub mod select;

use crate::config::Config;
use crate::data::shapes::ShapesConfig;
use crate::experiments::collect::earlier_rows;
use crate::experiments::runner::{
    read_record, run_dir, run_jobs, Job, Shard, SweepProgress, Workers,
};
use crate::experiments::spec::preset_text;
use anyhow::{bail, Context, Result};
use executor::HoldoutRecord;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The built-in ladder.
pub const BUILTIN_SPEC: &str = include_str!("../../../experiments/sweep-imbalance.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImbalanceSpec {
    pub name: String,
    pub title: String,
    /// The focal loss setting (the paper's gamma 2, alpha .25).
    pub fl: FlSetting,
    /// CE is trained at each of these alphas; the best on the held-out images is kept.
    pub ce_alphas: Vec<f64>,
    /// Both losses are trained at each of these learning rates.
    pub lrs: Vec<f64>,
    /// Seed of the dataset generator (the same for every rung).
    #[serde(default)]
    pub data_seed: u64,
    /// The grid is trained with the first this many seeds, which choose each loss's setting; the
    /// other seeds train the chosen settings only.
    #[serde(default = "default_tune_seeds")]
    pub tune_seeds: usize,
    /// Images per rung by preset name; `default` for any other preset.
    pub images: BTreeMap<String, ImageCounts>,
    #[serde(default)]
    pub rungs: Vec<Rung>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlSetting {
    pub gamma: f64,
    pub alpha: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageCounts {
    /// Training images, held-out ones included.
    pub train: usize,
    /// The last this many training images are held out for choosing lr and alpha.
    pub holdout: usize,
    pub val: usize,
}

/// One dataset of the ladder: the shapes generator's settings (unset fields keep its defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rung {
    pub label: String,
    /// Canvas side = model input size (a multiple of 32); objects keep their pixel sizes.
    #[serde(default = "default_size")]
    pub size: usize,
    pub classes: usize,
    pub objects: (usize, usize),
    #[serde(default)]
    pub distractors: Option<(usize, usize)>,
    #[serde(default)]
    pub min_size: Option<f32>,
    #[serde(default)]
    pub max_size: Option<f32>,
}

fn default_size() -> usize {
    128
}

fn default_tune_seeds() -> usize {
    1
}

impl Rung {
    pub fn shapes_config(&self) -> ShapesConfig {
        let d = ShapesConfig::default();
        ShapesConfig {
            size: self.size,
            classes: self.classes,
            objects: self.objects,
            distractors: self.distractors.unwrap_or(d.distractors),
            min_size: self.min_size.unwrap_or(d.min_size),
            max_size: self.max_size.unwrap_or(d.max_size.min(self.size as f32)),
            min_visible: d.min_visible,
        }
    }
}

impl ImbalanceSpec {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let spec: ImbalanceSpec =
            toml::from_str(text).with_context(|| format!("invalid ladder spec {origin}"))?;
        spec.validate()
            .with_context(|| format!("invalid ladder spec {origin}"))?;
        Ok(spec)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read ladder spec {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<()> {
        if self.rungs.is_empty() {
            bail!("rungs: the ladder needs at least one rung");
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.rungs {
            if !seen.insert(r.label.as_str()) {
                bail!("rungs: duplicate label '{}'", r.label);
            }
            if r.size % 32 != 0 {
                bail!(
                    "rung '{}': size {} is not a multiple of 32 (the model's input)",
                    r.label,
                    r.size
                );
            }
            r.shapes_config()
                .validate()
                .with_context(|| format!("rung '{}'", r.label))?;
        }
        check_lrs(&self.lrs)?;
        check_alphas(&self.ce_alphas)?;
        if self.tune_seeds == 0 {
            bail!("tune_seeds: at least one seed must train the whole grid");
        }
        let fl_ok = (0.0..=1.0).contains(&self.fl.alpha) && (0.0..100.0).contains(&self.fl.gamma);
        if !fl_ok {
            bail!(
                "fl: alpha must lie in [0, 1] and gamma be >= 0, got alpha {} gamma {}",
                self.fl.alpha,
                self.fl.gamma
            );
        }
        if !self.images.contains_key("default") {
            bail!("images: needs an [images.default] table");
        }
        for (preset, c) in &self.images {
            c.validate().with_context(|| format!("images.{preset}"))?;
        }
        Ok(())
    }

    /// The image counts for a preset (its own table, else `default`).
    pub fn counts(&self, preset: &str) -> ImageCounts {
        self.images
            .get(preset)
            .or_else(|| self.images.get("default"))
            .copied()
            .unwrap_or(ImageCounts {
                train: 2400,
                holdout: 400,
                val: 500,
            })
    }
}

impl ImageCounts {
    pub fn validate(&self) -> Result<()> {
        if self.holdout == 0 || self.holdout >= self.train {
            bail!(
                "held-out images must satisfy 1 <= holdout < train, got holdout {} of train {}",
                self.holdout,
                self.train
            );
        }
        if self.val == 0 {
            bail!("needs at least one validation image");
        }
        Ok(())
    }
}

fn check_lrs(lrs: &[f64]) -> Result<()> {
    if lrs.is_empty() {
        bail!("lrs: give at least one learning rate");
    }
    if let Some(lr) = lrs.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
        bail!("lrs: learning rate {lr} is not a positive number");
    }
    Ok(())
}

fn check_alphas(alphas: &[f64]) -> Result<()> {
    if alphas.is_empty() {
        bail!("ce_alphas: give at least one alpha");
    }
    if let Some(a) = alphas.iter().find(|a| !(**a > 0.0 && **a <= 1.0)) {
        bail!("ce_alphas: alpha {a} is outside (0, 1]");
    }
    Ok(())
}

/// Which loss a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Fl,
    Ce,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Fl => "FL",
            Family::Ce => "CE",
        }
    }
}

/// One (loss, alpha, lr) setting of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub family: Family,
    pub gamma: f64,
    pub alpha: f64,
    pub lr: f64,
}

impl Candidate {
    pub fn label(&self) -> String {
        match self.family {
            Family::Fl => format!(
                "FL gamma {} alpha {} lr {}",
                self.gamma, self.alpha, self.lr
            ),
            Family::Ce => format!("CE alpha {} lr {}", self.alpha, self.lr),
        }
    }

    fn overrides(&self) -> Vec<String> {
        let kind = match self.family {
            Family::Fl => "focal",
            Family::Ce => "ce",
        };
        vec![
            format!("loss.kind={kind:?}"),
            format!("loss.gamma={:?}", self.gamma),
            format!("loss.alpha={:?}", self.alpha),
            format!("schedule.lr={:?}", self.lr),
        ]
    }
}

/// The grid of one rung: FL at every lr, then CE at every (alpha, lr).
pub fn candidates(spec: &ImbalanceSpec) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = spec
        .lrs
        .iter()
        .map(|&lr| Candidate {
            family: Family::Fl,
            gamma: spec.fl.gamma,
            alpha: spec.fl.alpha,
            lr,
        })
        .collect();
    for &alpha in &spec.ce_alphas {
        for &lr in &spec.lrs {
            out.push(Candidate {
                family: Family::Ce,
                gamma: 0.0,
                alpha,
                lr,
            });
        }
    }
    out
}

/// A job of the ladder: which rung and candidate it trains.
#[derive(Debug, Clone)]
pub struct LadderJob {
    pub rung: usize,
    pub candidate: Candidate,
    pub job: Job,
}

/// Resolves every (seed, rung, candidate) config: preset, rung, candidate, user overrides, seed.
pub fn expand(
    spec: &ImbalanceSpec,
    data: &[ladder::RungData],
    preset_text: &str,
    user_overrides: &[String],
    seeds: usize,
) -> Result<Vec<LadderJob>> {
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let grid = candidates(spec);
    let mut jobs = Vec::new();
    for seed in 0..seeds as u64 {
        for (r, (rung, d)) in spec.rungs.iter().zip(data).enumerate() {
            for (c, cand) in grid.iter().enumerate() {
                let mut overrides = vec![
                    format!("data.source={:?}", d.tune_train.display().to_string()),
                    format!("data.input_size={}", rung.size),
                    format!("model.num_classes={}", rung.classes),
                ];
                overrides.extend(cand.overrides());
                overrides.extend(user_overrides.iter().cloned());
                overrides.push(format!("seed={seed}"));
                let label = format!("{} | {}", rung.label, cand.label());
                let config = Config::from_toml_str(preset_text, &overrides)
                    .with_context(|| format!("run '{label}'"))?;
                let hash = config.hash()?;
                jobs.push(LadderJob {
                    rung: r,
                    candidate: *cand,
                    job: Job {
                        variant: r * grid.len() + c,
                        label,
                        seed,
                        overrides,
                        config,
                        hash,
                    },
                });
            }
        }
    }
    Ok(jobs)
}

/// Everything `sweep-imbalance` needs.
#[derive(Debug, Clone)]
pub struct ImbalanceOptions {
    pub spec: Option<PathBuf>,
    pub preset: String,
    pub seeds: usize,
    pub overrides: Vec<String>,
    /// Seeds that train the whole grid (`--tune-seeds`; default: the spec's).
    pub tune_seeds: Option<usize>,
    /// Replace the spec's grids when not empty.
    pub lrs: Vec<f64>,
    pub ce_alphas: Vec<f64>,
    /// Replace the spec's image counts for this preset.
    pub train_images: Option<usize>,
    pub holdout_images: Option<usize>,
    pub val_images: Option<usize>,
    /// Schedule length: sets `schedule.iterations` and scales the preset's lr steps and warm-up with it.
    pub iterations: Option<usize>,
    /// Where the rungs' datasets are generated (and found again).
    pub data_root: PathBuf,
    pub shard: Shard,
    pub collect_only: bool,
    pub out: PathBuf,
    /// Runs trained at once (`--jobs`; without it, `Workers::for_jobs` chooses).
    pub jobs: Option<usize>,
    /// Count the runs recorded in `<out>/results.csv` as finished (`--reuse-recorded`).
    pub reuse_recorded: bool,
}

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct ImbalanceOutcome {
    /// Runs the sweep needs: the grid for the tuning seeds, the two chosen settings per rung for the others.
    pub jobs: usize,
    pub progress: SweepProgress,
    /// Runs of the other seeds not started because their rung's grid has not finished (other shards).
    pub waiting: usize,
    /// When the whole ladder is local (or `--collect`): the ladder, the spec it ran and a note on
    /// the settings, for the command to hand to `report::imbalance`.
    pub collected: Option<(select::Ladder, ImbalanceSpec, String)>,
}

/// Resolves the spec and options into the spec actually run and the image counts.
pub fn resolve_spec(opts: &ImbalanceOptions) -> Result<(ImbalanceSpec, ImageCounts)> {
    let mut spec = match &opts.spec {
        Some(p) => ImbalanceSpec::load(p)?,
        None => ImbalanceSpec::parse(BUILTIN_SPEC, "(built-in sweep-imbalance)")?,
    };
    if !opts.lrs.is_empty() {
        check_lrs(&opts.lrs).context("--lrs")?;
        spec.lrs = opts.lrs.clone();
    }
    if !opts.ce_alphas.is_empty() {
        check_alphas(&opts.ce_alphas).context("--ce-alphas")?;
        spec.ce_alphas = opts.ce_alphas.clone();
    }
    if let Some(n) = opts.tune_seeds {
        if n == 0 {
            bail!("--tune-seeds must be at least 1");
        }
        spec.tune_seeds = n;
    }
    let mut counts = spec.counts(&opts.preset);
    counts.train = opts.train_images.unwrap_or(counts.train);
    counts.holdout = opts.holdout_images.unwrap_or(counts.holdout);
    counts.val = opts.val_images.unwrap_or(counts.val);
    counts
        .validate()
        .context("--train-images / --holdout-images / --val-images")?;
    Ok((spec, counts))
}

/// Generates (once) each rung's dataset under `data_root`.
fn prepare_rungs(
    spec: &ImbalanceSpec,
    counts: &ImageCounts,
    data_root: &std::path::Path,
    quiet: bool,
) -> Result<Vec<ladder::RungData>> {
    spec.rungs
        .iter()
        .map(|r| {
            ladder::prepare(data_root, &r.shapes_config(), spec.data_seed, counts, quiet)
                .with_context(|| format!("rung '{}'", r.label))
        })
        .collect()
}

/// Each rung's chosen FL and CE settings, once its whole grid (the tuning seeds) has finished.
fn chosen_settings(
    rungs: usize,
    tuning: &[&LadderJob],
    outcomes: &[select::Outcome],
    tune_seeds: usize,
) -> Vec<Option<[Candidate; 2]>> {
    (0..rungs)
        .map(|r| {
            let complete = tuning.iter().filter(|j| j.rung == r).all(|j| {
                outcomes
                    .iter()
                    .any(|o| o.job.hash == j.job.hash && o.job.seed == j.job.seed)
            });
            let pick = |f| select::choose(outcomes, r, f, tune_seeds).map(|c| c.candidate);
            match (complete, pick(Family::Fl), pick(Family::Ce)) {
                (true, Some(fl), Some(ce)) => Some([fl, ce]),
                _ => None,
            }
        })
        .collect()
}

/// Each rung's label, dataset settings and measured imbalance (with its runs' anchors and matcher).
fn rung_infos(
    spec: &ImbalanceSpec,
    jobs: &[LadderJob],
    data: &[ladder::RungData],
) -> Result<Vec<select::RungInfo>> {
    spec.rungs
        .iter()
        .enumerate()
        .map(|(r, rung)| {
            let cfg = &jobs
                .iter()
                .find(|j| j.rung == r)
                .context("a rung without runs")?
                .job
                .config;
            Ok(select::RungInfo {
                label: rung.label.clone(),
                shapes: rung.shapes_config(),
                imbalance: ladder::measure(cfg, &data[r].tune_train)?,
            })
        })
        .collect()
}

/// Prepares the ladder's datasets and runs (this shard of) the sweep in two phases: the whole grid
/// for the tuning seeds; then, on every rung whose grid has finished, each loss's chosen setting for
/// the other seeds. When the whole sweep is local or `collect_only` is set, it measures each rung and
/// returns the ladder, its spec and a note for the report.
pub fn run_ladder(
    opts: &ImbalanceOptions,
    executor_for: &dyn Fn(
        HashMap<String, ladder::RungData>,
    ) -> Box<dyn crate::experiments::runner::Executor>,
    quiet: bool,
) -> Result<ImbalanceOutcome> {
    let (spec, counts) = resolve_spec(opts)?;
    let (preset, preset_origin) = preset_text(&opts.preset)?;
    // Fail on bad overrides before generating any data.
    let base = Config::from_toml_str(&preset, &opts.overrides).context("--set")?;
    let mut overrides = opts.overrides.clone();
    if let Some(n) = opts.iterations {
        overrides.extend(schedule_overrides(&base.schedule, n)?);
    }
    let data = prepare_rungs(&spec, &counts, &opts.data_root, quiet)?;
    let jobs = expand(&spec, &data, &preset, &overrides, opts.seeds)?;
    let tune_seeds = spec.tune_seeds.min(opts.seeds);
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    // Runs kept only as rows of the table (their folders were not committed) count as finished
    // when asked to (`--reuse-recorded`), and are collected with `--collect`.
    let earlier = if opts.reuse_recorded || opts.collect_only {
        earlier_rows(&opts.out.join("results.csv"), &["holdout_ap"])?
    } else {
        Default::default()
    };
    let recorded: HashSet<(String, u64)> = earlier.keys().cloned().collect();
    let outcome_of = |j: &LadderJob| -> Result<Option<select::Outcome>> {
        let dir = run_dir(&opts.out, &j.job);
        let found = match (read_record(&dir)?, executor::read_holdout(&dir)?) {
            (Some(record), Some(holdout)) => Some((record, holdout)),
            _ => earlier
                .get(&(j.job.hash.clone(), j.job.seed))
                .map(|(record, extra)| (record.clone(), HoldoutRecord::ap_only(extra[0]))),
        };
        Ok(found.map(|(record, holdout)| select::Outcome {
            rung: j.rung,
            candidate: j.candidate,
            job: j.job.clone(),
            record,
            holdout,
        }))
    };
    let executor = (!opts.collect_only).then(|| {
        executor_for(
            data.iter()
                .map(|d| (d.tune_train.display().to_string(), d.clone()))
                .collect(),
        )
    });
    let workers = Workers::for_jobs(opts.jobs, jobs.iter().map(|j| &j.job))?;
    let mut progress = SweepProgress::default();
    let mut run_phase = |phase: Vec<Job>| -> Result<()> {
        if let Some(executor) = &executor {
            let p = run_jobs(
                &phase,
                &opts.out,
                &recorded,
                executor.as_ref(),
                workers,
                quiet,
            )?;
            progress.reused += p.reused;
            progress.trained += p.trained;
            progress.diverged += p.diverged;
        }
        Ok(())
    };

    let tuning: Vec<&LadderJob> = jobs
        .iter()
        .filter(|j| j.job.seed < tune_seeds as u64)
        .collect();
    run_phase(
        opts.shard
            .take(tuning.iter().map(|j| j.job.clone()).collect()),
    )?;
    let (mut outcomes, mut missing) = (Vec::new(), 0);
    gather_outcomes(&tuning, &outcome_of, &mut outcomes, &mut missing)?;
    let chosen = chosen_settings(spec.rungs.len(), &tuning, &outcomes, tune_seeds);
    let later_seeds = opts.seeds - tune_seeds;
    let waiting = 2 * later_seeds * chosen.iter().filter(|c| c.is_none()).count();
    let confirming: Vec<&LadderJob> = jobs
        .iter()
        .filter(|j| j.job.seed >= tune_seeds as u64)
        .filter(|j| chosen[j.rung].is_some_and(|c| c.contains(&j.candidate)))
        .collect();
    run_phase(shard_of_confirming(
        &confirming,
        spec.rungs.len(),
        tune_seeds,
        opts.shard,
    ))?;
    let planned = tuning.len() + 2 * later_seeds * spec.rungs.len();
    if !(opts.collect_only || opts.shard.count == 1) {
        return Ok(ImbalanceOutcome {
            jobs: planned,
            progress,
            waiting,
            collected: None,
        });
    }
    gather_outcomes(&confirming, &outcome_of, &mut outcomes, &mut missing)?;
    missing += waiting;
    let rungs = rung_infos(&spec, &jobs, &data)?;
    let ladder = select::Ladder::build(rungs, outcomes, missing, opts.seeds, tune_seeds);
    let schedule = &jobs[0].job.config.schedule;
    let note = format!(
        "{} Schedule: {} iterations of batch {}.",
        context_note(&spec, &counts, tune_seeds, &preset_origin, &overrides),
        schedule.iterations,
        schedule.batch_size
    );
    Ok(ImbalanceOutcome {
        jobs: planned,
        progress,
        waiting,
        collected: Some((ladder, spec, note)),
    })
}

/// The finished runs' outcomes of `jobs`, appended to `outcomes`; `missing` counts the others.
fn gather_outcomes(
    jobs: &[&LadderJob],
    outcome_of: &dyn Fn(&LadderJob) -> Result<Option<select::Outcome>>,
    outcomes: &mut Vec<select::Outcome>,
    missing: &mut usize,
) -> Result<()> {
    for j in jobs {
        match outcome_of(j)? {
            Some(o) => outcomes.push(o),
            None => *missing += 1,
        }
    }
    Ok(())
}

/// This shard's part of the confirming runs, dealt by a slot that does not depend on which rungs
/// have finished, so that shards started at different times never train the same run.
fn shard_of_confirming(
    confirming: &[&LadderJob],
    rungs: usize,
    tune_seeds: usize,
    shard: Shard,
) -> Vec<Job> {
    let slot = |j: &LadderJob| {
        let family = usize::from(j.candidate.family == Family::Ce);
        ((j.job.seed as usize - tune_seeds) * rungs + j.rung) * 2 + family
    };
    confirming
        .iter()
        .filter(|j| slot(j) % shard.count == shard.index)
        .map(|j| j.job.clone())
        .collect()
}

/// Overrides that stretch a schedule to `n` iterations: lr steps and warm-up keep their fractions
/// of the schedule (and the warm-up at least one iteration if it had one).
pub fn schedule_overrides(s: &crate::config::ScheduleConfig, n: usize) -> Result<Vec<String>> {
    if n == 0 {
        bail!("--iterations must be at least 1");
    }
    let scale = |v: usize| (v as f64 * n as f64 / s.iterations.max(1) as f64).round() as usize;
    let steps: Vec<String> = s
        .steps
        .iter()
        .map(|&v| scale(v).clamp(1, n.saturating_sub(1).max(1)).to_string())
        .collect();
    let warmup = if s.warmup_iters > 0 {
        scale(s.warmup_iters).max(1)
    } else {
        0
    };
    Ok(vec![
        format!("schedule.iterations={n}"),
        format!("schedule.steps=[{}]", steps.join(", ")),
        format!("schedule.warmup_iters={warmup}"),
    ])
}

fn context_note(
    spec: &ImbalanceSpec,
    counts: &ImageCounts,
    tune_seeds: usize,
    preset_origin: &str,
    overrides: &[String],
) -> String {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut note = format!(
        "Training preset: {preset_origin}. FL: gamma {}, alpha {}; CE: alpha in {{{}}}; learning rates {{{}}} for both. \
         Per rung: {} training images, of which the last {} are held out to choose each loss's lr (and CE's alpha) \
         by mean AP over {}; every run trains on the other {}; AP is reported on {} validation images.",
        spec.fl.gamma,
        spec.fl.alpha,
        list(&spec.ce_alphas),
        list(&spec.lrs),
        counts.train,
        counts.holdout,
        match tune_seeds {
            1 => "seed 0 (the other seeds train the chosen settings only)".to_string(),
            n => format!("seeds 0-{} (the other seeds train the chosen settings only)", n - 1),
        },
        counts.train - counts.holdout,
        counts.val,
    );
    if !overrides.is_empty() {
        note += &format!(" Overrides: `{}`.", overrides.join(" "));
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_ladder_parses_and_expands() {
        let spec = ImbalanceSpec::parse(BUILTIN_SPEC, "built-in").unwrap();
        assert!(spec.rungs.len() >= 4);
        let grid = candidates(&spec);
        assert_eq!(grid.len(), spec.lrs.len() * (1 + spec.ce_alphas.len()));
        let data: Vec<ladder::RungData> = (0..spec.rungs.len())
            .map(|i| ladder::RungData {
                dir: PathBuf::from(format!("d{i}")),
                tune_train: PathBuf::from(format!("d{i}/tune.json")),
                holdout: PathBuf::from(format!("d{i}/holdout.json")),
                val: PathBuf::from(format!("d{i}/val.json")),
            })
            .collect();
        let (preset, _) = preset_text("smoke").unwrap();
        let jobs = expand(&spec, &data, &preset, &[], 2).unwrap();
        assert_eq!(jobs.len(), 2 * spec.rungs.len() * grid.len());
        let hashes: std::collections::HashSet<_> = jobs.iter().map(|j| &j.job.hash).collect();
        assert_eq!(hashes.len(), jobs.len());
        let last = spec.rungs.last().unwrap();
        let j = jobs
            .iter()
            .rev()
            .find(|j| j.rung == spec.rungs.len() - 1)
            .unwrap();
        assert_eq!(j.job.config.model.num_classes, last.classes);
        assert_eq!(j.job.config.data.input_size, last.size);
        assert_eq!(j.job.config.loss.kind, crate::config::LossKind::Ce);
        assert_eq!(j.job.config.loss.gamma, 0.0);
    }

    #[test]
    fn the_longer_schedule_spec_reuses_the_builtin_rungs() {
        // experiments/sweep-imbalance-long.toml retrains two of the ladder's rungs: the same datasets.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/experiments/sweep-imbalance-long.toml"
        );
        let long = ImbalanceSpec::load(Path::new(path)).unwrap();
        let builtin = ImbalanceSpec::parse(BUILTIN_SPEC, "built-in").unwrap();
        assert_eq!(long.rungs.len(), 2);
        for r in &long.rungs {
            let same = builtin.rungs.iter().find(|b| b.label == r.label).unwrap();
            assert_eq!(r.shapes_config(), same.shapes_config(), "{}", r.label);
        }
        assert_eq!(long.data_seed, builtin.data_seed);
        assert_eq!(long.images, builtin.images);
        assert_eq!((long.lrs.len(), long.ce_alphas.len()), (1, 1));
    }

    #[test]
    fn a_longer_schedule_keeps_its_shape() {
        let s = crate::config::ScheduleConfig {
            iterations: 800,
            steps: vec![600, 720],
            warmup_iters: 100,
            ..Default::default()
        };
        assert_eq!(
            schedule_overrides(&s, 3200).unwrap(),
            vec![
                "schedule.iterations=3200",
                "schedule.steps=[2400, 2880]",
                "schedule.warmup_iters=400"
            ]
        );
        assert!(schedule_overrides(&s, 0).is_err());
    }

    #[test]
    fn bad_ladders_are_named() {
        let base = "name='x'\ntitle='t'\nfl={gamma=2.0, alpha=0.25}\nce_alphas=[0.5]\nlrs=[0.01]\n\
                    [images.default]\ntrain=10\nholdout=2\nval=2\n";
        let err = |extra: &str| {
            format!(
                "{:#}",
                ImbalanceSpec::parse(&format!("{base}{extra}"), "s.toml").unwrap_err()
            )
        };
        assert!(err("").contains("at least one rung"));
        assert!(
            err("[[rungs]]\nlabel='a'\nsize=100\nclasses=2\nobjects=[1,2]")
                .contains("multiple of 32")
        );
        assert!(err("[[rungs]]\nlabel='a'\nclasses=81\nobjects=[1,2]").contains("--classes"));
        assert!(err("[[rungs]]\nlabel='a'\nclasses=2\nobjects=[1,2]\nbogus=1").contains("bogus"));
        let bad_holdout = base.replace("holdout=2", "holdout=10");
        let e = ImbalanceSpec::parse(
            &format!("{bad_holdout}[[rungs]]\nlabel='a'\nclasses=2\nobjects=[1,2]"),
            "s.toml",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("holdout < train"), "{e:#}");
    }
}
