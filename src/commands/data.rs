//! `fl-lab data`: generate the benchmarks (`gen`), describe a dataset (`stats`), draw one image with
//! its boxes (`show`).

use crate::data::anchor_counts::AnchorStats;
use crate::data::coco::CocoDataset;
use crate::data::fashion::{self, FashionConfig};
use crate::data::generate::{self, Split};
use crate::data::loader::{CachePolicy, Dataset, LoaderConfig, ShorterSide};
use crate::data::shapes::ShapesConfig;
use crate::data::stats::box_stats;
use crate::geometry::{AnchorConfig, Matcher};
use crate::report::data_stats::{self, DatasetStats};
use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Generate a benchmark (PNG images plus COCO train.json / val.json) under data/<name>/.
    Gen(GenArgs),
    /// Objects per image, box sizes and classes of a dataset, as text and CSV.
    Stats(StatsArgs),
    /// Draw one image with its boxes and class names into a PNG.
    Show(ShowArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Procedural coloured shapes with distractors (needs nothing installed).
    Shapes,
    /// Fashion-MNIST products pasted on textured canvases (needs the dataset-fashion-mnist package).
    FashionMnist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Val => Split::Val,
        }
    }
}

/// Parses `MIN-MAX` (or a single number N, meaning N-N).
fn parse_range(s: &str) -> std::result::Result<(usize, usize), String> {
    let parse = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{s}' is not MIN-MAX (e.g. 1-6) or a single count"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("'{s}': MIN must not exceed MAX"));
            }
            Ok((a, b))
        }
        None => parse(s).map(|n| (n, n)),
    }
}

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    #[arg(long, value_enum, default_value = "shapes")]
    pub kind: Kind,
    /// Dataset name: written to <root>/<name>/ (default: the kind's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Data root (default: $FL_LAB_DATA, else ./data).
    #[arg(long)]
    pub root: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of training images.
    #[arg(long, default_value_t = generate::BUILTIN_TRAIN)]
    pub train: usize,
    /// Number of validation images.
    #[arg(long, default_value_t = generate::BUILTIN_VAL)]
    pub val: usize,
    /// Canvas side in pixels; object sizes stay fixed, so a larger canvas adds background.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Number of classes K (shapes: 1..=80, shape x colour combinations; fashion-mnist: always 10).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Objects per image, MIN-MAX.
    #[arg(long, value_parser = parse_range)]
    pub objects: Option<(usize, usize)>,
    /// Distractors (hard negatives) per image, MIN-MAX.
    #[arg(long, value_parser = parse_range)]
    pub distractors: Option<(usize, usize)>,
    /// Smallest object size in pixels (square root of its box area).
    #[arg(long)]
    pub min_size: Option<f32>,
    /// Largest object size in pixels.
    #[arg(long)]
    pub max_size: Option<f32>,
    /// Fashion-MNIST IDX directory.
    #[arg(long, default_value = fashion::DEFAULT_SOURCE)]
    pub source: PathBuf,
    /// Regenerate even if the same dataset is already there.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct DataSel {
    /// A dataset directory (with train.json / val.json) or a COCO JSON file; default: the built-in
    /// benchmark (generated once).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Directory the COCO `file_name`s are relative to (default: images/ beside the JSON, else its
    /// directory).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Which split, when --data is a directory.
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub sel: DataSel,
    /// The training config whose input size, anchors and matcher the statistics use: a built-in
    /// preset name (cpu, the default; smoke; paper) or a TOML file, as `fl-lab train --config`.
    #[arg(long, default_value = "cpu")]
    pub config: String,
    /// Override one config key, e.g. `--set anchors.anchor_scale=4 --set data.input_size=256`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Directory for the CSV files.
    #[arg(long, default_value = "results/data-stats")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub sel: DataSel,
    /// Image id (default: the first image).
    #[arg(long)]
    pub image: Option<i64>,
    /// Output PNG.
    #[arg(long, default_value = "show.png")]
    pub out: PathBuf,
    /// Upscaling factor (default: so the longer side is at least 512 px).
    #[arg(long)]
    pub scale: Option<u32>,
}

