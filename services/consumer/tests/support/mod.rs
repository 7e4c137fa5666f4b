//! What the consumer's tests share: topics on the local stack's Kafka, events produced the
//! way the receiver produces them, a recording HTTP sink whose answers a test scripts, and
//! `event-consumer` run as a real process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bridge_e2e::{Stack, eventually, unique_name};
use bridge_events::CloudEvent;
use event_consumer::ConsumerConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

pub const WAIT: Duration = Duration::from_secs(60);

pub fn stack() -> Stack {
    Stack::from_env().expect("the local stack's environment")
}

/// Creates topics with unique names starting with `prefix`, `partitions` each, RF 3.
pub async fn create_topic(stack: &Stack, prefix: &str, partitions: i32) -> String {
    let name = unique_name(prefix);
    let admin: AdminClient<DefaultClientContext> =
        stack.kafka_config().create().expect("an admin client");
    let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(3));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("the create request");
    for result in results {
        result.expect("the topic is created");
    }
    name
}

/// One test event: `key` is the correlation id (and the record key), `seq` counts per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TestEvent {
    pub key: String,
    pub seq: u32,
    pub ty: String,
}

impl TestEvent {
    pub fn new(key: impl Into<String>, seq: u32, ty: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            seq,
            ty: ty.into(),
        }
    }

    pub fn id(&self) -> String {
        format!("{}-{}", self.key, self.seq)
    }

    pub fn cloud_event(&self) -> CloudEvent {
        let data = serde_json::json!({"key": self.key, "seq": self.seq}).to_string();
        let mut event = CloudEvent::new(
            self.id(),
            "/tests/event-consumer",
            self.ty.clone(),
            self.key.clone(),
            data.into_bytes(),
        );
        event.datacontenttype = Some("application/json".into());
        event.traceparent = Some(format!(
            "00-{:032x}-{:016x}-01",
            fxhash(&self.id()) as u128 + 1,
            self.seq as u64 + 1
        ));
        event
    }
}

fn fxhash(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `keys` keys with `per_key` events each, interleaved the way concurrent workflows write.
pub fn events(prefix: &str, keys: usize, per_key: u32, ty: &str) -> Vec<TestEvent> {
    (0..per_key)
        .flat_map(|seq| (0..keys).map(move |k| TestEvent::new(format!("{prefix}{k}"), seq, ty)))
        .collect()
}

pub fn producer(stack: &Stack) -> FutureProducer {
    stack
        .kafka_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .expect("a producer")
}

/// Produces the events as CloudEvents in binary mode, in order per key.
pub async fn produce(producer: &FutureProducer, topic: &str, events: &[TestEvent]) {
    let sends = events.iter().map(|test_event| {
        let event = test_event.cloud_event();
        async move {
            let record = FutureRecord::to(topic)
                .key(event.kafka_key())
                .headers(event.to_kafka_headers())
                .payload(&event.data);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("Kafka takes the event");
        }
    });
    futures::future::join_all(sends).await;
}

/// Produces a raw record that is not a CloudEvent.
pub async fn produce_raw(producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("Kafka takes the record");
}

/// Every record of `topic` from the beginning, once at least `count` have arrived.
pub async fn read_topic(stack: &Stack, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = stack
        .kafka_config()
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a reader");
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
    let started = Instant::now();
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            started.elapsed() < WAIT,
            "only {} of {count} records arrived on {topic}",
            records.len()
        );
        if let Some(result) = consumer.poll(Duration::from_millis(200)) {
            records.push(result.expect("a record").detach());
        }
    }
    records
}

