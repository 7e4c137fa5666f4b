//! The running consumer: reads the group's partitions, hands each event to a delivery task
//! in its lane, and keeps the offsets and the flow in step with what is finished.
//!
//! One task (the poll loop) owns the Kafka consumer: it reads records, pauses and resumes
//! partitions, and stores offsets. Delivery tasks share only the dispatch state behind a
//! mutex; the rebalance callbacks, which run inside the poll loop's `recv`, read the same
//! state to commit exactly what is finished before a partition leaves.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bridge_api::event_consumer::{Ordering, StartFrom};
use bridge_events::{CloudEvent, LifecyclePhase, lifecycle_event};
use bridge_runtime::Readiness;
use bytes::Bytes;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::CircuitBreaker;
use crate::config::ConsumerConfig;
use crate::dead_letter::{DeadLetterReason, Failure, RecordOrigin, dead_letter_headers};
use crate::filter::TypeFilter;
use crate::lanes::{Lane, Lanes};
use crate::metrics::{ConsumerMetrics, OutcomeLabels, PartitionLabels, ReasonLabels};
use crate::offsets::OffsetTracker;
use crate::retry::RetryPolicy;
use crate::sink::{SinkAnswer, SinkClient, SinkRequest};

/// The name this service gives itself in lifecycle events and as its Kafka client id.
pub const SERVICE_NAME: &str = "event-consumer";

/// How often the finished offsets that moved are committed; revoke and shutdown commit
/// besides.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a dead-letter or lifecycle record may wait in the producer.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the poll loop may stop taking records at the `maxInFlight` bound before it
/// pauses the partitions instead. Pausing makes librdkafka drop what it prefetched and fetch
/// it again on resume (tens of milliseconds to a second), so doing it at every bound starves
/// a fast sink; not polling at all for long would hold up rebalances.
const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// A partition as the dispatcher knows it while assigned. `epoch` tells a delivery task
/// whose partition was revoked (and perhaps assigned again) that its result no longer counts.
#[derive(Debug)]
struct PartitionState {
    epoch: u64,
    offsets: OffsetTracker,
    lanes: Lanes<Job>,
    /// The committable offset moved since it was last committed.
    uncommitted: bool,
}

#[derive(Debug, Default)]
struct DispatchState {
    partitions: HashMap<(Arc<str>, i32), PartitionState>,
    next_epoch: u64,
    in_flight: usize,
    /// The poll loop stopped taking records because `in_flight` reached the bound; what
    /// librdkafka prefetched (at most `queued.max.messages.kbytes`) waits in its queue.
    reading_held: bool,
    paused: bool,
    /// The group handed this member its first assignment (possibly empty).
    joined: bool,
    /// Events that failed with no dead-letter topic to take them, and their last error.
    blocked: BTreeMap<RecordOrigin, String>,
    /// Why the dead-letter topic cannot be written, while that lasts.
    dead_letter_failing: Option<String>,
    /// Shutdown has committed and the consumer is closing.
    leaving: bool,
}

impl DispatchState {
    fn partition(&mut self, topic: &Arc<str>, partition: i32) -> &mut PartitionState {
        let next_epoch = &mut self.next_epoch;
        self.partitions
            .entry((topic.clone(), partition))
            .or_insert_with(|| {
                *next_epoch += 1;
                PartitionState {
                    epoch: *next_epoch,
                    offsets: OffsetTracker::default(),
                    lanes: Lanes::default(),
                    uncommitted: false,
                }
            })
    }

    /// The committable offsets of the partitions whose offset moved since they were last
    /// taken; they count as committed from now on, unless `commit_failed` says otherwise.
    fn take_uncommitted(&mut self) -> TopicPartitionList {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), tracked) in self.partitions.iter_mut() {
            if !std::mem::take(&mut tracked.uncommitted) {
                continue;
            }
            if let Some(offset) = tracked.offsets.committable() {
                let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(offset));
            }
        }
        offsets
    }

    /// A commit of `offsets` failed (during a rebalance, say): the partitions still
    /// assigned are committed again at the next tick, even if nothing else finishes on
    /// them. Without this, a partition that went quiet kept its old committed offset, and
    /// its events were counted as lag and delivered again after the next rebalance.
    fn commit_failed(&mut self, offsets: &TopicPartitionList) {
        for element in offsets.elements() {
            let key = (Arc::from(element.topic()), element.partition());
            if let Some(partition) = self.partitions.get_mut(&key) {
                partition.uncommitted = true;
            }
        }
    }
}

