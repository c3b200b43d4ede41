//! Sweep experiments (the paper's Table 1): run the configurations of a spec, reuse finished runs,
//! collect rows and hand them to `report::sweep`.

pub mod collect;
pub mod executor;
pub mod imbalance;
pub mod runner;
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
    /// Runs trained at once (`--jobs`).
    pub jobs: usize,
    /// Count the runs recorded in `<out>/results.csv` as finished (`--reuse-recorded`), for a
    /// sweep spread over several sessions whose run folders are gone.
    pub reuse_recorded: bool,
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
}

/// Runs (this shard of) an experiment and, when the whole sweep is local or `collect_only` is set,
/// writes its tables, figures and summary into `opts.out`.
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
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let mut progress = runner::SweepProgress::default();
    if !opts.collect_only {
        let mine = opts.shard.take(jobs.clone());
        // Only on request is a run kept as a row of the table (its folder gone) not trained again:
        // a newcomer's first sweep trains, and its table stands beside the committed one.
        let recorded = if opts.reuse_recorded {
            collect::earlier_records(&opts.out.join("results.csv"))?
                .into_keys()
                .collect()
        } else {
            Default::default()
        };
        let workers = Workers::new(opts.jobs)?;
        progress = run_jobs(&mine, &opts.out, &recorded, executor, workers, quiet)?;
    }
    let collected = if opts.collect_only || opts.shard.count == 1 {
        let reference = opts.reference.as_deref().filter(|r| r.exists());
        let c = collect::collect(&spec, &jobs, &opts.out, reference)?;
        let note = context_note(&preset_origin, opts);
        crate::report::sweep::write_all(&spec, &c, &opts.out, &note)?;
        Some(c)
    } else {
        None
    };
    Ok(SweepOutcome {
        jobs: jobs.len(),
        progress,
        collected,
    })
}

fn context_note(preset_origin: &str, opts: &SweepOptions) -> String {
    let mut note = format!("Trained with {preset_origin}");
    if !opts.overrides.is_empty() {
        note += &format!("; overrides: `{}`", opts.overrides.join(" "));
    }
    note + &match opts.seeds {
        1 => "; seed 0.".to_string(),
        n => format!("; seeds 0-{}.", n - 1),
    }
}

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

#[cfg(test)]
mod tests {
    use super::runner::{Job, RunRecord};
    use super::*;
    use std::sync::Mutex;

    /// Pretends to train: AP is a function of the config, so the test knows the right answer.
    struct Fake {
        calls: Mutex<Vec<String>>,
        fail_on: Option<String>,
    }

    impl Executor for Fake {
        fn execute(&self, job: &Job, _dir: &Path, _quiet: bool) -> Result<RunRecord> {
            if self.fail_on.as_deref() == Some(job.label.as_str()) {
                anyhow::bail!("killed");
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("{}#{}", job.label, job.seed));
            let g = job.config.loss.gamma;
            let ap = 0.30 + 0.01 * g - 0.002 * g * g + 0.001 * job.seed as f64;
            Ok(RunRecord {
                ap,
                ap50: ap + 0.2,
                ap75: ap,
                aps: 0.1,
                apm: 0.2,
                apl: 0.3,
                final_loss_cls: 0.1,
                final_loss_box: 0.2,
                positives_per_image: 12.0,
                iterations: 10,
                wall_seconds: 1.0,
                diverged: false,
                device: "cpu".into(),
                version: "test".into(),
                git_revision: "test".into(),
            })
        }
    }

    fn fake() -> Fake {
        Fake {
            calls: Mutex::new(Vec::new()),
            fail_on: None,
        }
    }

    fn opts(out: &Path) -> SweepOptions {
        SweepOptions {
            spec: None,
            preset: "smoke".into(),
            seeds: 2,
            overrides: vec![],
            alphas: vec![],
            shard: Shard::ALL,
            collect_only: false,
            out: out.to_path_buf(),
            jobs: 1,
            reuse_recorded: false,
            reference: None,
        }
    }

