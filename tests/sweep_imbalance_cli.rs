//! Drives `fl-lab sweep-imbalance` with the `smoke` preset (tiny datasets, one lr, one CE alpha) and
//! checks the files it writes, that a rerun reuses every run, that shards plus `--collect` cover the
//! same runs, and that bad flags are refused with a message naming them.

mod common;

use common::{fl_lab_quiet as fl_lab, ok};
use std::path::Path;

fn smoke<'a>(data_root: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "sweep-imbalance",
        "--preset",
        "smoke",
        "--data-root",
        data_root,
        "--out",
        out,
        "--lrs",
        "0.01",
        "--ce-alphas",
        "0.5",
    ];
    a.extend_from_slice(extra);
    a
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let mut rows = vec![header];
    for rec in r.records() {
        rows.push(rec.unwrap().iter().map(String::from).collect());
    }
    rows
}

fn column(rows: &[Vec<String>], name: &str) -> Vec<String> {
    let i = rows[0]
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", rows[0]));
    rows[1..].iter().map(|r| r[i].clone()).collect()
}

#[test]
fn smoke_ladder_writes_its_files_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("data");
    let root = root.to_str().unwrap();
    let out = t.path().join("out");
    let out_s = out.to_str().unwrap();
    let stdout = ok(&fl_lab(&smoke(root, out_s, &[])));
    // 4 rungs x (FL at 1 lr + CE at 1 alpha x 1 lr)
    assert!(
        stdout.contains("sweep-imbalance: 8 runs (0 reused, 8 trained"),
        "{stdout}"
    );
    assert!(stdout.contains("crossover"), "{stdout}");

    let results = csv_rows(&out.join("results.csv"));
    assert_eq!(results.len(), 1 + 8);
    for col in [
        "rung",
        "neg_per_pos_binary",
        "loss",
        "alpha",
        "lr",
        "seed",
        "holdout_ap",
        "ap",
        "chosen",
        "diverged",
        "git_revision",
    ] {
        column(&results, col);
    }
    let losses = column(&results, "loss");
    assert_eq!(losses.iter().filter(|l| *l == "FL").count(), 4);
    assert_eq!(losses.iter().filter(|l| *l == "CE").count(), 4);
    // a single setting per loss is always the chosen one
    assert!(column(&results, "chosen").iter().all(|c| c == "true"));

    let summary = csv_rows(&out.join("summary.csv"));
    assert_eq!(summary.len(), 1 + 4);
    let ratios: Vec<f64> = column(&summary, "neg_per_pos_binary")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(ratios.windows(2).all(|w| w[0] <= w[1]), "{ratios:?}");
    assert!(
        ratios[3] / ratios[0] >= 30.0,
        "the default ladder spans less than 30x: {ratios:?}"
    );
    assert_eq!(column(&summary, "fl_lr"), vec!["0.01"; 4]);
    assert_eq!(column(&summary, "ce_alpha"), vec!["0.5"; 4]);
    assert_eq!(column(&summary, "seeds"), vec!["1"; 4]);
    // training uses the 12 tuning images of 16 (4 held out)
    assert_eq!(column(&summary, "images"), vec!["12"; 4]);

    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("## Crossover") && md.contains("| neg:pos binary |"),
        "{md}"
    );
    assert!(md.contains("crossover") || md.contains("overtakes"), "{md}");
    assert!(md.contains("one seed per rung"), "{md}");
    let img = image::open(out.join("imbalance.png")).unwrap();
    assert!(img.width() >= 1200 && img.height() >= 800);
    for run in std::fs::read_dir(out.join("runs")).unwrap() {
        let run = run.unwrap().path();
        assert!(run.join("holdout.json").is_file(), "{}", run.display());
    }

    // a rerun trains nothing
    let again = ok(&fl_lab(&smoke(root, out_s, &[])));
    assert!(again.contains("8 runs (8 reused, 0 trained"), "{again}");

    // two shards, then --collect, cover the same runs
    let sharded = t.path().join("sharded");
    let sh = sharded.to_str().unwrap();
    for s in ["1/2", "2/2"] {
        let o = ok(&fl_lab(&smoke(root, sh, &["--shard", s])));
        assert!(o.contains("4 runs trained"), "{o}");
    }
    assert!(!sharded.join("summary.csv").exists());
    let collected = ok(&fl_lab(&smoke(root, sh, &["--collect"])));
    assert!(
        collected.contains("8 runs (8 collected, 0 not finished)"),
        "{collected}"
    );
    let mut a = column(&results, "config_hash");
    let mut b = column(&csv_rows(&sharded.join("results.csv")), "config_hash");
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn bad_flags_are_refused_with_their_names() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("data");
    let root = root.to_str().unwrap();
    let out = t.path().join("out");
    let out = out.to_str().unwrap();
    for (extra, needle) in [
        (vec!["--seeds", "0"], "--seeds"),
        (vec!["--tune-seeds", "0"], "--tune-seeds"),
        (vec!["--lrs", "0"], "--lrs"),
        (vec!["--lrs", "fast"], "--lrs"),
        (vec!["--ce-alphas", "1.5"], "--ce-alphas"),
        (vec!["--holdout-images", "16"], "holdout"),
        (vec!["--val-images", "0"], "validation image"),
        (vec!["--shard", "3/2"], "--shard"),
        (vec!["--iterations", "0"], "--iterations"),
        (vec!["--preset", "nope"], "--preset"),
        (vec!["--set", "model.widht=1"], "widht"),
        (vec!["--spec", "/nonexistent.toml"], "/nonexistent.toml"),
    ] {
        let o = fl_lab(&smoke(root, out, &extra));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
    // nothing was generated or trained
    assert!(!Path::new(root).exists());
}

