//! The Prometheus + Alertmanager path of a comparison: a real Alertmanager whose webhook
//! goes to a receiver in this process that records when each alert first arrived firing.
//! Declared by the benches that compare against it, beside the tests' `support` and
//! `promstack` modules.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::routing::post;

use crate::{promstack, support};

/// When each alert's first firing webhook arrived.
#[derive(Clone, Default)]
pub struct Hook {
    first: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Hook {
    /// When `alert` first arrived firing.
    pub fn at(&self, alert: &str) -> Option<Instant> {
        self.first.lock().unwrap().get(alert).copied()
    }

    /// When any alert first arrived firing.
    pub fn first(&self) -> Option<Instant> {
        self.first.lock().unwrap().values().min().copied()
    }
}

async fn receive(State(hook): State<Hook>, body: String) -> &'static str {
    let now = Instant::now();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("alertmanager's webhook body is not JSON ({e}): {body}");
    });
    let mut first = hook.first.lock().unwrap();
    for alert in body["alerts"].as_array().into_iter().flatten() {
        if alert["status"] == "firing"
            && let Some(name) = alert["labels"]["alertname"].as_str()
        {
            first.entry(name.to_owned()).or_insert(now);
        }
    }
    "ok"
}

/// A running Alertmanager, the receiver of its webhook, and what the receiver heard.
pub struct Alerting {
    pub hook: Hook,
    pub alertmanager: promstack::Server,
    receiver: support::TestServer,
}

/// Starts the receiver, then Alertmanager on `config` with `URL` standing for the
/// receiver's webhook URL.
pub async fn start(config: &str) -> Alerting {
    let hook = Hook::default();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(hook.clone());
    let receiver = support::serve(app).await;
    let alertmanager =
        promstack::alertmanager(&config.replace("URL", &receiver.url("/hook"))).await;
    Alerting {
        hook,
        alertmanager,
        receiver,
    }
}
