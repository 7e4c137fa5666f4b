//! The floor of the consumer benchmark (bench/consumer.sh): a bare rdkafka consumer that
//! reads `count` records of the topic from the start, in a group of its own, and does
//! nothing with them but add up their sizes. No HTTP, no parsing, no offset bookkeeping.
//!
//! bare_consumer <bootstrap servers> <topic> <group> <count>
//! prints `<ms to the last record> <ms from the first record to the last> <peak RSS KiB>
//! <CPU seconds>`

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const GIVE_UP: Duration = Duration::from_secs(600);

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User and system CPU time of this process so far (fields 14 and 15 of /proc/self/stat,
/// in clock ticks of 1/100 s on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, topic, group, count] = args.as_slice() else {
        eprintln!("usage: bare_consumer <bootstrap servers> <topic> <group> <count>");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("count is a number");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribing");

    let started = Instant::now();
    let mut first = None;
    let mut received = 0u64;
    let mut bytes = 0usize;
    while received < count {
        if started.elapsed() > GIVE_UP {
            eprintln!("bare_consumer: only {received} of {count} records after {GIVE_UP:?}");
            std::process::exit(1);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                received += 1;
                bytes += message.payload_len();
            }
            Some(Err(error)) => eprintln!("bare_consumer: {error}"),
            None => {}
        }
    }
    let first = first.expect("at least one record");
    eprintln!("bare_consumer: {received} records, {bytes} bytes of payload");
    println!(
        "{} {} {} {:.1}",
        started.elapsed().as_millis(),
        first.elapsed().as_millis(),
        peak_rss_kib(),
        cpu_seconds()
    );
}
