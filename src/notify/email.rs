//! Email over SMTP (to be built).

use std::time::Duration;

use super::{Delivery, Message};
use crate::config::EmailSpec;

#[derive(Debug)]
pub struct Email {
    timeout: Duration,
}

impl Email {
    pub fn new(_spec: &EmailSpec, timeout: Duration) -> Result<Email, String> {
        Ok(Email { timeout })
    }

    pub async fn send(&self, _msg: &Message, _thread: Option<&str>) -> Delivery {
        let _ = self.timeout;
        Delivery::Rejected {
            reason: "not built yet".to_owned(),
        }
    }
}
