//! The worker machine's side: an [`Agent`] takes claims for one contract
//! from a NATS queue group while it has room, runs each session's worker
//! as a local child process ([`ChildProcess`]), and carries the child's
//! byte stream over the session's subjects until the child ends, the host
//! hangs up, or the session is lost, when it ends the child (no orphans).

use std::marker::PhantomData;
use std::time::Duration;

use async_nats::{Client, Message};
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rustix::process::Signal;
use tokio::io::AsyncReadExt;

use super::protocol::{self, Answer, Claim, End, Kind};
use super::session::{Backlog, Incoming, Outgoing, Subscription, Timing};
use super::subjects::{self, CLAIM_QUEUE, DEFAULT_PREFIX};
use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::driver::child_process::Spawned;
use crate::driver::ChildProcess;

/// The longest heartbeat bound a claim may ask for: a host that asks for
/// more would leave a worker running long after it vanished.
const MAX_MISSED_AFTER: Duration = Duration::from_secs(3600);

/// How long an ended session waits for its worker to exit once killed.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// Where an [`Agent`] finds NATS: a client the caller connected (with its
/// own auth and TLS options), or a URL to connect to with defaults.
#[derive(Debug, Clone)]
pub enum NatsAt {
    /// This client.
    Client(Client),
    /// `async_nats::connect(url)`.
    Url(String),
}

impl From<Client> for NatsAt {
    fn from(client: Client) -> Self {
        NatsAt::Client(client)
    }
}

impl From<&str> for NatsAt {
    fn from(url: &str) -> Self {
        NatsAt::Url(url.to_owned())
    }
}

impl From<String> for NatsAt {
    fn from(url: String) -> Self {
        NatsAt::Url(url)
    }
}

/// Why an agent stopped serving.
#[derive(Debug, thiserror::Error)]
#[error("NATS agent: {what}: {why}")]
pub struct AgentError {
    /// What it was doing.
    what: &'static str,
    /// What went wrong.
    why: String,
}

impl AgentError {
    /// An error while doing `what`.
    fn new(what: &'static str, why: impl std::fmt::Display) -> Self {
        Self {
            what,
            why: why.to_string(),
        }
    }
}

/// Serves sessions of contract `C` to hosts anywhere on the same NATS:
/// each session is one worker process started by the [`ChildProcess`]
/// given to [`run`](Self::run), at most [`capacity`](Self::capacity) at
/// once. Run it inside an actix System (the children are watched there).
///
/// ```no_run
/// # isolated_workers::contract! { Calc { } }
/// use isolated_workers::{nats::Agent, ChildProcess};
/// # async fn demo() -> Result<(), isolated_workers::nats::AgentError> {
/// Agent::<Calc>::new("nats://127.0.0.1:4222")
///     .capacity(8)
///     .run(ChildProcess::current_exe("calc"))
///     .await
/// # }
/// ```
///
/// # Capacity
/// The agent listens for claims (in a queue group, so each claim reaches
/// one agent) only while it has room: a full agent unsubscribes, and a
/// host whose claim nobody hears gets a `SpawnError` at once. A claim that
/// reached the agent just before it filled up is declined, and the host
/// claims again (another agent may take it).
pub struct Agent<C> {
    nats: NatsAt,
    capacity: usize,
    prefix: String,
    name: String,
    contract: PhantomData<fn() -> C>,
}

impl<C> std::fmt::Debug for Agent<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("capacity", &self.capacity)
            .field("prefix", &self.prefix)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C: Contract> Agent<C> {
    /// An agent on `nats` (a client or a URL), with room for as many
    /// sessions as the machine has CPUs, under [`DEFAULT_PREFIX`].
    pub fn new(nats: impl Into<NatsAt>) -> Self {
        Self {
            nats: nats.into(),
            capacity: std::thread::available_parallelism().map_or(1, usize::from),
            prefix: DEFAULT_PREFIX.to_owned(),
            name: format!("agent-{}", std::process::id()),
            contract: PhantomData,
        }
    }

    /// Runs at most `sessions` workers at once (at least one).
    pub fn capacity(mut self, sessions: usize) -> Self {
        self.capacity = sessions.max(1);
        self
    }

    /// Puts every subject under `prefix` (the hosts' must be the same).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The name this agent gives hosts (in logs and errors); by default
    /// `agent-<pid>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Connects, listens for claims, and serves sessions until the NATS
    /// client is closed. Dropping the future ends every session and its
    /// worker.
    ///
    /// # Errors
    /// Connecting or subscribing failed, or the client was closed.
    pub async fn run(self, workers: ChildProcess) -> Result<(), AgentError> {
        self.start(workers).await?.serve().await
    }

    /// Connects and listens for claims; the agent serves once the
    /// returned [`Serving`] is awaited with [`Serving::serve`]. Claims
    /// sent after this returns reach the agent.
    ///
    /// # Errors
    /// Connecting or subscribing failed.
    pub async fn start(self, workers: ChildProcess) -> Result<Serving, AgentError> {
        let client = match self.nats {
            NatsAt::Client(client) => client,
            NatsAt::Url(url) => async_nats::connect(url)
                .await
                .map_err(|e| AgentError::new("connecting", e))?,
        };
        let mut serving = Serving {
            subject: subjects::claim(&self.prefix, C::NAME, C::VERSION),
            client,
            capacity: self.capacity,
            prefix: self.prefix,
            name: self.name,
            workers,
            claims: None,
            sessions: FuturesUnordered::new(),
        };
        serving.listen().await?;
        serving
            .client
            .flush()
            .await
            .map_err(|e| AgentError::new("subscribing", e))?;
        tracing::info!(subject = %serving.subject, agent = %serving.name, "agent serving");
        Ok(serving)
    }
}