/// What the poll loop, the delivery tasks and the rebalance callbacks share.
struct Shared {
    state: Mutex<DispatchState>,
    metrics: ConsumerMetrics,
    readiness: Readiness,
    /// Wakes the poll loop when partitions may resume.
    flow: Notify,
    max_in_flight: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, DispatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Below this many events in flight, paused partitions resume; the gap to the maximum
    /// keeps a consumer whose sink is slow from pausing and resuming at every event.
    fn resume_mark(&self) -> usize {
        self.max_in_flight / 2
    }
}

/// The librdkafka callbacks: rebalances and statistics.
struct GroupEvents {
    shared: Arc<Shared>,
    start_from: StartFrom,
}

impl GroupEvents {
    /// Under `startFrom: latest`, commits the current end of each assigned partition that
    /// the group has no committed offset for, before anything is read from it. Otherwise
    /// a consumer that stops (killed, evicted) before its first commit leaves nothing
    /// behind, and its successor's `latest` starts after the events the first one was
    /// still delivering: they would never be delivered. The end read here is at or before
    /// where librdkafka starts reading, so the successor gets those events again at worst.
    /// Under `earliest` a successor starts at the beginning anyway.
    fn pin_start(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        if self.start_from != StartFrom::Latest || assigned.count() == 0 {
            return;
        }
        const BOUND: Duration = Duration::from_secs(10);
        let committed = match consumer.committed_offsets(assigned.clone(), BOUND) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "cannot read the group's committed offsets of the assigned partitions; their start is not pinned");
                return;
            }
        };
        let mut pins = TopicPartitionList::new();
        for element in committed.elements() {
            if matches!(element.offset(), Offset::Offset(_)) {
                continue;
            }
            match consumer.fetch_watermarks(element.topic(), element.partition(), BOUND) {
                Ok((_, end)) => {
                    let _ = pins.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(end),
                    );
                }
                Err(error) => tracing::warn!(
                    %error,
                    topic = element.topic(),
                    partition = element.partition(),
                    "cannot read the partition's end; its start is not pinned"
                ),
            }
        }
        if pins.count() == 0 {
            return;
        }
        match consumer.commit(&pins, CommitMode::Sync) {
            Ok(()) => tracing::info!(
                partitions = pins.count(),
                "committed the current end of partitions the group had never committed (startFrom: latest), so a successor starts there"
            ),
            Err(error) => {
                tracing::warn!(%error, "committing the start of newly assigned partitions failed")
            }
        }
    }
}

