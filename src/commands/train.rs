//! `fl-lab train`: train one RetinaNet from a preset plus overrides, into `runs/<name>/`.

use crate::config::Config;
use crate::train::{train, TrainOptions};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Preset to start from: a built-in name (smoke, cpu, paper) or a TOML file (every key has a default).
    #[arg(long, default_value = "cpu")]
    pub config: String,
    /// Override one key, e.g. `--set loss.gamma=0 --set schedule.lr=5e-3` (value parsed as TOML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run name: the output goes to `<runs-dir>/<name>/` (default: preset name and config hash).
    #[arg(long)]
    pub name: Option<String>,
    /// Continue the run from its last checkpoint (the config must be the same).
    #[arg(long)]
    pub resume: bool,
    /// cpu, cuda or cuda:N (overrides the config's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// Where run directories are created.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Keep the weights after these iterations as `snapshot-<iteration>.safetensors` (for
    /// `fl-lab loss-cdf --over-training`): percentages of schedule.iterations (`10%,50%`) or
    /// iteration numbers (`500,2500`). Not part of the config: it does not change the run's hash.
    #[arg(long, value_delimiter = ',', value_name = "N|P%")]
    pub snapshots: Vec<String>,
    /// Stop after this many iterations without a final checkpoint, as an interruption would.
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

/// The top-level entry point for `fl-lab train`.
pub fn run(args: Args, quiet: bool) -> Result<()> {
    let mut sets = args.set.clone();
    if let Some(d) = &args.device {
        sets.push(format!("device=\"{d}\""));
    }
    let (text, origin) = crate::experiments::spec::named_preset_text("--config", &args.config)?;
    let cfg =
        Config::from_toml_str(&text, &sets).with_context(|| format!("invalid config {origin}"))?;
    let device = crate::device::parse_device(&cfg.device)?;
    let name = match &args.name {
        Some(n) => {
            if n.is_empty() || n.contains(['/', '\\']) || n == "." || n == ".." {
                bail!("--name '{n}': use a plain directory name");
            }
            n.clone()
        }
        None => default_name(Path::new(&args.config), &cfg)?,
    };
    let run_dir = args.runs_dir.join(&name);
    let snapshots = parse_snapshots(&args.snapshots, cfg.schedule.iterations)?;

    let opts = TrainOptions {
        run_dir: run_dir.clone(),
        resume: args.resume,
        quiet,
        stop_after: args.stop_after,
        snapshots,
    };
    let s = if cfg.data.source == "random" {
        let mut data = crate::train::RandomSource::for_config(&cfg);
        train(&cfg, &mut data, &device, &opts)?
    } else {
        let mut data = crate::train::dataset_source::open(&cfg, crate::data::Split::Train, quiet)?;
        train(&cfg, &mut data, &device, &opts)?
    };
    report(&args, &run_dir, &s);
    Ok(())
}

/// Opens the configured dataset and checks it against the model.
fn report(args: &Args, run_dir: &Path, s: &crate::train::Summary) {
    let status = if s.diverged {
        format!(
            "DIVERGED at iteration {} (non-finite loss)",
            s.diverged_at.unwrap_or(0)
        )
    } else if s.finished {
        "finished".to_string()
    } else {
        "stopped (resume with --resume)".to_string()
    };
    println!("run         {}", run_dir.display());
    println!("status      {status}");
    println!("config      {} (hash {})", args.config, s.config_hash);
    println!("device      {}", s.device);
    println!("parameters  {}", s.parameters);
    println!("iterations  {}", s.iterations);
    println!(
        "final loss  cls {:.5}  box {:.5}",
        s.final_loss_cls, s.final_loss_box
    );
    println!(
        "time        {:.1} s total, {:.1} ms per step (median)",
        s.seconds,
        s.median_step_seconds * 1e3
    );
}

/// `<preset stem>-<first 8 hex digits of the config hash>`.
fn default_name(config: &Path, cfg: &Config) -> Result<String> {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    Ok(format!("{stem}-{}", &cfg.hash()?[..8]))
}

/// Parses `--snapshots` values into sorted, distinct iteration counts in `1..=iterations`: `P%` is
/// P percent of `iterations` (rounded, at least 1), a plain integer is an iteration count.
pub fn parse_snapshots(values: &[String], iterations: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(values.len());
    for raw in values {
        let v = raw.trim();
        let it = if let Some(p) = v.strip_suffix('%') {
            let pct: f64 = p.trim().parse().map_err(|_| {
                anyhow::anyhow!("--snapshots: '{raw}' is not a percentage like 10% or 50%")
            })?;
            if !(pct > 0.0 && pct <= 100.0) {
                bail!("--snapshots: '{raw}' is outside (0%, 100%]");
            }
            ((pct / 100.0 * iterations as f64).round() as usize).max(1)
        } else {
            let n: usize = v.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--snapshots: '{raw}' is neither an iteration number nor a percentage (10%)"
                )
            })?;
            if n == 0 || n > iterations {
                bail!(
                    "--snapshots: iteration {n} is outside 1..={iterations} (schedule.iterations)"
                );
            }
            n
        };
        out.push(it);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_snapshots;

    fn parse(v: &[&str], iterations: usize) -> anyhow::Result<Vec<usize>> {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        parse_snapshots(&v, iterations)
    }

    #[test]
    fn snapshots_accept_percentages_and_iterations() {
        assert_eq!(parse(&["10%", "50%"], 2000).unwrap(), vec![200, 1000]);
        assert_eq!(
            parse(&["50%", "7", "100%", "7"], 20).unwrap(),
            vec![7, 10, 20]
        );
        // a small percentage of a short schedule still snapshots after the first step
        assert_eq!(parse(&["1%"], 10).unwrap(), vec![1]);
        assert_eq!(parse(&[" 25 % "], 8).unwrap(), vec![2]);
        assert!(parse(&[], 8).unwrap().is_empty());
    }

    #[test]
    fn bad_snapshots_name_the_flag_and_value() {
        for (v, msg) in [
            ("abc", "'abc' is neither"),
            ("x%", "'x%' is not a percentage"),
            ("0%", "'0%' is outside"),
            ("150%", "'150%' is outside"),
            ("0", "iteration 0 is outside 1..=100"),
            ("101", "iteration 101 is outside 1..=100"),
            ("-5", "'-5' is neither"),
            ("2.5", "'2.5' is neither"),
        ] {
            let e = parse(&[v], 100).unwrap_err().to_string();
            assert!(e.contains("--snapshots") && e.contains(msg), "{v}: {e}");
        }
    }
}
