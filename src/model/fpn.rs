//! Feature pyramid P_min..P7 as in the paper (§4): P_l for l <= 5 from C_l by a lateral 1x1 conv
//! plus the x2 nearest-upsampled level above, then a 3x3 conv; P6 = 3x3/2 conv on C5 (not P5);
//! P7 = 3x3/2 conv on ReLU(P6).

use super::layers::{upsample2x, Conv, ConvInit};
use super::params::ParamStore;
use crate::ops;
use candle_core::{Result, Tensor};

pub struct Fpn {
    min_level: usize,
    /// Lateral and output convs for levels min_level..=5, lowest first.
    lateral: Vec<Conv>,
    output: Vec<Conv>,
    p6: Option<Conv>,
    p7: Option<Conv>,
}

impl Fpn {
    /// `c_channels` are the channels of C2..C5.
    pub fn new(
        store: &mut ParamStore,
        c_channels: [usize; 4],
        channels: usize,
        min_level: usize,
        max_level: usize,
    ) -> Result<Fpn> {
        let d = ConvInit::Default;
        let mut lateral = Vec::new();
        let mut output = Vec::new();
        for l in min_level..=5 {
            let c_in = c_channels[l - 2];
            lateral.push(Conv::new(
                store,
                &format!("fpn.lateral{l}"),
                c_in,
                channels,
                1,
                1,
                true,
                d,
            )?);
            output.push(Conv::new(
                store,
                &format!("fpn.output{l}"),
                channels,
                channels,
                3,
                1,
                true,
                d,
            )?);
        }
        let p6 = if max_level >= 6 {
            Some(Conv::new(
                store,
                "fpn.p6",
                c_channels[3],
                channels,
                3,
                2,
                true,
                d,
            )?)
        } else {
            None
        };
        let p7 = if max_level >= 7 {
            Some(Conv::new(
                store, "fpn.p7", channels, channels, 3, 2, true, d,
            )?)
        } else {
            None
        };
        Ok(Fpn {
            min_level,
            lateral,
            output,
            p6,
            p7,
        })
    }

    /// `[C2, C3, C4, C5]` -> `[P_min, ..., P_max]`, each `[N, F, H_l, W_l]`.
    pub fn forward(&self, c: &[Tensor]) -> Result<Vec<Tensor>> {
        let n = self.lateral.len();
        let mut merged: Vec<Tensor> = Vec::with_capacity(n);
        // Top-down: from C5 to C_min.
        let mut top: Option<Tensor> = None;
        for i in (0..n).rev() {
            let l = self.min_level + i;
            let lat = self.lateral[i].forward(&c[l - 2])?;
            let m = match &top {
                Some(t) => (lat + upsample2x(t)?)?,
                None => lat,
            };
            top = Some(m.clone());
            merged.push(m);
        }
        merged.reverse();
        let mut outs = Vec::with_capacity(n + 2);
        for (conv, m) in self.output.iter().zip(&merged) {
            outs.push(conv.forward(m)?);
        }
        if let Some(p6) = &self.p6 {
            let p6 = p6.forward(&c[3])?;
            if let Some(p7) = &self.p7 {
                let p7 = p7.forward(&ops::relu(&p6)?)?;
                outs.push(p6);
                outs.push(p7);
            } else {
                outs.push(p6);
            }
        }
        Ok(outs)
    }
}
