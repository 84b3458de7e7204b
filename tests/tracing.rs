//! What a host's `tracing` subscriber sees: a span for each spawn and each
//! request (wire name, id, attempt), the worker's own `tracing` events
//! (inside the host's span of the request they were emitted for), and the
//! worker's stderr, one event per line, tagged with the worker's name and
//! pid.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use isolated_workers::{Batch, ChildProcess, Close, Thread, Worker, WorkerError};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Writes `text` to the worker's stderr, and answers its length.
#[derive(Debug, Serialize, Deserialize)]
struct Say {
    text: String,
}

/// Logs `text` from an async handler, after an await.
#[derive(Debug, Serialize, Deserialize)]
struct SayLater {
    text: String,
}

isolated_workers::contract! {
    Speaker {
        Say => usize,
        SayLater => (),
    }
}

#[derive(Default)]
struct SpeakerWorker;

impl Actor for SpeakerWorker {
    type Context = Context<Self>;
}

impl Handler<Say> for SpeakerWorker {
    type Result = Result<usize, WorkerError>;
    fn handle(&mut self, say: Say, _: &mut Context<Self>) -> Self::Result {
        eprintln!("{}", say.text);
        tracing::info!("handler heard {}", say.text);
        Ok(say.text.len())
    }
}

impl Handler<SayLater> for SpeakerWorker {
    type Result = isolated_workers::worker::Cancellable<Result<(), WorkerError>>;
    fn handle(&mut self, say: SayLater, _: &mut Context<Self>) -> Self::Result {
        isolated_workers::worker::Cancellable::new(async move {
            tokio::task::yield_now().await;
            tracing::info!("async handler heard {}", say.text);
            Ok(())
        })
    }
}

/// A span or an event as the subscriber saw it: its name (an event's is
/// its message), its target, its fields, and the spans it was in.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    target: String,
    fields: Vec<(String, String)>,
    scope: Vec<String>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

/// Records every span and event.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: LayerContext<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let seen = Seen {
            name: attrs.metadata().name().to_owned(),
            target: attrs.metadata().target().to_owned(),
            fields: fields.0,
            scope: Vec::new(),
        };
        self.spans.lock().unwrap().push(seen);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields
            .0
            .iter()
            .find(|(key, _)| key == "message")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        let scope = ctx
            .event_scope(event)
            .map(|scope| scope.map(|span| span.name().to_owned()).collect())
            .unwrap_or_default();
        let seen = Seen {
            name: message,
            target: event.metadata().target().to_owned(),
            fields: fields.0,
            scope,
        };
        self.events.lock().unwrap().push(seen);
    }
}

/// Worker-side middleware that logs each request it takes in.
struct LogIn;

impl isolated_workers::middleware::Middleware for LogIn {
    fn on_request(
        &self,
        request: &mut isolated_workers::middleware::Passage<'_>,
    ) -> Result<(), isolated_workers::RemoteError> {
        tracing::info!(
            id = request.id(),
            "worker middleware saw {}",
            request.name()
        );
        Ok(())
    }
}

fn main() {
    let worker_side = isolated_workers::middleware::Middlewares::new().layer(LogIn);
    isolated_workers::worker_entry_with::<Speaker, _>(
        "speaker",
        SpeakerWorker::default,
        worker_side,
    );
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone()))
        .expect("the first subscriber of this test binary");
    let tests = vec![
        test(
            "a_child_workers_stderr_reaches_the_subscriber_tagged_with_its_name_and_pid",
            &recorder,
            a_child_workers_stderr_reaches_the_subscriber_tagged_with_its_name_and_pid,
        ),
        test(
            "each_spawn_and_request_has_a_span_with_its_name_id_and_attempt",
            &recorder,
            each_spawn_and_request_has_a_span_with_its_name_id_and_attempt,
        ),
        test(
            "a_workers_own_events_arrive_in_the_hosts_span_of_their_request",
            &recorder,
            a_workers_own_events_arrive_in_the_hosts_span_of_their_request,
        ),
        test(
            "a_handlers_events_arrive_in_the_hosts_span_of_their_request",
            &recorder,
            a_handlers_events_arrive_in_the_hosts_span_of_their_request,
        ),
        test(
            "each_item_of_a_batch_has_a_request_span_of_its_own",
            &recorder,
            each_item_of_a_batch_has_a_request_span_of_its_own,
        ),
        test(
            "a_thread_workers_requests_have_spans_too",
            &recorder,
            a_thread_workers_requests_have_spans_too,
        ),
    ];
    // One at a time: every test reads the one global subscriber's record.
    let mut arguments = Arguments::from_args();
    arguments.test_threads = Some(1);
    libtest_mimic::run(&arguments, tests).exit()
}

