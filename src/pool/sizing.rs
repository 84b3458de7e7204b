//! The pool's size: taking started members in, starting members up to
//! the minimum and for waiting requests up to the maximum, closing members
//! idle past the idle timeout, replacing members that gave up, and waiting
//! for the starts under way to settle.

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;

use super::member::Member;
use super::status::PoolState;
use super::WorkerPool;
use crate::contract::Contract;
use crate::driver::Driver;
use crate::error::{SpawnError, WorkerError};
use crate::proxy::{Close, Worker};

impl<C: Contract, D: Driver<C> + Clone> WorkerPool<C, D> {
    /// Takes a freshly started member in.
    pub(super) fn add(&mut self, worker: Addr<Worker<C, D>>) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        self.counters.started += 1;
        self.members.push(Member::new(id, worker));
        tracing::debug!(contract = C::NAME, member = id, "pool member started");
        self.members.len() - 1
    }

    /// Starts members until the pool has its minimum (counting those
    /// being started).
    pub(super) fn ensure_min(&mut self, ctx: &mut Context<Self>) {
        while self.members.len() + self.starting < self.options.min_members {
            self.start_member(ctx);
        }
    }

    /// Starts members for the waiting requests, up to the maximum, and no
    /// more at once than those requests need.
    pub(super) fn grow(&mut self, ctx: &mut Context<Self>) {
        let wanted = self.queue.len().div_ceil(self.options.per_member());
        while self.starting < wanted && self.members.len() + self.starting < self.options.ceiling()
        {
            self.start_member(ctx);
        }
    }

    /// Starts one member; it joins the pool (and takes waiting requests)
    /// once ready.
    fn start_member(&mut self, ctx: &mut Context<Self>) {
        self.starting += 1;
        let member = self
            .options
            .member_options
            .clone()
            .watched_by(ctx.address().recipient());
        let spawned = Worker::<C, D>::supervise(self.driver.clone(), member);
        ctx.spawn(spawned.into_actor(self).map(|spawned, pool, ctx| {
            pool.starting -= 1;
            match spawned {
                // While closing it joins too: `Close` closes it with the rest.
                Ok(worker) => {
                    let index = pool.add(worker);
                    if pool.state == PoolState::Open {
                        pool.watch_idle(index, ctx);
                        pool.pump(ctx);
                    }
                }
                Err(error) => pool.start_failed(error),
            }
            if pool.starting == 0 {
                pool.settled.tell_all();
            }
        }));
    }

    /// A member could not be started. If the pool has no member left to
    /// serve them, the waiting requests fail with
    /// [`WorkerError::NoMember`]; otherwise they wait for the members there
    /// are. The next request tries again.
    fn start_failed(&mut self, error: SpawnError) {
        self.counters.start_failures += 1;
        tracing::warn!(contract = C::NAME, %error, "a pool member failed to start");
        if self.members.is_empty() && self.starting == 0 {
            let error = WorkerError::NoMember {
                cause: Arc::new(error),
            };
            for request in self.queue.drain(..) {
                request.fail(error.clone());
            }
        }
    }

    /// Removes member `index`, which gave up, and starts another if the
    /// pool needs one.
    pub(super) fn replace(&mut self, index: usize, ctx: &mut Context<Self>) {
        let member = self.members.remove(index);
        self.counters.replaced += 1;
        tracing::warn!(
            contract = C::NAME,
            member = member.id,
            "a pool member gave up; removing it"
        );
        self.close_member(member, ctx);
        self.ensure_min(ctx);
        self.grow(ctx);
    }

    /// Closes a member that left the pool, in the background.
    fn close_member(&mut self, member: Member<C, D>, ctx: &mut Context<Self>) {
        let worker = member.worker;
        ctx.spawn(
            async move {
                let _ = worker.send(Close).await;
            }
            .into_actor(self),
        );
    }

    /// Looks at member `index` once it has idled for the idle timeout
    /// (unless a look is already due).
    pub(super) fn watch_idle(&mut self, index: usize, ctx: &mut Context<Self>) {
        let member = &mut self.members[index];
        if member.idle_check {
            return;
        }
        member.idle_check = true;
        let id = member.id;
        ctx.run_later(self.options.idle_timeout, move |pool, ctx| {
            pool.idle_check(id, ctx);
        });
    }

    /// Closes member `id` if it has idled for the idle timeout and the pool
    /// has more than its minimum; looks again later if it was busy
    /// meanwhile and is idle again.
    fn idle_check(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(index) = self.position(id) else {
            return;
        };
        let member = &mut self.members[index];
        member.idle_check = false;
        let Some(since) = member.idle_since else {
            return; // busy: watched again when it goes idle
        };
        let idle = since.elapsed();
        let timeout = self.options.idle_timeout;
        if idle < timeout {
            member.idle_check = true;
            ctx.run_later(timeout - idle, move |pool, ctx| pool.idle_check(id, ctx));
            return;
        }
        if self.state == PoolState::Open && self.members.len() > self.options.min_members {
            let member = self.members.remove(index);
            self.counters.retired += 1;
            tracing::debug!(
                contract = C::NAME,
                member = member.id,
                ?idle,
                "closing an idle pool member"
            );
            self.close_member(member, ctx);
        }
    }

    /// Resolves once no member is being started.
    pub(super) fn starts_settled(&mut self) -> impl Future<Output = ()> + 'static {
        let waiting = (self.starting > 0).then(|| self.settled.wait());
        async move {
            if let Some(waiting) = waiting {
                waiting.await;
            }
        }
    }
}
