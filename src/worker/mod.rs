//! The worker side: [`worker_entry`] turns a process started by
//! [`ChildProcess`](crate::ChildProcess) into a worker serving a plain actix
//! actor, dispatching each request by its wire name.

use std::ffi::OsStr;
use std::time::Duration;

use actix::prelude::*;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::middleware::Middlewares;
use crate::panic;
use crate::socket::detach::follow_host;
use crate::socket::env;
use crate::socket::read_mark::ReadMark;
use crate::wire::envelope::Hello;

mod cancellable;
pub(crate) mod events;
mod exit;
mod forward;
pub(crate) mod inbox;
mod reattach;
pub(crate) mod routes;
mod server;
mod watchdog;

pub use cancellable::Cancellable;
pub use events::{EmitError, Events, EVENT_BACKLOG};
pub use routes::{Routes, ServedBy};

/// Runs worker `name` if this process was started as that worker, and
/// never returns then; returns at once otherwise. Call it first thing in
/// `main`, once per kind of worker the binary can be.
///
/// The worker is the actor `factory` makes, serving contract `C`: it
/// implements `Handler<M>` for each message `M` of `C`, returning
/// `Result<M::Reply, WorkerError>`. The worker exits when the host closes
/// it, when the host goes away, or after reporting a panic to the host.
///
/// # Panics
///
/// Inside a running async runtime (`#[actix_web::main]`, `#[actix::main]`,
/// `#[tokio::main]`), in the host as in a worker, with a message naming
/// the fix: a worker starts a runtime of its own, which cannot start
/// inside another. Call `worker_entry` from a plain `fn main`, then start
/// the System (`actix_web::rt::System::new().block_on(..)`).
///
/// A panic that ends the actor is reported before it is printed: with
/// `RUST_BACKTRACE` set (and not `0`), the worker prints the panic and its
/// backtrace (std's `Backtrace` format) from a thread of its own, so that
/// the host does not wait for symbols to be resolved, and waits for that
/// printing before it exits, up to
/// [`close_grace`](crate::WorkerOptions::close_grace) (the host kills the
/// worker after that long).
///
/// ```no_run
/// use actix::prelude::*;
/// use isolated_workers::{RemoteError, WorkerError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Divide { a: f64, b: f64 }
/// # isolated_workers::contract! { Calc { Divide => f64 } }
///
/// #[derive(Default)]
/// struct CalcWorker;
/// impl Actor for CalcWorker { type Context = Context<Self>; }
/// impl Handler<Divide> for CalcWorker {
///     type Result = Result<f64, WorkerError>;
///     fn handle(&mut self, d: Divide, _: &mut Context<Self>) -> Self::Result {
///         if d.b == 0.0 {
///             return Err(RemoteError::new("DivideByZero", "cannot divide by zero").into());
///         }
///         Ok(d.a / d.b)
///     }
/// }
///
/// fn main() {
///     isolated_workers::worker_entry::<Calc, _>("calc", CalcWorker::default);
///     // ... the host's own code ...
/// }
/// ```
pub fn worker_entry<C, A>(name: &str, factory: impl FnOnce() -> A)
where
    C: ServedBy<A>,
    A: Actor<Context = Context<A>>,
{
    worker_entry_with::<C, A>(name, factory, Middlewares::new());
}

