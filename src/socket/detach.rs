//! Leaving the host: what a worker process does when detached, so that it
//! outlives the host and nothing the host does to its own session reaches it.

use std::io;

/// Stops dying with the host (parent-death signal off), leaves the host's
/// session and process group (so a terminal's Ctrl-C or hang-up aimed at
/// the host's group passes it by), and points stdin, stdout and stderr at
/// `/dev/null` (the host's end of those pipes closes when it exits, and a
/// write to a closed stderr would make `eprintln!` panic).
pub(crate) fn leave_host() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(None)?;
    // Fails only if this process already leads a group, which a spawned
    // worker does not (then it is already on its own anyway).
    let _ = nix::unistd::setsid();
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}
