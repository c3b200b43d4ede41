//! `fl-lab sweep-imbalance`: at what foreground:background imbalance does focal loss start to beat
//! alpha-balanced cross entropy, each at its own best learning rate?

use crate::experiments::imbalance::executor::TrainTuneEvaluate;
use crate::experiments::imbalance::{run_ladder, ImbalanceOptions};
use crate::experiments::runner::Executor;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub sweep: crate::commands::sweep::SweepFlags,
    /// Seeds that train the whole grid and choose each loss's lr (and CE's alpha) by mean held-out AP;
    /// the other seeds train the chosen settings only (default: the spec's, 1).
    #[arg(long)]
    pub tune_seeds: Option<usize>,
    /// Where the rungs' datasets are generated and cached (default: $FL_LAB_DATA, else ./data).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Schedule length (focal loss may need longer to pay off): sets schedule.iterations and scales the
    /// preset's lr steps and warm-up with it.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Learning rates both losses are trained at (default: the ladder spec's), e.g. --lrs 0.01,0.02,0.04.
    #[arg(long, value_delimiter = ',')]
    pub lrs: Vec<f64>,
    /// Alphas CE is trained at (default: the ladder spec's .25, .5, .75).
    #[arg(long, value_delimiter = ',')]
    pub ce_alphas: Vec<f64>,
    /// Training images generated per rung, held-out ones included (default: the spec's, per preset).
    #[arg(long)]
    pub train_images: Option<usize>,
    /// The last this many training images are held out to choose lr and alpha.
    #[arg(long)]
    pub holdout_images: Option<usize>,
    /// Validation images per rung (the reported AP).
    #[arg(long)]
    pub val_images: Option<usize>,
}

pub fn run(args: Args, quiet: bool) -> Result<()> {
    let flags = &args.sweep;
    if !flags.reuse_from.is_empty() {
        anyhow::bail!(
            "--reuse-from applies to the Table 1 experiments and schedule, not to sweep-imbalance \
             (its rungs train on their own datasets)"
        );
    }
    let out = flags.out("sweep-imbalance");
    flags.announce_reuse(&out)?;
    let opts = ImbalanceOptions {
        spec: flags.spec.clone(),
        preset: flags.preset.clone(),
        seeds: flags.seeds,
        tune_seeds: args.tune_seeds,
        overrides: flags.overrides(Vec::new()),
        lrs: args.lrs.clone(),
        ce_alphas: args.ce_alphas.clone(),
        train_images: args.train_images,
        holdout_images: args.holdout_images,
        val_images: args.val_images,
        iterations: args.iterations,
        data_root: args
            .data_root
            .clone()
            .unwrap_or_else(crate::data::generate::default_data_root),
        shard: flags.shard()?,
        collect_only: flags.collect,
        jobs: flags.jobs,
        out,
        reuse_recorded: flags.reuse_recorded,
    };
    if opts.seeds == 0 {
        anyhow::bail!("--seeds must be at least 1");
    }
    let executor = |rungs| Box::new(TrainTuneEvaluate { rungs }) as Box<dyn Executor>;
    let outcome = run_ladder(&opts, &executor, quiet)?;
    let Some((ladder, spec, note)) = &outcome.collected else {
        println!(
            "sweep-imbalance shard {}/{}: {} runs trained, {} reused; when every shard has finished, run `fl-lab sweep-imbalance --collect --out {}` with the same flags",
            opts.shard.index + 1,
            opts.shard.count,
            outcome.progress.trained,
            outcome.progress.reused,
            opts.out.display()
        );
        if outcome.waiting > 0 {
            println!(
                "{} runs of the later seeds wait for rungs whose grid other shards are still training: run this shard again once they finish",
                outcome.waiting
            );
        }
        return Ok(());
    };
    crate::report::imbalance::write_all(spec, ladder, &opts.out, note)?;
    let p = &outcome.progress;
    let counts = if opts.collect_only {
        let found = ladder.outcomes.len();
        format!("{found} collected, {} not finished", ladder.missing)
    } else {
        format!(
            "{} reused, {} trained, {} diverged",
            p.reused, p.trained, p.diverged
        )
    };
    println!("sweep-imbalance: {} runs ({counts})", outcome.jobs);
    println!(
        "{:<24} {:>12} {:>14} {:>14} {:>14}",
        "rung", "neg:pos", "FL AP", "CE AP", "FL - CE"
    );
    let ap = |c: &Option<crate::experiments::imbalance::select::Choice>| match c {
        Some(c) => format!("{:.1} ± {:.1}", 100.0 * c.ap.mean, 100.0 * c.ap.std),
        None => "–".into(),
    };
    for r in &ladder.rungs {
        let diff = if r.diffs.is_empty() {
            "–".into()
        } else {
            format!("{:+.1} ± {:.1}", 100.0 * r.diff.mean, 100.0 * r.diff.std)
        };
        println!(
            "{:<24} {:>12} {:>14} {:>14} {:>14}",
            r.info.label,
            format!("1:{:.0}", r.info.imbalance.ratio()),
            ap(&r.fl),
            ap(&r.ce),
            diff
        );
    }
    println!(
        "{}",
        crate::report::imbalance::crossover_text(ladder).replace("**", "")
    );
    println!(
        "wrote {}/{{results.csv, summary.csv, summary.md, {}}}",
        opts.out.display(),
        crate::report::imbalance::FIGURE
    );
    Ok(())
}
