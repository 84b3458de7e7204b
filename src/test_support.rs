//! Workers spawned from tests of the standard harness (`#[test]`): the
//! [`test_support!`](crate::test_support!) macro, the entry test it writes,
//! and the arguments with which [`ChildProcess::current_exe`] starts a test
//! binary so that libtest runs that one test in the worker and no other.
//!
//! A test binary's `main` is libtest's: a worker that re-runs it would run
//! every test again. So the macro writes one test, the entry test, that
//! calls the user's [`worker_entry`](crate::worker_entry) registrations
//! (which never return in a worker and do nothing in the host), and
//! registers that test's path before `main` with a constructor (the way
//! procspawn does); the driver then starts the binary with libtest's
//! arguments for that test alone ([`libtest_args`]).
//!
//! [`ChildProcess::current_exe`]: crate::ChildProcess::current_exe

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::socket::env;

/// The name of the test [`test_support!`](crate::test_support!) writes (the
/// macro spells it out: an identifier cannot come from a constant;
/// `tests/test_support.rs` fails if the two differ).
pub(crate) const ENTRY_TEST: &str = "isolated_workers_test_entry";

/// The module (as `module_path!` says it) of this binary's entry test, set
/// before `main` when the binary uses [`test_support!`](crate::test_support!).
static ENTRY_MODULE: OnceLock<&'static str> = OnceLock::new();

/// Whether a second module registered an entry test: a constructor cannot
/// report an error, so the first spawn does.
static REGISTERED_TWICE: AtomicBool = AtomicBool::new(false);

/// The exit code of a test binary started as a worker it has no
/// registration for.
const NOT_REGISTERED: i32 = 3;

/// Records the module of this binary's entry test. Called before `main` by
/// the constructor [`test_support!`](crate::test_support!) writes: no
/// allocation, no I/O.
#[doc(hidden)]
pub fn register(module_path: &'static str) {
    if ENTRY_MODULE.set(module_path).is_err() {
        REGISTERED_TWICE.store(true, Ordering::Relaxed);
    }
}

/// The body of the entry test: in a worker, hands over to the worker the
/// user's `workers` registrations name (they never return then); in the
/// host, returns at once (the test passes).
#[doc(hidden)]
pub fn run_entry(workers: impl FnOnce()) {
    let Some(name) = std::env::var_os(env::NAME) else {
        return;
    };
    workers();
    // Still here: none of the registrations is this worker. Back in
    // libtest, the process would exit 0 and the host would read a clean exit.
    eprintln!(
        "isolated-workers: this test binary was started as worker {name:?}, but the \
         registrations given to `test_support!` have no `worker_entry` with that name"
    );
    std::process::exit(NOT_REGISTERED);
}

/// libtest's arguments that run only the entry test, with its output
/// uncaptured (a worker's stderr is the host's to read) and on one thread;
/// `Ok(None)` if this binary does not use
/// [`test_support!`](crate::test_support!).
pub(crate) fn libtest_args() -> Result<Option<[String; 5]>, String> {
    let Some(module) = ENTRY_MODULE.get() else {
        return Ok(None);
    };
    if REGISTERED_TWICE.load(Ordering::Relaxed) {
        return Err(format!(
            "`test_support!` is used more than once in this test binary (once in `{module}`); \
             use it once, with every worker the tests spawn"
        ));
    }
    Ok(Some([
        "--exact".to_owned(),
        entry_test_path(module),
        "--nocapture".to_owned(),
        "--test-threads=1".to_owned(),
        "-q".to_owned(),
    ]))
}

/// The entry test's name as libtest knows it: its module path without the
/// crate's name, then [`ENTRY_TEST`].
fn entry_test_path(module: &str) -> String {
    match module.split_once("::") {
        Some((_crate, inner)) => format!("{inner}::{ENTRY_TEST}"),
        None => ENTRY_TEST.to_owned(),
    }
}

