//! `fl-lab loss-cdf`: the paper's Figure 4 (cumulative distribution of the normalized focal loss
//! over positive and negative samples) for a detector's binary samples.

use crate::analysis::loss_cdf::{analyze, Checkpoint};
use crate::analysis::loss_cdf_spread::{
    across_models, spreads_over_training, ModelCheckpoints, ModelCurves,
};
use crate::analysis::samples::{read_samples, ValueKind};
use crate::report::loss_cdf::{checkpoint_label, write_all, write_over_training, Provenance};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Binary samples of any detector: CSV with a header ('logit' or 'prob', and 'target' 0/1) or an
    /// (N, 2) .npy array of [score, target].
    #[arg(long, conflicts_with_all = ["run", "data"])]
    pub samples: Option<PathBuf>,
    /// A trained run (`fl-lab train`) whose model is applied to the validation images; several
    /// (comma-separated or repeated: seeds of one setting, say) add their spread to the summary,
    /// and the figure draws the first. With neither --samples nor --run, the default gamma = 2
    /// model is trained on the built-in benchmark first (experiments/cpu.toml, into
    /// runs/loss-cdf-default-<config hash>) and reused afterwards.
    #[arg(long, value_name = "runs/NAME", value_delimiter = ',')]
    pub run: Vec<PathBuf>,
    /// Without --run: the default model trained with seeds 0 to N-1 (each trained once), their
    /// spread in the summary; the figure draws seed 0.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with_all = ["samples", "run"])]
    pub seeds: u64,
    /// With --run: take the images of this COCO dataset's validation split instead of the run's own.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// What the score column holds (required for .npy; CSV headers say it themselves).
    #[arg(long, value_enum)]
    pub values: Option<ValueKind>,
    /// Gammas to draw a curve for (the paper's Figure 4 uses 0, 0.5, 1, 2).
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2")]
    pub gammas: Vec<f64>,
    /// Positive samples kept (uniformly sampled beyond this).
    #[arg(long, default_value_t = 100_000)]
    pub max_pos: usize,
    /// Negative samples kept (uniformly sampled beyond this).
    #[arg(long, default_value_t = 10_000_000)]
    pub max_neg: usize,
    /// Points written per curve in cdf.csv (the ends are always exact).
    #[arg(long, default_value_t = 1000)]
    pub points: usize,
    /// Seed of the uniform sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Curves of the run's snapshots (`fl-lab train --snapshots 10%,50%`) and final model, in one
    /// figure: how the loss concentrates as training goes on. Each model is applied to the same
    /// validation images and the curves use the gamma the run was trained with (its `loss.gamma`; 0
    /// for a cross-entropy or OHEM run), so --gammas does not apply. Writes over_training.csv and
    /// over_training.png, and adds the checkpoints to summary.csv and summary.md. With no --run,
    /// the default model (trained with snapshots at 10% and 50%).
    #[arg(long, conflicts_with_all = ["samples", "gammas"])]
    pub over_training: bool,
    /// Output directory (not tracked by default; the committed reference is plots/loss-cdf). A folder
    /// holds the analyses of one model or samples file: those of another are replaced.
    #[arg(long, default_value = "results/loss-cdf")]
    pub out: PathBuf,
}

/// Validates the gamma list: finite, non-negative, at most 10, at least one.
pub fn check_gammas(gammas: &[f64]) -> Result<()> {
    if gammas.is_empty() {
        bail!("--gammas needs at least one value");
    }
    for &g in gammas {
        if !g.is_finite() || !(0.0..=10.0).contains(&g) {
            bail!("--gammas: {g} is not a gamma in [0, 10]");
        }
    }
    Ok(())
}

