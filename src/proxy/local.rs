//! The proxy over an in-process worker (the thread driver): each request is
//! moved to the worker actor through a typed `Recipient`, without
//! serialization. In-flight requests are bounded by a semaphore; a panic in
//! the worker's handler resolves every request in flight as `Crashed` with
//! the panic message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use futures::future::LocalBoxFuture;

use actix::prelude::*;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Accepted, Worker, WorkerState};
use crate::config::WorkerOptions;
use crate::contract::{Contract, WorkerMessage};
use crate::driver::{Driver, LocalLink};
use crate::error::{CrashReason, WorkerError};
use crate::worker::panic;
use crate::worker::routes::Recipients;

/// The proxy's state for a worker in this process.
pub(super) struct LocalState {
    recipients: Recipients,
    /// `None` once joined.
    arbiter: Option<Arbiter>,
    /// The arbiter's thread, whose panic message reports a crash.
    thread: ThreadId,
    shared: Arc<Shared>,
}

/// What the request futures share with the proxy.
struct Shared {
    /// One permit per request allowed in flight.
    permits: Semaphore,
    max_in_flight: usize,
    max_queued: usize,
    /// Requests waiting for a permit.
    queued: AtomicUsize,
    /// Cancelled on `Close`: waiting requests resolve `Closed` at once.
    closed: CancellationToken,
}

impl LocalState {
    pub(super) fn new(link: LocalLink, options: &WorkerOptions) -> Self {
        Self {
            recipients: link.recipients,
            arbiter: Some(link.arbiter),
            thread: link.thread,
            shared: Arc::new(Shared {
                permits: Semaphore::new(options.max_in_flight),
                max_in_flight: options.max_in_flight,
                max_queued: options.max_queued,
                queued: AtomicUsize::new(0),
                closed: CancellationToken::new(),
            }),
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.shared.max_in_flight - self.shared.permits.available_permits()
    }

    pub(super) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Fails waiting requests with `Closed` and stops the worker's arbiter.
    pub(super) fn stop(&mut self) {
        self.shared.closed.cancel();
        if let Some(arbiter) = &self.arbiter {
            arbiter.stop();
        }
    }

    /// Resolves once the worker's thread has finished.
    pub(super) fn join(&mut self) -> impl std::future::Future<Output = ()> + 'static {
        self.stop();
        let arbiter = self.arbiter.take();
        async move {
            if let Some(arbiter) = arbiter {
                // Joining a thread blocks; keep it off the proxy's thread.
                let _ = actix_rt::task::spawn_blocking(move || arbiter.join()).await;
            }
        }
    }

    /// Starts request `message`; the future resolves with its outcome.
    pub(super) fn request<C, D, M>(
        &self,
        message: M,
        timeout: std::time::Duration,
        proxy: Addr<Worker<C, D>>,
    ) -> LocalBoxFuture<'static, Result<M::Reply, WorkerError>>
    where
        C: Contract,
        D: Driver<C>,
        M: WorkerMessage,
    {
        let Some(recipient) = self.recipients.get::<M>().cloned() else {
            let error = WorkerError::Codec {
                what: format!("route `{}`", M::NAME),
                detail: "the worker's contract has no such message".into(),
            };
            return Box::pin(std::future::ready(Err(error)));
        };
        let shared = self.shared.clone();
        let thread = self.thread;
        Box::pin(async move {
            let outcome = async {
                let _permit = shared.acquire().await?;
                match recipient.send(message).await {
                    Ok(outcome) => outcome,
                    Err(_) if shared.closed.is_cancelled() => Err(WorkerError::Closed),
                    Err(_) => {
                        // The actor is gone: its handler panicked.
                        let message = panic::take_message(thread);
                        proxy.do_send(LocalCrash {
                            message: message.clone(),
                        });
                        Err(WorkerError::Crashed {
                            reason: CrashReason::Panic,
                            message,
                            attempt: 1,
                        })
                    }
                }
            };
            tokio::select! {
                outcome = tokio::time::timeout(timeout, outcome) => outcome.unwrap_or(Err(WorkerError::Timeout {
                    after: timeout,
                    message: M::NAME,
                })),
                _ = shared.closed.cancelled() => Err(WorkerError::Closed),
            }
        })
    }
}

impl Shared {
    /// A slot in flight, waiting in the bounded queue if all are taken.
    async fn acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, WorkerError> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(WorkerError::Overloaded {
                limit: self.max_queued,
            });
        }
        let permit = self.permits.acquire().await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        permit.map_err(|_| WorkerError::Closed)
    }
}

/// The thread worker's actor died; later requests fail at once.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct LocalCrash {
    message: Option<String>,
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for LocalCrash {
    type Response = ();

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) {
        if worker.state == WorkerState::Running {
            tracing::warn!(contract = C::NAME, message = ?self.message, "thread worker panicked");
            worker.state = WorkerState::Crashed {
                reason: CrashReason::Panic,
                message: self.message,
            };
            if let super::Link::Local(local) = &mut worker.link {
                local.stop();
            }
        }
    }
}
