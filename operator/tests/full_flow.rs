//! The whole flow on the local stack, as a user sets it up: EventTopics, a Secret, a
//! WebhookIngress with GitHub auth and an EventConsumer, all reconciled by the operator
//! running as a process. The receiver and consumer Pods run on the stack's node as real
//! containers of the product's image, configured from the objects the operator wrote;
//! webhooks reach the receivers through the Service's EndpointSlices, and a test HTTP
//! server on the node's address is the consumer's sink.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bridge_api::{EventConsumer, EventTopic, WebhookIngress};
use bridge_e2e::{Stack, TestNamespace, eventually, unique_name};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{
    BOUND, Operator, create, event_topic, github_signature, ready_endpoints, wait_ready,
};

/// One event as the sink received it.
#[derive(Debug, Clone)]
struct Delivered {
    headers: BTreeMap<String, String>,
    body: serde_json::Value,
}

/// An HTTP sink on the node's address (where the consumer Pods reach this machine) that
/// records every request and answers 204.
struct Sink {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Delivered>>>,
}

impl Sink {
    async fn start() -> Self {
        let received: Arc<Mutex<Vec<Delivered>>> = Arc::default();
        let store = received.clone();
        let app = Router::new().route(
            "/events",
            post(move |headers: HeaderMap, body: Bytes| {
                let store = store.clone();
                async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    store.lock().unwrap().push(Delivered { headers, body });
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind((bridge_e2e::node_ip().unwrap(), 0))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { address, received }
    }

    fn received(&self) -> Vec<Delivered> {
        self.received.lock().unwrap().clone()
    }
}

/// POSTs a GitHub-style webhook signed with `secret`; returns the HTTP status.
async fn send_webhook(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    delivery: &str,
    traceparent: &str,
    body: &serde_json::Value,
) -> Option<u16> {
    let body = serde_json::to_vec(body).unwrap();
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", github_signature(secret, &body))
        .header("traceparent", traceparent)
        .body(body)
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

async fn wait_ingress_ready(api: &Api<WebhookIngress>, name: &str) -> WebhookIngress {
    eventually(
        &format!("WebhookIngress {name} to be Ready"),
        BOUND,
        || async {
            let wi = api.get(name).await.ok()?;
            let status = wi.status.clone()?;
            let ready = bridge_api::find_condition(&status.conditions, "Ready")?;
            (ready.status == "True"
                && status.observed_generation == wi.metadata.generation
                && status.ready_replicas == Some(wi.spec.replicas))
            .then_some(wi)
        },
    )
    .await
}

async fn wait_consumer_ready(api: &Api<EventConsumer>, name: &str, replicas: i32) -> EventConsumer {
    eventually(
        &format!("EventConsumer {name} to be Ready with {replicas} ready replicas"),
        BOUND,
        || async {
            let ec = api.get(name).await.ok()?;
            let status = ec.status.clone()?;
            let ready = bridge_api::find_condition(&status.conditions, "Ready")?;
            (ready.status == "True"
                && status.observed_generation == ec.metadata.generation
                && status.ready_replicas == Some(replicas))
            .then_some(ec)
        },
    )
    .await
}

/// Where the running, ready pods of one workload listen: their Pod IPs.
async fn ready_pod_ips(
    client: &kube::Client,
    ns: &str,
    component: &str,
    instance: &str,
) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector =
        format!("app.kubernetes.io/name={component},app.kubernetes.io/instance={instance}");
    let mut ips: Vec<String> = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(status.pod_ip?)
        })
        .collect();
    ips.sort();
    ips
}

const SECRET_V1: &str = "first-secret-value";
const SECRET_V2: &str = "rotated-secret-value";

#[tokio::test]
async fn webhooks_flow_through_receivers_and_kafka_to_the_sink_and_status_tells_the_truth() {
    let stack = Stack::from_env().unwrap();
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "flow").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();

