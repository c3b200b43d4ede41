//! Image decoding and encoding. The format is guessed from the file's bytes, not its extension, so a
//! JPEG saved as `.png` still loads.

use anyhow::{Context, Result};
use image::RgbImage;
use std::path::Path;

/// Decodes an image file (PNG or JPEG, any colour type) to 8-bit RGB. Errors name the file.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_rgb_bytes(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Decodes in-memory image bytes (format guessed from the content) to 8-bit RGB.
pub fn decode_rgb_bytes(bytes: &[u8]) -> Result<RgbImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read image header")?;
    if reader.format().is_none() {
        anyhow::bail!("unrecognised image format (PNG and JPEG are supported)");
    }
    Ok(reader.decode()?.to_rgb8())
}

/// Encodes RGB pixels as PNG bytes. The encoder is deterministic: the same pixels give the same bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .context("cannot encode PNG")?;
    Ok(out)
}

/// Writes an RGB image as PNG through a temporary file and a rename.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    crate::util::write_atomic(path, &encode_png(img)?)
}

/// Like [`write_png`] (temporary file, then rename, so a reader never sees half a file) but without
/// syncing each file to disk: a generator writes thousands of images, and an fsync per image made
/// generation I/O-bound. The generators write their manifest last, with a sync, as the commit point:
/// a crash before it leaves a dataset that is regenerated.
pub fn write_png_unsynced(path: &Path, img: &RgbImage) -> Result<()> {
    let bytes = encode_png(img)?;
    let tmp = crate::util::temp_beside(path);
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    crate::util::commit_temp(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Per output coordinate, the source taps `(index, weight)` of a triangle (bilinear) filter whose
/// support widens with the downscaling factor, so downscaling averages instead of aliasing (the same
/// filter as `image::imageops::FilterType::Triangle`).
fn taps(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let ratio = src as f32 / dst as f32;
    let support = ratio.max(1.0);
    (0..dst)
        .map(|o| {
            let centre = (o as f32 + 0.5) * ratio;
            let lo = (centre - support).floor().max(0.0) as usize;
            let hi = ((centre + support).ceil() as usize).min(src);
            let mut t: Vec<(usize, f32)> = (lo..hi)
                .map(|i| {
                    let d = (i as f32 + 0.5 - centre).abs() / support;
                    (i, (1.0 - d).max(0.0))
                })
                .filter(|&(_, w)| w > 0.0)
                .collect();
            if t.is_empty() {
                t.push((((centre as usize).min(src - 1)), 1.0));
            }
            let sum: f32 = t.iter().map(|x| x.1).sum();
            t.iter_mut().for_each(|x| x.1 /= sum);
            t
        })
        .collect()
}

/// Resizes RGB pixels with a separable triangle filter. Same filter as the `image` crate's
/// `Triangle`, but with the weights computed once per row and column, which makes it several times
/// faster: this is the loader's hot path for datasets that need resizing.
pub fn resize_rgb(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let (w, h) = (w as usize, h as usize);
    if (sw, sh) == (w, h) || sw == 0 || sh == 0 || w == 0 || h == 0 {
        return image::imageops::resize(
            img,
            w as u32,
            h as u32,
            image::imageops::FilterType::Triangle,
        );
    }
    let src = img.as_raw();
    let tx = taps(sw, w);
    let ty = taps(sh, h);
    // Horizontal pass: sh rows of w pixels.
    let mut mid = vec![0f32; sh * w * 3];
    for y in 0..sh {
        let row = &src[y * sw * 3..(y + 1) * sw * 3];
        let out = &mut mid[y * w * 3..(y + 1) * w * 3];
        for (px, t) in out.chunks_exact_mut(3).zip(&tx) {
            let mut acc = [0f32; 3];
            for &(i, wt) in t {
                let p = &row[i * 3..i * 3 + 3];
                acc[0] += p[0] as f32 * wt;
                acc[1] += p[1] as f32 * wt;
                acc[2] += p[2] as f32 * wt;
            }
            px.copy_from_slice(&acc);
        }
    }
    // Vertical pass: each output row is a weighted sum of whole input rows (contiguous, vectorises).
    let mut dst = vec![0u8; h * w * 3];
    let mut acc = vec![0f32; w * 3];
    for (y, t) in ty.iter().enumerate() {
        acc.fill(0.0);
        for &(i, wt) in t {
            let row = &mid[i * w * 3..(i + 1) * w * 3];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v * wt;
            }
        }
        let out = &mut dst[y * w * 3..(y + 1) * w * 3];
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = a.round().clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage::from_raw(w as u32, h as u32, dst).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_constants_and_averages_when_downscaling() {
        let flat = RgbImage::from_pixel(30, 20, image::Rgb([10, 100, 250]));
        let r = resize_rgb(&flat, 17, 9);
        assert!(r.pixels().all(|p| p.0 == [10, 100, 250]));
        // Halving a 1-pixel checkerboard gives its mean away from the border (where the filter is
        // cut and renormalised).
        let cb = RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([if (x + y) % 2 == 0 { 0 } else { 200 }; 3])
        });
        let r = resize_rgb(&cb, 4, 4);
        for (x, y) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            assert_eq!(r.get_pixel(x, y).0, [100; 3]);
        }
        // Upscaling by 2: interior output pixels interpolate their two nearest inputs 3:1.
        let ramp = RgbImage::from_fn(4, 1, |x, _| image::Rgb([x as u8 * 40; 3]));
        let r = resize_rgb(&ramp, 8, 2);
        assert_eq!(r.get_pixel(3, 0).0[0], 50); // centre 1.75: 0.75 * 40 + 0.25 * 80
        assert_eq!(r.get_pixel(4, 0).0[0], 70); // centre 2.25: 0.25 * 40 + 0.75 * 80
    }

    #[test]
    fn format_is_guessed_from_content() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 7]));
        // A PNG with a .jpg name decodes to the same pixels.
        let p = dir.path().join("actually_png.jpg");
        write_png(&p, &img).unwrap();
        assert_eq!(decode_rgb(&p).unwrap(), img);
        let bad = dir.path().join("junk.png");
        std::fs::write(&bad, b"not an image").unwrap();
        let e = format!("{:#}", decode_rgb(&bad).unwrap_err());
        assert!(e.contains("junk.png"), "{e}");
        let e = format!(
            "{:#}",
            decode_rgb(&dir.path().join("missing.png")).unwrap_err()
        );
        assert!(e.contains("missing.png"), "{e}");
    }
}
