//! Drives the real sweep commands with the `smoke` preset on a tiny generated dataset, checks the files
//! they write, and kills a sweep mid-run to show that a restart loses at most the run in progress.

mod common;

use common::{fl_lab_quiet as fl_lab, ok};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tiny_dataset(root: &Path) -> String {
    let r = root.to_str().unwrap();
    ok(&fl_lab(&[
        "data", "gen", "--root", r, "--name", "tiny", "--train", "16", "--val", "8", "--size", "64",
    ]));
    root.join("tiny").to_str().unwrap().to_string()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .count()
}

#[test]
fn the_main_job_trains_into_results_and_leaves_the_committed_reference_unchanged() {
    // A checkout's committed reference folder, and the main job run from the checkout's root.
    let t = tempfile::tempdir().unwrap();
    let data = tiny_dataset(t.path());
    let reference = t.path().join("plots/sweep-gamma");
    let sweep = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_fl-lab"))
            .current_dir(t.path())
            .args([
                "--quiet",
                "sweep-gamma",
                "--preset",
                "smoke",
                "--data",
                &data,
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // The committed reference: the same sweep, written to plots/ and without its run folders.
    ok(&sweep(&["--out", reference.to_str().unwrap()]));
    std::fs::remove_dir_all(reference.join("runs")).unwrap();
    let mut before = Vec::new();
    for f in ["results.csv", "summary.csv", "summary.md"] {
        before.push(std::fs::read(reference.join(f)).unwrap());
    }
    let stdout = ok(&sweep(&[]));
    assert!(
        stdout.starts_with("sweep-gamma: 7 runs (0 reused, 7 trained"),
        "{stdout}"
    );
    assert!(stdout.contains("committed AP"), "{stdout}");
    for (f, bytes) in ["results.csv", "summary.csv", "summary.md"]
        .iter()
        .zip(&before)
    {
        assert_eq!(
            &std::fs::read(reference.join(f)).unwrap(),
            bytes,
            "{f} changed"
        );
    }
    assert_eq!(lines(&t.path().join("results/sweep-gamma/results.csv")), 8);
}

#[test]
fn every_sweep_runs_with_the_smoke_preset_and_writes_its_files() {
    let t = tempfile::tempdir().unwrap();
    let data = tiny_dataset(t.path());
    for (name, variants) in [
        ("sweep-gamma", 7),
        ("sweep-alpha", 7),
        ("anchors", 7),
        ("ohem-vs-focal", 10),
    ] {
        let out = t.path().join(name);
        let gamma_table = t.path().join("sweep-gamma");
        let mut args = vec![
            name,
            "--preset",
            "smoke",
            "--data",
            &data,
            "--out",
            out.to_str().unwrap(),
        ];
        // Table 1c's FL baseline is Table 1b's gamma 2: taken from it, and said so up front.
        if name == "anchors" {
            args.extend(["--reuse-from", gamma_table.to_str().unwrap()]);
        }
        let stdout = ok(&fl_lab(&args));
        assert!(
            stdout.contains(&format!("{name}: {variants} runs")),
            "{stdout}"
        );
        if name == "anchors" {
            let said = format!(
                "--reuse-from: 1 of the 7 runs are recorded in `{}` and count as finished",
                gamma_table.join("results.csv").display()
            );
            assert!(stdout.starts_with(&said), "{stdout}");
            assert!(stdout.contains("(1 reused, 6 trained"), "{stdout}");
        }
        assert_eq!(lines(&out.join("results.csv")), 1 + variants, "{name}");
        assert_eq!(lines(&out.join("summary.csv")), 1 + variants, "{name}");
        let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
        assert!(
            md.contains("| paper AP |") && md.contains("The paper's findings"),
            "{md}"
        );
        for png in ["ap_bars.png", "loss_curves.png"] {
            let img = image::open(out.join(png)).unwrap();
            assert!(img.width() >= 1200, "{png}");
        }
        // The variants' names are written in the band under the bars.
        let bars = image::open(out.join("ap_bars.png")).unwrap().to_luma8();
        let (w, h) = bars.dimensions();
        let ink = (0..w)
            .flat_map(|x| (h * 75 / 100..h - 25).map(move |y| (x, y)))
            .filter(|&(x, y)| bars.get_pixel(x, y).0[0] < 128)
            .count();
        assert!(
            ink > 30 * variants,
            "{name}: {ink} dark pixels under the bars"
        );
        if name == "sweep-gamma" {
            eval_run_agrees_with_the_sweep(&out, &data);
            loss_cdf_of_a_trained_run(&out, &data);
        }
        let header = std::fs::read_to_string(out.join("results.csv")).unwrap();
        let header = header.lines().next().unwrap();
        for col in [
            "seed",
            "ap",
            "ap50",
            "ap75",
            "diverged",
            "git_revision",
            "device",
        ] {
            assert!(
                header.split(',').any(|c| c == col),
                "{name}: no column {col} in {header}"
            );
        }
    }
}

#[test]
fn a_killed_sweep_continues_where_it_stopped() {
    let t = tempfile::tempdir().unwrap();
    let data = tiny_dataset(t.path());
    let out = t.path().join("sg");
    let args = [
        "sweep-gamma",
        "--quiet",
        "--preset",
        "smoke",
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let finished = |dir: &Path| {
        std::fs::read_dir(dir.join("runs"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("result.json").exists())
                    .count()
            })
            .unwrap_or(0)
    };
    while finished(&out) < 2 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = finished(&out);
    assert!(done >= 1, "no run finished before the kill");
    assert!(!out.join("results.csv").exists() || lines(&out.join("results.csv")) >= 1);
    let o = Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .args(args)
        .output()
        .unwrap();
    let stdout = ok(&o);
    let reused: usize = stdout
        .split("runs (")
        .nth(1)
        .and_then(|s| s.split(" reused").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        reused >= done,
        "{stdout}: {done} runs had finished before the kill"
    );
    assert_eq!(lines(&out.join("results.csv")), 8);
}

/// Some finished run directory of a sweep.
fn first_run(out: &Path) -> std::path::PathBuf {
    std::fs::read_dir(out.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// `fl-lab eval --run` on a sweep's run directory gives the AP the sweep recorded, and its written
/// detections evaluate to the same numbers through `--gt --dets`.
fn eval_run_agrees_with_the_sweep(out: &Path, data: &str) {
    let run = first_run(out);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    let ev_dir = out.join("eval-run");
    ok(&fl_lab(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data,
        "--out",
        ev_dir.to_str().unwrap(),
    ]));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev_dir.join("metrics.json")).unwrap())
            .unwrap();
    let ap = metrics["stats"]["AP"].as_f64().unwrap_or(0.0);
    assert_eq!(ap, record["ap"].as_f64().unwrap(), "{metrics}");
    let gt = Path::new(data).join("val.json");
    let dets = ev_dir.join("detections.json");
    let again = out.join("eval-dets");
    let text = ok(&fl_lab(&[
        "eval",
        "--gt",
        gt.to_str().unwrap(),
        "--dets",
        dets.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]));
    assert!(text.contains("Average Precision"), "{text}");
    let second: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["stats"], second["stats"]);
}