    // The topic, the Secret, the receivers and the consumer, as a user applies them.
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let kafka_topic = unique_name("tool-events");
    create(
        &topics,
        &event_topic(
            "tool-events",
            json!({"topicName": kafka_topic, "partitions": 3}),
        ),
    )
    .await;
    wait_ready(&topics, "tool-events", "True", "TopicReady").await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "github-webhook"},
        "stringData": {"secret": SECRET_V1},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let ingresses: Api<WebhookIngress> = Api::namespaced(client.clone(), &ns.name);
    let route = |name: &str, path: &str| {
        json!({
            "name": name, "path": path, "topic": "tool-events",
            "eventType": {"header": "X-GitHub-Event", "prefix": "com.github."},
            "correlationId": {"jsonPointer": "/repository/full_name"},
            "auth": {"github": {"secretRef": {"name": "github-webhook"}}},
        })
    };
    let wi: WebhookIngress = serde_json::from_value(json!({
        "apiVersion": "bridge.omninode.io/v1alpha1", "kind": "WebhookIngress",
        "metadata": {"name": "github"},
        "spec": {"replicas": 2, "routes": [route("github", "/github"), route("ci", "/ci")]},
    }))
    .unwrap();
    ingresses.create(&PostParams::default(), &wi).await.unwrap();

    let sink = Sink::start().await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    let ec: EventConsumer = serde_json::from_value(json!({
        "apiVersion": "bridge.omninode.io/v1alpha1", "kind": "EventConsumer",
        "metadata": {"name": "deliver"},
        "spec": {
            "topics": ["tool-events"],
            "sink": {"url": format!("http://{}/events", sink.address)},
            "startFrom": "earliest",
            "delivery": {"ordering": "key"},
        },
    }))
    .unwrap();
    consumers.create(&PostParams::default(), &ec).await.unwrap();

    // Status tells the truth: both receivers ready, the routes' in-cluster URLs.
    let wi = wait_ingress_ready(&ingresses, "github").await;
    let routes = wi.status.unwrap().routes;
    let urls: Vec<(String, String)> = routes.into_iter().map(|r| (r.name, r.url)).collect();
    let service = format!("github-receiver.{}.svc:80", ns.name);
    assert_eq!(
        urls,
        [
            ("github".to_owned(), format!("http://{service}/github")),
            ("ci".to_owned(), format!("http://{service}/ci")),
        ]
    );
    wait_consumer_ready(&consumers, "deliver", 1).await;

    // Two receiver containers, each on its Pod IP, reached through the EndpointSlices.
    let endpoints = eventually("two ready receiver endpoints", BOUND, || async {
        let endpoints = ready_endpoints(&client, &ns.name, "github-receiver", "http").await;
        (endpoints.len() == 2).then_some(endpoints)
    })
    .await;
    let pod_ips = ready_pod_ips(&client, &ns.name, "hook-receiver", "github").await;
    for endpoint in &endpoints {
        let (ip, _) = endpoint.rsplit_once(':').unwrap();
        assert!(
            pod_ips.iter().any(|p| p == ip),
            "{endpoint} is not a ready receiver Pod's IP ({pod_ips:?})"
        );
    }

    // Several correlation ids (repositories), each with a sequence, sent one after the
    // other and spread over both receivers: a 2xx means the event is durable in Kafka, so
    // the order per key on the topic is the order sent.
    let repos = ["omninode/bridge", "omninode/docs", "acme/api", "acme/web"];
    let per_repo = 5;
    let mut sent = Vec::new();
    for seq in 0..per_repo {
        for (r, repo) in repos.iter().enumerate() {
            let n = sent.len();
            let endpoint = &endpoints[n % endpoints.len()];
            let delivery = format!("delivery-{r}-{seq}");
            let trace_id = format!("{:032x}", 0xabc000 + n);
            let traceparent = format!("00-{trace_id}-00000000000000{:02x}-01", n + 1);
            let body = json!({"action": "opened", "seq": seq, "repository": {"full_name": repo}});
            let status = send_webhook(
                &http,
                &format!("http://{endpoint}/github"),
                SECRET_V1,
                &delivery,
                &traceparent,
                &body,
            )
            .await;
            assert!(
                status.is_some_and(|s| (200..300).contains(&s)),
                "{delivery}: HTTP {status:?}"
            );
            sent.push((delivery, repo.to_string(), seq, trace_id));
        }
    }

    eventually("the sink to receive every event", BOUND, || async {
        (sink.received().len() >= sent.len()).then_some(())
    })
    .await;
    // Give a duplicate the chance to show before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = sink.received();
    let mut by_id: BTreeMap<String, Vec<&Delivered>> = BTreeMap::new();
    for event in &received {
        by_id
            .entry(event.headers.get("ce-id").cloned().unwrap_or_default())
            .or_default()
            .push(event);
    }
    for (delivery, repo, seq, trace_id) in &sent {
        let events = by_id.get(delivery).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            events.len(),
            1,
            "{delivery} delivered {} times",
            events.len()
        );
        let event = events[0];
        assert_eq!(event.headers["ce-type"], "com.github.pull_request");
        assert_eq!(event.headers["ce-specversion"], "1.0");
        assert_eq!(event.headers["ce-correlationid"], *repo);
        assert_eq!(
            event.headers["ce-source"],
            format!("/namespaces/{}/webhookingresses/github/github", ns.name)
        );
        let traceparent = &event.headers["traceparent"];
        assert!(
            traceparent.contains(trace_id.as_str()),
            "{delivery}: traceparent {traceparent} does not carry trace id {trace_id}"
        );
        assert_eq!(event.body["seq"], *seq);
    }
    assert_eq!(received.len(), sent.len(), "duplicates were delivered");
    for repo in repos {
        let order: Vec<i64> = received
            .iter()
            .filter(|e| e.headers.get("ce-correlationid").map(String::as_str) == Some(repo))
            .filter_map(|e| e.body["seq"].as_i64())
            .collect();
        assert_eq!(
            order,
            (0..per_repo as i64).collect::<Vec<_>>(),
            "order of {repo}"
        );
    }

    // The consumer's lag drops back to 0 once everything is committed.
    eventually("EventConsumer lag back to 0", BOUND, || async {
        let ec = consumers.get("deliver").await.ok()?;
        (ec.status?.lag == Some(0)).then_some(())
    })
    .await;

    // Rotating the Secret rolls the receivers; the new secret works and the old one not.
    secrets
        .patch(
            "github-webhook",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"secret": SECRET_V2}})),
        )
        .await
        .unwrap();
    eventually(
        "the receivers to accept only the rotated secret",
        BOUND,
        || async {
            let endpoints = ready_endpoints(&client, &ns.name, "github-receiver", "http").await;
            if endpoints.len() != 2 {
                return None;
            }
            for (i, endpoint) in endpoints.iter().enumerate() {
                let url = format!("http://{endpoint}/github");
                let body =
                    json!({"action": "closed", "repository": {"full_name": "rotation/check"}});
                let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
                let old = send_webhook(
                    &http,
                    &url,
                    SECRET_V1,
                    &format!("old-{i}"),
                    traceparent,
                    &body,
                )
                .await?;
                if old != 401 {
                    return None;
                }
                let new = send_webhook(
                    &http,
                    &url,
                    SECRET_V2,
                    &unique_name("new"),
                    traceparent,
                    &body,
                )
                .await?;
                if !(200..300).contains(&new) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    wait_ingress_ready(&ingresses, "github").await;

    // Deleting a route from the spec removes it from every receiver.
    ingresses
        .patch(
            "github",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"routes": [route("github", "/github")]}})),
        )
        .await
        .unwrap();
    eventually(
        "the deleted route to answer 404 on every receiver",
        BOUND,
        || async {
            let endpoints = ready_endpoints(&client, &ns.name, "github-receiver", "http").await;
            if endpoints.len() != 2 {
                return None;
            }
            for endpoint in &endpoints {
                let body = json!({"repository": {"full_name": "route/check"}});
                let url = format!("http://{endpoint}/ci");
                let status =
                    send_webhook(&http, &url, SECRET_V2, &unique_name("ci"), "", &body).await?;
                if status != 404 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let wi = wait_ingress_ready(&ingresses, "github").await;
    assert_eq!(wi.status.unwrap().routes.len(), 1);

    // Scaling the consumer changes the number of consumer processes.
    consumers
        .patch(
            "deliver",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    wait_consumer_ready(&consumers, "deliver", 2).await;
    let ips = ready_pod_ips(&client, &ns.name, "event-consumer", "deliver").await;
    assert_eq!(ips.len(), 2, "{ips:?}");
    for ip in &ips {
        let health = http
            .get(format!("http://{ip}:9090/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(
            health.ok(),
            Some(200),
            "no consumer process answers on {ip}:9090"
        );
    }
}
