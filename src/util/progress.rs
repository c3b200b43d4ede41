//! Progress bars on stderr (indicatif), hidden with `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `total` units with ETA; hidden when `quiet`.
pub fn bar(total: u64, unit: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = format!(
        "{{bar:30}} {{pos}}/{{len}} {unit} | {{elapsed_precise}} < {{eta_precise}} | {{msg}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
