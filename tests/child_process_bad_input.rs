//! Hostile or broken bytes on a worker's connection: a worker that speaks
//! another protocol version or breaks the framing, a host whose contract
//! has drifted from the worker's, and replies the worker cannot send (too
//! large, or unencodable). (Peers other than the host's
//! worker have nothing to connect to at spawn; on the attach socket a
//! worker makes when asked to wait for its host, see
//! `child_process_reconnect.rs`.)

mod support;

use std::time::{Duration, Instant};

use isolated_workers::testing::PROTOCOL;
use isolated_workers::{
    CrashReason, HandshakeError, ProtocolFailure, SpawnError, Worker, WorkerError, WorkerOptions,
    WorkerState,
};
use libtest_mimic::Failed;
use support::rogue::{Rogue, TRUNCATED_EXIT_CODE};
use support::*;

/// A contract whose one reply the worker cannot encode.
mod unencodable {
    use actix::prelude::*;
    use isolated_workers::WorkerError;
    use serde::{Deserialize, Serialize, Serializer};

    /// The name this worker is started under.
    pub const WORKER: &str = "unencodable";

    /// Asks for an [`Opaque`].
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Fetch;

    /// A reply whose encoding always fails.
    #[derive(Debug, Clone, Deserialize)]
    pub struct Opaque;

    impl Serialize for Opaque {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("an opaque value has no encoding"))
        }
    }

    isolated_workers::contract! {
        /// One message, whose reply cannot be sent.
        pub Unencodable {
            Fetch => Opaque,
        }
    }

    /// Replies with an [`Opaque`].
    #[derive(Debug, Default)]
    pub struct OpaqueWorker;

    impl Actor for OpaqueWorker {
        type Context = Context<Self>;
    }

    impl Handler<Fetch> for OpaqueWorker {
        type Result = Result<Opaque, WorkerError>;
        fn handle(&mut self, _: Fetch, _: &mut Context<Self>) -> Self::Result {
            Ok(Opaque)
        }
    }
}

fn main() {
    enter_workers();
    isolated_workers::worker_entry::<unencodable::Unencodable, _>(
        unencodable::WORKER,
        unencodable::OpaqueWorker::default,
    );
    run(vec![
        actix_test(
            "a_worker_speaking_another_protocol_version_fails_the_handshake",
            a_worker_speaking_another_protocol_version_fails_the_handshake,
        ),
        actix_test(
            "an_oversized_length_prefix_crashes_the_request_promptly_and_kills_the_worker",
            an_oversized_length_prefix_crashes_the_request_promptly_and_kills_the_worker,
        ),
        actix_test(
            "an_undecodable_frame_is_a_protocol_error_that_kills_the_worker",
            an_undecodable_frame_is_a_protocol_error_that_kills_the_worker,
        ),
        actix_test(
            "an_undecodable_event_is_a_protocol_error_that_kills_the_worker",
            an_undecodable_event_is_a_protocol_error_that_kills_the_worker,
        ),
        actix_test(
            "a_frame_cut_short_by_the_worker_exiting_reports_its_exit_code",
            a_frame_cut_short_by_the_worker_exiting_reports_its_exit_code,
        ),
        actix_test(
            "a_stray_reply_is_ignored_and_an_undecodable_reply_is_a_codec_error",
            a_stray_reply_is_ignored_and_an_undecodable_reply_is_a_codec_error,
        ),
        actix_test(
            "a_message_the_worker_lacks_is_answered_unknown_message_and_the_worker_serves_on",
            a_message_the_worker_lacks_is_answered_unknown_message_and_the_worker_serves_on,
        ),
        actix_test(
            "a_payload_of_the_wrong_type_is_answered_undecodable_and_the_worker_serves_on",
            a_payload_of_the_wrong_type_is_answered_undecodable_and_the_worker_serves_on,
        ),
        actix_test(
            "a_reply_over_the_frame_limit_is_answered_reply_too_large_and_the_worker_serves_on",
            a_reply_over_the_frame_limit_is_answered_reply_too_large_and_the_worker_serves_on,
        ),
        actix_test(
            "a_reply_the_worker_cannot_encode_is_answered_reply_unencodable",
            a_reply_the_worker_cannot_encode_is_answered_reply_unencodable,
        ),
    ]);
}

