//! Deleting a WebhookIngress while Kafka is away keeps what its receivers acknowledged: the
//! object waits (its status says for which claims), the claims are drained into Kafka by
//! Jobs once the brokers are back, then deleted, and only then is the object gone. This
//! binary stops every broker, so it holds a single test and restarts them even when the
//! test fails.

mod support;

use std::time::Duration;

use bridge_api::{WebhookIngress, condition_type, find_condition};
use bridge_e2e::{Stack, TestNamespace, eventually};
use kube::api::{Api, DeleteParams, PostParams};
use support::{
    BOUND, BrokersDown, Operator, Webhooks, claim_names, delivered, service_url, spooling_ingress,
};

#[tokio::test]
async fn a_deleted_webhook_ingress_waits_for_its_spools_to_drain_and_loses_nothing() {
    let stack = Stack::from_env().unwrap();
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "spool-delete").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topic = support::ready_event_topic(&client, &ns.name, "hooks", "deleted", 3).await;
    let ingresses: Api<WebhookIngress> = Api::namespaced(client.clone(), &ns.name);
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(spooling_ingress("hooks", 2, "hooks")).unwrap(),
        )
        .await
        .unwrap();
    eventually("two ready receivers", BOUND, || async {
        let status = ingresses.get("hooks").await.ok()?.status?;
        (status.ready_replicas == Some(2)).then_some(())
    })
    .await;
    let mut webhooks = Webhooks::new(service_url(&client, &ns.name, "hooks-receiver").await);

    let outage = BrokersDown::stop_all(stack.clone());
    webhooks.send("spooled", 60).await;
    assert!(
        webhooks.failed.is_empty(),
        "refused while the spools had room: {:?}",
        webhooks.failed
    );
    ingresses
        .delete("hooks", &DeleteParams::default())
        .await
        .unwrap();

    let waiting = eventually(
        "the deleted WebhookIngress to wait for both claims to drain",
        Duration::from_secs(120),
        || async {
            let wi = ingresses.get("hooks").await.ok()?;
            let status = wi.status?;
            let ready = find_condition(&status.conditions, condition_type::READY)?;
            let draining = status
                .spools
                .iter()
                .filter(|s| s.state == "Draining")
                .count();
            (ready.reason == "DrainingSpools" && draining == 2).then(|| ready.message.clone())
        },
    )
    .await;
    eprintln!("while Kafka is away: {waiting}");
    assert_eq!(
        claim_names(&client, &ns.name).await,
        ["spool-hooks-receiver-0", "spool-hooks-receiver-1"]
    );

    drop(outage);
    let result = delivered(&topic, &webhooks.acknowledged, Duration::from_secs(240)).await;
    eprintln!(
        "sent {}, acknowledged {}, on Kafka {}, duplicates {}",
        webhooks.sent(),
        webhooks.acknowledged.len(),
        result.on_kafka,
        result.duplicates
    );
    assert!(
        result.missing.is_empty(),
        "{} acknowledged webhooks never reached Kafka, among them {:?}",
        result.missing.len(),
        &result.missing[..result.missing.len().min(20)]
    );
    eventually(
        "the WebhookIngress gone with its drained claims",
        Duration::from_secs(120),
        || async {
            let gone = ingresses.get_opt("hooks").await.ok()?.is_none();
            (gone && claim_names(&client, &ns.name).await.is_empty()).then_some(())
        },
    )
    .await;
}
