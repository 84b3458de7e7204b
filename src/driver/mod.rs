//! Drivers: how a worker is started and reached.
//!
//! [`ChildProcess`] (the default) runs the worker in a child process and
//! talks to it over a local socket.

use futures::future::LocalBoxFuture;

use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::error::SpawnError;

pub mod child_process;
pub(crate) mod process;

pub use child_process::ChildProcess;
pub(crate) use child_process::Link;

/// Starts a worker and hands the proxy a live link to it.
///
/// Implemented by [`ChildProcess`]. The link type is still private; the
/// trait becomes implementable outside the crate together with the second
/// built-in driver.
pub trait Driver: Sized + Unpin + 'static {
    /// Starts the worker for contract `C` and completes its handshake.
    #[doc(hidden)]
    fn launch<C: Contract>(
        self,
        options: &WorkerOptions,
    ) -> LocalBoxFuture<'static, Result<Link, SpawnError>>;
}
