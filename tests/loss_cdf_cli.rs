//! `fl-lab loss-cdf --over-training` end to end: a tiny model trained with snapshots on a one-image
//! COCO dataset, its curves at every checkpoint, and the summaries shared with Figure 4.

mod common;

use common::{fl_lab, fl_lab_ok as ok, write_two_box_dataset as write_dataset};
use std::collections::BTreeMap;

#[test]
fn over_training_draws_every_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let runs = tmp.path().join("runs");
    let source = format!("data.source={}", data.display());
    ok(&[
        "train",
        "--quiet",
        "--config",
        "experiments/tiny.toml",
        "--set",
        &source,
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
        "ot",
        "--snapshots",
        "2,50%",
    ]);
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
        ["iteration", "set", "fraction", "cumulative_loss"]
    );
    for rec in r.records() {
        let rec = rec.unwrap();
        curves
            .entry((rec[0].parse().unwrap(), rec[1].to_string()))
            .or_default()
            .push((rec[2].parse().unwrap(), rec[3].parse().unwrap()));
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
            (rec[0].to_string(), rec[1].to_string(), rec[2].to_string())
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
