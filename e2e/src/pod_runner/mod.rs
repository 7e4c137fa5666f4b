//! `pod-runner`: the full-flow harness's kubelet and container runtime, for the Pods our
//! operator creates on the local stack's kwok nodes.
//!
//! kwok fakes every other Pod; Pods labelled `app.kubernetes.io/managed-by=bridge-operator`
//! and bound to a kwok node (`type=kwok`) are left to this runner (stack.sh excludes them
//! from kwok's pod Stages). For each such Pod the runner
//!
//! - runs `container.command[0]`'s basename from `--bin-dir` (cargo's `target/debug`) as a
//!   local process, in `<run-dir>/pods/<namespace>_<name>/`, logging to `<container>.log`;
//! - gives the Pod an IP from `--pod-cidr` (a range local to this machine, e.g.
//!   `198.18.0.0/20` with `ip route add local 198.18.0.0/20 dev lo`) and writes the
//!   Pod's status as the kubelet would (phase, IPs, conditions, container states), with
//!   readiness from really probing the process, so EndpointSlices list only ready
//!   processes and a client follows them exactly as inside a cluster;
//! - restarts exited processes with back-off, kills them on a failing liveness probe, stops
//!   them (SIGTERM, grace period, SIGKILL) when the Pod is deleted and then completes the
//!   delete.
//!
//! **What stands in for the namespaces a runtime would give.** Processes share the
//! machine's filesystem and network. For the mount namespace, the Pod's volumes
//! (ConfigMap, Secret, emptyDir, PVC, downward API, projected) become directories under
//! the Pod's directory, and every container `mountPath` (longest first, subPath resolved)
//! that starts a path in the args, the env values and the text of ConfigMap files is
//! replaced by the local directory. For the network namespace, a wildcard bind
//! `0.0.0.0:PORT` or `[::]:PORT` in the same places becomes `<twin>:PORT`, where the twin is
//! the Pod IP with its first octet replaced by 127 ([`bridge_e2e::loopback_twin`]): Pod
//! IPs in the API come from 198.18.0.0/15, because the API server refuses loopback
//! addresses in EndpointSlices, and all traffic stays on 127.0.0.0/8, because clients on
//! this machine (tests, the demo) connect to the twin of the address they read from an
//! EndpointSlice. Probes go to the twin too.
//!
//! Not done: image entrypoints (a container must name its command), exec probes, startup
//! probes, init containers, resource limits, service account tokens, refreshing mounted
//! ConfigMaps of a running process (they are rewritten at each container start).

