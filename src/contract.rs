//! The typed message set that host and worker share: [`Contract`],
//! [`WorkerMessage`], the contract's event type ([`Contract::Event`],
//! [`NoEvents`] when none is declared), and the
//! [`contract!`](crate::contract!) macro that declares them.

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::WorkerError;
use crate::wire::serializer::{CodecError, Serializer};

/// A named set of messages a worker serves. Declared with
/// [`contract!`](crate::contract!); host and worker name the same contract.
pub trait Contract: 'static {
    /// The contract's name, checked in the handshake.
    const NAME: &'static str;
    /// The contract's version, checked in the handshake. Bump it when a
    /// message changes shape.
    const VERSION: u32;
    /// How payloads are encoded for child-process workers.
    type Serializer: Serializer;
    /// What the worker can push to the host without being asked (progress,
    /// log lines, partial results): emitted with
    /// [`Events`](crate::worker::Events), received by subscribing with
    /// [`Subscribe`](crate::proxy::Subscribe) or
    /// [`SubscribeStream`](crate::proxy::SubscribeStream). Declared with
    /// `(events = MyEvent)`; [`NoEvents`] otherwise.
    ///
    /// `Clone` because every subscriber gets its own copy.
    type Event: Serialize + DeserializeOwned + Clone + Send + 'static;
}

/// The event type of a contract that declares none: it has no values, so a
/// worker of such a contract cannot emit an event (it does not compile),
/// and a subscription to its events never yields one.
///
/// An uninhabited type rather than `()`: `()` would let a worker emit
/// meaningless events by mistake, and a host subscribe to them expecting
/// something to arrive. An event frame from a worker whose contract
/// declares none cannot be decoded, so it is refused as a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NoEvents {}

/// A message with a stable wire name and one reply type.
///
/// Its actix result is `Result<Self::Reply, WorkerError>`: on the host that
/// is what `send` resolves to; on the worker the handler returns it, with
/// `Err(RemoteError::new(..).into())` for a failure the host should see.
///
/// Implemented by [`contract!`](crate::contract!), which also writes the
/// hidden codec functions.
pub trait WorkerMessage:
    actix::Message<Result = Result<<Self as WorkerMessage>::Reply, WorkerError>> + Send + 'static
{
    /// The name this message travels under; unique within its contract.
    const NAME: &'static str;
    /// What the worker answers with.
    type Reply: Send + 'static;
    /// [`Portable`] (serializable, crosses process boundaries) or
    /// [`LocalOnly`] (moved by reference; only drivers that share memory
    /// with the host can carry it).
    type Portability: Portability;

    #[doc(hidden)]
    fn encode<S: Serializer>(&self, out: &mut BytesMut) -> Result<(), CodecError>;
    #[doc(hidden)]
    fn decode<S: Serializer>(bytes: &[u8]) -> Result<Self, CodecError>
    where
        Self: Sized;
    #[doc(hidden)]
    fn encode_reply<S: Serializer>(
        reply: &Self::Reply,
        out: &mut BytesMut,
    ) -> Result<(), CodecError>;
    #[doc(hidden)]
    fn decode_reply<S: Serializer>(bytes: &[u8]) -> Result<Self::Reply, CodecError>;
}

/// Whether a message can leave the host's memory: [`Portable`] or
/// [`LocalOnly`].
pub trait Portability: sealed::Sealed + 'static {}

/// A message (and reply) that is serializable: every driver carries it.
#[derive(Debug)]
pub enum Portable {}

/// A message declared `#[local]` in its contract: it need not be
/// serializable (it may hold an `Arc`, a channel, a handle) and is moved to
/// the worker, never copied. Only drivers that share memory with the host
/// ([`SharesMemory`](crate::driver::SharesMemory), e.g. [`Thread`](crate::Thread))
/// carry it; sending it to any other worker does not compile.
#[derive(Debug)]
pub enum LocalOnly {}

impl Portability for Portable {}
impl Portability for LocalOnly {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Portable {}
    impl Sealed for super::LocalOnly {}
}

/// Marks `Self` as one of the messages of contract `C`; only these can be
/// sent to a `Worker<C, _>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a message of contract `{C}`",
    label = "a worker (or pool) of contract `{C}` accepts only the messages its contract declares",
    note = "add `{Self}` to the `contract!` that declares `{C}`, or send it to a worker of the contract that has it"
)]
pub trait InContract<C: Contract>: WorkerMessage {}

