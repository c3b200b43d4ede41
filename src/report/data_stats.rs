//! `data stats` output: the dataset's box statistics and its anchors' matching statistics as
//! text (stdout) and CSV tables. The statistics themselves come from `data::stats` and
//! `data::anchor_counts`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::data::anchor_counts::AnchorStats;
use crate::data::loader::ShorterSide;
use crate::data::stats::{BoxStats, ASPECT_EDGES, SIZE_EDGES};
use crate::geometry::{AnchorConfig, Matcher};

/// One dataset's statistics, as `data stats` measured them.
pub struct DatasetStats<'a> {
    /// The annotation file.
    pub source: &'a Path,
    /// The square input side (`data.input_size`), used when `resize` is None.
    pub input_size: usize,
    /// The paper's resize (`data.min_size` > 0): each image measured as a batch of its own.
    pub resize: Option<ShorterSide>,
    /// Per class index: its COCO category id and name.
    pub category_ids: Vec<i64>,
    pub class_names: Vec<String>,
    /// Per image, in the order of `anchors.per_image`.
    pub image_ids: Vec<i64>,
    pub boxes: BoxStats,
    pub anchor_config: &'a AnchorConfig,
    pub matcher: &'a Matcher,
    pub anchors: AnchorStats,
}

/// The text report: box statistics, then the anchors' matching statistics.
pub fn format_text(d: &DatasetStats) -> String {
    let s = format!("{} (input {})\n", d.source.display(), input_text(d));
    s + &format_box_stats(&d.boxes, &d.class_names) + &format_anchor_stats(d)
}

/// Text report of the box statistics.
pub fn format_box_stats(s: &BoxStats, names: &[String]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "images {}, objects {} ({:.2} per image), crowd {}",
        s.images,
        s.objects,
        s.mean_per_image(),
        s.crowd
    );
    let _ = writeln!(t, "objects per image:");
    let peak = s.per_image.iter().copied().max().unwrap_or(1).max(1);
    for (k, &n) in s.per_image.iter().enumerate() {
        let _ = writeln!(t, "  {k:>3} {n:>7} {}", "#".repeat(n * 40 / peak));
    }
    let _ = writeln!(
        t,
        "box size sqrt(w*h) in input pixels (min {:.1}, max {:.1}):",
        if s.objects > 0 { s.min_side } else { 0.0 },
        s.max_side
    );
    let peak = s.size_bins.iter().copied().max().unwrap_or(1).max(1);
    for (k, &n) in s.size_bins.iter().enumerate() {
        let _ = writeln!(
            t,
            "  {:>9} {n:>7} {:>5.1}% {}",
            bin_label(&SIZE_EDGES, k, 0),
            100.0 * n as f64 / s.objects.max(1) as f64,
            "#".repeat(n * 40 / peak)
        );
    }
    let _ = writeln!(t, "box aspect width / height (nearest anchor shape):");
    let peak = s.aspect_bins.iter().copied().max().unwrap_or(1).max(1);
    for (k, &n) in s.aspect_bins.iter().enumerate() {
        let _ = writeln!(
            t,
            "  {:>9} {:<8} {n:>7} {:>5.1}% {}",
            bin_label(&ASPECT_EDGES, k, 2),
            ASPECT_NAMES[k],
            100.0 * n as f64 / s.objects.max(1) as f64,
            "#".repeat(n * 40 / peak)
        );
    }
    let _ = writeln!(t, "objects per class:");
    for (k, &n) in s.per_class.iter().enumerate() {
        let _ = writeln!(
            t,
            "  {:>3} {:<20} {n:>7}",
            k,
            names.get(k).map_or("", |s| s)
        );
    }
    t
}

/// Bin `k` of `edges` as `lo-hi` (`>=lo` for the last), with `decimals` digits.
fn bin_label(edges: &[f32], k: usize, decimals: usize) -> String {
    let (lo, hi) = (edges[k], edges[k + 1]);
    if hi.is_infinite() {
        format!(">={lo:.decimals$}")
    } else {
        format!("{lo:.decimals$}-{hi:.decimals$}")
    }
}

