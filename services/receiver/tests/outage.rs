//! R1: one broker stops under load; R2: all three stop for a minute under load; and Kafka
//! acknowledging later than `publishTimeout`, which is how R1 spools events. The
//! receiver keeps answering 2xx (from Kafka, or from its spool), and every acknowledged
//! event arrives, in per-key order. This binary stops the shared brokers: it restarts them
//! even when it fails (a drop guard, and a watchdog process in case the test process itself
//! is killed), and its tests take turns.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bridge_e2e::{Stack, eventually};
use common::*;

/// How long every broker stays down in R2: the issue's "all brokers stopped for 60 s
/// under load". Long enough for the breaker's backoff to grow well past its first steps
/// and for thousands of events to pile up in the spool; short enough that the whole test
/// (stopping and restarting three brokers included) stays around two minutes in CI.
const OUTAGE: Duration = Duration::from_secs(60);

/// The longest R2 tolerates between two 2xx answers while the brokers are down: events go
/// straight to the spool then, so a stall this long means intake stopped.
const LONGEST_SILENCE: Duration = Duration::from_secs(5);

/// One fault at a time in this binary.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Brokers stopped for a test; started again when dropped, also on a failed assertion.
struct BrokersDown {
    stack: Stack,
    brokers: &'static [u8],
    down: bool,
    /// Starts the brokers after a bound even if this process dies without unwinding
    /// (SIGKILL, a CI timeout); killed once the brokers are back.
    watchdog: Option<Child>,
}