/// Declares a contract: a unit struct implementing [`Contract`], and for each
/// message its reply type and wire name (the type's name unless given with
/// `as "name"`).
///
/// The message and reply types are ordinary serde types defined beside it.
/// A message belongs to one contract. A message marked `#[local]` need not
/// be serializable; only workers whose driver shares memory with the host
/// accept it (see [`LocalOnly`]).
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct Ping { pub text: String }
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct Pong { pub text: String }
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct Divide { pub a: f64, pub b: f64 }
///
/// isolated_workers::contract! {
///     /// Arithmetic, in a worker.
///     pub Calc (version = 2) {
///         Ping => Pong,
///         Divide as "calc.divide" => f64,
///     }
/// }
///
/// use isolated_workers::{Contract, WorkerMessage};
/// assert_eq!(Calc::NAME, "Calc");
/// assert_eq!(Calc::VERSION, 2);
/// assert_eq!(<Ping as WorkerMessage>::NAME, "Ping");
/// assert_eq!(<Divide as WorkerMessage>::NAME, "calc.divide");
/// ```
///
/// The version defaults to 1; the serializer to [`MessagePack`](crate::MessagePack)
/// (choose another with `(version = 1, serializer = MyFormat)`, naming a
/// type in scope).
///
/// `(events = MyEvent)` declares the events the worker pushes to the host
/// without a request ([`Contract::Event`]; [`NoEvents`] when not declared):
/// a serde type that is `Clone + Send + 'static`. A type that is more than
/// one token (a path, generics) goes in parentheses: `(events = (jobs::Event))`.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct Run { pub steps: u32 }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub enum JobEvent { Progress(u8) }
///
/// isolated_workers::contract! {
///     pub Jobs (events = JobEvent) {
///         Run => u64,
///     }
/// }
///
/// fn takes_events(_: <Jobs as isolated_workers::Contract>::Event) {}
/// takes_events(JobEvent::Progress(50));
/// ```
#[macro_export]
macro_rules! contract {
    (
        $(#[$meta:meta])*
        $vis:vis $name:ident $( ( $($option:ident = $value:tt),* $(,)? ) )? {
            $( $(#[$local:ident])? $msg:ident $(as $wire:literal)? => $reply:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $name;

        impl $crate::Contract for $name {
            const NAME: &'static str = stringify!($name);
            const VERSION: u32 = $crate::__contract_option!(version, (1) $(, $($option = $value),*)?);
            type Serializer = $crate::__contract_option!(
                serializer, ($crate::MessagePack) $(, $($option = $value),*)?
            );
            type Event = $crate::__contract_option!(
                events, ($crate::contract::NoEvents) $(, $($option = $value),*)?
            );
        }

        $(
            impl $crate::__private::actix::Message for $msg {
                type Result = ::std::result::Result<$reply, $crate::WorkerError>;
            }
            impl $crate::WorkerMessage for $msg {
                const NAME: &'static str = $crate::__wire_name!($msg $(, $wire)?);
                type Reply = $reply;
                $crate::__message_codec!($($local)?);
            }
            impl $crate::InContract<$name> for $msg {}
        )*

        impl<A> $crate::worker::ServedBy<A> for $name
        where
            A: $crate::__private::actix::Actor<Context = $crate::__private::actix::Context<A>>
                $( + $crate::__private::actix::Handler<$msg> )*,
        {
            fn routes() -> $crate::worker::Routes<A, <Self as $crate::Contract>::Serializer> {
                let mut routes = $crate::worker::Routes::new();
                $( routes.add::<$msg>(); )*
                routes
            }
        }
    };
}

/// The portability and codec functions of a contract message: serde for
/// portable messages, a clear error for `#[local]` ones (which no driver
/// that serializes can be asked to carry).
#[doc(hidden)]
#[macro_export]
macro_rules! __message_codec {
    () => {
        type Portability = $crate::contract::Portable;
        fn encode<S: $crate::Serializer>(
            &self,
            out: &mut $crate::__private::BytesMut,
        ) -> ::std::result::Result<(), $crate::CodecError> {
            S::encode(self, out)
        }
        fn decode<S: $crate::Serializer>(
            bytes: &[u8],
        ) -> ::std::result::Result<Self, $crate::CodecError> {
            S::decode(bytes)
        }
        fn encode_reply<S: $crate::Serializer>(
            reply: &Self::Reply,
            out: &mut $crate::__private::BytesMut,
        ) -> ::std::result::Result<(), $crate::CodecError> {
            S::encode(reply, out)
        }
        fn decode_reply<S: $crate::Serializer>(
            bytes: &[u8],
        ) -> ::std::result::Result<Self::Reply, $crate::CodecError> {
            S::decode(bytes)
        }
    };
    (local) => {
        type Portability = $crate::contract::LocalOnly;
        fn encode<S: $crate::Serializer>(
            &self,
            _: &mut $crate::__private::BytesMut,
        ) -> ::std::result::Result<(), $crate::CodecError> {
            Err($crate::CodecError::local_only(
                <Self as $crate::WorkerMessage>::NAME,
            ))
        }
        fn decode<S: $crate::Serializer>(
            _: &[u8],
        ) -> ::std::result::Result<Self, $crate::CodecError> {
            Err($crate::CodecError::local_only(
                <Self as $crate::WorkerMessage>::NAME,
            ))
        }
        fn encode_reply<S: $crate::Serializer>(
            _: &Self::Reply,
            _: &mut $crate::__private::BytesMut,
        ) -> ::std::result::Result<(), $crate::CodecError> {
            Err($crate::CodecError::local_only(
                <Self as $crate::WorkerMessage>::NAME,
            ))
        }
        fn decode_reply<S: $crate::Serializer>(
            _: &[u8],
        ) -> ::std::result::Result<Self::Reply, $crate::CodecError> {
            Err($crate::CodecError::local_only(
                <Self as $crate::WorkerMessage>::NAME,
            ))
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wire_name {
    ($msg:ident) => {
        stringify!($msg)
    };
    ($msg:ident, $wire:literal) => {
        $wire
    };
}

/// Picks `key = value` from a contract's options, or the default.
#[doc(hidden)]
#[macro_export]
macro_rules! __contract_option {
    ($key:ident, $default:tt) => { $default };
    (version, $default:tt, version = $value:tt $(, $($rest:tt)*)?) => { $value };
    (serializer, $default:tt, serializer = $value:tt $(, $($rest:tt)*)?) => { $value };
    (events, $default:tt, events = $value:tt $(, $($rest:tt)*)?) => { $value };
    ($key:ident, $default:tt, $other:ident = $value:tt $(, $($rest:tt)*)?) => {
        $crate::__contract_option!($key, $default $(, $($rest)*)?)
    };
}
