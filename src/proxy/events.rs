//! Worker → host events, the host's end: subscribing to a worker's events
//! ([`Subscribe`] for a `Recipient`, [`SubscribeStream`] for a `Stream`),
//! and how the proxy hands each event the worker emitted to every
//! subscriber.
//!
//! # Order
//!
//! A subscriber sees the worker's events in the order they were emitted.
//! Events and replies share one connection (a thread worker's events are
//! taken before each reply is handed on), so an event the worker emitted
//! before a reply is delivered before that reply resolves: in a
//! subscriber's mailbox (a `Recipient`) or buffer (a stream) by then.
//!
//! # Bounds, and what happens when a subscriber is slow
//!
//! The proxy never stops reading the worker for a subscriber: that would
//! stall every request. Instead each subscriber has a bounded buffer
//! (`capacity`, [`SUBSCRIBER_CAPACITY`] unless chosen): for a stream, the
//! events it has not yet taken; for a `Recipient`, the events delivered to
//! its mailbox and not yet handled (a [`WorkerEvent`] holds its place until
//! it is dropped). An event that finds the buffer full is dropped for that
//! subscriber only, and counted: the next event it does get carries the
//! count in [`WorkerEvent::missed`], like tokio's broadcast `Lagged(n)`.
//! Events are never reordered; other subscribers are not affected.
//!
//! The worker's own backlog is bounded too (see
//! [`Events`](crate::worker::Events)): a worker that must not lose events
//! waits for room there with `emit`.
//!
//! # Lifetime
//!
//! Subscriptions live on the proxy, not on the worker: they survive the
//! proxy starting a fresh worker after a crash (and a `Disconnect` /
//! `Reconnect`). At [`Close`](crate::Close) they end after the last event
//! the worker wrote before it was gone: a stream then ends (`None`), and a
//! `Recipient` gets nothing more. A stream is unsubscribed by dropping it;
//! a `Recipient` whose actor has stopped is dropped at the next event.
//!
//! # Streaming replies
//!
//! Not built on this: a streaming reply (many items, then the end, for one
//! request) would need the handler to know which request it is answering,
//! and a worker's handler is a plain actix handler that gets only the
//! message (the crate cannot enter its mailbox to say); and it would need
//! its own retry, timeout and cancel semantics for half-delivered results.
//! Put a job id in the request and in its events instead: subscribe, send
//! the request, take the events with that id, and the reply ends the job
//! (every event emitted before the reply has arrived when it resolves).

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use actix::prelude::*;
use tokio::sync::mpsc;

use super::{Accepted, Worker};
use crate::contract::Contract;
use crate::driver::Driver;
use crate::wire::envelope::Header;
use crate::wire::frame::{Frame, FrameError};
use crate::wire::serializer::CodecError;
use crate::wire::Serializer;

/// A subscriber's buffer unless the subscription says otherwise.
pub const SUBSCRIBER_CAPACITY: usize = 1024;

/// One of the worker's events, as a subscriber gets it: the message a
/// [`Subscribe`]d `Recipient` handles, and the item of an [`EventStream`].
#[derive(Debug)]
pub struct WorkerEvent<E> {
    /// The event, as the worker emitted it.
    pub event: E,
    /// How many events this subscriber missed right before this one,
    /// because its buffer was full (0 when none).
    pub missed: u64,
    /// A `Recipient`'s place in its buffer, freed when this is dropped.
    _place: Option<BufferPlace>,
}

impl<E: Send + 'static> Message for WorkerEvent<E> {
    type Result = ();
}

/// Frees a place in a `Recipient` subscriber's buffer when dropped.
#[derive(Debug)]
struct BufferPlace(Arc<AtomicUsize>);

