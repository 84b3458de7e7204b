//! A worker of either driver, and a pool, handed to code that knows only a
//! message type: each `Addr` converts to a `Recipient<M>` for every
//! message of its contract, and the same code serves all of them.

mod support;

use actix::prelude::*;
use isolated_workers::{Close, PoolOptions, Thread, Worker, WorkerError, WorkerPool};
use libtest_mimic::Failed;
use support::*;

fn main() {
    enter_workers();
    run(vec![
        actix_test("a_child_process_worker_is_a_recipient", || async {
            let worker = spawn_calc().await?;
            use_it(worker.clone().recipient(), "child").await?;
            close(&worker).await
        }),
        actix_test("a_thread_worker_is_a_recipient", || async {
            let worker = Worker::<Calc, _>::spawn(Thread::new(CalcWorker::default))
                .await
                .map_err(fail)?;
            use_it(worker.clone().recipient(), "thread").await?;
            worker.send(Close).await.map_err(fail)
        }),
        actix_test("a_pool_is_a_recipient", || async {
            let options = PoolOptions::default().members(2);
            let pool = WorkerPool::<Calc, _>::spawn_with(calc(), options)
                .await
                .map_err(fail)?;
            use_it(pool.clone().recipient(), "pool").await?;
            pool.send(Close).await.map_err(fail)
        }),
        actix_test("workers_and_pools_mix_as_recipients_of_each_message", mixed),
    ]);
}

/// Code that knows only the message type.
async fn use_it(recipient: Recipient<Ping>, who: &str) -> Result<(), Failed> {
    let pong = recipient
        .send(ping(who))
        .await
        .map_err(fail)?
        .map_err(fail)?;
    assert_eq!(pong.text, format!("pong: {who}"));
    Ok(())
}

/// A list of recipients of one message made of a child worker, a thread
/// worker and a pool (by `From`, as well as by `recipient`), and, from the
/// same addresses, recipients of another message of the contract.
async fn mixed() -> Result<(), Failed> {
    let child = spawn_calc().await?;
    let thread = Worker::<Calc, _>::spawn(Thread::new(CalcWorker::default))
        .await
        .map_err(fail)?;
    let pool = WorkerPool::<Calc, _>::spawn(Thread::new(CalcWorker::default))
        .await
        .map_err(fail)?;
    let pings: Vec<Recipient<Ping>> = vec![
        child.clone().into(),
        thread.clone().into(),
        pool.clone().into(),
    ];
    for (i, recipient) in pings.into_iter().enumerate() {
        use_it(recipient, &i.to_string()).await?;
    }
    let divides: Vec<Recipient<Divide>> = vec![
        child.clone().recipient(),
        thread.clone().recipient(),
        pool.clone().recipient(),
    ];
    for recipient in divides {
        let quotient = recipient
            .send(Divide { a: 9.0, b: 3.0 })
            .await
            .map_err(fail)?
            .map_err(fail)?;
        assert_eq!(quotient, 3.0);
        let refused = recipient
            .send(Divide { a: 1.0, b: 0.0 })
            .await
            .map_err(fail)?;
        assert!(
            matches!(refused, Err(WorkerError::Remote(_))),
            "{refused:?}"
        );
    }
    close(&child).await?;
    thread.send(Close).await.map_err(fail)?;
    pool.send(Close).await.map_err(fail)
}
