//! A local stand-in for a notification provider: a real HTTP server that records every
//! request, checks it with the provider's own validator (answering 400 with the
//! violation, as the provider would), and answers from a script: a status with a body,
//! 429 or 503 with `Retry-After`, or no answer at all.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::support::{TestServer, serve};

/// One request as the provider received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (failing the test) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the provider answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and body (JSON or text).
    Status(u16, String),
    /// This status with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Read the request, then never answer.
    Hang,
}

/// Checks one request against the provider's documented schema and limits; `Err` is
/// answered with 400 and the message, and kept in [`Provider::violations`].
pub type Validator = fn(&Recorded) -> Result<(), String>;

/// Builds the answer to an accepted request (e.g. Slack's `{"ok":true,"ts":...}`).
pub type Responder = fn(&Recorded, usize) -> Answer;

struct Inner {
    requests: Mutex<Vec<Recorded>>,
    violations: Mutex<Vec<String>>,
    script: Mutex<VecDeque<Answer>>,
    validate: Validator,
    respond: Responder,
}

/// The running provider. Dropping it stops the server.
pub struct Provider {
    pub server: TestServer,
    inner: Arc<Inner>,
}

impl Provider {
    /// Starts a provider that validates with `validate` and, when the script is empty,
    /// answers with `respond` (given the request and its index from 0).
    pub async fn start(validate: Validator, respond: Responder) -> Provider {
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            validate,
            respond,
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        Provider {
            server: serve(router).await,
            inner,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Answers the next requests with these, in order, before falling back to the
    /// responder. Scripted answers are given after validation passes.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.script.lock().unwrap().extend(answers);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Every schema or limit violation seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.inner.violations.lock().unwrap().clone()
    }

    /// Fails the test when any request broke the provider's schema.
    pub fn assert_valid(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "requests broke the provider's schema: {v:#?}");
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.to_string()),
        headers,
        body: body.to_vec(),
    };
    let index = {
        let mut requests = inner.requests.lock().unwrap();
        requests.push(recorded.clone());
        requests.len() - 1
    };
    if let Err(violation) = (inner.validate)(&recorded) {
        inner.violations.lock().unwrap().push(violation.clone());
        return (StatusCode::BAD_REQUEST, violation).into_response();
    }
    let scripted = inner.script.lock().unwrap().pop_front();
    match scripted.unwrap_or_else(|| (inner.respond)(&recorded, index)) {
        Answer::Status(code, body) => {
            let status = StatusCode::from_u16(code).expect("a valid status");
            let kind = if body.trim_start().starts_with(['{', '[']) {
                "application/json"
            } else {
                "text/plain"
            };
            (status, [(axum::http::header::CONTENT_TYPE, kind)], body).into_response()
        }
        Answer::RetryAfter(code, secs) => {
            let status = StatusCode::from_u16(code).expect("a valid status");
            (
                status,
                [(axum::http::header::RETRY_AFTER, secs.to_string())],
                "slow down",
            )
                .into_response()
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}