impl ClientContext for GroupEvents {
    fn stats(&self, statistics: Statistics) {
        let state = self.shared.lock();
        for (topic, topic_stats) in &statistics.topics {
            for (partition, stats) in &topic_stats.partitions {
                if !state
                    .partitions
                    .contains_key(&(Arc::from(topic.as_str()), *partition))
                {
                    continue;
                }
                let lag = if stats.consumer_lag >= 0 {
                    stats.consumer_lag
                } else {
                    stats.consumer_lag_stored
                };
                if lag >= 0 {
                    self.shared
                        .metrics
                        .lag
                        .get_or_create(&PartitionLabels {
                            topic: topic.clone(),
                            partition: *partition,
                        })
                        .set(lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupEvents {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        // Forget the partitions first, so no delivery task still running can move their
        // offsets; then commit what was finished. What was in flight is delivered again by
        // the next owner: at least once.
        let mut finished = TopicPartitionList::new();
        {
            let mut state = self.shared.lock();
            for element in revoked.elements() {
                let key = (Arc::from(element.topic()), element.partition());
                let Some(partition) = state.partitions.remove(&key) else {
                    continue;
                };
                state.in_flight -= partition.offsets.pending();
                if let Some(offset) = partition.offsets.committable() {
                    let _ = finished.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(offset),
                    );
                }
                self.shared.metrics.lag.remove(&PartitionLabels {
                    topic: key.0.to_string(),
                    partition: key.1,
                });
            }
            self.shared.metrics.in_flight.set(state.in_flight as i64);
        }
        self.shared.flow.notify_one();
        tracing::info!(partitions = revoked.count(), "partitions revoked");
        if finished.count() == 0 || consumer.assignment_lost() {
            return;
        }
        if self.shared.lock().leaving {
            // Shutdown committed these just before closing the consumer.
            return;
        }
        if let Err(error) = consumer.commit(&finished, CommitMode::Sync) {
            tracing::warn!(%error, "committing the finished offsets of revoked partitions failed; their events may be delivered again");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let paused = {
                    let mut state = self.shared.lock();
                    state.joined = true;
                    for element in assigned.elements() {
                        state.partition(&Arc::from(element.topic()), element.partition());
                    }
                    state.paused
                };
                if paused && assigned.count() > 0 {
                    if let Err(error) = consumer.pause(assigned) {
                        tracing::warn!(%error, "pausing newly assigned partitions failed");
                    }
                }
                tracing::info!(partitions = assigned.count(), "partitions assigned");
                self.pin_start(consumer, assigned);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "consumer group rebalance failed"),
        }
    }
}

type GroupConsumer = StreamConsumer<GroupEvents>;

/// One record on its way: to the sink, or straight to the dead-letter topic.
#[derive(Debug)]
struct Job {
    origin: RecordOrigin,
    epoch: u64,
    lane: Option<Lane>,
    record: OriginalRecord,
    work: Work,
}

/// What the dead-letter topic needs of a record: its key, value and headers as read. The
/// value of a binary-mode event is its data, so it is held once, shared with the request.
#[derive(Debug)]
struct OriginalRecord {
    key: Option<Vec<u8>>,
    value: Option<Bytes>,
    headers: Option<OwnedHeaders>,
}

impl OriginalRecord {
    /// `body` is the request's body, if the record is to be delivered.
    fn of(record: &BorrowedMessage<'_>, body: Option<&Bytes>) -> Self {
        let value = record.payload().map(|value| match body {
            Some(body) if body[..] == *value => body.clone(),
            _ => Bytes::copy_from_slice(value),
        });
        Self {
            key: record.key().map(<[u8]>::to_vec),
            value,
            headers: record.headers().map(BorrowedHeaders::detach),
        }
    }
}

#[derive(Debug)]
enum Work {
    Deliver(SinkRequest),
    DeadLetter(Failure),
}

/// What delivery tasks need: the sink, its breaker, the dead-letter producer.
struct Delivery {
    shared: Arc<Shared>,
    sink: SinkClient,
    breaker: CircuitBreaker,
    policy: RetryPolicy,
    producer: FutureProducer,
    dead_letter_topic: Option<String>,
    stopping: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{action} failed: {source}")]
    Kafka {
        action: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("the admin server could not listen: {0}")]
    Admin(#[source] std::io::Error),
}

fn kafka(action: &'static str) -> impl FnOnce(KafkaError) -> RunError {
    move |source| RunError::Kafka { action, source }
}

/// Runs the consumer until `shutdown` completes, then finishes what is in flight (bounded
/// by the request timeout), commits what is done and leaves the group.
pub async fn run(
    config: ConsumerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let policy = config.retry_policy()?;
    let timeout = config.request_timeout()?;
    let sink = SinkClient::new(config.sink_url()?, timeout);

    let mut registry = prometheus_client::registry::Registry::with_prefix("event_consumer");
    let metrics = ConsumerMetrics::register(&mut registry);
    let readiness = Readiness::new(format!("joining consumer group `{}`", config.group_id));
    let stopping = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let admin = start_admin(
        config.admin_listen,
        registry,
        readiness.clone(),
        admin_stop.clone(),
    )
    .await
    .map_err(RunError::Admin)?;
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });

    let shared = Arc::new(Shared {
        state: Mutex::new(DispatchState::default()),
        metrics,
        readiness,
        flow: Notify::new(),
        max_in_flight: config.delivery.max_in_flight as usize,
    });
    let producer: FutureProducer = producer_config(&config)
        .create()
        .map_err(kafka("creating the Kafka producer"))?;
    let instance = instance_name();
    let lifecycle = Lifecycle {
        producer: producer.clone(),
        topic: config.lifecycle_topic.clone(),
        instance,
    };
    lifecycle.announce(LifecyclePhase::Starting);

    let consumer: GroupConsumer = consumer_config(&config)
        .create_with_context(GroupEvents {
            shared: shared.clone(),
            start_from: config.start_from,
        })
        .map_err(kafka("creating the Kafka consumer"))?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(kafka("subscribing to the topics"))?;
    tracing::info!(group = %config.group_id, topics = ?config.topics, sink = %sink.url(), "consuming");

    let delivery = Arc::new(Delivery {
        shared: shared.clone(),
        sink,
        breaker: CircuitBreaker::new(policy),
        policy,
        producer: producer.clone(),
        dead_letter_topic: config.delivery.dead_letter_topic.clone(),
        stopping: stopping.clone(),
    });
    let poll_loop = PollLoop {
        consumer: Arc::new(consumer),
        shared: shared.clone(),
        delivery: delivery.clone(),
        tasks: TaskTracker::new(),
        ordering: config.delivery.ordering,
        filter: TypeFilter::new(config.filter.types.iter().cloned()),
        group_id: config.group_id.clone(),
        lifecycle,
        announced_ready: false,
        held_since: None,
        topic_names: Vec::new(),
        commit_in_flight: None,
    };
    poll_loop.run(stopping, timeout).await;
    drop(delivery);
    if let Err(error) = producer.flush(Duration::from_secs(5)) {
        tracing::warn!(%error, "flushing the producer on shutdown failed");
    }
    admin_stop.cancel();
    let _ = tokio::task::spawn_blocking(move || admin.join()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves `/metrics`, `/healthz` and `/readyz` from a thread and runtime of its own. The
/// consumer's runtime is one thread (waking other threads for every event cost a quarter of
/// its CPU), and librdkafka blocks that thread while it commits synchronously for revoked
/// partitions; the probes must answer meanwhile.
async fn start_admin(
    listen: std::net::SocketAddr,
    registry: prometheus_client::registry::Registry,
    readiness: Readiness,
    stop: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (listening, listened) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = listening.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                let server = bridge_runtime::serve_admin(
                    listen,
                    Arc::new(registry),
                    readiness,
                    stop.cancelled_owned(),
                )
                .await;
                match server {
                    Ok(server) => {
                        let _ = listening.send(Ok(()));
                        if let Err(error) = server.await {
                            tracing::warn!(%error, "the admin server stopped");
                        }
                    }
                    Err(error) => {
                        let _ = listening.send(Err(error));
                    }
                }
            });
        })?;
    listened
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the admin thread ended")))
        .map(|()| thread)
}

