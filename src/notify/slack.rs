//! Slack (to be built).

use std::time::Duration;

use super::{Delivery, Message};
use crate::config::SlackSpec;

#[derive(Debug)]
pub struct Slack {
    timeout: Duration,
}

impl Slack {
    pub fn new(_spec: &SlackSpec, _client: &reqwest::Client, timeout: Duration) -> Slack {
        Slack { timeout }
    }

    pub async fn send(&self, _msg: &Message, _thread: Option<&str>) -> Delivery {
        let _ = self.timeout;
        Delivery::Rejected {
            reason: "not built yet".to_owned(),
        }
    }
}