/// Two rungs of a small grid (FL and CE, each at two learning rates), for the multi-seed tests.
const TWO_RUNGS: &str = r#"
name = "sweep-imbalance"
title = "two rungs"
fl = { gamma = 2.0, alpha = 0.25 }
ce_alphas = [0.5]
lrs = [0.01, 0.02]
[images.default]
train = 16
holdout = 4
val = 4
[[rungs]]
label = "K 2"
classes = 2
objects = [2, 4]
[[rungs]]
label = "K 8"
classes = 8
objects = [1, 2]
"#;

/// (rung, loss, alpha, lr) of a results.csv row.
fn setting(rows: &[Vec<String>], i: usize) -> Vec<String> {
    ["rung", "loss", "alpha", "lr"]
        .iter()
        .map(|c| column(rows, c)[i].clone())
        .collect()
}

#[test]
fn later_seeds_train_the_settings_seed_0_chose_and_committed_rows_are_reused() {
    let t = tempfile::tempdir().unwrap();
    let spec = t.path().join("two.toml");
    std::fs::write(&spec, TWO_RUNGS).unwrap();
    let spec = spec.to_str().unwrap();
    let root = t.path().join("data");
    let root = root.to_str().unwrap();
    let out = t.path().join("out");
    let out_s = out.to_str().unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "sweep-imbalance",
            "--preset",
            "smoke",
            "--spec",
            spec,
            "--data-root",
            root,
            "--out",
            out,
            "--seeds",
            "3",
        ];
        a.extend_from_slice(extra);
        fl_lab(&a)
    };
    // seed 0: 2 rungs x 4 settings; seeds 1 and 2: the chosen FL and CE setting of each rung
    let stdout = ok(&run(out_s, &[]));
    assert!(
        stdout.contains("sweep-imbalance: 16 runs (0 reused, 16 trained"),
        "{stdout}"
    );
    let rows = csv_rows(&out.join("results.csv"));
    let (seeds, chosen) = (column(&rows, "seed"), column(&rows, "chosen"));
    assert_eq!(rows.len(), 1 + 16);
    assert_eq!(seeds.iter().filter(|s| *s == "0").count(), 8);
    let chosen_at_0: Vec<Vec<String>> = (0..16)
        .filter(|&i| seeds[i] == "0" && chosen[i] == "true")
        .map(|i| setting(&rows, i))
        .collect();
    assert_eq!(chosen_at_0.len(), 4, "one FL and one CE setting per rung");
    for later in ["1", "2"] {
        let mut at: Vec<Vec<String>> = (0..16)
            .filter(|&i| seeds[i] == later)
            .map(|i| setting(&rows, i))
            .collect();
        at.sort();
        let mut want = chosen_at_0.clone();
        want.sort();
        assert_eq!(at, want, "seed {later}");
    }
    let summary = csv_rows(&out.join("summary.csv"));
    assert_eq!(column(&summary, "seeds"), vec!["3"; 2]);
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("over seed 0, which trained the whole grid"),
        "{md}"
    );

    // A committed table without its run folders: with --reuse-recorded (announced first) nothing
    // is trained again and the table survives.
    std::fs::remove_dir_all(out.join("runs")).unwrap();
    let again = ok(&run(out_s, &["--reuse-recorded"]));
    assert!(
        again.starts_with("--reuse-recorded: the 16 runs recorded in"),
        "{again}"
    );
    assert!(again.contains("16 runs (16 reused, 0 trained"), "{again}");
    // --collect trains nothing and says so.
    let collected = ok(&run(out_s, &["--reuse-recorded", "--collect"]));
    assert!(
        collected.contains("count as finished and are collected")
            && !collected.contains("only the others are trained"),
        "{collected}"
    );
    let back = csv_rows(&out.join("results.csv"));
    for col in ["config_hash", "seed", "holdout_ap", "ap", "chosen"] {
        assert_eq!(column(&back, col), column(&rows, col), "{col}");
    }
    // --tune-seeds 2: seed 1 must now train the rest of the grid too
    let more = ok(&run(out_s, &["--reuse-recorded", "--tune-seeds", "2"]));
    assert!(more.contains("20 runs (16 reused, 4 trained"), "{more}");

    // Shards started one after the other: the first finds the grid unfinished and says so; once the
    // other has finished it, a rerun trains the rest, and together they cover the same runs.
    let sharded = t.path().join("sharded");
    let sh = sharded.to_str().unwrap();
    let first = ok(&run(sh, &["--shard", "1/2"]));
    assert!(
        first.contains("4 runs trained") && first.contains("wait for rungs"),
        "{first}"
    );
    let second = ok(&run(sh, &["--shard", "2/2"]));
    assert!(
        second.contains("8 runs trained") && !second.contains("wait for rungs"),
        "{second}"
    );
    let rerun = ok(&run(sh, &["--shard", "1/2"]));
    assert!(rerun.contains("4 runs trained"), "{rerun}");
    ok(&run(sh, &["--collect"]));
    let mut a = column(&rows, "config_hash");
    let mut b = column(&csv_rows(&sharded.join("results.csv")), "config_hash");
    a.sort();
    b.sort();
    assert_eq!(a, b);
}
