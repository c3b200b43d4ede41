//! Class and box subnets (paper §4): each a stack of 3x3 conv + ReLU and a 3x3 predictor, shared
//! across pyramid levels but not with each other. All head convs start from N(0, 0.01) with bias 0,
//! except the class predictor's bias, -log((1 - pi) / pi), so every anchor starts at foreground
//! probability pi (§3.3).

use super::layers::{Conv, ConvInit, Norm};
use super::params::ParamStore;
use candle_core::{Result, Tensor};

pub struct Subnet {
    convs: Vec<Conv>,
    /// GroupNorm after each conv when the config asks for it (shared across levels like the convs).
    norms: Vec<Norm>,
    pred: Conv,
}

impl Subnet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        width: usize,
        depth: usize,
        outputs: usize,
        pred_bias: f64,
        gn_groups: Option<usize>,
    ) -> Result<Subnet> {
        let g = ConvInit::Gaussian {
            std: 0.01,
            bias: 0.0,
        };
        let mut convs = Vec::with_capacity(depth);
        let mut norms = Vec::new();
        let mut c = c_in;
        for i in 0..depth {
            convs.push(Conv::new(
                store,
                &format!("{name}.conv{i}"),
                c,
                width,
                3,
                1,
                true,
                g,
            )?);
            if let Some(groups) = gn_groups {
                norms.push(Norm::new(
                    store,
                    &format!("{name}.norm{i}"),
                    crate::config::NormKind::Gn,
                    width,
                    groups,
                )?);
            }
            c = width;
        }
        let pred_init = ConvInit::Gaussian {
            std: 0.01,
            bias: pred_bias,
        };
        let pred = Conv::new(
            store,
            &format!("{name}.pred"),
            c,
            outputs,
            3,
            1,
            true,
            pred_init,
        )?;
        Ok(Subnet { convs, norms, pred })
    }

    /// `[N, F, H, W]` -> `[N, outputs, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for (i, c) in self.convs.iter().enumerate() {
            y = match self.norms.get(i) {
                Some(n) => c.forward_norm(n, &y, true, true)?,
                None => c.forward_relu(&y)?,
            };
        }
        self.pred.forward(&y)
    }
}

/// The class predictor's bias for prior probability `pi`: -log((1 - pi) / pi).
pub fn prior_bias(pi: f64) -> f64 {
    -((1.0 - pi) / pi).ln()
}
