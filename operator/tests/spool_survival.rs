//! Acknowledged webhooks survive their receiver Pods, on the real node: with every broker
//! stopped, webhooks flow through the Service while the receivers roll (a rotated Secret),
//! are deleted one by one and are scaled from 3 to 1; then the brokers start, and every
//! webhook that was answered 2xx is on Kafka (duplicates counted), the claims of the
//! replicas scaled away drained by Jobs and deleted. This binary stops every broker, so it
//! holds a single test and restarts them even when the test fails.

mod support;

use std::time::Duration;

use bridge_api::WebhookIngress;
use bridge_e2e::{Stack, TestNamespace, eventually};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{
    BOUND, BrokersDown, Operator, Webhooks, claim_names, delivered, rolled, service_url,
    spooling_ingress,
};

/// Long enough for a receiver Pod to stop while Kafka is away: the preStop pause, then
/// the receiver's shutdown drain, which waits out its bound with nowhere to drain to.
const POD_ROLL: Duration = Duration::from_secs(180);
/// The pause between rounds of webhooks while Pods roll: steady traffic, not a flood.
const PACE: Duration = Duration::from_millis(200);

#[tokio::test]
async fn acknowledged_webhooks_survive_rollouts_pod_deletes_and_a_scale_down_during_an_outage() {
    let stack = Stack::from_env().unwrap();
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "spool-survives").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topic = support::ready_event_topic(&client, &ns.name, "hooks", "survives", 3).await;

    // A second route, signed with the Secret `rotating`: rotating it rolls the receivers.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = |value: &str| -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "rotating"},
            "stringData": {"secret": value},
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("first"))
        .await
        .unwrap();
    let mut ingress = spooling_ingress("hooks", 3, "hooks");
    ingress["spec"]["routes"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "signed", "path": "/signed", "topic": "hooks",
            "auth": {"github": {"secretRef": {"name": "rotating"}}},
        }));
    let ingresses: Api<WebhookIngress> = Api::namespaced(client.clone(), &ns.name);
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(ingress).unwrap(),
        )
        .await
        .unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    eventually("three ready receivers", BOUND, || {
        rolled(&sets, "hooks-receiver", 3)
    })
    .await;
    let url = service_url(&client, &ns.name, "hooks-receiver").await;
    let mut webhooks = Webhooks::new(url);

    let outage = BrokersDown::stop_all(stack.clone());
    webhooks.send("before", 30).await;

    // 1. A rollout caused by a Secret rotation.
    secrets
        .replace("rotating", &PostParams::default(), &secret("second"))
        .await
        .unwrap();
    eventually("the rollout to start", BOUND, || async {
        let status = sets.get("hooks-receiver").await.ok()?.status?;
        (status.update_revision != status.current_revision).then_some(())
    })
    .await;
    let mut round = 0;
    while rolled(&sets, "hooks-receiver", 3).await.is_none() {
        webhooks.send(&format!("rollout-{round}"), 5).await;
        tokio::time::sleep(PACE).await;
        round += 1;
        assert!(round < 2_000, "the rollout did not finish");
    }

    // 2. Each receiver deleted in turn, as an eviction or a drain would.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for ordinal in 0..3 {
        let pod = format!("hooks-receiver-{ordinal}");
        let uid = pods.get(&pod).await.unwrap().metadata.uid;
        pods.delete(&pod, &DeleteParams::default()).await.unwrap();
        let deadline = tokio::time::Instant::now() + POD_ROLL;
        let mut round = 0;
        loop {
            webhooks.send(&format!("delete-{ordinal}-{round}"), 3).await;
            tokio::time::sleep(PACE).await;
            round += 1;
            let replaced = pods.get(&pod).await.ok().filter(|now| {
                now.metadata.uid != uid
                    && now
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if replaced.is_some() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{pod} was not replaced by a ready Pod within {POD_ROLL:?}"
            );
        }
    }

    // 3. A scale-down from 3 to 1: the claims of replicas 1 and 2 wait for drain Jobs.
    ingresses
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    webhooks.send("scaled", 20).await;
    let draining = eventually(
        "the status to show the claims of replicas 1 and 2 draining",
        POD_ROLL,
        || async {
            let status = ingresses.get("hooks").await.ok()?.status?;
            let draining: Vec<_> = status
                .spools
                .iter()
                .filter(|s| s.state == "Draining")
                .map(|s| (s.claim.clone(), s.records))
                .collect();
            (draining.len() == 2).then_some(draining)
        },
    )
    .await;
    eprintln!("draining while Kafka is away: {draining:?}");
    webhooks.send("after", 20).await;

    drop(outage);
    let result = delivered(&topic, &webhooks.acknowledged, Duration::from_secs(240)).await;
    eprintln!(
        "sent {}, acknowledged {}, on Kafka {}, duplicates {}, not answered 2xx {}: {:?}",
        webhooks.sent(),
        webhooks.acknowledged.len(),
        result.on_kafka,
        result.duplicates,
        webhooks.failed.len(),
        &webhooks.failed[..webhooks.failed.len().min(20)],
    );
    assert!(
        result.missing.is_empty(),
        "{} acknowledged webhooks never reached Kafka, among them {:?}",
        result.missing.len(),
        &result.missing[..result.missing.len().min(20)]
    );
    assert!(
        webhooks.failed.is_empty(),
        "webhooks refused or reset while the receivers rolled: {:?}",
        webhooks.failed
    );
    eventually(
        "the drained claims of replicas 1 and 2 deleted, replica 0's kept",
        BOUND,
        || async {
            let claims = claim_names(&client, &ns.name).await;
            (claims == ["spool-hooks-receiver-0"]).then_some(())
        },
    )
    .await;
}