impl Drop for BufferPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Subscribes a `Recipient` to the worker's events: each one arrives as a
/// [`WorkerEvent`] message. Accepted by every worker; the event type is
/// its contract's [`Event`](crate::Contract::Event).
///
/// At most `capacity` events ([`SUBSCRIBER_CAPACITY`] by default) wait in
/// the recipient's mailbox or in its handler; beyond that the recipient
/// misses events, and the next one it gets says how many
/// ([`WorkerEvent::missed`]).
///
/// ```no_run
/// use actix::prelude::*;
/// use isolated_workers::proxy::{Subscribe, WorkerEvent};
/// use isolated_workers::{ChildProcess, Worker};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct Run;
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// enum JobEvent { Progress(u8) }
/// # isolated_workers::contract! { Jobs (events = JobEvent) { Run => () } }
///
/// struct Monitor;
/// impl Actor for Monitor { type Context = Context<Self>; }
/// impl Handler<WorkerEvent<JobEvent>> for Monitor {
///     type Result = ();
///     fn handle(&mut self, seen: WorkerEvent<JobEvent>, _: &mut Context<Self>) {
///         if seen.missed > 0 {
///             println!("(missed {} events)", seen.missed);
///         }
///         println!("{:?}", seen.event);
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::<Jobs>::spawn(ChildProcess::current_exe("jobs")).await?;
/// let monitor = Monitor.start();
/// worker.send(Subscribe::new(monitor.recipient())).await?;
/// worker.send(Run).await??;
/// # Ok(()) }
/// ```
pub struct Subscribe<E: Send + 'static> {
    recipient: Recipient<WorkerEvent<E>>,
    capacity: usize,
}

impl<E: Send + 'static> Subscribe<E> {
    /// A subscription for `recipient`, with a buffer of
    /// [`SUBSCRIBER_CAPACITY`] events.
    pub fn new(recipient: Recipient<WorkerEvent<E>>) -> Self {
        Self {
            recipient,
            capacity: SUBSCRIBER_CAPACITY,
        }
    }

    /// At most `capacity` events (at least 1) wait in the recipient's
    /// mailbox and handler before it misses some.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }
}

impl<E: Send + 'static> std::fmt::Debug for Subscribe<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscribe")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<E: Send + 'static> Message for Subscribe<E> {
    type Result = ();
}

/// Subscribes to the worker's events as a stream: answers an
/// [`EventStream`]. Accepted by every worker; the event type is its
/// contract's [`Event`](crate::Contract::Event), inferred from the worker.
///
/// ```no_run
/// use futures::StreamExt;
/// use isolated_workers::proxy::SubscribeStream;
/// use isolated_workers::{ChildProcess, Close, Worker};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct Run;
/// # #[derive(Debug, Clone, Serialize, Deserialize)] enum JobEvent { Progress(u8) }
/// # isolated_workers::contract! { Jobs (events = JobEvent) { Run => () } }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::<Jobs>::spawn(ChildProcess::current_exe("jobs")).await?;
/// let mut events = worker.send(SubscribeStream::new()).await?;
/// worker.send(Run).await??;
/// worker.send(Close).await?;
/// // Every event the worker emitted, then the end.
/// while let Some(seen) = events.next().await {
///     println!("{:?} (missed before it: {})", seen.event, seen.missed);
/// }
/// # Ok(()) }
/// ```
pub struct SubscribeStream<E> {
    capacity: usize,
    _event: PhantomData<fn() -> E>,
}

impl<E> SubscribeStream<E> {
    /// A subscription with a buffer of [`SUBSCRIBER_CAPACITY`] events.
    pub fn new() -> Self {
        Self {
            capacity: SUBSCRIBER_CAPACITY,
            _event: PhantomData,
        }
    }

    /// At most `capacity` events (at least 1) wait in the stream before it
    /// misses some.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }
}

impl<E> Default for SubscribeStream<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> std::fmt::Debug for SubscribeStream<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeStream")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<E: Send + 'static> Message for SubscribeStream<E> {
    type Result = EventStream<E>;
}

/// A worker's events, as a `futures::Stream` of [`WorkerEvent`]s: answered
/// to [`SubscribeStream`]. Ends (`None`) after the last event of a worker
/// that was closed (or whose proxy stopped). Dropping it unsubscribes.
pub struct EventStream<E> {
    events: mpsc::Receiver<WorkerEvent<E>>,
}

impl<E> std::fmt::Debug for EventStream<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("buffered", &self.events.len())
            .finish()
    }
}

