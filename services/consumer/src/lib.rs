//! `event-consumer`: reads CloudEvents from Kafka topics as a consumer group and delivers
//! each to an HTTP sink, at least once, with retries, a dead-letter topic and replay.
//!
//! The operator uses this crate too: [`config::ConsumerConfig`] is the file it renders,
//! and [`replay::replay_group_to_time`] moves a stopped group back in time.

pub mod breaker;
pub mod config;
pub mod dead_letter;
pub mod dispatch;
pub mod filter;
pub mod lanes;
pub mod metrics;
pub mod offsets;
pub mod replay;
pub mod retry;
pub mod sink;

pub use config::ConsumerConfig;
pub use dispatch::{RunError, run};
pub use replay::{
    ReplayError, ReplayedPartition, replay_group_to_time, replay_group_to_time_async,
};
