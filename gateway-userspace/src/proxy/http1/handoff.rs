//! One request body frame at a time from the connection loop to the request handler: a
//! slot for a single frame. tokio's bounded channel would allocate a block of 32 slots
//! for each request with a body (over 3 KiB for frames of this size), and after a burst
//! of frames it can keep a second block for reuse: memory a stalled upload holds for
//! nothing, since the codec never sends a frame before the last one was taken.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

/// The receiving side was dropped: nobody reads the body any more.
#[derive(Debug)]
pub(super) struct Closed;

struct Slot<T> {
    value: Option<T>,
    /// Woken when a value arrives or the sender goes.
    receiver: Option<Waker>,
    /// Woken when the value is taken or the receiver goes.
    sender: Option<Waker>,
    sender_alive: bool,
    receiver_alive: bool,
}

type Shared<T> = Arc<Mutex<Slot<T>>>;

fn lock<T>(shared: &Mutex<Slot<T>>) -> MutexGuard<'_, Slot<T>> {
    // Plain data: a panic elsewhere while holding the lock leaves it usable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn remember(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

pub(super) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(Slot {
        value: None,
        receiver: None,
        sender: None,
        sender_alive: true,
        receiver_alive: true,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

pub(super) struct Sender<T>(Shared<T>);

impl<T> Sender<T> {
    /// Ready when the slot is free for the next value (`put`), or with `Closed` when the
    /// receiver is gone.
    pub(super) fn poll_ready(&self, cx: &Context<'_>) -> Poll<Result<(), Closed>> {
        let mut slot = lock(&self.0);
        if !slot.receiver_alive {
            return Poll::Ready(Err(Closed));
        }
        if slot.value.is_none() {
            return Poll::Ready(Ok(()));
        }
        remember(&mut slot.sender, cx);
        Poll::Pending
    }

    /// Waits until `put` may be called.
    pub(super) async fn ready(&self) -> Result<(), Closed> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Puts `value` in the free slot (after `ready`); it replaces nothing the receiver
    /// has not taken, since the codec sends only after `ready` and nobody else sends.
    pub(super) fn put(&self, value: T) {
        let waker = {
            let mut slot = lock(&self.0);
            slot.value = Some(value);
            slot.receiver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.0);
            slot.sender_alive = false;
            slot.receiver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

pub(super) struct Receiver<T>(Shared<T>);

impl<T> Receiver<T> {
    /// The next value; None once the sender is gone and the slot is empty.
    pub(super) fn poll_recv(&mut self, cx: &Context<'_>) -> Poll<Option<T>> {
        let (polled, waker) = {
            let mut slot = lock(&self.0);
            match slot.value.take() {
                Some(value) => (Poll::Ready(Some(value)), slot.sender.take()),
                None if !slot.sender_alive => (Poll::Ready(None), None),
                None => {
                    remember(&mut slot.receiver, cx);
                    (Poll::Pending, None)
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        polled
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (value, waker) = {
            let mut slot = lock(&self.0);
            slot.receiver_alive = false;
            (slot.value.take(), slot.sender.take())
        };
        // Dropped outside the lock: a frame's drop runs no code of ours, but need not.
        drop(value);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    #[tokio::test]
    async fn values_pass_one_at_a_time_and_end_when_the_sender_goes() {
        let (sender, mut receiver) = channel::<u32>();
        assert!(sender.ready().await.is_ok());
        sender.put(1);
        // The slot is full: the sender waits until the value is taken.
        let cx = Context::from_waker(Waker::noop());
        assert!(sender.poll_ready(&cx).is_pending());
        assert_eq!(
            std::future::poll_fn(|cx| receiver.poll_recv(cx)).await,
            Some(1)
        );
        assert!(sender.poll_ready(&cx).is_ready());
        sender.put(2);
        drop(sender);
        // What was sent before the sender went still arrives, then the end.
        assert_eq!(
            std::future::poll_fn(|cx| receiver.poll_recv(cx)).await,
            Some(2)
        );
        assert_eq!(
            std::future::poll_fn(|cx| receiver.poll_recv(cx)).await,
            None
        );
    }

    #[tokio::test]
    async fn a_dropped_receiver_closes_the_sender_and_drops_the_waiting_value() {
        let (sender, receiver) = channel::<Arc<()>>();
        let value = Arc::new(());
        sender.put(value.clone());
        let waiting = tokio::spawn(async move { sender.ready().await.is_err() });
        tokio::task::yield_now().await;
        drop(receiver);
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "the waiting value was dropped"
        );
        assert!(waiting.await.unwrap_or(false), "the sender saw the close");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_value() {
        let (sender, mut receiver) = channel::<u32>();
        let read =
            tokio::spawn(async move { std::future::poll_fn(|cx| receiver.poll_recv(cx)).await });
        tokio::task::yield_now().await;
        let cx = Context::from_waker(Waker::noop());
        assert!(matches!(sender.poll_ready(&cx), Poll::Ready(Ok(()))));
        sender.put(7);
        assert_eq!(read.await.ok().flatten(), Some(7));
    }
}
