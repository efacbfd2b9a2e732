//! The one integration-test binary. Each module covers one area; `support` holds the
//! shared helpers (temporary directories, polling with a deadline, local HTTP servers).

mod actions;
mod alertmanager;
mod api;
mod check;
mod cli;
mod control;
mod daemon;
mod demo;
mod journal;
mod kube_api;
mod kube_fake;
mod kube_rollout;
mod notifications;
mod notify_email;
mod notify_pagerduty;
mod notify_slack;
mod notify_statuspage;
mod notify_teams;
mod notify_webhook;
mod outbox;
mod prometheus;
mod promstack;
mod provider;
mod record;
mod releases;
mod restarts;
mod running;
mod scenarios;
mod scrape;
mod smtp;
mod sources;
mod support;
mod systemd;
mod unit;
mod workload;
