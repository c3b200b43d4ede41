//! Turning a COCO dataset into model inputs: decode, resize (keeping the aspect ratio) and pad to a
//! square input, optional horizontal flip, normalise, and batch as candle tensors with per-image
//! ground truth.
//!
//! Conventions:
//! - Input: `[N, 3, H, W]` f32, RGB, each channel `(pixel - mean) / std` with the ImageNet statistics
//!   in 0..255 units ([`PIXEL_MEAN`], [`PIXEL_STD`], as detectron2's defaults). Two resizes:
//!   - square (the default, `data.input_size` = S): each image is scaled by `S / max(w, h)` and the
//!     batch is `S x S`;
//!   - the paper's ([`ShorterSide`], `data.min_size` / `data.max_size`): each image is scaled so its
//!     shorter side is `min_size`, or less when its longer side would then exceed `max_size`
//!     (Detectron's `SCALES` / `MAX_SIZE`, detectron2's `ResizeShortestEdge`), and the batch is as
//!     large as its largest image, rounded up to a multiple of the divisor (128 with P7, Detectron's
//!     `FPN.COARSEST_STRIDE` in its RetinaNet configs), so batches differ in size and anchors are
//!     generated for each batch's size (docs/paper.md §8.1).
//!
//!   Either way the image is resized bilinearly, placed at the top-left, and padded bottom/right
//!   with zeros after normalisation (the mean colour), as detectron2 pads. Anchors over the padding
//!   are trained as background (no box reaches them), as in Detectron and detectron2; detections are
//!   clipped to each image's content ([`GtImage::resized_size`]) and mapped back to its own pixels
//!   ([`GtImage::to_original`]).
//! - Boxes: `[x1, y1, x2, y2]` f32 in input pixels (continuous coordinates), clipped to the image.
//! - Classes: contiguous 0-based indices from [`CategoryMap`] (category ids sorted ascending).
//! - Crowd annotations (`iscrowd = 1`) are kept apart in [`GtImage::crowd_boxes`]: not training
//!   targets (as in detectron2, which drops them before matching), but available to evaluation.
//! - Randomness: the epoch order and the flips come from one generator seeded by (seed, epoch), drawn
//!   sequentially, so batches are identical for a given seed whatever the number of threads.
//! - Small datasets (the built-in ones) are decoded once and kept in memory, resized, so training never
//!   waits on PNG decoding; larger ones are decoded per batch, in parallel with rayon.

use super::coco::{CategoryMap, CocoDataset};
use super::generate::DataSource;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

pub const PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
pub const PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// When to keep decoded images in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// Cache when the resized images take less than [`AUTO_CACHE_BYTES`].
    Auto,
    Always,
    Never,
}

pub const AUTO_CACHE_BYTES: usize = 1 << 30;

/// The longest input side in pixels the loader makes (`data.input_size` is at most this too).
pub const MAX_SIDE: usize = 8192;

/// The paper's resize: shorter side to `min_size`, longer side at most `max_size` (0: no cap), batch
/// padded to multiples of `divisor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShorterSide {
    pub min_size: usize,
    pub max_size: usize,
    pub divisor: usize,
}

impl ShorterSide {
    /// The resize a training config asks for, if it asks for the paper's (`data.min_size > 0`).
    pub fn from_config(cfg: &crate::config::Config) -> Option<ShorterSide> {
        (cfg.data.min_size > 0).then(|| ShorterSide {
            min_size: cfg.data.min_size,
            max_size: cfg.data.max_size,
            divisor: cfg.size_divisibility(),
        })
    }

    /// The scale of a `(w, h)` image: `min_size / min(w, h)`, lowered to `max_size / max(w, h)` when
    /// the longer side would round above `max_size` (Detectron's `prep_im_for_blob`). Without a cap
    /// the longer side still stops at [`MAX_SIDE`], so that no image, however elongated, asks for
    /// more memory than the square path's largest input side allows.
    pub fn scale(&self, w: u32, h: u32) -> f64 {
        let (short, long) = (w.min(h) as f64, w.max(h) as f64);
        let scale = self.min_size as f64 / short;
        let cap = if self.max_size > 0 {
            self.max_size
        } else {
            MAX_SIDE
        };
        if (long * scale).round() > cap as f64 {
            cap as f64 / long
        } else {
            scale
        }
    }

