//! Command-line definitions. `try_main` parses flags and dispatches to one top-level function
//! per command in `crate::commands`.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fl-lab",
    version,
    about = "Reproduce the analyses of 'Focal Loss for Dense Object Detection' with small RetinaNets",
    propagate_version = true
)]
pub struct Cli {
    /// Hide progress bars (results and errors are still printed).
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The paper's Figure 4: CDFs of the normalized focal loss over positive and negative samples.
    LossCdf(crate::commands::loss_cdf::Args),
    /// Generate, describe and draw datasets (the built-in benchmark, Fashion-MNIST scenes, COCO files).
    Data(crate::commands::data::Args),
    /// Draw a trained model's detections on an image, with class names and scores.
    Detect(crate::commands::detect::Args),
    /// Evaluate COCO detection results against ground truth, exactly as pycocotools does.
    Eval(crate::commands::eval::Args),
    /// Table 1b: train FL for gamma in {0, .1, .2, .5, 1, 2, 5} (with the paper's alpha each) and compare.
    SweepGamma(crate::commands::sweep::Args),
    /// Table 1a: train alpha-balanced CE for alpha in {.1, .25, .5, .75, .9, .99, .999}.
    SweepAlpha(crate::commands::sweep::Args),
    /// Table 1c: vary anchor scales per octave (1-4) and aspect ratios (1 or 3).
    Anchors(crate::commands::sweep::Args),
    /// Table 1d: OHEM (batch 128/256/512, NMS .5/.7, with and without 1:3) against FL.
    OhemVsFocal(crate::commands::sweep::Args),
    /// How training length decides Table 1: FL, the best CE and the best OHEM at 1,200 to 14,400 iterations.
    Schedule(crate::commands::sweep::Args),
    /// At what foreground:background imbalance does FL beat CE? FL vs CE (each at its best lr) over a ladder of datasets.
    SweepImbalance(crate::commands::sweep_imbalance::Args),
    /// Write the paper's loss curves (Figures 1, 5 and 6) as CSV and PNG.
    LossCurves(crate::commands::loss_curves::Args),
    /// Speed measurements: sgemm peak, per-layer convolution kernels vs candle's.
    Bench(crate::commands::bench::Args),
    /// Train a RetinaNet from a preset and overrides into runs/<name>/.
    Train(crate::commands::train::Args),
}

/// Parses the command line and runs the chosen command.
pub fn try_main() -> Result<()> {
    let cli = Cli::parse();
    let quiet = cli.quiet;
    match cli.command {
        Command::LossCdf(args) => crate::commands::loss_cdf::run(args, quiet),
        Command::Data(args) => crate::commands::data::run(args, quiet),
        Command::Detect(args) => crate::commands::detect::run(args, quiet),
        Command::Eval(args) => crate::commands::eval::run(args, quiet),
        Command::SweepGamma(args) => crate::commands::sweep::run("sweep-gamma", args, quiet),
        Command::SweepAlpha(args) => crate::commands::sweep::run("sweep-alpha", args, quiet),
        Command::Anchors(args) => crate::commands::sweep::run("anchors", args, quiet),
        Command::OhemVsFocal(args) => crate::commands::sweep::run("ohem-vs-focal", args, quiet),
        Command::Schedule(args) => crate::commands::sweep::run("schedule", args, quiet),
        Command::SweepImbalance(args) => crate::commands::sweep_imbalance::run(args, quiet),
        Command::LossCurves(args) => crate::commands::loss_curves::run(args, quiet),
        Command::Bench(args) => crate::commands::bench::run(args, quiet),
        Command::Train(args) => crate::commands::train::run(args, quiet),
    }
}
