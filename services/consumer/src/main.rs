//! `event-consumer --config FILE`: see the crate's README for the file's fields.

use std::path::PathBuf;
use std::process::ExitCode;

use event_consumer::ConsumerConfig;

const USAGE: &str = "usage: event-consumer --config FILE";

fn config_path() -> Result<PathBuf, String> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(path), None) if flag == "--config" => Ok(PathBuf::from(path)),
        (Some(flag), None, None) if flag == "--help" || flag == "-h" => Err(USAGE.into()),
        _ => Err(format!(
            "{USAGE}\n(the config file's fields are described in the README of services/consumer)"
        )),
    }
}

fn main() -> ExitCode {
    let path = match config_path() {
        Ok(path) => path,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let config = match ConsumerConfig::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("event-consumer: {error}");
            return ExitCode::from(2);
        }
    };
    bridge_runtime::init_tracing();
    // One thread: on several, every hand-over of an event between the poll loop, the
    // delivery tasks and the connections could wake another thread (a futex call each way);
    // on one, the consumer spends about a quarter less CPU per event.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    match runtime.block_on(event_consumer::run(
        config,
        bridge_runtime::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "event-consumer failed");
            ExitCode::FAILURE
        }
    }
}
