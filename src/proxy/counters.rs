//! What a proxy counts while it runs, for [`Status`](super::Status):
//! requests by message type, crashes, restarts, bytes each way.
//!
//! Counting is a few integer additions and a scan of a short list per
//! request, on the proxy's own thread: cheap enough to leave on.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Serialize;

/// Requests of one message type, as the proxy counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MessageCounts {
    /// Requests handed to the worker (a retry is not counted again).
    pub sent: u64,
    /// Of those, answered with a reply.
    pub answered: u64,
    /// Of those, ended with an error: the handler's, a timeout, a crash,
    /// a close.
    pub failed: u64,
}

/// What the proxy has counted since it started (across restarts).
///
/// Requests refused at once, before they reach the worker (`Closed`,
/// `Overloaded`, `Disconnected`, refused by middleware), are not counted.
///
/// Serialized with the fields' names; `by_message` as an object keyed by
/// wire name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Counters {
    /// By wire name.
    pub by_message: BTreeMap<&'static str, MessageCounts>,
    /// Times the worker died without being asked to.
    pub crashes: u64,
    /// Fresh workers started after crashes.
    pub restarts: u64,
    /// Payload bytes sent to the worker (byte-stream drivers).
    pub bytes_out: u64,
    /// Payload bytes received from the worker (byte-stream drivers).
    pub bytes_in: u64,
}

/// The counters as the proxy and its links update them.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// By wire name. A contract has a handful of messages, and a name is
    /// usually the same pointer each time: a scan beats hashing the name.
    by_message: Vec<(&'static str, MessageCounts)>,
    pub(super) crashes: u64,
    pub(super) restarts: u64,
    bytes_out: u64,
    bytes_in: u64,
}

/// One tally, shared by the proxy and its current link.
pub(super) type SharedTally = Rc<RefCell<Tally>>;

/// Where one message's counts are in a [`Tally`]: looked up once per
/// request, when it is sent, and kept with it for when it ends.
#[derive(Debug, Clone, Copy)]
pub(super) struct CountsIndex(u32);

impl Tally {
    fn index_of(&mut self, message: &'static str) -> CountsIndex {
        let found = self
            .by_message
            .iter()
            .position(|(name, _)| std::ptr::eq(*name, message) || *name == message);
        let at = found.unwrap_or_else(|| {
            self.by_message.push((message, MessageCounts::default()));
            self.by_message.len() - 1
        });
        CountsIndex(at as u32)
    }

    /// A request of `message` was handed to the worker; its counts are at
    /// the index returned.
    pub(super) fn sent(&mut self, message: &'static str, bytes: usize) -> CountsIndex {
        let index = self.index_of(message);
        self.by_message[index.0 as usize].1.sent += 1;
        self.bytes_out += bytes as u64;
        index
    }

    /// A request whose counts are at `index` ended: answered, or not.
    pub(super) fn ended_at(&mut self, index: CountsIndex, answered: bool, bytes_in: usize) {
        let counts = &mut self.by_message[index.0 as usize].1;
        if answered {
            counts.answered += 1;
        } else {
            counts.failed += 1;
        }
        self.bytes_in += bytes_in as u64;
    }

    /// Bytes went out again (a retry).
    pub(super) fn resent(&mut self, bytes: usize) {
        self.bytes_out += bytes as u64;
    }

    /// A snapshot for `Status`.
    pub(super) fn snapshot(&self) -> Counters {
        Counters {
            by_message: self.by_message.iter().map(|(k, v)| (*k, *v)).collect(),
            crashes: self.crashes,
            restarts: self.restarts,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
        }
    }
}
