//! Arbitrary requests through what parses untrusted input: signature verification of every
//! auth kind, CloudEvents in both HTTP modes and their round trips through both bindings,
//! event building, and the spool's recovery parser. Nothing may panic; round trips must hold.
//! Input: one selector byte, then `name: value` header lines, a blank line, the body.

#![no_main]

use bridge_events::CloudEvent;
use hook_receiver::auth::Verifier;
use hook_receiver::config::{SignatureEncoding, ValueSource};
use hook_receiver::extract::EventRules;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ring::hmac;

fn parse(input: &[u8]) -> (HeaderMap, &[u8]) {
    let split = input.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&input[..at], &input[at + 2..]),
        None => (input, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        if let Some(colon) = line.iter().position(|b| *b == b':')
            && let Ok(name) = HeaderName::from_bytes(&line[..colon])
            && let Ok(value) = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
        {
            headers.append(name, value);
        }
    }
    (headers, body)
}

fn source(header: Option<&str>, pointer: Option<&str>) -> ValueSource {
    ValueSource {
        header: header.map(Into::into),
        json_pointer: pointer.map(Into::into),
        value: None,
        prefix: "p.".into(),
    }
}

fn assert_round_trips(event: &CloudEvent) {
    let http: HeaderMap = event
        .http_binary_headers()
        .into_iter()
        .map(|(name, value)| {
            (
                HeaderName::try_from(name).expect("a valid header name"),
                HeaderValue::try_from(value).expect("a valid header value"),
            )
        })
        .collect();
    let back = CloudEvent::from_http(&http, &event.data).expect("its own binary mode reads back");
    assert_eq!(&back, event);
    let kafka = event.to_kafka_headers();
    let back = CloudEvent::from_kafka(
        Some(event.kafka_key()),
        Some(kafka.as_borrowed()),
        Some(&event.data),
    )
    .expect("its own Kafka record reads back");
    assert_eq!(&back, event);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (headers, body) = parse(rest);
    let now = 1_700_000_000;
    match selector % 4 {
        0 => {
            let key = |algorithm| hmac::Key::new(algorithm, b"fuzz secret");
            let verifiers = [
                Verifier::GitHub(key(hmac::HMAC_SHA256)),
                Verifier::StandardWebhooks(vec![key(hmac::HMAC_SHA256), key(hmac::HMAC_SHA256)]),
                Verifier::Hmac {
                    key: key(hmac::HMAC_SHA512),
                    header: HeaderName::from_static("x-signature"),
                    encoding: SignatureEncoding::Base64,
                    prefix: "v1=".into(),
                },
                Verifier::Hmac {
                    key: key(hmac::HMAC_SHA256),
                    header: HeaderName::from_static("x-signature"),
                    encoding: SignatureEncoding::Hex,
                    prefix: String::new(),
                },
                Verifier::Bearer(b"fuzz secret".to_vec()),
            ];
            for verifier in &verifiers {
                let _ = verifier.verify(&headers, body, now);
            }
        }
        1 => {
            if let Ok(event) = CloudEvent::from_http(&headers, body) {
                assert_round_trips(&event);
            }
        }
        2 => {
            let rules = EventRules {
                source: "/fuzz/route".into(),
                event_type: Some(source(None, Some("/action"))),
                correlation_id: Some(source(Some("x-correlation"), None)),
                delivery_id: Some(source(None, Some("/id"))),
                schema_version: Some("1".into()),
            };
            if let Ok(extracted) = rules.extract(&headers, body, jiff::Timestamp::UNIX_EPOCH) {
                assert_round_trips(&extracted.event);
                let record = hook_receiver::publisher::kafka_record("topic", &extracted.event);
                assert_eq!(record.key, extracted.event.correlation_id.as_bytes());
            }
        }
        _ => {
            let (_, length) = hook_receiver::spool::whole_records(rest);
            assert!(length <= rest.len() as u64);
        }
    }
});
