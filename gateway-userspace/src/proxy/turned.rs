//! `Turned`: an accept loop's wait for its listener's shutdown (a `watch::Receiver<bool>`
//! turning true, or its sender going away), polled at every wake-up of the loop's task.
//!
//! Waiting with `Receiver::wait_for` alone costs a lock per poll: tokio's `Notified`
//! takes its notifier's mutex at every poll while it waits (to compare wakers), and the
//! shutdown watch is shared by every worker's connections on a listener, so each request
//! of a keep-alive connection took a lock that the other workers take too (issue 12: no
//! lock on the request path). `Turned` polls that wait only when there is news: the first
//! time, when the watch's version moved (an atomic load, no lock), or when the task's
//! waker changed; otherwise the registered wait stands and `Turned` answers Pending.
//!
//! Connections no longer wait on the watch: each accept loop tells its own connections
//! (`drain.rs`), so the watch has one wait per listener socket, not one per connection.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use tokio::sync::watch;

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) struct Turned {
    /// A receiver of its own, marked seen at each news: `has_changed` is the cheap check.
    seen: watch::Receiver<bool>,
    /// The registered wait (boxed, so that `Turned` is Unpin and used in place: the
    /// connection's future keeps no second copy of it). Built at the first poll.
    wait: Option<Wait>,
    /// The waker the wait was last polled with; None: poll it at the next poll.
    waker: Option<Waker>,
    done: bool,
}

/// The wait for `seen` to turn true (or its sender to go).
pub(crate) fn turned(mut seen: watch::Receiver<bool>) -> Turned {
    let done = *seen.borrow_and_update();
    Turned {
        seen,
        wait: None,
        waker: None,
        done,
    }
}

impl Turned {
    /// Whether it has turned, without waiting: an atomic load while nothing changed.
    #[cfg(test)]
    pub(crate) fn turned(&mut self) -> bool {
        self.look();
        self.done
    }

    /// Takes in what changed since the last look.
    fn look(&mut self) {
        if self.done {
            return;
        }
        match self.seen.has_changed() {
            Ok(false) => {}
            Ok(true) => {
                self.done = *self.seen.borrow_and_update();
                // The wait was woken (or will be) by this change: poll it again, so that
                // it is registered for the next one.
                self.waker = None;
            }
            // The sender is gone: the listener is, too.
            Err(_) => self.done = true,
        }
    }
}

impl Future for Turned {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.look();
        if this.done {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered with this task's waker, and nothing changed since.
            return Poll::Pending;
        }
        let seen = &this.seen;
        let wait = this.wait.get_or_insert_with(|| {
            let mut receiver = seen.clone();
            // Unconstrained: a wait that ran out of its task's budget would answer
            // Pending without registering, and then not be polled again.
            Box::pin(tokio::task::coop::unconstrained(async move {
                let _ = receiver.wait_for(|turned| *turned).await;
            }))
        });
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.done = true;
                Poll::Ready(())
            }
            Poll::Pending => {
                this.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Polled again and again with nothing changed, it stays pending; it ends when the
    /// value turns true (also after a change that was no turn, and polled by another
    /// task), and when the sender goes.
    #[tokio::test]
    async fn turns_when_the_watch_turns_or_its_sender_goes() {
        let (sender, receiver) = watch::channel(false);
        let mut waiting = turned(receiver);
        for _ in 0..3 {
            let polled = tokio::time::timeout(Duration::from_millis(5), &mut waiting).await;
            assert!(polled.is_err(), "ready before the watch turned");
            assert!(!waiting.turned());
        }
        sender.send_replace(false);
        let polled = tokio::time::timeout(Duration::from_millis(5), &mut waiting).await;
        assert!(polled.is_err(), "a change that is no turn");
        let waiter = tokio::spawn(async move {
            waiting.await;
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        sender.send_replace(true);
        let ended = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(
            ended.is_ok_and(|joined| joined.is_ok()),
            "not woken by the turn"
        );

        let (sender, receiver) = watch::channel(false);
        let mut gone = turned(receiver);
        let polled = tokio::time::timeout(Duration::from_millis(5), &mut gone).await;
        assert!(polled.is_err());
        drop(sender);
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut gone).await;
        assert!(ended.is_ok(), "not woken by the sender going");
        assert!(gone.turned());

        let (_sender, receiver) = watch::channel(true);
        assert!(turned(receiver).turned());
    }
}