/// `fl-lab loss-cdf --run` samples a trained model's (anchor, class) outputs on the validation images.
fn loss_cdf_of_a_trained_run(out: &Path, data: &str) {
    let run = first_run(out);
    let cdf = out.join("cdf");
    let stdout = ok(&fl_lab(&[
        "loss-cdf",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data,
        "--max-neg",
        "5000",
        "--out",
        cdf.to_str().unwrap(),
    ]));
    assert!(stdout.contains("negative  2      5000"), "{stdout}");
    let md = std::fs::read_to_string(cdf.join("summary.md")).unwrap();
    assert!(
        md.contains("validation images") && md.contains("| \"approximately 20%"),
        "{md}"
    );
    // 4 gammas x 2 sets, each curve from (0, 0) to (1, 1)
    let csv = std::fs::read_to_string(cdf.join("cdf.csv")).unwrap();
    assert_eq!(
        csv.lines()
            .filter(|l| l.ends_with(",1.000000,1.000000000"))
            .count(),
        8,
        "{csv}"
    );
}

#[test]
fn a_full_gamma_by_alpha_grid_gets_a_heat_map() {
    let t = tempfile::tempdir().unwrap();
    let data = tiny_dataset(t.path());
    let spec = t.path().join("grid.toml");
    std::fs::write(
        &spec,
        r#"name = "grid"
title = "gamma x alpha"
paper = "none"
set = ["loss.kind=focal", "schedule.iterations=4"]
x = { key = "loss.gamma", label = "gamma" }

[[variants]]
label = "gamma 0"
set = ["loss.gamma=0.0"]

[[variants]]
label = "gamma 2"
set = ["loss.gamma=2.0"]
"#,
    )
    .unwrap();
    let out = t.path().join("grid");
    let (spec, out_s) = (spec.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "sweep-gamma",
        "--preset",
        "smoke",
        "--data",
        &data,
        "--spec",
        spec,
        "--out",
        out_s,
    ];
    ok(&fl_lab(&args));
    assert!(!out.join("heatmap.png").exists(), "no grid, no heat map");
    let mut grid = args.to_vec();
    // Three runs side by side, whatever the machine's core count.
    grid.extend(["--alphas", ".25,.75", "--jobs", "3"]);
    let stdout = ok(&fl_lab(&grid));
    assert!(stdout.contains("4 runs (2 reused, 2 trained"), "{stdout}");
    let img = image::open(out.join("heatmap.png")).unwrap();
    assert_eq!((img.width(), img.height()), (200 + 2 * 140, 200 + 2 * 90));

    // --collect trains nothing and counts what it found
    let mut wider = args.to_vec();
    wider.extend(["--alphas", ".25,.5,.75", "--collect"]);
    let stdout = ok(&fl_lab(&wider));
    assert!(
        stdout.contains("6 runs (4 collected, 2 not finished)"),
        "{stdout}"
    );
}