struct PollLoop {
    /// Shared only with the loop's own `recv`, whose record borrows it while `admit` runs.
    consumer: Arc<GroupConsumer>,
    shared: Arc<Shared>,
    delivery: Arc<Delivery>,
    tasks: TaskTracker,
    ordering: Ordering,
    filter: TypeFilter,
    group_id: String,
    lifecycle: Lifecycle,
    announced_ready: bool,
    /// Since when reading has been held at the `maxInFlight` bound.
    held_since: Option<tokio::time::Instant>,
    /// The names of the topics read so far.
    topic_names: Vec<Arc<str>>,
    /// The last periodic commit, while it may still be waiting for the coordinator.
    commit_in_flight: Option<tokio::task::JoinHandle<()>>,
}

impl PollLoop {
    async fn run(mut self, stopping: CancellationToken, request_timeout: Duration) {
        let consumer = self.consumer.clone();
        let mut breaker_changes = self.delivery.breaker.subscribe();
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hold_expires = self.held_since.map(|since| since + HOLD_BEFORE_PAUSE);
            tokio::select! {
                biased;
                _ = stopping.cancelled() => break,
                _ = breaker_changes.changed() => {
                    let open = *breaker_changes.borrow_and_update();
                    self.shared.metrics.circuit_open.set(i64::from(open));
                    self.apply_flow();
                    self.refresh_readiness();
                }
                _ = self.shared.flow.notified() => self.apply_flow(),
                _ = commit_tick.tick() => {
                    self.commit_finished_offsets();
                    self.refresh_readiness();
                }
                _ = tokio::time::sleep_until(hold_expires.unwrap_or_else(tokio::time::Instant::now)),
                    if hold_expires.is_some() => self.apply_flow(),
                received = consumer.recv(), if self.held_since.is_none() => match received {
                    Ok(message) => self.admit(&message),
                    Err(error) => tracing::warn!(%error, "reading from Kafka"),
                },
            }
        }
        drop(consumer);
        self.shut_down(request_timeout).await;
    }

    /// Takes one record in: skips it, queues it in its lane, or starts its delivery.
    fn admit(&mut self, record: &BorrowedMessage<'_>) {
        let origin = RecordOrigin {
            topic: self.topic_name(record.topic()),
            partition: record.partition(),
            offset: record.offset(),
        };
        if !self
            .shared
            .lock()
            .partition(&origin.topic, origin.partition)
            .offsets
            .received(origin.offset)
        {
            tracing::debug!(record = %origin, "handed out again after a pause: already taken");
            return;
        }
        let work = match CloudEvent::from_kafka(record.key(), record.headers(), record.payload()) {
            Err(error) => self.invalid(&origin, error.to_string()),
            Ok(event) if !self.filter.accepts(&event.ty) => {
                self.shared.metrics.filtered.inc();
                None
            }
            Ok(event) => match self.delivery.sink.request(event) {
                Ok(request) => Some(Work::Deliver(request)),
                Err(error) => self.invalid(&origin, error),
            },
        };

        let mut state = self.shared.lock();
        let partition = state.partition(&origin.topic, origin.partition);
        let Some(work) = work else {
            if partition.offsets.completed(origin.offset).is_some() {
                partition.uncommitted = true;
            }
            return;
        };
        let (lane, body) = match &work {
            Work::Deliver(request) => (Lane::of(self.ordering, record.key()), Some(request.body())),
            // Nothing waits on a dead-letter write, and it must not wait on anything.
            Work::DeadLetter(_) => (None, None),
        };
        let job = Job {
            origin,
            epoch: partition.epoch,
            lane: lane.clone(),
            record: OriginalRecord::of(record, body),
            work,
        };
        let start = partition.lanes.admit(lane.as_ref(), job);
        state.in_flight += 1;
        self.shared.metrics.in_flight.set(state.in_flight as i64);
        if state.in_flight >= self.shared.max_in_flight && !state.reading_held {
            state.reading_held = true;
            self.held_since = Some(tokio::time::Instant::now());
        }
        drop(state);
        if let Some(job) = start {
            let delivery = self.delivery.clone();
            self.tasks.spawn(delivery.run_lane(job));
        }
    }

    /// The topic's name, shared by every record of it rather than copied for each.
    fn topic_name(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.topic_names.iter().find(|known| ***known == *name) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.topic_names.push(name.clone());
        name
    }

    fn invalid(&self, origin: &RecordOrigin, error: String) -> Option<Work> {
        if self.delivery.dead_letter_topic.is_some() {
            tracing::warn!(record = %origin, %error, "not a valid CloudEvent: to the dead-letter topic");
            Some(Work::DeadLetter(Failure {
                reason: DeadLetterReason::InvalidEvent,
                error,
                attempts: 0,
                last_status: None,
            }))
        } else {
            tracing::error!(record = %origin, %error, "not a valid CloudEvent and no dead-letter topic is configured: skipped");
            self.shared.metrics.invalid_skipped.inc();
            None
        }
    }

    /// At the `maxInFlight` bound the loop stops reading, and reads again as soon as an
    /// event finishes. Every assigned partition is paused while the sink's breaker is open
    /// or when the bound has held for [`HOLD_BEFORE_PAUSE`], and resumed once both have
    /// eased. Paused partitions keep the group membership alive (the loop goes on polling)
    /// without reading more.
    fn apply_flow(&mut self) {
        let breaker_open = self.delivery.breaker.is_open();
        let mut state = self.shared.lock();
        let mut held_too_long = false;
        if let Some(since) = self.held_since {
            let below_bound = state.in_flight < self.shared.max_in_flight;
            held_too_long = !below_bound && since.elapsed() >= HOLD_BEFORE_PAUSE;
            if below_bound || held_too_long {
                state.reading_held = false;
                self.held_since = None;
            }
        }
        let pause = held_too_long || breaker_open;
        let resume = state.in_flight <= self.shared.resume_mark() && !breaker_open;
        let change = if pause && !state.paused {
            Some(true)
        } else if resume && state.paused {
            Some(false)
        } else {
            None
        };
        let Some(pausing) = change else {
            return;
        };
        state.paused = pausing;
        self.shared.metrics.paused.set(i64::from(pausing));
        let in_flight = state.in_flight;
        drop(state);
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(error) => {
                tracing::warn!(%error, "reading the assignment to pause or resume it");
                return;
            }
        };
        let result = if pausing {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => tracing::debug!(
                pausing,
                in_flight,
                breaker_open,
                "partitions paused or resumed"
            ),
            Err(error) => tracing::warn!(%error, pausing, "pausing or resuming partitions failed"),
        }
    }

    /// Commits the offsets that moved since the last commit, synchronously on a blocking
    /// thread so the poll loop goes on; one such commit at a time, so they land in order.
    /// Synchronously because librdkafka reports an asynchronous manual commit to an
    /// offset-commit callback only, which rdkafka does not set: a commit refused during a
    /// rebalance went unnoticed, and a partition that then went quiet kept its old offset.
    fn commit_finished_offsets(&mut self) {
        if self
            .commit_in_flight
            .as_ref()
            .is_some_and(|commit| !commit.is_finished())
        {
            return;
        }
        let finished = self.shared.lock().take_uncommitted();
        if finished.count() == 0 {
            return;
        }
        let consumer = self.consumer.clone();
        let shared = self.shared.clone();
        self.commit_in_flight = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = consumer.commit(&finished, CommitMode::Sync) {
                tracing::warn!(%error, "committing finished offsets failed; retried at the next tick");
                shared.lock().commit_failed(&finished);
            }
        }));
    }

    fn refresh_readiness(&mut self) {
        let state = self.shared.lock();
        let reason = if !state.joined {
            Some(format!("joining consumer group `{}`", self.group_id))
        } else if let Some((first, error)) = state.blocked.iter().next() {
            Some(format!(
                "{} event(s) failed and wait, blocking their key or partition, because no dead-letter topic is configured; first: {first}: {error}",
                state.blocked.len()
            ))
        } else if let Some(error) = &state.dead_letter_failing {
            Some(format!("cannot write to the dead-letter topic: {error}"))
        } else if self.delivery.breaker.is_open() {
            Some(format!(
                "the sink {} is failing: circuit breaker open, partitions paused",
                self.delivery.sink.url()
            ))
        } else {
            None
        };
        let joined = state.joined;
        drop(state);
        match reason {
            Some(reason) => self.shared.readiness.set_not_ready(reason),
            None => self.shared.readiness.set_ready(),
        }
        if joined && !self.announced_ready {
            self.announced_ready = true;
            self.lifecycle.announce(LifecyclePhase::Ready);
        }
    }

    async fn shut_down(mut self, request_timeout: Duration) {
        tracing::info!("stopping: finishing deliveries in flight");
        self.shared.readiness.set_not_ready("stopping");
        self.lifecycle.announce(LifecyclePhase::Stopping);
        if let Ok(assignment) = self.consumer.assignment() {
            let _ = self.consumer.pause(&assignment);
        }
        // Deliveries stop retrying at once; a request already sent gets its answer.
        self.tasks.close();
        let drained = request_timeout + Duration::from_secs(2);
        if tokio::time::timeout(drained, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drained,
                "deliveries still running at shutdown; they are delivered again after restart"
            );
        }
        // The last periodic commit lands first, so this one has the last word.
        if let Some(commit) = self.commit_in_flight.take() {
            let _ = commit.await;
        }
        let mut finished = TopicPartitionList::new();
        {
            let state = self.shared.lock();
            for ((topic, partition), tracked) in &state.partitions {
                if let Some(offset) = tracked.offsets.committable() {
                    let _ =
                        finished.add_partition_offset(topic, *partition, Offset::Offset(offset));
                }
            }
        }
        if finished.count() > 0 {
            match self.consumer.commit(&finished, CommitMode::Sync) {
                Ok(()) => {
                    tracing::info!(partitions = finished.count(), "finished offsets committed")
                }
                Err(error) => {
                    tracing::warn!(%error, "committing on shutdown failed; unfinished events are delivered again after restart")
                }
            }
        }
        self.shared.lock().leaving = true;
        // Dropping the consumer leaves the group, so the others take its partitions now
        // rather than after the session timeout. It blocks, and runs the revoke callback.
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