fn test<Fut>(name: &str, recorder: &Recorder, body: fn(Recorder) -> Fut) -> Trial
where
    Fut: std::future::Future<Output = Result<(), Failed>> + 'static,
{
    let recorder = recorder.clone();
    Trial::test(name, move || {
        System::new().block_on(async move {
            tokio::time::timeout(Duration::from_secs(60), body(recorder))
                .await
                .map_err(|_| Failed::from("hung"))?
        })
    })
}

/// A child-process Speaker worker, and its pid.
async fn spawn_speaker() -> Result<(Addr<Worker<Speaker>>, u32), Failed> {
    let worker = Worker::<Speaker>::spawn(ChildProcess::current_exe("speaker")).await?;
    let pid = worker
        .send(isolated_workers::Status)
        .await?
        .pid
        .ok_or("a pid")?;
    Ok((worker, pid))
}

/// Waits until `what` holds of the recorded events.
async fn wait_for(recorder: &Recorder, what: impl Fn(&Seen) -> bool) -> Option<Seen> {
    for _ in 0..2000 {
        if let Some(found) = recorder.events.lock().unwrap().iter().find(|e| what(e)) {
            return Some(found.clone());
        }
        // The OS gives no event for "the host read the worker's stderr".
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn a_child_workers_stderr_reaches_the_subscriber_tagged_with_its_name_and_pid(
    recorder: Recorder,
) -> Result<(), Failed> {
    let (worker, pid) = spawn_speaker().await?;
    let line = "hello from the worker, über alles";
    worker.send(Say { text: line.into() }).await??;
    let seen = wait_for(&recorder, |e| e.name == line)
        .await
        .ok_or("the worker's line never reached the subscriber")?;
    assert_eq!(seen.target, "isolated_workers::worker");
    assert_eq!(seen.field("worker"), Some("speaker"));
    assert_eq!(seen.field("pid"), Some(pid.to_string().as_str()));
    worker.send(Close).await?;
    Ok(())
}

async fn each_spawn_and_request_has_a_span_with_its_name_id_and_attempt(
    recorder: Recorder,
) -> Result<(), Failed> {
    let before = recorder.spans.lock().unwrap().len();
    let worker = Worker::<Speaker>::spawn(ChildProcess::current_exe("speaker")).await?;
    let text = "span check";
    assert_eq!(worker.send(Say { text: text.into() }).await??, text.len());
    worker.send(Close).await?;
    let spans = recorder.spans.lock().unwrap()[before..].to_vec();
    assert!(
        spans
            .iter()
            .any(|s| s.name == "spawn" && s.field("contract") == Some("Speaker")),
        "a spawn span: {spans:?}"
    );
    assert!(
        spans.iter().any(|s| s.name == "request"
            && s.field("message") == Some("Say")
            && s.field("id").is_some()
            && s.field("attempt") == Some("1")),
        "a request span: {spans:?}"
    );
    let events = recorder.events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e.name == "answered" && e.scope.first().map(String::as_str) == Some("request")),
        "the answer is logged in the request's span: {events:?}"
    );
    Ok(())
}

async fn a_thread_workers_requests_have_spans_too(recorder: Recorder) -> Result<(), Failed> {
    let worker = Worker::<Speaker, _>::spawn(Thread::new(SpeakerWorker::default)).await?;
    let before = recorder.spans.lock().unwrap().len();
    worker
        .send(Say {
            text: "on a thread".into(),
        })
        .await??;
    worker.send(Close).await?;
    let spans = recorder.spans.lock().unwrap().clone();
    assert!(
        spans[before..]
            .iter()
            .any(|s| s.name == "request" && s.field("message") == Some("Say")),
        "a request span for the thread worker: {:?}",
        &spans[before..]
    );
    // The handler ran on the worker's thread, inside the request's span.
    let heard = recorder
        .events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.name == "handler heard on a thread")
        .cloned()
        .ok_or("the handler's event")?;
    assert_eq!(
        heard.scope.first().map(String::as_str),
        Some("request"),
        "{heard:?}"
    );
    Ok(())
}