/// An [`Agent`] listening for claims: [`serve`](Self::serve) it.
pub struct Serving {
    client: Client,
    subject: String,
    capacity: usize,
    prefix: String,
    name: String,
    workers: ChildProcess,
    /// The claim subscription, while there is room.
    claims: Option<Subscription>,
    sessions: FuturesUnordered<LocalBoxFuture<'static, ()>>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("subject", &self.subject)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Serving {
    /// Serves sessions until the NATS client is closed.
    ///
    /// # Errors
    /// The claim subscription ended or could not be made again.
    pub async fn serve(mut self) -> Result<(), AgentError> {
        loop {
            if self.sessions.len() < self.capacity {
                self.listen().await?;
            } else {
                self.stop_listening().await;
            }
            tokio::select! {
                claim = next_claim(&mut self.claims) => match claim {
                    Some(claim) => {
                        let session = Session {
                            client: self.client.clone(),
                            prefix: self.prefix.clone(),
                            agent: self.name.clone(),
                        };
                        self.sessions.push(Box::pin(session.serve(claim, self.workers.clone())));
                    }
                    None => return Err(AgentError::new("taking claims", "the subscription ended")),
                },
                Some(()) = self.sessions.next(), if !self.sessions.is_empty() => {}
            }
        }
    }

    /// Subscribes to claims, unless subscribed.
    async fn listen(&mut self) -> Result<(), AgentError> {
        if self.claims.is_none() {
            let subscriber = self
                .client
                .queue_subscribe(self.subject.clone(), CLAIM_QUEUE.to_owned())
                .await
                .map_err(|e| AgentError::new("subscribing", e))?;
            self.claims = Some(Subscription::new(subscriber));
        }
        Ok(())
    }

    /// Unsubscribes from claims, declining those already received.
    async fn stop_listening(&mut self) {
        let Some(mut claims) = self.claims.take() else {
            return;
        };
        let _ = claims.unsubscribe().await;
        while let Some(claim) = claims.next().await {
            let why = format!("at capacity ({} sessions)", self.capacity);
            answer(
                &self.client,
                &claim,
                &Answer::Declined {
                    agent: self.name.clone(),
                    why,
                },
            )
            .await;
        }
    }
}

/// The next claim, or never without a subscription.
async fn next_claim(claims: &mut Option<Subscription>) -> Option<Message> {
    match claims {
        Some(claims) => claims.next().await,
        None => std::future::pending().await,
    }
}

/// Answers `claim`.
async fn answer(client: &Client, claim: &Message, answer: &Answer) {
    if let Some(reply) = &claim.reply {
        let _ = client
            .publish(reply.clone(), protocol::to_bytes(answer))
            .await;
    }
}

/// One session's context on the agent.
struct Session {
    client: Client,
    prefix: String,
    agent: String,
}

/// How a session ended, on the agent.
enum Over {
    /// The worker exited: how.
    Exited(End),
    /// The host said it is done.
    HungUp,
    /// The session was lost: why.
    Lost(String),
}

