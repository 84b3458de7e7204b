//! Worker modes that misbehave on the wire. A rogue takes its connection
//! to the host from the descriptor it inherits, exactly as a real worker
//! does, and then talks raw bytes over a `std` Unix stream.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use isolated_workers::testing::{
    event_frame, hello_frame, read_frame, reply_frame, take_worker_channel, NAME_ENV, PROTOCOL,
};
use isolated_workers::{ChildProcess, Contract, MessagePack, Serializer};

use super::{Calc, Pong};

/// The file where [`Rogue::RecordsShutdownAndSigterm`] logs what it sees, a
/// line each; read it with [`RogueLog::read`].
pub const ROGUE_LOG_ENV: &str = "ISOLATED_WORKERS_TEST_ROGUE_LOG";

/// How [`Rogue::TruncatedFrame`] exits after cutting its frame short.
pub const TRUNCATED_EXIT_CODE: i32 = 7;

/// What [`Rogue::StrayAndGarbledReplies`] answers to a request never issued.
pub const STRAY_PONG: &str = "stray";

/// A well-delimited frame (body of 9 bytes, header of 4, no descriptors)
/// whose header is not MessagePack: 0xc1 is never valid.
pub const GARBAGE_FRAME: [u8; 13] = [9, 0, 0, 0, 4, 0, 0, 0, 0, 0xc1, 0xc1, 0xc1, 0xc1];

/// How long a rogue that waits to be killed waits before giving up, so
/// that a host which never kills it leaves nothing behind for long.
const LINGER: Duration = Duration::from_secs(30);

/// The ways a worker process can misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rogue {
    /// Greets with the right contract but protocol `PROTOCOL + 1`.
    WrongProtocol,
    /// Greets properly, reads one request, then sends a length prefix of
    /// 0xFFFF_FFF0 and waits to be killed.
    OversizedFrame,
    /// Greets properly, reads one request, then sends a frame with an
    /// undecodable header and waits to be killed.
    GarbageFrame,
    /// Greets properly, reads one request, then sends an Event frame whose
    /// payload is no event of Calc (which declares none), and waits to be
    /// killed.
    GarbledEvent,
    /// Greets properly, reads one request, then writes 10 bytes of a frame
    /// that claims 100 and exits with [`TRUNCATED_EXIT_CODE`].
    TruncatedFrame,
    /// Greets properly, reads one request, answers a request id that was
    /// never issued (with a good Pong, [`STRAY_PONG`]), then answers the
    /// real one with a payload that is not its reply type; then waits for
    /// Shutdown and exits.
    StrayAndGarbledReplies,
    /// Ignores SIGTERM (`SIG_IGN`), greets properly, then never reads and
    /// never exits (until [`LINGER`] has passed): only SIGKILL ends it.
    IgnoresShutdownAndSigterm,
    /// Blocks SIGTERM and logs each one it receives (see [`ROGUE_LOG_ENV`]),
    /// greets properly, then reads frames and logs when Shutdown arrives,
    /// without exiting (until [`LINGER`] has passed): only SIGKILL ends it.
    RecordsShutdownAndSigterm,
}

impl Rogue {
    const ALL: [Rogue; 8] = [
        Rogue::WrongProtocol,
        Rogue::OversizedFrame,
        Rogue::GarbageFrame,
        Rogue::GarbledEvent,
        Rogue::TruncatedFrame,
        Rogue::StrayAndGarbledReplies,
        Rogue::IgnoresShutdownAndSigterm,
        Rogue::RecordsShutdownAndSigterm,
    ];

