//! Property-based fuzzing of every parser that takes user files or flags (issue 17): COCO ground
//! truth and results, `loss-cdf` samples (CSV and `.npy`), TOML presets with `--set` overrides,
//! safetensors weights and `train --resume` checkpoints, and the `--shard`, `--snapshots` and
//! `--alphas` lists. Valid inputs are mutated (truncations, byte flips, huge numbers and shapes,
//! deep nesting, wrong types) or generated; a rejection must be an `Err` that names the file (and
//! where feasible the field), never a panic, and an accepted input must be what the file says.
//! The crashes found are kept below as plain regression tests with their minimized inputs, and a
//! few cases run the binary to check exit code 2 and the message.
//!
//! The case counts (about 9,000 in all) fit the default `cargo test`: 5-15 s on 2 cores.
//! `FL_LAB_FUZZ_SCALE=N` multiplies them and `FL_LAB_FUZZ_SEED` changes the seed (fixed by
//! default); bench/fuzz.sh runs them for minutes.

mod common;

use candle_core::{DType, Device};
use fl_lab::analysis::samples::{read_samples, ValueKind};
use fl_lab::config::{Config, LossKind};
use fl_lab::data::coco::CocoDataset;
use fl_lab::eval::results::{load_results, save_results, Detection};
use fl_lab::model::RetinaNet;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{RngSeed, TestCaseError};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Harness

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// `cases` per property, times `FL_LAB_FUZZ_SCALE`; a fixed seed unless `FL_LAB_FUZZ_SEED` is set.
/// Nothing is written to `proptest-regressions/`: a failure prints its minimized input, which
/// belongs in a regression test below.
fn fuzz(cases: u32) -> ProptestConfig {
    let scale = env_u64("FL_LAB_FUZZ_SCALE").unwrap_or(1).max(1);
    ProptestConfig {
        cases: (cases as u64 * scale).min(u32::MAX as u64) as u32,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(env_u64("FL_LAB_FUZZ_SEED").unwrap_or(17)),
        ..ProptestConfig::default()
    }
}

/// Runs `f`, turning a panic into a test failure (proptest then shrinks the input).
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TestCaseError::fail(format!("{what} panicked: {msg}"))
    })
}

/// The full error chain must contain `file` and at least one of `fields` (if any are given; in
/// any case, as a CSV header may write `Logit`).
fn names(err: &anyhow::Error, file: &str, fields: &[&str]) -> Result<(), TestCaseError> {
    let msg = format!("{err:#}");
    prop_assert!(msg.contains(file), "error does not name {file}: {msg}");
    let lower = msg.to_lowercase();
    prop_assert!(
        fields.is_empty() || fields.iter().any(|f| lower.contains(&f.to_lowercase())),
        "error names none of {fields:?}: {msg}"
    );
    Ok(())
}

/// Writes `bytes` as `name` in a fresh temporary directory.
fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

// ---------------------------------------------------------------------------------------------
// Mutations of valid inputs

/// Numbers and literals that parsers get wrong: beyond i64/u64/f32/f64, subnormal, negative
/// zero, Python's non-JSON literals, and values of the wrong type.
const ODD_VALUES: &[&str] = &[
    "0",
    "-1",
    "-0",
    "-0.0",
    "1.5",
    "1e400",
    "-1e400",
    "1e40",
    "-1e39",
    "3.5e38",
    "1e308",
    "1e-50",
    "5e-324",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1152921504606846977",
    "4294967296",
    "99999999999999999999999999",
    "1e5",
    "0x10",
    "+1",
    "true",
    "null",
    "\"7\"",
    "\"\"",
    "[]",
    "{}",
    "[1e40]",
    "[[1]]",
    "{\"a\": 1}",
];

