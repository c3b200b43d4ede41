//! `fl-lab train` end to end on the tiny preset with random data.

use std::process::Command;

fn fl_lab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn train_writes_a_run_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().to_str().unwrap();
    let base = [
        "train",
        "--quiet",
        "--config",
        "experiments/tiny.toml",
        "--set",
        "data.source=random",
        "--set",
        "schedule.iterations=4",
        "--set",
        "train.checkpoint_every=2",
        "--runs-dir",
        runs,
        "--name",
        "smoke",
    ];
    let mut first = base.to_vec();
    first.extend(["--stop-after", "3"]);
    let out = fl_lab(&first);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stopped"), "{stdout}");

    let mut again = base.to_vec();
    again.push("--resume");
    let out = fl_lab(&again);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("finished"));
    let run = dir.path().join("smoke");
    for f in [
        "config.toml",
        "metrics.csv",
        "loss.png",
        "checkpoint.json",
        "model.safetensors",
        "model.toml",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "iteration,lr,loss_cls,loss_box,positives,seconds,loss_share_pos,loss_share_hard_neg,\
         loss_share_easy_neg,grad_share_pos,grad_share_hard_neg,grad_share_easy_neg"
    );
    // the shares of positives, hard and easy negatives sum to one, in loss and in gradient
    for line in &lines[1..] {
        let v: Vec<f64> = line
            .split(',')
            .skip(6)
            .map(|x| x.parse().unwrap())
            .collect();
        for shares in [&v[0..3], &v[3..6]] {
            assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)), "{line}");
            assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{line}");
        }
    }
    let iters: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(iters, ["0", "1", "2", "3"]);
}

#[test]
fn bad_configs_fail_with_the_key_named() {
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "schedule.lr=-0.01"], "schedule.lr"),
        (&["--set", "model.widht=0.5"], "model.widht"),
        (
            &["--set", "schedule.iterations=\"many\""],
            "schedule.iterations",
        ),
        (
            &[
                "--set",
                "anchors.min_level=5",
                "--set",
                "anchors.max_level=4",
            ],
            "zero pyramid levels",
        ),
        (&["--set", "loss.kind=hinge"], "hinge"),
    ];
    for (sets, key) in cases {
        let mut args = vec!["train", "--quiet", "--config", "experiments/tiny.toml"];
        args.extend_from_slice(sets);
        let out = fl_lab(&args);
        assert_eq!(out.status.code(), Some(2), "{sets:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{sets:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = fl_lab(&["train", "--config", "experiments/missing.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn train_keeps_the_snapshots_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().to_str().unwrap();
    let mut args = vec![
        "train",
        "--quiet",
        "--config",
        "experiments/tiny.toml",
        "--set",
        "data.source=random",
        "--set",
        "schedule.iterations=4",
        "--set",
        "train.checkpoint_every=1",
        "--runs-dir",
        runs,
        "--name",
        "snap",
    ];
    let mut bad = args.clone();
    bad.extend(["--snapshots", "10%,five"]);
    let out = fl_lab(&bad);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--snapshots") && err.contains("'five'"),
        "{err}"
    );

    args.extend(["--snapshots", "1,50%"]);
    let out = fl_lab(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.path().join("snap");
    let mut names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot-") || n.starts_with('.'))
        .collect();
    names.sort();
    // kept although checkpoints after them replaced each other; no temporary files left
    assert_eq!(names, ["snapshot-1.safetensors", "snapshot-2.safetensors"]);
    let model = fl_lab::model::RetinaNet::load_run(&run).unwrap();
    // Copied out before loading: a parameter's tensor shares its storage with the variable.
    let values = |m: &fl_lab::model::RetinaNet| -> Vec<(String, Vec<f32>)> {
        m.store
            .all_tensors()
            .into_iter()
            .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    };
    let final_weights = values(&model);
    model
        .load_weights(&run.join("snapshot-1.safetensors"))
        .unwrap();
    let snapshot = values(&model);
    assert_eq!(final_weights.len(), snapshot.len());
    assert!(
        final_weights
            .iter()
            .zip(&snapshot)
            .all(|((a, _), (b, _))| a == b),
        "the snapshot holds other tensors than the model"
    );
    assert!(
        final_weights != snapshot,
        "the snapshot after iteration 1 equals the final model"
    );
}