impl Session {
    /// Serves `claim`: checks it, starts the worker, answers, and carries
    /// the session until it ends; the worker is gone when this returns.
    async fn serve(self, claim: Message, workers: ChildProcess) {
        let declined = |why: String| Answer::Declined {
            agent: self.agent.clone(),
            why,
        };
        let checked = protocol::from_bytes::<Claim>(&claim.payload).and_then(check);
        let (request, timing) = match checked {
            Ok(checked) => checked,
            Err(why) => return answer(&self.client, &claim, &declined(why)).await,
        };
        let options = WorkerOptions::default()
            .max_frame_len(request.max_frame_len)
            .close_grace(Duration::from_millis(request.close_grace_ms));
        let spawned = match workers.spawn(&options, false) {
            Ok(spawned) => spawned,
            Err(e) => return answer(&self.client, &claim, &declined(e.to_string())).await,
        };
        let Spawned {
            channel,
            mut process,
            ..
        } = spawned;
        let to_worker = subjects::to_worker(&self.prefix, &request.secret);
        let linked = async {
            let subscriber = self
                .client
                .subscribe(to_worker)
                .await
                .map_err(|e| e.to_string())?;
            let outgoing = Outgoing::new(
                self.client.clone(),
                subjects::to_host(&self.prefix, &request.secret),
            )?;
            channel.set_nonblocking(true).map_err(|e| e.to_string())?;
            let stream = tokio::net::UnixStream::from_std(channel).map_err(|e| e.to_string())?;
            Ok::<_, String>((subscriber, outgoing, stream))
        };
        let (subscriber, mut outgoing, stream) = match linked.await {
            Ok(linked) => linked,
            Err(why) => {
                process.kill();
                let _ = process.exited_within(REAP_WAIT).await;
                return answer(&self.client, &claim, &declined(why)).await;
            }
        };
        let pid = process.pid();
        answer(
            &self.client,
            &claim,
            &Answer::Accepted {
                agent: self.agent.clone(),
                pid,
            },
        )
        .await;
        tracing::debug!(pid, "session started");
        let mut incoming = Incoming::new(self.client.clone(), subscriber, timing);

        let (mut reader, mut writer) = stream.into_split();
        let mut buffer = vec![0; outgoing.chunk()];
        let mut backlog = Backlog::default();
        let mut heartbeat = tokio::time::interval(timing.every);
        let exited = process.ended();
        tokio::pin!(exited);
        // The worker closed its end: it is exiting.
        let mut worker_done = false;
        let over = loop {
            tokio::select! {
                read = reader.read(&mut buffer), if !worker_done => match read {
                    Ok(n @ 1..) => {
                        if let Err(why) = outgoing.data(&buffer[..n]).await {
                            break Over::Lost(why);
                        }
                    }
                    _ => worker_done = true,
                },
                ended = &mut exited, if worker_done => {
                    break Over::Exited(match ended {
                        Some(ended) => End::of(&ended.reason()),
                        None => End::Lost("its exit status is unknown".into()),
                    });
                }
                message = incoming.next(), if backlog.has_room() => {
                    let message = match message {
                        Ok(message) => message,
                        Err(why) => break Over::Lost(why),
                    };
                    match message.kind {
                        Kind::Data => backlog.push(message.body),
                        Kind::Heartbeat => {}
                        Kind::Signal => match message.body.first().map(|&n| Signal::from_named_raw(i32::from(n))) {
                            Some(Some(Signal::TERM)) => process.terminate(),
                            Some(Some(Signal::KILL)) => process.kill(),
                            _ => break Over::Lost("the host sent an unknown signal".into()),
                        },
                        Kind::Hangup => break Over::HungUp,
                        Kind::End => break Over::Lost("the host sent an End".into()),
                    }
                },
                written = backlog.write_some(&mut writer), if !worker_done => {
                    if written.is_err() {
                        backlog = Backlog::default();
                    }
                },
                _ = heartbeat.tick() => {
                    let sent = outgoing.send(Kind::Heartbeat, &[]).await;
                    if let Err(why) = sent.and_then(|()| incoming.check()) {
                        break Over::Lost(why);
                    }
                },
            }
        };
        let end = match over {
            Over::Exited(end) => Some(end),
            Over::HungUp => None,
            Over::Lost(why) => {
                tracing::warn!(pid, %why, "lost a session's host; ending its worker");
                Some(End::Lost(why))
            }
        };
        if !matches!(end, Some(End::Exit(_) | End::Signal(_))) {
            process.kill();
            let _ = process.exited_within(REAP_WAIT).await;
        }
        if let Some(end) = end {
            let _ = outgoing.send(Kind::End, &protocol::to_bytes(&end)).await;
        }
        tracing::debug!(pid, "session ended");
    }
}

/// A claim this agent can serve, with its heartbeat timing; or why not.
fn check(claim: Claim) -> Result<(Claim, Timing), String> {
    if claim.version != protocol::VERSION {
        return Err(format!(
            "the claim is of version {}, this agent speaks {}",
            claim.version,
            protocol::VERSION
        ));
    }
    if !subjects::is_secret(&claim.secret) {
        return Err("the claim's session secret is malformed".into());
    }
    let timing = Timing {
        every: Duration::from_millis(claim.heartbeat_ms),
        missed_after: Duration::from_millis(claim.missed_after_ms),
    };
    if timing.every.is_zero()
        || timing.missed_after < timing.every
        || timing.missed_after > MAX_MISSED_AFTER
    {
        return Err(format!(
            "the claim's heartbeat ({:?}, missed after {:?}) is out of bounds (missed after at most {MAX_MISSED_AFTER:?})",
            timing.every, timing.missed_after
        ));
    }
    Ok((claim, timing))
}
