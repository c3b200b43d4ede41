//! Drives the real `fl-lab data` binary on tiny datasets: generation, caching, stats, show, and clear
//! errors with a non-zero exit on bad input.

use std::path::Path;
use std::process::{Command, Output};

fn fl_lab(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .args(args)
        .arg("--quiet")
        .current_dir(cwd)
        .output()
        .expect("cannot run fl-lab")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn gen_stats_show_on_a_tiny_dataset() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_str().unwrap();
    let gen = [
        "data",
        "gen",
        "--root",
        root,
        "--name",
        "tiny",
        "--train",
        "5",
        "--val",
        "2",
        "--size",
        "64",
        "--max-size",
        "40",
        "--classes",
        "12",
        "--objects",
        "2-3",
    ];
    let o = fl_lab(&gen, t.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let dir = t.path().join("tiny");
    for f in [
        "train.json",
        "val.json",
        "manifest.json",
        "images/train/000004.png",
        "images/val/000001.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let o = fl_lab(&gen, t.path());
    assert!(text(&o).0.contains("already generated"));

    let o = fl_lab(
        &["data", "stats", "--data", "tiny/train.json", "--out", "st"],
        t.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("objects per image") && out.contains("images 5"),
        "{out}"
    );
    for f in [
        "objects_per_image.csv",
        "box_sizes.csv",
        "box_aspects.csv",
        "classes.csv",
    ] {
        assert!(t.path().join("st").join(f).is_file(), "{f} missing");
    }
    assert!(out.contains("box aspect width / height"), "{out}");
    // Every box counts in one aspect bin (the generator draws no empty boxes).
    let aspects = std::fs::read_to_string(t.path().join("st/box_aspects.csv")).unwrap();
    let binned: usize = aspects
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap().parse::<usize>().unwrap())
        .sum();
    let objects: usize = out
        .split("objects ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(binned, objects, "{aspects}");
    let classes = std::fs::read_to_string(t.path().join("st/classes.csv")).unwrap();
    assert_eq!(classes.lines().count(), 13, "{classes}");

    // The paper's resize: the 64 px images scale to 96, padded to 128 (the divisor with P7), so
    // each has the anchors of a 128 x 128 input, as the square path at 128 gives.
    let stats = |extra: &[&str], out: &str| {
        let mut args = vec!["data", "stats", "--data", "tiny/train.json", "--out", out];
        args.extend_from_slice(extra);
        let o = fl_lab(&args, t.path());
        let (text_out, err) = text(&o);
        assert!(o.status.success(), "{text_out}{err}");
        let csv =
            std::fs::read_to_string(t.path().join(out).join("anchors_per_image.csv")).unwrap();
        (text_out, csv)
    };
    let (paper, paper_csv) = stats(&["--set", "data.min_size=96"], "st96");
    assert!(
        paper.contains("resized to shorter side 96, each image alone padded to a multiple of 128"),
        "{paper}"
    );
    let (square, square_csv) = stats(&["--set", "data.input_size=128"], "st128");
    assert!(square.contains("(input 128x128)"), "{square}");
    assert!(
        paper_csv.starts_with("image_id,anchors,objects,"),
        "{paper_csv}"
    );
    let anchors = |csv: &str| -> Vec<String> {
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(anchors(&paper_csv), anchors(&square_csv));
    assert_eq!(anchors(&paper_csv).len(), 5);

    let o = fl_lab(
        &[
            "data", "show", "--data", "tiny", "--split", "val", "--image", "2", "--out", "x.png",
        ],
        t.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let img = image::open(t.path().join("x.png")).unwrap();
    assert_eq!((img.width(), img.height()), (512, 512));
}

#[test]
fn bad_input_gives_a_clear_error_and_exit_2() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("bad.json"), "{\"images\": [}").unwrap();
    let o = fl_lab(&["data", "stats", "--data", "bad.json"], t.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("bad.json") && err.contains("line 1 column"),
        "{err}"
    );

    let o = fl_lab(
        &[
            "data",
            "gen",
            "--kind",
            "fashion-mnist",
            "--source",
            "nowhere",
            "--root",
            "d",
        ],
        t.path(),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("apt-get install dataset-fashion-mnist"),
        "{err}"
    );

    let o = fl_lab(&["data", "gen", "--classes", "81", "--root", "d"], t.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--classes"));

    let o = fl_lab(&["data", "gen", "--objects", "5-2"], t.path());
    assert!(!o.status.success());
    assert!(text(&o).1.contains("MIN must not exceed MAX"));

    let o = fl_lab(&["data", "show", "--data", "missing-dir"], t.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("missing-dir"));
}