pub fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    record
        .headers()?
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The group's committed offsets, by partition.
pub fn committed(stack: &Stack, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = stack
        .kafka_config()
        .set("group.id", group)
        .create()
        .expect("a client");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("the committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

/// The end offset of each partition.
pub fn end_offsets(stack: &Stack, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = stack.kafka_config().create().expect("a client");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// How the test sink answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub key: String,
    pub seq: u32,
    pub ty: String,
    pub traceparent: Option<String>,
    pub content_type: Option<String>,
    pub status: u16,
    pub at: Instant,
}

type Script = dyn Fn(&Received, u32) -> Reply + Send + Sync;

#[derive(Default)]
struct SinkLog {
    requests: Vec<Received>,
    attempts: HashMap<String, u32>,
    in_flight: usize,
    max_in_flight: usize,
    /// Per key, the highest seq accepted so far, and any seq accepted after a higher one.
    last_seq: HashMap<String, u32>,
    out_of_order: Vec<String>,
}

/// A recording HTTP sink on 127.0.0.1. `script` decides each answer from the request and
/// how many times this event id was sent before (1 for the first).
#[derive(Clone)]
pub struct TestSink {
    pub address: SocketAddr,
    log: Arc<Mutex<SinkLog>>,
}

#[derive(Clone)]
struct SinkState {
    log: Arc<Mutex<SinkLog>>,
    script: Arc<Script>,
}

impl TestSink {
    pub async fn start(script: impl Fn(&Received, u32) -> Reply + Send + Sync + 'static) -> Self {
        let log = Arc::new(Mutex::new(SinkLog::default()));
        let state = SinkState {
            log: log.clone(),
            script: Arc::new(script),
        };
        let router = Router::new()
            .route("/events", axum::routing::post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { address, log }
    }

    pub async fn accepting() -> Self {
        Self::start(|_, _| Reply::ok()).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.address)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().requests.clone()
    }

    /// How many times the sink accepted each event id.
    pub fn accepted(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for request in self.log.lock().unwrap().requests.iter() {
            if (200..300).contains(&request.status) {
                *counts.entry(request.id.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// The events the sink accepted more than once, with how many times.
    pub fn accepted_twice(&self) -> Vec<(String, u32)> {
        self.accepted()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect()
    }

    pub fn max_in_flight(&self) -> usize {
        self.log.lock().unwrap().max_in_flight
    }

    /// Accepted events of a key that came after a later one of the same key.
    pub fn out_of_order(&self) -> Vec<String> {
        self.log.lock().unwrap().out_of_order.clone()
    }

    /// Waits until every id in `ids` was accepted at least once.
    pub async fn wait_for_all(&self, ids: impl IntoIterator<Item = String>) {
        let ids: Vec<String> = ids.into_iter().collect();
        let total = ids.len();
        eventually(
            &format!("the sink to accept all {total} events"),
            WAIT,
            || {
                let accepted = self.accepted();
                let ready = ids.iter().all(|id| accepted.contains_key(id));
                async move { ready.then_some(()) }
            },
        )
        .await;
    }
}

async fn receive(State(state): State<SinkState>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let data: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut received = Received {
        id: text("ce-id").unwrap_or_default(),
        key: data["key"].as_str().unwrap_or_default().to_owned(),
        seq: data["seq"].as_u64().unwrap_or_default() as u32,
        ty: text("ce-type").unwrap_or_default(),
        traceparent: text("traceparent"),
        content_type: text("content-type"),
        status: 0,
        at: Instant::now(),
    };
    let attempt = {
        let mut log = state.log.lock().unwrap();
        log.in_flight += 1;
        log.max_in_flight = log.max_in_flight.max(log.in_flight);
        let attempt = log.attempts.entry(received.id.clone()).or_default();
        *attempt += 1;
        *attempt
    };
    let reply = (state.script)(&received, attempt);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    received.status = reply.status;
    {
        let mut log = state.log.lock().unwrap();
        log.in_flight -= 1;
        if (200..300).contains(&reply.status) {
            let last = log.last_seq.get(&received.key).copied();
            match last {
                Some(last) if received.seq < last => {
                    let id = received.id.clone();
                    log.out_of_order.push(id);
                }
                _ => {
                    log.last_seq.insert(received.key.clone(), received.seq);
                }
            }
        }
        log.requests.push(received);
    }
    let mut response = StatusCode::from_u16(reply.status).unwrap().into_response();
    if let Some(retry_after) = reply.retry_after {
        response
            .headers_mut()
            .insert("retry-after", retry_after.parse().unwrap());
    }
    response
}

/// A config for one test: its own group, the sink, fast retries; tests adjust the rest.
pub fn config(stack: &Stack, topics: &[&str], sink: &TestSink) -> ConsumerConfig {
    let yaml = format!(
        r#"
adminListen: 127.0.0.1:{port}
kafka: {{bootstrapServers: "{servers}"}}
groupId: {group}
topics: [{topics}]
sink: {{url: "{url}"}}
startFrom: earliest
delivery:
  retry: {{attempts: 5, initialBackoff: 50ms, maxBackoff: 500ms}}
  timeout: 5s
"#,
        port = free_port(),
        servers = stack.kafka_bootstrap_servers,
        group = unique_name("group"),
        topics = topics.join(", "),
        url = sink.url(),
    );
    ConsumerConfig::from_yaml(&yaml).expect("a valid test config")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `event-consumer` as a real process, killed when dropped.
pub struct ConsumerProcess {
    child: Child,
    pub config: ConsumerConfig,
    log: PathBuf,
    name: String,
}

impl ConsumerProcess {
    pub fn start(config: &ConsumerConfig) -> Self {
        let name = unique_name("consumer");
        let dir = std::env::temp_dir().join("event-consumer-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, serde_yaml::to_string(config).unwrap()).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_event-consumer"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info,event_consumer=debug")
            .env("POD_NAME", &name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("event-consumer starts");
        Self {
            child,
            config: config.clone(),
            log,
            name,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.config.admin_listen)
    }

    /// The status and body of `/readyz`, or `None` while the server does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let response = reqwest::get(self.admin("/readyz")).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    pub async fn wait_ready(&self) {
        eventually("the consumer to be ready", WAIT, || async {
            matches!(self.readyz().await, Some((200, _))).then_some(())
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin("/metrics"))
            .await
            .expect("the admin server answers")
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric line, such as `event_consumer_events_delivered_total`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let body = self.metrics().await;
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "event-consumer did not exit within 30 s of SIGTERM\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let file = match std::fs::File::open(&self.log) {
            Ok(file) => file,
            Err(_) => return String::new(),
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(60)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Milliseconds since the epoch, for comparing with Kafka timestamps.
pub fn now() -> SystemTime {
    SystemTime::now()
}
