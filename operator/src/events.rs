//! Kubernetes Events (`events.k8s.io/v1`) on the operator's objects: one Event per call.
//!
//! kube's `Recorder` keeps every Event it publishes for six minutes, to count repeats of
//! one into a series. The operator sends an Event when it changes something or a condition
//! turns, not on every pass, so repeats are rare; but a bulk apply of 10,000 EventTopics is
//! 10,000 Events within minutes, and that cache was the largest thing in the operator's
//! heap: 35 MiB of hash table at the peak (heaptrack; `BENCHMARKS.md`), a table that keeps
//! its size after its entries expire. Publishing without the cache keeps memory flat in the
//! number of Events; a condition that flaps gets one Event per turn instead of a series.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
}

impl EventPublisher {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter }
    }

    /// Creates one Event about `regarding`, in its namespace.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), &self.event(event, regarding))
            .await?;
        Ok(())
    }

    fn event(&self, event: &Event, regarding: &ObjectReference) -> KubeEvent {
        let now = Timestamp::now();
        let object = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        KubeEvent {
            metadata: ObjectMeta {
                // The object's name and the time, as kubectl and kube name Events.
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(event.reason.clone()),
            action: Some(event.action.clone()),
            note: event.note.clone(),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            ..KubeEvent::default()
        }
    }
}
