//! Progress bars on stderr (indicatif), hidden with `--quiet`.

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use std::fmt::Write;

/// A bar counting `total` units with ETA; hidden when `quiet`.
pub fn bar(total: u64, unit: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template =
        format!("{{bar:30}} {{pos}}/{{len}} {unit} | {{elapsed_precise}} < {{eta}} | {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.with_key("eta", eta));
    }
    bar
}

/// Writes `eta_text` of the bar's state.
fn eta(state: &ProgressState, w: &mut dyn Write) {
    let _ = w.write_str(&eta_text(state.pos(), state.eta()));
}

/// The time left as `HH:MM:SS`, or `?` until a unit is done: indicatif's own estimate reads 0
/// before it has a rate, which for a sweep of eight-minute runs says "done" for eight minutes.
fn eta_text(done: u64, left: std::time::Duration) -> String {
    if done == 0 {
        return "?".into();
    }
    let s = left.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_eta_is_unknown_until_a_unit_is_done() {
        assert_eq!(eta_text(0, Duration::ZERO), "?");
        assert_eq!(eta_text(1, Duration::from_secs(3 * 3600 + 62)), "03:01:02");
    }
}