    /// The worker name this mode is started as.
    pub fn name(self) -> &'static str {
        match self {
            Rogue::WrongProtocol => "rogue-wrong-protocol",
            Rogue::OversizedFrame => "rogue-oversized-frame",
            Rogue::GarbageFrame => "rogue-garbage-frame",
            Rogue::GarbledEvent => "rogue-garbled-event",
            Rogue::TruncatedFrame => "rogue-truncated-frame",
            Rogue::StrayAndGarbledReplies => "rogue-stray-and-garbled-replies",
            Rogue::IgnoresShutdownAndSigterm => "rogue-ignores-shutdown-and-sigterm",
            Rogue::RecordsShutdownAndSigterm => "rogue-records-shutdown-and-sigterm",
        }
    }

    /// This test binary, re-run in this mode.
    pub fn driver(self) -> ChildProcess {
        ChildProcess::current_exe(self.name())
    }

    /// This test binary, re-run in this mode, logging to `log` (see
    /// [`ROGUE_LOG_ENV`]).
    pub fn logging_driver(self, log: &Path) -> ChildProcess {
        self.driver().env(ROGUE_LOG_ENV, log)
    }

    /// Misbehaves as this mode says; never returns.
    fn play(self, host: Host) -> ! {
        match self {
            Rogue::WrongProtocol => {
                let mut stream = host.stream;
                write(&mut stream, &calc_hello("", PROTOCOL + 1));
                linger();
            }
            Rogue::OversizedFrame => {
                let (mut stream, _) = host.first_request();
                write(&mut stream, &0xFFFF_FFF0u32.to_le_bytes());
                linger();
            }
            Rogue::GarbageFrame => {
                let (mut stream, _) = host.first_request();
                write(&mut stream, &GARBAGE_FRAME);
                linger();
            }
            Rogue::GarbledEvent => {
                let (mut stream, _) = host.first_request();
                // MessagePack 42: a number, and Calc has no events at all.
                write(&mut stream, &event_frame(&[0x2a]));
                linger();
            }
            Rogue::TruncatedFrame => {
                let (mut stream, _) = host.first_request();
                write(&mut stream, &100u32.to_le_bytes());
                write(&mut stream, &[0; 10]);
                std::process::exit(TRUNCATED_EXIT_CODE);
            }
            Rogue::StrayAndGarbledReplies => {
                let (mut stream, id) = host.first_request();
                // A well-formed reply, were it to the request.
                let mut stray = BytesMut::new();
                let pong = Pong {
                    text: STRAY_PONG.into(),
                };
                MessagePack::encode(&pong, &mut stray).expect("a Pong encodes");
                write(&mut stream, &reply_frame(id + 1000, &stray));
                // MessagePack 42: a number where the reply is a struct.
                write(&mut stream, &reply_frame(id, &[0x2a]));
                serve_shutdown(stream);
            }
            Rogue::IgnoresShutdownAndSigterm => {
                // libc: rustix sets signal dispositions only in its
                // experimental runtime module.
                // SAFETY: no handler runs; the disposition becomes "ignore",
                // set before this process starts any thread.
                let old = unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                assert_ne!(old, libc::SIG_ERR, "ignoring SIGTERM");
                let stream = host.greet();
                // Never read (Shutdown stays unread), never exit.
                linger_holding(stream);
            }
            Rogue::RecordsShutdownAndSigterm => {
                let started = Instant::now();
                // libc: rustix has `sigprocmask` and `sigwait` only in its
                // experimental runtime module.
                // SAFETY: a set initialized by `sigemptyset` before use.
                let sigterm = unsafe {
                    let mut set = std::mem::zeroed::<libc::sigset_t>();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGTERM);
                    set
                };
                // Blocked here, and so in the thread spawned below, which
                // takes each SIGTERM with sigwait instead of dying of it.
                // SAFETY: a valid set; no old mask asked for.
                let blocked = unsafe {
                    libc::pthread_sigmask(libc::SIG_BLOCK, &sigterm, std::ptr::null_mut())
                };
                assert_eq!(blocked, 0, "blocking SIGTERM");
                let log = log_path();
                let sigterms = log.clone();
                std::thread::spawn(move || loop {
                    let mut taken = 0;
                    // SAFETY: a valid set, and a place for the signal taken.
                    if unsafe { libc::sigwait(&sigterm, &mut taken) } == 0 {
                        append(
                            &sigterms,
                            &format!("sigterm {}", started.elapsed().as_millis()),
                        );
                    }
                });
                let mut stream = host.greet();
                while let Ok((_, header)) = read_frame(&mut stream) {
                    if header.contains("Shutdown") {
                        append(&log, &format!("shutdown {}", started.elapsed().as_millis()));
                    }
                }
                linger_holding(stream);
            }
        }
    }
}

