//! What a configuration needs built before it can run (`Parts`: sources, the webhook's
//! receiver, actions, notifiers, the reports directory), and the check that this build
//! can run every source of a configuration (`sampled_sources`, shared with `record`).
//!
//! Building starts nothing and changes nothing outside the state directory: a reload
//! builds its parts while the old configuration runs, so that one that cannot run is
//! refused while the old one goes on.

use std::sync::Arc;

use super::StartError;
use crate::action::Action;
use crate::config::{Config, SourceSpec};
use crate::notify::Sink;
use crate::notify::outbox::Limits;
use crate::source::{Source, alertmanager};

/// The sampled source of every signal (`None` for push sources, which the listener
/// receives), after checking that this build can run every source and observe every
/// change type of the configuration. Shared with `record`, which reads what the daemon
/// reads.
pub(crate) fn sampled_sources(
    cfg: &Config,
    client: &reqwest::Client,
) -> Result<Vec<Option<Arc<Source>>>, StartError> {
    cfg.signals
        .iter()
        .enumerate()
        .map(|(index, signal)| match signal.source {
            // Received by the listener, or watched by their own task.
            SourceSpec::Alertmanager(_) | SourceSpec::CgroupOom(_) | SourceSpec::KubePods(_) => {
                Ok(None)
            }
            _ => Source::new(signal, client)
                .map(|s| Some(Arc::new(s)))
                .map_err(|source| StartError::Unsupported {
                    index,
                    name: signal.name.clone(),
                    source,
                }),
        })
        .collect()
}

/// A configuration with everything running it needs already built (sources, actions,
/// notifiers). A reload builds it before stopping anything, so that a configuration
/// that cannot run is refused while the old one goes on.
pub(super) struct Parts {
    pub(super) cfg: Config,
    pub(super) sources: Vec<Option<Arc<Source>>>,
    pub(super) receiver: Option<Arc<alertmanager::Receiver>>,
    pub(super) actions: Vec<Vec<Arc<Action>>>,
    pub(super) sinks: Vec<(Sink, Limits)>,
}

impl Parts {
    pub(super) async fn build(cfg: Config, client: &reqwest::Client) -> Result<Parts, StartError> {
        let sources = sampled_sources(&cfg, client)?;
        let receiver = alertmanager::Receiver::new(&cfg).map(Arc::new);
        let actions = actions(&cfg, client).await?;
        let reports_dir = cfg.daemon.state_dir.join("reports");
        std::fs::create_dir_all(&reports_dir).map_err(|source| StartError::StateDir {
            path: reports_dir.clone(),
            source,
        })?;
        let sinks = sinks(&cfg, client)?;
        Ok(Parts {
            cfg,
            sources,
            receiver,
            actions,
            sinks,
        })
    }
}

/// Every plan's steps, prepared.
async fn actions(
    cfg: &Config,
    client: &reqwest::Client,
) -> Result<Vec<Vec<Arc<Action>>>, StartError> {
    let actions = cfg
        .plans
        .iter()
        .map(|p| {
            p.steps
                .iter()
                .map(|s| Arc::new(Action::new(&s.action, client)))
                .collect()
        })
        .collect::<Vec<Vec<Arc<Action>>>>();
    // Clients the steps need (Kubernetes) are built now: a broken kubeconfig stops the
    // start, or refuses the reload, instead of failing a rollback.
    for (plan, steps) in actions.iter().enumerate() {
        for (step, action) in steps.iter().enumerate() {
            action.prepare().await.map_err(|reason| StartError::Step {
                plan,
                step,
                name: cfg.plans[plan].steps[step].name.clone(),
                reason,
            })?;
        }
    }
    Ok(actions)
}

/// Every notifier's sink with its limits.
fn sinks(cfg: &Config, client: &reqwest::Client) -> Result<Vec<(Sink, Limits)>, StartError> {
    cfg.notifiers
        .iter()
        .enumerate()
        .map(|(index, n)| {
            Sink::new(n, client)
                .map(|sink| {
                    let limits = Limits {
                        min_interval: n.min_interval,
                        timeout: n.timeout,
                    };
                    (sink, limits)
                })
                .map_err(|reason| StartError::Notifier {
                    index,
                    name: n.name.clone(),
                    reason,
                })
        })
        .collect()
}
