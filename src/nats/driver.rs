//! The host's side: the [`Nats`] driver claims a session from an agent
//! and carries the worker's byte stream over the session's subjects
//! ([`carry`]), so that the proxy reads and writes the same frames as
//! with a local child, Hello first.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use futures::future::LocalBoxFuture;
use rustix::process::Signal;
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::{self, Answer, Claim, End, Kind};
use super::session::{Backlog, Incoming, Outgoing, Timing};
use super::subjects::{self, DEFAULT_PREFIX};
use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::driver::process::Ended;
use crate::driver::{Connection, Driver, ProcessHandle};
use crate::error::{CrashReason, SpawnError};

/// How many times a claim is sent again after an agent declined it (it
/// filled up between taking the claim and answering: see the module doc
/// of [`nats`](super)).
const CLAIM_ATTEMPTS: u32 = 8;

/// The host end's buffer between the proxy and the session.
const DUPLEX_BUFFER: usize = 256 * 1024;

/// Runs each worker in a session claimed from an [`Agent`](super::Agent)
/// through NATS: on whichever machine has an agent of the contract with
/// free capacity.
///
/// ```no_run
/// # isolated_workers::contract! { Calc { } }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use isolated_workers::{nats::Nats, Worker};
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let driver = Nats::new(client).heartbeat(Duration::from_millis(500), Duration::from_secs(2));
/// let worker = Worker::<Calc, _>::spawn(driver).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Nats {
    client: Client,
    prefix: String,
    timing: Timing,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("prefix", &self.prefix)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

impl Nats {
    /// Claims sessions through `client` (its auth and TLS are the
    /// session's), under [`DEFAULT_PREFIX`], with a heartbeat every
    /// second and a bound of five.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            prefix: DEFAULT_PREFIX.to_owned(),
            timing: Timing {
                every: Duration::from_secs(1),
                missed_after: Duration::from_secs(5),
            },
        }
    }

    /// Puts every subject under `prefix` (the agents' must be the same).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Each side of a session sends a heartbeat `every` so often, and ends
    /// the session after `missed_after` without hearing from the other:
    /// the bound within which a lost agent fails its worker's requests,
    /// and a lost host has its worker ended. The agent takes both from the
    /// host's claim. `missed_after` is raised to at least twice `every`.
    pub fn heartbeat(mut self, every: Duration, missed_after: Duration) -> Self {
        let every = every.max(Duration::from_millis(1));
        self.timing = Timing {
            every,
            missed_after: missed_after.max(every * 2),
        };
        self
    }
}

impl<C: Contract> Driver<C> for Nats {
    fn launch(
        &self,
        options: &WorkerOptions,
    ) -> LocalBoxFuture<'static, Result<Connection, SpawnError>> {
        Box::pin(self.clone().claim::<C>(options.clone()))
    }
}

