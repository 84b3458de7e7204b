//! Who is on the other end of a worker socket: the attach secret a peer
//! proves itself with (made, and compared in constant time), the
//! credentials the OS gives of a connected peer, and whether a worker
//! process still runs.

use std::io;

use interprocess::local_socket::tokio::{prelude::*, Stream as LocalStream};
use subtle::ConstantTimeEq;

use crate::error::HandshakeError;

/// A fresh secret for an attach socket: 32 random bytes, hex.
pub(crate) fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Compares a presented token with the real one in constant time.
pub(crate) fn token_matches(presented: &str, real: &str) -> bool {
    presented.as_bytes().ct_eq(real.as_bytes()).into()
}

/// Checks, where the OS tells, that the peer runs as this process's user
/// and, if `pid` is given, that it is that process.
pub(crate) fn check_peer(stream: &LocalStream, pid: Option<u32>) -> Result<(), HandshakeError> {
    let Ok(creds) = stream.peer_creds() else {
        return Ok(());
    };
    if let Some(uid) = creds.euid() {
        let ours = rustix::process::geteuid().as_raw();
        if uid != ours {
            return Err(HandshakeError::ForeignUser { uid, ours });
        }
    }
    if let (Some(expected), Some(actual)) = (pid, creds.pid()) {
        if u32::try_from(actual).ok() != Some(expected) {
            return Err(HandshakeError::OtherProcess {
                pid: actual,
                expected,
            });
        }
    }
    Ok(())
}

/// Whether process `pid` runs: exists and, on Linux, is not a zombie (dead,
/// not yet reaped by its parent).
pub(crate) fn is_running(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name, which is in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => false,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Never 0 or negative, which would test a process group.
        i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
    }
}