/// What each aspect bin is nearest to.
const ASPECT_NAMES: [&str; 5] = ["< 1:3", "~ 1:2", "~ 1:1", "~ 2:1", "> 3:1"];

/// The largest anchor side: `anchor_scale x` the top level's stride x the top scale of an octave.
fn largest_anchor(a: &AnchorConfig) -> f32 {
    let per_octave = a.scales_per_octave.max(1) as f32;
    a.anchor_scale * (1u32 << a.max_level) as f32 * 2f32.powf((per_octave - 1.0) / per_octave)
}

/// The model input the statistics assume, in words.
fn input_text(d: &DatasetStats) -> String {
    match d.resize {
        None => format!("{0}x{0}", d.input_size),
        Some(r) => {
            let cap = match r.max_size {
                0 => String::new(),
                m => format!(", longer side at most {m}"),
            };
            format!(
                "resized to shorter side {}{cap}, each image alone padded to a multiple of {}",
                r.min_size, r.divisor
            )
        }
    }
}

/// Anchors per image: one number, or the mean and range when image sizes differ.
fn anchors_per_image_text(st: &AnchorStats) -> String {
    match st.anchors_range() {
        (lo, hi) if lo == hi => lo.to_string(),
        (lo, hi) => format!("{:.0} ({lo}-{hi})", st.per_image_mean(st.total.anchors)),
    }
}

fn format_anchor_stats(d: &DatasetStats) -> String {
    let (a, m, st) = (d.anchor_config, d.matcher, &d.anchors);
    let total = &st.total;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "anchors: {} per image ({} per location; sizes {:.0}..{:.0} px on P{}-P{}), matcher IoU {} / {} ({:?} low-quality rule), K = {}",
        anchors_per_image_text(st),
        a.anchors_per_location(),
        a.anchor_scale * (1u32 << a.min_level) as f32,
        largest_anchor(a),
        a.min_level,
        a.max_level,
        m.pos_iou,
        m.neg_iou,
        m.low_quality,
        d.class_names.len()
    );
    let _ = writeln!(
        t,
        "  per image: positives {:.1}, ignored {:.1}, negatives {:.1}; objects with no positive anchor: {} of {} ({:.1}%)",
        st.per_image_mean(total.positives),
        st.per_image_mean(total.ignored),
        st.per_image_mean(total.negatives),
        total.unmatched_objects,
        total.objects,
        100.0 * total.unmatched_objects as f64 / total.objects.max(1) as f64
    );
    let _ = writeln!(
        t,
        "  foreground:background anchors 1:{:.0} (pooled; median over images 1:{:.0})",
        st.neg_per_pos_anchors(),
        st.median_neg_per_pos()
    );
    let _ = writeln!(
        t,
        "  binary (anchor, class) samples per image: {:.1} positive, {:.0} negative, 1:{:.0} (ignored excluded)",
        st.per_image_mean(total.binary_positives),
        st.per_image_mean(total.binary_negatives),
        st.neg_per_pos_binary()
    );
    t
}

