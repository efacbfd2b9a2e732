//! The escalation ladder: escalating an incident to people, and which notifiers hear of
//! each occasion when (at once, after a level's delay, repeated until acknowledged;
//! acknowledgement, resolution, another rule joining and a bad revision deployed again
//! at once to everyone already told and to the levels that list them). A bad revision
//! deployed again while no incident of its target is open is told under the incident
//! that marked it bad.
//!
//! It does no I/O and reads no clock: notices are returned as [`Effect::Notify`] and the
//! delayed ones are sent by a later tick. What a notice says is in `facts.rs`.

use std::collections::BTreeSet;

use super::{
    Cause, Effect, Engine, Entry, EntryKind, Facts, IncidentState, Notification, Outcome,
    PendingNotice, Phase, Ts,
};
use crate::config::Occasion;

impl Engine {
    pub(super) fn escalate(&mut self, idx: usize, reason: String, occasion: Occasion, now: Ts) {
        let gate = occasion == Occasion::NotRolledBack;
        let inc = &mut self.incidents[idx];
        inc.state = IncidentState::Escalated;
        inc.escalation_reason = Some(reason.clone());
        inc.refused_by_gate = gate;
        let text = if gate {
            format!("escalated without acting: {reason}")
        } else {
            format!("escalated: {reason}")
        };
        self.log(idx, now, EntryKind::Decision, text);
        self.notify(idx, occasion, now);
        // A breach the gate refused whose rules have all cleared meanwhile is over. After
        // a rollback that failed or did not verify, people decide when it is over.
        let inc = &self.incidents[idx];
        if gate
            && inc.cause == Cause::Breach
            && !inc.rules.is_empty()
            && inc
                .rules
                .iter()
                .all(|&r| self.rules[r].phase != Phase::Firing)
        {
            self.resolve(idx, Outcome::Recovered, now);
        }
    }

    /// Sends or schedules the notifications the escalation policy asks for.
    pub(super) fn notify(&mut self, idx: usize, occasion: Occasion, now: Ts) {
        // A slow rollback and failed attempts are only scheduled or counted here; they
        // are not transitions of the incident.
        let waits = matches!(occasion, Occasion::RollbackSlow | Occasion::AttemptsFailed);
        if !waits {
            self.transition(idx, occasion, now);
        }
        if self.cfg.escalation.is_empty() {
            // Without a ladder, every occasion goes to every notifier at once, except the
            // ones that wait for a limit no level sets.
            if waits {
                return;
            }
            let all = (0..self.cfg.notifiers.len()).collect();
            return self.emit_notice(idx, occasion, None, all, now);
        }
        if occasion.told_at_once() {
            return self.tell_at_once(idx, occasion, now);
        }
        self.climb_ladder(idx, occasion, now);
    }

    fn transition(&mut self, idx: usize, occasion: Occasion, now: Ts) {
        let facts = self.facts(idx, occasion, now);
        let summary = self.summary(idx, occasion, &facts);
        let inc = &self.incidents[idx];
        self.out.push(Effect::Transition {
            incident: inc.id.clone(),
            target: inc.target,
            occasion,
            summary,
        });
    }

    /// Everyone already told, and the levels that list the occasion, hear it at once:
    /// that it is acknowledged or over, that another rule fired into it, that a revision
    /// marked bad is deployed again.
    fn tell_at_once(&mut self, idx: usize, occasion: Occasion, now: Ts) {
        let mut to: BTreeSet<usize> = self.incidents[idx].notified.clone();
        for level in &self.cfg.escalation {
            if level.on.contains(&occasion) {
                to.extend(level.notify.iter().copied());
            }
        }
        if !to.is_empty() {
            self.emit_notice(idx, occasion, None, to.into_iter().collect(), now);
        }
    }

    /// Each level that takes the occasion sends it now or after its delay, and repeats.
    fn climb_ladder(&mut self, idx: usize, occasion: Occasion, now: Ts) {
        let failed = self.incidents[idx].failed_attempts;
        for li in 0..self.cfg.escalation.len() {
            let level = &self.cfg.escalation[li];
            if !level.on.contains(&occasion)
                || (occasion == Occasion::AttemptsFailed && level.attempts != failed)
            {
                continue;
            }
            let after = match occasion {
                Occasion::RollbackSlow => level.slow_after + level.after,
                _ => level.after,
            };
            let (repeat, notify) = (level.repeat, level.notify.clone());
            if after.is_zero() {
                self.emit_notice(idx, occasion, Some(li), notify, now);
                if let Some(every) = repeat {
                    self.schedule(idx, li, occasion, now.plus(every));
                }
            } else {
                self.schedule(idx, li, occasion, now.plus(after));
            }
        }
    }

    fn schedule(&mut self, idx: usize, level: usize, occasion: Occasion, due: Ts) {
        self.pending.push(PendingNotice {
            incident: self.incidents[idx].id.clone(),
            level,
            occasion,
            due,
        });
    }

