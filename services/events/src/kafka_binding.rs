//! The CloudEvents Kafka protocol binding. Binary content mode on the way out: attributes as
//! `ce_<name>` headers, `datacontenttype` as `content-type`, data as the record value, the
//! correlation id as the key. On the way in, structured mode (`application/cloudevents+json`)
//! is read too, since other producers may use it.

use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

use crate::envelope::{CloudEvent, EnvelopeError, EventBuilder};
use crate::json_format;

const ATTRIBUTE_PREFIX: &str = "ce_";
const CONTENT_TYPE: &str = "content-type";

impl CloudEvent {
    /// The record headers of binary content mode; the record key is [`CloudEvent::kafka_key`]
    /// and the value is `data`.
    pub fn to_kafka_headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(12 + self.extensions.len());
        for (name, value) in self.attributes() {
            headers = headers.insert(Header {
                key: &format!("{ATTRIBUTE_PREFIX}{name}"),
                value: Some(value),
            });
        }
        if let Some(content_type) = &self.datacontenttype {
            headers = headers.insert(Header {
                key: CONTENT_TYPE,
                value: Some(content_type),
            });
        }
        headers
    }

    /// Reads a record written in binary or structured content mode. The correlation id is
    /// the `ce_correlationid` header, else the record key, else the event id.
    pub fn from_kafka(
        key: Option<&[u8]>,
        headers: Option<&BorrowedHeaders>,
        payload: Option<&[u8]>,
    ) -> Result<CloudEvent, EnvelopeError> {
        let key_as_correlation = || {
            key.and_then(|k| std::str::from_utf8(k).ok())
                .map(str::to_owned)
        };
        let mut event = EventBuilder::default();
        let mut structured = false;
        for header in headers.into_iter().flat_map(|h| h.iter()) {
            let lower = header.key.to_ascii_lowercase();
            let value = || -> Result<String, EnvelopeError> {
                let bytes = header.value.unwrap_or_default();
                String::from_utf8(bytes.to_vec()).map_err(|_| {
                    EnvelopeError::invalid(header.key, "the header value is not UTF-8")
                })
            };
            if lower == CONTENT_TYPE {
                let content_type = value()?;
                structured = json_format::is_structured(&content_type);
                event.set("datacontenttype", content_type)?;
            } else if let Some(name) = lower.strip_prefix(ATTRIBUTE_PREFIX) {
                event.set(name, value()?)?;
            }
        }
        if structured {
            return json_format::parse(payload.unwrap_or_default(), key_as_correlation);
        }
        event.finish(payload.unwrap_or_default().to_vec(), key_as_correlation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CloudEvent {
        let mut event = CloudEvent::new(
            "delivery-1",
            "/namespaces/team-a/webhookingresses/github/push",
            "com.github.push",
            "flow-42",
            br#"{"ref":"main"}"#.to_vec(),
        );
        event.time = Some("2026-11-27T10:00:00Z".into());
        event.datacontenttype = Some("application/json".into());
        event.subject = Some("repo/omninode".into());
        event.causation_id = Some("cause-7".into());
        event.schema_version = Some("2".into());
        event.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        event
            .extensions
            .insert("dataschema".into(), "urn:push:2".into());
        event
    }

    fn header_value<'a>(headers: &'a OwnedHeaders, key: &str) -> Option<&'a [u8]> {
        headers.iter().find(|h| h.key == key).and_then(|h| h.value)
    }

    #[test]
    fn binary_mode_headers_carry_every_attribute_under_its_ce_name() {
        let headers = sample().to_kafka_headers();
        let expected: [(&str, &str); 11] = [
            ("ce_specversion", "1.0"),
            ("ce_id", "delivery-1"),
            (
                "ce_source",
                "/namespaces/team-a/webhookingresses/github/push",
            ),
            ("ce_type", "com.github.push"),
            ("ce_time", "2026-11-27T10:00:00Z"),
            ("ce_subject", "repo/omninode"),
            ("ce_correlationid", "flow-42"),
            ("ce_causationid", "cause-7"),
            ("ce_schemaversion", "2"),
            ("ce_dataschema", "urn:push:2"),
            ("content-type", "application/json"),
        ];
        for (key, value) in expected {
            assert_eq!(header_value(&headers, key), Some(value.as_bytes()), "{key}");
        }
        assert!(header_value(&headers, "ce_datacontenttype").is_none());
    }

    #[test]
    fn a_record_reads_back_as_the_same_event() {
        let event = sample();
        let headers = event.to_kafka_headers();
        let read = CloudEvent::from_kafka(
            Some(event.kafka_key()),
            Some(headers.as_borrowed()),
            Some(&event.data),
        )
        .unwrap();
        assert_eq!(read, event);
    }

    #[test]
    fn the_key_stands_in_for_a_missing_correlation_header() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some("e1"),
            })
            .insert(Header {
                key: "ce_source",
                value: Some("/s"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("t"),
            });
        let read =
            CloudEvent::from_kafka(Some(b"flow-9"), Some(headers.as_borrowed()), None).unwrap();
        assert_eq!(read.correlation_id, "flow-9");
        assert!(read.data.is_empty());
        let unkeyed = CloudEvent::from_kafka(None, Some(headers.as_borrowed()), None).unwrap();
        assert_eq!(unkeyed.correlation_id, "e1");
    }

    #[test]
    fn a_record_without_headers_is_not_an_event() {
        let error = CloudEvent::from_kafka(Some(b"k"), None, Some(b"{}")).unwrap_err();
        assert_eq!(error, EnvelopeError::Missing("specversion"));
    }

    #[test]
    fn errors_name_the_attribute_at_fault() {
        let base = || {
            OwnedHeaders::new()
                .insert(Header {
                    key: "ce_specversion",
                    value: Some("1.0"),
                })
                .insert(Header {
                    key: "ce_source",
                    value: Some("/s"),
                })
        };
        let no_id = base().insert(Header {
            key: "ce_type",
            value: Some("t"),
        });
        assert_eq!(
            CloudEvent::from_kafka(None, Some(no_id.as_borrowed()), None).unwrap_err(),
            EnvelopeError::Missing("id")
        );
        let bad_time = base()
            .insert(Header {
                key: "ce_id",
                value: Some("e"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("t"),
            })
            .insert(Header {
                key: "ce_time",
                value: Some("yesterday"),
            });
        let error = CloudEvent::from_kafka(None, Some(bad_time.as_borrowed()), None).unwrap_err();
        assert!(error.to_string().contains("`time`"), "{error}");
        let not_utf8 = base().insert(Header {
            key: "ce_id",
            value: Some(&[0xff, 0xfe][..]),
        });
        let error = CloudEvent::from_kafka(None, Some(not_utf8.as_borrowed()), None).unwrap_err();
        assert!(error.to_string().contains("ce_id"), "{error}");
        let old = OwnedHeaders::new().insert(Header {
            key: "ce_specversion",
            value: Some("0.3"),
        });
        assert_eq!(
            CloudEvent::from_kafka(None, Some(old.as_borrowed()), None).unwrap_err(),
            EnvelopeError::SpecVersion("0.3".into())
        );
        let bad_name = base().insert(Header {
            key: "ce_Bad-Name",
            value: Some("x"),
        });
        let error = CloudEvent::from_kafka(None, Some(bad_name.as_borrowed()), None).unwrap_err();
        assert!(error.to_string().contains("bad-name"), "{error}");
    }

    #[test]
    fn a_structured_record_is_read_from_its_json_value() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/cloudevents+json; charset=utf-8"),
        });
        let value = br#"{"specversion":"1.0","id":"s1","source":"/x","type":"t","data":{"a":1}}"#;
        let read = CloudEvent::from_kafka(Some(b"flow"), Some(headers.as_borrowed()), Some(value))
            .unwrap();
        assert_eq!(read.id, "s1");
        assert_eq!(read.correlation_id, "flow");
        assert_eq!(read.data, br#"{"a":1}"#);
        assert_eq!(read.datacontenttype.as_deref(), Some("application/json"));
    }
}
