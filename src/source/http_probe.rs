//! The HTTP probe: one request per sample, a pass or fail check of the answer's status,
//! body text and a JSON field.
//!
//! Everything the probed service does wrong (no answer, a refused or reset connection, a
//! wrong status, a body that is not what is expected) is a failed check with a detail
//! that says what was seen. A request that cannot even be built, or that rearguard could
//! not send for lack of its own resources (no descriptor for a socket, no memory, no
//! local port: see [`super::own_resource`]), is a source error.
//! Details never contain the URL's credentials, and at most 1 MiB of body is read.

use std::time::Duration;

use serde_json::Value;

use super::{DETAIL_LIMIT, clip};
use crate::config::HttpProbeSpec;
use crate::config::units::format_duration;
use crate::engine::{Measure, ReadingState};

/// The most body a probe reads; a larger body fails the check.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Why a probe did not pass.
enum Miss {
    /// The service failed the check: what was seen.
    Failed(String),
    /// Rearguard could not send the request for lack of this resource of its own.
    Own(&'static str, String),
}

/// A configured HTTP probe.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    spec: HttpProbeSpec,
    timeout: Duration,
    client: reqwest::Client,
}

impl HttpProbe {
    /// A probe whose every request, body included, is bounded by `timeout`.
    pub fn new(spec: &HttpProbeSpec, timeout: Duration, client: &reqwest::Client) -> HttpProbe {
        HttpProbe {
            spec: spec.clone(),
            timeout,
            client: client.clone(),
        }
    }

    /// Sends one request and judges the answer.
    pub async fn sample(&self) -> ReadingState {
        let request = match self
            .client
            .request(self.spec.method.clone(), self.spec.url.clone())
            .timeout(self.timeout)
            .build()
        {
            Ok(request) => request,
            Err(e) => {
                let detail = self.scrub(format!(
                    "cannot build the probe request: {}",
                    crate::http::describe_error(&e)
                ));
                return ReadingState::SourceError(clip(&detail, DETAIL_LIMIT));
            }
        };
        // reqwest's own timeout covers the body too; this bound is the backstop that
        // makes the sample's duration a promise whatever happens below.
        let outcome = match tokio::time::timeout(self.timeout, self.check(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Miss::Failed(self.no_answer())),
        };
        match outcome {
            Ok(()) => ReadingState::Value(Measure::Check {
                ok: true,
                detail: None,
            }),
            Err(Miss::Failed(detail)) => ReadingState::Value(Measure::Check {
                ok: false,
                detail: Some(clip(&self.scrub(detail), DETAIL_LIMIT)),
            }),
            Err(Miss::Own(what, detail)) => super::own_resource_error(what, self.scrub(detail)),
        }
    }

    /// Sends the request and judges the answer: a failed check, or rearguard's own lack
    /// of what sending it takes.
    async fn check(&self, request: reqwest::Request) -> Result<(), Miss> {
        let mut response =
            self.client
                .execute(request)
                .await
                .map_err(|e| match super::own_resource(&e) {
                    Some(what) => Miss::Own(what, crate::http::describe_error(&e)),
                    None => Miss::Failed(self.request_error(&e)),
                })?;
        self.judge(&mut response).await.map_err(Miss::Failed)
    }

    /// `Ok` when the answer passes every configured expectation, else what failed.
    async fn judge(&self, response: &mut reqwest::Response) -> Result<(), String> {
        let status = response.status().as_u16();
        if !self.spec.expect_status.contains(&status) {
            return Err(format!(
                "status {status}, expected {}",
                expected(&self.spec.expect_status)
            ));
        }
        if self.spec.body_contains.is_none() && self.spec.json.is_none() {
            return Ok(());
        }
        let body = self.read_body(response).await?;
        if let Some(needle) = &self.spec.body_contains
            && !String::from_utf8_lossy(&body).contains(needle.as_str())
        {
            return Err(format!("body does not contain {needle:?}"));
        }
        if let Some((pointer, want)) = &self.spec.json {
            let doc: Value =
                serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))?;
            let shown = if pointer.is_empty() {
                "the body"
            } else {
                pointer.as_str()
            };
            match doc.pointer(pointer) {
                None => return Err(format!("{shown} is missing, expected {}", json_text(want))),
                Some(got) if !json_equal(got, want) => {
                    return Err(format!(
                        "{shown} is {}, expected {}",
                        json_text(got),
                        json_text(want)
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    async fn read_body(&self, response: &mut reqwest::Response) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.request_error(&e))? {
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err("body larger than 1 MiB".to_owned());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn request_error(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            self.no_answer()
        } else {
            crate::http::describe_error(error)
        }
    }

    fn no_answer(&self) -> String {
        format!("no answer within {}", format_duration(self.timeout))
    }

    /// Removes the URL's user name and password from text that may quote the URL.
    fn scrub(&self, text: String) -> String {
        let url = &self.spec.url;
        if url.username().is_empty() && url.password().is_none() {
            return text;
        }
        let userinfo = match url.password() {
            Some(password) => format!("{}:{password}@", url.username()),
            None => format!("{}@", url.username()),
        };
        text.replace(url.as_str(), &crate::http::redacted(url))
            .replace(&userinfo, "")
    }
}

fn expected(statuses: &[u16]) -> String {
    match statuses {
        [one] => one.to_string(),
        many => {
            let list: Vec<String> = many.iter().map(u16::to_string).collect();
            format!("one of {}", list.join(", "))
        }
    }
}

/// Equality of JSON values where numbers compare by value, so `1` equals `1.0`.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

fn json_text(value: &Value) -> String {
    clip(&value.to_string(), 100)
}
