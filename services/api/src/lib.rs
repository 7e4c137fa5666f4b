//! The custom resources of OmniNode Bridge as Rust types, with their schema validation,
//! and the pure helpers the operator, the services and the tests share.
//!
//! Group `bridge.omninode.io`, version `v1alpha1`, all namespaced:
//! [`EventTopic`] (a Kafka topic), [`EventConsumer`] (a consumer group delivering to an HTTP
//! sink) and [`WebhookIngress`] (a webhook receiver publishing to Kafka). What the API server
//! can check (enums, bounds, patterns, CEL rules) lives in the types, so a bad object is
//! refused at admission with a message that says what to fix.

pub mod duration;
pub mod event_consumer;
pub mod event_topic;
pub mod webhook_ingress;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::CustomResourceExt;

pub use duration::{Duration, DurationError, Retention};
pub use event_consumer::{EventConsumer, EventConsumerSpec, EventConsumerStatus};
pub use event_topic::{EventTopic, EventTopicSpec, EventTopicStatus};
pub use webhook_ingress::{WebhookIngress, WebhookIngressSpec, WebhookIngressStatus};

/// The API group of every kind here.
pub const GROUP: &str = "bridge.omninode.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// `bridge.omninode.io/paused: "true"` on an object stops the operator reconciling it.
pub const PAUSED_ANNOTATION: &str = "bridge.omninode.io/paused";

/// Condition types the operator sets. `Ready` is always present once reconciled.
pub mod condition_type {
    pub const READY: &str = "Ready";
    pub const PAUSED: &str = "Paused";
    pub const CONFLICT: &str = "Conflict";
    pub const DEGRADED: &str = "Degraded";
}

/// Whether the pause annotation is set to `"true"` on an object.
pub fn is_paused(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(PAUSED_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// The condition of type `type_` in a status condition list, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// One generated CRD with the file name `crdgen` writes it to under `crds/`.
pub struct CrdFile {
    pub file_name: &'static str,
    pub crd: CustomResourceDefinition,
}

/// The three CRDs, in the order `crdgen` prints them.
pub fn crds() -> Vec<CrdFile> {
    vec![
        CrdFile {
            file_name: "eventtopics.yaml",
            crd: EventTopic::crd(),
        },
        CrdFile {
            file_name: "eventconsumers.yaml",
            crd: EventConsumer::crd(),
        },
        CrdFile {
            file_name: "webhookingresses.yaml",
            crd: WebhookIngress::crd(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn paused_only_when_the_annotation_is_exactly_true() {
        let meta = |value: Option<&str>| ObjectMeta {
            annotations: value.map(|v| BTreeMap::from([(PAUSED_ANNOTATION.into(), v.into())])),
            ..Default::default()
        };
        assert!(is_paused(&meta(Some("true"))));
        assert!(!is_paused(&meta(Some("false"))));
        assert!(!is_paused(&meta(Some("yes"))));
        assert!(!is_paused(&meta(None)));
    }

    #[test]
    fn crds_are_namespaced_in_the_bridge_group_with_short_names() {
        let names: Vec<_> = crds()
            .into_iter()
            .map(|f| {
                let spec = f.crd.spec;
                assert_eq!(spec.group, GROUP);
                assert_eq!(spec.scope, "Namespaced");
                assert_eq!(spec.versions.len(), 1);
                assert_eq!(spec.versions[0].name, VERSION);
                let short = spec.names.short_names.unwrap_or_default().join(",");
                (f.file_name, spec.names.plural, short)
            })
            .collect();
        assert_eq!(
            names,
            [
                ("eventtopics.yaml", "eventtopics".into(), "et".into()),
                ("eventconsumers.yaml", "eventconsumers".into(), "ec".into()),
                (
                    "webhookingresses.yaml",
                    "webhookingresses".into(),
                    "wi".into()
                ),
            ]
        );
    }

    #[test]
    fn every_kind_prints_ready_and_age_and_has_a_status_subresource() {
        for file in crds() {
            let version = &file.crd.spec.versions[0];
            let columns = version.additional_printer_columns.as_ref().unwrap();
            let first = &columns[0];
            assert_eq!(first.name, "Ready");
            assert_eq!(
                first.json_path,
                r#".status.conditions[?(@.type=="Ready")].status"#
            );
            let last = columns.last().unwrap();
            assert_eq!(
                (last.name.as_str(), last.json_path.as_str()),
                ("Age", ".metadata.creationTimestamp")
            );
            assert!(version.subresources.as_ref().unwrap().status.is_some());
        }
    }

    #[test]
    fn conditions_are_a_list_map_keyed_by_type_in_every_kind() {
        for file in crds() {
            let schema = serde_json::to_value(&file.crd.spec.versions[0].schema).unwrap();
            let conditions =
                &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
            assert_eq!(
                conditions["x-kubernetes-list-type"], "map",
                "{}",
                file.file_name
            );
            assert_eq!(
                conditions["x-kubernetes-list-map-keys"],
                serde_json::json!(["type"])
            );
            assert!(conditions["items"]["properties"]["type"].is_object());
        }
    }
}
