//! `hook-receiver --config FILE`: reads the config, runs the receiver until SIGTERM, exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hook_receiver::config::ReceiverConfig;

#[derive(Parser)]
#[command(
    name = "hook-receiver",
    version,
    about = "Webhooks in, CloudEvents on Kafka"
)]
struct Args {
    /// The YAML config file (see the crate's README for every field).
    #[arg(long)]
    config: PathBuf,
}

// One runtime thread. A request crosses from the connection to librdkafka's threads and
// back on its acknowledgement; on a multi-threaded runtime each crossing could wake another
// worker, and on two cores shared with the brokers those wake-ups waited for a core: the
// tail latency (p99 58 to 74 ms at 500 req/s) came from them. On one thread hook-receiver
// kept p99 under 50 ms to 1,000 req/s (BENCHMARKS.md). Blocking work (spool reads, the
// producer's flush) runs on tokio's blocking pool and the spool's writer on its own thread.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    bridge_runtime::init_tracing();
    let args = Args::parse();
    let config = match ReceiverConfig::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hook-receiver: {error}");
            return ExitCode::from(2);
        }
    };
    // The signal handler goes in before anything else, so an early SIGTERM is a clean stop.
    let shutdown = tokio::spawn(bridge_runtime::shutdown_signal());
    let shutdown = async move {
        let _ = shutdown.await;
    };
    match hook_receiver::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "hook-receiver stopped");
            eprintln!("hook-receiver: {error}");
            ExitCode::FAILURE
        }
    }
}
