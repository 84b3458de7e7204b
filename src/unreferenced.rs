//! Stopping an actor once no `Addr` to it is left.

use std::pin::Pin;
use std::task::Poll;

use actix::prelude::*;

/// Spawned into an actor's context, stops the actor once no `Addr` to it
/// is left.
///
/// actix keeps an actor alive while its context has streams, timers or
/// futures registered; an actor that always has some (a proxy's socket
/// reader and writer, a pool's idle timers and requests in flight) would
/// otherwise run until the System stops. The context polls every
/// registered item when its last address is dropped, so this sees it at
/// once.
pub(crate) struct StopWhenUnreferenced;

impl<A: Actor<Context = Context<A>>> ActorFuture<A> for StopWhenUnreferenced {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        _: &mut A,
        ctx: &mut Context<A>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        if ctx.connected() {
            Poll::Pending
        } else {
            ctx.stop();
            Poll::Ready(())
        }
    }
}
