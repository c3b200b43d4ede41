//! The real-photo benchmark: Fashion-MNIST product images (10 classes, 28x28 greyscale; MIT licence)
//! pasted at several scales onto textured canvases.
//!
//! Source: the IDX files of the Debian package `dataset-fashion-mnist`
//! (`/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`). Train scenes
//! use only the training split, val scenes only the test split. A product is pasted as its pixels above
//! an intensity threshold, tinted with a random colour, so its box is exactly the tight box of the
//! pasted pixels (minus what later objects hide).

use super::scene::{compose, Canvas, Item, SceneObject, Sprite};
use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const DEFAULT_SOURCE: &str = "/usr/share/datasets/fashion-mnist";
pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];
pub const INSTALL_HINT: &str = "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass --source DIR with the IDX files";

/// Greyscale images `count x rows x cols` and their labels.
#[derive(Debug, Clone)]
pub struct IdxImages {
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl IdxImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Reads an IDX file (optionally gzip-compressed, detected by its magic bytes) of unsigned bytes.
/// Returns the dimensions and the data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("{}: not an IDX file (bad magic number)", path.display());
    }
    if bytes[2] != 0x08 {
        bail!(
            "{}: IDX element type 0x{:02x} is not unsigned byte (0x08)",
            path.display(),
            bytes[2]
        );
    }
    let nd = bytes[3] as usize;
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        bail!("{}: truncated IDX header", path.display());
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
        bail!(
            "{}: IDX dimensions {:?} need {} data bytes, the file has {}",
            path.display(),
            dims,
            n,
            bytes.len() - header
        );
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Loads the `train` (60,000 images) or `t10k` (10,000, the test split) part from `dir`.
pub fn load_split(dir: &Path, prefix: &str) -> Result<IdxImages> {
    let img_stem = format!("{prefix}-images-idx3-ubyte");
    let lab_stem = format!("{prefix}-labels-idx1-ubyte");
    let (Some(ip), Some(lp)) = (find(dir, &img_stem), find(dir, &lab_stem)) else {
        bail!(
            "Fashion-MNIST not found: {} has no {img_stem}[.gz] and {lab_stem}[.gz]; {INSTALL_HINT}",
            dir.display()
        );
    };
    let (idims, pixels) = read_idx(&ip)?;
    let (ldims, labels) = read_idx(&lp)?;
    if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
        bail!(
            "{} and {}: expected images [n, rows, cols] and labels [n], found {:?} and {:?}",
            ip.display(),
            lp.display(),
            idims,
            ldims
        );
    }
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= CLASSES.len()) {
        bail!(
            "{}: label {l} is not a Fashion-MNIST class (0..9)",
            lp.display()
        );
    }
    if idims[0] == 0 {
        bail!("{}: no images", ip.display());
    }
    Ok(IdxImages {
        rows: idims[1],
        cols: idims[2],
        pixels,
        labels,
    })
}

/// Parameters of the Fashion-MNIST scene generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FashionConfig {
    pub size: usize,
    pub objects: (usize, usize),
    pub distractors: (usize, usize),
    pub min_size: f32,
    pub max_size: f32,
    pub min_visible: f64,
    /// Source intensity (0..255) above which a product pixel is pasted.
    pub threshold: u8,
}

impl Default for FashionConfig {
    fn default() -> Self {
        Self {
            size: 128,
            objects: (1, 6),
            distractors: (0, 3),
            min_size: 14.0,
            max_size: 100.0,
            min_visible: 0.6,
            threshold: 40,
        }
    }
}

