//! The CloudEvents JSON event format, read in structured content mode of either binding.
//! `data` keeps its exact bytes when it is JSON, so signatures over it stay valid downstream.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::value::RawValue;

use crate::envelope::{CloudEvent, EnvelopeError, EventBuilder};

/// Whether a content type announces a structured-mode CloudEvent.
pub(crate) fn is_structured(content_type: &str) -> bool {
    content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/cloudevents")
}

/// Whether `data` of this content type is JSON (absent means JSON in this format).
fn is_json(datacontenttype: Option<&str>) -> bool {
    let Some(content_type) = datacontenttype else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

pub(crate) fn parse(
    body: &[u8],
    default_correlation: impl FnOnce() -> Option<String>,
) -> Result<CloudEvent, EnvelopeError> {
    if body.trim_ascii_start().starts_with(b"[") {
        return Err(EnvelopeError::Structured(
            "a JSON array is a batch, and batches are not accepted".into(),
        ));
    }
    let members: BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::Structured(e.to_string()))?;
    let mut event = EventBuilder::default();
    let mut data: Option<&RawValue> = None;
    let mut data_base64: Option<&RawValue> = None;
    for (name, raw) in members {
        match name.as_str() {
            "data" => data = Some(raw),
            "data_base64" => data_base64 = Some(raw),
            _ => {
                let value: serde_json::Value = serde_json::from_str(raw.get())
                    .map_err(|e| EnvelopeError::Structured(e.to_string()))?;
                let text = match value {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(text) => text,
                    serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
                    _ => {
                        return Err(EnvelopeError::invalid(
                            &name,
                            "attribute values are strings, numbers or booleans",
                        ));
                    }
                };
                event.set(&name, text)?;
            }
        }
    }
    let bytes = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(EnvelopeError::invalid(
                "data_base64",
                "an event has `data` or `data_base64`, not both",
            ));
        }
        (None, Some(encoded)) => {
            let encoded: String = serde_json::from_str(encoded.get())
                .map_err(|_| EnvelopeError::invalid("data_base64", "it is not a string"))?;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| EnvelopeError::invalid("data_base64", e.to_string()))?
        }
        (Some(raw), None) => {
            let json = raw.get();
            if event.datacontenttype().is_some() {
                // Non-JSON data travels as a JSON string of its text.
                match serde_json::from_str::<String>(json) {
                    Ok(text) if !is_json(event.datacontenttype()) => text.into_bytes(),
                    _ => json.as_bytes().to_vec(),
                }
            } else {
                event.set("datacontenttype", "application/json".into())?;
                json.as_bytes().to_vec()
            }
        }
        (None, None) => Vec::new(),
    };
    event.finish(bytes, default_correlation)
}
