//! The training loop: batches -> targets -> loss -> backward -> SGD, with metrics, checkpoints,
//! resumption and divergence detection.
//!
//! A run directory holds:
//! - `config.toml`: the resolved config (a resumed run must match it);
//! - `metrics.csv`: iteration, lr, loss_cls, loss_box, positives, seconds (cumulative training time),
//!   and the shares of the classification loss and of its gradient carried by positives, hard and
//!   easy negatives (`loss_share_pos`, ..., `grad_share_easy_neg`; see `crate::loss::split`);
//! - `loss.png`: the loss curves;
//! - `checkpoint.json` + `checkpoint-<iter>.safetensors`: model, optimizer and loop state. The JSON
//!   is written last and names the weights file, so a crash between the two leaves the previous
//!   checkpoint valid;
//! - `model.safetensors` + `model.toml`: the final model;
//! - `snapshot-<iter>.safetensors`: weights after the iterations in `TrainOptions::snapshots`;
//! - `summary.json`: outcome (finished or diverged), timings, config hash.
//!
//! Batches are a pure function of (seed, iteration), so the only state a resume needs is the weights,
//! the momentum buffers, the EMA normalizer and the iteration: a resumed run reproduces the metrics of
//! an uninterrupted one.

use super::objective::Normalizer;
use super::schedule::lr_at;
use super::sgd::{Sgd, STATE_PREFIX};
use super::step::Stepper;
use super::targets::{GtBoxes, TargetBuilder};
use crate::config::{Config, LossKind};
use crate::model::RetinaNet;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One minibatch: images `[N, 3, H, W]` and each image's ground truth.
#[derive(Clone)]
pub struct TrainBatch {
    pub images: Tensor,
    pub gt: Vec<GtBoxes>,
}

/// Where training batches come from. `batch(iteration)` must depend only on the iteration (and
/// whatever seed the source was built with), so that resumed runs see the same data.
pub trait BatchSource {
    fn batch(&mut self, iteration: usize, batch_size: usize, device: &Device)
        -> Result<TrainBatch>;
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub run_dir: PathBuf,
    /// Continue from the run directory's checkpoint.
    pub resume: bool,
    /// Hide the progress bar.
    pub quiet: bool,
    /// Stop (after checkpointing) once this iteration count is reached, as an interruption would.
    pub stop_after: Option<usize>,
    /// Iterations after which weights-only `snapshot-<iteration>.safetensors` files are written and
    /// kept (checkpoints are replaced; snapshots let analyses look at the model during training).
    pub snapshots: Vec<usize>,
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub iteration: usize,
    pub lr: f64,
    pub loss_cls: f64,
    pub loss_box: f64,
    pub positives: usize,
    pub seconds: f64,
    /// Shares of the classification loss (`loss_share_*`) and of its gradient magnitude with
    /// respect to the logits (`grad_share_*`); NaN in files written before they were logged.
    #[serde(default = "nan")]
    pub loss_share_pos: f64,
    #[serde(default = "nan")]
    pub loss_share_hard_neg: f64,
    #[serde(default = "nan")]
    pub loss_share_easy_neg: f64,
    #[serde(default = "nan")]
    pub grad_share_pos: f64,
    #[serde(default = "nan")]
    pub grad_share_hard_neg: f64,
    #[serde(default = "nan")]
    pub grad_share_easy_neg: f64,
}

fn nan() -> f64 {
    f64::NAN
}

impl MetricsRow {
    fn new(iteration: usize, lr: f64, pass: &super::step::Pass, seconds: f64) -> MetricsRow {
        let [loss_share_pos, loss_share_hard_neg, loss_share_easy_neg] = pass.split.loss_shares();
        let [grad_share_pos, grad_share_hard_neg, grad_share_easy_neg] = pass.split.grad_shares();
        MetricsRow {
            iteration,
            lr,
            loss_cls: pass.loss_cls,
            loss_box: pass.loss_box,
            positives: pass.positives,
            seconds,
            loss_share_pos,
            loss_share_hard_neg,
            loss_share_easy_neg,
            grad_share_pos,
            grad_share_hard_neg,
            grad_share_easy_neg,
        }
    }
}

