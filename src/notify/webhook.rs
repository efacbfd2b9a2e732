//! Webhook (to be built).

use std::time::Duration;

use super::{Delivery, Message};
use crate::config::WebhookSpec;

#[derive(Debug)]
pub struct Webhook {
    timeout: Duration,
}

impl Webhook {
    pub fn new(_spec: &WebhookSpec, _client: &reqwest::Client, timeout: Duration) -> Webhook {
        Webhook { timeout }
    }

    pub async fn send(&self, _msg: &Message, _thread: Option<&str>) -> Delivery {
        let _ = self.timeout;
        Delivery::Rejected {
            reason: "not built yet".to_owned(),
        }
    }
}