    #[test]
    fn one_seed_gives_a_direction_but_no_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            seeds: 1,
            ..opts(dir.path())
        };
        let c = run_experiment("sweep-gamma", &o, &fake(), true)
            .unwrap()
            .collected
            .unwrap();
        let beats: Vec<_> = c
            .verdicts
            .iter()
            .filter(|v| v.ours.contains(" vs "))
            .collect();
        assert!(!beats.is_empty(), "{:?}", c.verdicts);
        for v in beats {
            assert_eq!(v.reproduced, None, "{v:?}");
            assert!(v.ours.contains("run --seeds 3"), "{v:?}");
        }
    }

    #[test]
    fn finished_runs_are_reused_and_failed_ones_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let failing = Fake {
            calls: Mutex::new(Vec::new()),
            fail_on: Some("gamma 1, alpha .25".into()),
        };
        assert!(run_experiment("sweep-gamma", &o, &failing, true).is_err());
        let done_before = failing.calls.lock().unwrap().len();
        assert!(done_before > 0);
        let f = fake();
        let outcome = run_experiment("sweep-gamma", &o, &f, true).unwrap();
        assert_eq!(outcome.progress.reused, done_before);
        assert_eq!(outcome.progress.trained, outcome.jobs - done_before);
        let again = run_experiment("sweep-gamma", &o, &fake(), true).unwrap();
        assert_eq!(again.progress.trained, 0);
        let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        assert!(
            summary.contains("| gamma 2, alpha .25 | 34.0 |"),
            "{summary}"
        );
    }

    #[test]
    fn shards_then_collect_equal_one_unsharded_run() {
        let whole = tempfile::tempdir().unwrap();
        run_experiment("sweep-gamma", &opts(whole.path()), &fake(), true).unwrap();
        let split = tempfile::tempdir().unwrap();
        let mut o = opts(split.path());
        for i in 0..3 {
            o.shard = Shard { index: i, count: 3 };
            let out = run_experiment("sweep-gamma", &o, &fake(), true).unwrap();
            assert!(out.collected.is_none());
        }
        o.shard = Shard::ALL;
        o.collect_only = true;
        run_experiment("sweep-gamma", &o, &fake(), true).unwrap();
        for f in ["results.csv", "summary.csv"] {
            assert_eq!(
                std::fs::read_to_string(whole.path().join(f)).unwrap(),
                std::fs::read_to_string(split.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }

    #[test]
    fn findings_follow_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_experiment("sweep-gamma", &opts(dir.path()), &fake(), true).unwrap();
        let c = out.collected.unwrap();
        // fake AP peaks at gamma 2.5: gamma 2 beats gamma 0 by 0.012 with a seed std of 0.0007
        assert!(
            c.verdicts.iter().any(|v| v.reproduced == Some(true)),
            "{:?}",
            c.verdicts
        );
        let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        assert!(csv.lines().next().unwrap().contains("loss.gamma"));
        assert_eq!(csv.lines().count(), 1 + out.jobs);
    }

    #[test]
    fn collect_keeps_the_rows_of_runs_whose_folders_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        run_experiment("sweep-gamma", &o, &fake(), true).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let (results, summary) = (read("results.csv"), read("summary.csv"));
        // A fresh clone of a results folder: the tables are committed, the run folders are not.
        std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
        o.collect_only = true;
        let out = run_experiment("sweep-gamma", &o, &fake(), true).unwrap();
        let c = out.collected.unwrap();
        assert_eq!((c.kept, c.missing, c.rows.len()), (out.jobs, 0, out.jobs));
        assert_eq!(read("results.csv"), results);
        assert_eq!(read("summary.csv"), summary);
        assert!(
            read("summary.md").contains(&format!("{} of them are rows of the earlier", out.jobs))
        );

        // A damaged table is an error that names it, and it is left as it was.
        std::fs::write(dir.path().join("results.csv"), "config_hash,seed\nabc,x\n").unwrap();
        let err = run_experiment("sweep-gamma", &o, &fake(), true).unwrap_err();
        assert!(format!("{err:#}").contains("results.csv"), "{err:#}");
        assert_eq!(read("results.csv"), "config_hash,seed\nabc,x\n");
    }

    #[test]
    fn more_seeds_train_only_the_runs_the_table_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = SweepOptions {
            seeds: 1,
            reuse_recorded: true,
            ..opts(dir.path())
        };
        let first = run_experiment("sweep-gamma", &o, &fake(), true).unwrap();
        let seed0 = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        // As in a fresh clone: the table of seed 0 is committed, its run folders are not.
        std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
        o.seeds = 2;
        let f = fake();
        let out = run_experiment("sweep-gamma", &o, &f, true).unwrap();
        assert_eq!(out.progress.trained, first.jobs);
        assert!(
            f.calls.lock().unwrap().iter().all(|c| c.ends_with("#1")),
            "{:?}",
            f.calls
        );
        let results = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        assert_eq!(results.lines().count(), 1 + 2 * first.jobs);
        for row in seed0.lines().skip(1) {
            assert!(results.contains(row), "seed-0 row lost: {row}");
        }
    }

    #[test]
    fn a_sweep_trains_unless_asked_to_reuse_and_never_drops_rows_it_did_not_produce() {
        let dir = tempfile::tempdir().unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        // A committed three-seed table, without its run folders (a fresh clone).
        let three = SweepOptions {
            seeds: 3,
            ..opts(dir.path())
        };
        let out = run_experiment("sweep-gamma", &three, &fake(), true).unwrap();
        std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
        let committed = read("results.csv");

        // The default: one seed is trained again (not reused), and seeds 1 and 2 stay in the table.
        let one = SweepOptions {
            seeds: 1,
            ..opts(dir.path())
        };
        let f = fake();
        let again = run_experiment("sweep-gamma", &one, &f, true).unwrap();
        assert_eq!((again.progress.trained, again.progress.reused), (7, 0));
        assert_eq!(read("results.csv"), committed, "same runs, same rows");
        let summary = read("summary.md");
        assert!(
            summary.contains(&format!(
                "`results.csv` holds {} rows, 14 of them",
                out.jobs
            )),
            "{summary}"
        );

        // Rows of another preset are kept in results.csv but never enter this table.
        let cpu_rows = committed.lines().count();
        let other = SweepOptions {
            preset: "cpu".into(),
            seeds: 1,
            ..opts(dir.path())
        };
        let c = run_experiment("sweep-gamma", &other, &fake(), true)
            .unwrap()
            .collected
            .unwrap();
        assert_eq!(c.rows.len(), 7);
        assert!(c.summaries.iter().all(|s| s.runs == 1));
        let results = read("results.csv");
        assert_eq!(results.lines().count(), cpu_rows + 7);
        for row in committed.lines().skip(1) {
            assert!(results.contains(row), "row lost or altered: {row}");
        }

        // --reuse-recorded trains nothing that the table holds.
        let reuse = SweepOptions {
            reuse_recorded: true,
            ..three
        };
        std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
        let r = run_experiment("sweep-gamma", &reuse, &fake(), true).unwrap();
        assert_eq!((r.progress.trained, r.progress.reused), (0, out.jobs));
    }

    #[test]
    fn the_committed_reference_stands_beside_our_table() {
        let reference = tempfile::tempdir().unwrap();
        let two = opts(reference.path());
        run_experiment("sweep-gamma", &two, &fake(), true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            seeds: 1,
            reference: Some(reference.path().join("results.csv")),
            ..opts(dir.path())
        };
        let c = run_experiment("sweep-gamma", &o, &fake(), true)
            .unwrap()
            .collected
            .unwrap();
        // Matched by hash and seed: seed 0 of the reference only.
        let (stat, n) = c.summaries[0].reference.unwrap();
        assert_eq!((n, stat.mean), (1, c.summaries[0].ap.mean));
        let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        assert!(summary.contains("committed AP (runs)"), "{summary}");
    }

    #[test]
    fn duplicate_configurations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            alphas: vec![0.25, 0.25],
            ..opts(dir.path())
        };
        let e = run_experiment("sweep-gamma", &o, &fake(), true).unwrap_err();
        assert!(
            format!("{e:#}").contains("--alphas lists 0.25 twice"),
            "{e:#}"
        );
        // sweep-alpha's variants differ only in alpha: --alphas collapses them into one.
        let o = SweepOptions {
            alphas: vec![0.5],
            ..opts(dir.path())
        };
        let e = run_experiment("sweep-alpha", &o, &fake(), true).unwrap_err();
        assert!(
            format!("{e:#}").contains("resolve to the same configuration"),
            "{e:#}"
        );
        assert!(!dir.path().join("runs").exists());
    }

    #[test]
    fn runs_side_by_side_give_the_tables_of_one_at_a_time() {
        let serial = tempfile::tempdir().unwrap();
        run_experiment("sweep-gamma", &opts(serial.path()), &fake(), true).unwrap();
        let side = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            jobs: 3,
            ..opts(side.path())
        };
        let f = fake();
        let out = run_experiment("sweep-gamma", &o, &f, true).unwrap();
        let mut calls = f.calls.lock().unwrap().clone();
        let n = calls.len();
        calls.dedup();
        assert_eq!(
            (n, calls.len(), out.progress.trained),
            (out.jobs, n, out.jobs)
        );
        for file in ["results.csv", "summary.csv"] {
            assert_eq!(
                std::fs::read_to_string(serial.path().join(file)).unwrap(),
                std::fs::read_to_string(side.path().join(file)).unwrap(),
                "{file}"
            );
        }
    }

    #[test]
    fn a_failing_run_side_by_side_stops_the_sweep_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            jobs: 2,
            ..opts(dir.path())
        };
        let failing = Fake {
            calls: Mutex::new(Vec::new()),
            fail_on: Some("gamma 1, alpha .25".into()),
        };
        let err = run_experiment("sweep-gamma", &o, &failing, true).unwrap_err();
        assert!(format!("{err:#}").contains("gamma 1, alpha .25"), "{err:#}");
        let done = failing.calls.lock().unwrap().len();
        let again = run_experiment("sweep-gamma", &o, &fake(), true).unwrap();
        assert_eq!(again.progress.reused, done);
        assert_eq!(again.progress.trained, again.jobs - done);
        assert!(Workers::new(0).is_err());
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 1, count: 4 });
        for bad in ["0/4", "5/4", "x", "1/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
