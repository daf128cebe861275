//! A listener's drain, as one accept loop (one listening socket on one worker) and the
//! connections it accepted see it: serving, then stopping (the listener stopped
//! accepting: connections finish their request, idle ones close, answers say
//! `Connection: close`), then the drain deadline (whatever is still open closes).
//!
//! One state per accept loop, so per worker: its connections run on the same thread, and
//! nothing here is shared with another worker's connections (no lock another worker takes,
//! no cache line bounced between cores). A connection registers its task's waker once
//! (`Watch`), in a list the loop wakes at each change of phase; everything else on the
//! connection reads the phase with an atomic load where it must know (after an answer,
//! while waiting for the next head). Replaced, per connection: a `watch` receiver for the
//! shutdown and one for the deadline, each with its own registered wait (an allocation,
//! and the notifier's lock, shared by every worker's connections for the shutdown), and a
//! receiver of hyper's graceful-shutdown watch.
//!
//! The loop waits for the end of the drain by counting `Drain` handles: every connection,
//! upgraded tunnel and TCP stream holds one until it ends.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;

const SERVING: u8 = 0;
const STOPPING: u8 = 1;
const DEADLINE: u8 = 2;

/// What the accept loop and its connections share.
#[derive(Debug, Default)]
struct Shared {
    phase: AtomicU8,
    /// `Drain` handles alive (connections, tunnels, streams).
    holders: AtomicUsize,
    /// Told when the last holder goes while the listener stops.
    emptied: Notify,
    /// The tasks to wake at each change of phase.
    waiters: Mutex<Wakers>,
}

/// Registered wakers, each at a key that stays its own until it is removed.
#[derive(Debug, Default)]
struct Wakers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Wakers {
    fn insert(&mut self, waker: Waker) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = Some(waker);
                key
            }
            None => {
                self.slots.push(Some(waker));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key)
            && slot.take().is_some()
        {
            self.free.push(key);
        }
    }

    fn wake_all(&self) {
        for waker in self.slots.iter().flatten() {
            waker.wake_by_ref();
        }
    }
}

impl Shared {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wakers> {
        // A panic while holding the lock leaves the list as it was.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn advance(&self, to: u8) {
        self.phase.fetch_max(to, Ordering::SeqCst);
        self.lock().wake_all();
    }
}

/// The accept loop's side.
#[derive(Debug, Default)]
pub(super) struct Listening(Arc<Shared>);

impl Listening {
    pub(super) fn new() -> Self {
        Listening::default()
    }

    /// A handle for one accepted connection (counted until dropped).
    pub(super) fn drain(&self) -> Drain {
        self.0.holders.fetch_add(1, Ordering::SeqCst);
        Drain(Some(self.0.clone()))
    }

    /// Connections, tunnels and streams still open.
    pub(super) fn open(&self) -> usize {
        self.0.holders.load(Ordering::SeqCst)
    }

    /// The listener stopped accepting: every connection is woken to look.
    pub(super) fn stop(&self) {
        self.0.advance(STOPPING);
    }

    /// The drain deadline passed: what is still open closes.
    pub(super) fn pass_deadline(&self) {
        self.0.advance(DEADLINE);
    }

    /// Resolves once every handle is gone; call after `stop`.
    pub(super) async fn emptied(&self) {
        loop {
            let emptied = self.0.emptied.notified();
            let mut emptied = std::pin::pin!(emptied);
            // Registered before the count is read: a last drop in between still tells.
            emptied.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// An accept loop that ends without draining (its task dropped) takes its connections
/// with it, as the listener's watch going away did.
impl Drop for Listening {
    fn drop(&mut self) {
        self.0.advance(DEADLINE);
    }
}

/// A connection's (or tunnel's) view of its listener's drain. The default belongs to no
/// listener: it never stops.
#[derive(Debug, Default)]
pub(crate) struct Drain(Option<Arc<Shared>>);

impl Clone for Drain {
    fn clone(&self) -> Self {
        if let Some(shared) = &self.0 {
            shared.holders.fetch_add(1, Ordering::SeqCst);
        }
        Drain(self.0.clone())
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            let before = shared.holders.fetch_sub(1, Ordering::SeqCst);
            if before == 1 && shared.phase() != SERVING {
                shared.emptied.notify_one();
            }
        }
    }
}

impl Drain {
    /// The listener stopped accepting (or its deadline passed): answer with
    /// `Connection: close`, and close rather than wait for another request.
    pub(crate) fn stopping(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.phase() >= STOPPING)
    }

    /// The task's registration, woken at every change of phase until it is dropped.
    pub(crate) fn watch(&self) -> Watch<'_> {
        Watch {
            shared: self.0.as_deref(),
            registered: None,
        }
    }

