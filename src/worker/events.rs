//! Worker → host events, the worker's end: [`Events`], the handle a worker
//! emits its contract's events with, and how they leave the worker.
//!
//! The same handle serves both kinds of driver, so a worker never names
//! its driver: for a worker reached over a byte stream (a child process, a
//! custom stream driver) an event is encoded by the contract's serializer
//! as it is emitted and queued for the worker's server, which writes it as
//! an `Event` frame; for a thread worker the event is moved to the host's
//! proxy, never serialized.
//!
//! # Bounds, and what happens when the host is slow
//!
//! At most [`EVENT_BACKLOG`] events wait to leave the worker. When the backlog is
//! full, [`Events::try_emit`] fails with [`EmitError::Full`] (handing the
//! event back: drop it, count it, or keep it), [`Events::emit`] waits for
//! room (backpressure, for events that must not be lost), and
//! [`Events::blocking_emit`] blocks its thread. Over a byte stream the
//! server takes events out of the backlog only while less than 64 KiB it
//! wrote are still waiting for the socket, so a host that reads slowly
//! holds the worker's memory at the backlog plus that much.
//!
//! An event emitted before the handler's reply is written before the
//! reply (and before any other frame the worker writes later): the host
//! sees a request's events before its reply resolves.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::contract::Contract;
use crate::wire::envelope::Header;
use crate::wire::frame::{Frame, MAX_OVERHEAD};
use crate::wire::serializer::CodecError;
use crate::wire::writer::Meter;
use crate::wire::Serializer;

/// How many events may wait to leave a worker before emitting blocks
/// ([`Events::emit`]) or fails ([`Events::try_emit`]).
pub const EVENT_BACKLOG: usize = 1024;

/// How many bytes the worker's server may have written and not yet seen
/// leave through the socket before it stops taking events out of the
/// backlog.
const WRITE_AHEAD: usize = 64 * 1024;

/// The handle a worker emits its contract's events with: cloneable,
/// `Send`, usable from the handler, from a task it spawns, or from a
/// blocking thread. Get it with [`Events::current`] on the worker's own
/// thread (in the actor's factory, its `started` hook, or a handler), and
/// clone it into anything that runs elsewhere.
///
/// Each event reaches every subscriber of the worker's proxy on the host
/// (see [`Subscribe`](crate::proxy::Subscribe)), in the order it was
/// emitted. Events emitted before a handler returns its reply reach the
/// host before that reply.
///
/// ```no_run
/// use actix::prelude::*;
/// use isolated_workers::worker::Events;
/// use isolated_workers::WorkerError;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Serialize, Deserialize)]
/// struct Run { steps: u32 }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// enum JobEvent { Progress(u32) }
/// isolated_workers::contract! { Jobs (events = JobEvent) { Run => u32 } }
///
/// struct JobWorker;
/// impl Actor for JobWorker { type Context = Context<Self>; }
/// impl Handler<Run> for JobWorker {
///     type Result = ResponseFuture<Result<u32, WorkerError>>;
///     fn handle(&mut self, run: Run, _: &mut Context<Self>) -> Self::Result {
///         // On the worker's thread: take the handle, then move it along.
///         let events = Events::<Jobs>::current();
///         Box::pin(async move {
///             let done = actix_rt::task::spawn_blocking(move || {
///                 for step in 0..=run.steps {
///                     // ... a slice of the long job ...
///                     // Waits while the backlog is full: no step is lost.
///                     let _ = events.blocking_emit(JobEvent::Progress(step));
///                 }
///                 run.steps
///             });
///             done.await.map_err(|e| WorkerError::from(
///                 isolated_workers::RemoteError::new("JobFailed", e.to_string())))
///         })
///     }
/// }
/// ```
pub struct Events<C: Contract> {
    sink: Sink<C::Event>,
}

enum Sink<E> {
    /// Encoded as emitted; the worker's server writes them as frames.
    Encoded {
        frames: mpsc::Sender<Bytes>,
        max_frame_len: usize,
    },
    /// Moved to the host's proxy (a worker in the host's process).
    Moved(mpsc::Sender<E>),
}

impl<C: Contract> Clone for Events<C> {
    fn clone(&self) -> Self {
        let sink = match &self.sink {
            Sink::Encoded {
                frames,
                max_frame_len,
            } => Sink::Encoded {
                frames: frames.clone(),
                max_frame_len: *max_frame_len,
            },
            Sink::Moved(events) => Sink::Moved(events.clone()),
        };
        Self { sink }
    }
}