/// The top-level entry point for `fl-lab loss-cdf`.
pub fn run(args: Args, quiet: bool) -> Result<()> {
    check_gammas(&args.gammas)?;
    if args.max_pos == 0 || args.max_neg == 0 || args.points < 2 {
        bail!("--max-pos and --max-neg must be positive and --points at least 2");
    }
    if args.over_training {
        return run_over_training(&args, quiet);
    }
    if let Some(path) = &args.samples {
        return run_samples(&args, path);
    }
    let run_dirs = model_dirs(&args, quiet)?;
    let mut models = Vec::with_capacity(run_dirs.len());
    let (mut sources, mut seen) = (Vec::new(), (0, 0));
    for run_dir in &run_dirs {
        let (model, cfg, val) = open_model(run_dir, args.data.as_deref(), quiet)?;
        let (curves, counts) = model_curves(&model, &val, &args, &args.gammas, quiet)
            .with_context(|| format!("model {}", run_dir.display()))?;
        seen = counts;
        sources.push(model_source(run_dir, &cfg, &val));
        models.push(ModelCurves {
            model: run_dir.display().to_string(),
            seed: Some(cfg.seed),
            curves,
        });
    }
    let provenance = models_provenance(&run_dirs, &sources, seen);
    finish_figure4(&args.out, &models, &provenance)
}

/// Writes Figure 4's files for `models` (with their spread when there are several) and prints
/// the summary.
fn finish_figure4(out: &Path, models: &[ModelCurves], provenance: &Provenance) -> Result<()> {
    let across = across_models(models);
    write_all(out, models, across.as_ref(), provenance)
        .with_context(|| format!("cannot write the loss-CDF outputs to {}", out.display()))?;
    print_summary(models, out);
    Ok(())
}

/// The curves of `model` applied to `val` for `gammas`, and the (positive, negative) samples seen.
/// Every call samples with `--seed` afresh: the same images give the same sample stream, so every
/// model and checkpoint keeps the same (anchor, class) samples.
fn model_curves(
    model: &crate::model::RetinaNet,
    val: &crate::data::loader::Dataset,
    args: &Args,
    gammas: &[f64],
    quiet: bool,
) -> Result<(Vec<crate::analysis::loss_cdf::Curve>, (u64, u64))> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let sets = crate::analysis::model_samples::model_samples(
        model,
        val,
        args.max_pos,
        args.max_neg,
        16,
        quiet,
        &mut rng,
    )?;
    let seen = (sets.positives.seen(), sets.negatives.seen());
    let curves = analyze(
        sets.positives.into_items(),
        sets.negatives.into_items(),
        gammas,
        args.points,
    )?;
    Ok((curves, seen))
}

/// `loss-cdf --samples`: the curves of a samples file.
fn run_samples(args: &Args, path: &Path) -> Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let sets = read_samples(path, args.values, args.max_pos, args.max_neg, &mut rng)?;
    let provenance = Provenance {
        key: format!("samples {}", path.display()),
        source: format!("samples file `{}`", path.display()),
        positives_seen: sets.positives.seen(),
        negatives_seen: sets.negatives.seen(),
        note: if sets.clamped > 0 {
            format!(
                "{} probabilities were clamped to [1e-12, 1 - 1e-12].",
                sets.clamped
            )
        } else {
            String::new()
        },
    };
    let curves = analyze(
        sets.positives.into_items(),
        sets.negatives.into_items(),
        &args.gammas,
        args.points,
    )?;
    let models = [ModelCurves {
        model: path.display().to_string(),
        seed: None,
        curves,
    }];
    finish_figure4(&args.out, &models, &provenance)
}

/// The run directories to analyse: `--run`, or the default model's seeds.
fn model_dirs(args: &Args, quiet: bool) -> Result<Vec<PathBuf>> {
    if !args.run.is_empty() {
        return Ok(args.run.clone());
    }
    if !(1..=20).contains(&args.seeds) {
        bail!("--seeds must be between 1 and 20, got {}", args.seeds);
    }
    (0..args.seeds).map(|s| default_model(s, quiet)).collect()
}

/// A run's model and config (with `data` as its dataset when given) and its validation images.
fn open_model(
    run_dir: &Path,
    data: Option<&Path>,
    quiet: bool,
) -> Result<(
    crate::model::RetinaNet,
    crate::config::Config,
    crate::data::loader::Dataset,
)> {
    let model = crate::model::RetinaNet::load_run(run_dir)?;
    let mut cfg = model.config().clone();
    if let Some(d) = data {
        cfg.data.source = d.display().to_string();
    }
    let val = crate::train::dataset_source::open_dataset(&cfg, crate::data::Split::Val, quiet)?;
    Ok((model, cfg, val))
}

