//! The built-in synthetic benchmark: procedural scenes of coloured shapes.
//!
//! A class is a (shape, colour) pair. With K <= 10 every class has its own shape and, up to 8, its own
//! colour; larger K (up to 80) uses more combinations, so classes then differ by shape or by colour
//! alone. Within a class, objects vary in size (log-uniform, spanning the pyramid levels), aspect ratio,
//! rotation, shade and lighting. Distractors are hard negatives: the class shapes in (shape, colour)
//! combinations that are not a class, and amorphous blobs in the class colours.

use super::scene::{compose, Canvas, Item, SceneObject, Sprite};
use anyhow::{bail, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub const SHAPES: [&str; 10] = [
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "hexagon",
    "half-disc",
    "L-shape",
];
pub const COLOURS: [(&str, [f32; 3]); 8] = [
    ("red", [215.0, 40.0, 40.0]),
    ("green", [40.0, 175.0, 60.0]),
    ("blue", [45.0, 75.0, 215.0]),
    ("yellow", [230.0, 210.0, 40.0]),
    ("magenta", [205.0, 50.0, 200.0]),
    ("cyan", [40.0, 200.0, 215.0]),
    ("orange", [240.0, 130.0, 25.0]),
    ("white", [240.0, 240.0, 240.0]),
];
/// Largest number of classes: every (shape, colour) combination.
pub const MAX_CLASSES: usize = SHAPES.len() * COLOURS.len();

/// (shape, colour) of class `k`. The pairs are distinct for k < 80 because gcd(10 + 1, 8) = 1, and the
/// first 8 classes have distinct shapes and distinct colours.
pub fn class_parts(k: usize) -> (usize, usize) {
    let s = SHAPES.len();
    (k % s, (k + k / s) % COLOURS.len())
}

pub fn class_name(k: usize) -> String {
    let (s, c) = class_parts(k);
    format!("{} {}", COLOURS[c].0, SHAPES[s])
}

/// Parameters of the shapes generator. Object sizes are in pixels and do not scale with the canvas,
/// so a larger canvas means more background anchors per object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapesConfig {
    /// Canvas side in pixels (square images).
    pub size: usize,
    /// Number of classes K (1..=80).
    pub classes: usize,
    /// Objects per image, inclusive range.
    pub objects: (usize, usize),
    /// Distractors per image, inclusive range.
    pub distractors: (usize, usize),
    /// Object size range (square root of the box area before trimming), log-uniform.
    pub min_size: f32,
    pub max_size: f32,
    /// Fraction of its pixels every object keeps visible under occlusion.
    pub min_visible: f64,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        Self {
            size: 128,
            classes: 8,
            objects: (1, 6),
            distractors: (1, 4),
            min_size: 10.0,
            max_size: 100.0,
            min_visible: 0.6,
        }
    }
}

impl ShapesConfig {
    pub fn validate(&self) -> Result<()> {
        if self.classes == 0 || self.classes > MAX_CLASSES {
            bail!(
                "--classes must be in 1..={MAX_CLASSES}, got {}",
                self.classes
            );
        }
        if self.size < 16 || self.size > 4096 {
            bail!("--size must be in 16..=4096, got {}", self.size);
        }
        if self.objects.0 == 0 || self.objects.0 > self.objects.1 || self.objects.1 > 1000 {
            bail!(
                "--objects must be MIN-MAX with 1 <= MIN <= MAX <= 1000, got {}-{}",
                self.objects.0,
                self.objects.1
            );
        }
        if self.distractors.0 > self.distractors.1 || self.distractors.1 > 1000 {
            bail!(
                "--distractors must be MIN-MAX with MIN <= MAX <= 1000, got {}-{}",
                self.distractors.0,
                self.distractors.1
            );
        }
        if !(self.min_size >= 3.0 && self.min_size <= self.max_size) {
            bail!(
                "object sizes must satisfy 3 <= --min-size <= --max-size, got {}..{}",
                self.min_size,
                self.max_size
            );
        }
        if self.max_size > self.size as f32 {
            bail!(
                "--max-size {} exceeds the canvas --size {}",
                self.max_size,
                self.size
            );
        }
        if !(0.0..=1.0).contains(&self.min_visible) {
            bail!("min_visible must be in [0, 1], got {}", self.min_visible);
        }
        Ok(())
    }
}

