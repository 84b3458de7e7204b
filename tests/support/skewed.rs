//! A contract that claims to be the workers' `Calc` (same name, same
//! version) but disagrees about the messages: what a host built from
//! another revision of the contract would send.

use serde::{Deserialize, Serialize};

/// Wire name `Ping`, but the worker's `Ping` carries a string.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    pub text: u64,
}

/// The worker has no message of this name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {}

/// The same shape and wire name as the worker's `Increment`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Increment {
    pub by: u64,
}

isolated_workers::contract! {
    /// `Calc` as a skewed host sees it.
    pub Calc {
        Ping => super::Pong,
        Launch => (),
        Increment => u64,
    }
}
