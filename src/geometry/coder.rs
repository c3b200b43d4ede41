//! The R-CNN box parameterisation (paper §4: "the standard box parameterization from R-CNN").
//!
//! For an anchor with centre `(xa, ya)` and size `(wa, ha)` and a box `(x, y, w, h)`:
//! `dx = wx (x - xa) / wa`, `dy = wy (y - ya) / ha`, `dw = ww ln(w / wa)`, `dh = wh ln(h / ha)`.
//! Decoding clamps `dw / ww` and `dh / wh` at `clip = ln(1000 / 16)` from above, as Detectron and detectron2
//! do, so that one wild prediction cannot overflow `exp`.
//!
//! Widths are `x2 - x1` (continuous coordinates, as detectron2); Detectron used `x2 - x1 + 1` and subtracts
//! 1 when decoding. Weights (1, 1, 1, 1) are RetinaNet's (Detectron's `compute_targets(..., weights=(1.0, 1.0,
//! 1.0, 1.0))`, detectron2's `BBOX_REG_WEIGHTS`), with no mean/std normalisation.

use super::boxes::Box4;

/// Box coder with per-coordinate weights and the clamp applied to `dw`, `dh` when decoding.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoxCoder {
    pub weights: [f32; 4],
    pub clip: f32,
}

impl Default for BoxCoder {
    fn default() -> Self {
        Self {
            weights: [1.0; 4],
            clip: (1000.0f32 / 16.0).ln(),
        }
    }
}

#[inline]
fn center_size(b: &Box4) -> (f32, f32, f32, f32) {
    let w = b[2] - b[0];
    let h = b[3] - b[1];
    (b[0] + 0.5 * w, b[1] + 0.5 * h, w, h)
}

impl BoxCoder {
    /// Regression target that takes `anchor` to `gt`. Both must have positive width and height (a matched
    /// ground-truth box does: a box of zero area has IoU 0 with every anchor and is never matched).
    #[inline]
    pub fn encode(&self, anchor: &Box4, gt: &Box4) -> [f32; 4] {
        let (ax, ay, aw, ah) = center_size(anchor);
        let (gx, gy, gw, gh) = center_size(gt);
        let [wx, wy, ww, wh] = self.weights;
        [
            wx * (gx - ax) / aw,
            wy * (gy - ay) / ah,
            ww * (gw / aw).ln(),
            wh * (gh / ah).ln(),
        ]
    }

    /// The box given by applying `deltas` to `anchor` (the inverse of `encode` while `dw`, `dh` stay below the
    /// clamp).
    #[inline]
    pub fn decode(&self, anchor: &Box4, deltas: &[f32; 4]) -> Box4 {
        let (ax, ay, aw, ah) = center_size(anchor);
        let [wx, wy, ww, wh] = self.weights;
        let dx = deltas[0] / wx;
        let dy = deltas[1] / wy;
        let dw = (deltas[2] / ww).min(self.clip);
        let dh = (deltas[3] / wh).min(self.clip);
        let cx = dx * aw + ax;
        let cy = dy * ah + ay;
        let w = dw.exp() * aw;
        let h = dh.exp() * ah;
        [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
    }

    /// Encode `[N]` anchor/box pairs into `[N * 4]` targets, in order.
    pub fn encode_all(&self, anchors: &[Box4], gt: &[Box4]) -> Vec<f32> {
        anchors
            .iter()
            .zip(gt)
            .flat_map(|(a, g)| self.encode(a, g))
            .collect()
    }

    /// Decode `deltas` `[N * 4]` against `anchors` `[N]`.
    pub fn decode_all(&self, anchors: &[Box4], deltas: &[f32]) -> Vec<Box4> {
        anchors
            .iter()
            .zip(deltas.chunks_exact(4))
            .map(|(a, d)| self.decode(a, &[d[0], d[1], d[2], d[3]]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rand_box(rng: &mut ChaCha8Rng) -> Box4 {
        let x = rng.gen_range(-50.0..500.0f32);
        let y = rng.gen_range(-50.0..500.0f32);
        [
            x,
            y,
            x + rng.gen_range(1.0..400.0f32),
            y + rng.gen_range(1.0..400.0f32),
        ]
    }

    #[test]
    fn round_trip_encode_then_decode_is_identity() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for weights in [[1.0; 4], [10.0, 10.0, 5.0, 5.0]] {
            let c = BoxCoder {
                weights,
                ..Default::default()
            };
            let mut tested = 0;
            for _ in 0..2000 {
                let (a, g) = (rand_box(&mut rng), rand_box(&mut rng));
                let d = c.encode(&a, &g);
                if d[2] / weights[2] > c.clip || d[3] / weights[3] > c.clip {
                    // Beyond the clamp decode is not meant to invert encode (tested below).
                    continue;
                }
                tested += 1;
                let back = c.decode(&a, &d);
                for k in 0..4 {
                    assert!((back[k] - g[k]).abs() < 2e-3, "{a:?} {g:?} {back:?}");
                }
            }
            assert!(tested > 1500, "{tested}");
        }
    }

    #[test]
    fn closed_form_deltas() {
        let c = BoxCoder::default();
        let a = [0.0, 0.0, 10.0, 20.0];
        // Centre moved by (5, -10) = (0.5 w, -0.5 h), width doubled, height kept.
        let g = [0.0, -10.0, 20.0, 10.0];
        let d = c.encode(&a, &g);
        assert!((d[0] - 0.5).abs() < 1e-6 && (d[1] + 0.5).abs() < 1e-6);
        assert!((d[2] - 2f32.ln()).abs() < 1e-6 && d[3].abs() < 1e-6);
        assert_eq!(c.decode(&a, &[0.0; 4]), a);
        let c = BoxCoder {
            weights: [10.0, 10.0, 5.0, 5.0],
            ..Default::default()
        };
        let d = c.encode(&a, &g);
        assert!((d[0] - 5.0).abs() < 1e-5 && (d[2] - 5.0 * 2f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn decode_clamps_dw_dh_from_above_only() {
        let c = BoxCoder::default();
        let a = [0.0, 0.0, 16.0, 16.0];
        let big = c.decode(&a, &[0.0, 0.0, 1e4, 1e4]);
        // exp(ln(1000/16)) * 16 = 1000.
        assert!(
            ((big[2] - big[0]) - 1000.0).abs() < 0.1 && ((big[3] - big[1]) - 1000.0).abs() < 0.1
        );
        assert!(big.iter().all(|v| v.is_finite()));
        // Small (negative) deltas are not clamped: the box shrinks toward its centre.
        let small = c.decode(&a, &[0.0, 0.0, -30.0, -30.0]);
        assert!((small[2] - small[0]).abs() < 1e-9 + 16.0 * (-30f32).exp() * 2.0);
        assert!((small[0] - 8.0).abs() < 1e-5);
        assert_eq!(c.clip, (1000.0f32 / 16.0).ln());
    }

    #[test]
    fn batch_helpers_agree_with_single() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let c = BoxCoder::default();
        let a: Vec<Box4> = (0..10).map(|_| rand_box(&mut rng)).collect();
        let g: Vec<Box4> = (0..10).map(|_| rand_box(&mut rng)).collect();
        let d = c.encode_all(&a, &g);
        assert_eq!(d.len(), 40);
        let b = c.decode_all(&a, &d);
        for i in 0..10 {
            assert_eq!(
                b[i],
                c.decode(&a[i], &[d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]])
            );
        }
    }
}