impl Delivery {
    /// Delivers `job`, then the events queued behind it in its lane, one after another.
    async fn run_lane(self: Arc<Self>, mut job: Job) {
        loop {
            let done = match &job.work {
                Work::Deliver(request) => self.deliver(&job, request).await,
                Work::DeadLetter(failure) => self.dead_letter(&job, failure).await,
            };
            if done.is_none() {
                return;
            }
            match self.finish(&job) {
                Some(next) if !self.stopping.is_cancelled() => job = next,
                _ => return,
            }
        }
    }

    /// Marks `job` finished and takes the next event of its lane, if the partition is still
    /// the one the job came from.
    fn finish(&self, job: &Job) -> Option<Job> {
        let mut state = self.shared.lock();
        let partition = state
            .partitions
            .get_mut(&(job.origin.topic.clone(), job.origin.partition))
            .filter(|p| p.epoch == job.epoch)?;
        if partition.offsets.completed(job.origin.offset).is_some() {
            partition.uncommitted = true;
        }
        // The next event of the lane, if any, was counted in flight when it was read.
        let next = partition.lanes.next(job.lane.as_ref());
        state.in_flight -= 1;
        self.shared.metrics.in_flight.set(state.in_flight as i64);
        if (state.paused && state.in_flight <= self.shared.resume_mark())
            || (state.reading_held && state.in_flight < self.shared.max_in_flight)
        {
            self.shared.flow.notify_one();
        }
        next
    }

