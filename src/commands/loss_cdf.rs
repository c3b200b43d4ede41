//! `fl-lab loss-cdf`: the paper's Figure 4 (cumulative distribution of the normalized focal loss
//! over positive and negative samples) for a detector's binary samples.

use crate::analysis::loss_cdf::{analyze, Checkpoint};
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
    /// A trained run (`fl-lab train`) whose model is applied to the validation images. With neither
    /// --samples nor --run, the default gamma = 2 model is trained on the built-in benchmark first
    /// (experiments/cpu.toml, into runs/loss-cdf-default-<config hash>) and reused afterwards.
    #[arg(long, value_name = "runs/NAME")]
    pub run: Option<PathBuf>,
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
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let (sets, source, key) = match &args.samples {
        Some(path) => (
            read_samples(path, args.values, args.max_pos, args.max_neg, &mut rng)?,
            format!("samples file `{}`", path.display()),
            format!("samples {}", path.display()),
        ),
        None => {
            let run_dir = match &args.run {
                Some(r) => r.clone(),
                None => default_model(quiet)?,
            };
            let model = crate::model::RetinaNet::load_run(&run_dir)?;
            let mut cfg = model.config().clone();
            if let Some(d) = &args.data {
                cfg.data.source = d.display().to_string();
            }
            let val =
                crate::train::dataset_source::open_dataset(&cfg, crate::data::Split::Val, quiet)?;
            let sets = crate::analysis::model_samples::model_samples(
                &model,
                &val,
                args.max_pos,
                args.max_neg,
                16,
                quiet,
                &mut rng,
            )?;
            let source = format!(
                "model `{}` (loss {:?}, gamma {}, alpha {}) on {} validation images of `{}`",
                run_dir.display(),
                cfg.loss.kind,
                cfg.loss.gamma,
                cfg.loss.alpha,
                val.len(),
                val.source.json.display()
            );
            (sets, source, model_key(&run_dir))
        }
    };
    let provenance = Provenance {
        key,
        source,
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
    write_all(&args.out, &curves, &provenance).with_context(|| {
        format!(
            "cannot write the loss-CDF outputs to {}",
            args.out.display()
        )
    })?;
    print_summary(&curves, &args.out);
    Ok(())
}

/// What a model's analyses are keyed by in their folder: its run directory.
fn model_key(run_dir: &Path) -> String {
    format!("model {}", run_dir.display())
}

/// Trains (once) the default gamma = 2 model the paper analyses, on the built-in benchmark, into
/// `runs/loss-cdf-default-<config hash>`: a model of an earlier `cpu` preset (another schedule
/// length, say) lives under another name and is never taken for the default one.
fn default_model(quiet: bool) -> Result<PathBuf> {
    let preset = crate::experiments::spec::preset_text("cpu")?.0;
    let cfg = crate::config::Config::from_toml_str(
        &preset,
        &[
            "loss.kind=focal".into(),
            "loss.gamma=2.0".into(),
            "loss.alpha=0.25".into(),
        ],
    )?;
    let run_dir = PathBuf::from(format!("runs/loss-cdf-default-{}", cfg.hash()?));
    if run_dir.join("model.safetensors").exists() {
        return Ok(run_dir);
    }
    let device = crate::device::parse_device(&cfg.device)?;
    if !quiet {
        eprintln!(
            "training the default gamma = 2 model into {} (once)",
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

/// `loss-cdf --over-training`: the curves of every snapshot of a run and of its final model.
fn run_over_training(args: &Args, quiet: bool) -> Result<()> {
    let run_dir = match &args.run {
        Some(r) => r.clone(),
        None => default_model(quiet)?,
    };
    let model = crate::model::RetinaNet::load_run(&run_dir)?;
    let mut cfg = model.config().clone();
    let iterations = cfg.schedule.iterations;
    let checkpoints = run_checkpoints(&run_dir, iterations).map_err(|e| {
        if args.run.is_none() {
            e.context(format!(
                "the default model predates snapshots: remove {} to train it again with them",
                run_dir.display()
            ))
        } else {
            e
        }
    })?;
    if let Some(d) = &args.data {
        cfg.data.source = d.display().to_string();
    }
    let gamma = match cfg.loss.kind {
        crate::config::LossKind::Ce | crate::config::LossKind::Ohem => 0.0,
        _ => cfg.loss.gamma,
    };
    let val = crate::train::dataset_source::open_dataset(&cfg, crate::data::Split::Val, quiet)?;
    let mut results = Vec::with_capacity(checkpoints.len());
    let mut seen = (0, 0);
    for (iteration, weights) in &checkpoints {
        if !quiet {
            eprintln!("iteration {iteration}: {}", weights.display());
        }
        model.load_weights(weights)?;
        // The same seed for every checkpoint: the same images give the same sample stream, so
        // every checkpoint keeps the same (anchor, class) samples.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
        let sets = crate::analysis::model_samples::model_samples(
            &model,
            &val,
            args.max_pos,
            args.max_neg,
            16,
            quiet,
            &mut rng,
        )?;
        seen = (sets.positives.seen(), sets.negatives.seen());
        let curves = analyze(
            sets.positives.into_items(),
            sets.negatives.into_items(),
            &[gamma],
            args.points,
        )
        .with_context(|| format!("checkpoint {}", weights.display()))?;
        results.push(Checkpoint {
            iteration: *iteration,
            of_iterations: iterations,
            curves,
        });
    }
    let provenance = Provenance {
        key: model_key(&run_dir),
        source: format!(
            "run `{}` (loss {:?}, gamma {}, alpha {}), {} checkpoints, on {} validation images of `{}`",
            run_dir.display(),
            cfg.loss.kind,
            cfg.loss.gamma,
            cfg.loss.alpha,
            results.len(),
            val.len(),
            val.source.json.display()
        ),
        positives_seen: seen.0,
        negatives_seen: seen.1,
        note: String::new(),
    };
    write_over_training(&args.out, &results, &provenance).with_context(|| {
        format!(
            "cannot write the over-training outputs to {}",
            args.out.display()
        )
    })?;
    println!("checkpoint              set       samples     hardest 5%  hardest 20%");
    for cp in &results {
        for c in &cp.curves {
            println!(
                "{:<23} {:<9} {:<11} {:>9.1}%  {:>10.1}%",
                checkpoint_label(cp),
                c.set.name(),
                c.samples,
                100.0 * c.hardest_shares[1],
                100.0 * c.hardest_shares[3]
            );
        }
    }
    println!(
        "wrote {}/{{over_training.csv, over_training.png, summary.csv, summary.md}}",
        args.out.display()
    );
    Ok(())
}

fn print_summary(curves: &[crate::analysis::loss_cdf::Curve], out: &std::path::Path) {
    println!("set       gamma  samples     hardest 5%  hardest 20%");
    for c in curves {
        println!(
            "{:<9} {:<6} {:<11} {:>9.1}%  {:>10.1}%",
            c.set.name(),
            c.gamma,
            c.samples,
            100.0 * c.hardest_shares[1],
            100.0 * c.hardest_shares[3]
        );
    }
    println!(
        "wrote {}/{{cdf.csv, figure4.png, summary.csv, summary.md}}",
        out.display()
    );
}
