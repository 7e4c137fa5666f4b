//! The bridge-operator binary: flags, the startup checks, leader election, the controllers
//! and the admin server, and a graceful stop on SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bridge_api::EventTopic;
use bridge_events::KafkaSettings;
use bridge_operator::audit::AuditLog;
use bridge_operator::events::EventPublisher;
use bridge_operator::kafka_admin::TopicAdmin;
use bridge_operator::metrics::Metrics;
use bridge_operator::topic_controller::{self, Context};
use bridge_operator::workload::{WorkloadContext, WorkloadSettings, until_stopped};
use bridge_operator::{consumer_controller, ingress_controller};
use bridge_runtime::{Readiness, init_tracing, serve_admin, shutdown_signal};
use clap::Parser;
use futures::StreamExt;
use futures::stream::{FuturesUnordered, select_all};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::client::ClientBuilder;
use kube::runtime::Controller;
use kube::runtime::events::Reporter;
use kube::{Api, Client, Config};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tower::limit::ConcurrencyLimitLayer;

/// The most requests the operator has waiting for the API server's answer at once. The
/// client opens a connection for every request that finds none idle, so without a bound a
/// burst of passes opened one each: the 10,000-EventTopic bench saw 1,280 TLS connections,
/// about 20 MiB of the operator's 69 MiB peak heap in their buffers (heaptrack). A watch
/// holds its slot only until its response starts, so watches never starve the rest.
const MAX_API_REQUESTS_IN_FLIGHT: usize = 32;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Reconciles EventTopic objects into Kafka topics, and WebhookIngress and EventConsumer objects into workloads"
)]
struct Args {
    /// Kafka brokers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: String,

    /// A YAML map of librdkafka properties (TLS, SASL, ...) added to the operator's own
    /// Kafka clients. Never copied into the workloads: see --workload-kafka-secret.
    #[arg(long, env = "KAFKA_PROPERTIES_FILE")]
    kafka_properties: Option<PathBuf>,

    /// The Secret, in each namespace with WebhookIngresses or EventConsumers, whose key
    /// `properties.yaml` (a YAML map of librdkafka properties: security.protocol, sasl.*,
    /// ssl.*.pem, ...) the workload Pods mount and connect to Kafka with. Unset: the
    /// workloads connect with the bootstrap servers only.
    #[arg(long, env = "BRIDGE_WORKLOAD_KAFKA_SECRET")]
    workload_kafka_secret: Option<String>,

    /// The StorageClass of the WebhookIngress receivers' spool claims when a WebhookIngress
    /// names none. Unset: the cluster's default StorageClass.
    #[arg(long, env = "BRIDGE_SPOOL_STORAGE_CLASS")]
    spool_storage_class: Option<String>,

    /// Namespaces to watch, comma-separated; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,

    /// How often each object is checked against Kafka even when nothing changed (drift
    /// correction), jittered by ±10 %. A duration such as 5m, 30s.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    resync_interval: Duration,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,

    /// Namespace of the leader-election Lease; defaults to the Pod's namespace, else `default`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,

    /// This replica's identity in the Lease; defaults to the Pod (host) name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// The image the WebhookIngress and EventConsumer workloads run: it holds
    /// `hook-receiver` and `event-consumer` on its PATH.
    #[arg(long, env = "BRIDGE_WORKLOAD_IMAGE", default_value = concat!("omninode/bridge:", env!("CARGO_PKG_VERSION")))]
    workload_image: String,

    /// The workloads' imagePullPolicy; the cluster's default when unset.
    #[arg(long, env = "BRIDGE_WORKLOAD_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    workload_image_pull_policy: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    bridge_api::duration::parse_duration(text).map_err(|e| e.to_string())
}

const LEASE_NAME: &str = "bridge-operator";
const CRDS: [&str; 3] = [
    "eventtopics.bridge.omninode.io",
    "eventconsumers.bridge.omninode.io",
    "webhookingresses.bridge.omninode.io",
];