impl<E> futures::Stream for EventStream<E> {
    type Item = WorkerEvent<E>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<Option<WorkerEvent<E>>> {
        self.events.poll_recv(task)
    }
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Subscribe<C::Event> {
    type Response = ();

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) {
        worker.events.subscribe(Subscriber::Recipient {
            to: self.recipient.downgrade(),
            waiting: Arc::default(),
            capacity: self.capacity,
            missed: 0,
        });
    }
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for SubscribeStream<C::Event> {
    type Response = MessageResult<SubscribeStream<C::Event>>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        let (to, events) = mpsc::channel(self.capacity);
        worker
            .events
            .subscribe(Subscriber::Stream { to, missed: 0 });
        MessageResult(EventStream { events })
    }
}

/// The proxy's subscribers and where its worker's events come from;
/// shared with a thread worker's request futures (on the proxy's thread).
pub(super) struct Hub<E: Send + 'static>(Rc<RefCell<Subscribers<E>>>);

impl<E: Send + 'static> Default for Hub<E> {
    fn default() -> Self {
        Self(Rc::new(RefCell::new(Subscribers {
            subscribers: Vec::new(),
            ended: false,
            connection: None,
            ending: false,
        })))
    }
}

impl<E: Send + 'static> Clone for Hub<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

struct Subscribers<E: Send + 'static> {
    subscribers: Vec<Subscriber<E>>,
    /// Set once the worker was closed and its last events delivered.
    ended: bool,
    /// The worker's events: over the connection with this id (and whether
    /// its end has been read), or from a thread worker.
    connection: Option<Source<E>>,
    /// Set at `Close` while the connection's end has not been read: its
    /// end ends the subscriptions.
    ending: bool,
}

enum Source<E> {
    Stream { connection: u64, read_to_end: bool },
    Local(Rc<RefCell<mpsc::Receiver<E>>>),
}

enum Subscriber<E: Send + 'static> {
    Recipient {
        /// Weak: a subscription does not keep its subscriber alive (an
        /// actor that owns the worker and subscribes to it would otherwise
        /// never stop).
        to: actix::WeakRecipient<WorkerEvent<E>>,
        /// Events in its mailbox or handler.
        waiting: Arc<AtomicUsize>,
        capacity: usize,
        missed: u64,
    },
    Stream {
        to: mpsc::Sender<WorkerEvent<E>>,
        missed: u64,
    },
}

impl<E: Send + 'static> Subscriber<E> {
    /// Hands `event` to this subscriber, or counts it missed; `false` once
    /// the subscriber is gone.
    fn deliver(&mut self, event: E) -> bool {
        match self {
            Subscriber::Recipient {
                to,
                waiting,
                capacity,
                missed,
            } => {
                let Some(to) = to.upgrade() else {
                    return false;
                };
                if waiting.load(Ordering::Acquire) >= *capacity {
                    *missed += 1;
                    return true;
                }
                waiting.fetch_add(1, Ordering::AcqRel);
                to.do_send(WorkerEvent {
                    event,
                    missed: std::mem::take(missed),
                    _place: Some(BufferPlace(waiting.clone())),
                });
                true
            }
            Subscriber::Stream { to, missed } => {
                let seen = WorkerEvent {
                    event,
                    missed: *missed,
                    _place: None,
                };
                match to.try_send(seen) {
                    Ok(()) => *missed = 0,
                    Err(mpsc::error::TrySendError::Full(_)) => *missed += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
                true
            }
        }
    }
}

impl<E: Clone + Send + 'static> Subscribers<E> {
    /// Hands `event` to every subscriber (a copy each, the last one the
    /// event itself), dropping those that are gone.
    fn publish(&mut self, event: E) {
        if self.ended {
            return;
        }
        let last = self.subscribers.len().saturating_sub(1);
        let mut event = Some(event);
        let mut at = 0;
        self.subscribers.retain_mut(|subscriber| {
            let this = if at == last {
                event.take()
            } else {
                event.clone()
            };
            at += 1;
            this.is_none_or(|this| subscriber.deliver(this))
        });
    }

    /// No more events for anyone: streams end after what they hold.
    fn end(&mut self) {
        self.ended = true;
        self.ending = false;
        self.subscribers.clear();
    }
}