/// How the summary names a model and the images it was applied to.
fn model_source(
    run_dir: &Path,
    cfg: &crate::config::Config,
    val: &crate::data::loader::Dataset,
) -> String {
    format!(
        "model `{}` (loss {:?}, gamma {}, alpha {}, seed {}) on {} validation images of `{}`",
        run_dir.display(),
        cfg.loss.kind,
        cfg.loss.gamma,
        cfg.loss.alpha,
        cfg.seed,
        val.len(),
        val.source.json.display()
    )
}

/// The summaries' account of the models analysed (`sources`: one line per model) and of the
/// (positive, negative) samples seen, which the same validation images make the same for each.
fn models_provenance(run_dirs: &[PathBuf], sources: &[String], seen: (u64, u64)) -> Provenance {
    Provenance {
        key: models_key(run_dirs),
        source: sources.join("; "),
        positives_seen: seen.0,
        negatives_seen: seen.1,
        note: String::new(),
    }
}

/// What the analyses of models are keyed by in their folder: their run directories.
fn models_key(run_dirs: &[PathBuf]) -> String {
    let names: Vec<String> = run_dirs.iter().map(|d| d.display().to_string()).collect();
    match names.as_slice() {
        [one] => format!("model {one}"),
        _ => format!("models {}", names.join(", ")),
    }
}

/// Trains (once) the default gamma = 2 model the paper analyses, with training seed `seed`, on
/// the built-in benchmark, into `runs/loss-cdf-default-<config hash>`: a model of an earlier `cpu`
/// preset (another schedule length, say) or of another seed lives under another name and is never
/// taken for this one.
fn default_model(seed: u64, quiet: bool) -> Result<PathBuf> {
    let preset = crate::experiments::spec::preset_text("cpu")?.0;
    let cfg = crate::config::Config::from_toml_str(
        &preset,
        &[
            "loss.kind=focal".into(),
            "loss.gamma=2.0".into(),
            "loss.alpha=0.25".into(),
            format!("seed={seed}"),
        ],
    )?;
    let run_dir = PathBuf::from(format!("runs/loss-cdf-default-{}", cfg.hash()?));
    if run_dir.join("model.safetensors").exists() {
        return Ok(run_dir);
    }
    let device = crate::device::parse_device(&cfg.device)?;
    if !quiet {
        eprintln!(
            "training the default gamma = 2 model (seed {seed}) into {} (once)",
            run_dir.display()
        );
    }
    let mut source = crate::train::dataset_source::open(&cfg, crate::data::Split::Train, quiet)?;
    let opts = crate::train::TrainOptions {
        run_dir: run_dir.clone(),
        resume: run_dir.join("checkpoint.json").exists(),
        quiet,
        stop_after: None,
        snapshots: crate::commands::train::parse_snapshots(
            &["10%".into(), "50%".into()],
            cfg.schedule.iterations,
        )?,
    };
    let summary = crate::train::train(&cfg, &mut source, &device, &opts)?;
    if summary.diverged {
        bail!("the default model diverged; train one with `fl-lab train` and pass --run");
    }
    Ok(run_dir)
}

