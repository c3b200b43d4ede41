//! `fl-lab detect`: a trained model's detections drawn on one image, with class names and scores.

use crate::data::coco::CocoDataset;
use crate::infer::model::detect_picture;
use crate::infer::InferConfig;
use crate::model::RetinaNet;
use crate::report::boxes::{draw_boxes, scale_for, LabelledBox};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("weights").required(true).args(["run", "model"])))]
pub struct Args {
    /// Image to run the model on (PNG or JPEG, any size: it is resized as in training).
    #[arg(long, value_name = "IMAGE")]
    pub image: PathBuf,
    /// The trained model of a run directory (`fl-lab train` or a sweep run).
    #[arg(long, value_name = "runs/NAME")]
    pub run: Option<PathBuf>,
    /// A weights file saved by fl-lab (`model.safetensors` or a checkpoint), with its `.toml` beside it.
    #[arg(long, value_name = "FILE.safetensors")]
    pub model: Option<PathBuf>,
    /// Draw detections scoring at least this (the model keeps every detection above 0.05).
    #[arg(long, default_value_t = 0.3)]
    pub min_score: f32,
    /// Output PNG (default: results/detect/<image name>.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Upscaling factor of the drawing (default: so the longer side is at least 512 px).
    #[arg(long)]
    pub scale: Option<u32>,
}

pub fn run(args: Args, quiet: bool) -> Result<()> {
    if !(args.min_score.is_finite() && (0.0..=1.0).contains(&args.min_score)) {
        bail!("--min-score {}: must be in [0, 1]", args.min_score);
    }
    let model = match (&args.run, &args.model) {
        (Some(dir), _) => RetinaNet::load_run(dir)?,
        (None, Some(weights)) => load_weights(weights)?,
        (None, None) => bail!("give --run or --model"),
    };
    let pixels = crate::data::image_io::decode_rgb(&args.image)?;
    let _products = crate::model::hold_conv_products(model.config())?;
    let dets = detect_picture(&model, &pixels, &InferConfig::default())?;
    let names = class_names(&model, quiet);
    let name = |k: usize| {
        names
            .get(k)
            .cloned()
            .unwrap_or_else(|| format!("class {k}"))
    };
    // Drawn lowest score first, so the best boxes and labels end on top.
    let shown: Vec<_> = dets.iter().filter(|d| d.score >= args.min_score).collect();
    let boxes: Vec<LabelledBox> = shown
        .iter()
        .rev()
        .map(|d| LabelledBox {
            bbox: d.bbox,
            class: d.class,
            label: format!("{} {:.2}", name(d.class), d.score),
        })
        .collect();
    let scale = scale_for(pixels.width(), pixels.height(), args.scale);
    let drawing = draw_boxes(&pixels, &boxes, scale).with_context(|| format!("--scale {scale}"))?;
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.image));
    crate::data::image_io::write_png(&out, &drawing)?;
    println!(
        "wrote {}: {} of {} detections score at least {}",
        out.display(),
        shown.len(),
        dets.len(),
        args.min_score
    );
    for d in &shown {
        let [x1, y1, x2, y2] = d.bbox;
        println!(
            "  {:<20} {:.3}  [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]",
            name(d.class),
            d.score
        );
    }
    Ok(())
}

fn default_out(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    PathBuf::from("results/detect").join(format!("{stem}.png"))
}

/// A weights file and the config beside it, on the device that config names.
fn load_weights(weights: &Path) -> Result<RetinaNet> {
    let cfg_path = crate::model::find_config(weights).context("--model")?;
    let cfg = crate::config::Config::load(&cfg_path, &[])
        .with_context(|| format!("--model {}: the config beside it", weights.display()))?;
    let device = crate::device::parse_device(&cfg.device)?;
    RetinaNet::load(weights, &device)
}

/// Class names from the dataset the model was trained on, in class-index order; empty (with a
/// warning) when that dataset cannot be read, so boxes are labelled by index instead.
fn class_names(model: &RetinaNet, quiet: bool) -> Vec<String> {
    let cfg = model.config();
    let json = match cfg.data.source.as_str() {
        "builtin" => {
            crate::data::resolve(None, None, crate::data::Split::Val, quiet).map(|s| s.json)
        }
        path => crate::data::resolve(Some(Path::new(path)), None, crate::data::Split::Val, quiet)
            .map(|s| s.json),
    };
    let names = json.and_then(|j| {
        let coco = CocoDataset::load(&j)?;
        let mut cats: Vec<_> = coco.categories.iter().collect();
        cats.sort_by_key(|c| c.id);
        Ok(cats.into_iter().map(|c| c.name.clone()).collect::<Vec<_>>())
    });
    match names {
        Ok(n) if n.len() == cfg.model.num_classes => n,
        Ok(n) => {
            eprintln!(
                "warning: the model has {} classes but its dataset '{}' has {}; labelling by class index",
                cfg.model.num_classes,
                cfg.data.source,
                n.len()
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!(
                "warning: cannot read the class names of dataset '{}' ({e:#}); labelling by class index",
                cfg.data.source
            );
            Vec::new()
        }
    }
}
