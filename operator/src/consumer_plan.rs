//! What an EventConsumer becomes, as pure functions: the `event-consumer` config, the
//! ConfigMap holding it, the Deployment running it, and how many replicas lag calls for.
//!
//! Nothing here talks to the API server or Kafka; `consumer_controller` feeds it what it
//! observed and applies what it returns.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bridge_api::EventConsumer;
use bridge_api::event_consumer::{Autoscaling, Sink};
use event_consumer::config::{
    ConsumerConfig, DeliveryConfig, FilterConfig, RetryConfig, SinkConfig,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::workload::{self, SecretKey, WorkloadSettings};

/// `app.kubernetes.io/name` of every object an EventConsumer becomes, and the container name.
pub const COMPONENT: &str = "event-consumer";
/// The key of the ConfigMap that holds the config file.
pub const CONFIG_KEY: &str = "consumer.yaml";
/// Where the ConfigMap is mounted in the pod.
pub const CONFIG_DIR: &str = "/etc/event-consumer/config";
/// The admin server's port (`/metrics`, `/healthz`, `/readyz`), named `admin`.
pub const ADMIN_PORT: u16 = 9090;
/// How long lag must stay low after the last scaling before the operator removes replicas,
/// so a burst that is being worked off does not make the replica count flap.
pub const SCALE_DOWN_COOLDOWN: Duration = Duration::from_secs(120);

/// The name of the ConfigMap and of the Deployment of the EventConsumer `name`.
pub fn object_name(name: &str) -> String {
    format!("{name}-consumer")
}

/// The Kafka topic names the EventConsumer's EventTopics resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTopics {
    /// One per `spec.topics`, in that order.
    pub topics: Vec<String>,
    /// `spec.delivery.deadLetterTopic`'s Kafka name, when it is set.
    pub dead_letter_topic: Option<String>,
}

/// The URL events are POSTed to: `sink.url` as written, or the Service's cluster DNS name.
pub fn sink_url(sink: &Sink, namespace: &str) -> String {
    match (&sink.url, &sink.service) {
        (Some(url), _) => url.clone(),
        (None, Some(service)) => format!(
            "http://{}.{namespace}.svc:{}{}",
            service.name,
            service.port,
            service.path.as_deref().unwrap_or("/")
        ),
        // The schema refuses a sink without either; an empty URL fails the consumer's own
        // config check with a message naming `sink.url`.
        (None, None) => String::new(),
    }
}

/// The `event-consumer --config` file for `consumer`.
pub fn consumer_config(
    consumer: &EventConsumer,
    topics: &ResolvedTopics,
    settings: &WorkloadSettings,
) -> ConsumerConfig {
    let spec = &consumer.spec;
    let delivery = &spec.delivery;
    ConsumerConfig {
        admin_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, ADMIN_PORT)),
        kafka: settings.workload_kafka(),
        group_id: consumer.group_id(),
        topics: topics.topics.clone(),
        sink: SinkConfig {
            url: sink_url(&spec.sink, &workload::namespace_of(consumer)),
        },
        filter: FilterConfig {
            types: spec
                .filter
                .as_ref()
                .map(|f| f.types.clone())
                .unwrap_or_default(),
        },
        delivery: DeliveryConfig {
            ordering: delivery.ordering,
            max_in_flight: delivery.max_in_flight.max(1) as u32,
            timeout: delivery.timeout.clone(),
            retry: RetryConfig {
                attempts: delivery.retry.attempts.max(1) as u32,
                initial_backoff: delivery.retry.initial_backoff.clone(),
                max_backoff: delivery.retry.max_backoff.clone(),
                jitter: delivery.retry.jitter,
            },
            dead_letter_topic: topics.dead_letter_topic.clone(),
        },
        start_from: spec.start_from,
        lifecycle_topic: bridge_events::topics::SERVICE_LIFECYCLE.to_owned(),
    }
}

/// The config as the file the consumer reads.
pub fn render_config(config: &ConsumerConfig) -> String {
    serde_yaml::to_string(config).expect("a ConsumerConfig always serialises")
}

/// The digest on the pod template: the pods read their config at start, and the
/// workloads' Kafka Secret when the operator names one.
pub fn config_checksum(rendered: &str, kafka_secret: Option<&SecretKey>) -> String {
    workload::config_checksum(rendered, kafka_secret)
}

fn metadata(consumer: &EventConsumer) -> ObjectMeta {
    ObjectMeta {
        name: Some(object_name(&consumer.name_any())),
        namespace: consumer.namespace(),
        labels: Some(workload::labels(COMPONENT, &consumer.name_any())),
        owner_references: Some(vec![workload::owner_reference(consumer)]),
        ..Default::default()
    }
}

