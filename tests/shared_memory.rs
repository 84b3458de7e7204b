//! `SharedBytes` end to end: bytes in shared memory crossing to a real
//! child worker as descriptors (sizes 0, 1 and 1 MiB, many in one
//! message, made by the worker), moved to a thread worker, through another
//! serializer; and hostile workers whose shared memory or descriptors the
//! host must refuse with a clear error, unharmed.

mod support;

use std::io::Write;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use actix::prelude::*;
use isolated_workers::testing::{
    hello_frame, read_frame, reply_frame_announcing, take_worker_channel, NAME_ENV, PROTOCOL,
};
use isolated_workers::{
    ChildProcess, Close, Contract, MessagePack, Serializer, SharedBytes, Status, Thread, Worker,
    WorkerError, WorkerState,
};
use libtest_mimic::Failed;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::{Deserialize, Serialize};
use support::*;

/// Echoes shared bytes, says how it received them, makes some.
mod blobs {
    use super::*;
    use isolated_workers::Json;

    /// Sends the bytes back.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Echo(pub SharedBytes);

    /// Sends the bytes back, in JSON.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct JsonEcho(pub SharedBytes);

    /// Sends each back.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct EchoMany(pub Vec<SharedBytes>);

    /// Says how the worker received the bytes.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Inspect(pub SharedBytes);

    /// What [`Inspect`] saw.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct Seen {
        pub len: usize,
        pub shared: bool,
        pub sum: u64,
    }

    /// Makes `len` bytes of `byte` in shared memory.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Make {
        pub len: usize,
        pub byte: u8,
    }

    isolated_workers::contract! {
        /// Shared bytes both ways.
        pub Blobs {
            Echo => SharedBytes,
            EchoMany => Vec<SharedBytes>,
            Inspect => Seen,
            Make => SharedBytes,
        }
    }

    isolated_workers::contract! {
        /// [`Blobs`]'s `Echo`, in JSON.
        pub JsonBlobs (serializer = Json) {
            JsonEcho => SharedBytes,
        }
    }

    /// Serves [`Blobs`] and [`JsonBlobs`].
    #[derive(Debug, Default)]
    pub struct BlobWorker;

    impl Actor for BlobWorker {
        type Context = Context<Self>;
    }

    impl Handler<Echo> for BlobWorker {
        type Result = Result<SharedBytes, WorkerError>;
        fn handle(&mut self, Echo(bytes): Echo, _: &mut Context<Self>) -> Self::Result {
            Ok(bytes)
        }
    }

    impl Handler<JsonEcho> for BlobWorker {
        type Result = Result<SharedBytes, WorkerError>;
        fn handle(&mut self, JsonEcho(bytes): JsonEcho, _: &mut Context<Self>) -> Self::Result {
            Ok(bytes)
        }
    }

    impl Handler<EchoMany> for BlobWorker {
        type Result = Result<Vec<SharedBytes>, WorkerError>;
        fn handle(&mut self, EchoMany(all): EchoMany, _: &mut Context<Self>) -> Self::Result {
            Ok(all)
        }
    }

    impl Handler<Inspect> for BlobWorker {
        type Result = Result<Seen, WorkerError>;
        fn handle(&mut self, Inspect(bytes): Inspect, _: &mut Context<Self>) -> Self::Result {
            Ok(seen(&bytes))
        }
    }

    impl Handler<Make> for BlobWorker {
        type Result = Result<SharedBytes, WorkerError>;
        fn handle(&mut self, make: Make, _: &mut Context<Self>) -> Self::Result {
            Ok(SharedBytes::with_len(make.len, |buf| buf.fill(make.byte)))
        }
    }

    /// What anyone sees of `bytes`.
    pub fn seen(bytes: &SharedBytes) -> Seen {
        Seen {
            len: bytes.len(),
            shared: bytes.is_shared(),
            sum: bytes.iter().map(|&b| u64::from(b)).sum(),
        }
    }
}

use blobs::*;

/// Bytes of length `len` that differ from one position to the next.
fn pattern(len: usize) -> SharedBytes {
    SharedBytes::with_len(len, |buf| {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
    })
}

/// The ways a worker can misbehave with descriptors.
#[derive(Debug, Clone, Copy)]
enum Rogue {
    /// Replies with a memfd it did not seal.
    Unsealed,
    /// Replies with a pipe as the shared memory.
    Pipe,
    /// Replies with a sealed memfd larger than the frame limit.
    Huge,
    /// Sends a descriptor with a frame that announces none.
    MoreThanAnnounced,
    /// Announces two descriptors and sends one.
    FewerThanAnnounced,
}

