//! Drives `fl-lab bench train` as a user would, from outside the repository: a built-in preset by
//! name, a TOML file, the kernels it names, and a clear error for a config that is neither.

mod common;

use std::path::Path;
use std::process::Output;

fn fl_lab(args: &[&str], cwd: &Path) -> Output {
    let mut args = args.to_vec();
    args.push("--quiet");
    common::fl_lab_in(cwd, &args)
}

fn step_json(o: &Output) -> serde_json::Value {
    let out = common::ok(o);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

const ONE_STEP: [&str; 8] = [
    "--steps",
    "1",
    "--warmup",
    "0",
    "--no-peak",
    "--json",
    "--set",
    "model.num_classes=3",
];

#[test]
fn times_a_builtin_preset_and_a_file_from_any_folder() {
    let t = tempfile::tempdir().unwrap();
    let mut args = vec!["bench", "train", "--config", "smoke"];
    args.extend(ONE_STEP);
    let v = step_json(&fl_lab(&args, t.path()));
    assert_eq!(v["config"], "preset smoke");
    assert_eq!(v["num_classes"], 3);
    let times = &v["times"];
    let total = times["total_ms"].as_f64().unwrap();
    // Forward and backward are each the slowest batch part's, and the parts run side by side, so
    // their sum may exceed the step; each of them, with the update after it, may not.
    let part = |k: &str| times[k].as_f64().unwrap();
    let optimizer = part("optimizer_ms");
    assert!(total > 0.0 && optimizer > 0.0, "{times}");
    for k in ["forward_ms", "backward_ms"] {
        assert!(
            part(k) > 0.0 && part(k) + optimizer <= total * 1.0001,
            "{k}: {times}"
        );
    }

    let file = t.path().join("mine.toml");
    std::fs::write(
        &file,
        fl_lab::experiments::spec::preset_text("smoke").unwrap().0,
    )
    .unwrap();
    let mut args = vec!["bench", "train", "--config", file.to_str().unwrap()];
    args.extend(ONE_STEP);
    let v = step_json(&fl_lab(&args, t.path()));
    assert_eq!(v["config"], file.to_str().unwrap());
}

#[test]
fn an_unknown_config_is_named_in_the_error() {
    let t = tempfile::tempdir().unwrap();
    let o = fl_lab(
        &["bench", "train", "--config", "nosuch", "--steps", "1"],
        t.path(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--config 'nosuch'"), "{err}");
}

#[test]
fn names_the_kernels_it_timed_and_rejects_two_choices() {
    let t = tempfile::tempdir().unwrap();
    for (flag, kernels) in [
        (None, "fl-lab"),
        (Some("--gemm-convs"), "fl-lab (gemm convs)"),
        (Some("--no-winograd"), "fl-lab (no Winograd)"),
        (Some("--candle-kernels"), "candle"),
    ] {
        let mut args = vec!["bench", "train", "--config", "smoke"];
        args.extend(ONE_STEP);
        args.extend(flag);
        let v = step_json(&fl_lab(&args, t.path()));
        assert_eq!(v["kernels"], kernels, "{flag:?}");
    }
    let o = fl_lab(
        &["bench", "train", "--gemm-convs", "--candle-kernels"],
        t.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--gemm-convs"), "{err}");
}

/// `fl-lab bench device-check` CPU against CPU (the path a GPU run compares through): the same
/// weights and batch give the same losses, a table row per step, and a bad tolerance is refused.
#[test]
fn device_check_compares_cpu_with_itself() {
    let t = tempfile::tempdir().unwrap();
    let base = [
        "bench",
        "device-check",
        "--config",
        "smoke",
        "--device",
        "cpu",
        "--against",
        "cpu",
        "--steps",
        "2",
        "--set",
        "schedule.batch_size=2",
    ];
    let o = fl_lab(&base, t.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() == 6 && c[0].parse::<usize>().is_ok())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        let (a, b): (f64, f64) = (r[1].parse().unwrap(), r[2].parse().unwrap());
        assert!(a.is_finite() && a > 0.0 && a == b, "{out}");
    }
    assert!(out.contains("first step agrees"), "{out}");
    let mut bad = base.to_vec();
    bad.push("--tolerance=-1");
    let o = fl_lab(&bad, t.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tolerance"));
}

#[test]
fn conv_times_the_layers_one_by_one_and_as_a_training_step_runs_them() {
    let t = tempfile::tempdir().unwrap();
    let run = |threads: &str, peak: bool| {
        let mut args = vec![
            "bench",
            "conv",
            "--only",
            "c5b",
            "--reps",
            "1",
            "--batch",
            "3",
            "--threads",
            threads,
        ];
        if !peak {
            args.push("--no-peak");
        }
        let o = fl_lab(&args, t.path());
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    };
    let two = run("2", true);
    assert!(two.contains("\nc5b 3x3 128->128 @4"), "{two}");
    assert!(
        two.contains("all convolutions of one training step: fl-lab"),
        "{two}"
    );
    // Three images in two parts: one part of two images, one of one.
    assert!(
        two.contains("as a training step runs them (the batch in 2 parts"),
        "{two}"
    );
    // The sgemm peak measured before and after the table, and both totals as shares of it.
    assert!(two.contains("sgemm peak 2048, 2 threads: "), "{two}");
    assert_eq!(two.matches("% of the sgemm peak)").count(), 2, "{two}");
    // On one thread there is nothing to split; without the peak, no shares.
    let one = run("1", false);
    assert!(!one.contains("as a training step runs them"), "{one}");
    assert!(!one.contains("sgemm"), "{one}");
}
