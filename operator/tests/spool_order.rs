//! The order of one key's events across two receiver replicas, an outage and a recovery, as
//! ARCHITECTURE.md documents it: the events one replica answered are on Kafka in the order
//! it answered them, and an event answered `published` (Kafka had it before the answer)
//! comes before every event sent after that answer, whichever replica took either. Events
//! that two replicas spooled during an outage are drained by each replica on its own, so
//! between replicas their order is not promised; the test counts how often it differed.
//! The client sends to each replica's Pod address in turn, so it knows which one answered.
//! This binary stops every broker, so it holds a single test and restarts them even when
//! the test fails.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bridge_api::WebhookIngress;
use bridge_e2e::{Stack, TestNamespace, eventually};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::{BOUND, BrokersDown, Operator, delivered, ready_endpoints, spooling_ingress};

/// The key every event carries.
const KEY: &str = "order-42";

/// One webhook as its sender saw it.
struct Answer {
    id: String,
    /// Which replica (index into the endpoints) answered.
    replica: usize,
    /// Answered `published`: Kafka had acknowledged the event before the answer.
    published: bool,
}

/// Sends webhooks of the one key to the replicas in turn, one after another, and keeps
/// what each was answered.
struct Sender {
    http: reqwest::Client,
    endpoints: Vec<String>,
    answers: Vec<Answer>,
    failed: Vec<String>,
    sent: usize,
}

impl Sender {
    async fn send(&mut self, phase: &str, count: usize) {
        for n in 0..count {
            let replica = self.sent % self.endpoints.len();
            let id = format!("{phase}-{n}");
            self.sent += 1;
            let answer = self
                .http
                .post(format!("http://{}/hooks", self.endpoints[replica]))
                .header("content-type", "application/json")
                .header("x-key", KEY)
                .body(json!({"id": id}).to_string())
                .send()
                .await;
            let status = match answer {
                Ok(response) if response.status().is_success() => {
                    response.json::<serde_json::Value>().await.ok()
                }
                Ok(response) => {
                    self.failed
                        .push(format!("{id}: HTTP {}", response.status()));
                    continue;
                }
                Err(error) => {
                    self.failed.push(format!("{id}: {error}"));
                    continue;
                }
            };
            let published = status.is_some_and(|s| s["status"] == "published");
            self.answers.push(Answer {
                id,
                replica,
                published,
            });
        }
    }
}

#[tokio::test]
async fn one_keys_events_keep_each_replicas_answer_order_across_an_outage() {
    let stack = Stack::from_env().unwrap();
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "spool-order").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topic = support::ready_event_topic(&client, &ns.name, "hooks", "order", 3).await;
    let mut ingress = spooling_ingress("hooks", 2, "hooks");
    ingress["spec"]["routes"][0]["correlationId"] = json!({"header": "x-key"});
    let ingresses: Api<WebhookIngress> = Api::namespaced(client.clone(), &ns.name);
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(ingress).unwrap(),
        )
        .await
        .unwrap();
    let endpoints = eventually("two ready receiver endpoints", BOUND, || async {
        let endpoints = ready_endpoints(&client, &ns.name, "hooks-receiver", "http").await;
        (endpoints.len() == 2).then_some(endpoints)
    })
    .await;
    let mut sender = Sender {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        endpoints,
        answers: Vec::new(),
        failed: Vec::new(),
        sent: 0,
    };

    sender.send("up", 20).await;
    let outage = BrokersDown::stop_all(stack.clone());
    sender.send("down", 60).await;
    // The brokers come back while webhooks keep coming: new events meet spools that are
    // still draining.
    let mut starting = tokio::task::spawn_blocking(move || drop(outage));
    let mut round = 0;
    loop {
        sender.send(&format!("recovering-{round}"), 4).await;
        round += 1;
        if tokio::time::timeout(Duration::from_millis(200), &mut starting)
            .await
            .is_ok()
        {
            break;
        }
    }
    sender.send("after", 40).await;

    let acknowledged: Vec<String> = sender.answers.iter().map(|a| a.id.clone()).collect();
    let result = delivered(&topic, &acknowledged, Duration::from_secs(240)).await;
    // Where each event first is on the topic (one key: one partition, one order).
    let mut position: HashMap<&str, usize> = HashMap::new();
    for (at, id) in result.order.iter().enumerate() {
        position.entry(id.as_str()).or_insert(at);
    }
    let mut replica_inversions = Vec::new();
    let mut published_inversions = Vec::new();
    let mut between_replicas = 0;
    for (i, earlier) in sender.answers.iter().enumerate() {
        for later in &sender.answers[i + 1..] {
            let (Some(a), Some(b)) = (
                position.get(earlier.id.as_str()),
                position.get(later.id.as_str()),
            ) else {
                continue;
            };
            if a < b {
                continue;
            }
            if earlier.replica == later.replica {
                replica_inversions.push((earlier.id.as_str(), later.id.as_str()));
            } else if earlier.published {
                published_inversions.push((earlier.id.as_str(), later.id.as_str()));
            } else {
                between_replicas += 1;
            }
        }
    }
    eprintln!(
        "sent {}, acknowledged {} ({} answered published), on Kafka {}, duplicates {}, \
         not answered 2xx {}; pairs of spooled events from different replicas on Kafka in \
         another order than answered: {between_replicas}",
        sender.sent,
        sender.answers.len(),
        sender.answers.iter().filter(|a| a.published).count(),
        result.on_kafka,
        result.duplicates,
        sender.failed.len(),
    );
    assert!(
        result.missing.is_empty(),
        "{} acknowledged webhooks never reached Kafka, among them {:?}",
        result.missing.len(),
        &result.missing[..result.missing.len().min(20)]
    );
    assert!(
        sender.failed.is_empty(),
        "webhooks not answered 2xx: {:?}",
        &sender.failed[..sender.failed.len().min(20)]
    );
    assert!(
        replica_inversions.is_empty(),
        "{} pairs of one replica's events are on Kafka in another order than it answered \
         them, among them {:?}",
        replica_inversions.len(),
        &replica_inversions[..replica_inversions.len().min(10)]
    );
    assert!(
        published_inversions.is_empty(),
        "{} events answered `published` are on Kafka after an event sent later, among them {:?}",
        published_inversions.len(),
        &published_inversions[..published_inversions.len().min(10)]
    );
}