/// Text spliced into an input: separators, quotes, escapes, non-ASCII, and deep nesting.
fn insertion() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(ODD_VALUES).prop_map(|s| s.as_bytes().to_vec()),
        select(
            &[
                "\"",
                "\\",
                ",",
                ":",
                "=",
                "[",
                "]",
                "{",
                "}",
                "(",
                ")",
                "'",
                "\n",
                "\r\n",
                "\t",
                "\0",
                "\u{feff}",
                "é",
                "\u{1F600}",
                ",,",
                "[[",
                "]]",
                "#",
                "%",
                "/",
                "..",
                " = ",
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        (1usize..4, 100usize..3000).prop_map(|(k, n)| match k {
            1 => "[".repeat(n).into_bytes(),
            2 => "{\"a\":".repeat(n).into_bytes(),
            _ => format!("{}1{}", "[".repeat(n), "]".repeat(n)).into_bytes(),
        }),
        prop::collection::vec(any::<u8>(), 1..16),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Xor(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Repeats a slice: repeated keys, records and nesting.
    Repeat(Index, usize, usize),
    /// Replaces one number token (text formats) with one of [`ODD_VALUES`].
    Number(Index, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), 1u8..).prop_map(|(i, b)| Mutation::Xor(i, b)),
        2 => (any::<Index>(), insertion()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        1 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1usize..40, 2usize..40).prop_map(|(i, n, k)| Mutation::Repeat(i, n, k)),
        4 => (any::<Index>(), select(ODD_VALUES)).prop_map(|(i, v)| Mutation::Number(i, v)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

/// Byte ranges of the number tokens of a text (digits with sign, point and exponent).
fn number_tokens(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() || (b[i] == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < b.len() && matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

fn apply(seed: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in ms {
        let len = b.len();
        // A position in 0..len (0 when empty) and an insertion point in 0..=len.
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
        let gap = |i: &Index| i.index(len + 1);
        match m {
            Mutation::Truncate(i) => b.truncate(at(i)),
            Mutation::Xor(i, x) => {
                if len > 0 {
                    b[at(i)] ^= x;
                }
            }
            Mutation::Insert(i, s) => {
                let p = gap(i);
                b.splice(p..p, s.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let p = at(i);
                b.drain(p..(p + n).min(len));
            }
            Mutation::Repeat(i, n, k) => {
                let p = at(i);
                let piece = b[p..(p + n).min(len)].to_vec();
                let copies: Vec<u8> = piece.repeat(*k);
                b.splice(p..p, copies);
            }
            Mutation::Number(i, v) => {
                let tokens = number_tokens(&b);
                if !tokens.is_empty() {
                    let (s, e) = tokens[i.index(tokens.len())];
                    b.splice(s..e, v.bytes());
                }
            }
        }
    }
    b
}

/// A finite f64 of any magnitude, or one in the range where boxes and scores live.
fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        -1e4f64..1e4,
        Just(0.0),
        Just(-0.0),
    ]
}

/// A float that survives the conversion to f32 (data that is used in f32 anyway).
fn f32_range_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f32>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(f64::from),
        -1e4f64..1e4,
        (-1e6f64..1e6).prop_map(|v| v * 1e30),
    ]
}

// ---------------------------------------------------------------------------------------------
// COCO ground truth (`data::coco`)

const COCO_GT: &str = r#"{"info": {"description": "fuzz", "nested": [[1, {"a": null}]]},
 "images": [
  {"id": 7, "file_name": "a.png", "width": 64, "height": 48},
  {"id": -3, "file_name": "sub/b.jpg", "width": 640, "height": 480}
 ],
 "annotations": [
  {"id": 1, "image_id": 7, "category_id": 3, "bbox": [8, 8.5, 32, 30.25], "area": 960, "iscrowd": 0},
  {"id": -2, "image_id": -3, "category_id": -5, "bbox": [-4, 400, 100, 100], "iscrowd": 1},
  {"id": 3, "image_id": -3, "category_id": 3, "bbox": [1e2, 2e2, 1.5e1, 20], "area": 12.5}
 ],
 "categories": [{"id": 3, "name": "red box", "supercategory": "box"}, {"id": -5, "name": "neg"}]
}"#;

/// The fields a COCO error can name: a section, or serde's line and column.
const COCO_FIELDS: &[&str] = &["images", "annotations", "categories", "line ", "UTF-8"];

fn check_coco_load(bytes: &[u8]) -> Result<Option<CocoDataset>, TestCaseError> {
    let (_dir, path) = temp_file("gt.json", bytes);
    match no_panic("CocoDataset::load", || CocoDataset::load(&path))? {
        Ok(ds) => {
            // What was accepted is valid, fits the loader's float32 boxes, and saves as it loads.
            prop_assert!(ds.validate().is_ok());
            for a in &ds.annotations {
                let [x, y, w, h] = a.bbox.map(|v| v as f32);
                prop_assert!((x + w).is_finite() && (y + h).is_finite(), "{:?}", a.bbox);
            }
            ds.save(&path).unwrap();
            let back = CocoDataset::load(&path).unwrap();
            prop_assert_eq!(back.images, ds.images.clone());
            prop_assert_eq!(back.categories, ds.categories.clone());
            for (a, b) in back.annotations.iter().zip(&ds.annotations) {
                prop_assert_eq!(
                    (a.id, a.image_id, a.category_id, a.iscrowd),
                    (b.id, b.image_id, b.category_id, b.iscrowd)
                );
                for (x, y) in a
                    .bbox
                    .iter()
                    .chain([&a.area])
                    .zip(b.bbox.iter().chain([&b.area]))
                {
                    // Exactly: serde_json's default float parser is not correctly rounded (1e-50
                    // reads as 9.999999999999999e-51); its `float_roundtrip`, enabled, is.
                    prop_assert!(x.to_bits() == y.to_bits(), "{:?} vs {:?}", a, b);
                }
            }
            Ok(Some(ds))
        }
        Err(e) => names(&e, "gt.json", COCO_FIELDS).map(|_| None),
    }
}

#[derive(Debug, Clone)]
struct GenAnnotation {
    id: i64,
    image: Index,
    category: Index,
    bbox: [f64; 4],
    area: Option<f64>,
    iscrowd: u8,
}

/// A generated dataset: images (id, width, height), category ids and annotations.
type GenCoco = (Vec<(i64, u32, u32)>, Vec<i64>, Vec<GenAnnotation>);

fn gen_coco() -> impl Strategy<Value = GenCoco> {
    let ids = |n| prop::collection::hash_set(any::<i64>(), 1..n);
    let ann = (
        any::<i64>(),
        any::<Index>(),
        any::<Index>(),
        (f32_range_f64(), f32_range_f64(), 0.01f64..1e4, 0.01f64..1e4),
        prop::option::of(0.0f64..1e8),
        0u8..2,
    )
        .prop_map(
            |(id, image, category, (x, y, w, h), area, iscrowd)| GenAnnotation {
                id,
                image,
                category,
                bbox: [x, y, w, h],
                area,
                iscrowd,
            },
        );
    (
        ids(6).prop_flat_map(|ids| {
            let n = ids.len();
            (
                Just(ids.into_iter().collect::<Vec<_>>()),
                prop::collection::vec((1u32..5000, 1u32..5000), n),
            )
        }),
        ids(5),
        prop::collection::vec(ann, 0..8),
    )
        .prop_map(|((ids, sizes), cats, anns)| {
            let images = ids
                .iter()
                .zip(sizes)
                .map(|(&i, (w, h))| (i, w, h))
                .collect();
            (images, cats.into_iter().collect(), anns)
        })
}

proptest! {
    #![proptest_config(fuzz(1000))]

    #[test]
    fn coco_gt_mutations_are_loaded_or_rejected_by_name(ms in mutations()) {
        check_coco_load(&apply(COCO_GT.as_bytes(), &ms))?;
    }
}

proptest! {
    #![proptest_config(fuzz(300))]

    /// Any integer ids (negative ones too, as pycocotools allows) and any box that fits float32
    /// load as written: ids and numbers exactly.
    #[test]
    fn coco_gt_generated_files_load_exactly((images, cats, anns) in gen_coco()) {
        let mut ann_ids = std::collections::HashSet::new();
        let anns: Vec<serde_json::Value> = anns
            .iter()
            .filter(|a| ann_ids.insert(a.id))
            .map(|a| {
                let mut v = serde_json::json!({
                    "id": a.id,
                    "image_id": images[a.image.index(images.len())].0,
                    "category_id": cats[a.category.index(cats.len())],
                    "bbox": a.bbox,
                    "iscrowd": a.iscrowd,
                });
                if let Some(area) = a.area {
                    v["area"] = area.into();
                }
                v
            })
            .collect();
        let text = serde_json::json!({
            "images": images.iter().map(|&(id, w, h)| serde_json::json!({
                "id": id, "file_name": format!("{id}.png"), "width": w, "height": h
            })).collect::<Vec<_>>(),
            "annotations": anns,
            "categories": cats.iter().map(|&id| serde_json::json!({"id": id, "name": id.to_string()}))
                .collect::<Vec<_>>(),
        })
        .to_string();
        let ds = check_coco_load(text.as_bytes())?;
        let ds = ds.ok_or_else(|| TestCaseError::fail(format!("rejected a valid file: {text}")))?;
        prop_assert_eq!(ds.images.len(), images.len());
        prop_assert_eq!(ds.annotations.len(), anns.len());
        for (img, &(id, w, h)) in ds.images.iter().zip(&images) {
            prop_assert_eq!((img.id, img.width, img.height), (id, w, h));
        }
        for (a, v) in ds.annotations.iter().zip(&anns) {
            prop_assert_eq!(a.id, v["id"].as_i64().unwrap());
            prop_assert_eq!(a.image_id, v["image_id"].as_i64().unwrap());
            for (x, y) in a.bbox.iter().zip(v["bbox"].as_array().unwrap()) {
                prop_assert!(x.to_bits() == y.as_f64().unwrap().to_bits(), "{:?} vs {}", a.bbox, v["bbox"]);
            }
        }
    }
}

#[test]
fn coco_boxes_beyond_float32_are_rejected() {
    // Finite in f64 but infinite in the loader's f32 (x + w overflows): it used to load and
    // become a box covering the whole image.
    for bbox in ["[1e39, 0, 1, 1]", "[0, 0, 1, 3.5e38]", "[3e38, 0, 3e38, 1]"] {
        let text = COCO_GT.replace("[8, 8.5, 32, 30.25]", bbox);
        let (_d, path) = temp_file("gt.json", text.as_bytes());
        let e = format!("{:#}", CocoDataset::load(&path).unwrap_err());
        assert!(
            e.contains("gt.json") && e.contains("annotation id 1") && e.contains("float32"),
            "{bbox}: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// COCO results (`eval::results`)

fn results_gt() -> CocoDataset {
    serde_json::from_str(COCO_GT).unwrap()
}

const COCO_RESULTS: &str = r#"[
 {"image_id": 7, "category_id": 3, "bbox": [1, 2.5, 3e0, 4], "score": 0.9, "id": 42,
  "segmentation": [[1, 2, {"a": "x\"]"}]], "extra": {"deep": [[[]]]}},
 {"score": 0.30000000000000004, "bbox": [0, 0, 1, 1], "category_id": -5.0, "image_id": -3},
 {"image_id": -3, "category_id": 3, "bbox": [-1.5, 1e2, 12.25, 0.5], "score": 1e-3, "area": null}
]"#;

const RESULTS_FIELDS: &[&str] = &["record ", "line ", "array", "empty", "UTF-8"];

fn check_results_load(
    bytes: &[u8],
    gt: &CocoDataset,
) -> Result<Option<Vec<Detection>>, TestCaseError> {
    let (_dir, path) = temp_file("dets.json", bytes);
    match no_panic("load_results", || load_results(&path, gt))? {
        Ok(dets) => {
            let images: Vec<i64> = gt.images.iter().map(|i| i.id).collect();
            for d in &dets {
                prop_assert!(
                    d.score.is_finite() && d.bbox.iter().all(|v| v.is_finite()),
                    "{d:?}"
                );
                prop_assert!(images.contains(&d.image_id), "{d:?}");
            }
            Ok(Some(dets))
        }
        Err(e) => names(&e, "dets.json", RESULTS_FIELDS).map(|_| None),
    }
}

fn gen_detection(gt: &CocoDataset) -> impl Strategy<Value = Detection> {
    let images: Vec<i64> = gt.images.iter().map(|i| i.id).collect();
    let cats: Vec<i64> = gt.categories.iter().map(|c| c.id).collect();
    (
        select(images),
        select(cats),
        [finite_f64(), finite_f64(), finite_f64(), finite_f64()],
        finite_f64(),
    )
        .prop_map(|(image_id, category_id, bbox, score)| Detection {
            image_id,
            category_id,
            bbox,
            score,
        })
}

/// One detection written by hand: keys in any order, numbers as Python's `repr` or exponent
/// form, integral ids optionally as floats, and keys the parser must skip.
fn write_detection(d: &Detection, order: &[usize], style: u8) -> String {
    let num = |v: f64| {
        if style & 1 == 0 {
            format!("{v:?}")
        } else {
            format!("{v:e}")
        }
    };
    let id = |v: i64| {
        if style & 2 == 0 || v.unsigned_abs() > 1 << 50 {
            v.to_string()
        } else {
            format!("{v}.0")
        }
    };
    let bbox: Vec<String> = d.bbox.iter().map(|&v| num(v)).collect();
    let fields = [
        format!("\"image_id\": {}", id(d.image_id)),
        format!("\"category_id\": {}", id(d.category_id)),
        format!("\"bbox\": [{}]", bbox.join(", ")),
        format!("\"score\": {}", num(d.score)),
        "\"segmentation\": [[0, 1, 2], {\"k\": \"v\\\"}\"}]".to_string(),
    ];
    let parts: Vec<&str> = order.iter().map(|&i| fields[i].as_str()).collect();
    format!(
        "{{{}}}",
        parts.join(if style & 4 == 0 { ", " } else { ",\n\t" })
    )
}

proptest! {
    #![proptest_config(fuzz(1000))]

    #[test]
    fn results_mutations_are_loaded_or_rejected_by_name(ms in mutations()) {
        check_results_load(&apply(COCO_RESULTS.as_bytes(), &ms), &results_gt())?;
    }
}

proptest! {
    #![proptest_config(fuzz(300))]

    /// Detections written by serde_json or by hand read back bit for bit.
    #[test]
    fn results_generated_files_read_back_exactly(
        dets in prop::collection::vec(gen_detection(&results_gt()), 0..12),
        order in Just((0..5).collect::<Vec<usize>>()).prop_shuffle(),
        style in 0u8..8,
    ) {
        let gt = results_gt();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dets.json");
        save_results(&path, &dets).unwrap();
        prop_assert_eq!(load_results(&path, &gt).unwrap(), dets.clone());
        let text: Vec<String> = dets.iter().map(|d| write_detection(d, &order, style)).collect();
        let got = check_results_load(format!("[{}]", text.join(",\n")).as_bytes(), &gt)?;
        prop_assert_eq!(got, Some(dets));
    }
}

#[test]
fn results_numbers_beyond_float64_are_rejected() {
    // Rust's and Python's float parsers turn 1e400 into infinity: it used to become an infinite
    // score or box.
    for (rec, msg) in [
        (
            r#"{"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1e400}"#,
            "score is",
        ),
        (
            r#"{"image_id": 7, "category_id": 3, "bbox": [0, 0, 1e999, 1], "score": 1}"#,
            "bbox value 2 is",
        ),
        (
            r#"{"image_id": 7, "category_id": 3, "bbox": [-1e400, 0, 1, 1], "score": 1}"#,
            "bbox value 0 is",
        ),
        (
            r#"{"image_id": 1e400, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}"#,
            "image_id is",
        ),
    ] {
        let msg = format!("record 0 (0-based): {msg} a number beyond the float64 range");
        let (_d, path) = temp_file("dets.json", format!("[{rec}]").as_bytes());
        let e = format!("{:#}", load_results(&path, &results_gt()).unwrap_err());
        assert!(e.contains("dets.json") && e.contains(&msg), "{rec}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// loss-cdf samples: CSV and .npy (`analysis::samples`)

const SAMPLES_CSV: &str = "id,logit,target\n0,2.5,1\n1,-0.25,0\n2,1e-3,0\n3,-7.5,1\n4,0,0\n";
const SAMPLES_FIELDS: &[&str] = &[
    "line",
    "row ",
    "score",
    "logit",
    "prob",
    "header",
    "column",
    "target",
    "positive",
    "negative",
    "CSV",
    "UTF-8",
    "shape",
    "dtype",
    "descr",
    "NumPy",
    "truncated",
    "Fortran",
    "--values",
];

/// The margins of the positive and of the negative samples, in file order.
type Margins = (Vec<f32>, Vec<f32>);

fn rng() -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(0)
}

fn check_samples(
    name: &str,
    bytes: &[u8],
    kind: Option<ValueKind>,
) -> Result<Option<Margins>, TestCaseError> {
    let (_dir, path) = temp_file(name, bytes);
    match no_panic("read_samples", || {
        read_samples(&path, kind, 1000, 1000, &mut rng())
    })? {
        Ok(s) => {
            let (pos, neg) = (s.positives.into_items(), s.negatives.into_items());
            prop_assert!(!pos.is_empty() && !neg.is_empty());
            prop_assert!(pos.iter().chain(&neg).all(|v| !v.is_nan()));
            Ok(Some((pos, neg)))
        }
        Err(e) => names(&e, name, SAMPLES_FIELDS).map(|_| None),
    }
}

/// A `.npy` file (format 1.0) with the given header dict text and data bytes.
fn npy(header_dict: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + header_dict.len() + 1) % 64;
    let hdr = format!("{header_dict}{}\n", " ".repeat(pad));
    bytes.extend((hdr.len() as u16).to_le_bytes());
    bytes.extend(hdr.as_bytes());
    bytes.extend(data);
    bytes
}

fn npy_rows(rows: &[(f64, f64)], f8: bool) -> Vec<u8> {
    let header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({}, 2), }}",
        if f8 { "<f8" } else { "<f4" },
        rows.len()
    );
    let mut data = Vec::new();
    for &(v, t) in rows {
        for x in [v, t] {
            if f8 {
                data.extend(x.to_le_bytes());
            } else {
                data.extend((x as f32).to_le_bytes());
            }
        }
    }
    npy(&header, &data)
}

fn gen_rows() -> impl Strategy<Value = Vec<(f64, bool)>> {
    prop::collection::vec((f32_range_f64(), any::<bool>()), 0..40).prop_map(|mut rows| {
        // Both sets must be present for the file to be valid.
        rows.push((1.0, true));
        rows.push((-1.0, false));
        rows
    })
}

/// The margins `read_samples` must produce for logit rows: `x` for positives, `-x` for negatives.
fn margins(rows: &[(f64, bool)]) -> Margins {
    let pos = rows.iter().filter(|r| r.1).map(|r| r.0 as f32).collect();
    let neg = rows
        .iter()
        .filter(|r| !r.1)
        .map(|r| -(r.0 as f32))
        .collect();
    (pos, neg)
}

proptest! {
    #![proptest_config(fuzz(600))]

    #[test]
    fn samples_csv_mutations_are_read_or_rejected_by_name(ms in mutations()) {
        check_samples("s.csv", &apply(SAMPLES_CSV.as_bytes(), &ms), None)?;
    }

    #[test]
    fn samples_npy_mutations_are_read_or_rejected_by_name(ms in mutations(), f8 in any::<bool>()) {
        let seed = npy_rows(&[(2.5, 1.0), (-0.25, 0.0), (1e-3, 0.0), (-7.5, 1.0)], f8);
        check_samples("s.npy", &apply(&seed, &ms), Some(ValueKind::Logits))?;
    }

    /// Headers claiming any shape, dtype and order, over data of any length.
    #[test]
    fn samples_npy_headers_are_read_or_rejected_by_name(
        dims in prop::collection::vec(prop_oneof![
            0usize..5,
            select(&[usize::MAX, usize::MAX / 2 + 1, (1 << 60) + 1, 1 << 61, u32::MAX as usize][..]),
            any::<usize>(),
        ], 0..4),
        descr in select(&["<f4", "<f8", ">f4", "<f2", "|u1", "<i8", "'<f4'", "", "<f4\x00"][..]),
        fortran in select(&["False", "True", "0", ""][..]),
        trailing_comma in any::<bool>(),
        data_len in 0usize..200,
        version in select(&[1u8, 2, 3, 0, 9][..]),
    ) {
        let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        let shape = format!("({}{})", shape.join(", "), if trailing_comma { "," } else { "" });
        let header = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        let mut bytes = npy(&header, &vec![0u8; data_len]);
        if version != 1 {
            // Versions 2 and 3 have a 4-byte header length.
            bytes[6] = version;
            let len = u16::from_le_bytes([bytes[8], bytes[9]]) as u32;
            bytes.splice(8..10, len.to_le_bytes());
        }
        check_samples("h.npy", &bytes, Some(ValueKind::Probs))?;
    }
}

proptest! {
    #![proptest_config(fuzz(300))]

    /// Logit rows in CSV (columns in any order, extra columns, header in any case) and in .npy
    /// read back as the float32 margins they hold.
    #[test]
    fn samples_generated_files_read_back_exactly(
        rows in gen_rows(),
        columns in Just(vec!["LOGIT", "Target", "x"]).prop_shuffle(),
        f8 in any::<bool>(),
    ) {
        let mut csv = columns.join(",") + "\n";
        for (v, t) in &rows {
            let cell = |c: &str| match c {
                "LOGIT" => format!("{v:?}"),
                "Target" => format!("{}", u8::from(*t)),
                _ => "\"a,b\"".into(),
            };
            csv += &columns.iter().map(|c| cell(c)).collect::<Vec<_>>().join(",");
            csv += "\n";
        }
        let want = margins(&rows);
        prop_assert_eq!(check_samples("g.csv", csv.as_bytes(), None)?, Some(want.clone()));
        let as_npy: Vec<(f64, f64)> = rows.iter().map(|&(v, t)| (v, f64::from(u8::from(t)))).collect();
        let got = check_samples("g.npy", &npy_rows(&as_npy, f8), Some(ValueKind::Logits))?;
        prop_assert_eq!(got, Some(want));
    }
}

/// Issue 17 item 5: a shape whose byte size overflows usize passed the size check, then panicked.
#[test]
fn npy_shape_overflowing_the_size_check_is_rejected() {
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1152921504606846977, 2), }";
    for (descr, data) in [("<f8", 64), ("<f4", 64), ("<f8", 0)] {
        let (_d, path) = temp_file(
            "x.npy",
            &npy(&header.replace("<f8", descr), &vec![0u8; data]),
        );
        let e = format!(
            "{:#}",
            read_samples(&path, Some(ValueKind::Logits), 10, 10, &mut rng()).unwrap_err()
        );
        assert!(
            e.contains("x.npy") && e.contains("1152921504606846977"),
            "{e}"
        );
    }
}

