//! The typed message set that host and worker share: [`Contract`],
//! [`WorkerMessage`], and the [`contract!`](crate::contract!) macro that
//! declares them.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::WorkerError;
use crate::wire::Serializer;

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
}

/// A message with a stable wire name and one reply type.
///
/// Its actix result is `Result<Self::Reply, WorkerError>`: on the host that
/// is what `send` resolves to; on the worker the handler returns it, with
/// `Err(RemoteError::new(..).into())` for a failure the host should see.
pub trait WorkerMessage:
    actix::Message<Result = Result<<Self as WorkerMessage>::Reply, WorkerError>>
    + Serialize
    + DeserializeOwned
    + Send
    + 'static
{
    /// The name this message travels under; unique within its contract.
    const NAME: &'static str;
    /// What the worker answers with.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

/// Marks `Self` as one of the messages of contract `C`; only these can be
/// sent to a `Worker<C, _>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a message of contract `{C}`",
    label = "a `Worker<{C}, _>` accepts only the messages its contract declares",
    note = "add `{Self}` to the `contract!` that declares `{C}`, or send it to a worker of the contract that has it"
)]
pub trait InContract<C: Contract>: WorkerMessage {}

/// Declares a contract: a unit struct implementing [`Contract`], and for each
/// message its reply type and wire name (the type's name unless given with
/// `as "name"`).
///
/// The message and reply types are ordinary serde types defined beside it.
/// A message belongs to one contract.
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
#[macro_export]
macro_rules! contract {
    (
        $(#[$meta:meta])*
        $vis:vis $name:ident $( ( $($option:ident = $value:tt),* $(,)? ) )? {
            $( $msg:ident $(as $wire:literal)? => $reply:ty ),* $(,)?
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
        }

        $(
            impl $crate::__private::actix::Message for $msg {
                type Result = ::std::result::Result<$reply, $crate::WorkerError>;
            }
            impl $crate::WorkerMessage for $msg {
                const NAME: &'static str = $crate::__wire_name!($msg $(, $wire)?);
                type Reply = $reply;
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
    ($key:ident, $default:tt, $other:ident = $value:tt $(, $($rest:tt)*)?) => {
        $crate::__contract_option!($key, $default $(, $($rest)*)?)
    };
}
