//! Losses, all computed from logits in log space so that they are finite for any logit.

pub mod ohem;
