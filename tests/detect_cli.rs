//! Inference end to end as a user runs it: a tiny model trained with `fl-lab train` on a one-image
//! COCO dataset, evaluated with `fl-lab eval --run` and drawn with `fl-lab detect`.

mod common;

use common::{fl_lab_ok as fl_lab, write_two_box_dataset as write_dataset};
use std::process::Command;

#[test]
fn trained_model_is_evaluated_and_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let runs = tmp.path().join("runs");
    let source = format!("data.source={}", data.display());
    fl_lab(&[
        "train",
        "--quiet",
        "--config",
        "experiments/tiny.toml",
        "--set",
        &source,
        "--set",
        "data.flip=false",
        "--set",
        "schedule.iterations=300",
        "--set",
        "schedule.steps=[250]",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        "e2e",
    ]);
    let run = runs.join("e2e");

    let eval_dir = tmp.path().join("eval");
    let out = fl_lab(&[
        "eval",
        "--quiet",
        "--run",
        run.to_str().unwrap(),
        "--out",
        eval_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stat = |line: usize| -> f64 {
        stdout
            .lines()
            .nth(line)
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(stat(1) >= 0.99, "AP50 {}\n{stdout}", stat(1));
    assert!(stat(0) >= 0.5, "AP {}\n{stdout}", stat(0));
    let dets: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("detections.json")).unwrap())
            .unwrap();
    assert!(dets.iter().all(|d| d["image_id"] == 7));

    let png = tmp.path().join("drawn.png");
    let out = fl_lab(&[
        "detect",
        "--run",
        run.to_str().unwrap(),
        "--image",
        data.join("images/scene.png").to_str().unwrap(),
        "--min-score",
        "0.5",
        "--out",
        png.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = stdout.lines().skip(1).collect();
    assert!(listed.iter().any(|l| l.contains("red box")), "{stdout}");
    assert!(listed.iter().any(|l| l.contains("green box")), "{stdout}");
    let drawn = image::open(&png).unwrap();
    assert_eq!((drawn.width(), drawn.height()), (512, 512));

    // The same model through --model, and bad input named in the error.
    let weights = run.join("model.safetensors");
    fl_lab(&[
        "detect",
        "--model",
        weights.to_str().unwrap(),
        "--image",
        data.join("images/scene.png").to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    let bad = Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .args([
            "detect",
            "--run",
            run.to_str().unwrap(),
            "--image",
            "no/such.png",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no/such.png"));
}
