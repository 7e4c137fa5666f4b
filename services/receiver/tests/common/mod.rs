//! What the receiver's tests share: the receiver as a real process with a config written
//! for the test, topics of its own, a plain Kafka consumer to read back what arrived.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bridge_e2e::{Stack, eventually, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use ring::hmac;

pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";

pub fn stack() -> Stack {
    Stack::from_env().expect("the local stack's environment (eval \"$(e2e/stack.sh env)\")")
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("hook-receiver-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nothing listens on right now (the receiver binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn create_topic(stack: &Stack, partitions: i32) -> String {
    let name = unique_name("receiver");
    create_named_topic(stack, &name, partitions).await;
    name
}

pub async fn create_named_topic(stack: &Stack, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = stack.kafka_config().create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(3));
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .expect("creating a topic");
    for result in results {
        result.expect("the topic is created");
    }
}

/// Reads `topic` from the beginning until `count` records have arrived (or `bound` passes),
/// then a little longer, so extra records (duplicates) show up too.
pub async fn read_topic(
    stack: &Stack,
    topic: &str,
    count: usize,
    bound: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = stack
        .kafka_config()
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = std::time::Instant::now();
    let mut messages = Vec::new();
    let mut settle_until = None;
    loop {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            messages.push(message.detach());
        }
        let now = std::time::Instant::now();
        if messages.len() >= count && settle_until.is_none() {
            settle_until = Some(now + Duration::from_secs(1));
        }
        if settle_until.is_some_and(|until| now >= until) || now - started > bound {
            return messages;
        }
    }
}

pub fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

pub struct Receiver {
    pub child: Option<Child>,
    pub url: String,
    pub admin_url: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

/// The receiver's config with the test's routes (YAML list items, indented by two).
pub fn config_yaml(
    dir: &Path,
    port: u16,
    admin_port: u16,
    bootstrap: &str,
    extra: &str,
    routes: &str,
) -> String {
    format!(
        "listen: 127.0.0.1:{port}\n\
         adminListen: 127.0.0.1:{admin_port}\n\
         source: /namespaces/test/webhookingresses/hooks\n\
         kafka: {{bootstrapServers: \"{bootstrap}\"}}\n\
         spool: {{dir: {spool}}}\n\
         {extra}\n\
         routes:\n{routes}",
        spool = dir.join("spool").display(),
    )
}

impl Receiver {
    /// Starts the binary with this config and waits (bounded) until `/readyz` answers 200.
    pub async fn start(dir: &Path, config: &str) -> Receiver {
        let config_path = dir.join("receiver.yaml");
        std::fs::write(&config_path, config).unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(config).unwrap();
        let listen = yaml["listen"].as_str().unwrap().to_owned();
        let admin = yaml["adminListen"].as_str().unwrap().to_owned();
        let mut receiver = Receiver {
            child: None,
            url: format!("http://{listen}"),
            admin_url: format!("http://{admin}"),
            dir: dir.to_owned(),
            config_path,
            log_path: dir.join(format!("receiver-{}.log", unique_name("run"))),
        };
        receiver.spawn().await;
        receiver
    }