impl<C: Contract> std::fmt::Debug for Events<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let moved = matches!(self.sink, Sink::Moved(_));
        f.debug_struct("Events")
            .field("contract", &C::NAME)
            .field("serialized", &!moved)
            .finish()
    }
}

/// Why an event was not emitted; each variant hands the event back.
pub enum EmitError<E> {
    /// [`EVENT_BACKLOG`] events already wait to leave the worker
    /// ([`Events::try_emit`] only).
    Full(E),
    /// Nobody will read it: the worker is shutting down, or its host's
    /// proxy is gone.
    Closed(E),
    /// The contract's serializer could not encode it, or it is larger than
    /// the frame limit.
    Codec(E, CodecError),
}

impl<E> EmitError<E> {
    /// The event that was not emitted.
    pub fn into_event(self) -> E {
        match self {
            EmitError::Full(event) | EmitError::Closed(event) | EmitError::Codec(event, _) => event,
        }
    }
}

impl<E> std::fmt::Debug for EmitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmitError::Full(_) => f.write_str("Full(..)"),
            EmitError::Closed(_) => f.write_str("Closed(..)"),
            EmitError::Codec(_, error) => f.debug_tuple("Codec").field(error).finish(),
        }
    }
}

impl<E> std::fmt::Display for EmitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmitError::Full(_) => write!(f, "the worker's event backlog ({EVENT_BACKLOG}) is full"),
            EmitError::Closed(_) => {
                f.write_str("nobody will read the event: the worker is closing")
            }
            EmitError::Codec(_, error) => write!(f, "could not encode the event: {error}"),
        }
    }
}

impl<E> std::error::Error for EmitError<E> {}

impl<C: Contract> Events<C> {
    /// The handle of the worker served on this thread: available in the
    /// worker actor's factory, its `started` hook and its handlers (and
    /// whatever its context runs), for workers served by either driver.
    ///
    /// # Panics
    /// When this thread is not serving a worker of contract `C` at the
    /// moment (a task spawned with `actix_rt::spawn`, another thread, the
    /// host): take the handle in the handler and move a clone there. See
    /// [`try_current`](Self::try_current).
    pub fn current() -> Self {
        Self::try_current().unwrap_or_else(|| {
            panic!(
                "`Events::<{}>::current()` outside a worker of that contract: call it on the \
                 worker's thread (its factory, hooks or handlers) and move a clone elsewhere",
                C::NAME
            )
        })
    }

    /// [`current`](Self::current), or `None` where it would panic.
    pub fn try_current() -> Option<Self> {
        CURRENT.with(|current| {
            current
                .borrow()
                .as_ref()?
                .downcast_ref::<Events<C>>()
                .cloned()
        })
    }

    /// Emits `event` unless the backlog is full. Never blocks.
    ///
    /// # Errors
    /// [`EmitError::Full`] when [`EVENT_BACKLOG`] events are waiting,
    /// [`EmitError::Closed`] when the worker is closing, and
    /// [`EmitError::Codec`] when it cannot be encoded; each hands the event
    /// back.
    pub fn try_emit(&self, event: C::Event) -> Result<(), EmitError<C::Event>> {
        use mpsc::error::TrySendError;
        match self.prepare(event)? {
            Outgoing::Encoded(frames, payload, event) => {
                frames.try_send(payload).map_err(|e| match e {
                    TrySendError::Full(_) => EmitError::Full(event),
                    TrySendError::Closed(_) => EmitError::Closed(event),
                })
            }
            Outgoing::Moved(events, event) => events.try_send(event).map_err(|e| match e {
                TrySendError::Full(event) => EmitError::Full(event),
                TrySendError::Closed(event) => EmitError::Closed(event),
            }),
        }
    }

    /// Emits `event`, waiting while the backlog is full.
    ///
    /// # Errors
    /// [`EmitError::Closed`] when the worker is closing, and
    /// [`EmitError::Codec`] when it cannot be encoded.
    ///
    /// # Cancel safety
    /// Dropped before it resolves, the event is not emitted.
    pub async fn emit(&self, event: C::Event) -> Result<(), EmitError<C::Event>> {
        match self.prepare(event)? {
            Outgoing::Encoded(frames, payload, event) => {
                let sent = frames.send(payload).await;
                sent.map_err(|_| EmitError::Closed(event))
            }
            Outgoing::Moved(events, event) => {
                let sent = events.send(event).await;
                sent.map_err(|e| EmitError::Closed(e.0))
            }
        }
    }