/// [`worker_entry`] with the worker side's [middleware](crate::middleware):
/// every request the worker receives, and its reply, passes `middleware`.
///
/// ```no_run
/// # use actix::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # use isolated_workers::WorkerError;
/// # #[derive(Serialize, Deserialize)] struct Ping;
/// # isolated_workers::contract! { Calc { Ping => () } }
/// # #[derive(Default)] struct CalcWorker;
/// # impl Actor for CalcWorker { type Context = Context<Self>; }
/// # impl Handler<Ping> for CalcWorker { type Result = Result<(), WorkerError>;
/// #     fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result { Ok(()) } }
/// use isolated_workers::middleware::{Middleware, Middlewares, Passage};
///
/// struct LogIn;
/// impl Middleware for LogIn {
///     fn on_request(&self, request: &mut Passage<'_>) -> Result<(), isolated_workers::RemoteError> {
///         eprintln!("[WORKER IN] {} #{}", request.name(), request.id());
///         Ok(())
///     }
/// }
///
/// fn main() {
///     let middleware = Middlewares::new().layer(LogIn);
///     isolated_workers::worker::worker_entry_with::<Calc, _>("calc", CalcWorker::default, middleware);
///     // ... the host's own code ...
/// }
/// ```
pub fn worker_entry_with<C, A>(name: &str, factory: impl FnOnce() -> A, middleware: Middlewares)
where
    C: ServedBy<A>,
    A: Actor<Context = Context<A>>,
{
    // Checked in the host too, where it would otherwise pass unnoticed
    // until the first worker started and died of it.
    refuse_inside_runtime(name);
    if std::env::var_os(env::NAME).as_deref() != Some(OsStr::new(name)) {
        return;
    }
    if let Some(host) = env_number(env::HOST_PID) {
        // Spawned without a fork hook: the parent-death signal is ours to
        // set, and the host may have died before it took effect.
        let host = u32::try_from(host).unwrap_or(u32::MAX);
        if follow_host(host).is_err() {
            std::process::exit(143);
        }
    }
    let channel = take_channel();
    let defaults = crate::WorkerOptions::default();
    let max_frame_len =
        env_number(env::MAX_FRAME).unwrap_or(defaults.max_frame_len as u64) as usize;
    let grace = env_number(env::GRACE_MS).map_or(defaults.close_grace, Duration::from_millis);
    let records = std::env::var(env::TRACE)
        .ok()
        .and_then(|level| forward::install(&level));
    let read_mark = match (std::env::var(env::READ_MARK).ok(), &channel) {
        (Some(on), Ok(channel)) if on == env::MARK_ON_CHANNEL => receive_mark(channel),
        (Some(fd), _) => ReadMark::inherited(&fd),
        (None, _) => None,
    };
    let channel = channel.and_then(|channel| {
        channel.set_nonblocking(true)?;
        Ok(channel)
    });
    // Nothing the worker starts (code it runs, workers it spawns) mistakes
    // itself for this worker.
    for key in [
        env::NAME,
        env::CHANNEL_FD,
        env::MAX_FRAME,
        env::GRACE_MS,
        env::TRACE,
        env::READ_MARK,
        env::HOST_PID,
    ] {
        std::env::remove_var(key);
    }
    let channel = match channel {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("isolated-workers: worker `{name}` has no connection to its host: {e}");
            std::process::exit(1);
        }
    };
    panic::install_worker_hook();
    name_process(name);
    if let Err(e) = watchdog::install(grace) {
        // Served all the same: only a worker whose thread is blocked when
        // it should stop outlives its grace period then.
        eprintln!("isolated-workers: worker `{name}` has no deadline to stop by: {e}");
    }
    let routes = C::routes();
    let system = System::new();
    let served = system.block_on(async move {
        let (reader, writer) = crate::wire::channel::channel(channel)?;
        let served = Served {
            reader: reader.into(),
            writer: writer.into(),
            settings: server::Settings {
                ending: exit::Ending::Process { grace },
                records,
                read_mark,
                middleware,
                max_frame_len,
            },
        };
        start_server::<C, A>(served, routes, factory);
        Ok::<_, std::io::Error>(())
    });
    if let Err(e) = served {
        eprintln!("isolated-workers: worker `{name}` could not reach its host: {e}");
        std::process::exit(1);
    }
    let code = system.run_with_code().unwrap_or(1);
    // A worker that listened for its host leaves no directory behind; a
    // living host removes it too: whoever comes second finds nothing.
    watchdog::remove_attach_socket();
    // A panic is reported before its backtrace is printed; the host gives
    // the worker its grace to finish printing.
    panic::finish_printing(grace);
    std::process::exit(code);
}

/// Panics, naming the fix, when called inside a running tokio runtime
/// (`#[actix_web::main]`, `#[actix::main]`, `#[tokio::main]`): a worker
/// process starts an actix System of its own, which tokio cannot start
/// inside another, so every worker would die at start.
fn refuse_inside_runtime(name: &str) {
    if tokio::runtime::Handle::try_current().is_ok() {
        panic!(
            "isolated_workers::worker_entry(\"{name}\") was called inside a running async runtime \
             (`#[actix_web::main]`, `#[actix::main]` or `#[tokio::main]`), where every worker \
             would fail to start its own. Call it first thing in a plain `fn main`, then start \
             the runtime:

    fn main() -> std::io::Result<()> {{
        isolated_workers::worker_entry::<MyContract, _>(\"{name}\", MyWorker::default);
        actix_web::rt::System::new().block_on(async {{
            // ... HttpServer::new(..).bind(..)?.run().await
            Ok(())
        }})
    }}
"
        );
    }
}

/// Takes the worker's end of its connection to the host: the descriptor
/// the host passed down (see [`env::CHANNEL_FD`]), checked to be a socket,
/// and made close-on-exec again so that nothing this worker starts holds
/// the host's connection open.
/// The worker's end of its channel to the host, in blocking mode: the
/// descriptor named by the environment, checked to be a socket. Descriptor 0
/// (a worker spawned without a fork hook gets its end as stdin) is moved
/// above stdio, and stdin becomes `/dev/null`.
pub(crate) fn take_channel() -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd};
    let fd = env_number(env::CHANNEL_FD)
        .and_then(|fd| std::os::fd::RawFd::try_from(fd).ok())
        .filter(|fd| *fd == 0 || *fd > 2)
        .ok_or_else(|| std::io::Error::other(format!("{} is not set", env::CHANNEL_FD)))?;
    // SAFETY: only borrowed to look at it; nothing is owned until the
    // descriptor is known to be an open socket.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = rustix::fs::fstat(borrowed)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} is not a socket"
        )));
    }
    let fd = if fd == 0 {
        let moved = rustix::io::fcntl_dupfd_cloexec(borrowed, 3)?;
        rustix::stdio::dup2_stdin(std::fs::File::open("/dev/null")?)?;
        moved.into_raw_fd()
    } else {
        rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)?;
        fd
    };
    // SAFETY: the descriptor is open, is a socket, and was handed to this
    // process for this use alone; it is taken once (the variable naming it
    // is removed from the environment right after).
    Ok(unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) })
}

