//! `hook-receiver --config FILE [--drain]`: reads the config, then runs the receiver until
//! SIGTERM (exit 0), or with `--drain` empties the spool into Kafka and exits.

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
    /// Serve no webhooks: drain the spool into Kafka, then exit 0 (waits for the spool's
    /// lock and through Kafka outages; SIGTERM leaves the rest in the spool).
    #[arg(long)]
    drain: bool,
    /// Where `--drain` writes its outcome, if the file exists and is writable (Kubernetes
    /// shows it as the container's termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
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
            if args.drain {
                hook_receiver::write_termination_message(
                    &args.termination_log,
                    &format!("hook-receiver --drain: {error}"),
                );
            }
            return ExitCode::from(2);
        }
    };
    // The signal handler goes in before anything else, so an early SIGTERM is a clean stop.
    let shutdown = tokio::spawn(bridge_runtime::shutdown_signal());
    let shutdown = async move {
        let _ = shutdown.await;
    };
    if args.drain {
        return match hook_receiver::drain_only(config, &args.termination_log, shutdown).await {
            Ok(drained) => ExitCode::from(drained.exit_code()),
            Err(error) => failed(error),
        };
    }
    match hook_receiver::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failed(error),
    }
}

fn failed(error: hook_receiver::Error) -> ExitCode {
    tracing::error!(%error, "hook-receiver stopped");
    eprintln!("hook-receiver: {error}");
    ExitCode::FAILURE
}
