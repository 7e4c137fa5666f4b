//! Turns one verified webhook request into the CloudEvent published for it: event type,
//! correlation id and delivery id from headers, JSON pointers or fixed values; CloudEvents
//! posted in binary or structured mode keep their own attributes.

use std::cell::OnceCell;

use bridge_events::{CloudEvent, EnvelopeError, child_traceparent, new_traceparent};
use http::HeaderMap;

use crate::config::{AuthKind, RouteConfig, ValueSource};

/// Why a request cannot become an event: answered 400 with this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequest {
    #[error("{what}: the {header} header is missing")]
    MissingHeader { what: &'static str, header: String },
    #[error("{what}: the body has no string or number at JSON pointer `{pointer}`")]
    MissingPointer { what: &'static str, pointer: String },
    #[error("{what}: the body is not valid JSON, and the route reads `{pointer}` from it")]
    InvalidJson { what: &'static str, pointer: String },
    #[error(
        "the event type is not set: the route has no eventType, and the request is not a CloudEvent"
    )]
    NoEventType,
    #[error("the posted CloudEvent is not valid: {0}")]
    Envelope(#[from] EnvelopeError),
}

/// A route's rules for building events, resolved from its configuration.
pub struct EventRules {
    pub source: String,
    pub event_type: Option<ValueSource>,
    pub correlation_id: Option<ValueSource>,
    pub delivery_id: Option<ValueSource>,
    pub schema_version: Option<String>,
}

/// The event and whether its id came from the sender (only those are deduplicated).
#[derive(Debug)]
pub struct Extracted {
    pub event: CloudEvent,
    pub sender_delivery_id: bool,
}

impl EventRules {
    pub fn new(source_prefix: &str, route: &RouteConfig) -> Self {
        let default_delivery = match route.auth.kind() {
            Ok(AuthKind::Github(_)) => Some("X-GitHub-Delivery"),
            Ok(AuthKind::StandardWebhooks(_)) => Some("webhook-id"),
            _ => None,
        };
        Self {
            source: format!("{}/{}", source_prefix.trim_end_matches('/'), route.name),
            event_type: route.event_type.clone(),
            correlation_id: route.correlation_id.clone(),
            delivery_id: route.delivery_id.clone().or_else(|| {
                default_delivery.map(|header| ValueSource {
                    header: Some(header.into()),
                    json_pointer: None,
                    value: None,
                    prefix: String::new(),
                })
            }),
            schema_version: route.schema_version.clone(),
        }
    }

    pub fn extract(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: jiff::Timestamp,
    ) -> Result<Extracted, BadRequest> {
        let json = OnceCell::new();
        let lookup = |what, source: &ValueSource| lookup(what, source, headers, body, &json);
        if bridge_events::http_content_mode(headers).is_some() {
            let mut pointer_error = None;
            let mut event = CloudEvent::from_http_with(headers, body, || {
                let source = self.correlation_id.as_ref()?;
                lookup("correlationId", source).unwrap_or_else(|e| {
                    pointer_error = Some(e);
                    None
                })
            })?;
            if let Some(error) = pointer_error {
                return Err(error);
            }
            if event.schema_version.is_none() {
                event.schema_version = self.schema_version.clone();
            }
            // The sender's source, under this route's: a sender reaches only its own
            // routes, so it cannot pass its events off as another tenant's (source and id
            // are what consumers and dedupe tell events apart by).
            event.source = format!("{}/{}", self.source, event.source.trim_start_matches('/'));
            event.traceparent = Some(carried_traceparent(event.traceparent.as_deref()));
            return Ok(Extracted {
                event,
                sender_delivery_id: true,
            });
        }
        let ty = match &self.event_type {
            Some(source) => {
                lookup("eventType", source)?.ok_or_else(|| missing("eventType", source))?
            }
            None => return Err(BadRequest::NoEventType),
        };
        let delivery_id = match &self.delivery_id {
            Some(source) => lookup("deliveryId", source)?,
            None => None,
        };
        let correlation_id = match &self.correlation_id {
            Some(source) => lookup("correlationId", source)?,
            None => None,
        };
        let sender_delivery_id = delivery_id.is_some();
        let id = delivery_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let correlation_id = correlation_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut event = CloudEvent::new(id, self.source.clone(), ty, correlation_id, body.to_vec());
        event.time = Some(now.to_string());
        event.datacontenttype = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        event.schema_version = self.schema_version.clone();
        event.traceparent = Some(carried_traceparent(
            headers.get("traceparent").and_then(|v| v.to_str().ok()),
        ));
        Ok(Extracted {
            event,
            sender_delivery_id,
        })
    }
}

/// The sender's trace context when it is valid (the trace continues to the sink), else
/// a new trace, as W3C trace context asks of a receiver given an invalid one.
fn carried_traceparent(given: Option<&str>) -> String {
    match given {
        Some(parent) if child_traceparent(parent).is_some() => parent.trim().to_owned(),
        _ => new_traceparent(),
    }
}

fn missing(what: &'static str, source: &ValueSource) -> BadRequest {
    match (&source.header, &source.json_pointer) {
        (Some(header), _) => BadRequest::MissingHeader {
            what,
            header: header.clone(),
        },
        (_, Some(pointer)) => BadRequest::MissingPointer {
            what,
            pointer: pointer.clone(),
        },
        _ => unreachable!("a fixed value is never missing"),
    }
}

/// `Ok(None)` when the header or pointer is absent; an error when the body must be JSON and is not.
fn lookup(
    what: &'static str,
    source: &ValueSource,
    headers: &HeaderMap,
    body: &[u8],
    json: &OnceCell<Option<serde_json::Value>>,
) -> Result<Option<String>, BadRequest> {
    let raw = if let Some(value) = &source.value {
        Some(value.clone())
    } else if let Some(header) = &source.header {
        headers
            .get(header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    } else if let Some(pointer) = &source.json_pointer {
        let document = json
            .get_or_init(|| serde_json::from_slice(body).ok())
            .as_ref()
            .ok_or_else(|| BadRequest::InvalidJson {
                what,
                pointer: pointer.clone(),
            })?;
        match document.pointer(pointer) {
            Some(serde_json::Value::String(text)) if !text.is_empty() => Some(text.clone()),
            Some(serde_json::Value::Number(number)) => Some(number.to_string()),
            _ => None,
        }
    } else {
        None
    };
    Ok(raw.map(|value| format!("{}{value}", source.prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn source(
        header: Option<&str>,
        pointer: Option<&str>,
        value: Option<&str>,
        prefix: &str,
    ) -> ValueSource {
        ValueSource {
            header: header.map(Into::into),
            json_pointer: pointer.map(Into::into),
            value: value.map(Into::into),
            prefix: prefix.into(),
        }
    }

    fn github_rules() -> EventRules {
        EventRules {
            source: "/ns/a/webhookingresses/gh/github".into(),
            event_type: Some(source(Some("X-GitHub-Event"), None, None, "com.github.")),
            correlation_id: Some(source(None, Some("/repository/id"), None, "repo-")),
            delivery_id: Some(source(Some("X-GitHub-Delivery"), None, None, "")),
            schema_version: Some("1".into()),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_static(n),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_github_push_becomes_an_event_with_its_delivery_id_and_repository_key() {
        let h = headers(&[
            ("x-github-event", "push"),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("content-type", "application/json"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ]);
        let body = br#"{"repository":{"id":1296269}}"#;
        let extracted = github_rules()
            .extract(&h, body, jiff::Timestamp::UNIX_EPOCH)
            .unwrap();
        let event = extracted.event;
        assert!(extracted.sender_delivery_id);
        assert_eq!(event.ty, "com.github.push");
        assert_eq!(event.id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(event.correlation_id, "repo-1296269");
        assert_eq!(event.source, "/ns/a/webhookingresses/gh/github");
        assert_eq!(event.schema_version.as_deref(), Some("1"));
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(
            event.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(event.data, body);
    }

    #[test]
    fn missing_values_and_bad_json_are_named() {
        let rules = github_rules();
        let no_event = headers(&[("x-github-delivery", "d")]);
        assert_eq!(
            rules
                .extract(&no_event, b"{}", jiff::Timestamp::UNIX_EPOCH)
                .unwrap_err()
                .to_string(),
            "eventType: the X-GitHub-Event header is missing"
        );
        let h = headers(&[("x-github-event", "push")]);
        let error = rules
            .extract(&h, b"{not json", jiff::Timestamp::UNIX_EPOCH)
            .unwrap_err();
        assert!(
            matches!(
                error,
                BadRequest::InvalidJson {
                    what: "correlationId",
                    ..
                }
            ),
            "{error}"
        );
        let pointer_type = EventRules {
            event_type: Some(source(None, Some("/action"), None, "")),
            ..github_rules()
        };
        let error = pointer_type
            .extract(
                &h,
                br#"{"repository":{"id":1}}"#,
                jiff::Timestamp::UNIX_EPOCH,
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "eventType: the body has no string or number at JSON pointer `/action`"
        );
    }

    #[test]
    fn without_sender_ids_the_event_gets_generated_ones_and_a_new_trace() {
        let rules = EventRules {
            source: "/s/r".into(),
            event_type: Some(source(None, None, Some("ping"), "")),
            correlation_id: None,
            delivery_id: None,
            schema_version: None,
        };
        let extracted = rules
            .extract(
                &headers(&[("traceparent", "garbage")]),
                b"x",
                jiff::Timestamp::UNIX_EPOCH,
            )
            .unwrap();
        assert!(!extracted.sender_delivery_id);
        assert_eq!(extracted.event.ty, "ping");
        assert_ne!(extracted.event.id, extracted.event.correlation_id);
        assert!(child_traceparent(extracted.event.traceparent.as_deref().unwrap()).is_some());
    }

    #[test]
    fn a_posted_cloudevent_keeps_its_attributes_with_its_source_under_the_routes() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "tool-run-9"),
            ("ce-source", "/agents/planner"),
            ("ce-type", "tool.execution.finished"),
            ("ce-correlationid", "wf-1"),
            ("ce-schemaversion", "3"),
            ("content-type", "application/json"),
        ]);
        let extracted = github_rules()
            .extract(&h, b"{}", jiff::Timestamp::UNIX_EPOCH)
            .unwrap();
        let event = extracted.event;
        assert_eq!(event.id, "tool-run-9");
        assert_eq!(
            event.source, "/ns/a/webhookingresses/gh/github/agents/planner",
            "another tenant's source cannot be claimed"
        );
        assert_eq!(event.ty, "tool.execution.finished");
        assert_eq!(event.correlation_id, "wf-1");
        assert_eq!(event.schema_version.as_deref(), Some("3"));
        let invalid = headers(&[("ce-specversion", "1.0"), ("ce-id", "x")]);
        let error = github_rules()
            .extract(&invalid, b"{}", jiff::Timestamp::UNIX_EPOCH)
            .unwrap_err();
        assert!(error.to_string().contains("`source`"), "{error}");
    }
}
