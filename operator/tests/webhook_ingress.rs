//! WebhookIngress behaviour end to end: the operator runs as a process against the real API
//! server (and the real brokers, through the EventTopics it waits on), and each test reads
//! the objects it wrote as a user would.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bridge_api::{EventTopic, WebhookIngress};
use bridge_e2e::{Stack, TestNamespace, eventually, unique_name};
use futures::StreamExt;
use hook_receiver::config::ReceiverConfig;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use serde_json::json;
use support::{BOUND, Operator, RESYNC, create, event_topic, wait_ready};

const CHECKSUM: &str = "bridge.omninode.io/config-checksum";

async fn client() -> kube::Client {
    Stack::from_env().unwrap().kube_client().await
}

/// One namespace with the operator watching it, and Apis for what the tests touch.
struct Fixture {
    ns: TestNamespace,
    operator: Operator,
    client: kube::Client,
    topics: Api<EventTopic>,
    ingresses: Api<WebhookIngress>,
    secrets: Api<Secret>,
}

impl Fixture {
    async fn start(prefix: &str) -> Self {
        let client = client().await;
        let ns = TestNamespace::create(&client, prefix).await;
        let operator = Operator::start(&[&ns.name]).await;
        Self {
            topics: Api::namespaced(client.clone(), &ns.name),
            ingresses: Api::namespaced(client.clone(), &ns.name),
            secrets: Api::namespaced(client.clone(), &ns.name),
            client,
            ns,
            operator,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// An EventTopic on a Kafka topic of its own, waited on until Ready; returns the
    /// Kafka topic name.
    async fn ready_topic(&self, name: &str) -> String {
        let kafka_name = unique_name(name);
        create(
            &self.topics,
            &event_topic(name, json!({"topicName": kafka_name, "partitions": 1})),
        )
        .await;
        wait_ready(&self.topics, name, "True", "TopicReady").await;
        kafka_name
    }

    async fn create_secret(&self, name: &str, value: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"secret": value},
        }))
        .unwrap();
        self.secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    async fn set_secret(&self, name: &str, value: &str) {
        self.secrets
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"secret": value}})),
            )
            .await
            .unwrap();
    }

    async fn create_ingress(&self, name: &str, spec: serde_json::Value) {
        let wi: WebhookIngress = serde_json::from_value(json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": "WebhookIngress",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        self.ingresses
            .create(&PostParams::default(), &wi)
            .await
            .unwrap();
    }

    async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.ingresses
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    /// Waits until the WebhookIngress's `type_` condition has `status` and `reason`.
    async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Condition {
        eventually(
            &format!("{name}: {type_}={status} ({reason})"),
            BOUND,
            || async {
                let wi = self.ingresses.get(name).await.ok()?;
                let condition = bridge_api::find_condition(&wi.status?.conditions, type_)?.clone();
                (condition.status == status && condition.reason == reason).then_some(condition)
            },
        )
        .await
    }

    async fn wait_for<K>(&self, what: &str, name: &str) -> K
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        let api = self.api::<K>();
        eventually(what, BOUND, || async {
            api.get_opt(name).await.ok().flatten()
        })
        .await
    }

    async fn receiver_config(&self, name: &str) -> ReceiverConfig {
        let config_map: ConfigMap = self.wait_for("the receiver ConfigMap", name).await;
        let text = &config_map.data.unwrap()["receiver.yaml"];
        ReceiverConfig::parse(text)
            .expect("the rendered config reads through the receiver's loader")
    }

    async fn checksum(&self, deployment: &str) -> String {
        let deployment: StatefulSet = self.wait_for("the receiver StatefulSet", deployment).await;
        deployment_checksum(&deployment)
    }
}

fn deployment_checksum(deployment: &StatefulSet) -> String {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CHECKSUM]
        .clone()
}