impl Nats {
    /// Claims a session from an agent, starts carrying it, and waits for
    /// the worker's first bytes (its Hello), all within the startup
    /// timeout.
    async fn claim<C: Contract>(self, options: WorkerOptions) -> Result<Connection, SpawnError> {
        let after = options.startup_timeout;
        let deadline = tokio::time::Instant::now() + after;
        let timed_out = || SpawnError::Timeout {
            after,
            stderr: String::new(),
        };
        let nats_error = |what: &'static str, e: String| SpawnError::Io {
            what,
            source: std::io::Error::other(e),
        };
        let subject = subjects::claim(&self.prefix, C::NAME, C::VERSION);
        let secret = subjects::secret().map_err(|source| SpawnError::Io {
            what: "session secret",
            source,
        })?;
        // Listening before claiming: the worker's first bytes may follow
        // the agent's answer at once.
        let subscriber = self
            .client
            .subscribe(subjects::to_host(&self.prefix, &secret))
            .await
            .map_err(|e| nats_error("NATS subscription", e.to_string()))?;
        let claim = protocol::to_bytes(&Claim {
            version: protocol::VERSION,
            secret: secret.clone(),
            heartbeat_ms: millis(self.timing.every),
            missed_after_ms: millis(self.timing.missed_after),
            max_frame_len: options.max_frame_len,
            close_grace_ms: millis(options.close_grace),
        });
        let no_agent = |why: String| SpawnError::NoAgent {
            subject: subject.clone(),
            why,
        };
        let mut declined = Vec::new();
        let pid = loop {
            if declined.len() as u32 >= CLAIM_ATTEMPTS {
                return Err(no_agent(format!(
                    "every answer declined: {}",
                    declined.join("; ")
                )));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let request = async_nats::Request::new()
                .payload(claim.clone())
                .timeout(Some(left));
            let answer =
                match self.client.send_request(subject.clone(), request).await {
                    Ok(answer) => answer,
                    Err(e) => match e.kind() {
                        RequestErrorKind::NoResponders => return Err(no_agent(
                            "no agent listens (none serves this contract, or all are at capacity)"
                                .into(),
                        )),
                        RequestErrorKind::TimedOut => return Err(timed_out()),
                        _ => return Err(nats_error("NATS claim", e.to_string())),
                    },
                };
            match protocol::from_bytes::<Answer>(&answer.payload) {
                Ok(Answer::Accepted { agent, pid }) => {
                    tracing::debug!(%agent, pid, contract = C::NAME, "claimed a NATS session");
                    break pid;
                }
                Ok(Answer::Declined { agent, why }) => declined.push(format!("{agent}: {why}")),
                Err(e) => return Err(no_agent(format!("an undecodable answer: {e}"))),
            }
        };

        let outgoing = Outgoing::new(
            self.client.clone(),
            subjects::to_worker(&self.prefix, &secret),
        )
        .map_err(|e| nats_error("NATS session", e))?;
        let incoming = Incoming::new(self.client.clone(), subscriber, self.timing);
        let (ours, proxys) = tokio::io::duplex(DUPLEX_BUFFER);
        let (exit_tx, exit) = watch::channel(None);
        let (signals, signals_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = oneshot::channel();
        let carried = Carried {
            io: ours,
            outgoing,
            incoming,
            exit: exit_tx,
            signals: signals_rx,
            ready: Some(ready_tx),
            every: self.timing.every,
        };
        actix_rt::spawn(carried.carry());
        let process = ProcessHandle::remote(pid, exit, signals);
        let connection = Connection::stream(proxys).with_process(process);
        // Dropping the connection (a timeout here) ends the session.
        match tokio::time::timeout_at(deadline, ready).await {
            Ok(Ok(Ok(()))) => Ok(connection),
            Ok(Ok(Err(reason))) => Err(SpawnError::Exited {
                reason,
                stderr: String::new(),
            }),
            Ok(Err(_)) => Err(no_agent("the session ended before the worker spoke".into())),
            Err(_) => Err(timed_out()),
        }
    }
}

/// Milliseconds in `duration`, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A session being carried between the proxy (`io`) and NATS.
struct Carried {
    /// The host's end of the proxy's stream.
    io: DuplexStream,
    outgoing: Outgoing,
    incoming: Incoming,
    /// Where the worker's end goes: what the agent said, or why the
    /// session was lost.
    exit: watch::Sender<Option<Ended>>,
    /// The proxy's signals for the worker; closed when the proxy drops
    /// its handle.
    signals: mpsc::UnboundedReceiver<Signal>,
    /// Told when the worker's first bytes arrived, or why they will not.
    ready: Option<oneshot::Sender<Result<(), CrashReason>>>,
    every: Duration,
}

impl Carried {
    /// Carries bytes both ways until the worker ends, the proxy lets go of
    /// it (drops its handle), or the session is lost. The worker's end is
    /// set before the proxy's stream closes, so the proxy reports it.
    async fn carry(self) {
        let Self {
            io,
            mut outgoing,
            mut incoming,
            exit,
            mut signals,
            mut ready,
            every,
        } = self;
        let (mut reader, mut writer) = tokio::io::split(io);
        let mut buffer = vec![0; outgoing.chunk()];
        let mut backlog = Backlog::default();
        let mut heartbeat = tokio::time::interval(every);
        let mut ended: Option<CrashReason> = None;
        // The proxy stopped writing (it still may read and signal).
        let mut proxy_done_writing = false;
        let lost = loop {
            if let Some(reason) = &ended {
                if backlog.is_empty() {
                    break reason.clone();
                }
            }
            tokio::select! {
                read = reader.read(&mut buffer), if !proxy_done_writing => match read {
                    Ok(n @ 1..) => {
                        if let Err(why) = outgoing.data(&buffer[..n]).await {
                            break CrashReason::RemoteLost(why);
                        }
                    }
                    _ => proxy_done_writing = true,
                },
                message = incoming.next(), if ended.is_none() && backlog.has_room() => {
                    let message = match message {
                        Ok(message) => message,
                        Err(why) => break CrashReason::RemoteLost(why),
                    };
                    match message.kind {
                        Kind::Data => {
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(Ok(()));
                            }
                            backlog.push(message.body);
                        }
                        Kind::Heartbeat => {}
                        Kind::End => {
                            ended = Some(match protocol::from_bytes::<End>(&message.body) {
                                Ok(end) => end.reason(),
                                Err(e) => CrashReason::RemoteLost(format!("an undecodable end: {e}")),
                            });
                        }
                        other => {
                            break CrashReason::RemoteLost(format!("a {other:?} message from the agent"));
                        }
                    }
                },
                written = backlog.write_some(&mut writer) => {
                    if written.is_err() {
                        // The proxy stopped reading: nothing more for it.
                        backlog = Backlog::default();
                    }
                },
                _ = heartbeat.tick() => {
                    let sent = outgoing.send(Kind::Heartbeat, &[]).await;
                    // After its end, the agent sends nothing more.
                    let checked = sent.and_then(|()| match ended {
                        Some(_) => Ok(()),
                        None => incoming.check(),
                    });
                    if let Err(why) = checked {
                        break CrashReason::RemoteLost(why);
                    }
                },
                signal = signals.recv() => match signal {
                    Some(signal) => {
                        // Signal numbers are small.
                        let number = signal.as_raw() as u8;
                        if let Err(why) = outgoing.send(Kind::Signal, &[number]).await {
                            break CrashReason::RemoteLost(why);
                        }
                    }
                    None => {
                        // The proxy dropped the worker: the agent ends it.
                        let _ = outgoing.send(Kind::Hangup, &[]).await;
                        return;
                    }
                },
            }
        };
        if let CrashReason::RemoteLost(why) = &lost {
            tracing::warn!(%why, "lost a NATS session");
            // The agent may still hear this, and end the worker at once.
            let _ = outgoing.send(Kind::Hangup, &[]).await;
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(Err(lost.clone()));
        }
        let _ = exit.send(Some(Ended::Remote(lost)));
        // `reader` and `writer` drop here: the proxy reads the end.
    }
}
