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

#[cfg(test)]
mod tests {
    use super::*;

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