fn github_spec(secret: &str, topics: &[(&str, &str)]) -> serde_json::Value {
    let routes: Vec<serde_json::Value> = topics
        .iter()
        .map(|(route, topic)| {
            json!({
                "name": route,
                "path": format!("/{route}"),
                "topic": topic,
                "eventType": {"header": "X-GitHub-Event", "prefix": "com.github."},
                "correlationId": {"header": "X-GitHub-Delivery"},
                "auth": {"github": {"secretRef": {"name": secret}}},
            })
        })
        .collect();
    json!({"replicas": 2, "routes": routes})
}

#[tokio::test]
async fn a_webhook_ingress_becomes_a_configured_receiver_with_service_pdb_and_ingress() {
    let f = Fixture::start("wi-render").await;
    let kafka_topic = f.ready_topic("tools").await;
    f.create_secret("github-webhook", "s3cret").await;
    let mut spec = github_spec("github-webhook", &[("github", "tools")]);
    spec["expose"] =
        json!({"ingress": {"host": "hooks.example.com", "tlsSecretName": "hooks-tls"}});
    f.create_ingress("github", spec).await;

    let config = f.receiver_config("github-receiver").await;
    assert_eq!(config.routes[0].topic, kafka_topic);
    assert_eq!(
        config.routes[0]
            .auth
            .github
            .as_ref()
            .unwrap()
            .secret_file
            .to_str(),
        Some("/etc/hook-receiver/secrets/github-webhook/secret")
    );
    assert_eq!(
        config.source,
        format!("/namespaces/{}/webhookingresses/github", f.ns.name)
    );
    assert_eq!(
        config.kafka.bootstrap_servers,
        Stack::from_env().unwrap().kafka_bootstrap_servers
    );

    let deployment: StatefulSet = f
        .wait_for("the receiver StatefulSet", "github-receiver")
        .await;
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "WebhookIngress");
    assert_eq!(owner.name, "github");
    assert_eq!(owner.controller, Some(true));
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(deployment_checksum(&deployment).len(), 64);
    let pod = spec.template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.name, "hook-receiver");
    assert_eq!(
        container.image.as_deref(),
        Some(support::workload_image().as_str())
    );
    assert_eq!(
        container.args.as_deref(),
        Some(
            [
                "--config".to_owned(),
                "/etc/hook-receiver/config/receiver.yaml".to_owned()
            ]
            .as_slice()
        )
    );
    let readiness = container.readiness_probe.as_ref().unwrap();
    assert_eq!(
        readiness.http_get.as_ref().unwrap().path.as_deref(),
        Some("/readyz")
    );
    let liveness = container.liveness_probe.as_ref().unwrap();
    assert_eq!(
        liveness.http_get.as_ref().unwrap().path.as_deref(),
        Some("/healthz")
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "bridge-operator");
    assert_eq!(labels["app.kubernetes.io/instance"], "github");

    let service: Service = f.wait_for("the receiver Service", "github-receiver").await;
    let ports: BTreeMap<String, i32> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("http".into(), 80), ("admin".into(), 9090)])
    );
    let pdb: PodDisruptionBudget = f.wait_for("the receiver PDB", "github-receiver").await;
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let ingress: Ingress = f.wait_for("the receiver Ingress", "github-receiver").await;
    assert_eq!(
        ingress.spec.unwrap().rules.unwrap()[0].host.as_deref(),
        Some("hooks.example.com")
    );

    let url = eventually("the route's URL in status", BOUND, || async {
        let status = f.ingresses.get("github").await.ok()?.status?;
        status.routes.first().map(|r| r.url.clone())
    })
    .await;
    assert_eq!(url, "https://hooks.example.com/github");
}