/// Table 1d's "OHEM 1:3" at a larger batch: where the smaller batch's run never filled its positive
/// quota, the larger one takes that run's record (marked `same_as`) instead of training, and the
/// record is what training it gives, bit for bit.
#[test]
fn a_one_to_three_run_that_would_repeat_a_finished_one_is_not_trained_again() {
    let t = tempfile::tempdir().unwrap();
    let data = tiny_dataset(t.path());
    let spec = |batches: &[usize]| {
        let variants: String = batches
            .iter()
            .map(|b| {
                format!(
                    "\n[[variants]]\nlabel = \"OHEM 1:3 {b}\"\nset = [\"loss.ohem_batch={b}\"]\n"
                )
            })
            .collect();
        let path = t.path().join(format!("ohem-{}.toml", batches.len()));
        let header = "name = \"ohem\"\ntitle = \"1:3\"\npaper = \"none\"\n\
                      set = [\"loss.kind=ohem\", \"loss.ohem_ratio=3\", \"loss.ohem_nms=0.5\", \
                      \"schedule.iterations=6\"]\nx = { key = \"loss.ohem_batch\", label = \"batch\" }\n";
        std::fs::write(&path, format!("{header}{variants}")).unwrap();
        path
    };
    let run = |spec: &Path, out: &Path| {
        ok(&fl_lab(&[
            "ohem-vs-focal",
            "--preset",
            "smoke",
            "--data",
            &data,
            "--spec",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            "2",
        ]))
    };
    let rows = |out: &Path| -> Vec<std::collections::HashMap<String, String>> {
        let mut r = csv::Reader::from_path(out.join("results.csv")).unwrap();
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header.last().map(String::as_str), Some("same_as"));
        r.records()
            .map(|x| {
                header
                    .iter()
                    .cloned()
                    .zip(x.unwrap().iter().map(String::from))
                    .collect()
            })
            .collect()
    };
    // Both batches in one sweep: the larger one waits for the smaller and repeats it.
    let both = t.path().join("both");
    run(&spec(&[256, 512]), &both);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(first_run_of(&both, "OHEM 1:3 256").join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["ohem_positive_quota_filled"], false, "{summary}");
    let table = rows(&both);
    let (small, large) = (&table[0], &table[1]);
    assert_eq!(
        large["same_as"], small["config_hash"],
        "the larger batch repeats the smaller's run"
    );
    assert_eq!(small["same_as"], "");
    assert_eq!(large["wall_seconds"], "0.0");
    // The thread count the numbers were trained with, the repeated run's for the repeat.
    assert!(
        small["threads"].parse::<usize>().is_ok_and(|t| t >= 1),
        "{small:?}"
    );
    assert_eq!(large["threads"], small["threads"]);
    // The larger batch trained on its own gives the same numbers, bit for bit as written.
    let alone = t.path().join("alone");
    run(&spec(&[512]), &alone);
    let trained = &rows(&alone)[0];
    assert_eq!(trained["same_as"], "");
    assert_eq!(trained["config_hash"], large["config_hash"]);
    for column in [
        "ap",
        "ap50",
        "ap75",
        "final_loss_cls",
        "final_loss_box",
        "positives_per_image",
    ] {
        assert_eq!(trained[column], large[column], "{column}");
    }
    // A batch of 4 takes one positive per image at most: its quota fills, so the batch of 8
    // (two positives) selects differently and is trained.
    let small_batches = t.path().join("small");
    run(&spec(&[4, 8]), &small_batches);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(first_run_of(&small_batches, "OHEM 1:3 4").join("summary.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["ohem_positive_quota_filled"], true, "{summary}");
    assert!(rows(&small_batches).iter().all(|r| r["same_as"].is_empty()));
}

/// The run folder of the variant labelled `label` in a sweep's output.
fn first_run_of(out: &Path, label: &str) -> std::path::PathBuf {
    std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| {
            std::fs::read_to_string(d.join("job.toml"))
                .is_ok_and(|t| t.starts_with(&format!("# label: {label}\n")))
        })
        .unwrap_or_else(|| panic!("no run of {label}"))
}
