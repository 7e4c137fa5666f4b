//! `pod-runner`: stands in for the kubelet and container runtime of the local stack's kwok
//! nodes, for the Pods the operator creates. See `e2e/src/pod_runner/mod.rs`.

#[path = "../pod_runner/mod.rs"]
mod pod_runner;

use std::path::PathBuf;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Runs the bridge-operator's Pods on kwok nodes as local processes of our binaries.
#[derive(Debug, Parser)]
#[command(name = "pod-runner", version)]
struct Args {
    /// Directory holding the binaries containers name in command[0] (cargo's target/debug).
    #[arg(long, env = "POD_RUNNER_BIN_DIR")]
    bin_dir: PathBuf,
    /// Run directory: pod directories go to <run-dir>/pods/<namespace>_<name>.
    #[arg(long, env = "POD_RUNNER_RUN_DIR")]
    run_dir: PathBuf,
    /// Pod IPs come from this range (apart from kwok's, not loopback, not a private
    /// network); each process listens on its IP's loopback twin, 127.b.c.d.
    #[arg(long, default_value = "198.18.0.0/20")]
    pod_cidr: String,
    /// Label selector of the nodes this runner is the kubelet of.
    #[arg(long, default_value = "type=kwok")]
    node_selector: String,
    /// Label selector of the Pods it runs.
    #[arg(long, default_value = "app.kubernetes.io/managed-by=bridge-operator")]
    pod_selector: String,
    /// The host IP written into Pod status.
    #[arg(long, default_value = "127.0.0.1")]
    host_ip: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    let bin_dir = std::fs::canonicalize(&args.bin_dir).unwrap_or(args.bin_dir);
    if let Err(e) = std::fs::create_dir_all(&args.run_dir) {
        tracing::error!(error = %e, "cannot create --run-dir");
        return std::process::ExitCode::FAILURE;
    }
    let run_dir = std::fs::canonicalize(&args.run_dir).unwrap_or(args.run_dir);
    let config = pod_runner::Config {
        bin_dir,
        run_dir,
        pod_cidr: args.pod_cidr,
        node_selector: args.node_selector,
        pod_selector: args.pod_selector,
        host_ip: args.host_ip,
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client (KUBECONFIG)");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        }
    };
    match pod_runner::run(client, config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "pod-runner failed");
            std::process::ExitCode::FAILURE
        }
    }
}
