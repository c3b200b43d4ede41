//! The datasets of an imbalance ladder: one generated shapes dataset per rung (cached under the data
//! root by its generator parameters), its training split cut into a tuning part and a held-out part,
//! and the binary-sample imbalance the classification loss sees on it.

use super::ImageCounts;
use crate::config::Config;
use crate::data::anchor_counts::{AnchorCounts, AnchorStats};
use crate::data::coco::CocoDataset;
use crate::data::generate::{self, Manifest};
use crate::data::loader::{CachePolicy, Dataset, LoaderConfig, ShorterSide};
use crate::data::shapes::ShapesConfig;
use crate::data::Split;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where a rung's data lives.
#[derive(Debug, Clone)]
pub struct RungData {
    pub dir: PathBuf,
    /// The training images minus the held-out ones: what every run trains on.
    pub tune_train: PathBuf,
    /// The last `holdout` training images: learning rates and alphas are chosen on these.
    pub holdout: PathBuf,
    /// The validation split: what is reported.
    pub val: PathBuf,
}

/// The generator's manifest of a rung: equal manifests mean the same images.
fn manifest(cfg: &ShapesConfig, seed: u64, counts: &ImageCounts) -> Result<Manifest> {
    Ok(Manifest {
        kind: "shapes".into(),
        version: generate::GENERATOR_VERSION,
        seed,
        train: counts.train,
        val: counts.val,
        params: serde_json::to_value(cfg)?,
    })
}

/// `imbalance-s<size>-k<K>-o<min>-<max>-<hash>`: readable, and unique per generator settings.
pub fn dataset_name(cfg: &ShapesConfig, seed: u64, counts: &ImageCounts) -> Result<String> {
    let m = manifest(cfg, seed, counts)?;
    let digest = Sha256::digest(serde_json::to_vec(&m)?);
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "imbalance-s{}-k{}-o{}-{}-{hash}",
        cfg.size, cfg.classes, cfg.objects.0, cfg.objects.1
    ))
}

