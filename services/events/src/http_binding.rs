//! The CloudEvents HTTP protocol binding. Binary content mode on the way out (how the
//! consumer delivers to sinks); binary and structured mode on the way in (how the receiver
//! accepts events posted to it). Trace context travels in the W3C `traceparent` and
//! `tracestate` headers rather than as `ce-` headers, so HTTP tracing tools see it.

use http::HeaderMap;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};

use crate::envelope::{CloudEvent, EnvelopeError, EventBuilder};
use crate::json_format;

/// The media type of a structured-mode CloudEvent in JSON.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

const ATTRIBUTE_PREFIX: &str = "ce-";
/// Attributes carried in headers of their own, unprefixed.
const W3C_TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The HTTP binding: header values are printable ASCII; space, `"` and `%` and everything
/// outside U+0021..U+007E are percent-encoded.
const HEADER_VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// How a request carries a CloudEvent, if it carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpContentMode {
    /// Attributes in `ce-` headers, data in the body.
    Binary,
    /// The whole event as `application/cloudevents+json` in the body.
    Structured,
}

/// Structured when the content type says so, binary when `ce-specversion` is present,
/// otherwise the request is a plain webhook.
pub fn http_content_mode(headers: &HeaderMap) -> Option<HttpContentMode> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type.is_some_and(json_format::is_structured) {
        Some(HttpContentMode::Structured)
    } else if headers.contains_key("ce-specversion") {
        Some(HttpContentMode::Binary)
    } else {
        None
    }
}

