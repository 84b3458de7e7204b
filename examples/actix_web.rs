//! An actix-web service that offloads CPU-bound work to a pool of child
//! workers: a worker that crashes (or is `kill -9`ed) costs no request,
//! and a failed request answers the HTTP status its error calls for.
//!
//! - `GET /primes?n=1000000` counts the primes below `n` on a pool member
//!   (`78498`); `n` above 10 000 000 is a 400.
//! - `GET /status` shows the pool as JSON: each member's pid, state and load.
//! - `POST /shutdown` stops the service, as Ctrl-C (SIGINT) and SIGTERM
//!   do: the server stops, the pool closes its workers, the process exits
//!   0. (An HTTP endpoint that stops the service is for this example,
//!   which listens on 127.0.0.1 only.)
//!
//! Run: `cargo run --example actix_web` (port 8080; `-- --port N` or the
//! `PORT` variable to change it, `0` for any free port), then e.g.
//! `curl 'http://127.0.0.1:8080/primes?n=1000000'`.
//!
//! `main` is a plain `fn main`, not `#[actix_web::main]`: `worker_entry`
//! must run before any runtime starts, because in a worker process it
//! starts one of its own (and it panics, saying so, inside one).
//! `tests/actix_web_example.rs` runs this file.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpResponse, HttpServer};
use isolated_workers::prelude::*;
use isolated_workers::{CrashPolicy, PoolReport, PoolStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Counts the primes below `n`.
#[derive(Debug, Serialize, Deserialize)]
struct CountPrimes {
    n: u64,
}

isolated_workers::contract! {
    /// What a worker of this service does.
    Primes {
        CountPrimes => u64,
    }
}

/// The worker: counts by trial division, on purpose the slow way.
struct PrimeCounter;

impl Actor for PrimeCounter {
    type Context = Context<Self>;
}

impl Handler<CountPrimes> for PrimeCounter {
    type Result = Result<u64, WorkerError>;

    fn handle(&mut self, job: CountPrimes, _: &mut Context<Self>) -> Self::Result {
        Ok((0..job.n).filter(|&n| is_prime(n)).count() as u64)
    }
}

/// Whether `n` is prime, by trial division.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The largest `n` a request may ask for: beyond it a count takes longer
/// than a web request should.
const MAX_N: u64 = 10_000_000;

/// The pool the handlers send to.
type Pool = Addr<WorkerPool<Primes, ChildProcess>>;

/// The service. (`pub`: `tests/actix_web_example.rs` compiles this file in
/// as a module and runs it.)
pub fn main() -> std::io::Result<()> {
    // First, before any runtime: in a worker process this serves and
    // never returns.
    isolated_workers::worker_entry::<Primes, _>("primes", || PrimeCounter);
    let port = port()?;
    actix_web::rt::System::new().block_on(serve(port))
}

/// The port to listen on: `--port N` (or `--port=N`), else `PORT`, else 8080.
fn port() -> std::io::Result<u16> {
    let mut args = std::env::args().skip(1);
    let mut given = std::env::var("PORT").ok();
    while let Some(arg) = args.next() {
        if arg == "--port" {
            given = args.next();
        } else if let Some(port) = arg.strip_prefix("--port=") {
            given = Some(port.to_owned());
        }
    }
    match given {
        None => Ok(8080),
        Some(port) => port.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("not a port: {port:?}"),
            )
        }),
    }
}

/// Starts the pool and the server; returns once the server has stopped
/// (SIGINT, SIGTERM or `POST /shutdown`) and the pool has closed.
async fn serve(port: u16) -> std::io::Result<()> {
    // Counting primes is safe to run twice: a request whose worker dies
    // under it is sent to a fresh one.
    let members = WorkerOptions::default()
        .request_timeout(Duration::from_secs(20))
        .on_crash::<CountPrimes>(CrashPolicy::Retry { attempts: 2 });
    let options = PoolOptions::default()
        .members(2)
        .max_queued(256)
        .member_options(members);
    let pool = WorkerPool::<Primes, _>::spawn_with(ChildProcess::current_exe("primes"), options)
        .await
        .map_err(std::io::Error::other)?;

    let stop = Arc::new(Notify::new());
    let app_pool = web::Data::new(pool.clone());
    let app_stop = web::Data::from(stop.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_pool.clone())
            .app_data(app_stop.clone())
            .route("/primes", web::get().to(primes))
            .route("/status", web::get().to(status))
            .route("/shutdown", web::post().to(shutdown))
    })
    .bind(("127.0.0.1", port))?;
    for address in server.addrs() {
        println!("listening on http://{address}");
    }
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        stop.notified().await;
        handle.stop(true).await;
    });
    server.await?;

    pool.send(Close).await.map_err(std::io::Error::other)?;
    println!("stopped");
    Ok(())
}

/// The query of `GET /primes`.
#[derive(Debug, Deserialize)]
struct PrimesQuery {
    n: u64,
}

/// `GET /primes?n=`: the number of primes below `n`, counted on a worker.
/// A `WorkerError` becomes its HTTP status through `?` (the crate's
/// `actix-web` feature).
async fn primes(
    pool: web::Data<Pool>,
    query: web::Query<PrimesQuery>,
) -> Result<String, actix_web::Error> {
    let n = query.n;
    if n > MAX_N {
        return Err(actix_web::error::ErrorBadRequest(format!(
            "n must be at most {MAX_N}\n"
        )));
    }
    let count = pool.call(CountPrimes { n }).await?;
    Ok(format!("{count}\n"))
}

/// `GET /status`: the pool's report as JSON (`PoolReport` is
/// `Serialize`): its state, queue, counters and totals, and each member's
/// load and `WorkerStatus` (pid, state, restarts, counters).
async fn status(pool: web::Data<Pool>) -> Result<web::Json<PoolReport>, WorkerError> {
    let report = pool
        .send(PoolStatus)
        .await
        .map_err(|_| WorkerError::Closed)?;
    Ok(web::Json(report))
}

/// `POST /shutdown`: stops the server (letting requests in flight finish),
/// then the pool.
async fn shutdown(stop: web::Data<Notify>) -> HttpResponse {
    stop.notify_one();
    HttpResponse::Accepted().body("stopping\n")
}
