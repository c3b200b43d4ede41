//! Labelled boxes drawn on an image (`fl-lab data show`, `fl-lab detect`). The image is upscaled with
//! nearest neighbours, so the boxes sit on the real pixels, and labels use the shipped font.

use anyhow::{bail, Context, Result};
use image::RgbImage;
use plotters::prelude::*;

/// One box to draw: `[x1, y1, x2, y2]` in the image's pixels, a class (for the colour) and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledBox {
    pub bbox: [f32; 4],
    pub class: usize,
    pub label: String,
}

/// A distinct colour per class index (cycling after ten).
pub fn class_colour(k: usize) -> RGBColor {
    const P: [(u8, u8, u8); 10] = [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
    ];
    let (r, g, b) = P[k % P.len()];
    RGBColor(r, g, b)
}

/// The upscaling factor: `requested`, or so the longer side is at least 512 px; 1..=64.
pub fn scale_for(w: u32, h: u32, requested: Option<u32>) -> u32 {
    requested
        .unwrap_or_else(|| 512u32.div_ceil(w.max(h).max(1)).max(1))
        .clamp(1, 64)
}

/// `pixels` upscaled `scale` times with `boxes` drawn over it, in order (later boxes on top).
pub fn draw_boxes(pixels: &RgbImage, boxes: &[LabelledBox], scale: u32) -> Result<RgbImage> {
    let (w, h) = pixels.dimensions();
    let (sw, sh) = (w * scale, h * scale);
    if sw as u64 * sh as u64 > 100_000_000 {
        bail!("scale {scale} makes a {sw}x{sh} image; choose a smaller scale");
    }
    let mut buf =
        image::imageops::resize(pixels, sw, sh, image::imageops::FilterType::Nearest).into_raw();
    crate::plot::font::ensure_registered();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (sw, sh)).into_drawing_area();
        let font_px = (10 + sw / 60).min(28);
        let s = scale as f32;
        for b in boxes {
            let colour = class_colour(b.class);
            let [x1, y1, x2, y2] = b.bbox;
            let (x0, y0) = ((x1 * s).round() as i32, (y1 * s).round() as i32);
            let (x1, y1) = ((x2 * s).round() as i32 - 1, (y2 * s).round() as i32 - 1);
            root.draw(&Rectangle::new(
                [(x0, y0), (x1, y1)],
                colour.stroke_width(2),
            ))?;
            let style = ("sans-serif", font_px).into_font().color(&BLACK);
            let (tw, th) = root.estimate_text_size(&b.label, &style)?;
            // The label sits above the box, or inside it where the box touches the top edge.
            let ty = if y0 >= th as i32 + 2 {
                y0 - th as i32 - 2
            } else {
                y0 + 2
            };
            root.draw(&Rectangle::new(
                [(x0, ty), (x0 + tw as i32 + 4, ty + th as i32 + 2)],
                colour.filled(),
            ))?;
            root.draw(&Text::new(b.label.clone(), (x0 + 2, ty + 1), style))?;
        }
        root.present()?;
    }
    RgbImage::from_raw(sw, sh, buf).context("drawing buffer has the wrong size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_on_the_scaled_pixels_and_leaves_the_rest() {
        let img = RgbImage::from_pixel(40, 30, image::Rgb([10, 20, 30]));
        let boxes = [LabelledBox {
            bbox: [20.0, 15.0, 30.0, 25.0],
            class: 1,
            label: "x".into(),
        }];
        let out = draw_boxes(&img, &boxes, 2).unwrap();
        assert_eq!(out.dimensions(), (80, 60));
        let c = class_colour(1);
        // The box outline at (2 * 20, 2 * 25 - 1), the untouched background far from it.
        assert_eq!(out.get_pixel(40, 49).0, [c.0, c.1, c.2]);
        assert_eq!(out.get_pixel(2, 58).0, [10, 20, 30]);
        assert_eq!(scale_for(40, 30, None), 13);
        assert_eq!(scale_for(40, 30, Some(500)), 64);
        assert!(draw_boxes(&img, &boxes, 1000).is_err());
    }
}