    /// Sends the event until the sink takes it, it is refused, or its attempts are used up;
    /// then dead-letters it or, with no dead-letter topic, keeps it (and its lane) waiting.
    /// `None` when shutdown interrupted it.
    async fn deliver(&self, job: &Job, request: &SinkRequest) -> Option<()> {
        let mut attempts = 0;
        let mut sent = 0;
        let failure = loop {
            let pass = self.unless_stopping(self.breaker.pass()).await?;
            let probe = pass.is_probe();
            let answer = self.send(request).await;
            sent += 1;
            if !probe {
                attempts += 1;
            }
            match answer {
                SinkAnswer::Accepted { .. } => {
                    pass.sink_answered();
                    self.shared.metrics.delivered.inc();
                    return Some(());
                }
                SinkAnswer::Rejected { status, error } => {
                    pass.sink_answered();
                    break Failure {
                        reason: DeadLetterReason::Rejected,
                        error,
                        attempts: sent,
                        last_status: Some(status),
                    };
                }
                SinkAnswer::Retryable {
                    status,
                    retry_after,
                    error,
                } => {
                    pass.sink_failed(retry_after);
                    if attempts >= self.policy.attempts {
                        break Failure {
                            reason: DeadLetterReason::RetriesExhausted,
                            error,
                            attempts: sent,
                            last_status: status,
                        };
                    }
                    let wait = self.policy.wait_before(attempts.max(1), retry_after);
                    tracing::debug!(record = %job.origin, %error, ?wait, attempt = sent, "delivery failed; retrying");
                    self.shared.metrics.retried.inc();
                    self.unless_stopping(tokio::time::sleep(wait)).await?;
                }
            }
        };
        if self.dead_letter_topic.is_some() {
            self.dead_letter(job, &failure).await
        } else {
            self.wait_blocked(job, request, failure).await
        }
    }

