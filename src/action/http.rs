//! The HTTP action: one request to a deploy tool's or load balancer's API, with
//! placeholders substituted in the URL (percent-encoded) and the body (JSON-escaped).
//!
//! Success is a status in `expect_status`. The output names the method, the URL without
//! credentials and the status, then the start of the response body. Header values are
//! never shown, and secret header values are scrubbed from anything the server echoes
//! back. This module does not retry.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::{ActionContext, ActionOutput, json_escape, percent_encode, substitute_text, timed_out};
use crate::config::{HeaderValue, HttpCallSpec};

/// How much of the response body the output keeps.
pub const BODY_SHOWN: usize = 2 * 1024;

/// A configured HTTP step.
#[derive(Debug, Clone)]
pub struct HttpCall {
    spec: HttpCallSpec,
    client: reqwest::Client,
}

impl HttpCall {
    pub fn new(spec: &HttpCallSpec, client: &reqwest::Client) -> HttpCall {
        HttpCall {
            spec: spec.clone(),
            client: client.clone(),
        }
    }

    /// Sends the request once; the whole exchange is bounded by `timeout`.
    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        let output = match tokio::time::timeout(timeout, self.call(ctx, timeout)).await {
            Ok(Ok((ok, output, error))) => ActionOutput {
                ok,
                output,
                error,
                duration: started.elapsed(),
            },
            Ok(Err((error, output))) => ActionOutput::failed(error, output, started),
            Err(_) => ActionOutput::failed(timed_out(timeout), String::new(), started),
        };
        self.scrub(output)
    }

    /// `Ok((ok, output, error))` when an answer came, `Err((error, output))` otherwise.
    async fn call(
        &self,
        ctx: &ActionContext,
        timeout: Duration,
    ) -> Result<(bool, String, Option<String>), (String, String)> {
        let url_text =
            substitute_text(&self.spec.url, ctx, percent_encode).map_err(|e| (e, String::new()))?;
        let url = reqwest::Url::parse(&url_text).map_err(|e| {
            (
                format!("the url is not valid after substitution: {e}"),
                String::new(),
            )
        })?;
        let shown = format!("{} {}", self.spec.method, crate::http::redacted(&url));
        let body = match &self.spec.body {
            Some(template) => {
                Some(substitute_text(template, ctx, json_escape).map_err(|e| (e, String::new()))?)
            }
            None => None,
        };
        let headers = self
            .headers(body.as_deref())
            .map_err(|e| (e, String::new()))?;
        let mut request = self
            .client
            .request(self.spec.method.clone(), url)
            .headers(headers)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.body(body);
        }
        let mut response = request.send().await.map_err(|e| {
            let error = if e.is_timeout() {
                timed_out(timeout)
            } else {
                crate::http::describe_error(&e)
            };
            (error, format!("{shown} -> no answer"))
        })?;
        let status = response.status().as_u16();
        let mut output = format!("{shown} -> {status}");
        let (text, read_error) = read_start(&mut response).await;
        if !text.is_empty() {
            output.push('\n');
            output.push_str(&text);
        }
        if !self.spec.expect_status.contains(&status) {
            let expected: Vec<String> =
                self.spec.expect_status.iter().map(u16::to_string).collect();
            let error = format!("status {status}, expected one of {}", expected.join(", "));
            return Ok((false, output, Some(error)));
        }
        if let Some(e) = read_error {
            // The status is the verdict; a body cut short is worth noting, not failing.
            output.push_str(&format!("\n[reading the body failed: {e}]"));
        }
        Ok((true, output, None))
    }

    fn headers(&self, body: Option<&str>) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.spec.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name:?} is not valid"))?;
            let (text, secret) = match value {
                HeaderValue::Plain(v) => (v.as_str(), false),
                HeaderValue::Secret(v) => (v.expose_secret(), true),
            };
            // The error names the header only: its value may be a secret.
            let mut value = reqwest::header::HeaderValue::from_str(text)
                .map_err(|_| format!("the value of header {name} is not a valid header value"))?;
            value.set_sensitive(secret);
            map.append(header, value);
        }
        if let Some(body) = body
            && !map.contains_key(CONTENT_TYPE)
            && serde_json::from_str::<serde_json::Value>(body).is_ok()
        {
            map.insert(
                CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static("application/json"),
            );
        }
        Ok(map)
    }

    /// Removes secret header values from what a server may have echoed back. A value with
    /// a prefix (`Bearer abc`) is also scrubbed without it.
    fn scrub(&self, mut out: ActionOutput) -> ActionOutput {
        for (_, value) in &self.spec.headers {
            let HeaderValue::Secret(secret) = value else {
                continue;
            };
            let full = secret.expose_secret();
            let mut parts = vec![full];
            if let Some((_, last)) = full.rsplit_once(' ')
                && last.len() >= 8
            {
                parts.push(last);
            }
            for part in parts.into_iter().filter(|p| !p.is_empty()) {
                out.output = out.output.replace(part, "[redacted]");
                out.error = out.error.map(|e| e.replace(part, "[redacted]"));
            }
        }
        out
    }
}

/// The first [`BODY_SHOWN`] bytes of the body as text, and the error that stopped the
/// reading early, if any.
async fn read_start(response: &mut reqwest::Response) -> (String, Option<String>) {
    let mut bytes = Vec::new();
    let mut error = None;
    while bytes.len() <= BODY_SHOWN {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                error = Some(crate::http::describe_error(&e));
                break;
            }
        }
    }
    let cut = bytes.len() > BODY_SHOWN;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        (
            format!("{}\n[... body cut]", crate::source::clip(&text, BODY_SHOWN)),
            error,
        )
    } else {
        (text, error)
    }
}
