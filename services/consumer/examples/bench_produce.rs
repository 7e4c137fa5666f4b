//! Fills the consumer benchmark's topic (bench/consumer.sh): `count` CloudEvents in Kafka
//! binary mode, written with `to_kafka_headers` as the receiver writes them, 1 KiB of data
//! each, spread over `keys` correlation ids (the record keys) in turn.
//!
//! bench_produce <bootstrap servers> <topic> <count> <keys>    (prints the seconds it took)

use std::time::{Duration, Instant};

use bridge_events::CloudEvent;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const DATA_BYTES: usize = 1024;

/// The event with sequence number `seq`: its data is a JSON object padded to 1 KiB.
fn event(seq: u64, keys: u64) -> CloudEvent {
    let key = format!("bench-key-{}", seq % keys);
    let mut data = format!(r#"{{"seq":{seq},"key":"{key}","pad":""#).into_bytes();
    data.resize(DATA_BYTES - 2, b'x');
    data.extend_from_slice(b"\"}");
    let mut event = CloudEvent::new(
        format!("bench-{seq}"),
        "/bench/event-consumer",
        "bench.consumer.event",
        key,
        data,
    );
    event.time = Some("2026-11-27T10:00:00Z".into());
    event.datacontenttype = Some("application/json".into());
    event.traceparent = Some(format!("00-{:032x}-{:016x}-01", seq + 1, seq + 1));
    event
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, topic, count, keys] = args.as_slice() else {
        eprintln!("usage: bench_produce <bootstrap servers> <topic> <count> <keys>");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("count is a number");
    let keys: u64 = keys.parse().expect("keys is a number");
    // As the receiver produces (all in-sync replicas, idempotent, murmur2), batched harder.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "300000")
        .create()
        .expect("a producer");
    let started = Instant::now();
    for seq in 0..count {
        let event = event(seq, keys);
        let headers = event.to_kafka_headers();
        let mut record = BaseRecord::to(topic)
            .key(event.kafka_key())
            .headers(headers)
            .payload(&event.data);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => panic!("producing event {seq}: {error}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .expect("every event acknowledged");
    println!("{:.1}", started.elapsed().as_secs_f64());
}
