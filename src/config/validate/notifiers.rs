//! `[[notifier]]` and `[[escalation]]`: whom rearguard tells (log, Slack, PagerDuty, Teams,
//! Statuspage, email, webhook), with each notifier's limits and secrets, and the
//! escalation levels that say who is told on which occasion, resolved to notifiers by
//! name. A secret is never formatted into an error here. It must not look at targets,
//! rules or plans.

use std::time::Duration;

use secrecy::SecretString;

use super::ctx::{Ctx, each_item};
use crate::config::raw::{RawEscalation, RawNotifier, RawSecret};
use crate::config::{
    EmailSpec, EscalationLevel, Notifier, NotifierKind, Occasion, PagerDutySpec, SlackSpec,
    SmtpTls, StatuspageSpec, TeamsSpec, WebhookSpec,
};

/// Every valid notifier, in file order.
pub(super) fn notifiers(ctx: &mut Ctx, raws: &[Option<RawNotifier>]) -> Vec<Notifier> {
    each_item(raws, |i, raw| notifier(ctx, &format!("notifier[{i}]"), raw))
}

fn notifier(ctx: &mut Ctx, p: &str, raw: &RawNotifier) -> Option<Notifier> {
    let (timeout, per_minute) = raw.limits();
    let default_per_minute = match raw {
        RawNotifier::Log { .. } => 0,
        RawNotifier::Slack { .. } => 60,
        RawNotifier::PagerDuty { .. } => 120,
        RawNotifier::Teams { .. } => 60,
        RawNotifier::Statuspage { .. } => 60,
        RawNotifier::Email { .. } => 30,
        RawNotifier::Webhook { .. } => 600,
    };
    let per_minute = match per_minute {
        Some(0) => {
            ctx.err(format!("{p}.per_minute"), "must be at least 1");
            default_per_minute
        }
        Some(n) => n,
        None => default_per_minute,
    };
    let min_interval = if per_minute == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(60) / per_minute
    };
    let timeout = ctx.positive_duration(format!("{p}.timeout"), timeout, Duration::from_secs(10));
    Some(Notifier {
        name: raw.name().to_owned(),
        timeout,
        min_interval,
        kind: kind(ctx, p, raw)?,
    })
}

/// What a notifier is and where it sends.
fn kind(ctx: &mut Ctx, p: &str, raw: &RawNotifier) -> Option<NotifierKind> {
    Some(match raw {
        RawNotifier::Log { .. } => NotifierKind::Log,
        RawNotifier::Slack {
            webhook_url,
            token,
            channel,
            api_url,
            ..
        } => NotifierKind::Slack(slack(ctx, p, webhook_url, token, channel, api_url)?),
        RawNotifier::PagerDuty {
            routing_key, url, ..
        } => {
            let url = base_url(ctx, p, "url", url, "https://events.pagerduty.com");
            let key = ctx.secret(format!("{p}.routing_key"), routing_key);
            NotifierKind::PagerDuty(PagerDutySpec {
                routing_key: key?,
                url: url?,
            })
        }
        RawNotifier::Teams { webhook_url, .. } => NotifierKind::Teams(TeamsSpec {
            url: secret_url(ctx, format!("{p}.webhook_url"), webhook_url)?,
        }),
        RawNotifier::Statuspage {
            api_key,
            page_id,
            component_id,
            api_url,
            ..
        } => NotifierKind::Statuspage(statuspage(ctx, p, api_key, page_id, component_id, api_url)?),
        RawNotifier::Email {
            host,
            port,
            tls,
            username,
            password,
            from,
            to,
            ..
        } => {
            let (tls, port) = smtp_transport(ctx, p, tls, *port);
            check_addresses(ctx, p, host, from, to);
            let password = match (username, password) {
                (Some(_), Some(pw)) => Some(ctx.secret(format!("{p}.password"), pw)?),
                (None, None) => None,
                _ => {
                    ctx.err(p, "`username` and `password` go together");
                    None
                }
            };
            NotifierKind::Email(EmailSpec {
                host: host.clone(),
                port,
                tls,
                username: username.clone(),
                password,
                from: from.clone(),
                to: to.clone(),
            })
        }
        RawNotifier::Webhook { url, secret, .. } => {
            let url = ctx.url(format!("{p}.url"), url);
            let secret = ctx.secret(format!("{p}.secret"), secret);
            NotifierKind::Webhook(WebhookSpec {
                url: url?,
                secret: secret?,
            })
        }
    })
}