#[tokio::test]
async fn a_missing_secret_is_reported_by_name_and_creating_it_heals() {
    let f = Fixture::start("wi-secret").await;
    f.ready_topic("tools").await;
    f.create_ingress("github", github_spec("not-yet", &[("github", "tools")]))
        .await;

    let ready = f
        .wait_condition("github", "Ready", "False", "SecretNotFound")
        .await;
    assert!(
        ready.message.contains(&format!("{}/not-yet", f.ns.name)),
        "{}",
        ready.message
    );
    assert!(
        f.api::<StatefulSet>()
            .get_opt("github-receiver")
            .await
            .unwrap()
            .is_none()
    );

    f.create_secret("not-yet", "s3cret").await;
    f.wait_for::<StatefulSet>("the StatefulSet once the Secret exists", "github-receiver")
        .await;
    eventually("Ready no longer SecretNotFound", BOUND, || async {
        let wi = f.ingresses.get("github").await.ok()?;
        let ready = bridge_api::find_condition(&wi.status?.conditions, "Ready")?.clone();
        (ready.reason != "SecretNotFound").then_some(())
    })
    .await;

    // Losing the Secret again is reported, and the running receiver is left as it is.
    let checksum = f.checksum("github-receiver").await;
    f.secrets
        .delete("not-yet", &Default::default())
        .await
        .unwrap();
    let ready = f
        .wait_condition("github", "Ready", "False", "SecretNotFound")
        .await;
    assert!(ready.message.contains("key secret"), "{}", ready.message);
    tokio::time::sleep(RESYNC).await;
    assert_eq!(f.checksum("github-receiver").await, checksum);
    let events: Api<k8s_openapi::api::events::v1::Event> = f.api();
    eventually("a SecretNotFound warning Event", BOUND, || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SecretNotFound"))
    })
    .await;
}

#[tokio::test]
async fn a_missing_event_topic_is_reported_and_creating_it_heals() {
    let f = Fixture::start("wi-topic").await;
    f.create_secret("github-webhook", "s3cret").await;
    f.create_ingress(
        "github",
        github_spec("github-webhook", &[("github", "later")]),
    )
    .await;

    let ready = f
        .wait_condition("github", "Ready", "False", "TopicNotFound")
        .await;
    assert!(
        ready.message.contains(&format!("{}/later", f.ns.name)),
        "{}",
        ready.message
    );

    let kafka_topic = f.ready_topic("later").await;
    let config = eventually("the ConfigMap with the topic", BOUND, || async {
        let cm = f
            .api::<ConfigMap>()
            .get_opt("github-receiver")
            .await
            .ok()??;
        ReceiverConfig::parse(&cm.data?["receiver.yaml"]).ok()
    })
    .await;
    assert_eq!(config.routes[0].topic, kafka_topic);
}

#[tokio::test]
async fn a_secret_change_rolls_the_pods_within_a_resync() {
    let f = Fixture::start("wi-roll").await;
    f.ready_topic("tools").await;
    f.create_secret("github-webhook", "one").await;
    f.create_ingress(
        "github",
        github_spec("github-webhook", &[("github", "tools")]),
    )
    .await;
    let before = f.checksum("github-receiver").await;

    f.set_secret("github-webhook", "two").await;
    let sets = f.api::<StatefulSet>();
    let after = eventually("a new checksum on the pod template", RESYNC * 4, || async {
        let deployment = sets.get("github-receiver").await.ok()?;
        let checksum = deployment_checksum(&deployment);
        (checksum != before).then_some(checksum)
    })
    .await;
    assert_eq!(after.len(), 64);
    let config = f.receiver_config("github-receiver").await;
    assert_eq!(config.routes.len(), 1, "the config itself did not change");
}

