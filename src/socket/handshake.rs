//! The handshake that opens every connection between a host and a worker,
//! as three small state machines with no I/O. The code that owns a socket
//! asks the machine what it waits for, reads or learns that, feeds it in
//! ([`Input`]) and acts on the state it gets back. The one compatibility
//! check of a worker's Hello ([`Dialect::check`]) is here too, and so is
//! the glue from a [`Contract`] to the Hello this process says.
//!
//! | # | who | state | waits for | then |
//! |---|---|---|---|---|
//! | 1 | host of a connection only it and the worker hold (a spawned worker's socketpair, a custom driver's stream): [`Greeting`] | awaiting Hello | the worker's first frame | a `Hello` in the host's [`Dialect`]: open; anything else: failed |
//! | 2 | host on a worker's attach socket, having written `Attach(Hello)` with the secret: [`Attaching`] | [`AwaitingHello`](Attaching::AwaitingHello) | the worker's first frame | a `Hello` carrying the secret: 3; `Refused`: [`Refused`](Attaching::Refused); anything else, or none: [`Failed`](Attaching::Failed) |
//! | 3 | the same host | [`AwaitingPeer`](Attaching::AwaitingPeer) | the OS's word on the peer | the worker's user and process, and its Hello in the host's dialect: [`Open`](Attaching::Open); else failed |
//! | 4 | worker, a peer just connected to its attach socket: [`Accepting`] | [`AwaitingPeer`](Accepting::AwaitingPeer) | the OS's word on the peer | the worker's user: 5; else [`HangUp`](Accepting::HangUp) |
//! | 5 | the same worker | [`AwaitingAttach`](Accepting::AwaitingAttach) | the peer's first frame | `Attach(Hello)` with the secret: [`Accepted`](Accepting::Accepted); with another secret: [`Refuse`](Accepting::Refuse) (`WrongToken`); anything else, or none: hang up |
//!
//! A finished machine stays finished, and an input a state does not wait
//! for ends the handshake (as ractor's node authentication does): such a
//! peer cannot be trusted. Timeouts are the I/O code's: it gives up
//! waiting and says so ([`Input::NoFrame`]), or drops the connection.
//!
//! What is not here: a spawned worker writes its Hello without waiting
//! for anything (nothing to check on a socketpair); the worker does not
//! check an attaching host's dialect (the host checks the worker's Hello
//! and hangs up on a mismatch); and an accepted host is refused `Busy` by
//! the worker's server while it serves another host.

use crate::contract::Contract;
use crate::error::HandshakeError;
use crate::wire::envelope::{Header, Hello, Refusal};
use crate::wire::{Serializer, PROTOCOL_VERSION};

use super::build::executable_identity;
use super::peer::token_matches;

/// What one end of a connection speaks: the wire protocol's version, the
/// contract and its version, and the payloads' serializer. A host talks to
/// a worker only if the worker's Hello says the host's dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dialect {
    /// [`PROTOCOL_VERSION`] of the build.
    protocol: u32,
    /// The contract's name.
    contract: &'static str,
    /// The contract's version.
    contract_version: u32,
    /// The name of the contract's serializer.
    serializer: &'static str,
}

impl Dialect {
    /// What a host or worker of contract `C` speaks, in this build.
    pub(crate) fn of<C: Contract>() -> Self {
        Self {
            protocol: PROTOCOL_VERSION,
            contract: C::NAME,
            contract_version: C::VERSION,
            serializer: <C::Serializer as Serializer>::NAME,
        }
    }

    /// The Hello of this process in this dialect, presenting `token`.
    pub(crate) fn hello(&self, token: String) -> Hello {
        Hello {
            protocol: self.protocol,
            token,
            pid: std::process::id(),
            contract: self.contract.to_owned(),
            contract_version: self.contract_version,
            serializer: self.serializer.to_owned(),
            executable: executable_identity().to_owned(),
        }
    }

    /// Whether a worker saying `hello` speaks this (the host's) dialect: the
    /// protocol, then the contract and its version, then the serializer.
    /// Who the peer is, is checked by whoever accepted the connection.
    pub(crate) fn check(&self, hello: &Hello) -> Result<(), HandshakeError> {
        if hello.protocol != self.protocol {
            return Err(HandshakeError::Protocol {
                worker: hello.protocol,
                host: self.protocol,
            });
        }
        if hello.contract != self.contract || hello.contract_version != self.contract_version {
            return Err(HandshakeError::Contract {
                worker: hello.contract.clone(),
                worker_version: hello.contract_version,
                host: self.contract.to_owned(),
                host_version: self.contract_version,
            });
        }
        if hello.serializer != self.serializer {
            return Err(HandshakeError::Serializer {
                worker: hello.serializer.clone(),
                host: self.serializer.to_owned(),
            });
        }
        Ok(())
    }
}

