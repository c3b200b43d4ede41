//! Experiment specs (`experiments/<name>.toml`): which configurations a sweep trains, the paper's
//! numbers beside each, and the paper's findings to check.
//!
//! ```toml
//! name = "sweep-gamma"
//! title = "Table 1b: varying gamma for FL (with the best alpha for each gamma)"
//! paper = "Lin et al. 2017, Table 1b (ResNet-50-FPN, 600 px, COCO minival)"
//! set = ["loss.kind=\"focal\""]          # overrides for every run
//! x = { key = "loss.gamma", label = "gamma" }
//!
//! [[variants]]
//! label = "gamma 0, alpha .75"
//! set = ["loss.gamma=0.0", "loss.alpha=0.75"]
//! paper = { ap = 31.1, ap50 = 49.4, ap75 = 33.0 }
//!
//! [[findings]]
//! paper = "FL with gamma = 2 beats the best alpha-balanced CE"
//! kind = "beats"                         # best mean AP of `a` above best of `b` by more than the seed spread
//! a = ["gamma 2, alpha .25"]
//! b = ["gamma 0, alpha .75"]
//! ```

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The built-in specs and presets, so the commands work from any directory.
pub const BUILTIN_SPECS: [(&str, &str); 5] = [
    (
        "sweep-gamma",
        include_str!("../../experiments/sweep-gamma.toml"),
    ),
    (
        "sweep-alpha",
        include_str!("../../experiments/sweep-alpha.toml"),
    ),
    ("anchors", include_str!("../../experiments/anchors.toml")),
    (
        "ohem-vs-focal",
        include_str!("../../experiments/ohem-vs-focal.toml"),
    ),
    ("schedule", include_str!("../../experiments/schedule.toml")),
];

/// Training presets: `smoke` (seconds per run, for tests), `cpu` (the default), `paper` (GPU).
pub const BUILTIN_PRESETS: [(&str, &str); 3] = [
    ("smoke", include_str!("../../experiments/smoke.toml")),
    ("cpu", include_str!("../../experiments/cpu.toml")),
    ("paper", include_str!("../../experiments/paper.toml")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub name: String,
    pub title: String,
    /// Where the paper's numbers come from.
    pub paper: String,
    /// Overrides applied to every run of the sweep.
    #[serde(default)]
    pub set: Vec<String>,
    /// The config key plotted on the x axis of the AP figure, if the sweep has one.
    #[serde(default)]
    pub x: Option<XAxis>,
    /// Groups variants into series of the AP figure (a config key such as `anchors.aspect_ratios`).
    #[serde(default)]
    pub series_key: Option<String>,
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub findings: Vec<FindingSpec>,
    /// For a sweep over training length: per series, the shortest x whose mean AP is within this
    /// relative tolerance of the AP at the largest x (`convergence = { within = 0.10 }`).
    #[serde(default)]
    pub convergence: Option<Convergence>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Convergence {
    /// Relative tolerance, e.g. 0.10 for "within 10%".
    pub within: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XAxis {
    pub key: String,
    pub label: String,
    #[serde(default)]
    pub log: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub label: String,
    /// The series of the AP figure this variant belongs to, when the series is not one config
    /// key's value (a method of the schedule study spans several keys).
    #[serde(default)]
    pub series: Option<String>,
    #[serde(default)]
    pub set: Vec<String>,
    #[serde(default)]
    pub paper: Option<PaperRow>,
}

/// The paper's numbers for one variant (AP in percent, as printed).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PaperRow {
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingSpec {
    /// The paper's claim, in words.
    pub paper: String,
    pub kind: FindingKind,
    /// Variant labels (or label prefixes ending in `*`).
    pub a: Vec<String>,
    #[serde(default)]
    pub b: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The best of `a` has a higher mean AP than the best of `b`, by more than the seed spread.
    Beats,
    /// Every variant of `a` diverged or reached less than half the best AP of the sweep.
    Collapses,
}

impl ExperimentSpec {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let spec: ExperimentSpec =
            toml::from_str(text).with_context(|| format!("invalid experiment spec {origin}"))?;
        spec.validate()
            .with_context(|| format!("invalid experiment spec {origin}"))?;
        Ok(spec)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read experiment spec {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The built-in spec of an experiment by name.
    pub fn builtin(name: &str) -> Result<Self> {
        let (_, text) = BUILTIN_SPECS
            .iter()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("no built-in experiment named '{name}'"))?;
        Self::parse(text, &format!("(built-in {name})"))
    }

    fn validate(&self) -> Result<()> {
        if let Some(c) = self.convergence {
            if !(c.within > 0.0 && c.within < 1.0) {
                bail!("convergence.within: {} is not in (0, 1)", c.within);
            }
            if self.x.is_none() {
                bail!("convergence needs an x axis (the training length)");
            }
        }
        if self.variants.is_empty() {
            bail!("variants: a sweep needs at least one variant");
        }
        let mut seen = std::collections::HashSet::new();
        for v in &self.variants {
            if !seen.insert(v.label.as_str()) {
                bail!("variants: duplicate label '{}'", v.label);
            }
        }
        for f in &self.findings {
            for pattern in f.a.iter().chain(&f.b) {
                if !self
                    .variants
                    .iter()
                    .any(|v| label_matches(pattern, &v.label))
                {
                    bail!("findings: '{pattern}' matches no variant label");
                }
            }
            if f.kind == FindingKind::Beats && f.b.is_empty() {
                bail!("findings: a 'beats' finding needs both a and b");
            }
        }
        Ok(())
    }
}

/// `pattern` is an exact label, or a prefix followed by `*`.
pub fn label_matches(pattern: &str, label: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => label.starts_with(prefix),
        None => pattern == label,
    }
}

/// The text of a training preset: a built-in name or a TOML file path.
pub fn preset_text(preset: &str) -> Result<(String, String)> {
    named_preset_text("--preset", preset)
}

/// As `preset_text`, for a flag of another name (errors name that flag).
pub fn named_preset_text(flag: &str, preset: &str) -> Result<(String, String)> {
    if let Some((_, text)) = BUILTIN_PRESETS.iter().find(|(n, _)| *n == preset) {
        return Ok((text.to_string(), format!("preset {preset}")));
    }
    let path = Path::new(preset);
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read preset {}", path.display()))?;
        return Ok((text, path.display().to_string()));
    }
    let names: Vec<&str> = BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect();
    bail!(
        "unknown {flag} '{preset}': use one of {} or a TOML file path",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_spec_and_preset_parses() {
        for (name, _) in BUILTIN_SPECS {
            let spec = ExperimentSpec::builtin(name).unwrap();
            assert_eq!(spec.name, name);
        }
        for (name, text) in BUILTIN_PRESETS {
            crate::config::Config::from_toml_str(text, &[])
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn bad_specs_are_named() {
        let e = ExperimentSpec::parse("name='x'\ntitle='t'\npaper='p'\nvariants=[]", "s.toml")
            .unwrap_err();
        assert!(format!("{e:#}").contains("at least one variant"));
        let e = ExperimentSpec::parse(
            "name='x'\ntitle='t'\npaper='p'\nbogus=1\nvariants=[]",
            "s.toml",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let text = "name='x'\ntitle='t'\npaper='p'\n[[variants]]\nlabel='a'\n[[findings]]\npaper='q'\nkind='beats'\na=['a']\nb=['zz']";
        let e = ExperimentSpec::parse(text, "s.toml").unwrap_err();
        assert!(
            format!("{e:#}").contains("'zz' matches no variant"),
            "{e:#}"
        );
    }
}
