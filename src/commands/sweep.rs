//! `fl-lab sweep-gamma | sweep-alpha | anchors | ohem-vs-focal`: the paper's Table 1 experiments.
//! They share one set of flags and one runner; only the spec differs.

use crate::experiments::executor::TrainAndEvaluate;
use crate::experiments::runner::Shard;
use crate::experiments::{default_out, run_experiment, SweepOptions};
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training preset: smoke (seconds per run, for tests), cpu (the default) or paper (GPU), or a TOML file.
    #[arg(long, default_value = "cpu")]
    pub preset: String,
    /// Replicates per configuration (seeds 0..N); tables report mean and standard deviation.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// A COCO-format dataset (directory with train.json/val.json, or a JSON file) instead of the built-in benchmark.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Output folder (default plots/<experiment>); finished runs live in <out>/runs/<config hash>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Extra config overrides for every run, e.g. --set schedule.iterations=3000.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Cross every configuration with these alphas (the full gamma x alpha grid of Table 1b).
    #[arg(long, value_delimiter = ',')]
    pub alphas: Vec<f64>,
    /// Run only shard i of n (1-based), e.g. --shard 2/4; every shard writes into the same --out.
    #[arg(long)]
    pub shard: Option<String>,
    /// Runs trained at once, each on its share of the cores (one run already spreads each step over the cores; more can pay on many-core machines).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Build the tables and figures from whatever runs exist in --out, training nothing.
    #[arg(long)]
    pub collect: bool,
    /// Use this experiment spec instead of the built-in one.
    #[arg(long)]
    pub spec: Option<PathBuf>,
}

/// The top-level entry point for the four sweep commands; `name` selects the experiment.
pub fn run(name: &str, args: Args, quiet: bool) -> Result<()> {
    let mut overrides = Vec::new();
    if let Some(d) = &args.data {
        overrides.push(format!("data.source={:?}", d.display().to_string()));
    }
    if let Some(d) = &args.device {
        overrides.push(format!("device={d:?}"));
    }
    overrides.extend(args.set.iter().cloned());
    let opts = SweepOptions {
        spec: args.spec.clone(),
        preset: args.preset.clone(),
        seeds: args.seeds,
        overrides,
        alphas: args.alphas.clone(),
        shard: match &args.shard {
            Some(s) => Shard::parse(s)?,
            None => Shard::ALL,
        },
        collect_only: args.collect,
        jobs: args.jobs,
        out: args.out.clone().unwrap_or_else(|| default_out(name)),
    };
    let outcome = run_experiment(name, &opts, &TrainAndEvaluate, quiet)?;
    match &outcome.collected {
        Some(c) => {
            let p = &outcome.progress;
            let counts = if opts.collect_only {
                format!("{} collected, {} not finished", c.rows.len(), c.missing)
            } else {
                format!("{} reused, {} trained, {} diverged", p.reused, p.trained, p.diverged)
            };
            println!("{name}: {} runs ({counts})", outcome.jobs);
            println!("{:<28} {:>5} {:>14} {:>9}", "variant", "runs", "AP (mean±std)", "paper AP");
            for s in &c.summaries {
                let ours = if s.ap.mean.is_finite() {
                    format!("{:.1} ± {:.1}", 100.0 * s.ap.mean, 100.0 * s.ap.std)
                } else {
                    "–".into()
                };
                let paper = s.paper.map(|p| format!("{:.1}", p.ap)).unwrap_or_else(|| "–".into());
                println!("{:<28} {:>5} {:>14} {:>9}", s.label, s.runs, ours, paper);
            }
            for v in &c.verdicts {
                let word = match v.reproduced {
                    Some(true) => "reproduced",
                    Some(false) => "NOT reproduced",
                    None => "not yet known",
                };
                println!("- {word}: {}", v.paper);
            }
            println!("wrote {}/{{results.csv, summary.csv, summary.md, *.png}}", opts.out.display());
        }
        None => println!(
            "{name} shard {}/{}: {} runs trained, {} reused; when every shard has finished, run `fl-lab {name} --collect --out {}`",
            opts.shard.index + 1,
            opts.shard.count,
            outcome.progress.trained,
            outcome.progress.reused,
            opts.out.display()
        ),
    }
    Ok(())
}