#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error("no Kubernetes client: {0} (set KUBECONFIG, or run in a cluster)")]
    Client(#[source] kube::Error),
    #[error(
        "the CRD {0} is not installed: apply it first with `kubectl apply --server-side -f crds/` (or install the Helm chart)"
    )]
    CrdMissing(&'static str),
    #[error(
        "the CRD {0} exists but is not Established yet ({1}); check `kubectl describe crd {0}`"
    )]
    CrdNotEstablished(&'static str, String),
    #[error("checking the CRD {0} failed: {1}")]
    CrdCheck(&'static str, #[source] kube::Error),
    #[error("--kafka-properties: {0}")]
    KafkaProperties(String),
    #[error("creating the Kafka client failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("leader election failed: {0}")]
    LeaderElection(String),
    #[error("the admin server failed: {0}")]
    AdminServer(#[from] std::io::Error),
    #[error(
        "the {0} controller stopped on its own ({1}); exiting, so that the kubelet restarts the operator rather than leave it healthy and reconciling nothing"
    )]
    ControllerEnded(&'static str, String),
}

/// A client as `kubectl` would connect (kubeconfig or in-cluster), with at most
/// [`MAX_API_REQUESTS_IN_FLIGHT`] requests in flight.
async fn api_client() -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&ConcurrencyLimitLayer::new(MAX_API_REQUESTS_IN_FLIGHT))
        .build())
}

fn main() {
    one_malloc_arena();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("bridge-operator: cannot start the async runtime");
    runtime.block_on(async {
        init_tracing();
        if let Err(error) = run(Args::parse()).await {
            tracing::error!("{error}");
            eprintln!("bridge-operator: {error}");
            std::process::exit(1);
        }
    });
}