    /// Emits `event` from a thread outside the async runtime (for instance
    /// in `spawn_blocking`), blocking while the backlog is full.
    ///
    /// # Errors
    /// As [`emit`](Self::emit).
    ///
    /// # Panics
    /// When called from an async task (use [`emit`](Self::emit) there).
    pub fn blocking_emit(&self, event: C::Event) -> Result<(), EmitError<C::Event>> {
        match self.prepare(event)? {
            Outgoing::Encoded(frames, payload, event) => {
                let sent = frames.blocking_send(payload);
                sent.map_err(|_| EmitError::Closed(event))
            }
            Outgoing::Moved(events, event) => {
                let sent = events.blocking_send(event);
                sent.map_err(|e| EmitError::Closed(e.0))
            }
        }
    }

    /// The event as its sink takes it: encoded (with the event kept, to
    /// hand back if it cannot be sent), or as it is.
    fn prepare(&self, event: C::Event) -> Result<Outgoing<'_, C::Event>, EmitError<C::Event>> {
        match &self.sink {
            Sink::Encoded {
                frames,
                max_frame_len,
            } => match Self::encode(&event, *max_frame_len) {
                Ok(payload) => Ok(Outgoing::Encoded(frames, payload, event)),
                Err(error) => Err(EmitError::Codec(event, error)),
            },
            Sink::Moved(events) => Ok(Outgoing::Moved(events, event)),
        }
    }

    /// The event's payload, checked against the frame limit.
    fn encode(event: &C::Event, max_frame_len: usize) -> Result<Bytes, CodecError> {
        let mut payload = BytesMut::new();
        <C::Serializer as Serializer>::encode(event, &mut payload)?;
        if payload.len() + MAX_OVERHEAD > max_frame_len {
            return Err(CodecError(format!(
                "the event is {} bytes, over the frame limit of {max_frame_len} bytes",
                payload.len()
            )));
        }
        Ok(payload.freeze())
    }

    /// A handle whose events the worker's server writes as frames, and the
    /// server's end of it.
    pub(crate) fn encoded(max_frame_len: usize) -> (Self, Outbox) {
        let (frames, waiting) = mpsc::channel(EVENT_BACKLOG);
        let events = Self {
            sink: Sink::Encoded {
                frames,
                max_frame_len,
            },
        };
        (events, Outbox::new(waiting))
    }

    /// A handle whose events are moved to the host's proxy, and the
    /// proxy's end of it (a `mpsc::Receiver<C::Event>`, boxed).
    pub(crate) fn moved() -> (Self, Box<dyn Any + Send>) {
        let (events, waiting) = mpsc::channel::<C::Event>(EVENT_BACKLOG);
        (
            Self {
                sink: Sink::Moved(events),
            },
            Box::new(waiting),
        )
    }
}

/// An event ready for its sink.
enum Outgoing<'a, E> {
    Encoded(&'a mpsc::Sender<Bytes>, Bytes, E),
    Moved(&'a mpsc::Sender<E>, E),
}

thread_local! {
    /// The `Events<C>` of the worker whose code runs on this thread now.
    static CURRENT: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
}

/// Makes a worker's [`Events`] what [`Events::current`] answers while
/// that worker's code runs.
#[derive(Clone)]
pub(crate) struct Scope(Rc<dyn Any>);

impl Scope {
    pub(crate) fn new<C: Contract>(events: Events<C>) -> Self {
        Self(Rc::new(events))
    }

    /// Runs `f` with this scope's handle current.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Puts back what was current, also when `f` panics.
        struct Restore(Option<Rc<dyn Any>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|current| *current.borrow_mut() = self.0.take());
            }
        }
        let previous = CURRENT.with(|current| current.replace(Some(self.0.clone())));
        let _restore = Restore(previous);
        f()
    }

    /// `future` (a worker actor's context), with this scope's handle
    /// current each time it is polled.
    pub(crate) fn around<F: Future + 'static>(self, future: F) -> impl Future<Output = F::Output> {
        let mut future = Box::pin(future);
        std::future::poll_fn(move |task| self.enter(|| future.as_mut().poll(task)))
    }
}

/// The worker server's end of the events: the backlog, and how far the
/// socket is behind what the server wrote.
pub(crate) struct Outbox {
    waiting: mpsc::Receiver<Bytes>,
    /// Counts what the current connection's writer has yet to write.
    meter: Rc<Meter>,
    /// Wakes the server's event pump when a host connects.
    pump: Option<Waker>,
    /// The backlog was found empty, and the server's waker registered with
    /// it, since the last event taken: an emitter's send wakes the server,
    /// so until something is taken the backlog need not be polled again
    /// while it looks empty. (Polling an empty channel cost ~450
    /// instructions a request.)
    armed: bool,
}