// The contract glue lives here, above `wire`, so that the wire's `Hello`
// is plain data and `wire` does not depend on `contract`.
impl Hello {
    /// The Hello of this process for contract `C`, presenting `token`.
    pub(crate) fn ours<C: Contract>(token: String) -> Self {
        Dialect::of::<C>().hello(token)
    }
}

/// What the I/O code learned, for a machine to take its next step on.
#[derive(Debug)]
pub(crate) enum Input {
    /// The peer's first frame.
    Frame(Header),
    /// The peer sent no first frame that could be read: it closed the
    /// connection, cut the frame short, sent too much, or said nothing in
    /// time. Why, in words.
    NoFrame(String),
    /// What the OS says of the peer: whether it runs as this user (and, for
    /// a host that attaches, is the worker's process).
    Peer(Result<(), HandshakeError>),
}

impl Input {
    /// The handshake error of an input that no state waits for there.
    fn out_of_order(self) -> HandshakeError {
        match self {
            Input::Frame(header) => unexpected(&header),
            Input::NoFrame(why) => HandshakeError::Unreadable(why),
            Input::Peer(Err(why)) => why,
            Input::Peer(Ok(())) => HandshakeError::Unexpected {
                got: "the peer's credentials before its hello".into(),
            },
        }
    }
}

/// The error for a first frame that is not the Hello it should be.
fn unexpected(header: &Header) -> HandshakeError {
    HandshakeError::Unexpected {
        got: format!("{header:?}"),
    }
}

/// State 1: a host waits for the worker's Hello on a connection only the
/// two of them hold (a spawned worker's socketpair, a custom driver's
/// stream), so there is no secret and no peer to check.
#[derive(Debug)]
pub(crate) struct Greeting {
    /// What the host speaks.
    dialect: Dialect,
    /// The build the worker must run, for a worker started from the host's
    /// own executable: the host's ([`executable_identity`]).
    build: Option<&'static str>,
}

impl Greeting {
    /// A host of contract `C` awaits its worker's Hello.
    pub(crate) fn new<C: Contract>() -> Self {
        Self {
            dialect: Dialect::of::<C>(),
            build: None,
        }
    }

    /// The worker must also run the host's build of its executable: it was
    /// started from the host's own executable
    /// ([`ChildProcess::current_exe`](crate::ChildProcess::current_exe)).
    pub(crate) fn same_build(self) -> Self {
        Self {
            build: Some(executable_identity()),
            ..self
        }
    }

