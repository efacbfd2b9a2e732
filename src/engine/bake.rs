//! The bake time: [`Effect::Baked`] once per revision of a target that has stayed healthy
//! (no rule of the target firing, no open incident of the target) for the target's
//! `bake`, so that its configuration may be snapshotted as known good.
//!
//! It does no I/O and reads no clock, and it takes no snapshot: the daemon does, on the
//! effect.

use super::{Effect, Engine, Phase, TargetState, Ts};

impl Engine {
    /// Emits [`Effect::Baked`] for each target whose current revision has stayed healthy
    /// for its bake time; any firing rule or open incident of the target restarts it.
    pub(super) fn bake(&mut self, now: Ts) {
        let waiting = |t: usize, ts: &TargetState| {
            self.cfg.targets[t].bake.is_some() && ts.revision.is_some() && ts.baked != ts.revision
        };
        if !self
            .targets
            .iter()
            .enumerate()
            .any(|(t, ts)| waiting(t, ts))
        {
            return;
        }
        let unhealthy = self.unhealthy_targets();
        for (t, unhealthy) in unhealthy.into_iter().enumerate() {
            let Some(bake) = self.cfg.targets[t].bake else {
                continue;
            };
            let Some(revision) = self.targets[t].revision.clone() else {
                continue;
            };
            if self.targets[t].baked.as_ref() == Some(&revision) {
                continue;
            }
            let ts = &mut self.targets[t];
            if unhealthy {
                ts.healthy_since = None;
                continue;
            }
            let since = *ts.healthy_since.get_or_insert(now);
            if now.since(since) >= bake {
                ts.baked = Some(revision.clone());
                ts.healthy_since = None;
                self.out.push(Effect::Baked {
                    target: t,
                    revision,
                });
            }
        }
    }

    /// Per target, whether a rule of it is firing or an incident of it is open.
    fn unhealthy_targets(&self) -> Vec<bool> {
        // One pass over the rules and one over the incidents, not one per target: a tick
        // stays linear in the table.
        let mut unhealthy = vec![false; self.targets.len()];
        for (i, r) in self.cfg.rules.iter().enumerate() {
            if self.rules[i].phase == Phase::Firing {
                unhealthy[r.target] = true;
            }
        }
        for inc in &self.incidents {
            unhealthy[inc.target] = true;
        }
        unhealthy
    }
}
