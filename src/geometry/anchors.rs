//! The anchor generator: RetinaNet's anchors on pyramid levels P`min_level`..P`max_level`.
//!
//! On level `l` (stride `s = 2^l`) every feature-map location `(y, x)` carries
//! `A = scales_per_octave * aspect_ratios.len()` anchors. Anchor `(o, r)` has
//! `size = anchor_scale * s * 2^(o / scales_per_octave)` and aspect ratio `r = height / width` with area
//! `size^2`: `w = size / sqrt(r)`, `h = size * sqrt(r)`. It is centred on the centre of its cell,
//! `((x + 0.5) s, (y + 0.5) s)`.
//!
//! With the paper's defaults (P3-P7, anchor_scale 4, 3 scales per octave, ratios {1:2, 1:1, 2:1}) sizes
//! run from 32 on P3 to 512 * 2^(2/3) = 812.7 on P7 (paper §4, Detectron's `ANCHOR_SCALE 4`,
//! `SCALES_PER_OCTAVE 3`).
//!
//! ## Order
//! Anchors are flattened in the order **(level, y, x, anchor)**, the same order the model flattens its outputs
//! in. Within one location the anchor index is `o * aspect_ratios.len() + r_index`: octave-major, then the
//! aspect ratios in the order the config lists them. This is Detectron's order
//! (`test_retinanet.py` builds `cell_anchors` with `for octave in range(scales_per_octave): for aspect in
//! aspect_ratios`), so the model's `A*K` output channels map to anchors as in Detectron.
//! Detectron's yaml lists the ratios as (1.0, 2.0, 0.5); the default here lists them ascending,
//! `[0.5, 1.0, 2.0]`, which only permutes channels.
//!
//! ## Differences from Detectron, on purpose
//! - Continuous coordinates: Detectron's cell centre is `(s - 1) / 2` in its "+1" pixel-index convention,
//!   which is `s / 2` in continuous coordinates, the centre used here (detectron2's `offset = 0.5`).
//! - No rounding: Detectron rounds the widths and heights of the stride-sized base anchor before scaling
//!   (P3, ratio 0.5 gives 44 x 24 there instead of 45.25 x 22.63). detectron2 and torchvision keep the exact
//!   values, as here.

use super::boxes::Box4;
use super::GeometryError;

/// Anchor settings. `Default` is the paper's: P3-P7, anchor_scale 4, 3 scales per octave, ratios
/// 0.5, 1, 2 (height / width), so 9 anchors per location.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnchorConfig {
    pub min_level: u32,
    pub max_level: u32,
    pub anchor_scale: f32,
    pub scales_per_octave: u32,
    pub aspect_ratios: Vec<f32>,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self {
            min_level: 3,
            max_level: 7,
            anchor_scale: 4.0,
            scales_per_octave: 3,
            aspect_ratios: vec![0.5, 1.0, 2.0],
        }
    }
}

/// One pyramid level's slice of the flattened anchors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelInfo {
    pub level: u32,
    pub stride: u32,
    /// Feature-map height and width.
    pub height: usize,
    pub width: usize,
    /// Index of the level's first anchor in `Anchors::boxes`.
    pub offset: usize,
    /// Number of anchors on the level: `height * width * anchors_per_location`.
    pub count: usize,
}

/// All anchors of one image size, flattened in (level, y, x, anchor) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Anchors {
    pub boxes: Vec<Box4>,
    pub levels: Vec<LevelInfo>,
}

impl Anchors {
    /// Total number of anchors.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// Anchors per location (the same on every level).
    pub fn anchors_per_location(&self) -> usize {
        self.levels
            .iter()
            .find(|l| l.height * l.width > 0)
            .map_or(0, |l| l.count / (l.height * l.width))
    }
}

/// Largest level accepted: the stride 2^l must fit comfortably in a u32 and in f32 arithmetic.
const MAX_LEVEL: u32 = 16;

impl AnchorConfig {
    /// Check every field; the error names the field and its value.
    pub fn validate(&self) -> Result<(), GeometryError> {
        if self.max_level > MAX_LEVEL {
            return Err(GeometryError::field(
                "max_level",
                self.max_level,
                "must be at most 16",
            ));
        }
        if self.min_level > self.max_level {
            return Err(GeometryError::field(
                "min_level",
                self.min_level,
                "must not exceed max_level",
            ));
        }
        if !(self.anchor_scale.is_finite() && self.anchor_scale > 0.0) {
            return Err(GeometryError::field(
                "anchor_scale",
                self.anchor_scale,
                "must be a finite number > 0",
            ));
        }
        if self.scales_per_octave == 0 || self.scales_per_octave > 64 {
            return Err(GeometryError::field(
                "scales_per_octave",
                self.scales_per_octave,
                "must be between 1 and 64",
            ));
        }
        if self.aspect_ratios.is_empty() {
            return Err(GeometryError::field(
                "aspect_ratios",
                &self.aspect_ratios,
                "must list at least one ratio",
            ));
        }
        if let Some(r) = self
            .aspect_ratios
            .iter()
            .find(|r| !(r.is_finite() && **r > 0.0))
        {
            return Err(GeometryError::field(
                "aspect_ratios",
                r,
                "each ratio (height / width) must be a finite number > 0",
            ));
        }
        Ok(())
    }

