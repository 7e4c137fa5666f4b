//! The receiver as a real process against the real brokers: what senders see, and what
//! arrives on Kafka, read back by a plain Kafka client.

mod common;

use std::time::Duration;

use base64::Engine;
use bridge_events::CloudEvent;
use common::*;
use rdkafka::message::Message;
use ring::hmac;

/// Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), written from the Java
/// source's algorithm, so the test does not trust the receiver's partitioner to check it.
fn java_murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h = SEED ^ length;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java producer's default partitioner picks for a keyed record.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (java_murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn the_murmur2_of_the_test_matches_the_java_client() {
    // Printed by kafka-clients 4.4.0 (Utils.murmur2, Utils.toPositive(h) % 6).
    for (key, hash, partition_of_6) in [
        ("21", -973932308, 0),
        ("foobar", -790332482, 0),
        ("abc", 479470107, 3),
        ("a-little-bit-long-string", -985981536, 2),
        ("workflow-42", -942035637, 5),
        ("repo-1296269", 1916544188, 2),
    ] {
        assert_eq!(java_murmur2(key.as_bytes()), hash, "{key}");
        assert_eq!(java_partition(key.as_bytes(), 6), partition_of_6, "{key}");
    }
}

struct Setup {
    stack: bridge_e2e::Stack,
    topic: String,
    audit_topic: String,
    lifecycle_topic: String,
    receiver: Receiver,
}

/// A receiver with one route of each auth kind, all publishing to one new 6-partition topic.
async fn setup() -> Setup {
    let stack = stack();
    let topic = create_topic(&stack, 6).await;
    let audit_topic = create_topic(&stack, 1).await;
    let lifecycle_topic = create_topic(&stack, 1).await;
    let dir = scratch_dir("webhooks");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let github = write("github.secret", GITHUB_SECRET);
    let standard = write(
        "standard.secret",
        "whsec_dGhlIG9sZCBzZWNyZXQgb2YgdGhpcyByb3V0ZQ==\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    );
    let bearer = write("bearer.secret", "s3cret-token\n");
    let routes = format!(
        r#"  - name: github
    path: /github
    topic: {topic}
    eventType: {{header: X-GitHub-Event, prefix: "com.github."}}
    correlationId: {{jsonPointer: /repository/id, prefix: "repo-"}}
    auth: {{github: {{secretFile: {github}}}}}
    dedupeWindow: 10m
    schemaVersion: "1"
  - name: standard
    path: /standard
    topic: {topic}
    eventType: {{jsonPointer: /type}}
    auth: {{standardWebhooks: {{secretFile: {standard}}}}}
    dedupeWindow: 10m
  - name: hmac
    path: /hmac
    topic: {topic}
    eventType: {{value: shop.order}}
    auth: {{hmac: {{secretFile: {github}, header: X-Shop-Signature, algorithm: sha512, encoding: base64, prefix: "v=" }}}}
  - name: bearer
    path: /bearer
    topic: {topic}
    eventType: {{value: tool.event}}
    correlationId: {{header: X-Workflow}}
    auth: {{bearer: {{secretFile: {bearer}}}}}
    maxBodyBytes: 1024
  - name: open
    path: /open
    topic: {topic}
    auth: {{none: {{}}}}
"#
    );
    let extra = format!(
        "auditTopic: {audit_topic}\nlifecycleTopic: {lifecycle_topic}\ninstance: test-instance"
    );
    let config = config_yaml(
        &dir,
        free_port(),
        free_port(),
        &stack.kafka_bootstrap_servers,
        &extra,
        &routes,
    );
    let receiver = Receiver::start(&dir, &config).await;
    Setup {
        stack,
        topic,
        audit_topic,
        lifecycle_topic,
        receiver,
    }
}

async fn post(
    url: String,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut request = client.post(url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let response_headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        response_headers,
    )
}

fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes);
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, &signed))
    )
}