/// The top-level entry point for `fl-lab data`.
pub fn run(args: Args, quiet: bool) -> Result<()> {
    match args.command {
        DataCommand::Gen(a) => run_gen(a, quiet),
        DataCommand::Stats(a) => run_stats(a, quiet),
        DataCommand::Show(a) => run_show(a, quiet),
    }
}

fn run_gen(a: GenArgs, quiet: bool) -> Result<()> {
    let root = a.root.clone().unwrap_or_else(generate::default_data_root);
    let name = a.name.clone().unwrap_or_else(|| match a.kind {
        Kind::Shapes => "shapes".into(),
        Kind::FashionMnist => "fashion-mnist".into(),
    });
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        bail!("--name '{name}' must be a plain directory name");
    }
    let dir = root.join(&name);
    if a.train == 0 || a.val == 0 {
        bail!(
            "--train {} --val {}: a dataset needs at least one image in each split",
            a.train,
            a.val
        );
    }
    // A folder with a dataset that `data gen` did not write is the user's own.
    if generate::holds_foreign_dataset(&dir) && !a.force {
        bail!(
            "{} holds a dataset that `data gen` did not write (no {}): refusing to overwrite it; \
             choose another --name or --root, or pass --force to replace it",
            dir.display(),
            generate::MANIFEST
        );
    }
    let start = std::time::Instant::now();
    let manifest = match a.kind {
        Kind::Shapes => {
            let d = ShapesConfig::default();
            let cfg = ShapesConfig {
                size: a.size,
                classes: a.classes.unwrap_or(d.classes),
                objects: a.objects.unwrap_or(d.objects),
                distractors: a.distractors.unwrap_or(d.distractors),
                min_size: a.min_size.unwrap_or(d.min_size),
                max_size: a.max_size.unwrap_or(d.max_size.min(a.size as f32)),
                min_visible: d.min_visible,
            };
            cfg.validate()?;
            let want = generate::Manifest {
                kind: "shapes".into(),
                version: generate::GENERATOR_VERSION,
                seed: a.seed,
                train: a.train,
                val: a.val,
                params: serde_json::to_value(&cfg)?,
            };
            if !a.force && generate::is_complete(&dir, &want) {
                println!("{} is already generated with these settings", dir.display());
                return Ok(());
            }
            generate::generate_shapes(&dir, &cfg, a.seed, a.train, a.val, quiet)?
        }
        Kind::FashionMnist => {
            if let Some(k) = a.classes.filter(|&k| k != fashion::CLASSES.len()) {
                bail!("--classes {k}: Fashion-MNIST has exactly 10 classes");
            }
            let d = FashionConfig::default();
            let cfg = FashionConfig {
                size: a.size,
                objects: a.objects.unwrap_or(d.objects),
                distractors: a.distractors.unwrap_or(d.distractors),
                min_size: a.min_size.unwrap_or(d.min_size),
                max_size: a.max_size.unwrap_or(d.max_size.min(a.size as f32)),
                ..d
            };
            fashion::generate(&dir, &a.source, &cfg, a.seed, a.train, a.val, quiet)?
        }
    };
    let train = CocoDataset::load(&dir.join("train.json"))?;
    let val = CocoDataset::load(&dir.join("val.json"))?;
    println!(
        "wrote {} ({} kind, seed {}): train {} images / {} objects, val {} images / {} objects, {} classes, in {:.1} s",
        dir.display(),
        manifest.kind,
        manifest.seed,
        train.images.len(),
        train.annotations.len(),
        val.images.len(),
        val.annotations.len(),
        train.categories.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn open(
    sel: &DataSel,
    input_size: usize,
    shorter_side: Option<ShorterSide>,
    quiet: bool,
) -> Result<Dataset> {
    let src = crate::data::resolve(
        sel.data.as_deref(),
        sel.images.as_deref(),
        sel.split.into(),
        quiet,
    )?;
    let ds = Dataset::open(
        &src,
        LoaderConfig {
            input_size,
            shorter_side,
            hflip: false,
            cache: CachePolicy::Never,
        },
    )?;
    if ds.clipped_boxes > 0 {
        eprintln!(
            "warning: {}: {} boxes extend past their image and were clipped to it",
            src.json.display(),
            ds.clipped_boxes
        );
    }
    Ok(ds)
}

fn class_names(ds: &Dataset) -> Vec<String> {
    (0..ds.num_classes())
        .map(|k| {
            ds.categories
                .category_id(k)
                .and_then(|id| ds.coco.category_name(id))
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

fn run_stats(a: StatsArgs, quiet: bool) -> Result<()> {
    // Settings are checked (by the config's validation) before anything is read or written.
    let (text, origin) = crate::experiments::spec::named_preset_text("--config", &a.config)?;
    let cfg = crate::config::Config::from_toml_str(&text, &a.set)
        .with_context(|| format!("invalid config {origin}"))?;
    let acfg = AnchorConfig::from(&cfg.anchors);
    acfg.validate().context("anchor settings")?;
    let matcher = Matcher::from(&cfg.matcher);
    matcher.validate().context("matcher settings")?;
    let input_size = cfg.data.input_size;
    let resize = ShorterSide::from_config(&cfg);
    let ds = open(&a.sel, input_size, resize, quiet)?;
    let k = ds.num_classes();
    let (gts, anchors) = AnchorStats::measure_dataset(&ds, ds.len(), &acfg, &matcher, k);
    let stats = DatasetStats {
        source: &ds.source.json,
        input_size,
        resize,
        category_ids: (0..k)
            .map(|c| ds.categories.category_id(c).unwrap_or(-1))
            .collect(),
        class_names: class_names(&ds),
        image_ids: gts.iter().map(|g| g.image_id).collect(),
        boxes: box_stats(&gts, k),
        anchor_config: &acfg,
        matcher: &matcher,
        anchors,
    };
    print!("{}", data_stats::format_text(&stats));
    data_stats::write_all(&a.out, &stats)?;
    println!("CSV files in {}", a.out.display());
    Ok(())
}

/// Draws one image of a dataset with its ground-truth boxes and class names.
fn run_show(a: ShowArgs, quiet: bool) -> Result<()> {
    use crate::report::boxes::LabelledBox;
    let src = crate::data::resolve(
        a.sel.data.as_deref(),
        a.sel.images.as_deref(),
        a.sel.split.into(),
        quiet,
    )?;
    let coco = CocoDataset::load(&src.json)?;
    let img = match a.image {
        Some(id) => coco.images.iter().find(|i| i.id == id).with_context(|| {
            format!(
                "--image {id}: no image with this id in {}",
                src.json.display()
            )
        })?,
        None => coco
            .images
            .first()
            .with_context(|| format!("{} has no images", src.json.display()))?,
    };
    let pixels = crate::data::image_io::decode_rgb(&src.images.join(&img.file_name))?;
    let scale = crate::report::boxes::scale_for(pixels.width(), pixels.height(), a.scale);
    let cats = coco.category_map();
    let anns: Vec<_> = coco
        .annotations
        .iter()
        .filter(|x| x.image_id == img.id)
        .collect();
    let boxes: Vec<LabelledBox> = anns
        .iter()
        .map(|an| {
            let [x, y, bw, bh] = an.bbox;
            LabelledBox {
                bbox: [x as f32, y as f32, (x + bw) as f32, (y + bh) as f32],
                class: cats.index_of(an.category_id).unwrap_or(0),
                label: format!(
                    "{}{}",
                    coco.category_name(an.category_id).unwrap_or("?"),
                    if an.iscrowd != 0 { " (crowd)" } else { "" }
                ),
            }
        })
        .collect();
    let out = crate::report::boxes::draw_boxes(&pixels, &boxes, scale)
        .with_context(|| format!("--scale {scale}"))?;
    crate::data::image_io::write_png(&a.out, &out)?;
    println!(
        "wrote {} (image id {}, '{}', {} boxes, {}x upscaled)",
        a.out.display(),
        img.id,
        img.file_name,
        anns.len(),
        scale
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("1-6"), Ok((1, 6)));
        assert_eq!(parse_range("3"), Ok((3, 3)));
        assert!(parse_range("6-1").is_err());
        assert!(parse_range("a-b").is_err());
    }
}
