//! The second configuration stage: from the serde mirror to domain types, collecting
//! every error with its path instead of stopping at the first.
//!
//! This file owns the order of the sections, which is the order of the errors `check`
//! prints: `[daemon]`, `[kubernetes]`, `[leader_election]`, each list item's keys, the
//! names, then plans, targets, signals, rules, notifiers and escalation, and last the
//! checks across plans, targets and rules. It hands each section what that section
//! resolves against; it must not check a key itself: each section's checks are in its
//! own file (`daemon.rs`, `kubernetes.rs`, `targets.rs`, `signals.rs`, `rules.rs`,
//! `plans.rs`, `notifiers.rs`), over what they share in `ctx.rs`.

mod ctx;
mod daemon;
mod kubernetes;
mod notifiers;
mod placeholders;
mod plans;
mod rules;
mod signals;
mod targets;

use std::collections::HashMap;
use std::path::Path;

use ctx::{Ctx, check_unique, index_of, items};

use super::raw::{RawConfig, RawEscalation, RawNotifier, RawPlan, RawRule, RawSignal, RawTarget};
use super::{Config, ConfigErrors};

/// The domain types of a deserialized configuration, or every error found, each with
/// its path, in the order of the sections.
pub fn validate(
    raw: RawConfig,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx::new(base_dir, env);
    let daemon = daemon::daemon(&mut ctx, raw.daemon.as_ref());
    let kube_access = kubernetes::kubernetes(&mut ctx, raw.kubernetes.as_ref());
    let kube_events = kubernetes::events(raw.kubernetes.as_ref());
    let leader_election =
        kubernetes::leader_election(&mut ctx, raw.leader_election.as_ref(), &kube_access);
    let items = Items::read(&mut ctx, &raw);
    let names = Names::of(&items);
    names.check_unique(&mut ctx, &items);

    let mut plans = plans::plans(&mut ctx, &items.plans, &index(&names.rules), &kube_access);
    let targets = targets::targets(&mut ctx, &items.targets, &index(&names.plans), &kube_access);
    let signals = signals::signals(
        &mut ctx,
        &items.signals,
        &index(&names.targets),
        daemon.blind_after,
        &kube_access,
    );
    let rules = rules::rules(&mut ctx, &items.rules, &signals, &index(&names.signals));
    let notifiers = notifiers::notifiers(&mut ctx, &items.notifiers);
    let escalation =
        notifiers::escalation(&mut ctx, &items.escalation, &notifiers, &names.notifiers);
    plans::check_verification(&mut ctx, &mut plans, &targets, &rules);
    plans::place_snapshots(&mut plans, &daemon.state_dir);

    let config = Config {
        daemon,
        targets: complete(&mut ctx, targets),
        signals: complete(&mut ctx, signals),
        rules: complete(&mut ctx, rules),
        plans: complete(&mut ctx, plans),
        notifiers,
        escalation,
        kube_events,
        leader_election,
    };
    ctx.finish(config)
}

/// The items of a section that references point into by position. A configuration is
/// returned only without errors, when every slot is filled and positions are those of
/// the file; an empty slot without an error to explain it would shift every later
/// position, so it is reported rather than dropped.
fn complete<T>(ctx: &mut Ctx, slots: Vec<Option<T>>) -> Vec<T> {
    if ctx.errors.is_empty() && slots.iter().any(Option::is_none) {
        ctx.err("", "internal error: an item was left out without an error");
    }
    slots.into_iter().flatten().collect()
}

/// Each list section's items, deserialized one by one: `None` where an item has errors
/// (reported already), so that positions stay those of the file.
struct Items {
    targets: Vec<Option<RawTarget>>,
    signals: Vec<Option<RawSignal>>,
    rules: Vec<Option<RawRule>>,
    plans: Vec<Option<RawPlan>>,
    notifiers: Vec<Option<RawNotifier>>,
    escalation: Vec<Option<RawEscalation>>,
}

impl Items {
    fn read(ctx: &mut Ctx, raw: &RawConfig) -> Items {
        Items {
            targets: items(ctx, "target", &raw.target),
            signals: items(ctx, "signal", &raw.signal),
            rules: items(ctx, "rule", &raw.rule),
            plans: items(ctx, "plan", &raw.plan),
            notifiers: items(ctx, "notifier", &raw.notifier),
            escalation: items(ctx, "escalation", &raw.escalation),
        }
    }
}

/// Every named item's name by its position in the file, `""` for an item with errors.
/// Names come first so that references resolve even when an item is invalid.
struct Names<'a> {
    targets: Vec<&'a str>,
    signals: Vec<&'a str>,
    rules: Vec<&'a str>,
    plans: Vec<&'a str>,
    notifiers: Vec<&'a str>,
}

impl<'a> Names<'a> {
    fn of(items: &'a Items) -> Names<'a> {
        Names {
            targets: names(&items.targets, |t| t.name.as_str()),
            signals: names(&items.signals, |s| s.common().name),
            rules: names(&items.rules, |r| r.name.as_str()),
            plans: names(&items.plans, |p| p.name.as_str()),
            notifiers: names(&items.notifiers, |n| n.name()),
        }
    }

    /// Reports empty and repeated names among the items without errors.
    fn check_unique(&self, ctx: &mut Ctx, items: &Items) {
        unique(ctx, "target", &self.targets, &items.targets);
        unique(ctx, "signal", &self.signals, &items.signals);
        unique(ctx, "rule", &self.rules, &items.rules);
        unique(ctx, "plan", &self.plans, &items.plans);
        unique(ctx, "notifier", &self.notifiers, &items.notifiers);
    }
}

fn names<'a, T>(items: &'a [Option<T>], name: impl Fn(&'a T) -> &'a str) -> Vec<&'a str> {
    items
        .iter()
        .map(|item| item.as_ref().map_or("", &name))
        .collect()
}

/// Each name's first position in the file. Items with errors have no name here, so a
/// reference never resolves to one by its placeholder `""`.
fn index<'a>(names: &[&'a str]) -> HashMap<&'a str, usize> {
    let mut index = index_of(names.iter().copied());
    index.remove("");
    index
}

fn unique<T>(ctx: &mut Ctx, section: &str, names: &[&str], items: &[Option<T>]) {
    let valid = names
        .iter()
        .zip(items)
        .enumerate()
        .filter(|(_, (_, item))| item.is_some())
        .map(|(i, (name, _))| (i, *name));
    check_unique(ctx, section, valid);
}