    /// Content size `(w, h)` after resizing a `(w, h)` image (each side rounded, at least 1).
    pub fn resized_size(&self, w: u32, h: u32) -> (u32, u32) {
        let s = self.scale(w, h);
        (
            ((w as f64 * s).round() as u32).max(1),
            ((h as f64 * s).round() as u32).max(1),
        )
    }

    /// `n` rounded up to a multiple of the divisor.
    pub fn pad(&self, n: usize) -> usize {
        n.div_ceil(self.divisor.max(1)) * self.divisor.max(1)
    }
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Side of the square model input in pixels (when `shorter_side` is None).
    pub input_size: usize,
    /// The paper's resize instead of the square one.
    pub shorter_side: Option<ShorterSide>,
    /// Flip each training image horizontally with probability 1/2.
    pub hflip: bool,
    pub cache: CachePolicy,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            input_size: 128,
            shorter_side: None,
            hflip: true,
            cache: CachePolicy::Auto,
        }
    }
}

/// Ground truth of one image, in input coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct GtImage {
    pub image_id: i64,
    /// Non-crowd boxes, xyxy in input pixels: the training targets.
    pub boxes: Vec<[f32; 4]>,
    /// Class index (0-based) of each box.
    pub classes: Vec<usize>,
    /// Crowd boxes and classes: excluded from training targets, kept for evaluation.
    pub crowd_boxes: Vec<[f32; 4]>,
    pub crowd_classes: Vec<usize>,
    /// Nominal scale (input pixels per original pixel): `input_size / max(w, h)`, or the paper's
    /// resize's [`ShorterSide::scale`].
    pub scale: f32,
    /// Original (width, height).
    pub orig_size: (u32, u32),
    /// (width, height) of the image content inside the padded input.
    pub resized_size: (u32, u32),
    pub flipped: bool,
}

impl GtImage {
    /// Maps an xyxy box from input coordinates back to the original image (undoing flip and resize).
    pub fn to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let (rw, rh) = (self.resized_size.0 as f32, self.resized_size.1 as f32);
        let b = if self.flipped {
            [rw - b[2], b[1], rw - b[0], b[3]]
        } else {
            b
        };
        let sx = self.orig_size.0 as f32 / rw;
        let sy = self.orig_size.1 as f32 / rh;
        [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
    }
}

/// A batch: images `[N, 3, H, W]` f32 (normalised, padded) and the ground truth of each image.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub gt: Vec<GtImage>,
}

#[derive(Debug, Clone)]
struct Record {
    id: i64,
    path: PathBuf,
    file_name: String,
    orig: (u32, u32),
    /// (xyxy in original pixels, clipped; class index; crowd)
    anns: Vec<([f32; 4], usize, bool)>,
}

/// A COCO dataset ready for batching.
pub struct Dataset {
    pub coco: CocoDataset,
    pub categories: CategoryMap,
    pub source: DataSource,
    pub cfg: LoaderConfig,
    /// Boxes that stuck out of their image and were clipped.
    pub clipped_boxes: usize,
    records: Vec<Record>,
    cache: Option<Vec<RgbImage>>,
}

/// Content size after scaling `(w, h)` so the longer side is `s`.
pub fn resized_size(w: u32, h: u32, s: usize) -> (u32, u32) {
    let scale = s as f64 / w.max(h) as f64;
    (
        ((w as f64 * scale).round() as u32).clamp(1, s as u32),
        ((h as f64 * scale).round() as u32).clamp(1, s as u32),
    )
}

/// Maps an xyxy box from an original `(w, h)` image to the resized content `(rw, rh)`, then mirrors
/// it within the content width if `flip`.
pub fn transform_box(b: [f32; 4], orig: (u32, u32), resized: (u32, u32), flip: bool) -> [f32; 4] {
    let sx = resized.0 as f32 / orig.0 as f32;
    let sy = resized.1 as f32 / orig.1 as f32;
    let r = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
    if flip {
        let w = resized.0 as f32;
        [w - r[2], r[1], w - r[0], r[3]]
    } else {
        r
    }
}

