//! `fl-lab eval`: COCO bbox evaluation of a detector's results against ground truth, identical to
//! pycocotools' COCOeval, with the 12-line summary on stdout and CSV/JSON/PNG files in `--out`.

use crate::data::coco::CocoDataset;
use crate::eval::coco::{CocoEval, STAT_NAMES};
use crate::eval::{evaluate, load_results, Detection};
use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["dets", "run"])))]
pub struct Args {
    /// Ground truth: a COCO instances JSON (images, annotations, categories).
    #[arg(long, value_name = "instances.json", requires = "dets")]
    pub gt: Option<PathBuf>,
    /// Detections: a COCO results JSON, an array of {image_id, category_id, bbox [x,y,w,h], score}.
    #[arg(long, value_name = "results.json", requires = "gt")]
    pub dets: Option<PathBuf>,
    /// Evaluate the trained model of a run directory (`fl-lab train` or a sweep run) on the validation
    /// split of its dataset (or of --data); its detections are written to --out as detections.json.
    #[arg(long, value_name = "runs/NAME", conflicts_with_all = ["gt", "dets"])]
    pub run: Option<PathBuf>,
    /// With --run: evaluate on this COCO dataset instead of the one the run was trained on.
    #[arg(long, requires = "run")]
    pub data: Option<PathBuf>,
    /// With --data: the folder of that dataset's images (COCO itself: `--data instances_val2017.json
    /// --images val2017/`); without it, the loader's default for that file.
    #[arg(long, requires = "data")]
    pub images: Option<PathBuf>,
    /// Directory for metrics.json, metrics.csv, per_category.csv, pr_curves.csv and pr_curves.png.
    #[arg(long, value_name = "DIR", default_value = "results/eval")]
    pub out: PathBuf,
}

/// What produced the evaluated detections, recorded in every output file.
#[derive(Debug, Clone, Default)]
pub struct EvalSource {
    /// Where the ground truth came from (a path, a dataset name).
    pub gt: String,
    /// Where the detections came from (a results file, a run and checkpoint).
    pub dets: String,
    /// Anything else worth keeping (sha256 of inputs, device, seed, ...), as (key, value).
    pub extra: Vec<(String, String)>,
}

/// The top-level entry point for `fl-lab eval`: `--gt --dets` (any detector) or `--run` (a trained model).
pub fn run(args: Args, quiet: bool) -> Result<()> {
    let ev = match (&args.run, &args.gt, &args.dets) {
        (Some(run_dir), _, _) => evaluate_run(
            run_dir,
            args.data.as_deref(),
            args.images.as_deref(),
            &args.out,
            quiet,
        )?,
        (None, Some(gt_path), Some(dets_path)) => {
            let gt = CocoDataset::load(gt_path)?;
            let dets = load_results(dets_path, &gt)?;
            if dets.is_empty() {
                eprintln!(
                    "warning: {} holds no detections; every category with ground truth scores 0 \
                     (pycocotools' loadRes raises IndexError on an empty list, detectron2 reports NaN)",
                    dets_path.display()
                );
            }
            let source = EvalSource {
                gt: gt_path.display().to_string(),
                dets: dets_path.display().to_string(),
                extra: vec![
                    ("gt_sha256".into(), sha256_file(gt_path)?),
                    ("dets_sha256".into(), sha256_file(dets_path)?),
                ],
            };
            evaluate_and_report(&gt, &dets, &args.out, &source)?
        }
        _ => anyhow::bail!("give either --gt and --dets, or --run"),
    };
    for line in ev.summary_lines() {
        println!("{line}");
    }
    if !quiet {
        eprintln!(
            "wrote metrics.json, metrics.csv, per_category.csv, pr_curves.csv, pr_curves.png to {}",
            args.out.display()
        );
    }
    Ok(())
}

