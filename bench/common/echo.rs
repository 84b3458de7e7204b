//! The echo contract and its worker, shared by the bench package's
//! benches and examples: each request is answered with itself.
//!
//! Included with `#[path]` (the package has no library): each binary uses
//! the part it needs.
#![allow(dead_code)]

use actix::prelude::*;
use bytes::Bytes;
use isolated_workers::{SharedBytes, WorkerError};
use serde::{Deserialize, Serialize};

/// The length of a small request.
pub const SMALL: usize = 16;
/// The bytes of every small request.
pub const SMALL_MESSAGE: [u8; SMALL] = *b"sixteen byte msg";
/// The small request every small-message workload sends.
pub const ECHO16: Echo16 = Echo16 {
    data: SMALL_MESSAGE,
};

/// A small request, echoed back as its own reply.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Echo16 {
    #[serde(with = "serde_bytes")]
    pub data: [u8; SMALL],
}

/// A byte payload of any size, echoed back as the reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoBytes {
    pub data: Bytes,
}

/// Shared memory of any size, echoed back as the reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoShared {
    pub data: SharedBytes,
}

isolated_workers::contract! {
    /// What the benchmark worker serves.
    pub EchoContract {
        Echo16 => Echo16,
        EchoBytes => Bytes,
        EchoShared => SharedBytes,
    }
}

/// The worker actor: answers every request with what it got.
#[derive(Debug, Default)]
pub struct Echoer;

impl Actor for Echoer {
    type Context = Context<Self>;
}

impl Handler<Echo16> for Echoer {
    type Result = Result<Echo16, WorkerError>;

    fn handle(&mut self, echo: Echo16, _: &mut Context<Self>) -> Self::Result {
        Ok(echo)
    }
}

impl Handler<EchoBytes> for Echoer {
    type Result = Result<Bytes, WorkerError>;

    fn handle(&mut self, echo: EchoBytes, _: &mut Context<Self>) -> Self::Result {
        Ok(echo.data)
    }
}

impl Handler<EchoShared> for Echoer {
    type Result = Result<SharedBytes, WorkerError>;

    fn handle(&mut self, echo: EchoShared, _: &mut Context<Self>) -> Self::Result {
        Ok(echo.data)
    }
}
