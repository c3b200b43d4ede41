//! Scene composition shared by the generators: textured backgrounds, sprites placed with bounded
//! occlusion, and exact modal boxes (the tight box of each object's visible pixels, like COCO's boxes,
//! which are drawn around the visible segmentation).

use rand::Rng;

/// A rendered object or distractor: a binary mask and the colours of its pixels, `w x h` row-major.
/// Only mask pixels are painted onto the canvas, so the object's pixels are exactly the mask pixels.
#[derive(Debug, Clone)]
pub struct Sprite {
    pub w: usize,
    pub h: usize,
    pub mask: Vec<bool>,
    pub rgb: Vec<[u8; 3]>,
}

impl Sprite {
    /// Crops the sprite to the bounding box of its mask; `None` if the mask is empty.
    pub fn trimmed(self) -> Option<Sprite> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.h {
            for x in 0..self.w {
                if self.mask[y * self.w + x] {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x);
                    y1 = y1.max(y);
                }
            }
        }
        if x0 == usize::MAX {
            return None;
        }
        let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
        let mut mask = Vec::with_capacity(w * h);
        let mut rgb = Vec::with_capacity(w * h);
        for y in y0..=y1 {
            for x in x0..=x1 {
                mask.push(self.mask[y * self.w + x]);
                rgb.push(self.rgb[y * self.w + x]);
            }
        }
        Some(Sprite { w, h, mask, rgb })
    }

    pub fn pixel_count(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

/// Owner value of background pixels in [`Canvas::owner`].
pub const BACKGROUND: u16 = 0;
/// Owner value of distractor pixels in [`Canvas::owner`].
pub const DISTRACTOR: u16 = u16::MAX;

/// An RGB canvas plus, per pixel, which object painted it last (object `i` is stored as `i + 1`).
#[derive(Debug, Clone)]
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    pub rgb: Vec<[u8; 3]>,
    pub owner: Vec<u16>,
}

/// One annotated object of a composed scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneObject {
    /// Contiguous class index 0..K.
    pub class: usize,
    /// Tight box of the visible pixels, COCO `[x, y, w, h]` (pixel `i` covers `[i, i + 1)`).
    pub bbox: [f64; 4],
    /// Number of visible pixels (COCO's segmentation area).
    pub area: f64,
}

fn clamp_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// A random muted colour: background tones overlap the objects' hues but are less saturated.
fn muted_colour(rng: &mut impl Rng) -> [f32; 3] {
    let grey: f32 = rng.gen_range(70.0..190.0);
    let sat: f32 = rng.gen_range(0.15..0.5);
    let c: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
    [0, 1, 2].map(|i| grey + sat * (c[i] * 255.0 - 127.5))
}

/// Low-frequency value noise in [-1, 1]: a random `g x g` grid, bilinearly interpolated.
fn value_noise(w: usize, h: usize, g: usize, rng: &mut impl Rng) -> Vec<f32> {
    let grid: Vec<f32> = (0..(g + 1) * (g + 1))
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        let fy = y as f32 / h as f32 * g as f32;
        let (iy, ty) = (fy.floor() as usize, fy.fract());
        for x in 0..w {
            let fx = x as f32 / w as f32 * g as f32;
            let (ix, tx) = (fx.floor() as usize, fx.fract());
            let at = |yy: usize, xx: usize| grid[yy * (g + 1) + xx];
            let top = at(iy, ix) * (1.0 - tx) + at(iy, ix + 1) * tx;
            let bot = at(iy + 1, ix) * (1.0 - tx) + at(iy + 1, ix + 1) * tx;
            out[y * w + x] = top * (1.0 - ty) + bot * ty;
        }
    }
    out
}

impl Canvas {
    /// A textured background: a two-colour gradient, two octaves of value noise, and sometimes
    /// low-contrast stripes, so that "background" is not a constant the detector can learn for free.
    pub fn textured(w: usize, h: usize, rng: &mut impl Rng) -> Canvas {
        let c1 = muted_colour(rng);
        let c2 = muted_colour(rng);
        let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let (dx, dy) = (angle.cos(), angle.sin());
        let coarse = value_noise(w, h, rng.gen_range(2..6), rng);
        let fine = value_noise(w, h, rng.gen_range(8..20), rng);
        let tint: [f32; 3] = [0, 1, 2].map(|_| rng.gen_range(0.6..1.4));
        let (a_coarse, a_fine) = (rng.gen_range(10.0..35.0), rng.gen_range(5.0..20.0));
        let stripes = rng.gen_bool(0.3);
        let period: f32 = rng.gen_range(4.0..16.0);
        let s_angle: f32 = rng.gen_range(0.0..std::f32::consts::PI);
        let (sx, sy) = (s_angle.cos(), s_angle.sin());
        let s_amp: f32 = rng.gen_range(6.0..18.0);
        let diag = ((w * w + h * h) as f32).sqrt().max(1.0);
        let mut rgb = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let (xf, yf) = (x as f32, y as f32);
                let t = ((xf - w as f32 / 2.0) * dx + (yf - h as f32 / 2.0) * dy) / diag + 0.5;
                let n = a_coarse * coarse[y * w + x] + a_fine * fine[y * w + x];
                let s = if stripes {
                    s_amp * ((xf * sx + yf * sy) / period * std::f32::consts::TAU).sin()
                } else {
                    0.0
                };
                rgb.push(
                    [0, 1, 2].map(|i| clamp_u8(c1[i] * (1.0 - t) + c2[i] * t + (n + s) * tint[i])),
                );
            }
        }
        Canvas {
            w,
            h,
            rgb,
            owner: vec![BACKGROUND; w * h],
        }
    }

    /// Adds independent per-pixel noise (triangular, about +-`amp`) to every pixel.
    pub fn add_noise(&mut self, amp: f32, rng: &mut impl Rng) {
        for p in &mut self.rgb {
            for c in p.iter_mut() {
                let n: f32 = rng.gen_range(-amp..amp) * 0.5 + rng.gen_range(-amp..amp) * 0.5;
                *c = clamp_u8(*c as f32 + n);
            }
        }
    }

    pub fn to_image(&self) -> image::RgbImage {
        let mut img = image::RgbImage::new(self.w as u32, self.h as u32);
        for (i, p) in img.pixels_mut().enumerate() {
            *p = image::Rgb(self.rgb[i]);
        }
        img
    }
}