#[test]
fn logits_beyond_float32_are_rejected() {
    // 1e300 is finite in f64 but infinite in the analysis's f32.
    let (_d, path) = temp_file("s.csv", b"logit,target\n1,1\n-1,0\n-1e300,1\n");
    let e = format!(
        "{:#}",
        read_samples(&path, None, 10, 10, &mut rng()).unwrap_err()
    );
    assert!(e.contains("s.csv:4") && e.contains("float32"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// TOML presets with --set overrides (`config`)

fn preset(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("experiments")
            .join(name),
    )
    .unwrap()
}

const PRESETS: &[&str] = &["tiny.toml", "cpu.toml", "smoke.toml", "paper.toml"];

/// Every key of the schema, as `section.key` (or `key` at the top).
fn config_keys() -> &'static [String] {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let table = toml::Table::try_from(Config::default()).unwrap();
        let mut keys = Vec::new();
        for (k, v) in table {
            match v {
                toml::Value::Table(t) => keys.extend(t.keys().map(|s| format!("{k}.{s}"))),
                _ => keys.push(k),
            }
        }
        keys
    })
}

/// A `--set` override: a real key (or a malformed one) with an odd value.
fn gen_override() -> impl Strategy<Value = (String, String)> {
    let key = prop_oneof![
        9 => any::<Index>().prop_map(|i| config_keys()[i.index(config_keys().len())].clone()),
        1 => select(&["model", "seed.x", "model.width.x", "nope", "model.nope", "a..b", ".", " ", "loss."][..])
            .prop_map(String::from),
    ];
    let value = prop_oneof![
        4 => select(ODD_VALUES).prop_map(String::from),
        2 => finite_f64().prop_map(|v| format!("{v:?}")),
        1 => prop::collection::vec(select(ODD_VALUES), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => select(&["focal", "fl_star", "ohem", "ce", "custom", "r50", "bn", "any", "random", "cuda:99", "\"a\nb\"", "1\nseed = 5", "[1, \"a\"]", "{x = 1}", "= 1", ""][..])
            .prop_map(String::from),
    ];
    (key, value)
}

/// An accepted config is valid where it is used: the geometry and loss modules' own checks
/// pass on its float32 values, every float32 value is finite (and nonzero when the f64 is), and
/// it round-trips through TOML with the same hash.
fn check_config_in_range(c: &Config) -> Result<(), TestCaseError> {
    use fl_lab::geometry::{AnchorConfig, Matcher};
    use fl_lab::loss::focal::{FlStarParams, FocalParams};
    prop_assert!(
        AnchorConfig::from(&c.anchors).validate().is_ok(),
        "{:?}",
        c.anchors
    );
    let m = Matcher::from(&c.matcher);
    prop_assert!(m.validate().is_ok() && m.neg_iou > 0.0, "{:?}", c.matcher);
    let l = &c.loss;
    prop_assert!(
        FocalParams::new(l.gamma as f32, Some(l.alpha as f32)).is_ok(),
        "{l:?}"
    );
    if l.kind == LossKind::FlStar {
        prop_assert!(
            FlStarParams::new(l.gamma as f32, l.beta as f32, Some(l.alpha as f32)).is_ok(),
            "{l:?}"
        );
    }
    let s = &c.schedule;
    for (key, v) in [
        ("anchor_scale", c.anchors.anchor_scale),
        ("gamma", l.gamma),
        ("alpha", l.alpha),
        ("beta", l.beta),
        ("ohem_nms", l.ohem_nms),
        ("box_beta", l.box_beta),
        ("box_weight", l.box_weight),
        ("lr", s.lr),
        ("momentum", s.momentum),
        ("weight_decay", s.weight_decay),
        ("weight_decay_norm", s.weight_decay_norm),
    ] {
        let x = v as f32;
        prop_assert!(
            x.is_finite() && (x == 0.0) == (v == 0.0),
            "{key} = {v} becomes {x}"
        );
    }
    prop_assert!((s.momentum as f32) < 1.0 && s.lr > 0.0);
    let (stem, stages) = c.model.stage_channels().unwrap();
    prop_assert!(
        stem <= 64 * 16 && stages.iter().all(|&ch| ch <= 512 * 16 * 4),
        "{stages:?}"
    );
    let back = Config::from_toml_str(&c.to_toml().unwrap(), &[]).unwrap();
    prop_assert_eq!(&back, c);
    prop_assert_eq!(back.hash().unwrap(), c.hash().unwrap());
    Ok(())
}

fn check_config(
    text: &[u8],
    sets: &[String],
    fields: &[&str],
) -> Result<Option<Config>, TestCaseError> {
    let (_dir, path) = temp_file("preset.toml", text);
    match no_panic("Config::load", || Config::load(&path, sets))? {
        Ok(c) => check_config_in_range(&c).map(|_| Some(c)),
        Err(e) => names(&e, "preset.toml", fields).map(|_| None),
    }
}

proptest! {
    #![proptest_config(fuzz(600))]

    #[test]
    fn config_preset_mutations_are_loaded_or_rejected_by_name(
        name in select(PRESETS),
        ms in mutations(),
    ) {
        check_config(&apply(preset(name).as_bytes(), &ms), &[], &[])?;
    }

    /// One override on a valid preset: an error must name the overridden key.
    #[test]
    fn config_overrides_are_applied_or_rejected_by_key(
        name in select(PRESETS),
        (key, value) in gen_override(),
    ) {
        let spec = format!("{key}={value}");
        // The key, or the part of it that is wrong (`seed` of `seed.x`).
        let trimmed = key.trim();
        let mut named: Vec<&str> = trimmed.match_indices('.').map(|(i, _)| &trimmed[..i]).collect();
        named.extend([trimmed, "--set"]);
        named.retain(|k| !k.is_empty());
        if let Some(c) = check_config(preset(name).as_bytes(), std::slice::from_ref(&spec), &named)? {
            // Accepted: the key now holds the value (as TOML, or as a bare string).
            let table = toml::Table::try_from(&c).unwrap();
            let (section, field) = trimmed.split_once('.').unwrap_or(("", trimmed));
            let got = if section.is_empty() { table.get(field) } else { table[section].get(field) };
            prop_assert!(got.is_some(), "{spec} accepted but {trimmed} is not in {table}");
        }
    }

    /// Several overrides and a mutated preset together.
    #[test]
    fn config_mutations_with_overrides_are_loaded_or_rejected(
        name in select(PRESETS),
        ms in prop::collection::vec(mutation(), 0..2),
        sets in prop::collection::vec(gen_override(), 0..4),
    ) {
        let sets: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
        check_config(&apply(preset(name).as_bytes(), &ms), &sets, &[])?;
    }
}

/// Issue 17 item 11: floats finite in f64 but outside the range where they are used passed
/// validation (`aspect_ratios=[1e40]` trained with no positive anchors and exited 0).
#[test]
fn config_floats_outside_their_range_are_rejected_by_key() {
    for (set, key) in [
        ("anchors.aspect_ratios=[1e40]", "anchors.aspect_ratios"),
        (
            "anchors.aspect_ratios=[1.0, 1e-40]",
            "anchors.aspect_ratios",
        ),
        ("anchors.aspect_ratios=[1000.0]", "anchors.aspect_ratios"),
        ("anchors.anchor_scale=1e39", "anchors.anchor_scale"),
        ("anchors.anchor_scale=0.001", "anchors.anchor_scale"),
        (
            "anchors.scales_per_octave=1000",
            "anchors.scales_per_octave",
        ),
        ("matcher.neg_iou=1e-50", "matcher.neg_iou"),
        ("loss.gamma=1e39", "loss.gamma"),
        ("loss.gamma=50", "loss.gamma"),
        ("loss.gamma=1e-50", "loss.gamma"),
        ("loss.alpha=1e-50", "loss.alpha"),
        ("loss.beta=1e39", "loss.beta"),
        ("loss.box_beta=1e39", "loss.box_beta"),
        ("loss.box_weight=1e39", "loss.box_weight"),
        ("loss.ohem_nms=1e-50", "loss.ohem_nms"),
        ("schedule.lr=1e39", "schedule.lr"),
        ("schedule.lr=1e-50", "schedule.lr"),
        ("schedule.momentum=0.99999999999", "schedule.momentum"),
        ("schedule.weight_decay=1e39", "schedule.weight_decay"),
        (
            "schedule.weight_decay_norm=1e-50",
            "schedule.weight_decay_norm",
        ),
        ("schedule.decay=1e30", "schedule.decay"),
        ("model.width=1e300", "model.width"),
        ("data.input_size=1099511627776", "data.input_size"),
    ] {
        let e = format!(
            "{:#}",
            Config::from_toml_str(&preset("tiny.toml"), &[set.into()]).unwrap_err()
        );
        // The value as written, or as f64's Debug shows it (1e-40 rather than 0.000...1).
        let value = set.split_once('=').unwrap().1.trim_matches(['[', ']']);
        let value = value.rsplit(", ").next().unwrap();
        let shown = format!("{:?}", value.parse::<f64>().unwrap());
        assert!(
            e.contains(key) && (e.contains(value) || e.contains(&shown)),
            "{set}: {e}"
        );
    }
    // The ends of the new ranges, and the presets, still pass.
    for set in [
        "anchors.aspect_ratios=[0.01, 100]",
        "anchors.anchor_scale=0.1",
        "anchors.anchor_scale=100",
        "loss.gamma=10",
        "loss.alpha=0",
        "schedule.lr=1e12",
        "schedule.momentum=0",
        "schedule.decay=1",
        "model.width=16",
        "data.input_size=8192",
    ] {
        Config::from_toml_str(&preset("tiny.toml"), &[set.into()]).unwrap();
    }
    for p in PRESETS {
        Config::from_toml_str(&preset(p), &[]).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Safetensors weights (`RetinaNet::load`) and `train --resume` checkpoints

/// A safetensors file as entries (name, dtype, shape, data), in file order.
type Entries = Vec<(String, String, Vec<usize>, Vec<u8>)>;

fn st_decode(bytes: &[u8]) -> Entries {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out: Vec<(usize, _)> = header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let at = |i: usize| v["data_offsets"][i].as_u64().unwrap() as usize;
            let shape = v["shape"].as_array().unwrap();
            let shape = shape.iter().map(|d| d.as_u64().unwrap() as usize).collect();
            let dtype = v["dtype"].as_str().unwrap().to_string();
            (at(0), (k, dtype, shape, data[at(0)..at(1)].to_vec()))
        })
        .collect();
    out.sort_by_key(|(start, _)| *start);
    out.into_iter().map(|(_, e)| e).collect()
}

/// Encodes entries with consistent offsets (whatever the dtype and shape claim).
fn st_encode(entries: &Entries, metadata: Option<serde_json::Value>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        let start = data.len();
        data.extend(bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), m);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

const DTYPES: &[(&str, usize)] = &[
    ("F32", 4),
    ("F64", 8),
    ("F16", 2),
    ("BF16", 2),
    ("I64", 8),
    ("I32", 4),
    ("U32", 4),
    ("U16", 2),
    ("U8", 1),
    ("I8", 1),
    ("BOOL", 1),
    ("F8_E4M3", 1),
    ("F8_E5M2", 1),
    ("F4", 1),
    ("F6_E2M3", 1),
    ("U64", 8),
    ("X9", 4),
];

/// Structured edits of a weights file that keep it a well-formed safetensors file.
#[derive(Debug, Clone)]
enum StEdit {
    Remove(Index),
    Rename(Index, &'static str),
    /// New shape (data resized to match it).
    Reshape(Index, Vec<usize>),
    /// New dtype (data resized to the same element count).
    Retype(Index, (&'static str, usize)),
    /// Overwrites one f32 element (NaN, infinities, subnormal, ordinary).
    Value(Index, Index, f32),
    Duplicate(Index),
    Metadata(serde_json::Value),
}

fn st_edit() -> impl Strategy<Value = StEdit> {
    prop_oneof![
        any::<Index>().prop_map(StEdit::Remove),
        (
            any::<Index>(),
            select(&["", "x", "backbone.stem.weight", "__metadata__", "\u{1F600}"][..])
        )
            .prop_map(|(i, n)| StEdit::Rename(i, n)),
        (
            any::<Index>(),
            prop::collection::vec(prop_oneof![0usize..20, Just(1usize << 40)], 0..4)
        )
            .prop_map(|(i, s)| StEdit::Reshape(i, s)),
        (any::<Index>(), select(DTYPES)).prop_map(|(i, d)| StEdit::Retype(i, d)),
        (
            any::<Index>(),
            any::<Index>(),
            select(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5, 1e-45, -0.0][..])
        )
            .prop_map(|(i, j, v)| StEdit::Value(i, j, v)),
        any::<Index>().prop_map(StEdit::Duplicate),
        select(&[r#"{"format": "pt"}"#, "[]", "1", r#"{"a": {"b": 1}}"#][..])
            .prop_map(|m| StEdit::Metadata(serde_json::from_str(m).unwrap())),
    ]
}

/// `data` resized to `shape` of elements of `size` bytes, padded with `fill`; a shape too big to
/// allocate keeps the data as it is (the file is then inconsistent, which is also a case).
fn resized(data: &[u8], shape: &[usize], size: usize, fill: u8) -> Vec<u8> {
    let bytes = shape.iter().try_fold(size, |n, &d| n.checked_mul(d));
    let mut out = data.to_vec();
    if let Some(b) = bytes.filter(|&b| b < 1 << 24) {
        out.resize(b, fill);
    }
    out
}

fn st_apply(bytes: &[u8], edits: &[StEdit]) -> Vec<u8> {
    let mut e = st_decode(bytes);
    let mut metadata = None;
    for edit in edits {
        if e.is_empty() {
            break;
        }
        let n = e.len();
        match edit {
            StEdit::Remove(i) => {
                e.remove(i.index(n));
            }
            StEdit::Rename(i, name) => e[i.index(n)].0 = name.to_string(),
            StEdit::Reshape(i, shape) => {
                let t = &mut e[i.index(n)];
                let size = DTYPES.iter().find(|d| d.0 == t.1).map_or(1, |d| d.1);
                t.3 = resized(&t.3, shape, size, 0);
                t.2 = shape.clone();
            }
            StEdit::Retype(i, (dtype, size)) => {
                let t = &mut e[i.index(n)];
                t.1 = dtype.to_string();
                t.3 = resized(&t.3, &t.2, *size, 0x3c);
            }
            StEdit::Value(i, j, v) => {
                let t = &mut e[i.index(n)];
                if t.1 == "F32" && t.3.len() >= 4 {
                    let k = j.index(t.3.len() / 4) * 4;
                    t.3[k..k + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            StEdit::Duplicate(i) => {
                let t = e[i.index(n)].clone();
                e.push((format!("{}.copy", t.0), t.1, t.2, t.3));
            }
            StEdit::Metadata(m) => metadata = Some(m.clone()),
        }
    }
    st_encode(&e, metadata)
}

/// A tiny trained run (4 iterations, stopped after 2 with a checkpoint) and its final weights.
struct RunFixture {
    _dir: tempfile::TempDir,
    run: PathBuf,
    cfg: Config,
    weights: Vec<u8>,
    weights_toml: Vec<u8>,
}

fn run_fixture() -> &'static RunFixture {
    static FIXTURE: OnceLock<RunFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::tiny(&[
            "schedule.iterations=4",
            "schedule.warmup_iters=0",
            "schedule.steps=[]",
            "train.checkpoint_every=2",
        ]);
        let run = dir.path().join("run");
        let opts = fl_lab::train::TrainOptions {
            run_dir: run.clone(),
            quiet: true,
            stop_after: Some(2),
            ..Default::default()
        };
        let mut data = fl_lab::train::FixedSource(common::two_boxes());
        fl_lab::train::train(&cfg, &mut data, &Device::Cpu, &opts).unwrap();
        let model = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
        let path = dir.path().join("model.safetensors");
        model.save(&path).unwrap();
        RunFixture {
            weights: std::fs::read(&path).unwrap(),
            weights_toml: std::fs::read(path.with_extension("toml")).unwrap(),
            _dir: dir,
            run,
            cfg,
        }
    })
}

const WEIGHT_FIELDS: &[&str] = &[
    "tensor",
    "shape",
    "dtype",
    "header",
    "safetensor",
    "Header",
    "Metadata",
    "finite",
    "config",
    "TOML",
    "unknown",
    "must",
    "buffer",
    "offset",
    "Offset",
];

fn check_weights(weights: &[u8], toml_text: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, weights).unwrap();
    std::fs::write(path.with_extension("toml"), toml_text).unwrap();
    match no_panic("RetinaNet::load", || RetinaNet::load(&path, &Device::Cpu))? {
        Ok(model) => {
            for (name, t) in model.store.all_tensors() {
                let v: Vec<f32> = t
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                prop_assert!(
                    v.iter().all(|x| x.is_finite()),
                    "{name} has non-finite values"
                );
            }
            Ok(())
        }
        Err(e) => {
            let msg = format!("{e:#}");
            prop_assert!(
                msg.contains("m.safetensors") || msg.contains("m.toml"),
                "{msg}"
            );
            names(&e, "m.", WEIGHT_FIELDS)
        }
    }
}

proptest! {
    #![proptest_config(fuzz(100))]

    #[test]
    fn weights_byte_mutations_are_loaded_or_rejected_by_name(ms in mutations()) {
        let f = run_fixture();
        check_weights(&apply(&f.weights, &ms), &f.weights_toml)?;
    }

    #[test]
    fn weights_structural_edits_are_loaded_or_rejected_by_name(
        edits in prop::collection::vec(st_edit(), 1..4),
    ) {
        let f = run_fixture();
        check_weights(&st_apply(&f.weights, &edits), &f.weights_toml)?;
    }

    #[test]
    fn weights_config_mutations_are_loaded_or_rejected_by_name(ms in mutations()) {
        let f = run_fixture();
        check_weights(&f.weights, &apply(&f.weights_toml, &ms))?;
    }
}

/// Found by `weights_config_mutations_are_loaded_or_rejected_by_name` (FL_LAB_FUZZ_SCALE=10):
/// the memory estimate that guards model building looped once per layer (2^62 head convs never
/// ended) and overflowed on sizes near 2^63.
#[test]
fn absurd_sizes_in_a_weights_config_are_rejected_by_name() {
    let f = run_fixture();
    let text = String::from_utf8(f.weights_toml.clone()).unwrap();
    let huge = "9223372036854775807";
    let custom = format!("backbone = \"custom\"\ndepths = [{huge}, 1, 1, 1]");
    for (edits, msg) in [
        (
            vec![(
                "head_convs = 2",
                "head_convs = 4611686018427387904".to_string(),
            )],
            "model.head_convs",
        ),
        (
            vec![
                ("backbone = \"r10\"", custom),
                ("depths = [2, 2, 2, 2]", String::new()),
            ],
            "model.depths",
        ),
        (
            vec![("fpn_channels = 16", format!("fpn_channels = {huge}"))],
            "model.fpn_channels",
        ),
        (
            vec![("num_classes = 2", format!("num_classes = {huge}"))],
            "model.num_classes",
        ),
        (
            vec![("head_channels = 0", format!("head_channels = {huge}"))],
            "GiB",
        ),
    ] {
        let mut toml = text.clone();
        for (from, to) in &edits {
            assert!(toml.contains(from), "{from} not in {toml}");
            toml = toml.replacen(from, to, 1);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, &f.weights).unwrap();
        std::fs::write(path.with_extension("toml"), toml).unwrap();
        let e = format!("{:#}", RetinaNet::load(&path, &Device::Cpu).err().unwrap());
        assert!(e.contains("m.toml") && e.contains(msg), "{edits:?}: {e}");
    }
}

/// Which file of the run directory a resume case damages.
#[derive(Debug, Clone)]
enum RunEdit {
    Meta(Vec<Mutation>),
    Weights(Vec<StEdit>),
    WeightBytes(Vec<Mutation>),
    Metrics(Vec<Mutation>),
    Missing(&'static str),
}

fn run_edit() -> impl Strategy<Value = RunEdit> {
    prop_oneof![
        3 => mutations().prop_map(RunEdit::Meta),
        3 => prop::collection::vec(st_edit(), 1..3).prop_map(RunEdit::Weights),
        1 => mutations().prop_map(RunEdit::WeightBytes),
        2 => mutations().prop_map(RunEdit::Metrics),
        1 => select(&["checkpoint.json", "checkpoint-2.safetensors", "metrics.csv", "config.toml"][..])
            .prop_map(RunEdit::Missing),
    ]
}

/// A copy of the fixture's run directory (`damaged-run`) with `edit` applied.
fn damaged_run(edit: &RunEdit) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("damaged-run");
    std::fs::create_dir_all(&run).unwrap();
    for e in std::fs::read_dir(&run_fixture().run).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), run.join(e.file_name())).unwrap();
    }
    let rewrite = |name: &str, g: &dyn Fn(&[u8]) -> Vec<u8>| {
        let p = run.join(name);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, g(&bytes)).unwrap();
    };
    match edit {
        RunEdit::Meta(ms) => rewrite("checkpoint.json", &|b| apply(b, ms)),
        RunEdit::Weights(es) => rewrite("checkpoint-2.safetensors", &|b| st_apply(b, es)),
        RunEdit::WeightBytes(ms) => rewrite("checkpoint-2.safetensors", &|b| apply(b, ms)),
        RunEdit::Metrics(ms) => rewrite("metrics.csv", &|b| apply(b, ms)),
        RunEdit::Missing(name) => std::fs::remove_file(run.join(name)).unwrap(),
    }
    (dir, run)
}

