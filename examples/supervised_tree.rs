//! An app actor supervising two workers, one in a child process and one on
//! a thread. Mid-stream the child is killed with SIGKILL: the app hears of
//! the crash and of the restart, no request of the stream is lost (they are
//! safe to retry), and the next request is answered by the fresh worker.
//!
//! Run: `cargo run --example supervised_tree`

use actix::prelude::*;
use isolated_workers::{
    ChildProcess, Close, CrashPolicy, LifecycleEvent, Thread, Worker, WorkerError, WorkerOptions,
};
use rustix::process::{kill_process, Pid, Signal};
use serde::{Deserialize, Serialize};

/// Squares a number (safe to run twice).
#[derive(Debug, Serialize, Deserialize)]
struct Square(u64);

/// Asks for the worker's process id.
#[derive(Debug, Serialize, Deserialize)]
struct WhoAmI;

isolated_workers::contract! {
    Math {
        Square => u64,
        WhoAmI => u32,
    }
}

/// The worker: a plain actix actor, the same for both drivers.
struct Squarer;

impl Actor for Squarer {
    type Context = Context<Self>;
}

impl Handler<Square> for Squarer {
    type Result = Result<u64, WorkerError>;
    fn handle(&mut self, Square(n): Square, _: &mut Context<Self>) -> Self::Result {
        Ok(n * n)
    }
}

impl Handler<WhoAmI> for Squarer {
    type Result = Result<u32, WorkerError>;
    fn handle(&mut self, _: WhoAmI, _: &mut Context<Self>) -> Self::Result {
        Ok(std::process::id())
    }
}

/// The application: starts its two workers under supervision, watches
/// them, and remembers what it heard.
#[derive(Default)]
struct App {
    child: Option<Addr<Worker<Math>>>,
    thread: Option<Addr<Worker<Math, Thread<Squarer>>>>,
    heard: Vec<LifecycleEvent>,
}

impl Actor for App {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let options = WorkerOptions::default()
            .on_crash::<Square>(CrashPolicy::Retry { attempts: 2 })
            .watched_by(ctx.address().recipient());
        let child = Worker::supervise(ChildProcess::current_exe("math"), options.clone());
        let thread = Worker::supervise(Thread::new(|| Squarer), options);
        // The app handles nothing until both workers are up.
        ctx.wait(
            async move { (child.await, thread.await) }
                .into_actor(self)
                .map(|(child, thread), app, ctx| match (child, thread) {
                    (Ok(child), Ok(thread)) => {
                        app.child = Some(child);
                        app.thread = Some(thread);
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("a worker did not start: {e}");
                        ctx.stop();
                    }
                }),
        );
    }
}

impl Handler<LifecycleEvent> for App {
    type Result = ();
    fn handle(&mut self, event: LifecycleEvent, _: &mut Context<Self>) {
        println!("app heard: {event:?}");
        self.heard.push(event);
    }
}

/// Hands out the workers and what the app heard so far.
#[derive(Message)]
#[rtype(result = "Option<Tree>")]
struct Inspect;

struct Tree {
    child: Addr<Worker<Math>>,
    thread: Addr<Worker<Math, Thread<Squarer>>>,
    heard: Vec<LifecycleEvent>,
}

impl Handler<Inspect> for App {
    type Result = Option<Tree>;
    fn handle(&mut self, _: Inspect, _: &mut Context<Self>) -> Option<Tree> {
        Some(Tree {
            child: self.child.clone()?,
            thread: self.thread.clone()?,
            heard: self.heard.clone(),
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    isolated_workers::worker_entry::<Math, _>("math", || Squarer);

    actix::System::new().block_on(async {
        let app = App::default().start();
        let tree = app
            .send(Inspect)
            .await?
            .ok_or("the workers did not start")?;
        let child_id = tree.child.send(isolated_workers::Status).await?.id;
        let first_pid = tree.child.send(WhoAmI).await??;

        // A stream of requests to both workers; the child dies halfway.
        let mut stream = Vec::new();
        for n in 0..200u64 {
            stream.push((n, tree.child.send(Square(n)), tree.thread.send(Square(n))));
            if n == 100 {
                println!("killing the child worker (pid {first_pid}) with SIGKILL");
                let pid = i32::try_from(first_pid).ok().and_then(Pid::from_raw);
                kill_process(pid.ok_or("not a process id")?, Signal::KILL)?;
            }
        }
        for (n, child, thread) in stream {
            let (child, thread) = (child.await??, thread.await??);
            if child != n * n || thread != n * n {
                return Err(format!("wrong square of {n}: {child}, {thread}").into());
            }
        }
        println!("all 200 requests to each worker answered");

        // The proxy told the app before it resent the requests, so the app
        // has heard it by now.
        let heard = app.send(Inspect).await?.ok_or("no workers")?.heard;
        let child_events: Vec<_> = heard.iter().filter(|e| e.worker() == child_id).collect();
        let crash_then_restart = matches!(
            child_events.as_slice(),
            [
                LifecycleEvent::Crashed { .. },
                LifecycleEvent::Restarted { restarts: 1, .. }
            ]
        );
        if !crash_then_restart {
            return Err(
                format!("the app heard {child_events:?}, not a crash and a restart").into(),
            );
        }
        let second_pid = tree.child.send(WhoAmI).await??;
        if second_pid == first_pid {
            return Err("the killed worker still answers".into());
        }
        println!(
            "the fresh worker (pid {second_pid}) answers: 12² = {}",
            tree.child.send(Square(12)).await??
        );
        tree.child.send(Close).await?;
        tree.thread.send(Close).await?;
        Ok(())
    })
}