#[tokio::test]
async fn webhooks_of_every_auth_kind_arrive_as_cloudevents_and_bad_ones_publish_nothing() {
    let Setup {
        stack,
        topic,
        audit_topic,
        lifecycle_topic,
        receiver,
    } = setup().await;
    let url = |path: &str| format!("{}{path}", receiver.url);

    // GitHub: the body of GitHub's documented example, with its signature.
    let github_body = br#"{"action":"opened","repository":{"id":1296269}}"#;
    let github_headers = vec![
        ("X-GitHub-Event", "push".to_owned()),
        (
            "X-GitHub-Delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
        ),
        (
            "X-Hub-Signature-256",
            github_signature(GITHUB_SECRET, github_body),
        ),
        ("Content-Type", "application/json".to_owned()),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
    ];
    let (status, body, _) = post(url("/github"), &github_headers, github_body).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("published")),
        "{body}"
    );
    // The same delivery again (a sender's retry, or a replay): acknowledged, not published twice.
    let (status, body, _) = post(url("/github"), &github_headers, github_body).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    // Wrong signature, missing signature.
    let mut forged = github_headers.clone();
    forged[2].1 = github_signature("not the secret", github_body);
    let (status, body, _) = post(url("/github"), &forged, github_body).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not match"),
        "{body}"
    );
    assert!(!body.to_string().contains("Secret"), "{body}");
    let (status, _, _) = post(url("/github"), &github_headers[..2], github_body).await;
    assert_eq!(status, 401);

    // Standard Webhooks: signed now with the spec's example secret (the second of two
    // rotating secrets); the spec's own 2021 vector is refused as stale; a replayed id is a duplicate.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sw_body = br#"{"type":"invoice.paid","test":2432232314}"#;
    let sw_headers = |id: &str, timestamp: i64, signature: String| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ]
    };
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let fresh = sw_headers(
        "msg_fresh",
        now,
        standard_signature(secret, "msg_fresh", now, sw_body),
    );
    let (status, body, _) = post(url("/standard"), &fresh, sw_body).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("published")),
        "{body}"
    );
    let (status, body, _) = post(url("/standard"), &fresh, sw_body).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    let spec_vector = sw_headers(
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
    );
    let (status, body, _) = post(url("/standard"), &spec_vector, br#"{"test": 2432232314}"#).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("5 minutes"),
        "{body}"
    );
    let stale = now - 6 * 60;
    let (status, _, _) = post(
        url("/standard"),
        &sw_headers(
            "msg_stale",
            stale,
            standard_signature(secret, "msg_stale", stale, sw_body),
        ),
        sw_body,
    )
    .await;
    assert_eq!(status, 401);
    let tampered = sw_headers(
        "msg_tamper",
        now,
        standard_signature(secret, "msg_tamper", now, sw_body),
    );
    let (status, _, _) = post(
        url("/standard"),
        &tampered,
        br#"{"type":"invoice.paid","test":1}"#,
    )
    .await;
    assert_eq!(status, 401);

    // Generic HMAC (sha512, base64, prefix) and bearer.
    let order = br#"{"order":7}"#;
    let key = hmac::Key::new(hmac::HMAC_SHA512, GITHUB_SECRET.as_bytes());
    let signature = format!(
        "v={}",
        base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, order))
    );
    let (status, body, _) = post(
        url("/hmac"),
        &[("X-Shop-Signature", signature.clone())],
        order,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = post(
        url("/hmac"),
        &[("X-Shop-Signature", signature)],
        b"{\"order\":8}",
    )
    .await;
    assert_eq!(status, 401);
    let bearer = [
        ("Authorization", "Bearer s3cret-token".to_owned()),
        ("X-Workflow", "workflow-42".to_owned()),
    ];
    let (status, body, _) = post(url("/bearer"), &bearer, b"{}").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = post(
        url("/bearer"),
        &[("Authorization", "Bearer guess".to_owned())],
        b"{}",
    )
    .await;
    assert_eq!(status, 401);

    // Bad input of each kind gets its 4xx.
    let (status, _, _) = post(url("/bearer"), &bearer, &[b'x'; 2048]).await;
    assert_eq!(status, 413);
    let no_event = github_signature(GITHUB_SECRET, github_body);
    let (status, body, _) = post(
        url("/github"),
        &[
            ("X-Hub-Signature-256", no_event),
            ("X-GitHub-Delivery", "other".into()),
        ],
        github_body,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("X-GitHub-Event"),
        "{body}"
    );
    let not_json = b"{not json";
    let (status, body, _) = post(
        url("/github"),
        &[
            (
                "X-Hub-Signature-256",
                github_signature(GITHUB_SECRET, not_json),
            ),
            ("X-GitHub-Event", "push".into()),
        ],
        not_json,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let (status, _, _) = post(url("/nowhere"), &[], b"{}").await;
    assert_eq!(status, 404);
    let get = reqwest::get(url("/open")).await.unwrap();
    assert_eq!(get.status(), 405);
    let (status, body, _) = post(url("/open"), &[], b"{}").await;
    assert_eq!(
        status, 400,
        "a route without eventType takes only CloudEvents: {body}"
    );

    // A CloudEvent posted in structured mode keeps its attributes; its source goes under
    // the route's, so no sender can claim another tenant's.
    let structured = br#"{"specversion":"1.0","id":"tool-run-9","source":"/agents/planner","type":"tool.execution.finished","correlationid":"workflow-42","schemaversion":"2","data":{"ok":true}}"#;
    let (status, body, _) = post(
        url("/open"),
        &[("Content-Type", "application/cloudevents+json".into())],
        structured,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("published")),
        "{body}"
    );

    // On the wire: exactly the five accepted events, each a CloudEvent in binary mode, keyed
    // by its correlation id, in the partition the Java client would choose.
    let messages = read_topic(&stack, &topic, 5, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 5, "{messages:?}");
    for message in &messages {
        let key = message.key().expect("every record has a key");
        assert_eq!(
            message.partition(),
            java_partition(key, 6),
            "key {:?}",
            String::from_utf8_lossy(key)
        );
        assert_eq!(header(message, "ce_specversion"), Some("1.0"));
        assert_eq!(
            header(message, "ce_correlationid").map(str::as_bytes),
            Some(key)
        );
        assert!(header(message, "ce_traceparent").is_some());
        let event = CloudEvent::from_kafka(
            message.key(),
            message.headers().map(|h| h.as_borrowed()),
            message.payload(),
        )
        .unwrap();
        assert_eq!(event.correlation_id.as_bytes(), key);
    }
    let by_type = |ty: &str| {
        messages
            .iter()
            .find(|m| header(m, "ce_type") == Some(ty))
            .unwrap_or_else(|| panic!("no {ty} record"))
    };
    let push = by_type("com.github.push");
    assert_eq!(push.key(), Some(&b"repo-1296269"[..]));
    assert_eq!(
        header(push, "ce_id"),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    assert_eq!(
        header(push, "ce_source"),
        Some("/namespaces/test/webhookingresses/hooks/github")
    );
    assert_eq!(header(push, "ce_schemaversion"), Some("1"));
    assert_eq!(header(push, "content-type"), Some("application/json"));
    assert_eq!(
        header(push, "ce_traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert!(header(push, "ce_time").is_some());
    assert_eq!(push.payload(), Some(&github_body[..]));
    let invoice = by_type("invoice.paid");
    assert_eq!(header(invoice, "ce_id"), Some("msg_fresh"));
    assert_eq!(by_type("tool.event").key(), Some(&b"workflow-42"[..]));
    by_type("shop.order");
    let posted = by_type("tool.execution.finished");
    assert_eq!(
        header(posted, "ce_source"),
        Some("/namespaces/test/webhookingresses/hooks/open/agents/planner")
    );
    assert_eq!(header(posted, "ce_id"), Some("tool-run-9"));
    assert_eq!(header(posted, "ce_schemaversion"), Some("2"));
    assert_eq!(posted.key(), Some(&b"workflow-42"[..]));
    assert_eq!(posted.partition(), 5);
    assert_eq!(posted.payload(), Some(&br#"{"ok":true}"#[..]));

    // Refused signatures are audited and counted; lifecycle events say the receiver started.
    let audits = read_topic(&stack, &audit_topic, 1, Duration::from_secs(20)).await;
    assert!(!audits.is_empty());
    assert!(
        audits
            .iter()
            .all(|m| header(m, "ce_type") == Some("io.omninode.bridge.audit.signature-rejected"))
    );
    let text = receiver.metrics().await;
    assert_eq!(
        metric(
            &text,
            "hook_receiver_requests_total{route=\"github\",outcome=\"duplicate\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "hook_receiver_signature_failures_total{route=\"standard\",reason=\"stale\"}"
        ),
        Some(2.0),
        "{text}"
    );
    let lifecycle = read_topic(&stack, &lifecycle_topic, 2, Duration::from_secs(20)).await;
    let phases: Vec<_> = lifecycle
        .iter()
        .filter_map(|m| header(m, "ce_type"))
        .collect();
    assert_eq!(
        phases,
        [
            "io.omninode.bridge.service.starting",
            "io.omninode.bridge.service.ready"
        ]
    );
}

/// Issue 20: a `webhook-signature` header of thousands of tags over a large body used to cost
/// an HMAC of the body per tag and key, seconds of CPU per unauthenticated request. It is
/// refused (401, saying why) before any HMAC, and a signed request still goes through.
#[tokio::test]
async fn a_signature_header_of_thousands_of_tags_is_refused_and_a_signed_request_still_passes() {
    let Setup { receiver, .. } = setup().await;
    let url = format!("{}/standard", receiver.url);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = format!(
        r#"{{"type":"bulk.upload","padding":"{}"}}"#,
        "x".repeat(900_000)
    )
    .into_bytes();
    let signed = |id: &str, tags: usize| {
        // Made-up tags (short, so the header stays well within hyper's limit), then the
        // valid one last.
        let mut entries = vec!["v1,AAAA".to_owned(); tags - 1];
        entries.push(standard_signature(secret, id, now, &body));
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", entries.join(" ")),
        ]
    };

    let started = std::time::Instant::now();
    let (status, answer, _) = post(url.clone(), &signed("msg_many_tags", 8_000), &body).await;
    let took = started.elapsed();
    assert_eq!(status, 401, "{answer} after {took:?}");
    assert_eq!(
        answer["error"].as_str(),
        Some("not authenticated: the webhook-signature header lists more than 16 signatures"),
        "{answer} after {took:?}"
    );

    let (status, answer, _) = post(url, &signed("msg_sixteen_tags", 16), &body).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("published")),
        "{answer}"
    );
}

/// Concurrent senders in R4, each posting one event after another until the receiver stops
/// taking requests.
const SIGTERM_SENDERS: usize = 200;
/// Events answered before SIGTERM is sent, so it lands in the middle of the load.
const SIGTERM_AFTER_ANSWERS: u64 = 1000;

/// R4: SIGTERM in the middle of a load of 200 concurrent senders. Every request answered
/// 2xx is on Kafka (or, if it was spooled, arrives at the next start), the open requests
/// are finished rather than cut, and the process says `stopping` and exits 0.
#[tokio::test]
async fn sigterm_mid_load_finishes_open_requests_loses_nothing_and_exits_zero() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let Setup {
        stack,
        topic,
        lifecycle_topic,
        mut receiver,
        ..
    } = setup().await;
    let url = format!("{}/bearer", receiver.url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(SIGTERM_SENDERS)
        .build()
        .unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let signalled = Arc::new(AtomicBool::new(false));
    let answered_after_signal = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..SIGTERM_SENDERS)
        .map(|sender| {
            let (client, url) = (client.clone(), url.clone());
            let (answered, signalled, answered_after_signal) = (
                answered.clone(),
                signalled.clone(),
                answered_after_signal.clone(),
            );
            tokio::spawn(async move {
                // (sender, step, status) of every 2xx, and how many requests were sent.
                let mut acknowledged = Vec::new();
                let mut sent = 0u64;
                for step in 0..10_000u64 {
                    sent += 1;
                    let response = client
                        .post(&url)
                        .header("Authorization", "Bearer s3cret-token")
                        .header("X-Workflow", format!("wf-{}", sender % 20))
                        .body(format!("{{\"sender\":{sender},\"step\":{step}}}"))
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == 200 => {
                            if signalled.load(Ordering::SeqCst) {
                                answered_after_signal.fetch_add(1, Ordering::SeqCst);
                            }
                            answered.fetch_add(1, Ordering::SeqCst);
                            // A 2xx counts even if its body is cut: the receiver said yes.
                            let status = match response.json::<serde_json::Value>().await {
                                Ok(body) => body["status"].as_str().unwrap_or("?").to_owned(),
                                Err(_) => "?".to_owned(),
                            };
                            acknowledged.push((sender, step, status));
                        }
                        // Refused, or the connection closed: the receiver is stopping.
                        _ => break,
                    }
                }
                (acknowledged, sent)
            })
        })
        .collect();
    let counter = answered.clone();
    bridge_e2e::eventually(
        &format!("{SIGTERM_AFTER_ANSWERS} answers before SIGTERM"),
        Duration::from_secs(60),
        || {
            let n = counter.load(Ordering::SeqCst);
            async move { (n >= SIGTERM_AFTER_ANSWERS).then_some(()) }
        },
    )
    .await;
    signalled.store(true, Ordering::SeqCst);
    receiver.signal("TERM");
    let mut acknowledged = Vec::new();
    let mut sent = 0;
    for sender in senders {
        let (mine, my_sent) = sender.await.unwrap();
        acknowledged.extend(mine);
        sent += my_sent;
    }
    assert_eq!(
        receiver.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        receiver.log()
    );
    let after_signal = answered_after_signal.load(Ordering::SeqCst);
    let spooled = acknowledged
        .iter()
        .filter(|(_, _, s)| s == "spooled")
        .count();
    if spooled > 0 {
        // Spooled events reach Kafka when the receiver starts again.
        receiver.spawn().await;
    }
    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(60)).await;
    let on_kafka: std::collections::HashSet<(u64, u64)> = messages
        .iter()
        .filter_map(|m| {
            let body: serde_json::Value = serde_json::from_slice(m.payload()?).ok()?;
            Some((body["sender"].as_u64()?, body["step"].as_u64()?))
        })
        .collect();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|(sender, step, _)| !on_kafka.contains(&(*sender as u64, *step)))
        .collect();
    eprintln!(
        "R4: {SIGTERM_SENDERS} concurrent senders, {sent} requests sent, {} answered 2xx ({after_signal} of them after SIGTERM, {spooled} spooled), {} records on Kafka, {} missing",
        acknowledged.len(),
        messages.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "answered 2xx but not on Kafka: {missing:?}"
    );
    assert!(
        after_signal > 0,
        "no request open at SIGTERM was finished with a 2xx"
    );
    let lifecycle = read_topic(&stack, &lifecycle_topic, 3, Duration::from_secs(20)).await;
    assert!(
        lifecycle
            .iter()
            .any(|m| header(m, "ce_type") == Some("io.omninode.bridge.service.stopping")),
        "no stopping event"
    );
}