mod ipam;
mod launch;
mod process;
mod rewrite;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use ipam::Ipam;
use worker::Stop;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the binaries named by `command[0]` live.
    pub bin_dir: PathBuf,
    /// Pod directories go to `<run_dir>/pods`, PVCs to `<run_dir>/pvcs`.
    pub run_dir: PathBuf,
    pub pod_cidr: String,
    /// Label selector for the nodes this runner stands in for.
    pub node_selector: String,
    /// Label selector for the Pods it runs.
    pub pod_selector: String,
    pub host_ip: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cidr(#[from] ipam::CidrError),
    #[error("cannot bind the loopback address {ip} that pod IPs are served on: {source}")]
    NotLocal {
        ip: std::net::Ipv4Addr,
        source: std::io::Error,
    },
    #[error("the pod or node watch ended before its first list")]
    WatchEnded,
    #[error("building the probe HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// What every pod worker shares.
pub struct Shared {
    pub client: Client,
    pub config: Config,
    pub ipam: Mutex<Ipam>,
    pub http: reqwest::Client,
    pub recorder: Recorder,
}

struct Handle {
    pod_tx: watch::Sender<Arc<Pod>>,
    stop_tx: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

/// Runs until `shutdown` resolves, then stops every process it started.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let ipam = Ipam::new(&config.pod_cidr)?;
    let twin = bridge_e2e::loopback_twin(ipam.first());
    if let Err(source) = std::net::TcpListener::bind((twin, 0)) {
        return Err(Error::NotLocal { ip: twin, source });
    }
    let pods_dir = config.run_dir.join("pods");
    process::kill_stale(&pods_dir);
    let http = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "pod-runner".into(),
            instance: Some(format!("pod-runner-{}", std::process::id())),
        },
    );
    let shared = Arc::new(Shared {
        client: client.clone(),
        config: config.clone(),
        ipam: Mutex::new(ipam),
        http,
        recorder,
    });

    let changed = Arc::new(Notify::new());
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (node_store, node_writer) = reflector::store::<Node>();
    let pod_watch = reflector(
        pod_writer,
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(&config.pod_selector),
        ),
    )
    .default_backoff();
    let node_watch = reflector(
        node_writer,
        watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().labels(&config.node_selector),
        ),
    )
    .default_backoff();
    let notify = changed.clone();
    let watches = tokio::spawn(async move {
        let mut merged = futures::stream::select(
            pod_watch.map(|r| r.map(|_| ())).boxed(),
            node_watch.map(|r| r.map(|_| ())).boxed(),
        );
        while let Some(event) = merged.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watch error; retrying with back-off");
            }
            notify.notify_one();
        }
    });
    pod_store
        .wait_until_ready()
        .await
        .map_err(|_| Error::WatchEnded)?;
    node_store
        .wait_until_ready()
        .await
        .map_err(|_| Error::WatchEnded)?;

    // Learn the IPs pods already hold (a restarted runner), before handing out new ones.
    {
        let mut ipam = shared.ipam.lock().expect("ipam lock");
        for pod in pod_store.state() {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
            if let (Some(ip), Some(uid)) =
                (ip.and_then(|i| i.parse().ok()), pod.metadata.uid.as_deref())
            {
                ipam.reserve(ip, uid);
            }
        }
    }
    tracing::info!(cidr = %config.pod_cidr, bin_dir = %config.bin_dir.display(), "pod-runner ready");

    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let nodes: HashSet<String> = node_store
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let mut present = HashSet::new();
        for pod in pod_store.state() {
            let on_our_node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| nodes.contains(n));
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            if !on_our_node {
                continue;
            }
            present.insert(uid.clone());
            if finished.contains(&uid) {
                continue;
            }
            match workers.get(&uid) {
                Some(handle) => {
                    handle.pod_tx.send_if_modified(|current| {
                        let newer =
                            current.metadata.resource_version != pod.metadata.resource_version;
                        if newer {
                            *current = pod.clone();
                        }
                        newer
                    });
                }
                None => {
                    let (pod_tx, pod_rx) = watch::channel(pod.clone());
                    let (stop_tx, stop_rx) = watch::channel(Stop::No);
                    let span = tracing::info_span!(
                        "pod",
                        pod = %format!(
                            "{}/{}",
                            pod.metadata.namespace.as_deref().unwrap_or_default(),
                            pod.metadata.name.as_deref().unwrap_or_default()
                        )
                    );
                    let task =
                        tokio::spawn(worker::run(shared.clone(), pod_rx, stop_rx).instrument(span));
                    workers.insert(
                        uid,
                        Handle {
                            pod_tx,
                            stop_tx,
                            task,
                        },
                    );
                }
            }
        }
        for (uid, handle) in &workers {
            if !present.contains(uid) {
                handle.stop_tx.send_if_modified(|s| {
                    let first = *s == Stop::No;
                    *s = Stop::Vanished;
                    first
                });
            }
        }
        let done: Vec<String> = workers
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in done {
            workers.remove(&uid);
            finished.insert(uid);
        }
        finished.retain(|uid| present.contains(uid));
    }

    tracing::info!(
        pods = workers.len(),
        "shutting down: stopping every process"
    );
    for handle in workers.values() {
        let _ = handle.stop_tx.send(Stop::Shutdown);
    }
    let all = futures::future::join_all(workers.into_values().map(|h| h.task));
    if tokio::time::timeout(Duration::from_secs(15), all)
        .await
        .is_err()
    {
        tracing::warn!("some processes did not stop in time");
    }
    watches.abort();
    Ok(())
}
