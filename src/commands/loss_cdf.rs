//! `fl-lab loss-cdf`: the paper's Figure 4 (cumulative distribution of the normalized focal loss
//! over positive and negative samples) for a detector's binary samples.

use crate::analysis::loss_cdf::analyze;
use crate::analysis::samples::{read_samples, ValueKind};
use crate::report::loss_cdf::{write_all, Provenance};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Binary samples of any detector: CSV with a header ('logit' or 'prob', and 'target' 0/1) or an
    /// (N, 2) .npy array of [score, target].
    #[arg(long, conflicts_with_all = ["run", "data"])]
    pub samples: Option<PathBuf>,
    /// A trained run (`fl-lab train`) whose model is applied to the validation images. With neither
    /// --samples nor --run, the default gamma = 2 model is trained on the built-in benchmark first
    /// (experiments/cpu.toml, into runs/loss-cdf-default) and reused afterwards.
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
    /// Output directory.
    #[arg(long, default_value = "plots/loss-cdf")]
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
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let (sets, source) = match &args.samples {
        Some(path) => (
            read_samples(path, args.values, args.max_pos, args.max_neg, &mut rng)?,
            format!("samples file `{}`", path.display()),
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
            (sets, source)
        }
    };
    let provenance = Provenance {
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

/// Trains (once) the default gamma = 2 model the paper analyses, on the built-in benchmark.
fn default_model(quiet: bool) -> Result<PathBuf> {
    let run_dir = PathBuf::from("runs/loss-cdf-default");
    if run_dir.join("model.safetensors").exists() {
        return Ok(run_dir);
    }
    let preset = crate::experiments::spec::preset_text("cpu")?.0;
    let cfg = crate::config::Config::from_toml_str(
        &preset,
        &[
            "loss.kind=focal".into(),
            "loss.gamma=2.0".into(),
            "loss.alpha=0.25".into(),
        ],
    )?;
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
    };
    let summary = crate::train::train(&cfg, &mut source, &device, &opts)?;
    if summary.diverged {
        bail!("the default model diverged; train one with `fl-lab train` and pass --run");
    }
    Ok(run_dir)
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
