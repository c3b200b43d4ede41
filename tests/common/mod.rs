//! Shared fixtures of the training tests: a tiny model and a synthetic one-image batch.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use fl_lab::config::Config;
use fl_lab::train::{GtBoxes, TrainBatch};

/// The tiny preset (experiments/tiny.toml) with `overrides`.
pub fn tiny(overrides: &[&str]) -> Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/tiny.toml");
    let sets: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::load(std::path::Path::new(path), &sets).unwrap()
}

/// Two filled rectangles on a dark 64x64 image: class 0 red at [8, 8, 40, 40], class 1 green
/// at [36, 16, 60, 56].
pub fn two_boxes() -> TrainBatch {
    let s = 64;
    let boxes = [[8.0f32, 8.0, 40.0, 40.0], [36.0, 16.0, 60.0, 56.0]];
    let mut img = vec![-1.0f32; 3 * s * s];
    for (c, b) in boxes.iter().enumerate() {
        for y in b[1] as usize..b[3] as usize {
            for x in b[0] as usize..b[2] as usize {
                img[c * s * s + y * s + x] = 1.5;
            }
        }
    }
    TrainBatch {
        images: Tensor::from_vec(img, (1, 3, s, s), &Device::Cpu).unwrap(),
        gt: vec![GtBoxes {
            boxes: boxes.to_vec(),
            classes: vec![0, 1],
        }],
    }
}

/// Runs the fl-lab binary from the repository root.
pub fn fl_lab(args: &[&str]) -> std::process::Output {
    fl_lab_in(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// Runs the fl-lab binary from `cwd`, as a user would from any folder.
pub fn fl_lab_in(cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

/// Runs the fl-lab binary and asserts it succeeded.
pub fn fl_lab_ok(args: &[&str]) -> std::process::Output {
    let out = fl_lab(args);
    assert!(
        out.status.success(),
        "fl-lab {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 64x64 dark image with a red box at [8, 8, 40, 40] and a green one at [36, 16, 60, 56], written
/// under `dir` as a COCO dataset whose train and val splits are that image (id 7, categories 3 and 5).
pub fn write_two_box_dataset(dir: &std::path::Path) {
    let mut img = image::RgbImage::from_pixel(64, 64, image::Rgb([20, 20, 20]));
    for (colour, [x0, y0, x1, y1]) in [
        ([230, 30, 30], [8, 8, 40, 40]),
        ([30, 200, 30], [36, 16, 60, 56]),
    ] {
        for y in y0..y1 {
            for x in x0..x1 {
                img.put_pixel(x, y, image::Rgb(colour));
            }
        }
    }
    std::fs::create_dir_all(dir.join("images")).unwrap();
    img.save(dir.join("images/scene.png")).unwrap();
    let coco = serde_json::json!({
        "images": [{"id": 7, "file_name": "scene.png", "width": 64, "height": 64}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [8, 8, 32, 32], "area": 1024, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [36, 16, 24, 40], "area": 960, "iscrowd": 0}
        ],
        "categories": [{"id": 3, "name": "red box"}, {"id": 5, "name": "green box"}]
    });
    for split in ["train", "val"] {
        std::fs::write(dir.join(format!("{split}.json")), coco.to_string()).unwrap();
    }
}

/// The stdout of a command that must have succeeded; its stdout and stderr in the panic otherwise.
pub fn ok(o: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// Runs the fl-lab binary from the current folder with `--quiet` added.
pub fn fl_lab_quiet(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("cannot run fl-lab")
}
