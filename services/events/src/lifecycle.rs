//! The events each service publishes on `service-lifecycle-events` as it starts, becomes
//! ready and stops, so operators can see restarts and crash loops in Kafka itself.

use crate::envelope::CloudEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecyclePhase {
    Starting,
    Ready,
    Stopping,
}

impl LifecyclePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
        }
    }
}

/// The lifecycle event of one instance (a Pod name or host name) of `service`. Its
/// correlation id is `<service>/<instance>`, so one instance's history stays in order.
pub fn lifecycle_event(service: &str, instance: &str, phase: LifecyclePhase) -> CloudEvent {
    let data = serde_json::json!({
        "service": service,
        "instance": instance,
        "phase": phase.as_str(),
        "pid": std::process::id(),
    });
    let mut event = CloudEvent::new(
        uuid::Uuid::new_v4().to_string(),
        format!("/services/{service}"),
        format!("io.omninode.bridge.service.{}", phase.as_str()),
        format!("{service}/{instance}"),
        data.to_string().into_bytes(),
    );
    event.time = Some(jiff::Timestamp::now().to_string());
    event.subject = Some(instance.to_owned());
    event.datacontenttype = Some("application/json".into());
    event.schema_version = Some("1".into());
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifecycle_event_names_the_service_instance_and_phase() {
        let event = lifecycle_event("hook-receiver", "pod-a", LifecyclePhase::Ready);
        assert_eq!(event.ty, "io.omninode.bridge.service.ready");
        assert_eq!(event.source, "/services/hook-receiver");
        assert_eq!(event.correlation_id, "hook-receiver/pod-a");
        let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
        assert_eq!(data["phase"], "ready");
        assert_eq!(data["instance"], "pod-a");
        assert!(
            event
                .time
                .as_deref()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok()
        );
    }
}