#[tokio::test]
async fn removing_a_route_or_the_ingress_from_the_spec_updates_or_deletes_the_objects() {
    let f = Fixture::start("wi-prune").await;
    f.ready_topic("tools").await;
    f.create_secret("github-webhook", "s3cret").await;
    let mut spec = github_spec(
        "github-webhook",
        &[("github", "tools"), ("gitlab", "tools")],
    );
    spec["expose"] = json!({"ingress": {"host": "hooks.example.com"}});
    f.create_ingress("github", spec).await;
    assert_eq!(f.receiver_config("github-receiver").await.routes.len(), 2);
    f.wait_for::<Ingress>("the Ingress", "github-receiver")
        .await;

    let one_route = github_spec("github-webhook", &[("github", "tools")]);
    f.patch_spec("github", json!({"routes": one_route["routes"]}))
        .await;
    let config_maps = f.api::<ConfigMap>();
    eventually("the ConfigMap without the gitlab route", BOUND, || async {
        let cm = config_maps.get("github-receiver").await.ok()?;
        let config = ReceiverConfig::parse(&cm.data?["receiver.yaml"]).ok()?;
        (config.routes.len() == 1 && config.routes[0].name == "github").then_some(())
    })
    .await;

    f.patch_spec("github", json!({"expose": null})).await;
    let ingresses = f.api::<Ingress>();
    eventually("the Ingress deleted", BOUND, || async {
        ingresses
            .get_opt("github-receiver")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let url = eventually("the route's URL back on the Service", BOUND, || async {
        let status = f.ingresses.get("github").await.ok()?.status?;
        let url = status.routes.first()?.url.clone();
        url.contains(".svc:80/").then_some(url)
    })
    .await;
    assert_eq!(
        url,
        format!("http://github-receiver.{}.svc:80/github", f.ns.name)
    );
}

#[tokio::test]
async fn an_http_route_without_gateway_api_is_degraded_while_the_receiver_runs() {
    let f = Fixture::start("wi-gateway").await;
    f.ready_topic("tools").await;
    f.create_secret("github-webhook", "s3cret").await;
    let mut spec = github_spec("github-webhook", &[("github", "tools")]);
    spec["expose"] = json!({"httpRoute": {"parentRefs": [{"name": "public"}], "hostnames": ["hooks.example.com"]}});
    f.create_ingress("github", spec).await;

    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(f.client.clone());
    if crds
        .get_opt("httproutes.gateway.networking.k8s.io")
        .await
        .unwrap()
        .is_some()
    {
        eprintln!("Gateway API is installed on this stack: nothing to check");
        return;
    }
    let degraded = f
        .wait_condition("github", "Degraded", "True", "GatewayAPINotInstalled")
        .await;
    assert!(
        degraded.message.contains("Gateway API"),
        "{}",
        degraded.message
    );
    f.wait_for::<StatefulSet>("the StatefulSet all the same", "github-receiver")
        .await;
}

#[tokio::test]
async fn a_paused_object_is_left_alone_until_the_annotation_goes() {
    let f = Fixture::start("wi-paused").await;
    f.ready_topic("tools").await;
    f.create_secret("github-webhook", "s3cret").await;
    f.create_ingress(
        "github",
        github_spec("github-webhook", &[("github", "tools")]),
    )
    .await;
    let before = f.checksum("github-receiver").await;

    let annotate = |value: serde_json::Value| {
        Patch::Merge(json!({"metadata": {"annotations": {"bridge.omninode.io/paused": value}}}))
    };
    f.ingresses
        .patch("github", &PatchParams::default(), &annotate(json!("true")))
        .await
        .unwrap();
    f.wait_condition("github", "Paused", "True", "Paused").await;
    f.set_secret("github-webhook", "changed").await;
    tokio::time::sleep(RESYNC * 2).await;
    assert_eq!(
        f.checksum("github-receiver").await,
        before,
        "paused: nothing rolls"
    );

    f.ingresses
        .patch(
            "github",
            &PatchParams::default(),
            &annotate(serde_json::Value::Null),
        )
        .await
        .unwrap();
    let sets = f.api::<StatefulSet>();
    eventually("the rollout once unpaused", BOUND, || async {
        let deployment = sets.get("github-receiver").await.ok()?;
        (deployment_checksum(&deployment) != before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_nothing_changed_a_reconcile_writes_nothing() {
    let f = Fixture::start("wi-steady").await;
    f.ready_topic("tools").await;
    f.create_secret("github-webhook", "s3cret").await;
    let mut spec = github_spec("github-webhook", &[("github", "tools")]);
    spec["expose"] = json!({"ingress": {"host": "hooks.example.com"}});
    f.create_ingress("github", spec).await;
    f.wait_for::<Ingress>("the Ingress", "github-receiver")
        .await;

    // The StatefulSet's and PDB's status move with their pods (the controller manager
    // writes them), so for those the spec's generation counts; the rest must keep their
    // resourceVersion, and the operator must make no status write.
    let snapshot = || async {
        let cm = f.api::<ConfigMap>().get("github-receiver").await.ok()?;
        let service = f.api::<Service>().get("github-receiver").await.ok()?;
        let ingress = f.api::<Ingress>().get("github-receiver").await.ok()?;
        let deployment = f.api::<StatefulSet>().get("github-receiver").await.ok()?;
        let pdb = f
            .api::<PodDisruptionBudget>()
            .get("github-receiver")
            .await
            .ok()?;
        Some((
            cm.resource_version(),
            service.resource_version(),
            ingress.resource_version(),
            deployment.metadata.generation,
            pdb.metadata.generation,
        ))
    };
    let window = RESYNC * 3 + Duration::from_secs(1);
    eventually("a window of resyncs without writes", BOUND * 2, || async {
        let before = snapshot().await?;
        let patches = f
            .operator
            .metric("bridge_operator_status_patches_total")
            .await;
        let reconciles = f.operator.metric("bridge_operator_reconciles_total").await;
        tokio::time::sleep(window).await;
        let after = snapshot().await?;
        let patches_after = f
            .operator
            .metric("bridge_operator_status_patches_total")
            .await;
        let reconciles_after = f.operator.metric("bridge_operator_reconciles_total").await;
        (before == after && patches == patches_after && reconciles_after >= reconciles + 2.0)
            .then_some(())
    })
    .await;
}

/// The receivers run on the stack's node, from the image `e2e/stack.sh up` pushed.
#[tokio::test]
async fn the_receivers_become_ready_and_a_signed_webhook_lands_on_the_kafka_topic() {
    let f = Fixture::start("wi-flow").await;
    let kafka_topic = f.ready_topic("tools").await;
    f.create_secret("github-webhook", "s3cret").await;
    f.create_ingress(
        "github",
        github_spec("github-webhook", &[("github", "tools")]),
    )
    .await;

    eventually("2 ready replicas and Ready=True", BOUND, || async {
        let wi = f.ingresses.get("github").await.ok()?;
        let status = wi.status?;
        let ready = bridge_api::find_condition(&status.conditions, "Ready")?;
        (ready.status == "True" && status.ready_replicas == Some(2)).then_some(())
    })
    .await;
    let endpoints = eventually("two ready receiver endpoints", BOUND, || async {
        let endpoints =
            support::ready_endpoints(&f.client, &f.ns.name, "github-receiver", "http").await;
        (endpoints.len() == 2).then_some(endpoints)
    })
    .await;

    let delivery = unique_name("delivery");
    let body = serde_json::to_vec(&json!({"action": "opened", "number": 7})).unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://{}/github", endpoints[0]))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", &delivery)
        .header(
            "x-hub-signature-256",
            support::github_signature("s3cret", &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "HTTP {}", response.status());

    let consumer: StreamConsumer = Stack::from_env()
        .unwrap()
        .kafka_config()
        .set("group.id", unique_name("wi-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[kafka_topic.as_str()]).unwrap();
    let mut stream = consumer.stream();
    let message = tokio::time::timeout(BOUND, stream.next())
        .await
        .expect("an event on the topic")
        .unwrap()
        .unwrap();
    let headers = message.headers().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("ce_id"), Some(delivery.clone()));
    assert_eq!(
        header("ce_type").as_deref(),
        Some("com.github.pull_request")
    );
    assert_eq!(
        header("ce_source"),
        Some(format!(
            "/namespaces/{}/webhookingresses/github/github",
            f.ns.name
        ))
    );
    assert_eq!(message.key(), Some(delivery.as_bytes()));
    assert_eq!(message.payload(), Some(body.as_slice()));
}
