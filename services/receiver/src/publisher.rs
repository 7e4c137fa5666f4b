//! Gets each event durable: acknowledged by Kafka, or fsynced to the spool. Decides per
//! event between the two, keeps per-key order across the switch, and drains the spool
//! back into Kafka when the breaker closes.
//!
//! The rule that keeps order: once any event has gone to the spool, every later event goes
//! there too until the drainer has emptied it; and when the switch happens, events still
//! waiting for Kafka are handed to the spool first, in the order they were sent.
//!
//! The rule that keeps duplicates out: an event handed to the spool while librdkafka still
//! holds its send is *in doubt* (Kafka may take it yet). The drain sends nothing until
//! librdkafka has settled every such send, and does not send again the spooled copy of one
//! that Kafka took.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_events::CloudEvent;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{oneshot, watch};

use crate::breaker::{Breaker, BreakerState};
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolError, SpoolRecord, SpoolWriter};

/// Feeds librdkafka's view of the brokers to the breaker, so an outage is noticed within
/// about a second instead of when sends time out; and notes whether the idempotent
/// producer holds a producer id (it sends nothing without one).
pub struct BrokerSignals {
    breaker: Arc<Breaker>,
    idempotence: Arc<IdempotenceState>,
}

/// librdkafka's idempotence state from its last statistics (`Assigned` when the producer
/// holds a producer id and can send); empty until the first statistics arrive.
#[derive(Default)]
pub struct IdempotenceState(Mutex<String>);

impl IdempotenceState {
    fn set(&self, state: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// `Some(state)` while librdkafka says the producer cannot send for want of a producer id.
    pub fn waiting(&self) -> Option<String> {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (!state.is_empty() && *state != "Assigned").then(|| state.clone())
    }
}

impl ClientContext for BrokerSignals {
    fn stats(&self, statistics: Statistics) {
        let any_up = statistics
            .brokers
            .values()
            .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
        if any_up {
            self.breaker.brokers_up();
        }
        if let Some(eos) = statistics.eos {
            self.idempotence.set(eos.idemp_state);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self
                .breaker
                .brokers_down("librdkafka: all brokers are down"),
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(%error, reason, "the Kafka producer hit a fatal error");
                self.breaker
                    .brokers_down("librdkafka: fatal producer error")
            }
            _ => tracing::warn!(%error, reason, "Kafka client error"),
        }
    }
}

pub type EventProducer = FutureProducer<BrokerSignals>;

/// The one producer of the process. Settings that the delivery guarantee rests on are set
/// after the user's properties, so a property cannot weaken them.
pub fn create_producer(
    settings: &bridge_events::KafkaSettings,
    breaker: Arc<Breaker>,
    idempotence: Arc<IdempotenceState>,
) -> Result<EventProducer, KafkaError> {
    producer_config(settings).create_with_context(BrokerSignals {
        breaker,
        idempotence,
    })
}

/// The producer's librdkafka settings: the user's properties, the receiver's defaults
/// where they set nothing, and the guarantees' settings over everything.
pub fn producer_config(settings: &bridge_events::KafkaSettings) -> rdkafka::ClientConfig {
    let mut config = settings.client_config();
    // Only the drain and audit/lifecycle events wait this long; requests are bounded by
    // publishTimeout. Five minutes (librdkafka's default) would stall a drain probe.
    default_unless_set(&mut config, &["message.timeout.ms"], "30000");
    // librdkafka's default with idempotence is 5. With several produce requests
    // outstanding its broker threads poll with near-zero timeouts until the acks come
    // back: on two cores that spin took 0.6 to 0.9 of a core at 500 req/s and slowed
    // the brokers' own acknowledgements (BENCHMARKS.md). One request in flight per
    // broker keeps idempotence (librdkafka requires at most 5) and per-key order;
    // records sent meanwhile go out together in the next request.
    default_unless_set(
        &mut config,
        &["max.in.flight.requests.per.connection", "max.in.flight"],
        "1",
    );
    // librdkafka's default is 5 ms, added to every answer while the receiver is not
    // busy: each request waits for its own acknowledgement. Under load records gather
    // anyway while the one request per broker is out. On the benchmark, 0 took the
    // median answer from about 10 to 3 ms and the rate sustained under a 50 ms p99 from
    // 93 to 187 and 375 req/s (BENCHMARKS.md).
    default_unless_set(&mut config, &["linger.ms", "queue.buffering.max.ms"], "0");
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("statistics.interval.ms", "500");
    config
}

/// The producer's `message.max.bytes` (librdkafka's default unless the user set it): the
/// largest record it sends, by [`record_bytes`].
pub fn max_record_bytes(config: &rdkafka::ClientConfig) -> usize {
    config
        .get("message.max.bytes")
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000)
}

/// Sets the property `names[0]` to `value` unless the user set it under any of `names`
/// (librdkafka's aliases of one property).
fn default_unless_set(config: &mut rdkafka::ClientConfig, names: &[&str], value: &str) {
    if names.iter().all(|name| config.get(name).is_none()) {
        config.set(names[0], value);
    }
}

/// How long the drain, with the breaker closed, waits for librdkafka to settle the sends of
/// in-doubt events before it sends their spooled copies anyway. With the brokers reachable
/// librdkafka settles a send within `message.timeout.ms` (30 s unless the user sets it);
/// while they are away it may hold a send that is in flight for longer (it cannot tell
/// whether Kafka has it), which is why the wait only counts from the breaker's closing.
const IN_DOUBT_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// How long the drain waits for Kafka to have a leader for every partition of a batch's
/// topics before it sends the batch anyway (and lets the deliveries report what is wrong,
/// e.g. a topic that does not exist).
const LEADER_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// What a metadata answer says about one topic, reduced to what the drain decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLeaders {
    /// The topic-level error, e.g. `UnknownTopicOrPartition`.
    pub error: Option<String>,
    /// Each partition with its leader's broker id (-1: none) and its error.
    pub partitions: Vec<(i32, i32, Option<String>)>,
    /// The brokers the same answer lists (a leader not among them is not reachable yet).
    pub brokers: Vec<i32>,
}

