//! Helpers shared by the kernel tests.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Uniform values in ±[0.1, 1): random sign and magnitude, never zero.
pub fn rand_tensor(dims: &[usize], seed: u64, dev: &Device) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let m: f32 = rng.gen_range(0.1..1.0);
            if rng.gen::<bool>() {
                m
            } else {
                -m
            }
        })
        .collect();
    Tensor::from_vec(v, dims, dev).unwrap()
}

/// Relative error `max|a - e| / max|e|` at most 1e-4 (the norm-wise form: element-wise relative
/// error is meaningless where an expected value is near zero by cancellation).
pub fn assert_close(a: &Tensor, e: &Tensor, what: &str) {
    assert_eq!(a.dims(), e.dims(), "{what}: shape");
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let e: Vec<f32> = e.flatten_all().unwrap().to_vec1().unwrap();
    let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&e)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= 1e-4 * scale.max(f32::MIN_POSITIVE),
        "{what}: max abs error {err} vs max magnitude {scale} (relative {})",
        err / scale
    );
}