/// What to place on a canvas: an object of a class, or a distractor (a hard negative, no box).
pub struct Item {
    pub class: Option<usize>,
    pub sprite: Sprite,
}

/// Places `items` in order on `canvas` (later items on top), each at a random position inside the
/// canvas where it leaves every object already placed with at least `min_visible` of its own pixels
/// (so occlusion is partial, never total); an item with no such position among a few tries is left
/// out. Returns the placed objects with their tight visible boxes, in placement order.
pub fn compose(
    canvas: &mut Canvas,
    items: Vec<Item>,
    min_visible: f64,
    rng: &mut impl Rng,
) -> Vec<SceneObject> {
    const TRIES: usize = 20;
    // Per placed object: (class, full pixel count, currently visible count).
    let mut placed: Vec<(usize, usize, usize)> = Vec::new();
    let mut covered = Vec::new();
    for item in items {
        let s = &item.sprite;
        if s.w > canvas.w || s.h > canvas.h || s.w == 0 || s.h == 0 {
            continue;
        }
        let full = s.pixel_count();
        let mut spot = None;
        for _ in 0..TRIES {
            let x0 = rng.gen_range(0..=canvas.w - s.w);
            let y0 = rng.gen_range(0..=canvas.h - s.h);
            covered.clear();
            covered.resize(placed.len(), 0usize);
            for y in 0..s.h {
                for x in 0..s.w {
                    if s.mask[y * s.w + x] {
                        let o = canvas.owner[(y0 + y) * canvas.w + x0 + x];
                        if o != BACKGROUND && o != DISTRACTOR {
                            covered[o as usize - 1] += 1;
                        }
                    }
                }
            }
            let ok = placed.iter().zip(&covered).all(|(&(_, full, vis), &c)| {
                c == 0 || (vis - c) as f64 >= min_visible * full as f64
            });
            if ok {
                spot = Some((x0, y0));
                break;
            }
        }
        let Some((x0, y0)) = spot else { continue };
        let id = match item.class {
            Some(class) => {
                if placed.len() + 1 >= DISTRACTOR as usize {
                    continue;
                }
                placed.push((class, full, full));
                placed.len() as u16
            }
            None => DISTRACTOR,
        };
        for y in 0..s.h {
            for x in 0..s.w {
                if s.mask[y * s.w + x] {
                    let i = (y0 + y) * canvas.w + x0 + x;
                    let o = canvas.owner[i];
                    if o != BACKGROUND && o != DISTRACTOR {
                        placed[o as usize - 1].2 -= 1;
                    }
                    canvas.owner[i] = id;
                    canvas.rgb[i] = s.rgb[y * s.w + x];
                }
            }
        }
    }
    visible_objects(canvas, placed.iter().map(|p| p.0).collect())
}

/// Tight boxes and pixel counts of each object's visible pixels, read from the owner map.
pub fn visible_objects(canvas: &Canvas, classes: Vec<usize>) -> Vec<SceneObject> {
    let n = classes.len();
    let mut lo = vec![(usize::MAX, usize::MAX); n];
    let mut hi = vec![(0usize, 0usize); n];
    let mut count = vec![0usize; n];
    for y in 0..canvas.h {
        for x in 0..canvas.w {
            let o = canvas.owner[y * canvas.w + x];
            if o == BACKGROUND || o == DISTRACTOR {
                continue;
            }
            let k = o as usize - 1;
            lo[k] = (lo[k].0.min(x), lo[k].1.min(y));
            hi[k] = (hi[k].0.max(x), hi[k].1.max(y));
            count[k] += 1;
        }
    }
    (0..n)
        .filter(|&k| count[k] > 0)
        .map(|k| SceneObject {
            class: classes[k],
            bbox: [
                lo[k].0 as f64,
                lo[k].1 as f64,
                (hi[k].0 - lo[k].0 + 1) as f64,
                (hi[k].1 - lo[k].1 + 1) as f64,
            ],
            area: count[k] as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn square(n: usize, c: u8) -> Sprite {
        Sprite {
            w: n,
            h: n,
            mask: vec![true; n * n],
            rgb: vec![[c, c, c]; n * n],
        }
    }

    #[test]
    fn occlusion_keeps_the_visible_fraction() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let mut c = Canvas::textured(32, 32, &mut rng);
            let items = (0..6)
                .map(|i| Item {
                    class: Some(i),
                    sprite: square(12, 200),
                })
                .collect();
            let objs = compose(&mut c, items, 0.6, &mut rng);
            for o in &objs {
                assert!(o.area >= 0.6 * 144.0, "{o:?}");
                assert!(o.bbox[2] <= 12.0 && o.bbox[3] <= 12.0);
            }
        }
    }

    #[test]
    fn trimmed_crops_to_the_mask() {
        let mut s = square(4, 1);
        s.mask = vec![false; 16];
        s.mask[5] = true;
        s.mask[10] = true;
        let t = s.clone().trimmed().unwrap();
        assert_eq!((t.w, t.h, t.pixel_count()), (2, 2, 2));
        s.mask = vec![false; 16];
        assert!(s.trimmed().is_none());
    }
}