/// What [`Rogue::RecordsShutdownAndSigterm`] logged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RogueLog {
    /// When Shutdown arrived, in ms after the rogue started.
    pub shutdown_at_ms: Option<u64>,
    /// When each SIGTERM arrived, in ms after the rogue started.
    pub sigterms_at_ms: Vec<u64>,
}

impl RogueLog {
    /// Reads the log at `path` (empty if there is none).
    pub fn read(path: &Path) -> Self {
        let mut log = RogueLog::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Some((what, value)) = line.split_once(' ') else {
                continue;
            };
            match what {
                "shutdown" => log.shutdown_at_ms = value.parse().ok(),
                "sigterm" => log.sigterms_at_ms.extend(value.parse::<u64>().ok()),
                _ => {}
            }
        }
        log
    }
}

/// The Hello a Calc worker sends, sent from this process with `token` (a
/// spawned worker's is empty) and `protocol`.
pub fn calc_hello(token: &str, protocol: u32) -> Vec<u8> {
    hello_frame(
        token,
        protocol,
        Calc::NAME,
        Calc::VERSION,
        <MessagePack as Serializer>::NAME,
    )
}

/// Plays the rogue this process was started as, if any.
pub(super) fn enter() {
    let Ok(name) = std::env::var(NAME_ENV) else {
        return;
    };
    if let Some(rogue) = Rogue::ALL.into_iter().find(|r| r.name() == name) {
        rogue.play(Host::from_env());
    }
}

/// The rogue's side of the connection its host spawned it with.
struct Host {
    stream: UnixStream,
}

impl Host {
    /// Takes the connection as a real worker does.
    fn from_env() -> Self {
        let stream = take_worker_channel().expect("a spawned worker has its connection");
        Self { stream }
    }

    /// Sends a good Hello.
    fn greet(self) -> UnixStream {
        let mut stream = self.stream;
        write(&mut stream, &calc_hello("", PROTOCOL));
        stream
    }

    /// Completes a good handshake and reads the first request: the
    /// connection and the request's id.
    fn first_request(self) -> (UnixStream, u64) {
        let mut stream = self.greet();
        let (id, header) = read_frame(&mut stream).expect("the host sends a request");
        let id = id.unwrap_or_else(|| panic!("expected a request, got {header}"));
        (stream, id)
    }
}

/// Where to log (see [`ROGUE_LOG_ENV`]).
fn log_path() -> PathBuf {
    std::env::var_os(ROGUE_LOG_ENV)
        .expect("the test says where to log")
        .into()
}

fn write(stream: &mut UnixStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("writing to the host");
}

/// Reads frames until the host asks to shut down (or hangs up), then exits.
fn serve_shutdown(mut stream: UnixStream) -> ! {
    while let Ok((_, header)) = read_frame(&mut stream) {
        if header.contains("Shutdown") {
            break;
        }
    }
    std::process::exit(0);
}

/// Appends `line` to the file at `path`, in one write.
fn append(path: &Path, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("opening the rogue log");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("writing the rogue log");
}

/// Waits to be killed by the host, keeping the connection open.
fn linger_holding(stream: UnixStream) -> ! {
    let _open = stream;
    linger()
}

/// Waits to be killed by the host.
fn linger() -> ! {
    std::thread::sleep(LINGER);
    std::process::exit(0);
}