impl TopicLeaders {
    /// `None` when every partition has a leader that Kafka lists among its brokers, else
    /// what is missing, for the log. After a whole-cluster restart the brokers answer
    /// metadata before they lead partitions; records sent then wait in librdkafka, and
    /// those in flight can wait out `message.timeout.ms`, so the drain holds its batch
    /// back until this says the partitions are led.
    pub fn missing(&self) -> Option<String> {
        if let Some(error) = &self.error {
            return Some(format!("the topic: {error}"));
        }
        if self.partitions.is_empty() {
            return Some("the topic has no partitions in the metadata".into());
        }
        let waiting: Vec<String> = self
            .partitions
            .iter()
            .filter_map(|(partition, leader, error)| match error {
                Some(error) => Some(format!("{partition}: {error}")),
                None if *leader < 0 => Some(format!("{partition}: no leader")),
                None if !self.brokers.contains(leader) => {
                    Some(format!("{partition}: leader {leader} not registered"))
                }
                None => None,
            })
            .collect();
        (!waiting.is_empty()).then(|| format!("partitions {}", waiting.join(", ")))
    }
}

/// Whether Kafka will never take a record, however often it is sent: larger than the
/// topic or the producer takes, a record or topic Kafka calls invalid, or a principal not
/// authorized for the topic. Everything else (brokers away, leaders moving, timeouts)
/// passes. An unknown topic is not among them: a topic being re-created comes back, so
/// its records wait in the spool.
pub fn refused_for_good(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    use RDKafkaErrorCode::*;
    let code = error.rdkafka_error_code()?;
    matches!(
        code,
        MessageSizeTooLarge
            | InvalidMessageSize
            | InvalidRecord
            | InvalidTopic
            | UnsupportedForMessageFormat
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
    )
    .then_some(code)
}

/// Bytes librdkafka counts against `message.max.bytes` for a record: its value, key and
/// headers, and the record's own framing (a generous bound on the varints around them).
pub fn record_bytes(record: &SpoolRecord) -> usize {
    const RECORD_FRAMING: usize = 64;
    const HEADER_FRAMING: usize = 10;
    RECORD_FRAMING
        + record.key.len()
        + record.value.len()
        + record
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + HEADER_FRAMING)
            .sum::<usize>()
}

/// Why an event is not durable, and so was not answered 2xx.
#[derive(Debug)]
pub enum NotDurable {
    /// Neither Kafka nor the spool could take it now: the sender should retry later.
    Unavailable(SpoolError),
    /// Kafka will never take it: sending it again as it is cannot help.
    Refused {
        /// Larger than Kafka takes (the sender could send less).
        too_large: bool,
        reason: String,
    },
}

/// How a drain batch went.
enum Sent {
    /// Every record is in Kafka (or in quarantine).
    All,
    /// Kafka refused records sent together for good: send them one at a time.
    RefusedTogether,
    /// Kafka could not take the batch now: the breaker decides when to try again.
    Failed,
}

/// Where an event became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    Kafka,
    Spool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    /// The spool holds, or is about to hold, events: new ones queue behind them.
    Spooling,
}

type SpoolAck = oneshot::Receiver<Result<(), SpoolError>>;

struct WaitingForKafka {
    record: SpoolRecord,
    take_over: oneshot::Sender<SpoolAck>,
}

/// An event sent to Kafka whose request is waiting for the outcome. If the request is
/// dropped first (its client went away), the event was not acknowledged: the publisher
/// forgets it, so it is not handed to the spool later nor waited for as in doubt (a
/// spooled copy is then sent again: at worst a duplicate).
struct Unsettled<'a> {
    publisher: &'a Publisher,
    sequence: u64,
}

impl Unsettled<'_> {
    /// The request has the outcome and acts on it.
    fn settled(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        let mut state = self.publisher.lock();
        state.waiting.remove(&self.sequence);
        state.in_doubt.remove(&self.sequence);
    }
}

struct State {
    mode: Mode,
    next_sequence: u64,
    waiting: BTreeMap<u64, WaitingForKafka>,
    /// Events handed to the spool while librdkafka still held their send (the breaker
    /// opened, or `publishTimeout` passed), by sequence: Kafka may take them yet. They are
    /// the head of the spool, so the drain waits until librdkafka has settled each.
    in_doubt: BTreeMap<u64, SpoolRecord>,
    /// In-doubt events that Kafka took after all, by sequence (the order they were spooled
    /// in): the drain commits their spooled copies without sending them again.
    taken_meanwhile: BTreeMap<u64, SpoolRecord>,
}

pub struct Publisher {
    producer: EventProducer,
    idempotence: Arc<IdempotenceState>,
    spool: Arc<Spool>,
    writer: SpoolWriter,
    breaker: Arc<Breaker>,
    state: Mutex<State>,
    publish_timeout: Duration,
    drain_wakeup: tokio::sync::Notify,
    /// Whether the mode is `Spooling`: what [`Publisher::until_drained`] waits on.
    spooling: watch::Sender<bool>,
    metrics: Metrics,
    /// The largest record the producer sends and each topic takes.
    limits: Arc<crate::record_limits::RecordLimits>,
    /// Where a quarantined record is reported.
    audit_topic: String,
}