/// Writes an image already resized to fit `s x s` into `out` (`[3, s, s]`): normalised, mirrored if
/// `flip`, at the top-left, zero (the mean colour) elsewhere.
pub fn write_input(img: &RgbImage, s: usize, flip: bool, out: &mut [f32]) {
    write_input_padded(img, (s, s), flip, out)
}

/// Writes an image that fits `ph x pw` into `out` (`[3, ph, pw]`): normalised, mirrored if `flip`,
/// at the top-left, zero (the mean colour) elsewhere.
pub fn write_input_padded(img: &RgbImage, (ph, pw): (usize, usize), flip: bool, out: &mut [f32]) {
    out.fill(0.0);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    for c in 0..3 {
        let (m, inv) = (PIXEL_MEAN[c], 1.0 / PIXEL_STD[c]);
        let plane = &mut out[c * ph * pw..(c + 1) * ph * pw];
        for y in 0..h {
            let row = &mut plane[y * pw..y * pw + w];
            let src = &raw[y * w * 3..(y + 1) * w * 3];
            for (x, v) in row.iter_mut().enumerate() {
                let sx = if flip { w - 1 - x } else { x };
                *v = (src[sx * 3 + c] as f32 - m) * inv;
            }
        }
    }
}

/// One image as the model input `[1, 3, H, W]`, resized, normalised and padded exactly as the
/// loader does (the square `s x s`, or `shorter_side`'s), with its content size `(w, h)` inside it.
pub fn image_input(
    img: &RgbImage,
    s: usize,
    shorter_side: Option<ShorterSide>,
    device: &Device,
) -> Result<(Tensor, (u32, u32))> {
    let (resized, (ph, pw)) = match shorter_side {
        None => (resized_size(img.width(), img.height(), s), (s, s)),
        Some(r) => {
            let (w, h) = r.resized_size(img.width(), img.height());
            ((w, h), (r.pad(h as usize), r.pad(w as usize)))
        }
    };
    let mut buf = vec![0f32; 3 * ph * pw];
    if resized == img.dimensions() {
        write_input_padded(img, (ph, pw), false, &mut buf);
    } else {
        let r = super::image_io::resize_rgb(img, resized.0, resized.1);
        write_input_padded(&r, (ph, pw), false, &mut buf);
    }
    Ok((Tensor::from_vec(buf, (1, 3, ph, pw), device)?, resized))
}