    pub async fn spawn(&mut self) {
        // Appended to, so a restarted receiver's log follows the first run's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hook-receiver"))
            .arg("--config")
            .arg(&self.config_path)
            // HOOK_RECEIVER_TEST_LOG sets another filter when a failure needs librdkafka's view.
            .env(
                "RUST_LOG",
                std::env::var("HOOK_RECEIVER_TEST_LOG")
                    .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting hook-receiver");
        self.child = Some(child);
        let readyz = format!("{}/readyz", self.admin_url);
        let log_path = self.log_path.clone();
        eventually(
            &format!("hook-receiver ready (log: {})", log_path.display()),
            Duration::from_secs(30),
            || {
                let readyz = readyz.clone();
                async move {
                    match reqwest::get(&readyz).await {
                        Ok(response) if response.status() == 200 => Some(()),
                        _ => None,
                    }
                }
            },
        )
        .await;
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, bound: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let status = eventually("hook-receiver to exit", bound, || {
            let exited = child.try_wait().unwrap();
            async move { exited }
        })
        .await;
        self.child = None;
        status.code()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `hook-receiver --drain` as a drain Job runs it: `config` and an empty termination-message
/// file in `dir`, its log in `dir/drain.log`; killed when dropped.
pub struct DrainProcess {
    pub child: Child,
    pub termination_log: PathBuf,
    log_path: PathBuf,
}

impl DrainProcess {
    pub fn start(dir: &Path, config: &Path) -> Self {
        let termination_log = dir.join("termination-log");
        std::fs::write(&termination_log, "").unwrap();
        let log_path = dir.join("drain.log");
        let child = Command::new(env!("CARGO_BIN_EXE_hook-receiver"))
            .arg("--config")
            .arg(config)
            .arg("--drain")
            .arg("--termination-log")
            .arg(&termination_log)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("starting hook-receiver --drain");
        Self {
            child,
            termination_log,
            log_path,
        }
    }

    /// Waits (bounded) for the drain to exit and returns its status.
    pub async fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually("the drain to exit", bound, || {
            let exited = child.try_wait().unwrap();
            async move { exited }
        })
        .await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for DrainProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value from the OpenMetrics text (the first line that starts with `series`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Senders that each post a numbered sequence of events for one key, each only after the
/// previous one was answered, as a workflow's steps would be. What was answered 2xx is kept.
pub struct KeyedLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, u64, String)>>>,
    pub answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Requests sent, answered or not.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Requests answered with anything but 200, or not answered at all.
    pub refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// When each 2xx arrived, in the order they did.
    pub answer_times: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    /// The first refusals: when, and the status or error.
    pub refusals: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
}

impl KeyedLoad {
    /// Posts to a `bearer` route whose correlation id comes from the `X-Workflow` header.
    pub fn start(url: String, keys: usize, token: &str) -> KeyedLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let answer_times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refusals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let tasks = (0..keys)
            .map(|k| {
                let (stop, answered, client, url) =
                    (stop.clone(), answered.clone(), client.clone(), url.clone());
                let (sent, refused, answer_times, refusals) = (
                    sent.clone(),
                    refused.clone(),
                    answer_times.clone(),
                    refusals.clone(),
                );
                let token = token.to_owned();
                tokio::spawn(async move {
                    let key = format!("workflow-{k}");
                    let mut acknowledged = Vec::new();
                    let mut sequence = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let response = client
                            .post(&url)
                            .header("Authorization", format!("Bearer {token}"))
                            .header("X-Workflow", &key)
                            .body(format!("{{\"key\":\"{key}\",\"seq\":{sequence}}}"))
                            .send()
                            .await;
                        match response {
                            Ok(response) if response.status() == 200 => {
                                answer_times.lock().unwrap().push(std::time::Instant::now());
                                let body: serde_json::Value = response.json().await.unwrap();
                                acknowledged.push((
                                    key.clone(),
                                    sequence,
                                    body["status"].as_str().unwrap().to_owned(),
                                ));
                                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                sequence += 1;
                            }
                            // Refused or cut off (the process died): the sender retries the same step.
                            other => {
                                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let what = match other {
                                    Ok(response) => format!("status {}", response.status()),
                                    Err(error) => format!("{error:?}"),
                                };
                                {
                                    let mut refusals = refusals.lock().unwrap();
                                    if refusals.len() < 20 {
                                        refusals.push((std::time::Instant::now(), what));
                                    }
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        KeyedLoad {
            stop,
            tasks,
            answered,
            sent,
            refused,
            answer_times,
            refusals,
        }
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// 2xx answers that arrived in `[from, to)`, and the longest stretch of that window
    /// without one (its edges included).
    pub fn answers_between(
        &self,
        from: std::time::Instant,
        to: std::time::Instant,
    ) -> (usize, Duration) {
        let times = self.answer_times.lock().unwrap();
        let inside: Vec<_> = times
            .iter()
            .copied()
            .filter(|t| *t >= from && *t < to)
            .collect();
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for t in inside.iter().copied().chain(std::iter::once(to)) {
            longest = longest.max(t.saturating_duration_since(previous));
            previous = previous.max(t);
        }
        (inside.len(), longest)
    }

    pub async fn wait_answered(&self, at_least: u64, bound: Duration) {
        let answered = self.answered.clone();
        eventually(&format!("{at_least} answered events"), bound, || {
            let n = answered.load(std::sync::atomic::Ordering::Relaxed);
            async move { (n >= at_least).then_some(()) }
        })
        .await;
    }

    /// Stops the senders; returns every (key, sequence, status) answered 2xx.
    pub async fn stop(self) -> Vec<(String, u64, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all
    }
}

/// Checks that every acknowledged (key, sequence) is on Kafka and that, per key, the
/// first occurrences come in sequence order. Returns the number of duplicates.
pub fn assert_all_arrived_in_key_order(
    acknowledged: &[(String, u64, String)],
    messages: &[OwnedMessage],
) -> usize {
    use std::collections::{HashMap, HashSet};
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut duplicates = 0;
    for message in messages {
        let body: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let key = body["key"].as_str().unwrap().to_owned();
        let sequence = body["seq"].as_u64().unwrap();
        assert_eq!(
            message.key(),
            Some(key.as_bytes()),
            "the record key is the correlation id"
        );
        if !seen.insert((key.clone(), sequence)) {
            duplicates += 1;
            continue;
        }
        if let Some(previous) = last.get(&key) {
            assert!(
                sequence > *previous,
                "{key}: step {sequence} arrived after step {previous}"
            );
        }
        last.insert(key, sequence);
    }
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|(key, sequence, _)| !seen.contains(&(key.clone(), *sequence)))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on Kafka: {missing:?}"
    );
    duplicates
}

/// A route taking bearer-token webhooks to `{topic}`, keyed by the `X-Workflow` header
/// (what `KeyedLoad` sends).
const STEPS_ROUTE: &str = "  - name: steps\n    path: /steps\n    topic: {topic}\n    eventType: {value: workflow.step}\n    correlationId: {header: X-Workflow}\n    auth: {bearer: {secretFile: {secret}}}\n";

/// A receiver with one bearer-token route to `topic`, whose Kafka is a port nothing listens
/// on, so every event it acknowledges is spooled; and the same config pointed at the
/// stack's brokers, to restart it with. `extra` is more top-level config (may be empty).
pub async fn spooling_receiver(
    stack: &Stack,
    topic: &str,
    name: &str,
    token: &str,
    extra: &str,
) -> (Receiver, String) {
    let dir = scratch_dir(name);
    let secret = dir.join("token");
    std::fs::write(&secret, token).unwrap();
    let routes = STEPS_ROUTE
        .replace("{topic}", topic)
        .replace("{secret}", &secret.display().to_string());
    let (port, admin_port) = (free_port(), free_port());
    let nowhere = format!("127.0.0.1:{}", free_port());
    let extra = format!("publishTimeout: 1s\ninstance: {name}-test\n{extra}");
    let receiver = Receiver::start(
        &dir,
        &config_yaml(&dir, port, admin_port, &nowhere, &extra, &routes),
    )
    .await;
    let with_kafka = config_yaml(
        &dir,
        port,
        admin_port,
        &stack.kafka_bootstrap_servers,
        &extra,
        &routes,
    );
    (receiver, with_kafka)
}