/// The ConfigMap `<name>-consumer` holding `consumer.yaml`.
pub fn desired_config_map(consumer: &EventConsumer, rendered: &str) -> ConfigMap {
    ConfigMap {
        metadata: metadata(consumer),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            rendered.to_owned(),
        )])),
        ..Default::default()
    }
}

/// The Deployment `<name>-consumer` running `replicas` consumers of the group.
pub fn desired_deployment(
    consumer: &EventConsumer,
    settings: &WorkloadSettings,
    checksum: &str,
    replicas: i32,
) -> Deployment {
    let name = consumer.name_any();
    let volume = "config";
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        timeout_seconds: Some(1),
        ..Default::default()
    };
    // On SIGTERM the consumer lets requests in flight finish (up to delivery.timeout + 2 s)
    // and commits: the grace period leaves it that time.
    let timeout = consumer
        .spec
        .delivery
        .timeout
        .to_std()
        .unwrap_or(Duration::from_secs(10));
    let grace = (timeout.as_secs() as i64 + 10).max(30);
    let mut volumes = vec![Volume {
        name: volume.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: object_name(&name),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: volume.into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    if let Some((kafka_volume, kafka_mount)) = settings.kafka_secret_mount() {
        volumes.push(kafka_volume);
        mounts.push(kafka_mount);
    }
    let container = Container {
        name: COMPONENT.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec!["event-consumer".into()]),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("admin".into()),
            container_port: ADMIN_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(vec![EnvVar {
            // The instance name in the consumer's lifecycle events.
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/readyz", 2)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("256Mi".into()),
            )])),
            ..Default::default()
        }),
        security_context: Some(workload::container_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    Deployment {
        metadata: metadata(consumer),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(workload::selector_labels(COMPONENT, &name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(workload::labels(COMPONENT, &name)),
                    annotations: Some(BTreeMap::from([(
                        workload::CONFIG_CHECKSUM_ANNOTATION.to_owned(),
                        checksum.to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The consumer never calls the Kubernetes API.
                    automount_service_account_token: Some(false),
                    security_context: Some(workload::pod_security_context()),
                    termination_grace_period_seconds: Some(grace),
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the autoscaler sees on one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleInput {
    /// Records not yet consumed, over every partition of the group's topics.
    pub lag: i64,
    /// Partitions of the group's topics: more replicas than this would sit idle.
    pub partitions: i32,
    /// The Deployment's replica count now; `None` before the Deployment exists.
    pub current: Option<i32>,
    /// Time since the operator last changed the replica count (`None`: not since it started).
    pub since_last_scale: Option<Duration>,
}

/// The replica count lag calls for, between `minReplicas` and `maxReplicas` and never above
/// the partitions (the partition cap wins over `minReplicas`, as extra members get no
/// partition). One replica per `lagThreshold` of lag: more replicas are added at once, and
/// fewer are run only once [`SCALE_DOWN_COOLDOWN`] has passed since the last change.
pub fn autoscale(autoscaling: &Autoscaling, input: ScaleInput) -> i32 {
    let upper = autoscaling.max_replicas.min(input.partitions.max(1)).max(1);
    let lower = autoscaling.min_replicas.clamp(1, upper);
    let threshold = autoscaling.lag_threshold.max(1) as u64;
    let lag = input.lag.max(0) as u64;
    let called_for = lag.div_ceil(threshold).clamp(lower as u64, upper as u64) as i32;
    let Some(current) = input.current else {
        return called_for;
    };
    // A count outside the bounds (the spec or the partitions changed) is corrected at once.
    let current = current.clamp(lower, upper);
    if called_for >= current {
        return called_for;
    }
    match input.since_last_scale {
        Some(since) if since < SCALE_DOWN_COOLDOWN => current,
        _ => called_for,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_events::KafkaSettings;
    use serde_json::json;

    fn consumer(spec: serde_json::Value) -> EventConsumer {
        serde_json::from_value(json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": "EventConsumer",
            "metadata": {"name": "coordinator", "namespace": "team-a", "uid": "0f1e2d3c"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn settings() -> WorkloadSettings {
        WorkloadSettings {
            image: "omninode/bridge:test".into(),
            image_pull_policy: Some("IfNotPresent".into()),
            kafka_bootstrap_servers: "kafka-0:9092,kafka-1:9092".into(),
            kafka_secret: None,
            spool_storage_class: None,
        }
    }

    fn with_kafka_secret() -> WorkloadSettings {
        WorkloadSettings {
            kafka_secret: Some("kafka-client".into()),
            ..settings()
        }
    }

    fn kafka_secret(properties: &str) -> SecretKey {
        SecretKey {
            name: "kafka-client".into(),
            key: "properties.yaml".into(),
            value: properties.as_bytes().to_vec(),
        }
    }

    fn resolved() -> ResolvedTopics {
        ResolvedTopics {
            topics: vec!["team-a.workflow-events".into()],
            dead_letter_topic: Some("team-a.workflow-dlq".into()),
        }
    }

    #[test]
    fn the_rendered_config_reads_back_through_the_consumers_own_loader() {
        let ec = consumer(json!({
            "topics": ["workflow-events"],
            "sink": {"url": "https://sink.example.com/events"},
            "filter": {"types": ["workflow.*"]},
            "delivery": {"ordering": "partition", "maxInFlight": 8, "timeout": "5s",
                         "retry": {"attempts": 3, "initialBackoff": "100ms", "maxBackoff": "2s", "jitter": false},
                         "deadLetterTopic": "workflow-dlq"},
            "startFrom": "earliest",
        }));
        let config = consumer_config(&ec, &resolved(), &settings());
        let rendered = render_config(&config);
        let read = ConsumerConfig::from_yaml(&rendered).unwrap();
        assert_eq!(read, config);
        assert_eq!(read.group_id, "team-a.coordinator");
        assert_eq!(read.topics, ["team-a.workflow-events"]);
        assert_eq!(
            read.delivery.dead_letter_topic.as_deref(),
            Some("team-a.workflow-dlq")
        );
        assert_eq!(read.sink.url, "https://sink.example.com/events");
        assert_eq!(read.filter.types, ["workflow.*"]);
        assert_eq!(read.delivery.max_in_flight, 8);
        assert_eq!(read.delivery.retry.attempts, 3);
        assert!(!read.delivery.retry.jitter);
        assert_eq!(read.request_timeout().unwrap(), Duration::from_secs(5));
        assert_eq!(
            read.start_from,
            bridge_api::event_consumer::StartFrom::Earliest
        );
        assert_eq!(read.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(
            read.kafka,
            KafkaSettings {
                bootstrap_servers: "kafka-0:9092,kafka-1:9092".into(),
                properties: BTreeMap::new(),
                properties_file: None,
            }
        );
    }

    #[test]
    fn a_minimal_consumer_renders_the_documented_defaults() {
        let ec = consumer(json!({"topics": ["a", "b"], "sink": {"url": "http://s/"}}));
        let topics = ResolvedTopics {
            topics: vec!["kafka-a".into(), "kafka-b".into()],
            dead_letter_topic: None,
        };
        let rendered = render_config(&consumer_config(&ec, &topics, &settings()));
        let read = ConsumerConfig::from_yaml(&rendered).unwrap();
        assert_eq!(read.delivery, DeliveryConfig::default());
        assert_eq!(read.topics, ["kafka-a", "kafka-b"]);
        assert!(!rendered.contains("filter"), "{rendered}");
    }

    #[test]
    fn a_service_sink_becomes_its_cluster_dns_url() {
        let ec = consumer(json!({
            "topics": ["t"], "sink": {"service": {"name": "coordinator", "port": 8080, "path": "/events"}}
        }));
        assert_eq!(
            sink_url(&ec.spec.sink, "team-a"),
            "http://coordinator.team-a.svc:8080/events"
        );
        let ec = consumer(json!({"topics": ["t"], "sink": {"service": {"name": "coordinator"}}}));
        assert_eq!(
            sink_url(&ec.spec.sink, "team-a"),
            "http://coordinator.team-a.svc:80/"
        );
    }

    #[test]
    fn the_deployment_runs_the_config_with_probes_and_a_restricted_context() {
        let ec = consumer(json!({"topics": ["t"], "sink": {"url": "http://s/"}}));
        let deployment = desired_deployment(&ec, &settings(), "abc", 3);
        assert_eq!(
            deployment.metadata.name.as_deref(),
            Some("coordinator-consumer")
        );
        let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("EventConsumer", Some(true))
        );
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let template = spec.template;
        let meta = template.metadata.unwrap();
        assert_eq!(
            meta.labels.unwrap(),
            workload::labels(COMPONENT, "coordinator")
        );
        assert_eq!(
            meta.annotations.unwrap()[workload::CONFIG_CHECKSUM_ANNOTATION],
            "abc"
        );
        let pod = template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.name, "event-consumer");
        assert_eq!(container.image.as_deref(), Some("omninode/bridge:test"));
        assert_eq!(
            container.command.as_deref(),
            Some(&["event-consumer".to_owned()][..])
        );
        assert_eq!(
            container.args.as_deref(),
            Some(
                &[
                    "--config".to_owned(),
                    "/etc/event-consumer/config/consumer.yaml".to_owned()
                ][..]
            )
        );
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            readiness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz")
        );
        assert_eq!(readiness.period_seconds, Some(2));
        assert_eq!(
            container.security_context,
            Some(workload::container_security_context())
        );
        assert_eq!(pod.security_context, Some(workload::pod_security_context()));
        let volume = &pod.volumes.unwrap()[0];
        assert_eq!(
            volume.config_map.as_ref().unwrap().name,
            "coordinator-consumer"
        );
    }

    #[test]
    fn the_checksum_follows_the_config() {
        let ec = consumer(json!({"topics": ["t"], "sink": {"url": "http://s/"}}));
        let render = |ec: &EventConsumer| {
            config_checksum(
                &render_config(&consumer_config(ec, &resolved(), &settings())),
                None,
            )
        };
        let before = render(&ec);
        assert_eq!(before, render(&ec), "the same spec gives the same checksum");
        let changed = consumer(json!({"topics": ["t"], "sink": {"url": "http://other/"}}));
        assert_ne!(before, render(&changed));
    }

    #[test]
    fn with_a_kafka_secret_the_pods_mount_it_and_the_config_names_its_file() {
        let ec = consumer(json!({"topics": ["t"], "sink": {"url": "http://s/"}}));
        let rendered = render_config(&consumer_config(&ec, &resolved(), &with_kafka_secret()));
        let read = ConsumerConfig::from_yaml(&rendered).unwrap();
        assert_eq!(
            read.kafka,
            KafkaSettings {
                bootstrap_servers: "kafka-0:9092,kafka-1:9092".into(),
                properties: BTreeMap::new(),
                properties_file: Some("/etc/omninode-bridge/kafka/properties.yaml".into()),
            }
        );
        let plain = render_config(&consumer_config(&ec, &resolved(), &settings()));
        assert!(!plain.contains("properties"), "{plain}");

        let one = kafka_secret("sasl.password: one\n");
        let checksum = config_checksum(&rendered, Some(&one));
        assert_eq!(checksum, config_checksum(&rendered, Some(&one)));
        assert_ne!(
            checksum,
            config_checksum(&rendered, Some(&kafka_secret("sasl.password: two\n")))
        );
        assert_ne!(checksum, config_checksum(&rendered, None));

        let pod = desired_deployment(&ec, &with_kafka_secret(), &checksum, 1)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let mount = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/etc/omninode-bridge/kafka")
            .cloned()
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("kafka-client")
        );
        let without = desired_deployment(&ec, &settings(), &checksum, 1);
        let volumes = without
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .volumes
            .unwrap();
        assert_eq!(volumes.len(), 1, "the config only");
    }

    #[test]
    fn autoscaling_follows_lag_within_bounds_and_cools_down_before_scaling_in() {
        let policy = Autoscaling {
            min_replicas: 2,
            max_replicas: 8,
            lag_threshold: 100,
        };
        // (lag, partitions, current, since last scale, expected replicas, why)
        type Row = (i64, i32, Option<i32>, Option<Duration>, i32, &'static str);
        let cooled = Some(SCALE_DOWN_COOLDOWN);
        let recent = Some(Duration::from_secs(30));
        let table: &[Row] = &[
            (
                0,
                12,
                None,
                None,
                2,
                "a new Deployment starts at minReplicas",
            ),
            (
                450,
                12,
                None,
                None,
                5,
                "a new Deployment starts where lag calls for",
            ),
            (0, 12, Some(2), cooled, 2, "never below minReplicas"),
            (
                250,
                12,
                Some(2),
                recent,
                3,
                "scales up at once, even inside the cooldown",
            ),
            (10_000, 12, Some(2), recent, 8, "never above maxReplicas"),
            (10_000, 4, Some(2), recent, 4, "never above the partitions"),
            (
                10_000,
                1,
                Some(2),
                recent,
                1,
                "the partition cap wins over minReplicas",
            ),
            (
                150,
                12,
                Some(6),
                recent,
                6,
                "no scale-down inside the cooldown",
            ),
            (
                150,
                12,
                Some(6),
                cooled,
                2,
                "scales down once the cooldown has passed",
            ),
            (
                150,
                12,
                Some(6),
                None,
                2,
                "no scale since the operator started: may scale down",
            ),
            (
                600,
                12,
                Some(6),
                cooled,
                6,
                "steady when lag matches the replicas",
            ),
            (
                0,
                12,
                Some(10),
                recent,
                8,
                "a count above maxReplicas is corrected at once",
            ),
            (
                0,
                12,
                Some(0),
                recent,
                2,
                "scaled to zero (after a replay) comes back at once",
            ),
        ];
        for (lag, partitions, current, since, expected, why) in table {
            let input = ScaleInput {
                lag: *lag,
                partitions: *partitions,
                current: *current,
                since_last_scale: *since,
            };
            assert_eq!(autoscale(&policy, input), *expected, "{why}: {input:?}");
        }
    }
}
