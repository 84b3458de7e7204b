//! A worker's own `tracing` events, sent on to its host over the worker's
//! connection, each with the id of the request it was emitted for (if it
//! was emitted inside the worker's `request` span): the host logs them in
//! that request's span.
//!
//! Installed only when the host has a subscriber (it says so, and how
//! verbose, in the environment) and the worker has none of its own.

use std::fmt::Write as _;

use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Records waiting to be written; beyond this, new ones are dropped rather
/// than let a chatty worker grow without bound while the host reads slowly.
const BACKLOG: usize = 1024;

/// One event, as the host gets it.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) request: Option<u64>,
    pub(crate) level: u8,
    pub(crate) target: String,
    pub(crate) message: String,
}

impl Record {
    /// The frame that carries it.
    pub(crate) fn into_frame(self) -> crate::wire::frame::Frame {
        crate::wire::frame::Frame::bare(crate::wire::envelope::Header::Log {
            request: self.request,
            level: self.level,
            target: self.target,
            message: self.message,
        })
    }
}

/// Installs the forwarding subscriber at `level` (`"debug"`, …); returns
/// the records to write, or `None` if the level is unknown or the process
/// already has a subscriber.
pub(crate) fn install(level: &str) -> Option<mpsc::Receiver<Record>> {
    let level: Level = level.parse().ok()?;
    let (records, waiting) = mpsc::channel(BACKLOG);
    let layer = Forward { records }.with_filter(LevelFilter::from_level(level));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber).ok()?;
    Some(waiting)
}

/// The level's number on the wire: 1 for ERROR to 5 for TRACE.
fn level_number(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

struct Forward {
    records: mpsc::Sender<Record>,
}

/// The request a worker-side `request` span is for.
struct RequestId(u64);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Forward {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let ours = attrs.metadata().name() == "request"
            && attrs.metadata().target().starts_with("isolated_workers");
        if !ours {
            return;
        }
        let mut found = FindId(None);
        attrs.record(&mut found);
        if let (Some(request), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().insert(RequestId(request));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let request = ctx.event_scope(event).and_then(|mut scope| {
            scope.find_map(|span| span.extensions().get::<RequestId>().map(|id| id.0))
        });
        let mut message = Message::default();
        event.record(&mut message);
        let record = Record {
            request,
            level: level_number(*event.metadata().level()),
            target: event.metadata().target().to_owned(),
            message: message.0,
        };
        let _ = self.records.try_send(record);
    }
}

/// Finds the `id` field of a span.
struct FindId(Option<u64>);

impl Visit for FindId {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "id" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// An event's message, then its other fields as `name=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}
