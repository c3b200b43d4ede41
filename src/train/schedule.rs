//! Learning rate: linear warm-up then step decay (detectron2's `WarmupMultiStepLR`).

use crate::config::ScheduleConfig;

/// The learning rate at iteration `iter` (0-based): `lr * warmup(iter) * decay^(steps passed)`,
/// where the warm-up factor rises linearly from `warmup_factor` at 0 to 1 at `warmup_iters`.
pub fn lr_at(s: &ScheduleConfig, iter: usize) -> f64 {
    let warm = if iter < s.warmup_iters {
        let alpha = iter as f64 / s.warmup_iters as f64;
        s.warmup_factor * (1.0 - alpha) + alpha
    } else {
        1.0
    };
    let passed = s.steps.iter().filter(|&&st| st <= iter).count();
    s.lr * warm * s.decay.powi(passed as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_and_steps() {
        let s = ScheduleConfig {
            lr: 0.01,
            warmup_iters: 100,
            warmup_factor: 1.0 / 3.0,
            steps: vec![600, 800],
            decay: 0.1,
            ..Default::default()
        };
        assert!((lr_at(&s, 0) - 0.01 / 3.0).abs() < 1e-12);
        assert!((lr_at(&s, 50) - 0.01 * (1.0 / 6.0 + 0.5)).abs() < 1e-12);
        assert_eq!(lr_at(&s, 100), 0.01);
        assert_eq!(lr_at(&s, 599), 0.01);
        assert!((lr_at(&s, 600) - 0.001).abs() < 1e-12);
        assert!((lr_at(&s, 800) - 0.0001).abs() < 1e-12);
    }
}
