//! Where the classification loss and its gradient come from: the share carried by positives, by
//! hard negatives and by easy negatives, summed over a minibatch's binary (anchor, class) samples.
//!
//! This is the quantity the paper argues about: with cross entropy the many easy negatives carry
//! most of the loss and gradient; the focal loss shifts both onto the hard examples. A negative
//! sample is *easy* when `p_t > 0.5`, i.e. its logit is below 0 (the model already calls it
//! background), and *hard* otherwise. Positives are not split. Ignored anchors count nowhere.

/// Index of each group in [`LossSplit`]'s arrays.
pub const POSITIVE: usize = 0;
pub const HARD_NEGATIVE: usize = 1;
pub const EASY_NEGATIVE: usize = 2;
/// Group names as the `metrics.csv` columns use them, in index order.
pub const GROUPS: [&str; 3] = ["pos", "hard_neg", "easy_neg"];

/// Sums of the element loss and of `|d loss / d logit|` per group (unnormalized, so the sums of
/// a batch's parts add up to the batch's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSplit {
    pub loss: [f64; 3],
    pub grad: [f64; 3],
}

impl LossSplit {
    /// Adds another part's sums.
    pub fn add(&mut self, other: &LossSplit) {
        for g in 0..3 {
            self.loss[g] += other.loss[g];
            self.grad[g] += other.grad[g];
        }
    }

    /// Each group's fraction of the loss (NaN when the total is 0, e.g. no sample).
    pub fn loss_shares(&self) -> [f64; 3] {
        shares(&self.loss)
    }

    /// Each group's fraction of the summed gradient magnitude.
    pub fn grad_shares(&self) -> [f64; 3] {
        shares(&self.grad)
    }
}

fn shares(sums: &[f64; 3]) -> [f64; 3] {
    let total: f64 = sums.iter().sum();
    if total > 0.0 && total.is_finite() {
        sums.map(|s| s / total)
    } else {
        [f64::NAN; 3]
    }
}

/// The group of a binary sample: its target and its logit.
#[inline(always)]
pub fn group_of(positive: bool, logit: f32) -> usize {
    if positive {
        POSITIVE
    } else if logit >= 0.0 {
        HARD_NEGATIVE
    } else {
        EASY_NEGATIVE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_one_and_parts_add() {
        let mut a = LossSplit {
            loss: [1.0, 2.0, 1.0],
            grad: [0.5, 0.0, 1.5],
        };
        a.add(&LossSplit {
            loss: [1.0, 0.0, 3.0],
            grad: [0.5, 1.0, 0.5],
        });
        assert_eq!(a.loss_shares(), [0.25, 0.25, 0.5]);
        assert_eq!(a.grad_shares(), [0.25, 0.25, 0.5]);
        assert!(LossSplit::default().loss_shares()[0].is_nan());
    }

    #[test]
    fn easy_negatives_are_those_with_p_t_above_one_half() {
        assert_eq!(group_of(true, -3.0), POSITIVE);
        assert_eq!(group_of(false, -0.01), EASY_NEGATIVE);
        assert_eq!(group_of(false, 0.0), HARD_NEGATIVE);
        assert_eq!(group_of(false, 2.0), HARD_NEGATIVE);
    }
}
