//! Kernel benchmarks: this crate's CPU kernels against candle's own, in the same run, on layers of
//! the reference model (PERF-NOTES.md). `cargo bench --bench ops`; restrict with a filter, e.g.
//! `cargo bench --bench ops -- conv/c2b`.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fl_lab::commands::bench::{Layer, REFERENCE_LAYERS};
use fl_lab::ops::{self, reference};

fn tensor(dims: &[usize], seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 1000.0) - 0.45)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).expect("tensor")
}

fn pick(name: &str) -> Layer {
    *REFERENCE_LAYERS
        .iter()
        .find(|l| l.name.starts_with(name))
        .expect("layer")
}

/// Forward, and forward + backward through candle's autograd (gradients for the input, the weight
/// and the bias), for the fused conv + bias + ReLU and for candle's conv + bias + ReLU.
fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group.sample_size(15);
    for (short, name) in [
        ("c2b_64x32", "c2b"),
        ("c3b_128x16", "c3b"),
        ("head_64x16", "head 3x3 64->64 @16"),
        ("lateral_1x1_16", "lateral 1x1 128->64 @16"),
        ("c2a_stride2", "c2a"),
    ] {
        let l = pick(name);
        let x = Var::from_tensor(&tensor(&[8, l.c_in, l.size, l.size], 1)).expect("x");
        let w = Var::from_tensor(&tensor(&[l.c_out, l.c_in, l.k, l.k], 2)).expect("w");
        let b = Var::from_tensor(&tensor(&[l.c_out], 3)).expect("b");
        let pad = l.k / 2;
        let macs = 8 * l.c_out * l.c_in * l.k * l.k * (l.size / l.stride).pow(2);
        group.throughput(Throughput::Elements(2 * macs as u64));
        type ConvFn =
            fn(&Tensor, &Tensor, Option<&Tensor>, usize, usize) -> candle_core::Result<Tensor>;
        let fl: ConvFn = ops::conv2d_bias_relu;
        let cand: ConvFn = |x, w, b, s, p| reference::conv2d(x, w, b, s, p)?.relu();
        for (who, f) in [("fl-lab", fl), ("candle", cand)] {
            group.bench_function(BenchmarkId::new(format!("{short}/fwd"), who), |bn| {
                bn.iter(|| f(&x, &w, Some(&b), l.stride, pad).expect("fwd"))
            });
            group.bench_function(BenchmarkId::new(format!("{short}/fwd+bwd"), who), |bn| {
                bn.iter(|| {
                    let y = f(&x, &w, Some(&b), l.stride, pad).expect("fwd");
                    y.sum_all().expect("sum").backward().expect("bwd")
                })
            });
        }
    }
    group.finish();
}

/// GroupNorm (32 groups) forward and forward + backward on a head-sized activation.
fn group_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_norm");
    group.sample_size(20);
    let x = Var::from_tensor(&tensor(&[8, 64, 32, 32], 4)).expect("x");
    let gamma = Var::from_tensor(&tensor(&[64], 5)).expect("gamma");
    let beta = Var::from_tensor(&tensor(&[64], 6)).expect("beta");
    type GnFn = fn(&Tensor, usize, &Tensor, &Tensor, f64) -> candle_core::Result<Tensor>;
    let fl: GnFn = ops::group_norm;
    let cand: GnFn = reference::group_norm;
    for (who, f) in [("fl-lab", fl), ("candle", cand)] {
        group.bench_function(BenchmarkId::new("8x64x32x32/fwd", who), |bn| {
            bn.iter(|| f(&x, 32, &gamma, &beta, 1e-5).expect("fwd"))
        });
        group.bench_function(BenchmarkId::new("8x64x32x32/fwd+bwd", who), |bn| {
            bn.iter(|| {
                let y = f(&x, 32, &gamma, &beta, 1e-5).expect("fwd");
                y.sum_all().expect("sum").backward().expect("bwd")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, conv, group_norm);
criterion_main!(benches);
