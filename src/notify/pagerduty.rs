//! PagerDuty (to be built).

use std::time::Duration;

use super::{Delivery, Message};
use crate::config::PagerDutySpec;

#[derive(Debug)]
pub struct PagerDuty {
    timeout: Duration,
}

impl PagerDuty {
    pub fn new(_spec: &PagerDutySpec, _client: &reqwest::Client, timeout: Duration) -> PagerDuty {
        PagerDuty { timeout }
    }

    pub async fn send(&self, _msg: &Message, _thread: Option<&str>) -> Delivery {
        let _ = self.timeout;
        Delivery::Rejected {
            reason: "not built yet".to_owned(),
        }
    }
}