/// Short enough that a request sent to the wrong peer fails the test
/// quickly instead of hanging it.
fn impatient() -> WorkerOptions {
    WorkerOptions::default().request_timeout(Duration::from_secs(10))
}

async fn spawn_rogue(rogue: Rogue) -> Result<actix::Addr<Worker<Calc>>, Failed> {
    Worker::<Calc>::spawn_with(rogue.driver(), impatient())
        .await
        .map_err(fail)
}

async fn a_worker_speaking_another_protocol_version_fails_the_handshake() -> Result<(), Failed> {
    let err = spawn_error::<Calc>(Rogue::WrongProtocol.driver(), impatient()).await?;
    let SpawnError::Handshake(HandshakeError::Protocol { worker, host }) = &err else {
        return Err(format!("expected a protocol mismatch, got {err:?}").into());
    };
    assert_eq!((*worker, *host), (PROTOCOL + 1, PROTOCOL));
    assert_eq!(
        err.to_string(),
        format!(
            "handshake failed: the worker speaks protocol version {}, the host {PROTOCOL}",
            PROTOCOL + 1
        ),
        "names both versions"
    );
    Ok(())
}

/// Sends one request to `rogue`, expecting it to crash the worker; checks
/// that it resolved within `limit` and the child is gone; returns the reason
/// and message.
async fn crash_on_first_request(
    rogue: Rogue,
    limit: Duration,
) -> Result<(CrashReason, Option<String>), Failed> {
    let worker = spawn_rogue(rogue).await?;
    let pid = pid_of(&worker).await?;
    let started = Instant::now();
    let err = refused(&worker, ping("hi")).await?;
    let took = started.elapsed();
    let WorkerError::Crashed {
        reason, message, ..
    } = err
    else {
        return Err(format!("expected a crash, got {err:?}").into());
    };
    assert!(took < limit, "the crash was reported after {took:?}");
    assert!(!process_exists(pid), "child {pid} is gone");
    assert!(matches!(
        status(&worker).await?.state,
        WorkerState::Crashed { .. }
    ));
    close(&worker).await?;
    Ok((reason, message))
}

async fn an_oversized_length_prefix_crashes_the_request_promptly_and_kills_the_worker(
) -> Result<(), Failed> {
    let (reason, message) =
        crash_on_first_request(Rogue::OversizedFrame, Duration::from_secs(1)).await?;
    assert_eq!(reason, CrashReason::Signal(9), "the host killed the worker");
    let limit = WorkerOptions::default().max_frame_len;
    let expected = format!(
        "{} bytes is over the limit of {limit} bytes",
        0xFFFF_FFF0u32
    );
    assert!(
        message.as_deref().is_some_and(|m| m.contains(&expected)),
        "{message:?}"
    );
    Ok(())
}

/// Sends one request to `rogue`, expecting the host to kill it for a
/// protocol error whose message says `what`.
async fn killed_for_a_protocol_error(rogue: Rogue, what: &str) -> Result<(), Failed> {
    let (reason, message) = crash_on_first_request(rogue, Duration::from_secs(5)).await?;
    assert_eq!(reason, CrashReason::Signal(9), "the host killed the worker");
    assert!(
        message.as_deref().is_some_and(|m| m.contains(what)),
        "{message:?}"
    );
    Ok(())
}

async fn an_undecodable_frame_is_a_protocol_error_that_kills_the_worker() -> Result<(), Failed> {
    killed_for_a_protocol_error(Rogue::GarbageFrame, "protocol error").await
}

async fn an_undecodable_event_is_a_protocol_error_that_kills_the_worker() -> Result<(), Failed> {
    killed_for_a_protocol_error(Rogue::GarbledEvent, "protocol error: undecodable event").await
}

async fn a_frame_cut_short_by_the_worker_exiting_reports_its_exit_code() -> Result<(), Failed> {
    let (reason, _) = crash_on_first_request(Rogue::TruncatedFrame, Duration::from_secs(5)).await?;
    assert_eq!(reason, CrashReason::Exit(TRUNCATED_EXIT_CODE));
    Ok(())
}

