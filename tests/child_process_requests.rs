//! Requests to a child-process worker: replies, remote errors, many in flight.

mod support;

use isolated_workers::{ChildProcess, Close, Worker, WorkerError};
use support::*;

fn main() {
    enter_workers();
    run(vec![actix_test(
        "round_trip_returns_the_workers_reply",
        || async {
            let worker = Worker::<Calc, ChildProcess>::spawn(ChildProcess::current_exe("calc"))
                .await
                .map_err(fail)?;
            let pong = worker
                .send(Ping { text: "hi".into() })
                .await
                .map_err(fail)?
                .map_err(fail)?;
            assert_eq!(pong.text, "pong: hi");
            let pid = worker.send(WhoAmI).await.map_err(fail)?.map_err(fail)?;
            assert_ne!(pid, std::process::id(), "answered by a separate process");
            let err = worker
                .send(Divide { a: 1.0, b: 0.0 })
                .await
                .map_err(fail)?
                .unwrap_err();
            assert!(
                matches!(err, WorkerError::Remote(ref r) if r.name == "DivideByZero"),
                "{err}"
            );
            worker.send(Close).await.map_err(fail)?;
            Ok(())
        },
    )]);
}
