//! Sweep experiments (the paper's Table 1): run the configurations of a spec, reuse finished runs,
//! collect rows and return them; the command hands them to `report::sweep`.

pub mod collect;
pub mod executor;
pub mod imbalance;
pub mod runner;
pub mod same_run;
pub mod spec;

use anyhow::{Context, Result};
use runner::{expand, run_jobs, Executor, Shard, Workers};
use spec::{preset_text, ExperimentSpec};
use std::path::{Path, PathBuf};

/// Everything a sweep command needs besides the executor.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Use this spec file instead of the built-in one.
    pub spec: Option<PathBuf>,
    pub preset: String,
    pub seeds: usize,
    pub overrides: Vec<String>,
    pub alphas: Vec<f64>,
    pub shard: Shard,
    pub collect_only: bool,
    pub out: PathBuf,
    /// Runs trained at once (`--jobs`; without it, `Workers::for_jobs` chooses).
    pub jobs: Option<usize>,
    /// Count the runs recorded in `<out>/results.csv` as finished (`--reuse-recorded`), for a
    /// sweep spread over several sessions whose run folders are gone.
    pub reuse_recorded: bool,
    /// Other experiments' `results.csv` files whose runs of this sweep's configurations and seeds
    /// count as finished, their rows taken into this table (`--reuse-from`).
    pub reuse_from: Vec<PathBuf>,
    /// A results table to set beside ours, matched by configuration hash and seed (the committed
    /// reference in `plots/<experiment>/results.csv`); none when absent or when it is `out`'s own.
    pub reference: Option<PathBuf>,
}

/// What a sweep did, for the caller's summary.
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    pub jobs: usize,
    pub progress: runner::SweepProgress,
    pub collected: Option<collect::Collected>,
    /// The spec that ran (with `--alphas` folded in) and a note on the preset, overrides and seeds.
    pub spec: ExperimentSpec,
    pub note: String,
}

/// Runs (this shard of) an experiment and, when the whole sweep is local or `collect_only` is set,
/// collects its rows, summaries and verdicts.
pub fn run_experiment(
    name: &str,
    opts: &SweepOptions,
    executor: &dyn Executor,
    quiet: bool,
) -> Result<SweepOutcome> {
    let mut spec = match &opts.spec {
        Some(path) => ExperimentSpec::load(path)?,
        None => ExperimentSpec::builtin(name)?,
    };
    // Crossed with --alphas, the variants form a grid: one AP curve per alpha, and a heat map.
    if !opts.alphas.is_empty() && spec.series_key.is_none() {
        spec.series_key = Some("loss.alpha".into());
    }
    let (preset, preset_origin) = preset_text(&opts.preset)?;
    let jobs = expand(&spec, &preset, &opts.overrides, &opts.alphas, opts.seeds)?;
    let borrowed = collect::borrowed_records(&opts.reuse_from, &jobs)?;
    if !opts.reuse_from.is_empty() && !opts.collect_only {
        println!(
            "--reuse-from: {} of the {} runs are recorded in {} and count as finished",
            borrowed.len(),
            jobs.len(),
            tables_named(&opts.reuse_from)
        );
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let mut progress = runner::SweepProgress::default();
    if !opts.collect_only {
        let mine = opts.shard.take(jobs.clone());
        // Only on request is a run kept as a row of the table (its folder gone) not trained again:
        // a newcomer's first sweep trains, and its table stands beside the committed one.
        let mut recorded: std::collections::HashSet<collect::RunKey> = if opts.reuse_recorded {
            collect::earlier_records(&opts.out.join("results.csv"))?
                .into_keys()
                .collect()
        } else {
            Default::default()
        };
        recorded.extend(borrowed.keys().cloned());
        let workers = Workers::for_jobs(opts.jobs, &mine)?;
        progress = run_jobs(&mine, &opts.out, &recorded, executor, workers, quiet)?;
    }
    let collected = if opts.collect_only || opts.shard.count == 1 {
        // The reference is summarized over every seed it holds, whatever --seeds this sweep ran.
        let reference = match opts.reference.as_deref().filter(|r| r.exists()) {
            Some(path) => Some((
                path,
                expand(
                    &spec,
                    &preset,
                    &opts.overrides,
                    &opts.alphas,
                    REFERENCE_SEEDS,
                )?,
            )),
            None => None,
        };
        let reference = reference.as_ref().map(|(p, j)| (*p, j.as_slice()));
        Some(collect::collect(
            &spec, &jobs, &opts.out, reference, &borrowed,
        )?)
    } else {
        None
    };
    Ok(SweepOutcome {
        jobs: jobs.len(),
        progress,
        collected,
        note: context_note(&preset_origin, opts),
        spec,
    })
}

fn context_note(preset_origin: &str, opts: &SweepOptions) -> String {
    let mut note = format!("Trained with {preset_origin}");
    if !opts.overrides.is_empty() {
        note += &format!("; overrides: `{}`", opts.overrides.join(" "));
    }
    if !opts.reuse_from.is_empty() {
        note += &format!("; runs shared with {}", tables_named(&opts.reuse_from));
    }
    note + &match opts.seeds {
        1 => "; seed 0.".to_string(),
        n => format!("; seeds 0-{}.", n - 1),
    }
}

/// `a`, `b`: the tables as a summary names them.
fn tables_named(tables: &[PathBuf]) -> String {
    let named: Vec<String> = tables
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect();
    named.join(", ")
}

/// Seeds looked for in a reference table (committed tables hold three).
const REFERENCE_SEEDS: usize = 10;

/// The default output folder of an experiment: `results/<name>` (not tracked), so that a sweep
/// never rewrites the committed reference.
pub fn default_out(name: &str) -> PathBuf {
    Path::new("results").join(name)
}

/// The committed reference tables of an experiment, relative to the repository root.
pub fn reference_dir(name: &str) -> PathBuf {
    Path::new("plots").join(name)
}

/// The reference `results.csv` to set beside a sweep's table written to `out`: the committed
/// one, unless `out` is the reference folder itself.
pub fn reference_for(name: &str, out: &Path) -> Option<PathBuf> {
    let dir = reference_dir(name);
    let same = match (dir.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => dir == out,
    };
    (!same).then(|| dir.join("results.csv"))
}