impl<E: Clone + Send + 'static> Hub<E> {
    fn subscribe(&self, subscriber: Subscriber<E>) {
        let mut hub = self.0.borrow_mut();
        // After `Close` a stream ends at once, and a recipient gets nothing.
        if !hub.ended {
            hub.subscribers.push(subscriber);
        }
    }

    fn publish(&self, event: E) {
        self.0.borrow_mut().publish(event);
    }

    /// The worker's events now come over connection `connection`.
    pub(super) fn stream_started(&self, connection: u64) {
        self.0.borrow_mut().connection = Some(Source::Stream {
            connection,
            read_to_end: false,
        });
    }

    /// An `Event` frame's payload, from the current connection.
    ///
    /// # Errors
    /// When it is not an event of the contract: a protocol error.
    pub(super) fn received<S: Serializer>(&self, payload: &[u8]) -> Result<(), CodecError>
    where
        E: serde::de::DeserializeOwned,
    {
        let event = S::decode::<E>(payload)?;
        self.publish(event);
        Ok(())
    }

    /// Connection `connection` ended (or broke): if the worker is closed, so are
    /// the subscriptions.
    pub(super) fn read_to_end(&self, connection: u64) {
        let mut hub = self.0.borrow_mut();
        if let Some(Source::Stream {
            connection: current,
            read_to_end,
        }) = &mut hub.connection
        {
            if *current == connection {
                *read_to_end = true;
                if hub.ending {
                    hub.end();
                }
            }
        }
    }

    /// What a connection the proxy has given up still reads: the events
    /// the worker wrote to it before it was given up are still delivered
    /// (after `Close`, up to its end, which ends the subscriptions).
    pub(super) fn given_up<S: Serializer>(
        &self,
        connection: u64,
        read: Option<Result<Frame, FrameError>>,
    ) where
        E: serde::de::DeserializeOwned,
    {
        let ours = matches!(
            &self.0.borrow().connection,
            Some(Source::Stream { connection: current, .. }) if *current == connection
        );
        if !ours {
            return;
        }
        match read {
            Some(Ok(Frame {
                header: Header::Event,
                payload,
                ..
            })) => {
                if let Err(e) = self.received::<S>(&payload) {
                    tracing::debug!("an undecodable event from a worker given up: {e}");
                }
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => self.read_to_end(connection),
        }
    }

    /// The worker is gone for good (`Close`): the subscriptions end once
    /// its last events are delivered.
    pub(super) fn released(&self) {
        let local = match &self.0.borrow().connection {
            Some(Source::Local(events)) => Some(events.clone()),
            _ => None,
        };
        if let Some(events) = local {
            // Handles the worker left behind (in threads of its own) now
            // get `Closed`.
            events.borrow_mut().close();
            take_waiting(self, &events);
        }
        let mut hub = self.0.borrow_mut();
        match hub.connection {
            Some(Source::Stream {
                read_to_end: false, ..
            }) => hub.ending = true,
            _ => hub.end(),
        }
    }
}

/// Publishes the events waiting in a thread worker's channel.
fn take_waiting<E: Clone + Send + 'static>(hub: &Hub<E>, events: &RefCell<mpsc::Receiver<E>>) {
    loop {
        let next = events.borrow_mut().try_recv();
        match next {
            Ok(event) => hub.publish(event),
            Err(_) => return,
        }
    }
}

/// The events of a fresh thread worker (`events` is its
/// `mpsc::Receiver<C::Event>`): published as they come, by a task of the
/// proxy's context. Returns what the link calls before handing on each
/// reply, so that the events emitted before it are published first.
pub(super) fn local_started<C: Contract, D: Driver<C>>(
    hub: &Hub<C::Event>,
    events: Box<dyn Any + Send>,
    ctx: &mut Context<Worker<C, D>>,
) -> Option<Rc<dyn Fn()>> {
    let Ok(events) = events.downcast::<mpsc::Receiver<C::Event>>() else {
        tracing::error!(
            contract = C::NAME,
            "a thread worker's events are not its contract's"
        );
        return None;
    };
    let events = Rc::new(RefCell::new(*events));
    hub.0.borrow_mut().connection = Some(Source::Local(events.clone()));
    let pump = {
        let (hub, events) = (hub.clone(), events.clone());
        std::future::poll_fn(move |task| loop {
            let next = events.borrow_mut().poll_recv(task);
            match next {
                Poll::Ready(Some(event)) => hub.publish(event),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        })
    };
    ctx.spawn(actix::fut::wrap_future(pump));
    let hub = hub.clone();
    Some(Rc::new(move || take_waiting(&hub, &events)))
}
