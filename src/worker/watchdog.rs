//! A worker process's watchdog: a thread of its own that notices what the
//! worker's thread may be too busy to notice (its host's death, SIGTERM),
//! tells the worker, and ends the process if the worker's thread has not
//! ended it a grace period later. A handler that blocks its thread (a
//! CPU-bound job, the first use of a worker) can thus delay the worker's
//! end by the grace period at most.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// How long past its grace period a stopping worker is given to flush its
/// last frames and exit by itself before the watchdog ends it.
const FLUSH_MARGIN: Duration = Duration::from_millis(250);

/// Exit code of a worker the watchdog ends, as if SIGTERM's default action
/// had ended it (128 + 15, as a shell reports it).
const FORCED_EXIT_CODE: i32 = 143;

/// Where the host cannot be watched through a pidfd, how often the watchdog
/// looks whether it still runs.
const HOST_POLL: Duration = Duration::from_millis(200);

/// What the watchdog tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alarm {
    /// A SIGTERM arrived.
    Terminate,
    /// The host process is gone.
    HostGone,
}

/// The worker's side of its watchdog.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    alarms: Option<mpsc::UnboundedReceiver<Alarm>>,
}

struct Shared {
    /// Set once the worker outlives its host: the host's death is then no
    /// reason to stop.
    detached: AtomicBool,
    /// Woken when the worker begins to stop by itself.
    stopping: Notify,
}

impl Watchdog {
    /// Starts watching SIGTERM and, if known, the host process `host`; a
    /// worker that does not stop within `grace` of an alarm or of
    /// [`stopping`](Self::stopping) is ended. Without a thread (the OS
    /// refused one), the worker runs unwatched, as it would without this.
    pub(crate) fn start(host: Option<u32>, grace: Duration) -> Self {
        let shared = Arc::new(Shared {
            detached: AtomicBool::new(false),
            stopping: Notify::new(),
        });
        let (alarm, alarms) = mpsc::unbounded_channel();
        let watched = shared.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let started = runtime.and_then(|runtime| {
            // Handled from here on, before the worker says hello: a SIGTERM
            // that came before the thread runs would otherwise kill it.
            let terminate = {
                let _in_runtime = runtime.enter();
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
            };
            std::thread::Builder::new()
                .name("isolated-workers-watchdog".into())
                .spawn(move || {
                    runtime.block_on(watch(watched, terminate, host, grace + FLUSH_MARGIN, alarm))
                })
        });
        if let Err(e) = started {
            report(&format!("could not start the worker's watchdog: {e}"));
        }
        Self {
            shared,
            alarms: Some(alarms),
        }
    }

    /// The alarms, for the worker to act on (taken once).
    pub(crate) fn take_alarms(&mut self) -> Option<impl futures::Stream<Item = Alarm> + 'static> {
        let mut alarms = self.alarms.take()?;
        Some(futures::stream::poll_fn(move |task| alarms.poll_recv(task)))
    }

    /// The worker outlives its host from now on.
    pub(crate) fn detach(&self) {
        self.shared.detached.store(true, Ordering::Relaxed);
    }

    /// The worker has begun to stop: end it if it has not exited within the
    /// grace period.
    pub(crate) fn stopping(&self) {
        self.shared.stopping.notify_one();
    }
}

/// The watchdog thread's work, on its own small runtime, so that it runs
/// whatever the worker's thread is doing. `terminate` is SIGTERM's stream
/// (`None` if it could not be had: the default action, exit, stays).
async fn watch(
    shared: Arc<Shared>,
    mut terminate: Option<tokio::signal::unix::Signal>,
    host: Option<u32>,
    grace: Duration,
    alarm: mpsc::UnboundedSender<Alarm>,
) {
    let host_gone = host_gone(host);
    tokio::pin!(host_gone);
    let mut watching_host = host.is_some();
    let mut deadline: Option<Instant> = None;
    loop {
        let stopping = shared.stopping.notified();
        tokio::select! {
            Some(()) = async { terminate.as_mut()?.recv().await } => {
                let _ = alarm.send(Alarm::Terminate);
                deadline.get_or_insert(Instant::now() + grace);
            }
            () = &mut host_gone, if watching_host => {
                watching_host = false;
                if !shared.detached.load(Ordering::Relaxed) {
                    let _ = alarm.send(Alarm::HostGone);
                    deadline.get_or_insert(Instant::now() + grace);
                }
            }
            () = stopping, if deadline.is_none() => {
                deadline = Some(Instant::now() + grace);
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                report("the worker did not stop within its grace period; ending it");
                super::attach::remove_own_directory();
                std::process::exit(FORCED_EXIT_CODE);
            }
        }
    }
}

/// Resolves once process `host` is gone: on Linux through a pidfd (woken
/// the moment it exits), elsewhere by looking every [`HOST_POLL`].
async fn host_gone(host: Option<u32>) {
    let Some(host) = host else {
        return std::future::pending().await;
    };
    #[cfg(target_os = "linux")]
    {
        let pid = rustix::process::Pid::from_raw(host as i32);
        match pid.map(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()))
        {
            Some(Ok(pidfd)) => {
                // A pidfd becomes readable when its process exits.
                // SAFETY: the AsyncFd owns the pidfd, which stays open and
                // the same descriptor for as long as the AsyncFd lives.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        pidfd,
                        tokio::io::Interest::READABLE,
                    )
                };
                if let Ok(readable) = registered {
                    let _ = readable.readable().await;
                    return;
                }
                // Not pollable here: look, as elsewhere.
            }
            Some(Err(rustix::io::Errno::SRCH)) => return, // gone already
            _ => {}                                       // no pidfds here: look, as elsewhere
        }
    }
    while crate::driver::process::is_running(host) {
        tokio::time::sleep(HOST_POLL).await;
    }
}

/// Says something on stderr, if anyone still reads it (`eprintln!` would
/// panic on a closed pipe, and the host's end closes when it dies).
fn report(what: &str) {
    let _ = writeln!(std::io::stderr(), "isolated-workers: {what}");
}
