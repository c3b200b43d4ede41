//! `fl-lab bench`: speed measurements on this machine. `peak` times a large sgemm (the practical
//! ceiling every efficiency figure is a fraction of); `conv` times each convolution of the
//! reference model's training step, forward, input gradient and weight gradient, with this crate's
//! kernels and with candle's own, side by side in one run (the machines are shared and noisy, so
//! only same-run comparisons mean anything).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Subcommand;

use crate::ops::{conv, reference};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, Subcommand)]
pub enum What {
    /// sgemm GFLOP/s of the `gemm` crate (the machine's practical peak).
    Peak {
        /// Matrix size n (an n x n x n product).
        #[arg(long, default_value_t = 2048)]
        size: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// Per-layer convolution times, fl-lab kernels vs candle's, for the reference model.
    Conv {
        /// Batch size (the reference config uses 8 images of 128 x 128).
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Timed repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 7)]
        reps: usize,
        /// Only layers whose name contains this text.
        #[arg(long)]
        only: Option<String>,
        /// Run the 3x3 stride-1 convolutions by the shifted products instead of Winograd's
        /// F(4x4, 3x3) (to measure what it gains).
        #[arg(long)]
        no_winograd: bool,
        /// Products in bf16 on AMX tiles, accumulated in f32 (as `model.conv_products = "bf16"`).
        #[arg(long)]
        bf16: bool,
        /// Skip the sgemm peak measurements (before and after the table).
        #[arg(long)]
        no_peak: bool,
    },
    /// A training step of a config, part by part (forward, backward, optimizer), with its
    /// convolution GFLOP/s as a fraction of the measured sgemm peak. Random images and boxes.
    Train {
        /// Config to time: a built-in preset (smoke, cpu, paper) or a TOML file.
        #[arg(long, default_value = "cpu")]
        config: String,
        /// Override one key, as in `fl-lab train` (e.g. `--set model.num_classes=10`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Time candle's own convolution and group-norm kernels instead of fl-lab's.
        #[arg(long)]
        candle_kernels: bool,
        /// Run the shifted convolutions' products through `gemm` instead of the AVX-512 direct
        /// kernel (to measure what the kernel gains; the same without AVX-512).
        #[arg(long, conflicts_with = "candle_kernels")]
        gemm_convs: bool,
        /// Run the 3x3 stride-1 convolutions by the shifted products instead of Winograd's
        /// F(4x4, 3x3) (to measure what it gains).
        #[arg(long, conflicts_with = "candle_kernels")]
        no_winograd: bool,
        /// Skip the sgemm peak measurement.
        #[arg(long)]
        no_peak: bool,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The same training steps of a config on two devices (by default cuda and the CPU) from the
    /// same initial weights and batch: losses side by side, their relative difference and each
    /// device's step times. Fails (exit 2) when the first step's losses differ by more than
    /// --tolerance.
    DeviceCheck {
        /// Config: a built-in preset (smoke, cpu, paper) or a TOML file.
        #[arg(long, default_value = "cpu")]
        config: String,
        /// Override one key, as in `fl-lab train` (e.g. `--set schedule.batch_size=2`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The device checked.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// The device it is checked against.
        #[arg(long, default_value = "cpu")]
        against: String,
        /// Training steps on each device.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// The largest relative difference of the first step's losses that passes.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f64,
    },
    /// The backbone's C2-C5 features of given images, in evaluation mode after loading
    /// `model.pretrained`, written as safetensors `c2`..`c5` (bench/check_pretrained.py compares
    /// them with torchvision's).
    Features {
        /// Config: a built-in preset (smoke, cpu, paper) or a TOML file.
        #[arg(long, default_value = "paper")]
        config: String,
        /// Override one key, e.g. `--set model.pretrained=resnet50.safetensors`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A safetensors file whose tensor `images` is `[N, 3, H, W]` f32, normalised as the loader
        /// normalises.
        #[arg(long)]
        input: std::path::PathBuf,
        /// Where to write the features.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Writes a ResNet state dict under torchvision's names with random weights and random
    /// BatchNorm statistics (a stand-in for ImageNet weights in checks: `model.pretrained`).
    ResnetWeights {
        /// r18, r34 or r50.
        #[arg(long, default_value = "r50")]
        backbone: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The safetensors file to write.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// A config from a preset name or file and `--set` overrides.
fn load_config(config: &str, set: &[String]) -> Result<crate::config::Config> {
    let (text, origin) = crate::experiments::spec::named_preset_text("--config", config)?;
    crate::config::Config::from_toml_str(&text, set)
        .with_context(|| format!("invalid config {origin}"))
}

pub fn run(args: Args, _quiet: bool) -> Result<()> {
    match args.what {
        What::Peak {
            size,
            threads,
            reps,
        } => with_pool(threads, || peak(size, threads, reps)),
        What::Conv {
            batch,
            threads,
            reps,
            only,
            no_winograd,
            bf16,
            no_peak,
        } => {
            crate::ops::conv::skip_winograd_convs(no_winograd);
            let _products = crate::ops::conv::hold_products(bf16)
                .map_err(|e| anyhow::anyhow!("--bf16: {e}"))?;
            with_pool(threads, || {
                conv_table(batch, reps, only.as_deref(), (!no_peak).then_some(threads))
            })
        }
        What::Train {
            config,
            set,
            steps,
            warmup,
            threads,
            candle_kernels,
            gemm_convs,
            no_winograd,
            no_peak,
            json,
        } => {
            reps_ok(steps).context("--steps must be in 1..=256")?;
            let (text, origin) = crate::experiments::spec::named_preset_text("--config", &config)?;
            let cfg = crate::config::Config::from_toml_str(&text, &set)
                .with_context(|| format!("invalid config {origin}"))?;
            let device = crate::device::parse_device(&cfg.device)?;
            let _products = crate::model::hold_conv_products(&cfg)?;
            crate::ops::use_candle_kernels_only(candle_kernels);
            crate::ops::conv::use_gemm_for_shifted_convs(gemm_convs);
            crate::ops::conv::skip_winograd_convs(no_winograd);
            let bf16 = cfg.model.conv_products == crate::config::ConvProducts::Bf16;
            let kernels = match (candle_kernels, bf16, gemm_convs, no_winograd) {
                (true, ..) => "candle",
                (_, true, ..) => "fl-lab (bf16 products on AMX)",
                (_, _, true, true) => "fl-lab (gemm convs, no Winograd)",
                (_, _, true, false) => "fl-lab (gemm convs)",
                (_, _, false, true) => "fl-lab (no Winograd)",
                _ => "fl-lab",
            };
            let t = with_pool(threads, || {
                crate::train::step_timing::time_steps(&cfg, &device, steps, warmup)
            })?;
            let peak = if no_peak || !device.is_cpu() {
                None
            } else {
                Some(with_pool(threads, || {
                    measure_peak(PEAK_SIZE, threads, PEAK_REPS)
                })?)
            };
            report_train(&origin, &cfg, threads, kernels, &t, peak, json)
        }
        What::DeviceCheck {
            config,
            set,
            device,
            against,
            steps,
            tolerance,
        } => device_check(&config, &set, &device, &against, steps, tolerance),
        What::Features {
            config,
            set,
            input,
            out,
        } => features(&config, &set, &input, &out),
        What::ResnetWeights {
            backbone,
            seed,
            out,
        } => {
            let tensors = crate::model::pretrained::synthetic_resnet(&backbone, seed)?;
            crate::model::save_tensors(&out, &tensors)?;
            println!("wrote {} ({} tensors)", out.display(), tensors.len());
            Ok(())
        }
    }
}

fn device_check(
    config: &str,
    set: &[String],
    device: &str,
    against: &str,
    steps: usize,
    tolerance: f64,
) -> Result<()> {
    reps_ok(steps).context("--steps must be in 1..=256")?;
    if !(tolerance >= 0.0 && tolerance.is_finite()) {
        bail!("--tolerance must be a number >= 0, got {tolerance}");
    }
    let cfg = load_config(config, set)?;
    let a = crate::device::parse_device(device)?;
    let b = crate::device::parse_device(against)?;
    let pairs = crate::train::device_check::compare(&cfg, [&a, &b], steps)?;
    let d = &cfg.data;
    let side = crate::train::RandomSource::for_config(&cfg).size;
    println!(
        "{config}: batch {} x 3 x {side} x {side} (random), K = {}, {} vs {} (min_size {}, input_size {})",
        cfg.schedule.batch_size, cfg.model.num_classes, device, against, d.min_size, d.input_size
    );
    println!(
        "{:>4} {:>14} {:>14} {:>10} {:>10} {:>10}",
        "step",
        format!("loss {device}"),
        format!("loss {against}"),
        "rel diff",
        format!("ms {device}"),
        format!("ms {against}")
    );
    for p in &pairs {
        println!(
            "{:>4} {:>14.6} {:>14.6} {:>10.2e} {:>10.1} {:>10.1}",
            p.iteration,
            p.loss[0],
            p.loss[1],
            p.relative_difference(),
            p.ms[0],
            p.ms[1]
        );
    }
    let first = pairs[0].relative_difference();
    // NaN losses fail too.
    if first.is_nan() || first > tolerance {
        bail!(
            "the first step's losses differ by {first:.3e} relative ({} on {device}, {} on {against}), more than --tolerance {tolerance}",
            pairs[0].loss[0],
            pairs[0].loss[1]
        );
    }
    println!("first step agrees within {tolerance} ({first:.2e})");
    Ok(())
}

fn features(
    config: &str,
    set: &[String],
    input: &std::path::Path,
    out: &std::path::Path,
) -> Result<()> {
    let cfg = load_config(config, set)?;
    let device = crate::device::parse_device(&cfg.device)?;
    let model = crate::model::RetinaNet::new(&cfg, &device)?;
    model.load_pretrained()?;
    let mut tensors = crate::model::params::read_safetensors(input, &device)
        .with_context(|| format!("--input: cannot read {}", input.display()))?;
    let images = tensors.remove("images").with_context(|| {
        format!(
            "--input: {} has no tensor named 'images' (it has: {})",
            input.display(),
            tensors.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let dims = images.dims().to_vec();
    if dims.len() != 4 || dims[0] == 0 || dims[1] != 3 || dims[2] < 32 || dims[3] < 32 {
        bail!(
            "--input: 'images' in {} must be [N, 3, H, W] with N >= 1 and H, W >= 32, got {dims:?}",
            input.display()
        );
    }
    let images = images.to_dtype(candle_core::DType::F32)?;
    let feats = model.backbone_features(&images, false)?;
    let named: std::collections::BTreeMap<String, Tensor> = feats
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("c{}", i + 2), t))
        .collect();
    crate::model::save_tensors(out, &named)?;
    for (k, t) in &named {
        println!("{k}: {:?}", t.dims());
    }
    Ok(())
}

fn report_train(
    config: &str,
    cfg: &crate::config::Config,
    threads: usize,
    kernels: &str,
    t: &crate::train::step_timing::StepTimes,
    peak: Option<f64>,
    json: bool,
) -> Result<()> {
    let gflops = t.step_gflop / (t.total_ms * 1e-3);
    let of_peak = peak.map(|p| gflops / p);
    if json {
        let v = serde_json::json!({
            "config": config,
            "device": cfg.device,
            "threads": threads,
            "kernels": kernels,
            "batch": cfg.schedule.batch_size,
            "input_size": cfg.data.input_size,
            "num_classes": cfg.model.num_classes,
            "times": t,
            "gflop_per_s": gflops,
            "peak_gflop_per_s": peak,
            "fraction_of_peak": of_peak,
        });
        println!("{v}");
        return Ok(());
    }
    let s = crate::train::RandomSource::for_config(cfg).size;
    println!(
        "{}: batch {} x 3 x {s} x {s}, K = {}, {threads} threads, {} kernels, median of {} steps",
        config, cfg.schedule.batch_size, cfg.model.num_classes, kernels, t.steps
    );
    println!("part        ms");
    for (name, ms) in [
        ("forward", t.forward_ms),
        ("backward", t.backward_ms),
        ("optimizer", t.optimizer_ms),
        ("step", t.total_ms),
    ] {
        println!("{name:<10}{ms:>8.1}");
    }
    println!(
        "convolutions: {:.2} GFLOP per step (forward, input and weight gradients) = {gflops:.1} GFLOP/s",
        t.step_gflop
    );
    if let (Some(p), Some(f)) = (peak, of_peak) {
        println!(
            "sgemm peak {PEAK_SIZE}, {threads} threads: {p:.1} GFLOP/s; the step runs at {:.0}% of it",
            100.0 * f
        );
    }
    Ok(())
}

fn with_pool<R: Send>(threads: usize, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    if !(1..=256).contains(&threads) {
        bail!("--threads must be between 1 and 256, got {threads}");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("building the thread pool")?;
    pool.install(f)
}

fn reps_ok(n: usize) -> Result<()> {
    if n == 0 || n > 256 {
        bail!("out of range");
    }
    Ok(())
}

/// Median wall time in milliseconds of `reps` runs of `f`, after two untimed warm-up runs.
pub fn median_ms<T>(reps: usize, mut f: impl FnMut() -> candle_core::Result<T>) -> Result<f64> {
    for _ in 0..2 {
        std::hint::black_box(f()?);
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        std::hint::black_box(f()?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The SIMD level `gemm` dispatches to on this CPU (it checks at run time).
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "AVX2+FMA";
        }
    }
    "baseline"
}

/// The sgemm that `bench train` and `bench conv` measure the peak with: size and repetitions.
const PEAK_SIZE: usize = 2048;
const PEAK_REPS: usize = 5;

/// The largest `bench peak --size`: three 8192 x 8192 f32 matrices take 768 MiB.
const MAX_PEAK_SIZE: usize = 8192;

/// Measured sgemm GFLOP/s for an n x n x n product with `threads` threads.
pub fn measure_peak(n: usize, threads: usize, reps: usize) -> Result<f64> {
    if !(1..=MAX_PEAK_SIZE).contains(&n) {
        bail!("--size must be between 1 and {MAX_PEAK_SIZE}, got {n}");
    }
    reps_ok(reps).with_context(|| format!("--reps must be between 1 and 256, got {reps}"))?;
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
        .collect();
    let mut c = vec![0f32; n * n];
    let ms = median_ms(reps, || {
        // SAFETY: a, b and c are n x n row-major buffers that outlive the call; c is exclusive.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            )
        };
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e9)
}

fn peak(n: usize, threads: usize, reps: usize) -> Result<()> {
    let gflops = measure_peak(n, threads, reps)?;
    let ms = 2.0 * (n as f64).powi(3) / gflops / 1e6;
    println!(
        "sgemm {n}x{n}x{n}, {threads} threads, {} kernels: {ms:.1} ms = {gflops:.1} GFLOP/s (median of {reps})",
        simd_level()
    );
    Ok(())
}

/// One convolution of the reference model and how many times a training step runs it.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    pub name: &'static str,
    pub c_in: usize,
    pub c_out: usize,
    /// Input height = width.
    pub size: usize,
    pub k: usize,
    pub stride: usize,
    pub count: usize,
}

impl Layer {
    /// The convolution's geometry on a batch of `batch` inputs ("same" padding).
    fn geometry(&self, batch: usize) -> Result<conv::ConvGeom> {
        Ok(conv::ConvGeom::new(
            &[batch, self.c_in, self.size, self.size],
            &[self.c_out, self.c_in, self.k, self.k],
            self.stride,
            self.k / 2,
        )?)
    }
}

const fn layer(
    name: &'static str,
    (c_in, c_out): (usize, usize),
    size: usize,
    (k, stride): (usize, usize),
    count: usize,
) -> Layer {
    Layer {
        name,
        c_in,
        c_out,
        size,
        k,
        stride,
        count,
    }
}

/// The convolutions of the reference model (PERF-NOTES.md: 8 x 3 x 128 x 128 input, backbone
/// 32-64-128-128-128, FPN-lite with 64 channels on three levels, shared 4-conv heads for class and
/// box, 9 anchors x 10 classes): 4.27 GFLOP forward at batch 8.
pub const REFERENCE_LAYERS: [Layer; 21] = [
    layer("stem 3x3/2 3->32 @128", (3, 32), 128, (3, 2), 1),
    layer("c2a 3x3/2 32->64 @64", (32, 64), 64, (3, 2), 1),
    layer("c2b 3x3 64->64 @32", (64, 64), 32, (3, 1), 1),
    layer("c3a 3x3/2 64->128 @32", (64, 128), 32, (3, 2), 1),
    layer("c3b 3x3 128->128 @16", (128, 128), 16, (3, 1), 1),
    layer("c4a 3x3/2 128->128 @16", (128, 128), 16, (3, 2), 1),
    layer("c4b 3x3 128->128 @8", (128, 128), 8, (3, 1), 1),
    layer("c5a 3x3/2 128->128 @8", (128, 128), 8, (3, 2), 1),
    layer("c5b 3x3 128->128 @4", (128, 128), 4, (3, 1), 1),
    layer("lateral 1x1 128->64 @16", (128, 64), 16, (1, 1), 1),
    layer("lateral 1x1 128->64 @8", (128, 64), 8, (1, 1), 1),
    layer("lateral 1x1 128->64 @4", (128, 64), 4, (1, 1), 1),
    layer("head 3x3 64->64 @16", (64, 64), 16, (3, 1), 8),
    layer("head 3x3 64->64 @8", (64, 64), 8, (3, 1), 8),
    layer("head 3x3 64->64 @4", (64, 64), 4, (3, 1), 8),
    layer("cls 3x3 64->90 @16", (64, 90), 16, (3, 1), 1),
    layer("cls 3x3 64->90 @8", (64, 90), 8, (3, 1), 1),
    layer("cls 3x3 64->90 @4", (64, 90), 4, (3, 1), 1),
    layer("box 3x3 64->36 @16", (64, 36), 16, (3, 1), 1),
    layer("box 3x3 64->36 @8", (64, 36), 8, (3, 1), 1),
    layer("box 3x3 64->36 @4", (64, 36), 4, (3, 1), 1),
];

/// Milliseconds for forward, input gradient, weight (+ bias) gradient.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassTimes {
    pub fwd: f64,
    pub grad_input: f64,
    pub grad_weight: f64,
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    // A cheap deterministic fill: timing does not depend on the values, only on them being finite.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Times one layer with this crate's kernels and with candle's (the ops candle's autograd runs).
pub fn time_layer(l: &Layer, batch: usize, reps: usize) -> Result<(PassTimes, PassTimes)> {
    let (dev, size) = (Device::Cpu, l.size);
    let pad = l.k / 2;
    let x = rand_vec(batch * l.c_in * size * size, 1);
    let w = rand_vec(l.c_out * l.c_in * l.k * l.k, 2);
    let b = rand_vec(l.c_out, 3);
    let g = l.geometry(batch)?;
    let dy = rand_vec(g.n * g.out_len(), 4);

    let only = |input, weight| conv::Needs {
        input,
        weight,
        bias: weight,
    };
    let ours = PassTimes {
        fwd: median_ms(reps, || conv::forward(&x, &w, Some(&b), &g, false))?,
        grad_input: median_ms(reps, || {
            conv::backward(&x, &w, &dy, None, &g, only(true, false))
        })?,
        grad_weight: median_ms(reps, || {
            conv::backward(&x, &w, &dy, None, &g, only(false, true))
        })?,
    };

    let xt = Tensor::from_slice(&x, (batch, l.c_in, size, size), &dev)?;
    let wt = Tensor::from_slice(&w, (l.c_out, l.c_in, l.k, l.k), &dev)?;
    let bt = Tensor::from_slice(&b, l.c_out, &dev)?;
    let dyt = Tensor::from_slice(&dy, g.out_dims(), &dev)?;
    // The same calls candle 0.11's backprop makes for Op::Conv2D.
    let out_padding = size - ((g.h_out - 1) * l.stride + l.k - 2 * pad);
    let theirs = PassTimes {
        fwd: median_ms(reps, || {
            reference::conv2d(&xt, &wt, Some(&bt), l.stride, pad)
        })?,
        grad_input: median_ms(reps, || {
            dyt.conv_transpose2d(&wt, pad, out_padding, l.stride, 1)
        })?,
        grad_weight: median_ms(reps, || {
            let gw = xt
                .transpose(0, 1)?
                .conv2d(&dyt.transpose(0, 1)?, pad, 1, l.stride, 1)?
                .transpose(0, 1)?;
            let gw = gw.narrow(2, 0, l.k)?.narrow(3, 0, l.k)?.contiguous()?;
            let gb = dyt.sum((0, 2, 3))?;
            Ok((gw, gb))
        })?,
    };
    Ok((ours, theirs))
}

/// The per-layer table; with `peak_threads`, the sgemm peak on that many threads is measured just
/// before and just after it (the machine's speed drifts) and the totals given as fractions of both.
fn conv_table(
    batch: usize,
    reps: usize,
    only: Option<&str>,
    peak_threads: Option<usize>,
) -> Result<()> {
    reps_ok(reps).context("--reps must be between 1 and 256")?;
    if batch == 0 || batch > 256 {
        bail!("--batch must be between 1 and 256, got {batch}");
    }
    if let Some(o) = only.filter(|o| !REFERENCE_LAYERS.iter().any(|l| l.name.contains(o))) {
        let names: Vec<&str> = REFERENCE_LAYERS.iter().map(|l| l.name).collect();
        bail!(
            "--only '{o}' matches no layer; the layers are: {}",
            names.join(", ")
        );
    }
    let measure = |t| measure_peak(PEAK_SIZE, t, PEAK_REPS);
    let before = peak_threads.map(measure).transpose()?;
    println!(
        "batch {batch}, {} threads, {} kernels, median of {reps}; ms per call",
        rayon::current_num_threads(),
        simd_level()
    );
    println!(
        "{:<28} {:>5} {:>7} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>6}",
        "layer",
        "count",
        "MFLOP",
        "fwd",
        "dX",
        "dW+db",
        "cand fwd",
        "cand dX",
        "cand dW+db",
        "speedup"
    );
    let (mut tot_ours, mut tot_theirs, mut tot_flop) = (0.0, 0.0, 0.0);
    for l in REFERENCE_LAYERS
        .iter()
        .filter(|l| only.is_none_or(|o| l.name.contains(o)))
    {
        let (o, t) = time_layer(l, batch, reps)?;
        let g = l.geometry(batch)?;
        let mflop = 2.0 * g.macs() as f64 / 1e6;
        // Training never needs the image's gradient; candle computes it anyway.
        let image_input = l.c_in == 3;
        let o_dx = if image_input { 0.0 } else { o.grad_input };
        let ours_step = o.fwd + o_dx + o.grad_weight;
        let theirs_step = t.fwd + t.grad_input + t.grad_weight;
        let count = l.count as f64;
        tot_ours += count * ours_step;
        tot_theirs += count * theirs_step;
        tot_flop += count * mflop * if image_input { 2.0 } else { 3.0 };
        println!(
            "{:<28} {:>5} {mflop:>7.1} | {:>7.2} {:>7.2} {:>7.2} | {:>8.2} {:>7.2} {:>7.2} | {:>5.1}x",
            l.name,
            l.count,
            o.fwd,
            o.grad_input,
            o.grad_weight,
            t.fwd,
            t.grad_input,
            t.grad_weight,
            theirs_step / ours_step
        );
    }
    let parts = rayon::current_num_threads().min(batch);
    let split_ms = if parts > 1 {
        let layers: Vec<&Layer> = REFERENCE_LAYERS
            .iter()
            .filter(|l| only.is_none_or(|o| l.name.contains(o)))
            .collect();
        Some(split_step_ms(&layers, batch, parts, reps)?)
    } else {
        None
    };
    let after = peak_threads.map(measure).transpose()?;
    let peaks = before.zip(after);
    // GFLOP/s, and the share of the lower and higher peak when they were measured.
    let rate = |ms: f64| {
        let gflops = tot_flop / ms;
        let share = peaks.map_or(String::new(), |(a, b)| {
            let (lo, hi) = (a.min(b), a.max(b));
            format!(
                ", {:.0}-{:.0}% of the sgemm peak",
                100.0 * gflops / hi,
                100.0 * gflops / lo
            )
        });
        format!("{gflops:.1} GFLOP/s{share}")
    };
    println!(
        "all convolutions of one training step: fl-lab {tot_ours:.1} ms ({}), candle {tot_theirs:.1} ms ({:.1} GFLOP/s), {:.1}x; {:.2} GFLOP",
        rate(tot_ours),
        tot_flop / tot_theirs,
        tot_theirs / tot_ours,
        tot_flop / 1e3
    );
    if let Some(ms) = split_ms {
        println!(
            "the same as a training step runs them (the batch in {parts} parts, each on a thread of its own, \
             one backward call for both gradients): fl-lab {ms:.1} ms ({})",
            rate(ms)
        );
    }
    if let (Some((a, b)), Some(t)) = (peaks, peak_threads) {
        println!(
            "sgemm peak {PEAK_SIZE}, {t} threads: {a:.1} GFLOP/s before the table, {b:.1} after"
        );
    }
    Ok(())
}

/// Wall time (median of `reps`, ms) of every convolution pass of `layers` run as `train::step`
/// runs a training step on the CPU: the batch split into `parts` parts of nearly equal size, each
/// part's calls one after another on a one-thread pool of its own, all parts at once; the input
/// and weight gradients in one backward call (no input gradient for the image).
fn split_step_ms(layers: &[&Layer], batch: usize, parts: usize, reps: usize) -> Result<f64> {
    struct Work {
        x: Vec<f32>,
        w: Vec<f32>,
        dy: Vec<f32>,
        g: conv::ConvGeom,
        count: usize,
        needs: conv::Needs,
    }
    let part_work = |n: usize| -> Result<Vec<Work>> {
        layers
            .iter()
            .map(|l| {
                let g = l.geometry(n)?;
                Ok(Work {
                    x: rand_vec(n * l.c_in * l.size * l.size, 1),
                    w: rand_vec(l.c_out * l.c_in * l.k * l.k, 2),
                    dy: rand_vec(g.n * g.out_len(), 4),
                    g,
                    count: l.count,
                    needs: conv::Needs {
                        input: l.c_in != 3,
                        weight: true,
                        bias: true,
                    },
                })
            })
            .collect()
    };
    let works = (0..parts)
        .map(|i| part_work(batch / parts + usize::from(i < batch % parts)))
        .collect::<Result<Vec<_>>>()?;
    let pools = (0..parts)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("cannot start the benchmark's threads")?;
    let run_part = |works: &[Work]| -> candle_core::Result<()> {
        for w in works {
            for _ in 0..w.count {
                std::hint::black_box(conv::forward(&w.x, &w.w, None, &w.g, false)?);
                std::hint::black_box(conv::backward(&w.x, &w.w, &w.dy, None, &w.g, w.needs)?);
            }
        }
        Ok(())
    };
    median_ms(reps, || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = works
                .iter()
                .zip(&pools)
                .map(|(w, pool)| scope.spawn(|| pool.install(|| run_part(w))))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| candle_core::bail!("a benchmark thread panicked"))
            })
        })
    })
}
