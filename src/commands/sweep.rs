//! `fl-lab sweep-gamma | sweep-alpha | anchors | ohem-vs-focal`: the paper's Table 1 experiments.
//! They share one set of flags and one runner; only the spec differs.

use crate::experiments::executor::TrainAndEvaluate;
use crate::experiments::runner::Shard;
use crate::experiments::{default_out, reference_for, run_experiment, SweepOptions};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The flags every sweep command shares (`sweep-*`, `anchors`, `ohem-vs-focal`, `schedule`,
/// `sweep-imbalance`), declared once.
#[derive(Debug, clap::Args)]
pub struct SweepFlags {
    /// Training preset: smoke (seconds per run, for tests), cpu (the default) or paper (GPU), or a TOML file.
    #[arg(long, default_value = "cpu")]
    pub preset: String,
    /// Replicates per configuration (seeds 0..N); tables report mean and standard deviation over seeds.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Output folder (default results/<experiment>, not tracked; the committed reference is plots/<experiment>); finished runs live in <out>/runs/<config hash>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Extra config overrides for every run, e.g. --set schedule.iterations=3000.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
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
    /// Count the runs recorded in <out>/results.csv as finished, training only the others (to spread a sweep over several sessions, e.g. with --out plots/<experiment>).
    #[arg(long)]
    pub reuse_recorded: bool,
}

impl SweepFlags {
    /// `--device` and `--set` as config overrides, after `first`.
    pub fn overrides(&self, first: Vec<String>) -> Vec<String> {
        let mut overrides = first;
        if let Some(d) = &self.device {
            overrides.push(format!("device={d:?}"));
        }
        overrides.extend(self.set.iter().cloned());
        overrides
    }

    pub fn shard(&self) -> Result<Shard> {
        match &self.shard {
            Some(s) => Shard::parse(s),
            None => Ok(Shard::ALL),
        }
    }

    /// The output folder of experiment `name`.
    pub fn out(&self, name: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| default_out(name))
    }

    /// With `--reuse-recorded`, says first how many recorded runs count as finished.
    pub fn announce_reuse(&self, out: &Path) -> Result<()> {
        if self.reuse_recorded {
            let table = out.join("results.csv");
            let recorded = crate::experiments::collect::earlier_records(&table)?;
            println!(
                "--reuse-recorded: the {} runs recorded in {} count as finished; only the others are trained",
                recorded.len(),
                table.display()
            );
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub sweep: SweepFlags,
    /// A COCO-format dataset (directory with train.json/val.json, or a JSON file) instead of the built-in benchmark.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Cross every configuration with these alphas (the full gamma x alpha grid of Table 1b).
    #[arg(long, value_delimiter = ',')]
    pub alphas: Vec<f64>,
}

/// The top-level entry point for the four sweep commands; `name` selects the experiment.
pub fn run(name: &str, args: Args, quiet: bool) -> Result<()> {
    let flags = &args.sweep;
    let data = args
        .data
        .iter()
        .map(|d| format!("data.source={:?}", d.display().to_string()));
    let out = flags.out(name);
    flags.announce_reuse(&out)?;
    let opts = SweepOptions {
        spec: flags.spec.clone(),
        preset: flags.preset.clone(),
        seeds: flags.seeds,
        overrides: flags.overrides(data.collect()),
        alphas: args.alphas.clone(),
        shard: flags.shard()?,
        collect_only: flags.collect,
        jobs: flags.jobs,
        reference: reference_for(name, &out),
        out,
        reuse_recorded: flags.reuse_recorded,
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
            println!(
                "{:<28} {:>5} {:>14} {:>18} {:>9}",
                "variant", "runs", "AP (mean±std)", "committed AP (n)", "paper AP"
            );
            let pm = |m: f64, s: f64| {
                if m.is_finite() {
                    format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s)
                } else {
                    "–".into()
                }
            };
            for s in &c.summaries {
                let ours = pm(s.ap.mean, s.ap.std);
                let reference = s
                    .reference
                    .map(|(r, n)| format!("{} ({n})", pm(r.mean, r.std)))
                    .unwrap_or_else(|| "–".into());
                let paper = s.paper.map(|p| format!("{:.1}", p.ap)).unwrap_or_else(|| "–".into());
                println!(
                    "{:<28} {:>5} {:>14} {:>18} {:>9}",
                    s.label, s.runs, ours, reference, paper
                );
            }
            match &opts.reference {
                Some(r) if r.exists() => println!(
                    "committed AP: the same configurations and seeds in {} (– where it has none)",
                    r.display()
                ),
                _ => {}
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
