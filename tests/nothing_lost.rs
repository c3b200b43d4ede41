//! Issue "nothing lost, nothing crashes": each reproduction as a user ran it, through the binary.
//! Data loss and crashes are checked from a folder outside the repository, as an installed binary
//! would be run.

mod common;

use common::{fl_lab_in, ok};
use std::path::Path;
use std::process::Output;

/// Exit code 2 and a message that contains `needle`.
fn refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

/// `fl-lab train` of the smoke preset on random data into `<dir>/runs/<name>`, from `dir`.
fn train_smoke(dir: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--quiet",
        "train",
        "--config",
        "smoke",
        "--set",
        "data.source=random",
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    fl_lab_in(dir, &args)
}

/// A finished smoke run trained on random data, in `<dir>/runs/<name>`.
fn smoke_run(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    ok(&train_smoke(dir, name, extra));
    dir.join("runs").join(name)
}

#[test]
fn train_accepts_preset_names_from_any_folder_and_resuming_a_finished_run_keeps_its_numbers() {
    let t = tempfile::tempdir().unwrap();
    let run = smoke_run(t.path(), "done", &[]);
    let summary = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("summary.json")).unwrap()).unwrap()
    };
    let first = summary(&run);
    let again = train_smoke(t.path(), "done", &["--resume"]);
    ok(&again);
    let second = summary(&run);
    for key in ["final_loss_cls", "final_loss_box", "median_step_seconds"] {
        assert!(second[key].is_f64(), "{key} is {}", second[key]);
        assert_eq!(second[key], first[key], "{key}");
    }
    // Files a user shares are readable by others, weights included.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(run.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("model.safetensors"), mode("metrics.csv"));
        assert_eq!(mode("checkpoint-12.safetensors"), mode("metrics.csv"));
    }
    // The default config is the built-in cpu preset, also where no experiments/ folder is.
    let help = ok(&fl_lab_in(t.path(), &["train", "--help"]));
    assert!(help.contains("[default: cpu]"), "{help}");
}

#[test]
fn detect_takes_a_checkpoint_with_its_runs_config() {
    let t = tempfile::tempdir().unwrap();
    let run = smoke_run(t.path(), "ck", &["--set", "data.input_size=64"]);
    let image = t.path().join("in.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([90, 120, 200]))
        .save(&image)
        .unwrap();
    let out = t.path().join("drawn.png");
    let o = fl_lab_in(
        t.path(),
        &[
            "--quiet",
            "detect",
            "--model",
            run.join("checkpoint-12.safetensors").to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    ok(&o);
    assert!(out.is_file());
}

#[test]
fn absurd_model_sizes_are_refused_with_the_memory_they_need() {
    let t = tempfile::tempdir().unwrap();
    for set in [
        "model.num_classes=1000000000",
        "model.fpn_channels=100000000",
    ] {
        let o = train_smoke(t.path(), "huge", &["--set", set]);
        refused(&o, "GiB");
        assert!(!t.path().join("runs/huge/model.safetensors").exists());
    }
}

#[test]
fn bench_sizes_and_names_are_checked_before_running() {
    let t = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| fl_lab_in(t.path(), args);
    refused(
        &run(&[
            "bench",
            "peak",
            "--size",
            "4294967296",
            "--reps",
            "1",
            "--threads",
            "1",
        ]),
        "--size must be between 1 and 8192",
    );
    refused(&run(&["bench", "peak", "--reps", "0"]), "--reps");
    refused(
        &run(&["bench", "conv", "--only", "nosuch"]),
        "'nosuch' matches no layer",
    );
}

#[test]
fn data_commands_validate_before_writing_and_keep_a_hand_made_dataset() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_str().unwrap();
    // A user's own dataset: train.json and val.json, no manifest.
    let mine = t.path().join("mydata");
    std::fs::create_dir_all(&mine).unwrap();
    for f in ["train.json", "val.json"] {
        std::fs::write(mine.join(f), "{\"mine\": true}").unwrap();
    }
    refused(
        &fl_lab_in(
            t.path(),
            &[
                "data", "gen", "--root", root, "--name", "mydata", "--train", "4", "--val", "2",
            ],
        ),
        "did not write",
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("train.json")).unwrap(),
        "{\"mine\": true}"
    );

    refused(
        &fl_lab_in(
            t.path(),
            &[
                "data", "gen", "--root", root, "--name", "empty", "--train", "0", "--val", "0",
            ],
        ),
        "at least one image",
    );
    assert!(!t.path().join("empty").exists());

    // A generated dataset is regenerated without asking, and stats with bad levels write nothing.
    let gen = [
        "--quiet", "data", "gen", "--root", root, "--name", "tiny", "--train", "6", "--val", "3",
        "--size", "64",
    ];
    ok(&fl_lab_in(t.path(), &gen));
    let mut again = gen.to_vec();
    again.push("--force");
    ok(&fl_lab_in(t.path(), &again));
    let stats = t.path().join("stats");
    let o = fl_lab_in(
        t.path(),
        &[
            "data",
            "stats",
            "--data",
            t.path().join("tiny").to_str().unwrap(),
            "--min-level",
            "9",
            "--max-level",
            "3",
            "--out",
            stats.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        !stats.exists(),
        "files written before the flags were checked"
    );
}

#[test]
fn loss_cdf_leaves_a_folder_whose_files_come_from_one_source() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("cdf");
    std::fs::create_dir_all(&out).unwrap();
    // A folder holding another model's over-training curves (as the committed one does).
    std::fs::write(
        out.join("over_training.csv"),
        "iteration,set,fraction,cumulative_loss\n",
    )
    .unwrap();
    std::fs::write(out.join("summary.md"), "old model\n").unwrap();
    let samples = t.path().join("s.csv");
    let mut text = String::from("logit,target\n");
    for i in 0..60 {
        text += &format!("{},{}\n", (i as f64 - 30.0) / 7.0, (i % 6 == 0) as u8);
    }
    std::fs::write(&samples, text).unwrap();
    let o = fl_lab_in(
        t.path(),
        &[
            "--quiet",
            "loss-cdf",
            "--samples",
            samples.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    ok(&o);
    assert!(!out.join("over_training.csv").exists());
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(!md.contains("old model") && md.contains("s.csv"), "{md}");
    assert!(std::fs::read_to_string(out.join("analysed.txt"))
        .unwrap()
        .contains("s.csv"));
    // The default output folder is not the committed one.
    let help = ok(&fl_lab_in(t.path(), &["loss-cdf", "--help"]));
    assert!(help.contains("results/loss-cdf"), "{help}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `fl-lab ... | head -1`: the reader is gone before fl-lab writes.
    let t = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .current_dir(t.path())
        .args(["loss-curves", "--out", "curves"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}