impl Outbox {
    fn new(waiting: mpsc::Receiver<Bytes>) -> Self {
        Self {
            waiting,
            meter: Rc::new(Meter::new(WRITE_AHEAD)),
            pump: None,
            armed: false,
        }
    }

    /// The meter for a new connection's frame writer, which counts on it
    /// what it has yet to write.
    pub(crate) fn meter(&mut self) -> Rc<Meter> {
        self.meter = Rc::new(Meter::new(WRITE_AHEAD));
        if let Some(pump) = &self.pump {
            pump.wake_by_ref();
        }
        self.meter.clone()
    }

    /// Whether the socket has taken enough of what was written to write
    /// more; if not, `task` is woken when it has.
    pub(crate) fn has_room(&mut self, task: &mut std::task::Context<'_>) -> bool {
        if !self
            .pump
            .as_ref()
            .is_some_and(|pump| pump.will_wake(task.waker()))
        {
            self.pump = Some(task.waker().clone());
        }
        self.meter.below_mark(task)
    }

    /// An event waiting in the backlog, as a frame, if there is one.
    pub(crate) fn take(&mut self) -> Option<Frame> {
        if self.armed && self.waiting.is_empty() {
            return None;
        }
        let event = self.waiting.try_recv().ok()?;
        // Its send took the registered waker, if one was.
        self.armed = false;
        Some(event_frame(event))
    }

    /// The next event to write, once the socket has room for it.
    /// `Ready(None)` once no handle is left to emit more.
    pub(crate) fn poll_take(&mut self, task: &mut std::task::Context<'_>) -> Poll<Option<Frame>> {
        if !self.has_room(task) {
            return Poll::Pending;
        }
        if self.armed && self.waiting.is_empty() {
            return Poll::Pending;
        }
        // Outside tokio's task budget: a `Pending` for want of budget
        // would register no waker, and `armed` would then lie.
        let mut receive = tokio::task::coop::unconstrained(std::future::poll_fn(|task| {
            self.waiting.poll_recv(task)
        }));
        match Pin::new(&mut receive).poll(task) {
            Poll::Ready(Some(event)) => {
                self.armed = false;
                Poll::Ready(Some(event_frame(event)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                self.armed = true;
                Poll::Pending
            }
        }
    }
}

fn event_frame(payload: Bytes) -> Frame {
    Frame::new(Header::Event, payload)
}

#[cfg(test)]
// `contract!`'s defaults are parenthesized types (one token each); the lint
// fires only where the macro is expanded inside this crate.
#[allow(unused_parens)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Tick(u32);
    #[derive(Debug, Serialize, Deserialize)]
    struct Nothing;
    #[derive(Debug, Serialize, Deserialize)]
    struct Hush;
    crate::contract! { Ticks (events = Tick) { Nothing => () } }
    crate::contract! { Quiet { Hush => () } }

    #[test]
    fn the_handle_is_current_only_inside_its_scope_and_for_its_contract() {
        assert!(Events::<Ticks>::try_current().is_none(), "not in a worker");
        let (events, mut outbox) = Events::<Ticks>::encoded(1 << 20);
        let scope = Scope::new(events);
        scope.enter(|| {
            let current = Events::<Ticks>::try_current().expect("inside the scope");
            current.try_emit(Tick(7)).expect("room in the backlog");
            assert!(Events::<Quiet>::try_current().is_none(), "another contract");
        });
        assert!(
            Events::<Ticks>::try_current().is_none(),
            "restored after it"
        );
        let frame = outbox.take().expect("the event waits in the backlog");
        assert_eq!(frame.header, Header::Event);
        let tick: Tick =
            <crate::MessagePack as Serializer>::decode(&frame.payload).expect("a Tick");
        assert_eq!(tick, Tick(7));
    }

    #[test]
    fn an_event_over_the_frame_limit_is_handed_back() {
        let (events, _outbox) = Events::<Ticks>::encoded(MAX_OVERHEAD + 2);
        match events.try_emit(Tick(u32::MAX)) {
            Err(EmitError::Codec(back, error)) => {
                assert_eq!(back, Tick(u32::MAX));
                assert!(error.0.contains("over the frame limit"), "{error}");
            }
            other => panic!("expected a codec error, got {other:?}"),
        }
    }

    #[test]
    fn a_closed_host_end_is_closed() {
        let (events, outbox) = Events::<Ticks>::encoded(1 << 20);
        drop(outbox);
        assert!(matches!(
            events.try_emit(Tick(1)),
            Err(EmitError::Closed(Tick(1)))
        ));
    }
}