impl CloudEvent {
    /// The request headers of binary content mode; the body is `data`.
    pub fn http_binary_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .attributes()
            .map(|(name, value)| {
                let header = if W3C_TRACE_HEADERS.contains(&name) {
                    name.to_owned()
                } else {
                    format!("{ATTRIBUTE_PREFIX}{name}")
                };
                (
                    header,
                    utf8_percent_encode(value, HEADER_VALUE_ESCAPES).to_string(),
                )
            })
            .collect();
        if let Some(content_type) = &self.datacontenttype {
            headers.push(("content-type".into(), content_type.clone()));
        }
        headers
    }

    /// Reads a CloudEvent posted in binary or structured mode. An event without a
    /// correlation id takes its id as one.
    pub fn from_http(headers: &HeaderMap, body: &[u8]) -> Result<CloudEvent, EnvelopeError> {
        Self::from_http_with(headers, body, || None)
    }

    /// Like [`CloudEvent::from_http`], but an event without a correlation id asks
    /// `default_correlation` before falling back to its id.
    pub fn from_http_with(
        headers: &HeaderMap,
        body: &[u8],
        default_correlation: impl FnOnce() -> Option<String>,
    ) -> Result<CloudEvent, EnvelopeError> {
        if http_content_mode(headers) == Some(HttpContentMode::Structured) {
            return json_format::parse(body, default_correlation);
        }
        let mut event = EventBuilder::default();
        for (name, value) in headers {
            let name = name.as_str();
            let attribute = if let Some(attribute) = name.strip_prefix(ATTRIBUTE_PREFIX) {
                attribute
            } else if W3C_TRACE_HEADERS.contains(&name) {
                name
            } else if name == "content-type" {
                let text = value.to_str().map_err(|_| {
                    EnvelopeError::invalid("datacontenttype", "content-type is not ASCII")
                })?;
                event.set("datacontenttype", text.to_owned())?;
                continue;
            } else {
                continue;
            };
            let decoded = percent_decode(value.as_bytes())
                .decode_utf8()
                .map_err(|_| EnvelopeError::invalid(attribute, "the value is not UTF-8"))?;
            event.set(attribute, decoded.into_owned())?;
        }
        event.finish(body.to_vec(), default_correlation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn to_header_map(headers: &[(String, String)]) -> HeaderMap {
        headers
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::try_from(name.as_str()).unwrap(),
                    HeaderValue::try_from(value.as_str()).unwrap(),
                )
            })
            .collect()
    }

    fn sample() -> CloudEvent {
        let mut event = CloudEvent::new(
            "d-1",
            "/s/route",
            "com.github.push",
            "flow \"7\" 100%",
            b"hello".to_vec(),
        );
        event.subject = Some("caf\u{e9}".into());
        event.datacontenttype = Some("text/plain".into());
        event.time = Some("2026-11-27T10:00:00.5+01:00".into());
        event.schema_version = Some("1".into());
        event.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        event
            .extensions
            .insert("tracestate".into(), "vendor=1".into());
        event
    }

    #[test]
    fn binary_mode_round_trips_and_escapes_what_headers_cannot_carry() {
        let event = sample();
        let headers = event.http_binary_headers();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("ce-specversion"), Some("1.0"));
        assert_eq!(get("ce-correlationid"), Some("flow%20%227%22%20100%25"));
        assert_eq!(get("ce-subject"), Some("caf%C3%A9"));
        assert_eq!(get("traceparent"), event.traceparent.as_deref());
        assert_eq!(get("tracestate"), Some("vendor=1"));
        assert_eq!(get("ce-traceparent"), None);
        assert_eq!(get("content-type"), Some("text/plain"));
        let map = to_header_map(&headers);
        assert_eq!(http_content_mode(&map), Some(HttpContentMode::Binary));
        assert_eq!(CloudEvent::from_http(&map, &event.data).unwrap(), event);
    }

    #[test]
    fn structured_mode_keeps_attributes_and_the_exact_json_data() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static(STRUCTURED_CONTENT_TYPE),
        );
        let body = br#"{"specversion":"1.0","id":"a-1","source":"/tools","type":"tool.run",
            "correlationid":"wf-3","schemaversion":2,"comexampleflag":true,"nothing":null,
            "data":{"b": 1,  "a":[1, 2]}}"#;
        let event = CloudEvent::from_http(&headers, body).unwrap();
        assert_eq!(event.correlation_id, "wf-3");
        assert_eq!(event.schema_version.as_deref(), Some("2"));
        assert_eq!(
            event.extensions.get("comexampleflag").map(String::as_str),
            Some("true")
        );
        assert!(!event.extensions.contains_key("nothing"));
        assert_eq!(event.data, br#"{"b": 1,  "a":[1, 2]}"#);
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
    }

    #[test]
    fn structured_mode_decodes_base64_and_text_data() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static(STRUCTURED_CONTENT_TYPE),
        );
        let binary = br#"{"specversion":"1.0","id":"b","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#;
        assert_eq!(
            CloudEvent::from_http(&headers, binary).unwrap().data,
            vec![0, 1, 2]
        );
        let text = br#"{"specversion":"1.0","id":"b","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi there"}"#;
        assert_eq!(
            CloudEvent::from_http(&headers, text).unwrap().data,
            b"hi there"
        );
    }

    #[test]
    fn the_default_correlation_is_asked_only_when_the_event_has_none() {
        let event = sample();
        let map = to_header_map(&event.http_binary_headers());
        let read = CloudEvent::from_http_with(&map, b"", || panic!("not needed")).unwrap();
        assert_eq!(read.correlation_id, event.correlation_id);
        let mut without = event.clone();
        without.correlation_id.clear();
        let mut map = to_header_map(&without.http_binary_headers());
        map.remove("ce-correlationid");
        let read = CloudEvent::from_http_with(&map, b"", || Some("from-route".into())).unwrap();
        assert_eq!(read.correlation_id, "from-route");
        assert_eq!(
            CloudEvent::from_http(&map, b"").unwrap().correlation_id,
            "d-1"
        );
    }

    #[test]
    fn malformed_events_are_refused_with_the_attribute_named() {
        let mut headers = HeaderMap::new();
        headers.insert("ce-specversion", HeaderValue::from_static("1.0"));
        headers.insert("ce-id", HeaderValue::from_static("x"));
        headers.insert("ce-type", HeaderValue::from_static("t"));
        assert_eq!(
            CloudEvent::from_http(&headers, b"").unwrap_err(),
            EnvelopeError::Missing("source")
        );
        headers.insert("ce-source", HeaderValue::from_static("/s"));
        headers.insert("ce-subject", HeaderValue::from_static("%FF%FE"));
        let error = CloudEvent::from_http(&headers, b"").unwrap_err();
        assert!(error.to_string().contains("`subject`"), "{error}");

        let mut structured = HeaderMap::new();
        structured.insert(
            "content-type",
            HeaderValue::from_static(STRUCTURED_CONTENT_TYPE),
        );
        for (body, needle) in [
            (&b"not json"[..], "not a valid JSON object"),
            (b"[]", "batch"),
            (br#"{"specversion":"1.0","id":"x","source":"/s","type":{"a":1}}"#, "`type`"),
            (br#"{"specversion":"1.0","id":"x","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#, "data_base64"),
            (br#"{"specversion":"1.0","id":"x","source":"/s","type":"t","data_base64":"!!"}"#, "data_base64"),
        ] {
            let error = CloudEvent::from_http(&structured, body).unwrap_err();
            assert!(error.to_string().contains(needle), "{error} lacks {needle}");
        }
    }

    #[test]
    fn plain_webhooks_are_not_taken_for_cloudevents() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-github-event", HeaderValue::from_static("push"));
        assert_eq!(http_content_mode(&headers), None);
    }
}