    /// The only step: the worker's first frame opens the connection if it
    /// is a Hello in the host's dialect (and of the host's build, if asked).
    /// (A connection that ends before its first frame is
    /// [`HandshakeError::Closed`], unless the worker's exit says more; the
    /// I/O code tells which.)
    pub(crate) fn next(self, first: Header) -> Result<(), HandshakeError> {
        let hello = match first {
            Header::Hello(hello) => hello,
            other => return Err(unexpected(&other)),
        };
        self.dialect.check(&hello)?;
        match self.build {
            // Either side unknown: nothing to compare.
            Some(host)
                if !host.is_empty() && !hello.executable.is_empty() && hello.executable != host =>
            {
                Err(HandshakeError::OtherBuild {
                    worker: hello.executable,
                    host: host.to_owned(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// States 2 and 3, and their outcomes: a host attaching to (or
/// reconnecting with) a worker that listens on its attach socket.
#[derive(Debug)]
pub(crate) enum Attaching {
    /// State 2: the host wrote `Attach(Hello)` with the worker's secret; the
    /// worker's Hello must carry the same secret back.
    AwaitingHello {
        /// What the host speaks.
        dialect: Dialect,
        /// The secret the host presented.
        secret: String,
    },
    /// State 3: the worker proved it knows the secret; the OS must still say it
    /// is the worker's user and process before its Hello is checked.
    AwaitingPeer {
        /// What the host speaks.
        dialect: Dialect,
        /// What the worker said.
        hello: Hello,
    },
    /// The connection is open: frames from here on.
    Open,
    /// The worker refused the host, and hangs up.
    Refused(Refusal),
    /// The handshake failed; drop the connection.
    Failed(HandshakeError),
}

impl Attaching {
    /// A host of contract `C` attaches with `secret`: the machine, and the
    /// frame the host opens the connection with.
    pub(crate) fn start<C: Contract>(secret: &str) -> (Self, Header) {
        let dialect = Dialect::of::<C>();
        let opening = Header::Attach(dialect.hello(secret.to_owned()));
        let state = Attaching::AwaitingHello {
            dialect,
            secret: secret.to_owned(),
        };
        (state, opening)
    }

    /// The state after `input`.
    pub(crate) fn next(self, input: Input) -> Self {
        use Attaching::*;
        match (self, input) {
            (AwaitingHello { dialect, secret }, Input::Frame(Header::Hello(hello))) => {
                if token_matches(&hello.token, &secret) {
                    AwaitingPeer { dialect, hello }
                } else {
                    Failed(HandshakeError::WrongWorkerToken)
                }
            }
            (AwaitingHello { .. }, Input::Frame(Header::Refused { why })) => Refused(why),
            (AwaitingPeer { dialect, hello }, Input::Peer(Ok(()))) => match dialect.check(&hello) {
                Ok(()) => Open,
                Err(why) => Failed(why),
            },
            (finished @ (Open | Refused(_) | Failed(_)), _) => finished,
            (AwaitingHello { .. } | AwaitingPeer { .. }, input) => Failed(input.out_of_order()),
        }
    }
}

/// States 4 and 5, and their outcomes: a worker greets a peer that
/// connected to its attach socket.
#[derive(Debug)]
pub(crate) enum Accepting {
    /// State 4: a peer connected; the OS must say it runs as the worker's user.
    AwaitingPeer {
        /// The worker's attach secret.
        secret: String,
    },
    /// State 5: the peer must present the secret in its first frame,
    /// `Attach(Hello)`.
    AwaitingAttach {
        /// The worker's attach secret.
        secret: String,
    },
    /// The peer presented the secret: it is the next host.
    Accepted,
    /// Tell the peer why it is refused, then hang up.
    Refuse(Refusal),
    /// Hang up without a word: the peer is another user, silent, slow, or
    /// does not speak this protocol.
    HangUp,
}

impl Accepting {
    /// A worker whose attach secret is `secret` greets a new peer.
    pub(crate) fn new(secret: String) -> Self {
        Accepting::AwaitingPeer { secret }
    }

    /// The state after `input`.
    pub(crate) fn next(self, input: Input) -> Self {
        use Accepting::*;
        match (self, input) {
            (AwaitingPeer { secret }, Input::Peer(Ok(()))) => AwaitingAttach { secret },
            (AwaitingAttach { secret }, Input::Frame(Header::Attach(hello))) => {
                if token_matches(&hello.token, &secret) {
                    Accepted
                } else {
                    Refuse(Refusal::WrongToken)
                }
            }
            (finished @ (Accepted | Refuse(_) | HangUp), _) => finished,
            (AwaitingPeer { .. } | AwaitingAttach { .. }, _) => HangUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::AttachPoint;

    const SECRET: &str = "c0ffee";

    /// The contract the host of these tests serves.
    struct Calc;

    impl Contract for Calc {
        const NAME: &'static str = "Calc";
        const VERSION: u32 = 2;
        type Serializer = crate::MessagePack;
        type Event = crate::NoEvents;
    }

    fn host() -> Dialect {
        Dialect::of::<Calc>()
    }

    /// The Hello of a worker that speaks the host's dialect.
    fn fitting(token: &str) -> Hello {
        host().hello(token.to_owned())
    }

    fn attaching() -> Attaching {
        Attaching::start::<Calc>(SECRET).0
    }

    fn accepting() -> Accepting {
        Accepting::new(SECRET.to_owned())
    }

    fn greeting() -> Greeting {
        Greeting::new::<Calc>()
    }

    // Dialect::check, the one compatibility check.

    #[test]
    fn a_hello_in_the_same_dialect_is_compatible() {
        assert!(host().check(&fitting("")).is_ok());
    }

    #[test]
    fn another_protocol_is_named_with_both_versions() {
        let hello = Hello {
            protocol: PROTOCOL_VERSION + 1,
            ..fitting("")
        };
        let why = host().check(&hello).unwrap_err();
        assert!(matches!(why, HandshakeError::Protocol { worker, host }
            if worker == PROTOCOL_VERSION + 1 && host == PROTOCOL_VERSION));
        assert_eq!(
            why.to_string(),
            format!(
                "the worker speaks protocol version {}, the host {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            )
        );
    }

    #[test]
    fn another_contract_or_version_is_named_with_both() {
        for (contract, version) in [("Other", 2), ("Calc", 3)] {
            let hello = Hello {
                contract: contract.into(),
                contract_version: version,
                ..fitting("")
            };
            let why = host().check(&hello).unwrap_err();
            assert_eq!(
                why.to_string(),
                format!(
                    "the worker serves contract `{contract}` v{version}, the host expects `Calc` v2"
                )
            );
        }
    }

    #[test]
    fn another_serializer_is_named_with_both() {
        let hello = Hello {
            serializer: "json".into(),
            ..fitting("")
        };
        let why = host().check(&hello).unwrap_err();
        assert!(matches!(&why, HandshakeError::Serializer { worker, host }
            if worker == "json" && host == "msgpack"));
        assert_eq!(
            why.to_string(),
            "the worker encodes with `json`, the host with `msgpack`"
        );
    }

    #[test]
    fn the_protocol_is_checked_first() {
        let hello = Hello {
            protocol: 0,
            contract: "Other".into(),
            serializer: "json".into(),
            ..fitting("")
        };
        assert!(matches!(
            host().check(&hello),
            Err(HandshakeError::Protocol { .. })
        ));
    }

    // 1: Greeting.

    #[test]
    fn greeting_opens_on_a_fitting_hello() {
        assert!(greeting().next(Header::Hello(fitting(""))).is_ok());
    }

    #[test]
    fn greeting_of_the_same_build_refuses_another_build_by_name() {
        let other = Hello {
            executable: "fd:1:2:3.000000000".into(),
            ..fitting("")
        };
        assert!(greeting().next(Header::Hello(other.clone())).is_ok());
        let why = greeting()
            .same_build()
            .next(Header::Hello(other))
            .unwrap_err();
        assert!(matches!(&why, HandshakeError::OtherBuild { worker, host }
            if worker == "fd:1:2:3.000000000" && host == executable_identity()));
        assert!(why.to_string().contains("restart the host"), "{why}");
        assert!(greeting()
            .same_build()
            .next(Header::Hello(fitting("")))
            .is_ok());
        let unknown = Hello {
            executable: String::new(),
            ..fitting("")
        };
        assert!(greeting().same_build().next(Header::Hello(unknown)).is_ok());
    }

    #[test]
    fn greeting_fails_on_a_hello_in_another_dialect() {
        let hello = Hello {
            serializer: "postcard".into(),
            ..fitting("")
        };
        assert!(matches!(
            greeting().next(Header::Hello(hello)),
            Err(HandshakeError::Serializer { .. })
        ));
    }

    #[test]
    fn greeting_fails_on_any_other_first_frame() {
        for first in [
            Header::Reply { id: 1 },
            Header::Attach(fitting("")),
            Header::Refused { why: Refusal::Busy },
        ] {
            let why = greeting().next(first.clone()).unwrap_err();
            assert_eq!(why.to_string(), format!("expected a hello, got {first:?}"));
        }
    }

    // 2 and 3: Attaching.

    #[test]
    fn attaching_opens_with_the_secret_then_the_peer_then_the_dialect() {
        let (state, opening) = Attaching::start::<Calc>(SECRET);
        let Header::Attach(ours) = opening else {
            panic!("opens with {opening:?}");
        };
        assert_eq!(ours, fitting(SECRET), "the host's Hello, with the secret");
        assert!(matches!(state, Attaching::AwaitingHello { .. }));

        let state = state.next(Input::Frame(Header::Hello(fitting(SECRET))));
        assert!(matches!(state, Attaching::AwaitingPeer { .. }));
        let state = state.next(Input::Peer(Ok(())));
        assert!(matches!(state, Attaching::Open));
    }

    #[test]
    fn attaching_fails_on_a_hello_without_the_secret() {
        for token in ["", "c0ffef", "c0ffee00"] {
            let state = attaching().next(Input::Frame(Header::Hello(fitting(token))));
            let Attaching::Failed(why) = state else {
                panic!("{token:?} led to {state:?}");
            };
            assert_eq!(why.to_string(), "the worker's hello has the wrong token");
        }
    }

    #[test]
    fn attaching_reports_the_workers_refusals() {
        for refusal in [Refusal::WrongToken, Refusal::Busy] {
            let state = attaching().next(Input::Frame(Header::Refused { why: refusal }));
            assert!(matches!(state, Attaching::Refused(why) if why == refusal));
        }
    }

    #[test]
    fn attaching_fails_on_any_other_first_frame() {
        let state = attaching().next(Input::Frame(Header::Listening(AttachPoint {
            socket: "/tmp/x".into(),
            token: SECRET.into(),
        })));
        let Attaching::Failed(HandshakeError::Unexpected { got }) = state else {
            panic!("led to {state:?}");
        };
        assert!(got.starts_with("Listening"), "{got}");
    }

    #[test]
    fn attaching_fails_without_a_first_frame_saying_why() {
        let state = attaching().next(Input::NoFrame("truncated hello: early eof".into()));
        let Attaching::Failed(why) = state else {
            panic!("led to {state:?}");
        };
        assert_eq!(why.to_string(), "truncated hello: early eof");
    }

    #[test]
    fn attaching_fails_when_the_peer_is_not_the_worker() {
        let mismatch = HandshakeError::OtherProcess {
            pid: 7,
            expected: 8,
        };
        let state = attaching()
            .next(Input::Frame(Header::Hello(fitting(SECRET))))
            .next(Input::Peer(Err(mismatch)));
        let Attaching::Failed(why) = state else {
            panic!("led to {state:?}");
        };
        assert_eq!(why.to_string(), "peer is process 7, not 8");
    }

    #[test]
    fn attaching_checks_the_dialect_after_the_peer() {
        let hello = Hello {
            contract: "Other".into(),
            ..fitting(SECRET)
        };
        let state = attaching().next(Input::Frame(Header::Hello(hello)));
        assert!(matches!(state, Attaching::AwaitingPeer { .. }));
        let state = state.next(Input::Peer(Ok(())));
        assert!(matches!(
            state,
            Attaching::Failed(HandshakeError::Contract { .. })
        ));
    }

    #[test]
    fn attaching_fails_on_input_out_of_order() {
        let state = attaching().next(Input::Peer(Ok(())));
        assert!(matches!(
            state,
            Attaching::Failed(HandshakeError::Unexpected { .. })
        ));
        let state = attaching()
            .next(Input::Frame(Header::Hello(fitting(SECRET))))
            .next(Input::Frame(Header::Hello(fitting(SECRET))));
        assert!(matches!(
            state,
            Attaching::Failed(HandshakeError::Unexpected { .. })
        ));
    }

    #[test]
    fn a_finished_attach_stays_finished() {
        let open = Attaching::Open.next(Input::Frame(Header::Shutdown));
        assert!(matches!(open, Attaching::Open));
        let refused = Attaching::Refused(Refusal::Busy).next(Input::Peer(Ok(())));
        assert!(matches!(refused, Attaching::Refused(Refusal::Busy)));
        let failed = Attaching::Failed(HandshakeError::Closed).next(Input::Peer(Ok(())));
        assert!(matches!(failed, Attaching::Failed(HandshakeError::Closed)));
    }

    // 4 and 5: Accepting.

    #[test]
    fn accepting_lets_in_a_peer_of_this_user_with_the_secret() {
        let state = accepting().next(Input::Peer(Ok(())));
        assert!(matches!(state, Accepting::AwaitingAttach { .. }));
        let state = state.next(Input::Frame(Header::Attach(fitting(SECRET))));
        assert!(matches!(state, Accepting::Accepted));
    }

    #[test]
    fn accepting_hangs_up_on_another_user() {
        let stranger = HandshakeError::ForeignUser { uid: 1, ours: 2 };
        let state = accepting().next(Input::Peer(Err(stranger)));
        assert!(matches!(state, Accepting::HangUp));
    }

    #[test]
    fn accepting_refuses_a_wrong_secret_out_loud() {
        for token in ["", "c0ffef", "c0ffee00"] {
            let state = accepting()
                .next(Input::Peer(Ok(())))
                .next(Input::Frame(Header::Attach(fitting(token))));
            assert!(
                matches!(state, Accepting::Refuse(Refusal::WrongToken)),
                "{token:?} led to {state:?}"
            );
        }
    }

    #[test]
    fn accepting_hangs_up_on_silence_and_on_any_other_frame() {
        let inputs = [
            Input::NoFrame("silent".into()),
            Input::Frame(Header::Hello(fitting(SECRET))),
            Input::Frame(Header::Shutdown),
            Input::Peer(Ok(())),
        ];
        for input in inputs {
            let state = accepting().next(Input::Peer(Ok(()))).next(input);
            assert!(matches!(state, Accepting::HangUp), "led to {state:?}");
        }
    }

    #[test]
    fn accepting_hangs_up_on_a_frame_before_the_peer_check() {
        let state = accepting().next(Input::Frame(Header::Attach(fitting(SECRET))));
        assert!(matches!(state, Accepting::HangUp));
    }

    #[test]
    fn a_finished_accept_stays_finished() {
        let accepted = Accepting::Accepted.next(Input::NoFrame("gone".into()));
        assert!(matches!(accepted, Accepting::Accepted));
        let refused = Accepting::Refuse(Refusal::WrongToken).next(Input::Peer(Ok(())));
        assert!(matches!(refused, Accepting::Refuse(Refusal::WrongToken)));
    }
}