/// Makes every thread allocate from glibc's one main arena. By default glibc gives threads
/// that meet on its lock arenas of their own (up to 8 per core), and each keeps the memory
/// freed into it: with the runtime's workers, its blocking pool and librdkafka's threads,
/// a bulk apply of 3,000 EventTopics left a peak of 12 MiB of live heap (heaptrack) in
/// 25 MiB of anonymous memory. One arena holds it to 17 MiB (BENCHMARKS.md). The operator
/// waits on the API server and Kafka, not on malloc's lock. Called before any thread
/// starts: glibc fixes the arena limit when a second thread first allocates.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run(args: Args) -> Result<(), StartupError> {
    let client = api_client().await.map_err(StartupError::Client)?;
    check_crds(&client).await?;

    // The operator's own Kafka clients; the workloads get the bootstrap servers and, when
    // --workload-kafka-secret is set, a Secret in their own namespace.
    let kafka = KafkaSettings {
        bootstrap_servers: args.kafka_bootstrap_servers.clone(),
        properties: BTreeMap::new(),
        properties_file: args.kafka_properties.clone(),
    }
    .resolve()
    .map_err(|e| StartupError::KafkaProperties(e.to_string()))?
    .client_config();
    if args.kafka_properties.is_some() && args.workload_kafka_secret.is_none() {
        tracing::warn!(
            "--kafka-properties applies to the operator's own Kafka clients only: the WebhookIngress and EventConsumer workloads connect with the bootstrap servers only. To give them credentials, create a Secret with the key properties.yaml (a YAML map of librdkafka properties) in each of their namespaces and name it with --workload-kafka-secret (BRIDGE_WORKLOAD_KAFKA_SECRET; Helm value kafka.workloadPropertiesSecret)"
        );
    }

    let mut registry = Registry::with_prefix("bridge_operator");
    let metrics = Arc::new(Metrics::register(&mut registry));
    // A standby replica is ready: it is healthy and takes over when the leader goes. Were
    // it not, a rolling update of two replicas would wait forever on the new Pods.
    let readiness = Readiness::new("starting");
    let (stop, stopped) = watch::channel(false);
    let admin_server = serve_admin(
        args.admin_listen,
        Arc::new(registry),
        readiness.clone(),
        until_stopped(stopped.clone()),
    )
    .await?;
    let admin_task = tokio::spawn(admin_server);

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("bridge-operator-{}", std::process::id()));
    let lease = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(&args.leader_election_namespace)
        .with_identity(&identity)
        .build()
        .await
        .map_err(|e| StartupError::LeaderElection(e.to_string()))?;
    let (mut leading, lease_task) = lease.watch().await;
    readiness.set_ready();

    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        }
    });

    tracing::info!(%identity, lease = LEASE_NAME, namespace = %args.leader_election_namespace, "waiting to lead");
    let mut stopped_rx = stopped.clone();
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    return Err(StartupError::LeaderElection("the lease task ended".into()));
                }
            }
            _ = stopped_rx.changed() => {
                drop(leading);
                let _ = lease_task.await;
                let _ = admin_task.await;
                return Ok(());
            }
        }
    }
    tracing::info!(%identity, "leading: starting controllers");
    metrics.leader.set(1);

    let reporter = Reporter {
        controller: "bridge-operator".into(),
        instance: Some(identity.clone()),
    };
    let events = EventPublisher::new(client.clone(), reporter);
    let admin = TopicAdmin::new(&kafka, metrics.clone())?;
    let audit = AuditLog::new(&kafka, events.clone())?;

    let workloads = Arc::new(WorkloadContext {
        client: client.clone(),
        settings: WorkloadSettings {
            image: args.workload_image.clone(),
            image_pull_policy: args.workload_image_pull_policy.clone(),
            kafka_bootstrap_servers: args.kafka_bootstrap_servers.clone(),
            kafka_secret: args.workload_kafka_secret.clone(),
            spool_storage_class: args.spool_storage_class.clone(),
        },
        kafka: kafka.clone(),
        events,
        metrics: metrics.clone(),
        resync: args.resync_interval,
    });
    // Each workload controller runs in a task of its own: a panic there ends only that
    // task, so the loop below watches them and stops the operator when one ends unasked.
    let mut workload_controllers: FuturesUnordered<_> = [
        (
            "WebhookIngress",
            tokio::spawn(ingress_controller::run(
                workloads.clone(),
                args.watch_namespaces.clone(),
                stopped.clone(),
            )),
        ),
        (
            "EventConsumer",
            tokio::spawn(consumer_controller::run(
                workloads,
                args.watch_namespaces.clone(),
                stopped.clone(),
            )),
        ),
    ]
    .into_iter()
    .map(|(kind, task)| async move { (kind, task.await) })
    .collect();

    let apis: Vec<Api<EventTopic>> = if args.watch_namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        args.watch_namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let controllers: Vec<Controller<EventTopic>> = apis
        .into_iter()
        .map(|api| {
            topic_controller::controller(api).graceful_shutdown_on(until_stopped(stopped.clone()))
        })
        .collect();
    let stores = controllers.iter().map(|c| c.store()).collect();
    let context = Arc::new(Context::new(
        client.clone(),
        admin,
        audit,
        metrics,
        stores,
        args.resync_interval,
    ));
    tokio::spawn(topic_controller::count_managed_topics(context.clone()));
    let runs = controllers.into_iter().map(|controller| {
        controller
            .run(
                topic_controller::reconcile,
                topic_controller::error_policy,
                context.clone(),
            )
            .boxed()
    });
    let mut results = select_all(runs);
    let mut lost_lease = false;
    let mut ended: Option<StartupError> = None;
    loop {
        tokio::select! {
            next = results.next() => match next {
                Some(Ok((object, _))) => tracing::debug!(object = %object.name, "reconciled"),
                Some(Err(error)) => tracing::debug!(%error, "reconcile error"),
                None => {
                    if !*stopped.borrow() && ended.is_none() {
                        ended = Some(StartupError::ControllerEnded("EventTopic", "its watches ended".into()));
                    }
                    break;
                }
            },
            Some((kind, outcome)) = workload_controllers.next(), if ended.is_none() => {
                if !*stopped.borrow() {
                    let why = match outcome {
                        Err(error) if error.is_panic() => "it panicked; see the log above".to_owned(),
                        Err(error) => error.to_string(),
                        Ok(()) => "its watches ended".to_owned(),
                    };
                    let error = StartupError::ControllerEnded(kind, why);
                    tracing::error!("{error}");
                    readiness.set_not_ready(error.to_string());
                    ended = Some(error);
                    let _ = stop.send(true);
                }
            }
            changed = leading.changed(), if !lost_lease => {
                if changed.is_err() || !*leading.borrow() {
                    // Another replica may lead now: stop at once rather than race it.
                    tracing::error!("lost the leader-election lease; stopping");
                    lost_lease = true;
                    context.metrics.leader.set(0);
                    readiness.set_not_ready("lost the leader-election lease");
                    let _ = stop.send(true);
                }
            }
        }
    }
    while workload_controllers.next().await.is_some() {}
    drop(leading);
    let _ = lease_task.await;
    let _ = admin_task.await;
    tracing::info!("stopped");
    if let Some(error) = ended {
        return Err(error);
    }
    if lost_lease {
        return Err(StartupError::LeaderElection("lost the lease".into()));
    }
    Ok(())
}

/// The CRDs must be installed and Established before the watches can start.
async fn check_crds(client: &Client) -> Result<(), StartupError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        let crd = crds
            .get_opt(name)
            .await
            .map_err(|e| StartupError::CrdCheck(name, e))?
            .ok_or(StartupError::CrdMissing(name))?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Established");
        match established {
            Some(c) if c.status == "True" => {}
            Some(c) => {
                return Err(StartupError::CrdNotEstablished(
                    name,
                    c.message.unwrap_or(c.reason.unwrap_or_default()),
                ));
            }
            None => {
                return Err(StartupError::CrdNotEstablished(
                    name,
                    "no condition yet".into(),
                ));
            }
        }
    }
    Ok(())
}