/// The run's snapshots (`snapshot-<iteration>.safetensors`) in training order, then its final model.
fn run_checkpoints(run_dir: &Path, iterations: usize) -> Result<Vec<(usize, PathBuf)>> {
    let entries = std::fs::read_dir(run_dir)
        .with_context(|| format!("cannot list the run directory {}", run_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let iteration = name
            .strip_prefix("snapshot-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<usize>().ok());
        // A snapshot at the end of training is the final model itself.
        if let Some(i) = iteration.filter(|&i| i < iterations) {
            found.push((i, run_dir.join(&name)));
        }
    }
    if found.is_empty() {
        bail!(
            "{} has no snapshots (snapshot-<iteration>.safetensors) before its final model: train \
             it with `fl-lab train --snapshots 10%,50% ...` to analyse it over training",
            run_dir.display()
        );
    }
    found.sort();
    found.push((iterations, run_dir.join("model.safetensors")));
    Ok(found)
}

/// `loss-cdf --over-training`: the curves of every snapshot of each run and of its final model.
fn run_over_training(args: &Args, quiet: bool) -> Result<()> {
    let run_dirs = model_dirs(args, quiet)?;
    let mut models = Vec::with_capacity(run_dirs.len());
    let (mut sources, mut seen) = (Vec::new(), (0, 0));
    for run_dir in &run_dirs {
        let (model, cfg, val) = open_model(run_dir, args.data.as_deref(), quiet)?;
        let iterations = cfg.schedule.iterations;
        let checkpoints = run_checkpoints(run_dir, iterations).map_err(|e| {
            if args.run.is_empty() {
                e.context(format!(
                    "the default model predates snapshots: remove {} to train it again with them",
                    run_dir.display()
                ))
            } else {
                e
            }
        })?;
        let gamma = match cfg.loss.kind {
            crate::config::LossKind::Ce | crate::config::LossKind::Ohem => 0.0,
            _ => cfg.loss.gamma,
        };
        let mut results = Vec::with_capacity(checkpoints.len());
        for (iteration, weights) in &checkpoints {
            if !quiet {
                eprintln!("iteration {iteration}: {}", weights.display());
            }
            model.load_weights(weights)?;
            let (curves, counts) = model_curves(&model, &val, args, &[gamma], quiet)
                .with_context(|| format!("checkpoint {}", weights.display()))?;
            seen = counts;
            results.push(Checkpoint {
                iteration: *iteration,
                of_iterations: iterations,
                curves,
            });
        }
        sources.push(format!(
            "{}, {} checkpoints",
            model_source(run_dir, &cfg, &val),
            results.len()
        ));
        models.push(ModelCheckpoints {
            model: run_dir.display().to_string(),
            seed: Some(cfg.seed),
            checkpoints: results,
        });
    }
    let provenance = models_provenance(&run_dirs, &sources, seen);
    let spreads = spreads_over_training(&models);
    write_over_training(&args.out, &models, &spreads, &provenance).with_context(|| {
        format!(
            "cannot write the over-training outputs to {}",
            args.out.display()
        )
    })?;
    let width = models.iter().map(|m| m.model.len()).max().unwrap_or(0);
    println!(
        "{:<width$} {:<23} {:<9} {:<11} {:>10}  {:>11}",
        "model", "checkpoint", "set", "samples", "hardest 5%", "hardest 20%"
    );
    for m in &models {
        for cp in &m.checkpoints {
            for c in &cp.curves {
                println!(
                    "{:<width$} {:<23} {:<9} {:<11} {:>9.1}%  {:>10.1}%",
                    m.model,
                    checkpoint_label(cp),
                    c.set.name(),
                    c.samples,
                    100.0 * c.hardest_shares[1],
                    100.0 * c.hardest_shares[3]
                );
            }
        }
    }
    println!(
        "wrote {}/{{over_training.csv, over_training.png, summary.csv, summary.md}}",
        args.out.display()
    );
    Ok(())
}

fn print_summary(models: &[ModelCurves], out: &std::path::Path) {
    let width = models.iter().map(|m| m.model.len()).max().unwrap_or(0);
    println!(
        "{:<width$} {:<9} {:<6} {:<11} {:>10}  {:>11}",
        "model", "set", "gamma", "samples", "hardest 5%", "hardest 20%"
    );
    for m in models {
        for c in &m.curves {
            println!(
                "{:<width$} {:<9} {:<6} {:<11} {:>9.1}%  {:>10.1}%",
                m.model,
                c.set.name(),
                c.gamma,
                c.samples,
                100.0 * c.hardest_shares[1],
                100.0 * c.hardest_shares[3]
            );
        }
    }
    println!(
        "wrote {}/{{cdf.csv, figure4.png, summary.csv, summary.md}}",
        out.display()
    );
}
