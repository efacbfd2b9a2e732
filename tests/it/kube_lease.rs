//! Leader election on a Lease in the fake API server: one leader at a time, renewals,
//! takeover after expiry with a new fencing token, the race for an expired Lease, and a
//! replaced leader fenced off.

use std::time::{Duration, SystemTime};

use axum::http::Method;
use rearguard::kube::lease::{Elector, FenceError, Role, Term};
use serde_json::json;

use crate::kube_fake::{Effect, KubeFake};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/rearguard";

async fn elector(fake: &KubeFake, identity: &str) -> Elector {
    let kubeconfig = kube::config::Kubeconfig::read_from(fake.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    Elector::new(
        client,
        "kube-system",
        "rearguard",
        identity,
        Duration::from_secs(15),
    )
}

fn leader(role: Role) -> Term {
    match role {
        Role::Leader(term) => term,
        other => panic!("expected to lead, got {other:?}"),
    }
}

#[tokio::test]
async fn one_candidate_leads_renews_and_is_replaced_with_a_new_token_after_expiry() {
    let fake = KubeFake::start().await;
    let a = elector(&fake, "rearguard-a").await;
    let b = elector(&fake, "rearguard-b").await;
    let t0 = SystemTime::now();
    let term_a = leader(a.step(t0).await.unwrap());
    assert_eq!(term_a, Term { token: 0 });
    assert_eq!(
        b.step(t0).await.unwrap(),
        Role::Follower {
            holder: Some("rearguard-a".to_owned())
        }
    );
    // a renews within its lease: same term; b still follows 10 s later.
    let t10 = t0 + Duration::from_secs(10);
    assert_eq!(leader(a.step(t10).await.unwrap()), term_a);
    assert!(matches!(
        b.step(t10 + Duration::from_secs(10)).await.unwrap(),
        Role::Follower { .. }
    ));
    a.fence(&term_a, t10 + Duration::from_secs(10))
        .await
        .unwrap();
    // a stops renewing (paused, partitioned): 15 s after its last renewal b takes over.
    let t30 = t10 + Duration::from_secs(20);
    let term_b = leader(b.step(t30).await.unwrap());
    assert_eq!(term_b, Term { token: 1 });
    let lease = fake.get("leases", "kube-system", "rearguard").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "rearguard-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    // a wakes up: fenced off, and it follows.
    match a.fence(&term_a, t30).await {
        Err(FenceError::Lost { holder, token, .. }) => {
            assert_eq!((holder.as_deref(), token), (Some("rearguard-b"), 1));
        }
        other => panic!("a must be fenced off, got {other:?}"),
    }
    assert!(matches!(a.step(t30).await.unwrap(), Role::Follower { .. }));
    // A leader that did not renew in time may not act either, even if nobody took over.
    assert!(matches!(
        b.fence(&term_b, t30 + Duration::from_secs(16)).await,
        Err(FenceError::Expired { .. })
    ));
}

#[tokio::test]
async fn of_two_candidates_racing_for_an_expired_lease_only_one_wins() {
    let fake = KubeFake::start().await;
    let a = elector(&fake, "rearguard-a").await;
    let b = elector(&fake, "rearguard-b").await;
    let t0 = SystemTime::now();
    leader(a.step(t0).await.unwrap());
    let later = t0 + Duration::from_secs(60);
    // b reads the expired Lease; before its write lands, c takes it.
    fake.inject(
        Method::PUT,
        LEASE,
        1,
        Effect::Mutate(Box::new(|store| {
            let mut lease = store.get("leases", "kube-system", "rearguard").unwrap();
            lease["spec"]["holderIdentity"] = json!("rearguard-c");
            lease["spec"]["leaseTransitions"] = json!(1);
            store.force(lease);
        })),
    );
    assert_eq!(
        b.step(later).await.unwrap(),
        Role::Follower {
            holder: Some("rearguard-a".to_owned())
        }
    );
    let lease = fake.get("leases", "kube-system", "rearguard").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "rearguard-c");
    let puts = fake.requests_to(&Method::PUT, LEASE);
    assert_eq!(puts.last().unwrap().status, 409);
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once_with_the_next_token() {
    let fake = KubeFake::start().await;
    let a = elector(&fake, "rearguard-a").await;
    let b = elector(&fake, "rearguard-b").await;
    let t0 = SystemTime::now();
    let term_a = leader(a.step(t0).await.unwrap());
    a.release(&term_a, t0).await.unwrap();
    let term_b = leader(b.step(t0 + Duration::from_secs(1)).await.unwrap());
    assert_eq!(term_b, Term { token: 1 });
    assert!(a.fence(&term_a, t0).await.is_err());
}
