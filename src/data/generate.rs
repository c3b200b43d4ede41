//! Writing generated datasets to disk, and finding datasets for commands.
//!
//! Layout of `data/<name>/`: `images/train/000000.png ...`, `images/val/...`, `train.json`, `val.json`
//! (COCO instances; `file_name` is relative to `images/`, category ids are 1..=K, image and annotation
//! ids start at 1), and `manifest.json`, written last, which records the generator's parameters. A
//! dataset without a manifest matching the requested parameters is incomplete and is regenerated.
//!
//! Every image is drawn from its own random generator seeded by (seed, split, index), so the output is
//! byte-identical for a given seed whatever the number of threads.

use super::coco::{CocoAnnotation, CocoCategory, CocoDataset, CocoImage};
use super::scene::{Canvas, SceneObject};
use super::shapes::ShapesConfig;
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bumped whenever the generators' output changes, so cached datasets are regenerated.
pub const GENERATOR_VERSION: u32 = 1;
/// Name of the built-in benchmark under the data root.
pub const BUILTIN_NAME: &str = "builtin";
pub const BUILTIN_SEED: u64 = 0;
pub const BUILTIN_TRAIN: usize = 2000;
pub const BUILTIN_VAL: usize = 500;

/// The two splits a generator writes. Val scenes never share a random stream with train scenes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// What was generated; equality with the requested manifest means the cache is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: String,
    pub version: u32,
    pub seed: u64,
    pub train: usize,
    pub val: usize,
    pub params: serde_json::Value,
}

/// The random generator of image `index` of `split`: a SplitMix-style mix of the three numbers.
pub fn image_rng(seed: u64, split: Split, index: usize) -> ChaCha8Rng {
    let mut z =
        seed ^ (match split {
            Split::Train => 0x5452_4149_4e00_0000,
            Split::Val => 0x5641_4c00_0000_0000,
        }) ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// Which scenes of a split to render.
#[derive(Debug, Clone, Copy)]
pub struct SplitSpec {
    pub split: Split,
    pub count: usize,
    pub seed: u64,
}

/// Renders the scenes of `spec` with `scene` and writes their PNGs and the split's COCO file.
pub fn write_split<F>(
    dir: &Path,
    spec: SplitSpec,
    class_names: &[String],
    info: serde_json::Value,
    scene: F,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<CocoDataset>
where
    F: Fn(Split, usize, &mut ChaCha8Rng) -> Result<(Canvas, Vec<SceneObject>)> + Sync,
{
    let SplitSpec { split, count, seed } = spec;
    let img_dir = dir.join("images").join(split.name());
    std::fs::create_dir_all(&img_dir)
        .with_context(|| format!("cannot create directory {}", img_dir.display()))?;
    let scenes: Vec<(CocoImage, Vec<SceneObject>)> = (0..count)
        .into_par_iter()
        .map(|i| -> Result<(CocoImage, Vec<SceneObject>)> {
            let mut rng = image_rng(seed, split, i);
            let (canvas, objs) = scene(split, i, &mut rng)?;
            let file = format!("{}/{:06}.png", split.name(), i);
            super::image_io::write_png_unsynced(
                &dir.join("images").join(&file),
                &canvas.to_image(),
            )?;
            if let Some(p) = progress {
                p.inc(1);
            }
            Ok((
                CocoImage {
                    id: i as i64 + 1,
                    file_name: file,
                    width: canvas.w as u32,
                    height: canvas.h as u32,
                },
                objs,
            ))
        })
        .collect::<Result<_>>()?;
    let mut ds = CocoDataset {
        info: Some(info),
        images: Vec::with_capacity(count),
        annotations: Vec::new(),
        categories: class_names
            .iter()
            .enumerate()
            .map(|(k, n)| CocoCategory {
                id: k as i64 + 1,
                name: n.clone(),
                supercategory: None,
            })
            .collect(),
    };
    for (img, objs) in scenes {
        for o in objs {
            let id = ds.annotations.len() as i64 + 1;
            ds.annotations.push(CocoAnnotation {
                id,
                image_id: img.id,
                category_id: o.class as i64 + 1,
                bbox: o.bbox,
                area: o.area,
                iscrowd: 0,
            });
        }
        ds.images.push(img);
    }
    ds.save(&dir.join(format!("{}.json", split.name())))?;
    Ok(ds)
}

/// Whether `dir` holds a complete dataset generated with exactly `manifest`.
pub fn is_complete(dir: &Path, manifest: &Manifest) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) else {
        return false;
    };
    let Ok(found) = serde_json::from_str::<Manifest>(&text) else {
        return false;
    };
    if &found != manifest {
        return false;
    }
    let count = |s: &str| {
        std::fs::read_dir(dir.join("images").join(s))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".png"))
                    .count()
            })
            .unwrap_or(0)
    };
    dir.join("train.json").is_file()
        && dir.join("val.json").is_file()
        && count("train") >= manifest.train
        && count("val") >= manifest.val
}

