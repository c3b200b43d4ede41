//! `fl-lab loss-cdf --over-training` end to end: a tiny model trained with snapshots on a one-image
//! COCO dataset, its curves at every checkpoint, and the summaries shared with Figure 4.

mod common;

use common::{fl_lab, fl_lab_ok as ok, write_two_box_dataset as write_dataset};
use std::collections::BTreeMap;

/// Trains the tiny preset for 6 iterations with snapshots at 2 and 3 into `runs/name`.
fn train_tiny(data: &std::path::Path, runs: &std::path::Path, name: &str, seed: u64) {
    let source = format!("data.source={}", data.display());
    let seed = format!("seed={seed}");
    ok(&[
        "train",
        "--quiet",
        "--config",
        "experiments/tiny.toml",
        "--set",
        &source,
        "--set",
        &seed,
        "--set",
        "loss.gamma=1.5",
        "--set",
        "schedule.iterations=6",
        "--set",
        "schedule.warmup_iters=2",
        "--set",
        "schedule.steps=[5]",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        name,
        "--snapshots",
        "2,50%",
    ]);
}

#[test]
fn over_training_draws_every_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let runs = tmp.path().join("runs");
    train_tiny(&data, &runs, "ot", 0);
    let run = runs.join("ot");
    let out_dir = tmp.path().join("cdf");
    let out = out_dir.to_str().unwrap();
    let stdout = ok(&[
        "loss-cdf",
        "--quiet",
        "--run",
        run.to_str().unwrap(),
        "--over-training",
        "--points",
        "50",
        "--out",
        out,
    ]);
    assert!(String::from_utf8_lossy(&stdout.stdout).contains("iteration 3 (50%)"));
    for f in [
        "over_training.csv",
        "over_training.png",
        "summary.csv",
        "summary.md",
    ] {
        assert!(out_dir.join(f).is_file(), "missing {f}");
    }

    // over_training.csv: one curve per (checkpoint, set), monotone, from (0, 0) to (1, 1)
    let mut curves: BTreeMap<(usize, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut r = csv::Reader::from_path(out_dir.join("over_training.csv")).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "model",
            "seed",
            "iteration",
            "set",
            "fraction",
            "cumulative_loss"
        ]
    );
    for rec in r.records() {
        let rec = rec.unwrap();
        assert_eq!((&rec[0], &rec[1]), (run.to_str().unwrap(), "0"));
        curves
            .entry((rec[2].parse().unwrap(), rec[3].to_string()))
            .or_default()
            .push((rec[4].parse().unwrap(), rec[5].parse().unwrap()));
    }
    let keys: Vec<(usize, &str)> = curves.keys().map(|(i, s)| (*i, s.as_str())).collect();
    assert_eq!(
        keys,
        [
            (2, "negative"),
            (2, "positive"),
            (3, "negative"),
            (3, "positive"),
            (6, "negative"),
            (6, "positive")
        ]
    );
    for (key, pts) in &curves {
        assert_eq!(pts.first(), Some(&(0.0, 0.0)), "{key:?}");
        assert_eq!(pts.last(), Some(&(1.0, 1.0)), "{key:?}");
        for w in pts.windows(2) {
            assert!(w[1].0 > w[0].0 && w[1].1 >= w[0].1, "{key:?}: {w:?}");
        }
    }

    // Figure 4 into the same directory keeps the checkpoints' summary rows and section.
    ok(&[
        "loss-cdf",
        "--quiet",
        "--run",
        run.to_str().unwrap(),
        "--gammas",
        "0,2",
        "--out",
        out,
    ]);
    let mut r = csv::Reader::from_path(out_dir.join("summary.csv")).unwrap();
    let rows: Vec<(String, String, String)> = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), rec[3].to_string(), rec[4].to_string())
        })
        .collect();
    let figure4: Vec<_> = rows.iter().filter(|r| r.0 == "figure4").collect();
    let over: Vec<_> = rows.iter().filter(|r| r.0 == "over-training").collect();
    assert_eq!(figure4.len(), 4);
    assert_eq!(over.len(), 6);
    assert!(over.iter().all(|r| r.2 == "1.5"), "{over:?}");
    let md = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(
        md.contains("Figure 4") && md.contains("iteration 6 (100%)"),
        "{md}"
    );
    // The project's reading of the figure beside ours, both bounds.
    assert!(
        md.contains("## Figure 4 read off the plot")
            && md.contains("more than 60% of the positive loss")
            && md.contains("more than 95% of the negative loss"),
        "{md}"
    );

    // Without snapshots the user is told how to get them.
    for f in ["snapshot-2.safetensors", "snapshot-3.safetensors"] {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    let out = fl_lab(&[
        "loss-cdf",
        "--run",
        run.to_str().unwrap(),
        "--over-training",
        "--out",
        out,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--snapshots"), "{err}");
}

/// Several runs (seeds of one setting): every model's rows, their spread and the statements model
/// by model; the figure and the over-training curves draw the first.
#[test]
fn several_runs_give_their_spread() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let runs = tmp.path().join("runs");
    train_tiny(&data, &runs, "s0", 0);
    train_tiny(&data, &runs, "s1", 1);
    let both = format!(
        "{},{}",
        runs.join("s0").display(),
        runs.join("s1").display()
    );
    let out_dir = tmp.path().join("cdf");
    let out = out_dir.to_str().unwrap();
    let stdout = ok(&[
        "loss-cdf", "--quiet", "--run", &both, "--gammas", "0,2", "--points", "50", "--out", out,
    ]);
    let stdout = String::from_utf8_lossy(&stdout.stdout);
    assert!(stdout.contains("s0") && stdout.contains("s1"), "{stdout}");
    let mut r = csv::Reader::from_path(out_dir.join("summary.csv")).unwrap();
    let seeds: Vec<String> = r.records().map(|rec| rec.unwrap()[2].to_string()).collect();
    assert_eq!(seeds, ["0", "0", "0", "0", "1", "1", "1", "1"]);
    let md = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(md.contains("## Across the models"), "{md}");
    assert!(md.contains(" ± "), "{md}");
    assert!(md.contains("of 2 models"), "{md}");
    assert!(md.contains("(seed 1)"), "{md}");

    ok(&[
        "loss-cdf",
        "--quiet",
        "--run",
        &both,
        "--over-training",
        "--points",
        "50",
        "--out",
        out,
    ]);
    let md = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(
        md.contains("## Across the models")
            && md.contains(
                "Mean ± sample standard deviation over the 2 models, checkpoint by checkpoint"
            ),
        "the Figure 4 part is kept beside the checkpoints: {md}"
    );
    let mut r = csv::Reader::from_path(out_dir.join("over_training.csv")).unwrap();
    let models: std::collections::BTreeSet<String> =
        r.records().map(|rec| rec.unwrap()[1].to_string()).collect();
    assert_eq!(models.into_iter().collect::<Vec<_>>(), ["0", "1"]);

    // --seeds is for the default model only, and at least one.
    for args in [
        vec!["loss-cdf", "--run", &both, "--seeds", "2", "--out", out],
        vec!["loss-cdf", "--seeds", "0", "--out", out],
    ] {
        let o = fl_lab(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--seeds"), "{err}");
    }
}