/// The outcome of a run, written to `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub config_hash: String,
    pub device: String,
    pub parameters: usize,
    /// Iterations completed (optimizer steps taken).
    pub iterations: usize,
    pub finished: bool,
    pub diverged: bool,
    /// The iteration whose loss was not finite.
    pub diverged_at: Option<usize>,
    pub final_loss_cls: f64,
    pub final_loss_box: f64,
    pub seconds: f64,
    /// Median wall time of one training step (forward, loss, backward, update; not data loading)
    /// in this session.
    pub median_step_seconds: f64,
    /// OHEM with a positive fraction ("OHEM 1:3"): whether any image's positives that survive NMS
    /// ever reached the fraction's quota. `false` means every step selected the same anchors as it
    /// would have with any larger `loss.ohem_batch` (`ohem::Selection`). Absent for other losses
    /// and for runs begun before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ohem_positive_quota_filled: Option<bool>,
}

/// Loop state saved beside the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointMeta {
    /// The next iteration to run.
    iteration: usize,
    config_hash: String,
    weights: String,
    normalizer: f64,
    seconds: f64,
    /// `Summary::ohem_positive_quota_filled` so far; absent where not tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ohem_positive_quota_filled: Option<bool>,
}

pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    pub fn plot(&self) -> PathBuf {
        self.dir.join("loss.png")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.json")
    }
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
}

/// Trains `cfg` on `data`, writing into `opts.run_dir`. A diverged run returns `Ok` with
/// `diverged = true`: a failed configuration is a result, not an error.
/// SGD over every parameter of `model`, normalization scales and shifts with their own weight decay.
pub fn sgd_for(model: &RetinaNet, s: &crate::config::ScheduleConfig) -> Sgd {
    let norm_names: std::collections::HashSet<String> =
        model.store.norm_params.iter().cloned().collect();
    let params = model
        .store
        .named_vars()
        .into_iter()
        .map(|(name, var)| {
            let wd = if norm_names.contains(&name) {
                s.weight_decay_norm
            } else {
                s.weight_decay
            };
            (name, var, wd)
        })
        .collect();
    Sgd::new(params, s.momentum)
}