/// A flood of bad tokens is counted in full but logged (and audited) only at the audit
/// rate: an unauthenticated sender cannot fill the log.
#[tokio::test]
async fn a_flood_of_refused_requests_is_counted_but_logged_at_the_audit_rate() {
    let stack = stack();
    let topic = create_topic(&stack, 1).await;
    let dir = scratch_dir("refusal-flood");
    let token = dir.join("token");
    std::fs::write(&token, "right-token").unwrap();
    let routes = format!(
        "  - name: steps\n    path: /steps\n    topic: {topic}\n    eventType: {{value: workflow.step}}\n    auth: {{bearer: {{secretFile: {}}}}}\n",
        token.display()
    );
    let config = config_yaml(
        &dir,
        free_port(),
        free_port(),
        &stack.kafka_bootstrap_servers,
        "instance: refusal-flood\nauditEventsPerSecond: 1",
        &routes,
    );
    let receiver = Receiver::start(&dir, &config).await;
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let response = client
            .post(format!("{}/steps", receiver.url))
            .header("Authorization", "Bearer wrong-token")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let text = receiver.metrics().await;
    let suppressed = metric(&text, "hook_receiver_audit_events_suppressed_total").unwrap();
    let logged = receiver.log().matches("refused a webhook").count();
    // One a second, bursts of ten seconds' worth: about ten while the test runs.
    assert!(logged <= 20, "{logged} refusals logged of 100");
    assert_eq!(logged as f64 + suppressed, 100.0, "{text}");
}
