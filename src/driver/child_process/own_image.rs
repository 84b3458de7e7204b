//! The host's own executable as a worker
//! ([`ChildProcess::current_exe`](super::ChildProcess::current_exe)): which
//! file the child executes, and, in a test binary that uses
//! [`test_support!`](crate::test_support!), libtest's arguments.
//!
//! **Same build.** On Linux the child executes `/proc/self/exe`. The path
//! is looked up in the child, between its `fork` (or `posix_spawn`'s
//! `vfork`) and its `exec`, while it still shares the host's memory map, so
//! it names the host's very image: the file the host started from, even
//! after `cargo build` put a new file at its path or the file was deleted
//! (checked by experiment, on both spawn paths). No descriptor is kept open
//! for it, and nothing runs in the child to pass one on. argv\[0\] stays the
//! executable's path. Elsewhere the child executes the path, and the
//! handshake refuses a worker that runs another build
//! ([`HandshakeError::OtherBuild`](crate::HandshakeError::OtherBuild)).

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use crate::test_support::{host_shows_output, libtest_args};

/// A command that starts the host's own build, found at `path`, as a
/// worker, with the user's `args`; an error (in words) if the binary is a
/// test binary that cannot take them.
pub(super) fn command(path: &Path, args: &[OsString]) -> Result<tokio::process::Command, String> {
    let mut command = tokio::process::Command::new(executed(path));
    command.arg0(path);
    if let Some(test_args) = libtest_args()? {
        if !args.is_empty() {
            return Err(
                "a test binary that uses `test_support!` takes no arguments for its workers: \
                 libtest would read them as test filters; pass settings with `env` instead"
                    .to_owned(),
            );
        }
        command.args(test_args);
        if !host_shows_output() {
            command.stdout(Stdio::null());
        }
    }
    command.args(args);
    Ok(command)
}

/// The file the child executes to run the image at `path`: the host's
/// own image on Linux (see the module doc), the path elsewhere.
fn executed(path: &Path) -> &Path {
    if cfg!(target_os = "linux") {
        Path::new("/proc/self/exe")
    } else {
        path
    }
}