impl Rogue {
    const ALL: [Rogue; 5] = [
        Rogue::Unsealed,
        Rogue::Pipe,
        Rogue::Huge,
        Rogue::MoreThanAnnounced,
        Rogue::FewerThanAnnounced,
    ];

    fn name(self) -> String {
        format!("rogue-shared-{self:?}")
    }

    /// Greets as a Blobs worker, reads one request, answers it as this
    /// mode says, then reads until the host hangs up or says Shutdown.
    fn play(self) -> ! {
        let mut stream = take_worker_channel().expect("a spawned worker has its connection");
        let hello = hello_frame(
            "",
            PROTOCOL,
            Blobs::NAME,
            Blobs::VERSION,
            <MessagePack as Serializer>::NAME,
        );
        stream.write_all(&hello).expect("greeting the host");
        let (id, header) = read_frame(&mut stream).expect("the host sends a request");
        let id = id.unwrap_or_else(|| panic!("expected a request, got {header}"));
        // What `SharedBytes` is serialized as: descriptor #0 of the frame.
        #[derive(Serialize)]
        #[serde(rename = "SharedBytes")]
        enum Form {
            #[allow(dead_code)]
            Bytes(Vec<u8>),
            Shared(u32),
        }
        let mut payload = bytes::BytesMut::new();
        MessagePack::encode(&Form::Shared(0), &mut payload).expect("encodable");
        let (announced, sent): (usize, Vec<OwnedFd>) = match self {
            Rogue::Unsealed => (1, vec![memfd(16, false)]),
            Rogue::Pipe => (1, vec![std::io::pipe().expect("a pipe").0.into()]),
            Rogue::Huge => (1, vec![memfd(64 << 20, true)]),
            Rogue::MoreThanAnnounced => (0, vec![memfd(16, true)]),
            Rogue::FewerThanAnnounced => (2, vec![memfd(16, true)]),
        };
        let frame = reply_frame_announcing(id, &payload, announced);
        let fds: Vec<_> = sent.iter().map(AsFd::as_fd).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let frame = [std::io::IoSlice::new(&frame)];
        rustix::net::sendmsg(&stream, &frame, &mut control, SendFlags::empty())
            .expect("sending the reply");
        serve_until_shutdown(stream)
    }
}

/// A memfd of `len` bytes, sealed as a sender should if `sealed`.
fn memfd(len: u64, sealed: bool) -> OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let fd = rustix::fs::memfd_create("rogue", flags).expect("a memfd");
    rustix::fs::ftruncate(&fd, len).expect("sized");
    if sealed {
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE;
        rustix::fs::fcntl_add_seals(&fd, seals).expect("sealed");
    }
    fd
}

/// Reads frames until the host hangs up or asks to shut down, then exits.
fn serve_until_shutdown(mut stream: UnixStream) -> ! {
    while let Ok((_, header)) = read_frame(&mut stream) {
        if header.contains("Shutdown") {
            break;
        }
    }
    std::process::exit(0);
}

fn main() {
    enter_workers();
    isolated_workers::worker_entry::<Blobs, _>("blobs", BlobWorker::default);
    isolated_workers::worker_entry::<JsonBlobs, _>("json-blobs", BlobWorker::default);
    if let Ok(name) = std::env::var(NAME_ENV) {
        if let Some(rogue) = Rogue::ALL.into_iter().find(|r| r.name() == name) {
            rogue.play();
        }
    }
    let mut trials = vec![
        actix_test(
            "shared_bytes_of_0_1_and_1mib_cross_to_a_child_and_back_intact",
            sizes_cross_intact,
        ),
        actix_test(
            "many_shared_bytes_in_one_message_cross_intact_64_as_descriptors",
            many_in_one_message,
        ),
        actix_test(
            "a_child_worker_makes_shared_bytes_the_host_maps",
            the_worker_makes_them,
        ),
        actix_test(
            "a_thread_worker_gets_shared_bytes_moved",
            a_thread_worker_gets_them_moved,
        ),
        actix_test(
            "shared_bytes_cross_with_another_serializer",
            another_serializer,
        ),
    ];
    for rogue in Rogue::ALL {
        trials.push(actix_test(
            &format!("a_worker_that_sends_{rogue:?}_descriptors_gets_a_clear_error"),
            move || refused(rogue),
        ));
    }
    run(trials);
}

