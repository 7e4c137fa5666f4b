//! bridge-operator: reconciles EventTopic objects into Kafka topics (and, later, the
//! EventConsumer and WebhookIngress workloads). The binary in `main.rs` wires these together.

pub mod audit;
pub mod conditions;
pub mod consumer_controller;
pub mod consumer_plan;
pub mod events;
pub mod ingress_controller;
pub mod ingress_plan;
pub mod kafka_admin;
pub mod metrics;
pub mod spool_claims;
pub mod topic_controller;
pub mod topic_descriptions;
pub mod topic_plan;
pub mod workload;
