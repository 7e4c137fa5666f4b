//! The floor of the receiver benchmark (bench/receiver.sh): a bare rdkafka producer sending
//! the records hook-receiver would write for the benchmark's requests (CloudEvents in
//! binary mode, `to_kafka_headers`, a 1 KiB JSON body, the delivery id as the key, `keys`
//! distinct keys in turn), with the receiver's producer settings (`acks=all`, idempotence,
//! murmur2, one request in flight per broker, `linger.ms=0`) with at most `in_flight`
//! records unacknowledged: as fast as it can (`rate` 0), or `rate` records a second on a
//! fixed schedule, the way the benchmark's load generator sends requests.
//!
//! bare_producer <bootstrap servers> <topic> <count> <keys> <in_flight> <rate> [property=value ...]
//! (extra librdkafka properties, set after the receiver's, are for experiments only)
//! prints: records/s, delivery latency p50 and p99 in ms, peak RSS in KiB; with a rate, the
//! latency of a record counts from its scheduled time, so falling behind shows in it

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bridge_events::CloudEvent;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

const BODY_BYTES: usize = 1024;

/// Records the latency of every acknowledged record; counts the failed ones.
struct Deliveries {
    latencies_us: Mutex<Vec<u32>>,
    failed: AtomicUsize,
    in_flight: AtomicUsize,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        let micros = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match result {
            Ok(_) => self.latencies_us.lock().unwrap().push(micros),
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// The body the benchmark posts: a JSON object padded to 1 KiB (the same as
/// bench/receiver.sh writes).
fn body() -> Vec<u8> {
    let mut body = br#"{"action":"opened","pad":""#.to_vec();
    body.resize(BODY_BYTES - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[index]) / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [
        _,
        bootstrap,
        topic,
        count,
        keys,
        in_flight,
        rate,
        extra @ ..,
    ] = args.as_slice()
    else {
        eprintln!(
            "usage: bare_producer <bootstrap servers> <topic> <count> <keys> <in_flight> <rate> [property=value ...]"
        );
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("count is a number");
    let keys: u64 = keys.parse().expect("keys is a number");
    let max_in_flight: usize = in_flight.parse().expect("in_flight is a number");
    let rate: u64 = rate
        .parse()
        .expect("rate is a number (0: as fast as it can)");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "0");
    for property in extra {
        let (name, value) = property
            .split_once('=')
            .expect("extra properties are written name=value");
        config.set(name, value);
    }
    let producer: ThreadedProducer<Deliveries> = config
        .create_with_context(Deliveries {
            latencies_us: Mutex::new(Vec::with_capacity(count as usize)),
            failed: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        })
        .expect("a producer");
    let body = body();
    let context = producer.context();
    // Warm up, as a receiver is before it answers its first request: connections to the
    // brokers, the topic's metadata and the idempotent producer id. Without this the
    // records of the first ~0.4 s of a paced run waited for them and made its p99.
    context.in_flight.fetch_add(1, Ordering::AcqRel);
    producer
        .send(
            BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
                .key("warm-up")
                .payload(""),
        )
        .map_err(|(error, _)| error)
        .expect("the warm-up record is queued");
    producer
        .flush(Duration::from_secs(30))
        .expect("the warm-up record is acknowledged");
    context.latencies_us.lock().unwrap().clear();
    let started = Instant::now();
    for seq in 0..count {
        let scheduled = if rate == 0 {
            Instant::now()
        } else {
            let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            due
        };
        while context.in_flight.load(Ordering::Acquire) >= max_in_flight {
            std::thread::sleep(Duration::from_micros(200));
        }
        let delivery = format!("bench-delivery-{}", seq % keys);
        let mut event = CloudEvent::new(
            delivery.clone(),
            "/bench/hook-receiver/github",
            "com.github.push",
            delivery,
            body.clone(),
        );
        event.time = Some("2026-11-27T10:00:00Z".into());
        event.datacontenttype = Some("application/json".into());
        event.traceparent = Some(bridge_events::new_traceparent());
        let headers = event.to_kafka_headers();
        context.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(scheduled))
            .key(event.kafka_key())
            .headers(headers)
            .payload(&event.data);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => panic!("producing record {seq}: {error}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("every record acknowledged");
    let elapsed = started.elapsed();
    let failed = context.failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("bare_producer: {failed} records failed");
        std::process::exit(1);
    }
    let mut latencies = std::mem::take(&mut *context.latencies_us.lock().unwrap());
    latencies.sort_unstable();
    println!(
        "{} {:.1} {:.1} {}",
        (count as f64 / elapsed.as_secs_f64()) as u64,
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
        peak_rss_kib()
    );
}
