//! The sweep runner shared by every experiment: expands a spec into jobs (variant x seed), keys each
//! job's run directory by the hash of its resolved config, reuses finished runs, lets the executor
//! resume interrupted ones, records diverged runs and goes on, and splits work into shards.

use super::spec::ExperimentSpec;
use crate::config::Config;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// One training run of a sweep.
#[derive(Debug, Clone)]
pub struct Job {
    /// Index of the variant in the spec.
    pub variant: usize,
    pub label: String,
    pub seed: u64,
    pub overrides: Vec<String>,
    pub config: Config,
    pub hash: String,
}

/// What one finished run reports; stored as `result.json` in its run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
    pub aps: f64,
    pub apm: f64,
    pub apl: f64,
    /// NaN after a diverged run: JSON writes it as null, which reads back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub final_loss_cls: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub final_loss_box: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub positives_per_image: f64,
    pub iterations: usize,
    pub wall_seconds: f64,
    pub diverged: bool,
    pub device: String,
    pub version: String,
    pub git_revision: String,
    /// Threads the run trained on: all of rayon's (the cores) one run at a time, a share with
    /// `--jobs`. A run's numbers depend on it only through float rounding. Absent in records
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// The run folder (config hash) whose training this run repeats step for step, where it took
    /// that run's record instead of training (`same_run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as: Option<String>,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Trains and evaluates one job in its run directory. Implementations resume from a checkpoint
/// in `run_dir` when one exists, and report divergence in the record instead of failing. Several
/// jobs may execute at once on different threads.
pub trait Executor: Sync {
    fn execute(&self, job: &Job, run_dir: &Path, quiet: bool) -> Result<RunRecord>;

    /// Runs once before any job: whatever jobs running side by side must not do at the same time
    /// (generating a shared dataset).
    fn prepare(&self, _jobs: &[&Job], _quiet: bool) -> Result<()> {
        Ok(())
    }
}

/// Which part of a sweep this process runs: shard `index` of `count` (1-based on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n` with 1 <= i <= n.
    pub fn parse(text: &str) -> Result<Shard> {
        let parsed = text.split_once('/').and_then(|(i, n)| {
            Some((
                i.trim().parse::<usize>().ok()?,
                n.trim().parse::<usize>().ok()?,
            ))
        });
        match parsed {
            Some((i, n)) if n >= 1 && (1..=n).contains(&i) => Ok(Shard {
                index: i - 1,
                count: n,
            }),
            _ => bail!("--shard '{text}': expected i/n with 1 <= i <= n, e.g. 2/4"),
        }
    }

    /// Jobs are dealt round-robin in spec order, so every shard gets a similar mix.
    pub fn take(&self, jobs: Vec<Job>) -> Vec<Job> {
        jobs.into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index)
            .map(|(_, j)| j)
            .collect()
    }
}