/// The manifest's file name: its presence marks a complete generated dataset.
pub const MANIFEST: &str = "manifest.json";
/// Present while a generator writes a dataset, so that an interrupted generation is known as the
/// generator's own (and may be overwritten) rather than a dataset a user made by hand.
pub const IN_PROGRESS: &str = ".generating";

/// Whether `dir` holds a dataset that no generator wrote (files, but neither a manifest nor an
/// interrupted generation's marker): one that must not be overwritten without asking.
pub fn holds_foreign_dataset(dir: &Path) -> bool {
    let files = ["train.json", "val.json", "images"]
        .iter()
        .any(|f| dir.join(f).exists());
    files && !dir.join(MANIFEST).exists() && !dir.join(IN_PROGRESS).exists()
}

/// Starts writing a dataset into `dir`: marks it as in progress and drops an earlier manifest.
pub fn begin(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::util::write_atomic(&dir.join(IN_PROGRESS), b"")?;
    match std::fs::remove_file(dir.join(MANIFEST)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.join(MANIFEST).display()))
        }
        _ => Ok(()),
    }
}

/// Writes the manifest last: its presence marks the dataset complete.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    crate::util::write_atomic(&dir.join(MANIFEST), &serde_json::to_vec_pretty(manifest)?)?;
    let _ = std::fs::remove_file(dir.join(IN_PROGRESS));
    Ok(())
}