    /// `A`: anchors at each feature-map location.
    pub fn anchors_per_location(&self) -> usize {
        self.scales_per_octave as usize * self.aspect_ratios.len()
    }

    /// Feature-map `(height, width)` per level, `min_level` first: `(ceil(h / 2^l), ceil(w / 2^l))`.
    ///
    /// This is what a chain of stride-2 convolutions with kernel 3 and padding 1 produces (each halves with
    /// rounding up: `floor((n + 2 - 3) / 2) + 1 = ceil(n / 2)`, and iterated halving rounding up equals
    /// `ceil(n / 2^l)`), as do ResNet's 7x7/2 stem and 3x3/2 max-pool. The model must produce these sizes;
    /// it checks them against this function.
    pub fn feature_sizes(&self, image_h: usize, image_w: usize) -> Vec<(usize, usize)> {
        (self.min_level..=self.max_level.min(MAX_LEVEL))
            .map(|l| (image_h.div_ceil(1 << l), image_w.div_ceil(1 << l)))
            .collect()
    }

    /// The anchors of one level at one location centred on 0: `A` boxes in the documented order.
    pub fn cell_anchors(&self, level: u32) -> Vec<Box4> {
        let stride = (1u64 << level.min(MAX_LEVEL)) as f32;
        let spo = self.scales_per_octave.max(1);
        let mut out = Vec::with_capacity(self.anchors_per_location());
        for o in 0..spo {
            let size = self.anchor_scale * stride * 2f32.powf(o as f32 / spo as f32);
            for &r in &self.aspect_ratios {
                let w = size / r.sqrt();
                let h = size * r.sqrt();
                out.push([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h]);
            }
        }
        out
    }

    /// All anchors for an input of `image_h x image_w` pixels, in (level, y, x, anchor) order.
    /// Expects a validated config (levels above 16 are skipped rather than overflowing).
    pub fn generate(&self, image_h: usize, image_w: usize) -> Anchors {
        let a = self.anchors_per_location();
        let sizes = self.feature_sizes(image_h, image_w);
        let total: usize = sizes.iter().map(|(h, w)| h * w * a).sum();
        let mut boxes = Vec::with_capacity(total);
        let mut levels = Vec::with_capacity(sizes.len());
        for (level, &(h, w)) in (self.min_level..).zip(&sizes) {
            let stride = 1u32 << level;
            let cell = self.cell_anchors(level);
            let s = stride as f32;
            let offset = boxes.len();
            for y in 0..h {
                let cy = (y as f32 + 0.5) * s;
                for x in 0..w {
                    let cx = (x as f32 + 0.5) * s;
                    boxes.extend(
                        cell.iter()
                            .map(|c| [cx + c[0], cy + c[1], cx + c[2], cy + c[3]]),
                    );
                }
            }
            levels.push(LevelInfo {
                level,
                stride,
                height: h,
                width: w,
                offset,
                count: h * w * a,
            });
        }
        Anchors { boxes, levels }
    }
}

