//! The floor of the topic benchmark (bench/topics.sh): a bare program that creates the
//! same topics an EventTopic would (1 partition, RF 3, the default configs) through the
//! admin API, in batches, with no Kubernetes in the loop.
//!
//! create_topics <bootstrap servers> <name prefix> <count>

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

const BATCH: usize = 2_000;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, prefix, count] = args.as_slice() else {
        eprintln!("usage: create_topics <bootstrap servers> <name prefix> <count>");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("count is a number");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(120)))
        .operation_timeout(Some(Duration::from_secs(120)));
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let started = Instant::now();
    for chunk in names.chunks(BATCH) {
        let topics: Vec<NewTopic> = chunk
            .iter()
            .map(|name| {
                NewTopic::new(name, 1, TopicReplication::Fixed(3))
                    .set("retention.ms", "2592000000")
                    .set("cleanup.policy", "delete")
            })
            .collect();
        for result in admin
            .create_topics(&topics, &options)
            .await
            .expect("CreateTopics")
        {
            if let Err((name, code)) = result {
                panic!("creating {name}: {code}");
            }
        }
    }
    println!("{:.1}", started.elapsed().as_secs_f64());
}