/// Whether the point `(u, v)` (shape frame, the shape spanning about [-1, 1]^2) lies inside `shape`.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    match shape {
        0 => u * u + v * v <= 1.0,
        1 => au <= 0.9 && av <= 0.9,
        2 => (-1.0..=0.9).contains(&v) && au <= (v + 1.0) / 2.0,
        3 => au + av <= 1.0,
        4 => (au <= 0.33 && av <= 1.0) || (av <= 0.33 && au <= 1.0),
        5 => {
            let r2 = u * u + v * v;
            (0.3..=1.0).contains(&r2)
        }
        6 => {
            let r = (u * u + v * v).sqrt();
            let a = v.atan2(u) + std::f32::consts::FRAC_PI_2;
            let sector = std::f32::consts::TAU / 5.0;
            let t = (a.rem_euclid(sector) / sector - 0.5).abs() * 2.0; // 1 at a point, 0 between
            r <= 0.42 + 0.58 * t
        }
        7 => au <= 1.0 && av <= 0.87 && av <= 1.732 * (1.0 - au),
        8 => u * u + v * v <= 1.0 && v >= -0.1,
        _ => au <= 0.9 && av <= 0.9 && (u <= -0.2 || v >= 0.25),
    }
}

/// Renders a shape of side about `size` px with the given aspect, rotation and colour; pixels are
/// inside when their centre is (no anti-aliasing, so the mask is exact).
fn render_shape(
    shape: usize,
    size: f32,
    aspect: f32,
    rot: f32,
    colour: [f32; 3],
    rng: &mut impl Rng,
) -> Option<Sprite> {
    let a = size / 2.0 * aspect.sqrt();
    let b = size / 2.0 / aspect.sqrt();
    let (c, s) = (rot.cos(), rot.sin());
    let hw = a * c.abs() + b * s.abs();
    let hh = a * s.abs() + b * c.abs();
    let (w, h) = (
        (2.0 * hw).ceil() as usize + 2,
        (2.0 * hh).ceil() as usize + 2,
    );
    // Lighting: a linear shade across the object, plus a per-object shade of the class colour.
    let shade: f32 = rng.gen_range(0.7..1.1);
    let jitter: [f32; 3] = [0, 1, 2].map(|_| rng.gen_range(-18.0..18.0));
    let la: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
    let light = rng.gen_range(0.0..0.25);
    let (lx, ly) = (la.cos() * light, la.sin() * light);
    let mut mask = vec![false; w * h];
    let mut rgb = vec![[0u8; 3]; w * h];
    for y in 0..h {
        for x in 0..w {
            let px = x as f32 + 0.5 - w as f32 / 2.0;
            let py = y as f32 + 0.5 - h as f32 / 2.0;
            let xr = px * c + py * s;
            let yr = -px * s + py * c;
            let (u, v) = (xr / a, yr / b);
            if inside(shape, u, v) {
                mask[y * w + x] = true;
                let l = 1.0 + lx * u + ly * v;
                rgb[y * w + x] = [0, 1, 2].map(|i| {
                    (colour[i] * shade * l + jitter[i])
                        .round()
                        .clamp(0.0, 255.0) as u8
                });
            }
        }
    }
    Sprite { w, h, mask, rgb }.trimmed()
}