/// `train --resume` of the fixture's config for one more iteration.
fn resume(run: &Path) -> anyhow::Result<fl_lab::train::Summary> {
    let opts = fl_lab::train::TrainOptions {
        run_dir: run.to_path_buf(),
        resume: true,
        quiet: true,
        stop_after: Some(3),
        ..Default::default()
    };
    let mut data = fl_lab::train::FixedSource(common::two_boxes());
    fl_lab::train::train(&run_fixture().cfg, &mut data, &Device::Cpu, &opts)
}

proptest! {
    #![proptest_config(fuzz(60))]

    /// `train --resume` on a damaged run directory: one more step, or an error naming the run.
    #[test]
    fn resume_from_damaged_checkpoints_runs_or_is_rejected_by_name(edit in run_edit()) {
        let (_dir, run) = damaged_run(&edit);
        match no_panic("train --resume", || resume(&run))? {
            Ok(s) => {
                prop_assert!(!s.diverged, "resumed into a diverged run: {edit:?}");
                prop_assert!(s.iterations <= run_fixture().cfg.schedule.iterations, "{s:?}");
            }
            Err(e) => names(&e, "damaged-run", &[])?,
        }
    }
}

/// Found by the properties above: NaN weights loaded silently (NaN scores, or a resumed run
/// that "diverged" at once), a zero-size tensor of shape [0, 2^40, 2^40] panicked in candle, a
/// misfit optimizer state was reported without its file, and a checkpoint past the schedule's
/// end resumed into a "finished" run.
#[test]
fn damaged_weights_and_checkpoints_are_rejected_by_name() {
    let f = run_fixture();
    // The first tensor (in file order) is f32 weights, the last one a momentum buffer.
    let with_nan = |bytes: &[u8]| {
        let mut e = st_decode(bytes);
        e[0].3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        st_encode(&e, None)
    };
    let scalar_momentum = |bytes: &[u8]| {
        let mut e = st_decode(bytes);
        let last = e.last_mut().unwrap();
        assert!(last.0.starts_with("optimizer.momentum."), "{}", last.0);
        (last.2, last.3) = (vec![], vec![0; 4]);
        st_encode(&e, None)
    };
    // No data, so a valid file, but candle's strides overflow (FL_LAB_FUZZ_SCALE=20).
    let empty_but_huge = |bytes: &[u8]| {
        let mut e = st_decode(bytes);
        (e[0].2, e[0].3) = (vec![0, 1 << 40, 1 << 40], vec![]);
        st_encode(&e, None)
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(path.with_extension("toml"), &f.weights_toml).unwrap();
    for (edit, msg) in [
        (&with_nan as &dyn Fn(&[u8]) -> Vec<u8>, "NaN or infinite"),
        (&empty_but_huge, "beyond any memory"),
    ] {
        std::fs::write(&path, edit(&f.weights)).unwrap();
        let e = format!("{:#}", RetinaNet::load(&path, &Device::Cpu).err().unwrap());
        assert!(e.contains("m.safetensors") && e.contains(msg), "{e}");
    }

    let iteration = "1152921504606846977";
    let far = |b: &[u8]| {
        let meta = String::from_utf8(b.to_vec()).unwrap();
        let meta = meta.replace("\"iteration\": 2", &format!("\"iteration\": {iteration}"));
        meta.into_bytes()
    };
    // A normalizer below 1 (or a negative time) would resume a run that trains on a wrong loss.
    let field = |name: &'static str, value: &'static str| {
        move |b: &[u8]| {
            let meta: serde_json::Value = serde_json::from_slice(b).unwrap();
            let mut meta = meta.as_object().unwrap().clone();
            meta.insert(name.into(), serde_json::from_str(value).unwrap());
            serde_json::to_vec(&meta).unwrap()
        }
    };
    let (zero_normalizer, negative_seconds) =
        (field("normalizer", "0.0"), field("seconds", "-3.0"));
    for (file, edit, msg) in [
        (
            "checkpoint-2.safetensors",
            &with_nan as &dyn Fn(&[u8]) -> Vec<u8>,
            "NaN or infinite",
        ),
        ("checkpoint-2.safetensors", &scalar_momentum, "has shape []"),
        ("checkpoint.json", &far, iteration),
        ("checkpoint.json", &zero_normalizer, "normalizer 0"),
        ("checkpoint.json", &negative_seconds, "seconds -3"),
    ] {
        let (_d, run) = damaged_run(&RunEdit::Meta(vec![]));
        let path = run.join(file);
        std::fs::write(&path, edit(&std::fs::read(&path).unwrap())).unwrap();
        let e = format!("{:#}", resume(&run).unwrap_err());
        assert!(
            e.contains(&format!("damaged-run/{file}")) && e.contains(msg),
            "{e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// --shard, --snapshots and --alphas

fn flag_text() -> impl Strategy<Value = String> {
    prop_oneof![
        select(ODD_VALUES).prop_map(String::from),
        (
            select(ODD_VALUES),
            select(&["/", "%", ",", " / ", "//", "%%", ""][..]),
            select(ODD_VALUES)
        )
            .prop_map(|(a, s, b)| format!("{a}{s}{b}")),
        (0usize..6, 0usize..6).prop_map(|(a, b)| format!("{a}/{b}")),
        (0.0f64..150.0).prop_map(|p| format!("{p}%")),
        "[ -~]{0,12}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(fuzz(1000))]

    #[test]
    fn shard_flags_are_parsed_or_rejected_by_name(text in flag_text()) {
        use fl_lab::experiments::runner::Shard;
        match no_panic("Shard::parse", || Shard::parse(&text))? {
            Ok(s) => prop_assert!(s.index < s.count, "{text}: {s:?}"),
            Err(e) => names(&e, "--shard", &[text.as_str()])?,
        }
    }

    #[test]
    fn snapshot_flags_are_parsed_or_rejected_by_name(
        values in prop::collection::vec(flag_text(), 0..4),
        iterations in prop_oneof![1usize..5000, Just(usize::MAX)],
    ) {
        use fl_lab::commands::train::parse_snapshots;
        match no_panic("parse_snapshots", || parse_snapshots(&values, iterations))? {
            Ok(its) => {
                prop_assert!(its.windows(2).all(|w| w[0] < w[1]), "{its:?}");
                prop_assert!(its.iter().all(|&i| (1..=iterations).contains(&i)), "{its:?}");
            }
            Err(e) => names(&e, "--snapshots", &[])?,
        }
    }
}

proptest! {
    #![proptest_config(fuzz(100))]

    /// `--alphas` crossed with a sweep: every job gets its alpha, or the error names the flag.
    #[test]
    fn alpha_lists_expand_or_are_rejected_by_name(
        alphas in prop::collection::vec(prop_oneof![
            0.0f64..=1.0,
            select(&[0.0, -0.0, 1.0, 0.25, 1e-50, 5e-324, -1e-9, 1.0000001, f64::NAN, f64::INFINITY, 1e300][..]),
        ], 0..4),
    ) {
        use fl_lab::experiments::runner::expand;
        use fl_lab::experiments::spec::ExperimentSpec;
        let spec = ExperimentSpec::builtin("sweep-gamma").unwrap();
        let preset = preset("smoke.toml");
        match no_panic("expand", || expand(&spec, &preset, &[], &alphas, 1))? {
            Ok(jobs) => {
                for j in &jobs {
                    prop_assert!(alphas.is_empty() || alphas.contains(&j.config.loss.alpha), "{}", j.label);
                    check_config_in_range(&j.config)?;
                }
            }
            Err(e) => names(&e, "alpha", &[])?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binary: exit code 2 and the message

fn fails_with(dir: &Path, args: &[&str], needles: &[&str]) {
    let o = common::fl_lab_in(dir, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "fl-lab {args:?}: {err}");
    assert!(!err.contains("panicked"), "fl-lab {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "fl-lab {args:?}: no '{n}' in: {err}");
    }
}

#[test]
fn cli_rejects_bad_files_and_flags_with_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1152921504606846977, 2), }";
    std::fs::write(d.join("x.npy"), npy(header, &[0u8; 64])).unwrap();
    let out = d.join("out");
    let out = out.to_str().unwrap();
    fails_with(
        d,
        &[
            "loss-cdf",
            "--samples",
            "x.npy",
            "--values",
            "logits",
            "--out",
            out,
        ],
        &["x.npy", "1152921504606846977"],
    );
    fails_with(
        d,
        &[
            "train",
            "--config",
            &format!("{}/experiments/tiny.toml", env!("CARGO_MANIFEST_DIR")),
            "--set",
            "anchors.aspect_ratios=[1e40]",
            "--runs-dir",
            out,
        ],
        &["anchors.aspect_ratios", "1e40"],
    );
    std::fs::write(d.join("gt.json"), COCO_GT).unwrap();
    std::fs::write(
        d.join("dets.json"),
        r#"[{"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1e400}]"#,
    )
    .unwrap();
    fails_with(
        d,
        &[
            "eval",
            "--gt",
            "gt.json",
            "--dets",
            "dets.json",
            "--out",
            out,
        ],
        &["dets.json", "record 0", "score"],
    );
    for (shard, alphas) in [
        ("0/4", "0.5"),
        ("5/4", "0.5"),
        ("1/4", "1.5"),
        ("1/4", "nan"),
    ] {
        fails_with(
            d,
            &[
                "sweep-gamma",
                "--preset",
                "smoke",
                "--shard",
                shard,
                "--alphas",
                alphas,
                "--out",
                out,
            ],
            &[if shard == "1/4" {
                "--alphas"
            } else {
                "--shard"
            }],
        );
    }
    fails_with(
        d,
        &[
            "train",
            "--config",
            &format!("{}/experiments/tiny.toml", env!("CARGO_MANIFEST_DIR")),
            "--snapshots",
            "10%,0",
            "--runs-dir",
            out,
        ],
        &["--snapshots", "iteration 0"],
    );
}

/// Issue 17 item 10: negative image ids (legal COCO, accepted by pycocotools) were written to
/// anchors_per_image.csv as 18446744073709551615.
#[test]
fn data_stats_writes_negative_image_ids() {
    let t = tempfile::tempdir().unwrap();
    common::write_two_box_dataset(t.path());
    let path = t.path().join("train.json");
    let mut coco: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    coco["images"][0]["id"] = (-1).into();
    let mut second = coco["images"][0].clone();
    second["id"] = i64::MIN.into();
    coco["images"].as_array_mut().unwrap().push(second);
    for a in coco["annotations"].as_array_mut().unwrap() {
        a["image_id"] = (-1).into();
        a["id"] = (-a["id"].as_i64().unwrap()).into();
    }
    std::fs::write(&path, coco.to_string()).unwrap();
    let o = common::fl_lab_in(
        t.path(),
        &["data", "stats", "--data", "train.json", "--out", "st"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(t.path().join("st/anchors_per_image.csv")).unwrap();
    let ids: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids, ["-1", "-9223372036854775808"], "{csv}");
    let column = csv
        .lines()
        .next()
        .unwrap()
        .split(',')
        .position(|h| h == "objects")
        .unwrap();
    let objects: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(column).unwrap())
        .collect();
    assert_eq!(objects, ["2", "0"], "{csv}");
}