/// Expands a spec into jobs: every variant (optionally crossed with `--alphas`) for seeds
/// `0..seeds`, each a config resolved from the preset text, the spec's overrides, the variant's
/// overrides, the user's `--set` overrides and the seed, in that order.
pub fn expand(
    spec: &ExperimentSpec,
    preset_text: &str,
    user_overrides: &[String],
    alphas: &[f64],
    seeds: usize,
) -> Result<Vec<Job>> {
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let mut variants: Vec<(usize, String, Vec<String>)> = Vec::new();
    for (i, v) in spec.variants.iter().enumerate() {
        if alphas.is_empty() {
            variants.push((i, v.label.clone(), v.set.clone()));
        } else {
            for (j, a) in alphas.iter().enumerate() {
                if !(0.0..=1.0).contains(a) {
                    bail!("--alphas: {a} is outside [0, 1]");
                }
                if alphas[..j].contains(a) {
                    bail!("--alphas lists {a} twice");
                }
                let mut set: Vec<String> = v
                    .set
                    .iter()
                    .filter(|s| !s.trim_start().starts_with("loss.alpha"))
                    .cloned()
                    .collect();
                set.push(format!("loss.alpha={a:?}"));
                variants.push((i, format!("{} | alpha {a}", v.label), set));
            }
        }
    }
    let mut jobs = Vec::new();
    for seed in 0..seeds as u64 {
        for (variant, label, set) in &variants {
            let mut overrides: Vec<String> = spec.set.clone();
            overrides.extend(set.iter().cloned());
            overrides.extend(user_overrides.iter().cloned());
            overrides.push(format!("seed={seed}"));
            let config = Config::from_toml_str(preset_text, &overrides)
                .with_context(|| format!("variant '{label}' of {}", spec.name))?;
            let hash = config.hash()?;
            jobs.push(Job {
                variant: *variant,
                label: label.clone(),
                seed,
                overrides,
                config,
                hash,
            });
        }
    }
    // Two variants of one configuration would share a run folder and count one run twice.
    let mut seen = std::collections::HashMap::new();
    for job in &jobs {
        if let Some(first) = seen.insert((&job.hash, job.seed), &job.label) {
            bail!(
                "variants '{first}' and '{}' of {} resolve to the same configuration (hash {}): \
                 every variant must differ (check --alphas and --set, which override the spec's settings)",
                job.label,
                spec.name,
                job.hash
            );
        }
    }
    Ok(jobs)
}

/// The run directory of a job inside a sweep's output folder.
pub fn run_dir(out: &Path, job: &Job) -> PathBuf {
    out.join("runs").join(&job.hash)
}

const RESULT_FILE: &str = "result.json";

/// Reads a finished run's record, if the run finished.
pub fn read_record(run_dir: &Path) -> Result<Option<RunRecord>> {
    let path = run_dir.join(RESULT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let record = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a run record", path.display()))?;
    Ok(Some(record))
}

/// Outcome of [`run_jobs`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepProgress {
    pub reused: usize,
    pub trained: usize,
    pub diverged: usize,
}

/// How many runs of a sweep train at once (`--jobs`), each on its own rayon pool with its share of
/// the threads. One run already splits each step across the cores (`train::step`), so the default
/// is one: a run's numbers then do not depend on how many ran beside it. Side by side, each on one
/// thread, runs pay on 2 cores too (two one-thread steps at once every 114-115 ms against 62.8 ms
/// for one two-thread step: 9% more steps per second), and on machines with more cores than a
/// batch has images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    /// Runs at once; 1 trains one run at a time on every thread.
    pub runs: usize,
}

impl Workers {
    /// `--jobs N`, N at least 1.
    pub fn new(runs: usize) -> Result<Workers> {
        if runs == 0 {
            bail!("--jobs must be at least 1");
        }
        Ok(Workers { runs })
    }

    /// `--jobs` as given, or without it one run per thread of the rayon budget when every run
    /// trains on the CPU (one at a time on a GPU). Runs side by side on one thread each train
    /// more steps per hour than one run spread over the threads: a run's step splits its batch
    /// between its threads, and each part repeats the per-call work (weight transforms, `gemm`
    /// set-up, autograd bookkeeping) on fewer images (README, Speed).
    pub fn for_jobs<'a>(
        requested: Option<usize>,
        jobs: impl IntoIterator<Item = &'a Job>,
    ) -> Result<Workers> {
        match requested {
            Some(runs) => Workers::new(runs),
            None if jobs
                .into_iter()
                .all(|j| crate::device::is_cpu(&j.config.device)) =>
            {
                Workers::new(rayon::current_num_threads().max(1))
            }
            None => Workers::new(1),
        }
    }

    /// How `todo` runs train: rounds of (jobs, runs at once, threads per run), sharing the rayon
    /// thread budget (cores, or `RAYON_NUM_THREADS`). Runs that would not fill a round of
    /// `self.runs` come last, as fewer at once with more threads each: with `--jobs 2`, the
    /// seventh run of seven trains on every thread rather than on one beside an idle core.
    pub fn plan(&self, todo: usize) -> Vec<(usize, usize, usize)> {
        let budget = rayon::current_num_threads().max(1);
        let runs = self.runs.clamp(1, todo.max(1));
        let full = todo - todo % runs;
        [(full, runs), (todo - full, todo - full)]
            .into_iter()
            .filter(|&(jobs, _)| jobs > 0)
            .map(|(jobs, at_once)| (jobs, at_once, (budget / at_once).max(1)))
            .collect()
    }
}

