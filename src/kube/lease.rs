//! Leader election on a coordination.k8s.io/v1 Lease, with a fencing token, for several
//! rearguard replicas watching the same cluster: one acts, the others wait.
//!
//! The Lease is client-go's: `holderIdentity`, `leaseDurationSeconds`, `acquireTime`,
//! `renewTime`, `leaseTransitions`. Every write carries the resourceVersion read, so two
//! candidates that both saw an expired Lease cannot both win: the second gets 409 and
//! stays a follower. The fencing token is `leaseTransitions`, which every change of
//! holder increments: a leader checks with [`Elector::fence`] that the Lease still names
//! it with the same token, and has not expired, right before it writes to the cluster,
//! so a leader that was paused past its lease (and replaced) does not act on stale
//! authority.
//!
//! Time is passed in (`now`), so expiry is tested without sleeping. Nothing here runs on
//! its own: the caller renews every fraction of the lease duration; `crate::leader`
//! wires it into the daemon (act only while leader).

use std::time::{Duration, SystemTime};

use ::kube::Api;
use ::kube::api::PostParams;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use super::KubeError;

/// A term of leadership: the fencing token it was won with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The Lease's `leaseTransitions` when this candidate became its holder.
    pub token: i32,
}

/// Where a candidate stands after [`Elector::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Leader(Term),
    /// Someone else holds a Lease that has not expired, or won the race to it.
    Follower {
        holder: Option<String>,
    },
}

/// Why a leader may no longer act.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(
        "the lease {lease} is now held by {holder:?} (term {token}), not by this replica's term {ours}"
    )]
    Lost {
        lease: String,
        holder: Option<String>,
        token: i32,
        ours: i32,
    },
    #[error(
        "the lease {lease} expired at {expired:?} without a renewal: this replica may have been replaced"
    )]
    Expired { lease: String, expired: SystemTime },
    #[error("the lease {0} is gone")]
    Gone(String),
}

/// One candidate for one Lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn micro(t: SystemTime) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .ok()
        .map(MicroTime)
}

fn system(t: &MicroTime) -> SystemTime {
    SystemTime::from(t.0)
}

impl Elector {
    /// A candidate `identity` (unique per replica: the pod name) for the Lease
    /// `namespace/name`, held for `duration` after each renewal.
    pub fn new(
        client: ::kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    fn spec(&self, now: SystemTime, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: acquired.or_else(|| micro(now)),
            renew_time: micro(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Acquires the Lease if it is free or expired, renews it if this candidate holds
    /// it, and otherwise follows.
    pub async fn step(&self, now: SystemTime) -> Result<Role, KubeError> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Role::Leader(Term { token: 0 })),
                Err(e) => match KubeError::from(e) {
                    KubeError::Api { code: 409, .. } => Ok(Role::Follower { holder: None }),
                    other => Err(other),
                },
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let expired = match (&holder, &spec.renew_time) {
            (None, _) | (_, None) => true,
            (Some(_), Some(renewed)) => {
                let held =
                    Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
                system(renewed) + held <= now
            }
        };
        if !mine && !expired {
            return Ok(Role::Follower { holder });
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        let next = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(self.spec(now, acquired, transitions)),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Role::Leader(Term { token: transitions })),
            Err(e) => match KubeError::from(e) {
                // Another candidate wrote first: it won.
                KubeError::Api { code: 409, .. } => Ok(Role::Follower { holder }),
                other => Err(other),
            },
        }
    }

    /// Whether `term` still holds the Lease at `now`: call it right before each write to
    /// the cluster.
    pub async fn fence(&self, term: &Term, now: SystemTime) -> Result<(), FenceError> {
        let lease = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(KubeError::from)?
            .ok_or_else(|| FenceError::Gone(self.name.clone()))?;
        let spec = lease.spec.unwrap_or_default();
        let token = spec.lease_transitions.unwrap_or(0);
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        if holder.as_deref() != Some(self.identity.as_str()) || token != term.token {
            return Err(FenceError::Lost {
                lease: self.name.clone(),
                holder,
                token,
                ours: term.token,
            });
        }
        let held = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let expires = spec.renew_time.as_ref().map(system).map(|r| r + held);
        match expires {
            Some(at) if at > now => Ok(()),
            _ => Err(FenceError::Expired {
                lease: self.name.clone(),
                expired: expires.unwrap_or(SystemTime::UNIX_EPOCH),
            }),
        }
    }

    /// Gives the Lease up (on a clean stop), so another candidate takes it at once
    /// instead of after the lease duration. Does nothing unless `term` still holds it.
    pub async fn release(&self, term: &Term, now: SystemTime) -> Result<(), KubeError> {
        if self.fence(term, now).await.is_err() {
            return Ok(());
        }
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = micro(now);
        let next = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match KubeError::from(e) {
                KubeError::Api { code: 409, .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}