impl Dataset {
    /// Loads and validates the COCO file, checks every image file exists, and (per the cache policy)
    /// decodes all images up front. Errors name the file and the image.
    pub fn open(source: &DataSource, cfg: LoaderConfig) -> Result<Self> {
        if cfg.input_size < 8 || cfg.input_size > 8192 {
            bail!("input size must be in 8..=8192, got {}", cfg.input_size);
        }
        if let Some(r) = cfg.shorter_side {
            if r.min_size < 8 || r.min_size > 8192 || r.max_size > 8192 || r.divisor == 0 {
                bail!("the shorter-side resize {r:?} needs min_size and max_size in 8..=8192 and a divisor");
            }
        }
        let coco = CocoDataset::load(&source.json)?;
        let categories = coco.category_map();
        let by_image = coco.annotations_by_image();
        let mut clipped_boxes = 0;
        let mut records = Vec::with_capacity(coco.images.len());
        for img in &coco.images {
            let path = source.images.join(&img.file_name);
            if !path.is_file() {
                bail!(
                    "{}: images: image id {} has file_name '{}', but {} does not exist (use --images DIR to say where the images are)",
                    source.json.display(),
                    img.id,
                    img.file_name,
                    path.display()
                );
            }
            let (w, h) = (img.width as f32, img.height as f32);
            let mut anns = Vec::new();
            for a in by_image.get(&img.id).map(|v| v.as_slice()).unwrap_or(&[]) {
                let [x, y, bw, bh] = a.bbox.map(|v| v as f32);
                let b = [x.max(0.0), y.max(0.0), (x + bw).min(w), (y + bh).min(h)];
                if b != [x, y, x + bw, y + bh] {
                    clipped_boxes += 1;
                }
                if b[2] <= b[0] || b[3] <= b[1] {
                    continue;
                }
                let class = categories
                    .index_of(a.category_id)
                    .context("category map out of sync with validation")?;
                anns.push((b, class, a.iscrowd != 0));
            }
            records.push(Record {
                id: img.id,
                path,
                file_name: img.file_name.clone(),
                orig: (img.width, img.height),
                anns,
            });
        }
        let mut ds = Dataset {
            coco,
            categories,
            source: source.clone(),
            cfg,
            clipped_boxes,
            records,
            cache: None,
        };
        let bytes: usize = ds
            .records
            .iter()
            .map(|r| {
                let (w, h) = ds.content_size(r.orig);
                w as usize * h as usize * 3
            })
            .sum();
        let cache = match ds.cfg.cache {
            CachePolicy::Always => true,
            CachePolicy::Never => false,
            CachePolicy::Auto => bytes <= AUTO_CACHE_BYTES,
        };
        if cache {
            let imgs = (0..ds.records.len())
                .into_par_iter()
                .map(|i| ds.decode_resized(i))
                .collect::<Result<Vec<_>>>()?;
            ds.cache = Some(imgs);
        }
        Ok(ds)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    pub fn num_classes(&self) -> usize {
        self.categories.num_classes()
    }

    pub fn image_id(&self, index: usize) -> i64 {
        self.records[index].id
    }

    /// Index of an image id, if present.
    pub fn index_of_id(&self, id: i64) -> Option<usize> {
        self.records.iter().position(|r| r.id == id)
    }

    /// The content size `(w, h)` of an image of original size `orig` inside the model input.
    pub fn content_size(&self, orig: (u32, u32)) -> (u32, u32) {
        match self.cfg.shorter_side {
            None => resized_size(orig.0, orig.1, self.cfg.input_size),
            Some(r) => r.resized_size(orig.0, orig.1),
        }
    }

    fn decode_resized(&self, i: usize) -> Result<RgbImage> {
        let r = &self.records[i];
        let img = super::image_io::decode_rgb(&r.path)?;
        if img.dimensions() != r.orig {
            bail!(
                "{}: images: image id {} ('{}') is {}x{} on disk but width/height say {}x{}",
                self.source.json.display(),
                r.id,
                r.file_name,
                img.width(),
                img.height(),
                r.orig.0,
                r.orig.1
            );
        }
        let (rw, rh) = self.content_size(r.orig);
        if (rw, rh) == r.orig {
            return Ok(img);
        }
        Ok(super::image_io::resize_rgb(&img, rw, rh))
    }

    /// Ground truth of image `i` in input coordinates.
    pub fn ground_truth(&self, i: usize, flip: bool) -> GtImage {
        let r = &self.records[i];
        let resized = self.content_size(r.orig);
        let scale = match self.cfg.shorter_side {
            None => self.cfg.input_size as f32 / r.orig.0.max(r.orig.1) as f32,
            Some(s) => s.scale(r.orig.0, r.orig.1) as f32,
        };
        let mut gt = GtImage {
            image_id: r.id,
            boxes: Vec::new(),
            classes: Vec::new(),
            crowd_boxes: Vec::new(),
            crowd_classes: Vec::new(),
            scale,
            orig_size: r.orig,
            resized_size: resized,
            flipped: flip,
        };
        for &(b, c, crowd) in &r.anns {
            let t = transform_box(b, r.orig, resized, flip);
            if crowd {
                gt.crowd_boxes.push(t);
                gt.crowd_classes.push(c);
            } else {
                gt.boxes.push(t);
                gt.classes.push(c);
            }
        }
        gt
    }

    /// Writes image `i` (resized, optionally flipped, normalised, padded) into `out` (`[3, H, W]`).
    fn fill(&self, i: usize, flip: bool, hw: (usize, usize), out: &mut [f32]) -> Result<()> {
        let decoded;
        let img = match &self.cache {
            Some(c) => &c[i],
            None => {
                decoded = self.decode_resized(i)?;
                &decoded
            }
        };
        write_input_padded(img, hw, flip, out);
        Ok(())
    }

    /// The `(H, W)` of a batch of the images `indices`: `S x S`, or with the paper's resize the
    /// largest content height and width, each rounded up to the divisor.
    pub fn batch_size_hw(&self, indices: &[usize]) -> (usize, usize) {
        match self.cfg.shorter_side {
            None => (self.cfg.input_size, self.cfg.input_size),
            Some(r) => {
                let (mut h, mut w) = (1, 1);
                for &i in indices {
                    let (cw, ch) = self.content_size(self.records[i].orig);
                    (h, w) = (h.max(ch as usize), w.max(cw as usize));
                }
                (r.pad(h), r.pad(w))
            }
        }
    }

    /// Builds the batch of images `indices` (flipped where `flips` says), decoding in parallel.
    /// Returns images `[N, 3, H, W]` on `device` (see [`Dataset::batch_size_hw`]).
    pub fn batch(&self, indices: &[usize], flips: &[bool], device: &Device) -> Result<Batch> {
        let (h, w) = self.batch_size_hw(indices);
        let per = 3 * h * w;
        let mut buf = vec![0f32; indices.len() * per];
        buf.par_chunks_mut(per)
            .zip(indices.par_iter().zip(flips.par_iter()))
            .try_for_each(|(out, (&i, &f))| self.fill(i, f, (h, w), out))?;
        let gt = indices
            .iter()
            .zip(flips)
            .map(|(&i, &f)| self.ground_truth(i, f))
            .collect();
        let images = Tensor::from_vec(buf, (indices.len(), 3, h, w), device)?;
        Ok(Batch { images, gt })
    }

    /// The order and flips of one epoch: shuffled and randomly flipped from a generator seeded by
    /// (seed, epoch) if `train`, else in file order without flips.
    pub fn epoch_plan(&self, seed: u64, epoch: u64, train: bool) -> (Vec<usize>, Vec<bool>) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if !train {
            return (order, vec![false; self.len()]);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch.wrapping_add(0x632B_E59B_D9B4_E019),
        );
        order.shuffle(&mut rng);
        let flips = (0..self.len())
            .map(|_| self.cfg.hflip && rng.gen_bool(0.5))
            .collect();
        (order, flips)
    }

