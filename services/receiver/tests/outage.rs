//! R1: one broker stops under load; R2: all three stop. The receiver keeps answering 2xx
//! (from Kafka, or from its spool), and every acknowledged event arrives, in per-key order.
//! This binary stops the shared brokers: it restarts them even when it fails (drop guard),
//! and its tests take turns.

mod common;

use std::time::Duration;

use bridge_e2e::eventually;
use common::*;

/// Runs `e2e/stack.sh` with these arguments. All three brokers stop and start in one
/// command: a lone broker of the three-voter quorum can neither stop cleanly nor register.
fn stack_sh(args: &[&str]) -> Result<(), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../e2e/stack.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// One fault at a time in this binary.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the brokers again when dropped, also on a failed assertion.
struct BrokersDown {
    brokers: &'static [&'static str],
    down: bool,
}

impl BrokersDown {
    fn stop(brokers: &'static [&'static str]) -> Self {
        // Armed before the stop: a stop that fails half-way is still undone.
        let guard = BrokersDown {
            brokers,
            down: true,
        };
        let args: Vec<&str> = std::iter::once("kafka-stop")
            .chain(brokers.iter().copied())
            .collect();
        stack_sh(&args).expect("stopping brokers");
        guard
    }

    fn restart(&mut self) {
        let args: Vec<&str> = std::iter::once("kafka-start")
            .chain(self.brokers.iter().copied())
            .collect();
        if std::mem::take(&mut self.down)
            && let Err(error) = stack_sh(&args)
        {
            eprintln!("could not restart brokers {:?}: {error}", self.brokers);
        }
    }
}

impl Drop for BrokersDown {
    fn drop(&mut self) {
        self.restart();
    }
}

#[tokio::test]
async fn with_all_brokers_down_events_are_spooled_and_all_arrive_in_key_order_afterwards() {
    let _turn = TURN.lock().await;
    let stack = stack();
    let topic = create_topic(&stack, 6).await;
    let dir = scratch_dir("outage");
    let secret = dir.join("token");
    std::fs::write(&secret, "outage-token").unwrap();
    let routes = format!(
        "  - name: steps\n    path: /steps\n    topic: {topic}\n    eventType: {{value: workflow.step}}\n    correlationId: {{header: X-Workflow}}\n    auth: {{bearer: {{secretFile: {}}}}}\n",
        secret.display()
    );
    let config = config_yaml(
        &dir,
        free_port(),
        free_port(),
        &stack.kafka_bootstrap_servers,
        "instance: outage-test",
        &routes,
    );
    let receiver = Receiver::start(&dir, &config).await;
    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 6, "outage-token");
    load.wait_answered(60, Duration::from_secs(60)).await;

    let mut outage = BrokersDown::stop(&["1", "2", "3"]);
    // librdkafka's broker-down signal opens the breaker; no send has to time out first.
    let admin = receiver.admin_url.clone();
    eventually(
        "the breaker to open with every broker down",
        Duration::from_secs(2),
        || {
            let admin = admin.clone();
            async move {
                let text = reqwest::get(format!("{admin}/metrics"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                (metric(&text, "hook_receiver_breaker_state") == Some(2.0)).then_some(())
            }
        },
    )
    .await;
    let before = load.answered();
    load.wait_answered(before + 200, Duration::from_secs(30))
        .await;
    let text = receiver.metrics().await;
    assert!(
        metric(&text, "hook_receiver_spool_records").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    outage.restart();

    let after = load.answered();
    load.wait_answered(after + 60, Duration::from_secs(60))
        .await;
    let acknowledged = load.stop().await;
    let spooled = acknowledged
        .iter()
        .filter(|(_, _, s)| s == "spooled")
        .count();
    assert!(
        spooled >= 200,
        "only {spooled} events were answered from the spool"
    );

    let admin = receiver.admin_url.clone();
    eventually("the spool to drain", Duration::from_secs(90), || {
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
    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(60)).await;
    let duplicates = assert_all_arrived_in_key_order(&acknowledged, &messages);
    eprintln!(
        "R2: {} acknowledged ({spooled} from the spool), {} on Kafka, {duplicates} duplicates",
        acknowledged.len(),
        messages.len()
    );
}

#[tokio::test]
async fn with_one_broker_down_every_acknowledged_event_arrives_once() {
    let _turn = TURN.lock().await;
    let stack = stack();
    let topic = create_topic(&stack, 6).await;
    let dir = scratch_dir("one-down");
    let secret = dir.join("token");
    std::fs::write(&secret, "one-down-token").unwrap();
    let routes = format!(
        "  - name: steps\n    path: /steps\n    topic: {topic}\n    eventType: {{value: workflow.step}}\n    correlationId: {{header: X-Workflow}}\n    auth: {{bearer: {{secretFile: {}}}}}\n",
        secret.display()
    );
    let config = config_yaml(
        &dir,
        free_port(),
        free_port(),
        &stack.kafka_bootstrap_servers,
        "instance: one-down-test",
        &routes,
    );
    let receiver = Receiver::start(&dir, &config).await;
    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 6, "one-down-token");
    load.wait_answered(60, Duration::from_secs(60)).await;

    let mut outage = BrokersDown::stop(&["2"]);
    let before = load.answered();
    load.wait_answered(before + 200, Duration::from_secs(60))
        .await;
    outage.restart();
    let acknowledged = load.stop().await;

    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(60)).await;
    let duplicates = assert_all_arrived_in_key_order(&acknowledged, &messages);
    let spooled = acknowledged
        .iter()
        .filter(|(_, _, s)| s == "spooled")
        .count();
    eprintln!(
        "R1: {} acknowledged ({spooled} from the spool), {} on Kafka, {duplicates} duplicates",
        acknowledged.len(),
        messages.len()
    );
    assert_eq!(duplicates, 0, "duplicates with one broker down");
}