    async fn send(&self, request: &SinkRequest) -> SinkAnswer {
        let started = Instant::now();
        let answer = self.sink.send(request).await;
        self.shared
            .metrics
            .sink_latency
            .get_or_create(&OutcomeLabels {
                outcome: answer.outcome(),
            })
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    /// With no dead-letter topic, a failed event holds its place: its lane waits, its
    /// offset is not committed, `/readyz` says so. It is tried again every `maxBackoff`,
    /// so it goes through by itself once the sink is fixed.
    async fn wait_blocked(&self, job: &Job, request: &SinkRequest, failure: Failure) -> Option<()> {
        tracing::error!(record = %job.origin, error = %failure.error, attempts = failure.attempts, "delivery failed and no dead-letter topic is configured: the event blocks its key (or partition) until the sink takes it");
        self.set_blocked(&job.origin, Some(failure.error));
        let delivered = loop {
            let Some(()) = self
                .unless_stopping(tokio::time::sleep(self.policy.max_backoff))
                .await
            else {
                break None;
            };
            let Some(pass) = self.unless_stopping(self.breaker.pass()).await else {
                break None;
            };
            match self.send(request).await {
                SinkAnswer::Accepted { .. } => {
                    pass.sink_answered();
                    self.shared.metrics.delivered.inc();
                    tracing::info!(record = %job.origin, "the blocked event was delivered");
                    break Some(());
                }
                SinkAnswer::Rejected { error, .. } => {
                    pass.sink_answered();
                    self.set_blocked(&job.origin, Some(error));
                }
                SinkAnswer::Retryable {
                    retry_after, error, ..
                } => {
                    pass.sink_failed(retry_after);
                    self.set_blocked(&job.origin, Some(error));
                }
            }
            self.shared.metrics.retried.inc();
        };
        self.set_blocked(&job.origin, None);
        delivered
    }

    fn set_blocked(&self, origin: &RecordOrigin, error: Option<String>) {
        let mut state = self.shared.lock();
        match error {
            Some(error) => {
                state.blocked.insert(origin.clone(), error);
            }
            None => {
                state.blocked.remove(origin);
            }
        }
        self.shared.metrics.blocked.set(state.blocked.len() as i64);
    }

    /// Writes the original record with the failure in its headers to the dead-letter topic,
    /// trying until Kafka takes it: only then is the event finished.
    async fn dead_letter(&self, job: &Job, failure: &Failure) -> Option<()> {
        let topic = self
            .dead_letter_topic
            .as_deref()
            .expect("dead-lettering only with a dead-letter topic");
        let headers = dead_letter_headers(job.record.headers.as_ref(), &job.origin, failure);
        let mut tries = 0;
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).headers(headers.clone());
            if let Some(key) = &job.record.key {
                record = record.key(key);
            }
            if let Some(value) = &job.record.value {
                record = record.payload(value);
            }
            match self.producer.send(record, PRODUCE_TIMEOUT).await {
                Ok(_) => {
                    self.shared
                        .metrics
                        .dead_lettered
                        .get_or_create(&ReasonLabels {
                            reason: failure.reason.as_str(),
                        })
                        .inc();
                    self.shared.lock().dead_letter_failing = None;
                    tracing::warn!(record = %job.origin, reason = failure.reason.as_str(), error = %failure.error, attempts = failure.attempts, dead_letter_topic = topic, "dead-lettered");
                    return Some(());
                }
                Err((error, _)) => {
                    tries += 1;
                    tracing::error!(record = %job.origin, %error, dead_letter_topic = topic, "writing to the dead-letter topic failed; retrying");
                    self.shared.lock().dead_letter_failing = Some(format!("`{topic}`: {error}"));
                    self.unless_stopping(tokio::time::sleep(self.policy.backoff(tries)))
                        .await?;
                }
            }
        }
    }

    async fn unless_stopping<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.stopping.cancelled() => None,
            output = work => Some(output),
        }
    }
}

