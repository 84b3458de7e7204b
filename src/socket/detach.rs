//! A worker process's tie to its host's life: following it (the
//! parent-death signal, set as the worker starts) and leaving it (what a
//! worker does when detached, so that it outlives the host and nothing the
//! host does to its own session reaches it).

use std::io;

/// Dies with the host: SIGTERM, not SIGKILL, as the parent-death signal
/// (the worker then stops as on Close and removes its socket directory),
/// then an error if the parent is no longer `host` (it died before the
/// signal was set). The signal follows the thread that spawned the child,
/// which is the proxy's arbiter thread. Only async-signal-safe calls, but
/// for the error's message (the host that would read it is gone).
pub(crate) fn follow_host(host: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getppid, set_parent_process_death_signal, Pid, Signal};
        set_parent_process_death_signal(Some(Signal::TERM))?;
        // `None`: the parent is outside this process's pid namespace.
        if Pid::as_raw(getppid()).unsigned_abs() != host {
            return Err(io::Error::other(
                "the host exited while the worker was starting",
            ));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = host;
    Ok(())
}

/// Stops dying with the host (parent-death signal off), leaves the host's
/// session and process group (so a terminal's Ctrl-C or hang-up aimed at
/// the host's group passes it by), and points stdin, stdout and stderr at
/// `/dev/null` (the host's end of those pipes closes when it exits, and a
/// write to a closed stderr would make `eprintln!` panic).
pub(crate) fn leave_host() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::process::set_parent_process_death_signal(None)?;
    // Fails only if this process already leads a group, which a spawned
    // worker does not (then it is already on its own anyway).
    let _ = rustix::process::setsid();
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(())
}
