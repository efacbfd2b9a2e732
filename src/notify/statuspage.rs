//! Statuspage (to be built).

use std::time::Duration;

use super::{Delivery, Message};
use crate::config::StatuspageSpec;

#[derive(Debug)]
pub struct Statuspage {
    timeout: Duration,
}

impl Statuspage {
    pub fn new(_spec: &StatuspageSpec, _client: &reqwest::Client, timeout: Duration) -> Statuspage {
        Statuspage { timeout }
    }

    pub async fn send(&self, _msg: &Message, _thread: Option<&str>) -> Delivery {
        let _ = self.timeout;
        Delivery::Rejected {
            reason: "not built yet".to_owned(),
        }
    }
}