/// Scales product `i` to about `size` px, keeps pixels above the threshold, and tints them.
fn product_sprite(
    src: &IdxImages,
    i: usize,
    size: f32,
    threshold: u8,
    rng: &mut impl Rng,
) -> Option<Sprite> {
    let img = image::GrayImage::from_raw(src.cols as u32, src.rows as u32, src.image(i).to_vec())?;
    let aspect: f32 = rng.gen_range(0.85..1.18);
    let w = ((size * aspect.sqrt()).round() as u32).max(3);
    let h = ((size / aspect.sqrt()).round() as u32).max(3);
    let mut scaled = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
    if rng.gen_bool(0.5) {
        scaled = image::imageops::flip_horizontal(&scaled);
    }
    let tint: [f32; 3] = [0, 1, 2].map(|_| rng.gen_range(0.35..1.0));
    let bright: f32 = rng.gen_range(180.0..255.0);
    let (w, h) = (w as usize, h as usize);
    let mut mask = vec![false; w * h];
    let mut rgb = vec![[0u8; 3]; w * h];
    for (k, p) in scaled.pixels().enumerate() {
        let v = p.0[0];
        if v > threshold {
            mask[k] = true;
            let l = 0.3 + 0.7 * v as f32 / 255.0;
            rgb[k] = tint.map(|t| (bright * t * l).round().clamp(0.0, 255.0) as u8);
        }
    }
    Sprite { w, h, mask, rgb }.trimmed()
}

/// Renders one scene from products of `src` (one split of Fashion-MNIST).
pub fn generate_scene(
    cfg: &FashionConfig,
    src: &IdxImages,
    rng: &mut impl Rng,
) -> (Canvas, Vec<SceneObject>) {
    let mut canvas = Canvas::textured(cfg.size, cfg.size, rng);
    let n_obj = rng.gen_range(cfg.objects.0..=cfg.objects.1);
    let n_dis = rng.gen_range(cfg.distractors.0..=cfg.distractors.1);
    let mut items = Vec::new();
    for _ in 0..(n_obj + n_dis) * 4 {
        if items.len() == n_obj + n_dis {
            break;
        }
        let size = super::shapes::log_uniform(cfg.min_size, cfg.max_size, rng);
        let want_obj = items.iter().filter(|i: &&Item| i.class.is_some()).count() < n_obj;
        let item = if want_obj {
            let i = rng.gen_range(0..src.len());
            product_sprite(src, i, size, cfg.threshold, rng).map(|s| Item {
                class: Some(src.labels[i] as usize),
                sprite: s,
            })
        } else {
            let c: [f32; 3] = [0, 1, 2].map(|_| rng.gen_range(60.0..255.0));
            super::shapes::render_blob(size, c, rng).map(|s| Item {
                class: None,
                sprite: s,
            })
        };
        if let Some(it) = item {
            items.push(it);
        }
    }
    for i in (1..items.len()).rev() {
        let j = rng.gen_range(0..=i);
        items.swap(i, j);
    }
    let objs = compose(&mut canvas, items, cfg.min_visible, rng);
    canvas.add_noise(8.0, rng);
    (canvas, objs)
}