async fn spawn_blobs() -> Result<Addr<Worker<Blobs>>, Failed> {
    Worker::<Blobs>::spawn(ChildProcess::current_exe("blobs"))
        .await
        .map_err(fail)
}

async fn sizes_cross_intact() -> Result<(), Failed> {
    let worker = spawn_blobs().await?;
    for len in [0, 1, 1 << 20] {
        let sent = pattern(len);
        assert_eq!(sent.is_shared(), len > 0, "made in shared memory");
        let seen = worker.send(Inspect(sent.clone())).await?.map_err(fail)?;
        assert_eq!(
            seen,
            Seen {
                shared: len > 0,
                ..blobs::seen(&sent)
            },
            "{len} bytes, in the worker"
        );
        let back = worker.send(Echo(sent.clone())).await?.map_err(fail)?;
        assert_eq!(back, sent, "{len} bytes, back");
        assert_eq!(
            back.is_shared(),
            len > 0,
            "{len} bytes mapped again on the way back"
        );
    }
    close(&worker).await
}

async fn many_in_one_message() -> Result<(), Failed> {
    let worker = spawn_blobs().await?;
    let sent: Vec<SharedBytes> = (1..=100).map(|len| pattern(len * 100)).collect();
    let back = worker.send(EchoMany(sent.clone())).await?.map_err(fail)?;
    assert_eq!(back, sent);
    let shared = back.iter().filter(|bytes| bytes.is_shared()).count();
    assert_eq!(
        shared, 64,
        "a frame carries 64 descriptors; the rest go as bytes"
    );
    close(&worker).await
}

async fn the_worker_makes_them() -> Result<(), Failed> {
    let worker = spawn_blobs().await?;
    let made = worker
        .send(Make {
            len: 1 << 20,
            byte: 7,
        })
        .await?
        .map_err(fail)?;
    assert!(made.is_shared());
    assert_eq!(made.len(), 1 << 20);
    assert!(made.iter().all(|&b| b == 7));
    close(&worker).await
}

async fn a_thread_worker_gets_them_moved() -> Result<(), Failed> {
    let worker = Worker::<Blobs, _>::spawn(Thread::new(BlobWorker::default))
        .await
        .map_err(fail)?;
    let sent = pattern(1 << 20);
    let seen = worker.send(Inspect(sent.clone())).await?.map_err(fail)?;
    assert_eq!(seen, blobs::seen(&sent));
    let back = worker.send(Echo(sent.clone())).await?.map_err(fail)?;
    assert_eq!(back, sent);
    assert_eq!(back.as_ptr(), sent.as_ptr(), "the same mapping, moved");
    worker.send(Close).await.map_err(fail)
}

async fn another_serializer() -> Result<(), Failed> {
    let worker = Worker::<JsonBlobs>::spawn(ChildProcess::current_exe("json-blobs"))
        .await
        .map_err(fail)?;
    let sent = pattern(100_000);
    let back = worker.send(JsonEcho(sent.clone())).await?.map_err(fail)?;
    assert_eq!(back, sent);
    assert!(back.is_shared(), "a descriptor in JSON too");
    worker.send(Close).await.map_err(fail)
}

async fn refused(rogue: Rogue) -> Result<(), Failed> {
    let worker = Worker::<Blobs>::spawn(ChildProcess::current_exe(rogue.name()))
        .await
        .map_err(fail)?;
    let outcome = worker.send(Echo(pattern(10))).await?;
    let error = expect_error(outcome)?;
    let text = format!("{error:?}");
    match rogue {
        Rogue::Unsealed | Rogue::Pipe | Rogue::Huge => {
            let why = match rogue {
                Rogue::Unsealed => "not sealed",
                Rogue::Pipe => "not a memfd",
                _ => "over the limit",
            };
            assert!(
                matches!(&error, WorkerError::UndecodableReply { detail, .. } if detail.contains(why)),
                "{rogue:?}: {text}"
            );
            // The connection is fine: only that reply was refused.
            let status = worker.send(Status).await?;
            assert_eq!(status.state, WorkerState::Running, "{rogue:?}");
        }
        Rogue::MoreThanAnnounced | Rogue::FewerThanAnnounced => {
            assert!(
                matches!(&error, WorkerError::Crashed { message: Some(m), .. } if m.contains("descriptors")),
                "{rogue:?}: {text}"
            );
        }
    }
    close(&worker).await
}