/// Announces this instance's phases on the lifecycle topic. Best effort: a missing topic
/// must not keep events from being delivered, so failures are logged, not waited on.
struct Lifecycle {
    producer: FutureProducer,
    topic: String,
    instance: String,
}

impl Lifecycle {
    fn announce(&self, phase: LifecyclePhase) {
        let event = lifecycle_event(SERVICE_NAME, &self.instance, phase);
        let record = FutureRecord::to(&self.topic)
            .key(event.kafka_key())
            .headers(event.to_kafka_headers())
            .payload(&event.data);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                let topic = self.topic.clone();
                tokio::spawn(async move {
                    if let Ok(Err((error, _))) = delivery.await {
                        tracing::warn!(%error, topic, phase = phase.as_str(), "publishing a lifecycle event failed");
                    }
                });
            }
            Err((error, _)) => {
                tracing::warn!(%error, phase = phase.as_str(), "publishing a lifecycle event failed")
            }
        }
    }
}

/// The Pod name in Kubernetes, else the host name, else the process id.
fn instance_name() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("{SERVICE_NAME}-{}", std::process::id()))
}

fn set_default(config: &mut ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

/// The group consumer's librdkafka settings: the user's `kafka` block, then what the
/// delivery guarantee rests on (the config refuses user values for those).
pub fn consumer_config(config: &ConsumerConfig) -> ClientConfig {
    let mut client = config.kafka.client_config();
    set_default(&mut client, "client.id", SERVICE_NAME);
    set_default(&mut client, "statistics.interval.ms", "5000");
    // A killed replica's partitions wait this long for a new owner (librdkafka: 45 s).
    set_default(&mut client, "session.timeout.ms", "10000");
    set_default(&mut client, "heartbeat.interval.ms", "3000");
    // librdkafka prefetches up to 64 MiB per client by default; a few MiB keep the
    // consumer small without starving it.
    set_default(&mut client, "queued.max.messages.kbytes", "8192");
    // With a queue that small, librdkafka's default 1 s wait before fetching again once the
    // queue was full leaves a fast sink idle for most of that second (librdkafka's
    // CONFIGURATION.md says as much).
    set_default(&mut client, "fetch.queue.backoff.ms", "100");
    client
        .set("group.id", &config.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "false")
        .set(
            "auto.offset.reset",
            match config.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        );
    client
}

/// The producer for dead-letter and lifecycle records: acknowledged by all in-sync
/// replicas, idempotent, and keyed the way the Java and Python clients key.
fn producer_config(config: &ConsumerConfig) -> ClientConfig {
    let mut client = config.kafka.client_config();
    set_default(&mut client, "client.id", SERVICE_NAME);
    set_default(&mut client, "acks", "all");
    set_default(&mut client, "enable.idempotence", "true");
    set_default(&mut client, "partitioner", "murmur2_random");
    set_default(
        &mut client,
        "message.timeout.ms",
        &PRODUCE_TIMEOUT.as_millis().to_string(),
    );
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(list: &TopicPartitionList) -> Vec<(String, i32, Offset)> {
        list.elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
            .collect()
    }

    #[test]
    fn a_failed_commit_is_taken_again_for_partitions_still_assigned_only() {
        let topic: Arc<str> = Arc::from("orders");
        let mut state = DispatchState::default();
        for partition in [0, 1] {
            let tracked = state.partition(&topic, partition);
            tracked.offsets.received(41);
            tracked.offsets.completed(41);
            tracked.uncommitted = true;
        }
        let sent = state.take_uncommitted();
        assert_eq!(sent.count(), 2);
        assert_eq!(state.take_uncommitted().count(), 0, "nothing moved since");

        // Partition 1 was revoked while the commit was out; the commit failed.
        state.partitions.remove(&(topic.clone(), 1));
        state.commit_failed(&sent);

        assert_eq!(
            offsets(&state.take_uncommitted()),
            [("orders".to_owned(), 0, Offset::Offset(42))]
        );
        assert!(!state.partitions.contains_key(&(topic, 1)));
    }
}