/// Generates a Fashion-MNIST scene dataset into `dir`: train scenes from the training split, val
/// scenes from the test split.
pub fn generate(
    dir: &Path,
    source: &Path,
    cfg: &FashionConfig,
    seed: u64,
    train: usize,
    val: usize,
    quiet: bool,
) -> Result<super::generate::Manifest> {
    use super::generate::{
        begin, progress_bar, write_manifest, write_split, Manifest, Split, SplitSpec,
    };
    if cfg.objects.0 == 0 || cfg.objects.0 > cfg.objects.1 || cfg.distractors.0 > cfg.distractors.1
    {
        bail!(
            "--objects and --distractors must be MIN-MAX ranges with MIN <= MAX (objects MIN >= 1)"
        );
    }
    if !(cfg.min_size >= 4.0 && cfg.min_size <= cfg.max_size && cfg.max_size <= cfg.size as f32) {
        bail!(
            "object sizes must satisfy 4 <= --min-size <= --max-size <= --size, got {}..{} on {}",
            cfg.min_size,
            cfg.max_size,
            cfg.size
        );
    }
    let train_src = load_split(source, "train")?;
    let test_src = load_split(source, "t10k")?;
    let names: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    begin(dir)?;
    let bar = progress_bar(train + val, "fashion-mnist scenes", quiet);
    for (split, n, src) in [
        (Split::Train, train, &train_src),
        (Split::Val, val, &test_src),
    ] {
        let info = serde_json::json!({
            "description": "fl-lab Fashion-MNIST scenes",
            "generator": "fashion-mnist", "version": super::generate::GENERATOR_VERSION,
            "seed": seed, "split": split.name(),
            "source_split": if split == Split::Train { "train" } else { "test" },
            "params": cfg,
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
            |_, _, rng| Ok(generate_scene(cfg, src, rng)),
            bar.as_ref(),
        )?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let manifest = Manifest {
        kind: "fashion-mnist".into(),
        version: super::generate::GENERATOR_VERSION,
        seed,
        train,
        val,
        params: serde_json::to_value(cfg)?,
    };
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a tiny Fashion-MNIST look-alike: `n` 28x28 images (a filled rectangle whose size depends
    /// on the label) in IDX format, the images gzipped and the labels not.
    pub(crate) fn write_tiny(dir: &Path, prefix: &str, n: usize) {
        let mut img = vec![0, 0, 8, 3];
        for d in [n as u32, 28, 28] {
            img.extend_from_slice(&d.to_be_bytes());
        }
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&(n as u32).to_be_bytes());
        for i in 0..n {
            let label = (i % 10) as u8;
            lab.push(label);
            for y in 0..28 {
                for x in 0..28 {
                    let on = x >= 4 && x < 10 + label as usize && (3..25).contains(&y);
                    img.push(if on { 200 } else { 0 });
                }
            }
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&img).unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            gz.finish().unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
    }

    #[test]
    fn reads_gzipped_and_plain_idx() {
        let d = tempfile::tempdir().unwrap();
        write_tiny(d.path(), "train", 12);
        let s = load_split(d.path(), "train").unwrap();
        assert_eq!((s.len(), s.rows, s.cols), (12, 28, 28));
        assert_eq!(s.labels[3], 3);
        assert_eq!(s.image(3)[5 * 28 + 4], 200);
        assert_eq!(s.image(3)[5 * 28 + 13], 0);
    }

    #[test]
    fn missing_files_tell_how_to_install() {
        let d = tempfile::tempdir().unwrap();
        let e = format!("{:#}", load_split(d.path(), "train").unwrap_err());
        assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
        std::fs::write(d.path().join("train-images-idx3-ubyte"), [0u8, 0, 8, 3, 0]).unwrap();
        std::fs::write(d.path().join("train-labels-idx1-ubyte"), [0u8, 0, 8, 1]).unwrap();
        let e = format!("{:#}", load_split(d.path(), "train").unwrap_err());
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    }

    #[test]
    fn val_scenes_come_from_the_test_split() {
        let src = tempfile::tempdir().unwrap();
        write_tiny(src.path(), "train", 20);
        write_tiny(src.path(), "t10k", 10);
        let out = tempfile::tempdir().unwrap();
        let cfg = FashionConfig {
            size: 64,
            max_size: 48.0,
            ..FashionConfig::default()
        };
        generate(out.path(), src.path(), &cfg, 4, 6, 3, true).unwrap();
        let ds = super::super::coco::CocoDataset::load(&out.path().join("val.json")).unwrap();
        assert_eq!(ds.images.len(), 3);
        assert_eq!(ds.categories.len(), 10);
        assert_eq!(ds.info.as_ref().unwrap()["source_split"], "test");
        // The tiny products are solid rectangles: the visible area never exceeds the box area.
        for a in &ds.annotations {
            assert!(a.area <= a.bbox[2] * a.bbox[3] && a.area > 0.0);
        }
    }
}
