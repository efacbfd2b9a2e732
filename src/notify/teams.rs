//! Teams (to be built).

use std::time::Duration;

use super::{Delivery, Message};
use crate::config::TeamsSpec;

#[derive(Debug)]
pub struct Teams {
    timeout: Duration,
}

impl Teams {
    pub fn new(_spec: &TeamsSpec, _client: &reqwest::Client, timeout: Duration) -> Teams {
        Teams { timeout }
    }

    pub async fn send(&self, _msg: &Message, _thread: Option<&str>) -> Delivery {
        let _ = self.timeout;
        Delivery::Rejected {
            reason: "not built yet".to_owned(),
        }
    }
}