/// Runs a trained model over the validation split and evaluates its detections.
fn evaluate_run(
    run_dir: &Path,
    data: Option<&Path>,
    images: Option<&Path>,
    out: &Path,
    quiet: bool,
) -> Result<CocoEval> {
    let model = crate::model::RetinaNet::load_run(run_dir)?;
    let device = model.device().clone();
    let mut cfg = model.config().clone();
    if let Some(d) = data {
        cfg.data.source = d.display().to_string();
        // The training images' folder does not hold another dataset's images.
        cfg.data.images = images.map(|p| p.display().to_string()).unwrap_or_default();
    }
    let val = crate::train::dataset_source::open_dataset(&cfg, crate::data::Split::Val, quiet)?;
    let _products = crate::model::hold_conv_products(&cfg)?;
    let dets = crate::infer::model::detect_dataset(
        &model,
        &val,
        &crate::infer::InferConfig::default(),
        16,
        quiet,
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::eval::results::save_results(&out.join("detections.json"), &dets)?;
    let source = EvalSource {
        gt: val.source.json.display().to_string(),
        dets: format!(
            "model {} (config hash {})",
            run_dir.display(),
            model.config().hash()?
        ),
        extra: vec![("device".into(), crate::device::device_name(&device))],
    };
    evaluate_and_report(&val.coco, &dets, out, &source)
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Evaluates `dets` against `gt` (pycocotools-exact) and writes metrics.json, metrics.csv,
/// per_category.csv, pr_curves.csv and pr_curves.png into `out_dir` (each written atomically).
/// Returns the evaluation; printing the summary is left to the caller.
pub fn evaluate_and_report(
    gt: &CocoDataset,
    dets: &[Detection],
    out_dir: &Path,
    source: &EvalSource,
) -> Result<CocoEval> {
    let t0 = Instant::now();
    let ev = evaluate(gt, dets).context("cannot evaluate the detections")?;
    let eval_seconds = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;

    let names: Vec<String> = ev
        .category_ids
        .iter()
        .map(|id| {
            gt.categories
                .iter()
                .find(|c| c.id == *id)
                .map_or_else(|| id.to_string(), |c| c.name.clone())
        })
        .collect();
    let ap_all = ev.per_category_ap();
    let ap50: Vec<Option<f64>> = (0..ev.num_categories())
        .map(|k| ev.category_ap(k, 0..1))
        .collect();
    let ap75: Vec<Option<f64>> = (0..ev.num_categories())
        .map(|k| ev.category_ap(k, 5..6))
        .collect();
    // -1 (undefined) becomes null / an empty cell.
    let num = |v: f64| (v > -1.0).then_some(v);

    let mut stats = serde_json::Map::new();
    for (name, v) in STAT_NAMES.iter().zip(ev.stats) {
        stats.insert(name.to_string(), json!(num(v)));
    }
    let mut src = serde_json::Map::new();
    src.insert("gt".into(), json!(source.gt));
    src.insert("dets".into(), json!(source.dets));
    for (k, v) in &source.extra {
        src.insert(k.clone(), json!(v));
    }
    let per_category: Vec<serde_json::Value> = (0..ev.num_categories())
        .map(|k| {
            json!({
                "category_id": ev.category_ids[k],
                "name": names[k],
                "num_gt": ev.num_gt[k],
                "num_dets": ev.num_dets[k],
                "AP": ap_all[k], "AP50": ap50[k], "AP75": ap75[k],
            })
        })
        .collect();
    let metrics = json!({
        "evaluator": "fl-lab eval (pycocotools 2.0.x COCOeval, bbox, default parameters)",
        "fl_lab_version": env!("CARGO_PKG_VERSION"),
        "source": src,
        "num_images": ev.num_images,
        "num_categories": ev.num_categories(),
        "num_gt": ev.num_gt.iter().sum::<usize>(),
        "num_dets": dets.len(),
        "stats": stats,
        "summary": ev.summary_lines(),
        "per_category": per_category,
        "iou_thresholds": ev.iou_thresholds.to_vec(),
        "eval_seconds": eval_seconds,
    });
    crate::util::write_atomic(
        &out_dir.join("metrics.json"),
        &serde_json::to_vec_pretty(&metrics)?,
    )?;

    let cell = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["gt", "dets", "num_images", "num_dets"];
    header.extend(STAT_NAMES);
    header.push("eval_seconds");
    w.write_record(&header)?;
    let mut row = vec![
        source.gt.clone(),
        source.dets.clone(),
        ev.num_images.to_string(),
        dets.len().to_string(),
    ];
    row.extend(ev.stats.iter().map(|&v| cell(num(v))));
    row.push(format!("{eval_seconds:.4}"));
    w.write_record(&row)?;
    crate::util::write_atomic(&out_dir.join("metrics.csv"), &w.into_inner()?)?;

    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "category_id",
        "name",
        "num_gt",
        "num_dets",
        "AP",
        "AP50",
        "AP75",
    ])?;
    for k in 0..ev.num_categories() {
        w.write_record([
            ev.category_ids[k].to_string(),
            names[k].clone(),
            ev.num_gt[k].to_string(),
            ev.num_dets[k].to_string(),
            cell(ap_all[k]),
            cell(ap50[k]),
            cell(ap75[k]),
        ])?;
    }
    crate::util::write_atomic(&out_dir.join("per_category.csv"), &w.into_inner()?)?;

    crate::report::pr_curve::write_pr_curves_csv(&out_dir.join("pr_curves.csv"), &ev, &names)?;
    let title = format!(
        "COCO precision-recall: {} (AP {:.3}, AP50 {:.3}, AP75 {:.3})",
        source.dets, ev.stats[0], ev.stats[1], ev.stats[2]
    );
    crate::report::pr_curve::write_pr_curves_png(
        &out_dir.join("pr_curves.png"),
        &ev,
        &names,
        &title,
    )?;
    Ok(ev)
}