/// Whether the host test binary was asked not to capture output: then the
/// worker's libtest may print to the same stdout; otherwise its stdout
/// ("running 1 test") is dropped, as a test's own output would be.
pub(crate) fn host_shows_output() -> bool {
    std::env::args().any(|arg| {
        matches!(
            arg.as_str(),
            "--nocapture" | "--no-capture" | "--show-output"
        )
    }) || std::env::var_os("RUST_TEST_NOCAPTURE").is_some_and(|value| value != "0")
}

/// Lets tests of the standard harness (`#[test]`, `#[actix::test]`) spawn
/// workers with [`ChildProcess::current_exe`](crate::ChildProcess::current_exe).
/// Use it once per test binary (a file in `tests/`, or the crate's unit
/// tests), naming a function (or closure) that calls
/// [`worker_entry`](crate::worker_entry) for each worker the tests spawn,
/// e.g. the same function the application's `main` calls. Needs the
/// `test-support` feature.
///
/// It writes one test, `isolated_workers_test_entry`. In the host it does
/// nothing and passes. A worker is the test binary started again with
/// libtest's arguments that run only that test (`--exact <path>
/// --nocapture --test-threads=1 -q`), which hands over to the worker and
/// never returns to libtest: no other test runs inside a worker. The
/// worker's stdout is dropped unless the tests run with `--nocapture` or
/// `--show-output`.
///
/// ```no_run
/// use actix::prelude::*;
/// use isolated_workers::{ChildProcess, Close, Worker, WorkerError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Add { a: i64, b: i64 }
/// # isolated_workers::contract! { Calc { Add => i64 } }
/// # #[derive(Default)] struct CalcWorker;
/// # impl Actor for CalcWorker { type Context = Context<Self>; }
/// # impl Handler<Add> for CalcWorker { type Result = Result<i64, WorkerError>;
/// #     fn handle(&mut self, add: Add, _: &mut Context<Self>) -> Self::Result { Ok(add.a + add.b) } }
///
/// // Every worker the tests of this binary spawn.
/// fn workers() {
///     isolated_workers::worker_entry::<Calc, _>("calc", CalcWorker::default);
/// }
///
/// isolated_workers::test_support!(workers);
///
/// #[actix::test]
/// async fn adds_in_a_child_process() {
///     let calc = Worker::<Calc, ChildProcess>::spawn(ChildProcess::current_exe("calc"))
///         .await
///         .unwrap();
///     assert_eq!(calc.send(Add { a: 2, b: 3 }).await.unwrap().unwrap(), 5);
///     calc.send(Close).await.unwrap();
/// }
/// # fn main() {}
/// ```
///
/// Arguments given with [`ChildProcess::arg`](crate::ChildProcess::arg) are
/// refused in such a binary (libtest would read them as test filters).
#[cfg(feature = "test-support")]
#[macro_export]
macro_rules! test_support {
    ($workers:expr $(,)?) => {
        /// The worker entry of this test binary: see `isolated_workers::test_support!`.
        #[test]
        fn isolated_workers_test_entry() {
            $crate::__private::test_support::run_entry($workers);
        }

        $crate::__private::ctor::declarative::ctor! {
            #[ctor(unsafe, anonymous, crate_path = $crate::__private::ctor)]
            fn register_isolated_workers_test_entry() {
                $crate::__private::test_support::register(::std::module_path!());
            }
        }
    };
}

/// Without the `test-support` feature: a compile error that says so.
#[cfg(not(feature = "test-support"))]
#[macro_export]
macro_rules! test_support {
    ($($anything:tt)*) => {
        ::std::compile_error!(
            "`isolated_workers::test_support!` needs the crate's `test-support` feature: \
             isolated-workers = { version = \"...\", features = [\"test-support\"] } \
             in [dev-dependencies]"
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_test_path_drops_the_crate_name() {
        assert_eq!(entry_test_path("my_tests"), ENTRY_TEST);
        assert_eq!(
            entry_test_path("my_crate::tests::workers"),
            format!("tests::workers::{ENTRY_TEST}")
        );
    }
}