/// The read mark the host sent as the channel's first message (one byte,
/// with the mark's descriptor attached); `None` if none came.
pub(crate) fn receive_mark(channel: &std::os::unix::net::UnixStream) -> Option<ReadMark> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    use std::os::fd::{AsRawFd, IntoRawFd};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let received = recvmsg(channel, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).ok()?;
    // Truncated: not the one descriptor the host sends. (Those that came
    // are closed with `control`.)
    if received.flags.contains(ReturnFlags::CTRUNC) {
        return None;
    }
    let fd = control.drain().find_map(|message| match message {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    })?;
    let mark = ReadMark::inherited_fd(fd.as_raw_fd())?;
    // Taken (and closed) by the mark; dropped with `fd` otherwise, above.
    let _ = fd.into_raw_fd();
    Some(mark)
}

/// Names this process after worker `name` (`iw:<name>`, at most the 15
/// bytes the kernel keeps), as `ps` and `top` show it, so that workers are
/// told apart from their host and from each other. Linux only; best effort.
///
/// Written to `/proc/self/comm`, which names the process (its main thread)
/// whichever thread writes: `prctl(PR_SET_NAME)` names the calling thread
/// only, and a worker in a test binary runs on a thread of libtest's.
/// argv is left as it is: a program may read its own (e.g. to dispatch on
/// argv\[0\]).
fn name_process(name: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let mut comm = format!("iw:{name}");
    let mut end = comm.len().min(15);
    while !comm.is_char_boundary(end) {
        end -= 1;
    }
    comm.truncate(end);
    if let Err(e) = std::fs::write("/proc/self/comm", comm) {
        tracing::debug!("could not name the worker process: {e}");
    }
}

fn env_number(key: &str) -> Option<u64> {
    std::env::var(key).ok()?.parse().ok()
}

/// Serves `actor` for contract `C` over any byte stream, on the current
/// arbiter: the worker side of a custom [`Driver`](crate::Driver) whose
/// host side is [`Connection::stream`](crate::driver::Connection::stream).
/// Serving ends when the host closes the stream or sends `Close`; a panic
/// in the actor is reported to the host, which resolves its requests
/// `Crashed`.
///
/// The actor is made before this is called, so [`Events::current`] is
/// available from its `started` hook and its handlers, not while it is
/// made.
///
/// Of `options`, only the frame limit applies here (the rest shape the
/// host's proxy). The worker side runs no middleware; see
/// [`serve_io_with`].
///
/// Must be called inside an actix System.
pub fn serve_io<C, A, T>(io: T, actor: A, options: &crate::WorkerOptions)
where
    C: ServedBy<A>,
    A: Actor<Context = Context<A>>,
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    serve_io_with::<C, A, T>(io, actor, options, Middlewares::new());
}

/// [`serve_io`] with the worker side's [middleware](crate::middleware).
///
/// Must be called inside an actix System.
pub fn serve_io_with<C, A, T>(
    io: T,
    actor: A,
    options: &crate::WorkerOptions,
    middleware: Middlewares,
) where
    C: ServedBy<A>,
    A: Actor<Context = Context<A>>,
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    let reader: Box<dyn AsyncRead + Unpin> = Box::new(reader);
    let writer: Box<dyn AsyncWrite + Unpin> = Box::new(writer);
    let served = Served {
        reader: reader.into(),
        writer: writer.into(),
        settings: server::Settings {
            ending: exit::Ending::InProcess,
            records: None,
            read_mark: None,
            middleware,
            max_frame_len: options.max_frame_len,
        },
    };
    start_server::<C, A>(served, C::routes(), move || actor);
}

/// A connection to serve, and how.
struct Served {
    reader: crate::wire::stream::ReadEnd,
    writer: crate::wire::stream::WriteEnd,
    settings: server::Settings,
}

/// Makes the worker's actor with `factory` and serves it on `served`.
fn start_server<C, A>(served: Served, routes: Routes<A, C::Serializer>, factory: impl FnOnce() -> A)
where
    C: ServedBy<A>,
    A: Actor<Context = Context<A>>,
{
    // The actor's events handle is current while it is made and whenever
    // its context runs (its hooks, its handlers).
    let (events, outbox) = events::Events::<C>::encoded(served.settings.max_frame_len);
    let scope = events::Scope::new(events);
    let actor = scope.enter(factory);
    // The server runs the actor's context itself, and learns when it has
    // stopped (its `stopped` hook done) or panicked, even while no request
    // is in flight.
    let mut actor_context = Context::<A>::new();
    let inbox = inbox::Inbox::open_polled_by_caller(&mut actor_context);
    let actor_task = Box::pin(scope.around(actor_context.into_future(actor)));
    let Served {
        reader,
        writer,
        settings,
    } = served;
    let hello = Hello::ours::<C>(String::new());
    let server = server::Server::new(inbox, routes, hello, outbox, settings);
    server::Server::create(move |ctx| server.run(reader, writer, actor_task, ctx));
}
