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
    /// Runs trained at once, each on its share of the cores; runs that do not fill a round train last, on more cores each. Default: one per core on the CPU (one at a time on a GPU), which trains more steps per hour than fewer runs spread over the cores (README, Speed); a run's numbers differ between the two only by float rounding.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Build the tables and figures from whatever runs exist in --out, training nothing.
    #[arg(long)]
    pub collect: bool,
    /// Use this experiment spec instead of the built-in one.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Count the runs recorded in <out>/results.csv as finished, training only the others (to spread a sweep over several sessions, e.g. with --out plots/<experiment>).
    #[arg(long)]
    pub reuse_recorded: bool,
    /// Another experiment's results folder (or results.csv) whose runs of the same configuration and seed count as finished, their rows taken into this table: Table 1's shared baseline (FL in 1b, 1c and 1d) is then trained once, e.g. `anchors --reuse-from plots/sweep-gamma`. Repeatable; not for sweep-imbalance.
    #[arg(long, value_name = "DIR", value_delimiter = ',')]
    pub reuse_from: Vec<PathBuf>,
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

    /// The `results.csv` of each `--reuse-from` folder (a file is taken as it is).
    pub fn reuse_from_tables(&self) -> Vec<PathBuf> {
        self.reuse_from
            .iter()
            .map(|p| {
                if p.is_dir() {
                    p.join("results.csv")
                } else {
                    p.clone()
                }
            })
            .collect()
    }

    /// With `--reuse-recorded`, says first how many recorded runs count as finished.
    pub fn announce_reuse(&self, out: &Path) -> Result<()> {
        if self.reuse_recorded {
            let table = out.join("results.csv");
            let recorded = crate::experiments::collect::earlier_records(&table)?;
            // --collect trains nothing, so it only says which rows it counts.
            let others = if self.collect {
                " and are collected with the finished run folders"
            } else {
                "; only the others are trained"
            };
            println!(
                "--reuse-recorded: the {} runs recorded in {} count as finished{others}",
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

/// Runs an experiment and writes its tables, figures and summary into `opts.out` (when the whole
/// sweep is local or `--collect` is given).
pub fn run_and_report(
    name: &str,
    opts: &SweepOptions,
    executor: &dyn crate::experiments::runner::Executor,
    quiet: bool,
) -> Result<crate::experiments::SweepOutcome> {
    let outcome = run_experiment(name, opts, executor, quiet)?;
    if let Some(c) = &outcome.collected {
        crate::report::sweep::write_all(&outcome.spec, c, &opts.out, &outcome.note)?;
    }
    Ok(outcome)
}

/// The top-level entry point for the sweep commands of Table 1 and `schedule`; `name` selects the experiment.
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
        reuse_from: flags.reuse_from_tables(),
    };
    let outcome = run_and_report(name, &opts, &TrainAndEvaluate, quiet)?;
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
                    "committed AP: the same configurations in {}, over every seed it holds (– where it has none)",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::collect::Row;
    use crate::experiments::runner::{Executor, Job, RunRecord, Workers};
    use std::sync::Mutex;

    /// Pretends to train: AP is a function of the config, so the test knows the right answer.
    struct Fake {
        calls: Mutex<Vec<String>>,
        fail_on: Option<String>,
        /// Each run's label and the threads it trained on.
        threads: Mutex<Vec<(String, usize)>>,
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
            self.threads
                .lock()
                .unwrap()
                .push((job.label.clone(), rayon::current_num_threads()));
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
                threads: None,
                same_as: None,
            })
        }
    }

    fn fake() -> Fake {
        Fake {
            calls: Mutex::new(Vec::new()),
            fail_on: None,
            threads: Mutex::new(Vec::new()),
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
            jobs: Some(1),
            reuse_recorded: false,
            reuse_from: vec![],
            reference: None,
        }
    }

    #[test]
    fn reuse_from_takes_the_shared_configurations_from_another_table() {
        let dir = tempfile::tempdir().unwrap();
        let (gamma_dir, anchors_dir) = (dir.path().join("sg"), dir.path().join("anchors"));
        let gamma = run_and_report("sweep-gamma", &opts(&gamma_dir), &fake(), true).unwrap();
        // As in a fresh clone: the committed table without its run folders.
        std::fs::remove_dir_all(gamma_dir.join("runs")).unwrap();
        let table = gamma_dir.join("results.csv");
        let o = SweepOptions {
            reuse_from: vec![table.clone()],
            ..opts(&anchors_dir)
        };
        let f = fake();
        let anchors = run_and_report("anchors", &o, &f, true).unwrap();
        // FL with the default anchors is sweep-gamma's gamma 2 row: not trained again, two seeds.
        let c = anchors.collected.unwrap();
        assert_eq!(c.borrowed, 2, "{:?}", f.calls);
        assert_eq!(anchors.progress.trained, anchors.jobs - 2);
        let calls = f.calls.lock().unwrap();
        assert!(
            !calls.iter().any(|c| c.starts_with("3 scales, 3 ratios")),
            "{calls:?}"
        );
        let gamma_rows = std::fs::read_to_string(&table).unwrap();
        let shared: Vec<&Row> = c
            .rows
            .iter()
            .filter(|r| r.job.label == "3 scales, 3 ratios")
            .collect();
        assert_eq!(shared.len(), 2);
        for r in shared {
            assert!(
                gamma_rows.contains(&r.job.hash),
                "{} not in sweep-gamma's table",
                r.job.hash
            );
        }
        let md = std::fs::read_to_string(anchors_dir.join("summary.md")).unwrap();
        assert!(
            md.contains("2 of them are runs of the same configuration"),
            "{md}"
        );
        assert!(gamma.jobs > 0);

        // A table that is not there is an error naming it, before anything trains.
        let missing = SweepOptions {
            reuse_from: vec![dir.path().join("nowhere/results.csv")],
            ..opts(&anchors_dir)
        };
        let f = fake();
        let err = run_and_report("anchors", &missing, &f, true).unwrap_err();
        assert!(format!("{err:#}").contains("nowhere"), "{err:#}");
        assert!(f.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn one_seed_gives_a_direction_but_no_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            seeds: 1,
            ..opts(dir.path())
        };
        let c = run_and_report("sweep-gamma", &o, &fake(), true)
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
            fail_on: Some("gamma 1, alpha .25".into()),
            ..fake()
        };
        assert!(run_and_report("sweep-gamma", &o, &failing, true).is_err());
        let done_before = failing.calls.lock().unwrap().len();
        assert!(done_before > 0);
        let f = fake();
        let outcome = run_and_report("sweep-gamma", &o, &f, true).unwrap();
        assert_eq!(outcome.progress.reused, done_before);
        assert_eq!(outcome.progress.trained, outcome.jobs - done_before);
        let again = run_and_report("sweep-gamma", &o, &fake(), true).unwrap();
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
        run_and_report("sweep-gamma", &opts(whole.path()), &fake(), true).unwrap();
        let split = tempfile::tempdir().unwrap();
        let mut o = opts(split.path());
        for i in 0..3 {
            o.shard = Shard { index: i, count: 3 };
            let out = run_and_report("sweep-gamma", &o, &fake(), true).unwrap();
            assert!(out.collected.is_none());
        }
        o.shard = Shard::ALL;
        o.collect_only = true;
        run_and_report("sweep-gamma", &o, &fake(), true).unwrap();
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
        let out = run_and_report("sweep-gamma", &opts(dir.path()), &fake(), true).unwrap();
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
        run_and_report("sweep-gamma", &o, &fake(), true).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let (results, summary) = (read("results.csv"), read("summary.csv"));
        // A fresh clone of a results folder: the tables are committed, the run folders are not.
        std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
        o.collect_only = true;
        let out = run_and_report("sweep-gamma", &o, &fake(), true).unwrap();
        let c = out.collected.unwrap();
        assert_eq!((c.kept, c.missing, c.rows.len()), (out.jobs, 0, out.jobs));
        assert_eq!(read("results.csv"), results);
        assert_eq!(read("summary.csv"), summary);
        assert!(
            read("summary.md").contains(&format!("{} of them are rows of the earlier", out.jobs))
        );

        // A damaged table is an error that names it, and it is left as it was.
        std::fs::write(dir.path().join("results.csv"), "config_hash,seed\nabc,x\n").unwrap();
        let err = run_and_report("sweep-gamma", &o, &fake(), true).unwrap_err();
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
        let first = run_and_report("sweep-gamma", &o, &fake(), true).unwrap();
        let seed0 = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        // As in a fresh clone: the table of seed 0 is committed, its run folders are not.
        std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
        o.seeds = 2;
        let f = fake();
        let out = run_and_report("sweep-gamma", &o, &f, true).unwrap();
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
        let out = run_and_report("sweep-gamma", &three, &fake(), true).unwrap();
        std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
        let committed = read("results.csv");

        // The default: one seed is trained again (not reused), and seeds 1 and 2 stay in the table.
        let one = SweepOptions {
            seeds: 1,
            ..opts(dir.path())
        };
        let f = fake();
        let again = run_and_report("sweep-gamma", &one, &f, true).unwrap();
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
        let c = run_and_report("sweep-gamma", &other, &fake(), true)
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
        let r = run_and_report("sweep-gamma", &reuse, &fake(), true).unwrap();
        assert_eq!((r.progress.trained, r.progress.reused), (0, out.jobs));
    }

    #[test]
    fn the_committed_reference_stands_beside_our_table() {
        let reference = tempfile::tempdir().unwrap();
        let two = opts(reference.path());
        run_and_report("sweep-gamma", &two, &fake(), true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            seeds: 1,
            reference: Some(reference.path().join("results.csv")),
            ..opts(dir.path())
        };
        let c = run_and_report("sweep-gamma", &o, &fake(), true)
            .unwrap()
            .collected
            .unwrap();
        // Matched by hash and seed, over every seed the reference holds (two), whatever this ran.
        let (stat, n) = c.summaries[0].reference.unwrap();
        assert_eq!(n, 2);
        assert!(
            (stat.mean - c.summaries[0].ap.mean - 0.0005).abs() < 1e-12,
            "{stat:?}"
        );
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
        let e = run_and_report("sweep-gamma", &o, &fake(), true).unwrap_err();
        assert!(
            format!("{e:#}").contains("--alphas lists 0.25 twice"),
            "{e:#}"
        );
        // sweep-alpha's variants differ only in alpha: --alphas collapses them into one.
        let o = SweepOptions {
            alphas: vec![0.5],
            ..opts(dir.path())
        };
        let e = run_and_report("sweep-alpha", &o, &fake(), true).unwrap_err();
        assert!(
            format!("{e:#}").contains("resolve to the same configuration"),
            "{e:#}"
        );
        assert!(!dir.path().join("runs").exists());
    }

    #[test]
    fn runs_side_by_side_give_the_tables_of_one_at_a_time() {
        let serial = tempfile::tempdir().unwrap();
        run_and_report("sweep-gamma", &opts(serial.path()), &fake(), true).unwrap();
        let side = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            jobs: Some(3),
            ..opts(side.path())
        };
        let f = fake();
        let out = run_and_report("sweep-gamma", &o, &f, true).unwrap();
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
    fn a_run_left_over_from_the_rounds_side_by_side_trains_on_every_thread() {
        // Seven runs, two at a time on a 4-thread budget: three rounds of two on 2 threads each,
        // then the seventh alone on all 4.
        let dir = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            jobs: Some(2),
            seeds: 1,
            ..opts(dir.path())
        };
        let f = fake();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let out = pool
            .install(|| run_and_report("sweep-gamma", &o, &f, true))
            .unwrap();
        assert_eq!(out.progress.trained, 7);
        let threads = f.threads.lock().unwrap().clone();
        let counts: Vec<usize> = threads.iter().map(|(_, t)| *t).collect();
        assert_eq!(counts[..6], [2; 6], "{threads:?}");
        assert_eq!(counts[6], 4, "{threads:?}");
        assert_eq!(threads[6].0, "gamma 5, alpha .25", "the last run in order");
    }

    #[test]
    fn a_failing_run_side_by_side_stops_the_sweep_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let o = SweepOptions {
            jobs: Some(2),
            ..opts(dir.path())
        };
        let failing = Fake {
            fail_on: Some("gamma 1, alpha .25".into()),
            ..fake()
        };
        let err = run_and_report("sweep-gamma", &o, &failing, true).unwrap_err();
        assert!(format!("{err:#}").contains("gamma 1, alpha .25"), "{err:#}");
        let done = failing.calls.lock().unwrap().len();
        let again = run_and_report("sweep-gamma", &o, &fake(), true).unwrap();
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