/// The base URL of a SaaS API, `default` unless the configuration overrides it.
fn base_url(
    ctx: &mut Ctx,
    p: &str,
    key: &str,
    v: &Option<String>,
    default: &str,
) -> Option<reqwest::Url> {
    ctx.url(format!("{p}.{key}"), v.as_deref().unwrap_or(default))
}

/// A Slack notifier: an incoming webhook, or a bot token with its channel.
fn slack(
    ctx: &mut Ctx,
    p: &str,
    webhook_url: &Option<RawSecret>,
    token: &Option<RawSecret>,
    channel: &Option<String>,
    api_url: &Option<String>,
) -> Option<SlackSpec> {
    match (webhook_url, token) {
        (Some(url), None) => {
            if channel.is_some() || api_url.is_some() {
                ctx.err(
                    p,
                    "`channel` and `api_url` belong to bot-token mode (`token`); a webhook posts to its own channel",
                );
            }
            Some(SlackSpec::Webhook {
                url: secret_url(ctx, format!("{p}.webhook_url"), url)?,
            })
        }
        (None, Some(token)) => {
            let Some(channel) = channel.clone().filter(|c| !c.trim().is_empty()) else {
                ctx.err(
                    format!("{p}.channel"),
                    "required with `token`: the channel id to post to",
                );
                return None;
            };
            let api_url = base_url(ctx, p, "api_url", api_url, "https://slack.com/api");
            let token = ctx.secret(format!("{p}.token"), token);
            Some(SlackSpec::Bot {
                token: token?,
                channel,
                api_url: api_url?,
            })
        }
        _ => {
            ctx.err(
                p,
                "a slack notifier takes exactly one of `webhook_url` (incoming webhook) or `token` (bot)",
            );
            None
        }
    }
}

/// A Statuspage notifier: the page (and component) it updates.
fn statuspage(
    ctx: &mut Ctx,
    p: &str,
    api_key: &RawSecret,
    page_id: &str,
    component_id: &Option<String>,
    api_url: &Option<String>,
) -> Option<StatuspageSpec> {
    let api_url = base_url(ctx, p, "api_url", api_url, "https://api.statuspage.io/v1");
    if page_id.trim().is_empty() {
        ctx.err(format!("{p}.page_id"), "must not be empty");
    }
    let key = ctx.secret(format!("{p}.api_key"), api_key);
    Some(StatuspageSpec {
        api_key: key?,
        page_id: page_id.to_owned(),
        component_id: component_id.clone(),
        api_url: api_url?,
    })
}

/// An email notifier's `tls` and `port` (by default the port of that TLS mode).
fn smtp_transport(
    ctx: &mut Ctx,
    p: &str,
    tls: &Option<String>,
    port: Option<u16>,
) -> (SmtpTls, u16) {
    let tls = match tls.as_deref().unwrap_or("starttls") {
        "none" => SmtpTls::None,
        "starttls" => SmtpTls::StartTls,
        "tls" => SmtpTls::Tls,
        other => {
            ctx.err(
                format!("{p}.tls"),
                format!("expected \"starttls\", \"tls\" or \"none\", got {other:?}"),
            );
            SmtpTls::StartTls
        }
    };
    let port = port.unwrap_or(match tls {
        SmtpTls::None => 25,
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
    });
    (tls, port)
}

/// An email notifier's `host`, `from` and `to`.
fn check_addresses(ctx: &mut Ctx, p: &str, host: &str, from: &str, to: &[String]) {
    if host.trim().is_empty() {
        ctx.err(format!("{p}.host"), "must not be empty");
    }
    for (key, addr) in std::iter::once(("from".to_owned(), from)).chain(
        to.iter()
            .enumerate()
            .map(|(j, a)| (format!("to[{j}]"), a.as_str())),
    ) {
        if !looks_like_address(addr) {
            ctx.err(
                format!("{p}.{key}"),
                format!("expected an email address like ops@example.com, got {addr:?}"),
            );
        }
    }
    if to.is_empty() {
        ctx.err(format!("{p}.to"), "must list at least one address");
    }
}

/// Reads a secret that is a URL (a Slack or Teams webhook). The URL is never shown in
/// an error: it is the secret.
fn secret_url(ctx: &mut Ctx, path: String, raw: &RawSecret) -> Option<SecretString> {
    use secrecy::ExposeSecret;
    let secret = ctx.secret(path.clone(), raw)?;
    match reqwest::Url::parse(secret.expose_secret()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(secret),
        _ => {
            ctx.err(
                path,
                "the secret is not an http or https URL (its value is not shown)",
            );
            None
        }
    }
}