/// Writes `objects_per_image.csv`, `box_sizes.csv`, `box_aspects.csv`, `classes.csv`,
/// `anchors_per_image.csv` and `summary.csv` into `out`.
pub fn write_all(out: &Path, d: &DatasetStats) -> Result<()> {
    let s = &d.boxes;
    let per_image = s.per_image.iter().enumerate();
    write_csv(
        &out.join("objects_per_image.csv"),
        &["objects", "images"],
        per_image.map(|(k, n)| vec![k.to_string(), n.to_string()]),
    )?;
    let sizes = s.size_bins.iter().enumerate().map(|(k, &n)| {
        vec![
            SIZE_EDGES[k].to_string(),
            SIZE_EDGES[k + 1].to_string(),
            n.to_string(),
            format!("{:.6}", n as f64 / s.objects.max(1) as f64),
        ]
    });
    let header = ["min_side", "max_side", "boxes", "fraction"];
    write_csv(&out.join("box_sizes.csv"), &header, sizes)?;
    let aspects = s.aspect_bins.iter().enumerate().map(|(k, &n)| {
        vec![
            ASPECT_EDGES[k].to_string(),
            ASPECT_EDGES[k + 1].to_string(),
            ASPECT_NAMES[k].to_string(),
            n.to_string(),
            format!("{:.6}", n as f64 / s.objects.max(1) as f64),
        ]
    });
    let header = ["min_ratio", "max_ratio", "nearest", "boxes", "fraction"];
    write_csv(&out.join("box_aspects.csv"), &header, aspects)?;
    let classes = s.per_class.iter().enumerate().map(|(k, n)| {
        let id = d.category_ids.get(k).copied().unwrap_or(-1);
        vec![
            k.to_string(),
            id.to_string(),
            d.class_names[k].clone(),
            n.to_string(),
        ]
    });
    let header = ["class_index", "category_id", "name", "objects"];
    write_csv(&out.join("classes.csv"), &header, classes)?;
    write_anchors_per_image(out, d)?;
    write_summary(out, d)
}

fn write_anchors_per_image(out: &Path, d: &DatasetStats) -> Result<()> {
    let header = [
        "image_id",
        "anchors",
        "objects",
        "positives",
        "ignored",
        "negatives",
        "unmatched_objects",
        "binary_positives",
        "binary_negatives",
    ];
    let rows = d.image_ids.iter().zip(&d.anchors.per_image).map(|(id, c)| {
        let counts = [
            c.anchors,
            c.objects,
            c.positives,
            c.ignored,
            c.negatives,
            c.unmatched_objects,
            c.binary_positives,
            c.binary_negatives,
        ];
        // COCO ids are signed (pycocotools takes any integer), unlike the counts.
        std::iter::once(id.to_string())
            .chain(counts.iter().map(|v| v.to_string()))
            .collect()
    });
    write_csv(&out.join("anchors_per_image.csv"), &header, rows)
}

fn write_summary(out: &Path, d: &DatasetStats) -> Result<()> {
    let (a, m, st) = (d.anchor_config, d.matcher, &d.anchors);
    let total = &st.total;
    let f = |v: f64| format!("{v:.4}");
    let fields = [
        ("dataset", d.source.display().to_string()),
        ("images", d.boxes.images.to_string()),
        ("objects_per_image", f(d.boxes.mean_per_image())),
        ("classes", d.class_names.len().to_string()),
        ("input_size", d.input_size.to_string()),
        ("min_size", d.resize.map_or(0, |r| r.min_size).to_string()),
        ("max_size", d.resize.map_or(0, |r| r.max_size).to_string()),
        ("anchors_per_image", f(st.per_image_mean(total.anchors))),
        ("anchor_scale", a.anchor_scale.to_string()),
        ("min_level", a.min_level.to_string()),
        ("max_level", a.max_level.to_string()),
        ("pos_iou", m.pos_iou.to_string()),
        ("neg_iou", m.neg_iou.to_string()),
        ("low_quality", format!("{:?}", m.low_quality).to_lowercase()),
        ("positives_per_image", f(st.per_image_mean(total.positives))),
        ("ignored_per_image", f(st.per_image_mean(total.ignored))),
        ("negatives_per_image", f(st.per_image_mean(total.negatives))),
        ("unmatched_objects", total.unmatched_objects.to_string()),
        ("neg_per_pos_anchors", f(st.neg_per_pos_anchors())),
        ("neg_per_pos_binary", f(st.neg_per_pos_binary())),
    ];
    let header: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    let row = fields.iter().map(|(_, v)| v.clone()).collect();
    write_csv(&out.join("summary.csv"), &header, std::iter::once(row))
}

fn write_csv(
    path: &Path,
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> Result<()> {
    let bytes = super::csv_bytes(|w| {
        w.write_record(header)?;
        rows.into_iter().try_for_each(|r| w.write_record(&r))
    })?;
    crate::util::write_atomic(path, &bytes)
}
