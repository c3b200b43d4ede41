//! The plotting font ships inside the binary (DejaVu Sans, see assets/fonts/DejaVuSans-LICENSE),
//! so figures render identically everywhere with no system font libraries.

use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the shipped font as plotters' "sans-serif" family. Idempotent and cheap.
pub fn ensure_registered() {
    REGISTER.call_once(|| {
        for style in [
            plotters::style::FontStyle::Normal,
            plotters::style::FontStyle::Bold,
            plotters::style::FontStyle::Italic,
            plotters::style::FontStyle::Oblique,
        ] {
            // The bytes are a valid TTF compiled into the binary; a failure here is a build defect.
            if plotters::style::register_font("sans-serif", style, FONT).is_err() {
                panic!("the font compiled into fl-lab is not a valid TTF");
            }
        }
    });
}
