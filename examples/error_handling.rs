//! A handler error travels to the host as a structured `RemoteError` (name,
//! message, code); the worker keeps serving the next request.
//!
//! Run: `cargo run --example error_handling`

use actix::prelude::*;
use isolated_workers::{ChildProcess, Close, RemoteError, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// Divides `a` by `b` in the worker.
#[derive(Debug, Serialize, Deserialize)]
struct Divide {
    a: f64,
    b: f64,
}

isolated_workers::contract! {
    /// Arithmetic that can fail.
    Calc {
        Divide => f64,
    }
}

struct Calculator;

impl Actor for Calculator {
    type Context = Context<Self>;
}

impl Handler<Divide> for Calculator {
    type Result = Result<f64, WorkerError>;

    fn handle(&mut self, Divide { a, b }: Divide, _: &mut Context<Self>) -> Self::Result {
        if b == 0.0 {
            let error = RemoteError::new("DivideByZero", format!("cannot divide {a} by zero"));
            return Err(error.with_code(22).into());
        }
        Ok(a / b)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    isolated_workers::worker_entry::<Calc, _>("calc", || Calculator);

    actix::System::new().block_on(async {
        let worker = Worker::<Calc, ChildProcess>::spawn(ChildProcess::current_exe("calc")).await?;

        match worker.send(Divide { a: 1.0, b: 0.0 }).await? {
            Err(WorkerError::Remote(error)) => {
                println!("remote error: {} ({})", error.name, error.message);
                if error.name != "DivideByZero" || error.code != Some(22) {
                    return Err(format!("unexpected remote error: {error}").into());
                }
            }
            other => return Err(format!("expected a remote error, got {other:?}").into()),
        }

        let quotient = worker.send(Divide { a: 84.0, b: 2.0 }).await??;
        println!("the worker still serves: 84 / 2 = {quotient}");
        if quotient != 42.0 {
            return Err("wrong quotient".into());
        }
        worker.send(Close).await?;
        Ok(())
    })
}