impl BrokersDown {
    /// Stops `brokers`; they come back at `restart`, on drop, or at the latest after
    /// `watchdog_after` from a process of their own.
    fn stop(stack: &Stack, brokers: &'static [u8], watchdog_after: Duration) -> Self {
        let list: Vec<String> = brokers.iter().map(u8::to_string).collect();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../e2e/stack.sh");
        // Its own session, so a Ctrl-C or a kill of the test's process group spares it.
        let watchdog = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "sleep {}; exec bash {script} kafka-start {}",
                watchdog_after.as_secs(),
                list.join(" ")
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|error| eprintln!("no broker watchdog (setsid sh): {error}"))
            .ok();
        // Armed before the stop: a stop that fails half-way is still undone.
        let guard = BrokersDown {
            stack: stack.clone(),
            brokers,
            down: true,
            watchdog,
        };
        stack.kafka_stop_brokers(brokers).expect("stopping brokers");
        guard
    }

    fn restart(&mut self) {
        if !std::mem::take(&mut self.down) {
            return;
        }
        if let Err(error) = self.stack.kafka_start_brokers(self.brokers) {
            // The watchdog stays: its later attempt may succeed where this one did not.
            eprintln!("could not restart brokers {:?}: {error}", self.brokers);
            return;
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            // The watchdog leads its own process group (setsid): end it with its `sleep`.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg("--")
                .arg(format!("-{}", watchdog.id()))
                .status();
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for BrokersDown {
    fn drop(&mut self) {
        self.restart();
    }
}

/// A scratch dir named after `name`, and the config of a receiver there with one `steps`
/// route to `topic` behind the bearer `token` (correlation id from `X-Workflow`).
fn steps_config(
    stack: &Stack,
    name: &str,
    topic: &str,
    token: &str,
    extra: &str,
) -> (std::path::PathBuf, String) {
    let dir = scratch_dir(name);
    let secret = dir.join("token");
    std::fs::write(&secret, token).unwrap();
    let route = format!(
        "  - name: steps\n    path: /steps\n    topic: {topic}\n    eventType: {{value: workflow.step}}\n    correlationId: {{header: X-Workflow}}\n    auth: {{bearer: {{secretFile: {}}}}}\n",
        secret.display()
    );
    let config = config_yaml(
        &dir,
        free_port(),
        free_port(),
        &stack.kafka_bootstrap_servers,
        &format!("instance: {name}-test\n{extra}"),
        &route,
    );
    (dir, config)
}

async fn metrics_of(admin: &str) -> Option<String> {
    reqwest::get(format!("{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

async fn readyz_of(admin: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("{admin}/readyz")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// R2 as the issue states it: all brokers stopped for 60 s under load; 2xx continue from
/// the spool; after the restart every acknowledged event arrives, in per-key order.
/// Beside it, a receiver with an 8 KiB spool fills up during the outage: it turns unready
/// ("spool full: ...") and is ready again, in the same process, once Kafka is back.
// Several worker threads: stopping and starting the brokers blocks (`block_in_place`) for
// tens of seconds, and on a single-threaded runtime the load's tasks and their request
// timeouts would freeze with it (requests then seem to time out when the runtime resumes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_all_brokers_down_for_a_minute_events_are_spooled_and_all_arrive_in_key_order_afterwards()
 {
    let _turn = TURN.lock().await;
    let started = Instant::now();
    let stack = stack();
    let topic = create_topic(&stack, 6).await;
    let tiny_topic = create_topic(&stack, 1).await;
    let (dir, config) = steps_config(&stack, "outage", &topic, "outage-token", "");
    let receiver = Receiver::start(&dir, &config).await;
    let (tiny_dir, tiny_config) =
        steps_config(&stack, "outage-tiny", &tiny_topic, "outage-token", "");
    let tiny_config = tiny_config.replace(
        "spool: {dir: ",
        "spool: {maxBytes: 8192, segmentBytes: 4096, dir: ",
    );
    let tiny = Receiver::start(&tiny_dir, &tiny_config).await;

    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 6, "outage-token");
    load.wait_answered(60, Duration::from_secs(60)).await;

    let stop_began = Instant::now();
    let mut outage = tokio::task::block_in_place(|| {
        BrokersDown::stop(&stack, &[1, 2, 3], OUTAGE + Duration::from_secs(90))
    });
    let down_at = Instant::now();
    let stopping_took = down_at - stop_began;
    // librdkafka's broker-down signal opens the breaker; no send has to time out first.
    let admin = receiver.admin_url.clone();
    eventually(
        "the breaker to open with every broker down",
        Duration::from_secs(5),
        || {
            let admin = admin.clone();
            async move {
                let text = metrics_of(&admin).await?;
                (metric(&text, "hook_receiver_breaker_state") == Some(2.0)).then_some(())
            }
        },
    )
    .await;

    // The small receiver fills its spool and takes itself out of rotation.
    let client = reqwest::Client::new();
    let tiny_url = format!("{}/steps", tiny.url);
    let mut tiny_acknowledged = Vec::new();
    let mut tiny_refused = None;
    for sequence in 0..500u64 {
        let response = client
            .post(&tiny_url)
            .header("Authorization", "Bearer outage-token")
            .header("X-Workflow", "tiny-1")
            .body(format!("{{\"key\":\"tiny-1\",\"seq\":{sequence}}}"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            tiny_acknowledged.push(("tiny-1".to_owned(), sequence, "spooled".to_owned()));
        } else {
            tiny_refused = Some(response.status().as_u16());
            break;
        }
    }
    assert_eq!(tiny_refused, Some(503), "the 8 KiB spool fills up");
    let tiny_admin = tiny.admin_url.clone();
    let reason = eventually(
        "the small receiver to be unready with its spool full",
        Duration::from_secs(5),
        || {
            let tiny_admin = tiny_admin.clone();
            async move {
                match readyz_of(&tiny_admin).await? {
                    (503, reason) => Some(reason),
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(reason.starts_with("spool full: "), "{reason}");

    // The rest of the minute: the load goes on; the big receiver stays ready (its spool
    // has room) and answers from its spool.
    let mut readyz_polls = 0;
    let mut not_ready = Vec::new();
    while down_at.elapsed() < OUTAGE {
        match readyz_of(&receiver.admin_url).await {
            Some((200, _)) => {}
            other => not_ready.push(other),
        }
        readyz_polls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let text = receiver.metrics().await;
    let spooled_in_outage = metric(&text, "hook_receiver_spool_records").unwrap_or(0.0);
    let restart_began = Instant::now();
    tokio::task::block_in_place(|| outage.restart());
    let up_at = Instant::now();
    let outage_length = restart_began - down_at;
    let starting_took = up_at - restart_began;
    let (answered_in_outage, longest_silence) = load.answers_between(down_at, restart_began);
    assert!(
        not_ready.is_empty(),
        "the receiver with room in its spool was not ready {} of {readyz_polls} times: {not_ready:?}",
        not_ready.len()
    );
    assert!(
        spooled_in_outage > 0.0,
        "nothing in the spool during the outage: {text}"
    );
    assert!(
        answered_in_outage >= 100,
        "only {answered_in_outage} 2xx answers in {outage_length:?} of outage"
    );
    assert!(
        longest_silence <= LONGEST_SILENCE,
        "no 2xx for {longest_silence:?} while the brokers were down"
    );

    // Kafka is back: the small receiver is ready again in the same process.
    let tiny_admin = tiny.admin_url.clone();
    let tiny_ready_after = eventually(
        "the small receiver to be ready again",
        Duration::from_secs(60),
        || {
            let tiny_admin = tiny_admin.clone();
            async move {
                matches!(readyz_of(&tiny_admin).await, Some((200, _))).then(|| up_at.elapsed())
            }
        },
    )
    .await;

    // 2xx go on after the restart too; then the load stops and the spool drains. After a
    // whole-cluster restart the brokers take a while to accept writes again (with some
    // 2,000 partitions: the drain's first record waited 5 to 18 s for its acknowledgement
    // after the breaker closed), and draining 100,000 to 200,000 events takes 30 to 40 s
    // on two cores, hence a bound of two minutes.
    let after = load.answered();
    load.wait_answered(after + 60, Duration::from_secs(60))
        .await;
    let (sent_counter, refused_counter) = (load.sent.clone(), load.refused.clone());
    let refusals: Vec<_> = load
        .refusals
        .lock()
        .unwrap()
        .iter()
        .map(|(at, what)| {
            let at = at.duration_since(started).as_secs_f64();
            let when = at - down_at.duration_since(started).as_secs_f64();
            format!("{at:.1} s into the test ({when:+.1} s from the outage): {what}")
        })
        .collect();
    let acknowledged = load.stop().await;
    // Read once the senders have stopped, so requests still open at `stop` are counted.
    let sent = sent_counter.load(std::sync::atomic::Ordering::Relaxed);
    let refused = refused_counter.load(std::sync::atomic::Ordering::Relaxed);
    let admin = receiver.admin_url.clone();
    let drained_after = eventually("the spool to drain", Duration::from_secs(120), || {
        let admin = admin.clone();
        async move {
            let text = metrics_of(&admin).await?;
            (metric(&text, "hook_receiver_spool_records") == Some(0.0)).then(|| up_at.elapsed())
        }
    })
    .await;
    let spooled = acknowledged
        .iter()
        .filter(|(_, _, s)| s == "spooled")
        .count();
    assert_eq!(refused, 0, "requests not answered 2xx: {refusals:#?}");
    assert!(
        spooled >= answered_in_outage,
        "{spooled} answered from the spool, fewer than the {answered_in_outage} answered during the outage"
    );

    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(60)).await;
    let duplicates = assert_all_arrived_in_key_order(&acknowledged, &messages);
    let tiny_messages = read_topic(
        &stack,
        &tiny_topic,
        tiny_acknowledged.len(),
        Duration::from_secs(30),
    )
    .await;
    let tiny_duplicates = assert_all_arrived_in_key_order(&tiny_acknowledged, &tiny_messages);
    eprintln!(
        "R2: brokers down {:.1} s (stopping took {:.1} s, starting {:.1} s); {sent} requests sent, {} answered 2xx ({answered_in_outage} during the outage, longest gap {:.2} s; {spooled} from the spool), {refused} refused; {} records on Kafka, {} distinct, {duplicates} duplicates; spool drained {:.1} s after the brokers were back; /readyz 200 in all {readyz_polls} polls during the outage",
        outage_length.as_secs_f64(),
        stopping_took.as_secs_f64(),
        starting_took.as_secs_f64(),
        acknowledged.len(),
        longest_silence.as_secs_f64(),
        messages.len(),
        messages.len() - duplicates,
        drained_after.as_secs_f64(),
    );
    eprintln!(
        "R2, 8 KiB spool: {} acknowledged then 503, /readyz 503 \"{}\" during the outage, 200 again {:.1} s after the brokers were back; {} on Kafka, {tiny_duplicates} duplicates; test took {:.0} s",
        tiny_acknowledged.len(),
        reason.trim(),
        tiny_ready_after.as_secs_f64(),
        tiny_messages.len(),
        started.elapsed().as_secs_f64()
    );
}

// Several worker threads: stopping and starting the brokers blocks (`block_in_place`) for
// tens of seconds, and on a single-threaded runtime the load's tasks and their request
// timeouts would freeze with it (requests then seem to time out when the runtime resumes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_broker_down_every_acknowledged_event_arrives_once() {
    let _turn = TURN.lock().await;
    let stack = stack();
    let topic = create_topic(&stack, 6).await;
    let (dir, config) = steps_config(&stack, "one-down", &topic, "one-down-token", "");
    let receiver = Receiver::start(&dir, &config).await;
    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 6, "one-down-token");
    load.wait_answered(60, Duration::from_secs(60)).await;

    let mut outage =
        tokio::task::block_in_place(|| BrokersDown::stop(&stack, &[2], Duration::from_secs(120)));
    let before = load.answered();
    load.wait_answered(before + 200, Duration::from_secs(60))
        .await;
    tokio::task::block_in_place(|| outage.restart());
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

/// R1's duplicates in isolation: Kafka answers, but later than `publishTimeout`. Each such
/// event is answered from the spool while librdkafka still holds its send, and Kafka takes
/// that send after all; the drain must not send the spooled copy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_spooled_while_kafka_was_slow_arrive_once() {
    let _turn = TURN.lock().await;
    let stack = stack();
    let topic = create_topic(&stack, 6).await;
    // No acks=all acknowledgement comes within a millisecond, so direct sends time out.
    let (dir, config) = steps_config(
        &stack,
        "slow-kafka",
        &topic,
        "slow-token",
        "publishTimeout: 1ms",
    );
    let receiver = Receiver::start(&dir, &config).await;
    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 6, "slow-token");
    load.wait_answered(600, Duration::from_secs(60)).await;
    let acknowledged = load.stop().await;
    let admin = receiver.admin_url.clone();
    let text = eventually("the spool to drain", Duration::from_secs(60), || {
        let admin = admin.clone();
        async move {
            let text = metrics_of(&admin).await?;
            (metric(&text, "hook_receiver_spool_records") == Some(0.0)).then_some(text)
        }
    })
    .await;

    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(60)).await;
    let duplicates = assert_all_arrived_in_key_order(&acknowledged, &messages);
    let spooled = acknowledged
        .iter()
        .filter(|(_, _, s)| s == "spooled")
        .count();
    let already_in_kafka =
        metric(&text, "hook_receiver_already_in_kafka_records_total").unwrap_or(0.0);
    let drained = metric(&text, "hook_receiver_drained_records_total").unwrap_or(0.0);
    eprintln!(
        "slow Kafka: {} acknowledged ({spooled} from the spool), {} on Kafka, {duplicates} duplicates; the drain sent {drained} and skipped {already_in_kafka} that Kafka had taken",
        acknowledged.len(),
        messages.len()
    );
    assert!(
        already_in_kafka > 0.0,
        "no event was spooled while Kafka still held its send; the test did not test anything"
    );
    assert_eq!(duplicates, 0, "duplicates after slow acknowledgements");
}
