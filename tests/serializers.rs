//! The serializer a contract names is the one both ends use: contracts
//! declared with `serializer = Json`, `Postcard` and (the default)
//! `MessagePack` each carry bytes, text of any characters, enums, options
//! and errors to a real child-process worker and back; a host and a worker
//! whose contracts differ only in their serializer are refused at the
//! handshake, which names both.
//!
//! Built with the `json` and `postcard` features, which the crate's
//! dev-dependency on itself turns on for every `cargo test`.

mod support;

use isolated_workers::{
    ChildProcess, HandshakeError, RemoteError, SpawnError, WorkerError, WorkerOptions,
};
use libtest_mimic::Failed;
use support::{actix_test, ask, close, fail, run, spawn_error};

/// A module with contract `Echoes` v1 encoded by `$serializer`, its
/// messages, and a worker serving it, started as worker `$worker`. The
/// modules differ in nothing but the serializer: the same contract name,
/// version, messages and wire names.
macro_rules! echoes_with {
    ($module:ident, $serializer:ident, $worker:literal) => {
        mod $module {
            use actix::prelude::*;
            use isolated_workers::{RemoteError, WorkerError};
            #[allow(unused_imports)]
            use isolated_workers::{Json, MessagePack, Postcard};
            use serde::{Deserialize, Serialize};

            /// The name this worker is started under.
            pub const WORKER: &str = $worker;

            /// One of every shape a payload takes.
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            pub struct Echo {
                #[serde(with = "serde_bytes")]
                pub data: Vec<u8>,
                pub chunk: bytes::Bytes,
                pub text: String,
                pub shape: Shape,
                pub maybe: Option<i64>,
                pub numbers: Vec<u64>,
                pub ratio: f64,
            }

            /// An enum with a variant of each kind.
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            pub enum Shape {
                Empty,
                Wrapped(String),
                Pair(u8, i32),
                Named { x: i16, tags: Vec<String> },
            }

            /// What the worker answers: the echo, who it is, and the
            /// serializer it decoded the echo with.
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            pub struct Echoed {
                pub echo: Echo,
                pub pid: u32,
                pub serializer: String,
            }

            /// Fails in the handler with a `RemoteError`.
            #[derive(Debug, Clone, Serialize, Deserialize)]
            pub struct Refuse {
                pub why: String,
            }

            isolated_workers::contract! {
                /// The same contract, whatever the serializer.
                pub Echoes (version = 1, serializer = $serializer) {
                    Echo => Echoed,
                    Refuse => (),
                }
            }

            /// Echoes what it gets.
            #[derive(Debug, Default)]
            pub struct EchoWorker;

            impl Actor for EchoWorker {
                type Context = Context<Self>;
            }

            impl Handler<Echo> for EchoWorker {
                type Result = Result<Echoed, WorkerError>;
                fn handle(&mut self, echo: Echo, _: &mut Context<Self>) -> Self::Result {
                    Ok(Echoed {
                        echo,
                        pid: std::process::id(),
                        serializer: serializer_name().into(),
                    })
                }
            }

            impl Handler<Refuse> for EchoWorker {
                type Result = Result<(), WorkerError>;
                fn handle(&mut self, refuse: Refuse, _: &mut Context<Self>) -> Self::Result {
                    Err(RemoteError::new("Refused", refuse.why).with_code(7).into())
                }
            }

            /// The `NAME` of this contract's serializer.
            pub fn serializer_name() -> &'static str {
                <<Echoes as isolated_workers::Contract>::Serializer as isolated_workers::Serializer>::NAME
            }

            /// Registers this module's worker; call first in `main`.
            pub fn enter() {
                isolated_workers::worker_entry::<Echoes, _>(WORKER, EchoWorker::default);
            }
        }
    };
}

echoes_with!(as_json, Json, "echo-json");
echoes_with!(as_postcard, Postcard, "echo-postcard");
echoes_with!(as_msgpack, MessagePack, "echo-msgpack");

fn main() {
    support::quiet_panics_on_purpose();
    as_json::enter();
    as_postcard::enter();
    as_msgpack::enter();
    run(vec![
        actix_test(
            "a_json_contract_round_trips_through_a_child_worker",
            a_json_contract_round_trips_through_a_child_worker,
        ),
        actix_test(
            "a_postcard_contract_round_trips_through_a_child_worker",
            a_postcard_contract_round_trips_through_a_child_worker,
        ),
        actix_test(
            "a_msgpack_contract_round_trips_through_a_child_worker",
            a_msgpack_contract_round_trips_through_a_child_worker,
        ),
        actix_test(
            "a_json_host_and_a_postcard_worker_fail_the_handshake_naming_both",
            a_json_host_and_a_postcard_worker_fail_the_handshake_naming_both,
        ),
        actix_test(
            "a_postcard_host_and_a_msgpack_worker_fail_the_handshake_naming_both",
            a_postcard_host_and_a_msgpack_worker_fail_the_handshake_naming_both,
        ),
        actix_test(
            "a_msgpack_host_and_a_json_worker_fail_the_handshake_naming_both",
            a_msgpack_host_and_a_json_worker_fail_the_handshake_naming_both,
        ),
    ]);
}

