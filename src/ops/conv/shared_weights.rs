//! Weights prepared once per pass: a subnet runs the same weights on every pyramid level (five
//! calls in the forward pass, five in the backward), and the Winograd transforms or the bf16
//! packings of those weights were made again on each call. Inside `within_pass` the first call's
//! preparation is kept and the later calls with the same weight tensor take it.
//!
//! The key is candle's tensor id, which no other tensor ever takes; but a `Var`'s values can be
//! rewritten in place under the same id (SGD does that after each step), so the kept values are
//! valid only while the caller guarantees the weights do not change: between the start of a
//! forward pass and the end of its backward pass. Hence a scope, closed before the optimizer runs,
//! and one store per thread (each part of a split batch runs on a thread of its own).

use candle_core::TensorId;
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// What was prepared from a weight tensor (each kind has its own value type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Prepared {
    /// `winograd::transform_weights` (forward and input gradient alike): `Vec<f32>`.
    Winograd,
    /// `shifted::forward_weights_bf16`: `amx::Packed`.
    Bf16Forward,
    /// `shifted::input_grad_weights_bf16`: `amx::Packed`.
    Bf16InputGrad,
}

type Store = HashMap<(TensorId, Prepared), Arc<dyn Any + Send + Sync>>;

thread_local! {
    /// `Some` while a pass is open on this thread.
    static STORE: RefCell<Option<Store>> = const { RefCell::new(None) };
}

/// Runs `f` with the weights' preparations shared between its convolution calls on this thread.
/// The caller promises that no weight tensor changes its values inside `f`. Nested calls share
/// the outermost pass; everything kept is dropped when it ends (also by a panic).
pub fn within_pass<R>(f: impl FnOnce() -> R) -> R {
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            STORE.with(|s| s.borrow_mut().take());
        }
    }
    let opened = STORE.with(|s| {
        let mut s = s.borrow_mut();
        let closed = s.is_none();
        if closed {
            *s = Some(Store::new());
        }
        closed
    });
    // Lazily: a `Close` made and dropped on a nested call would end the outer pass.
    let _close = opened.then(|| Close);
    f()
}

/// The preparation `kind` of the weights `id` (none: a call outside any tensor, never shared):
/// kept from an earlier call of the pass, or made by `make` now (and kept while a pass is open).
pub(super) fn prepared<T: Any + Send + Sync>(
    id: Option<TensorId>,
    kind: Prepared,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let Some(id) = id else {
        return Arc::new(make());
    };
    let kept = STORE.with(|s| {
        let s = s.borrow();
        let open = s.is_some();
        let kept = s.as_ref().and_then(|m| m.get(&(id, kind)).cloned());
        (open, kept)
    });
    match kept {
        (_, Some(v)) => v
            .downcast::<T>()
            .unwrap_or_else(|_| panic!("{kind:?} preparations keep one type")),
        (open, None) => {
            let v = Arc::new(make());
            if open {
                STORE.with(|s| {
                    if let Some(m) = s.borrow_mut().as_mut() {
                        m.insert((id, kind), v.clone());
                    }
                });
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn id() -> TensorId {
        Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .id()
    }

    #[test]
    fn a_pass_makes_each_preparation_once_and_forgets_it_at_its_end() {
        let (a, b) = (id(), id());
        let made = std::cell::Cell::new(0);
        let make = |v: f32| {
            made.set(made.get() + 1);
            vec![v]
        };
        within_pass(|| {
            let first = prepared(Some(a), Prepared::Winograd, || make(1.0));
            // The same tensor and kind: kept, even though `make` would now give another value.
            let again = prepared(Some(a), Prepared::Winograd, || make(2.0));
            assert!(Arc::ptr_eq(&first, &again));
            // Another kind or another tensor: made anew.
            prepared(Some(a), Prepared::Bf16Forward, || make(3.0));
            assert_eq!(*prepared(Some(b), Prepared::Winograd, || make(4.0)), [4.0]);
            // A nested pass shares the outer one.
            within_pass(|| assert_eq!(*prepared(Some(a), Prepared::Winograd, || make(5.0)), [1.0]));
            assert_eq!(*prepared(Some(a), Prepared::Winograd, || make(6.0)), [1.0]);
        });
        assert_eq!(made.get(), 3);
        // After the pass (as after an optimizer step), the weights are prepared again.
        within_pass(|| assert_eq!(*prepared(Some(a), Prepared::Winograd, || make(7.0)), [7.0]));
        // Outside any pass, and for calls without a tensor, nothing is kept.
        assert_eq!(*prepared(Some(a), Prepared::Winograd, || make(8.0)), [8.0]);
        assert_eq!(*prepared(Some(a), Prepared::Winograd, || make(9.0)), [9.0]);
        within_pass(|| {
            prepared(None, Prepared::Winograd, || make(10.0));
            assert_eq!(*prepared(None, Prepared::Winograd, || make(11.0)), [11.0]);
        });
    }

    #[test]
    fn a_panic_inside_a_pass_closes_it() {
        let a = id();
        let r = std::panic::catch_unwind(|| {
            within_pass(|| {
                prepared(Some(a), Prepared::Winograd, || vec![1f32]);
                panic!("inside the pass");
            })
        });
        assert!(r.is_err());
        assert_eq!(*prepared(Some(a), Prepared::Winograd, || vec![2f32]), [2.0]);
    }
}
