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