/// The config's anchor section as the anchor generator takes it (the one place they are converted).
impl From<&crate::config::AnchorsConfig> for AnchorConfig {
    fn from(a: &crate::config::AnchorsConfig) -> Self {
        AnchorConfig {
            min_level: a.min_level as u32,
            max_level: a.max_level as u32,
            anchor_scale: a.anchor_scale as f32,
            scales_per_octave: a.scales_per_octave as u32,
            aspect_ratios: a.aspect_ratios.iter().map(|&r| r as f32).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wh(b: &Box4) -> (f32, f32) {
        (b[2] - b[0], b[3] - b[1])
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-3 * b.abs().max(1.0)
    }

    #[test]
    fn paper_p3_cell_anchors_hand_computed() {
        let cfg = AnchorConfig::default();
        cfg.validate().unwrap();
        let cell = cfg.cell_anchors(3);
        // 32 * {2^0, 2^(1/3), 2^(2/3)} = 32, 40.3175, 50.7968; ratio r = h/w: w = s/sqrt(r), h = s*sqrt(r).
        // sqrt(2) = 1.41421: 32/0.70711 = 45.2548, 32*0.70711 = 22.6274, etc.
        let expected: [(f32, f32); 9] = [
            (45.2548, 22.6274),
            (32.0, 32.0),
            (22.6274, 45.2548),
            (57.0175, 28.5088),
            (40.3175, 40.3175),
            (28.5088, 57.0175),
            (71.8376, 35.9188),
            (50.7968, 50.7968),
            (35.9188, 71.8376),
        ];
        assert_eq!(cell.len(), 9);
        for (c, (ew, eh)) in cell.iter().zip(expected) {
            let (w, h) = wh(c);
            assert!(
                close(w, ew) && close(h, eh),
                "got {w} x {h}, expected {ew} x {eh}"
            );
            // Centred on 0.
            assert!((c[0] + c[2]).abs() < 1e-4 && (c[1] + c[3]).abs() < 1e-4);
        }
    }

    #[test]
    fn paper_sizes_per_level_and_p7_largest() {
        let cfg = AnchorConfig::default();
        for (level, base) in (3..=7).zip([32.0f32, 64.0, 128.0, 256.0, 512.0]) {
            let cell = cfg.cell_anchors(level);
            // The square anchors (ratio 1, index 1 of each octave) have side base * 2^(o/3).
            for o in 0..3 {
                let (w, h) = wh(&cell[o * 3 + 1]);
                let e = base * 2f32.powf(o as f32 / 3.0);
                assert!(close(w, e) && close(h, e));
            }
        }
        let p7 = cfg.cell_anchors(7);
        let largest = p7
            .iter()
            .map(|b| (wh(b).0 * wh(b).1).sqrt())
            .fold(0.0f32, f32::max);
        assert!((largest - 812.75).abs() < 0.01, "{largest}");
    }

    #[test]
    fn counts_per_level_128_and_600() {
        let cfg = AnchorConfig::default();
        let a = cfg.generate(128, 128);
        let sizes: Vec<_> = a.levels.iter().map(|l| (l.height, l.width)).collect();
        assert_eq!(sizes, vec![(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]);
        assert_eq!(a.len(), (256 + 64 + 16 + 4 + 1) * 9);
        let a = cfg.generate(600, 600);
        let sizes: Vec<_> = a.levels.iter().map(|l| (l.height, l.width)).collect();
        // 600 -> 75 -> 37.5 rounds up to 38 -> 19 -> 9.5 rounds up to 10 -> 5.
        assert_eq!(sizes, vec![(75, 75), (38, 38), (19, 19), (10, 10), (5, 5)]);
        assert_eq!(a.len(), (5625 + 1444 + 361 + 100 + 25) * 9);
        assert_eq!(a.len(), 67_995);
        let mut offset = 0;
        for l in &a.levels {
            assert_eq!(l.offset, offset);
            assert_eq!(l.count, l.height * l.width * 9);
            assert_eq!(l.stride, 1 << l.level);
            offset += l.count;
        }
        assert_eq!(a.anchors_per_location(), 9);
        // Non-square input.
        assert_eq!(cfg.feature_sizes(100, 257)[0], (13, 33));
    }

    #[test]
    fn order_is_level_y_x_anchor_with_octave_major_cells() {
        let cfg = AnchorConfig::default();
        let a = cfg.generate(64, 96);
        for l in &a.levels {
            let cell = cfg.cell_anchors(l.level);
            let s = l.stride as f32;
            for y in 0..l.height {
                for x in 0..l.width {
                    for (k, c) in cell.iter().enumerate() {
                        let i = l.offset + (y * l.width + x) * 9 + k;
                        let b = a.boxes[i];
                        let (cx, cy) = (0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3]));
                        assert!((cx - (x as f32 + 0.5) * s).abs() < 1e-3);
                        assert!((cy - (y as f32 + 0.5) * s).abs() < 1e-3);
                        let (w, h) = wh(&b);
                        assert!(close(w, c[2] - c[0]) && close(h, c[3] - c[1]));
                    }
                }
            }
        }
        // Within a location: octave 0 with ratios 0.5, 1, 2, then octave 1, ...: wide, square, tall.
        let (w0, h0) = wh(&a.boxes[0]);
        let (w3, _) = wh(&a.boxes[3]);
        assert!(w0 > h0 && w3 > w0);
    }

    #[test]
    fn validate_names_field_and_value() {
        let bad = [
            (
                AnchorConfig {
                    min_level: 5,
                    max_level: 4,
                    ..Default::default()
                },
                "min_level = 5",
            ),
            (
                AnchorConfig {
                    max_level: 40,
                    ..Default::default()
                },
                "max_level = 40",
            ),
            (
                AnchorConfig {
                    anchor_scale: f32::NAN,
                    ..Default::default()
                },
                "anchor_scale = NaN",
            ),
            (
                AnchorConfig {
                    scales_per_octave: 0,
                    ..Default::default()
                },
                "scales_per_octave = 0",
            ),
            (
                AnchorConfig {
                    aspect_ratios: vec![],
                    ..Default::default()
                },
                "aspect_ratios = []",
            ),
            (
                AnchorConfig {
                    aspect_ratios: vec![1.0, -2.0],
                    ..Default::default()
                },
                "aspect_ratios = -2.0",
            ),
        ];
        for (cfg, msg) in bad {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
    }

    #[test]
    fn toml_round_trip_and_partial() {
        let cfg: AnchorConfig =
            toml::from_str("scales_per_octave = 2\naspect_ratios = [1.0]").unwrap();
        assert_eq!(cfg.scales_per_octave, 2);
        assert_eq!(cfg.anchors_per_location(), 2);
        assert_eq!(cfg.min_level, 3);
        assert!(toml::from_str::<AnchorConfig>("anchor_sizes = 3").is_err());
    }
}