pub fn kafka_record(topic: &str, event: &CloudEvent) -> SpoolRecord {
    let headers = event.to_kafka_headers();
    use rdkafka::message::Headers;
    SpoolRecord {
        topic: topic.to_owned(),
        key: event.kafka_key().to_vec(),
        headers: headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
            .collect(),
        value: event.data.clone(),
    }
}

fn owned_headers(record: &SpoolRecord) -> OwnedHeaders {
    record.headers.iter().fold(
        OwnedHeaders::new_with_capacity(record.headers.len()),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

/// How the publisher treats events: what it waits for and what it refuses.
pub struct PublishOptions {
    /// How long a request waits for Kafka before its event goes to the spool.
    pub publish_timeout: Duration,
    /// The largest record the producer sends and each topic takes.
    pub limits: Arc<crate::record_limits::RecordLimits>,
    /// Where a quarantined record is reported.
    pub audit_topic: String,
}

impl Publisher {
    pub fn new(
        producer: EventProducer,
        idempotence: Arc<IdempotenceState>,
        spool: Arc<Spool>,
        breaker: Arc<Breaker>,
        metrics: Metrics,
        options: PublishOptions,
    ) -> Arc<Self> {
        let PublishOptions {
            publish_timeout,
            limits,
            audit_topic,
        } = options;
        let writer = spool.start_writer();
        // Events left from an earlier run go first.
        let mode = if spool.undrained_records() > 0 {
            Mode::Spooling
        } else {
            Mode::Direct
        };
        Arc::new(Self {
            producer,
            idempotence,
            spool,
            writer,
            breaker,
            state: Mutex::new(State {
                mode,
                next_sequence: 0,
                waiting: BTreeMap::new(),
                in_doubt: BTreeMap::new(),
                taken_meanwhile: BTreeMap::new(),
            }),
            publish_timeout,
            drain_wakeup: tokio::sync::Notify::new(),
            spooling: watch::Sender::new(mode == Mode::Spooling),
            metrics,
            limits,
            audit_topic,
        })
    }

    /// Returns once the drainer has emptied the spool and publishing is direct again:
    /// every spooled record is then acknowledged by Kafka (the drain awaits each batch's
    /// deliveries before it looks for the next). At once when nothing is spooled.
    pub async fn until_drained(&self) {
        let mut spooling = self.spooling.subscribe();
        // The sender lives as long as `self`, so this only ends with the condition met.
        let _ = spooling.wait_for(|spooling| !*spooling).await;
    }

    pub fn producer(&self) -> &EventProducer {
        &self.producer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, record: &SpoolRecord) -> Result<DeliveryFuture, KafkaError> {
        let headers = owned_headers(record);
        self.producer
            .send_result(
                FutureRecord::to(&record.topic)
                    .key(&record.key)
                    .payload(&record.value)
                    .headers(headers),
            )
            .map_err(|(error, _)| error)
    }

    /// Returns once the event is durable; `Err` says why it is not, and whether sending it
    /// again can help. A record larger than the producer sends or its topic takes is
    /// refused before anything else, so it never reaches the spool.
    pub async fn publish(self: &Arc<Self>, record: SpoolRecord) -> Result<Durable, NotDurable> {
        enum Path {
            Kafka(u64, DeliveryFuture, oneshot::Receiver<SpoolAck>),
            Spool(SpoolAck),
        }
        if let Err(too_large) = self.limits.check(&record.topic, record_bytes(&record)) {
            return Err(NotDurable::Refused {
                too_large: true,
                reason: too_large.to_string(),
            });
        }
        let path = {
            let mut state = self.lock();
            let direct = state.mode == Mode::Direct && self.breaker.state() == BreakerState::Closed;
            match direct.then(|| self.send(&record)) {
                // librdkafka checks a record alone before queueing it.
                Some(Err(error)) if refused_for_good(&error).is_some() => {
                    return Err(refused(&error));
                }
                Some(Ok(delivery)) => {
                    let sequence = state.next_sequence;
                    state.next_sequence += 1;
                    let (take_over, taken_over) = oneshot::channel();
                    state
                        .waiting
                        .insert(sequence, WaitingForKafka { record, take_over });
                    Path::Kafka(sequence, delivery, taken_over)
                }
                not_sent => {
                    if let Some(Err(error)) = not_sent {
                        tracing::warn!(%error, "the producer refused an event; spooling");
                        self.breaker.record_failure();
                    }
                    self.enter_spooling(&mut state);
                    Path::Spool(self.writer.append(&self.spool, &record))
                }
            }
        };
        let ack = match path {
            Path::Spool(ack) => ack,
            Path::Kafka(sequence, mut delivery, mut taken_over) => {
                enum Waited {
                    Acknowledged,
                    Refused,
                    RefusedForGood(KafkaError),
                    TimedOut,
                    TakenOver(Result<SpoolAck, oneshot::error::RecvError>),
                }
                let unsettled = Unsettled {
                    publisher: self,
                    sequence,
                };
                let started = Instant::now();
                let waited = tokio::select! {
                    biased;
                    delivered = &mut delivery => match delivered {
                        Ok(Ok(_)) => Waited::Acknowledged,
                        Ok(Err((error, _))) if refused_for_good(&error).is_some() => {
                            Waited::RefusedForGood(error)
                        }
                        Ok(Err((error, _))) => {
                            tracing::warn!(%error, "Kafka did not take an event; spooling");
                            Waited::Refused
                        }
                        Err(_) => Waited::Refused,
                    },
                    ack = &mut taken_over => Waited::TakenOver(ack),
                    _ = tokio::time::sleep(self.publish_timeout) => {
                        tracing::warn!(timeout = ?self.publish_timeout, "Kafka did not acknowledge in time; spooling");
                        Waited::TimedOut
                    }
                };
                unsettled.settled();
                let ack = match waited {
                    Waited::Acknowledged => {
                        self.breaker.record_success();
                        self.metrics
                            .publish_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.kafka_took(sequence);
                        return Ok(Durable::Kafka);
                    }
                    Waited::RefusedForGood(error) if refuses_the_topic(&error) => {
                        // Kafka is up and will take nothing for this topic (authorization,
                        // an invalid name): nothing to spool, the breaker stays as it is,
                        // and the sender hears why.
                        if self.lock().waiting.remove(&sequence).is_some() {
                            return Err(refused(&error));
                        }
                        // Handed to the spool meanwhile (the breaker opened): it is
                        // acknowledged from there, and the drain quarantines it.
                        self.settle_in_doubt(sequence, false);
                        taken_over.await
                    }
                    Waited::RefusedForGood(_) => {
                        // Refused for the record (its size, its form), but librdkafka
                        // sends records of a partition together and Kafka refuses the
                        // whole batch: the culprit may be another record. To the spool,
                        // whose drain sends one record at a time after a refusal and
                        // quarantines only the one refused alone. Kafka itself is fine.
                        self.take_over(sequence);
                        self.settle_in_doubt(sequence, false);
                        taken_over.await
                    }
                    Waited::Refused => {
                        self.breaker.record_failure();
                        self.take_over(sequence);
                        self.settle_in_doubt(sequence, false);
                        taken_over.await
                    }
                    Waited::TimedOut => {
                        self.breaker.record_failure();
                        self.take_over(sequence);
                        self.follow_in_doubt(sequence, delivery);
                        taken_over.await
                    }
                    Waited::TakenOver(ack) => {
                        self.follow_in_doubt(sequence, delivery);
                        ack
                    }
                };
                ack.map_err(|_| writer_stopped())?
            }
        };
        match ack.await {
            Ok(Ok(())) => Ok(Durable::Spool),
            Ok(Err(error)) => Err(NotDurable::Unavailable(error)),
            Err(_) => Err(writer_stopped()),
        }
    }

    fn take_over(&self, sequence: u64) {
        let mut state = self.lock();
        if state.waiting.contains_key(&sequence) {
            self.enter_spooling(&mut state);
        }
    }

    /// Kafka acknowledged event `sequence`. If it was handed to the spool meanwhile, its
    /// spooled copy is not to be sent again.
    fn kafka_took(&self, sequence: u64) {
        let mut state = self.lock();
        if state.waiting.remove(&sequence).is_none() {
            drop(state);
            self.settle_in_doubt(sequence, true);
        }
    }

    /// Waits, in a task of its own, for librdkafka's word on an in-doubt event's send (it
    /// comes within `message.timeout.ms`); the request has its answer from the spool.
    fn follow_in_doubt(self: &Arc<Self>, sequence: u64, delivery: DeliveryFuture) {
        let publisher = self.clone();
        tokio::spawn(async move {
            let taken = matches!(delivery.await, Ok(Ok(_)));
            publisher.settle_in_doubt(sequence, taken);
        });
    }

    /// librdkafka has settled in-doubt event `sequence`: Kafka took it, or will not.
    fn settle_in_doubt(&self, sequence: u64, taken: bool) {
        let mut state = self.lock();
        if let Some(record) = state.in_doubt.remove(&sequence)
            && taken
        {
            state.taken_meanwhile.insert(sequence, record);
        }
        drop(state);
        self.drain_wakeup.notify_one();
    }

    /// Switches to spooling and hands every event still waiting for Kafka to the spool,
    /// oldest first, ahead of anything that comes later. Their sends stay with
    /// librdkafka, so each is in doubt until it settles.
    fn enter_spooling(&self, state: &mut State) {
        if state.mode == Mode::Direct {
            tracing::info!(waiting = state.waiting.len(), "switching to the spool");
            state.mode = Mode::Spooling;
            self.spooling.send_replace(true);
        }
        for (sequence, waiting) in std::mem::take(&mut state.waiting) {
            let ack = self.writer.append(&self.spool, &waiting.record);
            state.in_doubt.insert(sequence, waiting.record);
            let _ = waiting.take_over.send(ack);
        }
        self.drain_wakeup.notify_one();
    }

    /// Moves waiting events to the spool as soon as the breaker opens, so no request waits
    /// for a timeout once librdkafka has said the brokers are gone.
    pub async fn follow_breaker(self: Arc<Self>) {
        let mut changes = self.breaker.subscribe();
        while changes.changed().await.is_ok() {
            let state = *changes.borrow_and_update();
            if state == BreakerState::Open {
                self.enter_spooling(&mut self.lock());
            } else {
                self.drain_wakeup.notify_one();
            }
        }
    }

    /// Drains the spool into Kafka whenever it holds events and the breaker allows, in
    /// order; switches back to direct publishing once it is empty.
    pub async fn drain(self: Arc<Self>) {
        // Topics whose partitions were seen led since the breaker last closed or a batch
        // last failed: only then is it worth asking Kafka again before a batch.
        let mut led = HashSet::new();
        let mut waiting_for_leaders: Option<Instant> = None;
        let mut waiting_for_in_doubt: Option<Instant> = None;
        // After Kafka was away or a batch failed, one record goes alone first: while the
        // brokers still take up their partitions (they answer metadata, and name leaders,
        // before those leaders accept writes), only it waits in librdkafka and at worst
        // times out, instead of a whole batch; full batches follow its acknowledgement.
        let mut probing = true;
        // After Kafka refused a batch for good, its records go one at a time, so the one
        // it refuses alone is found and quarantined without holding back the others.
        let mut one_by_one = 0;
        // Records Kafka acknowledged in a batch it refused another record of: not sent
        // again when their turn comes to be committed.
        let mut delivered_ahead = BTreeSet::new();
        loop {
            if self.breaker.current() != BreakerState::Closed {
                led.clear();
                probing = true;
                // Sends in flight when the brokers went away settle once they are back.
                waiting_for_in_doubt = None;
            }
            if self.lock().mode == Mode::Direct {
                tokio::select! {
                    _ = self.drain_wakeup.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            match self.breaker.state() {
                BreakerState::Open => {
                    let wait = self
                        .breaker
                        .probe_at()
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(20), Duration::from_secs(1));
                    tokio::select! {
                        _ = self.drain_wakeup.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
                BreakerState::HalfOpen => {
                    if !self.probe().await {
                        self.breaker.record_failure();
                        continue;
                    }
                    self.breaker.record_success();
                }
                BreakerState::Closed => {}
            }
            if self.waits_for_in_doubt(&mut waiting_for_in_doubt) {
                tokio::select! {
                    _ = self.drain_wakeup.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let spool = self.spool.clone();
            let limit = if probing || one_by_one > 0 { 1 } else { 512 };
            let batch = tokio::task::spawn_blocking(move || spool.read_batch(limit, 8 << 20))
                .await
                .unwrap_or_default();
            if batch.is_empty() {
                let drained = {
                    let mut state = self.lock();
                    let drained = self.spool.is_empty() && state.waiting.is_empty();
                    if drained {
                        tracing::info!("the spool is drained; publishing directly again");
                        state.mode = Mode::Direct;
                        self.spooling.send_replace(false);
                        // Left only if a spool write failed (the sender had a 503).
                        state.taken_meanwhile.clear();
                    }
                    drained
                };
                if !drained {
                    // The writer still has appends in hand.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
            match self.not_ready_for(&batch, &mut led).await {
                None => {
                    if let Some(since) = waiting_for_leaders.take() {
                        tracing::info!(
                            waited = ?since.elapsed(),
                            "Kafka leads the spooled records' partitions again; draining"
                        );
                    }
                }
                Some(missing) => {
                    let since = *waiting_for_leaders.get_or_insert_with(|| {
                        tracing::info!(
                            %missing,
                            "Kafka answers but cannot take the spooled records yet; the drain waits (the records stay in the spool)"
                        );
                        Instant::now()
                    });
                    if since.elapsed() < LEADER_WAIT_LIMIT {
                        tokio::select! {
                            _ = self.drain_wakeup.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        continue;
                    }
                    tracing::warn!(
                        %missing,
                        waited = ?since.elapsed(),
                        "Kafka still cannot take the spooled records; sending a batch anyway, so its deliveries say why"
                    );
                    waiting_for_leaders = None;
                }
            }
            let sent_at = Instant::now();
            match self.send_batch(&batch, &mut delivered_ahead).await {
                Sent::Failed => {
                    led.clear();
                    probing = true;
                }
                Sent::RefusedTogether => one_by_one = batch.len(),
                Sent::All => {
                    one_by_one = one_by_one.saturating_sub(1);
                    if std::mem::take(&mut probing) {
                        tracing::info!(
                            took = ?sent_at.elapsed(),
                            still_spooled = self.spool.undrained_records(),
                            "Kafka acknowledged the first spooled record; draining in full batches"
                        );
                    }
                }
            }
        }
    }

    /// Whether the drain has to wait for in-doubt events to settle. It waits at most
    /// `IN_DOUBT_WAIT_LIMIT`, then sends their spooled copies anyway: a copy of an event
    /// Kafka takes later is a duplicate, never a loss.
    fn waits_for_in_doubt(&self, since: &mut Option<Instant>) -> bool {
        let mut state = self.lock();
        if state.in_doubt.is_empty() {
            if let Some(since) = since.take() {
                tracing::info!(
                    waited = ?since.elapsed(),
                    taken_meanwhile = state.taken_meanwhile.len(),
                    "librdkafka settled the sends of the events handed to the spool; draining, without the ones Kafka took"
                );
            }
            return false;
        }
        let open = state.in_doubt.len();
        let started = *since.get_or_insert_with(|| {
            tracing::info!(
                open,
                "events were handed to the spool while librdkafka still held their sends; the drain waits until it settles them"
            );
            Instant::now()
        });
        if started.elapsed() < IN_DOUBT_WAIT_LIMIT {
            return true;
        }
        tracing::warn!(
            open,
            waited = ?started.elapsed(),
            "librdkafka has not settled some sends of events handed to the spool; draining their spooled copies anyway (Kafka may end up with two of these)"
        );
        state.in_doubt.clear();
        *since = None;
        false
    }

    /// Why Kafka cannot take `batch` now (`None`: it can): the idempotent producer has no
    /// producer id, or a topic of the batch has a partition without a reachable leader.
    /// Topics found led are remembered in `led` and not asked about again.
    async fn not_ready_for(
        &self,
        batch: &[(Option<SpoolRecord>, crate::spool::Position)],
        led: &mut HashSet<String>,
    ) -> Option<String> {
        if let Some(idempotence) = self.idempotence.waiting() {
            return Some(format!(
                "the idempotent producer has no producer id yet (librdkafka state {idempotence})"
            ));
        }
        let topics: BTreeSet<&str> = batch
            .iter()
            .filter_map(|(record, _)| record.as_ref())
            .map(|record| record.topic.as_str())
            .filter(|topic| !led.contains(*topic))
            .collect();
        for topic in topics {
            let leaders = self.topic_leaders(topic).await;
            match leaders.as_ref().map(TopicLeaders::missing) {
                Ok(None) => {
                    led.insert(topic.to_owned());
                }
                Ok(Some(missing)) => return Some(format!("topic {topic}: {missing}")),
                Err(error) => return Some(format!("topic {topic}: no metadata: {error}")),
            }
        }
        None
    }

    /// Asks Kafka (through the producer, whose metadata cache the answer refreshes) for the
    /// leaders of `topic`'s partitions.
    async fn topic_leaders(&self, topic: &str) -> Result<TopicLeaders, String> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map_err(|error| error.to_string())?;
            let brokers = metadata.brokers().iter().map(|b| b.id()).collect();
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .ok_or_else(|| "the topic is not in the answer".to_owned())?;
            Ok(TopicLeaders {
                error: found
                    .error()
                    .map(|e| format!("{:?}", RDKafkaErrorCode::from(e))),
                partitions: found
                    .partitions()
                    .iter()
                    .map(|p| {
                        (
                            p.id(),
                            p.leader(),
                            p.error()
                                .map(|e| format!("{:?}", RDKafkaErrorCode::from(e))),
                        )
                    })
                    .collect(),
                brokers,
            })
        })
        .await
        .map_err(|error| error.to_string())?
    }

    /// Sends a batch with its deliveries awaited together, and commits the prefix that
    /// Kafka acknowledged, or refused for good and that went to quarantine. After any
    /// other failure the rest is sent again later (duplicates, never loss). Spooled copies
    /// of in-doubt events that Kafka took are committed, not sent, and so are records
    /// in `delivered_ahead`: Kafka took them in a batch it refused another record of,
    /// which this adds to.
    async fn send_batch(
        &self,
        batch: &[(Option<SpoolRecord>, crate::spool::Position)],
        delivered_ahead: &mut BTreeSet<crate::spool::Position>,
    ) -> Sent {
        enum Failure {
            ForGood(KafkaError),
            Passing(String),
        }
        let started = Instant::now();
        let already_in_kafka = already_in_kafka(batch, &self.lock().taken_meanwhile);
        let mut deliveries = Vec::with_capacity(batch.len());
        for ((record, position), taken) in batch.iter().zip(&already_in_kafka) {
            let record = record
                .as_ref()
                .filter(|_| taken.is_none() && !delivered_ahead.contains(position));
            deliveries.push(record.map(|record| self.send(record)));
        }
        // Kafka refuses a partition's batch as a whole: a refusal names the record only
        // when it went alone.
        let sent_alone = deliveries.iter().filter(|d| d.is_some()).count() == 1;
        let failure = |error: KafkaError| match refused_for_good(&error) {
            Some(_) => Failure::ForGood(error),
            None => Failure::Passing(error.to_string()),
        };
        let outcomes =
            futures::future::join_all(deliveries.into_iter().map(|delivery| async move {
                match delivery {
                    None => Ok(()),
                    Some(Ok(future)) => match future.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(failure(error)),
                        Err(_) => Err(Failure::Passing(
                            "the producer dropped the delivery".to_owned(),
                        )),
                    },
                    Some(Err(error)) => Err(failure(error)),
                }
            }))
            .await;
        let mut delivered = 0;
        let mut quarantined = 0;
        let mut first_failure = None;
        let mut isolate = false;
        for (outcome, (record, _)) in outcomes.iter().zip(batch) {
            match (outcome, record) {
                (Ok(()), _) => {}
                (Err(Failure::ForGood(error)), Some(record))
                    if sent_alone && self.quarantine(record, error) =>
                {
                    quarantined += 1;
                }
                (Err(Failure::ForGood(error)), _) => {
                    isolate = !sent_alone;
                    first_failure = Some(error.to_string());
                    break;
                }
                (Err(Failure::Passing(error)), _) => {
                    first_failure = Some(error.clone());
                    break;
                }
            }
            delivered += 1;
        }
        if delivered > 0 {
            let records = batch[..delivered]
                .iter()
                .filter(|(r, _)| r.is_some())
                .count() as u64;
            let skipped: Vec<u64> = already_in_kafka[..delivered]
                .iter()
                .flatten()
                .copied()
                .collect();
            let committed = batch[delivered - 1].1;
            self.spool.commit(committed, records);
            delivered_ahead.retain(|position| *position > committed);
            self.metrics
                .drained
                .inc_by(records - skipped.len() as u64 - quarantined);
            self.metrics.already_in_kafka.inc_by(skipped.len() as u64);
            let mut state = self.lock();
            for sequence in skipped {
                state.taken_meanwhile.remove(&sequence);
            }
        }
        if delivered == batch.len() {
            tracing::debug!(records = batch.len(), took = ?started.elapsed(), "drained a spool batch");
            self.breaker.record_success();
            return Sent::All;
        }
        let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
        if isolate {
            for (outcome, (record, position)) in outcomes.iter().zip(batch).skip(delivered) {
                if outcome.is_ok() && record.is_some() {
                    delivered_ahead.insert(*position);
                }
            }
            tracing::warn!(
                error = first_failure.unwrap_or_default(),
                committed = delivered,
                failed,
                batch = batch.len(),
                "Kafka refused a batch of spooled records for good, which may be for one of them; sending them one at a time to find it"
            );
            return Sent::RefusedTogether;
        }
        tracing::warn!(
            error = first_failure.unwrap_or_default(),
            committed = delivered,
            failed,
            batch = batch.len(),
            still_spooled = self.spool.undrained_records(),
            took = ?started.elapsed(),
            "a spool drain batch failed: the records before the first failure are committed; that record and every one after it stay in the spool and are sent again, in order, when the circuit breaker allows (a record Kafka took after the failure may arrive twice; none is lost)"
        );
        self.breaker.record_failure();
        Sent::Failed
    }

    /// Moves a spooled record Kafka refused for good to the spool's quarantine file, so the
    /// records behind it drain; counts it, logs it and reports it to the audit topic.
    /// `false` when the file could not be written: the record stays at the spool's head.
    fn quarantine(&self, record: &SpoolRecord, error: &KafkaError) -> bool {
        let id = record
            .headers
            .iter()
            .find(|(name, _)| name == "ce_id")
            .map(|(_, id)| String::from_utf8_lossy(id).into_owned())
            .unwrap_or_default();
        let file = self.spool.dir().join(crate::spool::QUARANTINE);
        if let Err(io) = self.spool.quarantine(record, &error.to_string()) {
            tracing::error!(%error, %io, file = %file.display(), "Kafka refuses a spooled record for good, and it cannot be moved to quarantine; it stays at the head of the spool");
            return false;
        }
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "Unknown".to_owned(), |code| format!("{code:?}"));
        self.metrics
            .quarantined
            .get_or_create(&crate::metrics::QuarantineLabels { error: code })
            .inc();
        tracing::error!(
            %error,
            topic = record.topic,
            id,
            bytes = record_bytes(record),
            file = %file.display(),
            "Kafka refuses a spooled record for good; moved it to quarantine so the records after it drain (it stays there for a person to look at)"
        );
        let source = record
            .headers
            .iter()
            .find(|(name, _)| name == "ce_source")
            .map(|(_, source)| String::from_utf8_lossy(source).into_owned())
            .unwrap_or_default();
        let event = audit_event(
            &source,
            "io.omninode.bridge.audit.record-quarantined",
            serde_json::json!({
                "topic": record.topic,
                "id": id,
                "bytes": record_bytes(record),
                "error": error.to_string(),
                "file": file.display().to_string(),
            }),
        );
        self.send_audit(&self.audit_topic, &event);
        true
    }

    /// Asks a broker for metadata: a cheap check that Kafka answers before a drain.
    async fn probe(&self) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Publishes an event that does not have to survive an outage (audit, lifecycle):
    /// skipped while the breaker is open, waited for up to `wait` otherwise.
    pub async fn publish_best_effort(
        &self,
        topic: &str,
        event: &CloudEvent,
        wait: Duration,
    ) -> bool {
        match self.enqueue_best_effort(topic, event) {
            Some(delivery) => delivered_within(delivery, wait).await,
            None => false,
        }
    }

    /// Hands the event to the producer now (so events enqueued one after the other keep
    /// that order on their partition), unless the breaker is open; the caller awaits the
    /// delivery, e.g. with [`delivered_within`].
    pub fn enqueue_best_effort(&self, topic: &str, event: &CloudEvent) -> Option<DeliveryFuture> {
        if self.breaker.state() == BreakerState::Open {
            return None;
        }
        self.send(&kafka_record(topic, event)).ok()
    }

    /// Sends an audit event without waiting for it: skipped while the breaker is open, and
    /// logged (debug) when Kafka has not acknowledged it within 10 s. Audit events are best
    /// effort; they are not spooled.
    pub fn send_audit(&self, topic: &str, event: &CloudEvent) {
        if let Some(delivery) = self.enqueue_best_effort(topic, event) {
            tokio::spawn(async move {
                if !delivered_within(delivery, Duration::from_secs(10)).await {
                    tracing::debug!("an audit event was not published (Kafka unavailable)");
                }
            });
        }
    }

    /// Delivers what the producer still holds, within `bound`.
    pub async fn flush(&self, bound: Duration) {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(bound)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(?bound, "the producer did not flush in time");
        }
    }
}

/// For each record of `batch`, the sequence of the in-doubt event it is a copy of if Kafka
/// took that event after all. Both lists are in the order the events were spooled, so each
/// taken event is looked for after the previous one's match; a record that matches nothing
/// is sent.
fn already_in_kafka(
    batch: &[(Option<SpoolRecord>, crate::spool::Position)],
    taken: &BTreeMap<u64, SpoolRecord>,
) -> Vec<Option<u64>> {
    let mut taken = taken.iter().peekable();
    batch
        .iter()
        .map(|(record, _)| {
            let (sequence, _) = taken.next_if(|(_, copy)| record.as_ref() == Some(*copy))?;
            Some(*sequence)
        })
        .collect()
}

/// Whether Kafka's refusal is about the topic (every record to it is refused alike), not
/// the one record or its batch.
fn refuses_the_topic(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
        )
    )
}

/// What the sender of a record Kafka refused for good is told.
fn refused(error: &KafkaError) -> NotDurable {
    NotDurable::Refused {
        too_large: matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
        ),
        reason: format!("Kafka refuses this event for good: {error}"),
    }
}

fn writer_stopped() -> NotDurable {
    NotDurable::Unavailable(SpoolError::Io("the spool writer has stopped".into()))
}

/// An audit CloudEvent of `ty` from `source`, with `data` as its JSON data, keyed
/// `audit/<source>`.
pub fn audit_event(source: &str, ty: &str, data: serde_json::Value) -> CloudEvent {
    let mut event = CloudEvent::new(
        uuid::Uuid::new_v4().to_string(),
        source,
        ty,
        format!("audit/{source}"),
        data.to_string().into_bytes(),
    );
    event.time = Some(jiff::Timestamp::now().to_string());
    event.datacontenttype = Some("application/json".into());
    event.schema_version = Some("1".into());
    event
}

/// Whether Kafka acknowledged `delivery` within `wait`.
pub async fn delivered_within(delivery: DeliveryFuture, wait: Duration) -> bool {
    matches!(tokio::time::timeout(wait, delivery).await, Ok(Ok(Ok(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaders(partitions: &[(i32, i32)], brokers: &[i32]) -> TopicLeaders {
        TopicLeaders {
            error: None,
            partitions: partitions.iter().map(|&(p, l)| (p, l, None)).collect(),
            brokers: brokers.to_vec(),
        }
    }

    #[test]
    fn spooled_copies_of_events_kafka_took_are_matched_in_spool_order() {
        let record = |n: u8| SpoolRecord {
            topic: "t".into(),
            key: vec![n],
            headers: vec![],
            value: vec![n],
        };
        let batch: Vec<_> = [1, 2, 3, 4, 5]
            .into_iter()
            .map(|n| (Some(record(n)), crate::spool::Position::default()))
            .collect();
        let taken = BTreeMap::from([(12, record(2)), (14, record(4))]);
        assert_eq!(
            already_in_kafka(&batch, &taken),
            [None, Some(12), None, Some(14), None]
        );
        // A taken event whose spooled copy is not in the batch holds back the later ones
        // (they may come in the next batch); nothing is skipped that was not matched.
        let taken = BTreeMap::from([(10, record(9)), (12, record(2))]);
        assert_eq!(already_in_kafka(&batch, &taken), [None; 5]);
        // Two equal records, one taken: one copy is skipped, the other sent.
        let twice = vec![batch[0].clone(), batch[0].clone()];
        let taken = BTreeMap::from([(3, record(1))]);
        assert_eq!(already_in_kafka(&twice, &taken), [Some(3), None]);
        // A torn record (None) matches nothing.
        let torn = vec![(None, crate::spool::Position::default())];
        assert_eq!(already_in_kafka(&torn, &taken), [None]);
    }

    #[test]
    fn a_batch_may_go_once_every_partition_has_a_registered_leader() {
        assert_eq!(
            leaders(&[(0, 1), (1, 2), (2, 3)], &[1, 2, 3]).missing(),
            None
        );
        // One broker is still away but leads nothing.
        assert_eq!(leaders(&[(0, 1), (1, 2)], &[1, 2]).missing(), None);
    }

    #[test]
    fn after_a_whole_cluster_restart_the_drain_waits_for_leaders() {
        // The brokers answer metadata before the partitions are led again.
        let missing = leaders(&[(0, -1), (1, 2), (2, -1)], &[2])
            .missing()
            .unwrap();
        assert_eq!(missing, "partitions 0: no leader, 2: no leader");
        // The metadata names a leader that has not registered yet (librdkafka: "new
        // leader-1 not found in cache").
        let missing = leaders(&[(0, 1), (1, 2)], &[2]).missing().unwrap();
        assert_eq!(missing, "partitions 0: leader 1 not registered");
        let mut errored = leaders(&[(0, 1)], &[1]);
        errored.partitions[0].2 = Some("LeaderNotAvailable".into());
        assert_eq!(
            errored.missing().unwrap(),
            "partitions 0: LeaderNotAvailable"
        );
    }

    #[test]
    fn a_topic_kafka_does_not_know_is_not_ready() {
        let unknown = TopicLeaders {
            error: Some("UnknownTopicOrPartition".into()),
            partitions: vec![],
            brokers: vec![1, 2, 3],
        };
        assert_eq!(
            unknown.missing().unwrap(),
            "the topic: UnknownTopicOrPartition"
        );
        assert!(leaders(&[], &[1, 2, 3]).missing().is_some());
    }

    fn settings(properties: &[(&str, &str)]) -> bridge_events::KafkaSettings {
        bridge_events::KafkaSettings {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            properties_file: None,
        }
    }

    #[test]
    fn one_request_in_flight_per_broker_unless_the_user_sets_it() {
        let config = producer_config(&settings(&[]));
        assert_eq!(
            config.get("max.in.flight.requests.per.connection"),
            Some("1")
        );
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        let config = producer_config(&settings(&[("max.in.flight.requests.per.connection", "5")]));
        assert_eq!(
            config.get("max.in.flight.requests.per.connection"),
            Some("5")
        );
        let config = producer_config(&settings(&[("max.in.flight", "3")]));
        assert_eq!(config.get("max.in.flight"), Some("3"));
        assert_eq!(config.get("max.in.flight.requests.per.connection"), None);
    }

    #[test]
    fn records_do_not_linger_unless_the_user_sets_it() {
        assert_eq!(producer_config(&settings(&[])).get("linger.ms"), Some("0"));
        let config = producer_config(&settings(&[("linger.ms", "5")]));
        assert_eq!(config.get("linger.ms"), Some("5"));
        let config = producer_config(&settings(&[("queue.buffering.max.ms", "20")]));
        assert_eq!(config.get("queue.buffering.max.ms"), Some("20"));
        assert_eq!(config.get("linger.ms"), None);
    }

    #[test]
    fn more_than_five_requests_in_flight_stop_the_receiver_at_start() {
        let breaker = Arc::new(Breaker::new(
            crate::config::BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(1),
                max_open_for: Duration::from_secs(30),
            },
            Metrics::default(),
        ));
        let create = |value: &str| {
            create_producer(
                &settings(&[("max.in.flight.requests.per.connection", value)]),
                breaker.clone(),
                Arc::default(),
            )
        };
        assert!(create("5").is_ok());
        let refused = create("6")
            .err()
            .expect("librdkafka refuses 6 with idempotence");
        assert!(refused.to_string().contains("max.in.flight"), "{refused}");
    }

    #[test]
    fn the_guarantees_settings_win_over_the_users_properties() {
        let config = producer_config(&settings(&[
            ("acks", "1"),
            ("enable.idempotence", "false"),
            ("message.timeout.ms", "5000"),
        ]));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("message.timeout.ms"), Some("5000"));
    }

    #[test]
    fn only_an_assigned_producer_id_lets_the_idempotent_producer_send() {
        let state = IdempotenceState::default();
        assert_eq!(
            state.waiting(),
            None,
            "no statistics yet: not a reason to wait"
        );
        state.set("WaitPID".into());
        assert_eq!(state.waiting().as_deref(), Some("WaitPID"));
        state.set("Assigned".into());
        assert_eq!(state.waiting(), None);
    }
}