async fn a_stray_reply_is_ignored_and_an_undecodable_reply_is_a_codec_error() -> Result<(), Failed>
{
    let worker = spawn_rogue(Rogue::StrayAndGarbledReplies).await?;
    // Had the stray reply been taken for this request, it would succeed.
    let err = refused(&worker, ping("hi")).await?;
    assert!(
        matches!(
            &err,
            WorkerError::UndecodableReply {
                message: "Ping",
                ..
            }
        ),
        "{err:?}"
    );
    let after = status(&worker).await?;
    assert_eq!(after.state, WorkerState::Running);
    assert_eq!((after.in_flight, after.queued), (0, 0));
    close(&worker).await
}

/// A host built against a drifted `Calc`: same name and version, other messages.
async fn spawn_skewed() -> Result<actix::Addr<Worker<skewed::Calc>>, Failed> {
    Worker::<skewed::Calc>::spawn_with(calc(), impatient())
        .await
        .map_err(fail)
}

/// The skewed host's request that matches the worker still works.
async fn assert_skewed_host_still_served(
    worker: &actix::Addr<Worker<skewed::Calc>>,
) -> Result<(), Failed> {
    assert_eq!(ask(worker, skewed::Increment { by: 5 }).await?, 5);
    assert_eq!(ask(worker, skewed::Increment { by: 2 }).await?, 7);
    Ok(())
}

async fn a_message_the_worker_lacks_is_answered_unknown_message_and_the_worker_serves_on(
) -> Result<(), Failed> {
    let worker = spawn_skewed().await?;
    let err = refused(&worker, skewed::Launch {}).await?;
    assert!(
        matches!(&err, WorkerError::Protocol(ProtocolFailure::UnknownMessage { name }) if name == "Launch"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`Launch`"), "{err}");
    assert_skewed_host_still_served(&worker).await?;
    close(&worker).await
}

async fn a_payload_of_the_wrong_type_is_answered_undecodable_and_the_worker_serves_on(
) -> Result<(), Failed> {
    let worker = spawn_skewed().await?;
    let err = refused(&worker, skewed::Ping { text: 42 }).await?;
    assert!(
        matches!(&err, WorkerError::Protocol(ProtocolFailure::Undecodable { message, .. }) if message == "Ping"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`Ping`"), "{err}");
    assert_skewed_host_still_served(&worker).await?;
    close(&worker).await
}

async fn a_reply_over_the_frame_limit_is_answered_reply_too_large_and_the_worker_serves_on(
) -> Result<(), Failed> {
    let limit = 4096;
    let options = impatient().max_frame_len(limit);
    let worker = Worker::<Calc>::spawn_with(calc(), options)
        .await
        .map_err(fail)?;
    // The request carries the bytes as one binary string; the reply, a
    // plain `Vec<u8>`, as an array of integers, two bytes for each of
    // these: the request fits in a frame, its reply does not.
    let data = vec![0xFF; 2000];
    let err = refused(&worker, Echo { data }).await?;
    assert!(
        matches!(&err, WorkerError::Protocol(ProtocolFailure::ReplyTooLarge { size, limit: l }) if *size > 4000 && *l == limit),
        "{err:?}"
    );
    let small = ask(
        &worker,
        Echo {
            data: vec![1, 2, 3],
        },
    )
    .await?;
    assert_eq!(small, [1, 2, 3]);
    close(&worker).await
}

async fn a_reply_the_worker_cannot_encode_is_answered_reply_unencodable() -> Result<(), Failed> {
    use unencodable::{Fetch, Unencodable, WORKER};
    let driver = isolated_workers::ChildProcess::current_exe(WORKER);
    let worker = Worker::<Unencodable>::spawn_with(driver, impatient())
        .await
        .map_err(fail)?;
    for _ in 0..2 {
        let err = refused(&worker, Fetch).await?;
        assert!(
            matches!(&err, WorkerError::Protocol(ProtocolFailure::ReplyUnencodable { detail }) if detail.contains("no encoding")),
            "{err:?}"
        );
    }
    assert_eq!(status(&worker).await?.state, WorkerState::Running);
    close(&worker).await
}