/// Generates a shapes dataset into `dir` (both splits and the manifest).
pub fn generate_shapes(
    dir: &Path,
    cfg: &ShapesConfig,
    seed: u64,
    train: usize,
    val: usize,
    quiet: bool,
) -> Result<Manifest> {
    cfg.validate()?;
    let manifest = Manifest {
        kind: "shapes".into(),
        version: GENERATOR_VERSION,
        seed,
        train,
        val,
        params: serde_json::to_value(cfg)?,
    };
    let names: Vec<String> = (0..cfg.classes).map(super::shapes::class_name).collect();
    begin(dir)?;
    let bar = progress_bar(train + val, "shapes", quiet);
    for (split, n) in [(Split::Train, train), (Split::Val, val)] {
        let info = serde_json::json!({
            "description": "fl-lab built-in synthetic shapes benchmark",
            "generator": "shapes", "version": GENERATOR_VERSION, "seed": seed,
            "split": split.name(), "params": cfg,
        });
        write_split(
            dir,
            SplitSpec {
                split,
                count: n,
                seed,
            },
            &names,
            info,
            |_, _, rng| Ok(super::shapes::generate_scene(cfg, rng)),
            bar.as_ref(),
        )?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

pub(crate) fn progress_bar(n: usize, what: &str, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet {
        return None;
    }
    let b = indicatif::ProgressBar::new(n as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(format!("generating {what}"));
    Some(b)
}

/// The data root: `$FL_LAB_DATA` if set, else `data` in the working directory.
pub fn default_data_root() -> PathBuf {
    std::env::var_os("FL_LAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Makes sure the built-in benchmark exists under `root` (generating it once, or again if it is
/// incomplete or was made by another generator version) and returns its directory.
pub fn ensure_builtin(root: &Path, quiet: bool) -> Result<PathBuf> {
    let dir = root.join(BUILTIN_NAME);
    let cfg = ShapesConfig::default();
    let manifest = Manifest {
        kind: "shapes".into(),
        version: GENERATOR_VERSION,
        seed: BUILTIN_SEED,
        train: BUILTIN_TRAIN,
        val: BUILTIN_VAL,
        params: serde_json::to_value(&cfg)?,
    };
    if is_complete(&dir, &manifest) {
        return Ok(dir);
    }
    if !quiet {
        eprintln!(
            "generating the built-in benchmark in {} (once)",
            dir.display()
        );
    }
    generate_shapes(&dir, &cfg, BUILTIN_SEED, BUILTIN_TRAIN, BUILTIN_VAL, quiet)?;
    Ok(dir)
}

/// Where a split's COCO file and images are, resolved from a user's `--data` (a dataset directory or
/// a COCO JSON file) and optional `--images`; with neither, the built-in benchmark.
#[derive(Debug, Clone)]
pub struct DataSource {
    pub json: PathBuf,
    pub images: PathBuf,
}

pub fn resolve(
    data: Option<&Path>,
    images: Option<&Path>,
    split: Split,
    quiet: bool,
) -> Result<DataSource> {
    let json = match data {
        None => ensure_builtin(&default_data_root(), quiet)?.join(format!("{}.json", split.name())),
        Some(p) if p.is_dir() => {
            let j = p.join(format!("{}.json", split.name()));
            if !j.is_file() {
                anyhow::bail!(
                    "--data {}: no {}.json in this directory (give a COCO JSON file, or a directory with train.json and val.json)",
                    p.display(),
                    split.name()
                );
            }
            j
        }
        Some(p) if p.is_file() => p.to_path_buf(),
        Some(p) => anyhow::bail!("--data {}: no such file or directory", p.display()),
    };
    let images = match images {
        Some(i) => i.to_path_buf(),
        None => {
            let parent = json.parent().unwrap_or(Path::new(".")).to_path_buf();
            if parent.join("images").is_dir() {
                parent.join("images")
            } else {
                parent
            }
        }
    };
    Ok(DataSource { json, images })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_cfg() -> ShapesConfig {
        ShapesConfig {
            size: 48,
            max_size: 40.0,
            min_size: 6.0,
            ..ShapesConfig::default()
        }
    }

    fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["train.json", "val.json", "manifest.json"] {
            out.push((sub.to_string(), std::fs::read(dir.join(sub)).unwrap()));
        }
        for split in ["train", "val"] {
            let mut names: Vec<_> = std::fs::read_dir(dir.join("images").join(split))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
        out
    }

    #[test]
    fn same_seed_gives_the_same_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        generate_shapes(a.path(), &small_cfg(), 7, 6, 3, true).unwrap();
        generate_shapes(b.path(), &small_cfg(), 7, 6, 3, true).unwrap();
        let (fa, fb) = (read_all(a.path()), read_all(b.path()));
        assert_eq!(fa.len(), 3 + 9);
        for ((na, ba), (_, bb)) in fa.iter().zip(&fb) {
            assert!(ba == bb, "{na} differs between two runs with the same seed");
        }
        let c = tempfile::tempdir().unwrap();
        generate_shapes(c.path(), &small_cfg(), 8, 6, 3, true).unwrap();
        assert_ne!(
            std::fs::read(a.path().join("images/train/000000.png")).unwrap(),
            std::fs::read(c.path().join("images/train/000000.png")).unwrap()
        );
    }

    #[test]
    fn generated_boxes_are_tight_around_object_pixels() {
        // Re-render each scene from its seed to get the owner map, and compare with the written JSON.
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        generate_shapes(dir.path(), &cfg, 11, 20, 2, true).unwrap();
        let ds = CocoDataset::load(&dir.path().join("train.json")).unwrap();
        let by_image = ds.annotations_by_image();
        let mut checked = 0;
        for (i, img) in ds.images.iter().enumerate() {
            let (canvas, _) =
                super::super::shapes::generate_scene(&cfg, &mut image_rng(11, Split::Train, i));
            let png =
                super::super::image_io::decode_rgb(&dir.path().join("images").join(&img.file_name))
                    .unwrap();
            assert_eq!(png, canvas.to_image());
            let anns = by_image.get(&img.id).cloned().unwrap_or_default();
            for (k, a) in anns.iter().enumerate() {
                let id = k as u16 + 1;
                let [x, y, w, h] = a.bbox.map(|v| v as usize);
                let mut count = 0;
                let (mut top, mut bottom, mut left, mut right) = (false, false, false, false);
                for py in 0..canvas.h {
                    for px in 0..canvas.w {
                        if canvas.owner[py * canvas.w + px] != id {
                            continue;
                        }
                        count += 1;
                        assert!(px >= x && px < x + w && py >= y && py < y + h);
                        top |= py == y;
                        bottom |= py == y + h - 1;
                        left |= px == x;
                        right |= px == x + w - 1;
                    }
                }
                assert!(
                    top && bottom && left && right,
                    "box {:?} is not tight",
                    a.bbox
                );
                assert_eq!(count as f64, a.area);
                checked += 1;
            }
        }
        assert!(checked > 20);
    }

    #[test]
    fn builtin_cache_detects_incomplete_datasets() {
        let dir = tempfile::tempdir().unwrap();
        let m = generate_shapes(dir.path(), &small_cfg(), 1, 3, 2, true).unwrap();
        assert!(is_complete(dir.path(), &m));
        std::fs::remove_file(dir.path().join("images/val/000001.png")).unwrap();
        assert!(!is_complete(dir.path(), &m));
        let mut other = m.clone();
        other.seed = 2;
        assert!(!is_complete(dir.path(), &other));
    }
}