/// An amorphous blob: a star-convex outline with a few random harmonics.
pub(crate) fn render_blob(size: f32, colour: [f32; 3], rng: &mut impl Rng) -> Option<Sprite> {
    // Mostly an elongated, lumpy oval: a strong 2nd harmonic and weak higher ones, so that a blob in a
    // class colour does not mimic that class's triangle, square or star. r(theta) <= 1.66 r0 < n / 2.
    let harm: Vec<(f32, f32)> = (2..6)
        .map(|k| {
            let amp = if k == 2 { 0.1..0.3 } else { 0.0..0.12 };
            (
                rng.gen_range(amp),
                rng.gen_range(0.0..std::f32::consts::TAU),
            )
        })
        .collect();
    let r0 = size / 2.0 * 0.7;
    let n = (size * 1.2).ceil() as usize + 3;
    let shade: f32 = rng.gen_range(0.7..1.1);
    let mut mask = vec![false; n * n];
    let mut rgb = vec![[0u8; 3]; n * n];
    for y in 0..n {
        for x in 0..n {
            let px = x as f32 + 0.5 - n as f32 / 2.0;
            let py = y as f32 + 0.5 - n as f32 / 2.0;
            let th = py.atan2(px);
            let r: f32 = harm
                .iter()
                .enumerate()
                .map(|(k, &(amp, ph))| amp * ((k as f32 + 2.0) * th + ph).sin())
                .sum::<f32>()
                + 1.0;
            if (px * px + py * py).sqrt() <= r0 * r {
                mask[y * n + x] = true;
                rgb[y * n + x] = colour.map(|c| (c * shade).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    Sprite {
        w: n,
        h: n,
        mask,
        rgb,
    }
    .trimmed()
}

pub(crate) fn log_uniform(lo: f32, hi: f32, rng: &mut impl Rng) -> f32 {
    if hi <= lo {
        return lo;
    }
    (rng.gen_range(lo.ln()..hi.ln())).exp()
}

/// Renders one scene: background, objects and distractors (in random stacking order), pixel noise.
pub fn generate_scene(cfg: &ShapesConfig, rng: &mut impl Rng) -> (Canvas, Vec<SceneObject>) {
    let mut canvas = Canvas::textured(cfg.size, cfg.size, rng);
    let n_obj = rng.gen_range(cfg.objects.0..=cfg.objects.1);
    let n_dis = rng.gen_range(cfg.distractors.0..=cfg.distractors.1);
    // Combinations that are not classes make the hardest negatives: a known shape in a known colour.
    let unused: Vec<(usize, usize)> = (0..SHAPES.len())
        .flat_map(|s| (0..COLOURS.len()).map(move |c| (s, c)))
        .filter(|&(s, c)| (0..cfg.classes).all(|k| class_parts(k) != (s, c)))
        .collect();
    let mut items = Vec::with_capacity(n_obj + n_dis);
    let mut tries = 0;
    while items.len() < n_obj + n_dis && tries < 4 * (n_obj + n_dis) + 8 {
        tries += 1;
        let is_obj = items.iter().filter(|i: &&Item| i.class.is_some()).count() < n_obj;
        let size = log_uniform(cfg.min_size, cfg.max_size, rng);
        let aspect = log_uniform(0.7, 1.0 / 0.7, rng);
        let rot = rng.gen_range(-0.35..0.35);
        let sprite = if is_obj {
            let k = rng.gen_range(0..cfg.classes);
            let (s, c) = class_parts(k);
            render_shape(s, size, aspect, rot, COLOURS[c].1, rng).map(|sp| (Some(k), sp))
        } else if !unused.is_empty() && rng.gen_bool(0.5) {
            let (s, c) = unused[rng.gen_range(0..unused.len())];
            render_shape(s, size, aspect, rot, COLOURS[c].1, rng).map(|sp| (None, sp))
        } else {
            let c = COLOURS[class_parts(rng.gen_range(0..cfg.classes)).1].1;
            render_blob(size, c, rng).map(|sp| (None, sp))
        };
        if let Some((class, sprite)) = sprite {
            items.push(Item { class, sprite });
        }
    }
    // Shuffle the stacking order so distractors occlude objects as often as the reverse.
    for i in (1..items.len()).rev() {
        let j = rng.gen_range(0..=i);
        items.swap(i, j);
    }
    let objs = compose(&mut canvas, items, cfg.min_visible, rng);
    canvas.add_noise(10.0, rng);
    (canvas, objs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn class_pairs_are_distinct_up_to_max() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..MAX_CLASSES {
            assert!(seen.insert(class_parts(k)), "class {k} repeats");
        }
        let first: Vec<_> = (0..8).map(class_parts).collect();
        for i in 0..8 {
            for j in 0..i {
                assert_ne!(first[i].0, first[j].0);
                assert_ne!(first[i].1, first[j].1);
            }
        }
    }

    #[test]
    fn every_shape_renders_at_the_smallest_size() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (s, name) in SHAPES.iter().enumerate() {
            let sp = render_shape(s, 8.0, 1.0, 0.0, [200.0; 3], &mut rng).unwrap();
            assert!(sp.pixel_count() >= 16, "{name} has {}", sp.pixel_count());
        }
    }

    #[test]
    fn scenes_respect_the_config() {
        let cfg = ShapesConfig::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut total = 0;
        for _ in 0..40 {
            let (c, objs) = generate_scene(&cfg, &mut rng);
            assert_eq!((c.w, c.h), (128, 128));
            assert!(objs.len() <= cfg.objects.1);
            total += objs.len();
            for o in &objs {
                assert!(o.class < cfg.classes);
                assert!(o.bbox[0] + o.bbox[2] <= 128.0 && o.bbox[1] + o.bbox[3] <= 128.0);
            }
        }
        assert!(total >= 40 * 2, "too few objects placed: {total}");
    }
}
