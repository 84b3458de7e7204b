//! One session's link over NATS, the same on both sides: numbered
//! messages out ([`Outgoing`]), numbered messages in, checked for gaps,
//! silence and reconnects ([`Incoming`]), and the bytes received but not
//! yet written to the local end ([`Backlog`]).
//!
//! Core NATS delivers at most once and a reconnect may drop what was in
//! flight, so the session does not try to repair anything: the first sign
//! of loss ends it, and the side that noticed says why.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::protocol::{Kind, Message, HEAD};

/// How liveness is checked: a heartbeat every `every`, and the session
/// ends after `missed_after` without any message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The heartbeat interval.
    pub(crate) every: Duration,
    /// The silence that ends a session.
    pub(crate) missed_after: Duration,
}

/// The most a session's message carries, whatever the server allows: a
/// large frame goes as several messages rather than one that holds up
/// every other client of the connection.
const MAX_CHUNK: usize = 256 * 1024;

/// How many received bytes may wait for the local end to take them before
/// the session stops reading from NATS (the subscription's own bounded
/// buffer then holds the rest, and an overflow there is a gap).
const BACKLOG_LIMIT: usize = 16 << 20;

/// The sending half: numbers each message.
pub(crate) struct Outgoing {
    client: Client,
    subject: async_nats::Subject,
    next: u64,
    chunk: usize,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("subject", &self.subject)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// Sends to `subject` through `client`, in messages within the
    /// server's `max_payload`.
    pub(crate) fn new(client: Client, subject: String) -> Result<Self, String> {
        let max_payload = client.server_info().max_payload;
        if max_payload <= HEAD {
            return Err(format!(
                "the NATS server's max_payload ({max_payload} bytes) leaves no room for data"
            ));
        }
        Ok(Self {
            client,
            subject: subject.into(),
            next: 0,
            chunk: (max_payload - HEAD).min(MAX_CHUNK),
        })
    }

    /// The most bytes one [`Kind::Data`] message carries.
    pub(crate) fn chunk(&self) -> usize {
        self.chunk
    }

    /// Sends one message of `kind`.
    pub(crate) async fn send(&mut self, kind: Kind, body: &[u8]) -> Result<(), String> {
        let payload = Message::encode(kind, self.next, body);
        self.next += 1;
        self.client
            .publish(self.subject.clone(), payload)
            .await
            .map_err(|e| format!("could not publish to NATS: {e}"))
    }

    /// Sends `bytes`, in as many messages as the chunk size needs.
    pub(crate) async fn data(&mut self, bytes: &[u8]) -> Result<(), String> {
        for piece in bytes.chunks(self.chunk) {
            self.send(Kind::Data, piece).await?;
        }
        Ok(())
    }
}

/// A NATS subscription that may be dropped anywhere. async-nats's
/// `Subscriber` spawns its unsubscribe on drop, which panics outside a
/// tokio runtime, as when an actix System stops with sessions still open:
/// there the subscriber is leaked instead (the connection is going away
/// with the runtime anyway).
pub(crate) struct Subscription(std::mem::ManuallyDrop<Subscriber>);

impl Subscription {
    /// Wraps `subscriber`.
    pub(crate) fn new(subscriber: Subscriber) -> Self {
        Self(std::mem::ManuallyDrop::new(subscriber))
    }
}

impl std::ops::Deref for Subscription {
    type Target = Subscriber;
    fn deref(&self) -> &Subscriber {
        &self.0
    }
}

impl std::ops::DerefMut for Subscription {
    fn deref_mut(&mut self) -> &mut Subscriber {
        &mut self.0
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            // SAFETY: dropped once, here, and never used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.0) };
        }
    }
}

/// The receiving half: checks each message's number, and whether the
/// peer or the client went quiet or reconnected.
pub(crate) struct Incoming {
    subscriber: Subscription,
    client: Client,
    expected: u64,
    last_heard: Instant,
    missed_after: Duration,
    /// The client's connection count when the session began.
    connects: u64,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// Receives on `subscriber` (of `client`), ending the session after
    /// `timing.missed_after` of silence.
    pub(crate) fn new(client: Client, subscriber: Subscriber, timing: Timing) -> Self {
        Self {
            connects: connects(&client),
            subscriber: Subscription::new(subscriber),
            client,
            expected: 0,
            last_heard: Instant::now(),
            missed_after: timing.missed_after,
        }
    }

    /// The next message, in order; an error says why the session is lost.
    /// Cancel safe (the subscriber's `next` is).
    pub(crate) async fn next(&mut self) -> Result<Message, String> {
        let Some(message) = self.subscriber.next().await else {
            return Err("the NATS subscription ended (the client was closed)".into());
        };
        let message = Message::decode(message.payload)?;
        if message.seq != self.expected {
            return Err(format!(
                "message {} of the session was lost (the next to arrive was {})",
                self.expected, message.seq
            ));
        }
        self.expected += 1;
        self.last_heard = Instant::now();
        Ok(message)
    }

    /// Whether the session still holds: the peer was heard from within
    /// the bound, and the client has not reconnected since it began.
    pub(crate) fn check(&self) -> Result<(), String> {
        let silent = self.last_heard.elapsed();
        if silent > self.missed_after {
            return Err(format!(
                "nothing heard for {silent:.1?} (the bound is {:?})",
                self.missed_after
            ));
        }
        if connects(&self.client) != self.connects {
            return Err("the NATS client reconnected, and messages may have been lost".into());
        }
        Ok(())
    }
}

/// How many times `client` has connected, counting the first.
fn connects(client: &Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Bytes received from the peer, waiting to be written to the local end.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    pieces: VecDeque<Bytes>,
    bytes: usize,
}

impl Backlog {
    /// Queues `piece`.
    pub(crate) fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.bytes += piece.len();
            self.pieces.push_back(piece);
        }
    }

    /// Whether more may be received before some is written.
    pub(crate) fn has_room(&self) -> bool {
        self.bytes < BACKLOG_LIMIT
    }

    /// Whether everything received was written.
    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Writes what `writer` takes at once of the first piece. Cancel
    /// safe: a write either happened (and is accounted) or did not.
    pub(crate) async fn write_some<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        let Some(first) = self.pieces.front_mut() else {
            return std::future::pending().await;
        };
        let written = writer.write(first).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.bytes -= written;
        let _ = first.split_to(written);
        if first.is_empty() {
            self.pieces.pop_front();
        }
        Ok(())
    }
}