pub fn train(
    cfg: &Config,
    data: &mut dyn BatchSource,
    device: &Device,
    opts: &TrainOptions,
) -> Result<Summary> {
    cfg.validate()?;
    if device.is_cpu() {
        crate::model::memory::check_fits(cfg, crate::model::memory::available_bytes())?;
    }
    let _products = crate::model::hold_conv_products(cfg)?;
    let paths = RunPaths {
        dir: opts.run_dir.clone(),
    };
    let hash = cfg.hash()?;
    let model = RetinaNet::new(cfg, device)?;
    let s = &cfg.schedule;
    let mut sgd = sgd_for(&model, s);
    let mut normalizer = Normalizer::new(cfg.loss.normalizer, cfg.loss.ema_momentum);
    let mut rows: Vec<MetricsRow> = Vec::new();
    let mut start = 0usize;
    let mut seconds = 0.0f64;
    let mut quota_filled =
        (cfg.loss.kind == LossKind::Ohem && cfg.loss.ohem_ratio > 0).then_some(false);

    if opts.resume {
        let meta = read_meta(&paths)?;
        if meta.config_hash != hash {
            let saved = std::fs::read_to_string(paths.config()).unwrap_or_default();
            bail!(
                "cannot resume {}: its config (hash {}) differs from this one (hash {hash}); \
                 run without --resume under another --name, or use the saved config:\n{saved}",
                paths.dir.display(),
                meta.config_hash
            );
        }
        if meta.iteration > s.iterations {
            bail!(
                "corrupt checkpoint {}: iteration {} is beyond schedule.iterations ({})",
                paths.checkpoint().display(),
                meta.iteration,
                s.iterations
            );
        }
        let wpath = paths.dir.join(&meta.weights);
        let tensors = crate::model::params::read_safetensors(&wpath, device)
            .with_context(|| format!("cannot read checkpoint {}", wpath.display()))?;
        let misfit = || format!("checkpoint {} does not fit this run", wpath.display());
        model.store.load_from(&tensors).with_context(misfit)?;
        sgd.load_state(&tensors).with_context(misfit)?;
        normalizer.value = meta.normalizer;
        start = meta.iteration;
        seconds = meta.seconds;
        // A run begun before the flag was recorded stays unknown.
        quota_filled = quota_filled.and(meta.ohem_positive_quota_filled);
        rows = read_metrics(&paths.metrics())?
            .into_iter()
            .filter(|r| r.iteration < start)
            .collect();
    } else {
        if paths.checkpoint().exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --name",
                paths.dir.display()
            );
        }
        model.load_pretrained()?;
        std::fs::create_dir_all(&paths.dir)
            .with_context(|| format!("cannot create {}", paths.dir.display()))?;
    }
    crate::util::write_atomic(&paths.config(), cfg.to_toml()?.as_bytes())?;

    let end = match opts.stop_after {
        Some(n) => n.min(s.iterations),
        None => s.iterations,
    };
    let bar = progress_bar(opts.quiet, s.iterations, start);
    let mut targets = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
    let stepper = Stepper::new(cfg, device)?;
    let mut step_times = Vec::new();
    let mut diverged_at = None;
    let mut last = (f64::NAN, f64::NAN);

    for it in start..end {
        let t0 = Instant::now();
        let lr = lr_at(s, it);
        let batch = data.batch(it, s.batch_size, device)?;
        let t_step = Instant::now();
        let pass = stepper.forward_backward(
            &model,
            &batch.images,
            &batch.gt,
            &mut targets,
            cfg,
            &mut normalizer,
        )?;
        let (loss_cls, loss_box) = (pass.loss_cls, pass.loss_box);
        let dt = t0.elapsed().as_secs_f64();
        if !(loss_cls.is_finite() && loss_box.is_finite()) {
            seconds += dt;
            rows.push(MetricsRow::new(it, lr, &pass, seconds));
            diverged_at = Some(it);
            break;
        }
        sgd.step_summed(&pass.grads, lr)?;
        quota_filled = quota_filled.map(|q| q || pass.ohem_quota_full);
        seconds += t0.elapsed().as_secs_f64();
        step_times.push(t_step.elapsed().as_secs_f64());
        last = (loss_cls, loss_box);
        if it % cfg.train.log_every == 0 || it + 1 == end {
            rows.push(MetricsRow::new(it, lr, &pass, seconds));
        }
        bar.set_position((it + 1) as u64);
        bar.set_message(format!("cls {loss_cls:.4} box {loss_box:.4}"));
        let done = it + 1;
        if opts.snapshots.contains(&done) {
            let path = paths.dir.join(format!("snapshot-{done}.safetensors"));
            crate::model::save_tensors(&path, &model.store.all_tensors())?;
        }
        let ckpt = cfg.train.checkpoint_every;
        // `stop_after` imitates an interruption: no extra checkpoint at the stop.
        if (ckpt > 0 && done % ckpt == 0) || done == s.iterations {
            write_metrics(&paths.metrics(), &rows)?;
            let state = LoopState {
                iteration: done,
                normalizer: normalizer.value,
                seconds,
                ohem_positive_quota_filled: quota_filled,
            };
            save_checkpoint(&paths, &model, &sgd, &hash, &state)?;
        }
    }
    bar.finish_and_clear();

    let diverged = diverged_at.is_some();
    let iterations = match diverged_at {
        Some(i) => i,
        None => end.max(start),
    };
    let finished = !diverged && iterations >= s.iterations;
    write_metrics(&paths.metrics(), &rows)?;
    if let Err(e) = plot_losses(&paths.plot(), &rows, &paths.dir) {
        eprintln!("warning: could not draw {}: {e:#}", paths.plot().display());
    }
    if finished {
        model.save(&paths.model())?;
    }
    step_times.sort_by(|a, b| a.total_cmp(b));
    // A resumed run that had already finished takes no step in this session: its final losses
    // are the last logged ones, and its step time is the one recorded when it trained.
    let (final_cls, final_box) = match rows.last() {
        Some(r) if diverged || last.0.is_nan() => (r.loss_cls, r.loss_box),
        _ => last,
    };
    let median_step_seconds = match step_times.get(step_times.len() / 2) {
        Some(&t) => t,
        None => earlier_step_seconds(&paths, &rows),
    };
    let summary = Summary {
        config_hash: hash,
        device: crate::device::device_name(device),
        parameters: model.store.num_params(),
        iterations,
        finished,
        diverged,
        diverged_at,
        final_loss_cls: final_cls,
        final_loss_box: final_box,
        seconds,
        median_step_seconds,
        ohem_positive_quota_filled: quota_filled,
    };
    crate::util::write_atomic(
        &paths.summary(),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// The step time of a run that took no step in this session: from its earlier `summary.json`, else
/// the median time between logged iterations (which includes data loading); NaN with neither.
fn earlier_step_seconds(paths: &RunPaths, rows: &[MetricsRow]) -> f64 {
    let earlier = std::fs::read_to_string(paths.summary())
        .ok()
        .and_then(|t| serde_json::from_str::<Summary>(&t).ok())
        .map(|s| s.median_step_seconds)
        .filter(|t| t.is_finite());
    earlier.unwrap_or_else(|| {
        let mut gaps: Vec<f64> = rows
            .windows(2)
            .filter(|w| w[1].iteration == w[0].iteration + 1)
            .map(|w| w[1].seconds - w[0].seconds)
            .collect();
        gaps.sort_by(f64::total_cmp);
        gaps.get(gaps.len() / 2).copied().unwrap_or(f64::NAN)
    })
}

fn progress_bar(quiet: bool, total: usize, start: usize) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start as u64);
    bar.reset_eta();
    bar
}

