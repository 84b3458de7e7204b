//! [`Waiters`]: those waiting for something to be over (a launch, a drain,
//! a close), each told once it is. A `Vec` of oneshot senders rather than
//! tokio's `Notify`: a waiter that registers before the moment must hear
//! of it even if it polls only afterwards, and one that was told must stay
//! told, which `Notify::notify_waiters` does not promise.

use std::future::Future;

use tokio::sync::oneshot;

/// Those waiting for one moment; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct Waiters(Vec<oneshot::Sender<()>>);

impl Waiters {
    /// Resolves once [`tell_all`](Self::tell_all) is called, or once these
    /// waiters are dropped (whatever was awaited will then not come).
    pub(crate) fn wait(&mut self) -> impl Future<Output = ()> + 'static {
        let (told, waiting) = oneshot::channel();
        self.0.push(told);
        async move {
            let _ = waiting.await;
        }
    }

    /// Tells every waiter so far.
    pub(crate) fn tell_all(&mut self) {
        for told in self.0.drain(..) {
            let _ = told.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_hears_of_a_moment_that_came_before_it_polled() {
        let mut waiters = Waiters::default();
        let waiting = waiters.wait();
        waiters.tell_all();
        waiting.await;
    }

    #[tokio::test]
    async fn dropped_waiters_release_those_waiting() {
        let mut waiters = Waiters::default();
        let waiting = waiters.wait();
        drop(waiters);
        waiting.await;
    }

    #[test]
    fn waiters_after_the_moment_wait_for_the_next() {
        let mut waiters = Waiters::default();
        waiters.tell_all();
        let waiting = waiters.wait();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut waiting = Box::pin(waiting);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        waiters.tell_all();
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
    }
}