/// Runs every job that has no record yet; finished runs are reused, and so are the jobs in
/// `recorded` (config hash, seed): runs a committed `results.csv` holds whose folders are gone.
/// Up to `workers.runs` jobs train at once. Each record is written atomically after its run, so a
/// killed sweep loses at most the runs in progress (and those resume from their checkpoints).
pub fn run_jobs(
    jobs: &[Job],
    out: &Path,
    recorded: &HashSet<(String, u64)>,
    executor: &dyn Executor,
    workers: Workers,
    quiet: bool,
) -> Result<SweepProgress> {
    let mut todo: Vec<&Job> = jobs
        .iter()
        .filter(|j| !run_dir(out, j).join(RESULT_FILE).exists())
        .filter(|j| !recorded.contains(&(j.hash.clone(), j.seed)))
        .collect();
    // Runs that may repeat another run of this sweep step for step come after every other, so
    // that the run they may repeat has finished when they start (`same_run`).
    let may_repeat = |j: &Job| -> Result<bool> {
        for other in jobs {
            if super::same_run::could_repeat(&j.config, &other.config)? {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let mut later = Vec::new();
    for j in std::mem::take(&mut todo) {
        if may_repeat(j)? {
            later.push(j);
        } else {
            todo.push(j);
        }
    }
    let waves = [todo.len(), later.len()];
    todo.extend(later);
    let progress = Mutex::new(SweepProgress {
        reused: jobs.len() - todo.len(),
        ..Default::default()
    });
    let bar = crate::util::progress::bar(todo.len() as u64, "runs", quiet);
    let start = Instant::now();
    let finished = |job: &Job, record: &RunRecord| {
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        p.trained += 1;
        p.diverged += record.diverged as usize;
        let done = p.trained;
        drop(p);
        bar.inc(1);
        if quiet {
            return;
        }
        let per_run = start.elapsed().as_secs_f64() / done as f64;
        let note = match (&record.same_as, record.diverged) {
            (Some(run), _) => format!(", the same run as {run} (not trained again)"),
            (None, true) => ", diverged".to_string(),
            (None, false) => String::new(),
        };
        bar.println(format!(
            "[{done}/{}] {} seed {}: AP {:.3}{note} ({:.0} s; about {:.0} min left)",
            todo.len(),
            job.label,
            job.seed,
            record.ap,
            record.wall_seconds,
            per_run * (todo.len() - done) as f64 / 60.0
        ));
    };
    if !todo.is_empty() {
        executor.prepare(&todo, quiet)?;
    }
    let mut first = 0;
    let rounds = waves.iter().flat_map(|&wave| workers.plan(wave));
    for (count, runs, threads) in rounds {
        let round = &todo[first..first + count];
        first += count;
        if let Err(e) = run_round(
            round,
            (runs, threads),
            out,
            executor,
            quiet,
            &bar,
            &finished,
        ) {
            bar.finish_and_clear();
            return Err(e);
        }
    }
    bar.finish_and_clear();
    Ok(progress.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Trains `round`, `runs` at once on `threads` threads each (one at a time on all the caller's
/// threads when `runs` is 1), calling `finished` after each run.
fn run_round(
    round: &[&Job],
    (runs, threads): (usize, usize),
    out: &Path,
    executor: &dyn Executor,
    quiet: bool,
    bar: &indicatif::ProgressBar,
    finished: &(dyn Fn(&Job, &RunRecord) + Sync),
) -> Result<()> {
    if runs == 1 {
        for job in round {
            bar.set_message(format!("{} (seed {})", job.label, job.seed));
            let record = run_one(job, out, executor, quiet)?;
            finished(job, &record);
        }
    } else {
        bar.set_message(format!("{runs} at once, {threads} thread(s) each"));
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..runs {
                scope.spawn(|| {
                    let fail = |e: anyhow::Error| {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    };
                    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
                        Ok(pool) => pool,
                        Err(e) => return fail(anyhow!("cannot start a worker pool: {e}")),
                    };
                    // Stop taking jobs once any has failed; the others finish theirs.
                    while failure.lock().map(|f| f.is_none()).unwrap_or(false) {
                        let Some(job) = round.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        // Inner progress bars of runs side by side would overwrite each other.
                        match pool.install(|| run_one(job, out, executor, true)) {
                            Ok(record) => finished(job, &record),
                            Err(e) => return fail(e),
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
    }
    Ok(())
}

/// Trains one job in its run directory and writes its record.
fn run_one(job: &Job, out: &Path, executor: &dyn Executor, quiet: bool) -> Result<RunRecord> {
    let dir = run_dir(out, job);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::util::write_atomic(&dir.join("job.toml"), job_manifest(job)?.as_bytes())?;
    let record = executor
        .execute(job, &dir, quiet)
        .with_context(|| format!("run '{}' seed {} in {}", job.label, job.seed, dir.display()))?;
    crate::util::write_atomic(&dir.join(RESULT_FILE), &serde_json::to_vec_pretty(&record)?)?;
    Ok(record)
}

/// What produced a run: label, seed, overrides and the resolved config.
fn job_manifest(job: &Job) -> Result<String> {
    Ok(format!(
        "# label: {}\n# seed: {}\n# overrides: {}\n{}",
        job.label,
        job.seed,
        job.overrides.join(" "),
        job.config.to_toml()?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_that_do_not_fill_a_round_come_last_with_more_threads_each() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let plan = |runs, todo| pool.install(|| Workers::new(runs).unwrap().plan(todo));
        assert_eq!(plan(1, 7), vec![(7, 1, 4)]);
        assert_eq!(plan(2, 6), vec![(6, 2, 2)]);
        assert_eq!(plan(2, 7), vec![(6, 2, 2), (1, 1, 4)]);
        assert_eq!(plan(3, 8), vec![(6, 3, 1), (2, 2, 2)]);
        assert_eq!(plan(5, 3), vec![(3, 3, 1)]);
        assert_eq!(plan(8, 9), vec![(8, 8, 1), (1, 1, 4)]);
        assert!(plan(2, 0).is_empty());
    }

    #[test]
    fn without_jobs_cpu_sweeps_train_one_run_per_thread_and_gpu_sweeps_one_at_a_time() {
        let spec = crate::experiments::ExperimentSpec::builtin("sweep-gamma").unwrap();
        let (preset, _) = crate::experiments::spec::preset_text("smoke").unwrap();
        let on = |device: &str| expand(&spec, &preset, &[format!("device={device:?}")], &[], 1);
        let (cpu, gpu) = (on(" CPU").unwrap(), on("cuda").unwrap());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let runs = |requested, jobs: &[Job]| {
            pool.install(|| Workers::for_jobs(requested, jobs).map(|w| w.runs))
        };
        assert_eq!(runs(None, &cpu).unwrap(), 3);
        assert_eq!(runs(None, &gpu).unwrap(), 1);
        // One GPU run among CPU runs keeps the sweep to one at a time.
        let mixed = [cpu[0].clone(), gpu[0].clone()];
        assert_eq!(runs(None, &mixed).unwrap(), 1);
        assert_eq!(runs(Some(2), &gpu).unwrap(), 2);
        assert!(runs(Some(0), &cpu).is_err());
    }
}
