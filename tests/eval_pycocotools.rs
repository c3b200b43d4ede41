//! fl-lab's COCO evaluator against pycocotools 2.0.11 on the committed fixtures
//! (tests/fixtures/coco/make_fixtures.py made them; it documents how to regenerate).

use fl_lab::data::coco::CocoDataset;
use fl_lab::eval::coco::{NUM_AREA, NUM_IOU, NUM_MAXDET, NUM_REC};
use fl_lab::eval::{evaluate, load_results};
use serde::Deserialize;
use std::path::{Path, PathBuf};

const CASES: [&str; 5] = ["mixed", "ties", "dense", "perfect", "empty_dets"];
const TOL: f64 = 1e-9;

#[derive(Deserialize)]
struct Expected {
    stats: Vec<f64>,
    summary_lines: Vec<String>,
    category_ids: Vec<i64>,
    per_category_ap: Vec<Option<f64>>,
    /// [T][K][A][M]
    precision_mean: Vec<Vec<Vec<Vec<f64>>>>,
    /// [T][K][A][M]
    recall: Vec<Vec<Vec<Vec<f64>>>>,
    stats_bits: Vec<u64>,
    per_category_ap_bits: Vec<Option<u64>>,
}

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/coco")
        .join(name)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL
}

fn check_case(name: &str) {
    let dir = case_dir(name);
    let gt = CocoDataset::load(&dir.join("gt.json")).unwrap();
    let dets = load_results(&dir.join("dets.json"), &gt).unwrap();
    let want: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ev = evaluate(&gt, &dets).unwrap();

    assert_eq!(ev.category_ids, want.category_ids, "{name}: category ids");
    for (i, (&got, &w)) in ev.stats.iter().zip(&want.stats).enumerate() {
        assert!(close(got, w), "{name}: stats[{i}] = {got}, pycocotools {w}");
    }
    // Stronger than asked: the same bits as numpy (pairwise sums, same operation order).
    let bits: Vec<u64> = ev.stats.iter().map(|v| v.to_bits()).collect();
    assert_eq!(
        bits, want.stats_bits,
        "{name}: stats differ in the last bits"
    );
    assert_eq!(
        ev.summary_lines(),
        want.summary_lines,
        "{name}: summary text"
    );
    for (k, (got, w)) in ev
        .per_category_ap()
        .iter()
        .zip(&want.per_category_ap)
        .enumerate()
    {
        match (got, w) {
            (Some(g), Some(w)) => {
                assert!(close(*g, *w), "{name}: AP of category {k}: {g} vs {w}");
                if g != w {
                    eprintln!("NOTBITWISE cat {name} {k}");
                }
            }
            (None, None) => {}
            _ => panic!("{name}: AP of category {k}: {got:?} vs {w:?}"),
        }
        assert_eq!(
            got.map(f64::to_bits),
            want.per_category_ap_bits[k],
            "{name}: AP bits, category {k}"
        );
    }
    let nk = ev.num_categories();
    for t in 0..NUM_IOU {
        for k in 0..nk {
            for a in 0..NUM_AREA {
                for m in 0..NUM_MAXDET {
                    let mean = (0..NUM_REC)
                        .map(|r| ev.precision_at(t, r, k, a, m))
                        .sum::<f64>()
                        / NUM_REC as f64;
                    let w = want.precision_mean[t][k][a][m];
                    assert!(
                        close(mean, w),
                        "{name}: precision[{t},:,{k},{a},{m}] mean {mean} vs {w}"
                    );
                    let (got, w) = (ev.recall_at(t, k, a, m), want.recall[t][k][a][m]);
                    assert!(
                        close(got, w),
                        "{name}: recall[{t},{k},{a},{m}] {got} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn agrees_with_pycocotools_on_every_fixture() {
    for name in CASES {
        check_case(name);
    }
}

#[test]
fn detection_order_within_ties_is_what_matters() {
    // Reversing the results file changes the tie order, and so AP, as in pycocotools (cocoapi
    // #650); evaluating the same order twice gives the same bits.
    let dir = case_dir("ties");
    let gt = CocoDataset::load(&dir.join("gt.json")).unwrap();
    let dets = load_results(&dir.join("dets.json"), &gt).unwrap();
    let a = evaluate(&gt, &dets).unwrap();
    let b = evaluate(&gt, &dets).unwrap();
    assert_eq!(a.stats, b.stats);
    let mut rev = dets.clone();
    rev.reverse();
    let c = evaluate(&gt, &rev).unwrap();
    assert_ne!(a.stats, c.stats);
}

#[test]
fn cli_prints_the_pycocotools_summary_and_writes_outputs() {
    let dir = case_dir("mixed");
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fl-lab"))
        .args(["--quiet", "eval", "--gt"])
        .arg(dir.join("gt.json"))
        .arg("--dets")
        .arg(dir.join("dets.json"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), want.summary_lines);
    for f in [
        "metrics.json",
        "metrics.csv",
        "per_category.csv",
        "pr_curves.csv",
        "pr_curves.png",
    ] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(
        m["stats"]["AP"].as_f64().unwrap().to_bits(),
        want.stats_bits[0]
    );
    // Category 40 has no ground truth: its AP is undefined (null), not 0.
    let cat40 = m["per_category"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category_id"] == 40)
        .unwrap();
    assert!(cat40["AP"].is_null());
}

#[test]
fn cli_rejects_bad_results_with_a_named_record() {
    let gt = case_dir("mixed").join("gt.json");
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"[{"image_id":99999,"category_id":1,"bbox":[0,0,1,1],"score":0.5}]"#,
            "image_id 99999",
        ),
        (
            r#"[{"image_id":5,"category_id":2,"bbox":[0,0,1,1],"score":0.5}]"#,
            "category_id 2",
        ),
        (
            r#"[{"image_id":5,"category_id":1,"bbox":[0,0,1,1],"score":0.5},
                {"image_id":5,"category_id":1,"bbox":[0,0,1],"score":0.5}]"#,
            "record 1 (0-based): bbox has 3 numbers",
        ),
        (
            r#"[{"image_id":5,"category_id":1,"bbox":[0,0,1,1],"score":NaN}]"#,
            "record 0 (0-based): score is NaN",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let p = tmp.path().join(format!("r{i}.json"));
        std::fs::write(&p, text).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_fl-lab"))
            .args(["eval", "--gt"])
            .arg(&gt)
            .arg("--dets")
            .arg(&p)
            .arg("--out")
            .arg(tmp.path().join("out"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "case {i}: {err}");
        assert!(!tmp.path().join("out").exists(), "case {i} wrote outputs");
    }
}
