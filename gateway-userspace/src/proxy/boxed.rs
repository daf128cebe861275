//! Futures boxed where they are made.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

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

/// A rare path's future (the PROXY protocol header's read, TLS, hyper's servers) in a box
/// of its own, made there and polled by functions never inlined. `Box::pin(f(..)).await`
/// in a connection's future had both inlined into that future's poll function: its stack
/// frame held room for the rare futures' making and polling (13 KB for the accepted
/// connection's), reserved, and its pages touched, at every poll of every connection.
pub(super) struct Cold<F>(Pin<Box<F>>);

impl<F> Cold<F> {
    /// `make()`'s value made in its box (see `pinned`), out of line.
    #[inline(never)]
    pub(super) fn new(make: impl FnOnce() -> F) -> Self {
        Cold(pinned(make))
    }
}

impl<F: Future> Future for Cold<F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}
