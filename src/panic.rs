//! The panic hook: remembers each thread's latest panic message so that it
//! can be reported to the host (by a child worker before it exits, or by the
//! proxy of a thread worker), and prints the panic as std's hook would.
//!
//! In a worker process that is to print backtraces (`RUST_BACKTRACE` set
//! and not `0`, std's rule), printing is what makes a panic slow: resolving
//! the backtrace's symbols takes 100 ms and more. There the hook only
//! captures the backtrace (cheap: symbols are resolved when it is printed)
//! and a thread of its own prints the panic with it, so that the worker
//! reports its panic to the host without waiting for any of that; the
//! worker waits for the printing before it exits ([`finish_printing`]).
//! The hook cannot report the panic itself: the panic may yet be caught.

use std::backtrace::Backtrace;
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::mpsc::{self, Sender};
use std::sync::{Condvar, Mutex, Once, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

static LAST_PANIC: Mutex<Option<HashMap<ThreadId, String>>> = Mutex::new(None);
static INSTALL: Once = Once::new();
/// Where a worker process's hook sends the panics to print, once the first
/// one has started the printing thread.
static PRINTER: OnceLock<Sender<Printout>> = OnceLock::new();
/// How many panics are sent to be printed and not printed yet.
static UNPRINTED: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Installs the hook (once per process), keeping the previous one, which
/// still prints each panic.
pub(crate) fn install_hook() {
    install(false);
}

/// Installs the hook of a worker process (once per process): if backtraces
/// are wanted, a panic is printed by a thread of its own, with a backtrace
/// in std's `Backtrace` format, instead of by the previous hook.
pub(crate) fn install_worker_hook() {
    install(true);
}

fn install(worker_process: bool) {
    INSTALL.call_once(|| {
        // Read once, as std reads it once.
        let style = match std::env::var("RUST_BACKTRACE").as_deref() {
            Ok("0") | Err(_) => None,
            Ok("full") => Some(Style::Full),
            Ok(_) => Some(Style::Short),
        };
        let deferred = style.filter(|_| worker_process);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("Box<dyn Any>");
            let message = match info.location() {
                Some(at) => format!("panicked at {at}: {payload}"),
                None => format!("panicked: {payload}"),
            };
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("<unnamed>");
            LAST_PANIC
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(thread.id(), message);
            match deferred {
                Some(style) => print_later(Printout {
                    // As std's hook words it.
                    header: match info.location() {
                        Some(at) => format!("thread '{name}' panicked at {at}:\n{payload}"),
                        None => format!("thread '{name}' panicked:\n{payload}"),
                    },
                    backtrace: Backtrace::force_capture(),
                    style,
                }),
                None => previous(info),
            }
        }));
    });
}

/// The message of the latest panic on `thread`, if any.
pub(crate) fn take_message(thread: ThreadId) -> Option<String> {
    LAST_PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()?
        .remove(&thread)
}

/// Waits until every panic sent to be printed is printed, or `limit`
/// passes: called before a worker process exits, so that its backtraces
/// are not lost.
pub(crate) fn finish_printing(limit: Duration) {
    let deadline = Instant::now() + limit;
    let (unprinted, printed) = &UNPRINTED;
    let mut unprinted = unprinted.lock().unwrap_or_else(|e| e.into_inner());
    while *unprinted > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        unprinted = printed
            .wait_timeout(unprinted, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// How much of a backtrace to print, as `RUST_BACKTRACE` says.
#[derive(Debug, Clone, Copy)]
enum Style {
    Short,
    Full,
}

/// A panic to print.
struct Printout {
    /// `thread '<name>' panicked at <location>:`, then the message.
    header: String,
    backtrace: Backtrace,
    style: Style,
}

impl Printout {
    fn print(self) {
        // Formatted first, written at once: the slow part (resolving
        // symbols) does not hold stderr, and lines do not interleave.
        let text = match self.style {
            Style::Full => format!("{}\nstack backtrace:\n{:#}", self.header, self.backtrace),
            Style::Short => format!(
                "{}\nstack backtrace:\n{}note: Some details are omitted, \
                 run with `RUST_BACKTRACE=full` for a verbose backtrace.\n",
                self.header, self.backtrace
            ),
        };
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// Hands `printout` to the printing thread, starting it if need be.
fn print_later(printout: Printout) {
    *UNPRINTED.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let printer = PRINTER.get_or_init(|| {
        let (sender, printouts) = mpsc::channel::<Printout>();
        let started = std::thread::Builder::new()
            .name("isolated-workers-panics".into())
            .spawn(move || {
                for printout in printouts {
                    printout.print();
                    printed();
                }
            });
        if let Err(e) = started {
            // Not `eprintln!`: a second panic (a closed stderr) would abort.
            let _ = writeln!(
                std::io::stderr(),
                "isolated-workers: cannot print backtraces: {e}"
            );
        }
        sender
    });
    let sent = printer.send(printout);
    // No printing thread: print here, slow as it is.
    if let Err(mpsc::SendError(printout)) = sent {
        printout.print();
        printed();
    }
}

/// Counts one panic printed.
fn printed() {
    let (unprinted, printed) = &UNPRINTED;
    *unprinted.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    printed.notify_all();
}