    /// Resolves at the drain deadline; never without a listener.
    pub(crate) async fn deadline(&self) {
        let mut watch = self.watch();
        std::future::poll_fn(|cx| watch.poll_reached(cx, DEADLINE)).await;
    }

    /// Runs hyper's connection `conn`: told to shut down gracefully (finish the request
    /// in flight, `Connection: close` or GOAWAY) when the listener stops, and ended at
    /// the deadline (None).
    pub(crate) fn serve_hyper<'a, C: GracefulConnection>(
        &'a self,
        conn: Pin<&'a mut C>,
    ) -> ServeHyper<'a, C> {
        ServeHyper {
            conn,
            watch: self.watch(),
            told: false,
        }
    }
}

/// `Drain::serve_hyper`. A future of its own rather than an async fn: the compiler
/// cannot prove an async fn's state `Send` through hyper's higher-ranked bounds.
pub(crate) struct ServeHyper<'a, C> {
    conn: Pin<&'a mut C>,
    watch: Watch<'a>,
    told: bool,
}

impl<C: GracefulConnection> Future for ServeHyper<'_, C> {
    type Output = Option<Result<(), C::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(done) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        if !this.told && this.watch.poll_reached(cx, STOPPING).is_ready() {
            this.told = true;
            this.conn.as_mut().graceful_shutdown();
            if let Poll::Ready(done) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
        }
        this.watch.poll_reached(cx, DEADLINE).map(|()| None)
    }
}

/// A task's registration with its accept loop: its waker is woken at each change of
/// phase. Registered at the first poll that waits, again only if the task's waker
/// changes; removed when dropped.
pub(crate) struct Watch<'a> {
    shared: Option<&'a Shared>,
    /// The key in the list, and the waker registered there (to tell a changed one).
    registered: Option<(usize, Waker)>,
}

impl Watch<'_> {
    /// Ready once the phase is `phase` or later; otherwise the task will be woken when it
    /// changes.
    fn poll_reached(&mut self, cx: &mut Context<'_>, phase: u8) -> Poll<()> {
        let Some(shared) = self.shared else {
            return Poll::Pending;
        };
        if shared.phase() >= phase {
            return Poll::Ready(());
        }
        match &mut self.registered {
            Some((_, waker)) if waker.will_wake(cx.waker()) => return Poll::Pending,
            Some((key, waker)) => {
                waker.clone_from(cx.waker());
                shared.lock().slots[*key] = Some(waker.clone());
            }
            None => {
                let key = shared.lock().insert(cx.waker().clone());
                self.registered = Some((key, cx.waker().clone()));
            }
        }
        // A change made before the registration woke no one: look again.
        if shared.phase() >= phase {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The drain deadline, for a connection's outermost future.
    pub(crate) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_reached(cx, DEADLINE)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let (Some(shared), Some((key, _))) = (self.shared, &self.registered) {
            shared.lock().remove(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Stop and deadline each wake a registered wait, the loop sees every handle go, and
    /// a wait dropped before the change leaves nothing behind.
    #[tokio::test]
    async fn waits_wake_at_each_phase_and_the_loop_sees_the_last_handle_go() {
        let listening = Listening::new();
        let drain = listening.drain();
        let tunnel = drain.clone();
        assert_eq!(listening.open(), 2);
        let stopped = tokio::spawn(async move {
            let mut watch = drain.watch();
            std::future::poll_fn(|cx| watch.poll_reached(cx, STOPPING)).await;
            assert!(drain.stopping());
            drop(watch);
            drain.deadline().await;
        });
        {
            // Registered, then dropped: its slot is free again.
            let mut watch = tunnel.watch();
            let pending = watch.poll_reached(&mut Context::from_waker(Waker::noop()), STOPPING);
            assert!(pending.is_pending());
        }
        assert_eq!(listening.0.lock().free.len(), 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!stopped.is_finished());
        listening.stop();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!stopped.is_finished(), "ended before the deadline");
        listening.pass_deadline();
        let ended = tokio::time::timeout(Duration::from_secs(5), stopped).await;
        assert!(ended.is_ok_and(|joined| joined.is_ok()));
        assert_eq!(listening.open(), 1);
        let emptied = tokio::time::timeout(Duration::from_millis(20), listening.emptied()).await;
        assert!(emptied.is_err(), "emptied with a handle left");
        drop(tunnel);
        let emptied = tokio::time::timeout(Duration::from_secs(5), listening.emptied()).await;
        assert!(emptied.is_ok());
        assert!(!Drain::default().stopping());

        // A loop dropped without draining: its connections reach the deadline.
        let listening = Listening::new();
        let drain = listening.drain();
        drop(listening);
        let passed = tokio::time::timeout(Duration::from_secs(5), drain.deadline()).await;
        assert!(passed.is_ok());
    }
}