fn read_meta(paths: &RunPaths) -> Result<CheckpointMeta> {
    let p = paths.checkpoint();
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "cannot resume: no checkpoint at {} (start the run without --resume)",
            p.display()
        )
    })?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .with_context(|| format!("corrupt checkpoint {}", p.display()))?;
    // The normalizer is detectron2's EMA (from 100) of positive-anchor counts of at least 1.
    if !(meta.normalizer.is_finite() && meta.normalizer >= 1.0) {
        bail!(
            "corrupt checkpoint {}: normalizer {} is not a loss normalizer (finite, at least 1)",
            p.display(),
            meta.normalizer
        );
    }
    if !(meta.seconds.is_finite() && meta.seconds >= 0.0) {
        bail!(
            "corrupt checkpoint {}: seconds {} is not a training time",
            p.display(),
            meta.seconds
        );
    }
    Ok(meta)
}

/// What a checkpoint records of the loop besides the weights.
struct LoopState {
    /// The next iteration to run.
    iteration: usize,
    normalizer: f64,
    seconds: f64,
    ohem_positive_quota_filled: Option<bool>,
}

fn save_checkpoint(
    paths: &RunPaths,
    model: &RetinaNet,
    sgd: &Sgd,
    hash: &str,
    state: &LoopState,
) -> Result<()> {
    let iteration = state.iteration;
    let previous = read_meta(paths).ok();
    let mut tensors = model.store.all_tensors();
    for (k, v) in sgd.state() {
        debug_assert!(k.starts_with(STATE_PREFIX));
        tensors.insert(k, v);
    }
    let weights = format!("checkpoint-{iteration}.safetensors");
    crate::model::save_tensors(&paths.dir.join(&weights), &tensors)?;
    let meta = CheckpointMeta {
        iteration,
        config_hash: hash.to_string(),
        weights: weights.clone(),
        normalizer: state.normalizer,
        seconds: state.seconds,
        ohem_positive_quota_filled: state.ohem_positive_quota_filled,
    };
    crate::util::write_atomic(
        &paths.checkpoint(),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    if let Some(prev) = previous {
        if prev.weights != weights {
            let _ = std::fs::remove_file(paths.dir.join(prev.weights));
        }
    }
    Ok(())
}

/// Writes the metrics table atomically.
pub fn write_metrics(path: &Path, rows: &[MetricsRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    if rows.is_empty() {
        w.write_record([
            "iteration",
            "lr",
            "loss_cls",
            "loss_box",
            "positives",
            "seconds",
            "loss_share_pos",
            "loss_share_hard_neg",
            "loss_share_easy_neg",
            "grad_share_pos",
            "grad_share_hard_neg",
            "grad_share_easy_neg",
        ])?;
    }
    let bytes = w.into_inner().context("finishing metrics.csv")?;
    crate::util::write_atomic(path, &bytes)
}

/// Reads a metrics table written by [`write_metrics`].
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for row in r.deserialize() {
        out.push(row.with_context(|| format!("bad row in {}", path.display()))?);
    }
    Ok(out)
}

fn plot_losses(path: &Path, rows: &[MetricsRow], dir: &Path) -> Result<()> {
    use crate::plot::{write_line_chart, LineChart, Series};
    let finite = |v: f64| v.is_finite();
    let pts = |f: &dyn Fn(&MetricsRow) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| finite(f(r)))
            .map(|r| ((r.iteration + 1) as f64, f(r)))
            .collect()
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let chart = LineChart {
        title: format!("Training loss: {name}"),
        x_label: "iteration".into(),
        y_label: "loss".into(),
        x_range: None,
        y_range: None,
        series: vec![
            Series {
                label: "classification".into(),
                points: pts(&|r| r.loss_cls),
                ..Default::default()
            },
            Series {
                label: "box regression".into(),
                points: pts(&|r| r.loss_box),
                ..Default::default()
            },
        ],
    };
    if chart.series.iter().all(|s| s.points.is_empty()) {
        return Ok(());
    }
    write_line_chart(path, &chart)
}
