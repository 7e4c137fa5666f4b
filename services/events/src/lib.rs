//! The event envelope of OmniNode Bridge (CloudEvents 1.0) in its Kafka and HTTP bindings,
//! the `kafka:` block every service config shares, and the lifecycle events services publish.

mod envelope;
mod http_binding;
mod json_format;
mod kafka_binding;
mod lifecycle;
mod settings;
mod trace;

pub use envelope::{CloudEvent, EnvelopeError, SPEC_VERSION};
pub use http_binding::{HttpContentMode, STRUCTURED_CONTENT_TYPE, http_content_mode};
pub use lifecycle::{LifecyclePhase, lifecycle_event};
pub use settings::KafkaSettings;
pub use trace::{child_traceparent, new_traceparent};

/// The standard topics every installation has.
pub mod topics {
    pub const SERVICE_LIFECYCLE: &str = "service-lifecycle-events";
    pub const TOOL_EXECUTION: &str = "tool-execution-events";
    pub const WORKFLOW: &str = "workflow-events";
    pub const AUDIT: &str = "audit-events";
}