/// Generates the rung's dataset under `root` unless a complete copy is there, and writes its
/// tuning / held-out split of the training images.
pub fn prepare(
    root: &Path,
    cfg: &ShapesConfig,
    seed: u64,
    counts: &ImageCounts,
    quiet: bool,
) -> Result<RungData> {
    let name = dataset_name(cfg, seed, counts)?;
    let dir = root.join(&name);
    let want = manifest(cfg, seed, counts)?;
    if !generate::is_complete(&dir, &want) {
        if !quiet {
            eprintln!("generating {}", dir.display());
        }
        // Into a private folder, then renamed: shards started together on one machine must not
        // write the same files at once.
        let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        generate::generate_shapes(&tmp, cfg, seed, counts.train, counts.val, quiet)?;
        if std::fs::rename(&tmp, &dir).is_err() {
            if !generate::is_complete(&dir, &want) {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot replace {}", dir.display()))?;
                std::fs::rename(&tmp, &dir)
                    .with_context(|| format!("cannot move {} into place", tmp.display()))?;
            } else {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
    }
    let data = RungData {
        tune_train: dir.join(format!("tune-train-h{}.json", counts.holdout)),
        holdout: dir.join(format!("holdout-h{}.json", counts.holdout)),
        val: dir.join("val.json"),
        dir,
    };
    if !(data.tune_train.is_file() && data.holdout.is_file()) {
        let train = CocoDataset::load(&data.dir.join("train.json"))?;
        let (tune, held) = split_off_last(&train, counts.holdout)?;
        held.save(&data.holdout)?;
        tune.save(&data.tune_train)?;
    }
    Ok(data)
}

/// Splits a dataset into its first `len - n` and last `n` images (by id), each with its annotations.
pub fn split_off_last(ds: &CocoDataset, n: usize) -> Result<(CocoDataset, CocoDataset)> {
    if n == 0 || n >= ds.images.len() {
        anyhow::bail!(
            "cannot hold out {n} of {} training images: need 1 <= holdout < train",
            ds.images.len()
        );
    }
    let mut images = ds.images.clone();
    images.sort_by_key(|i| i.id);
    let cut = images.len() - n;
    let part = |imgs: &[crate::data::coco::CocoImage]| {
        let ids: std::collections::HashSet<i64> = imgs.iter().map(|i| i.id).collect();
        CocoDataset {
            info: ds.info.clone(),
            images: imgs.to_vec(),
            annotations: ds
                .annotations
                .iter()
                .filter(|a| ids.contains(&a.image_id))
                .cloned()
                .collect(),
            categories: ds.categories.clone(),
        }
    };
    Ok((part(&images[..cut]), part(&images[cut..])))
}

/// The imbalance of one training set as the loss sees it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Imbalance {
    pub images: usize,
    pub classes: usize,
    /// Summed over the images.
    pub counts: AnchorCounts,
}

impl Imbalance {
    /// Anchors per image: the ladder's images share one canvas size, so each has this many.
    pub fn anchors_per_image(&self) -> usize {
        self.counts.anchors / self.images.max(1)
    }

    /// Binary (anchor, class) negatives per positive, pooled over images (ignored anchors excluded).
    pub fn ratio(&self) -> f64 {
        if self.counts.binary_positives == 0 {
            return f64::INFINITY;
        }
        self.counts.binary_negatives as f64 / self.counts.binary_positives as f64
    }

    /// Negative anchors per positive anchor.
    pub fn anchor_ratio(&self) -> f64 {
        if self.counts.positives == 0 {
            return f64::INFINITY;
        }
        self.counts.negatives as f64 / self.counts.positives as f64
    }

    pub fn per_image(&self, count: usize) -> f64 {
        count as f64 / self.images.max(1) as f64
    }
}

/// Measures the imbalance of the training images a config uses (the first `data.max_images` of the
/// COCO file `json`, or all), with the config's resize, anchors and matcher: the same counts
/// `fl-lab data stats` reports (`AnchorStats::measure_dataset`).
pub fn measure(cfg: &Config, json: &Path) -> Result<Imbalance> {
    let source = crate::data::resolve(Some(json), None, Split::Train, true)?;
    let ds = Dataset::open(
        &source,
        LoaderConfig {
            input_size: cfg.data.input_size,
            shorter_side: ShorterSide::from_config(cfg),
            hflip: false,
            cache: CachePolicy::Never,
        },
    )
    .with_context(|| format!("measuring the imbalance of {}", json.display()))?;
    let n = match cfg.data.max_images {
        0 => ds.len(),
        m => m.min(ds.len()),
    };
    let layout = crate::geometry::AnchorConfig::from(&cfg.anchors);
    let matcher = crate::geometry::Matcher::from(&cfg.matcher);
    let k = cfg.model.num_classes;
    let (_, stats) = AnchorStats::measure_dataset(&ds, n, &layout, &matcher, k);
    Ok(Imbalance {
        images: n,
        classes: k,
        counts: stats.total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::coco::{CocoAnnotation, CocoCategory, CocoImage};

    /// A 96x96 image with three boxes, and one empty image, against a P5-only pyramid of 32x32 anchors
    /// (one per location, so the nine anchors tile the image). The counts are worked out by hand below.
    #[test]
    fn imbalance_ratio_equals_a_hand_count() {
        let dir = tempfile::tempdir().unwrap();
        let json = crate::data::anchor_counts::fixture::three_boxes_and_an_empty_image(
            dir.path(),
            (96, 96),
        );
        let cfg = Config::from_toml_str(
            "[model]\nnum_classes = 3\n[data]\ninput_size = 96\n[anchors]\nmin_level = 5\nmax_level = 5\n\
             anchor_scale = 1.0\nscales_per_octave = 1\naspect_ratios = [1.0]\n[matcher]\nlow_quality = \"none\"",
            &[],
        )
        .unwrap();
        let m = measure(&cfg, &json).unwrap();
        assert_eq!((m.images, m.anchors_per_image(), m.classes), (2, 9, 3));
        // image 1: positives (0,0), (2,0), (2,1); ignored (0,2), (1,2); negatives (1,0), (0,1), (1,1),
        // (2,2). Image 2: nine negatives.
        let c = m.counts;
        assert_eq!((c.positives, c.ignored, c.negatives), (3, 2, 4 + 9));
        // binary samples: one positive per positive anchor; K = 3 negatives per negative anchor and
        // K - 1 = 2 per positive anchor; none for ignored anchors.
        assert_eq!(c.binary_positives, 3);
        assert_eq!(c.binary_negatives, 13 * 3 + 3 * 2);
        assert_eq!(m.ratio(), 45.0 / 3.0);
        assert_eq!(m.anchor_ratio(), 13.0 / 3.0);
        // with max_images = 1 only the first image counts
        let one = Config {
            data: crate::config::DataConfig {
                max_images: 1,
                ..cfg.data.clone()
            },
            ..cfg
        };
        assert_eq!(measure(&one, &json).unwrap().ratio(), 18.0 / 3.0);
    }

    #[test]
    fn holdout_is_the_last_images_with_their_annotations() {
        let mk = |id: i64| CocoImage {
            id,
            file_name: format!("{id}.png"),
            width: 8,
            height: 8,
        };
        let ds = CocoDataset {
            info: None,
            images: vec![mk(3), mk(1), mk(2)],
            annotations: [1, 3, 3]
                .iter()
                .enumerate()
                .map(|(i, &img)| CocoAnnotation {
                    id: i as i64 + 1,
                    image_id: img,
                    category_id: 1,
                    bbox: [0.0, 0.0, 2.0, 2.0],
                    area: 4.0,
                    iscrowd: 0,
                })
                .collect(),
            categories: vec![CocoCategory {
                id: 1,
                name: "a".into(),
                supercategory: None,
            }],
        };
        let (tune, held) = split_off_last(&ds, 1).unwrap();
        assert_eq!(tune.images.iter().map(|i| i.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(held.images.iter().map(|i| i.id).collect::<Vec<_>>(), [3]);
        assert_eq!((tune.annotations.len(), held.annotations.len()), (1, 2));
        assert!(split_off_last(&ds, 3).is_err());
        assert!(split_off_last(&ds, 0).is_err());
    }
}
