//! actix-web glue (feature `actix-web`): [`WorkerError`] as an
//! [`actix_web::ResponseError`], so that a handler offloading to a worker
//! or pool returns its error with `?` and the client gets the HTTP status
//! that says what happened. This module owns the status of each error and
//! the text a client may see.
//!
//! | error | status |
//! |---|---|
//! | `Overloaded`, and a `Timeout` that expired in the queue | 503, `Retry-After: 1` |
//! | `Timeout` on a worker | 504 |
//! | `Crashed` | 502 |
//! | `GaveUp`, `Closed`, `Disconnected`, `NoMember` | 503 |
//! | `Remote`, `Rejected`, `Protocol`, `Unencodable`, `UndecodableReply`, `TooLarge` | 500 |

use actix_web::body::BoxBody;
use actix_web::http::header::{self, ContentType};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::WorkerError;

/// The `Retry-After` of an `Overloaded` response, in seconds: the pool
/// does not know when room will come, and a queue bound is usually left
/// within moments, so the shortest wait the header can say.
const RETRY_AFTER_SECONDS: u32 = 1;

/// The HTTP status of each [`WorkerError`], and a short plain-text body.
///
/// - `Crashed` is a 502 (Bad Gateway): the worker is this service's
///   upstream, and it died while handling the request. `GaveUp`, `Closed`,
///   `Disconnected` and `NoMember` are 503 (Service Unavailable): no
///   worker can take requests now, whatever the request.
/// - `Rejected` (the host's own middleware refused the request) is a 500,
///   like `Remote`: the crate cannot tell whether a refusal was the
///   client's fault. A middleware refusing for the client's sake (a bad
///   parameter, a quota) is the application's to answer with a 4xx: match
///   `WorkerError::Rejected` before returning the error.
/// - The body never carries the error's details: a handler's
///   [`RemoteError`](crate::RemoteError) message, a panic message or a
///   serializer's text may name files, queries or internal state. It is a
///   fixed sentence per kind of error. The full error stays on the server:
///   actix-web keeps it with the response (`HttpResponse::error`), where a
///   logging middleware finds it (actix-web's `Logger` logs it at debug
///   level).
#[cfg_attr(docsrs, doc(cfg(feature = "actix-web")))]
impl ResponseError for WorkerError {
    fn status_code(&self) -> StatusCode {
        match self {
            WorkerError::Overloaded { .. }
            | WorkerError::Timeout { queued: true, .. }
            | WorkerError::GaveUp { .. }
            | WorkerError::Closed
            | WorkerError::Disconnected
            | WorkerError::NoMember { .. } => StatusCode::SERVICE_UNAVAILABLE,
            WorkerError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            WorkerError::Crashed { .. } => StatusCode::BAD_GATEWAY,
            WorkerError::Remote(_)
            | WorkerError::Rejected(_)
            | WorkerError::Protocol(_)
            | WorkerError::Unencodable { .. }
            | WorkerError::UndecodableReply { .. }
            | WorkerError::TooLarge { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header(ContentType::plaintext());
        if overloaded(self) {
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
        }
        response.body(public_text(self))
    }
}

/// Whether `error` says the service had no room for the request: its queue
/// was full, or the request's time ran out while it waited there (no
/// worker was slow with it: there were too many before it).
fn overloaded(error: &WorkerError) -> bool {
    matches!(
        error,
        WorkerError::Overloaded { .. } | WorkerError::Timeout { queued: true, .. }
    )
}

/// What a client is told of `error`: its kind, none of its details.
fn public_text(error: &WorkerError) -> &'static str {
    match error {
        WorkerError::Overloaded { .. } => "too many requests are waiting for a worker; retry later",
        WorkerError::Timeout { queued: true, .. } => {
            "too many requests were waiting for a worker; retry later"
        }
        WorkerError::Timeout { .. } => "the worker did not answer in time",
        WorkerError::Crashed { .. } => "the worker crashed while handling the request",
        WorkerError::GaveUp { .. } => "the worker keeps crashing; retry later",
        WorkerError::Closed => "the worker is closed",
        WorkerError::Disconnected => "the worker is disconnected",
        WorkerError::NoMember { .. } => "no worker could be started",
        WorkerError::Remote(_) => "the worker could not handle the request",
        WorkerError::Rejected(_) => "the request was refused before it reached a worker",
        WorkerError::Protocol(_) => "the worker could not serve the request",
        WorkerError::Unencodable { .. } => "the request could not be sent to a worker",
        WorkerError::UndecodableReply { .. } => "the worker's reply could not be read",
        WorkerError::TooLarge { .. } => "the request is too large for a worker",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use actix_web::body::MessageBody;

    use super::*;
    use crate::{Crash, CrashReason, ProtocolFailure, RemoteError, SpawnError};

    /// A secret a handler's error might carry, which no client may see.
    const SECRET: &str = "/srv/secret/config.toml";

    /// One error of each kind, each carrying [`SECRET`] where it has text,
    /// with the status it must map to.
    fn every_error() -> Vec<(WorkerError, StatusCode)> {
        let remote = || RemoteError::new("Leaky", SECRET);
        let crash = || Crash::new(CrashReason::Panic, Some(SECRET.into()));
        vec![
            (
                WorkerError::Overloaded { limit: 8 },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                WorkerError::Timeout {
                    after: Duration::from_secs(3),
                    message: "Work",
                    queued: false,
                },
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                WorkerError::Timeout {
                    after: Duration::from_secs(3),
                    message: "Work",
                    queued: true,
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                WorkerError::Crashed {
                    reason: CrashReason::Signal(9),
                    message: Some(SECRET.into()),
                    attempt: 2,
                },
                StatusCode::BAD_GATEWAY,
            ),
            (
                WorkerError::GaveUp {
                    restarts: 3,
                    within: Duration::from_secs(60),
                    last: crash(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (WorkerError::Closed, StatusCode::SERVICE_UNAVAILABLE),
            (WorkerError::Disconnected, StatusCode::SERVICE_UNAVAILABLE),
            (
                WorkerError::NoMember {
                    cause: Arc::new(SpawnError::Panicked {
                        message: SECRET.into(),
                    }),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                WorkerError::Remote(remote()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                WorkerError::Rejected(remote()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                WorkerError::Protocol(ProtocolFailure::ReplyUnencodable {
                    detail: SECRET.into(),
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                WorkerError::Unencodable {
                    message: "Work",
                    detail: SECRET.into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                WorkerError::UndecodableReply {
                    message: "Work",
                    detail: SECRET.into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                WorkerError::TooLarge {
                    message: "Work",
                    size: 10,
                    limit: 5,
                },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ]
    }

    #[test]
    fn each_error_has_its_status_and_a_plain_text_body_without_details() {
        for (error, status) in every_error() {
            let response = error.error_response();
            assert_eq!(response.status(), status, "{error:?}");
            assert_eq!(
                response.headers().get(header::CONTENT_TYPE).unwrap(),
                "text/plain; charset=utf-8",
                "{error:?}"
            );
            let body = response.into_body().try_into_bytes().unwrap();
            let body = std::str::from_utf8(&body).unwrap();
            assert_eq!(body, public_text(&error));
            assert!(!body.is_empty(), "{error:?}");
            assert!(!body.contains(SECRET), "{error:?} leaked: {body}");
        }
    }

    #[test]
    fn only_overload_says_when_to_retry() {
        for (error, _) in every_error() {
            let response = error.error_response();
            let retry_after = response.headers().get(header::RETRY_AFTER);
            match error {
                WorkerError::Overloaded { .. } | WorkerError::Timeout { queued: true, .. } => {
                    assert_eq!(retry_after.unwrap(), "1")
                }
                _ => assert!(retry_after.is_none(), "{error:?}"),
            }
        }
    }

    #[test]
    fn a_handler_returns_it_with_question_mark() {
        fn handler() -> Result<HttpResponse, actix_web::Error> {
            Err(WorkerError::Timeout {
                after: Duration::from_secs(1),
                message: "Work",
                queued: false,
            })?
        }
        let error = handler().unwrap_err();
        assert_eq!(
            error.as_response_error().status_code(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
