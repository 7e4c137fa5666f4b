//! Gets each event durable: acknowledged by Kafka, or fsynced to the spool. Decides per
//! event between the two, keeps per-key order across the switch, and drains the spool
//! back into Kafka when the breaker closes.
//!
//! The rule that keeps order: once any event has gone to the spool, every later event goes
//! there too until the drainer has emptied it; and when the switch happens, events still
//! waiting for Kafka are handed to the spool first, in the order they were sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_events::CloudEvent;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;

use crate::breaker::{Breaker, BreakerState};
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolError, SpoolRecord, SpoolWriter};

/// Feeds librdkafka's view of the brokers to the breaker, so an outage is noticed within
/// about a second instead of when sends time out.
pub struct BrokerSignals {
    breaker: Arc<Breaker>,
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
) -> Result<EventProducer, KafkaError> {
    let mut config = settings.client_config();
    if config.get("message.timeout.ms").is_none() {
        // Only the drain and audit/lifecycle events wait this long; requests are bounded by
        // publishTimeout. Five minutes (librdkafka's default) would stall a drain probe.
        config.set("message.timeout.ms", "30000");
    }
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("statistics.interval.ms", "500");
    config.create_with_context(BrokerSignals { breaker })
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

struct State {
    mode: Mode,
    next_sequence: u64,
    waiting: BTreeMap<u64, WaitingForKafka>,
}

pub struct Publisher {
    producer: EventProducer,
    spool: Arc<Spool>,
    writer: SpoolWriter,
    breaker: Arc<Breaker>,
    state: Mutex<State>,
    publish_timeout: Duration,
    drain_wakeup: tokio::sync::Notify,
    metrics: Metrics,
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

impl Publisher {
    pub fn new(
        producer: EventProducer,
        spool: Arc<Spool>,
        breaker: Arc<Breaker>,
        publish_timeout: Duration,
        metrics: Metrics,
    ) -> Arc<Self> {
        let writer = spool.start_writer();
        // Events left from an earlier run go first.
        let mode = if spool.undrained_records() > 0 {
            Mode::Spooling
        } else {
            Mode::Direct
        };
        Arc::new(Self {
            producer,
            spool,
            writer,
            breaker,
            state: Mutex::new(State {
                mode,
                next_sequence: 0,
                waiting: BTreeMap::new(),
            }),
            publish_timeout,
            drain_wakeup: tokio::sync::Notify::new(),
            metrics,
        })
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

    /// Returns once the event is durable; `Err` means it is not, and the sender should retry.
    pub async fn publish(&self, record: SpoolRecord) -> Result<Durable, SpoolError> {
        enum Path {
            Kafka(u64, DeliveryFuture, oneshot::Receiver<SpoolAck>),
            Spool(SpoolAck),
        }
        let path = {
            let mut state = self.lock();
            let direct = state.mode == Mode::Direct && self.breaker.state() == BreakerState::Closed;
            match direct.then(|| self.send(&record)) {
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
            Path::Kafka(sequence, delivery, mut taken_over) => {
                enum Waited {
                    Acknowledged,
                    Failed,
                    TakenOver(Result<SpoolAck, oneshot::error::RecvError>),
                }
                let started = Instant::now();
                let waited = tokio::select! {
                    biased;
                    delivered = delivery => match delivered {
                        Ok(Ok(_)) => Waited::Acknowledged,
                        Ok(Err((error, _))) => {
                            tracing::warn!(%error, "Kafka did not take an event; spooling");
                            Waited::Failed
                        }
                        Err(_) => Waited::Failed,
                    },
                    ack = &mut taken_over => Waited::TakenOver(ack),
                    _ = tokio::time::sleep(self.publish_timeout) => {
                        tracing::warn!(timeout = ?self.publish_timeout, "Kafka did not acknowledge in time; spooling");
                        Waited::Failed
                    }
                };
                let ack = match waited {
                    Waited::Acknowledged => {
                        self.breaker.record_success();
                        self.metrics
                            .publish_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.lock().waiting.remove(&sequence);
                        return Ok(Durable::Kafka);
                    }
                    Waited::Failed => {
                        self.breaker.record_failure();
                        self.take_over(sequence);
                        taken_over.await
                    }
                    Waited::TakenOver(ack) => ack,
                };
                ack.map_err(|_| SpoolError::Io("the spool writer has stopped".into()))?
            }
        };
        match ack.await {
            Ok(Ok(())) => Ok(Durable::Spool),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(SpoolError::Io("the spool writer has stopped".into())),
        }
    }

    fn take_over(&self, sequence: u64) {
        let mut state = self.lock();
        if state.waiting.contains_key(&sequence) {
            self.enter_spooling(&mut state);
        }
    }

    /// Switches to spooling and hands every event still waiting for Kafka to the spool,
    /// oldest first, ahead of anything that comes later.
    fn enter_spooling(&self, state: &mut State) {
        if state.mode == Mode::Direct {
            tracing::info!(waiting = state.waiting.len(), "switching to the spool");
            state.mode = Mode::Spooling;
        }
        for (_, waiting) in std::mem::take(&mut state.waiting) {
            let ack = self.writer.append(&self.spool, &waiting.record);
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
        loop {
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
            let spool = self.spool.clone();
            let batch = tokio::task::spawn_blocking(move || spool.read_batch(512, 8 << 20))
                .await
                .unwrap_or_default();
            if batch.is_empty() {
                let drained = {
                    let mut state = self.lock();
                    let drained = self.spool.is_empty() && state.waiting.is_empty();
                    if drained {
                        tracing::info!("the spool is drained; publishing directly again");
                        state.mode = Mode::Direct;
                    }
                    drained
                };
                if !drained {
                    // The writer still has appends in hand.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
            self.send_batch(batch).await;
        }
    }

    /// Sends a batch with its deliveries awaited together, and commits the prefix that
    /// Kafka acknowledged. After a failure the rest is sent again later (duplicates, never loss).
    async fn send_batch(&self, batch: Vec<(Option<SpoolRecord>, crate::spool::Position)>) {
        let mut deliveries = Vec::with_capacity(batch.len());
        for (record, _) in &batch {
            deliveries.push(record.as_ref().map(|record| self.send(record)));
        }
        let outcomes =
            futures::future::join_all(deliveries.into_iter().map(|delivery| async move {
                match delivery {
                    None => true,
                    Some(Ok(future)) => matches!(future.await, Ok(Ok(_))),
                    Some(Err(_)) => false,
                }
            }))
            .await;
        let delivered = outcomes.iter().take_while(|ok| **ok).count();
        if delivered > 0 {
            let records = batch[..delivered]
                .iter()
                .filter(|(r, _)| r.is_some())
                .count() as u64;
            self.spool.commit(batch[delivered - 1].1, records);
            self.metrics.drained.inc_by(records);
        }
        if delivered == batch.len() {
            self.breaker.record_success();
        } else {
            tracing::warn!(
                delivered,
                of = batch.len(),
                "draining the spool stopped at a failed delivery"
            );
            self.breaker.record_failure();
        }
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

    /// Delivers what the producer still holds, within `bound`.
    pub async fn flush(&self, bound: Duration) {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(bound)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(?bound, "the producer did not flush in time");
        }
    }
}

/// Whether Kafka acknowledged `delivery` within `wait`.
pub async fn delivered_within(delivery: DeliveryFuture, wait: Duration) -> bool {
    matches!(tokio::time::timeout(wait, delivery).await, Ok(Ok(Ok(_))))
}
