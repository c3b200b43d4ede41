//! Sigmoid focal loss forward + backward on the reference shape: 8 images x 10,000 anchors
//! (logits [80000, 10], 800,000 logits), ~1% positive anchors, ~5% ignored.
//!
//! `cargo bench --bench focal_loss` ; `bench/compare_focal.sh` runs it beside torchvision.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use fl_lab::loss::focal::{sigmoid_focal_loss, sigmoid_focal_loss_composed, FocalParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const M: usize = 80_000;
const K: usize = 10;

fn problem() -> (Var, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x: Vec<f32> = (0..M * K).map(|_| rng.gen_range(-6.0f32..2.0)).collect();
    let labels: Vec<i64> = (0..M)
        .map(|_| {
            let u: f32 = rng.gen();
            if u < 0.01 {
                rng.gen_range(1..=K as i64)
            } else if u < 0.06 {
                -1
            } else {
                0
            }
        })
        .collect();
    (
        Var::from_vec(x, (M, K), &Device::Cpu).expect("logits"),
        Tensor::from_vec(labels, M, &Device::Cpu).expect("labels"),
    )
}

fn bench(c: &mut Criterion) {
    let (logits, labels) = problem();
    let p = FocalParams::paper();
    let mut g = c.benchmark_group("focal_loss_80000x10");
    g.bench_function("fused_fwd_bwd", |b| {
        b.iter(|| {
            let loss = sigmoid_focal_loss(logits.as_tensor(), &labels, &p).expect("loss");
            let grads = loss.backward().expect("backward");
            criterion::black_box(grads.get(&logits).is_some())
        })
    });
    g.sample_size(20);
    g.bench_function("composed_fwd_bwd", |b| {
        b.iter(|| {
            let loss = sigmoid_focal_loss_composed(logits.as_tensor(), &labels, &p).expect("loss");
            let grads = loss.backward().expect("backward");
            criterion::black_box(grads.get(&logits).is_some())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