    pub(super) fn send_due_notices(&mut self, now: Ts) {
        if self.pending.iter().all(|p| p.due > now) {
            return;
        }
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.due <= now);
        self.pending = rest;
        for p in due {
            let Some(idx) = self.find(&p.incident) else {
                continue;
            };
            let inc = &self.incidents[idx];
            if inc.acknowledged {
                continue;
            }
            // A rollback that finished meanwhile is not slow.
            if p.occasion == Occasion::RollbackSlow
                && !matches!(
                    inc.state,
                    IncidentState::Acting { .. } | IncidentState::Verifying { .. }
                )
            {
                continue;
            }
            let notify = self.cfg.escalation[p.level].notify.clone();
            self.emit_notice(idx, p.occasion, Some(p.level), notify, now);
            if let Some(every) = self.cfg.escalation[p.level].repeat {
                // From when it was due, so repeats do not drift by a tick each time.
                self.schedule(idx, p.level, p.occasion, p.due.plus(every).max(now));
            }
        }
    }

    fn emit_notice(
        &mut self,
        idx: usize,
        occasion: Occasion,
        level: Option<usize>,
        notifiers: Vec<usize>,
        now: Ts,
    ) {
        let facts = self.facts(idx, occasion, now);
        let summary = self.summary(idx, occasion, &facts);
        let inc = &self.incidents[idx];
        let level_name = level.map_or("default".to_owned(), |l| {
            self.cfg.escalation[l].name.clone()
        });
        let notice = Notification {
            incident: inc.id.clone(),
            target: inc.target,
            occasion,
            level,
            notifiers,
            summary,
            facts,
        };
        self.incidents[idx]
            .notified
            .extend(notice.notifiers.iter().copied());
        self.log(
            idx,
            now,
            EntryKind::Notification,
            format!(
                "notified ({}, level {level_name}): {}",
                occasion.name(),
                notice.summary
            ),
        );
        self.out.push(Effect::Notify(Box::new(notice)));
    }

    /// Tells of a revision marked bad deployed again while no incident of its target is
    /// open: under the id of the incident that marked it bad (its thread, its alert).
    pub(super) fn announce_bad_revision(
        &mut self,
        target: usize,
        revision: &str,
        marked_by: Option<String>,
        text: String,
        now: Ts,
    ) {
        let name = &self.cfg.targets[target].name;
        let incident = marked_by.unwrap_or_else(|| format!("{name}-{revision}-deployed-again"));
        let next = format!(
            "people must check why {revision} runs again: rearguard never rolls back to a revision marked bad"
        );
        let announcement = Announcement {
            occasion: Occasion::BadRevisionDeployed,
            incident,
            to_revision: Some(revision.to_owned()),
            text,
            next,
        };
        self.announce(target, announcement, now);
    }

    /// Tells people of something that needs no incident of its own, under the id it
    /// names, at once, to the notifiers of the levels that list the occasion (every
    /// notifier without a ladder). The line is logged under that id.
    pub(super) fn announce(&mut self, target: usize, a: Announcement, now: Ts) {
        let Announcement {
            occasion,
            incident,
            to_revision,
            text,
            next,
        } = a;
        let name = self.cfg.targets[target].name.clone();
        let entry = Entry {
            at: now,
            kind: EntryKind::Decision,
            text: text.clone(),
        };
        self.out.push(Effect::Timeline {
            incident: incident.clone(),
            target,
            entry,
        });
        let summary = format!(
            "{name}: {}: {text} (incident {incident})",
            occasion.headline()
        );
        self.out.push(Effect::Transition {
            incident: incident.clone(),
            target,
            occasion,
            summary: summary.clone(),
        });
        // As `notify` does: without a ladder every notifier hears (a notice with none is
        // logged in full); with one, only the levels that list the occasion.
        let ladder = !self.cfg.escalation.is_empty();
        let notifiers: BTreeSet<usize> = if ladder {
            self.cfg
                .escalation
                .iter()
                .filter(|l| l.on.contains(&occasion))
                .flat_map(|l| l.notify.iter().copied())
                .collect()
        } else {
            (0..self.cfg.notifiers.len()).collect()
        };
        if ladder && notifiers.is_empty() {
            return;
        }
        let facts = Facts {
            target: name,
            state: "closed".to_owned(),
            opened_at_ms: now.0,
            at_ms: now.0,
            rules: Vec::new(),
            blind_signals: Vec::new(),
            plan: None,
            from_revision: None,
            to_revision,
            steps: Vec::new(),
            reason: Some(text),
            next,
        };
        self.out.push(Effect::Notify(Box::new(Notification {
            incident,
            target,
            occasion,
            level: None,
            notifiers: notifiers.into_iter().collect(),
            summary,
            facts,
        })));
    }
}

/// What [`Engine::announce`] tells.
pub(super) struct Announcement {
    pub occasion: Occasion,
    /// The id it is told under (an incident's, or one made for it).
    pub incident: String,
    pub to_revision: Option<String>,
    pub text: String,
    /// What happens next, in words.
    pub next: String,
}