/// Text that trips encoders: NUL and controls, quotes and backslashes,
/// combining marks, a zero-width joiner sequence, emoji, the last code point.
const TRICKY_TEXT: &str =
    "Grüße, 世界 \0 \u{1} \"q\" \\ / \n e\u{301} 👩\u{200d}👩\u{200d}👧 🇩🇪 \u{feff} \u{10ffff}";

/// Stamps out, for one of the `echoes_with!` modules, a test that spawns its
/// worker and checks that every shape of payload, and an error, arrive
/// exactly, from another process.
macro_rules! round_trip_test {
    ($name:ident, $module:ident) => {
        async fn $name() -> Result<(), Failed> {
            use $module::{serializer_name, Echo, Echoes, Refuse, Shape, WORKER};

            let worker =
                isolated_workers::Worker::<Echoes>::spawn(ChildProcess::current_exe(WORKER))
                    .await
                    .map_err(fail)?;

            let every_byte: Vec<u8> = (0..=255).collect();
            let shapes = [
                Shape::Empty,
                Shape::Wrapped(TRICKY_TEXT.into()),
                Shape::Pair(255, i32::MIN),
                Shape::Named {
                    x: -1,
                    tags: vec![String::new(), "ß".into(), "🦀".into()],
                },
            ];
            for (i, shape) in shapes.into_iter().enumerate() {
                let echo = Echo {
                    data: every_byte.repeat(i * 100),
                    chunk: bytes::Bytes::from(every_byte.clone()),
                    text: TRICKY_TEXT.repeat(i),
                    shape,
                    maybe: [None, Some(i64::MIN), Some(0), Some(i64::MAX)][i],
                    numbers: vec![0, 1, u64::MAX, 1 << 40],
                    ratio: -1.0 / 3.0,
                };
                let echoed = ask(&worker, echo.clone()).await?;
                assert_eq!(echoed.echo, echo, "round trip {i}");
                assert_ne!(echoed.pid, std::process::id(), "answered by the child");
                assert_eq!(
                    echoed.serializer,
                    serializer_name(),
                    "both ends use the contract's"
                );
            }
            // An empty everything, too.
            let empty = Echo {
                data: Vec::new(),
                chunk: bytes::Bytes::new(),
                text: String::new(),
                shape: Shape::Empty,
                maybe: None,
                numbers: Vec::new(),
                ratio: 0.0,
            };
            assert_eq!(ask(&worker, empty.clone()).await?.echo, empty);

            let refused = worker
                .send(Refuse {
                    why: TRICKY_TEXT.into(),
                })
                .await
                .map_err(fail)?;
            match refused {
                Err(WorkerError::Remote(RemoteError {
                    name,
                    message,
                    code,
                    ..
                })) => {
                    assert_eq!(name, "Refused");
                    assert_eq!(message, TRICKY_TEXT);
                    assert_eq!(code, Some(7));
                }
                other => return Err(format!("expected the handler's error, got {other:?}").into()),
            }
            close(&worker).await
        }
    };
}

round_trip_test!(a_json_contract_round_trips_through_a_child_worker, as_json);
round_trip_test!(
    a_postcard_contract_round_trips_through_a_child_worker,
    as_postcard
);
round_trip_test!(
    a_msgpack_contract_round_trips_through_a_child_worker,
    as_msgpack
);

/// Spawns worker `worker` for host contract `C` and expects a handshake
/// error naming both serializers.
async fn mismatch<C: isolated_workers::Contract>(
    worker: &str,
    host_serializer: &str,
    worker_serializer: &str,
) -> Result<(), Failed> {
    let err = spawn_error::<C>(ChildProcess::current_exe(worker), WorkerOptions::default()).await?;
    let SpawnError::Handshake(HandshakeError::Serializer { worker, host }) = &err else {
        return Err(format!("expected a serializer mismatch, got {err:?}").into());
    };
    assert_eq!(
        (worker.as_str(), host.as_str()),
        (worker_serializer, host_serializer)
    );
    assert_eq!(
        err.to_string(),
        format!(
            "handshake failed: the worker encodes with `{worker_serializer}`, \
             the host with `{host_serializer}`"
        ),
        "names both serializers"
    );
    Ok(())
}

async fn a_json_host_and_a_postcard_worker_fail_the_handshake_naming_both() -> Result<(), Failed> {
    mismatch::<as_json::Echoes>(as_postcard::WORKER, "json", "postcard").await
}

async fn a_postcard_host_and_a_msgpack_worker_fail_the_handshake_naming_both() -> Result<(), Failed>
{
    mismatch::<as_postcard::Echoes>(as_msgpack::WORKER, "postcard", "msgpack").await
}

async fn a_msgpack_host_and_a_json_worker_fail_the_handshake_naming_both() -> Result<(), Failed> {
    mismatch::<as_msgpack::Echoes>(as_json::WORKER, "msgpack", "json").await
}