async fn a_workers_own_events_arrive_in_the_hosts_span_of_their_request(
    recorder: Recorder,
) -> Result<(), Failed> {
    let (worker, pid) = spawn_speaker().await?;
    let before = recorder.spans.lock().unwrap().len();
    worker
        .send(Say {
            text: "in a span".into(),
        })
        .await??;
    let seen = wait_for(&recorder, |e| {
        e.name.starts_with("worker middleware saw Say")
            && e.field("pid") == Some(pid.to_string().as_str())
    })
    .await
    .ok_or("the worker's event never reached the subscriber")?;
    worker.send(Close).await?;
    assert_eq!(seen.target, "isolated_workers::worker");
    assert_eq!(
        seen.scope.first().map(String::as_str),
        Some("request"),
        "logged in the host's request span: {seen:?}"
    );
    let host_request = recorder.spans.lock().unwrap()[before..]
        .iter()
        .find(|s| s.name == "request")
        .cloned()
        .ok_or("the host's request span")?;
    assert!(
        seen.name
            .contains(&format!("id={}", host_request.field("id").unwrap_or("?"))),
        "the worker saw the host's id: {seen:?} vs {host_request:?}"
    );
    Ok(())
}

async fn a_handlers_events_arrive_in_the_hosts_span_of_their_request(
    recorder: Recorder,
) -> Result<(), Failed> {
    let worker = Worker::<Speaker>::spawn(ChildProcess::current_exe("speaker")).await?;
    worker
        .send(Say {
            text: "sync".into(),
        })
        .await??;
    worker
        .send(SayLater {
            text: "async".into(),
        })
        .await??;
    for line in ["handler heard sync", "async handler heard async"] {
        let seen = wait_for(&recorder, |e| e.name == line)
            .await
            .ok_or_else(|| format!("`{line}` never reached the subscriber"))?;
        assert_eq!(
            seen.scope.first().map(String::as_str),
            Some("request"),
            "logged in the host's request span: {seen:?}"
        );
    }
    worker.send(Close).await?;
    Ok(())
}

async fn each_item_of_a_batch_has_a_request_span_of_its_own(
    recorder: Recorder,
) -> Result<(), Failed> {
    let (worker, pid) = spawn_speaker().await?;
    let before = recorder.spans.lock().unwrap().len();
    let texts = ["batch item a", "batch item b", "batch item c"];
    let says = texts.map(|text| Say { text: text.into() });
    for (said, text) in worker
        .send(Batch::from_iter(says))
        .await?
        .into_iter()
        .zip(texts)
    {
        assert_eq!(said?, text.len());
    }
    let spans = recorder.spans.lock().unwrap()[before..].to_vec();
    let mut ids: Vec<String> = spans
        .iter()
        .filter(|s| s.name == "request" && s.field("message") == Some("Say"))
        .filter_map(|s| s.field("id").map(str::to_owned))
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "one request span per item: {spans:?}");
    for id in &ids {
        // What the worker logged for each item comes back in its span.
        let seen = wait_for(&recorder, |e| {
            e.name == format!("worker middleware saw Say id={id}")
                && e.field("pid") == Some(pid.to_string().as_str())
        })
        .await
        .ok_or_else(|| format!("the worker's event for request {id}"))?;
        assert_eq!(seen.scope.first().map(String::as_str), Some("request"));
    }
    for text in texts {
        let line = format!("handler heard {text}");
        let seen = wait_for(&recorder, |e| e.name == line)
            .await
            .ok_or_else(|| format!("`{line}` never reached the subscriber"))?;
        assert_eq!(seen.scope.first().map(String::as_str), Some("request"));
    }
    worker.send(Close).await?;
    Ok(())
}
