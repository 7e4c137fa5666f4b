//! A receiver's readiness on the real node while Kafka is away: one whose spool still has
//! room stays Ready and answers from the spool; one whose spool is full goes not-Ready,
//! so its Service stops sending to it, and is Ready again once Kafka is back and the spool
//! drains. This binary stops every broker, so it holds a single test and restarts them
//! even when the test fails.

mod support;

use bridge_api::WebhookIngress;
use bridge_e2e::{Stack, TestNamespace, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::{BOUND, BrokersDown, Operator, ready_endpoints};

/// Whether the Pod's Ready condition is True.
async fn pod_ready(pods: &Api<Pod>, name: &str) -> Option<bool> {
    let status = pods.get(name).await.ok()?.status?;
    Some(
        status
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
    )
}

#[tokio::test]
async fn a_full_spool_takes_its_receiver_out_of_the_service_until_kafka_is_back() {
    let stack = Stack::from_env().unwrap();
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "node-spool").await;
    let _operator = Operator::start(&[&ns.name]).await;
    support::ready_event_topic(&client, &ns.name, "hooks", "spool", 1).await;
    let ingresses: Api<WebhookIngress> = Api::namespaced(client.clone(), &ns.name);
    let ingress: WebhookIngress = serde_json::from_value(json!({
        "apiVersion": "bridge.omninode.io/v1alpha1",
        "kind": "WebhookIngress",
        "metadata": {"name": "hooks"},
        "spec": {
            "replicas": 2,
            "spool": {"size": "8Mi"},
            "routes": [{
                "name": "hooks", "path": "/hooks", "topic": "hooks", "auth": {"none": {}},
                "eventType": {"value": "com.example.spooled"},
            }],
        },
    }))
    .unwrap();
    ingresses
        .create(&PostParams::default(), &ingress)
        .await
        .unwrap();
    let endpoints = eventually("two ready receiver endpoints", BOUND, || async {
        let endpoints = ready_endpoints(&client, &ns.name, "hooks-receiver", "http").await;
        (endpoints.len() == 2).then_some(endpoints)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod_of = |endpoint: &str| {
        let ip = endpoint.rsplit_once(':').unwrap().0.to_owned();
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=hook-receiver"))
                .await
                .unwrap();
            list.into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(&ip))
                .and_then(|p| p.metadata.name)
                .unwrap()
        }
    };
    let (full, roomy) = (&endpoints[0], &endpoints[1]);
    let full_pod = pod_of(full).await;
    let roomy_pod = pod_of(roomy).await;

    let outage = BrokersDown::stop_all(stack.clone());
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let padding = "x".repeat(256 * 1024);
    let send = |endpoint: String, n: usize| {
        let http = http.clone();
        let body = json!({"n": n, "padding": padding}).to_string();
        async move {
            http.post(format!("http://{endpoint}/hooks"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };

    // Acknowledged from the spool until it is full, then 503.
    let mut acknowledged = 0;
    let mut refused = false;
    for n in 0..64 {
        match send(full.clone(), n).await {
            200..=299 => acknowledged += 1,
            503 => {
                refused = true;
                break;
            }
            other => panic!("webhook {n} answered {other}"),
        }
    }
    assert!(
        refused && acknowledged > 0,
        "{acknowledged} acknowledged, then {}",
        if refused {
            "503"
        } else {
            "no 503 in 64 webhooks"
        }
    );
    eventually(
        "the full receiver to go not-Ready and leave the Service",
        BOUND,
        || async {
            let ready = pod_ready(&pods, &full_pod).await?;
            let endpoints = ready_endpoints(&client, &ns.name, "hooks-receiver", "http").await;
            (!ready && endpoints == [roomy.clone()]).then_some(())
        },
    )
    .await;
    assert_eq!(
        send(roomy.clone(), 1000).await / 100,
        2,
        "the receiver with room answers from its spool"
    );
    assert_eq!(pod_ready(&pods, &roomy_pod).await, Some(true));

    drop(outage);
    eventually(
        "both receivers Ready again once Kafka is back",
        BOUND,
        || async {
            let endpoints = ready_endpoints(&client, &ns.name, "hooks-receiver", "http").await;
            (endpoints.len() == 2 && pod_ready(&pods, &full_pod).await?).then_some(())
        },
    )
    .await;
}
