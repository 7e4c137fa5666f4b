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

#[tokio::main]
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