/// An address the SMTP notifier can use (`ops@example.com` or `Ops <ops@example.com>`),
/// judged by the same parser the notifier uses; the mail server has the last word.
fn looks_like_address(text: &str) -> bool {
    text.parse::<lettre::message::Mailbox>().is_ok()
}

/// Every escalation level without item errors, in file order. A notifier named in
/// `notifier_names` (the file's) but left out of `notifiers` (it has errors, reported
/// already) is left out of the level silently.
pub(super) fn escalation(
    ctx: &mut Ctx,
    raws: &[Option<RawEscalation>],
    notifiers: &[Notifier],
    notifier_names: &[&str],
) -> Vec<EscalationLevel> {
    each_item(raws, |i, raw| {
        Some(level(ctx, i, raw, notifiers, notifier_names))
    })
}

fn level(
    ctx: &mut Ctx,
    i: usize,
    raw: &RawEscalation,
    notifiers: &[Notifier],
    notifier_names: &[&str],
) -> EscalationLevel {
    let p = format!("escalation[{i}]");
    let on = occasions(ctx, &p, &raw.on);
    let mut notify = Vec::new();
    for (j, name) in raw.notify.iter().enumerate() {
        match notifiers.iter().position(|n| &n.name == name) {
            Some(n) => notify.push(n),
            None if notifier_names.contains(&name.as_str()) => {}
            None => ctx.err(
                format!("{p}.notify[{j}]"),
                format!("no notifier is named {name:?}"),
            ),
        }
    }
    let repeat = raw.repeat.as_ref().map(|_| {
        ctx.positive_duration(format!("{p}.repeat"), &raw.repeat, Duration::from_secs(900))
    });
    let slow_after = slow_after(ctx, &p, raw, on.contains(&Occasion::RollbackSlow));
    let attempts = attempts(ctx, &p, raw, on.contains(&Occasion::AttemptsFailed));
    EscalationLevel {
        name: raw
            .name
            .clone()
            .unwrap_or_else(|| format!("level {}", i + 1)),
        on,
        after: ctx.duration(format!("{p}.after"), &raw.after, Duration::ZERO),
        repeat,
        notify,
        slow_after,
        attempts,
    }
}

/// A level's `on`: at least one occasion, each known.
fn occasions(ctx: &mut Ctx, p: &str, names: &[String]) -> Vec<Occasion> {
    let mut on = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match Occasion::ALL.iter().find(|o| o.name() == name) {
            Some(o) => on.push(*o),
            None => ctx.err(
                format!("{p}.on[{j}]"),
                format!(
                    "unknown occasion {name:?}; known: {}",
                    Occasion::ALL.map(|o| o.name()).join(", ")
                ),
            ),
        }
    }
    if names.is_empty() {
        ctx.err(format!("{p}.on"), "must list at least one occasion");
    }
    on
}

/// `slow_after`: required with, and only with, the rollback_slow occasion.
fn slow_after(ctx: &mut Ctx, p: &str, raw: &RawEscalation, slow: bool) -> Duration {
    match (&raw.slow_after, slow) {
        (Some(_), true) => ctx.positive_duration(
            format!("{p}.slow_after"),
            &raw.slow_after,
            Duration::from_secs(600),
        ),
        (None, true) => {
            ctx.err(
                format!("{p}.slow_after"),
                "required when `on` lists rollback_slow",
            );
            Duration::ZERO
        }
        (Some(_), false) => {
            ctx.err(
                format!("{p}.slow_after"),
                "only means something when `on` lists rollback_slow",
            );
            Duration::ZERO
        }
        (None, false) => Duration::ZERO,
    }
}

/// `attempts`: only with the attempts_failed occasion, 3 by default.
fn attempts(ctx: &mut Ctx, p: &str, raw: &RawEscalation, counts: bool) -> u32 {
    match (raw.attempts, counts) {
        (Some(0), true) => {
            ctx.err(format!("{p}.attempts"), "must be at least 1");
            1
        }
        (Some(n), true) => n,
        (None, true) => 3,
        (Some(_), false) => {
            ctx.err(
                format!("{p}.attempts"),
                "only means something when `on` lists attempts_failed",
            );
            0
        }
        (None, false) => 0,
    }
}
