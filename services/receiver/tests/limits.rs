//! R5 and R9: a full spool answers 503 with Retry-After and loses nothing it acknowledged,
//! and `/readyz` says 503 ("spool full: ...") while the spool is full and Kafka away, so
//! traffic goes to other replicas; a client that stops sending its body is cut off by the
//! read timeout. Kafka is kept away
//! by a bootstrap address nothing listens on, so the shared brokers are not disturbed.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bridge_e2e::eventually;
use common::*;

async fn readyz(receiver: &Receiver) -> (u16, String) {
    let response = reqwest::get(format!("{}/readyz", receiver.admin_url))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_full_spool_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let stack = stack();
    let topic = create_topic(&stack, 3).await;
    let dir = scratch_dir("full");
    let secret = dir.join("token");
    std::fs::write(&secret, "full-token").unwrap();
    let routes = format!(
        "  - name: steps\n    path: /steps\n    topic: {topic}\n    eventType: {{value: workflow.step}}\n    correlationId: {{header: X-Workflow}}\n    auth: {{bearer: {{secretFile: {}}}}}\n",
        secret.display()
    );
    let (port, admin_port) = (free_port(), free_port());
    let nowhere = format!("127.0.0.1:{}", free_port());
    let extra = "publishTimeout: 1s\nreadTimeout: 1s\ninstance: full-test";
    let tiny_spool = |bootstrap: &str| {
        config_yaml(&dir, port, admin_port, bootstrap, extra, &routes).replace(
            "spool: {dir: ",
            "spool: {maxBytes: 8192, segmentBytes: 4096, dir: ",
        )
    };
    let mut receiver = Receiver::start(&dir, &tiny_spool(&nowhere)).await;
    let client = reqwest::Client::new();
    let steps_url = format!("{}/steps", receiver.url);
    let post = |sequence: u64| {
        client
            .post(&steps_url)
            .header("Authorization", "Bearer full-token")
            .header("X-Workflow", "workflow-1")
            .body(format!("{{\"key\":\"workflow-1\",\"seq\":{sequence}}}"))
            .send()
    };

    // A client that announces 100 bytes and sends 10 is cut off, and publishes nothing.
    let mut slow =
        std::net::TcpStream::connect(receiver.url.trim_start_matches("http://")).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        slow,
        "POST /steps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer full-token\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    .unwrap();
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer)
        .expect("an answer before the client's own 10 s timeout");
    assert_eq!(&answer, b"HTTP/1.1 408");

    let mut acknowledged = Vec::new();
    let mut refused = None;
    for sequence in 0..200 {
        let response = post(sequence).await.unwrap();
        if response.status() == 200 {
            acknowledged.push(("workflow-1".to_owned(), sequence, "spooled".to_owned()));
        } else {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("the 8 KiB spool fills up");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(acknowledged.len() > 5, "{} fit", acknowledged.len());

    // A replica that can only answer 503 takes itself out of rotation.
    let text = receiver.metrics().await;
    assert_ne!(
        metric(&text, "hook_receiver_breaker_state"),
        Some(0.0),
        "Kafka is unreachable, so the breaker is not closed: {text}"
    );
    // The follower task applies the verdict right after the spool marks itself full.
    let reason = eventually("/readyz to say 503", Duration::from_secs(5), || async {
        match readyz(&receiver).await {
            (503, reason) => Some(reason),
            _ => None,
        }
    })
    .await;
    assert!(reason.starts_with("spool full: "), "{reason}");
    assert!(reason.contains("Kafka is unavailable"), "{reason}");
    // And stays out while nothing changes (the reason is refreshed, not dropped).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(readyz(&receiver).await.0, 503);

    // Kafka comes back (here: the receiver is pointed at it): everything acknowledged
    // arrives, and the drained spool takes events again.
    receiver.signal("TERM");
    assert_eq!(
        receiver.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        receiver.log()
    );
    std::fs::write(
        &receiver.config_path,
        tiny_spool(&stack.kafka_bootstrap_servers),
    )
    .unwrap();
    receiver.spawn().await;
    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(60)).await;
    let duplicates = assert_all_arrived_in_key_order(&acknowledged, &messages);
    assert_eq!(duplicates, 0);
    let admin = receiver.admin_url.clone();
    eventually("the spool to drain", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move {
            let text = reqwest::get(format!("{admin}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (metric(&text, "hook_receiver_spool_records") == Some(0.0)).then_some(())
        }
    })
    .await;
    let (status, reason) = readyz(&receiver).await;
    assert_eq!(
        status, 200,
        "ready again once the spool has drained: {reason}"
    );
    let next = acknowledged.len() as u64 + 1;
    let response = post(next).await.unwrap();
    assert_eq!(response.status(), 200);
}
