//! The element terms of the focal loss and FL*: value and derivative at one `x_t`, generic over
//! f32/f64 and the transcendental implementation. Shared by the per-sample losses of [`super::focal`]
//! and the fused kernels of `fused` (a leaf of the loss module, so neither imports the other's
//! internals).

use super::stable::{LogitParts, Real, Transcendental};

/// How `(1 - p_t)^gamma` is formed: exact small integer powers of `q = 1 - p_t`, else
/// `exp(-gamma * softplus(x_t))`. A const parameter so that each kind gets its own kernel.
pub const GAMMA_ZERO: u8 = 0;
pub const GAMMA_ONE: u8 = 1;
pub const GAMMA_TWO: u8 = 2;
pub const GAMMA_GENERAL: u8 = 3;

/// The const kind for `gamma` (see [`GAMMA_GENERAL`]).
pub fn gamma_kind(gamma: f64) -> u8 {
    if gamma == 0.0 {
        GAMMA_ZERO
    } else if gamma == 1.0 {
        GAMMA_ONE
    } else if gamma == 2.0 {
        GAMMA_TWO
    } else {
        GAMMA_GENERAL
    }
}

/// `(FL, dFL/dx_t)` at `x_t`, with `alpha_t` applied. `G` must be `gamma_kind(gamma)`.
#[inline(always)]
pub fn focal_terms<F: Real, M: Transcendental<F>, const G: u8>(
    x_t: F,
    gamma: F,
    alpha_t: F,
) -> (F, F) {
    let parts = LogitParts::<F>::new::<M>(x_t);
    let (p_t, q) = parts.sigmoids();
    let nlp = parts.softplus_neg(); // -log p_t
    let w = match G {
        GAMMA_ZERO => F::ONE,
        GAMMA_ONE => q,
        GAMMA_TWO => q * q,
        _ => M::exp_nonpos(-(gamma * parts.softplus())), // softplus(x_t) = -log(1 - p_t)
    };
    let value = alpha_t * w * nlp;
    // The gradient keeps (1-p_t)^gamma whole (never (1-p_t)^(gamma-1)), so it is finite for gamma < 1.
    let grad = -(alpha_t * w * (gamma * p_t * nlp + q));
    (value, grad)
}

/// `(FL*, dFL*/dx_t)` at `x_t`, with `alpha_t` applied.
#[inline(always)]
pub fn fl_star_terms<F: Real, M: Transcendental<F>>(
    x_t: F,
    gamma: F,
    beta: F,
    alpha_t: F,
) -> (F, F) {
    let parts = LogitParts::<F>::new::<M>(gamma * x_t + beta);
    let (_, q_star) = parts.sigmoids();
    (alpha_t * parts.softplus_neg() / gamma, -(alpha_t * q_star))
}