    /// Batches of one epoch. Training epochs are shuffled and flipped and drop the last partial batch;
    /// evaluation epochs are in file order and keep it.
    pub fn epoch<'a>(
        &'a self,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        train: bool,
        device: &'a Device,
    ) -> impl Iterator<Item = Result<Batch>> + 'a {
        let (order, flips) = self.epoch_plan(seed, epoch, train);
        let bs = batch_size.max(1);
        let n = if train {
            order.len() / bs * bs
        } else {
            order.len()
        };
        (0..n.div_ceil(bs)).map(move |b| {
            let lo = b * bs;
            let hi = (lo + bs).min(n);
            self.batch(&order[lo..hi], &flips[lo..hi], device)
        })
    }
}

/// An endless stream of training batches (epoch after epoch), prepared by a background thread a few
/// batches ahead so the training step never waits for data.
pub struct TrainStream {
    rx: std::sync::mpsc::Receiver<Result<Batch>>,
    _worker: std::thread::JoinHandle<()>,
}

impl TrainStream {
    /// Starts producing batches of `batch_size` from epoch `first_epoch` on, `depth` batches ahead.
    pub fn new(
        ds: Arc<Dataset>,
        batch_size: usize,
        seed: u64,
        first_epoch: u64,
        depth: usize,
        device: Device,
    ) -> Result<Self> {
        if ds.len() < batch_size.max(1) {
            bail!(
                "the dataset has {} images, fewer than one batch of {batch_size}",
                ds.len()
            );
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        let worker = std::thread::spawn(move || {
            let mut epoch = first_epoch;
            loop {
                for b in ds.epoch(batch_size, seed, epoch, true, &device) {
                    let stop = b.is_err();
                    if tx.send(b).is_err() || stop {
                        return;
                    }
                }
                epoch += 1;
            }
        });
        Ok(Self {
            rx,
            _worker: worker,
        })
    }
}

impl Iterator for TrainStream {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const COCO: &str = r#"{
      "images": [
        {"id": 10, "file_name": "a.png", "width": 20, "height": 10},
        {"id": 11, "file_name": "b.png", "width": 6, "height": 12}
      ],
      "annotations": [
        {"id": 1, "image_id": 10, "category_id": 5, "bbox": [4, 2, 4, 4], "area": 16, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 9, "bbox": [0, 0, 20, 10], "area": 150, "iscrowd": 1},
        {"id": 3, "image_id": 11, "category_id": 2, "bbox": [3, 6, 6, 9], "area": 9}
      ],
      "categories": [{"id": 2, "name": "two"}, {"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]
    }"#;

    /// Writes the fixture: a.png is black with a white 4x4 square at x 4..8, y 2..6; b.png is a JPEG
    /// (under a .png name) of uniform grey.
    fn fixture() -> (tempfile::TempDir, DataSource) {
        let dir = tempfile::tempdir().unwrap();
        let a = RgbImage::from_fn(20, 10, |x, y| {
            if (4..8).contains(&x) && (2..6).contains(&y) {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        });
        a.save_with_format(dir.path().join("a.png"), image::ImageFormat::Png)
            .unwrap();
        let b = RgbImage::from_pixel(6, 12, Rgb([128, 128, 128]));
        b.save_with_format(dir.path().join("b.png"), image::ImageFormat::Jpeg)
            .unwrap();
        std::fs::write(dir.path().join("train.json"), COCO).unwrap();
        let src = DataSource {
            json: dir.path().join("train.json"),
            images: dir.path().to_path_buf(),
        };
        (dir, src)
    }

    fn cfg(s: usize) -> LoaderConfig {
        LoaderConfig {
            input_size: s,
            shorter_side: None,
            hflip: true,
            cache: CachePolicy::Never,
        }
    }

    fn px(t: &Tensor, n: usize, c: usize, y: usize, x: usize) -> f32 {
        t.get(n)
            .unwrap()
            .get(c)
            .unwrap()
            .get(y)
            .unwrap()
            .get(x)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn value(p: u8, c: usize) -> f32 {
        (p as f32 - PIXEL_MEAN[c]) / PIXEL_STD[c]
    }

    #[test]
    fn loads_hand_written_coco_with_crowd_and_sparse_ids() {
        let (_d, src) = fixture();
        for cache in [CachePolicy::Never, CachePolicy::Always] {
            let ds = Dataset::open(&src, LoaderConfig { cache, ..cfg(40) }).unwrap();
            assert_eq!(ds.num_classes(), 3);
            assert_eq!(ds.is_cached(), cache == CachePolicy::Always);
            let b = ds.batch(&[0, 1], &[false, false], &Device::Cpu).unwrap();
            assert_eq!(b.images.dims(), &[2, 3, 40, 40]);
            let a = &b.gt[0];
            assert_eq!(a.image_id, 10);
            assert_eq!(a.boxes, vec![[8.0, 4.0, 16.0, 12.0]]);
            assert_eq!(a.classes, vec![1]); // category 5 is the second of 2, 5, 9
            assert_eq!(a.crowd_boxes, vec![[0.0, 0.0, 40.0, 20.0]]);
            assert_eq!(a.crowd_classes, vec![2]);
            assert_eq!(
                (a.scale, a.orig_size, a.resized_size),
                (2.0, (20, 10), (40, 20))
            );
            // The second image is 6x12: scale 40/12, content 20x40; its box sticks out and is clipped.
            let g = &b.gt[1];
            assert_eq!(g.resized_size, (20, 40));
            assert_eq!(g.classes, vec![0]);
            let want = [3.0 * 20.0 / 6.0, 6.0 * 40.0 / 12.0, 20.0, 40.0];
            for (u, v) in g.boxes[0].iter().zip(want) {
                assert!((u - v).abs() < 1e-4, "{:?} vs {want:?}", g.boxes[0]);
            }
            assert_eq!(ds.clipped_boxes, 1);
            // Pixels: white inside the transformed box, black outside, zeros in the padding.
            for c in 0..3 {
                assert!((px(&b.images, 0, c, 8, 12) - value(255, c)).abs() < 1e-5);
                assert!((px(&b.images, 0, c, 8, 3) - value(0, c)).abs() < 1e-5);
                assert!((px(&b.images, 0, c, 8, 20) - value(0, c)).abs() < 1e-5);
                assert_eq!(px(&b.images, 0, c, 30, 5), 0.0);
                assert_eq!(px(&b.images, 1, c, 5, 30), 0.0);
                assert!((px(&b.images, 1, c, 20, 10) - value(128, c)).abs() < 0.1);
            }
        }
    }

    #[test]
    fn flip_moves_boxes_and_pixels_together() {
        let (_d, src) = fixture();
        let ds = Dataset::open(&src, cfg(40)).unwrap();
        let b = ds.batch(&[0], &[true], &Device::Cpu).unwrap();
        let g = &b.gt[0];
        assert_eq!(g.boxes, vec![[24.0, 4.0, 32.0, 12.0]]);
        for c in 0..3 {
            assert!((px(&b.images, 0, c, 8, 28) - value(255, c)).abs() < 1e-5);
            assert!((px(&b.images, 0, c, 8, 12) - value(0, c)).abs() < 1e-5);
        }
        let back = g.to_original(g.boxes[0]);
        assert_eq!(back, [4.0, 2.0, 8.0, 6.0]);
    }

    #[test]
    fn shorter_side_resize_closed_forms() {
        let r = ShorterSide {
            min_size: 600,
            max_size: 1000,
            divisor: 128,
        };
        // 640x480: shorter side 480 -> 600 (scale 1.25), longer 800 <= 1000.
        assert_eq!(r.scale(640, 480), 1.25);
        assert_eq!(r.resized_size(640, 480), (800, 600));
        assert_eq!(r.resized_size(480, 640), (600, 800));
        // 1000x200: 600/200 = 3 would make the longer side 3000; capped: scale 1000/1000 = 1.
        assert_eq!(r.resized_size(1000, 200), (1000, 200));
        // 427x640 (a COCO shape): 600/427 gives 899.3 -> 899 <= 1000.
        assert_eq!(r.resized_size(427, 640), (600, 899));
        // 500x1200: 600/500 gives 1440 > 1000, capped at 1000/1200.
        assert_eq!(r.resized_size(500, 1200), (417, 1000));
        assert_eq!(
            (r.pad(600), r.pad(899), r.pad(1000), r.pad(1024)),
            (640, 1024, 1024, 1024)
        );
        let uncapped = ShorterSide { max_size: 0, ..r };
        assert_eq!(uncapped.resized_size(1000, 200), (3000, 600));
        // ... up to the loader's largest side.
        assert_eq!(uncapped.resized_size(1, 10_000), (1, 8192));
    }

    #[test]
    fn shorter_side_batches_pad_to_the_divisor_and_scale_boxes() {
        let (_d, src) = fixture();
        let resize = ShorterSide {
            min_size: 20,
            max_size: 30,
            divisor: 16,
        };
        for cache in [CachePolicy::Never, CachePolicy::Always] {
            let ds = Dataset::open(
                &src,
                LoaderConfig {
                    shorter_side: Some(resize),
                    cache,
                    ..cfg(128)
                },
            )
            .unwrap();
            // a.png 20x10: 20/10 = 2 would make it 40 wide > 30, so 30/20 = 1.5: 30x15 in 16x32.
            let b = ds.batch(&[0], &[false], &Device::Cpu).unwrap();
            assert_eq!(b.images.dims(), &[1, 3, 16, 32]);
            let g = &b.gt[0];
            assert_eq!((g.scale, g.resized_size), (1.5, (30, 15)));
            assert_eq!(g.boxes, vec![[6.0, 3.0, 12.0, 9.0]]);
            assert_eq!(g.crowd_boxes, vec![[0.0, 0.0, 30.0, 15.0]]);
            for c in 0..3 {
                assert!((px(&b.images, 0, c, 5, 9) - value(255, c)).abs() < 1e-5);
                assert!((px(&b.images, 0, c, 5, 2) - value(0, c)).abs() < 1e-5);
                assert_eq!(px(&b.images, 0, c, 5, 31), 0.0); // padding right of the content
                assert_eq!(px(&b.images, 0, c, 15, 3), 0.0); // padding below it
            }
            // With b.png 6x12 (15x30 at scale 2.5) the batch is 30x30 padded to 32x32.
            let b = ds.batch(&[0, 1], &[true, false], &Device::Cpu).unwrap();
            assert_eq!(b.images.dims(), &[2, 3, 32, 32]);
            assert_eq!(b.gt[1].resized_size, (15, 30));
            assert_eq!(b.gt[1].scale, 2.5);
            let g = &b.gt[0];
            assert_eq!(g.boxes, vec![[18.0, 3.0, 24.0, 9.0]]); // flipped within the 30-px content
            assert_eq!(g.to_original(g.boxes[0]), [4.0, 2.0, 8.0, 6.0]);
            for c in 0..3 {
                assert!((px(&b.images, 0, c, 5, 21) - value(255, c)).abs() < 1e-5);
                assert_eq!(px(&b.images, 0, c, 20, 5), 0.0);
                assert_eq!(px(&b.images, 1, c, 5, 20), 0.0);
                assert!((px(&b.images, 1, c, 20, 10) - value(128, c)).abs() < 0.1);
            }
            // One image as inference sees it: the same resize and padding.
            let img = image::open(src.images.join("a.png")).unwrap().to_rgb8();
            let (t, content) = image_input(&img, 128, Some(resize), &Device::Cpu).unwrap();
            assert_eq!((t.dims(), content), (&[1, 3, 16, 32][..], (30, 15)));
        }
    }

    #[test]
    fn transform_box_closed_form() {
        // 100x50 -> 64x32, flipped within the content width.
        let r = resized_size(100, 50, 64);
        assert_eq!(r, (64, 32));
        let close = |a: [f32; 4], b: [f32; 4]| a.iter().zip(b).all(|(u, v)| (u - v).abs() < 1e-4);
        let b = transform_box([10.0, 5.0, 30.0, 45.0], (100, 50), r, false);
        assert!(close(b, [6.4, 3.2, 19.2, 28.8]), "{b:?}");
        let f = transform_box([10.0, 5.0, 30.0, 45.0], (100, 50), r, true);
        assert!(close(f, [64.0 - 19.2, 3.2, 64.0 - 6.4, 28.8]), "{f:?}");
    }

    #[test]
    fn epochs_are_deterministic_per_seed() {
        let (_d, src) = fixture();
        let ds = Dataset::open(&src, cfg(16)).unwrap();
        assert_eq!(ds.epoch_plan(3, 0, true), ds.epoch_plan(3, 0, true));
        let plans: std::collections::HashSet<_> =
            (0..16).map(|e| ds.epoch_plan(3, e, true)).collect();
        assert!(plans.len() > 1);
        assert_eq!(ds.epoch_plan(3, 0, false), (vec![0, 1], vec![false, false]));
        let dev = Device::Cpu;
        let a: Vec<_> = ds
            .epoch(1, 9, 2, true, &dev)
            .map(|b| b.unwrap().gt)
            .collect();
        let b: Vec<_> = ds
            .epoch(1, 9, 2, true, &dev)
            .map(|b| b.unwrap().gt)
            .collect();
        assert_eq!(a, b);
        assert_eq!(ds.epoch(3, 9, 0, false, &dev).count(), 1);
        assert_eq!(ds.epoch(3, 9, 0, true, &dev).count(), 0);
        let mut s = TrainStream::new(Arc::new(ds), 2, 1, 0, 2, Device::Cpu).unwrap();
        for _ in 0..5 {
            assert_eq!(s.next().unwrap().unwrap().images.dims(), &[2, 3, 16, 16]);
        }
    }

    #[test]
    fn missing_or_mismatched_images_are_named() {
        let (d, src) = fixture();
        std::fs::remove_file(d.path().join("b.png")).unwrap();
        let e = format!("{:#}", Dataset::open(&src, cfg(16)).err().unwrap());
        assert!(e.contains("b.png") && e.contains("image id 11"), "{e}");
        RgbImage::new(7, 12).save(d.path().join("b.png")).unwrap();
        let ds = Dataset::open(&src, cfg(16)).unwrap();
        let e = format!("{:#}", ds.batch(&[1], &[false], &Device::Cpu).unwrap_err());
        assert!(e.contains("b.png") && e.contains("7x12"), "{e}");
        std::fs::write(d.path().join("b.png"), b"garbage").unwrap();
        let e = format!(
            "{:#}",
            Dataset::open(
                &src,
                LoaderConfig {
                    cache: CachePolicy::Always,
                    ..cfg(16)
                }
            )
            .err()
            .unwrap()
        );
        assert!(e.contains("b.png"), "{e}");
    }
}
