//! Futures boxed where they are made.

use std::pin::Pin;

/// `make()`'s value in a box of its own, pinned. The box is taken first: nothing can
/// unwind between making the value and moving it in, so (with `make`'s callee inlined)
/// only what the value holds at first is written, into the box. `Box::pin(f(..))` made
/// the future on the stack and then copied it whole (a memcpy of its size, kilobytes for
/// a request's futures): the box was taken after, and a failed allocation would have
/// dropped the future from the stack.
#[inline(always)]
pub(super) fn pinned<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(made(make))
}

/// `make()`'s value in a box of its own, taken first (see `pinned`).
#[inline(always)]
pub(super) fn made<T>(make: impl FnOnce() -> T) -> Box<T> {
    Box::write(Box::new_uninit(), make())
}
